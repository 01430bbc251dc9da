//! End to end on real PostgreSQL 15: etcd, three `leasehold-ha` daemons with the native
//! `[postgresql]` resource in synchronous mode, three PostgreSQL instances on loopback, and
//! a writer committing numbered rows on whichever instance accepts writes, logging every
//! acknowledgment. Faults: (a) kill -9 of the leader's daemon and postmaster, (b) SIGSTOP of
//! the leader's daemon for 2 x ttl, (c) the leader's store connection cut by a TCP proxy the
//! test controls. After each, every acknowledged row must be on the new primary (what was
//! lost is printed; zero is the only pass) and the former primary must rejoin by pg_rewind.
//!
//! Rounds: `PG_E2E_ROUNDS` (default 3; every round runs the three faults).
//! Skipped, saying so, when PostgreSQL 15 is not installed (scripts/setup.sh installs it).
#![allow(clippy::disallowed_methods)] // tests read the clock for deadlines and run threads

mod common;

use std::collections::BTreeSet;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pg::{PgCluster, PgSpec, connect, kill_postmaster, no_extra, postmaster_pid};

const LIMIT: Duration = Duration::from_secs(60);
const TTL_SECS: u64 = 5;

/// One cluster at a time: four clusters of three PostgreSQL instances on two cores would
/// turn load into spurious failovers.
static SERIAL: Mutex<()> = Mutex::new(());

/// One cluster at a time, and only where PostgreSQL 15 is installed (saying so otherwise).
fn postgres_turn() -> Option<std::sync::MutexGuard<'static, ()>> {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    common::pg::installed("pg_rewind").then_some(serial)
}

/// The writer's table, created on the primary at `port`.
fn create_acked_table(port: u16) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = writable(port).await.expect("the primary answers");
        client.batch_execute("create table acked(n bigint primary key)").await.expect("table created");
    });
}

/// Three members on the shared fixture, each reaching etcd through a proxy the test can cut.
struct Cluster {
    sync: bool,
    /// Synchronous mode: how many standbys a healthy sync key names.
    sync_count: usize,
    pg: PgCluster,
}

impl std::ops::Deref for Cluster {
    type Target = PgCluster;
    fn deref(&self) -> &PgCluster {
        &self.pg
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut PgCluster {
        &mut self.pg
    }
}

impl Cluster {
    fn start(sync: bool, extra: &str) -> Cluster {
        Cluster::start_with(if sync { "synchronous_mode = true" } else { "synchronous_mode = false" }, extra)
    }

    /// Synchronous mode with n3 tagged `nosync`: the leader's choice of synchronous standby
    /// is then the one other member, never a coin flip between two replicas streaming at
    /// nearly the same position (the node re-picks the most advanced one every loop and
    /// empties the sync key while it switches: notes/daemon.md, request B).
    fn start_sync_with_nosync_third() -> Cluster {
        Cluster::start_members("synchronous_mode = true", "", true)
    }

    /// `top`: top-level keys (synchronous mode); `extra`: keys of `[postgresql]`.
    fn start_with(top: &str, extra: &str) -> Cluster {
        Cluster::start_members(top, extra, false)
    }

    fn start_members(top: &str, extra: &str, nosync_third: bool) -> Cluster {
        Cluster::start_spec(top, extra, nosync_third, "")
    }

    /// As [`start_members`](Self::start_members), with extra keys of `[etcd]`.
    fn start_spec(top: &str, extra: &str, nosync_third: bool, etcd: &str) -> Cluster {
        let sync = top.contains("synchronous_mode = true");
        let sync_count = top
            .lines()
            .find_map(|l| l.strip_prefix("synchronous_node_count = "))
            .map_or(1, |n| n.trim().parse().expect("a count"));
        fn nosync(i: usize) -> String {
            if i == 2 { "[tags]\nnosync = true".into() } else { String::new() }
        }
        let spec = PgSpec {
            members: 3,
            scope: "pg",
            prefix: "/pg-e2e",
            top: format!(
                "ttl = \"{TTL_SECS}s\"\nloop_wait = \"1s\"\nretry_timeout = \"1500ms\"\nsafety_margin = \"1s\"\n{top}"
            ),
            postgresql: extra.to_string(),
            member_extra: if nosync_third { nosync } else { no_extra },
            proxies: true,
            etcd: etcd.to_string(),
        };
        let mut c = Cluster { sync, sync_count, pg: PgCluster::new(&spec) };
        // n1 bootstraps; the others join once it leads (so a nosync member never bootstraps).
        c.start_member(0);
        c.wait("n1 leads", |c| c.leader().filter(|&(i, _)| i == 0));
        for i in 1..3 {
            c.start_member(i);
        }
        c
    }

