//! The native PostgreSQL resource: PostgreSQL's own programs (`initdb`, `pg_ctl`,
//! `pg_basebackup`, `pg_rewind`, `pg_controldata`) for the life cycle, and one persistent
//! connection (tokio-postgres, over the Unix socket) for status: no process per loop.
//!
//! * **promote**: `initdb` on the very first leader (never once the cluster has a history),
//!   else `pg_ctl promote`, then a `CHECKPOINT` so the new timeline is in `pg_control` (what
//!   `pg_rewind` reads on the rejoining side). In synchronous mode `synchronous_standby_names`
//!   is set before the promotion: `*` in strict mode, empty otherwise.
//! * **demote**: `pg_ctl stop -m fast` for a graceful demote, `-m immediate` for every other
//!   mode. No `standby.signal` is written here: `pg_rewind` must be able to finish crash
//!   recovery in single-user mode first, which PostgreSQL refuses for a standby.
//! * **follow**: an empty data directory is cloned with `pg_basebackup`; a former primary
//!   (pg_controldata says `in production` or `shut down`) is rewound with `pg_rewind`, which
//!   runs the crash recovery itself when needed; `standby.signal` is written only after the
//!   rewind. A standby whose history left the new leader's (it received WAL past the
//!   leader's switch point) is stopped and rewound too. A reclone happens only when
//!   `pg_rewind` fails, logged at WARN with its reason, the old directory kept aside unless
//!   `remove_data_directory_on_rewind_failure` is set.
//! * **synchronous mode**: [`Resource::set_sync_standbys`] rewrites
//!   `synchronous_standby_names` (`N (a, b, ...)` for the N standbys the node chose, so a
//!   commit waits for all of them; `*` for the node's strict-mode wildcard) and reloads; a standby is reported as confirmed only when
//!   `pg_stat_replication` shows it `sync` with a flushed position past the primary's position
//!   taken after the change took effect, so everything acknowledged before is on it too.
//!
//! Every file the resource writes (`postgresql.conf`, `pg_hba.conf`) is rewritten before each
//! start, because a base backup or a rewind copies the leader's.
#![allow(clippy::disallowed_methods)] // a resource touches the real world: processes, clock, tasks

pub mod config;
pub mod files;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use leasehold::driver::{DriverState, Resource};
use leasehold::node::{ANY_STANDBY, DemoteMode, ResourceStatus};
use leasehold::{Epoch, ResourceRole};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use self::config::PostgresConfig;
use self::files::{ClusterState, Role};

/// How long a follow waits for the leader's PostgreSQL to run as a primary.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// Bound of one status query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// A change of `synchronous_standby_names` is trusted to be in effect after this long.
const SYNC_SETTLE: Duration = Duration::from_millis(300);
/// How often the primary reconciles replication slots with the member list.
const SLOT_INTERVAL: Duration = Duration::from_secs(5);

/// The status query: recovery flag, position (a standby reports the furthest of received and
/// replayed) and timeline, in one round trip.
const STATUS_SQL: &str = "select pg_is_in_recovery()::text, \
  (case when pg_is_in_recovery() \
     then pg_wal_lsn_diff(greatest(coalesce(pg_last_wal_receive_lsn(), '0/0'), coalesce(pg_last_wal_replay_lsn(), '0/0')), '0/0') \
     else pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') end)::bigint::text, \
  (case when pg_is_in_recovery() \
     then coalesce((select received_tli from pg_stat_wal_receiver), (select timeline_id from pg_control_checkpoint()))::bigint \
     else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint end)::text";

/// Standbys as the primary sees them.
const REPLICATION_SQL: &str = "select application_name, sync_state, \
  coalesce(pg_wal_lsn_diff(flush_lsn, '0/0'), 0)::bigint::text from pg_stat_replication";

/// The standbys streaming from this primary now (a standby's `application_name` is its
/// member name).
const STREAMING_SQL: &str = "select application_name from pg_stat_replication where state = 'streaming'";

/// How a former primary or a diverged standby came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejoin {
    /// `pg_rewind` onto the new leader.
    Rewind,
    /// A new base backup (rewind off or failed).
    Reclone,
}

/// One status reading.
#[derive(Clone, Copy, Debug)]
struct Reading {
    in_recovery: bool,
    position: u64,
    timeline: u64,
}

/// Synchronous-mode bookkeeping.
#[derive(Debug, Default)]
struct SyncState {
    /// The standbys in `synchronous_standby_names`.
    names: Vec<String>,
    /// When they were set.
    set_at: Option<Instant>,
    /// The primary's position once the change was in effect: a standby is confirmed only when
    /// it flushed past it.
    barrier: Option<u64>,
}

