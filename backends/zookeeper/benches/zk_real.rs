//! Latency and idle cost against a real ZooKeeper 3.8 on loopback, started by this binary.
//!
//! `cargo bench -p leasehold-zookeeper --bench zk_real`
//!
//! Prints acquire / renew / release latency (median, p99), graceful handover (release to the
//! watching candidate's won acquire), crash failover (client killed to the candidate's won
//! acquire) on the harness's tickTime 500 ms and again on a second server with tickTime
//! 100 ms (ZooKeeper expires sessions on tick boundaries, so the tick is added to failover),
//! and the server's received packets per second while clients sit idle: one scope, and 1,000
//! scopes held on one session; then the requests per second a follower's loop and a leader's
//! loop send, and one process renewing 1,000 scopes every second (per session, from `cons`).
//! `ZK_BENCH_IDLE_ONLY=1` runs only that last part.

use std::time::Duration;

use leasehold::testkit::election::timing_for;
use leasehold::{CasOutcome, Dcs, LeaderRecord, Lease, MemberRecord, WatchEvent};
use leasehold_zookeeper::testing::{TICK, ZkConfig, ZkServer, four_letter, test_options};
use leasehold_zookeeper::{ZkClient, ZkDcs, ZkOptions};
use tokio::time::Instant;

#[allow(clippy::disallowed_methods)] // A benchmark reads the clock.
fn now() -> Instant {
    Instant::now()
}

fn record(member: &str, n: usize) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: format!("{member}-{n}"), api_url: None, conn_url: None }
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<28} n={:<4} median {:>9.3} ms   p99 {:>9.3} ms",
        samples.len(),
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3
    );
}

async fn won(dcs: &ZkDcs, r: &LeaderRecord) -> Lease {
    match dcs.acquire(r).await {
        Ok(CasOutcome::Won(l)) => l,
        other => panic!("acquire: {other:?}"),
    }
}

async fn packets_received(port: u16) -> u64 {
    let mntr = four_letter(port, "mntr").await.expect("mntr");
    mntr.lines()
        .find_map(|l| l.strip_prefix("zk_packets_received"))
        .and_then(|v| v.trim().parse().ok())
        .expect("zk_packets_received in mntr")
}

