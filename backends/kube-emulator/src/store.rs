//! The object store: objects as JSON values, one store-wide resourceVersion counter, an event
//! log for watches, and compaction.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::resource::Resource;
use crate::status::ApiError;
use crate::validate;

/// Where an object lives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Its type.
    pub resource: Resource,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// The type of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object was replaced.
    Modified,
    /// The object was deleted.
    Deleted,
}

impl EventType {
    /// The `type` field of a watch event.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as recorded in the event log.
#[derive(Clone, Debug)]
pub struct Event {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// What changed.
    pub key: ObjectKey,
    /// Added, Modified or Deleted.
    pub kind: EventType,
    /// The object after the change (for a delete: its last state, at the delete's version).
    pub object: Value,
    /// The object before a modification, so watches with a label selector can report objects
    /// entering or leaving the selection.
    pub previous: Option<Value>,
}

/// What a watch starts from: the events to send first, and where live events take over.
pub struct WatchStart {
    /// Events after the requested version (or synthetic ADDED events for the current state).
    pub backlog: Vec<Arc<Event>>,
    /// Live events; those at or below `covered` are already in `backlog`.
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The store's resourceVersion when the watch started.
    pub covered: u64,
}

struct State {
    rv: u64,
    objects: BTreeMap<ObjectKey, Value>,
    log: VecDeque<Arc<Event>>,
    /// Watches from a version below this one get 410 Gone.
    compacted: u64,
    history_limit: usize,
    uids: u64,
}

/// The shared store behind the HTTP handlers.
pub struct Store {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
    uid_seed: u64,
}

/// Formats the current UTC time as RFC 3339 with whole seconds (metav1.Time).
fn now_rfc3339() -> String {
    jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", jiff::Timestamp::now()).unwrap_or_default()
}

/// One `managedFields` entry timed now, as the API server keeps on every write (whole
/// seconds, the server's clock): readers use it to tell how long ago an object was written.
fn stamp_managed_fields(body: &mut Value, resource: Resource) {
    let entry = serde_json::json!({
        "manager": "emulator-client",
        "operation": "Update",
        "apiVersion": resource.api_version(),
        "time": now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    });
    metadata_mut(body).insert("managedFields".into(), Value::Array(vec![entry]));
}

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(object) = target.as_object_mut() {
        for (key, value) in fields {
            if value.is_null() {
                object.remove(key);
            } else {
                merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = Value::Object(Map::new());
    }
    obj["metadata"].as_object_mut().expect("metadata was just made an object")
}

/// Parses a resourceVersion sent by a client. The emulator's versions are decimal counters.
pub fn parse_rv(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version {text:?}")))
}

/// Checks what every write body must satisfy: a JSON object of the right kind and namespace.
fn check_body(resource: Resource, namespace: &str, body: &Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(format!("the body of a {resource} must be a JSON object")));
    }
    if let Some(kind) = body.get("kind").and_then(Value::as_str)
        && kind != resource.kind()
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            resource.kind()
        )));
    }
    if let Some(api) = body.get("apiVersion").and_then(Value::as_str)
        && api != resource.api_version()
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api}) does not match the expected API version ({})",
            resource.api_version()
        )));
    }
    if body.get("metadata").is_some_and(|m| !m.is_object() && !m.is_null()) {
        return Err(ApiError::bad_request("metadata must be an object".into()));
    }
    if let Some(ns) = meta_str(body, "namespace")
        && !ns.is_empty()
        && ns != namespace
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request".into(),
        ));
    }
    Ok(())
}

