//! Connects to the store named by the configuration's store section.

use std::sync::Arc;

use leasehold::{Dcs, Timing};

use crate::config::StoreConfig;

/// The etcd client's options for `[etcd]`; `--check-config` validates the same value the
/// daemon connects with.
#[cfg(feature = "etcd")]
pub(crate) fn etcd_options(s: &crate::config::EtcdSection, timing: &Timing) -> leasehold_etcd::EtcdOptions {
    leasehold_etcd::EtcdOptions {
        endpoints: s.endpoints.0.clone(),
        prefix: s.prefix.clone(),
        user: s.username.clone(),
        password: s.password.clone(),
        ca_file: s.cacert.clone(),
        cert_file: s.cert.clone(),
        key_file: s.key.clone(),
        request_timeout: timing.retry_timeout,
        dial_timeout: timing.retry_timeout,
        member_ttl: s.member_ttl,
        ..leasehold_etcd::EtcdOptions::default()
    }
}

/// The Consul client options a `[consul]` section and the timing give; `--check-config`
/// validates the same value the daemon connects with.
#[cfg(feature = "consul")]
pub(crate) fn consul_options(
    s: &crate::config::ConsulSection,
    timing: &leasehold::Timing,
) -> leasehold_consul::ConsulOptions {
    leasehold_consul::ConsulOptions {
        address: s.address.clone(),
        token: s.token.clone(),
        prefix: s.prefix.clone(),
        request_timeout: timing.retry_timeout,
        tls: (s.cacert.is_some() || s.cert.is_some() || s.key.is_some()).then(|| leasehold_consul::ConsulTls {
            ca_cert: s.cacert.clone(),
            client_cert: s.cert.clone(),
            client_key: s.key.clone(),
        }),
        ..leasehold_consul::ConsulOptions::default()
    }
}

/// Why a session timeout the ZooKeeper server changed is refused, naming the `ttl` key.
#[cfg_attr(not(feature = "zookeeper"), allow(dead_code))]
fn zk_clamped_message(asked: std::time::Duration, got: std::time::Duration) -> String {
    let bound = if got > asked { "minSessionTimeout" } else { "maxSessionTimeout" };
    format!(
        "config key `ttl`: ZooKeeper negotiated a session timeout of {got:?} instead of the ttl {asked:?} \
         (the server clamps it to [minSessionTimeout, maxSessionTimeout], by default [2, 20] x tickTime; \
         here its {bound} applies): set ttl to {got:?} or change the server's session timeout bounds"
    )
}

/// Whether the backend for section `kind` is compiled into this binary.
#[allow(clippy::match_like_matches_macro)] // each arm depends on a feature; with all on, clippy sees constants
pub fn built_in(kind: &str) -> bool {
    match kind {
        "etcd" => cfg!(feature = "etcd"),
        "zookeeper" => cfg!(feature = "zookeeper"),
        "consul" => cfg!(feature = "consul"),
        "kubernetes" => cfg!(feature = "kubernetes"),
        _ => false,
    }
}

/// The backend client that owns the connection and the process's lease or session.
enum Client {
    #[cfg(feature = "etcd")]
    Etcd(leasehold_etcd::EtcdClient),
    #[cfg(feature = "zookeeper")]
    Zookeeper(leasehold_zookeeper::ZkClient),
    #[cfg(feature = "consul")]
    Consul(leasehold_consul::ConsulClient),
    #[cfg(feature = "kubernetes")]
    Kubernetes(leasehold_kube::KubeClient),
}

/// A connected store: the scope handle plus the client that keeps the connection (and its
/// lease or session) alive.
pub struct Store {
    /// The election scope.
    pub dcs: Arc<dyn Dcs>,
    client: Client,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("scope", &self.dcs.scope()).finish()
    }
}

