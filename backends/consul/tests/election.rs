//! The election handle's behaviour suite against a real Consul agent (the emulator when none
//! is found; the output says which), ttl 2 s.

mod common;

use std::time::Duration;

use common::{Target, TargetHarness};
use leasehold::testkit::election::{ALL_ELECTION_CHECKS, run_election_suite};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_suite() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let harness = TargetHarness { target: Target::start().await, ttl: Duration::from_secs(2) };
    let report = run_election_suite(&harness).await;
    assert_eq!(report.passed, ALL_ELECTION_CHECKS);
}