    /// The one member acting as leader with a running primary, and its epoch.
    fn leader(&self) -> Option<(usize, u64)> {
        let l: Vec<(usize, u64)> = (0..3)
            .filter_map(|i| {
                let s = self.status(i)?;
                (s["acting"] == true && s["role"] == "primary").then(|| (i, s["epoch"].as_u64().unwrap_or(0)))
            })
            .collect();
        (l.len() == 1).then(|| l[0])
    }

    fn wait<T>(&self, what: &str, mut check: impl FnMut(&Cluster) -> Option<T>) -> T {
        let until = Instant::now() + LIMIT;
        while Instant::now() < until {
            if let Some(v) = check(self) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.dump();
        panic!("{what}: not reached within {LIMIT:?}");
    }

    /// Healthy: one leader, both others streaming replicas, and (synchronous mode) the sync
    /// key naming one of them, all unchanged for 3 s. The node re-picks the most advanced
    /// replica as synchronous standby every loop and empties the sync key while it switches
    /// (notes/daemon.md, request B); a fault inside that window leaves no member that may be
    /// promoted, which is Patroni's rule too, but not what these faults are about.
    fn wait_healthy(&self) -> (usize, u64) {
        let mut since: Option<(Instant, (usize, u64, String))> = None;
        self.wait("a leader with two replicas (and a synchronous standby), stable for 3 s", |c| {
            let now = c.healthy();
            match (&since, now) {
                (Some((t, seen)), Some(cur)) if *seen == cur => {
                    if t.elapsed() >= Duration::from_secs(3) {
                        return Some((cur.0, cur.1));
                    }
                }
                (_, Some(cur)) => since = Some((Instant::now(), cur)),
                (_, None) => since = None,
            }
            None
        })
    }

    fn healthy(&self) -> Option<(usize, u64, String)> {
        let (l, e) = self.leader()?;
        let ls = self.status(l)?;
        let sync: Vec<String> =
            ls["sync_standby"].as_array()?.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
        if self.sync && sync.len() != self.sync_count {
            return None;
        }
        let replicas = (0..3)
            .filter(|&i| i != l)
            .filter(|&i| {
                self.status(i).is_some_and(|s| {
                    s["role"] == "replica" && s["running"] == true && s["leader"] == self.members[l].name.as_str()
                })
            })
            .count();
        (replicas == 2).then(|| (l, e, sync.join(",")))
    }

    fn dump(&self) {
        if std::env::var_os("PG_E2E_KEEP").is_some() {
            let kept = self.dir.path().with_extension("kept");
            let _ = std::process::Command::new("cp").arg("-a").arg(self.dir.path()).arg(&kept).status();
            eprintln!("==== logs copied to {}", kept.display());
        }
        self.pg.dump(60);
    }
}

/// The writer: numbered rows, committed on whichever instance accepts writes; every
/// acknowledged number is logged.
struct Writer {
    acked: Arc<Mutex<Vec<i64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn writable(port: u16) -> Option<tokio_postgres::Client> {
    let c = connect(port).await?;
    let row = tokio::time::timeout(Duration::from_secs(2), c.query_one("select pg_is_in_recovery()", &[]))
        .await
        .ok()?
        .ok()?;
    (!row.get::<_, bool>(0)).then_some(c)
}

impl Writer {
    fn start(ports: Vec<u16>) -> Writer {
        let acked: Arc<Mutex<Vec<i64>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acked.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut n: i64 = 0;
                let mut at = 0usize;
                let mut client: Option<tokio_postgres::Client> = None;
                while !s.load(Ordering::SeqCst) {
                    let Some(c) = &client else {
                        for k in 0..ports.len() {
                            let i = (at + k) % ports.len();
                            if let Some(c) = writable(ports[i]).await {
                                client = Some(c);
                                at = i;
                                break;
                            }
                        }
                        if client.is_none() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        continue;
                    };
                    n += 1;
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&n];
                    let insert = c.execute("insert into acked(n) values ($1)", &params);
                    match tokio::time::timeout(Duration::from_secs(2), insert).await {
                        Ok(Ok(_)) => a.lock().unwrap().push(n),
                        // Unknown outcome: never counted, never reused; try the next instance.
                        _ => {
                            client = None;
                            at += 1;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        });
        Writer { acked, stop, thread: Some(thread) }
    }

