//! The leasehold conformance suite against real ZooKeeper: a standalone server and a
//! three-node ensemble.

use std::sync::Arc;
use std::time::Duration;

use leasehold::testkit::conformance::{self, SuiteReport, run_suite};
use leasehold_zookeeper::testing::{ZkHarness, ZkServer};

/// Asked-for session timeout: 2 s (tickTime 500 ms allows 1 to 10 s).
const TTL: Duration = Duration::from_secs(2);

fn assert_complete(report: &SuiteReport) {
    // ZooKeeper keeps no history, so there is nothing to compact: that one check is skipped.
    let expected: Vec<&str> = conformance::ALL_CHECKS.into_iter().filter(|c| *c != conformance::WATCH_RESYNC).collect();
    assert_eq!(report.passed, expected, "{report}");
    assert_eq!(report.skipped, vec![conformance::WATCH_RESYNC], "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_passes_the_suite() {
    let server = Arc::new(ZkServer::standalone().await.expect("start ZooKeeper"));
    let harness = ZkHarness::new(server, TTL).await.expect("harness");
    let report = run_suite(&harness).await;
    println!("{report}");
    assert_complete(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_passes_the_suite() {
    let server = Arc::new(ZkServer::ensemble().await.expect("start ZooKeeper ensemble"));
    let harness = ZkHarness::new(server, TTL).await.expect("harness");
    let report = run_suite(&harness).await;
    println!("{report}");
    assert_complete(&report);
}
