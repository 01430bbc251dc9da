//! The emulator answers like a real kube-apiserver: the same request sequences go to both
//! and the answers that matter are compared (status codes and reasons, whether the
//! resourceVersion moved, the holder). Needs a real kube-apiserver; prints a line and passes
//! when none is found (there is nothing to compare with).

mod common;

use common::{NAMESPACE, TOKEN, Target};
use kube::client::Body;
use leasehold_kube::testing::{KubeApiServer, KubeApiServerConfig};
use leasehold_kube_emulator::{Emulator, EmulatorConfig};
use serde_json::{Value, json};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/leasehold-test/leases";

/// What is compared of one answer.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    code: u16,
    reason: Option<String>,
    holder: Option<String>,
    /// Whether the object's resourceVersion differs from the one before this request.
    moved: Option<bool>,
    items: Option<usize>,
}

struct Side {
    client: kube::Client,
    /// The resourceVersion of Lease `a` as last seen (`$RV` in bodies).
    rv: String,
    /// The one before it (`$OLD`): stale once `a` has changed.
    old: String,
}

impl Side {
    async fn call(&mut self, method: &str, path: &str, content_type: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| b.to_string().replace("$RV", &self.rv).replace("$OLD", &self.old)).unwrap_or_default();
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("Content-Type", content_type)
            .body(Body::from(body.into_bytes()))
            .expect("request");
        let response = self.client.send(request).await.expect("answered");
        let code = response.status().as_u16();
        let bytes = response.into_body().collect_bytes().await.expect("body");
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let is_status = value["kind"] == "Status";
        let rv = value.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
        let moved = match (&rv, is_status, value["kind"] == "Lease") {
            (Some(rv), false, true) => {
                let moved = *rv != self.rv;
                if moved {
                    self.old = std::mem::replace(&mut self.rv, rv.clone());
                }
                Some(moved)
            }
            _ => None,
        };
        Answer {
            code,
            reason: is_status.then(|| value["reason"].as_str().unwrap_or_default().to_string()),
            holder: value.pointer("/spec/holderIdentity").and_then(Value::as_str).map(str::to_string),
            moved,
            items: value["items"].as_array().map(Vec::len),
        }
    }
}

fn lease(name: &str, holder: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "leasehold", "diff": "yes"}},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 10},
    })
}

fn with_rv(mut object: Value, rv: &str) -> Value {
    object["metadata"]["resourceVersion"] = rv.into();
    object
}

