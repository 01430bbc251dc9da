//! The per-client mirror (one LIST + WATCH per client): member writes and leader renewals do
//! not wake a watch, a leader change does, and an idle follower's `load` and `watch` send no
//! request (counted from the real API server's audit log; with `watch_mirror` off the same
//! loop LISTs every time, which shows the count can fail). Needs a real kube-apiserver: on
//! the emulator only the wake-ups are checked.

mod common;

use std::time::Duration;

use common::{NAMESPACE, Target, options, timing_for};
use leasehold::{ClusterView, Dcs, DcsError, LeaderRecord, MemberRecord, WatchEvent};
use leasehold_kube::testing::{KubeApiServerConfig, LeaseAudit};
use leasehold_kube::{KubeClient, KubeDcs, KubeOptions};

const TTL: Duration = Duration::from_secs(10);

async fn client(target: &Target, options: KubeOptions) -> KubeClient {
    let kube = target.kube(Some(target.admin_token())).await;
    KubeClient::from_client(kube, NAMESPACE, options, &timing_for(TTL)).expect("client")
}

fn record(member: &str) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: format!("t-{member}"), api_url: None, conn_url: None }
}

/// Loads until `seen` holds (the mirror may lag a moment behind another client's write).
async fn load_until(dcs: &KubeDcs, seen: impl Fn(&ClusterView) -> bool) -> Result<ClusterView, DcsError> {
    for _ in 0..100 {
        let view = dcs.load().await?;
        if seen(&view) {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dcs.load().await
}

/// An idle follower loop (load, then a short watch) `rounds` times.
async fn idle_rounds(dcs: &KubeDcs, rounds: usize) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    for _ in 0..rounds {
        let view = dcs.load().await.expect("load");
        assert_eq!(view.leader.as_ref().map(|l| l.record.member.as_str()), Some("a"), "the leader stays shown");
        events.push(dcs.watch(view.revision.as_ref(), Duration::from_millis(50)).await.expect("watch"));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_writes_do_not_wake_a_leader_change_does_and_idle_loads_send_nothing() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let target = Target::start_with(KubeApiServerConfig { audit: true, ..KubeApiServerConfig::default() }).await;
    let (leader, follower, member) =
        (client(&target, options()).await, client(&target, options()).await, client(&target, options()).await);
    let (dl, df, dm) = (leader.scope("mir"), follower.scope("mir"), member.scope("mir"));
    let mut lease = dl.acquire(&record("a")).await.unwrap().won().expect("free");
    let view = load_until(&df, |v| v.leader.as_ref().is_some_and(|l| l.version == lease.version)).await.unwrap();
    assert_eq!(view.leader.as_ref().map(|l| l.epoch), Some(lease.epoch), "{view:?}");

    // A member publish and a leader renewal while the follower waits: neither wakes it.
    let waiter = client(&target, options()).await.scope("mir");
    load_until(&waiter, |v| v.leader.is_some()).await.unwrap();
    // Let its mirror come up, so the watch below is served by it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view = load_until(&waiter, |v| v.leader.is_some()).await.unwrap();
    let writes = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        dm.publish_member(&MemberRecord::new("c")).await.unwrap();
        dl.renew(&lease).await.unwrap().won().expect("ours")
    };
    let (woken, renewed) = tokio::join!(waiter.watch(view.revision.as_ref(), Duration::from_secs(3)), writes);
    lease = renewed;
    assert_eq!(woken.unwrap(), WatchEvent::Timeout, "woken by a member write or a renewal");
    let view = load_until(&df, |v| v.member("c").is_some()).await.unwrap();
    assert!(view.member("c").is_some(), "the member write shows in the mirror: {:?}", view.members);

    // A leader change wakes it.
    let view = load_until(&df, |v| v.leader.as_ref().is_some_and(|l| l.version == lease.version)).await.unwrap();
    let release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(dl.release(&lease).await.unwrap().is_won());
    };
    let (woken, ()) = tokio::join!(df.watch(view.revision.as_ref(), Duration::from_secs(20)), release);
    assert_eq!(woken.unwrap(), WatchEvent::Changed, "a released leader must wake the watch");
    let view = load_until(&df, |v| v.leader.is_none()).await.unwrap();
    assert!(view.leader.is_none(), "the release shows: {:?}", view.leader);
    let lease = dl.acquire(&record("a")).await.unwrap().won().expect("free again");
    load_until(&df, |v| v.leader.as_ref().is_some_and(|l| l.version == lease.version)).await.unwrap();

    // Request counts: only on a real API server (the audit log).
    let Target::Real(server) = &target else {
        println!("emulator: request counts not checked");
        return;
    };
    member.stop(); // its keep-alive would show in the counts
    let mut audit = LeaseAudit::new(server.audit_log());
    let off = client(&target, KubeOptions { watch_mirror: false, ..options() }).await.scope("mir");
    let _ = audit.take();
    let mirrored = idle_rounds(&df, 20).await;
    let with_mirror = audit.take();
    idle_rounds(&off, 20).await;
    let without = audit.take();
    println!("idle follower, 20 rounds: mirror {with_mirror:?}, no mirror {without:?}");
    assert!(mirrored.iter().all(|e| *e == WatchEvent::Timeout), "nothing changed: {mirrored:?}");
    assert_eq!(with_mirror.values().sum::<u64>(), 0, "an idle follower on the mirror sends nothing: {with_mirror:?}");
    assert!(without.get("list").copied().unwrap_or(0) >= 20, "without the mirror every load LISTs: {without:?}");
    assert!(dl.release(&lease).await.unwrap().is_won());
}

