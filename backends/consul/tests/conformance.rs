//! The leasehold conformance suite against a real Consul agent (the emulator when none is
//! found; the output says which), and against the emulator expiring sessions at the earliest
//! moment Consul allows, which a real agent cannot be made to do.

mod common;

use std::time::Duration;

use common::{EmulatorHarness, Target, TargetHarness, emulator};
use leasehold::testkit::conformance::{ALL_CHECKS, WATCH_RESYNC, run_suite};
use leasehold_consul_emulator::Expiry;

fn expected_passes() -> Vec<&'static str> {
    ALL_CHECKS.into_iter().filter(|c| *c != WATCH_RESYNC).collect()
}

/// ttl 2 s: session TTL 1 s (the agent runs with `session_ttl_min = "1s"`), invalidated
/// between 1 s and 2 s after the last renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let harness = TargetHarness { target: Target::start().await, ttl: Duration::from_secs(2) };
    let report = run_suite(&harness).await;
    println!("{report}");
    assert_eq!(report.passed, expected_passes(), "every check but Resync passes");
    assert_eq!(report.skipped, [WATCH_RESYNC], "Consul has no history to compact");
}

/// Emulator only: sessions invalidated exactly at their TTL, the earliest moment Consul
/// allows (a real agent invalidates somewhere up to twice the TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_the_emulator_expiring_at_ttl() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let harness = EmulatorHarness { emulator: emulator(Expiry::AtTtl), ttl: Duration::from_secs(2) };
    let report = run_suite(&harness).await;
    println!("{report}");
    assert_eq!(report.passed, expected_passes(), "every check but Resync passes");
    assert_eq!(report.skipped, [WATCH_RESYNC]);
}
