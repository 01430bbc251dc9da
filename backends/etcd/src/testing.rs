//! Real etcd processes for tests and benchmarks (feature `testing`).
//!
//! [`EtcdCluster`] starts one or more `etcd` members on free `127.0.0.1` ports below 32768
//! (picked at run time), each with its data in a temporary directory, and waits until every
//! member reports healthy. Members can be killed, paused (SIGSTOP), resumed and restarted.
//! Dropping the cluster kills every process it started by pid and waits for it, also when a
//! test panics. [`EtcdServer`] is the single-node case.
//!
//! The binary is `$LEASEHOLD_ETCD_BIN`, else `/usr/bin/etcd` (Debian's `etcd-server`), else
//! `etcd` on `PATH`.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use leasehold_etcd::testing::EtcdCluster;
//! use leasehold_etcd::EtcdClient;
//!
//! let mut cluster = EtcdCluster::start(3).await?;
//! let client = EtcdClient::connect(cluster.options(), &cluster.timing()).await.expect("connects");
//! let leader = cluster.leader().await?;
//! cluster.kill(leader);
//! # drop(client); Ok(()) }
//! ```

use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use leasehold::Timing;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::options::EtcdOptions;

pub use leasehold_test_servers::{Pki, make_pki};

/// How long to wait for members to become healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);
/// Attempts at starting a fresh cluster (a picked port may be taken meanwhile).
const START_ATTEMPTS: u32 = 3;

/// TLS files for the client URLs of the members.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The server certificate (PEM), valid for `127.0.0.1`.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// The CA that clients' certificates must chain to (PEM); clients trust it too.
    pub ca_file: PathBuf,
    /// Require client certificates (`--client-cert-auth`).
    pub client_cert_auth: bool,
}

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Number of members (1 or 3 in this crate's tests).
    pub members: usize,
    /// Serve clients over TLS (`https://`); peers and metrics stay plain HTTP on loopback.
    pub tls: Option<ServerTls>,
    /// More command-line arguments for every member.
    pub extra_args: Vec<String>,
}

impl EtcdConfig {
    /// `members` members, plain HTTP.
    pub fn new(members: usize) -> Self {
        EtcdConfig { members, tls: None, extra_args: Vec::new() }
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    child: Option<Child>,
}

/// A running etcd cluster of real processes; dropping it kills them all.
pub struct EtcdCluster {
    config: EtcdConfig,
    dir: TempDir,
    token: String,
    members: Vec<Member>,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster").field("endpoints", &self.endpoints()).finish_non_exhaustive()
    }
}

fn random() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one((std::process::id(), CALLS.fetch_add(1, Ordering::Relaxed)))
}

/// Free loopback ports come from the harness crate the Consul and kube harnesses share.
use leasehold_test_servers::free_port;

/// The timing tests use against these servers: ttl 2 s (etcd's minimum with default election
/// timeouts), loop_wait ttl / 5, retry_timeout 3 ttl / 10, safety_margin ttl / 5.
pub fn timing() -> Timing {
    let ttl = Duration::from_secs(2);
    Timing { ttl, loop_wait: ttl / 5, retry_timeout: ttl * 3 / 10, safety_margin: ttl / 5, ..Timing::default() }
}

/// The etcd binary to run.
pub fn etcd_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("LEASEHOLD_ETCD_BIN") {
        return PathBuf::from(bin);
    }
    let debian = Path::new("/usr/bin/etcd");
    if debian.exists() { debian.to_path_buf() } else { PathBuf::from("etcd") }
}

/// Plain HTTP GET on loopback; the body.
async fn http_get(port: u16, path: &str) -> io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

impl EtcdCluster {
    /// Starts `members` plain-HTTP members and waits until all are healthy.
    pub async fn start(members: usize) -> io::Result<EtcdCluster> {
        EtcdCluster::start_with(EtcdConfig::new(members)).await
    }

    /// Starts a cluster as `config` says and waits until all members are healthy.
    pub async fn start_with(config: EtcdConfig) -> io::Result<EtcdCluster> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            let mut cluster = EtcdCluster::create(config.clone())?;
            for i in 0..cluster.members.len() {
                cluster.spawn(i, "new")?;
            }
            match cluster.wait_healthy().await {
                Ok(()) => return Ok(cluster),
                // Dropping the cluster kills whatever did start.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("etcd did not start")))
    }