impl Store {
    /// An empty store keeping at most `history_limit` events for watches, and telling live
    /// watches about changes through a channel of `channel_capacity` events.
    pub fn new(history_limit: usize, channel_capacity: usize) -> Self {
        let (events, _) = broadcast::channel(channel_capacity.max(1));
        Store {
            state: Mutex::new(State {
                rv: 0,
                objects: BTreeMap::new(),
                log: VecDeque::new(),
                compacted: 0,
                history_limit,
                uids: 0,
            }),
            events,
            uid_seed: RandomState::new().hash_one("leasehold-kube-emulator"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The store-wide resourceVersion (the version of the last write).
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Drops the event log: watches from any earlier version now get 410 Gone. Returns the
    /// oldest version still watchable.
    pub fn compact(&self) -> u64 {
        let mut s = self.lock();
        s.log.clear();
        s.compacted = s.rv;
        s.rv
    }

    fn record(&self, s: &mut State, key: ObjectKey, kind: EventType, object: Value, previous: Option<Value>) {
        let event = Arc::new(Event { rv: s.rv, key, kind, object, previous });
        s.log.push_back(event.clone());
        while s.log.len() > s.history_limit {
            if let Some(dropped) = s.log.pop_front() {
                s.compacted = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
    }

    fn next_uid(&self, s: &mut State) -> String {
        s.uids += 1;
        let n = s.uids;
        let seed = self.uid_seed;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (seed >> 32) as u32,
            (seed >> 16) as u16,
            seed as u16 & 0xfff,
            (n >> 48) as u16 & 0xfff,
            n & 0xffff_ffff_ffff
        )
    }

    /// GET one object.
    pub fn get(&self, key: &ObjectKey) -> Result<Value, ApiError> {
        self.lock().objects.get(key).cloned().ok_or_else(|| ApiError::not_found(key.resource, &key.name))
    }

    /// LIST: the objects of `resource` (in `namespace`, or all) accepted by `filter`, with
    /// the store's resourceVersion.
    pub fn list(
        &self,
        resource: Resource,
        namespace: Option<&str>,
        filter: impl Fn(&Value) -> bool,
    ) -> (u64, Vec<Value>) {
        let s = self.lock();
        let items = s
            .objects
            .iter()
            .filter(|(k, _)| k.resource == resource && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v)
            .filter(|v| filter(v))
            .cloned()
            .collect();
        (s.rv, items)
    }

    /// POST: creates an object; 409 AlreadyExists if the name is taken.
    pub fn create(&self, resource: Resource, namespace: &str, body: Value) -> Result<Value, ApiError> {
        check_body(resource, namespace, &body)?;
        if meta_str(&body, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
            // What etcd3's store answers (storage.ErrResourceVersionSetOnCreate).
            return Err(ApiError::internal("resourceVersion should not be set on objects to be created".into()));
        }
        let mut s = self.lock();
        self.create_in(&mut s, resource, namespace, body)
    }

    fn create_in(
        &self,
        s: &mut State,
        resource: Resource,
        namespace: &str,
        mut body: Value,
    ) -> Result<Value, ApiError> {
        if meta_str(&body, "name").is_none_or(str::is_empty)
            && let Some(base) = meta_str(&body, "generateName").map(str::to_string)
        {
            let suffix: String = format!("{:05x}", (s.uids + s.rv) % 0xfffff)
                .chars()
                .map(|c| if c.is_ascii_digit() { (b'b' + (c as u8 - b'0')) as char } else { c })
                .collect();
            metadata_mut(&mut body).insert("name".into(), Value::String(format!("{base}{suffix}")));
        }
        let name = meta_str(&body, "name").unwrap_or_default().to_string();
        if name.is_empty() {
            return Err(ApiError::invalid(
                resource,
                "",
                "metadata.name: Required value: name or generateName is required".into(),
            ));
        }
        validate::object(resource, &body)?;
        let key = ObjectKey { resource, namespace: namespace.to_string(), name: name.clone() };
        if s.objects.contains_key(&key) {
            return Err(ApiError::already_exists(resource, &name));
        }
        s.rv += 1;
        let uid = self.next_uid(s);
        body["kind"] = resource.kind().into();
        body["apiVersion"] = resource.api_version().into();
        let meta = metadata_mut(&mut body);
        meta.insert("namespace".into(), namespace.into());
        meta.insert("uid".into(), uid.into());
        meta.insert("resourceVersion".into(), s.rv.to_string().into());
        meta.insert("creationTimestamp".into(), now_rfc3339().into());
        meta.remove("generateName");
        stamp_managed_fields(&mut body, resource);
        s.objects.insert(key.clone(), body.clone());
        self.record(s, key, EventType::Added, body.clone(), None);
        Ok(body)
    }

    /// PUT: replaces an object. A non-empty `metadata.resourceVersion` must be the current one
    /// (409 Conflict otherwise); an empty one is an unconditional update, which Leases and
    /// ConfigMaps allow. A replace that changes nothing keeps the version and sends no event.
    pub fn replace(&self, key: &ObjectKey, body: Value) -> Result<Value, ApiError> {
        let mut s = self.lock();
        self.replace_in(&mut s, key, body)
    }

    /// PUT as a real API server answers it: a Lease that does not exist is *created*
    /// (`AllowCreateOnUpdate` is true for Leases), whatever resourceVersion the body carries;
    /// a ConfigMap that does not exist is 404. An existing Lease needs a resourceVersion
    /// (`AllowUnconditionalUpdate` is false for Leases: 422); a ConfigMap may be replaced
    /// without one. Returns the object and whether it was created.
    pub fn replace_or_create(&self, key: &ObjectKey, mut body: Value) -> Result<(Value, bool), ApiError> {
        let mut s = self.lock();
        let exists = s.objects.contains_key(key);
        if key.resource == Resource::Lease && !exists {
            check_body(key.resource, &key.namespace, &body)?;
            metadata_mut(&mut body).remove("resourceVersion");
            return self.create_in(&mut s, key.resource, &key.namespace, body).map(|o| (o, true));
        }
        let named = meta_str(&body, "name") == Some(key.name.as_str());
        if named && key.resource == Resource::Lease && meta_str(&body, "resourceVersion").is_none_or(str::is_empty) {
            return Err(ApiError::invalid(
                key.resource,
                &key.name,
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update".into(),
            ));
        }
        self.replace_in(&mut s, key, body).map(|o| (o, false))
    }

    /// PATCH with a JSON merge patch (RFC 7386): 404 when the object does not exist (a patch
    /// never creates); a `metadata.resourceVersion` in the patch is a precondition (409
    /// Conflict when stale); without one the patch applies to whatever is current.
    pub fn patch(&self, key: &ObjectKey, patch: &Value) -> Result<Value, ApiError> {
        let mut s = self.lock();
        let Some(current) = s.objects.get(key).cloned() else {
            return Err(ApiError::not_found(key.resource, &key.name));
        };
        if !patch.is_object() {
            return Err(ApiError::bad_request("a merge patch must be a JSON object".into()));
        }
        let mut body = current;
        merge_patch(&mut body, patch);
        self.replace_in(&mut s, key, body)
    }

    fn replace_in(&self, s: &mut State, key: &ObjectKey, mut body: Value) -> Result<Value, ApiError> {
        let resource = key.resource;
        check_body(resource, &key.namespace, &body)?;
        let body_name = meta_str(&body, "name").unwrap_or_default();
        if body_name != key.name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({})",
                key.name
            )));
        }
        let wanted = meta_str(&body, "resourceVersion").filter(|rv| !rv.is_empty()).map(parse_rv).transpose()?;
        let Some(current) = s.objects.get(key).cloned() else {
            return Err(ApiError::not_found(resource, &key.name));
        };
        let current_rv = meta_str(&current, "resourceVersion").unwrap_or_default().to_string();
        if let Some(wanted) = wanted
            && wanted.to_string() != current_rv
        {
            return Err(ApiError::conflict(
                resource,
                &key.name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let current_uid = meta_str(&current, "uid").unwrap_or_default().to_string();
        if let Some(uid) = meta_str(&body, "uid").filter(|u| !u.is_empty())
            && uid != current_uid
        {
            return Err(ApiError::conflict(
                resource,
                &key.name,
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {current_uid}"),
            ));
        }
        validate::object(resource, &body)?;
        body["kind"] = resource.kind().into();
        body["apiVersion"] = resource.api_version().into();
        let meta = metadata_mut(&mut body);
        meta.insert("namespace".into(), key.namespace.clone().into());
        meta.insert("uid".into(), current_uid.into());
        meta.insert("resourceVersion".into(), current_rv.into());
        let created = current.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null);
        meta.insert("creationTimestamp".into(), created);
        // The server owns managedFields: what the client sent is replaced by the current ones
        // (a no-op stays a no-op) and then stamped with this write's time.
        match current.pointer("/metadata/managedFields").cloned() {
            Some(managed) => meta.insert("managedFields".into(), managed),
            None => meta.remove("managedFields"),
        };
        if body == current {
            return Ok(current);
        }
        stamp_managed_fields(&mut body, resource);
        s.rv += 1;
        metadata_mut(&mut body).insert("resourceVersion".into(), s.rv.to_string().into());
        s.objects.insert(key.clone(), body.clone());
        self.record(s, key.clone(), EventType::Modified, body.clone(), Some(current));
        Ok(body)
    }

    /// DELETE with optional preconditions (`uid`, `resourceVersion`): a mismatch is 409
    /// Conflict. Returns the object as deleted, carrying the delete's resourceVersion.
    pub fn delete(&self, key: &ObjectKey, uid: Option<&str>, rv: Option<&str>) -> Result<Value, ApiError> {
        let mut s = self.lock();
        let Some(current) = s.objects.get(key).cloned() else {
            return Err(ApiError::not_found(key.resource, &key.name));
        };
        let current_uid = meta_str(&current, "uid").unwrap_or_default();
        if let Some(uid) = uid
            && uid != current_uid
        {
            return Err(ApiError::conflict(
                key.resource,
                &key.name,
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {current_uid}"),
            ));
        }
        let current_rv = meta_str(&current, "resourceVersion").unwrap_or_default();
        if let Some(rv) = rv
            && rv != current_rv
        {
            return Err(ApiError::conflict(
                key.resource,
                &key.name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {current_rv}"
                ),
            ));
        }
        s.objects.remove(key);
        s.rv += 1;
        let mut last = current;
        metadata_mut(&mut last).insert("resourceVersion".into(), s.rv.to_string().into());
        self.record(&mut s, key.clone(), EventType::Deleted, last.clone(), None);
        Ok(last)
    }

    /// Starts a watch on `resource` (in `namespace`, or all). `since`: `None` (or 0) sends
    /// the current objects as ADDED events first; a version sends every change after it, or
    /// fails with 410 Gone when the log no longer reaches back that far.
    pub fn watch(
        &self,
        resource: Resource,
        namespace: Option<&str>,
        since: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        let s = self.lock();
        let live = self.events.subscribe();
        let wanted = |k: &ObjectKey| k.resource == resource && namespace.is_none_or(|ns| k.namespace == ns);
        let backlog = match since.filter(|&rv| rv > 0) {
            None => s
                .objects
                .iter()
                .filter(|(k, _)| wanted(k))
                .map(|(k, v)| {
                    let rv = meta_str(v, "resourceVersion").and_then(|r| r.parse().ok()).unwrap_or(s.rv);
                    Arc::new(Event { rv, key: k.clone(), kind: EventType::Added, object: v.clone(), previous: None })
                })
                .collect(),
            Some(rv) if rv < s.compacted => return Err(ApiError::gone(rv, s.compacted)),
            Some(rv) => s.log.iter().filter(|e| e.rv > rv && wanted(&e.key)).cloned().collect(),
        };
        Ok(WatchStart { backlog, live, covered: s.rv })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey { resource: Resource::Lease, namespace: "ns".into(), name: name.into() }
    }

    fn lease(name: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"holderIdentity": "a"}})
    }

    #[test]
    fn versions_are_one_store_wide_counter() {
        let store = Store::new(100, 16);
        let a = store.create(Resource::Lease, "ns", lease("a")).unwrap();
        let b = store.create(Resource::Lease, "ns", lease("b")).unwrap();
        assert_eq!(a["metadata"]["resourceVersion"], "1");
        assert_eq!(b["metadata"]["resourceVersion"], "2");
        assert_eq!(store.resource_version(), 2);
        assert_eq!(store.create(Resource::Lease, "ns", lease("a")).unwrap_err().reason, "AlreadyExists");
    }

    #[test]
    fn replace_checks_the_version_and_skips_no_ops() {
        let store = Store::new(100, 16);
        let a = store.create(Resource::Lease, "ns", lease("a")).unwrap();
        let same = store.replace(&key("a"), a.clone()).unwrap();
        assert_eq!(same["metadata"]["resourceVersion"], "1", "an unchanged object keeps its version");
        let mut changed = a.clone();
        changed["spec"]["holderIdentity"] = "b".into();
        let v2 = store.replace(&key("a"), changed.clone()).unwrap();
        assert_eq!(v2["metadata"]["resourceVersion"], "2");
        let err = store.replace(&key("a"), changed).unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        assert_eq!(store.replace(&key("zz"), lease("zz")).unwrap_err().code, 404);
    }

    #[test]
    fn delete_preconditions_and_compaction() {
        let store = Store::new(100, 16);
        store.create(Resource::Lease, "ns", lease("a")).unwrap();
        assert_eq!(store.delete(&key("a"), None, Some("7")).unwrap_err().code, 409);
        assert_eq!(store.delete(&key("a"), Some("nope"), None).unwrap_err().code, 409);
        let gone = store.delete(&key("a"), None, Some("1")).unwrap();
        assert_eq!(gone["metadata"]["resourceVersion"], "2");
        assert_eq!(store.watch(Resource::Lease, Some("ns"), Some(0)).unwrap().backlog.len(), 0);
        assert_eq!(store.watch(Resource::Lease, Some("ns"), Some(1)).unwrap().backlog.len(), 1);
        store.compact();
        assert_eq!(store.watch(Resource::Lease, Some("ns"), Some(1)).err().map(|e| e.code), Some(410));
        assert!(store.watch(Resource::Lease, Some("ns"), Some(2)).is_ok());
    }

    #[test]
    fn the_history_limit_compacts_old_events() {
        let store = Store::new(2, 16);
        for name in ["a", "b", "c"] {
            store.create(Resource::Lease, "ns", lease(name)).unwrap();
        }
        assert_eq!(store.watch(Resource::Lease, None, Some(1)).unwrap().backlog.len(), 2);
        assert_eq!(store.watch(Resource::Lease, None, Some(0)).unwrap().backlog.len(), 3);
        store.create(Resource::Lease, "ns", lease("d")).unwrap();
        assert_eq!(store.watch(Resource::Lease, None, Some(1)).err().map(|e| e.code), Some(410));
    }
}
