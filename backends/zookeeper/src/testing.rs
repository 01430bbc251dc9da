//! Test harness (feature `testing`): real ZooKeeper servers on free loopback ports in
//! temporary directories, standalone or as an ensemble, stopped by pid when dropped; and a
//! conformance [`Harness`] over them.
//!
//! Servers run Debian's `/usr/share/java/zookeeper.jar` with `tickTime` 500 ms (session
//! timeouts 1 to 10 s; [`ZkConfig`] changes it) and the admin server disabled. Readiness is
//! the `srvr` four-letter word answering with a `Mode:` line on the plaintext client port.
//!
//! With [`ZkConfig::tls`] each server also serves TLS on a `secureClientPort` (Netty
//! connection factory, PEM key and trust stores), and [`ZkServer::connect_string`] names the
//! secure ports; the plaintext port stays open for the four-letter words.

use std::hash::{BuildHasher, RandomState};
use std::io::{self, Write as _};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use leasehold::testkit::conformance::{Client, Harness};
use leasehold::testkit::election::timing_for;
use leasehold::{Dcs, DcsError, Key, Timing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zookeeper_client as zk;

use crate::{ZkClient, ZkOptions};

/// The server's tick: sessions may last 2 to 20 ticks.
pub const TICK: Duration = Duration::from_millis(500);

/// Debian's zookeeper.jar names its Netty jars in its manifest class path but not netty-codec
/// and netty-resolver, which Netty's `SslHandler` needs (without them a TLS connection fails
/// with `ClassNotFoundException: io.netty.handler.codec.ByteToMessageDecoder`).
const JARS: &str = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar:\
                    /usr/share/java/netty-codec.jar:/usr/share/java/netty-resolver.jar";
const READY_WITHIN: Duration = Duration::from_secs(60);
const START_TRIES: usize = 3;

/// Whether a port is free on 127.0.0.1 right now.
fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `n` distinct ports in 10000..32000 that are free now (below the ephemeral range, where an
/// outgoing connection could take them).
fn free_ports(n: usize) -> Vec<u16> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut ports = Vec::new();
    let mut i = 0u64;
    while ports.len() < n {
        let seed = (std::process::id(), CALLS.fetch_add(1, Ordering::Relaxed), i);
        let port = 10000 + (RandomState::new().hash_one(seed) % 22000) as u16;
        i += 1;
        if !ports.contains(&port) && port_free(port) {
            ports.push(port);
        }
    }
    ports
}

/// Asks a server a four-letter word; `None` if it does not answer.
pub async fn four_letter(port: u16, word: &str) -> Option<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(word.as_bytes()).await.ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.ok()?;
        Some(reply)
    };
    tokio::time::timeout(Duration::from_secs(2), exchange).await.ok().flatten()
}

/// The `Mode:` a server reports (`standalone`, `leader`, `follower`), if it answers.
pub async fn mode(port: u16) -> Option<String> {
    let reply = four_letter(port, "srvr").await?;
    reply.lines().find_map(|l| l.strip_prefix("Mode: ")).map(|m| m.trim().to_string())
}

/// TLS on the servers' `secureClientPort`.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The server certificate (PEM), valid for `127.0.0.1`.
    pub cert_file: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key_file: PathBuf,
    /// The CA(s) that clients' certificates must chain to (PEM): the server's trust store.
    pub ca_file: PathBuf,
    /// `ssl.clientAuth=need` (a client certificate is required) instead of `none`.
    pub require_client_cert: bool,
}

/// How to start a server or an ensemble.
#[derive(Clone, Debug)]
pub struct ZkConfig {
    /// Number of nodes: 1 (standalone) or 3.
    pub nodes: usize,
    /// `tickTime`: the server expires sessions on tick boundaries, and negotiates session
    /// timeouts into `[min, max]` (by default `[2, 20] x tickTime`).
    pub tick: Duration,
    /// `minSessionTimeout`, if not `2 x tick`.
    pub min_session_timeout: Option<Duration>,
    /// `maxSessionTimeout`, if not `20 x tick`.
    pub max_session_timeout: Option<Duration>,
    /// Serve TLS on a `secureClientPort` too.
    pub tls: Option<ServerTls>,
}

impl ZkConfig {
    /// `nodes` nodes, tickTime [`TICK`], plaintext only.
    pub fn new(nodes: usize) -> ZkConfig {
        ZkConfig { nodes, tick: TICK, min_session_timeout: None, max_session_timeout: None, tls: None }
    }
}

