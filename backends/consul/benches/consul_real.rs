//! leasehold-consul against a real Consul 1.6.2 agent (`consul agent -dev` on this machine):
//! latencies of each call, release handover and crash failover (the holder's client stops
//! renewing, as kill -9; sessions expire somewhere between their TTL and twice it), and what an
//! idle client costs the agent: requests counted by a proxy between the client and the agent
//! (Consul 1.6 keeps no per-request counters it could be asked for); and what nodes at work
//! cost (a leader renewing and a follower loading and watching every scope every loop_wait),
//! with the process's mirror off (the backend before it) and on.
//! Prints why and stops when no consul binary is found.
//!
//! `cargo bench -p leasehold-consul --bench consul_real`
#![allow(clippy::disallowed_methods)] // A benchmark reads the clock.

use std::time::{Duration, Instant};

use leasehold::{CasOutcome, Dcs, LeaderRecord, MemberRecord};
use leasehold_consul::ConsulClient;
use leasehold_consul::testing::{ConsulAgent, ConsulAgentConfig};
use leasehold_test_servers::{CutProxy, RequestLines};

fn record(member: &str, token: &str) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: token.into(), api_url: None, conn_url: None }
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn timed<T>(samples: &mut Vec<Duration>, f: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    let out = f.await;
    samples.push(start.elapsed());
    out
}

fn show(what: &str, samples: &mut [Duration]) {
    println!(
        "  {what:<36} p50 {:>7.2} ms  p99 {:>7.2} ms  ({} calls)",
        percentile(samples, 0.5),
        percentile(samples, 0.99),
        samples.len()
    );
}

async fn per_call(agent: &ConsulAgent) {
    const ROUNDS: usize = 200;
    let (options, timing) = (agent.options(), agent.timing());
    let (leader, follower) = (
        ConsulClient::connect(options.clone(), &timing).await.unwrap(),
        ConsulClient::connect(options, &timing).await.unwrap(),
    );
    let (dl, df) = (leader.scope("bench"), follower.scope("bench"));
    df.publish_member(&MemberRecord::new("b")).await.unwrap();
    let (mut acq, mut renew, mut load, mut rel) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let lease = timed(&mut acq, dl.acquire(&record("a", &format!("t{i}")))).await.unwrap().won().expect("free");
        let lease = timed(&mut renew, dl.renew(&lease)).await.unwrap().won().expect("ours");
        timed(&mut load, df.load()).await.unwrap();
        assert!(timed(&mut rel, dl.release(&lease)).await.unwrap().is_won());
    }
    show("acquire", &mut acq);
    show("renew", &mut renew);
    show("load", &mut load);
    show("release", &mut rel);
    leader.shutdown().await.unwrap();
    follower.shutdown().await.unwrap();
}

