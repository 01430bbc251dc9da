//! API request counts of leasehold-kube, measured against the in-repo API server EMULATOR
//! (not a real cluster: latencies here say nothing about a real API server; the request
//! counts are what the backend sends and hold for any server). The same against a real
//! kube-apiserver, with latencies and failover times: the `kube_real` bench.
//!
//! `cargo bench -p leasehold-kube --bench kube_emulator`

// A benchmark times real waiting with the wall clock.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use leasehold::{Dcs, LeaderRecord, MemberRecord, Timing, WatchEvent};
use leasehold_kube::{KubeClient, KubeOptions};
use leasehold_kube_emulator::{Emulator, EmulatorConfig, RequestCounts};

const TOKEN: &str = "bench";
const NAMESPACE: &str = "bench";

fn client(emulator: &Emulator, ttl: Duration) -> KubeClient {
    let mut config = kube::Config::new(emulator.url().parse().expect("url"));
    config.auth_info.token = Some(secrecy::SecretString::from(TOKEN.to_string()));
    config.default_retry = false;
    leasehold_kube::install_default_crypto_provider();
    let kube = kube::Client::try_from(config).expect("kube client");
    let options = KubeOptions { namespace: Some(NAMESPACE.into()), ..KubeOptions::default() };
    KubeClient::from_client(kube, NAMESPACE, options, &Timing { ttl, ..Timing::default() }).expect("client")
}

fn record(member: &str, token: &str) -> LeaderRecord {
    LeaderRecord {
        member: member.into(),
        token: token.into(),
        api_url: Some("http://10.0.0.1:8008".into()),
        conn_url: None,
    }
}

fn show(what: &str, counts: RequestCounts, per: u64, elapsed: Duration) {
    let per = per.max(1) as f64;
    println!(
        "{what:<48} {:>7.2} req  (get {:.2}, list {:.2}, watch {:.2}, create {:.2}, update {:.2}, patch {:.2}, delete {:.2})  {:>8.3} ms each",
        counts.total() as f64 / per,
        counts.get as f64 / per,
        counts.list as f64 / per,
        counts.watch as f64 / per,
        counts.create as f64 / per,
        counts.update as f64 / per,
        counts.patch as f64 / per,
        counts.delete as f64 / per,
        elapsed.as_secs_f64() * 1000.0 / per,
    );
}

/// Requests per call of each HA-loop step, averaged over `rounds`.
async fn per_cycle(emulator: &Emulator) {
    const ROUNDS: u64 = 200;
    let ttl = Duration::from_secs(30);
    let leader = client(emulator, ttl);
    let follower = client(emulator, ttl);
    let (dl, df) = (leader.scope("cycle"), follower.scope("cycle"));
    df.publish_member(&MemberRecord::new("pod-b")).await.expect("publish");

    let before = emulator.request_counts();
    let start = Instant::now();
    let mut lease = dl.acquire(&record("pod-a", "t0")).await.expect("acquire").won().expect("won");
    show("acquire (free key, first time)", emulator.request_counts() - before, 1, start.elapsed());

    let before = emulator.request_counts();
    let start = Instant::now();
    for _ in 0..ROUNDS {
        lease = dl.renew(&lease).await.expect("renew").won().expect("still ours");
    }
    show("leader: renew", emulator.request_counts() - before, ROUNDS, start.elapsed());

    let before = emulator.request_counts();
    let start = Instant::now();
    for _ in 0..ROUNDS {
        df.load().await.expect("load");
    }
    show("follower: load", emulator.request_counts() - before, ROUNDS, start.elapsed());

    // A follower's idle cycle: load, then watch until the loop timer (here 50 ms) while the
    // leader renews: renewals must not wake it.
    let before = emulator.request_counts();
    let start = Instant::now();
    let mut woken = 0;
    for _ in 0..20 {
        let view = df.load().await.expect("load");
        lease = dl.renew(&lease).await.expect("renew").won().expect("ours");
        if df.watch(view.revision.as_ref(), Duration::from_millis(50)).await.expect("watch") != WatchEvent::Timeout {
            woken += 1;
        }
    }
    show("idle cycle: follower load + watch, leader renew", emulator.request_counts() - before, 20, start.elapsed());
    println!("{:<48} {woken} of 20 watches woken by leader renewals", "");

    let before = emulator.request_counts();
    let start = Instant::now();
    assert!(dl.release(&lease).await.expect("release").is_won());
    show("release", emulator.request_counts() - before, 1, start.elapsed());
    let before = emulator.request_counts();
    let start = Instant::now();
    let again = dl.acquire(&record("pod-a", "t1")).await.expect("acquire").won().expect("won");
    show("acquire (released key)", emulator.request_counts() - before, 1, start.elapsed());
    dl.release(&again).await.expect("release");
    leader.stop();
    follower.stop();
}

/// Background requests of a client that does nothing but exist, with `scopes` scopes each
/// holding one published member of this client (the member keep-alive, every ttl/3).
async fn idle(emulator: &Emulator, scopes: usize) {
    let ttl = Duration::from_secs(3);
    let window = ttl * 3;
    let client = client(emulator, ttl);
    let handles: Vec<_> = (0..scopes).map(|i| client.scope(&format!("idle{scopes}-{i}"))).collect();
    let member = MemberRecord::new("pod-a");
    let start = Instant::now();
    for chunk in handles.chunks(50) {
        let published = futures::future::join_all(chunk.iter().map(|d| d.publish_member(&member))).await;
        published.into_iter().for_each(|r| r.expect("publish"));
    }
    let setup = start.elapsed();
    let before = emulator.request_counts();
    tokio::time::sleep(window).await;
    let counts = emulator.request_counts() - before;
    let per_second = counts.total() as f64 / window.as_secs_f64();
    println!(
        "idle, {scopes:>5} scope(s), ttl {}s: {per_second:>8.1} req/s total, {:.3} req/s per scope ({:.2} per ttl per scope; updates {}, other {}); setup {:.0} ms",
        ttl.as_secs(),
        per_second / scopes as f64,
        per_second / scopes as f64 * ttl.as_secs_f64(),
        counts.update,
        counts.total() - counts.update,
        setup.as_secs_f64() * 1000.0,
    );
    client.stop();
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let emulator = Emulator::start(EmulatorConfig::with_token(TOKEN)).expect("emulator");
        println!("leasehold-kube against the in-repo API server EMULATOR at {} (not a real cluster)\n", emulator.url());
        println!("requests per call:");
        per_cycle(&emulator).await;
        println!("\nidle background requests (member keep-alive; scales as 3 requests per ttl per published member):");
        idle(&emulator, 1).await;
        idle(&emulator, 1000).await;
    });
}