    fn acked(&self) -> Vec<i64> {
        self.acked.lock().unwrap().clone()
    }

    /// Waits until `more` rows beyond `after` were acknowledged.
    fn wait_progress(&self, c: &Cluster, more: usize) {
        let base = self.acked().len();
        c.wait("the writer commits on the new primary", |_| (self.acked().len() >= base + more).then_some(()));
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Acknowledged rows missing on the primary at `port`.
fn lost_on(port: u16, acked: &[i64]) -> Vec<i64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let c = writable(port).await.expect("the new primary answers");
        let rows = c.query("select n from acked", &[]).await.expect("rows read");
        let present: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        acked.iter().copied().filter(|n| !present.contains(n)).collect()
    })
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Pause,
    StoreCut,
    /// Not a fault: a graceful switchover to the synchronous standby (the graceful demote).
    Switchover,
}

/// One fault on the current leader; returns after the former primary rejoined by the
/// expected path.
fn fault(c: &mut Cluster, w: &Writer, fault: Fault) {
    fault_then(c, w, fault, Rejoin::Rewind);
}

/// How a former primary is expected to rejoin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rejoin {
    Rewind,
    Reclone,
}

fn fault_then(c: &mut Cluster, w: &Writer, fault: Fault, path: Rejoin) {
    w.wait_progress(c, 20);
    let (old, epoch) = c.wait_healthy();
    let before = c.log(old);
    let name = c.members[old].name.clone();
    eprintln!("---- {fault:?} on leader {name} (epoch {epoch}), {} rows acknowledged so far", w.acked().len());
    match fault {
        Fault::Kill => {
            c.members[old].proc.as_mut().unwrap().kill9();
            kill_postmaster(&c.members[old].data);
        }
        Fault::Pause => c.members[old].proc.as_ref().unwrap().freeze(),
        Fault::StoreCut => c.members[old].proxy().cut(),
        Fault::Switchover => {
            let (_, _, sync) = c.healthy().unwrap_or_default();
            let candidate = if sync.is_empty() { c.members[(old + 1) % 3].name.clone() } else { sync };
            let out = c.ctl(old, &["switchover", "--candidate", &candidate, "--wait", "40"]);
            if !out.status.success() {
                c.dump();
                panic!("switchover to {candidate}: {}", common::text(&out));
            }
        }
    }
    let (new, epoch2) = c.wait("a new leader", |c| c.leader().filter(|&(i, e)| i != old && e > epoch));
    match fault {
        Fault::Kill => {}
        Fault::Pause => {
            // 2 x ttl in all since the freeze; the new leader came first.
            std::thread::sleep(Duration::from_secs(TTL_SECS));
            c.members[old].proc.as_ref().unwrap().thaw();
        }
        Fault::StoreCut => c.members[old].proxy().heal(),
        Fault::Switchover => {}
    }
    w.wait_progress(c, 20);
    let acked = w.acked();
    let lost = lost_on(c.members[new].pg_port, &acked);
    eprintln!(
        "---- {fault:?}: new leader {} (epoch {epoch2}); {} acknowledged, {} lost{}",
        c.members[new].name,
        acked.len(),
        lost.len(),
        if lost.is_empty() { String::new() } else { format!(": {lost:?}") }
    );
    if !lost.is_empty() {
        c.dump();
    }
    if c.sync {
        assert!(lost.is_empty(), "{fault:?}: {} acknowledged rows lost: {lost:?}", lost.len());
    }

    if matches!(fault, Fault::Kill) {
        c.start_member(old);
    }
    c.wait("the former primary rejoins as a replica", |c| {
        c.status(old)
            .filter(|s| s["role"] == "replica" && s["running"] == true && s["leader"] == c.members[new].name.as_str())
    });
    let log = c.log(old);
    let after = &log[before.len().min(log.len())..];
    let rewound = count(after, "rejoin: rewound with pg_rewind");
    let recloned = count(after, "rejoin: pg_rewind cannot be used");
    eprintln!("---- {fault:?}: {name} rejoined: {rewound} rewind, {recloned} reclone");
    let expected = if path == Rejoin::Rewind { (1, 0) } else { (0, 1) };
    if (rewound, recloned) != expected {
        c.dump();
    }
    assert_eq!((rewound, recloned), expected, "{fault:?}: the former primary must rejoin by {path:?}");
}

#[test]
fn synchronous_mode_loses_no_acknowledged_write() {
    let Some(_serial) = postgres_turn() else { return };
    let rounds: usize = std::env::var("PG_E2E_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let mut c = Cluster::start_sync_with_nosync_third();
    let (l, _) = c.wait_healthy();
    create_acked_table(c.members[l].pg_port);
    let ports: Vec<u16> = c.members.iter().map(|m| m.pg_port).collect();
    let w = Writer::start(ports.clone());
    let m = Monitor::start(ports);
    for round in 1..=rounds {
        eprintln!("==== round {round} of {rounds}");
        for f in [Fault::Kill, Fault::Pause, Fault::StoreCut, Fault::Switchover] {
            let (_, overlaps_before) = m.counts();
            fault(&mut c, &w, f);
            if matches!(f, Fault::Pause) {
                // The frozen daemon's PostgreSQL runs on as a primary beside the new one: nothing
                // fences it. Synchronous mode is what keeps it from acknowledging (checked above);
                // the monitor must see the overlap, or it could not see one in the async test.
                let (_, overlaps) = m.counts();
                eprintln!("---- Pause: {} samples with two writable instances", overlaps - overlaps_before);
                assert!(overlaps > overlaps_before, "the monitor saw the paused leader's primary beside the new one");
            }
        }
    }
    let acked = w.acked().len();
    eprintln!("==== {rounds} round(s), {acked} rows acknowledged, none lost");
    assert!(acked > 0);
}

/// `synchronous_node_count = 2`: both replicas are synchronous standbys (the sync key names
/// both; `synchronous_standby_names = '2 (...)'`, so a commit waits for both). A replica's crash
/// takes it out of the key while the other stays, and commits go on; after kill -9 of the
/// leader and a store cut, whichever standby is promoted has every acknowledged row.
#[test]
fn two_synchronous_standbys_lose_no_acknowledged_write() {
    let Some(_serial) = postgres_turn() else { return };
    let mut c = Cluster::start_with("synchronous_mode = true\nsynchronous_node_count = 2", "");
    let (l, _) = c.wait_healthy();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let names = rt.block_on(async {
        let client = writable(c.members[l].pg_port).await.expect("the primary answers");
        client.batch_execute("create table acked(n bigint primary key)").await.expect("table created");
        client.query_one("show synchronous_standby_names", &[]).await.unwrap().get::<_, String>(0)
    });
    assert!(names.starts_with("2 ("), "a commit waits for both standbys: {names:?}");
    let ports: Vec<u16> = c.members.iter().map(|m| m.pg_port).collect();
    let w = Writer::start(ports);
    w.wait_progress(&c, 20);

    let (gone, kept) = ((l + 1) % 3, (l + 2) % 3);
    eprintln!("---- kill -9 of replica {}", c.members[gone].name);
    c.members[gone].proc.as_mut().unwrap().kill9();
    kill_postmaster(&c.members[gone].data);
    let kept_name = c.members[kept].name.clone();
    c.wait("the sync key names only the other standby", |c| {
        let s = c.status(l)?;
        let key: Vec<&str> = s["sync_standby"].as_array()?.iter().filter_map(|v| v.as_str()).collect();
        (key == [kept_name.as_str()]).then_some(())
    });
    w.wait_progress(&c, 20);
    c.start_member(gone);
    for f in [Fault::Kill, Fault::StoreCut] {
        fault(&mut c, &w, f);
    }
    let acked = w.acked().len();
    eprintln!("==== two synchronous standbys: {acked} rows acknowledged, none lost");
    assert!(acked > 0);
}

/// Samples every instance at once, every 20 ms, and counts the samples in which more than
/// one accepted writes (not in recovery).
struct Monitor {
    samples: Arc<Mutex<(u64, u64)>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    fn start(ports: Vec<u16>) -> Monitor {
        let samples: Arc<Mutex<(u64, u64)>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (out, s) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut clients: Vec<Option<tokio_postgres::Client>> = ports.iter().map(|_| None).collect();
                while !s.load(Ordering::SeqCst) {
                    for (i, c) in clients.iter_mut().enumerate() {
                        if c.as_ref().is_none_or(|c| c.is_closed()) {
                            *c = connect(ports[i]).await;
                        }
                    }
                    let checks = clients.iter().map(|c| async move {
                        let c = c.as_ref()?;
                        let q = c.query_one("select pg_is_in_recovery()", &[]);
                        let row = tokio::time::timeout(Duration::from_millis(500), q).await.ok()?.ok()?;
                        Some(!row.get::<_, bool>(0))
                    });
                    let writable =
                        futures::future::join_all(checks).await.into_iter().filter(|w| *w == Some(true)).count();
                    {
                        let mut o = out.lock().unwrap();
                        o.0 += 1;
                        if writable > 1 {
                            o.1 += 1;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        });
        Monitor { samples, stop, thread: Some(thread) }
    }

    /// (samples, samples with more than one writable instance).
    fn counts(&self) -> (u64, u64) {
        *self.samples.lock().unwrap()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Asynchronous mode, the leader cut from the store while its PostgreSQL keeps running: it
/// demotes before its lease ends, so no sample ever sees two instances accepting writes.
#[test]
fn asynchronous_mode_store_cut_never_two_writable_primaries() {
    let Some(_serial) = postgres_turn() else { return };
    let mut c = Cluster::start(false, "");
    let (l, _) = c.wait_healthy();
    create_acked_table(c.members[l].pg_port);
    let ports: Vec<u16> = c.members.iter().map(|m| m.pg_port).collect();
    let w = Writer::start(ports.clone());
    let m = Monitor::start(ports);
    fault(&mut c, &w, Fault::StoreCut);
    let (samples, overlaps) = m.counts();
    eprintln!(
        "==== asynchronous mode, store cut: {samples} samples of all three instances, {overlaps} with two writable"
    );
    assert!(samples > 100, "the monitor sampled ({samples})");
    assert_eq!(overlaps, 0, "two instances accepted writes at once in {overlaps} samples");
}

/// With `use_pg_rewind = false` a former primary is cloned again: the path is logged at WARN
/// with the reason, and the old data directory is kept aside.
#[test]
fn reclone_only_when_rewind_cannot_be_used() {
    let Some(_serial) = postgres_turn() else { return };
    let mut c = Cluster::start(false, "use_pg_rewind = false");
    let (l, _) = c.wait_healthy();
    create_acked_table(c.members[l].pg_port);
    let w = Writer::start(c.members.iter().map(|m| m.pg_port).collect());
    fault_then(&mut c, &w, Fault::Kill, Rejoin::Reclone);
    let log = c.log(l);
    assert!(log.contains("use_pg_rewind is off") && log.contains("WARN"), "the reason is logged at WARN");
    let home = c.members[l].data.parent().unwrap().to_path_buf();
    let aside: Vec<String> = std::fs::read_dir(&home)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("data.rewind-failed-"))
        .collect();
    assert_eq!(aside.len(), 1, "the old data directory is kept aside: {aside:?}");
    assert!(home.join(&aside[0]).join("PG_VERSION").is_file(), "the kept directory is intact");
}

/// Runs `sql` on the instance at `port` in a thread; the receiver gets whether it was
/// acknowledged (a commit that waits for a synchronous standby blocks that thread only).
fn commit_in_background(
    port: u16,
    sql: &'static str,
) -> (std::thread::JoinHandle<()>, std::sync::mpsc::Receiver<bool>) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let c = connect(port).await.expect("the primary answers");
            let r = c.execute(sql, &[]).await;
            let _ = done_tx.send(r.is_ok());
        });
    });
    (waiter, done_rx)
}

