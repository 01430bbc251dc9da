//! Latency, failover and idle cost against a real etcd on loopback (it starts its own).
//!
//! `cargo bench -p leasehold-etcd --bench etcd_real` prints:
//! acquire/renew/release latency (median, p99), graceful handover (holder releases, a
//! watching candidate acquires; until the candidate's acquire returns), crash failover at
//! ttl 5 s (holder stops renewing right after a renew; until the new holder's acquire
//! returns), and idle requests per second per scope, for one scope and for 1,000 scopes in
//! one process (counted by the client and cross-checked with etcd's `/metrics`).
//! `cargo bench --no-run` only builds it.
// A benchmark measures wall time and runs tasks.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use futures::StreamExt;
use leasehold::{CasOutcome, Dcs, LeaderRecord, Lease, Timing, WatchEvent};
use leasehold_etcd::testing::{EtcdServer, timing};
use leasehold_etcd::{EtcdClient, EtcdDcs, EtcdOptions};
use tokio::time::Instant;

fn record(member: &str, n: usize) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: format!("{member}-{n}"), api_url: None, conn_url: None }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<28} n={:<4} median {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms",
        samples.len(),
        millis(at(0.5)),
        millis(at(0.99)),
        millis(at(1.0))
    );
}

/// A client whose lease has `ttl` (the rest of the harness's timing).
async fn connect(options: &EtcdOptions, ttl: Duration) -> EtcdClient {
    EtcdClient::connect(options.clone(), &Timing { ttl, ..timing() }).await.expect("client connects")
}

async fn won(outcome: Result<CasOutcome<Lease, Option<leasehold::LeaderView>>, leasehold::DcsError>) -> Lease {
    match outcome {
        Ok(CasOutcome::Won(lease)) => lease,
        other => panic!("expected a win: {other:?}"),
    }
}

async fn latencies(options: &EtcdOptions) {
    let client = connect(options, timing().ttl).await;
    let dcs = client.scope("latency");
    let (mut acquire, mut renew, mut release) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..300 {
        let t = Instant::now();
        let lease = won(dcs.acquire(&record("a", n)).await).await;
        acquire.push(t.elapsed());
        let t = Instant::now();
        let lease = won(dcs.renew(&lease).await).await;
        renew.push(t.elapsed());
        let t = Instant::now();
        assert!(dcs.release(&lease).await.expect("release").is_won());
        release.push(t.elapsed());
    }
    summary("acquire", acquire);
    summary("renew", renew);
    summary("release", release);
}

/// A candidate: watch until the key is free, then acquire; returns when it won.
async fn candidate(dcs: EtcdDcs, n: usize) -> Instant {
    loop {
        let view = dcs.load().await.expect("load");
        if view.leader.is_none() {
            if let Ok(CasOutcome::Won(_)) = dcs.acquire(&record("b", n)).await {
                return Instant::now();
            }
            continue;
        }
        let event = dcs.watch(view.revision.as_ref(), Duration::from_secs(30)).await.expect("watch");
        assert_ne!(event, WatchEvent::Resync);
    }
}

async fn handover(options: &EtcdOptions) {
    let (a, b) = (connect(options, timing().ttl).await, connect(options, timing().ttl).await);
    let mut samples = Vec::new();
    for n in 0..30 {
        let scope = format!("handover-{n}");
        let (da, db) = (a.scope(&scope), b.scope(&scope));
        let lease = won(da.acquire(&record("a", n)).await).await;
        let waiting = tokio::spawn(candidate(db.clone(), n));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        assert!(da.release(&lease).await.expect("release").is_won());
        let acquired = waiting.await.expect("candidate");
        samples.push(acquired - start);
        let view = db.load().await.expect("load");
        assert_eq!(view.leader.map(|l| l.record.member), Some("b".into()));
    }
    summary("graceful handover", samples);
}

