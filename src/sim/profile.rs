//! [`StoreProfile`]: how each backend's store differs in expiry and visibility timing.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The store semantics a run simulates on top of [`MemoryModel`](crate::testkit::MemoryModel).
///
/// | profile | expiry | store leader change | other |
/// |---|---|---|---|
/// | etcd | server lease, `ttl` after the last keep-alive | every lease reset to its full ttl | |
/// | ZooKeeper | session timeout `ttl` | session timers reset | after a partition heals the client needs up to `0.4 * ttl` to reconnect, so it learns of an expiry only then (about 1.4x timeout) |
/// | Consul | session TTL enforced lazily: between `ttl` and `2 * ttl` | sessions renewed | lock-delay after an invalidated session |
/// | Kubernetes | none on the server: an observer treats the lease as expired once it saw it unchanged for `ttl` on its own clock (client-go rule) | nothing | renewals are writes (new resourceVersion); takeover is a CAS on the observed version |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreProfile {
    /// etcd v3.
    Etcd,
    /// ZooKeeper.
    ZooKeeper,
    /// Consul.
    Consul,
    /// Kubernetes Leases.
    Kubernetes,
}

impl StoreProfile {
    /// Every profile, in a fixed order.
    pub const ALL: [StoreProfile; 4] =
        [StoreProfile::Etcd, StoreProfile::ZooKeeper, StoreProfile::Consul, StoreProfile::Kubernetes];

    /// The session ttl the model is given (Kubernetes: effectively never).
    pub fn session_ttl(self, ttl: Duration) -> Duration {
        match self {
            StoreProfile::Kubernetes => Duration::from_secs(1 << 40),
            _ => ttl,
        }
    }

    /// The latest a dead holder's key can stay visible after its last renewal, as a multiple
    /// of ttl in per cent (Consul enforces TTLs lazily, up to twice).
    pub fn max_expiry(self, ttl: Duration) -> Duration {
        match self {
            StoreProfile::Consul => 2 * ttl,
            // The observer must first load the renewed record, then wait a ttl on its clock.
            StoreProfile::Kubernetes => ttl + ttl / 10,
            _ => ttl,
        }
    }

    /// Whether a store leader change resets every session's timer to its full ttl.
    pub fn resets_on_leader_change(self) -> bool {
        !matches!(self, StoreProfile::Kubernetes)
    }

    /// Consul's lock-delay: after a session holding the leader key is invalidated, nobody may
    /// acquire the key for this long.
    pub fn lock_delay(self) -> Duration {
        match self {
            StoreProfile::Consul => Duration::from_millis(500),
            _ => Duration::ZERO,
        }
    }

    /// How long a client waits for any answer on its connection, while it has requests
    /// outstanding, before it takes the connection for dead and drops it. ZooKeeper: the
    /// client's read timeout, two thirds of the session timeout. etcd: the gRPC HTTP/2 ping
    /// interval plus its timeout (5 s + 5 s by default, a third of Patroni's ttl); Consul and
    /// Kubernetes: the HTTP request timeout (Patroni's retry_timeout, also a third of its ttl).
    /// The simulator's connection rule (`World::connection_carries`) uses it.
    pub fn dead_connection_after(self, ttl: Duration) -> Duration {
        match self {
            StoreProfile::ZooKeeper => ttl * 2 / 3,
            _ => ttl / 3,
        }
    }

    /// ZooKeeper: the longest a client needs to reconnect after a partition heals, as a
    /// fraction of ttl.
    pub fn reconnect_delay(self, ttl: Duration) -> Duration {
        match self {
            StoreProfile::ZooKeeper => ttl * 2 / 5,
            _ => Duration::ZERO,
        }
    }
}

impl fmt::Display for StoreProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreProfile::Etcd => "etcd",
            StoreProfile::ZooKeeper => "zookeeper",
            StoreProfile::Consul => "consul",
            StoreProfile::Kubernetes => "kubernetes",
        })
    }
}

impl FromStr for StoreProfile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "etcd" => Ok(StoreProfile::Etcd),
            "zookeeper" | "zk" => Ok(StoreProfile::ZooKeeper),
            "consul" => Ok(StoreProfile::Consul),
            "kubernetes" | "k8s" => Ok(StoreProfile::Kubernetes),
            other => Err(format!("unknown profile {other:?}: use etcd, zookeeper, consul or kubernetes")),
        }
    }
}
