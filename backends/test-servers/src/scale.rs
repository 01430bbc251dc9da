//! The store-independent half of the "from 1 to 1001 clusters" scale benches (feature `scale`):
//! many election scopes served by three member processes on one real server.
//!
//! A bench implements [`ScaleStore`] (start the server, connect a member's client, count the
//! server's requests) and calls [`main`]. The binary then runs as the coordinator: it starts
//! the server, re-executes itself three times in `member` mode (`m1`..`m3`, each one HA driver
//! per scope with a [`Stub`] resource on one store client: one lease or session per process),
//! waits until every scope has a leader and two loops more, then prints over the idle window
//! the server's requests per second by kind, and each process's RSS and CPU (from `/proc`).
//! Last it kills with SIGKILL the process leading the most scopes and prints how long until
//! every scope it led has another leader (median and maximum). Not a CI test: figures for the
//! notes. Every process it starts is stopped by pid ([`Members`] kills and reaps on drop,
//! also while a failed assertion unwinds).
//!
//! Flags (after `--` of `cargo bench`): `--scopes 1001 --ttl 30 --loop-wait 10
//! --retry-timeout 10 --idle 60 --ramp 0` (the defaults); see [`Settings`].
// A bench harness reads the wall clock and runs tasks and processes; the rule is for the library.
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
use tokio::time::Instant;

/// The names of the three member processes.
pub const MEMBERS: [&str; 3] = ["m1", "m2", "m3"];

/// What a run measures, from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Election scopes (`--scopes`, default 1,001); each has one driver in every member process.
    pub scopes: usize,
    /// `Timing::ttl` in seconds (`--ttl`, default 30).
    pub ttl: u64,
    /// `Timing::loop_wait` in seconds (`--loop-wait`, default 10).
    pub loop_wait: u64,
    /// `Timing::retry_timeout` in seconds (`--retry-timeout`, default 10).
    pub retry_timeout: u64,
    /// The idle window measured, in seconds (`--idle`, default 60).
    pub idle: u64,
    /// Seconds over which each member process starts its drivers, evenly spread (`--ramp`,
    /// default 0: all at once, the cold start of a whole fleet).
    pub ramp: u64,
}

impl Settings {
    const FLAGS: [&'static str; 6] = ["--scopes", "--ttl", "--loop-wait", "--retry-timeout", "--idle", "--ramp"];

    /// Reads the flags out of `args`; anything else (cargo's own `--bench`) is skipped.
    /// A flag without a number is an error naming the flag.
    pub fn parse(args: &[String]) -> Result<Settings, String> {
        let mut values = [1001, 30, 10, 10, 60, 0];
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let Some(slot) = Self::FLAGS.iter().position(|f| f == flag) else { continue };
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            values[slot] = value.parse().map_err(|_| format!("{flag}: {value:?} is not a whole number"))?;
        }
        let [scopes, ttl, loop_wait, retry_timeout, idle, ramp] = values;
        let scopes = usize::try_from(scopes).map_err(|_| format!("--scopes: {scopes} is too large"))?;
        if scopes == 0 {
            return Err("--scopes: must be at least 1".into());
        }
        Ok(Settings { scopes, ttl, loop_wait, retry_timeout, idle, ramp })
    }

    /// The drivers' timing.
    pub fn timing(&self) -> Timing {
        Timing {
            ttl: Duration::from_secs(self.ttl),
            loop_wait: Duration::from_secs(self.loop_wait),
            retry_timeout: Duration::from_secs(self.retry_timeout),
            ..Timing::default()
        }
    }

    /// The flags that [`Settings::parse`] reads back into these settings.
    pub fn args(&self) -> Vec<String> {
        let values = [self.scopes as u64, self.ttl, self.loop_wait, self.retry_timeout, self.idle, self.ramp];
        Self::FLAGS.iter().zip(values).flat_map(|(k, v)| [k.to_string(), v.to_string()]).collect()
    }
}

/// The name of scope `i`: `c0000`, `c0001`, ...
pub fn scope_name(i: usize) -> String {
    format!("c{i:04}")
}

