//! The leasehold conformance suite against the Consul emulator, and against a real agent
//! when `LEASEHOLD_CONSUL_ADDR` is set.

mod common;

use std::time::Duration;

use common::{AgentHarness, EmulatorHarness, emulator};
use leasehold::testkit::conformance::{ALL_CHECKS, WATCH_RESYNC, run_suite};
use leasehold_consul::ConsulOptions;
use leasehold_consul_emulator::Expiry;

fn expected_passes() -> Vec<&'static str> {
    ALL_CHECKS.into_iter().filter(|c| *c != WATCH_RESYNC).collect()
}

async fn suite_on(expiry: Expiry) {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    // ttl 2 s: session TTL 1 s, invalidated between 1 s and 2 s after the last renewal.
    let harness = EmulatorHarness { emulator: emulator(expiry), ttl: Duration::from_secs(2) };
    let report = run_suite(&harness).await;
    println!("{report}");
    assert_eq!(report.passed, expected_passes(), "every check but Resync passes");
    assert_eq!(report.skipped, [WATCH_RESYNC], "Consul has no history to compact");
}

/// Sessions invalidated at the earliest moment Consul allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_the_emulator_expiring_at_ttl() {
    suite_on(Expiry::AtTtl).await;
}

/// Sessions invalidated at the latest moment Consul allows (what a server does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_the_emulator_expiring_at_twice_ttl() {
    suite_on(Expiry::AtTwiceTtl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_real_agent() {
    let Ok(address) = std::env::var("LEASEHOLD_CONSUL_ADDR") else {
        println!("skipped: LEASEHOLD_CONSUL_ADDR is not set (optionally LEASEHOLD_CONSUL_TOKEN)");
        return;
    };
    let options = ConsulOptions {
        address,
        token: std::env::var("LEASEHOLD_CONSUL_TOKEN").ok(),
        prefix: "leasehold-conformance".into(),
        // Consul's minimum session TTL is 10 s: ttl 20 s.
        ttl: Duration::from_secs(20),
        ..ConsulOptions::default()
    };
    let report = run_suite(&AgentHarness { options }).await;
    println!("{report}");
    assert_eq!(report.passed, expected_passes());
}