/// Strict synchronous mode: with no synchronous standby left, a commit waits instead of being
/// acknowledged unprotected, and completes once a standby is back.
#[test]
fn strict_mode_commits_wait_for_a_standby() {
    let Some(_serial) = postgres_turn() else { return };
    let mut c = Cluster::start_with("synchronous_mode = true\nsynchronous_mode_strict = true", "");
    let (l, _) = c.wait_healthy();
    let port = c.members[l].pg_port;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = rt.block_on(async {
        let client = writable(port).await.expect("the primary answers");
        client.batch_execute("create table acked(n bigint primary key); insert into acked values (1)").await.unwrap();
        client
    });
    let replicas: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    for &i in &replicas {
        c.members[i].proc.as_mut().unwrap().kill9();
        kill_postmaster(&c.members[i].data);
    }
    // The leader drops the dead standby from the sync key, then asks PostgreSQL for any standby.
    c.wait("the sync key is empty and synchronous_standby_names is '*'", |c| {
        let empty = c.status(l)?["sync_standby"].as_array()?.is_empty();
        let names = rt.block_on(async {
            let r = client.query_one("show synchronous_standby_names", &[]).await.ok()?;
            Some(r.get::<_, String>(0))
        })?;
        (empty && names == "*").then_some(())
    });
    let (waiter, done_rx) = commit_in_background(port, "insert into acked values (2)");
    assert!(
        done_rx.recv_timeout(Duration::from_secs(3)).is_err(),
        "strict mode: a commit without a synchronous standby must not be acknowledged"
    );
    eprintln!("---- strict: the commit waits with no standby; restarting {}", c.members[replicas[0]].name);
    c.start_member(replicas[0]);
    let acknowledged = done_rx.recv_timeout(LIMIT);
    if acknowledged != Ok(true) {
        c.dump();
    }
    assert_eq!(acknowledged, Ok(true), "the waiting commit completes once a standby is back");
    let _ = waiter.join();
    let n: i64 = rt.block_on(async { client.query_one("select count(*) from acked", &[]).await.unwrap().get(0) });
    assert_eq!(n, 2);
    eprintln!("---- strict: the commit was acknowledged once {} streamed again", c.members[replicas[0]].name);
}