    fn create(config: EtcdConfig) -> io::Result<EtcdCluster> {
        if config.members == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "an etcd cluster needs at least one member"));
        }
        let dir = tempfile::Builder::new().prefix("leasehold-etcd-").tempdir()?;
        let members = (0..config.members)
            .map(|i| {
                Ok(Member {
                    name: format!("m{i}"),
                    client_port: free_port()?,
                    peer_port: free_port()?,
                    metrics_port: free_port()?,
                    child: None,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(EtcdCluster { config, dir, token: format!("lh-{:x}", random()), members })
    }

    fn scheme(&self) -> &'static str {
        if self.config.tls.is_some() { "https" } else { "http" }
    }

    fn spawn(&mut self, i: usize, state: &str) -> io::Result<()> {
        let initial: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)).collect();
        let scheme = self.scheme();
        let m = &self.members[i];
        let client_url = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer_url = format!("http://127.0.0.1:{}", m.peer_port);
        let log = File::options().create(true).append(true).open(self.log_path(i))?;
        let mut command = Command::new(etcd_binary());
        command
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("{}.data", m.name)))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{}", m.metrics_port)])
            // Tests ping every second to notice frozen members quickly.
            .args(["--grpc-keepalive-min-time", "500ms"])
            .args(&self.config.extra_args);
        if let Some(tls) = &self.config.tls {
            command.arg("--cert-file").arg(&tls.cert_file).arg("--key-file").arg(&tls.key_file);
            command.arg("--trusted-ca-file").arg(&tls.ca_file);
            if tls.client_cert_auth {
                command.arg("--client-cert-auth");
            }
        }
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0);
        let child = command.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start {}: {e} (install etcd-server)", etcd_binary().display()))
        })?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.members[i].name))
    }

    /// The last lines of member `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until every running member answers `/health` with `true`.
    pub async fn wait_healthy(&mut self) -> io::Result<()> {
        let running: Vec<usize> = (0..self.members.len()).filter(|&i| self.members[i].child.is_some()).collect();
        for i in running {
            self.wait_member_healthy(i).await?;
        }
        Ok(())
    }

    async fn wait_member_healthy(&mut self, i: usize) -> io::Result<()> {
        let deadline = crate::client::now() + HEALTHY_WITHIN;
        loop {
            if let Some(child) = self.members[i].child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.members[i].child = None;
                return Err(io::Error::other(format!("etcd member {i} exited with {status}:\n{}", self.log_tail(i))));
            }
            if let Ok(body) = http_get(self.members[i].metrics_port, "/health").await
                && body.contains("\"health\":\"true\"")
            {
                return Ok(());
            }
            if crate::client::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("etcd member {i} not healthy within {HEALTHY_WITHIN:?}:\n{}", self.log_tail(i)),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members (never true for a started cluster).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.members[i].client_port)
    }

    /// Client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The timing for clients and nodes on this cluster: [`timing`].
    pub fn timing(&self) -> Timing {
        timing()
    }

    /// Options for a client of this cluster: every endpoint, the TLS CA when serving TLS,
    /// short timeouts. Connect with [`timing`](Self::timing).
    pub fn options(&self) -> EtcdOptions {
        EtcdOptions {
            endpoints: self.endpoints(),
            ca_file: self.config.tls.as_ref().map(|t| t.ca_file.clone()),
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(1),
            ..EtcdOptions::default()
        }
    }

    /// Process id of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Whether member `i` runs (possibly paused).
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// Member `i`'s Prometheus metrics (`/metrics` on its plain-HTTP metrics port).
    pub async fn metrics(&self, i: usize) -> io::Result<String> {
        http_get(self.members[i].metrics_port, "/metrics").await
    }

    /// The index of the raft leader (from `etcd_server_is_leader` in `/metrics`).
    pub async fn leader(&self) -> io::Result<usize> {
        let deadline = crate::client::now() + HEALTHY_WITHIN;
        loop {
            for i in 0..self.members.len() {
                if self.is_running(i)
                    && let Ok(metrics) = self.metrics(i).await
                    && metrics.lines().any(|l| l.trim() == "etcd_server_is_leader 1")
                {
                    return Ok(i);
                }
            }
            if crate::client::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no etcd member reports being leader"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, i: usize, signal: Signal) -> io::Result<()> {
        let pid = self.pid(i).ok_or_else(|| io::Error::other(format!("etcd member {i} is not running")))?;
        let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
        kill(Pid::from_raw(pid), signal).map_err(io::Error::from)
    }

    /// Kills member `i` with SIGKILL and waits for it; its data stays for [`restart`](Self::restart).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes member `i` (SIGSTOP): its sockets stay open but nothing answers.
    pub fn pause(&self, i: usize) -> io::Result<()> {
        self.signal(i, Signal::SIGSTOP)
    }

    /// Resumes a paused member (SIGCONT).
    pub fn resume(&self, i: usize) -> io::Result<()> {
        self.signal(i, Signal::SIGCONT)
    }

    /// Starts a killed member again on the same ports and data, and waits until it is healthy.
    pub async fn restart(&mut self, i: usize) -> io::Result<()> {
        self.kill(i);
        self.spawn(i, "existing")?;
        self.wait_member_healthy(i).await
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A single-node etcd; dropping it kills the process.
#[derive(Debug)]
pub struct EtcdServer {
    cluster: EtcdCluster,
}

impl EtcdServer {
    /// Starts one plain-HTTP member and waits until it is healthy.
    pub async fn start() -> io::Result<EtcdServer> {
        Ok(EtcdServer { cluster: EtcdCluster::start(1).await? })
    }

    /// Starts one member as `config` says (its `members` is ignored).
    pub async fn start_with(config: EtcdConfig) -> io::Result<EtcdServer> {
        Ok(EtcdServer { cluster: EtcdCluster::start_with(EtcdConfig { members: 1, ..config }).await? })
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        self.cluster.endpoint(0)
    }

    /// Options for a client of this server (see [`EtcdCluster::options`]).
    pub fn options(&self) -> EtcdOptions {
        self.cluster.options()
    }

    /// The timing for clients and nodes on this server: [`timing`].
    pub fn timing(&self) -> Timing {
        timing()
    }

    /// Process id, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.cluster.pid(0)
    }

    /// SIGKILL and wait; data stays for [`restart`](Self::restart).
    pub fn kill(&mut self) {
        self.cluster.kill(0)
    }

    /// SIGSTOP.
    pub fn pause(&self) -> io::Result<()> {
        self.cluster.pause(0)
    }

    /// SIGCONT.
    pub fn resume(&self) -> io::Result<()> {
        self.cluster.resume(0)
    }

    /// Starts again on the same port and data; waits until healthy.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.cluster.restart(0).await
    }

    /// `/metrics`.
    pub async fn metrics(&self) -> io::Result<String> {
        self.cluster.metrics(0).await
    }

    /// The underlying one-member cluster.
    pub fn cluster(&self) -> &EtcdCluster {
        &self.cluster
    }

    /// The underlying one-member cluster, mutably.
    pub fn cluster_mut(&mut self) -> &mut EtcdCluster {
        &mut self.cluster
    }
}
