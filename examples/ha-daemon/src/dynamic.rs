//! The dynamic configuration: the scope's `config` key, as Patroni keeps `/config`.
//!
//! The key holds one JSON document shared by every member:
//!
//! ```json
//! {"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "maximum_lag_on_failover": 1048576,
//!  "synchronous_mode": true, "failsafe_mode": false, "pause": false,
//!  "postgresql": {"parameters": {"work_mem": "8MB"}}}
//! ```
//!
//! Every key is optional; a missing one falls back to the member's file. Durations are whole
//! seconds, as in Patroni. [`validate`] checks a document before anyone writes it (`ctl
//! edit-config`), [`Changes`] shows what an edit does, and [`DynamicConfig`] is what members read
//! from it. Keys this version does not know are refused by `edit-config`; found in the store
//! (written by a newer version or by hand), they are kept untouched.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use leasehold::{ClusterView, ControlKey, Dcs, DcsError, Expect, Timing};
use serde_json::{Map, Value};

use crate::config::{ConfigError, StoreConfig};
use crate::postgres::config::managed_parameter;

/// The keys of the document and what each holds.
const KEYS: [(&str, Kind); 9] = [
    ("ttl", Kind::Seconds),
    ("loop_wait", Kind::Seconds),
    ("retry_timeout", Kind::Seconds),
    ("maximum_lag_on_failover", Kind::Bytes),
    ("synchronous_mode", Kind::Bool),
    ("synchronous_mode_strict", Kind::Bool),
    ("failsafe_mode", Kind::Bool),
    ("pause", Kind::Bool),
    ("postgresql", Kind::Postgresql),
];

#[derive(Clone, Copy)]
enum Kind {
    Seconds,
    Bytes,
    Bool,
    Postgresql,
}

/// What members read from the `config` key: each setting it holds, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DynamicConfig {
    /// `ttl`, `loop_wait`, `retry_timeout`, when set.
    pub ttl: Option<Duration>,
    /// See `ttl`.
    pub loop_wait: Option<Duration>,
    /// See `ttl`.
    pub retry_timeout: Option<Duration>,
    /// `postgresql.parameters`, as the text PostgreSQL reads.
    pub parameters: BTreeMap<String, String>,
}

impl DynamicConfig {
    /// The timing a member runs with: the document's values over the file's.
    pub fn timing(&self, file: &Timing) -> Timing {
        Timing {
            ttl: self.ttl.unwrap_or(file.ttl),
            loop_wait: self.loop_wait.unwrap_or(file.loop_wait),
            retry_timeout: self.retry_timeout.unwrap_or(file.retry_timeout),
            ..file.clone()
        }
    }

    /// Settings of the document that differ from what this process runs with and take
    /// effect only when it restarts, by key (`ttl: 30 s (running with 10 s)`).
    pub fn pending_restart(&self, running: &Timing) -> Vec<String> {
        let wanted = self.timing(running);
        [("ttl", wanted.ttl, running.ttl), ("loop_wait", wanted.loop_wait, running.loop_wait)]
            .into_iter()
            .chain([("retry_timeout", wanted.retry_timeout, running.retry_timeout)])
            .filter(|(_, want, run)| want != run)
            .map(|(key, want, run)| format!("{key}: {} s (running with {} s)", want.as_secs(), run.as_secs()))
            .collect()
    }
}