struct Node {
    id: usize,
    client_port: u16,
    secure_port: Option<u16>,
    dir: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

/// One standalone ZooKeeper server or an ensemble, killed (and reaped) on drop.
pub struct ZkServer {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    config: ZkConfig,
}

impl std::fmt::Debug for ZkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkServer").field("connect", &self.connect_string()).finish()
    }
}

impl ZkServer {
    /// Starts a standalone server and waits until it serves.
    pub async fn standalone() -> io::Result<ZkServer> {
        ZkServer::start_with(ZkConfig::new(1)).await
    }

    /// Starts a three-node ensemble and waits until every node reports leader or follower.
    pub async fn ensemble() -> io::Result<ZkServer> {
        ZkServer::start_with(ZkConfig::new(3)).await
    }

    /// Starts the servers `config` describes and waits until they serve.
    pub async fn start_with(config: ZkConfig) -> io::Result<ZkServer> {
        let mut last = None;
        for _ in 0..START_TRIES {
            // Ports are picked free, but another process may take one before the JVM binds it:
            // then the server never gets ready and we try again with new ports.
            match ZkServer::start_once(&config).await {
                Ok(server) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("ZooKeeper did not start")))
    }

    async fn start_once(config: &ZkConfig) -> io::Result<ZkServer> {
        let n = config.nodes;
        let dir = tempfile::Builder::new().prefix("leasehold-zk-").tempdir()?;
        let ports = free_ports(4 * n);
        let mut nodes = Vec::new();
        for id in 1..=n {
            let node_dir = dir.path().join(format!("n{id}"));
            std::fs::create_dir_all(node_dir.join("data"))?;
            let mut cfg = format!(
                "tickTime={}\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={}\nclientPortAddress=127.0.0.1\n\
                 4lw.commands.whitelist=*\nadmin.enableServer=false\n",
                config.tick.as_millis(),
                node_dir.join("data").display(),
                ports[3 * (id - 1)]
            );
            if let Some(min) = config.min_session_timeout {
                cfg.push_str(&format!("minSessionTimeout={}\n", min.as_millis()));
            }
            if let Some(max) = config.max_session_timeout {
                cfg.push_str(&format!("maxSessionTimeout={}\n", max.as_millis()));
            }
            let secure_port = config.tls.as_ref().map(|_| ports[3 * n + id - 1]);
            if let (Some(tls), Some(port)) = (&config.tls, secure_port) {
                // ZooKeeper's PEM key store holds the certificate and the key in one file.
                let key_store = node_dir.join("keystore.pem");
                let mut pem = std::fs::read_to_string(&tls.cert_file)?;
                pem.push('\n');
                pem.push_str(&std::fs::read_to_string(&tls.key_file)?);
                std::fs::write(&key_store, pem)?;
                cfg.push_str(&format!(
                    "secureClientPort={port}\nsecureClientPortAddress=127.0.0.1\n\
                     serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
                     ssl.keyStore.location={}\nssl.keyStore.type=PEM\n\
                     ssl.trustStore.location={}\nssl.trustStore.type=PEM\nssl.clientAuth={}\n",
                    key_store.display(),
                    tls.ca_file.display(),
                    if tls.require_client_cert { "need" } else { "none" }
                ));
            }
            if n > 1 {
                for peer in 1..=n {
                    let (q, e) = (ports[3 * (peer - 1) + 1], ports[3 * (peer - 1) + 2]);
                    cfg.push_str(&format!("server.{peer}=127.0.0.1:{q}:{e}\n"));
                }
                std::fs::write(node_dir.join("data").join("myid"), format!("{id}\n"))?;
            }
            std::fs::write(node_dir.join("zoo.cfg"), cfg)?;
            nodes.push(Node {
                id,
                client_port: ports[3 * (id - 1)],
                secure_port,
                dir: node_dir,
                child: None,
                stopped: false,
            });
        }
        let mut server = ZkServer { _dir: dir, nodes, config: config.clone() };
        for i in 0..n {
            server.spawn(i)?;
        }
        server.wait_ready().await?;
        Ok(server)
    }

    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(node.dir.join("server.log"))?;
        let child = Command::new("java")
            .args(["-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .arg("-Dzookeeper.admin.enableServer=false")
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
            .args(["-cp", JARS, "org.apache.zookeeper.server.quorum.QuorumPeerMain"])
            .arg(node.dir.join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        node.child = Some(child);
        node.stopped = false;
        Ok(())
    }

    /// Waits until every running node reports a mode (and, in an ensemble, one is leader).
    pub async fn wait_ready(&self) -> io::Result<()> {
        let deadline = crate::session::now() + READY_WITHIN;
        loop {
            let mut modes = Vec::new();
            for node in self.nodes.iter().filter(|n| n.child.is_some() && !n.stopped) {
                // The secure port (Netty) opens after the plaintext one answers four-letter
                // words; on a loaded machine a client could still be refused there.
                let secure_open = match node.secure_port {
                    Some(p) => tokio::net::TcpStream::connect(("127.0.0.1", p)).await.is_ok(),
                    None => true,
                };
                modes.push(if secure_open { mode(node.client_port).await } else { None });
            }
            let all = modes.iter().all(Option::is_some);
            let led = self.nodes.len() == 1 || modes.iter().any(|m| m.as_deref() == Some("leader"));
            if all && led {
                return Ok(());
            }
            if crate::session::now() > deadline {
                return Err(io::Error::other(format!("ZooKeeper not ready within {READY_WITHIN:?}: modes {modes:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,...`: the secure client ports with [`ZkConfig::tls`], else
    /// the plaintext ones.
    pub fn connect_string(&self) -> String {
        let port = |n: &Node| n.secure_port.unwrap_or(n.client_port);
        let hosts: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", port(n))).collect();
        hosts.join(",")
    }

    /// The plaintext client port of node `i` (0-based), which also answers four-letter words.
    pub fn client_port(&self, i: usize) -> u16 {
        self.nodes[i].client_port
    }

    /// The TLS client port of node `i`, with [`ZkConfig::tls`].
    pub fn secure_port(&self, i: usize) -> Option<u16> {
        self.nodes[i].secure_port
    }

    /// How the servers were started.
    pub fn config(&self) -> &ZkConfig {
        &self.config
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a server has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The index of the node that reports `Mode: leader`, if any.
    pub async fn leader(&self) -> Option<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_some() && mode(node.client_port).await.as_deref() == Some("leader") {
                return Some(i);
            }
        }
        None
    }

    fn pid(&self, i: usize) -> Option<i32> {
        self.nodes[i].child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    fn signal(&self, i: usize, signal: i32) -> io::Result<()> {
        let pid = self.pid(i).ok_or_else(|| io::Error::other(format!("node {i} is not running")))?;
        if unsafe_free_kill(pid, signal) { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    /// SIGKILL to node `i`, then reaps it.
    pub fn kill(&mut self, i: usize) -> io::Result<()> {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts node `i` again (after [`kill`](Self::kill)) with the same ports and data.
    pub fn restart(&mut self, i: usize) -> io::Result<()> {
        self.kill(i)?;
        self.spawn(i)
    }

    /// SIGSTOP: the process freezes, its connections stay open and silent.
    pub fn pause(&mut self, i: usize) -> io::Result<()> {
        self.signal(i, libc::SIGSTOP)?;
        self.nodes[i].stopped = true;
        Ok(())
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self, i: usize) -> io::Result<()> {
        self.signal(i, libc::SIGCONT)?;
        self.nodes[i].stopped = false;
        Ok(())
    }

    /// The node's log, for failure messages.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("server.log")).unwrap_or_default()
    }

    /// Node `i`'s id in the ensemble (1-based, its `myid`).
    pub fn id(&self, i: usize) -> usize {
        self.nodes[i].id
    }
}

/// `kill(2)` through libc, which is the only way to send SIGSTOP/SIGCONT.
#[allow(unsafe_code)] // kill(2) has no safe wrapper in std; it touches no memory.
fn unsafe_free_kill(pid: i32, signal: i32) -> bool {
    // SAFETY: kill takes plain integers and has no memory effects.
    unsafe { libc::kill(pid, signal) == 0 }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // SIGKILL works on a stopped process too; then reap it.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Options for a test client of `server`; connect with a [`Timing`] such as
/// [`timing_for`]`(ttl)`.
pub fn test_options(server: &ZkServer) -> ZkOptions {
    ZkOptions {
        connect: server.connect_string(),
        prefix: "/leasehold".into(),
        request_timeout: Duration::from_secs(5),
        ..ZkOptions::default()
    }
}

/// The conformance [`Harness`] over a running [`ZkServer`].
pub struct ZkHarness {
    /// The server every client connects to.
    pub server: Arc<ZkServer>,
    /// Options every client is opened with (`detached` is forced on so crashes are crashes).
    pub options: ZkOptions,
    /// The timing every client is opened with.
    pub timing: Timing,
    admin: ZkClient,
}

impl ZkHarness {
    /// A harness whose clients ask for `ttl` as session timeout ([`timing_for`]`(ttl)`).
    pub async fn new(server: Arc<ZkServer>, ttl: Duration) -> Result<ZkHarness, DcsError> {
        let options = test_options(&server);
        ZkHarness::with_options(server, options, timing_for(ttl)).await
    }

    /// A harness whose clients connect with `options` (`detached` forced on) and `timing`,
    /// for example with [`ZkOptions::tls`] set for a TLS server.
    pub async fn with_options(
        server: Arc<ZkServer>,
        options: ZkOptions,
        timing: Timing,
    ) -> Result<ZkHarness, DcsError> {
        let admin = ZkClient::connect(ZkOptions { detached: false, ..options.clone() }, &timing).await?;
        Ok(ZkHarness { server, options: ZkOptions { detached: true, ..options }, timing, admin })
    }
}

struct HarnessClient {
    client: ZkClient,
}

#[async_trait]
impl Client for HarnessClient {
    fn scope(&self, scope: &str) -> Arc<dyn Dcs> {
        Arc::new(self.client.scope(scope))
    }

    async fn crash(self: Box<Self>) {
        // Detached: the connection drops without CloseSession, the session expires by timeout.
        self.client.stop();
    }
}

#[async_trait]
impl Harness for ZkHarness {
    async fn open_client(&self) -> Result<Box<dyn Client>, DcsError> {
        Ok(Box::new(HarnessClient { client: ZkClient::connect(self.options.clone(), &self.timing).await? }))
    }

    async fn write_garbage(&self, scope: &str, key: &Key) -> Result<(), DcsError> {
        let path = key.path(&self.options.prefix, scope);
        let session = self.admin.shared_session()?;
        let parent = &path[..path.rfind('/').unwrap_or(0)];
        let dirs = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        match session.zk.mkdir(parent, &dirs).await {
            Ok(()) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(DcsError::unavailable_with("mkdir for garbage", e)),
        }
        let garbage = b"\xff\xfe not a record {";
        match session.zk.create(&path, garbage, &dirs).await {
            Ok(_) => Ok(()),
            Err(zk::Error::NodeExists) => match session.zk.set_data(&path, garbage, None).await {
                Ok(_) => Ok(()),
                Err(e) => Err(DcsError::unavailable_with("writing garbage", e)),
            },
            Err(e) => Err(DcsError::unavailable_with("writing garbage", e)),
        }
    }

    /// ZooKeeper keeps no history to compact.
    async fn compact(&self) -> Result<bool, DcsError> {
        Ok(false)
    }
}

/// Deletes the znode at `path` (any version) through `client`'s session, as an operator's
/// `delete` would: no leasehold rule is checked.
pub async fn delete_znode(client: &ZkClient, path: &str) -> Result<(), DcsError> {
    let session = client.shared_session()?;
    session.zk.delete(path, None).await.map_err(|e| DcsError::unavailable_with(format!("deleting {path}"), e))
}

/// Writes `data` at `path` through `client`'s session, as an operator's `set` (or, when the
/// znode is missing, `create`, persistent) would: no leasehold rule is checked. A znode that
/// exists keeps its owner: garbage written over an ephemeral leader znode stays owned by the
/// holder's session.
pub async fn write_znode(client: &ZkClient, path: &str, data: &[u8]) -> Result<(), DcsError> {
    let session = client.shared_session()?;
    let failed = |e| DcsError::unavailable_with(format!("writing {path}"), e);
    match session.zk.set_data(path, data, None).await {
        Ok(_) => Ok(()),
        Err(zk::Error::NoNode) => {
            let parent = &path[..path.rfind('/').unwrap_or(0)];
            let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
            match session.zk.mkdir(parent, &persistent).await {
                Ok(()) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(failed(e)),
            }
            session.zk.create(path, data, &persistent).await.map(|_| ()).map_err(failed)
        }
        Err(e) => Err(failed(e)),
    }
}

/// Writes `text` to stderr (test diagnostics that survive output capture on failure).
pub fn note(text: &str) {
    let _ = writeln!(io::stderr(), "{text}");
}
