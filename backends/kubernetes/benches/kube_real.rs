//! leasehold-kube against a real kube-apiserver 1.19 (over Debian's etcd 3.4) on this
//! machine: API requests per call (counted from the server's audit log), latencies, release
//! handover and crash failover. Falls back to nothing (prints why) when no kube-apiserver is
//! found; the emulator bench (`kube_emulator`) measures request counts without one.
//!
//! `cargo bench -p leasehold-kube --bench kube_real`

// A benchmark times real waiting with the wall clock.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use leasehold::{CasOutcome, Dcs, LeaderRecord, MemberRecord, Timing, WatchEvent};
use leasehold_kube::testing::{KubeApiServer, KubeApiServerConfig, LeaseAudit};
use leasehold_kube::{KubeClient, KubeOptions};

const NAMESPACE: &str = "bench";

async fn client(server: &KubeApiServer, ttl: Duration) -> KubeClient {
    client_with(server, ttl, true).await
}

async fn client_with(server: &KubeApiServer, ttl: Duration, watch_mirror: bool) -> KubeClient {
    let config = server.kube_config(server.admin_token(), NAMESPACE).await.expect("config");
    leasehold_kube::install_default_crypto_provider();
    let kube = kube::Client::try_from(config).expect("kube client");
    let options = KubeOptions { namespace: Some(NAMESPACE.into()), watch_mirror, ..KubeOptions::default() };
    KubeClient::from_client(kube, NAMESPACE, options, &Timing { ttl, ..Timing::default() }).expect("client")
}

fn record(member: &str, token: &str) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: token.into(), api_url: None, conn_url: None }
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn show(what: &str, counts: &BTreeMap<String, u64>, per: u64, samples: &mut [Duration]) {
    let per_f = per.max(1) as f64;
    let total: u64 = counts.values().sum();
    let verbs: Vec<String> = counts.iter().map(|(v, n)| format!("{v} {:.2}", *n as f64 / per_f)).collect();
    println!(
        "{what:<44} {:>5.2} req ({})  p50 {:>7.2} ms  p99 {:>7.2} ms",
        total as f64 / per_f,
        verbs.join(", "),
        percentile(samples, 0.5),
        percentile(samples, 0.99),
    );
}

async fn timed<T>(samples: &mut Vec<Duration>, f: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    let out = f.await;
    samples.push(start.elapsed());
    out
}

async fn per_call(server: &KubeApiServer, audit: &mut LeaseAudit) {
    const ROUNDS: u64 = 200;
    let ttl = Duration::from_secs(30);
    let (leader, follower) = (client(server, ttl).await, client(server, ttl).await);
    let (dl, df) = (leader.scope("cycle"), follower.scope("cycle"));
    df.publish_member(&MemberRecord::new("pod-b")).await.expect("publish");
    // The HA loop loads before it acquires; the acquire then reuses the listed epoch counter.
    dl.load().await.expect("load");
    audit.take();

    let mut s = Vec::new();
    let mut lease = timed(&mut s, dl.acquire(&record("pod-a", "t0"))).await.expect("acquire").won().expect("won");
    show("acquire after a load (key never created)", &audit.take(), 1, &mut s);
    let mut s = Vec::new();
    for _ in 0..ROUNDS {
        lease = timed(&mut s, dl.renew(&lease)).await.expect("renew").won().expect("ours");
    }
    show("leader: renew", &audit.take(), ROUNDS, &mut s);
    let mut s = Vec::new();
    for _ in 0..ROUNDS {
        timed(&mut s, df.load()).await.expect("load");
    }
    show("follower: load", &audit.take(), ROUNDS, &mut s);
    let mut s = Vec::new();
    let mut woken = 0;
    for _ in 0..20 {
        let view = df.load().await.expect("load");
        lease = dl.renew(&lease).await.expect("renew").won().expect("ours");
        let event = timed(&mut s, df.watch(view.revision.as_ref(), Duration::from_millis(200))).await;
        if event.expect("watch") != WatchEvent::Timeout {
            woken += 1;
        }
    }
    show("idle cycle: follower load+watch, leader renew", &audit.take(), 20, &mut s);
    println!("{:<44} {woken} of 20 follower watches woken by leader renewals", "");
    let mut s = Vec::new();
    assert!(timed(&mut s, dl.release(&lease)).await.expect("release").is_won());
    show("release", &audit.take(), 1, &mut s);
    df.load().await.expect("load");
    audit.take();
    let mut s = Vec::new();
    let lease = timed(&mut s, df.acquire(&record("pod-b", "t1"))).await.expect("acquire").won().expect("free");
    show("acquire after a load (released key)", &audit.take(), 1, &mut s);
    let mut s = Vec::new();
    df.release(&lease).await.expect("release");
    let other = client(server, ttl).await.scope("cycle");
    audit.take();
    let lease = timed(&mut s, other.acquire(&record("pod-c", "t2"))).await.expect("acquire").won().expect("free");
    show("acquire by a client that never loaded", &audit.take(), 1, &mut s);
    let df = other;
    df.release(&lease).await.expect("release");
    leader.stop();
    follower.stop();
}