/// A process that writes in many scopes (a renewal per leader per loop) still has its loads
/// served by the mirror: each load waits for its own scope's latest write to come back on
/// the watch, not for every write of the process, and LISTs only if that takes too long.
/// Before, any write of the process made every scope's next load a LIST of the namespace,
/// which at a few hundred scopes buried the API server (notes/scale.md, Kubernetes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_after_own_writes_in_many_scopes_are_served_by_the_mirror() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let target = Target::start_with(KubeApiServerConfig { audit: true, ..KubeApiServerConfig::default() }).await;
    let Target::Real(server) = &target else {
        println!("emulator: request counts need a real API server's audit log; not checked");
        return;
    };
    let leader = client(&target, options()).await;
    let scopes: Vec<KubeDcs> = (0..8).map(|i| leader.scope(&format!("many{i}"))).collect();
    let mut leases = Vec::new();
    for dcs in &scopes {
        leases.push(dcs.acquire(&record("a")).await.unwrap().won().expect("free"));
    }
    // The mirror is up once a load shows the last acquisition.
    load_until(&scopes[7], |v| v.leader.is_some()).await.unwrap();
    let mut audit = LeaseAudit::new(server.audit_log());
    let _ = audit.take();
    let mut loads = 0;
    for _round in 0..3 {
        for (i, dcs) in scopes.iter().enumerate() {
            leases[i] = dcs.renew(&leases[i]).await.unwrap().won().expect("still ours");
            // Our own write in this scope must show, and another scope is read too.
            let view = dcs.load().await.expect("load");
            assert_eq!(view.leader.as_ref().map(|l| &l.version), Some(&leases[i].version), "own renewal shows");
            scopes[(i + 1) % scopes.len()].load().await.expect("load");
            loads += 2;
        }
    }
    let counts = audit.take();
    println!("{loads} loads right after own writes in {} scopes: {counts:?}", scopes.len());
    let lists = counts.get("list").copied().unwrap_or(0);
    assert!(lists * 4 <= loads, "{lists} LISTs for {loads} loads: the mirror did not serve them ({counts:?})");
    for (dcs, lease) in scopes.iter().zip(&leases) {
        assert!(dcs.release(lease).await.unwrap().is_won());
    }
}
