//! Compatibility with client-go's `tools/leaderelection` on the same Lease.

mod common;

use std::time::Duration;

use common::{NAMESPACE, emulator, kube_client, options};
use k8s_openapi::api::coordination::v1::Lease;
use leasehold::{CasOutcome, Dcs, Epoch, LeaderRecord, Record};
use leasehold_kube::{KubeClient, LEADER_ANNOTATION};
use leasehold_kube_emulator::{Emulator, Resource, micro_time};
use serde_json::{Value, json};

fn record(member: &str, token: &str) -> LeaderRecord {
    LeaderRecord {
        member: member.into(),
        token: token.into(),
        api_url: Some("http://10.0.0.1:8008".into()),
        conn_url: None,
    }
}

fn client(emulator: &Emulator, ttl: u64) -> KubeClient {
    let kube = kube_client(&emulator.url(), Some(common::TOKEN));
    KubeClient::from_client(kube, NAMESPACE, options(Duration::from_secs(ttl))).expect("client")
}

/// The fields of client-go's `coordinationv1.LeaseSpec` (Go struct tags), as JSON names.
const LEASE_SPEC_FIELDS: [&str; 7] = [
    "holderIdentity",
    "leaseDurationSeconds",
    "acquireTime",
    "renewTime",
    "leaseTransitions",
    "preferredHolder",
    "strategy",
];

/// Checks `spec` the way Go's `json.Unmarshal` into `LeaseSpec` would: known names, the
/// right JSON types, MicroTime in `RFC3339Micro` (exactly 6 fractional digits).
fn assert_client_go_spec(spec: &Value) {
    let spec = spec.as_object().expect("spec is an object");
    for key in spec.keys() {
        assert!(LEASE_SPEC_FIELDS.contains(&key.as_str()), "unknown LeaseSpec field {key:?} (client-go would drop it)");
    }
    assert!(spec["holderIdentity"].is_string() || spec.get("holderIdentity").is_none());
    for int in ["leaseDurationSeconds", "leaseTransitions"] {
        let n = spec[int].as_i64().unwrap_or_else(|| panic!("{int} is a JSON integer: {spec:?}"));
        assert!(i32::try_from(n).is_ok(), "{int} fits Go's int32");
    }
    for time in ["acquireTime", "renewTime"] {
        let text = spec[time].as_str().unwrap_or_else(|| panic!("{time} is a string: {spec:?}"));
        micro_time(text).unwrap_or_else(|e| panic!("{time}: {e}"));
        assert!(text.ends_with('Z') && text.len() == "2024-01-01T00:00:00.000000Z".len(), "{time} = {text:?}");
        let parsed: k8s_openapi::jiff::Timestamp = text.parse().expect("a valid timestamp");
        assert!(parsed.as_second() > 1_600_000_000, "{time} is the wall clock, not an epoch offset");
    }
}

#[tokio::test]
async fn a_lease_written_by_this_backend_reads_as_client_go_lease_spec() {
    let emulator = emulator();
    let dcs = client(&emulator, 15).scope("pg");
    let lease = dcs.acquire(&record("pod-a", "tok-1")).await.unwrap().won().expect("free lease is won");
    let stored = emulator.object(Resource::Lease, NAMESPACE, "pg-leader").expect("the leader Lease exists");
    assert_eq!(stored["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(stored["kind"], "Lease");
    let spec = &stored["spec"];
    assert_client_go_spec(spec);
    assert_eq!(spec["holderIdentity"], "pod-a");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], json!(lease.epoch.0));
    let annotation = stored["metadata"]["annotations"][LEADER_ANNOTATION].as_str().expect("leader annotation");
    assert_eq!(LeaderRecord::decode("annotation", annotation.as_bytes()).unwrap(), lease.record);
    // The typed client decodes it too.
    let typed: Lease = serde_json::from_value(stored.clone()).expect("decodes as k8s-openapi Lease");
    assert_eq!(typed.spec.unwrap().holder_identity.as_deref(), Some("pod-a"));

    tokio::time::sleep(Duration::from_millis(20)).await;
    let renewed = dcs.renew(&lease).await.unwrap().won().expect("renew wins");
    let after = emulator.object(Resource::Lease, NAMESPACE, "pg-leader").unwrap();
    assert_client_go_spec(&after["spec"]);
    assert_eq!(after["spec"]["acquireTime"], spec["acquireTime"], "a renewal keeps acquireTime");
    assert_ne!(after["spec"]["renewTime"], spec["renewTime"], "a renewal moves renewTime");
    assert_eq!(after["spec"]["leaseTransitions"], spec["leaseTransitions"], "a renewal is not a transition");
    assert_eq!(after["metadata"]["resourceVersion"].as_str(), Some(renewed.version.to_text().as_str()));

    assert!(dcs.release(&renewed).await.unwrap().is_won());
    let released = emulator.object(Resource::Lease, NAMESPACE, "pg-leader").unwrap();
    assert!(released["spec"]["holderIdentity"].as_str().is_none_or(str::is_empty), "release clears the holder");
    assert_eq!(released["spec"]["leaseTransitions"], spec["leaseTransitions"], "release keeps the fencing counter");
    assert!(released["metadata"]["annotations"].get(LEADER_ANNOTATION).is_none());
}

