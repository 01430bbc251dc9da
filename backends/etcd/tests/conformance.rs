//! The leasehold conformance suite against real etcd: a single node and a three-node cluster.

mod common;

use common::{EtcdHarness, init_tracing};
use leasehold::testkit::conformance::{ALL_CHECKS, run_suite};
use leasehold_etcd::testing::{EtcdCluster, EtcdServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_single_node() {
    init_tracing();
    let server = EtcdServer::start().await.expect("etcd starts");
    let harness = EtcdHarness::new(server.options(), server.timing()).await;
    let report = run_suite(&harness).await;
    println!("{report}");
    assert_eq!(report.passed, ALL_CHECKS, "every check passes on one etcd node, none skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_three_node_cluster() {
    init_tracing();
    let cluster = EtcdCluster::start(3).await.expect("etcd cluster starts");
    let harness = EtcdHarness::new(cluster.options(), cluster.timing()).await;
    let report = run_suite(&harness).await;
    println!("{report}");
    assert_eq!(report.passed, ALL_CHECKS, "every check passes on three etcd nodes, none skipped");
}

/// Member keys on a lease of their own (`EtcdOptions::member_ttl`): the process lease then
/// lapses while a process leads nothing, and every acquisition grants it anew first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_a_member_lease() {
    init_tracing();
    let server = EtcdServer::start().await.expect("etcd starts");
    let timing = server.timing();
    let options = leasehold_etcd::EtcdOptions { member_ttl: Some(timing.ttl * 3), ..server.options() };
    let harness = EtcdHarness::new(options, timing).await;
    let report = run_suite(&harness).await;
    println!("{report}");
    assert_eq!(report.passed, ALL_CHECKS, "every check passes with a member lease, none skipped");
}
