//! Shared test plumbing: an emulator with a kube client, and the conformance harness.
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ObjectMeta, PostParams};
use leasehold::testkit::conformance::{Client as SuiteClient, Harness};
pub use leasehold::testkit::election::timing_for;
use leasehold::{Dcs, DcsError, Key};
use leasehold_kube::testing::{KubeApiServer, KubeApiServerConfig};
use leasehold_kube::{KubeClient, KubeOptions, MANAGED_BY, SCOPE_LABEL};
use leasehold_kube_emulator::{AccessToken, Emulator, EmulatorConfig, Resource, Verb};
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

pub fn options() -> KubeOptions {
    KubeOptions { namespace: Some(NAMESPACE.into()), ..KubeOptions::default() }
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

/// What the tests run against: a real kube-apiserver when one is found (see
/// `leasehold_kube::testing`), else the in-repo emulator, saying so in one line.
pub enum Target {
    /// A real API server (with namespace `NAMESPACE` created).
    Real(KubeApiServer),
    /// The emulator, requiring `TOKEN`.
    Emulator(Emulator),
}

impl Target {
    /// A real API server if a binary is found, else the emulator; prints which.
    pub async fn start() -> Target {
        Target::start_with(KubeApiServerConfig::default()).await
    }

    /// A target where each `(user, verbs)` may use exactly `verbs` on Leases in `NAMESPACE`:
    /// on a real server through a Role and RoleBinding per user (RBAC), on the emulator
    /// through its access tokens. The user's token is [`Target::token`].
    pub async fn with_grants(grants: &[(&str, Vec<String>)]) -> Target {
        let users = grants.iter().map(|(u, _)| u.to_string()).collect();
        let target = Target::start_with(KubeApiServerConfig { users, ..KubeApiServerConfig::default() }).await;
        match target {
            Target::Real(server) => {
                let admin = server.client(server.admin_token()).await.expect("admin client");
                for (user, verbs) in grants {
                    grant(&admin, user, verbs).await;
                }
                Target::Real(server)
            }
            Target::Emulator(_) => {
                let tokens = grants
                    .iter()
                    .map(|(user, verbs)| {
                        let verbs: Vec<Verb> = verbs
                            .iter()
                            .map(|v| *Verb::ALL.iter().find(|k| k.as_str() == v).expect("a verb the emulator knows"))
                            .collect();
                        AccessToken::with_verbs(*user, &verbs)
                            .only_resources(&[Resource::Lease])
                            .only_namespaces(&[NAMESPACE])
                    })
                    .chain([AccessToken::full(TOKEN)])
                    .collect();
                Target::Emulator(Emulator::start(EmulatorConfig { tokens, ..EmulatorConfig::default() }).unwrap())
            }
        }
    }

    /// The token of `user` (from [`Target::with_grants`]).
    pub fn token(&self, user: &str) -> String {
        match self {
            Target::Real(s) => s.token(user).expect("a configured user").to_string(),
            Target::Emulator(_) => user.to_string(),
        }
    }

    /// Like [`Target::start`] with extra users or the audit log on the real server.
    /// `LEASEHOLD_TEST_EMULATORS=1` forces the emulator (to check the fallback path).
    pub async fn start_with(config: KubeApiServerConfig) -> Target {
        let forced = std::env::var_os("LEASEHOLD_TEST_EMULATORS").is_some_and(|v| v == "1");
        let binary = if forced { None } else { KubeApiServer::binary().expect("the shared kube-apiserver is usable") };
        match binary {
            Some(_) => {
                let server = KubeApiServer::start(config).await.expect("kube-apiserver starts");
                server.create_namespace(NAMESPACE).await.expect("namespace");
                announce(format!(
                    "kubernetes tests: real kube-apiserver {} ({}) at {}, over etcd",
                    server.version(),
                    server.binary_found().path.display(),
                    server.url()
                ));
                Target::Real(server)
            }
            None => {
                announce(
                    "kubernetes tests: NO kube-apiserver found (LEASEHOLD_KUBE_APISERVER_BIN, PATH, ../shared/servers): running against the in-repo EMULATOR".into(),
                );
                Target::Emulator(emulator())
            }
        }
    }

    pub fn is_real(&self) -> bool {
        matches!(self, Target::Real(_))
    }

    /// The token with every right.
    pub fn admin_token(&self) -> &str {
        match self {
            Target::Real(s) => s.admin_token(),
            Target::Emulator(_) => TOKEN,
        }
    }

    /// A kube client with `token` (`None`: no credentials), default namespace `NAMESPACE`.
    pub async fn kube(&self, token: Option<&str>) -> kube::Client {
        match self {
            Target::Real(s) => {
                let mut config = s.kube_config(token.unwrap_or("none"), NAMESPACE).await.expect("kube config");
                if token.is_none() {
                    config.auth_info.token = None;
                }
                leasehold_kube::install_default_crypto_provider();
                kube::Client::try_from(config).expect("kube client for the API server")
            }
            Target::Emulator(e) => kube_client(&e.url(), token),
        }
    }

    /// A leasehold client with the admin token and `ttl`.
    pub async fn client(&self, ttl: Duration) -> KubeClient {
        self.client_as(self.admin_token(), ttl).await
    }

    /// A leasehold client with `token` and `ttl`.
    pub async fn client_as(&self, token: &str, ttl: Duration) -> KubeClient {
        KubeClient::from_client(self.kube(Some(token)).await, NAMESPACE, options(), &timing_for(ttl)).expect("client")
    }

    /// The Lease API with the admin token.
    pub async fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.kube(Some(self.admin_token())).await, NAMESPACE)
    }

    /// Lease `name` as the server's JSON (not re-encoded by k8s-openapi), if it exists.
    pub async fn object(&self, name: &str) -> Option<serde_json::Value> {
        let client = self.kube(Some(self.admin_token())).await;
        let api: Api<DynamicObject> = Api::namespaced_with(client, NAMESPACE, &ApiResource::erase::<Lease>(&()));
        api.get_opt(name).await.expect("get Lease").map(|o| serde_json::to_value(o).expect("to JSON"))
    }

    /// Creates or replaces Lease `object` (JSON, with `metadata.name`) unconditionally, as
    /// another tool would; returns the stored object.
    pub async fn put_object(&self, mut object: serde_json::Value) -> serde_json::Value {
        let api = self.leases().await;
        let name = object["metadata"]["name"].as_str().expect("metadata.name").to_string();
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
            meta.remove("managedFields");
        }
        let mut lease: Lease = serde_json::from_value(object).expect("a Lease");
        let stored = match api.get_opt(&name).await.expect("get Lease") {
            None => api.create(&PostParams::default(), &lease).await.expect("create Lease"),
            Some(current) => {
                // A Lease update needs a resourceVersion (422 without one): the current one.
                lease.metadata.resource_version = current.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &lease).await.expect("replace Lease")
            }
        };
        serde_json::to_value(stored).expect("Lease to JSON")
    }

    /// Deletes Lease `name` unconditionally; whether it existed.
    pub async fn delete_object(&self, name: &str) -> bool {
        match self.leases().await.delete(name, &DeleteParams::default()).await {
            Ok(_) => true,
            Err(kube::Error::Api(e)) if e.code == 404 => false,
            Err(e) => panic!("delete Lease {name}: {e}"),
        }
    }
}

