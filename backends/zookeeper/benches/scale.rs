//! "From 1 to 1001 clusters" on ZooKeeper: many election scopes served by three processes on
//! one real ZooKeeper 3.8 (standalone).
//!
//! `cargo bench -p leasehold-zookeeper --bench scale [-- --scopes 1001 --ttl 30 --loop-wait 10 --retry-timeout 10 --idle 60]`
//!
//! The ZooKeeper counterpart of `backends/etcd/benches/scale.rs`: starts ZooKeeper on loopback
//! (maxSessionTimeout raised so the session timeout is the ttl), then three member processes
//! (this binary again, `member` mode), each running one HA driver per scope with a stub
//! resource, all on one `ZkClient` (one session). Once every scope has a leader it prints,
//! over the idle window: the packets the server received per second (`zk_packets_received`
//! from `mntr`) and each process's RSS and CPU. Then it kills with SIGKILL the process that
//! leads the most scopes and prints how long until every scope it led has a new leader
//! (median and maximum). Not a CI test: a figure for the notes. Every process it starts is
//! stopped by pid.
// A benchmark measures wall time and runs tasks and processes.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use leasehold::driver::{self, NoWatchdog, RecordProbe, Resource};
use leasehold::node::{DemoteMode, NodeConfig, ResourceStatus};
use leasehold::{Dcs, Epoch, ResourceRole, Timing};
use leasehold_zookeeper::testing::{ZkConfig, ZkServer, four_letter};
use leasehold_zookeeper::{ZkClient, ZkOptions};
use tokio::time::Instant;

fn options(connect: String) -> ZkOptions {
    ZkOptions { connect, prefix: "/leasehold".into(), request_timeout: Duration::from_secs(5), ..ZkOptions::default() }
}

/// The coordinator's view: its own client (its reads happen outside the idle window) and
/// the server's `mntr`.
struct Zk {
    client: ZkClient,
    port: u16,
}

#[async_trait]
impl Observed for Zk {
    async fn leaders(&self, scopes: usize) -> BTreeMap<usize, String> {
        leaders_of(scopes, |name| self.client.scope(name)).await
    }

    async fn requests(&self) -> BTreeMap<String, f64> {
        let mntr = four_letter(self.port, "mntr").await.expect("mntr");
        let received = mntr
            .lines()
            .find_map(|l| l.strip_prefix("zk_packets_received"))
            .and_then(|v| v.trim().parse().ok())
            .expect("zk_packets_received in mntr");
        BTreeMap::from([("packets received (mntr)".to_string(), received)])
    }
}

async fn coordinator(s: Settings) {
    let config = ZkConfig { max_session_timeout: Some(Duration::from_secs(2 * s.ttl)), ..ZkConfig::new(1) };
    let server = ZkServer::start_with(config).await.expect("ZooKeeper starts");
    println!(
        "{} scopes x 3 members in 3 processes on one ZooKeeper at {} (ttl {} s, loop_wait {} s, retry_timeout {} s)",
        s.scopes,
        server.connect_string(),
        s.ttl,
        s.loop_wait,
        s.retry_timeout
    );
    let started = Instant::now();
    let members = Members::start(&s, |_| server.connect_string());
    let client = ZkClient::connect(options(server.connect_string()), &s.timing()).await.expect("connects");
    println!("session timeout {:?} (asked {} s)", client.lease_ttl(), s.ttl);
    let store = Zk { client, port: server.client_port(0) };
    measure(&s, &store, members, started).await;
    drop(store);
    drop(server);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    if args.first().map(String::as_str) == Some("member") {
        let (connect, name, s) = (args[1].clone(), args[2].clone(), Settings::parse(&args[3..]));
        runtime.block_on(async move {
            let client = ZkClient::connect(options(connect), &s.timing()).await.expect("connects");
            run_member(&name, &s, |scope| client.scope(scope)).await;
        });
    } else {
        runtime.block_on(coordinator(Settings::parse(&args)));
    }
}

// ---- Store-independent part: the same in backends/{zookeeper,consul}/benches/scale.rs and, in
// substance, backends/etcd/benches/scale.rs (notes/scale.md says where it could be shared). ----

#[derive(Clone, Debug)]
struct Settings {
    scopes: usize,
    ttl: u64,
    loop_wait: u64,
    retry_timeout: u64,
    idle: u64,
}

