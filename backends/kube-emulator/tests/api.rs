//! The emulator against the behaviour the Kubernetes API documents, over real HTTP.

use std::time::Duration;

use leasehold_kube_emulator::{AccessToken, Emulator, EmulatorConfig, Fault, GoneStyle, Resource, Verb};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

const TOKEN: &str = "t0ken";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";
const CONFIGMAPS: &str = "/api/v1/namespaces/ns/configmaps";

struct Api {
    emulator: Emulator,
    http: Client,
    token: Option<String>,
}

impl Api {
    fn start(config: EmulatorConfig) -> Api {
        Api {
            emulator: Emulator::start(config).expect("emulator starts"),
            http: Client::new(),
            token: Some(TOKEN.into()),
        }
    }

    fn new() -> Api {
        Api::start(EmulatorConfig::with_token(TOKEN))
    }

    fn with_token(mut self, token: Option<&str>) -> Api {
        self.token = token.map(str::to_string);
        self
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.emulator.url()));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request is answered");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// PATCH with a JSON merge patch.
    async fn merge(&self, path: &str, patch: Value) -> (StatusCode, Value) {
        let mut req = self.http.patch(format!("{}{path}", self.emulator.url()));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let req = req.header("Content-Type", "application/merge-patch+json").body(patch.to_string());
        let resp = req.send().await.expect("request is answered");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn watch(&self, path: &str) -> Watch {
        let mut req = self.http.get(format!("{}{path}", self.emulator.url()));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("watch is answered");
        Watch { status: resp.status(), resp, buf: Vec::new() }
    }
}

struct Watch {
    status: StatusCode,
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Watch {
    /// The next event, or `None` when the stream ends or nothing arrives within 5 s.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).expect("each line is one JSON event"));
            }
            match tokio::time::timeout(Duration::from_secs(5), self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }

    /// The next event that is not a bookmark.
    async fn next_change(&mut self) -> Option<Value> {
        loop {
            let e = self.next().await?;
            if e["type"] != "BOOKMARK" {
                return Some(e);
            }
        }
    }
}

fn lease(name: &str, holder: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "labels": labels},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": "2024-05-01T10:20:30.123456Z"},
    })
}

fn rv(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"].as_str().expect("resourceVersion is a string").to_string()
}

