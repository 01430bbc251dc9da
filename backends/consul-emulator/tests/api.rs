//! The emulator's HTTP API, checked against Consul's documented behaviour.

use std::time::Duration;

use leasehold_consul_emulator::{Emulator, EmulatorConfig, Expiry};
use serde_json::{Value, json};

const TOKEN: &str = "secret";

struct Agent {
    emu: Emulator,
    http: reqwest::Client,
}

impl Agent {
    fn new(config: EmulatorConfig) -> Agent {
        Agent { emu: Emulator::start(config).unwrap(), http: reqwest::Client::new() }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> (u16, Option<u64>, String) {
        let mut r = self.http.request(method, format!("{}{path}", self.emu.url())).header("X-Consul-Token", TOKEN);
        if let Some(b) = body {
            r = r.body(b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let index = resp.headers().get("X-Consul-Index").map(|v| v.to_str().unwrap().parse().unwrap());
        (status, index, resp.text().await.unwrap())
    }

    async fn put(&self, path: &str, body: &[u8]) -> (u16, String) {
        let (s, _, b) = self.call(reqwest::Method::PUT, path, Some(body.to_vec())).await;
        (s, b)
    }

    async fn get(&self, path: &str) -> (u16, Option<u64>, String) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn session(&self, body: Value) -> String {
        let (s, b) = self.put("/v1/session/create", body.to_string().as_bytes()).await;
        assert_eq!(s, 200, "{b}");
        serde_json::from_str::<Value>(&b).unwrap()["ID"].as_str().unwrap().to_string()
    }
}

fn fast(expiry: Expiry) -> EmulatorConfig {
    EmulatorConfig::with_token(TOKEN).session_ttl_min(Duration::from_millis(100)).expiry(expiry)
}

#[tokio::test]
async fn session_ttl_bounds_are_consuls() {
    let a = Agent::new(EmulatorConfig::with_token(TOKEN));
    for (ttl, ok) in [("9s", false), ("10s", true), ("86400s", true), ("86401s", false), ("", true)] {
        let (s, b) = a.put("/v1/session/create", json!({"TTL": ttl}).to_string().as_bytes()).await;
        assert_eq!(s == 200, ok, "{ttl}: {s} {b}");
        if !ok {
            assert!(b.contains("Invalid Session TTL") && b.contains("between [10s=24h0m0s]"), "{b}");
        }
    }
    let (s, b) = a.put("/v1/session/create", br#"{"TTL": "ten"}"#).await;
    assert_eq!(s, 500, "{b}");
}

#[tokio::test]
async fn session_defaults_renew_info_destroy() {
    let a = Agent::new(EmulatorConfig::with_token(TOKEN));
    let id = a.session(json!({"TTL": "15s"})).await;
    let (s, _, b) = a.get(&format!("/v1/session/info/{id}")).await;
    assert_eq!(s, 200);
    let info: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(info[0]["Behavior"], "release");
    assert_eq!(info[0]["LockDelay"], 15_000_000_000u64);
    assert_eq!(info[0]["Checks"], json!(["serfHealth"]), "no check lists: tied to serfHealth");
    assert_eq!(info[0]["TTL"], "15s");
    let id2 = a
        .session(json!({"TTL": "15s", "Behavior": "delete", "LockDelay": "1ms", "Checks": [], "NodeChecks": []}))
        .await;
    let (_, _, b) = a.get(&format!("/v1/session/info/{id2}")).await;
    let info: Value = serde_json::from_str(&b).unwrap();
    assert_eq!((info[0]["Behavior"].clone(), info[0]["LockDelay"].clone()), (json!("delete"), json!(1_000_000)));
    assert_eq!(info[0]["Checks"], json!([]));
    // Consul 1.6 does not know `NodeChecks`: alone, it leaves the session on serfHealth.
    let id4 = a.session(json!({"TTL": "15s", "NodeChecks": []})).await;
    let (_, _, b) = a.get(&format!("/v1/session/info/{id4}")).await;
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()[0]["Checks"], json!(["serfHealth"]));
    // A LockDelay number below 1000 is seconds (Consul's FixupLockDelay).
    let id3 = a.session(json!({"LockDelay": 5})).await;
    let (_, _, b) = a.get(&format!("/v1/session/info/{id3}")).await;
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()[0]["LockDelay"], 5_000_000_000u64);
    let (s, b) = a.put(&format!("/v1/session/renew/{id}"), b"").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(a.put(&format!("/v1/session/destroy/{id}"), b"").await, (200, "true".into()));
    let (s, b) = a.put(&format!("/v1/session/renew/{id}"), b"").await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(a.get(&format!("/v1/session/info/{id}")).await.2, "[]");
    let (s, b) = a.put("/v1/session/create", br#"{"Checks": ["service:web"]}"#).await;
    assert!(s == 500 && b.contains("Missing check"), "{b}");
}

#[tokio::test]
async fn kv_entries_cas_and_recurse() {
    let a = Agent::new(EmulatorConfig::with_token(TOKEN));
    assert_eq!(a.put("/v1/kv/s/a?cas=0", b"hello").await, (200, "true".into()));
    assert_eq!(a.put("/v1/kv/s/a?cas=0", b"again").await, (200, "false".into()));
    let (s, idx, b) = a.get("/v1/kv/s/a").await;
    assert_eq!(s, 200);
    let e: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(e[0]["Value"], "aGVsbG8=", "base64 of hello");
    let m = e[0]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(idx, Some(m));
    assert_eq!(e[0]["CreateIndex"], m);
    assert_eq!(e[0]["LockIndex"], 0);
    assert!(e[0].get("Session").is_none());
    assert_eq!(a.put(&format!("/v1/kv/s/a?cas={}", m + 5), b"x").await.1, "false");
    assert_eq!(a.put(&format!("/v1/kv/s/a?cas={m}"), b"x").await.1, "true");
    a.put("/v1/kv/s/b", b"").await;
    a.put("/v1/kv/s2/c", b"1").await;
    let (_, _, b) = a.get("/v1/kv/s/?recurse&consistent").await;
    let keys: Vec<String> = serde_json::from_str::<Vec<Value>>(&b)
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["s/a", "s/b"]);
    assert_eq!(a.get("/v1/kv/s/a?raw&stale").await.2, "x");
    let (s, idx, _) = a.get("/v1/kv/missing").await;
    assert!(s == 404 && idx.is_some());
    let (s, _, b) = a.get("/v1/kv/s/a?stale&consistent").await;
    assert_eq!(s, 400, "{b}");
    let (s, _, _) = a.call(reqwest::Method::DELETE, "/v1/kv/s/a?cas=1", None).await;
    assert_eq!(s, 200);
    assert!(a.emu.kv("s/a").is_some(), "a stale cas delete deletes nothing");
    let (_, _, b) = a.call(reqwest::Method::DELETE, "/v1/kv/nothing?cas=7", None).await;
    assert_eq!(b, "true", "Consul answers true for a missing key");
    a.call(reqwest::Method::DELETE, "/v1/kv/s?recurse", None).await;
    assert!(a.emu.kv("s/a").is_none() && a.emu.kv("s/b").is_none() && a.emu.kv("s2/c").is_none());
    let (s, _) = a.put("/v1/kv/big", &vec![b'x'; 512 * 1024 + 1]).await;
    assert_eq!(s, 413);
}

#[tokio::test]
async fn acquire_release_and_lock_index() {
    let a = Agent::new(EmulatorConfig::with_token(TOKEN));
    let s1 = a.session(json!({"Behavior": "delete", "LockDelay": "0s"})).await;
    let s2 = a.session(json!({"LockDelay": "0s"})).await;
    assert_eq!(a.put(&format!("/v1/kv/l?acquire={s1}"), b"1").await.1, "true");
    assert_eq!(a.put(&format!("/v1/kv/l?acquire={s2}"), b"2").await.1, "false");
    assert_eq!(a.put(&format!("/v1/kv/l?release={s2}"), b"2").await.1, "false");
    let e = a.emu.kv("l").unwrap();
    assert_eq!((e.lock_index, e.session.as_deref(), e.value.as_slice()), (1, Some(s1.as_str()), &b"1"[..]));
    assert_eq!(a.put(&format!("/v1/kv/l?release={s1}"), b"r").await.1, "true");
    assert_eq!(a.put(&format!("/v1/kv/l?acquire={s2}"), b"2").await.1, "true");
    assert_eq!(a.emu.kv("l").unwrap().lock_index, 2);
    let (s, b) = a.put("/v1/kv/l?acquire=no-such-session", b"").await;
    assert!(s == 500 && b.contains("invalid session"), "{b}");
    // Destroying a Behavior=delete session deletes its keys.
    assert_eq!(a.put(&format!("/v1/kv/d?acquire={s1}"), b"1").await.1, "true");
    a.put(&format!("/v1/session/destroy/{s1}"), b"").await;
    assert!(a.emu.kv("d").is_none());
}

#[tokio::test]
async fn lock_delay_follows_invalidation() {
    let a = Agent::new(EmulatorConfig::with_token(TOKEN));
    let s1 = a.session(json!({"Behavior": "delete", "LockDelay": "500ms"})).await;
    let s2 = a.session(json!({})).await;
    assert_eq!(a.put(&format!("/v1/kv/k?acquire={s1}"), b"1").await.1, "true");
    assert!(a.emu.invalidate_session(&s1));
    assert_eq!(a.put(&format!("/v1/kv/k?acquire={s2}"), b"2").await.1, "false", "within lock-delay");
    assert_eq!(a.put("/v1/kv/k?cas=0", b"plain").await.1, "true", "lock-delay only blocks acquire");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(a.put(&format!("/v1/kv/k?acquire={s2}"), b"2").await.1, "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_at_ttl_or_twice_ttl_and_delete_their_keys() {
    for (expiry, alive_at, gone_by) in [(Expiry::AtTtl, 100, 700), (Expiry::AtTwiceTtl, 700, 1400)] {
        let a = Agent::new(fast(expiry));
        let id = a.session(json!({"TTL": "500ms", "Behavior": "delete", "LockDelay": "0s"})).await;
        assert_eq!(a.put(&format!("/v1/kv/e?acquire={id}"), b"1").await.1, "true");
        tokio::time::sleep(Duration::from_millis(alive_at)).await;
        assert!(a.emu.kv("e").is_some(), "{expiry:?}: still there after {alive_at} ms");
        tokio::time::sleep(Duration::from_millis(gone_by - alive_at)).await;
        assert!(a.emu.kv("e").is_none(), "{expiry:?}: gone by {gone_by} ms");
        assert!(a.emu.sessions().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_queries_wait_wake_and_return_early() {
    let a = Agent::new(EmulatorConfig::with_token(TOKEN));
    a.put("/v1/kv/w/x", b"1").await;
    let (_, idx, _) = a.get("/v1/kv/w/?recurse").await;
    let idx = idx.unwrap();
    // Nothing changes: returns after wait (+ jitter <= wait/16) with the same index.
    let (s, same, _) = a.get(&format!("/v1/kv/w/?recurse&index={idx}&wait=200ms")).await;
    assert_eq!((s, same), (200, Some(idx)));
    // A write elsewhere does not move this prefix's index; a write under it wakes the query.
    let path = format!("/v1/kv/w/?recurse&index={idx}&wait=10s");
    let (woken, ()) = tokio::join!(a.get(&path), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.put("/v1/kv/other", b"1").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.put("/v1/kv/w/y", b"1").await;
    });
    let new = woken.1.unwrap();
    assert!(new > idx);
    assert_eq!(Some(new), a.emu.kv("w/y").map(|e| e.modify_index));
    // A deletion under the prefix moves the index too (tombstones).
    let path = format!("/v1/kv/w/?recurse&index={new}&wait=10s");
    let (deleted, ()) = tokio::join!(a.get(&path), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.call(reqwest::Method::DELETE, "/v1/kv/w/y", None).await;
    });
    assert!(deleted.1.unwrap() > new);
    let now_idx = deleted.1.unwrap();
    a.emu.return_early(1);
    let (s, early, _) = a.get(&format!("/v1/kv/w/?recurse&index={now_idx}&wait=10m")).await;
    assert_eq!((s, early), (200, Some(now_idx)), "returned early without a change");
    assert_eq!(a.emu.request_counts().kv_blocking_get, 4);
}

#[tokio::test]
async fn acl_tokens_and_datacenters() {
    let a = Agent::new(EmulatorConfig::with_token(TOKEN));
    let url = format!("{}/v1/kv/x", a.emu.url());
    let none = a.http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 403);
    assert!(none.text().await.unwrap().contains("Permission denied"));
    let wrong = a.http.get(&url).header("X-Consul-Token", "nope").send().await.unwrap();
    assert_eq!(wrong.status(), 403);
    assert_eq!(wrong.text().await.unwrap(), "ACL not found");
    let bearer = a.http.get(&url).header("Authorization", format!("Bearer {TOKEN}")).send().await.unwrap();
    assert_eq!(bearer.status(), 404, "valid token, missing key");
    let query = a.http.get(format!("{url}?token={TOKEN}")).send().await.unwrap();
    assert_eq!(query.status(), 404);
    assert_eq!(a.get("/v1/kv/x?dc=dc1").await.0, 404);
    let (s, _, b) = a.get("/v1/kv/x?dc=elsewhere").await;
    assert!(s == 500 && b.contains("No path to datacenter"), "{b}");
    let open = Agent::new(EmulatorConfig::default());
    assert_eq!(open.http.get(format!("{}/v1/kv/x", open.emu.url())).send().await.unwrap().status(), 404, "ACLs off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_and_dropped_acquire_reply() {
    let a = Agent::new(EmulatorConfig::with_token(TOKEN));
    let id = a.session(json!({"TTL": "30s"})).await;
    a.emu.stop_agent();
    // Refused, or (a pooled connection the stop closed) reset: either way, nothing answers.
    let down = a.http.get(format!("{}/v1/kv/x", a.emu.url())).send().await.unwrap_err();
    assert!(down.is_connect() || down.is_request(), "{down}");
    a.emu.start_agent().unwrap();
    assert_eq!(a.put(&format!("/v1/session/renew/{id}"), b"").await.0, 200, "state survives the agent restart");
    a.emu.drop_next_acquire_reply();
    let resp = a
        .http
        .put(format!("{}/v1/kv/lock?acquire={id}", a.emu.url()))
        .header("X-Consul-Token", TOKEN)
        .body("v")
        .send()
        .await;
    let lost = match resp {
        Err(_) => true,
        Ok(r) => r.text().await.is_err(),
    };
    assert!(lost, "the answer never arrives");
    assert_eq!(a.emu.kv("lock").and_then(|e| e.session), Some(id), "but the acquire was applied");
}