/// A Lease as client-go's `LeaseLock.Create/Update` writes it: no labels, no annotations.
fn client_go_lease(holder: &str, renew_time: &str, transitions: i32, duration: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "pg-leader", "namespace": NAMESPACE},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": "2000-01-01T00:00:00.000000Z",
            "renewTime": renew_time,
            "leaseTransitions": transitions,
        },
    })
}

#[tokio::test]
async fn a_client_go_holder_is_respected_until_seen_unchanged_for_its_duration() {
    let emulator = emulator();
    let dcs = client(&emulator, 1).scope("pg");
    // renewTime far in the past, as a holder with a skewed clock would write: the observed
    // time rule ignores it.
    emulator
        .put_object(Resource::Lease, NAMESPACE, client_go_lease("other-pod", "2000-01-01T00:00:00.000000Z", 7, 2))
        .unwrap();
    let view = dcs.load().await.unwrap();
    assert!(view.leader.is_none(), "not a leasehold leader");
    assert!(view.problems.is_empty(), "without our labels it is not listed at all");

    // While the other holder keeps renewing (every 0.5 s, duration 2 s), every acquire loses.
    for i in 0..8 {
        let renew = format!("2000-01-01T00:00:{:02}.000000Z", i + 1);
        emulator.put_object(Resource::Lease, NAMESPACE, client_go_lease("other-pod", &renew, 7, 2)).unwrap();
        let outcome = dcs.acquire(&record("pod-a", &format!("t{i}"))).await.unwrap();
        assert_eq!(outcome, CasOutcome::Lost(None), "round {i}: the foreign holder must not be stolen");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let held = emulator.object(Resource::Lease, NAMESPACE, "pg-leader").unwrap();
    assert_eq!(held["spec"]["holderIdentity"], "other-pod");

    // It stops renewing: once seen unchanged for 2 s, the lease is taken with transitions + 1.
    let mut attempts = 0;
    let lease = loop {
        attempts += 1;
        assert!(attempts < 100, "the abandoned lease is never taken over");
        match dcs.acquire(&record("pod-a", "final")).await.unwrap() {
            CasOutcome::Won(lease) => break lease,
            CasOutcome::Lost(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(attempts > 1, "not taken on first sight");
    assert_eq!(lease.epoch, Epoch(8));
    let taken = emulator.object(Resource::Lease, NAMESPACE, "pg-leader").unwrap();
    assert_eq!(taken["spec"]["holderIdentity"], "pod-a");
    assert_eq!(taken["spec"]["leaseTransitions"], 8);
}

#[tokio::test]
async fn a_client_go_takeover_ends_our_lease_and_is_not_attributed_to_our_record() {
    let emulator = emulator();
    let dcs = client(&emulator, 15).scope("pg");
    let lease = dcs.acquire(&record("pod-a", "tok")).await.unwrap().won().unwrap();
    // client-go reads the object, keeps metadata (our labels and annotation) and rewrites the spec.
    let mut object = emulator.object(Resource::Lease, NAMESPACE, "pg-leader").unwrap();
    object["spec"]["holderIdentity"] = "other-pod".into();
    object["spec"]["leaseTransitions"] = json!(lease.epoch.0 + 1);
    emulator.put_object(Resource::Lease, NAMESPACE, object).unwrap();

    let outcome = dcs.renew(&lease).await.unwrap();
    assert_eq!(outcome, CasOutcome::Lost(None), "our renew loses and names no leasehold holder");
    let view = dcs.load().await.unwrap();
    assert!(view.leader.is_none(), "our stale annotation is not read as the new holder's record");
    assert_eq!(view.problems.len(), 1, "the foreign holder is reported: {:?}", view.problems);
    assert!(view.problems[0].reason.contains("token"), "{:?}", view.problems);
    assert_eq!(dcs.acquire(&record("pod-a", "again")).await.unwrap(), CasOutcome::Lost(None));
}
