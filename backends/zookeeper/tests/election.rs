//! The election handle's behaviour suite against a real ZooKeeper (session timeout 2 s).

use std::sync::Arc;
use std::time::Duration;

use leasehold::testkit::election::{ALL_ELECTION_CHECKS, run_election_suite};
use leasehold_zookeeper::testing::{ZkHarness, ZkServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_suite_on_a_standalone_server() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let server = Arc::new(ZkServer::standalone().await.expect("start ZooKeeper"));
    let harness = ZkHarness::new(server, Duration::from_secs(2)).await.expect("harness");
    let report = run_election_suite(&harness).await;
    assert_eq!(report.passed, ALL_ELECTION_CHECKS);
}
