//! The PostgreSQL fixture shared by the tests of the native `[postgresql]` resource: an etcd,
//! one data directory, config and `leasehold-ha` process per member, PostgreSQL 15 instances
//! on loopback ports (the daemons create them), and guards that kill every postmaster by its
//! pid when the test ends, pass or fail. Each test file wraps [`PgCluster`] in its own
//! `Cluster` with the waits and checks it needs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use leasehold_test_servers::CutProxy;
use serde_json::Value;

use super::{Proc, Store, free_port, http_get_blocking};

/// Where scripts/setup.sh installs PostgreSQL 15.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The superuser's password in every member's config.
pub const SU_PASSWORD: &str = "pg-test-super-pw";
/// The replication user's password.
const REPL_PASSWORD: &str = "pg-test-repl-pw";

/// Whether PostgreSQL 15 with `program` is installed; says so on stderr when it is not (the
/// test then returns without running).
pub fn installed(program: &str) -> bool {
    let found = Path::new(PG_BIN).join(program).exists();
    if !found {
        eprintln!("skipped: PostgreSQL 15 is not installed at {PG_BIN} (scripts/setup.sh installs it)");
    }
    found
}

/// Stops a member's postmaster by its pid (SIGKILL) when the test ends, pass or fail.
pub struct PgGuard(PathBuf);

impl Drop for PgGuard {
    fn drop(&mut self) {
        kill_postmaster(&self.0);
    }
}

/// The postmaster's pid from `postmaster.pid` in `data`, if it runs (or ran).
pub fn postmaster_pid(data: &Path) -> Option<i32> {
    std::fs::read_to_string(data.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
}

/// SIGKILL to the postmaster of `data`.
pub fn kill_postmaster(data: &Path) {
    if let Some(pid) = postmaster_pid(data) {
        // SAFETY: kill(2) on the pid PostgreSQL wrote for this test's own data directory.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// A superuser connection to the instance at `port`, or `None` within about two seconds.
pub async fn connect(port: u16) -> Option<tokio_postgres::Client> {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1").port(port).user("postgres").password(SU_PASSWORD).dbname("postgres");
    c.connect_timeout(Duration::from_secs(1));
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(2), c.connect(tokio_postgres::NoTls)).await.ok()?.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(client)
}

/// One SQL statement on the instance at `port` as the superuser: the first column of the
/// first row (empty when it returns none), `None` when it cannot connect or the statement fails.
pub fn sql(port: u16, statement: &str) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = connect(port).await?;
        let msgs = client.simple_query(statement).await.ok()?;
        Some(
            msgs.into_iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
                    _ => None,
                })
                .unwrap_or_default(),
        )
    })
}

/// What the members' configs hold besides the fixed parts.
pub struct PgSpec {
    /// Number of members (`n1`, `n2`, ...).
    pub members: usize,
    /// The election scope.
    pub scope: &'static str,
    /// The etcd key prefix.
    pub prefix: &'static str,
    /// The timing and other top-level keys.
    pub top: String,
    /// Extra keys of `[postgresql]`.
    pub postgresql: String,
    /// Extra sections of member `i` (0-based), such as `[tags]`.
    pub member_extra: fn(usize) -> String,
    /// Each member reaches etcd through its own [`CutProxy`], which the test can cut.
    pub proxies: bool,
    /// Extra keys of `[etcd]`, such as `member_ttl`.
    pub etcd: String,
}

/// No extra sections.
pub fn no_extra(_: usize) -> String {
    String::new()
}

/// A member: its config and ports, its data directory, and its daemon once started.
pub struct PgMember {
    pub name: String,
    pub config: PathBuf,
    /// The REST API's base URL.
    pub api: String,
    pub pg_port: u16,
    pub data: PathBuf,
    /// Its own way to etcd, with [`PgSpec::proxies`].
    pub proxy: Option<CutProxy>,
    pub proc: Option<Proc>,
}

impl PgMember {
    /// The member's proxy to etcd; panics if the cluster was built without proxies.
    pub fn proxy(&self) -> &CutProxy {
        self.proxy.as_ref().expect("the cluster was built with proxies")
    }
}

/// Fields drop in order: daemons, then postmasters (their guards read `postmaster.pid`), then
/// the store, and the directory last (dropped first, it took the pid files with it and the
/// postmasters outlived the test).
pub struct PgCluster {
    pub members: Vec<PgMember>,
    _guards: Vec<PgGuard>,
    pub store: Store,
    pub dir: tempfile::TempDir,
}

