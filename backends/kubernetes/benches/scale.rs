//! "From 1 to 1001 clusters" on Kubernetes: many election scopes served by three processes on
//! one real kube-apiserver 1.19 (over its own etcd; from `LEASEHOLD_KUBE_APISERVER_BIN`,
//! `PATH` or `../shared/servers`).
//!
//! `cargo bench -p leasehold-kube --bench scale [-- --scopes 1001 --ttl 30 --loop-wait 10 --retry-timeout 10 --idle 60 --no-watch-cache]`
//!
//! The Kubernetes counterpart of `backends/etcd/benches/scale.rs`: starts the API server
//! (audit log on; watch cache on as in production, off with `--no-watch-cache`) and binds the `manifests/role.yaml` rights to three plain users, then three
//! member processes (this binary again, `member` mode, user `m1`..`m3`, each through its own
//! kubeconfig), each running one HA driver per scope with a stub resource, all on one
//! `KubeClient` (one watch mirror). Once every scope has a leader it prints, over the idle
//! window: the API requests per second by user, verb and resource (the audit log's
//! `RequestReceived` events), and the RSS and CPU of each member process and of the API
//! server. Then it kills with SIGKILL the process that leads the most scopes and prints how
//! long until every scope it led has a new leader (median and maximum). Not a CI test: a
//! figure for the notes. Without a kube-apiserver binary it says so and measures nothing.
//! Every process it starts is stopped by pid. The store-independent half is
//! `leasehold_test_servers::scale`.
//!
//! Unlike etcd, ZooKeeper and Consul, a Lease is its own lease: every leader renews its
//! scope's Lease with one PATCH per loop and every member keeps its member Lease with one
//! PUT per ttl/3, so idle requests grow with scopes x members.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use leasehold_kube::testing::{KubeApiServer, KubeApiServerConfig};
use leasehold_kube::{ConfigSource, KubeClient, KubeDcs, KubeOptions};
use leasehold_test_servers::scale::{self, MEMBERS, ScaleStore, Settings};

const NAMESPACE: &str = "scale";

/// The server, the coordinator's own client (user `admin`, watch mirror on: its reads cost
/// the server nothing after the first LIST) and the audit counts so far.
struct Kube {
    server: KubeApiServer,
    client: KubeClient,
    audit: Mutex<Audit>,
    watch_cache: bool,
}

/// Requests by `user verb resource`, counted from the audit log's `RequestReceived` events
/// (one per request, watches included once), read on from where the last count stopped. The
/// server rotates the log at 100 MB (`audit-<time>.log` beside it): a rotated file is read to
/// its end before the new one. Counting starts at the first read (earlier events are skipped).
#[derive(Default)]
struct Audit {
    path: PathBuf,
    /// The inode of the file being read and how far it has been read.
    at: Option<(u64, u64)>,
    counts: BTreeMap<String, f64>,
}

/// The fields of an audit event that are counted.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    stage: String,
    verb: String,
    user: User,
    object_ref: Option<ObjectRef>,
}

#[derive(serde::Deserialize)]
struct User {
    username: String,
}

#[derive(serde::Deserialize)]
struct ObjectRef {
    resource: Option<String>,
}

impl Audit {
    fn read_on(&mut self) -> std::io::Result<()> {
        let current = std::fs::metadata(&self.path)?;
        let Some((inode, offset)) = self.at else {
            self.at = Some((current.ino(), current.len()));
            return Ok(());
        };
        if inode == current.ino() {
            let end = self.count(&self.path.clone(), offset)?;
            self.at = Some((inode, end));
            return Ok(());
        }
        // Rotated since the last read: the rest of the old file, every file rotated after
        // it (their names sort by time), then the new one from its start.
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("audit-")))
            .collect();
        rotated.sort();
        let mut reading = false;
        for file in rotated {
            let ino = std::fs::metadata(&file)?.ino();
            if ino == inode {
                reading = true;
                self.count(&file, offset)?;
            } else if reading {
                self.count(&file, 0)?;
            }
        }
        let end = self.count(&self.path.clone(), 0)?;
        self.at = Some((current.ino(), end));
        Ok(())
    }

    /// Counts the whole lines of `path` from `offset`; returns where they end.
    fn count(&mut self, path: &std::path::Path, offset: u64) -> std::io::Result<u64> {
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        // Up to the last whole line: the server may be writing the next one.
        let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else { return Ok(offset) };
        for line in bytes[..end].split(|b| *b == b'\n') {
            // A line cut by the first read's starting point does not parse: skipped.
            let Ok(event) = serde_json::from_slice::<Event>(line) else { continue };
            if event.stage != "RequestReceived" {
                continue;
            }
            let resource = event.object_ref.and_then(|o| o.resource).unwrap_or_else(|| "-".into());
            *self.counts.entry(format!("{} {} {resource}", event.user.username, event.verb)).or_default() += 1.0;
        }
        Ok(offset + end as u64 + 1)
    }
}

