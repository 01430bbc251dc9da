//! Dead members: a fresh reader sees a member gone once its Lease has not been renewed for
//! a ttl (by the API server's clock: `managedFields` time against the LIST answer's `Date`),
//! and the leader deletes member Leases left unrenewed for `MEMBER_REMOVAL_AFTER` ttls. On a
//! real kube-apiserver where one is found (else the emulator).

mod common;

use std::time::Duration;

use common::{NAMESPACE, Target, options, timing_for};
use leasehold::{Dcs, LeaderRecord, MemberRecord};
use leasehold_kube::{KubeClient, MEMBER_REMOVAL_AFTER};

const TTL: u64 = 2;

async fn client(target: &Target) -> KubeClient {
    let kube = target.kube(Some(target.admin_token())).await;
    KubeClient::from_client(kube, NAMESPACE, options(), &timing_for(Duration::from_secs(TTL))).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_readers_see_dead_members_gone_and_the_leader_removes_them() {
    let target = Target::start().await;
    let (dead, alive) = (client(&target).await, client(&target).await);
    dead.scope("pg").publish_member(&MemberRecord::new("a")).await.unwrap();
    alive.scope("pg").publish_member(&MemberRecord::new("b")).await.unwrap();
    let fresh = client(&target).await.scope("pg").load().await.unwrap();
    assert!(fresh.member("a").is_some() && fresh.member("b").is_some(), "both alive: {:?}", fresh.members);
    dead.stop(); // as kill -9: no cleanup, no more keep-alive

    // A reader that never saw the member before (a new process each round) reads it gone
    // once it has not been renewed for a ttl; the live member stays.
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds <= 40, "a fresh reader never saw the dead member gone");
        let view = client(&target).await.scope("pg").load().await.unwrap();
        assert!(view.member("b").is_some(), "the live member is never gone: {:?}", view.members);
        if view.member("a").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(target.object("pg-member-a").await.is_some(), "gone for readers, not deleted yet");

    // The leader's housekeeping deletes it once unrenewed for MEMBER_REMOVAL_AFTER ttls.
    let leader = client(&target).await.scope("pg");
    let record = LeaderRecord { member: "b".into(), token: "t".into(), api_url: None, conn_url: None };
    let mut lease = leader.acquire(&record).await.unwrap().won().expect("free");
    let mut rounds = 0;
    while target.object("pg-member-a").await.is_some() {
        rounds += 1;
        assert!(rounds <= 60, "the leader never removed a member dead for {MEMBER_REMOVAL_AFTER} ttls");
        tokio::time::sleep(Duration::from_millis(500)).await;
        leader.load().await.unwrap();
        lease = leader.renew(&lease).await.unwrap().won().expect("still ours");
    }
    assert!(target.object("pg-member-b").await.is_some(), "the live member's Lease is kept");
    let view = client(&target).await.scope("pg").load().await.unwrap();
    assert!(view.member("b").is_some() && view.member("a").is_none(), "{:?}", view.members);
    assert!(leader.release(&lease).await.unwrap().is_won());
}
