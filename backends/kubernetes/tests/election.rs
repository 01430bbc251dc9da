//! The election handle's behaviour suite against a real kube-apiserver (the emulator when
//! none is found; the output says which), ttl 2 s; the one-source ttl rule; and `shutdown`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{NAMESPACE, Target, TargetHarness, options, timing_for};
use leasehold::testkit::election::{ALL_ELECTION_CHECKS, run_election_suite};
use leasehold::{Dcs, Election, LeaderRecord, MemberRecord};
use leasehold_kube::KubeClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_suite() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let harness = TargetHarness { target: Target::start().await, ttl: Duration::from_secs(2) };
    let report = run_election_suite(&harness).await;
    assert_eq!(report.passed, ALL_ELECTION_CHECKS);
}

/// Issue 16: the client and the node take their ttl from one `Timing`. A fractional ttl is
/// written as whole `leaseDurationSeconds`, rounded up; the node must match the *configured*
/// ttl, and another ttl is refused naming both values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_ttl_than_the_client_is_refused() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let target = Target::start().await;
    let timing = timing_for(Duration::from_millis(2500));
    let kube = target.kube(Some(target.admin_token())).await;
    let client = KubeClient::from_client(kube, NAMESPACE, options(), &timing).expect("client");
    assert_eq!(client.configured_ttl(), Duration::from_millis(2500));
    assert_eq!(client.lease_ttl(), Duration::from_secs(3), "leaseDurationSeconds, rounded up");
    let dcs: Arc<dyn Dcs> = Arc::new(client.scope("ttl"));
    assert_eq!(dcs.configured_ttl(), timing.ttl);
    assert_eq!(dcs.bounds().ttl, Duration::from_secs(3));

    let Err(err) = Election::new(dcs.clone(), "n1", timing_for(Duration::from_secs(3))) else {
        panic!("another ttl is refused")
    };
    let text = err.to_string();
    assert!(text.contains("3s") && text.contains("2.5s"), "{text}");

    let election = Election::new(dcs, "n1", timing).expect("the client's own timing is accepted");
    let term = election.campaign().await.expect("campaign");
    assert!(term.epoch().0 > 0);
    election.resign().await;
    client.shutdown().await.expect("shutdown");
}

/// `shutdown` ends what the process holds at once: its member Lease is deleted and a leader
/// Lease it still holds has its holder cleared, so a fresh reader sees neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_removes_members_and_clears_a_held_leader() {
    let target = Target::start().await;
    let client = target.client(Duration::from_secs(5)).await;
    let dcs = client.scope("bye");
    dcs.publish_member(&MemberRecord::new("a")).await.expect("publish");
    let record = LeaderRecord { member: "a".into(), token: "t".into(), api_url: None, conn_url: None };
    assert!(dcs.acquire(&record).await.expect("acquire").is_won());
    let reader = target.client(Duration::from_secs(5)).await;
    let view = reader.scope("bye").load().await.expect("load");
    assert!(view.member("a").is_some() && view.leader.is_some(), "{view:?}");

    client.shutdown().await.expect("shutdown");
    assert!(dcs.load().await.expect_err("stopped").is_fatal());
    // Another client's writes reach the reader's mirror within the watch latency (the `load`
    // contract), so read until they show, a bounded number of times.
    let mut view = reader.scope("bye").load().await.expect("load");
    for _ in 0..100 {
        if view.member("a").is_none() && view.leader.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        view = reader.scope("bye").load().await.expect("load");
    }
    assert!(view.member("a").is_none(), "the member Lease is deleted: {:?}", view.members);
    assert!(view.leader.is_none(), "the leader Lease is released: {:?}", view.leader);
}