/// Checks a whole document for members whose file holds `file_timing` on `store`: known keys,
/// their types, the timing rules on the merged result and the store's ttl floor, and
/// PostgreSQL parameters the resource does not manage itself. The error names the key.
pub fn validate(doc: &Value, file_timing: &Timing, store: &StoreConfig) -> Result<DynamicConfig, ConfigError> {
    let Value::Object(map) = doc else {
        return Err(ConfigError::new("config", format!("expected a JSON object, found {}", kind_of(doc))));
    };
    let mut out = DynamicConfig::default();
    for (key, value) in map {
        let Some((_, kind)) = KEYS.iter().find(|(k, _)| k == key) else {
            let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
            return Err(ConfigError::new(key.clone(), format!("unknown key (known: {})", known.join(", "))));
        };
        match kind {
            Kind::Seconds => {
                let secs = value.as_u64().filter(|s| *s > 0).ok_or_else(|| {
                    ConfigError::new(key.clone(), format!("expected whole seconds above 0, found {value}"))
                })?;
                let d = Some(Duration::from_secs(secs));
                match key.as_str() {
                    "ttl" => out.ttl = d,
                    "loop_wait" => out.loop_wait = d,
                    _ => out.retry_timeout = d,
                }
            }
            Kind::Bytes => {
                value
                    .as_u64()
                    .ok_or_else(|| ConfigError::new(key.clone(), format!("expected bytes, found {value}")))?;
            }
            Kind::Bool => {
                value
                    .as_bool()
                    .ok_or_else(|| ConfigError::new(key.clone(), format!("expected true or false, found {value}")))?;
            }
            Kind::Postgresql => out.parameters = postgresql_parameters(value)?,
        }
    }
    let timing = out.timing(file_timing);
    timing.validate().map_err(|e| ConfigError::new(timing_key(e.field, map), e.to_string()))?;
    crate::config::validate_store(store, &timing)?;
    Ok(out)
}

/// Reads members' settings from a document found in the store, leniently: a value of the
/// wrong type is left out (and named in the error list) instead of failing the whole key.
pub fn read(doc: &Value) -> (DynamicConfig, Vec<ConfigError>) {
    let mut out = DynamicConfig::default();
    let mut errors = Vec::new();
    let Value::Object(map) = doc else { return (out, errors) };
    for (key, slot) in
        [("ttl", &mut out.ttl), ("loop_wait", &mut out.loop_wait), ("retry_timeout", &mut out.retry_timeout)]
    {
        match map.get(key) {
            None => {}
            Some(v) => match v.as_u64().filter(|s| *s > 0) {
                Some(s) => *slot = Some(Duration::from_secs(s)),
                None => errors.push(ConfigError::new(key, format!("expected whole seconds above 0, found {v}"))),
            },
        }
    }
    if let Some(pg) = map.get("postgresql") {
        match postgresql_parameters(pg) {
            Ok(p) => out.parameters = p,
            Err(e) => errors.push(e),
        }
    }
    (out, errors)
}

/// The key to blame for a broken timing rule: the rule's own field when the document sets it,
/// else the timing key the document sets (the file's values were valid on their own).
fn timing_key(field: &'static str, doc: &Map<String, Value>) -> &'static str {
    if doc.contains_key(field) {
        return field;
    }
    ["loop_wait", "retry_timeout", "ttl"].into_iter().find(|k| doc.contains_key(*k)).unwrap_or(field)
}

fn postgresql_parameters(value: &Value) -> Result<BTreeMap<String, String>, ConfigError> {
    let Value::Object(pg) = value else {
        return Err(ConfigError::new("postgresql", format!("expected an object, found {}", kind_of(value))));
    };
    let mut out = BTreeMap::new();
    for (key, v) in pg {
        if key != "parameters" {
            return Err(ConfigError::new(format!("postgresql.{key}"), "unknown key (known: parameters)"));
        }
        let Value::Object(params) = v else {
            return Err(ConfigError::new("postgresql.parameters", format!("expected an object, found {}", kind_of(v))));
        };
        for (name, v) in params {
            let path = format!("postgresql.parameters.{name}");
            if managed_parameter(name) {
                return Err(ConfigError::new(path, "set by the daemon itself; it cannot be configured"));
            }
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
                other => {
                    return Err(ConfigError::new(
                        path,
                        format!("expected a string, number or boolean, found {}", kind_of(other)),
                    ));
                }
            };
            out.insert(name.clone(), text);
        }
    }
    Ok(out)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Sets `path` (dotted: `ttl`, `postgresql.parameters.work_mem`) to `raw`, read as JSON when
/// it parses (`30`, `true`, `"x"`) and as a string otherwise; `null` removes the key.
pub fn set(doc: &mut Value, path: &str, raw: &str) -> Result<(), ConfigError> {
    let value = serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().filter(|l| !l.is_empty() && parts.iter().all(|p| !p.is_empty()));
    let Some(last) = last else {
        return Err(ConfigError::new(path, "expected a dotted key such as ttl or postgresql.parameters.work_mem"));
    };
    let mut node = doc;
    for (i, part) in parts.iter().enumerate() {
        if !node.is_object() {
            return Err(ConfigError::new(parts[..i].join("."), "is not an object"));
        }
        node =
            node.as_object_mut().expect("checked").entry(part.to_string()).or_insert_with(|| Value::Object(Map::new()));
    }
    let Some(map) = node.as_object_mut() else {
        return Err(ConfigError::new(parts.join("."), "is not an object"));
    };
    if value.is_null() {
        map.remove(last);
    } else {
        map.insert(last.to_string(), value);
    }
    Ok(())
}

/// Applies `patch` to `doc` as a JSON merge patch (RFC 7386): objects merge, `null` removes,
/// anything else replaces. Patroni's `edit-config --apply` works the same way.
pub fn merge(doc: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let map = doc.as_object_mut().expect("made an object");
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// What an edit changes, key by key (dotted paths), for people to confirm.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes(Vec<(String, Option<Value>, Option<Value>)>);

impl Changes {
    /// The differences between two documents.
    pub fn between(old: &Value, new: &Value) -> Changes {
        let (old, new) = (flatten(old), flatten(new));
        let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        Changes(
            keys.into_iter()
                .filter(|k| old.get(*k) != new.get(*k))
                .map(|k| ((*k).clone(), old.get(k).cloned(), new.get(k).cloned()))
                .collect(),
        )
    }

    /// Nothing changes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, old, new) in &self.0 {
            if let Some(old) = old {
                writeln!(f, "- {key}: {old}")?;
            }
            if let Some(new) = new {
                writeln!(f, "+ {key}: {new}")?;
            }
        }
        Ok(())
    }
}

