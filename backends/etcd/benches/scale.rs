//! "From 1 to 1001 clusters": many election scopes served by three processes on one real etcd.
//!
//! `cargo bench -p leasehold-etcd --bench scale [-- --scopes 1001 --ttl 30 --loop-wait 10 --retry-timeout 10 --idle 60]`
//!
//! Starts etcd on loopback, then three member processes (this binary again, `member` mode),
//! each running one HA driver per scope with a stub resource, all on one store client (one
//! lease). Once every scope has a leader it prints, over the idle window: etcd's requests per
//! second by gRPC method (from etcd's own `/metrics`), and each process's RSS and CPU. Then it
//! kills with SIGKILL the process that leads the most scopes and prints how long until every
//! scope it led has a new leader (median and maximum over those scopes). Not a CI test: a
//! figure for the README and the notes. Every process it starts is stopped by pid.
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
use leasehold_etcd::testing::EtcdServer;
use leasehold_etcd::{EtcdClient, EtcdOptions};
use tokio::time::Instant;

#[derive(Clone, Debug)]
struct Settings {
    scopes: usize,
    ttl: u64,
    loop_wait: u64,
    retry_timeout: u64,
    idle: u64,
}

impl Settings {
    fn parse(args: &[String]) -> Settings {
        let mut s = Settings { scopes: 1001, ttl: 30, loop_wait: 10, retry_timeout: 10, idle: 60 };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let slot = match flag.as_str() {
                "--scopes" => &mut s.scopes as &mut dyn SetFrom,
                "--ttl" => &mut s.ttl,
                "--loop-wait" => &mut s.loop_wait,
                "--retry-timeout" => &mut s.retry_timeout,
                "--idle" => &mut s.idle,
                _ => continue, // cargo's own flags (--bench)
            };
            let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
            slot.set_from(value).unwrap_or_else(|| panic!("{flag}: {value:?} is not a number"));
        }
        s
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
        [
            ("--scopes", self.scopes as u64),
            ("--ttl", self.ttl),
            ("--loop-wait", self.loop_wait),
            ("--retry-timeout", self.retry_timeout),
            ("--idle", self.idle),
        ]
        .iter()
        .flat_map(|(k, v)| [k.to_string(), v.to_string()])
        .collect()
    }
}

trait SetFrom {
    fn set_from(&mut self, s: &str) -> Option<()>;
}

impl SetFrom for u64 {
    fn set_from(&mut self, s: &str) -> Option<()> {
        *self = s.parse().ok()?;
        Some(())
    }
}

