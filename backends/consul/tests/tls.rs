//! HTTPS to a real Consul agent that requires client certificates (`verify_incoming_https`),
//! with a throwaway PKI: the client elects over TLS, and a client without the certificate or
//! trusting another CA is refused with an error that says so. Needs the real agent (the
//! emulator has no TLS); without one the test says so in one line and does not run, and in CI
//! it fails.

mod common;

use std::time::Duration;

use common::{AGENT_SESSION_TTL_MIN, announce, timing};
use leasehold::{CasOutcome, Dcs, LeaderRecord};
use leasehold_consul::testing::{ConsulAgent, ConsulAgentConfig};
use leasehold_consul::{ConsulClient, ConsulOptions, ConsulTls};
use leasehold_test_servers::make_pki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elects_over_https_with_a_client_certificate_and_refuses_without() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    if ConsulAgent::binary().expect("the shared consul is usable").is_none() {
        let line = "consul TLS test: NO consul found (LEASEHOLD_CONSUL_BIN, PATH, ../shared/servers): not run";
        assert!(std::env::var_os("CI").is_none_or(|v| v != "true" && v != "1"), "{line} (CI requires it)");
        announce(line.into());
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let agent = ConsulAgent::start(ConsulAgentConfig {
        session_ttl_min: Some(AGENT_SESSION_TTL_MIN),
        tls: Some(pki.clone()),
        ..ConsulAgentConfig::default()
    })
    .await
    .expect("consul with TLS starts");
    let options = agent.https_options().expect("https options");
    announce(format!("consul TLS test: real agent {} at {}", agent.version(), options.address));

    let client = ConsulClient::connect(options.clone(), &timing()).await.expect("connects over https");
    let dcs = client.scope("tls");
    let record = LeaderRecord { member: "a".into(), token: "t1".into(), api_url: None, conn_url: None };
    let lease = match dcs.acquire(&record).await.expect("acquire over https") {
        CasOutcome::Won(lease) => lease,
        other => panic!("acquire won: {other:?}"),
    };
    let view = dcs.load().await.expect("load over https");
    assert_eq!(view.leader.map(|l| l.epoch), Some(lease.epoch));
    assert!(dcs.renew(&lease).await.expect("renew over https").is_won());
    assert!(dcs.release(&lease).await.expect("release over https").is_won());

    // No client certificate: the agent refuses the handshake.
    let without = ConsulOptions {
        tls: Some(ConsulTls { client_cert: None, client_key: None, ..options.tls.clone().expect("tls") }),
        request_timeout: Duration::from_secs(2),
        ..options.clone()
    };
    let err = ConsulClient::connect(without, &timing()).await.expect_err("no client certificate is refused");
    // The agent's alert arrives as "bad certificate" or as a closed connection, by timing.
    assert!(err.to_string().contains("consul /v1/session/create") && err.to_string().contains("https://"), "{err}");

    // Trusting another CA: the server's certificate is refused.
    let other = tempfile::tempdir().expect("tempdir");
    let other_pki = make_pki(other.path());
    let wrong_ca = ConsulOptions {
        tls: Some(ConsulTls { ca_cert: Some(other_pki.ca.clone()), ..options.tls.clone().expect("tls") }),
        request_timeout: Duration::from_secs(2),
        ..options
    };
    let err = ConsulClient::connect(wrong_ca, &timing()).await.expect_err("an unknown server CA is refused");
    assert!(
        err.to_string().contains("consul") && err.to_string().contains("certificate verify failed"),
        "says why: {err}"
    );
}
