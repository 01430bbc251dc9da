//! Request counts of the Consul backend, measured AGAINST THE EMULATOR (not a real agent):
//! the counts hold for any agent, latencies do not.
//!
//! `cargo bench -p leasehold-consul --bench consul_emulator`
#![allow(clippy::disallowed_methods)] // A benchmark reads the clock and spawns nothing else.

use std::time::{Duration, Instant};

use futures::future::join_all;
use leasehold::{Dcs, LeaderRecord, MemberRecord, Timing};
use leasehold_consul::{ConsulClient, ConsulOptions};
use leasehold_consul_emulator::{Emulator, EmulatorConfig, Expiry, RequestCounts};

fn record(member: &str, n: usize) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: format!("{member}-{n}"), api_url: None, conn_url: None }
}

fn row(what: &str, d: RequestCounts, calls: u64) {
    let per = |n: u64| n as f64 / calls as f64;
    println!(
        "  {what:<40} {:>5.2} requests/call  (session renew {:.2}, kv get {:.2}, blocking get {:.2}, kv put {:.2}, kv delete {:.2})",
        per(d.total()),
        per(d.session_renew),
        per(d.kv_get),
        per(d.kv_blocking_get),
        per(d.kv_put),
        per(d.kv_delete)
    );
}

async fn idle(emu: &Emulator, scopes: usize, ttl: Duration) -> f64 {
    // The emulator runs with a 100 ms session-TTL floor (Consul's is 10 s), so a short ttl works.
    let options =
        ConsulOptions { address: emu.url(), session_ttl_min: Duration::from_millis(100), ..ConsulOptions::default() };
    let client = ConsulClient::connect(options, &Timing { ttl, ..Timing::default() }).await.expect("connect");
    let handles: Vec<_> = (0..scopes).map(|i| client.scope(&format!("idle{scopes}-{i}"))).collect();
    for chunk in handles.chunks(50) {
        let acquired =
            join_all(chunk.iter().enumerate().map(|(i, h)| async move { h.acquire(&record("m", i)).await })).await;
        assert!(acquired.iter().all(|r| r.as_ref().is_ok_and(|o| o.is_won())));
        let published =
            join_all(chunk.iter().map(|h| async move { h.publish_member(&MemberRecord::new("m")).await })).await;
        assert!(published.iter().all(Result::is_ok));
    }
    let window = 2 * ttl;
    let before = emu.request_counts();
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let d = emu.request_counts() - before;
    let rate = d.total() as f64 / started.elapsed().as_secs_f64();
    // Every key must still be there: the one session renewal kept them all.
    let view = handles[scopes - 1].load().await.expect("load");
    assert!(view.leader.is_some() && view.member("m").is_some(), "keys survived the idle window");
    client.shutdown().await.expect("shutdown");
    rate
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let emu = Emulator::start(
        EmulatorConfig::default().session_ttl_min(Duration::from_millis(100)).expiry(Expiry::AtTwiceTtl),
    )
    .expect("emulator");
    println!("leasehold-consul request counts, measured against the EMULATOR (not a real Consul agent)");
    let timing = Timing::default();
    let client =
        ConsulClient::connect(ConsulOptions { address: emu.url(), ..ConsulOptions::default() }, &timing).await.unwrap();
    let follower =
        ConsulClient::connect(ConsulOptions { address: emu.url(), ..ConsulOptions::default() }, &timing).await.unwrap();
    let (pg, fpg) = (client.scope("bench"), follower.scope("bench"));
    let n = 200u64;

    println!("per call (mean of {n}):");
    let mut leases = Vec::new();
    let before = emu.request_counts();
    for i in 0..n as usize {
        leases.push(client.scope(&format!("acq-{i}")).acquire(&record("a", i)).await.unwrap().won().unwrap());
    }
    row("acquire (free key)", emu.request_counts() - before, n);

    let lease = pg.acquire(&record("a", 0)).await.unwrap().won().unwrap();
    let before = emu.request_counts();
    let started = Instant::now();
    for _ in 0..n {
        assert!(pg.renew(&lease).await.unwrap().is_won());
    }
    let renew_latency = started.elapsed() / n as u32;
    row("renew (leader's cycle)", emu.request_counts() - before, n);

    let before = emu.request_counts();
    let started = Instant::now();
    for _ in 0..n {
        fpg.load().await.unwrap();
    }
    let load_latency = started.elapsed() / n as u32;
    row("load (consistent recursive read)", emu.request_counts() - before, n);

    let before = emu.request_counts();
    for (i, lease) in leases.iter().enumerate() {
        assert!(client.scope(&format!("acq-{i}")).release(lease).await.unwrap().is_won());
    }
    row("release", emu.request_counts() - before, n);

    // Follower watches while the leader renews: renewals must not wake watches.
    let view = fpg.load().await.unwrap();
    let before = emu.request_counts();
    let (event, ()) = tokio::join!(fpg.watch(view.revision.as_ref(), Duration::from_secs(2)), async {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            pg.renew(&lease).await.unwrap();
        }
    });
    let d = emu.request_counts() - before;
    println!(
        "  follower watch over 10 leader renewals: {:?} after {} blocking queries (renewals do not wake it)",
        event.unwrap(),
        d.kv_blocking_get
    );
    println!("  emulator latency: renew {renew_latency:?}, load {load_latency:?}");

    // 1,000 scopes renewing in one cycle.
    let many: Vec<_> = (0..1000).map(|i| client.scope(&format!("cycle-{i}"))).collect();
    let mut many_leases = Vec::new();
    for chunk in many.chunks(50) {
        let won =
            join_all(chunk.iter().enumerate().map(|(i, h)| async move { h.acquire(&record("c", i)).await })).await;
        many_leases.extend(won.into_iter().map(|r| r.unwrap().won().unwrap()));
    }
    let before = emu.request_counts();
    let started = Instant::now();
    for (chunk, leases) in many.chunks(50).zip(many_leases.chunks(50)) {
        let renewed = join_all(chunk.iter().zip(leases).map(|(h, l)| h.renew(l))).await;
        assert!(renewed.iter().all(|r| r.as_ref().is_ok_and(|o| o.is_won())));
    }
    let d = emu.request_counts() - before;
    println!(
        "  renew cycle of 1,000 scopes on one session: {} requests ({} session renews + {} kv gets) in {:?}",
        d.total(),
        d.session_renew,
        d.kv_get,
        started.elapsed()
    );

    println!("idle (no calls; leader key + member key per scope; keep-alive only):");
    for (scopes, ttl) in [(1usize, Duration::from_secs(3)), (1000, Duration::from_secs(3))] {
        let rate = idle(&emu, scopes, ttl).await;
        println!(
            "  {scopes:>5} scope(s), ttl {ttl:?} (session TTL {:?}): {rate:.2} requests/s total, {:.4} per scope",
            ttl / 2,
            rate / scopes as f64
        );
    }
    println!(
        "  at the default ttl 30 s (session 15 s, renewed every 5 s): 0.2 requests/s per process, whatever the scope count"
    );
}
