//! leasehold backend for consul (in progress).