async fn failover(agent: &ConsulAgent, ttl: Duration, rounds: usize) {
    let (options, timing) = (agent.options(), leasehold::Timing { ttl, ..agent.timing() });
    let (mut handover, mut crash) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let a = ConsulClient::connect(options.clone(), &timing).await.unwrap();
        let b = ConsulClient::connect(options.clone(), &timing).await.unwrap();
        let scope = format!("fo{}-{i}", ttl.as_secs());
        let (da, db) = (a.scope(&scope), b.scope(&scope));
        let lease = da.acquire(&record("a", "h")).await.unwrap().won().expect("free");
        let start = Instant::now();
        da.release(&lease).await.unwrap();
        let taken = db.acquire(&record("b", "h")).await.unwrap().won().expect("released");
        handover.push(start.elapsed());
        db.release(&taken).await.unwrap();

        da.acquire(&record("a", "c")).await.unwrap().won().expect("free");
        let start = Instant::now();
        a.stop();
        loop {
            match db.acquire(&record("b", "c")).await.unwrap() {
                CasOutcome::Won(_) => break,
                CasOutcome::Lost(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        crash.push(start.elapsed());
        b.shutdown().await.unwrap();
    }
    println!(
        "  ttl {:>2}s (session TTL {:?}): release handover p50 {:.1} ms (max {:.1}); crash failover p50 {:.2} s, max {:.2} s ({rounds} rounds)",
        ttl.as_secs(),
        ttl / 2,
        percentile(&mut handover, 0.5),
        percentile(&mut handover, 1.0),
        percentile(&mut crash, 0.5) / 1000.0,
        percentile(&mut crash, 1.0) / 1000.0,
    );
}

/// Requests per second an idle client sends for `scopes` scopes, each holding its leader key
/// and a member key, over a window of two ttls; by endpoint (session ids and keys left out).
async fn idle(agent: &ConsulAgent, scopes: usize, ttl: Duration) {
    let port = agent.address().rsplit(':').next().and_then(|p| p.parse().ok()).expect("agent port");
    let proxy = CutProxy::start(port).expect("proxy");
    let options =
        leasehold_consul::ConsulOptions { address: format!("http://127.0.0.1:{}", proxy.port()), ..agent.options() };
    let timing = leasehold::Timing { ttl, ..agent.timing() };
    let client = ConsulClient::connect(options, &timing).await.expect("connect");
    let handles: Vec<_> = (0..scopes).map(|i| client.scope(&format!("idle{scopes}-{}-{i}", ttl.as_secs()))).collect();
    for h in &handles {
        h.acquire(&record("m", "idle")).await.unwrap().won().expect("free");
        h.publish_member(&MemberRecord::new("m")).await.unwrap();
    }
    let before = proxy.http_requests();
    let started = Instant::now();
    tokio::time::sleep(2 * ttl).await;
    let counts = endpoints(&proxy.http_requests(), &before);
    let secs = started.elapsed().as_secs_f64();
    let view = handles[scopes - 1].load().await.expect("load");
    assert!(view.leader.is_some() && view.member("m").is_some(), "keys survived the idle window");
    let total: u64 = counts.values().sum();
    println!(
        "  {scopes:>5} scope(s), ttl {:>2}s (session TTL {:?}): {:.2} requests/s total, {:.4} per scope; {counts:?} in {secs:.1} s",
        ttl.as_secs(),
        ttl / 2,
        total as f64 / secs,
        total as f64 / secs / scopes as f64,
    );
    client.shutdown().await.unwrap();
}

/// Requests per second of a leader process and of a follower process on `scopes` scopes
/// while they do what nodes do every loop_wait (ttl / 3): the leader renews every scope it
/// leads; the follower loads every scope, then watches it until a change or loop_wait. With
/// `mirror` off that is what the backend did before the mirror (a renew is a session
/// renewal and a read, a load a read, a watch a blocking query on the scope).
async fn looping(agent: &ConsulAgent, scopes: usize, ttl: Duration, mirror: bool) {
    let port = agent.address().rsplit(':').next().and_then(|p| p.parse().ok()).expect("agent port");
    let (leader_proxy, follower_proxy) = (CutProxy::start(port).expect("proxy"), CutProxy::start(port).expect("proxy"));
    let through = |proxy: &CutProxy| leasehold_consul::ConsulOptions {
        address: format!("http://127.0.0.1:{}", proxy.port()),
        watch_mirror: mirror,
        ..agent.options()
    };
    let timing = leasehold::Timing { ttl, loop_wait: ttl / 3, ..agent.timing() };
    let leader = ConsulClient::connect(through(&leader_proxy), &timing).await.expect("connect");
    let follower = ConsulClient::connect(through(&follower_proxy), &timing).await.expect("connect");
    let name = |i: usize| format!("loop{scopes}-{}-{mirror}-{i}", ttl.as_secs());
    let mut leases = Vec::new();
    for i in 0..scopes {
        let (l, f) = (leader.scope(&name(i)), follower.scope(&name(i)));
        leases.push((l.clone(), l.acquire(&record("l", "loop")).await.unwrap().won().expect("free")));
        l.publish_member(&MemberRecord::new("l")).await.unwrap();
        f.publish_member(&MemberRecord::new("f")).await.unwrap();
    }
    let loop_wait = timing.loop_wait;
    let warm_up = loop_wait * 2;
    let end = tokio::time::Instant::now() + warm_up + 2 * ttl;
    let mut tasks = Vec::new();
    // Nodes are not in step: scope i starts its loop i / scopes of a loop_wait in.
    let offset = move |i: usize| loop_wait * u32::try_from(i).unwrap_or(0) / u32::try_from(scopes).unwrap_or(1);
    for (i, (dcs, mut lease)) in leases.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(offset(i)).await;
            while tokio::time::Instant::now() < end {
                lease = dcs.renew(&lease).await.expect("renew").won().expect("still ours");
                tokio::time::sleep(loop_wait).await;
            }
        }));
    }
    for i in 0..scopes {
        let dcs = follower.scope(&name(i));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(offset(i)).await;
            while tokio::time::Instant::now() < end {
                let view = dcs.load().await.expect("load");
                assert!(view.leader.is_some(), "the leader is seen");
                let left = end.saturating_duration_since(tokio::time::Instant::now()).min(loop_wait);
                dcs.watch(view.revision.as_ref(), left).await.expect("watch");
            }
        }));
    }
    tokio::time::sleep(warm_up).await;
    let (l0, f0) = (leader_proxy.http_requests(), follower_proxy.http_requests());
    let started = Instant::now();
    tokio::time::sleep(2 * ttl).await;
    let (lc, fc) = (endpoints(&leader_proxy.http_requests(), &l0), endpoints(&follower_proxy.http_requests(), &f0));
    let secs = started.elapsed().as_secs_f64();
    for t in tasks {
        t.await.expect("task");
    }
    let rate = |c: &RequestLines| c.values().sum::<u64>() as f64 / secs;
    println!(
        "  {scopes:>5} scope(s), ttl {:>2}s, loop_wait {:?}, mirror {}: leader {:.2} req/s {lc:?}; follower {:.2} req/s {fc:?}",
        ttl.as_secs(),
        loop_wait,
        if mirror { "on " } else { "off" },
        rate(&lc),
        rate(&fc),
    );
    if mirror && scopes >= 1000 {
        let mut request =
            reqwest::Client::new().get(format!("{}/v1/kv/{}/?recurse", agent.address(), agent.options().prefix));
        if let Some(token) = agent.master_token() {
            request = request.header("X-Consul-Token", token);
        }
        let body = request.send().await.expect("read").bytes().await.expect("body");
        let keys = serde_json::from_slice::<Vec<serde_json::Value>>(&body).map_or(0, |v| v.len());
        println!("  one answer of the mirror's query here: {} bytes for {keys} keys", body.len());
    }
    leader.shutdown().await.unwrap();
    follower.shutdown().await.unwrap();
}

