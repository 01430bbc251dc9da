//! The HTTP front: URL routing, bearer token auth, request counting, and watch streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{AccessToken, EmulatorConfig, Fault, GoneStyle, Verb};
use crate::resource::Resource;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{Event, EventType, ObjectKey, Store, WatchStart, parse_rv};

/// How many requests of each verb the emulator has served (rejected ones included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// GET of one object.
    pub get: u64,
    /// LIST.
    pub list: u64,
    /// WATCH (each watch request counts once, however long it streams).
    pub watch: u64,
    /// POST.
    pub create: u64,
    /// PUT.
    pub update: u64,
    /// DELETE.
    pub delete: u64,
    /// PATCH.
    pub patch: u64,
    /// Anything else (unknown paths, discovery).
    pub other: u64,
}

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.get + self.list + self.watch + self.create + self.update + self.delete + self.patch + self.other
    }

    /// Requests that write (create, update, delete, patch).
    pub fn writes(&self) -> u64 {
        self.create + self.update + self.delete + self.patch
    }
}

impl std::ops::Sub for RequestCounts {
    type Output = RequestCounts;
    fn sub(self, o: RequestCounts) -> RequestCounts {
        RequestCounts {
            get: self.get - o.get,
            list: self.list - o.list,
            watch: self.watch - o.watch,
            create: self.create - o.create,
            update: self.update - o.update,
            delete: self.delete - o.delete,
            patch: self.patch - o.patch,
            other: self.other - o.other,
        }
    }
}

#[derive(Default)]
struct Counters([AtomicU64; 8]);

impl Counters {
    fn bump(&self, verb: Option<Verb>) {
        let i = match verb {
            Some(Verb::Get) => 0,
            Some(Verb::List) => 1,
            Some(Verb::Watch) => 2,
            Some(Verb::Create) => 3,
            Some(Verb::Update) => 4,
            Some(Verb::Delete) => 5,
            Some(Verb::Patch) => 7,
            None => 6,
        };
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RequestCounts {
        let c = |i: usize| self.0[i].load(Ordering::Relaxed);
        RequestCounts {
            get: c(0),
            list: c(1),
            watch: c(2),
            create: c(3),
            update: c(4),
            delete: c(5),
            patch: c(7),
            other: c(6),
        }
    }
}

/// State shared by every request.
pub(crate) struct Shared {
    pub(crate) store: Store,
    config: EmulatorConfig,
    counters: Counters,
    faults: Mutex<Vec<Fault>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Shared {
    pub(crate) fn new(config: EmulatorConfig, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        Shared {
            store: Store::new(config.history_limit, config.watch_channel_capacity),
            config,
            counters: Counters::default(),
            faults: Mutex::new(Vec::new()),
            shutdown,
        }
    }

    pub(crate) fn counts(&self) -> RequestCounts {
        self.counters.snapshot()
    }

    pub(crate) fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner).extend(faults);
    }

    fn take_fault(&self) -> Option<Fault> {
        let mut f = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        (!f.is_empty()).then(|| f.remove(0))
    }
}

/// What a URL addresses.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
}

