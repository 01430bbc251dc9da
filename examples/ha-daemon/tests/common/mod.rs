//! The end-to-end harness: a real store, three `leasehold-ha` processes with the file
//! resource, helpers to read their REST APIs and run `ctl`. Every process started here is
//! killed (SIGKILL) and reaped on drop, also when a test panics.
#![allow(dead_code)]
// each test binary uses a different part of the harness
// Tests wait for states with deadlines (never asserting on elapsed time) and read the clock
// for those deadlines; the workspace bans clock reads only to keep the library's core pure.
#![allow(clippy::disallowed_methods)]

pub mod actions;
pub mod pg;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TOKEN: &str = "e2e-secret-token";

/// A child process killed and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.into(), child: Some(child) }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: plain kill(2) on our own child's pid, which is not reaped yet.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// kill -9, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the process (SIGSTOP).
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws it (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGTERM, then waits up to `limit` for the exit; the exit code if it exited.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A frozen process must be thawed to die promptly and be reaped.
            let _ = c.kill();
            #[allow(unsafe_code)]
            // SAFETY: kill(2) on our own unreaped child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
            let _ = c.wait();
        }
    }
}

/// A free loopback port below 32768 (the tests' rule), picked at run time.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919) ^ NEXT.fetch_add(1, Ordering::SeqCst).wrapping_mul(104_729);
    for i in 0..2000u32 {
        let port = 12000 + (seed.wrapping_add(i.wrapping_mul(7)) % 20000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below 32768");
}

/// A real store the members share.
pub enum Store {
    Etcd {
        _server: leasehold_etcd::testing::EtcdServer,
        endpoint: String,
        _rt: tokio::runtime::Runtime,
    },
    /// etcd serving clients over TLS and requiring client certificates, from a throwaway CA.
    EtcdTls {
        _server: leasehold_etcd::testing::EtcdServer,
        endpoint: String,
        pki: leasehold_etcd::testing::Pki,
        _dir: tempfile::TempDir,
        _rt: tokio::runtime::Runtime,
    },
    Zookeeper {
        server: leasehold_zookeeper::testing::ZkServer,
        _rt: tokio::runtime::Runtime,
    },
    /// A real `consul agent -dev` (ACLs off, Consul's own 10 s session-TTL floor).
    Consul {
        agent: leasehold_consul::testing::ConsulAgent,
        _rt: tokio::runtime::Runtime,
    },
    /// A real Consul agent serving HTTPS and requiring client certificates (throwaway PKI);
    /// members reach it over HTTPS only.
    ConsulTls {
        agent: leasehold_consul::testing::ConsulAgent,
        _dir: tempfile::TempDir,
        _rt: tokio::runtime::Runtime,
    },
    /// A real kube-apiserver over its own etcd; members use an admin kubeconfig that verifies
    /// the server's certificate.
    Kubernetes {
        server: leasehold_kube::testing::KubeApiServer,
        kubeconfig: PathBuf,
        _rt: tokio::runtime::Runtime,
    },
}

/// Namespace of the Kubernetes e2e Leases.
pub const KUBE_NAMESPACE: &str = "leasehold-e2e";

/// Writes `line` to stderr past libtest's output capture, so it shows in every run.
pub fn announce(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Set to 1 to make a missing Consul or kube-apiserver binary fail the real-server tests.
/// CI (`CI=true`) always does: there the shared folder must be present.
pub const REQUIRE_SERVERS: &str = "LEASEHOLD_E2E_REQUIRE_SERVERS";

/// No binary: on a user's machine the test says so in one visible line and does not run
/// (the daemon has no emulator path worth testing end to end); in CI it fails.
fn missing(what: &str) -> Option<Store> {
    let line = format!(
        "daemon e2e: NO {what} found (its LEASEHOLD_*_BIN variable, PATH, ../shared/servers): the test does not run"
    );
    let required = |var: &str| std::env::var_os(var).is_some_and(|v| v == "1" || v == "true");
    if required("CI") || required(REQUIRE_SERVERS) {
        panic!("{line} (CI or {REQUIRE_SERVERS} requires it)");
    }
    announce(&line);
    None
}

impl Store {
    /// A single-node etcd, started by the etcd backend's test harness (killed by pid on drop).
    pub fn etcd() -> Store {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let server = rt.block_on(leasehold_etcd::testing::EtcdServer::start()).expect("etcd starts");
        let endpoint = server.endpoint();
        Store::Etcd { _server: server, endpoint, _rt: rt }
    }

    /// A single etcd with TLS and client-certificate authentication.
    pub fn etcd_tls() -> Store {
        use leasehold_etcd::testing::{EtcdConfig, EtcdServer, ServerTls, make_pki};
        let dir = tempfile::Builder::new().prefix("leasehold-ha-pki-").tempdir().unwrap();
        let pki = make_pki(dir.path());
        let tls = ServerTls {
            cert_file: pki.server_cert.clone(),
            key_file: pki.server_key.clone(),
            ca_file: pki.ca.clone(),
            client_cert_auth: true,
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let server = rt
            .block_on(EtcdServer::start_with(EtcdConfig { tls: Some(tls), ..EtcdConfig::new(1) }))
            .expect("etcd with TLS starts");
        let endpoint = server.endpoint();
        Store::EtcdTls { _server: server, endpoint, pki, _dir: dir, _rt: rt }
    }

    /// A standalone ZooKeeper (the backend's test harness).
    pub fn zookeeper() -> Store {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let server = rt.block_on(leasehold_zookeeper::testing::ZkServer::standalone()).expect("ZooKeeper starts");
        Store::Zookeeper { server, _rt: rt }
    }

    /// A real Consul agent (`leasehold_consul::testing`); `None` (after one visible line) when
    /// no binary is found outside CI (see [`REQUIRE_SERVERS`]).
    pub fn consul() -> Option<Store> {
        use leasehold_consul::testing::{ConsulAgent, ConsulAgentConfig};
        ConsulAgent::binary().expect("the shared consul is usable")?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let agent = rt.block_on(ConsulAgent::start(ConsulAgentConfig::default())).expect("consul starts");
        announce(&format!(
            "daemon e2e: real agent {} ({}) at {}",
            agent.version(),
            agent.binary_found().path.display(),
            agent.address()
        ));
        Some(Store::Consul { agent, _rt: rt })
    }

    /// A real Consul agent with HTTPS and client-certificate checks; `None` as for
    /// [`Store::consul`].
    pub fn consul_tls() -> Option<Store> {
        use leasehold_consul::testing::{ConsulAgent, ConsulAgentConfig};
        ConsulAgent::binary().expect("the shared consul is usable")?;
        let dir = tempfile::Builder::new().prefix("leasehold-ha-consul-pki-").tempdir().unwrap();
        let pki = leasehold_test_servers::make_pki(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let config = ConsulAgentConfig { tls: Some(pki), ..ConsulAgentConfig::default() };
        let agent = rt.block_on(ConsulAgent::start(config)).expect("consul with TLS starts");
        announce(&format!("daemon e2e: real agent {} with HTTPS", agent.version()));
        Some(Store::ConsulTls { agent, _dir: dir, _rt: rt })
    }

    /// A real kube-apiserver (`leasehold_kube::testing`); `None` as for [`Store::consul`].
    pub fn kubernetes() -> Option<Store> {
        use leasehold_kube::testing::{KubeApiServer, KubeApiServerConfig};
        KubeApiServer::binary().expect("the shared kube-apiserver is usable")?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let server = rt.block_on(KubeApiServer::start(KubeApiServerConfig::default())).expect("kube-apiserver starts");
        rt.block_on(server.create_namespace(KUBE_NAMESPACE)).expect("namespace");
        let kubeconfig = server.kubeconfig(server.admin_token(), KUBE_NAMESPACE).expect("kubeconfig");
        announce(&format!(
            "daemon e2e: real kube-apiserver {} ({}) at {}, over etcd",
            server.version(),
            server.binary_found().path.display(),
            server.url()
        ));
        Some(Store::Kubernetes { server, kubeconfig, _rt: rt })
    }

    /// [`Store::consul`], or the skip line / failure when no binary is found.
    pub fn consul_or_skip() -> Option<Store> {
        Store::consul().or_else(|| missing("consul"))
    }

    /// [`Store::kubernetes`], or the skip line / failure when no binary is found.
    pub fn kubernetes_or_skip() -> Option<Store> {
        Store::kubernetes().or_else(|| missing("kube-apiserver"))
    }

    /// The timing lines of the members' configs: ttl 5 s, loop_wait 1 s, except on Consul,
    /// whose 10 s session-TTL floor needs ttl >= 20 s.
    pub fn timing(&self) -> &'static str {
        match self {
            Store::Consul { .. } | Store::ConsulTls { .. } => {
                "ttl = \"20s\"\nloop_wait = \"2s\"\nretry_timeout = \"4s\"\n"
            }
            _ => "ttl = \"5s\"\nloop_wait = \"1s\"\nretry_timeout = \"1500ms\"\n",
        }
    }

    /// The config section for this store.
    pub fn section(&self) -> String {
        match self {
            Store::Consul { agent, .. } => format!("[consul]\naddress = \"{}\"\nprefix = \"e2e\"\n", agent.address()),
            Store::ConsulTls { agent, .. } => {
                let options = agent.https_options().expect("the agent serves HTTPS");
                let tls = options.tls.expect("TLS files");
                let path = |p: Option<std::path::PathBuf>| p.expect("PKI file").display().to_string();
                format!(
                    "[consul]\naddress = \"{}\"\nprefix = \"e2e\"\ncacert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                    options.address,
                    path(tls.ca_cert),
                    path(tls.client_cert),
                    path(tls.client_key)
                )
            }
            Store::Kubernetes { kubeconfig, .. } => {
                format!("[kubernetes]\nnamespace = \"{KUBE_NAMESPACE}\"\nkubeconfig = \"{}\"\n", kubeconfig.display())
            }
            Store::Etcd { endpoint, .. } => format!("[etcd]\nendpoints = [\"{endpoint}\"]\nprefix = \"/e2e\"\n"),
            Store::EtcdTls { endpoint, pki, .. } => format!(
                "[etcd]\nendpoints = [\"{endpoint}\"]\nprefix = \"/e2e\"\ncacert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                pki.ca.display(),
                pki.client_cert.display(),
                pki.client_key.display()
            ),
            Store::Zookeeper { server, .. } => {
                let hosts: Vec<String> = server.connect_string().split(',').map(|h| format!("\"{h}\"")).collect();
                format!("[zookeeper]\nhosts = [{}]\nprefix = \"/e2e\"\n", hosts.join(", "))
            }
        }
    }
}

/// An HTTP GET without an async runtime (curl is part of the setup script's packages).
pub fn http_get_blocking(url: &str) -> Option<(u16, String)> {
    let out = Command::new("curl").args(["-s", "-m", "3", "-o", "-", "-w", "\n%{http_code}", url]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    (code != 0).then(|| (code, body.to_string()))
}

/// A request with curl: method, url, optional bearer token and JSON body → (status, body).
pub fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "10", "-X", method, "-o", "-", "-w", "\n%{http_code}"]);
    if method == "HEAD" {
        cmd.arg("-I");
    }
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    let out = cmd.arg(url).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

pub fn hooks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/file")
}

/// One member: its config file, API URL and process.
pub struct Member {
    pub name: String,
    pub config: PathBuf,
    pub api: String,
    pub proc: Option<Proc>,
}

/// A store, a shared file-resource directory and three members.
pub struct Cluster {
    pub members: Vec<Member>,
    pub resource_dir: PathBuf,
    pub dir: tempfile::TempDir,
    // Dropped last: members die before their store.
    pub store: Store,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_leasehold-ha")
}

impl Cluster {
    /// Writes configs for `n` members (timing from [`Store::timing`]) and starts them.
    pub fn start(store: Store, n: usize) -> Cluster {
        let dir = tempfile::Builder::new().prefix("leasehold-ha-e2e-").tempdir().unwrap();
        let resource_dir = dir.path().join("resource");
        std::fs::create_dir_all(&resource_dir).unwrap();
        let mut members = Vec::new();
        for i in 1..=n {
            let name = format!("n{i}");
            let port = free_port();
            let config = dir.path().join(format!("{name}.toml"));
            std::fs::write(
                &config,
                format!(
                    "scope = \"e2e\"\nname = \"{name}\"\n{}\
                     safety_margin = \"1s\"\nconn_url = \"file://{name}\"\n\
                     [watchdog]\nmode = \"off\"\n[restapi]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n\
                     [hooks]\ndir = \"{}\"\n[hooks.env]\nFILE_RESOURCE_DIR = \"{}\"\n{}",
                    store.timing(),
                    hooks_dir().display(),
                    resource_dir.display(),
                    store.section()
                ),
            )
            .unwrap();
            members.push(Member { name, config, api: format!("http://127.0.0.1:{port}"), proc: None });
        }
        let mut cluster = Cluster { members, resource_dir, dir, store };
        for i in 0..n {
            cluster.start_member(i);
        }
        cluster
    }

    pub fn start_member(&mut self, i: usize) {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .unwrap();
        m.proc = Some(spawn_daemon(&m.name, &m.config, log));
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.members[i].name))).unwrap_or_default()
    }

    /// `/status` of member `i`, if it answers.
    pub fn status(&self, i: usize) -> Option<Value> {
        let (code, body) = http_get_blocking(&format!("{}/status", self.members[i].api))?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// The member acting as leader (holding a valid lease) with a running primary, if exactly one.
    pub fn leader(&self) -> Option<(usize, u64)> {
        let leaders: Vec<(usize, u64)> = (0..self.members.len())
            .filter(|&i| self.members[i].proc.is_some())
            .filter_map(|i| {
                let s = self.status(i)?;
                let acting = s["acting"].as_bool()? && s["role"] == "primary";
                acting.then(|| (i, s["epoch"].as_u64().unwrap_or(0)))
            })
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// Waits for a leader satisfying `ok`; panics with the members' logs after `limit`.
    pub fn wait_leader(&self, limit: Duration, ok: impl Fn(usize, u64) -> bool) -> (usize, u64) {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Some((i, e)) = self.leader()
                && ok(i, e)
            {
                return (i, e);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.dump();
        panic!("no suitable leader within {limit:?}");
    }

    /// Waits until `check` holds; panics with the logs after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, check: impl Fn(&Cluster) -> bool) {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.dump();
        panic!("{what}: not reached within {limit:?}");
    }

    pub fn dump(&self) {
        for i in 0..self.members.len() {
            eprintln!("==== {} status: {:?}", self.members[i].name, self.status(i));
            let log = self.log(i);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "==== {} log (last 40 lines):\n{}",
                self.members[i].name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        eprintln!(
            "==== resource events:\n{}",
            std::fs::read_to_string(self.resource_dir.join("events")).unwrap_or_default()
        );
    }

    /// Waits until member `i`'s daemon has exited by itself; panics with the logs after `limit`.
    pub fn wait_exited(&mut self, i: usize, limit: Duration) {
        let until = Instant::now() + limit;
        while self.members[i].proc.as_mut().is_some_and(Proc::is_running) {
            if Instant::now() >= until {
                self.dump();
                panic!("{} still runs after {limit:?}", self.members[i].name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `leasehold-ha ctl <args>` with member `via`'s config.
    pub fn ctl(&self, via: usize, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("--config")
            .arg(&self.members[via].config)
            .arg("ctl")
            .args(args)
            .output()
            .expect("ctl runs")
    }

    /// A client write to member `i`'s resource through the file resource's `write` tool.
    pub fn client_write(&self, i: usize) -> bool {
        Command::new(hooks_dir().join("write"))
            .arg(&self.members[i].name)
            .env("FILE_RESOURCE_DIR", &self.resource_dir)
            .output()
            .expect("write runs")
            .status
            .success()
    }

    pub fn events(&self) -> String {
        std::fs::read_to_string(self.resource_dir.join("events")).unwrap_or_default()
    }
}

pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Starts `leasehold-ha run` for member `name` with `config`, its log (debug for leasehold)
/// appended to `log`; stopped by pid when the returned guard drops.
pub fn spawn_daemon(name: &str, config: &std::path::Path, log: std::fs::File) -> Proc {
    Proc::spawn(
        name,
        Command::new(bin())
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("LEASEHOLD_LOG", "info,leasehold=debug")
            .stdout(Stdio::null())
            .stderr(log),
    )
}
