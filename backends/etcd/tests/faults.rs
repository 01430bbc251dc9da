//! Faults of real etcd processes: raft leader killed during leadership, a frozen server past
//! the TTL, restarts under a running watch, compaction the watch missed.
//!
//! Instants below order events (a safety property: who could hold the key when); nothing
//! asserts how fast anything is.
// Tests read the monotonic clock to order events.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{init_tracing, leader};
use etcd_client::{CompactionOptions, GetOptions};
use leasehold::{CasOutcome, ControlKey, Dcs, DcsError, Expect, Lease, MemberRecord, WatchEvent};
use leasehold_etcd::testing::{EtcdCluster, EtcdServer, timing};
use leasehold_etcd::{EtcdClient, EtcdOptions};
use tokio::time::{Instant, sleep};

const STEP: Duration = Duration::from_millis(300);

/// Connects, retrying `Unavailable` (as a daemon does) while the cluster elects a leader.
async fn connect(options: EtcdOptions) -> EtcdClient {
    let mut attempts = 0;
    loop {
        match EtcdClient::connect(options.clone(), &timing()).await {
            Ok(client) => return client,
            Err(e) if e.is_retryable() && attempts < 10 => attempts += 1,
            Err(e) => panic!("client connects: {e}"),
        }
        sleep(STEP).await;
    }
}

