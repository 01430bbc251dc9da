//! The leasehold conformance suite against the API server emulator, and against a real
//! cluster when `KUBECONFIG` is set.

mod common;

use std::time::Duration;

use common::{ClusterHarness, EmulatorHarness, emulator};
use leasehold::testkit::conformance::{ALL_CHECKS, run_suite};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_the_emulator() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let harness = EmulatorHarness { emulator: emulator(), ttl: Duration::from_secs(2) };
    let report = run_suite(&harness).await;
    println!("{report}");
    assert_eq!(report.passed, ALL_CHECKS, "every check passes on the emulator, none skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_real_cluster() {
    if std::env::var_os("KUBECONFIG").is_none() {
        println!("skipped: KUBECONFIG is not set (namespace from LEASEHOLD_KUBE_NAMESPACE, default \"default\")");
        return;
    }
    let namespace = std::env::var("LEASEHOLD_KUBE_NAMESPACE").unwrap_or_else(|_| "default".into());
    let harness = ClusterHarness { namespace, ttl: Duration::from_secs(5) };
    let report = run_suite(&harness).await;
    println!("{report}");
    assert!(report.passed.len() + report.skipped.len() == ALL_CHECKS.len());
}
