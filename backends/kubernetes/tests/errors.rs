//! Error classes: what the caller must do after each kind of failure. On a real
//! kube-apiserver where one is found (token authentication, RBAC); the injected-fault test
//! runs on the emulator, because a real server cannot be made to refuse or to apply-then-fail
//! one chosen write.

mod common;

use std::time::Duration;

use common::{NAMESPACE, TOKEN, Target, kube_client, options, timing_for};
use leasehold::{CasOutcome, ControlKey, Dcs, DcsError, Expect, LeaderRecord};
use leasehold_kube::{ConfigSource, KubeClient, KubeOptions};
use leasehold_kube_emulator::{Emulator, Fault};

fn record(token: &str) -> LeaderRecord {
    LeaderRecord { member: "pod-a".into(), token: token.into(), api_url: None, conn_url: None }
}

fn client(emulator: &Emulator, token: Option<&str>) -> KubeClient {
    let kube = kube_client(&emulator.url(), token);
    KubeClient::from_client(kube, NAMESPACE, options(), &timing_for(Duration::from_secs(5))).expect("client")
}

async fn client_on(target: &Target, token: Option<&str>) -> KubeClient {
    KubeClient::from_client(target.kube(token).await, NAMESPACE, options(), &timing_for(Duration::from_secs(5)))
        .expect("client")
}

#[tokio::test]
async fn unauthorized_and_forbidden_are_fatal_with_a_clear_message() {
    let read = ["get", "list", "watch"].map(String::from).to_vec();
    let target = Target::with_grants(&[("reader", read)]).await;
    for token in [None, Some("wrong")] {
        let dcs = client_on(&target, token).await.scope("pg");
        let err = dcs.load().await.expect_err("no valid token");
        assert!(err.is_fatal(), "{err}");
        let text = err.to_string();
        if token.is_some() || !target.is_real() {
            assert!(text.contains("401") && text.contains("credentials"), "{text}");
        } else {
            // A real server treats a request without credentials as system:anonymous, whom
            // RBAC refuses: 403.
            assert!(text.contains("403"), "{text}");
        }
    }
    let token = target.token("reader");
    let reader = client_on(&target, Some(&token)).await.scope("pg");
    assert!(reader.load().await.is_ok(), "reading is allowed");
    let err = reader.acquire(&record("t")).await.expect_err("creating is not");
    assert!(err.is_fatal(), "{err}");
    assert!(err.to_string().contains("forbidden (403)") && err.to_string().contains("manifests"), "{err}");
}

/// Emulator only: a real server cannot be told to refuse, or to apply and then fail, one
/// chosen write.
#[tokio::test]
async fn failed_writes_are_unknown_or_unavailable_never_silently_lost() {
    let emulator = common::emulator();
    let dcs = client(&emulator, Some(TOKEN)).scope("pg");

    emulator.inject_faults([Fault::Reject(429)]);
    let err = dcs.acquire(&record("t1")).await.expect_err("throttled");
    assert!(err.is_retryable(), "429 is not applied: {err}");

    // The leader write goes through but the answer is an error: the outcome is unknown, and
    // a re-read shows our token (the node's recovery path). The epoch counter write before
    // it is served normally.
    emulator.inject_faults([Fault::Pass, Fault::ApplyThenReject(504)]);
    let err = dcs.acquire(&record("t2")).await.expect_err("answer lost");
    assert!(err.is_outcome_unknown(), "{err}");
    let view = dcs.load().await.unwrap();
    assert_eq!(view.leader.map(|l| l.record.token).as_deref(), Some("t2"));

    emulator.inject_faults([Fault::Reject(500)]);
    let err = dcs.write_control(ControlKey::Config, Expect::Absent, b"{}").await.expect_err("failed write");
    assert!(err.is_outcome_unknown(), "a 5xx on a write may have been applied: {err}");
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let mut target = Target::start().await;
    let dcs = client_on(&target, Some(target.admin_token())).await.scope("pg");
    assert!(dcs.load().await.is_ok());
    match &mut target {
        Target::Real(server) => server.kill(),
        Target::Emulator(_) => target = Target::Emulator(common::emulator()),
    }
    // (With the emulator, the client's server is dropped by the assignment above.)
    let err = dcs.load().await.expect_err("server gone");
    assert!(err.is_retryable(), "{err}");
    let err = dcs.acquire(&record("t")).await.expect_err("server gone");
    assert!(err.is_retryable(), "nothing was sent, so nothing was applied: {err}");
    if let Target::Real(server) = &mut target {
        server.restart().await.expect("the API server starts again");
        let outcome = dcs.acquire(&record("t")).await.expect("served again after the restart");
        assert!(outcome.is_won(), "{outcome:?}");
    }
}

#[tokio::test]
async fn bad_names_values_and_options_are_fatal_and_say_why() {
    let target = Target::start().await;
    let client = client_on(&target, Some(target.admin_token())).await;
    let err = client.scope("Bad_Scope").load().await.expect_err("invalid scope");
    assert!(err.is_fatal() && err.to_string().contains("Bad_Scope"), "{err}");
    let dcs = client.scope("pg");
    let err = dcs.write_control(ControlKey::Config, Expect::Absent, b"\xff\xfe").await.expect_err("not UTF-8");
    assert!(err.is_fatal() && err.to_string().contains("UTF-8"), "{err}");
    let bad = LeaderRecord { member: "a/b".into(), token: "t".into(), api_url: None, conn_url: None };
    assert!(dcs.acquire(&bad).await.expect_err("invalid record").is_fatal());
    let big = format!("{{\"system_id\":\"{}\"}}", "x".repeat(300 * 1024));
    let err = dcs.write_control(ControlKey::Initialize, Expect::Absent, big.as_bytes()).await.expect_err("too big");
    assert!(err.is_fatal() && err.to_string().contains("422"), "annotations are limited to 256 KiB: {err}");

    let short = leasehold::Timing { ttl: Duration::from_millis(500), ..leasehold::Timing::fast() };
    let err = KubeClient::connect(KubeOptions::default(), &short).await.expect_err("ttl below 1 s");
    assert!(err.is_fatal() && err.to_string().contains("timing.ttl"), "{err}");
    let options = KubeOptions {
        config: ConfigSource::Kubeconfig { path: Some("/nonexistent/kubeconfig".into()), context: None },
        ..KubeOptions::default()
    };
    let err = KubeClient::connect(options, &leasehold::Timing::default()).await.expect_err("missing kubeconfig");
    assert!(err.is_fatal() && err.to_string().contains("/nonexistent/kubeconfig"), "{err}");
}

#[tokio::test]
async fn a_stopped_client_refuses_calls() {
    let target = Target::start().await;
    let client = client_on(&target, Some(target.admin_token())).await;
    let dcs = client.scope("pg");
    assert!(matches!(dcs.acquire(&record("t")).await, Ok(CasOutcome::Won(_))));
    client.stop();
    let err: DcsError = dcs.load().await.expect_err("stopped");
    assert!(err.is_fatal(), "{err}");
}