/// With a member lease much longer than the ttl (`[etcd] member_ttl`), a dead member's record
/// stays in the store that long. The leader goes by who streams from its primary, not by the
/// record: once the synchronous standby's daemon and postmaster are killed (non-strict mode),
/// the commit waiting for it is acknowledged while the dead standby's record is still there.
/// Before the leader asked who streams, the commit waited until the record expired.
#[test]
fn a_dead_synchronous_standby_whose_member_record_lives_on_does_not_hold_commits() {
    let Some(_serial) = postgres_turn() else { return };
    let mut c = Cluster::start_spec("synchronous_mode = true", "", true, "member_ttl = \"900s\"");
    let (l, _) = c.wait_healthy();
    let port = c.members[l].pg_port;
    let standby_name = c.status(l).expect("the leader answers")["sync_standby"][0].as_str().unwrap().to_string();
    let s = c.members.iter().position(|m| m.name == standby_name).expect("a member");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = writable(port).await.expect("the primary answers");
        client.batch_execute("create table acked(n bigint primary key); insert into acked values (1)").await.unwrap();
    });
    c.members[s].proc.as_mut().unwrap().kill9();
    kill_postmaster(&c.members[s].data);
    let (waiter, done_rx) = commit_in_background(port, "insert into acked values (2)");
    let acknowledged = done_rx.recv_timeout(LIMIT);
    if acknowledged != Ok(true) {
        c.dump();
    }
    assert_eq!(acknowledged, Ok(true), "the commit is acknowledged once the dead standby leaves the sync key");
    let _ = waiter.join();
    c.wait("the sync key no longer names the dead standby", |c| {
        let sync = c.status(l)?["sync_standby"].as_array()?.clone();
        (!sync.iter().any(|n| n == standby_name.as_str())).then_some(())
    });
    let (code, body) = common::http_get_blocking(&format!("{}/cluster", c.members[l].api)).expect("the leader answers");
    assert_eq!(code, 200, "{body}");
    let cluster: serde_json::Value = serde_json::from_str(&body).expect("json");
    let listed = cluster["members"].as_array().expect("members").iter().any(|m| m["name"] == standby_name.as_str());
    assert!(listed, "the dead standby's member record is still in the store: {body}");
    eprintln!("---- the commit was acknowledged while {standby_name}'s record still said it runs");
}

