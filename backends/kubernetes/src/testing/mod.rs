//! A real kube-apiserver for tests and benchmarks (feature `testing`).
//!
//! [`KubeApiServer`] starts Debian's `etcd` and a `kube-apiserver` over it, each on free
//! `127.0.0.1` ports below 32768 in one temporary directory, with token authentication,
//! RBAC authorization and the server's own self-signed serving certificate, which clients
//! verify (the kubeconfigs it writes point `certificate-authority` at `apiserver.crt`).
//! Dropping it kills both processes by pid and waits for them, also when a test panics.
//!
//! The kube-apiserver binary is `$LEASEHOLD_KUBE_APISERVER_BIN`, else `kube-apiserver` on
//! `PATH`, else `<workspace>/../shared/servers/kube-apiserver.xz`, checked against that
//! folder's `SHA256SUMS` and decompressed once into the target directory. The etcd binary
//! is `$LEASEHOLD_ETCD_BIN`, else `/usr/bin/etcd`, else `etcd` on `PATH`.
//! [`KubeApiServer::binary`] says whether one is there, so a test can fall back to the
//! emulator (and say so) when it is not.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use leasehold_kube::testing::{KubeApiServer, KubeApiServerConfig};
//! use leasehold_kube::{ConfigSource, KubeClient, KubeOptions};
//!
//! let server = KubeApiServer::start(KubeApiServerConfig::default()).await?;
//! server.create_namespace("db").await?;
//! let kubeconfig = server.kubeconfig(server.admin_token(), "db")?;
//! let options = KubeOptions {
//!     config: ConfigSource::Kubeconfig { path: Some(kubeconfig), context: None },
//!     ..KubeOptions::default()
//! };
//! let client = KubeClient::connect(options, &leasehold::Timing::default()).await.expect("connects");
//! # drop(client); Ok(()) }
//! ```

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tempfile::TempDir;

pub use leasehold_test_servers::{Found, Guarded, ServerBinary, find as find_binary, free_port, shared_servers_dir};

/// How long to wait for etcd and the API server to answer.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// Attempts at starting (a picked port may be taken meanwhile).
const START_ATTEMPTS: u32 = 3;

/// The etcd binary under the API server.
pub fn etcd_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("LEASEHOLD_ETCD_BIN") {
        return PathBuf::from(bin);
    }
    let debian = Path::new("/usr/bin/etcd");
    if debian.exists() { debian.to_path_buf() } else { PathBuf::from("etcd") }
}

/// How to start the API server.
#[derive(Clone, Debug, Default)]
pub struct KubeApiServerConfig {
    /// Users without any group besides `system:authenticated` (so RBAC grants them nothing
    /// until a Role is bound); each gets a token, see [`KubeApiServer::token`].
    pub users: Vec<String>,
    /// Log every request's metadata (`--audit-log-path`), for counting requests.
    pub audit: bool,
    /// Serve LISTs and WATCHes from the API server's watch cache, as production servers do.
    /// Off by default here, so that [`KubeApiServer::compact`] makes a watch from an older
    /// resourceVersion fail at once; the scale bench turns it on (without it every LIST reads
    /// every Lease of the namespace from etcd).
    pub watch_cache: bool,
}

/// A user known to the server's token file.
#[derive(Clone, Debug)]
struct User {
    name: String,
    token: String,
}

/// A running kube-apiserver over its own etcd; dropping it kills both.
pub struct KubeApiServer {
    dir: TempDir,
    binary: ServerBinary,
    port: u16,
    etcd_port: u16,
    etcd: Guarded,
    apiserver: Guarded,
    users: Vec<User>,
    args: Vec<String>,
    version: String,
}

impl std::fmt::Debug for KubeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApiServer").field("url", &self.url()).field("version", &self.version).finish()
    }
}

fn token() -> String {
    use std::hash::{BuildHasher, RandomState};
    let a = RandomState::new().hash_one(std::process::id());
    let b = RandomState::new().hash_one(a);
    format!("{a:016x}{b:016x}")
}

fn run(command: &mut Command) -> io::Result<()> {
    let out = command.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("{command:?} failed: {}", String::from_utf8_lossy(&out.stderr))))
    }
}

impl KubeApiServer {
    /// The kube-apiserver binary, if one can be found (see the module docs); an error when
    /// the shared copy is present but does not match its checksum.
    pub fn binary() -> io::Result<Option<ServerBinary>> {
        leasehold_test_servers::find("kube-apiserver", "LEASEHOLD_KUBE_APISERVER_BIN")
    }