async fn must_acquire(dcs: &dyn Dcs, member: &str) -> (Instant, Lease) {
    for _ in 0..50 {
        let started = Instant::now();
        match dcs.acquire(&leader(member, &format!("{member}-token"))).await {
            Ok(CasOutcome::Won(lease)) => return (started, lease),
            Ok(CasOutcome::Lost(_)) | Err(_) => sleep(STEP).await,
        }
    }
    panic!("{member} never acquired the leader key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_raft_leader_during_leadership_never_makes_two_holders() {
    init_tracing();
    let mut cluster = EtcdCluster::start(3).await.expect("cluster starts");
    let (a, b) = (connect(cluster.options()).await, connect(cluster.options()).await);
    let (da, db) = (a.scope("kill"), b.scope("kill"));
    let ttl = da.bounds().ttl;
    let (started, mut lease) = must_acquire(&da, "a").await;
    let first_epoch = lease.epoch;
    let mut belief_end = started + lease.valid_for;

    let raft_leader = cluster.leader().await.expect("a raft leader");
    cluster.kill(raft_leader);
    let killed = Instant::now();

    let mut a_holds = true;
    let mut b_won: Option<Lease> = None;
    while Instant::now() < killed + ttl * 4 {
        if a_holds {
            let started = Instant::now();
            match da.renew(&lease).await {
                Ok(CasOutcome::Won(renewed)) => {
                    assert!(b_won.is_none(), "a renewed after b acquired: two holders");
                    // The keep-alive was sent after `started`, so the lease outlives the
                    // belief; it never reaches past a TTL after the answer.
                    assert!(
                        started + renewed.valid_for <= Instant::now() + ttl,
                        "belief beyond the lease: {renewed:?}"
                    );
                    assert_eq!(renewed.epoch, first_epoch, "renewal keeps the epoch");
                    belief_end = started + renewed.valid_for;
                    lease = renewed;
                }
                Ok(CasOutcome::Lost(_)) => a_holds = false,
                Err(e) if e.is_lease_lost() => a_holds = false,
                Err(e) => tracing::info!(error = %e, "renew failed during the election; a keeps trying"),
            }
        }
        if b_won.is_none() {
            match db.acquire(&leader("b", "b-token")).await {
                Ok(CasOutcome::Won(won)) => {
                    // The key was created before this instant; a's lease (and so a's
                    // belief) must have ended before that.
                    let returned = Instant::now();
                    assert!(returned > belief_end, "b acquired while a could still believe it led");
                    assert!(won.epoch > first_epoch, "a later acquisition has a greater epoch");
                    b_won = Some(won);
                }
                Ok(CasOutcome::Lost(current)) => {
                    if let Some(current) = current {
                        assert_eq!(current.record.member, "a", "only a can hold the key while b has not won");
                    }
                }
                Err(e) => assert!(!e.is_fatal(), "{e}"),
            }
        }
        sleep(STEP).await;
    }

    cluster.restart(raft_leader).await.expect("killed member rejoins");
    let view = db.load().await.expect("load after the restart");
    let holder = view.leader.expect("someone holds the key after the election").record.member;
    match &b_won {
        None => {
            assert_eq!(holder, "a", "leadership kept");
            // Transient errors while the rejoined member catches up are retried, as a node would.
            let mut outcome = da.renew(&lease).await;
            for _ in 0..10 {
                match &outcome {
                    Err(e) if !e.is_lease_lost() && !e.is_fatal() => {
                        tracing::warn!(error = %e, "renew after the rejoin failed; retrying");
                        sleep(STEP).await;
                        outcome = da.renew(&lease).await;
                    }
                    _ => break,
                }
            }
            assert!(matches!(outcome, Ok(CasOutcome::Won(_))), "a still renews after the rejoin: {outcome:?}");
        }
        Some(_) => assert_eq!(holder, "b", "leadership moved"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_etcd_past_the_ttl_ends_belief_and_the_leader_recovers_after() {
    init_tracing();
    let server = EtcdServer::start().await.expect("etcd starts");
    let a = connect(EtcdOptions { request_timeout: Duration::from_secs(1), ..server.options() }).await;
    let da = a.scope("frozen");
    let ttl = da.bounds().ttl;
    da.publish_member(&MemberRecord::new("a")).await.expect("member published");
    let (started, lease) = must_acquire(&da, "a").await;
    let mut belief_end = started + lease.valid_for;

    server.pause().expect("SIGSTOP");
    let paused = Instant::now();
    let mut attempts = 0;
    while Instant::now() < paused + ttl * 2 + Duration::from_secs(1) {
        let started = Instant::now();
        let outcome = da.renew(&lease).await;
        attempts += 1;
        match outcome {
            Ok(CasOutcome::Won(renewed)) => {
                assert!(started < paused, "a renew sent to a frozen etcd won: {renewed:?}");
                belief_end = started + renewed.valid_for;
            }
            Ok(CasOutcome::Lost(v)) => panic!("a frozen etcd cannot answer Lost: {v:?}"),
            Err(e) => assert!(!e.is_fatal(), "{e}"),
        }
        sleep(STEP).await;
    }
    // A node following the belief rule has stopped acting by now: its belief ended while
    // every renewal failed.
    assert!(Instant::now() > belief_end, "belief outlived the outage");
    assert!(attempts >= 2, "renew was tried during the outage");
    server.resume().expect("SIGCONT");

    // Recovery: renew again (etcd may have kept the lease) or, after losing it, re-acquire
    // with a greater epoch; the member key comes back under the new lease either way.
    let mut recovered = None;
    for _ in 0..60 {
        match da.renew(&lease).await {
            Ok(CasOutcome::Won(renewed)) => {
                recovered = Some(renewed);
                break;
            }
            Ok(CasOutcome::Lost(_)) => {
                let (_, again) = must_acquire(&da, "a").await;
                assert!(again.epoch > lease.epoch, "re-acquisition after expiry has a greater epoch");
                recovered = Some(again);
                break;
            }
            Err(e) if e.is_lease_lost() => {
                let (_, again) = must_acquire(&da, "a").await;
                assert!(again.epoch > lease.epoch, "re-acquisition after expiry has a greater epoch");
                recovered = Some(again);
                break;
            }
            Err(_) => sleep(STEP).await,
        }
    }
    let recovered = recovered.expect("the leader recovers after SIGCONT");
    let mut member_back = false;
    for _ in 0..40 {
        let view = da.load().await.expect("load after recovery");
        assert_eq!(view.leader.as_ref().map(|l| l.epoch), Some(recovered.epoch));
        if view.member("a").is_some() {
            member_back = true;
            break;
        }
        sleep(STEP).await;
    }
    assert!(member_back, "the member key is back after the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_across_an_etcd_restart_without_missing_changes() {
    init_tracing();
    let mut server = EtcdServer::start().await.expect("etcd starts");
    let options = server.options();
    let a = connect(options.clone()).await;
    let da = a.scope("restart");
    let before = da.load().await.expect("load");

    // A watch running across the restart sees a change written after it.
    let running = {
        let da = da.clone();
        let revision = before.revision.clone();
        tokio::spawn(async move { da.watch(revision.as_ref(), Duration::from_secs(30)).await })
    };
    sleep(STEP).await;
    server.kill();
    server.restart().await.expect("etcd restarts");
    let b = connect(options.clone()).await;
    let db = b.scope("restart");
    let written = db.write_control(ControlKey::Config, Expect::Absent, br#"{"pause":false}"#).await;
    assert!(matches!(written, Ok(CasOutcome::Won(_))), "{written:?}");
    let event = running.await.expect("watch task");
    assert_eq!(event.expect("watch survives the restart"), WatchEvent::Changed);

    // A watch from the pre-restart revision, opened now, reports the change too.
    let event = da.watch(before.revision.as_ref(), Duration::from_secs(10)).await.expect("watch");
    assert_eq!(event, WatchEvent::Changed);
    // The old client keeps working after the restart.
    assert!(da.load().await.expect("load").config.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_missed_a_compaction_while_disconnected_reports_resync() {
    init_tracing();
    let mut server = EtcdServer::start().await.expect("etcd starts");
    let options = server.options();
    let a = connect(options.clone()).await;
    let da = a.scope("compacted");
    let before = da.load().await.expect("load");
    let running = {
        let da = da.clone();
        let revision = before.revision.clone();
        tokio::spawn(async move { da.watch(revision.as_ref(), Duration::from_secs(30)).await })
    };
    sleep(STEP).await;
    // Writes elsewhere move the revision on; compaction drops the watched revision's history.
    // The running watch is synced, so it sees neither; it must notice when it re-opens.
    let raw = common::raw(&options).await;
    let mut kv = raw.kv_client();
    for i in 0..3 {
        kv.put(format!("/elsewhere/{i}"), "x", None).await.expect("put");
    }
    let now = kv.get("/", Some(GetOptions::new().with_count_only())).await.expect("revision");
    let revision = now.header().expect("header").revision();
    kv.compact(revision, Some(CompactionOptions::new().with_physical())).await.expect("compact");
    drop(kv);
    drop(raw);
    server.kill();
    server.restart().await.expect("etcd restarts");
    let event = running.await.expect("watch task").expect("watch survives the restart");
    assert_eq!(event, WatchEvent::Resync, "history lost across a reconnect is reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_dead_member_resumes_and_sees_writes_made_meanwhile() {
    init_tracing();
    let mut cluster = EtcdCluster::start(3).await.expect("cluster starts");
    // The watcher knows only member 0; the writer only the others.
    let only_first = EtcdOptions { endpoints: vec![cluster.endpoint(0)], ..cluster.options() };
    let others = EtcdOptions { endpoints: vec![cluster.endpoint(1), cluster.endpoint(2)], ..cluster.options() };
    let a = connect(only_first).await;
    let da = a.scope("meanwhile");
    let before = da.load().await.expect("load");
    let running = {
        let da = da.clone();
        let revision = before.revision.clone();
        tokio::spawn(async move { da.watch(revision.as_ref(), Duration::from_secs(30)).await })
    };
    sleep(STEP).await;
    cluster.kill(0);
    let b = connect(others).await;
    // A control key: member records alone wake nobody (they change with every WAL position).
    let written = b.scope("meanwhile").write_control(ControlKey::Config, Expect::Absent, br#"{"pause":false}"#).await;
    assert!(matches!(written, Ok(CasOutcome::Won(_))), "write while member 0 is down: {written:?}");
    cluster.restart(0).await.expect("member 0 rejoins");
    let event = running.await.expect("watch task").expect("watch survives");
    assert_eq!(event, WatchEvent::Changed, "the change made while the watcher's member was down is seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_a_clear_unavailable_error() {
    init_tracing();
    // A port that nothing listens on: start a server, note its endpoint, stop it.
    let mut server = EtcdServer::start().await.expect("etcd starts");
    let options = EtcdOptions { dial_timeout: Duration::from_secs(1), ..server.options() };
    server.kill();
    let err = EtcdClient::connect(options.clone(), &timing()).await.expect_err("nothing listens");
    assert!(matches!(err, DcsError::Unavailable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&options.endpoints[0]), "the message names the endpoint: {text}");
}

/// The mirror's only proof that the member it watches through is not cut off from the
/// cluster is etcd's require-leader rule: a member that has had no raft leader for three
/// election timeouts cancels every stream that asked for one (this crate always asks). With
/// the two other members frozen, member 0 loses its leader: loads must stop being answered
/// from the mirror (they fail, as a range on a leaderless member does) instead of serving the
/// last state for as long as the stream stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_on_a_member_without_a_raft_leader_stops_serving_loads() {
    init_tracing();
    let cluster = EtcdCluster::start(3).await.expect("cluster starts");
    let only_first = EtcdOptions { endpoints: vec![cluster.endpoint(0)], ..cluster.options() };
    let a = connect(only_first).await;
    let da = a.scope("cut");
    // Until the mirror serves loads (a load from it sends no request).
    let mut served_by_mirror = false;
    for _ in 0..100 {
        let before = a.requests();
        da.load().await.expect("load while the cluster is whole");
        if a.requests() == before {
            served_by_mirror = true;
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    assert!(served_by_mirror, "the mirror never served a load");
    cluster.pause(1).expect("SIGSTOP member 1");
    cluster.pause(2).expect("SIGSTOP member 2");
    // Bounded only so a regression ends the test: etcd cancels within about four election
    // timeouts (4 s by default).
    let mut outcome = None;
    for _ in 0..600 {
        match da.load().await {
            Ok(_) => sleep(Duration::from_millis(100)).await,
            Err(e) => {
                outcome = Some(e);
                break;
            }
        }
    }
    cluster.resume(1).expect("SIGCONT member 1");
    cluster.resume(2).expect("SIGCONT member 2");
    let e = outcome.expect("loads kept being answered by a member without a raft leader");
    assert!(e.is_retryable(), "a leaderless member's load fails as unavailable, not fatal: {e}");
}
