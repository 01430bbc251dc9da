//! The watch-fed mirror (one persistent recursive watch per session) against a real
//! ZooKeeper: what it wakes, and that a renewal served by it sees a deleted leader znode.

use std::time::Duration;

use leasehold::testkit::election::timing_for;
use leasehold::{CasOutcome, ClusterView, ControlKey, Dcs, Expect, Key, LeaderRecord, Lease, MemberRecord, WatchEvent};
use leasehold_test_servers::CutProxy;
use leasehold_zookeeper::testing::{ZkServer, delete_znode, four_letter, test_options};
use leasehold_zookeeper::{ZkClient, ZkDcs, ZkOptions};

const TTL: Duration = Duration::from_secs(4);

fn record(member: &str) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: format!("{member}-token"), api_url: None, conn_url: None }
}

async fn acquire(dcs: &ZkDcs, r: &LeaderRecord) -> Lease {
    match dcs.acquire(r).await {
        Ok(CasOutcome::Won(lease)) => lease,
        other => panic!("acquire: {other:?}"),
    }
}

/// Loads until `done` holds for the view (other clients' writes arrive by watch).
async fn load_until(dcs: &ZkDcs, what: &str, done: impl Fn(&ClusterView) -> bool) -> ClusterView {
    for _ in 0..100 {
        let view = dcs.load().await.expect("load");
        if done(&view) {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not seen within 100 loads");
}

async fn deleted_leader_is_lost(watch_mirror: bool) {
    let server = ZkServer::standalone().await.expect("start ZooKeeper");
    let options = ZkOptions { watch_mirror, ..test_options(&server) };
    let holder = ZkClient::connect(options.clone(), &timing_for(TTL)).await.expect("connect");
    let operator = ZkClient::connect(options.clone(), &timing_for(TTL)).await.expect("connect");
    let dcs = holder.scope("deleted");
    let lease = acquire(&dcs, &record("a")).await;
    // Renewals work, and (with the mirror) start it.
    for _ in 0..3 {
        assert!(dcs.renew(&lease).await.expect("renew").is_won());
    }
    let view = dcs.load().await.expect("load");
    assert_eq!(view.leader.map(|l| l.epoch), Some(lease.epoch));
    delete_znode(&operator, &Key::Leader.path(&options.prefix, "deleted")).await.expect("delete");
    load_until(&dcs, "the holder sees its leader znode deleted", |v| v.leader.is_none()).await;
    match dcs.renew(&lease).await {
        Ok(CasOutcome::Lost(None)) => {}
        other => panic!("renew after the leader znode was deleted: {other:?}"),
    }
    // A new acquisition has a higher epoch, and renews.
    let again = acquire(&dcs, &record("a")).await;
    assert!(again.epoch > lease.epoch);
    assert!(dcs.renew(&again).await.expect("renew").is_won());
    // Renewing the old lease stays Lost: the znode is another acquisition's.
    match dcs.renew(&lease).await {
        Ok(CasOutcome::Lost(Some(current))) => assert_eq!(current.epoch, again.epoch),
        other => panic!("renew of the old lease: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_znode_deleted_by_another_client_makes_the_next_renew_lost() {
    deleted_leader_is_lost(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_mirror_a_deleted_leader_znode_is_lost_too() {
    deleted_leader_is_lost(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_writes_wake_no_watcher_but_a_leader_change_does() {
    let server = ZkServer::standalone().await.expect("start ZooKeeper");
    let leader = ZkClient::connect(test_options(&server), &timing_for(TTL)).await.expect("connect");
    let follower = ZkClient::connect(test_options(&server), &timing_for(TTL)).await.expect("connect");
    let (a, b) = (leader.scope("wakes"), follower.scope("wakes"));
    let lease = acquire(&a, &record("a")).await;
    let before = load_until(&b, "the follower sees the leader", |v| v.leader.is_some()).await;
    let cursor = before.revision.clone().expect("a view has a revision");
    for position in 1..=3u64 {
        a.publish_member(&MemberRecord { position: Some(position), ..MemberRecord::new("a") }).await.expect("publish");
        load_until(&b, "the follower sees the member's new position", |v| {
            v.members.iter().any(|m| m.value.name == "a" && m.value.position == Some(position))
        })
        .await;
    }
    // The follower's mirror has applied three member writes since `cursor`: none wakes it.
    assert_eq!(b.watch(Some(&cursor), Duration::from_millis(300)).await.expect("watch"), WatchEvent::Timeout);
    // A leader change does, also for a waiter that started before it.
    let waiter = tokio::runtime::Handle::current().spawn({
        let b = b.clone();
        async move { b.watch(Some(&cursor), Duration::from_secs(20)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(a.release(&lease).await.expect("release").is_won());
    assert_eq!(waiter.await.expect("waiter").expect("watch"), WatchEvent::Changed);
    let after = b.load().await.expect("load");
    assert!(after.leader.is_none());
    // An unchanged member record is not written again, and still reads back.
    a.publish_member(&MemberRecord { position: Some(3), ..MemberRecord::new("a") }).await.expect("publish");
    let view = load_until(&b, "the member is still there", |v| v.members.iter().any(|m| m.value.name == "a")).await;
    assert_eq!(view.members.iter().find(|m| m.value.name == "a").and_then(|m| m.value.position), Some(3));
}

/// Waits up to 20 s for `done`.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_disconnected_is_read_again_after_reconnecting() {
    let server = ZkServer::standalone().await.expect("start ZooKeeper");
    let proxy = CutProxy::start(server.client_port(0)).expect("proxy");
    let cut_off = ZkOptions { connect: format!("127.0.0.1:{}", proxy.port()), ..test_options(&server) };
    let timing = timing_for(Duration::from_secs(10));
    let client = ZkClient::connect(cut_off, &timing).await.expect("connect");
    let other = ZkClient::connect(test_options(&server), &timing).await.expect("connect");
    let (d, o) = (client.scope("gap"), other.scope("gap"));
    o.publish_member(&MemberRecord::new("o")).await.expect("publish");
    let before = load_until(&d, "the member", |v| v.member("o").is_some()).await;
    let cursor = before.revision.clone().expect("revision");
    let session = client.session_id();

    proxy.cut();
    eventually("the client to notice the cut", || !client.is_connected()).await;
    assert!(
        o.write_control(ControlKey::Failover, Expect::Absent, br#"{"candidate":"o"}"#).await.expect("write").is_won()
    );
    proxy.heal();
    eventually("the client to reconnect", || client.is_connected()).await;
    assert_eq!(client.session_id(), session, "the same session resumed (a reconnect, not an expiry)");

    // The watch cannot know what happened in the gap.
    assert_eq!(d.watch(Some(&cursor), Duration::from_secs(5)).await.expect("watch"), WatchEvent::Resync);
    // Every load from now on shows the write made in the gap, whether from the server or from
    // the mirror once it has read the tree again (a mirror that only re-armed its watch
    // would miss it for good).
    for _ in 0..15 {
        let view = d.load().await.expect("load");
        assert!(view.failover.is_some(), "the failover key written while disconnected: {view:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Packets the server received on the connection of session `session` (from `cons`).
async fn session_packets(server: &ZkServer, session: i64) -> u64 {
    let cons = four_letter(server.client_port(0), "cons").await.expect("cons");
    let sid = format!("sid=0x{session:x},");
    cons.lines()
        .find(|l| l.contains(&sid))
        .and_then(|l| l.split("recved=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("session {sid} in cons: {cons}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_in_scopes_a_process_does_not_use_cost_it_nothing() {
    let server = ZkServer::standalone().await.expect("start ZooKeeper");
    let timing = timing_for(Duration::from_secs(10));
    let watcher = ZkClient::connect(test_options(&server), &timing).await.expect("connect");
    let writer = ZkClient::connect(test_options(&server), &timing).await.expect("connect");
    let mine = watcher.scope("mine");
    let (w_mine, w_other) = (writer.scope("mine"), writer.scope("other"));
    w_mine.publish_member(&MemberRecord::new("w")).await.expect("publish");
    load_until(&mine, "the writer's member", |v| v.member("w").is_some()).await;
    let before = session_packets(&server, watcher.session_id()).await;
    for position in 1..=30u64 {
        let member = MemberRecord { position: Some(position), ..MemberRecord::new("w") };
        w_other.publish_member(&member).await.expect("publish");
    }
    // A change in the watcher's scope after them: once it shows, every earlier event was
    // taken in order.
    let last = MemberRecord { position: Some(1), ..MemberRecord::new("w") };
    w_mine.publish_member(&last).await.expect("publish");
    load_until(&mine, "the writer's new position", |v| v.member("w").is_some_and(|m| m.position == Some(1))).await;
    let after = session_packets(&server, watcher.session_id()).await;
    // Reads of its own scope's change and a few pings, not one read per write elsewhere.
    assert!(after - before < 15, "{} packets for 30 writes in another scope", after - before);
}