/// Handover (release, then the other member's acquire) and crash failover (the holder's
/// client stops renewing, as kill -9; the other polls acquire every 100 ms).
async fn failover(server: &KubeApiServer, ttl: Duration, rounds: usize) {
    let mut handover = Vec::new();
    let mut crash = Vec::new();
    for i in 0..rounds {
        let (a, b) = (client(server, ttl).await, client(server, ttl).await);
        let scope = format!("fo{}-{i}", ttl.as_secs());
        let (da, db) = (a.scope(&scope), b.scope(&scope));
        let lease = da.acquire(&record("a", "h")).await.expect("acquire").won().expect("free");
        db.load().await.expect("load");
        let start = Instant::now();
        da.release(&lease).await.expect("release");
        let taken = db.acquire(&record("b", "h")).await.expect("acquire").won().expect("released");
        handover.push(start.elapsed());
        db.release(&taken).await.expect("release");

        let lease = da.acquire(&record("a", "c")).await.expect("acquire").won().expect("free");
        let _ = lease;
        db.load().await.expect("b observes the holder");
        let start = Instant::now();
        a.stop();
        loop {
            match db.acquire(&record("b", "c")).await.expect("acquire") {
                CasOutcome::Won(_) => break,
                CasOutcome::Lost(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        crash.push(start.elapsed());
        b.stop();
    }
    println!(
        "ttl {:>2}s: release handover p50 {:.1} ms (max {:.1}); crash failover p50 {:.2} s, max {:.2} s ({rounds} rounds)",
        ttl.as_secs(),
        percentile(&mut handover, 0.5),
        percentile(&mut handover, 1.0),
        percentile(&mut crash, 0.5) / 1000.0,
        percentile(&mut crash, 1.0) / 1000.0,
    );
}

/// Background Lease requests of a client that only exists, with `scopes` scopes each holding
/// one published member of it (the member keep-alive, every ttl/3), over three ttls.
async fn idle(server: &KubeApiServer, audit: &mut LeaseAudit, scopes: usize) {
    let ttl = Duration::from_secs(3);
    let window = ttl * 3;
    let client = client(server, ttl).await;
    let handles: Vec<_> = (0..scopes).map(|i| client.scope(&format!("idle{scopes}-{i}"))).collect();
    let member = MemberRecord::new("pod-a");
    let start = Instant::now();
    for chunk in handles.chunks(20) {
        let published = futures::future::join_all(chunk.iter().map(|d| d.publish_member(&member))).await;
        published.into_iter().for_each(|r| r.expect("publish"));
    }
    let setup = start.elapsed();
    audit.take();
    tokio::time::sleep(window).await;
    let counts = audit.take();
    let total: u64 = counts.values().sum();
    let per_second = total as f64 / window.as_secs_f64();
    println!(
        "idle, {scopes:>4} scope(s), ttl {}s: {per_second:>7.1} req/s total, {:.3} req/s per scope ({counts:?}); setup {:.0} ms",
        ttl.as_secs(),
        per_second / scopes as f64,
        setup.as_secs_f64() * 1000.0,
    );
    client.stop();
}

/// An idle follower's HA loop (load, then watch for `loop_wait`) over a window in which the
/// leader (another client) does not change, with the mirror on or off: requests per second
/// from the follower's client (its member keep-alive included).
async fn idle_follower(server: &KubeApiServer, audit: &mut LeaseAudit, watch_mirror: bool) {
    let (ttl, loop_wait, window) = (Duration::from_secs(30), Duration::from_secs(1), Duration::from_secs(15));
    let leader = client(server, ttl).await;
    let follower = client_with(server, ttl, watch_mirror).await;
    let scope = format!("idlefollower-{watch_mirror}");
    let (dl, df) = (leader.scope(&scope), follower.scope(&scope));
    let lease = dl.acquire(&record("pod-a", "t")).await.expect("acquire").won().expect("free");
    df.publish_member(&MemberRecord::new("pod-b")).await.expect("publish");
    // Warm up: the mirror's LIST + WATCH is set up by the first loads.
    for _ in 0..20 {
        df.load().await.expect("load");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    audit.take();
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < window {
        let view = df.load().await.expect("load");
        assert!(view.leader.is_some(), "the leader stays shown");
        df.watch(view.revision.as_ref(), loop_wait).await.expect("watch");
        rounds += 1;
    }
    let counts = audit.take();
    let total: u64 = counts.values().sum();
    println!(
        "idle follower, mirror {:<5} ttl 30 s, loop_wait 1 s, {rounds} loops in {:.0} s: {:.2} req/s ({counts:?})",
        if watch_mirror { "on," } else { "off," },
        start.elapsed().as_secs_f64(),
        total as f64 / start.elapsed().as_secs_f64(),
    );
    dl.release(&lease).await.expect("release");
    leader.stop();
    follower.stop();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        if KubeApiServer::binary().expect("usable").is_none() {
            println!(
                "no kube-apiserver found (LEASEHOLD_KUBE_APISERVER_BIN, PATH, ../shared/servers): nothing to measure"
            );
            return;
        }
        let config = KubeApiServerConfig { audit: true, ..KubeApiServerConfig::default() };
        let server = KubeApiServer::start(config).await.expect("kube-apiserver starts");
        server.create_namespace(NAMESPACE).await.expect("namespace");
        println!(
            "leasehold-kube against a real kube-apiserver {} at {} (TLS verified, RBAC)\n",
            server.version(),
            server.url()
        );
        let mut audit = LeaseAudit::new(server.audit_log());
        println!("Lease requests per call (from the audit log) and latency:");
        per_call(&server, &mut audit).await;
        println!("\nhandover and crash failover:");
        failover(&server, Duration::from_secs(2), 5).await;
        failover(&server, Duration::from_secs(5), 3).await;
        println!("\nidle follower (load + watch per loop), Lease requests from the audit log:");
        idle_follower(&server, &mut audit, false).await;
        idle_follower(&server, &mut audit, true).await;
        println!("\nidle background requests (member keep-alive: 3 PUTs per ttl per published member):");
        idle(&server, &mut audit, 1).await;
        idle(&server, &mut audit, 100).await;
        idle(&server, &mut audit, 1000).await;
    });
}