/// Failsafe mode (Patroni's `failsafe_mode`): every member loses the store for 2 x ttl while
/// they still reach each other's REST API. The leader, confirmed by both replicas, keeps its
/// primary (no demote, no restart, commits go on), takes its expired key back when the store
/// returns under a new epoch, and nobody else is promoted.
#[test]
fn failsafe_leader_keeps_its_primary_through_a_store_outage() {
    let Some(_serial) = postgres_turn() else { return };
    let c = Cluster::start_members("synchronous_mode = true\nfailsafe_mode = true", "", true);
    let (l, epoch) = c.wait_healthy();
    create_acked_table(c.members[l].pg_port);
    let ports: Vec<u16> = c.members.iter().map(|m| m.pg_port).collect();
    let w = Writer::start(ports.clone());
    let m = Monitor::start(ports);
    w.wait_progress(&c, 20);
    let postmaster = postmaster_pid(&c.members[l].data);
    let logs_before: Vec<usize> = (0..3).map(|i| c.log(i).len()).collect();
    eprintln!("---- store cut for every member; leader {} (epoch {epoch})", c.members[l].name);
    for member in &c.members {
        member.proxy().cut();
    }
    std::thread::sleep(Duration::from_secs(2 * TTL_SECS));
    let during = w.acked().len();
    std::thread::sleep(Duration::from_secs(1));
    let committed_in_outage = w.acked().len() - during;
    for member in &c.members {
        member.proxy().heal();
    }
    let (l2, epoch2) = c.wait("the leader takes its key back", |c| c.leader().filter(|&(_, e)| e > epoch));
    w.wait_progress(&c, 20);
    let log_since = |i: usize| c.log(i)[logs_before[i]..].to_string();
    let leader_log = log_since(l);
    let acked = w.acked();
    let lost = lost_on(c.members[l2].pg_port, &acked);
    let (_, overlaps) = m.counts();
    eprintln!(
        "---- leader {} (epoch {epoch2}); {committed_in_outage} commits in the outage's last second; {} acknowledged, {} lost; {overlaps} samples with two writable",
        c.members[l2].name,
        acked.len(),
        lost.len()
    );
    let promoted_elsewhere = (0..3).filter(|&i| i != l).any(|i| log_since(i).contains("promoting PostgreSQL"));
    let demoted = leader_log.contains("stopping PostgreSQL");
    let took_back = leader_log.contains("taking it back without demoting");
    if l2 != l || demoted || !took_back || promoted_elsewhere || !lost.is_empty() || overlaps > 0 {
        c.dump();
    }
    assert_eq!(l2, l, "the same member leads");
    assert!(took_back, "the leader's log says it took its key back");
    assert!(!demoted && !promoted_elsewhere, "no demote and no failover");
    assert_eq!(postmaster_pid(&c.members[l].data), postmaster, "the primary was never restarted");
    assert!(committed_in_outage > 0, "commits went on while the store was unreachable");
    assert!(lost.is_empty() && overlaps == 0, "{} lost, {overlaps} samples with two writable", lost.len());
}