/// The native PostgreSQL resource.
pub struct PgResource {
    cfg: PostgresConfig,
    scope: String,
    name: String,
    sync_mode: bool,
    strict: bool,
    /// uid and gid PostgreSQL runs as, when the daemon runs as root.
    run_as: Option<(u32, u32)>,
    client: tokio::sync::Mutex<Option<Client>>,
    sync: Mutex<SyncState>,
    /// Last reconciliation (time, wanted slots); the async lock keeps two from racing.
    slots_checked: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
    state: Mutex<Option<watch::Receiver<DriverState>>>,
    rewinds: AtomicU64,
    reclones: AtomicU64,
    /// The epoch this process promoted under, while it runs PostgreSQL as primary: a promote
    /// with a newer one is the same primary taking its key back (failsafe), not a promotion.
    acting_epoch: Mutex<Option<Epoch>>,
    /// The last `pending_restart_names` read (once per HA loop), so `/status` asks nothing.
    pending: Mutex<Option<Vec<String>>>,
    /// Held by `follow` and by the operator's restart and reinitialize, so the driver does not
    /// start PostgreSQL in the middle of a base backup.
    operation: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PgResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgResource").field("name", &self.name).field("data_dir", &self.cfg.data_dir).finish()
    }
}

/// The uid and gid of `user` from `/etc/passwd`.
fn lookup_user(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?))).flatten()
    })
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(lines)..].join("; ")
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl PgResource {
    /// The resource for member `name` of `scope`. Fails when the daemon runs as root and
    /// `os_user` does not exist (PostgreSQL refuses to run as root).
    pub fn new(
        cfg: PostgresConfig,
        scope: &str,
        name: &str,
        sync_mode: bool,
        strict: bool,
    ) -> Result<PgResource, String> {
        // SAFETY: geteuid has no preconditions.
        #[allow(unsafe_code)]
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = if root {
            Some(lookup_user(&cfg.os_user).ok_or_else(|| {
                format!(
                    "config key `postgresql.os_user`: user {:?} does not exist (PostgreSQL cannot run as root)",
                    cfg.os_user
                )
            })?)
        } else {
            None
        };
        Ok(PgResource {
            cfg,
            scope: scope.into(),
            name: name.into(),
            sync_mode,
            strict,
            run_as,
            client: tokio::sync::Mutex::new(None),
            sync: Mutex::new(SyncState::default()),
            slots_checked: tokio::sync::Mutex::new(None),
            state: Mutex::new(None),
            rewinds: AtomicU64::new(0),
            acting_epoch: Mutex::new(None),
            pending: Mutex::new(None),
            reclones: AtomicU64::new(0),
            operation: tokio::sync::Mutex::new(()),
        })
    }

    /// Gives the resource the driver's state (the member list, for replication slots and the
    /// bootstrap guard).
    pub fn attach(&self, state: watch::Receiver<DriverState>) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
    }

    /// Rejoins so far: (by pg_rewind, by a new base backup).
    pub fn rejoins(&self) -> (u64, u64) {
        (self.rewinds.load(Ordering::Relaxed), self.reclones.load(Ordering::Relaxed))
    }

    fn driver_state(&self) -> Option<DriverState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|r| r.borrow().clone())
    }

    fn data(&self) -> &Path {
        &self.cfg.data_dir
    }

    fn has_data(&self) -> bool {
        self.data().join("PG_VERSION").is_file()
    }

    fn log_file(&self) -> PathBuf {
        let mut p = self.cfg.data_dir.clone().into_os_string();
        p.push(".log");
        PathBuf::from(p)
    }

    /// Hands `path` to the PostgreSQL user (when running as root).
    fn own(&self, path: &Path) -> Result<(), String> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
        }
        Ok(())
    }

    fn write_owned(&self, path: &Path, text: &str, mode: u32) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
        self.own(path)
    }

    /// Writes `postgresql.conf` and `pg_hba.conf` for `role`.
    fn write_conf(&self, role: &Role<'_>) -> Result<(), String> {
        self.write_owned(&self.data().join("postgresql.conf"), &files::postgresql_conf(&self.cfg, role), 0o600)?;
        self.write_owned(&self.data().join("pg_hba.conf"), &files::pg_hba(&self.cfg), 0o600)
    }

    /// Runs one of PostgreSQL's programs as the PostgreSQL user; its output, or an error
    /// with the output's tail.
    async fn run(
        &self,
        program: &str,
        args: &[&str],
        password: Option<&str>,
        limit: Duration,
    ) -> Result<String, String> {
        let mut cmd = Command::new(self.cfg.bin_dir.join(program));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir(&self.cfg.socket_dir)
            .env("LC_ALL", "C")
            .kill_on_drop(true);
        if let Some(p) = password {
            // Not on the command line, where `ps` would show it.
            cmd.env("PGPASSWORD", p);
        }
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().map_err(|e| format!("{program}: cannot start: {e}"))?;
        let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(format!("{program}: {e}")),
            Err(_) => return Err(format!("{program}: no exit within {limit:?}, killed")),
        };
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("{program} failed ({}): {}", out.status, tail(&text, 6)))
        }
    }

    async fn pg_ctl(&self, args: &[&str]) -> Result<String, String> {
        let t = self.cfg.pg_ctl_timeout.as_secs().to_string();
        let data = self.data().display().to_string();
        let mut all = vec!["-D", &data, "-w", "-t", &t];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all, None, self.cfg.pg_ctl_timeout + Duration::from_secs(5)).await
    }

    /// Whether a postmaster runs on the data directory (`pg_ctl status`).
    async fn postmaster_running(&self) -> bool {
        let data = self.data().display().to_string();
        self.has_data() && self.run("pg_ctl", &["-D", &data, "status"], None, Duration::from_secs(10)).await.is_ok()
    }

    fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    async fn controldata(&self) -> Result<(ClusterState, u64), String> {
        let data = self.data().display().to_string();
        let out = self.run("pg_controldata", &[&data], None, Duration::from_secs(10)).await?;
        files::parse_controldata(&out).ok_or_else(|| format!("pg_controldata: unexpected output: {}", tail(&out, 3)))
    }

    async fn start(&self, role: &Role<'_>) -> Result<(), String> {
        self.write_conf(role)?;
        let standby = self.data().join("standby.signal");
        if matches!(role, Role::Standby { .. }) {
            self.write_owned(&standby, "", 0o600)?;
        } else {
            let _ = std::fs::remove_file(&standby);
        }
        let log = self.log_file();
        if !log.exists() {
            self.write_owned(&log, "", 0o600)?;
        }
        let log = log.display().to_string();
        self.pg_ctl(&["-l", &log, "start"]).await?;
        self.callback(
            self.cfg.callbacks.on_start.as_ref(),
            "on_start",
            if matches!(role, Role::Primary { .. }) { "primary" } else { "replica" },
        );
        Ok(())
    }

    async fn stop(&self, fast: bool) -> Result<(), String> {
        *self.client.lock().await = None;
        if !self.postmaster_running().await {
            return Ok(());
        }
        let first = if fast { "fast" } else { "immediate" };
        if let Err(e) = self.pg_ctl(&["-m", first, "stop"]).await {
            tracing::warn!(error = %e, mode = first, "pg_ctl stop failed; stopping immediately");
            if self.pg_ctl(&["-m", "immediate", "stop"]).await.is_err()
                && let Some(pid) = self.postmaster_pid()
            {
                // SAFETY: kill(2) on the postmaster's pid read from its own pid file.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if self.postmaster_running().await {
            return Err("PostgreSQL is still running after pg_ctl stop".into());
        }
        self.callback(self.cfg.callbacks.on_stop.as_ref(), "on_stop", "replica");
        Ok(())
    }

    /// Runs a callback program in the background, as Patroni does.
    fn callback(&self, program: Option<&PathBuf>, action: &'static str, role: &'static str) {
        let Some(program) = program.cloned() else { return };
        let scope = self.scope.clone();
        tokio::spawn(async move {
            let run =
                Command::new(&program).args([action, role, &scope]).stdin(Stdio::null()).kill_on_drop(true).status();
            match tokio::time::timeout(Duration::from_secs(60), run).await {
                Ok(Ok(s)) if s.success() => {}
                Ok(Ok(s)) => tracing::warn!(program = %program.display(), action, %s, "callback failed"),
                Ok(Err(e)) => {
                    tracing::warn!(program = %program.display(), action, error = %e, "callback did not start")
                }
                Err(_) => tracing::warn!(program = %program.display(), action, "callback ran past 60 s, killed"),
            }
        });
    }

    /// A connection to `host:port` as the superuser.
    async fn connect_to(&self, host: &str, port: u16, socket: bool) -> Result<Client, String> {
        let mut c = tokio_postgres::Config::new();
        if socket {
            c.host_path(host);
        } else {
            c.host(host);
        }
        c.port(port)
            .user(&self.cfg.superuser.username)
            .password(&self.cfg.superuser.password)
            .dbname("postgres")
            .application_name("leasehold-ha")
            .connect_timeout(Duration::from_secs(2));
        let (client, conn) = tokio::time::timeout(QUERY_TIMEOUT, c.connect(NoTls))
            .await
            .map_err(|_| format!("connecting to {host}:{port} timed out"))?
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs `sql` on the status connection (reconnecting once); rows of text columns.
    async fn local_query(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        let mut guard = self.client.lock().await;
        for attempt in 0..2 {
            if guard.as_ref().is_none_or(Client::is_closed) {
                let socket = self.cfg.socket_dir.display().to_string();
                *guard = Some(self.connect_to(&socket, self.cfg.port, true).await?);
            }
            let client = guard.as_ref().expect("connected above");
            match tokio::time::timeout(QUERY_TIMEOUT, client.simple_query(sql)).await {
                Ok(Ok(msgs)) => return Ok(rows(msgs)),
                Ok(Err(e)) if attempt == 0 && client.is_closed() => {
                    tracing::debug!(error = %e, "status connection closed; reconnecting");
                    *guard = None;
                }
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => {
                    *guard = None;
                    return Err(format!("query timed out after {QUERY_TIMEOUT:?}"));
                }
            }
        }
        Err("no status connection".into())
    }

    async fn reading(&self) -> Result<Reading, String> {
        let rows = self.local_query(STATUS_SQL).await?;
        let row = rows.first().ok_or("status query returned no row")?;
        let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        Ok(Reading {
            in_recovery: field(0) == "true",
            position: field(1).parse().unwrap_or(0),
            timeline: field(2).parse().unwrap_or(0),
        })
    }

    /// Waits until the PostgreSQL at `host:port` accepts connections and runs as a primary.
    async fn leader_primary(&self, host: &str, port: u16) -> Result<Client, String> {
        let until = Instant::now() + LEADER_WAIT;
        let mut last = String::new();
        while Instant::now() < until {
            match self.connect_to(host, port, false).await {
                Ok(c) => match c.simple_query("select pg_is_in_recovery()::text").await.map(rows) {
                    Ok(r) if r.first().and_then(|r| r.first()).cloned().flatten().as_deref() == Some("false") => {
                        return Ok(c);
                    }
                    Ok(_) => last = "still in recovery".into(),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(format!("the leader's PostgreSQL at {host}:{port} is not a running primary: {last}"))
    }

    /// Why this standby's history left the leader's, if it did: it is on another timeline
    /// and its position is past the point where the leader's history left that timeline.
    async fn diverged(&self, me: Reading, leader: &Client) -> Result<Option<String>, String> {
        let tli_sql = "select ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint::text";
        let r = leader.simple_query(tli_sql).await.map(rows).map_err(|e| e.to_string())?;
        let leader_tli: u64 = r
            .first()
            .and_then(|r| r.first())
            .cloned()
            .flatten()
            .and_then(|s| s.parse().ok())
            .ok_or("the leader's timeline is unreadable")?;
        if leader_tli == me.timeline {
            return Ok(None);
        }
        if leader_tli < me.timeline {
            return Ok(Some(format!("timeline {} is newer than the leader's {leader_tli}", me.timeline)));
        }
        let sql = format!("select pg_read_file('pg_wal/{leader_tli:08X}.history')");
        let r = leader.simple_query(&sql).await.map(rows).map_err(|e| e.to_string())?;
        let history = r.first().and_then(|r| r.first()).cloned().flatten().unwrap_or_default();
        Ok(match files::switchpoint(&history, me.timeline) {
            Some(point) if me.position > point => Some(format!(
                "position {} is past {point}, where the leader's timeline {leader_tli} left timeline {}",
                me.position, me.timeline
            )),
            Some(_) => None,
            None => Some(format!("timeline {} is not in the leader's history (timeline {leader_tli})", me.timeline)),
        })
    }

    /// `primary_conninfo` for streaming from `host:port`.
    fn upstream(&self, host: &str, port: u16) -> String {
        let r = &self.cfg.replication;
        let mut s = files::conninfo(host, port, &r.username, &r.password, &self.name, "postgres");
        // dbname is ignored for physical replication; keep the string minimal.
        s = s.replace(" dbname=postgres", "");
        s
    }

    fn slot(&self) -> Option<String> {
        self.cfg.use_slots.then(|| files::slot_name(&self.name))
    }

    async fn clone_from(&self, host: &str, port: u16) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data();
        std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        self.own(data)?;
        let r = &self.cfg.replication;
        let conn = files::conninfo(host, port, &r.username, "", &self.name, "postgres").replace(" password=''", "");
        let d = data.display().to_string();
        let limit = Duration::from_secs(3600);
        self.run("pg_basebackup", &["-D", &d, "-d", &conn, "-X", "stream", "-c", "fast"], Some(&r.password), limit)
            .await?;
        tracing::info!(from = %format!("{host}:{port}"), "cloned with pg_basebackup");
        Ok(())
    }

    /// A former primary (or a diverged standby, stopped) rejoins the leader at `host:port`.
    async fn rejoin(&self, host: &str, port: u16, leader: &Client) -> Result<Rejoin, String> {
        let reason = if !self.cfg.use_pg_rewind {
            "postgresql.use_pg_rewind is off".to_string()
        } else {
            // The leader's pg_control must show its new timeline, or pg_rewind sees nothing
            // to do (Patroni waits for the same checkpoint after a promotion).
            if let Err(e) = leader.simple_query("CHECKPOINT").await {
                tracing::warn!(error = %e, "CHECKPOINT on the leader failed; pg_rewind may see the old timeline");
            }
            // Crash recovery in single-user mode refuses a standby: no signal file before the rewind.
            for f in ["standby.signal", "recovery.signal"] {
                let _ = std::fs::remove_file(self.data().join(f));
            }
            self.write_conf(&Role::Standby { upstream: None, slot: None })?;
            let su = &self.cfg.superuser;
            let source =
                files::conninfo(host, port, &su.username, "", &self.name, "postgres").replace(" password=''", "");
            let d = self.data().display().to_string();
            let limit = Duration::from_secs(3600);
            match self.run("pg_rewind", &["-D", &d, "--source-server", &source], Some(&su.password), limit).await {
                Ok(out) => {
                    self.rewinds.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(path = "rewind", leader = %format!("{host}:{port}"), output = %tail(&out, 2), "rejoin: rewound with pg_rewind");
                    return Ok(Rejoin::Rewind);
                }
                Err(e) => e,
            }
        };
        tracing::warn!(path = "reclone", %reason, "rejoin: pg_rewind cannot be used; taking a new base backup");
        let data = self.data().to_path_buf();
        if self.cfg.remove_data_directory_on_rewind_failure {
            std::fs::remove_dir_all(&data).map_err(|e| format!("cannot remove {}: {e}", data.display()))?;
        } else {
            let mut aside = data.clone().into_os_string();
            aside.push(format!(".rewind-failed-{}", unix_secs()));
            std::fs::rename(&data, &aside).map_err(|e| format!("cannot move {} aside: {e}", data.display()))?;
            tracing::warn!(kept = %PathBuf::from(&aside).display(), "the old data directory is kept");
        }
        self.clone_from(host, port).await?;
        self.reclones.fetch_add(1, Ordering::Relaxed);
        Ok(Rejoin::Reclone)
    }

    /// initdb, start, the replication role: the very first primary of the cluster.
    async fn bootstrap(&self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(view) = self.driver_state().and_then(|s| s.view)
            && view.history.is_some()
        {
            return Err(format!(
                "{} has no data, and the cluster already had a leader: refusing to initdb a new cluster",
                self.data().display()
            ));
        }
        let data = self.data();
        std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        self.own(data)?;
        let mut pwfile = data.to_path_buf().into_os_string();
        pwfile.push(".pwfile");
        let pwfile = PathBuf::from(pwfile);
        self.write_owned(&pwfile, &format!("{}\n", self.cfg.superuser.password), 0o600)?;
        let d = data.display().to_string();
        let pw = format!("--pwfile={}", pwfile.display());
        let user = format!("--username={}", self.cfg.superuser.username);
        let r = self
            .run(
                "initdb",
                &["-D", &d, &user, &pw, "--auth=scram-sha-256", "--encoding=UTF8"],
                None,
                Duration::from_secs(300),
            )
            .await;
        let _ = std::fs::remove_file(&pwfile);
        r?;
        self.start(&Role::Primary { sync: self.initial_sync() }).await?;
        let repl = &self.cfg.replication;
        let sql = format!(
            "CREATE ROLE \"{}\" WITH REPLICATION LOGIN PASSWORD {}",
            repl.username,
            files::conf_quote(&repl.password)
        );
        self.local_query(&sql).await.map_err(|e| format!("cannot create the replication role: {e}"))?;
        tracing::info!(data_dir = %data.display(), "initdb: new cluster");
        Ok(())
    }

    /// `synchronous_standby_names` right after a promotion.
    fn initial_sync(&self) -> Option<String> {
        if self.sync_mode { files::sync_standby_names(&[], self.strict) } else { None }
    }

    /// Creates a slot for every other member and drops inactive slots of members that left.
    async fn reconcile_slots(&self, force: bool) {
        let Some(view) = self.driver_state().and_then(|s| s.view) else { return };
        let mut wanted: Vec<String> = view
            .members
            .iter()
            .filter(|m| m.value.name != self.name)
            .map(|m| files::slot_name(&m.value.name))
            .collect();
        wanted.sort();
        let mut last = self.slots_checked.lock().await;
        if !force && last.as_ref().is_some_and(|(at, w)| *w == wanted && at.elapsed() < SLOT_INTERVAL) {
            return;
        }
        let Ok(existing) = self
            .local_query("select slot_name, active::text from pg_replication_slots where slot_type = 'physical'")
            .await
        else {
            return;
        };
        for name in &wanted {
            if !existing.iter().any(|r| r.first().cloned().flatten().as_deref() == Some(name)) {
                match self.local_query(&format!("select pg_create_physical_replication_slot('{name}', true)")).await {
                    Ok(_) => tracing::info!(slot = %name, "replication slot created"),
                    Err(e) => tracing::warn!(slot = %name, error = %e, "cannot create replication slot"),
                }
            }
        }
        for r in &existing {
            let (Some(Some(name)), Some(Some(active))) = (r.first(), r.get(1)) else { continue };
            if !wanted.contains(name) && active == "false" {
                match self.local_query(&format!("select pg_drop_replication_slot('{name}')")).await {
                    Ok(_) => tracing::info!(slot = %name, "replication slot of a departed member dropped"),
                    Err(e) => tracing::warn!(slot = %name, error = %e, "cannot drop replication slot"),
                }
            }
        }
        *last = Some((Instant::now(), wanted));
    }

    /// The synchronous standbys confirmed now (see the module docs).
    /// Who streams from us now; `None` when the server does not answer (the node then goes
    /// by member records alone).
    async fn streaming_standbys(&self) -> Option<Vec<String>> {
        let rows = self.local_query(STREAMING_SQL).await.ok()?;
        Some(rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect())
    }

    async fn confirmed_sync(&self, primary_position: u64) -> Vec<String> {
        let names = {
            let mut s = self.sync.lock().unwrap_or_else(|e| e.into_inner());
            // The wildcard (strict mode, no standby) confirms nobody: the key keeps naming only
            // the leader, whichever standby acknowledges under it.
            if s.names.is_empty() || s.names == [ANY_STANDBY] {
                return Vec::new();
            }
            if s.barrier.is_none() {
                if s.set_at.is_some_and(|t| t.elapsed() >= SYNC_SETTLE) {
                    s.barrier = Some(primary_position);
                }
                return Vec::new();
            }
            s.names.clone()
        };
        let barrier = self.sync.lock().unwrap_or_else(|e| e.into_inner()).barrier.unwrap_or(u64::MAX);
        let Ok(rows) = self.local_query(REPLICATION_SQL).await else { return Vec::new() };
        rows.iter()
            .filter_map(|r| {
                let name = r.first().cloned().flatten()?;
                let state = r.get(1).cloned().flatten()?;
                let flush: u64 = r.get(2).cloned().flatten()?.parse().ok()?;
                (names.contains(&name) && matches!(state.as_str(), "sync" | "quorum") && flush >= barrier)
                    .then_some(name)
            })
            .collect()
    }

    async fn reload(&self) -> Result<(), String> {
        self.local_query("select pg_reload_conf()").await.map(|_| ())
    }

    /// Applies the dynamic configuration's PostgreSQL parameters: writes them where
    /// `postgresql.conf` includes them and reloads a running server. Returns the lines the
    /// server refused (`pg_file_settings`), each with its reason; `None` when there is no data
    /// directory yet to write to (ask again once there is).
    pub async fn apply_parameters(
        &self,
        parameters: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<Vec<String>>, String> {
        if !self.has_data() {
            return Ok(None);
        }
        self.write_owned(&self.data().join(files::DYNAMIC_CONF), &files::dynamic_conf(parameters), 0o600)?;
        if !self.postmaster_running().await {
            return Ok(Some(Vec::new()));
        }
        self.reload().await?;
        let refused =
            self.local_query("select name, error from pg_file_settings where error is not null order by name").await?;
        Ok(Some(joined(refused)))
    }

    /// Parameters the running server changes only by restarting (`pending_restart` in
    /// `pg_settings`); empty when PostgreSQL is not running. A reload is applied
    /// asynchronously, so a list read right after one may still be the old.
    /// The daemon reads it once per HA loop; `/status` answers from that read.
    pub async fn pending_restart_names(&self) -> Vec<String> {
        let names = if self.has_data() {
            self.local_query("select name from pg_settings where pending_restart order by name").await.ok().map(joined)
        } else {
            Some(Vec::new())
        };
        *self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = names.clone();
        names.unwrap_or_default()
    }

    /// The standby steps that follow a leader once the data directory is in place.
    async fn follow_leader(&self, host: &str, port: u16) -> Result<(), String> {
        let upstream = self.upstream(host, port);
        let standby = Role::Standby { upstream: Some(&upstream), slot: self.slot() };
        if !self.has_data() {
            self.leader_primary(host, port).await?;
            self.clone_from(host, port).await?;
            return self.start(&standby).await;
        }
        let leader = self.leader_primary(host, port).await?;
        if self.postmaster_running().await {
            let me = self.reading().await?;
            if !me.in_recovery {
                return Err("PostgreSQL still runs as a primary: demote first".into());
            }
            let Some(why) = self.diverged(me, &leader).await? else {
                self.write_conf(&standby)?;
                self.write_owned(&self.data().join("standby.signal"), "", 0o600)?;
                self.reload().await?;
                tracing::info!(leader = %format!("{host}:{port}"), "following (reloaded primary_conninfo)");
                return Ok(());
            };
            tracing::info!(%why, "this standby's history left the leader's: rewinding");
            self.stop(true).await?;
            self.rejoin(host, port, &leader).await?;
            return self.start(&standby).await;
        }
        let (state, _) = self.controldata().await?;
        match state {
            ClusterState::ShutDown | ClusterState::Crashed => {
                tracing::info!(?state, "former primary: rejoining the leader");
                self.rejoin(host, port, &leader).await?;
                self.start(&standby).await
            }
            ClusterState::Standby => {
                self.start(&standby).await?;
                let me = self.reading().await?;
                if let Some(why) = self.diverged(me, &leader).await? {
                    tracing::info!(%why, "this standby's history left the leader's: rewinding");
                    self.stop(true).await?;
                    self.rejoin(host, port, &leader).await?;
                    self.start(&standby).await?;
                }
                Ok(())
            }
        }
    }
}

#[async_trait]
impl crate::api::MemberActions for PgResource {
    /// `pg_ctl restart -m fast`, in the role PostgreSQL has (a standby keeps `standby.signal`).
    async fn restart(&self) -> Result<(), String> {
        let _operation = self.operation.lock().await;
        if !self.postmaster_running().await {
            return Err("PostgreSQL is not running; the HA loop starts it".into());
        }
        *self.client.lock().await = None;
        let log = self.log_file().display().to_string();
        tracing::info!("restarting PostgreSQL (pg_ctl restart -m fast)");
        self.pg_ctl(&["-m", "fast", "-l", &log, "restart"]).await.map(drop)
    }

    /// `pg_reload_conf()`.
    async fn reload(&self) -> Result<(), String> {
        tracing::info!("reloading PostgreSQL's configuration");
        PgResource::reload(self).await
    }

    /// Stops PostgreSQL, removes the data directory and takes a new base backup from the
    /// leader, then starts as its standby (Patroni's reinitialize).
    async fn reinitialize(&self, leader: &str, conn_url: Option<&str>) -> Result<(), String> {
        let url = conn_url.filter(|u| !u.is_empty()).ok_or_else(|| format!("leader {leader} publishes no conn_url"))?;
        let (host, port) =
            files::parse_conn_url(url).ok_or_else(|| format!("leader {leader}: conn_url {url:?} is not host:port"))?;
        let _operation = self.operation.lock().await;
        // The leader must answer as a primary before anything is thrown away.
        self.leader_primary(&host, port).await?;
        tracing::warn!(leader, "reinitializing: removing the data directory and cloning from the leader");
        self.stop(true).await?;
        let data = self.data().to_path_buf();
        if data.exists() {
            std::fs::remove_dir_all(&data).map_err(|e| format!("cannot remove {}: {e}", data.display()))?;
        }
        self.clone_from(&host, port).await?;
        self.reclones.fetch_add(1, Ordering::Relaxed);
        let upstream = self.upstream(&host, port);
        self.start(&Role::Standby { upstream: Some(&upstream), slot: self.slot() }).await
    }

    /// Whether a changed setting waits for a restart (`pg_settings.pending_restart`), as
    /// read at the last HA loop; `None` before the first read or when it failed.
    async fn pending_restart(&self) -> Option<bool> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map(|names| !names.is_empty())
    }
}

fn rows(msgs: Vec<SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect()
}

#[async_trait]
impl Resource for PgResource {
    async fn promote(&self, epoch: Epoch) -> Result<(), String> {
        let acting = *self.acting_epoch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = acting
            && self.postmaster_running().await
            && !self.reading().await?.in_recovery
        {
            // Reconfiguring would drop the synchronous standbys this primary runs with.
            tracing::warn!(%old, new = %epoch, "already primary: adopting the new epoch (failsafe re-acquisition); writes and synchronous standbys unchanged");
            *self.acting_epoch.lock().unwrap_or_else(|e| e.into_inner()) = Some(epoch);
            return Ok(());
        }
        tracing::info!(%epoch, "promoting PostgreSQL");
        *self.sync.lock().unwrap_or_else(|e| e.into_inner()) = SyncState::default();
        let primary = Role::Primary { sync: self.initial_sync() };
        if !self.has_data() {
            self.bootstrap().await?;
        } else if !self.postmaster_running().await {
            match self.controldata().await?.0 {
                // Our own former primary, never rewound: it starts as the primary it was.
                ClusterState::ShutDown | ClusterState::Crashed => self.start(&primary).await?,
                ClusterState::Standby => self.start(&Role::Standby { upstream: None, slot: None }).await?,
            }
        }
        let r = self.reading().await?;
        self.write_conf(&primary)?;
        if r.in_recovery {
            // synchronous_standby_names takes effect before the first write is accepted.
            self.reload().await?;
            // pg_ctl promote; the startup process removes standby.signal itself (and fails
            // hard if someone else removed it first).
            self.pg_ctl(&["promote"]).await?;
        } else {
            self.reload().await?;
        }
        // The new timeline into pg_control, for pg_rewind on the members that rejoin.
        self.local_query("CHECKPOINT").await?;
        if self.cfg.use_slots {
            self.reconcile_slots(true).await;
        }
        self.callback(self.cfg.callbacks.on_role_change.as_ref(), "on_role_change", "primary");
        tracing::info!(%epoch, "PostgreSQL runs as primary");
        *self.acting_epoch.lock().unwrap_or_else(|e| e.into_inner()) = Some(epoch);
        Ok(())
    }

    async fn demote(&self, mode: DemoteMode) -> Result<(), String> {
        *self.acting_epoch.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let fast = mode == DemoteMode::Graceful;
        tracing::info!(
            mode = crate::hooks::mode_name(mode),
            "stopping PostgreSQL ({})",
            if fast { "fast" } else { "immediate" }
        );
        *self.sync.lock().unwrap_or_else(|e| e.into_inner()) = SyncState::default();
        self.stop(fast).await?;
        self.callback(self.cfg.callbacks.on_role_change.as_ref(), "on_role_change", "replica");
        Ok(())
    }

    async fn follow(&self, leader: Option<&str>, conn_url: Option<&str>) -> Result<(), String> {
        let (Some(leader), Some(url)) = (leader, conn_url.filter(|u| !u.is_empty())) else {
            // No leader: a stopped standby starts read-only; a former primary stays down.
            if self.has_data()
                && !self.postmaster_running().await
                && matches!(self.controldata().await, Ok((ClusterState::Standby, _)))
            {
                self.start(&Role::Standby { upstream: None, slot: None }).await?;
            }
            return Ok(());
        };
        let (host, port) =
            files::parse_conn_url(url).ok_or_else(|| format!("leader {leader}: conn_url {url:?} is not host:port"))?;
        tracing::info!(leader, conn = %format!("{host}:{port}"), "following");
        let _operation = self.operation.lock().await;
        self.follow_leader(&host, port).await
    }

    async fn status(&self) -> ResourceStatus {
        let Ok(r) = self.reading().await else { return ResourceStatus::default() };
        let mut sync_confirmed = Vec::new();
        let mut streaming = None;
        if !r.in_recovery {
            if self.sync_mode {
                sync_confirmed = self.confirmed_sync(r.position).await;
                streaming = self.streaming_standbys().await;
            }
            if self.cfg.use_slots {
                self.reconcile_slots(false).await;
            }
        }
        ResourceStatus {
            running: true,
            role: if r.in_recovery { ResourceRole::Replica } else { ResourceRole::Primary },
            position: Some(r.position),
            timeline: Some(r.timeline),
            sync_confirmed,
            streaming,
        }
    }

    async fn set_sync_standbys(&self, names: &[String]) -> Result<(), String> {
        let value = files::sync_standby_names(names, self.strict);
        {
            let mut s = self.sync.lock().unwrap_or_else(|e| e.into_inner());
            *s = SyncState { names: names.to_vec(), set_at: Some(Instant::now()), barrier: None };
        }
        self.write_conf(&Role::Primary { sync: value.clone() })?;
        self.reload().await?;
        tracing::info!(synchronous_standby_names = value.as_deref().unwrap_or(""), "synchronous standbys set");
        Ok(())
    }
}

/// Each row's columns joined with `: `.
fn joined(rows: Vec<Vec<Option<String>>>) -> Vec<String> {
    rows.into_iter().map(|r| r.into_iter().map(Option::unwrap_or_default).collect::<Vec<_>>().join(": ")).collect()
}