/// Lets `MEMBERS` do what `manifests/role.yaml` allows (every verb on Leases in the
/// namespace), then waits until the authorizer (which reads RBAC through a cache) agrees.
async fn grant(admin: &kube::Client) {
    let verbs: Vec<String> =
        ["get", "list", "watch", "create", "update", "patch", "delete"].iter().map(|v| v.to_string()).collect();
    let meta = || ObjectMeta { name: Some("leasehold".into()), ..ObjectMeta::default() };
    let role = Role {
        metadata: meta(),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["coordination.k8s.io".into()]),
            resources: Some(vec!["leases".into()]),
            verbs,
            ..PolicyRule::default()
        }]),
    };
    let subjects = MEMBERS
        .iter()
        .map(|m| Subject {
            kind: "User".into(),
            name: m.to_string(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Subject::default()
        })
        .collect();
    let binding = RoleBinding {
        metadata: meta(),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "leasehold".into(),
        },
        subjects: Some(subjects),
    };
    Api::<Role>::namespaced(admin.clone(), NAMESPACE).create(&PostParams::default(), &role).await.expect("Role");
    Api::<RoleBinding>::namespaced(admin.clone(), NAMESPACE)
        .create(&PostParams::default(), &binding)
        .await
        .expect("RoleBinding");
    let reviews: Api<SubjectAccessReview> = Api::all(admin.clone());
    for member in MEMBERS {
        for attempt in 1.. {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(member.into()),
                    resource_attributes: Some(ResourceAttributes {
                        namespace: Some(NAMESPACE.into()),
                        group: Some("coordination.k8s.io".into()),
                        resource: Some("leases".into()),
                        verb: Some("patch".into()),
                        ..ResourceAttributes::default()
                    }),
                    ..SubjectAccessReviewSpec::default()
                },
                ..SubjectAccessReview::default()
            };
            let answer = reviews.create(&PostParams::default(), &review).await.expect("SubjectAccessReview");
            if answer.status.is_some_and(|s| s.allowed) {
                break;
            }
            assert!(attempt < 100, "the authorizer never allowed {member} the Role's rights");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[async_trait]
impl ScaleStore for Kube {
    type Client = KubeClient;
    type Scope = KubeDcs;

    /// `kubeconfig`: the member's own file (its user's token, namespace `scale`).
    async fn connect(kubeconfig: &str, s: &Settings) -> KubeClient {
        let options = KubeOptions {
            config: ConfigSource::Kubeconfig { path: Some(kubeconfig.into()), context: None },
            namespace: Some(NAMESPACE.into()),
            ..KubeOptions::default()
        };
        KubeClient::connect(options, &s.timing()).await.expect("connects")
    }

    fn scope(client: &KubeClient, name: &str) -> KubeDcs {
        client.scope(name)
    }

    async fn start(s: &Settings) -> Option<Kube> {
        if KubeApiServer::binary().expect("usable").is_none() {
            println!(
                "no kube-apiserver found (LEASEHOLD_KUBE_APISERVER_BIN, PATH, ../shared/servers): nothing to measure"
            );
            return None;
        }
        let users = MEMBERS.iter().map(|m| m.to_string()).collect();
        // Production servers serve LISTs from the watch cache; `--no-watch-cache` measures
        // the test harness's default (every LIST read from etcd).
        let watch_cache = !std::env::args().any(|a| a == "--no-watch-cache");
        let config = KubeApiServerConfig { users, audit: true, watch_cache };
        let server = KubeApiServer::start(config).await.expect("kube-apiserver starts");
        server.create_namespace(NAMESPACE).await.expect("namespace");
        grant(&server.client(server.admin_token()).await.expect("admin client")).await;
        let config = server.kube_config(server.admin_token(), NAMESPACE).await.expect("config");
        leasehold_kube::install_default_crypto_provider();
        let kube = kube::Client::try_from(config).expect("kube client");
        let options = KubeOptions { namespace: Some(NAMESPACE.into()), ..KubeOptions::default() };
        let client = KubeClient::from_client(kube, NAMESPACE, options, &s.timing()).expect("client");
        let audit = Mutex::new(Audit { path: server.audit_log(), ..Audit::default() });
        Some(Kube { server, client, audit, watch_cache })
    }

    fn describe(&self) -> String {
        let cache = if self.watch_cache { "watch cache on" } else { "watch cache off" };
        format!("kube-apiserver {} at {} ({cache})", self.server.version(), self.server.url())
    }

    fn endpoint(&self, index: usize) -> String {
        let token = self.server.token(MEMBERS[index]).expect("a member user");
        self.server.kubeconfig(token, NAMESPACE).expect("kubeconfig").display().to_string()
    }

    fn observer(&self) -> &KubeClient {
        &self.client
    }

    async fn requests(&self) -> BTreeMap<String, f64> {
        let mut audit = self.audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        audit.read_on().expect("audit log");
        audit.counts.clone()
    }

    fn server_pids(&self) -> Vec<(String, u32)> {
        self.server.pid().map(|p| ("kube-apiserver".to_string(), p)).into_iter().collect()
    }

    async fn stop(self) {
        let _ = self.client.shutdown().await;
    }
}

fn main() {
    scale::main::<Kube>();
}
