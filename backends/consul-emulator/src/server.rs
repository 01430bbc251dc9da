//! The HTTP front: routing, ACL tokens, request counting, blocking queries, fault hooks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use crate::config::EmulatorConfig;
use crate::duration::{format_go_duration, parse_go_duration};
use crate::state::{Behavior, KvEntry, NewSession, SessionInfo, State};

/// Consul's KV value limit (`kv_max_value_size`, 512 KiB).
pub const MAX_VALUE_BYTES: usize = 512 * 1024;
/// Default `wait` of a blocking query.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest `wait` Consul honours.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// How many requests the emulator has served, by endpoint (rejected ones included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// `PUT /v1/session/create`.
    pub session_create: u64,
    /// `PUT /v1/session/renew/:id`.
    pub session_renew: u64,
    /// `PUT /v1/session/destroy/:id`.
    pub session_destroy: u64,
    /// `GET /v1/session/info/:id` and `/v1/session/list`.
    pub session_read: u64,
    /// `GET /v1/kv/...` without `index` (including recursive reads).
    pub kv_get: u64,
    /// `GET /v1/kv/...?index=` (blocking queries), counted when they start.
    pub kv_blocking_get: u64,
    /// `PUT /v1/kv/...` (plain, cas, acquire, release).
    pub kv_put: u64,
    /// `DELETE /v1/kv/...`.
    pub kv_delete: u64,
    /// Anything else.
    pub other: u64,
}

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.session_create
            + self.session_renew
            + self.session_destroy
            + self.session_read
            + self.kv_get
            + self.kv_blocking_get
            + self.kv_put
            + self.kv_delete
            + self.other
    }
}

impl std::ops::Sub for RequestCounts {
    type Output = RequestCounts;
    fn sub(self, o: RequestCounts) -> RequestCounts {
        RequestCounts {
            session_create: self.session_create - o.session_create,
            session_renew: self.session_renew - o.session_renew,
            session_destroy: self.session_destroy - o.session_destroy,
            session_read: self.session_read - o.session_read,
            kv_get: self.kv_get - o.kv_get,
            kv_blocking_get: self.kv_blocking_get - o.kv_blocking_get,
            kv_put: self.kv_put - o.kv_put,
            kv_delete: self.kv_delete - o.kv_delete,
            other: self.other - o.other,
        }
    }
}

#[derive(Clone, Copy)]
enum Endpoint {
    SessionCreate,
    SessionRenew,
    SessionDestroy,
    SessionRead,
    KvGet,
    KvBlockingGet,
    KvPut,
    KvDelete,
    Other,
}

#[derive(Default)]
struct Counters([AtomicU64; 9]);

impl Counters {
    fn bump(&self, e: Endpoint) {
        self.0[e as usize].fetch_add(1, Ordering::Relaxed);
    }
    fn snapshot(&self) -> RequestCounts {
        let n = |i: usize| self.0[i].load(Ordering::Relaxed);
        RequestCounts {
            session_create: n(0),
            session_renew: n(1),
            session_destroy: n(2),
            session_read: n(3),
            kv_get: n(4),
            kv_blocking_get: n(5),
            kv_put: n(6),
            kv_delete: n(7),
            other: n(8),
        }
    }
}

/// State shared by every listener generation, the sweeper and the [`Emulator`](crate::Emulator) handle.
pub(crate) struct Shared {
    pub(crate) config: EmulatorConfig,
    state: Mutex<State>,
    /// The index after each change, so blocking queries wake.
    changes: tokio::sync::watch::Sender<u64>,
    counts: Counters,
    /// Blocking queries that should return at once, unchanged.
    pub(crate) early_returns: AtomicU32,
    /// Apply the next acquire, then close the connection instead of answering.
    pub(crate) drop_next_acquire_reply: AtomicBool,
}

impl Shared {
    pub(crate) fn new(config: EmulatorConfig) -> Self {
        let state = State::new(config.clone());
        let (changes, _) = tokio::sync::watch::channel(state.index());
        Shared {
            config,
            state: Mutex::new(state),
            changes,
            counts: Counters::default(),
            early_returns: AtomicU32::new(0),
            drop_next_acquire_reply: AtomicBool::new(false),
        }
    }

