//! The resource types the emulator serves.

use std::fmt;

/// A resource type: where it lives in the API and what its objects are called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `coordination.k8s.io/v1` Lease.
    Lease,
    /// core `v1` ConfigMap.
    ConfigMap,
}

impl Resource {
    /// The object kind (`Lease`).
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Lease => "Lease",
            Resource::ConfigMap => "ConfigMap",
        }
    }

    /// The list kind (`LeaseList`).
    pub fn list_kind(self) -> &'static str {
        match self {
            Resource::Lease => "LeaseList",
            Resource::ConfigMap => "ConfigMapList",
        }
    }

    /// The API group; empty for the core group.
    pub fn group(self) -> &'static str {
        match self {
            Resource::Lease => "coordination.k8s.io",
            Resource::ConfigMap => "",
        }
    }

    /// The API version within the group.
    pub fn version(self) -> &'static str {
        "v1"
    }

    /// `apiVersion` as objects carry it (`coordination.k8s.io/v1`, `v1`).
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Lease => "coordination.k8s.io/v1",
            Resource::ConfigMap => "v1",
        }
    }

    /// The plural resource name used in URLs and RBAC rules.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Lease => "leases",
            Resource::ConfigMap => "configmaps",
        }
    }

    /// `leases.coordination.k8s.io` or `configmaps`, as error messages name it.
    pub fn qualified(self) -> String {
        if self.group().is_empty() { self.plural().to_string() } else { format!("{}.{}", self.plural(), self.group()) }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}