/// Leaves of a document by dotted path.
fn flatten(doc: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&path, v, out);
                }
            }
            Value::Object(_) if prefix.is_empty() => {}
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", doc, &mut out);
    out
}

/// The document in the store (`{}` when the key is absent) and the version a write must
/// expect. A key that does not decode is named: editing it replaces it.
pub fn current(view: &ClusterView) -> (Value, Expect, Option<String>) {
    let expect = view.control_version(ControlKey::Config).cloned().map_or(Expect::Absent, Expect::Version);
    let garbage = view.config.is_none() && view.control_version(ControlKey::Config).is_some();
    let doc = view
        .config
        .as_ref()
        .and_then(|c| serde_json::to_value(&c.value).ok())
        .unwrap_or_else(|| Value::Object(Map::new()));
    let note = garbage.then(|| "the config key in the store does not decode; an edit replaces it".to_string());
    (doc, expect, note)
}

/// What `ctl edit-config` was asked to change.
#[derive(Clone, Debug, Default)]
pub struct Edit {
    /// A JSON document merged first (`--apply`), as a merge patch.
    pub apply: Option<Value>,
    /// `key=value` pairs (`--set`).
    pub set: Vec<String>,
    /// `name=value` PostgreSQL parameters (`--pg`).
    pub pg: Vec<String>,
}

impl Edit {
    /// The edited document.
    pub fn apply_to(&self, doc: &Value) -> Result<Value, ConfigError> {
        let mut out = doc.clone();
        if let Some(patch) = &self.apply {
            merge(&mut out, patch);
        }
        for (flag, pairs, prefix) in [("--set", &self.set, ""), ("--pg", &self.pg, "postgresql.parameters.")] {
            for pair in pairs {
                let Some((key, value)) = pair.split_once('=') else {
                    return Err(ConfigError::new(flag, format!("expected key=value, found {pair:?}")));
                };
                set(&mut out, &format!("{prefix}{}", key.trim()), value.trim())?;
            }
        }
        Ok(out)
    }
}

