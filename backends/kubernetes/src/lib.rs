//! leasehold backend for Kubernetes (in progress).
