//! The leasehold conformance suite against a real kube-apiserver (the emulator when none is
//! found; the test output says which).

mod common;

use std::time::Duration;

use common::{Target, TargetHarness};
use leasehold::testkit::conformance::{ALL_CHECKS, run_suite};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let target = Target::start().await;
    // ttl 2 s: Kubernetes has no server-side expiry, so any whole number of seconds works.
    let harness = TargetHarness { target, ttl: Duration::from_secs(2) };
    let report = run_suite(&harness).await;
    println!("{report}");
    assert_eq!(report.passed, ALL_CHECKS, "every check passes, none skipped");
}
