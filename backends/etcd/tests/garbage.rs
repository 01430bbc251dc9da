//! `EtcdDcs::remove_garbage_leader` on a real etcd: it deletes only a leader key that does not
//! decode, and only the exact bytes it read.

mod common;

use common::{init_tracing, leader};
use leasehold::{CasOutcome, Dcs};
use leasehold_etcd::testing::{EtcdServer, timing};
use leasehold_etcd::{EtcdClient, GarbageRemoval};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_undecodable_leader_key_is_removed() {
    init_tracing();
    let server = EtcdServer::start().await.expect("etcd starts");
    let options = server.options();
    let client = EtcdClient::connect(options.clone(), &timing()).await.expect("connects");
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
    assert!(matches!(dcs.release(&lease).await, Ok(CasOutcome::Won(()))));

    // A hand-written record that does not decode is removed, and elections work again.
    let raw = common::raw(&options).await;
    let key = format!("{}/garbage/leader", options.prefix);
    raw.kv_client().put(key.as_str(), "hand-written {", None).await.expect("put garbage");
    let outcome = dcs.acquire(&leader("b", "t2")).await.expect("acquire against garbage");
    assert!(matches!(outcome, CasOutcome::Lost(None)), "garbage blocks the key: {outcome:?}");
    assert!(matches!(dcs.remove_garbage_leader().await.expect("remove"), GarbageRemoval::Removed { .. }));
    assert!(raw.kv_client().get(key.as_str(), None).await.expect("get").kvs().is_empty(), "the key is gone");
    let outcome = dcs.acquire(&leader("b", "t3")).await.expect("acquire after removal");
    assert!(outcome.is_won(), "the key can be taken again: {outcome:?}");
}
