//! A small Kubernetes API server emulator for testing `leasehold-kube`.