fn route(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (resource, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => (Resource::ConfigMap, rest),
        ["apis", "coordination.k8s.io", "v1", rest @ ..] => (Resource::Lease, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !ns.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    match rest {
        [plural] if *plural == resource.plural() => Some(Target { resource, namespace, name: None }),
        [plural, name] if *plural == resource.plural() && namespace.is_some() && !name.is_empty() => {
            Some(Target { resource, namespace, name: Some(name.to_string()) })
        }
        _ => None,
    }
}

fn verb_of(method: &Method, target: &Target, query: &HashMap<String, String>) -> Option<Verb> {
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (method, target.name.is_some()) {
        (&Method::GET, true) => Some(Verb::Get),
        (&Method::GET, false) if watching => Some(Verb::Watch),
        (&Method::GET, false) => Some(Verb::List),
        (&Method::POST, false) if target.namespace.is_some() => Some(Verb::Create),
        (&Method::PUT, true) => Some(Verb::Update),
        (&Method::DELETE, true) => Some(Verb::Delete),
        (&Method::PATCH, true) => Some(Verb::Patch),
        _ => None,
    }
}

fn authorize(config: &EmulatorConfig, headers: &HeaderMap, verb: Verb, target: &Target) -> Result<(), ApiError> {
    if config.tokens.is_empty() {
        return Ok(());
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = presented.and_then(|t| config.tokens.iter().find(|a| a.token == t)) else {
        return Err(ApiError::unauthorized());
    };
    if allows(token, verb, target) {
        return Ok(());
    }
    let subject = match &target.name {
        Some(name) => format!("{} {name:?}", target.resource.qualified()),
        None => target.resource.qualified(),
    };
    let scope = match &target.namespace {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".into(),
    };
    Err(ApiError::forbidden(format!(
        "{subject} is forbidden: User {:?} cannot {} resource {:?} in API group {:?} {scope}",
        token.user,
        verb.as_str(),
        target.resource.plural(),
        target.resource.group()
    )))
}

fn allows(token: &AccessToken, verb: Verb, target: &Target) -> bool {
    token.verbs.contains(&verb)
        && token.resources.as_ref().is_none_or(|r| r.contains(&target.resource))
        && token
            .namespaces
            .as_ref()
            .is_none_or(|allowed| target.namespace.as_ref().is_some_and(|ns| allowed.contains(ns)))
}

fn json_response(code: StatusCode, value: &Value) -> Response {
    (code, axum::Json(value)).into_response()
}

/// The single entry point: routes by path and method.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path() == "/version" && method == Method::GET {
        shared.counters.bump(None);
        return json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-leasehold-emulator", "platform": "emulator"}),
        );
    }
    let query = Query::<HashMap<String, String>>::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let Some(target) = route(uri.path()) else {
        shared.counters.bump(None);
        return ApiError {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: None,
        }
        .into_response();
    };
    let verb = verb_of(&method, &target, &query);
    shared.counters.bump(verb);
    let Some(verb) = verb else { return ApiError::method_not_allowed().into_response() };
    if let Err(e) = authorize(&shared.config, &headers, verb, &target) {
        return e.into_response();
    }
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    match serve(&shared, verb, target, query, body, content_type) {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn serve(
    shared: &Arc<Shared>,
    verb: Verb,
    target: Target,
    query: HashMap<String, String>,
    body: Bytes,
    content_type: Option<&str>,
) -> Result<Response, ApiError> {
    let resource = target.resource;
    let key = |name: String| ObjectKey { resource, namespace: target.namespace.clone().unwrap_or_default(), name };
    let fault = if matches!(verb, Verb::Create | Verb::Update | Verb::Delete | Verb::Patch) {
        shared.take_fault()
    } else {
        None
    };
    if let Some(Fault::Reject(code)) = fault {
        return Err(fault_error(code));
    }
    let answer = match verb {
        Verb::Get => shared.store.get(&key(target.name.unwrap_or_default()))?,
        Verb::List => {
            let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
                .map_err(ApiError::bad_request)?;
            let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))
                .map_err(ApiError::bad_request)?;
            let (rv, items) = shared.store.list(resource, target.namespace.as_deref(), |o| {
                labels.matches(o.pointer("/metadata/labels").and_then(Value::as_object)) && fields.matches(o)
            });
            // The API server leaves kind and apiVersion out of list items.
            let items: Vec<Value> = items
                .into_iter()
                .map(|mut o| {
                    if let Some(m) = o.as_object_mut() {
                        m.remove("kind");
                        m.remove("apiVersion");
                    }
                    o
                })
                .collect();
            json!({
                "kind": resource.list_kind(),
                "apiVersion": resource.api_version(),
                "metadata": {"resourceVersion": rv.to_string()},
                "items": items,
            })
        }
        Verb::Watch => return watch(shared, target, &query),
        Verb::Create => {
            let object =
                shared.store.create(resource, target.namespace.as_deref().unwrap_or_default(), parse_body(&body)?)?;
            if let Some(Fault::ApplyThenReject(code)) = fault {
                return Err(fault_error(code));
            }
            return Ok(json_response(StatusCode::CREATED, &object));
        }
        Verb::Update => {
            let (object, created) =
                shared.store.replace_or_create(&key(target.name.unwrap_or_default()), parse_body(&body)?)?;
            if let Some(Fault::ApplyThenReject(code)) = fault {
                return Err(fault_error(code));
            }
            let code = if created { StatusCode::CREATED } else { StatusCode::OK };
            return Ok(json_response(code, &object));
        }
        Verb::Patch => {
            let merge = content_type.is_some_and(|t| {
                t.starts_with("application/merge-patch+json") || t.starts_with("application/strategic-merge-patch+json")
            });
            if !merge {
                return Err(ApiError::unsupported_media_type(content_type.unwrap_or_default()));
            }
            shared.store.patch(&key(target.name.unwrap_or_default()), &parse_body(&body)?)?
        }
        Verb::Delete => {
            let options = if body.is_empty() { Value::Null } else { parse_body(&body)? };
            let pre = options.get("preconditions");
            let uid = pre.and_then(|p| p.get("uid")).and_then(Value::as_str);
            let rv = pre.and_then(|p| p.get("resourceVersion")).and_then(Value::as_str);
            let deleted = shared.store.delete(&key(target.name.unwrap_or_default()), uid, rv)?;
            // A real API server answers a DELETE of a Lease or ConfigMap (no graceful
            // deletion, no finalizers left) with a Success Status, not the object.
            json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": deleted.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
                    "group": resource.group(),
                    "kind": resource.plural(),
                    "uid": deleted.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
                },
            })
        }
    };
    if let Some(Fault::ApplyThenReject(code)) = fault {
        return Err(fault_error(code));
    }
    Ok(json_response(StatusCode::OK, &answer))
}