    /// Starts etcd and the API server and waits until the server answers an authenticated
    /// request over verified TLS. Fails when no binary is found.
    pub async fn start(config: KubeApiServerConfig) -> io::Result<KubeApiServer> {
        let binary = KubeApiServer::binary()?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no kube-apiserver: set LEASEHOLD_KUBE_APISERVER_BIN, put it on PATH, or provide {}/kube-apiserver.xz",
                    shared_servers_dir().display()
                ),
            )
        })?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match KubeApiServer::start_once(&binary, &config).await {
                Ok(server) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("kube-apiserver did not start")))
    }

    async fn start_once(binary: &ServerBinary, config: &KubeApiServerConfig) -> io::Result<KubeApiServer> {
        let dir = tempfile::Builder::new().prefix("leasehold-kube-").tempdir()?;
        let path = dir.path();
        let (etcd_port, peer_port, port) = (free_port()?, free_port()?, free_port()?);
        let mut etcd = Command::new(etcd_binary());
        etcd.arg("--name=default")
            .arg(format!("--data-dir={}", path.join("etcd").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"));
        let etcd = Guarded::spawn(etcd, &path.join("etcd.log"))?;

        run(Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(path.join("sa.key"))
            .arg("2048")
            .stderr(std::process::Stdio::null()))?;
        run(Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(path.join("sa.key"))
            .arg("-out")
            .arg(path.join("sa.pub"))
            .stderr(std::process::Stdio::null()))?;
        let mut users = vec![User { name: "admin".into(), token: token() }];
        users.extend(config.users.iter().map(|name| User { name: name.clone(), token: token() }));
        let mut tokens = String::new();
        for (i, user) in users.iter().enumerate() {
            let groups = if i == 0 { ",\"system:masters\"" } else { "" };
            tokens.push_str(&format!("{},{},{}-uid{groups}\n", user.token, user.name, user.name));
        }
        std::fs::write(path.join("tokens.csv"), tokens)?;
        let mut args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            "--insecure-port=0".into(),
            format!("--cert-dir={}", path.join("certs").display()),
            format!("--token-auth-file={}", path.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-key-file={}", path.join("sa.pub").display()),
            format!("--service-account-signing-key-file={}", path.join("sa.key").display()),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            "--api-audiences=https://kubernetes.default.svc".into(),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
        ];
        if !config.watch_cache {
            // Watches go to etcd itself, so compacting etcd ([`KubeApiServer::compact`]) makes a
            // watch from an older resourceVersion fail with 410 Expired at once; with the watch
            // cache that needs enough writes to push the version out of the cache.
            args.push("--watch-cache=false".into());
        }
        if config.audit {
            std::fs::write(
                path.join("audit-policy.yaml"),
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n",
            )?;
            args.push(format!("--audit-policy-file={}", path.join("audit-policy.yaml").display()));
            args.push(format!("--audit-log-path={}", path.join("audit.log").display()));
        }
        let mut command = Command::new(&binary.path);
        command.args(&args);
        let apiserver = Guarded::spawn(command, &path.join("apiserver.log"))?;
        let mut server = KubeApiServer {
            dir,
            binary: binary.clone(),
            port,
            etcd_port,
            etcd,
            apiserver,
            users,
            args,
            version: String::new(),
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Polls `/version` with the admin token over verified TLS until it answers.
    async fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = crate::observe::now() + READY_WITHIN;
        let mut last = String::new();
        while crate::observe::now() < deadline {
            if !self.apiserver.is_running() || !self.etcd.is_running() {
                return Err(io::Error::other(format!(
                    "kube-apiserver or etcd exited while starting:\n{}\n{}",
                    self.apiserver.log_tail(20),
                    self.etcd.log_tail(5)
                )));
            }
            if self.ca_file().is_file() {
                match self.client(self.admin_token()).await {
                    Ok(client) => match client.apiserver_version().await {
                        Ok(info) => {
                            self.version = match &self.binary.found {
                                // The shared build carries no version stamps; its checksum
                                // (checked against SHA256SUMS) pins it to the 1.19 tree its
                                // README names.
                                Found::Shared(_) if info.git_version.starts_with("v0.0.0-") => {
                                    format!("1.19 (unstamped build {})", info.git_version)
                                }
                                _ => info.git_version,
                            };
                            return Ok(());
                        }
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(io::Error::other(format!(
            "kube-apiserver did not answer within {READY_WITHIN:?} ({last}):\n{}",
            self.apiserver.log_tail(20)
        )))
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The server's self-signed certificate and its CA (PEM), written by the server itself.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("certs/apiserver.crt")
    }

    /// The version the server reports (`/version`'s `gitVersion`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where the binary came from.
    pub fn binary_found(&self) -> &ServerBinary {
        &self.binary
    }

    /// The token of the `admin` user (group `system:masters`: everything allowed).
    pub fn admin_token(&self) -> &str {
        &self.users[0].token
    }

    /// The token of `user` (one of [`KubeApiServerConfig::users`]).
    pub fn token(&self, user: &str) -> Option<&str> {
        self.users.iter().find(|u| u.name == user).map(|u| u.token.as_str())
    }

    /// The audit log (with [`KubeApiServerConfig::audit`]).
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// The temporary directory (logs, certificates, kubeconfigs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a kubeconfig for `token` with default namespace `namespace`; returns its path.
    pub fn kubeconfig(&self, token: &str, namespace: &str) -> io::Result<PathBuf> {
        let file = self.dir.path().join(format!("kubeconfig-{}-{namespace}.yaml", &token[..token.len().min(8)]));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\n\
             users:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: user\n    namespace: {namespace}\n\
             current-context: test\n",
            url = self.url(),
            ca = self.ca_file().display(),
        );
        std::fs::write(&file, text)?;
        Ok(file)
    }

    /// A kube configuration for `token` (through a kubeconfig file, so the serving
    /// certificate is verified as any user's client would), retries off.
    pub async fn kube_config(&self, token: &str, namespace: &str) -> io::Result<kube::Config> {
        let file = Kubeconfig::read_from(self.kubeconfig(token, namespace)?).map_err(io::Error::other)?;
        let mut config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .map_err(io::Error::other)?;
        config.default_retry = false;
        Ok(config)
    }

    /// A kube client for `token`.
    pub async fn client(&self, token: &str) -> io::Result<kube::Client> {
        crate::install_default_crypto_provider();
        kube::Client::try_from(self.kube_config(token, "default").await?).map_err(io::Error::other)
    }

    /// Creates namespace `name` (as admin) unless it exists.
    pub async fn create_namespace(&self, name: &str) -> io::Result<()> {
        let api: kube::Api<Namespace> = kube::Api::all(self.client(self.admin_token()).await?);
        let namespace = Namespace {
            metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
            ..Namespace::default()
        };
        match api.create(&PostParams::default(), &namespace).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(io::Error::other(format!("create namespace {name}: {e}"))),
        }
    }

    /// Compacts etcd's history (`etcdctl compact`), so a watch from any resourceVersion seen
    /// before this call answers 410 Expired. A write outside the API server's keys goes
    /// first: a watch from `v` starts at `v + 1`, which must be older than the compaction point.
    pub fn compact(&self) -> io::Result<()> {
        let endpoint = format!("--endpoints=http://127.0.0.1:{}", self.etcd_port);
        run(Command::new("etcdctl").env("ETCDCTL_API", "3").args([
            endpoint.as_str(),
            "put",
            "/leasehold-test/compact",
            "x",
        ]))?;
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([endpoint.as_str(), "endpoint", "status", "--write-out=json"])
            .output()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            io::Error::other(format!("etcdctl endpoint status: {e}: {}", String::from_utf8_lossy(&out.stderr)))
        })?;
        let revision = status[0]["Status"]["header"]["revision"]
            .as_u64()
            .ok_or_else(|| io::Error::other(format!("no revision in etcdctl's answer {status}")))?;
        run(Command::new("etcdctl").env("ETCDCTL_API", "3").args([endpoint.as_str(), "compact", &revision.to_string()]))
    }

    /// The API server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.apiserver.pid()
    }

    /// Kills the API server (SIGKILL); etcd keeps running with the data.
    pub fn kill(&mut self) {
        self.apiserver.kill();
    }

    /// Starts the API server again on the same port and etcd, and waits until it answers.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.apiserver.kill();
        let mut command = Command::new(&self.binary.path);
        command.args(&self.args);
        self.apiserver = Guarded::spawn(command, &self.dir.path().join("apiserver.log"))?;
        self.wait_ready().await
    }

    /// The last lines of the API server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.apiserver.log_tail(lines)
    }
}

/// Lease requests by verb, read from a [`KubeApiServer::audit_log`]; each audit ID is counted
/// once across calls, so [`take`](LeaseAudit::take) gives what arrived since the last call.
#[derive(Debug)]
pub struct LeaseAudit {
    path: PathBuf,
    seen: HashSet<String>,
}

impl LeaseAudit {
    /// Counts from the audit log at `path`.
    pub fn new(path: PathBuf) -> Self {
        LeaseAudit { path, seen: HashSet::new() }
    }

    /// Lease requests by verb (`get`, `list`, `patch`, ...) not counted by an earlier call.
    pub fn take(&mut self) -> BTreeMap<String, u64> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if event.pointer("/objectRef/resource").and_then(|v| v.as_str()) != Some("leases") {
                continue;
            }
            let id = event["auditID"].as_str().unwrap_or_default().to_string();
            if self.seen.insert(id) {
                *counts.entry(event["verb"].as_str().unwrap_or("?").to_string()).or_insert(0) += 1;
            }
        }
        counts
    }
}
