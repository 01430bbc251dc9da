//! Connects to the store named by the configuration's store section.

use std::sync::Arc;

use leasehold::{Dcs, Timing};

use crate::config::StoreConfig;

/// Whether the backend for section `kind` is compiled into this binary.
pub fn built_in(kind: &str) -> bool {
    match kind {
        "etcd" => cfg!(feature = "etcd"),
        "zookeeper" => cfg!(feature = "zookeeper"),
        "consul" => cfg!(feature = "consul"),
        "kubernetes" => cfg!(feature = "kubernetes"),
        _ => false,
    }
}

/// A connected store: the scope handle plus whatever keeps the connection (and its lease or
/// session) alive.
pub struct Store {
    /// The election scope.
    pub dcs: Arc<dyn Dcs>,
    /// Keeps the backend's client alive as long as the store is used.
    _client: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("scope", &self.dcs.scope()).finish()
    }
}

/// Connects to the configured store and opens `scope`.
pub async fn connect(store: &StoreConfig, scope: &str, timing: &Timing) -> anyhow::Result<Store> {
    match store {
        #[cfg(feature = "zookeeper")]
        StoreConfig::Zookeeper(s) => {
            use leasehold_zookeeper::{ZkClient, ZkOptions};
            let options = ZkOptions {
                connect: s.hosts.0.join(","),
                prefix: s.prefix.clone(),
                ttl: timing.ttl,
                request_timeout: timing.retry_timeout,
                ..ZkOptions::default()
            };
            let client = ZkClient::connect(options).await?;
            if client.session_timeout_clamped() {
                tracing::warn!(
                    asked = ?timing.ttl,
                    got = ?client.session_timeout(),
                    "ZooKeeper clamped the session timeout; the lease follows the server's value"
                );
            }
            let dcs: Arc<dyn Dcs> = Arc::new(client.scope(scope));
            Ok(Store { dcs, _client: Box::new(client) })
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
                // Lease durations are whole seconds.
                ttl: std::time::Duration::from_secs(timing.ttl.as_secs_f64().ceil() as u64),
                request_timeout: timing.retry_timeout,
            };
            let client = KubeClient::connect(options).await?;
            let dcs: Arc<dyn Dcs> = Arc::new(client.scope(scope));
            Ok(Store { dcs, _client: Box::new(KubeGuard(client)) })
        }
        other => anyhow::bail!(
            "config key `{}`: the {} backend is not built in to this binary",
            other.kind(),
            other.kind()
        ),
    }
}

/// Stops the Kubernetes client's keep-alive when the store is dropped.
#[cfg(feature = "kubernetes")]
struct KubeGuard(leasehold_kube::KubeClient);

#[cfg(feature = "kubernetes")]
impl Drop for KubeGuard {
    fn drop(&mut self) {
        self.0.stop();
    }
}
