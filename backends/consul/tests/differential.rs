//! The emulator answers like a real Consul 1.6.2 agent: the same request sequences go to
//! both and the answers that matter are compared (status codes, `true`/`false` bodies,
//! error texts, which fields are set, whether an index moved). Needs a real agent; prints a
//! line and passes when none is found (there is nothing to compare with).

mod common;

use common::TOKEN;
use leasehold_consul::testing::{ConsulAgent, ConsulAgentConfig};
use leasehold_consul_emulator::{Emulator, EmulatorConfig};
use reqwest::Method;
use serde_json::Value;

/// What is compared of one answer.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    code: u16,
    /// `true`/`false` answers and error texts, verbatim; JSON answers by shape below.
    text: Option<String>,
    /// For KV entries and sessions: the fields that are set, and the interesting values.
    fields: Vec<String>,
    /// Whether `X-Consul-Index` moved since the previous request.
    index_moved: Option<bool>,
}

struct Side {
    address: String,
    http: reqwest::Client,
    /// Session ids by name (`$S1`, `$S2` in paths and bodies).
    sessions: Vec<String>,
    /// The last `ModifyIndex` of key `k` (`$MI`).
    modify_index: u64,
    /// The last `X-Consul-Index` per endpoint family (`kv`, `session`): Consul keeps one
    /// index per table, so only answers of one family compare.
    last_index: std::collections::HashMap<String, u64>,
}

impl Side {
    fn expand(&self, text: &str) -> String {
        let mut out = text.replace("$MI", &self.modify_index.to_string());
        for (i, id) in self.sessions.iter().enumerate() {
            out = out.replace(&format!("$S{}", i + 1), id);
        }
        out
    }

    async fn call(&mut self, method: Method, path: &str, body: Option<&str>) -> Answer {
        let url = format!("{}{}", self.address, self.expand(path));
        let mut request = self.http.request(method, url).header("X-Consul-Token", TOKEN);
        if let Some(b) = body {
            request = request.body(self.expand(b));
        }
        let response = request.send().await.expect("answered");
        let code = response.status().as_u16();
        let index = response.headers().get("X-Consul-Index").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let family = path.split('/').nth(2).unwrap_or_default().to_string();
        let index_moved = match (index, self.last_index.get(&family)) {
            (Some(now), Some(before)) => Some(now != *before),
            (Some(_), None) => Some(true),
            _ => None,
        };
        if let Some(i) = index {
            self.last_index.insert(family, i);
        }
        let mut text = response.text().await.unwrap_or_default();
        for (i, id) in self.sessions.iter().enumerate() {
            text = text.replace(id.as_str(), &format!("$S{}", i + 1));
        }
        let mut fields = Vec::new();
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Bool(b)) => return Answer { code, text: Some(b.to_string()), fields, index_moved },
            Ok(Value::Object(o)) if o.contains_key("ID") => {
                self.sessions.push(o["ID"].as_str().unwrap_or_default().to_string());
                fields.push("ID".into());
            }
            Ok(Value::Array(items)) => {
                for item in items {
                    let Some(o) = item.as_object() else { continue };
                    if let Some(mi) = o.get("ModifyIndex").and_then(Value::as_u64)
                        && o.contains_key("Key")
                    {
                        self.modify_index = mi;
                    }
                    let mut keys: Vec<String> = o
                        .iter()
                        .filter(|(_, v)| !v.is_null())
                        .map(|(k, v)| match k.as_str() {
                            "Value" | "Behavior" | "TTL" | "Checks" | "LockDelay" | "LockIndex" | "Flags" => {
                                format!("{k}={v}")
                            }
                            "Session" => format!("Session={}", session_name(&self.sessions, v)),
                            _ => k.clone(),
                        })
                        .collect();
                    keys.sort();
                    fields.push(keys.join(","));
                }
            }
            _ => return Answer { code, text: Some(text.trim().to_string()), fields, index_moved },
        }
        Answer { code, text: None, fields, index_moved }
    }
}

fn session_name(sessions: &[String], v: &Value) -> String {
    let id = v.as_str().unwrap_or_default();
    sessions.iter().position(|s| s == id).map_or_else(|| "?".into(), |i| format!("$S{}", i + 1))
}