impl SetFrom for usize {
    fn set_from(&mut self, s: &str) -> Option<()> {
        *self = s.parse().ok()?;
        Some(())
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

/// `member` mode: one driver per scope on one client; prints `ready`, then runs until killed.
async fn member(endpoint: String, name: String, s: Settings) {
    let options = EtcdOptions { endpoints: vec![endpoint], ..EtcdOptions::default() };
    let client = EtcdClient::connect(options, &s.timing()).await.expect("connects");
    let incarnation = u64::from(std::process::id());
    let mut handles = Vec::with_capacity(s.scopes);
    for i in 0..s.scopes {
        let mut cfg = NodeConfig::new(name.clone(), incarnation);
        cfg.timing = s.timing();
        let dcs = Arc::new(client.scope(&scope_name(i)));
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

impl Drop for Members {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// gRPC messages etcd received, by method.
async fn messages(server: &EtcdServer) -> BTreeMap<String, f64> {
    let metrics = server.metrics().await.expect("metrics");
    let mut out = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with("grpc_server_msg_received_total{")) {
        let method = line.split("grpc_method=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?");
        let n: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *out.entry(method.to_string()).or_default() += n;
    }
    out
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

/// The leader of every scope, as one client reads them.
async fn leaders(client: &EtcdClient, scopes: usize) -> BTreeMap<usize, String> {
    futures::stream::iter(0..scopes)
        .map(|i| async move {
            let view = client.scope(&scope_name(i)).load().await.ok()?;
            Some((i, view.leader?.record.member))
        })
        .buffer_unordered(64)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

async fn coordinator(s: Settings) {
    let server = EtcdServer::start().await.expect("etcd starts");
    println!(
        "{} scopes x 3 members in 3 processes on one etcd at {} (ttl {} s, loop_wait {} s, retry_timeout {} s)",
        s.scopes,
        server.endpoint(),
        s.ttl,
        s.loop_wait,
        s.retry_timeout
    );
    let exe = std::env::current_exe().expect("own path");
    let mut members = Members(Vec::new());
    let started = Instant::now();
    for name in ["m1", "m2", "m3"] {
        let child = Command::new(&exe)
            .arg("member")
            .arg(server.endpoint())
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
    let checker =
        EtcdClient::connect(EtcdOptions { endpoints: vec![server.endpoint()], ..EtcdOptions::default() }, &s.timing())
            .await
            .expect("connects");
    loop {
        let led = leaders(&checker, s.scopes).await;
        if led.len() == s.scopes {
            let mut per: BTreeMap<String, usize> = BTreeMap::new();
            for m in led.values() {
                *per.entry(m.clone()).or_default() += 1;
            }
            println!("every scope led after {:.1} s: {per:?}", started.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Let the start-up writes (registrations, history, status keys) settle for two loops.
    tokio::time::sleep(Duration::from_secs(2 * s.loop_wait)).await;

    let pids: Vec<(String, u32)> = members.0.iter().map(|(n, c)| (n.clone(), c.id())).collect();
    let before = (messages(&server).await, pids.iter().map(|(_, p)| usage(*p)).collect::<Vec<_>>());
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(s.idle)).await;
    let secs = t.elapsed().as_secs_f64();
    let after = (messages(&server).await, pids.iter().map(|(_, p)| usage(*p)).collect::<Vec<_>>());
    let total: f64 = after.0.iter().map(|(m, n)| n - before.0.get(m).copied().unwrap_or(0.0)).sum();
    println!(
        "idle {secs:.0} s: {:.1} etcd requests/s in total, {:.3} per scope",
        total / secs,
        total / secs / s.scopes as f64
    );
    for (method, n) in &after.0 {
        let d = n - before.0.get(method).copied().unwrap_or(0.0);
        if d > 0.0 {
            println!("  {method:<16} {:>8.2} /s", d / secs);
        }
    }
    for (i, (name, pid)) in pids.iter().enumerate() {
        let (rss, cpu_after) = after.1[i];
        let cpu = (cpu_after - before.1[i].1) / secs * 100.0;
        println!("  {name} (pid {pid}): RSS {rss:.1} MiB, CPU {cpu:.2} % of one core");
    }

    // kill -9 the process leading the most scopes; time until each of its scopes is re-led.
    let led = leaders(&checker, s.scopes).await;
    let mut per: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    for (scope, m) in &led {
        per.entry(m.as_str()).or_default().insert(*scope);
    }
    let (victim, orphans) = per.into_iter().max_by_key(|(_, v)| v.len()).expect("some leader");
    let (victim, mut orphans) = (victim.to_string(), orphans);
    let index = members.0.iter().position(|(n, _)| *n == victim).expect("a member");
    let killed = Instant::now();
    members.0[index].1.kill().expect("kill -9");
    let _ = members.0[index].1.wait();
    let count = orphans.len();
    let mut times = Vec::with_capacity(count);
    while !orphans.is_empty() && killed.elapsed() < Duration::from_secs(10 * s.ttl) {
        let now = leaders(&checker, s.scopes).await;
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
        "kill -9 of {victim} (led {count} scopes): every one re-led: {}; median {:.2} s, max {:.2} s after the kill (ttl {} s; poll every 0.2 s plus a read of every scope)",
        orphans.is_empty(),
        at(0.5),
        at(1.0),
        s.ttl
    );
    drop(members);
    drop(server);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    if args.first().map(String::as_str) == Some("member") {
        let (endpoint, name) = (args[1].clone(), args[2].clone());
        runtime.block_on(member(endpoint, name, Settings::parse(&args[3..])));
    } else {
        runtime.block_on(coordinator(Settings::parse(&args)));
    }
}