impl PgCluster {
    /// Writes every member's config (nothing is started yet).
    pub fn new(spec: &PgSpec) -> PgCluster {
        let store = Store::etcd();
        let Store::Etcd { endpoint, .. } = &store else { unreachable!("etcd") };
        let etcd_port: u16 = endpoint.rsplit(':').next().and_then(|p| p.parse().ok()).expect("etcd's port");
        let dir = tempfile::Builder::new().prefix(&format!("lh-{}-", spec.scope)).tempdir().unwrap();
        // PostgreSQL runs as `postgres` when the test runs as root: it must reach the tree.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut members = Vec::new();
        let mut guards = Vec::new();
        for i in 0..spec.members {
            let name = format!("n{}", i + 1);
            let (api_port, pg_port) = (free_port(), free_port());
            let home = dir.path().join(&name);
            std::fs::create_dir_all(&home).unwrap();
            std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
            let data = home.join("data");
            let proxy = spec.proxies.then(|| CutProxy::start(etcd_port).expect("proxy binds"));
            let etcd = proxy.as_ref().map_or(etcd_port, CutProxy::port);
            let config = dir.path().join(format!("{name}.toml"));
            std::fs::write(
                &config,
                format!(
                    "scope = \"{scope}\"\nname = \"{name}\"\n{top}\n{member}\n\
                     [watchdog]\nmode = \"off\"\n\
                     [restapi]\nlisten = \"127.0.0.1:{api_port}\"\ntoken = \"{token}\"\n\
                     [postgresql]\ndata_dir = \"{data}\"\nbin_dir = \"{PG_BIN}\"\nlisten = \"127.0.0.1:{pg_port}\"\npg_ctl_timeout = 60\n{postgresql}\n\
                     [postgresql.parameters]\nfsync = \"off\"\nshared_buffers = \"16MB\"\n\
                     [postgresql.authentication.superuser]\nusername = \"postgres\"\npassword = \"{SU_PASSWORD}\"\n\
                     [postgresql.authentication.replication]\nusername = \"replicator\"\npassword = \"{REPL_PASSWORD}\"\n\
                     [etcd]\nendpoints = [\"http://127.0.0.1:{etcd}\"]\nprefix = \"{prefix}\"\n{etcd_extra}\n",
                    scope = spec.scope,
                    top = spec.top,
                    member = (spec.member_extra)(i),
                    token = super::TOKEN,
                    data = data.display(),
                    postgresql = spec.postgresql,
                    prefix = spec.prefix,
                    etcd_extra = spec.etcd,
                ),
            )
            .unwrap();
            guards.push(PgGuard(data.clone()));
            members.push(PgMember {
                name,
                config,
                api: format!("http://127.0.0.1:{api_port}"),
                pg_port,
                data,
                proxy,
                proc: None,
            });
        }
        PgCluster { members, _guards: guards, store, dir }
    }

    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.members[i].name))
    }

    /// Starts (or restarts) member `i`'s daemon, its log appended to [`Self::log_path`].
    pub fn start_member(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(i)).unwrap();
        let m = &mut self.members[i];
        m.proc = Some(super::spawn_daemon(&m.name, &m.config, log));
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// Member `i`'s `/status`, if it answers 200.
    pub fn status(&self, i: usize) -> Option<Value> {
        let (code, body) = http_get_blocking(&format!("{}/status", self.members[i].api))?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// `leasehold-ha ctl <args>` with member `via`'s config.
    pub fn ctl(&self, via: usize, args: &[&str]) -> std::process::Output {
        std::process::Command::new(super::bin())
            .arg("--config")
            .arg(&self.members[via].config)
            .arg("ctl")
            .args(args)
            .output()
            .expect("ctl runs")
    }

    /// Every member's status and the last `lines` lines of its daemon log (and a quarter as
    /// many of its PostgreSQL log), on stderr: what a failing wait shows.
    pub fn dump(&self, lines: usize) {
        let tail = |text: &str, n: usize| {
            let tail: Vec<&str> = text.lines().rev().take(n).collect();
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        for (i, m) in self.members.iter().enumerate() {
            eprintln!("==== {} status: {:?}", m.name, self.status(i));
            eprintln!("==== {} log:\n{}", m.name, tail(&self.log(i), lines));
            let pglog = std::fs::read_to_string(format!("{}.log", m.data.display())).unwrap_or_default();
            eprintln!("==== {} postgres log:\n{}", m.name, tail(&pglog, lines / 4));
        }
    }
}