fn assert_status(body: &Value, code: u16, reason: &str) {
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["status"], "Failure", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[tokio::test]
async fn create_get_and_already_exists() {
    let api = Api::new();
    let (code, created) = api.call(Method::POST, LEASES, Some(lease("a", "x", json!({})))).await;
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(created["metadata"]["namespace"], "ns");
    assert!(created["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));
    assert!(created["metadata"]["creationTimestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(created["spec"]["renewTime"], "2024-05-01T10:20:30.123456Z", "fields are kept as sent");

    let (code, got) = api.call(Method::GET, &format!("{LEASES}/a"), None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(got, created);

    let (code, body) = api.call(Method::POST, LEASES, Some(lease("a", "y", json!({})))).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_status(&body, 409, "AlreadyExists");
    assert_eq!(body["details"]["name"], "a");
    assert_eq!(body["details"]["kind"], "leases");

    let (code, body) = api.call(Method::GET, &format!("{LEASES}/missing"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_status(&body, 404, "NotFound");
}

#[tokio::test]
async fn resource_versions_are_one_store_wide_counter_and_replace_needs_the_current_one() {
    let api = Api::new();
    let (_, a) = api.call(Method::POST, LEASES, Some(lease("a", "x", json!({})))).await;
    let (_, cm) =
        api.call(Method::POST, CONFIGMAPS, Some(json!({"metadata": {"name": "c"}, "data": {"k": "v"}}))).await;
    let (a_rv, cm_rv): (u64, u64) = (rv(&a).parse().unwrap(), rv(&cm).parse().unwrap());
    assert_eq!(cm_rv, a_rv + 1, "one counter across resource types");

    let mut next = a.clone();
    next["spec"]["holderIdentity"] = "y".into();
    let (code, replaced) = api.call(Method::PUT, &format!("{LEASES}/a"), Some(next.clone())).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(rv(&replaced), (cm_rv + 1).to_string());
    assert_eq!(replaced["metadata"]["uid"], a["metadata"]["uid"]);

    // The same body again carries the old version: a lost race.
    next["spec"]["holderIdentity"] = "z".into();
    let (code, body) = api.call(Method::PUT, &format!("{LEASES}/a"), Some(next)).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_status(&body, 409, "Conflict");
    let (_, now) = api.call(Method::GET, &format!("{LEASES}/a"), None).await;
    assert_eq!(now["spec"]["holderIdentity"], "y", "a conflicting replace changes nothing");

    // A Lease cannot be replaced without a version (a real server: 422, "must be specified
    // for an update"); a ConfigMap can.
    let mut blind = now.clone();
    blind["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    blind["spec"]["holderIdentity"] = "w".into();
    let (code, body) = api.call(Method::PUT, &format!("{LEASES}/a"), Some(blind)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("must be specified for an update"), "{body}");
    let (_, cm) = api.call(Method::GET, &format!("{CONFIGMAPS}/c"), None).await;
    let mut blind = cm.clone();
    blind["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    blind["data"] = json!({"k": "blind"});
    let (code, body) = api.call(Method::PUT, &format!("{CONFIGMAPS}/c"), Some(blind)).await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // A real API server creates a missing Lease on PUT, even with a resourceVersion in the body.
    let mut missing = lease("nope", "x", json!({}));
    missing["metadata"]["resourceVersion"] = "5".into();
    let (code, body) = api.call(Method::PUT, &format!("{LEASES}/nope"), Some(missing)).await;
    assert_eq!(code, StatusCode::CREATED, "replace of a missing Lease creates it: {body}");
    assert_eq!(body["spec"]["holderIdentity"], "x");
    let cm = json!({"metadata": {"name": "nope"}, "data": {}});
    let (code, body) = api.call(Method::PUT, &format!("{CONFIGMAPS}/nope"), Some(cm)).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "but not a missing ConfigMap: {body}");
    let (code, _) = api.call(Method::PUT, &format!("{LEASES}/a"), Some(lease("b", "x", json!({})))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "the body's name must match the URL");
}

#[tokio::test]
async fn merge_patch_with_a_resource_version_is_compare_and_set_and_never_creates() {
    let api = Api::new();
    let labels = json!({"keep": "me"});
    let (_, a) = api.call(Method::POST, LEASES, Some(lease("a", "x", labels))).await;
    let patch = |rv: &str| json!({"metadata": {"resourceVersion": rv, "annotations": {"k": "v"}}, "spec": {"holderIdentity": null}});
    let (code, patched) = api.merge(&format!("{LEASES}/a"), patch(&rv(&a))).await;
    assert_eq!(code, StatusCode::OK, "{patched}");
    assert!(patched["spec"].get("holderIdentity").is_none(), "null removes a field: {patched}");
    assert_eq!(patched["spec"]["leaseDurationSeconds"], 15, "fields the patch does not name stay");
    assert_eq!(patched["metadata"]["labels"]["keep"], "me");
    assert_eq!(patched["metadata"]["annotations"]["k"], "v");
    assert_ne!(rv(&patched), rv(&a));

    let (code, body) = api.merge(&format!("{LEASES}/a"), patch(&rv(&a))).await;
    assert_eq!(code, StatusCode::CONFLICT, "a stale resourceVersion in the patch: {body}");
    assert_status(&body, 409, "Conflict");
    let (code, body) = api.merge(&format!("{LEASES}/gone"), patch(&rv(&patched))).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "a patch never creates: {body}");
    let (code, _) = api.call(Method::GET, &format!("{LEASES}/gone"), None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, blind) = api.merge(&format!("{LEASES}/a"), json!({"spec": {"holderIdentity": "y"}})).await;
    assert_eq!(code, StatusCode::OK, "without a version the patch is unconditional");
    assert_eq!(blind["spec"]["holderIdentity"], "y");
    assert_eq!(api.emulator.request_counts().patch, 4);
}

#[tokio::test]
async fn list_with_equality_and_set_based_label_selectors() {
    let api = Api::new();
    for (name, scope, role) in
        [("a", "s1", "leader"), ("b", "s1", "member"), ("c", "s2", "leader"), ("d", "s3", "member")]
    {
        let (code, _) =
            api.call(Method::POST, LEASES, Some(lease(name, "x", json!({"scope": scope, "role": role})))).await;
        assert_eq!(code, StatusCode::CREATED);
    }
    let names = |list: &Value| -> Vec<String> {
        list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()).collect()
    };
    let (code, list) = api.call(Method::GET, &format!("{LEASES}?labelSelector=scope%3Ds1"), None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["kind"], "LeaseList");
    assert_eq!(list["metadata"]["resourceVersion"], "4");
    assert_eq!(names(&list), ["a", "b"]);
    let (_, list) =
        api.call(Method::GET, &format!("{LEASES}?labelSelector=scope%20in%20(s1%2Cs3),role!%3Dleader"), None).await;
    assert_eq!(names(&list), ["b", "d"]);
    let (_, list) = api.call(Method::GET, &format!("{LEASES}?labelSelector=scope%20notin%20(s1)"), None).await;
    assert_eq!(names(&list), ["c", "d"]);
    let (_, list) = api.call(Method::GET, &format!("{LEASES}?fieldSelector=metadata.name%3Dc"), None).await;
    assert_eq!(names(&list), ["c"]);
    let (_, list) = api.call(Method::GET, "/apis/coordination.k8s.io/v1/namespaces/other/leases", None).await;
    assert_eq!(names(&list), Vec::<String>::new(), "namespaces are separate");
    let (code, body) = api.call(Method::GET, &format!("{LEASES}?labelSelector=scope%20in%20(s1"), None).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_status(&body, 400, "BadRequest");
}

#[tokio::test]
async fn delete_honours_preconditions() {
    let api = Api::new();
    let (_, a) = api.call(Method::POST, LEASES, Some(lease("a", "x", json!({})))).await;
    let path = format!("{LEASES}/a");
    let stale = json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": "999"}});
    let (code, body) = api.call(Method::DELETE, &path, Some(stale)).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_status(&body, 409, "Conflict");
    let wrong_uid = json!({"preconditions": {"uid": "not-the-uid"}});
    let (code, _) = api.call(Method::DELETE, &path, Some(wrong_uid)).await;
    assert_eq!(code, StatusCode::CONFLICT);
    let ok = json!({"preconditions": {"resourceVersion": rv(&a), "uid": a["metadata"]["uid"]}});
    let (code, deleted) = api.call(Method::DELETE, &path, Some(ok)).await;
    assert_eq!(code, StatusCode::OK);
    // As a real API server: a Success Status naming the object, not the object.
    assert_eq!((deleted["kind"].as_str(), deleted["status"].as_str()), (Some("Status"), Some("Success")));
    assert_eq!(deleted["details"]["name"], "a");
    assert_eq!(deleted["details"]["uid"], a["metadata"]["uid"]);
    let (code, _) = api.call(Method::GET, &path, None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = api.call(Method::DELETE, &path, None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn watch_streams_changes_after_a_version_as_ndjson() {
    let api = Api::new();
    let (_, a) = api.call(Method::POST, LEASES, Some(lease("a", "x", json!({"scope": "s"})))).await;
    let start = rv(&a);
    let (_, b) = api.call(Method::POST, LEASES, Some(lease("b", "x", json!({"scope": "s"})))).await;
    let mut w = api.watch(&format!("{LEASES}?watch=true&labelSelector=scope%3Ds&resourceVersion={start}")).await;
    assert_eq!(w.status, StatusCode::OK);
    // The change made before the watch started but after `start` comes first.
    let e = w.next_change().await.expect("ADDED b");
    assert_eq!((e["type"].as_str(), e["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("b")));
    assert_eq!(e["object"]["kind"], "Lease", "watch event objects carry their kind");

    let mut next = b.clone();
    next["spec"]["holderIdentity"] = "y".into();
    let (_, b2) = api.call(Method::PUT, &format!("{LEASES}/b"), Some(next)).await;
    let e = w.next_change().await.expect("MODIFIED b");
    assert_eq!(e["type"], "MODIFIED");
    assert_eq!(rv(&e["object"]), rv(&b2));

    // Another scope is filtered out; moving out of the selection is a DELETED.
    api.call(Method::POST, LEASES, Some(lease("c", "x", json!({"scope": "t"})))).await;
    let mut moved = b2.clone();
    moved["metadata"]["labels"]["scope"] = "t".into();
    api.call(Method::PUT, &format!("{LEASES}/b"), Some(moved)).await;
    let e = w.next_change().await.expect("b leaves the selection");
    assert_eq!((e["type"].as_str(), e["object"]["metadata"]["name"].as_str()), (Some("DELETED"), Some("b")));

    let before = api.emulator.resource_version();
    api.call(Method::DELETE, &format!("{LEASES}/a"), None).await;
    let e = w.next_change().await.expect("DELETED a");
    assert_eq!(e["type"], "DELETED");
    assert_eq!(rv(&e["object"]), (before + 1).to_string(), "a deletion has its own version");
    assert!(rv(&e["object"]).parse::<u64>().unwrap() > rv(&a).parse::<u64>().unwrap());
}

#[tokio::test]
async fn watch_without_a_version_starts_with_the_current_objects_and_sends_bookmarks() {
    let api = Api::start(EmulatorConfig {
        bookmark_interval: Some(Duration::from_millis(100)),
        ..EmulatorConfig::with_token(TOKEN)
    });
    api.call(Method::POST, LEASES, Some(lease("a", "x", json!({})))).await;
    let mut w = api.watch(&format!("{LEASES}?watch=1&allowWatchBookmarks=true")).await;
    let e = w.next().await.expect("synthetic ADDED");
    assert_eq!(e["type"], "ADDED");
    let e = w.next().await.expect("a bookmark");
    assert_eq!(e["type"], "BOOKMARK");
    assert_eq!(rv(&e["object"]), api.emulator.resource_version().to_string());

    // Without allowWatchBookmarks there are none; timeoutSeconds ends the stream.
    let mut w = api.watch(&format!("{LEASES}?watch=true&resourceVersion=1&timeoutSeconds=1")).await;
    assert_eq!(w.next().await, None, "no events, no bookmarks, and the stream ends");
}

#[tokio::test]
async fn watch_from_a_compacted_version_is_gone() {
    let api = Api::new();
    let (_, a) = api.call(Method::POST, LEASES, Some(lease("a", "x", json!({})))).await;
    api.call(Method::POST, LEASES, Some(lease("b", "x", json!({})))).await;
    let after = api.emulator.compact();
    let mut w = api.watch(&format!("{LEASES}?watch=true&resourceVersion={}", rv(&a))).await;
    assert_eq!(w.status, StatusCode::OK);
    let e = w.next().await.expect("an ERROR event");
    assert_eq!(e["type"], "ERROR");
    assert_status(&e["object"], 410, "Expired");
    assert_eq!(w.next().await, None, "the stream ends after the error");
    // From the compaction point on, watching works.
    let mut w = api.watch(&format!("{LEASES}?watch=true&resourceVersion={after}")).await;
    api.call(Method::POST, LEASES, Some(lease("c", "x", json!({})))).await;
    assert_eq!(w.next_change().await.expect("ADDED c")["type"], "ADDED");

    let api = Api::start(EmulatorConfig {
        gone: GoneStyle::HttpStatus,
        history_limit: 1,
        ..EmulatorConfig::with_token(TOKEN)
    });
    for name in ["a", "b", "c"] {
        api.call(Method::POST, LEASES, Some(lease(name, "x", json!({})))).await;
    }
    let (code, body) = api.call(Method::GET, &format!("{LEASES}?watch=true&resourceVersion=1"), None).await;
    assert_eq!(code, StatusCode::GONE, "the history limit compacts too");
    assert_status(&body, 410, "Expired");
}

#[tokio::test]
async fn bearer_tokens_401_and_403() {
    let config = EmulatorConfig {
        tokens: vec![
            AccessToken::full(TOKEN),
            AccessToken::with_verbs("reader", &[Verb::Get, Verb::List, Verb::Watch]),
        ],
        ..EmulatorConfig::default()
    };
    let api = Api::start(config);
    api.call(Method::POST, LEASES, Some(lease("a", "x", json!({})))).await;
    let anonymous = Api { token: None, ..Api::start(EmulatorConfig::with_token(TOKEN)) };
    let (code, body) = anonymous.call(Method::GET, &format!("{LEASES}/a"), None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_status(&body, 401, "Unauthorized");
    let api = api.with_token(Some("wrong"));
    let (code, _) = api.call(Method::GET, LEASES, None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let api = api.with_token(Some("reader"));
    let (code, got) = api.call(Method::GET, &format!("{LEASES}/a"), None).await;
    assert_eq!(code, StatusCode::OK);
    let (code, body) = api.call(Method::PUT, &format!("{LEASES}/a"), Some(got)).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_status(&body, 403, "Forbidden");
    assert!(body["message"].as_str().unwrap().contains("cannot update resource \"leases\""), "{body}");
}

#[tokio::test]
async fn invalid_objects_are_rejected_like_the_api_server_does() {
    let api = Api::new();
    let (code, body) = api.call(Method::POST, LEASES, Some(lease("Not_Valid", "x", json!({})))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_status(&body, 422, "Invalid");
    let (code, _) = api.call(Method::POST, LEASES, Some(lease("a", "x", json!({"bad key!": "v"})))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    let mut bad_time = lease("a", "x", json!({}));
    bad_time["spec"]["renewTime"] = "2024-05-01T10:20:30Z".into();
    let (code, body) = api.call(Method::POST, LEASES, Some(bad_time)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "MicroTime needs 6 fractional digits: {body}");
    let mut bad_type = lease("a", "x", json!({}));
    bad_type["spec"]["leaseTransitions"] = "3".into();
    let (code, _) = api.call(Method::POST, LEASES, Some(bad_type)).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let big = "x".repeat(300 * 1024);
    let mut fat = lease("a", "x", json!({}));
    fat["metadata"]["annotations"] = json!({"k": big});
    let (code, _) = api.call(Method::POST, LEASES, Some(fat)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "annotations are limited to 256 KiB");
    let (code, _) =
        api.call(Method::POST, CONFIGMAPS, Some(json!({"metadata": {"name": "c"}, "data": {"k": 1}}))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "ConfigMap data values are strings");
    let (code, _) = api.call(Method::POST, LEASES, Some(json!({"kind": "ConfigMap", "metadata": {"name": "x"}}))).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "the kind must match the URL");
    let (code, _) = api.call(Method::PATCH, &format!("{LEASES}/a"), Some(json!({}))).await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE, "PATCH needs a patch media type");
    let (code, body) = api.call(Method::GET, "/apis/apps/v1/namespaces/ns/deployments", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_status(&body, 404, "NotFound");
}

#[tokio::test]
async fn injected_faults_and_request_counts() {
    let api = Api::new();
    api.emulator.inject_faults([Fault::Reject(503), Fault::ApplyThenReject(504)]);
    let (code, _) = api.call(Method::POST, LEASES, Some(lease("a", "x", json!({})))).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(api.emulator.object(Resource::Lease, "ns", "a").is_none(), "a rejected write is not applied");
    let (code, _) = api.call(Method::POST, LEASES, Some(lease("a", "x", json!({})))).await;
    assert_eq!(code, StatusCode::GATEWAY_TIMEOUT);
    assert!(api.emulator.object(Resource::Lease, "ns", "a").is_some(), "this one was applied despite the error");
    api.call(Method::GET, &format!("{LEASES}/a"), None).await;
    let counts = api.emulator.request_counts();
    assert_eq!((counts.create, counts.get, counts.total()), (2, 1, 3));
}
