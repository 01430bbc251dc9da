//! TLS with a throwaway CA made at test time, and etcd user authentication.

mod common;

use common::{init_tracing, leader};
use leasehold::{CasOutcome, Dcs, DcsError};
use leasehold_etcd::testing::{EtcdConfig, EtcdServer, ServerTls, make_pki, timing};
use leasehold_etcd::{EtcdClient, EtcdOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates_and_a_throwaway_ca() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let tls = ServerTls {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
        ca_file: pki.ca.clone(),
        client_cert_auth: true,
    };
    let server =
        EtcdServer::start_with(EtcdConfig { tls: Some(tls), ..EtcdConfig::new(1) }).await.expect("etcd starts");
    assert!(server.endpoint().starts_with("https://"));

    let options = EtcdOptions {
        cert_file: Some(pki.client_cert.clone()),
        key_file: Some(pki.client_key.clone()),
        ..server.options()
    };
    let client = EtcdClient::connect(options.clone(), &timing()).await.expect("TLS client with a certificate connects");
    let dcs = client.scope("tls");
    let won = dcs.acquire(&leader("a", "t1")).await.expect("acquire over TLS");
    assert!(won.is_won());
    assert_eq!(dcs.load().await.expect("load").leader.map(|l| l.record.member), Some("a".into()));

    // Without a client certificate the server refuses the handshake: not a success.
    let anonymous = EtcdOptions { cert_file: None, key_file: None, ..options.clone() };
    let err = EtcdClient::connect(anonymous, &timing()).await.expect_err("no client certificate");
    assert!(!err.is_lease_lost(), "{err}");

    // A missing CA file is a fatal error naming the option.
    let missing = EtcdOptions { ca_file: Some(dir.path().join("nope.pem")), ..options };
    let err = EtcdClient::connect(missing, &timing()).await.expect_err("unreadable CA");
    assert!(err.is_fatal() && err.to_string().contains("ca_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_auth_accepts_the_password_and_a_wrong_one_is_fatal() {
    init_tracing();
    let server = EtcdServer::start().await.expect("etcd starts");
    let raw = common::raw(&server.options()).await;
    let mut auth = raw.auth_client();
    auth.user_add("root", "root-secret", None).await.expect("add root");
    auth.user_grant_role("root", "root").await.expect("grant root");
    auth.auth_enable().await.expect("enable auth");

    let good = EtcdOptions { user: Some("root".into()), password: Some("root-secret".into()), ..server.options() };
    let client = EtcdClient::connect(good.clone(), &timing()).await.expect("the right password connects");
    let dcs = client.scope("auth");
    assert!(matches!(dcs.acquire(&leader("a", "t1")).await, Ok(CasOutcome::Won(_))));

    let bad = EtcdOptions { password: Some("wrong".into()), ..good.clone() };
    let err = EtcdClient::connect(bad, &timing()).await.expect_err("a wrong password is refused");
    assert!(matches!(err, DcsError::Fatal { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("authentication failed") && text.contains("password"), "clear message: {text}");

    // No credentials at all on an auth-enabled server: refused, fatal.
    let anonymous = EtcdOptions { user: None, password: None, ..good };
    let err = match EtcdClient::connect(anonymous, &timing()).await {
        Err(e) => e,
        Ok(client) => client.scope("auth").load().await.expect_err("anonymous reads are refused"),
    };
    assert!(err.is_fatal(), "{err:?}");
}