    /// Runs `f` on the state and wakes blocking queries if the index moved.
    pub(crate) fn with_state<T>(&self, f: impl FnOnce(&mut State, Instant) -> T) -> T {
        let mut state = self.lock();
        let before = state.index();
        let out = f(&mut state, Instant::now());
        let after = state.index();
        drop(state);
        if after != before {
            self.changes.send_replace(after);
        }
        out
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn counts(&self) -> RequestCounts {
        self.counts.snapshot()
    }
}

/// A request's query string, decoded. Flags without `=` map to "".
fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

fn json_reply(index: Option<u64>, body: &Value) -> Response {
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    add_index(&mut resp, index);
    resp
}

fn add_index(resp: &mut Response, index: Option<u64>) {
    let h = resp.headers_mut();
    if let Some(i) = index {
        h.insert("X-Consul-Index", HeaderValue::from(i));
    }
    h.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    h.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
}

fn entry_json(e: &KvEntry) -> Value {
    let mut v = json!({
        "LockIndex": e.lock_index,
        "Key": e.key,
        "Flags": e.flags,
        "Value": if e.value.is_empty() { Value::Null } else { Value::String(base64::engine::general_purpose::STANDARD.encode(&e.value)) },
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    });
    if let Some(s) = &e.session {
        v["Session"] = Value::String(s.clone());
    }
    v
}

fn session_json(s: &SessionInfo) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        "LockDelay": s.lock_delay.as_nanos() as u64,
        "Behavior": match s.behavior { Behavior::Delete => "delete", Behavior::Release => "release" },
        "TTL": s.ttl.map(format_go_duration).unwrap_or_default(),
        // Consul 1.6's session shape: one `Checks` list.
        "Checks": s.node_checks,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

/// The token a request carries, Consul's three ways, in Consul 1.6's order: the `?token=`
/// parameter wins over the headers.
fn token<'a>(headers: &'a HeaderMap, params: &'a HashMap<String, String>) -> Option<&'a str> {
    if let Some(t) = params.get("token").filter(|t| !t.is_empty()) {
        return Some(t);
    }
    if let Some(t) = headers.get("X-Consul-Token").and_then(|v| v.to_str().ok()) {
        return Some(t);
    }
    if let Some(t) =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim());
    }
    None
}

/// Every request enters here.
pub(crate) async fn handle(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = query(&uri);
    let path = uri.path().to_string();
    let endpoint = endpoint(&method, &path, &params);
    shared.counts.bump(endpoint);
    if !shared.config.tokens.is_empty() {
        match token(&headers, &params) {
            None | Some("") => {
                return text(StatusCode::FORBIDDEN, "Permission denied: anonymous token lacks permission");
            }
            Some(t) if !shared.config.tokens.iter().any(|k| k == t) => {
                return text(StatusCode::FORBIDDEN, "ACL not found");
            }
            Some(_) => {}
        }
    }
    if let Some(dc) = params.get("dc")
        && !dc.is_empty()
        && *dc != shared.config.datacenter
    {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "No path to datacenter");
    }
    if params.contains_key("stale") && params.contains_key("consistent") {
        return text(StatusCode::BAD_REQUEST, "Cannot specify ?stale with ?consistent, conflicting semantics.");
    }
    if let Some(key) = path.strip_prefix("/v1/kv/") {
        let key = percent_decode(key);
        return match method {
            Method::GET => kv_get(&shared, &key, &params).await,
            Method::PUT => kv_put(&shared, &key, &params, body),
            Method::DELETE => kv_delete(&shared, &key, &params),
            m => text(StatusCode::METHOD_NOT_ALLOWED, format!("method {m} not allowed")),
        };
    }
    let put_only = |f: &dyn Fn() -> Response| {
        if method == Method::PUT {
            f()
        } else {
            text(StatusCode::METHOD_NOT_ALLOWED, format!("method {method} not allowed"))
        }
    };
    if path == "/v1/session/create" {
        return put_only(&|| session_create(&shared, &body));
    }
    if let Some(id) = path.strip_prefix("/v1/session/renew/") {
        return put_only(&|| match shared.with_state(|s, now| s.renew_session(id, now)) {
            // A write: Consul sends no X-Consul-Index with it.
            Some(info) => json_reply(None, &json!([session_json(&info)])),
            None => text(StatusCode::NOT_FOUND, format!("Session id '{id}' not found")),
        });
    }
    if let Some(id) = path.strip_prefix("/v1/session/destroy/") {
        return put_only(&|| {
            shared.with_state(|s, now| s.invalidate(id, now));
            json_reply(None, &json!(true))
        });
    }
    if let Some(id) = path.strip_prefix("/v1/session/info/") {
        let (index, info) = shared.with_state(|s, now| (s.index(), s.session(id, now)));
        return json_reply(Some(index), &Value::Array(info.iter().map(session_json).collect()));
    }
    if path == "/v1/session/list" {
        let (index, all) = shared.with_state(|s, now| (s.index(), s.sessions(now)));
        return json_reply(Some(index), &Value::Array(all.iter().map(session_json).collect()));
    }
    if path == "/v1/status/leader" {
        return json_reply(None, &json!("127.0.0.1:8300"));
    }
    if path == "/v1/agent/self" {
        let c = &shared.config;
        return json_reply(
            None,
            &json!({
                "Config": {"Datacenter": c.datacenter, "NodeName": c.node, "Version": "emulator"},
                "DebugConfig": {"SessionTTLMin": format_go_duration(c.session_ttl_min)},
            }),
        );
    }
    text(StatusCode::NOT_FOUND, "Invalid URL path: not a recognized HTTP API endpoint")
}