fn fault_error(code: u16) -> ApiError {
    let reason = match code {
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    };
    ApiError { code, reason, message: format!("injected fault: {code} {reason}"), details: None }
}

/// The filter of one watch request.
struct WatchFilter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl WatchFilter {
    fn selects(&self, object: &Value) -> bool {
        self.labels.matches(object.pointer("/metadata/labels").and_then(Value::as_object))
            && self.fields.matches(object)
    }

    /// The event a watcher with this filter sees, if any: an object moving into the
    /// selection is ADDED, one moving out is DELETED (as the watch cache reports it).
    fn render(&self, event: &Event) -> Option<Value> {
        let now = self.selects(&event.object);
        let before = event.previous.as_ref().map(|p| self.selects(p));
        let kind = match (event.kind, before, now) {
            (EventType::Modified, Some(true), true) => EventType::Modified,
            (EventType::Modified, Some(false) | None, true) => EventType::Added,
            (EventType::Modified, Some(true), false) => EventType::Deleted,
            (EventType::Added | EventType::Deleted, _, true) => event.kind,
            _ => return None,
        };
        Some(json!({"type": kind.as_str(), "object": event.object}))
    }
}

fn line(value: &Value) -> Bytes {
    let mut text = value.to_string();
    text.push('\n');
    Bytes::from(text)
}

fn watch(shared: &Arc<Shared>, target: Target, query: &HashMap<String, String>) -> Result<Response, ApiError> {
    if query.get("sendInitialEvents").is_some_and(|v| v == "true") {
        return Err(ApiError::bad_request(
            "sendInitialEvents (streaming lists) is not supported by this emulator".into(),
        ));
    }
    let filter = WatchFilter {
        labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))
            .map_err(ApiError::bad_request)?,
        fields: FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))
            .map_err(ApiError::bad_request)?,
    };
    let since = query.get("resourceVersion").filter(|v| !v.is_empty()).map(|v| parse_rv(v)).transpose()?;
    let timeout = query
        .get("timeoutSeconds")
        .map(|t| t.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}"))))
        .transpose()?
        .map_or(shared.config.max_watch_timeout, Duration::from_secs)
        .min(shared.config.max_watch_timeout);
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true" || v == "1");
    let start = match shared.store.watch(target.resource, target.namespace.as_deref(), since) {
        Ok(start) => start,
        Err(gone) if gone.code == 410 && shared.config.gone == GoneStyle::ErrorEvent => {
            // The usual answer of a real API server: 200, then one ERROR event.
            let body = line(&json!({"type": "ERROR", "object": gone.to_status()}));
            return Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        Err(e) => return Err(e),
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    let task = WatchTask {
        filter,
        resource: target.resource,
        bookmark_every: bookmarks.then_some(shared.config.bookmark_interval).flatten(),
        timeout,
        tx,
        shutdown: shared.shutdown.clone(),
    };
    tokio::spawn(task.run(start));
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], Body::from_stream(ReceiverStream::new(rx)))
        .into_response())
}

struct WatchTask {
    filter: WatchFilter,
    resource: Resource,
    bookmark_every: Option<Duration>,
    timeout: Duration,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl WatchTask {
    async fn send(&self, value: &Value) -> bool {
        self.tx.send(Ok(line(value))).await.is_ok()
    }

    async fn run(mut self, start: WatchStart) {
        let WatchStart { backlog, mut live, covered } = start;
        let mut seen = covered;
        for event in backlog {
            if let Some(v) = self.filter.render(&event)
                && !self.send(&v).await
            {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let never = Duration::from_secs(365 * 24 * 3600);
        let mut bookmark = tokio::time::interval(self.bookmark_every.unwrap_or(never));
        bookmark.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = self.shutdown.changed() => return,
                _ = bookmark.tick(), if self.bookmark_every.is_some() => {
                    let mark = json!({"type": "BOOKMARK", "object": {
                        "kind": self.resource.kind(),
                        "apiVersion": self.resource.api_version(),
                        "metadata": {"resourceVersion": seen.to_string()},
                    }});
                    if !self.send(&mark).await { return; }
                }
                _ = self.tx.closed() => return,
                next = live.recv() => match next {
                    Ok(event) if event.rv <= seen => {}
                    Ok(event) => {
                        seen = event.rv;
                        if let Some(v) = self.filter.render(&event) && !self.send(&v).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // A watcher too slow to keep up is cut off, as the watch cache does.
                        let gone = ApiError::gone(seen, seen);
                        let _ = self.send(&json!({"type": "ERROR", "object": gone.to_status()})).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}
