//! `ZkDcs::remove_garbage_leader` on a real ZooKeeper: it deletes only a leader znode that does
//! not decode, at the data version it read, and elections work again afterwards.

use std::sync::Arc;
use std::time::Duration;

use leasehold::testkit::conformance::Harness;
use leasehold::testkit::election::timing_for;
use leasehold::{CasOutcome, Dcs, GarbageRemoval, Key, LeaderRecord};
use leasehold_zookeeper::ZkClient;
use leasehold_zookeeper::testing::{ZkHarness, ZkServer};

fn leader(member: &str, token: &str) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: token.into(), api_url: None, conn_url: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_undecodable_leader_znode_is_removed() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let server = Arc::new(ZkServer::standalone().await.expect("start ZooKeeper"));
    let harness = ZkHarness::new(server, Duration::from_secs(4)).await.expect("harness");
    let client =
        ZkClient::connect(harness.options.clone(), &timing_for(Duration::from_secs(4))).await.expect("connect");
    let dcs = client.scope("garbage");
    assert_eq!(dcs.remove_garbage_leader().await.expect("absent"), GarbageRemoval::Absent);

    // A valid leader record, of any member, is never touched.
    let lease = match dcs.acquire(&leader("a", "t1")).await.expect("acquire") {
        CasOutcome::Won(lease) => lease,
        other => panic!("acquire won: {other:?}"),
    };
    assert_eq!(dcs.remove_garbage_leader().await.expect("valid"), GarbageRemoval::Valid);
    let view = dcs.load().await.expect("load");
    assert_eq!(view.leader.map(|l| l.epoch), Some(lease.epoch), "the valid znode stays");

    // Garbage written over the holder's znode (as an operator's `set` would) is removed, and
    // the old holder learns it lost the key.
    harness.write_garbage("garbage", &Key::Leader).await.expect("write garbage");
    let outcome = dcs.acquire(&leader("b", "t2")).await.expect("acquire against garbage");
    assert!(matches!(outcome, CasOutcome::Lost(None)), "garbage blocks the key: {outcome:?}");
    let removed = dcs.remove_garbage_leader().await.expect("remove");
    assert!(matches!(removed, GarbageRemoval::Removed { .. }), "{removed:?}");
    let view = dcs.load().await.expect("load after removal");
    assert!(view.leader.is_none() && view.problems.is_empty(), "the znode is gone: {view:?}");
    assert!(!dcs.renew(&lease).await.expect("renew").is_won(), "the old holder's key is gone");
    assert_eq!(dcs.remove_garbage_leader().await.expect("again"), GarbageRemoval::Absent);

    // A hand-written persistent znode (no session to expire it) goes the same way.
    harness.write_garbage("garbage", &Key::Leader).await.expect("write garbage again");
    assert!(matches!(dcs.remove_garbage_leader().await.expect("remove"), GarbageRemoval::Removed { .. }));
    let outcome = dcs.acquire(&leader("b", "t3")).await.expect("acquire after removal");
    let CasOutcome::Won(next) = outcome else { panic!("the key can be taken again: {outcome:?}") };
    assert!(next.epoch > lease.epoch, "a new epoch: {:?} after {:?}", next.epoch, lease.epoch);
    client.shutdown().await.expect("shutdown");
}