impl Settings {
    const FLAGS: [&'static str; 5] = ["--scopes", "--ttl", "--loop-wait", "--retry-timeout", "--idle"];

    fn parse(args: &[String]) -> Settings {
        let mut values = [1001, 30, 10, 10, 60];
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            // Anything else is cargo's own (--bench).
            let Some(slot) = Self::FLAGS.iter().position(|f| f == flag) else { continue };
            let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
            values[slot] = value.parse().unwrap_or_else(|_| panic!("{flag}: {value:?} is not a number"));
        }
        let [scopes, ttl, loop_wait, retry_timeout, idle] = values;
        Settings { scopes: scopes as usize, ttl, loop_wait, retry_timeout, idle }
    }

    fn timing(&self) -> Timing {
        Timing {
            ttl: Duration::from_secs(self.ttl),
            loop_wait: Duration::from_secs(self.loop_wait),
            retry_timeout: Duration::from_secs(self.retry_timeout),
            ..Timing::default()
        }
    }

    fn args(&self) -> Vec<String> {
        let values = [self.scopes as u64, self.ttl, self.loop_wait, self.retry_timeout, self.idle];
        Self::FLAGS.iter().zip(values).flat_map(|(k, v)| [k.to_string(), v.to_string()]).collect()
    }
}

/// A resource that does what it is told at once: the cost measured is the election's.
#[derive(Default)]
struct Stub {
    role: Mutex<ResourceRole>,
}

#[async_trait]
impl Resource for Stub {
    async fn promote(&self, _epoch: Epoch) -> Result<(), String> {
        *self.role.lock().unwrap() = ResourceRole::Primary;
        Ok(())
    }
    async fn demote(&self, _mode: DemoteMode) -> Result<(), String> {
        *self.role.lock().unwrap() = ResourceRole::Replica;
        Ok(())
    }
    async fn follow(&self, _leader: Option<&str>, _conn_url: Option<&str>) -> Result<(), String> {
        Ok(())
    }
    async fn status(&self) -> ResourceStatus {
        let role = *self.role.lock().unwrap();
        ResourceStatus { running: true, role, position: Some(0), timeline: Some(1), ..ResourceStatus::default() }
    }
}

fn scope_name(i: usize) -> String {
    format!("c{i:04}")
}

/// `member` mode: one driver per scope of `scope`'s client; prints `ready`, runs until killed.
async fn run_member<D: Dcs + 'static>(name: &str, s: &Settings, scope: impl Fn(&str) -> D) {
    let incarnation = u64::from(std::process::id());
    let mut handles = Vec::with_capacity(s.scopes);
    for i in 0..s.scopes {
        let mut cfg = NodeConfig::new(name.to_string(), incarnation);
        cfg.timing = s.timing();
        let dcs = Arc::new(scope(&scope_name(i)));
        let handle =
            driver::spawn(cfg, dcs, Arc::new(Stub::default()), Arc::new(RecordProbe::default()), Box::new(NoWatchdog))
                .expect("valid timing");
        handles.push(handle);
    }
    println!("ready");
    std::future::pending::<()>().await;
}

/// The member processes; killed and reaped by pid on drop.
struct Members(Vec<(String, Child)>);