/// Crash failover on `server`, `n` times: a detached holder with a 2 s session is closed
/// without CloseSession; the time until a watching candidate on `other` wins.
async fn crash_failover(server: &ZkServer, other: &ZkClient, n: usize, label: &str) {
    let mut failover = Vec::new();
    let mut negotiated = Duration::ZERO;
    for i in 0..n {
        let options = ZkOptions { detached: true, ..test_options(server) };
        let crashing = ZkClient::connect(options, &timing_for(Duration::from_secs(2))).await.expect("connect");
        negotiated = crashing.lease_ttl();
        let dh = crashing.scope(&format!("crash-{label}-{i}"));
        let dc = other.scope(&format!("crash-{label}-{i}"));
        let lease = won(&dh, &record("a", i)).await;
        dh.publish_member(&MemberRecord::new("a")).await.expect("publish");
        let candidate = tokio::runtime::Handle::current().spawn({
            let dc = dc.clone();
            async move { take_over(&dc, &record("b", i)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The server counts the session timeout from the last packet it got from the
        // session: a renew right before the crash makes that the crash instant.
        assert!(dh.renew(&lease).await.expect("renew").is_won());
        let t = now();
        crashing.stop();
        let done = candidate.await.expect("candidate");
        failover.push(done - t);
    }
    println!("crash failover, tickTime {:?}: session timeout {negotiated:?}", server.config().tick);
    summary(&format!("crash failover ({label})"), failover);
}

/// Waits (watch + acquire) until `dcs` wins; returns when it did.
async fn take_over(dcs: &ZkDcs, r: &LeaderRecord) -> Instant {
    loop {
        let view = dcs.load().await.expect("load");
        if view.leader.is_none()
            && let Ok(CasOutcome::Won(_)) = dcs.acquire(r).await
        {
            return now();
        }
        match dcs.watch(view.revision.as_ref(), Duration::from_millis(200)).await {
            Ok(WatchEvent::Changed | WatchEvent::Resync | WatchEvent::Timeout) | Err(_) => {}
        }
    }
}

/// Packets the server received on the connection of session `session` (from `cons`).
async fn session_packets(port: u16, session: i64) -> u64 {
    let cons = four_letter(port, "cons").await.expect("cons");
    let sid = format!("sid=0x{session:x},");
    cons.lines()
        .find(|l| l.contains(&sid))
        .and_then(|l| l.split("recved=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("session {sid} in cons: {cons}"))
}

/// Requests per second received from `client`'s session while `work` runs for `window`.
async fn session_rate(port: u16, client: &ZkClient, window: Duration) -> f64 {
    let before = session_packets(port, client.session_id()).await;
    tokio::time::sleep(window).await;
    let after = session_packets(port, client.session_id()).await;
    (after - before) as f64 / window.as_secs_f64()
}

/// A follower's loop (load, then wait for a change or `loop_wait`), and a leader's (renew and
/// publish a member record with a new position every `loop_wait`), on one scope; then 1,000
/// scopes led by one process, each renewed every `loop_wait`. Prints the requests per
/// second the server received from the follower's and from the leaders' sessions.
async fn idle_loops(server: &ZkServer, window: Duration) {
    let port = server.client_port(0);
    let loop_wait = Duration::from_secs(1);
    let timing = timing_for(Duration::from_secs(10));
    let leader = ZkClient::connect(test_options(server), &timing).await.expect("connect");
    let follower = ZkClient::connect(test_options(server), &timing).await.expect("connect");
    let (dl, df) = (leader.scope("loops"), follower.scope("loops"));
    let mut lease = won(&dl, &record("a", 0)).await;
    let leading = tokio::runtime::Handle::current().spawn(async move {
        for position in 0u64.. {
            lease = match dl.renew(&lease).await {
                Ok(CasOutcome::Won(l)) => l,
                other => panic!("renew: {other:?}"),
            };
            let member = MemberRecord { position: Some(position), ..MemberRecord::new("a") };
            dl.publish_member(&member).await.expect("publish");
            tokio::time::sleep(loop_wait).await;
        }
    });
    let following = tokio::runtime::Handle::current().spawn(async move {
        let mut wakes = 0u64;
        loop {
            let view = df.load().await.expect("load");
            assert_eq!(view.leader.map(|l| l.record.member).as_deref(), Some("a"));
            if df.watch(view.revision.as_ref(), loop_wait).await.expect("watch") != WatchEvent::Timeout {
                wakes += 1;
            }
            if wakes > 1_000_000 {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (f, l) = tokio::join!(session_rate(port, &follower, window), session_rate(port, &leader, window));
    println!(
        "follower loop (load + watch, loop_wait 1 s), leader renews + publishes: follower {f:.2} requests/s, leader {l:.2} requests/s"
    );
    leading.abort();
    following.abort();
    drop((leader, follower));

    let many = ZkClient::connect(test_options(server), &timing).await.expect("connect");
    let handles: Vec<ZkDcs> = (0..1000).map(|i| many.scope(&format!("renew1000-{i}"))).collect();
    let mut leases = Vec::new();
    for (i, dcs) in handles.iter().enumerate() {
        leases.push(won(dcs, &record("a", i)).await);
    }
    let renewing = tokio::runtime::Handle::current().spawn(async move {
        loop {
            let started = now();
            let renewals = handles.iter().zip(leases.iter_mut()).map(|(dcs, lease)| async move {
                match dcs.renew(lease).await {
                    Ok(CasOutcome::Won(l)) => *lease = l,
                    other => panic!("renew: {other:?}"),
                }
            });
            futures::future::join_all(renewals).await;
            tokio::time::sleep_until(started + loop_wait).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rate = session_rate(port, &many, window).await;
    println!("1,000 scopes led by one process, each renewed every 1 s: {rate:.2} requests/s");
    renewing.abort();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = ZkServer::standalone().await.expect("start ZooKeeper");
    let port = server.client_port(0);
    let connect = |ttl| {
        let (options, timing) = (test_options(&server), timing_for(ttl));
        async move { ZkClient::connect(options, &timing).await }
    };
    if std::env::var_os("ZK_BENCH_IDLE_ONLY").is_some() {
        idle_loops(&server, Duration::from_secs(10)).await;
        return;
    }
    let client = connect(Duration::from_secs(4)).await.expect("connect");
    println!("ZooKeeper 3.8 standalone on loopback, tickTime {TICK:?}, session timeout {:?}", client.lease_ttl());

    // Latency of single calls.
    let dcs = client.scope("latency");
    let (mut acq, mut ren, mut rel) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..300 {
        let t = now();
        let lease = won(&dcs, &record("a", i)).await;
        acq.push(t.elapsed());
        let t = now();
        let lease = match dcs.renew(&lease).await {
            Ok(CasOutcome::Won(l)) => l,
            other => panic!("renew: {other:?}"),
        };
        ren.push(t.elapsed());
        let t = now();
        assert!(dcs.release(&lease).await.expect("release").is_won());
        rel.push(t.elapsed());
    }
    summary("acquire", acq);
    summary("renew (mirror, else sync + read)", ren);
    summary("release (read + delete)", rel);
    let mut loads = Vec::new();
    for _ in 0..300 {
        let t = now();
        dcs.load().await.expect("load");
        loads.push(t.elapsed());
    }
    summary("load (mirror, else sync + multi-read)", loads);

    // Graceful handover: the holder releases, the candidate waits on its watch.
    let other = connect(Duration::from_secs(4)).await.expect("connect");
    let mut handover = Vec::new();
    for i in 0..30 {
        let (dh, dc) = (client.scope(&format!("handover-{i}")), other.scope(&format!("handover-{i}")));
        let lease = won(&dh, &record("a", i)).await;
        let candidate = tokio::runtime::Handle::current().spawn({
            let dc = dc.clone();
            async move { take_over(&dc, &record("b", i)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = now();
        assert!(dh.release(&lease).await.expect("release").is_won());
        let done = candidate.await.expect("candidate");
        handover.push(done - t);
    }
    summary("graceful handover", handover);

    // Crash failover: the holder's process dies (detached session, no CloseSession).
    crash_failover(&server, &other, 5, "tick 500 ms").await;
    {
        // The same on a server with a 100 ms tick (an operator's server setting); 2 s stays
        // inside the allowed session timeouts.
        let config = ZkConfig {
            tick: Duration::from_millis(100),
            min_session_timeout: Some(Duration::from_millis(200)),
            max_session_timeout: Some(Duration::from_secs(10)),
            ..ZkConfig::new(1)
        };
        let fast = ZkServer::start_with(config).await.expect("start ZooKeeper with tickTime 100 ms");
        let fast_other =
            ZkClient::connect(test_options(&fast), &timing_for(Duration::from_secs(4))).await.expect("connect");
        crash_failover(&fast, &fast_other, 5, "tick 100 ms").await;
    }
    drop(other);

    // Idle cost: packets the server receives while clients only keep their sessions.
    let window = Duration::from_secs(10);
    for (scopes, ttl) in [(1usize, 10u64), (1000, 10)] {
        let idle = connect(Duration::from_secs(ttl)).await.expect("connect");
        let handles: Vec<ZkDcs> = (0..scopes).map(|i| idle.scope(&format!("idle{scopes}-{i}"))).collect();
        for (i, dcs) in handles.iter().enumerate() {
            won(dcs, &record("a", i)).await;
            dcs.publish_member(&MemberRecord::new("a")).await.expect("publish");
            dcs.load().await.expect("load arms the watch");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = packets_received(port).await;
        tokio::time::sleep(window).await;
        let after = packets_received(port).await;
        // Each mntr call is one more packet; the other clients here are closed.
        let rate = (after - before).saturating_sub(1) as f64 / window.as_secs_f64();
        println!(
            "idle, {scopes:>4} scope(s) held + member + watch on one session (timeout {:?}): {rate:.2} requests/s ({:.4}/s per scope)",
            idle.lease_ttl(),
            rate / scopes as f64
        );
        drop(handles);
        drop(idle);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    idle_loops(&server, window).await;
    drop(client);
}