/// Requests by endpoint between two proxy readings, with ids and key names cut off.
fn endpoints(after: &RequestLines, before: &RequestLines) -> RequestLines {
    let mut out = RequestLines::new();
    for (line, n) in after {
        let n = n - before.get(line).copied().unwrap_or(0);
        if n > 0 {
            let endpoint = line.split('/').take(4).collect::<Vec<_>>().join("/");
            *out.entry(endpoint).or_default() += n;
        }
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if ConsulAgent::binary().expect("usable").is_none() {
        println!("no consul found (LEASEHOLD_CONSUL_BIN, PATH, ../shared/servers): nothing to measure");
        return;
    }
    let lowered = ConsulAgent::start(ConsulAgentConfig {
        session_ttl_min: Some(Duration::from_secs(1)),
        ..ConsulAgentConfig::default()
    })
    .await
    .expect("consul starts");
    println!("leasehold-consul against a real agent, {} at {}", lowered.version(), lowered.address());
    println!("latency per call (session_ttl_min 1 s, ttl 2 s):");
    per_call(&lowered).await;
    println!("handover and crash failover:");
    failover(&lowered, Duration::from_secs(2), 5).await;
    println!("idle (no calls; a leader key and a member key per scope; the session renewal only):");
    idle(&lowered, 1, Duration::from_secs(3)).await;
    idle(&lowered, 1000, Duration::from_secs(3)).await;
    println!("nodes at work (renew / load + watch every loop_wait), the mirror off (as before) and on:");
    for mirror in [false, true] {
        looping(&lowered, 1, Duration::from_secs(3), mirror).await;
    }
    for mirror in [false, true] {
        looping(&lowered, 1000, Duration::from_secs(3), mirror).await;
    }
    drop(lowered);
    // Consul's default floor: the shortest ttl the library accepts against a stock agent.
    let stock = ConsulAgent::start(ConsulAgentConfig::default()).await.expect("consul starts");
    failover(&stock, Duration::from_secs(20), 2).await;
    idle(&stock, 1, Duration::from_secs(30)).await;
    // At Patroni's default ttl (30 s, loop_wait 10 s), with the mirror (the default).
    looping(&stock, 1000, Duration::from_secs(30), true).await;
}