impl Members {
    /// Starts `m1`..`m3` (this binary in `member` mode, with `endpoint(i)`) and waits for `ready`.
    fn start(s: &Settings, endpoint: impl Fn(usize) -> String) -> Members {
        let exe = std::env::current_exe().expect("own path");
        let mut members = Members(Vec::new());
        for (i, name) in ["m1", "m2", "m3"].into_iter().enumerate() {
            let child = Command::new(&exe)
                .arg("member")
                .arg(endpoint(i))
                .arg(name)
                .args(s.args())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("member starts");
            members.0.push((name.to_string(), child));
        }
        for (name, child) in &mut members.0 {
            let mut line = String::new();
            let out = child.stdout.as_mut().expect("piped");
            std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("reads");
            assert_eq!(line.trim(), "ready", "{name} did not start");
        }
        members
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// (RSS in MiB, CPU seconds used so far) of a process, from /proc.
fn usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ: 100 on every Linux architecture this runs on.
    (rss_kib / 1024.0, ticks / 100.0)
}

/// What the coordinator needs of a store: who leads each scope, and the server's request counters.
#[async_trait]
trait Observed: Sync {
    /// The leader of every scope that has one.
    async fn leaders(&self, scopes: usize) -> BTreeMap<usize, String>;
    /// Requests the server has received so far, by kind.
    async fn requests(&self) -> BTreeMap<String, f64>;
}

/// Scopes read `load` by `load` (64 at a time) into their leaders' names.
async fn leaders_of<D: Dcs + 'static>(scopes: usize, scope: impl Fn(&str) -> D) -> BTreeMap<usize, String> {
    // Owned handles: a borrowing stream is not `Send` enough for `async_trait`.
    let handles: Vec<(usize, D)> = (0..scopes).map(|i| (i, scope(&scope_name(i)))).collect();
    futures::stream::iter(handles)
        .map(|(i, dcs)| async move { Some((i, dcs.load().await.ok()?.leader?.record.member)) })
        .buffer_unordered(64)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

/// Waits for every scope to be led, measures the idle window, then kill -9 of the top leader.
async fn measure(s: &Settings, store: &impl Observed, mut members: Members, started: Instant) {
    // One read of every scope a second, for at most ten ttls (and ten minutes): a count of
    // polls bounds the wait, nothing is asserted about how long it took.
    let polls = (10 * s.ttl).max(600);
    for poll in 1.. {
        let led = store.leaders(s.scopes).await;
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for m in led.values() {
            *per.entry(m.clone()).or_default() += 1;
        }
        if led.len() == s.scopes {
            println!("every scope led after {:.1} s: {per:?}", started.elapsed().as_secs_f64());
            break;
        }
        // Unwinding drops `members`, which kills every member process by pid.
        assert!(
            poll < polls,
            "not measured: only {} of {} scopes led after {polls} polls: {per:?}",
            led.len(),
            s.scopes
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Let the start-up writes (registrations, history, status keys) settle for two loops.
    tokio::time::sleep(Duration::from_secs(2 * s.loop_wait)).await;

    let pids: Vec<(String, u32)> = members.0.iter().map(|(n, c)| (n.clone(), c.id())).collect();
    let before = (store.requests().await, pids.iter().map(|(_, p)| usage(*p)).collect::<Vec<_>>());
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(s.idle)).await;
    let secs = t.elapsed().as_secs_f64();
    let after = (store.requests().await, pids.iter().map(|(_, p)| usage(*p)).collect::<Vec<_>>());
    let total: f64 = after.0.iter().map(|(m, n)| n - before.0.get(m).copied().unwrap_or(0.0)).sum();
    println!(
        "idle {secs:.0} s: {:.2} requests/s in total, {:.4} per scope",
        total / secs,
        total / secs / s.scopes as f64
    );
    for (kind, n) in &after.0 {
        let d = n - before.0.get(kind).copied().unwrap_or(0.0);
        if d > 0.0 {
            println!("  {kind:<32} {:>8.2} /s", d / secs);
        }
    }
    for (i, (name, pid)) in pids.iter().enumerate() {
        let (rss, cpu_after) = after.1[i];
        let cpu = (cpu_after - before.1[i].1) / secs * 100.0;
        println!("  {name} (pid {pid}): RSS {rss:.1} MiB, CPU {cpu:.2} % of one core");
    }

    // kill -9 the process leading the most scopes; time until each of its scopes is re-led.
    let led = store.leaders(s.scopes).await;
    let mut per: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for (scope, m) in &led {
        per.entry(m.as_str()).or_default().insert(*scope);
    }
    let (victim, mut orphans) = per.into_iter().max_by_key(|(_, v)| v.len()).expect("some leader");
    let victim = victim.to_string();
    let index = members.0.iter().position(|(n, _)| *n == victim).expect("a member");
    let killed = Instant::now();
    members.0[index].1.kill().expect("kill -9");
    let _ = members.0[index].1.wait();
    let count = orphans.len();
    let mut times = Vec::with_capacity(count);
    while !orphans.is_empty() && killed.elapsed() < Duration::from_secs(10 * s.ttl) {
        let now = store.leaders(s.scopes).await;
        let elapsed = killed.elapsed();
        orphans.retain(|scope| match now.get(scope) {
            Some(m) if *m != victim => {
                times.push(elapsed);
                false
            }
            _ => true,
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    times.sort();
    let at = |q: f64| {
        times.get(((times.len().max(1) - 1) as f64 * q).round() as usize).map_or(f64::NAN, Duration::as_secs_f64)
    };
    println!(
        "kill -9 of {victim} (led {count} scopes): every one re-led: {} ({} not); median {:.2} s, max {:.2} s after the kill (ttl {} s; poll every 0.2 s plus a read of every scope)",
        orphans.is_empty(),
        orphans.len(),
        at(0.5),
        at(1.0),
        s.ttl
    );
}