/// The dynamic configuration's PostgreSQL parameters (`ctl edit-config --pg`) reach every
/// member's PostgreSQL by a reload, without a restart; one that PostgreSQL changes only by
/// restarting is reported as pending on every member's `/status` and in `ctl list`.
#[test]
fn dynamic_parameters_are_reloaded_and_pending_restarts_reported() {
    let Some(_serial) = postgres_turn() else { return };
    let c = Cluster::start(false, "");
    c.wait_healthy();
    let ctl = |args: &[&str]| c.ctl(0, args);
    let out = ctl(&["edit-config", "--force", "--pg", "work_mem=7MB", "--pg", "max_connections=123"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let show = |port: u16, name: &str| -> Option<String> {
        rt.block_on(async {
            let client = connect(port).await?;
            client.query_one(&format!("show {name}"), &[]).await.ok().map(|r| r.get::<_, String>(0))
        })
    };
    c.wait("work_mem reloaded and max_connections pending on every member", |c| {
        (0..3)
            .all(|i| {
                let pending =
                    c.status(i).and_then(|s| s["pending_restart_settings"].as_array().cloned()).unwrap_or_default();
                show(c.members[i].pg_port, "work_mem").as_deref() == Some("7MB")
                    && pending.iter().any(|p| p == "postgresql.parameters.max_connections")
            })
            .then_some(())
    });
    // Not restarted: the running value is still the file's default.
    assert_eq!(show(c.members[0].pg_port, "max_connections").as_deref(), Some("100"));
    let list = ctl(&["list"]);
    assert!(common::text(&list).contains("pending restart:"), "{}", common::text(&list));
}