/// The request sequence: (what, method, path, content type, body; `$RV` is the current
/// resourceVersion of Lease `a`).
fn sequence() -> Vec<(&'static str, &'static str, String, &'static str, Option<Value>)> {
    let a = format!("{LEASES}/a");
    let json = "application/json";
    let merge = "application/merge-patch+json";
    vec![
        ("get a missing Lease", "GET", a.clone(), json, None),
        ("PUT of a missing Lease creates it", "PUT", a.clone(), json, Some(with_rv(lease("a", "x"), "5"))),
        ("POST of an existing name", "POST", LEASES.into(), json, Some(lease("a", "y"))),
        ("PUT without a resourceVersion", "PUT", a.clone(), json, Some(lease("a", "y"))),
        ("PUT at the current version, nothing changed", "PUT", a.clone(), json, Some(with_rv(lease("a", "x"), "$RV"))),
        ("PUT at the current version", "PUT", a.clone(), json, Some(with_rv(lease("a", "y"), "$RV"))),
        ("PUT at a stale resourceVersion", "PUT", a.clone(), json, Some(with_rv(lease("a", "z"), "$OLD"))),
        (
            "merge PATCH at a stale version",
            "PATCH",
            a.clone(),
            merge,
            Some(json!({"metadata": {"resourceVersion": "$OLD"}, "spec": {"holderIdentity": "z"}})),
        ),
        (
            "merge PATCH at the current version clearing the holder",
            "PATCH",
            a.clone(),
            merge,
            Some(json!({"metadata": {"resourceVersion": "$RV"}, "spec": {"holderIdentity": null}})),
        ),
        ("merge PATCH without a version", "PATCH", a.clone(), merge, Some(json!({"spec": {"holderIdentity": "w"}}))),
        (
            "merge PATCH of a missing Lease",
            "PATCH",
            format!("{LEASES}/missing"),
            merge,
            Some(json!({"metadata": {"resourceVersion": "$RV"}, "spec": {"holderIdentity": "v"}})),
        ),
        ("PATCH with a JSON body type", "PATCH", a.clone(), json, Some(json!({"spec": {}}))),
        ("LIST by label", "GET", format!("{LEASES}?labelSelector=diff%3Dyes"), json, None),
        (
            "DELETE at a stale version",
            "DELETE",
            a.clone(),
            json,
            Some(json!({"preconditions": {"resourceVersion": "$OLD"}})),
        ),
        (
            "DELETE at the current version",
            "DELETE",
            a.clone(),
            json,
            Some(json!({"preconditions": {"resourceVersion": "$RV"}})),
        ),
        ("DELETE of a missing Lease", "DELETE", a.clone(), json, None),
        (
            "PUT with a resourceVersion recreates the deleted Lease",
            "PUT",
            a.clone(),
            json,
            Some(with_rv(lease("a", "x"), "$RV")),
        ),
        ("LIST by label after the recreate", "GET", format!("{LEASES}?labelSelector=diff%3Dyes"), json, None),
        (
            "invalid duration",
            "POST",
            LEASES.into(),
            json,
            Some(json!({"metadata": {"name": "bad"}, "spec": {"leaseDurationSeconds": "ten"}})),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_answers_lease_requests_like_a_real_api_server() {
    if KubeApiServer::binary().expect("usable").is_none() || std::env::var_os("LEASEHOLD_TEST_EMULATORS").is_some() {
        common::announce("skipped: no real kube-apiserver to compare the emulator with".into());
        return;
    }
    let server = KubeApiServer::start(KubeApiServerConfig::default()).await.expect("kube-apiserver starts");
    server.create_namespace(NAMESPACE).await.expect("namespace");
    let real = Target::Real(server);
    let emulator = Target::Emulator(Emulator::start(EmulatorConfig::with_token(TOKEN)).expect("emulator"));
    let mut sides = [
        Side { client: real.kube(Some(real.admin_token())).await, rv: String::new(), old: String::new() },
        Side { client: emulator.kube(Some(TOKEN)).await, rv: String::new(), old: String::new() },
    ];
    let mut differences = Vec::new();
    for (what, method, path, content_type, body) in sequence() {
        let real = sides[0].call(method, &path, content_type, body.clone()).await;
        let emulated = sides[1].call(method, &path, content_type, body).await;
        println!("{what}: real {real:?}");
        if real != emulated {
            differences.push(format!("{what}:\n  real:     {real:?}\n  emulator: {emulated:?}"));
        }
    }
    // A watch from a version older than the compaction point: HTTP 200 and one ERROR event
    // carrying a 410 Expired Status.
    let old = [sides[0].old.clone(), sides[1].old.clone()];
    for (target, side) in [&real, &emulator].into_iter().zip(sides.iter_mut()) {
        let path = format!("{LEASES}/b");
        side.call("PUT", &path, "application/json", Some(lease("b", "x"))).await;
        match target {
            Target::Real(server) => server.compact().expect("etcdctl compact"),
            Target::Emulator(e) => {
                e.compact();
            }
        }
    }
    let mut watches = Vec::new();
    for (side, old) in sides.iter().zip(&old) {
        let path = format!("{LEASES}?watch=1&timeoutSeconds=1&resourceVersion={old}");
        let request = http::Request::get(path).body(Body::empty()).expect("request");
        let response = side.client.send(request).await.expect("answered");
        let code = response.status().as_u16();
        let bytes = response.into_body().collect_bytes().await.expect("the watch ends after 1 s");
        let first: Value = String::from_utf8_lossy(&bytes)
            .lines()
            .next()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or(Value::Null);
        watches.push((code, first["type"].clone(), first["object"]["code"].clone(), first["object"]["reason"].clone()));
    }
    println!("watch from a compacted version: real {:?}", watches[0]);
    if watches[0] != watches[1] {
        differences.push(format!(
            "watch from a compacted version:\n  real:     {:?}\n  emulator: {:?}",
            watches[0], watches[1]
        ));
    }
    assert_eq!(watches[0].2, 410, "kube-apiserver answers 410 Expired: {:?}", watches[0]);
    assert!(differences.is_empty(), "the emulator differs from kube-apiserver:\n{}", differences.join("\n"));
}
