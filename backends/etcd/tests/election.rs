//! The election handle's behaviour suite against real etcd (ttl 2 s).

mod common;

use std::time::Duration;

use common::{EtcdHarness, init_tracing};
use leasehold::testkit::election::{ALL_ELECTION_CHECKS, run_election_suite};
use leasehold_etcd::EtcdOptions;
use leasehold_etcd::testing::EtcdServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_suite_on_a_single_node() {
    init_tracing();
    let server = EtcdServer::start().await.expect("etcd starts");
    let harness = EtcdHarness::new(EtcdOptions { ttl: Duration::from_secs(2), ..server.options() }).await;
    let report = run_election_suite(&harness).await;
    assert_eq!(report.passed, ALL_ELECTION_CHECKS);
}
