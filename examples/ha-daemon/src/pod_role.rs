//! The pod role label on Kubernetes: a [`Resource`] wrapper that keeps the daemon's own
//! Pod labelled `role=primary` while it leads and `role=replica` otherwise (names and
//! values from the `[kubernetes]` section, Patroni's `role_label`, `leader_label_value`,
//! `follower_label_value`), so a Service selecting the label routes to the primary.
//!
//! Order, which is what makes the primary Service safe:
//! * **demote**: the label goes to the follower value *before* the resource demotes, and
//!   the node releases the leader key only after the demote returns (DESIGN.md rule 4), so
//!   the Service stops routing to the old primary before anyone else can be promoted. A
//!   label patch that fails is retried for a bounded time ([`DEMOTE_LABEL_BOUND`]), logged,
//!   and never holds the demote up beyond that.
//! * **promote**: the label goes to the leader value only *after* the resource is primary,
//!   and only after every other pod of the cluster (`<scope_label>=<scope>`) still carrying
//!   the leader value (a crashed leader cannot clear its own) was set to the follower value.
//!   A patch that fails is retried on the next status poll.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use leasehold::Epoch;
use leasehold::driver::Resource;
use leasehold::node::{DemoteMode, ResourceStatus};

use crate::config::KubernetesSection;

/// How long a demote keeps trying to take the leader value off its pod before it goes on.
pub const DEMOTE_LABEL_BOUND: Duration = Duration::from_secs(5);

/// The role the label should show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Leader,
    Follower,
}

#[derive(Debug, Default)]
struct LabelState {
    /// What the label should say (None until the node first acts).
    want: Option<Role>,
    /// What a patch last confirmed.
    applied: Option<Role>,
}

/// The label names and values, and the pod.
#[derive(Clone, Debug)]
pub struct PodLabelSettings {
    /// This daemon's pod.
    pub pod: String,
    /// The namespace of the pods.
    pub namespace: String,
    /// The election scope (value of `scope_label`).
    pub scope: String,
    /// The role label key.
    pub role_label: String,
    /// Its value on the leader.
    pub leader_value: String,
    /// Its value elsewhere.
    pub follower_value: String,
    /// The label key whose value is the scope.
    pub scope_label: String,
    /// Upper bound on one API request.
    pub request_timeout: Duration,
}

/// A [`Resource`] that keeps its pod's role label current around `inner`'s transitions.
pub struct PodRoleLabel {
    inner: Arc<dyn Resource>,
    pods: Api<Pod>,
    settings: PodLabelSettings,
    state: tokio::sync::Mutex<LabelState>,
}

impl std::fmt::Debug for PodRoleLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodRoleLabel").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// The kube configuration the `[kubernetes]` section names: its kubeconfig (and context),
/// else `KUBECONFIG`/`~/.kube/config`, else the in-cluster service account (token and CA
/// under `/var/run/secrets/kubernetes.io/serviceaccount`).
async fn kube_config(section: &KubernetesSection) -> anyhow::Result<kube::Config> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions { context: section.context.clone(), ..KubeConfigOptions::default() };
    let config = match &section.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("config key `kubernetes.kubeconfig`: {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options).await?
        }
        None if section.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await?,
    };
    Ok(config)
}