/// Writes `new` over the document read at `expect`, only if nobody changed it meanwhile.
/// `Ok(false)`: somebody did; nothing was written.
pub async fn write(dcs: &dyn Dcs, expect: Expect, new: &Value) -> Result<bool, DcsError> {
    let bytes = serde_json::to_vec(new).expect("a JSON value serializes");
    Ok(dcs.write_control(ControlKey::Config, expect, &bytes).await?.is_won())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn etcd() -> StoreConfig {
        let hooks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/file");
        let text = format!(
            "scope = \"s\"\nname = \"n\"\n[hooks]\ndir = {:?}\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
            hooks.display().to_string()
        );
        crate::config::DaemonConfig::parse(&text, [], std::path::Path::new("/")).expect("valid").store
    }

    fn file_timing() -> Timing {
        Timing {
            ttl: Duration::from_secs(30),
            loop_wait: Duration::from_secs(10),
            retry_timeout: Duration::from_secs(10),
            ..Timing::default()
        }
    }

    #[test]
    fn a_valid_document_is_read_with_its_timing_over_the_file() {
        let doc = json!({"ttl": 20, "loop_wait": 2, "retry_timeout": 4, "synchronous_mode": true,
            "postgresql": {"parameters": {"work_mem": "8MB", "max_connections": 200, "hot_standby": true}}});
        let d = validate(&doc, &file_timing(), &etcd()).expect("valid");
        let t = d.timing(&file_timing());
        assert_eq!(
            (t.ttl, t.loop_wait, t.retry_timeout),
            (Duration::from_secs(20), Duration::from_secs(2), Duration::from_secs(4))
        );
        assert_eq!(d.parameters["max_connections"], "200");
        assert_eq!(d.parameters["hot_standby"], "on");
        assert_eq!(d.pending_restart(&file_timing()).len(), 3);
        assert!(d.pending_restart(&t).is_empty());
    }

    #[test]
    fn every_refusal_names_its_key() {
        let cases = [
            (json!({"ttl": "30s"}), "ttl"),
            (json!({"ttl": 0}), "ttl"),
            (json!({"loop_wait": 25}), "loop_wait"),
            (json!({"ttl": 1, "loop_wait": 1, "retry_timeout": 1}), "ttl"),
            (json!({"synchronous_mode": "yes"}), "synchronous_mode"),
            (json!({"maximum_lag_on_failover": -1}), "maximum_lag_on_failover"),
            (json!({"tll": 30}), "tll"),
            (json!({"postgresql": {"parameters": {"port": 5433}}}), "postgresql.parameters.port"),
            (json!({"postgresql": {"parameters": {"x": [1]}}}), "postgresql.parameters.x"),
            (json!({"postgresql": {"bin_dir": "/usr"}}), "postgresql.bin_dir"),
            (json!([]), "config"),
        ];
        for (doc, key) in cases {
            let e = validate(&doc, &file_timing(), &etcd()).expect_err(&doc.to_string());
            assert_eq!(e.key, key, "{doc}: {e}");
        }
    }

    #[test]
    fn set_and_merge_edit_paths_and_show_a_diff() {
        let old = json!({"ttl": 30, "postgresql": {"parameters": {"work_mem": "4MB"}}});
        let mut doc = old.clone();
        set(&mut doc, "ttl", "20").unwrap();
        set(&mut doc, "postgresql.parameters.work_mem", "8MB").unwrap();
        set(&mut doc, "synchronous_mode", "true").unwrap();
        merge(&mut doc, &json!({"postgresql": {"parameters": {"shared_buffers": "1GB"}}, "pause": null}));
        assert_eq!(
            doc,
            json!({"ttl": 20, "synchronous_mode": true,
                "postgresql": {"parameters": {"work_mem": "8MB", "shared_buffers": "1GB"}}})
        );
        let shown = Changes::between(&old, &doc).to_string();
        assert_eq!(
            shown,
            "+ postgresql.parameters.shared_buffers: \"1GB\"\n- postgresql.parameters.work_mem: \"4MB\"\n+ postgresql.parameters.work_mem: \"8MB\"\n+ synchronous_mode: true\n- ttl: 30\n+ ttl: 20\n"
        );
        assert!(set(&mut doc, "ttl.x", "1").is_err(), "a scalar is not an object");
        set(&mut doc, "ttl", "null").unwrap();
        assert!(doc.get("ttl").is_none());
        assert!(set(&mut doc, "a..b", "1").is_err());
        assert!(Changes::between(&doc, &doc).is_empty());
    }

    #[test]
    fn a_store_document_with_a_bad_value_keeps_the_good_ones() {
        let (d, errors) = read(&json!({"ttl": "x", "loop_wait": 3, "postgresql": {"parameters": {"work_mem": "8MB"}}}));
        assert_eq!(d.loop_wait, Some(Duration::from_secs(3)));
        assert_eq!(d.ttl, None);
        assert_eq!(d.parameters["work_mem"], "8MB");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].key, "ttl");
    }
}