fn endpoint(method: &Method, path: &str, params: &HashMap<String, String>) -> Endpoint {
    if path.starts_with("/v1/kv/") {
        return match *method {
            Method::GET if params.get("index").is_some_and(|i| i != "0" && !i.is_empty()) => Endpoint::KvBlockingGet,
            Method::GET => Endpoint::KvGet,
            Method::PUT => Endpoint::KvPut,
            Method::DELETE => Endpoint::KvDelete,
            _ => Endpoint::Other,
        };
    }
    match path {
        "/v1/session/create" => Endpoint::SessionCreate,
        "/v1/session/list" => Endpoint::SessionRead,
        p if p.starts_with("/v1/session/renew/") => Endpoint::SessionRenew,
        p if p.starts_with("/v1/session/destroy/") => Endpoint::SessionDestroy,
        p if p.starts_with("/v1/session/info/") => Endpoint::SessionRead,
        _ => Endpoint::Other,
    }
}

fn session_create(shared: &Shared, body: &[u8]) -> Response {
    let req: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("Request decode failed: {e}")),
        }
    };
    let field = |name: &str| req.get(name).filter(|v| !v.is_null());
    let ttl = match field("TTL") {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => match parse_go_duration(s) {
            Ok(d) => Some(d),
            Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("Session TTL '{s}' invalid: {e}")),
        },
        Some(other) => {
            return text(StatusCode::BAD_REQUEST, format!("Request decode failed: TTL {other} is not a string"));
        }
    };
    // Consul's FixupLockDelay: a string is a Go duration; a number below 1000 means seconds,
    // anything else nanoseconds. Absent: 15 s.
    let lock_delay = match field("LockDelay") {
        None => Duration::from_secs(15),
        Some(Value::String(s)) => match parse_go_duration(s) {
            Ok(d) => d,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("Request decode failed: LockDelay: {e}")),
        },
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) if n < 1000 => Duration::from_secs(n),
            Some(n) => Duration::from_nanos(n),
            None => return text(StatusCode::BAD_REQUEST, "Request decode failed: LockDelay is not a duration"),
        },
        Some(_) => return text(StatusCode::BAD_REQUEST, "Request decode failed: LockDelay is not a duration"),
    };
    let behavior = match field("Behavior").and_then(Value::as_str).unwrap_or("release") {
        "release" | "" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("Invalid Behavior setting '{other}'")),
    };
    let names = |v: Option<&Value>| -> Option<Vec<String>> {
        v.and_then(Value::as_array).map(|a| a.iter().filter_map(|c| c.as_str().map(String::from)).collect())
    };
    // As Consul 1.6 (the version the tests run against): `Checks` is the list, and without
    // one the session is tied to the node's serfHealth; `NodeChecks` and `ServiceChecks`
    // (Consul 1.7+) are unknown fields and ignored.
    let node_checks = names(field("Checks")).unwrap_or_else(|| vec!["serfHealth".to_string()]);
    let new = NewSession {
        name: field("Name").and_then(Value::as_str).unwrap_or("").to_string(),
        ttl,
        behavior,
        lock_delay,
        node_checks,
        service_checks: Vec::new(),
    };
    match shared.with_state(|s, now| s.create_session(new, now)) {
        Ok(id) => json_reply(None, &json!({"ID": id})),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.0),
    }
}

