//! The election handle's behaviour suite against a real ZooKeeper (session timeout 2 s), and
//! the one-source ttl rule.

use std::sync::Arc;
use std::time::Duration;

use leasehold::testkit::election::{ALL_ELECTION_CHECKS, run_election_suite, timing_for};
use leasehold::{Dcs, Election, Timing};
use leasehold_zookeeper::ZkClient;
use leasehold_zookeeper::testing::{ZkConfig, ZkHarness, ZkServer, test_options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_suite_on_a_standalone_server() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let server = Arc::new(ZkServer::standalone().await.expect("start ZooKeeper"));
    let harness = ZkHarness::new(server, Duration::from_secs(2)).await.expect("harness");
    let report = run_election_suite(&harness).await;
    assert_eq!(report.passed, ALL_ELECTION_CHECKS);
}

/// Issue 16: the client and the node take their ttl from one `Timing`; a node with another
/// ttl is refused, naming both values. The server clamps the session timeout (here to at
/// least 4 s); the node must still match the *configured* ttl, and the clamp is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_ttl_than_the_client_is_refused() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let config = ZkConfig { min_session_timeout: Some(Duration::from_secs(4)), ..ZkConfig::new(1) };
    let server = ZkServer::start_with(config).await.expect("start ZooKeeper");
    let timing = timing_for(Duration::from_secs(3));
    let client = ZkClient::connect(test_options(&server), &timing).await.expect("connect");
    assert_eq!(client.configured_ttl(), Duration::from_secs(3));
    assert_eq!(client.lease_ttl(), Duration::from_secs(4), "the server's minimum session timeout");
    assert!(client.ttl_clamped());
    let dcs: Arc<dyn Dcs> = Arc::new(client.scope("ttl"));
    assert_eq!(dcs.configured_ttl(), timing.ttl);
    assert_eq!(dcs.bounds().ttl, Duration::from_secs(4));

    // The store's clamped value is not what the node must match.
    let Err(err) = Election::new(dcs.clone(), "n1", timing_for(Duration::from_secs(4))) else {
        panic!("another ttl is refused")
    };
    let text = err.to_string();
    assert!(text.contains("4s") && text.contains("3s"), "{text}");
    let Err(err) = Election::new(dcs.clone(), "n1", Timing::default()) else { panic!("the default ttl is refused") };
    assert!(err.to_string().contains("30s"), "{err}");

    let election = Election::new(dcs, "n1", timing).expect("the client's own timing is accepted");
    let term = election.campaign().await.expect("campaign");
    assert!(term.epoch().0 > 0);
    election.resign().await;
    client.shutdown().await.expect("shutdown closes the session");
    assert_eq!(client.session_id(), 0, "no session after shutdown");
}