impl PodRoleLabel {
    /// Wraps `inner` when the section names a pod (`pod_name`, else `$POD_NAME`); `None`
    /// (and `inner` is used as it is) when there is no pod to label.
    pub async fn wrap(
        inner: Arc<dyn Resource>,
        section: &KubernetesSection,
        scope: &str,
        request_timeout: Duration,
    ) -> anyhow::Result<Option<PodRoleLabel>> {
        let Some(pod) = section.pod_name.clone().or_else(|| std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()))
        else {
            return Ok(None);
        };
        let mut config = kube_config(section).await?;
        // One bounded attempt per call; this wrapper decides about retries.
        config.default_retry = false;
        let namespace = section
            .namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|n| !n.is_empty()))
            .unwrap_or_else(|| config.default_namespace.clone());
        leasehold_kube::install_default_crypto_provider();
        let client = kube::Client::try_from(config)?;
        let settings = PodLabelSettings {
            pod,
            namespace: namespace.clone(),
            scope: scope.to_string(),
            role_label: section.role_label.clone(),
            leader_value: section.leader_label_value.clone(),
            follower_value: section.follower_label_value.clone(),
            scope_label: section.scope_label.clone(),
            request_timeout,
        };
        Ok(Some(PodRoleLabel::new(inner, Api::namespaced(client, &namespace), settings)))
    }

    /// Wraps `inner`, labelling through `pods`.
    pub fn new(inner: Arc<dyn Resource>, pods: Api<Pod>, settings: PodLabelSettings) -> PodRoleLabel {
        PodRoleLabel { inner, pods, settings, state: tokio::sync::Mutex::new(LabelState::default()) }
    }

    /// The settings in use.
    pub fn settings(&self) -> &PodLabelSettings {
        &self.settings
    }

    fn value(&self, role: Role) -> &str {
        match role {
            Role::Leader => &self.settings.leader_value,
            Role::Follower => &self.settings.follower_value,
        }
    }

    /// Sets the role label of pod `name` to `value` (a JSON merge patch of that one label).
    async fn patch(&self, name: &str, value: &str) -> Result<(), String> {
        let body = serde_json::json!({"metadata": {"labels": {self.settings.role_label.clone(): value}}});
        let (params, patch) = (PatchParams::default(), Patch::Merge(&body));
        let call = self.pods.patch(name, &params, &patch);
        match tokio::time::timeout(self.settings.request_timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                Err(format!("patch pod {}/{name} {}={value}: {e}", self.settings.namespace, self.settings.role_label))
            }
            Err(_) => Err(format!(
                "patch pod {}/{name} {}={value}: no answer within {:?}",
                self.settings.namespace, self.settings.role_label, self.settings.request_timeout
            )),
        }
    }

    /// Sets the follower value on every other pod of the cluster that carries the leader value.
    async fn clear_others(&self) -> Result<(), String> {
        let s = &self.settings;
        let selector = format!("{}={},{}={}", s.scope_label, s.scope, s.role_label, s.leader_value);
        let listed = tokio::time::timeout(s.request_timeout, self.pods.list(&ListParams::default().labels(&selector)))
            .await
            .map_err(|_| {
                format!("list pods in {} with {selector}: no answer within {:?}", s.namespace, s.request_timeout)
            })?
            .map_err(|e| format!("list pods in {} with {selector}: {e}", s.namespace))?;
        for pod in listed.items {
            let Some(name) = pod.metadata.name else { continue };
            if name != s.pod {
                self.patch(&name, &s.follower_value).await?;
                tracing::info!(pod = %name, "took the leader label off another pod of the cluster");
            }
        }
        Ok(())
    }

    /// Makes the label say what `state.want` says; one attempt.
    async fn apply(&self, state: &mut LabelState) -> Result<(), String> {
        let Some(want) = state.want else { return Ok(()) };
        if want == Role::Leader {
            // Never two leader labels: the others lose theirs first.
            self.clear_others().await?;
        }
        self.patch(&self.settings.pod, self.value(want)).await?;
        state.applied = Some(want);
        tracing::info!(pod = %self.settings.pod, label = %self.settings.role_label, value = self.value(want), "pod role label set");
        Ok(())
    }
}

#[async_trait]
impl Resource for PodRoleLabel {
    async fn promote(&self, epoch: Epoch) -> Result<(), String> {
        // The label follows the resource: set only once it is primary.
        self.inner.promote(epoch).await?;
        let mut state = self.state.lock().await;
        state.want = Some(Role::Leader);
        if let Err(e) = self.apply(&mut state).await {
            tracing::warn!(error = %e, "the leader label is not set yet; retrying on the next status poll");
        }
        Ok(())
    }