fn parse_u64(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, String> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| format!("Invalid {name} index")),
    }
}

async fn kv_get(shared: &Arc<Shared>, key: &str, params: &HashMap<String, String>) -> Response {
    let min_index = match parse_u64(params, "index") {
        Ok(i) => i.unwrap_or(0),
        Err(m) => return text(StatusCode::BAD_REQUEST, m),
    };
    let wait = match params.get("wait") {
        None => DEFAULT_WAIT,
        Some(w) => match parse_go_duration(w) {
            Ok(d) => d.min(MAX_WAIT),
            Err(_) => return text(StatusCode::BAD_REQUEST, "Invalid wait time"),
        },
    };
    let recurse = params.contains_key("recurse");
    let read = |s: &mut State, now: Instant| -> (u64, Vec<KvEntry>) {
        if recurse {
            s.list(key, now)
        } else {
            let (i, e) = s.read(key, now);
            (i, e.into_iter().collect())
        }
    };
    let (mut index, mut entries) = shared.with_state(read);
    if min_index > 0 && index <= min_index {
        let early = shared.early_returns.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if !early {
            let jitter = shared.with_state(|s, _| s.jitter(wait));
            let deadline = tokio::time::Instant::now() + wait + jitter;
            let mut changes = shared.changes.subscribe();
            while index <= min_index {
                match tokio::time::timeout_at(deadline, changes.changed()).await {
                    Ok(Ok(())) => index = shared.with_state(read).0,
                    _ => break,
                }
            }
            (index, entries) = shared.with_state(read);
        }
    }
    let index = index.max(1);
    if entries.is_empty() {
        let mut resp = StatusCode::NOT_FOUND.into_response();
        add_index(&mut resp, Some(index));
        return resp;
    }
    if params.contains_key("raw") && !recurse {
        let mut resp = (StatusCode::OK, entries[0].value.clone()).into_response();
        add_index(&mut resp, Some(index));
        return resp;
    }
    json_reply(Some(index), &Value::Array(entries.iter().map(entry_json).collect()))
}

fn kv_put(shared: &Shared, key: &str, params: &HashMap<String, String>, body: Bytes) -> Response {
    if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    if body.len() > MAX_VALUE_BYTES {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body(terms) too large, max size: {MAX_VALUE_BYTES} bytes. See https://developer.hashicorp.com/consul/docs/agent/config/config-files#kv_max_value_size."
            ),
        );
    }
    let flags = match parse_u64(params, "flags") {
        Ok(f) => f.unwrap_or(0),
        Err(m) => return text(StatusCode::BAD_REQUEST, m),
    };
    let cas = match parse_u64(params, "cas") {
        Ok(c) => c,
        Err(m) => return text(StatusCode::BAD_REQUEST, m),
    };
    let value = body.to_vec();
    // As in Consul's KVS endpoint: acquire and release take precedence over cas.
    let result = if let Some(session) = params.get("acquire") {
        let result = shared.with_state(|s, now| s.acquire(key, value, flags, session, now));
        if result.is_ok() && shared.drop_next_acquire_reply.swap(false, Ordering::SeqCst) {
            tracing::info!(%key, "consul emulator: acquire applied, dropping its reply");
            return dropped_reply();
        }
        result
    } else if let Some(session) = params.get("release") {
        shared.with_state(|s, now| s.release(key, value, flags, session, now))
    } else {
        Ok(shared.with_state(|s, _| s.put(key, value, flags, cas)))
    };
    match result {
        Ok(done) => json_reply(None, &json!(done)),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.0),
    }
}

/// Headers, then the connection breaks before the body: the client never learns the answer.
fn dropped_reply() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("reply dropped by fault hook"))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn kv_delete(shared: &Shared, key: &str, params: &HashMap<String, String>) -> Response {
    let cas = match parse_u64(params, "cas") {
        Ok(c) => c,
        Err(m) => return text(StatusCode::BAD_REQUEST, m),
    };
    if params.contains_key("recurse") {
        shared.with_state(|s, _| s.delete_tree(key));
        return json_reply(None, &json!(true));
    }
    let done = shared.with_state(|s, _| s.delete(key, cas));
    json_reply(None, &json!(done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("x%zz"), "x%zz");
    }
}
