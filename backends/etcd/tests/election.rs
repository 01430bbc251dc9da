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
