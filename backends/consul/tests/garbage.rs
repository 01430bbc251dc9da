//! `ConsulDcs::remove_garbage_leader` on a real Consul agent (the emulator when none is found;
//! the output says which): it deletes only a leader key that does not decode, by a cas delete
//! on the `ModifyIndex` it read, and elections work again afterwards.

mod common;

use common::{PREFIX, Target, garbage_key, timing};
use leasehold::{CasOutcome, Dcs, GarbageRemoval, Key, LeaderRecord};
use leasehold_consul::ConsulClient;

fn leader(member: &str, token: &str) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: token.into(), api_url: None, conn_url: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_undecodable_leader_key_is_removed() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let target = Target::start().await;
    let client = ConsulClient::connect(target.options(), &timing()).await.expect("connect");
    let dcs = client.scope("garbage");
    assert_eq!(dcs.remove_garbage_leader().await.expect("absent"), GarbageRemoval::Absent);

    // A valid leader record, of any member, is never touched.
    let lease = match dcs.acquire(&leader("a", "t1")).await.expect("acquire") {
        CasOutcome::Won(lease) => lease,
        other => panic!("acquire won: {other:?}"),
    };
    assert_eq!(dcs.remove_garbage_leader().await.expect("valid"), GarbageRemoval::Valid);
    let view = dcs.load().await.expect("load");
    assert_eq!(view.leader.map(|l| l.epoch), Some(lease.epoch), "the valid key stays");

    // Garbage written over the holder's key with a plain PUT keeps the holder's session on
    // it, so nobody can acquire the key; removing it unblocks the election.
    let path = format!("/v1/kv/{}", garbage_key(PREFIX, "garbage", &Key::Leader));
    let (status, body) = target.http(reqwest::Method::PUT, &path, Some("hand-written {".into())).await;
    assert_eq!(status, 200, "{body}");
    let (_, raw) = target.http(reqwest::Method::GET, &path, None).await;
    assert!(raw.contains("\"Session\""), "the session still holds the key: {raw}");
    let outcome = dcs.acquire(&leader("b", "t2")).await.expect("acquire against garbage");
    assert!(matches!(outcome, CasOutcome::Lost(None)), "garbage blocks the key: {outcome:?}");
    let removed = dcs.remove_garbage_leader().await.expect("remove");
    assert!(matches!(removed, GarbageRemoval::Removed { .. }), "{removed:?}");
    let (status, _) = target.http(reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 404, "the key is gone");
    assert!(!dcs.renew(&lease).await.expect("renew").is_won(), "the old holder's key is gone");
    assert_eq!(dcs.remove_garbage_leader().await.expect("again"), GarbageRemoval::Absent);

    let outcome = dcs.acquire(&leader("b", "t3")).await.expect("acquire after removal");
    let CasOutcome::Won(next) = outcome else { panic!("the key can be taken again: {outcome:?}") };
    assert!(next.epoch > lease.epoch, "a new epoch: {:?} after {:?}", next.epoch, lease.epoch);
    client.shutdown().await.expect("shutdown");
}