/// The store-specific half of a scale bench.
#[async_trait]
pub trait ScaleStore: Sized + Send + Sync + 'static {
    /// One process's store client (one lease or session shared by all its scopes).
    type Client: Send + Sync + 'static;
    /// One scope's store handle, made from a [`ScaleStore::Client`].
    type Scope: Dcs + 'static;

    /// In a member process: connects to `endpoint` (what [`ScaleStore::endpoint`] gave this
    /// member). Panics with the reason when it cannot: a bench has nobody to report to.
    async fn connect(endpoint: &str, settings: &Settings) -> Self::Client;

    /// Scope `name` of `client`.
    fn scope(client: &Self::Client, name: &str) -> Self::Scope;

    /// In the coordinator: starts the server and the coordinator's own client. `None` (after
    /// printing why) when there is no server to start here; the bench then measures nothing.
    async fn start(settings: &Settings) -> Option<Self>;

    /// One line on the server, for the report (`etcd at http://127.0.0.1:12345`).
    fn describe(&self) -> String;

    /// What member `index` (0, 1 or 2) connects to: an address, a kubeconfig path.
    fn endpoint(&self, index: usize) -> String;

    /// The coordinator's own client; it reads every scope's leader before and after the idle
    /// window (outside it), and every 0.2 s after the kill.
    fn observer(&self) -> &Self::Client;

    /// Requests the server has received so far, by kind (cumulative counters; the report
    /// shows the difference over the idle window).
    async fn requests(&self) -> BTreeMap<String, f64>;

    /// Server processes whose RSS and CPU are worth showing beside the members', by name.
    fn server_pids(&self) -> Vec<(String, u32)> {
        Vec::new()
    }

    /// Stops the coordinator's client before the server is dropped.
    async fn stop(self) {}
}

/// A resource that does what it is told at once: the cost measured is the election's.
#[derive(Debug, Default)]
pub struct Stub {
    role: Mutex<ResourceRole>,
}

impl Stub {
    fn set(&self, role: ResourceRole) {
        *self.role.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = role;
    }
}

#[async_trait]
impl Resource for Stub {
    async fn promote(&self, _epoch: Epoch) -> Result<(), String> {
        self.set(ResourceRole::Primary);
        Ok(())
    }
    async fn demote(&self, _mode: DemoteMode) -> Result<(), String> {
        self.set(ResourceRole::Replica);
        Ok(())
    }
    async fn follow(&self, _leader: Option<&str>, _conn_url: Option<&str>) -> Result<(), String> {
        Ok(())
    }
    async fn status(&self) -> ResourceStatus {
        let role = *self.role.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ResourceStatus { running: true, role, position: Some(0), timeline: Some(1), ..ResourceStatus::default() }
    }
}

/// The bench's `main`: `member <endpoint> <name> <flags>` runs a member process, anything
/// else the coordinator. `--list` (what `cargo test --benches` asks) does nothing.
pub fn main<S: ScaleStore>() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    if args.first().map(String::as_str) == Some("member") {
        let [endpoint, name] = [1, 2].map(|i| args.get(i).cloned().expect("member <endpoint> <name> <flags>"));
        let settings = Settings::parse(args.get(3..).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async move {
            let client = S::connect(&endpoint, &settings).await;
            run_member(&name, &settings, |scope| S::scope(&client, scope)).await;
        });
    } else {
        let settings = Settings::parse(&args).unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(coordinator::<S>(settings));
    }
}

/// `member` mode: one driver per scope (spread over `ramp`); prints `ready` once all run,
/// then runs until killed.
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
        if s.ramp > 0 {
            tokio::time::sleep(Duration::from_secs(s.ramp) / u32::try_from(s.scopes).unwrap_or(u32::MAX)).await;
        }
    }
    println!("ready");
    std::future::pending::<()>().await;
}

/// The member processes; killed (SIGKILL) and reaped by pid on drop.
#[derive(Debug)]
pub struct Members(Vec<(String, Child)>);

impl Members {
    /// Starts `m1`..`m3` (this binary in `member` mode with `endpoint(i)`) and waits until
    /// each has printed `ready`.
    pub fn start(s: &Settings, endpoint: impl Fn(usize) -> String) -> std::io::Result<Members> {
        let exe = std::env::current_exe()?;
        let mut members = Members(Vec::new());
        for (i, name) in MEMBERS.into_iter().enumerate() {
            let child = Command::new(&exe)
                .arg("member")
                .arg(endpoint(i))
                .arg(name)
                .args(s.args())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            members.0.push((name.to_string(), child));
        }
        for (name, child) in &mut members.0 {
            let mut line = String::new();
            let out = child.stdout.as_mut().ok_or_else(|| std::io::Error::other("stdout not piped"))?;
            std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
            if line.trim() != "ready" {
                return Err(std::io::Error::other(format!("{name} did not start (said {line:?})")));
            }
        }
        Ok(members)
    }

