//! Issue 18: scheduled switchover and scheduled restart, as patronictl's `switchover
//! --scheduled`, `restart --scheduled` and `flush`. Real etcd, real daemon processes, the file
//! resource. Before its time a schedule is checked by state (the leader is unchanged, `list`
//! shows the schedule, the restart hook has not run); after it, by its effect. Nothing asserts
//! on elapsed time.

mod common;

use std::time::Duration;

use common::actions::{self, actions_log};
use common::{Cluster, Store, TOKEN, http, text};
use leasehold::WallTime;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(40);

/// The wall-clock time `secs` from now, as the RFC 3339 text an operator would type.
fn in_secs(secs: i64) -> String {
    #[allow(clippy::disallowed_methods)] // a schedule is a wall-clock time
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    WallTime::from_unix_millis(now.as_millis() as i64 + secs * 1000).to_string()
}

/// `n` members on etcd whose `restart` hook logs to the actions log.
fn start(n: usize) -> Cluster {
    actions::start(Store::etcd(), "sched", n, |_| String::new(), "")
}

/// `ctl list --format json`, parsed.
fn list(c: &Cluster, via: usize) -> Value {
    let out = c.ctl(via, &["list", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

/// A leader, with every member registered and following it.
fn settled(c: &Cluster) -> usize {
    let (leader, _) = c.wait_leader(LIMIT, |_, _| true);
    let n = c.members.len();
    c.wait_for("all members follow the leader", LIMIT, |c| {
        (0..n).all(|i| c.status(i).is_some_and(|s| s["leader"] == c.members[leader].name))
            && list(c, leader)["members"].as_array().is_some_and(|m| m.len() == n)
    });
    leader
}

#[test]
fn a_scheduled_switchover_waits_for_its_time_then_happens() {
    let c = start(3);
    let first = settled(&c);
    let target = (first + 1) % 3;
    let at = in_secs(10);
    let out = c.ctl(first, &["switchover", "--candidate", &c.members[target].name, "--scheduled", &at]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("switchover scheduled at"), "{}", text(&out));

    // Before its time: the schedule is in the store and shown; the leader has not changed.
    let doc = list(&c, target);
    let want = WallTime::parse(&at).unwrap().to_string();
    assert_eq!(doc["pending"]["scheduled_at"], want.as_str(), "{doc}");
    assert_eq!(doc["pending"]["to"], c.members[target].name.as_str(), "{doc}");
    assert_eq!(doc["leader"], c.members[first].name.as_str(), "{doc}");
    let pretty = text(&c.ctl(first, &["list"]));
    assert!(pretty.contains(&format!("scheduled: switchover (from {}", c.members[first].name)), "{pretty}");
    let status = c.status(first).unwrap();
    assert_eq!(status["scheduled_switchover"]["at"], want.as_str(), "{status}");
    assert_eq!(status["acting"], true, "{status}");
    c.wait_for("the leader awaits the schedule", LIMIT, |c| c.log(first).contains("awaiting the scheduled switchover"));
    assert_eq!(c.leader().map(|(i, _)| i), Some(first), "still the same leader");

    // At its time: the named candidate takes over, and the request is cleared.
    let (now, _) = c.wait_leader(LIMIT, |i, _| i != first);
    assert_eq!(now, target);
    c.wait_for("the failover key is cleared", LIMIT, |c| list(c, target)["pending"].is_null());
    let history = text(&c.ctl(target, &["history"]));
    assert!(history.contains("switchover") && history.contains(&c.members[target].name), "{history}");
}

#[test]
fn flush_cancels_a_scheduled_switchover_and_bad_times_are_refused() {
    let c = start(3);
    let first = settled(&c);
    let api = &c.members[first].api;
    let post = |path: &str, body: &str| http("POST", &format!("{api}{path}"), Some(TOKEN), Some(body));

    // Bad shapes and past times: 400 naming the field; nothing is written.
    for (body, says) in [
        (r#"{"scheduled_at": "tomorrow"}"#, "RFC 3339"),
        (r#"{"scheduled_at": "2026-12-07T03:00"}"#, "RFC 3339"),
        (r#"{"scheduled_at": 1796612400}"#, "must be a string"),
        (r#"{"scheduled_at": "2020-01-01T00:00:00+00:00"}"#, "in the past"),
    ] {
        let (code, answer) = post("/switchover", body);
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer.contains("scheduled_at") && answer.contains(says), "{body}: {answer}");
    }
    let (code, answer) = post("/failover", &format!(r#"{{"candidate": "n2", "scheduled_at": "{}"}}"#, in_secs(60)));
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("cannot be scheduled"), "{answer}");
    let out = c.ctl(first, &["switchover", "--scheduled", "next tuesday"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--scheduled"), "{}", text(&out));
    let doc = list(&c, first);
    assert!(doc["pending"].is_null(), "nothing was written: {doc}");

    // Schedule one; a second request is refused while it is pending.
    let out = c.ctl(first, &["switchover", "--scheduled", &in_secs(120)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!list(&c, first)["pending"]["scheduled_at"].is_null());
    let (code, answer) = post("/switchover", &format!(r#"{{"scheduled_at": "{}"}}"#, in_secs(180)));
    assert_eq!(code, 409, "{answer}");
    let (code, _) = http("DELETE", &format!("{api}/switchover"), None, None);
    assert_eq!(code, 401, "cancelling needs the token");

    // Flush: gone, and the leader stays.
    let out = c.ctl(first, &["flush", "switchover"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("scheduled switchover cancelled"), "{}", text(&out));
    let doc = list(&c, first);
    assert!(doc["pending"].is_null(), "{doc}");
    assert_eq!(doc["leader"], c.members[first].name.as_str(), "{doc}");
    let out = c.ctl(first, &["flush", "switchover"]);
    assert!(!out.status.success() && text(&out).contains("no switchover is scheduled"), "{}", text(&out));
    let (code, _) = http("DELETE", &format!("{api}/switchover"), Some(TOKEN), None);
    assert_eq!(code, 404);
    assert_eq!(c.leader().map(|(i, _)| i), Some(first), "no switchover happened");
}

#[test]
fn a_scheduled_restart_runs_at_its_time_and_flush_cancels_one() {
    let c = start(2);
    let leader = settled(&c);
    let replica = 1 - leader;
    let name = c.members[replica].name.clone();
    let api = &c.members[replica].api;

    for (body, says) in [
        (r#"{"schedule": "soon"}"#, "RFC 3339"),
        (r#"{"schedule": "2020-01-01T00:00:00Z"}"#, "in the past"),
        (r#"{"schedule": true}"#, "must be a string"),
    ] {
        let (code, answer) = http("POST", &format!("{api}/restart"), Some(TOKEN), Some(body));
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer.contains("schedule") && answer.contains(says), "{body}: {answer}");
    }
    let (code, answer) = http("POST", &format!("{api}/restart"), Some(TOKEN), Some(r#"{"when": "now"}"#));
    assert_eq!(code, 400, "unknown fields are refused: {answer}");

    // Scheduled a few seconds ahead: listed, not run yet; then run.
    let at = in_secs(6);
    let out = c.ctl(leader, &["restart", &name, "--scheduled", &at, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let want = WallTime::parse(&at).unwrap().to_string();
    let doc = list(&c, leader);
    let row = doc["members"].as_array().unwrap().iter().find(|m| m["name"] == name.as_str()).cloned().unwrap();
    assert_eq!(row["scheduled_restart"], want.as_str(), "{doc}");
    assert!(!actions_log(&c).contains("restart"), "not before its time: {}", actions_log(&c));
    let pretty = text(&c.ctl(leader, &["list"]));
    assert!(pretty.contains(&format!("scheduled: restart of {name} at {want}")), "{pretty}");
    c.wait_for("the scheduled restart ran", LIMIT, |c| actions_log(c).contains(&format!("{name} restart")));
    let doc = list(&c, leader);
    assert!(doc["members"].as_array().unwrap().iter().all(|m| m["scheduled_restart"].is_null()), "{doc}");

    // Another, far ahead: a second one is refused; flush cancels it; it never runs.
    let out = c.ctl(leader, &["restart", &name, "--scheduled", &in_secs(300), "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = c.ctl(leader, &["restart", &name, "--scheduled", &in_secs(400), "--force"]);
    assert!(!out.status.success() && text(&out).contains("already scheduled"), "{}", text(&out));
    let out = c.ctl(leader, &["flush", "restart"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("{name}: scheduled restart at")), "{}", text(&out));
    assert!(text(&out).contains(&format!("{}: no restart is scheduled", c.members[leader].name)), "{}", text(&out));
    let doc = list(&c, leader);
    assert!(doc["members"].as_array().unwrap().iter().all(|m| m["scheduled_restart"].is_null()), "{doc}");
    let (code, _) = http("DELETE", &format!("{api}/restart"), Some(TOKEN), None);
    assert_eq!(code, 404, "nothing left to cancel");
    assert_eq!(actions_log(&c).matches("restart").count(), 1, "{}", actions_log(&c));
}