    async fn demote(&self, mode: DemoteMode) -> Result<(), String> {
        // The label goes first, so the primary Service stops routing here before the
        // resource demotes and long before the key is released. Bounded: a patch that keeps
        // failing must not hold the demote up.
        {
            let mut state = self.state.lock().await;
            state.want = Some(Role::Follower);
            let attempts = async {
                loop {
                    match self.apply(&mut state).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "taking the leader label off this pod; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            };
            if tokio::time::timeout(DEMOTE_LABEL_BOUND, attempts).await.is_err() {
                tracing::error!(
                    bound = ?DEMOTE_LABEL_BOUND,
                    "could not take the leader label off this pod; demoting anyway (the next leader clears it)"
                );
            }
        }
        self.inner.demote(mode).await
    }

    async fn follow(&self, leader: Option<&str>, conn_url: Option<&str>) -> Result<(), String> {
        let result = self.inner.follow(leader, conn_url).await;
        let mut state = self.state.lock().await;
        state.want = Some(Role::Follower);
        if state.applied != state.want
            && let Err(e) = self.apply(&mut state).await
        {
            tracing::warn!(error = %e, "the follower label is not set yet; retrying on the next status poll");
        }
        result
    }

    async fn status(&self) -> ResourceStatus {
        let status = self.inner.status().await;
        // Retry a label that did not take, without queueing behind a transition.
        if let Ok(mut state) = self.state.try_lock()
            && state.want.is_some()
            && state.applied != state.want
            && let Err(e) = self.apply(&mut state).await
        {
            tracing::warn!(error = %e, "pod role label still not set");
        }
        status
    }

    async fn set_sync_standbys(&self, names: &[String]) -> Result<(), String> {
        self.inner.set_sync_standbys(names).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records the calls it gets.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait]
    impl Resource for Recorder {
        async fn promote(&self, epoch: Epoch) -> Result<(), String> {
            self.0.lock().unwrap().push(format!("promote {epoch}"));
            Ok(())
        }
        async fn demote(&self, _mode: DemoteMode) -> Result<(), String> {
            self.0.lock().unwrap().push("demote".into());
            Ok(())
        }
        async fn follow(&self, _leader: Option<&str>, _conn_url: Option<&str>) -> Result<(), String> {
            self.0.lock().unwrap().push("follow".into());
            Ok(())
        }
        async fn status(&self) -> ResourceStatus {
            ResourceStatus::default()
        }
    }

    /// An API server that never answers: a port that accepts connections and stays silent.
    fn silent_api() -> (std::net::TcpListener, Api<Pod>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        leasehold_kube::install_default_crypto_provider();
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        (listener, Api::namespaced(client, "db"))
    }

    fn settings() -> PodLabelSettings {
        PodLabelSettings {
            pod: "pg-0".into(),
            namespace: "db".into(),
            scope: "pg".into(),
            role_label: "role".into(),
            leader_value: "primary".into(),
            follower_value: "replica".into(),
            scope_label: "cluster-name".into(),
            request_timeout: Duration::from_millis(300),
        }
    }

    /// A label patch that never succeeds neither keeps the demote from running nor fails
    /// it: the inner demote runs once the bound is spent, and its result is returned.
    #[tokio::test]
    async fn an_unreachable_api_does_not_block_the_demote() {
        let (_listener, pods) = silent_api();
        let inner = Arc::new(Recorder::default());
        let labelled = PodRoleLabel::new(inner.clone(), pods, settings());
        assert_eq!(labelled.demote(DemoteMode::Graceful).await, Ok(()));
        assert_eq!(*inner.0.lock().unwrap(), vec!["demote".to_string()]);
        // A promote goes through too; the label is left for the status poll to retry.
        assert_eq!(labelled.promote(Epoch(7)).await, Ok(()));
        assert_eq!(inner.0.lock().unwrap().len(), 2);
        let state = labelled.state.lock().await;
        assert_eq!((state.want, state.applied), (Some(Role::Leader), None));
    }
}
