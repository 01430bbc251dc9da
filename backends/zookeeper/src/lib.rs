//! leasehold backend for zookeeper (in progress).