async fn crash_failover(options: &EtcdOptions) {
    let ttl = Duration::from_secs(5);
    let b = connect(options, ttl).await;
    let mut samples = Vec::new();
    for n in 0..3 {
        let a = connect(options, ttl).await;
        let scope = format!("crash-{n}");
        let (da, db) = (a.scope(&scope), b.scope(&scope));
        let lease = won(da.acquire(&record("a", n)).await).await;
        let waiting = tokio::spawn(candidate(db, n));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let renew_started = Instant::now();
        won(da.renew(&lease).await).await;
        a.stop();
        let crashed = Instant::now();
        let acquired = waiting.await.expect("candidate");
        samples.push(acquired - crashed);
        println!(
            "  crash {n}: new holder {:.0} ms after the crash, {:.0} ms after the last renew started (ttl 5000 ms)",
            millis(acquired - crashed),
            millis(acquired - renew_started)
        );
    }
    summary("crash failover (ttl 5 s)", samples);
}

/// Sum of the gRPC messages etcd received (unary calls count once, streams per message).
async fn server_messages(server: &EtcdServer) -> f64 {
    let metrics = server.metrics().await.expect("metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("grpc_server_msg_received_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `scopes` leader scopes in one process, each renewed every `loop_wait` (as an idle leader
/// does). The first renewal starts the process's mirror; later ones are keep-alives.
async fn idle(server: &EtcdServer, options: &EtcdOptions, scopes: usize) {
    let loop_wait = Duration::from_secs(1);
    let ttl = Duration::from_secs(10);
    let leader = connect(options, ttl).await;
    let leases: Vec<(EtcdDcs, Lease)> = futures::stream::iter(0..scopes)
        .map(|n| {
            let dcs = leader.scope(&format!("idle-{scopes}-{}-{n}", options.watch_mirror));
            async move {
                let lease = won(dcs.acquire(&record("a", n)).await).await;
                (dcs, lease)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    // One renewal round first: it starts the process's mirror, which then serves the rest.
    let leases: Vec<(EtcdDcs, Lease)> = futures::stream::iter(leases)
        .map(|(dcs, lease)| async move {
            let lease = won(dcs.renew(&lease).await).await;
            (dcs, lease)
        })
        .buffer_unordered(64)
        .collect()
        .await;
    tokio::time::sleep(loop_wait).await;
    let window = Duration::from_secs(10);
    let before = (leader.requests(), server_messages(server).await);
    let start = Instant::now();
    let tasks: Vec<_> = leases
        .into_iter()
        .map(|(dcs, mut lease)| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(loop_wait);
                while start.elapsed() < window {
                    tick.tick().await;
                    lease = won(dcs.renew(&lease).await).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("renew task");
    }
    let secs = start.elapsed().as_secs_f64();
    let after = (leader.requests(), server_messages(server).await);
    let client_rate = (after.0 - before.0) as f64 / secs;
    let server_rate = (after.1 - before.1) / secs;
    println!(
        "idle leader, {scopes:>4} scope(s), loop_wait 1 s{}: client sent {client_rate:>8.1} req/s ({:.2} per scope); etcd received {server_rate:>8.1} msg/s",
        if options.watch_mirror { "" } else { ", mirror off" },
        client_rate / scopes as f64
    );
}

async fn idle_process(server: &EtcdServer, options: &EtcdOptions) {
    let ttl = Duration::from_secs(10);
    let client = connect(options, ttl).await;
    let dcs = client.scope("idle-member");
    dcs.publish_member(&leasehold::MemberRecord::new("m")).await.expect("publish");
    let before = (client.requests(), server_messages(server).await);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = (client.requests(), server_messages(server).await);
    println!(
        "idle follower process (member key only, ttl 10 s): client {:.2} req/s, etcd {:.2} msg/s",
        (after.0 - before.0) as f64 / 10.0,
        (after.1 - before.1) / 10.0
    );
}

fn main() {
    // `cargo bench -- --list` / `cargo test --benches` call the binary with flags; only a
    // plain or `--bench` run measures.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let server = EtcdServer::start().await.expect("etcd starts (install etcd-server)");
        let options = EtcdOptions { request_timeout: Duration::from_secs(5), ..server.options() };
        println!("etcd at {} (one member, loopback)", server.endpoint());
        latencies(&options).await;
        handover(&options).await;
        crash_failover(&options).await;
        idle_process(&server, &options).await;
        idle(&server, &options, 1).await;
        idle(&server, &options, 1000).await;
        // The same without the per-process mirror: one linearizable txn per renewal.
        idle(&server, &EtcdOptions { watch_mirror: false, ..options.clone() }, 1000).await;
    });
}
