//! Shared test plumbing: an emulator with a kube client, and the conformance harness.
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{Api, ObjectMeta, PostParams};
use leasehold::testkit::conformance::{Client as SuiteClient, Harness};
use leasehold::{Dcs, DcsError, Key};
use leasehold_kube::{KubeClient, KubeOptions, MANAGED_BY, SCOPE_LABEL};
use leasehold_kube_emulator::{Emulator, EmulatorConfig};
use std::sync::Arc;

pub const TOKEN: &str = "test-token";
pub const NAMESPACE: &str = "leasehold-test";

/// A kube client for `url` with bearer `token`.
pub fn kube_client(url: &str, token: Option<&str>) -> kube::Client {
    let mut config = kube::Config::new(url.parse().expect("emulator URL parses"));
    config.default_namespace = NAMESPACE.into();
    config.auth_info.token = token.map(|t| secrecy::SecretString::from(t.to_string()));
    config.default_retry = false;
    leasehold_kube::install_default_crypto_provider();
    kube::Client::try_from(config).expect("kube client for the emulator")
}

pub fn options(ttl: Duration) -> KubeOptions {
    KubeOptions { namespace: Some(NAMESPACE.into()), ttl, ..KubeOptions::default() }
}

/// An emulator requiring `TOKEN`.
pub fn emulator() -> Emulator {
    Emulator::start(EmulatorConfig::with_token(TOKEN)).expect("emulator starts")
}

/// Writes garbage in the backend's documented layout.
pub async fn write_garbage(api: &Api<Lease>, scope: &str, key: &Key) -> Result<(), DcsError> {
    let (name, annotation, holder) = match key {
        Key::Leader => (format!("{scope}-leader"), "leasehold.io/leader", Some("someone".to_string())),
        Key::Member(m) => (format!("{scope}-member-{m}"), "leasehold.io/member", Some(m.clone())),
        Key::Control(c) => (format!("{scope}-{}", c.name()), "leasehold.io/value", None),
    };
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(
                [(MANAGED_BY.to_string(), "leasehold".to_string()), (SCOPE_LABEL.to_string(), scope.to_string())]
                    .into(),
            ),
            annotations: Some([(annotation.to_string(), "{not json \u{1}".to_string())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec { holder_identity: holder, lease_duration_seconds: Some(2), ..LeaseSpec::default() }),
    };
    api.create(&PostParams::default(), &lease)
        .await
        .map(|_| ())
        .map_err(|e| DcsError::unavailable_with("write garbage", e))
}

/// One suite client: a KubeClient of its own (own connection pool and keep-alive).
pub struct Process(pub KubeClient);

#[async_trait::async_trait]
impl SuiteClient for Process {
    fn scope(&self, scope: &str) -> Arc<dyn Dcs> {
        Arc::new(self.0.scope(scope))
    }

    async fn crash(self: Box<Self>) {
        self.0.stop();
    }
}

/// The conformance harness on the emulator.
pub struct EmulatorHarness {
    pub emulator: Emulator,
    pub ttl: Duration,
}

#[async_trait::async_trait]
impl Harness for EmulatorHarness {
    async fn open_client(&self) -> Result<Box<dyn SuiteClient>, DcsError> {
        let client = kube_client(&self.emulator.url(), Some(TOKEN));
        Ok(Box::new(Process(KubeClient::from_client(client, NAMESPACE, options(self.ttl))?)))
    }

    async fn write_garbage(&self, scope: &str, key: &Key) -> Result<(), DcsError> {
        let api = Api::namespaced(kube_client(&self.emulator.url(), Some(TOKEN)), NAMESPACE);
        write_garbage(&api, scope, key).await
    }

    async fn compact(&self) -> Result<bool, DcsError> {
        self.emulator.compact();
        Ok(true)
    }
}

/// The conformance harness on a real cluster (`KUBECONFIG`).
pub struct ClusterHarness {
    pub namespace: String,
    pub ttl: Duration,
}

impl ClusterHarness {
    async fn config(&self) -> Result<kube::Config, DcsError> {
        kube::Config::infer().await.map_err(|e| DcsError::fatal_with("KUBECONFIG unusable", e))
    }
}

#[async_trait::async_trait]
impl Harness for ClusterHarness {
    async fn open_client(&self) -> Result<Box<dyn SuiteClient>, DcsError> {
        let options = KubeOptions {
            namespace: Some(self.namespace.clone()),
            ttl: self.ttl,
            config: leasehold_kube::ConfigSource::Explicit(Box::new(self.config().await?)),
            ..KubeOptions::default()
        };
        Ok(Box::new(Process(KubeClient::connect(options).await?)))
    }

    async fn write_garbage(&self, scope: &str, key: &Key) -> Result<(), DcsError> {
        leasehold_kube::install_default_crypto_provider();
        let client = kube::Client::try_from(self.config().await?).map_err(|e| DcsError::fatal_with("client", e))?;
        write_garbage(&Api::namespaced(client, &self.namespace), scope, key).await
    }

    async fn compact(&self) -> Result<bool, DcsError> {
        Ok(false)
    }
}
