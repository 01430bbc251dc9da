//! leasehold backend for etcd (in progress).
