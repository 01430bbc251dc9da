//! TLS against real ZooKeeper (feature `tls`): a throwaway CA and certificates made at test
//! time, the server on a `secureClientPort` with PEM key and trust stores.
#![cfg(feature = "tls")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use leasehold::testkit::conformance::{self, run_suite};
use leasehold::testkit::election::timing_for;
use leasehold::{CasOutcome, Dcs, DcsError, LeaderRecord, WatchEvent};
use leasehold_zookeeper::testing::{ServerTls, ZkConfig, ZkHarness, ZkServer, test_options};
use leasehold_zookeeper::{ZkClient, ZkOptions, ZkTls};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// Long enough that the connection timeout the client derives from it covers a first TLS
/// handshake with the JVM on a loaded two-core machine (at 2 s, connects were refused there).
const TTL: Duration = Duration::from_secs(6);

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// A CA named `name`, a server certificate for `server_names` and a client certificate, as
/// PEM files in `dir` (prefixed with `name`).
fn make_pki(dir: &Path, name: &str, server_names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("leasehold test CA {name}"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA cert");
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &ca).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    };
    let names = server_names.iter().map(|n| n.to_string()).collect();
    let (server_pem, server_key_pem) = leaf(names, ExtendedKeyUsagePurpose::ServerAuth, "zookeeper");
    let (client_pem, client_key_pem) = leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth, "leasehold");
    let write = |file: &str, text: &str| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, text).expect("write PEM");
        path
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_pem),
        server_key: write("server-key.pem", &server_key_pem),
        client_cert: write("client.pem", &client_pem),
        client_key: write("client-key.pem", &client_key_pem),
    }
}

async fn tls_server(pki: &Pki, require_client_cert: bool) -> ZkServer {
    let tls = ServerTls {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
        ca_file: pki.ca.clone(),
        require_client_cert,
    };
    ZkServer::start_with(ZkConfig { tls: Some(tls), ..ZkConfig::new(1) }).await.expect("ZooKeeper with TLS starts")
}

fn mutual(pki: &Pki) -> ZkTls {
    ZkTls { cert_file: Some(pki.client_cert.clone()), key_file: Some(pki.client_key.clone()), ..ZkTls::new(&pki.ca) }
}

fn record(member: &str, token: &str) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: token.into(), api_url: None, conn_url: None }
}