    /// Names and pids.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.0.iter().map(|(n, c)| (n.clone(), c.id())).collect()
    }

    /// Kills member `name` with SIGKILL and reaps it; false when there is no such member.
    pub fn kill(&mut self, name: &str) -> bool {
        let Some((_, child)) = self.0.iter_mut().find(|(n, _)| n == name) else { return false };
        let _ = child.kill();
        let _ = child.wait();
        true
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

/// (RSS in MiB, CPU seconds used so far) of process `pid`, from `/proc`; zeros when it is gone.
pub fn usage(pid: u32) -> (f64, f64) {
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

/// Every scope's leader as `client` sees it (`load` by `load`, 64 at a time).
async fn leaders<S: ScaleStore>(client: &S::Client, scopes: usize) -> BTreeMap<usize, String> {
    futures::stream::iter(0..scopes)
        .map(|i| async move { Some((i, S::scope(client, &scope_name(i)).load().await.ok()?.leader?.record.member)) })
        .buffer_unordered(64)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

/// Starts the server and the members, then [`measure`]s.
async fn coordinator<S: ScaleStore>(s: Settings) {
    let Some(store) = S::start(&s).await else { return };
    println!(
        "{} scopes x 3 members in 3 processes on one {} (ttl {} s, loop_wait {} s, retry_timeout {} s, drivers started over {} s)",
        s.scopes,
        store.describe(),
        s.ttl,
        s.loop_wait,
        s.retry_timeout,
        s.ramp
    );
    let started = Instant::now();
    let members = Members::start(&s, |i| store.endpoint(i)).expect("member processes start");
    measure(&s, &store, members, started).await;
    store.stop().await;
}

/// Waits for every scope to be led, measures the idle window, then kill -9 of the top leader.
async fn measure<S: ScaleStore>(s: &Settings, store: &S, mut members: Members, started: Instant) {
    // One read of every scope a second, for at most ten ttls (and ten minutes): a count of
    // polls bounds the wait, nothing is asserted about how long it took.
    let polls = (10 * s.ttl).max(600);
    for poll in 1.. {
        let led = leaders::<S>(store.observer(), s.scopes).await;
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for m in led.values() {
            *per.entry(m.clone()).or_default() += 1;
        }
        if led.len() == s.scopes {
            println!("every scope led after {:.1} s: {per:?}", started.elapsed().as_secs_f64());
            break;
        }
        if poll % 30 == 0 {
            // A run that does not converge shows how far it got.
            println!("  {:.0} s: {} of {} scopes led {per:?}", started.elapsed().as_secs_f64(), led.len(), s.scopes);
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

    let mut pids = members.pids();
    pids.extend(store.server_pids());
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
            println!("  {kind:<40} {:>8.2} /s", d / secs);
        }
    }
    for (i, (name, pid)) in pids.iter().enumerate() {
        let (rss, cpu_after) = after.1[i];
        let cpu = (cpu_after - before.1[i].1) / secs * 100.0;
        println!("  {name} (pid {pid}): RSS {rss:.1} MiB, CPU {cpu:.2} % of one core");
    }

    // kill -9 the process leading the most scopes; time until each of its scopes is re-led.
    let led = leaders::<S>(store.observer(), s.scopes).await;
    let mut per: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for (scope, m) in &led {
        per.entry(m.as_str()).or_default().insert(*scope);
    }
    let (victim, mut orphans) = per.into_iter().max_by_key(|(_, v)| v.len()).expect("some leader");
    let victim = victim.to_string();
    let killed = Instant::now();
    assert!(members.kill(&victim), "{victim} is not a member process");
    let count = orphans.len();
    let mut times = Vec::with_capacity(count);
    while !orphans.is_empty() && killed.elapsed() < Duration::from_secs(10 * s.ttl) {
        let now = leaders::<S>(store.observer(), s.scopes).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn settings_round_trip_through_their_flags() {
        let s = Settings::parse(&args("--bench --scopes 30 --ttl 12 --idle 5")).expect("valid");
        assert_eq!((s.scopes, s.ttl, s.loop_wait, s.retry_timeout, s.idle, s.ramp), (30, 12, 10, 10, 5, 0));
        assert_eq!(Settings::parse(&s.args()), Ok(s));
    }

    #[test]
    fn bad_flags_are_errors_naming_the_flag() {
        assert!(Settings::parse(&args("--ttl")).unwrap_err().contains("--ttl"));
        assert!(Settings::parse(&args("--idle x")).unwrap_err().contains("--idle"));
        assert!(Settings::parse(&args("--scopes 0")).unwrap_err().contains("--scopes"));
    }

    #[test]
    fn usage_reads_this_process() {
        let (rss, cpu) = usage(std::process::id());
        assert!(rss > 0.0, "RSS {rss}");
        assert!(cpu >= 0.0, "CPU {cpu}");
        assert_eq!(usage(u32::MAX), (0.0, 0.0));
    }
}
