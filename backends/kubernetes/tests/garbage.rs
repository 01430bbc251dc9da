//! `KubeDcs::remove_garbage_leader` on a real kube-apiserver (the emulator when none is
//! found; the output says which): it deletes only a held leader Lease whose record does not
//! decode, with resourceVersion and uid preconditions, and elections work again afterwards.

mod common;

use std::time::Duration;

use common::Target;
use leasehold::{CasOutcome, Dcs, GarbageRemoval, LeaderRecord};

const TTL: Duration = Duration::from_secs(5);

fn leader(member: &str, token: &str) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: token.into(), api_url: None, conn_url: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_undecodable_leader_lease_is_removed() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let target = Target::start().await;
    let client = target.client(TTL).await;
    let dcs = client.scope("garbage");
    assert_eq!(dcs.remove_garbage_leader().await.expect("absent"), GarbageRemoval::Absent);

    // A valid leader record, of any member, is never touched.
    let lease = match dcs.acquire(&leader("a", "t1")).await.expect("acquire") {
        CasOutcome::Won(lease) => lease,
        other => panic!("acquire won: {other:?}"),
    };
    assert_eq!(dcs.remove_garbage_leader().await.expect("valid"), GarbageRemoval::Valid);
    assert!(target.object("garbage-leader").await.is_some(), "the valid Lease stays");

    // A foreign holder (client-go writes no leasehold annotation) is a valid leader too.
    let foreign = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "foreign-leader", "labels": {"leasehold.io/scope": "foreign"}},
        "spec": {"holderIdentity": "client-go-pod", "leaseDurationSeconds": 10}
    });
    target.put_object(foreign).await;
    assert_eq!(client.scope("foreign").remove_garbage_leader().await.expect("foreign"), GarbageRemoval::Valid);
    assert!(target.object("foreign-leader").await.is_some(), "the foreign holder's Lease stays");

    // The holder's record edited by hand into garbage: removed, and the old holder learns
    // it lost the key.
    let mut object = target.object("garbage-leader").await.expect("the leader Lease");
    object["metadata"]["annotations"]["leasehold.io/leader"] = serde_json::json!("hand-edited {");
    let stored = target.put_object(object).await;
    let acquired = dcs.acquire(&leader("b", "t2")).await.expect("acquire against garbage");
    assert!(matches!(acquired, CasOutcome::Lost(None)), "a held garbage Lease blocks the key: {acquired:?}");
    let removed = dcs.remove_garbage_leader().await.expect("remove");
    let GarbageRemoval::Removed { version } = removed else { panic!("removed: {removed:?}") };
    assert_eq!(version.to_text(), stored["metadata"]["resourceVersion"].as_str().unwrap(), "the version read");
    assert!(target.object("garbage-leader").await.is_none(), "the Lease is gone");
    assert!(!dcs.renew(&lease).await.expect("renew").is_won(), "the old holder's key is gone");
    assert_eq!(dcs.remove_garbage_leader().await.expect("again"), GarbageRemoval::Absent);

    let acquired = dcs.acquire(&leader("b", "t3")).await.expect("acquire after removal");
    let CasOutcome::Won(next) = acquired else { panic!("the key can be taken again: {acquired:?}") };
    assert!(next.epoch > lease.epoch, "a new epoch: {:?} after {:?}", next.epoch, lease.epoch);

    // A Lease without a holder is no leader key, whatever its annotation holds.
    assert!(matches!(dcs.release(&next).await.expect("release"), CasOutcome::Won(())));
    let mut object = target.object("garbage-leader").await.expect("the released Lease");
    object["metadata"]["annotations"]["leasehold.io/leader"] = serde_json::json!("hand-edited {");
    target.put_object(object).await;
    assert_eq!(dcs.remove_garbage_leader().await.expect("released"), GarbageRemoval::Absent);
    assert!(target.object("garbage-leader").await.is_some(), "a released Lease stays");
    client.shutdown().await.expect("shutdown");
}