/// (what, method, path, body).
fn sequence() -> Vec<(&'static str, Method, &'static str, Option<&'static str>)> {
    use Method as M;
    vec![
        ("a session TTL below the floor", M::PUT, "/v1/session/create", Some(r#"{"TTL":"5s"}"#)),
        (
            "session 1: TTL-only, delete",
            M::PUT,
            "/v1/session/create",
            Some(r#"{"TTL":"10s","Behavior":"delete","LockDelay":"1ms","Checks":[]}"#),
        ),
        (
            "session 2: NodeChecks only (1.6 ignores it)",
            M::PUT,
            "/v1/session/create",
            Some(r#"{"TTL":"10s","NodeChecks":[]}"#),
        ),
        ("session 1 info", M::GET, "/v1/session/info/$S1", None),
        ("session 2 info", M::GET, "/v1/session/info/$S2", None),
        ("session with an unknown check", M::PUT, "/v1/session/create", Some(r#"{"TTL":"10s","Checks":["nope"]}"#)),
        ("get a missing key", M::GET, "/v1/kv/d/k", None),
        ("create-only put", M::PUT, "/v1/kv/d/k?cas=0", Some("v1")),
        ("create-only put again", M::PUT, "/v1/kv/d/k?cas=0", Some("v2")),
        ("read it", M::GET, "/v1/kv/d/k", None),
        ("cas at a wrong index", M::PUT, "/v1/kv/d/k?cas=1", Some("v3")),
        ("cas at the current index", M::PUT, "/v1/kv/d/k?cas=$MI", Some("v4")),
        ("read it again", M::GET, "/v1/kv/d/k", None),
        ("acquire by session 1", M::PUT, "/v1/kv/d/k?acquire=$S1", Some("held")),
        ("acquire by session 2", M::PUT, "/v1/kv/d/k?acquire=$S2", Some("stolen")),
        ("re-acquire by the holder", M::PUT, "/v1/kv/d/k?acquire=$S1", Some("held2")),
        ("read the held key", M::GET, "/v1/kv/d/k", None),
        ("delete at a wrong index", M::DELETE, "/v1/kv/d/k?cas=1", None),
        ("renew session 1", M::PUT, "/v1/session/renew/$S1", None),
        ("destroy session 1 (Behavior=delete)", M::PUT, "/v1/session/destroy/$S1", None),
        ("the key went with it", M::GET, "/v1/kv/d/k", None),
        ("renew the destroyed session", M::PUT, "/v1/session/renew/$S1", None),
        ("acquire with the destroyed session", M::PUT, "/v1/kv/d/k?acquire=$S1", Some("x")),
        ("recurse over the prefix", M::GET, "/v1/kv/d/?recurse", None),
        ("put under the prefix", M::PUT, "/v1/kv/d/m", Some("m")),
        ("recurse again", M::GET, "/v1/kv/d/?recurse", None),
        ("release by a non-holder", M::PUT, "/v1/kv/d/m?release=$S2", Some("m")),
        ("no token", M::GET, "/v1/kv/d/m?token=wrong", None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_answers_like_a_real_consul_agent() {
    if ConsulAgent::binary().expect("usable").is_none() || std::env::var_os("LEASEHOLD_TEST_EMULATORS").is_some() {
        common::announce("skipped: no real Consul agent to compare the emulator with".into());
        return;
    }
    let config = ConsulAgentConfig { acl_master_token: Some(TOKEN.into()), ..ConsulAgentConfig::default() };
    let agent = ConsulAgent::start(config).await.expect("consul starts");
    let emulator = Emulator::start(EmulatorConfig::with_token(TOKEN)).expect("emulator");
    let side = |address: String| Side {
        address,
        http: reqwest::Client::new(),
        sessions: Vec::new(),
        modify_index: 0,
        last_index: Default::default(),
    };
    let (mut real, mut emulated) = (side(agent.address()), side(emulator.url()));
    let mut differences = Vec::new();
    for (what, method, path, body) in sequence() {
        let a = real.call(method.clone(), path, body).await;
        let b = emulated.call(method, path, body).await;
        println!("{what}: {a:?}");
        if a != b {
            differences.push(format!("{what}:\n  real:     {a:?}\n  emulator: {b:?}"));
        }
    }
    assert!(
        differences.is_empty(),
        "the emulator differs from Consul {}:\n{}",
        agent.version(),
        differences.join("\n")
    );
}
