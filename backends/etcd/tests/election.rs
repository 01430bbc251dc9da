//! The election handle's behaviour suite against real etcd (ttl 2 s), and the one-source ttl rule.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{EtcdHarness, init_tracing};
use leasehold::testkit::election::{ALL_ELECTION_CHECKS, run_election_suite};
use leasehold::{Dcs, Election, Timing};
use leasehold_etcd::EtcdClient;
use leasehold_etcd::testing::EtcdServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_suite_on_a_single_node() {
    init_tracing();
    let server = EtcdServer::start().await.expect("etcd starts");
    let harness = EtcdHarness::new(server.options(), server.timing()).await;
    let report = run_election_suite(&harness).await;
    assert_eq!(report.passed, ALL_ELECTION_CHECKS);
}

/// Issue 16: the client and the node take their ttl from one `Timing`; a node with another
/// ttl is refused, naming both values. A fractional ttl is granted rounded up, and the
/// configured value (not the granted one) is what the node must match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_ttl_than_the_client_is_refused() {
    init_tracing();
    let server = EtcdServer::start().await.expect("etcd starts");
    let timing = Timing { ttl: Duration::from_millis(2500), ..server.timing() };
    let client = EtcdClient::connect(server.options(), &timing).await.expect("client connects");
    assert_eq!(client.configured_ttl(), Duration::from_millis(2500));
    assert_eq!(client.lease_ttl(), Duration::from_secs(3), "etcd leases are whole seconds, rounded up");
    let dcs: Arc<dyn Dcs> = Arc::new(client.scope("ttl"));
    assert_eq!(dcs.configured_ttl(), timing.ttl);
    assert_eq!(dcs.bounds().ttl, Duration::from_secs(3));

    let other = Timing { ttl: Duration::from_secs(3), ..timing.clone() };
    let Err(err) = Election::new(dcs.clone(), "n1", other) else { panic!("another ttl is refused") };
    let text = err.to_string();
    assert!(text.contains("3s") && text.contains("2.5s"), "{text}");

    let election = Election::new(dcs, "n1", timing).expect("the client's own timing is accepted");
    let term = election.campaign().await.expect("campaign");
    assert!(term.epoch().0 > 0);
    election.resign().await;
    client.shutdown().await.expect("shutdown revokes the lease");
}

/// `EtcdOptions::member_ttl`: member keys on a lease of their own. A process that leads
/// nothing keeps only that lease alive; its ttl lease lapses, and an acquisition after
/// several idle ttls still wins at once, on a fresh ttl lease, and renews. When the process
/// stops, its leader key goes with the ttl lease while its member record stays on the longer
/// member lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_member_lease_an_idle_process_still_acquires_at_once_and_its_leader_key_expires_first() {
    use leasehold::{CasOutcome, MemberRecord};
    init_tracing();
    let server = EtcdServer::start().await.expect("etcd starts");
    let timing = server.timing();
    let options = leasehold_etcd::EtcdOptions { member_ttl: Some(timing.ttl * 5), ..server.options() };
    let client = EtcdClient::connect(options.clone(), &timing).await.expect("client connects");
    let observer = EtcdClient::connect(server.options(), &timing).await.expect("observer connects");
    let (dcs, seen) = (client.scope("memberlease"), observer.scope("memberlease"));
    dcs.publish_member(&MemberRecord::new("a")).await.expect("publish");
    let first_lease = client.lease_id();
    // Idle for more than the ttl lease lives: only the member lease is kept alive.
    tokio::time::sleep(timing.ttl * 2).await;
    assert!(seen.load().await.expect("load").member("a").is_some(), "the member record lives on its own lease");

    let record = common::leader("a", "a-token");
    // Twenty other scopes acquired within a few milliseconds: every key must land on the one
    // new lease (a lease replaced under keys just attached to it makes their renewals `Lost`).
    let others: Vec<_> = (0..20).map(|i| client.scope(&format!("memberlease-{i}"))).collect();
    let (won, others_won) = tokio::join!(
        dcs.acquire(&record),
        futures::future::join_all(others.iter().enumerate().map(|(i, d)| {
            let record = &record;
            async move {
                // Staggered, so some ask for their keep-alive while others' are being answered.
                tokio::time::sleep(Duration::from_micros(250 * i as u64)).await;
                d.acquire(record).await
            }
        }))
    );
    let lease = match won.expect("acquire after idling is not an error") {
        CasOutcome::Won(lease) => lease,
        CasOutcome::Lost(other) => panic!("nobody else holds the key: {other:?}"),
    };
    assert_ne!(client.lease_id(), first_lease, "the lapsed ttl lease was granted anew");
    for (other, won) in others.iter().zip(others_won) {
        let Ok(CasOutcome::Won(held)) = won else { panic!("a concurrent acquisition failed: {won:?}") };
        let renewed = other.renew(&held).await;
        assert!(matches!(renewed, Ok(CasOutcome::Won(_))), "a key acquired alongside renews: {renewed:?}");
    }
    let mut raw = client.raw();
    let key_lease = |resp: etcd_client::GetResponse| resp.kvs().first().map(|kv| kv.lease());
    let leader_lease = key_lease(raw.get("/service/memberlease/leader", None).await.expect("get"));
    let member_lease = key_lease(raw.get("/service/memberlease/members/a", None).await.expect("get"));
    assert_eq!(leader_lease, Some(client.lease_id()), "the leader key is on the ttl lease");
    assert!(member_lease.is_some() && member_lease != leader_lease, "the member key is on the member lease");
    let mut held = lease;
    for _ in 0..4 {
        tokio::time::sleep(timing.loop_wait).await;
        held = match dcs.renew(&held).await.expect("renew") {
            CasOutcome::Won(lease) => lease,
            CasOutcome::Lost(other) => panic!("renewal lost to {other:?}"),
        };
    }

    client.stop();
    let mut leader_gone_with_member_listed = false;
    for _ in 0..200 {
        let view = seen.load().await.expect("load");
        if view.leader.is_none() {
            leader_gone_with_member_listed = view.member("a").is_some();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(leader_gone_with_member_listed, "the leader key expires with the ttl lease, before the member record");
}

/// A member record is written once per change, also while the lease keeper's round (which
/// re-writes owed member keys) runs at the same moment: an acquisition's keep-alive here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_record_is_written_once_per_change_while_the_keeper_runs() {
    use leasehold::{CasOutcome, MemberRecord};
    init_tracing();
    let server = EtcdServer::start().await.expect("etcd starts");
    let timing = server.timing();
    let client = EtcdClient::connect(server.options(), &timing).await.expect("client connects");
    let holder = EtcdClient::connect(server.options(), &timing).await.expect("holder connects");
    let taken = holder.scope("taken");
    assert!(matches!(taken.acquire(&common::leader("h", "h-token")).await, Ok(CasOutcome::Won(_))));
    let (dcs, other) = (client.scope("once"), client.scope("taken"));
    let (changes, mine) = (40, common::leader("a", "a-token"));
    for position in 1..=changes {
        let record = MemberRecord { position: Some(position), ..MemberRecord::new("a") };
        let (published, _) = tokio::join!(dcs.publish_member(&record), other.acquire(&mine));
        published.expect("publish");
    }
    let mut raw = client.raw();
    let resp = raw.get("/service/once/members/a", None).await.expect("get");
    let version = resp.kvs().first().map(|kv| kv.version()).expect("the member key exists");
    assert_eq!(version, i64::try_from(changes).unwrap(), "one put per change, none twice");
}