/// Connects to the configured store and opens `scope`. The client takes its lease ttl from
/// `timing`, the same value the node runs with (the driver refuses any other).
pub async fn connect(store: &StoreConfig, scope: &str, timing: &Timing) -> anyhow::Result<Store> {
    let (dcs, client): (Arc<dyn Dcs>, Client) = match store {
        #[cfg(feature = "etcd")]
        StoreConfig::Etcd(s) => {
            use leasehold_etcd::EtcdClient;
            let client = EtcdClient::connect(etcd_options(s, timing), timing).await?;
            // etcd leases are whole seconds, and etcd may raise a short one to its minimum.
            if client.lease_ttl() != timing.ttl {
                tracing::warn!(asked = ?timing.ttl, got = ?client.lease_ttl(), "etcd granted a different lease TTL");
            }
            (Arc::new(client.scope(scope)), Client::Etcd(client))
        }
        #[cfg(feature = "zookeeper")]
        StoreConfig::Zookeeper(s) => {
            use leasehold_zookeeper::{ZkClient, ZkOptions, ZkTls};
            let tls = s.cacert.as_ref().map(|ca| ZkTls {
                ca_file: ca.clone(),
                cert_file: s.cert.clone(),
                key_file: s.key.clone(),
                verify_hostname: s.verify,
            });
            let options = ZkOptions {
                connect: s.hosts.0.join(","),
                prefix: s.prefix.clone(),
                request_timeout: timing.retry_timeout,
                tls,
                ..ZkOptions::default()
            };
            let client = ZkClient::connect(options, timing).await?;
            // The leader znode lives as long as the session: a clamped timeout would make
            // the leader's key outlast (or fall short of) the ttl every member plans with.
            if client.ttl_clamped() {
                let got = client.lease_ttl();
                client.shutdown().await.ok();
                anyhow::bail!("{}", zk_clamped_message(timing.ttl, got));
            }
            (Arc::new(client.scope(scope)), Client::Zookeeper(client))
        }
        #[cfg(feature = "consul")]
        StoreConfig::Consul(s) => {
            use leasehold_consul::ConsulClient;
            let options = consul_options(s, timing);
            let client = ConsulClient::connect(options, timing).await?;
            (Arc::new(client.scope(scope)), Client::Consul(client))
        }
        #[cfg(feature = "kubernetes")]
        StoreConfig::Kubernetes(s) => {
            use leasehold_kube::{ConfigSource, KubeClient, KubeOptions};
            let config = match (&s.kubeconfig, &s.context) {
                (None, None) => ConfigSource::Infer,
                (path, context) => ConfigSource::Kubeconfig { path: path.clone(), context: context.clone() },
            };
            let options = KubeOptions {
                namespace: s.namespace.clone(),
                config,
                prefix: s.prefix.clone(),
                labels: s.labels.clone(),
                request_timeout: timing.retry_timeout,
                ..KubeOptions::default()
            };
            let client = KubeClient::connect(options, timing).await?;
            (Arc::new(client.scope(scope)), Client::Kubernetes(client))
        }
        #[allow(unreachable_patterns)] // with every backend built in, no section is left
        other => anyhow::bail!(
            "config key `{}`: the {} backend is not built in to this binary (rebuild with --features {})",
            other.kind(),
            other.kind(),
            other.kind()
        ),
    };
    Ok(Store { dcs, client })
}

impl Store {
    /// Deletes the scope's leader key if it does not decode, only if it still holds exactly
    /// what was read (etcd: its bytes and mod revision; ZooKeeper: the znode's data version;
    /// Consul: `?cas=<ModifyIndex>`; Kubernetes: resourceVersion and uid preconditions). A
    /// valid record is never removed; every outcome but a removal is an error that says so.
    pub async fn remove_garbage_leader(&self) -> anyhow::Result<String> {
        use leasehold::GarbageRemoval;
        let scope = self.dcs.scope();
        // What the store calls the version it compared, for the message.
        let (outcome, version_name): (GarbageRemoval, &str) = match &self.client {
            #[cfg(feature = "etcd")]
            Client::Etcd(c) => (c.scope(scope).remove_garbage_leader().await?, "revision"),
            #[cfg(feature = "zookeeper")]
            Client::Zookeeper(c) => (c.scope(scope).remove_garbage_leader().await?, "zxid"),
            #[cfg(feature = "consul")]
            Client::Consul(c) => (c.scope(scope).remove_garbage_leader().await?, "ModifyIndex"),
            #[cfg(feature = "kubernetes")]
            Client::Kubernetes(c) => (c.scope(scope).remove_garbage_leader().await?, "resourceVersion"),
        };
        Ok(match outcome {
            GarbageRemoval::Removed { version } => {
                format!("removed the undecodable leader key (it was at {version_name} {version})")
            }
            GarbageRemoval::Absent => anyhow::bail!("there is no leader key; nothing was removed"),
            GarbageRemoval::Valid => {
                anyhow::bail!("the leader key holds a valid leader record; nothing was removed")
            }
            GarbageRemoval::Changed => {
                anyhow::bail!("the leader key changed while it was being removed; nothing was removed, look again")
            }
        })
    }

    /// Ends the process's lease or session (the client's `shutdown`) so its member keys
    /// vanish now. Release the leader key first (the driver's clean shutdown does).
    pub async fn close(self) {
        let result: Result<(), leasehold::DcsError> = match &self.client {
            #[cfg(feature = "etcd")]
            Client::Etcd(c) => c.shutdown().await,
            #[cfg(feature = "zookeeper")]
            Client::Zookeeper(c) => c.shutdown().await,
            #[cfg(feature = "consul")]
            Client::Consul(c) => c.shutdown().await,
            #[cfg(feature = "kubernetes")]
            Client::Kubernetes(c) => c.shutdown().await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "closing the store session");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_clamped_session_timeout_names_ttl_and_the_bound() {
        let up = super::zk_clamped_message(Duration::from_secs(3), Duration::from_secs(4));
        assert!(up.starts_with("config key `ttl`"), "{up}");
        assert!(up.contains("4s instead of the ttl 3s") && up.contains("minSessionTimeout applies"), "{up}");
        let down = super::zk_clamped_message(Duration::from_secs(60), Duration::from_secs(40));
        assert!(down.contains("40s instead of the ttl 60s") && down.contains("maxSessionTimeout applies"), "{down}");
    }
}