async fn refused(options: ZkOptions, what: &str) -> DcsError {
    // A bound, so a hang fails the test instead of stalling it; the refusal itself is quick.
    match tokio::time::timeout(Duration::from_secs(60), ZkClient::connect(options, &timing_for(TTL))).await {
        Err(_) => panic!("{what}: connect hung"),
        Ok(Ok(_)) => panic!("{what}: connected"),
        Ok(Err(e)) => {
            println!("{what}: {e}");
            e
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_passes_the_suite_and_refuses_a_missing_certificate_and_a_wrong_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path(), "good", &["127.0.0.1"]);
    let server = Arc::new(tls_server(&pki, true).await);
    let options = ZkOptions { tls: Some(mutual(&pki)), ..test_options(&server) };

    let harness =
        ZkHarness::with_options(server.clone(), options.clone(), timing_for(TTL)).await.expect("mutual TLS connects");
    let report = run_suite(&harness).await;
    println!("{report}");
    let expected: Vec<&str> = conformance::ALL_CHECKS.into_iter().filter(|c| *c != conformance::WATCH_RESYNC).collect();
    assert_eq!(report.passed, expected, "{report}");

    // The server wants a client certificate: without one the handshake is refused, fatally,
    // with the server's alert in the message.
    let anonymous = ZkOptions { tls: Some(ZkTls::new(&pki.ca)), ..options.clone() };
    let err = refused(anonymous, "no client certificate").await;
    let text = err.to_string();
    assert!(err.is_fatal(), "{err:?}");
    assert!(text.contains("TLS") && text.contains("client certificate"), "clear message: {text}");

    // A CA that did not sign the server's certificate: refused, naming the option.
    let other = make_pki(dir.path(), "other", &["127.0.0.1"]);
    let wrong_ca = ZkOptions { tls: Some(ZkTls { ca_file: other.ca.clone(), ..mutual(&pki) }), ..options.clone() };
    let err = refused(wrong_ca, "wrong CA").await;
    let text = err.to_string();
    assert!(err.is_fatal(), "{err:?}");
    assert!(text.contains("UnknownIssuer") && text.contains("tls.ca_file"), "clear message: {text}");

    // A client certificate from another CA: the server refuses it.
    let foreign = ZkTls {
        cert_file: Some(other.client_cert.clone()),
        key_file: Some(other.client_key.clone()),
        ..ZkTls::new(&pki.ca)
    };
    let err = refused(ZkOptions { tls: Some(foreign), ..options.clone() }, "foreign client certificate").await;
    assert!(err.is_fatal() && err.to_string().contains("client certificate"), "{err}");

    // Unreadable or wrong files are fatal and name the option.
    let missing = ZkOptions { tls: Some(ZkTls::new(dir.path().join("nope.pem"))), ..options.clone() };
    let err = refused(missing, "missing CA file").await;
    assert!(err.is_fatal() && err.to_string().contains("tls.ca_file"), "{err}");
    let key_as_ca = ZkOptions { tls: Some(ZkTls::new(&pki.client_key)), ..options.clone() };
    let err = refused(key_as_ca, "a key as CA file").await;
    assert!(err.is_fatal() && err.to_string().contains("tls.ca_file"), "{err}");
    let mismatched = ZkTls { key_file: Some(other.client_key.clone()), ..mutual(&pki) };
    let err = refused(ZkOptions { tls: Some(mismatched), ..options }, "key of another certificate").await;
    assert!(err.is_fatal() && err.to_string().contains("tls.key_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_tls_checks_the_server_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The certificate names `localhost` only.
    let pki = make_pki(dir.path(), "named", &["localhost"]);
    let server = tls_server(&pki, false).await;
    let port = server.secure_port(0).expect("secure port");
    let at = |host: &str, tls: ZkTls| ZkOptions {
        connect: format!("{host}:{port}"),
        tls: Some(tls),
        ..test_options(&server)
    };

    // No client certificate needed; the name matches: acquire, renew, watch, release.
    let client =
        ZkClient::connect(at("localhost", ZkTls::new(&pki.ca)), &timing_for(TTL)).await.expect("one-way TLS connects");
    let dcs = client.scope("tls");
    let view = dcs.load().await.expect("load");
    let lease = match dcs.acquire(&record("a", "t1")).await.expect("acquire") {
        CasOutcome::Won(lease) => lease,
        lost => panic!("acquire on an empty scope: {lost:?}"),
    };
    assert!(matches!(dcs.watch(view.revision.as_ref(), Duration::from_secs(10)).await, Ok(WatchEvent::Changed)));
    let lease = match dcs.renew(&lease).await.expect("renew") {
        CasOutcome::Won(lease) => lease,
        lost => panic!("renew: {lost:?}"),
    };
    assert!(matches!(dcs.release(&lease).await, Ok(CasOutcome::Won(()))));
    assert!(dcs.load().await.expect("load").leader.is_none());
    client.stop();

    // Reached as 127.0.0.1, which the certificate does not name: refused...
    let err = refused(at("127.0.0.1", ZkTls::new(&pki.ca)), "name mismatch").await;
    assert!(err.is_fatal() && err.to_string().contains("not valid for name"), "{err}");
    // ...unless hostname verification is off (the CA is still checked).
    let unverified = ZkTls { verify_hostname: false, ..ZkTls::new(&pki.ca) };
    let client = ZkClient::connect(at("127.0.0.1", unverified.clone()), &timing_for(TTL))
        .await
        .expect("no hostname verification");
    client.scope("tls").load().await.expect("load without hostname verification");
    client.stop();
    let other = make_pki(dir.path(), "other", &["localhost"]);
    let err = refused(at("127.0.0.1", ZkTls { ca_file: other.ca, ..unverified }), "wrong CA, no name check").await;
    assert!(err.is_fatal() && err.to_string().contains("UnknownIssuer"), "{err}");

    // TLS to the plaintext port: the handshake fails, and the message says where to look.
    let plain =
        ZkOptions { connect: format!("127.0.0.1:{}", server.client_port(0)), ..at("localhost", ZkTls::new(&pki.ca)) };
    let err = refused(plain, "TLS to the plaintext port").await;
    assert!(err.to_string().contains("secureClientPort"), "{err}");
}