/// Creates a Role allowing `verbs` on Leases and binds it to `user`, then waits until the
/// authorizer (which reads RBAC objects through a cache) agrees.
async fn grant(admin: &kube::Client, user: &str, verbs: &[String]) {
    let name = format!("leasehold-{user}");
    let role = Role {
        metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["coordination.k8s.io".into()]),
            resources: Some(vec!["leases".into()]),
            verbs: verbs.to_vec(),
            ..PolicyRule::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: name.clone() },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: user.into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Subject::default()
        }]),
    };
    let roles: Api<Role> = Api::namespaced(admin.clone(), NAMESPACE);
    roles.create(&PostParams::default(), &role).await.expect("create Role");
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), NAMESPACE);
    bindings.create(&PostParams::default(), &binding).await.expect("create RoleBinding");
    let reviews: Api<SubjectAccessReview> = Api::all(admin.clone());
    let Some(verb) = verbs.first() else { return };
    for _ in 0..100 {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.into()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(NAMESPACE.into()),
                    group: Some("coordination.k8s.io".into()),
                    resource: Some("leases".into()),
                    verb: Some(verb.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = reviews.create(&PostParams::default(), &review).await.expect("SubjectAccessReview");
        if answer.status.is_some_and(|s| s.allowed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("RBAC never allowed {user} to {verb} leases");
}

/// The conformance harness on a [`Target`].
pub struct TargetHarness {
    pub target: Target,
    pub ttl: Duration,
}

#[async_trait::async_trait]
impl Harness for TargetHarness {
    async fn open_client(&self) -> Result<Box<dyn SuiteClient>, DcsError> {
        let client = self.target.kube(Some(self.target.admin_token())).await;
        Ok(Box::new(Process(KubeClient::from_client(client, NAMESPACE, options(), &timing_for(self.ttl))?)))
    }

    async fn write_garbage(&self, scope: &str, key: &Key) -> Result<(), DcsError> {
        write_garbage(&self.target.leases().await, scope, key).await
    }

    async fn compact(&self) -> Result<bool, DcsError> {
        match &self.target {
            Target::Real(s) => s.compact().map_err(|e| DcsError::unavailable_with("etcdctl compact", e))?,
            Target::Emulator(e) => {
                e.compact();
            }
        }
        Ok(true)
    }

    async fn delete_leader_key(&self, scope: &str) -> Result<bool, DcsError> {
        self.target.delete_object(&format!("{scope}-leader")).await;
        Ok(true)
    }
}

/// Prints `line` once per test binary (a repeated line is dropped), straight to stderr: the
/// test harness captures `println!`, and what the tests ran against must show in CI's output.
pub fn announce(line: String) {
    use std::io::Write;
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !said.contains(&line) {
        let _ = writeln!(std::io::stderr(), "{line}");
        said.push(line);
    }
}
