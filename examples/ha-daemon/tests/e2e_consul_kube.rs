//! End to end on a real Consul agent and a real kube-apiserver: three `leasehold-ha`
//! processes with the file resource. One test per store runs, in order, a switchover to a
//! named candidate, a SIGTERM of the leader (it releases the key), and a kill -9 of the
//! leader whose resource stays primary, then restarts that former leader, which must demote
//! before it follows. Every change of leader costs a ttl at most once (the kill -9), which
//! keeps Consul's ttl of 20 s affordable.
//!
//! Waits use deadlines; assertions are on states and the order of events, never on elapsed
//! time. The servers are stopped by pid on drop, after the members, also on panic.

mod common;

use std::time::Duration;

use common::{Cluster, Store, text};

/// Long enough for Consul to drop a dead holder's session (ttl 20 s: a session TTL of 10 s,
/// which Consul may keep up to twice that) plus the members' loops, on a loaded machine.
const LIMIT: Duration = Duration::from_secs(90);

/// The lines of `events` (the file resource's log) after the first `from` bytes.
fn events_since(c: &Cluster, from: usize) -> String {
    c.events().get(from..).unwrap_or_default().to_string()
}

/// Index of the first line of `events` containing `needle`.
fn line_of(events: &str, needle: &str) -> Option<usize> {
    events.lines().position(|l| l.contains(needle))
}

/// `text` without ANSI colour sequences (the daemon's log is coloured).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            // ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Waits until member `i` is a replica following member `leader`, as it and its resource say.
fn wait_follows(c: &Cluster, i: usize, leader: usize) {
    let (name, leader_name) = (c.members[i].name.clone(), c.members[leader].name.clone());
    c.wait_for(&format!("{name} follows {leader_name}"), LIMIT, |c| {
        c.status(i).is_some_and(|s| s["role"] == "replica" && s["acting"] == false && s["leader"] == leader_name)
            && std::fs::read_to_string(c.resource_dir.join(&name).join("leader")).is_ok_and(|l| l.trim() == leader_name)
    });
}

/// (2) `ctl switchover --candidate` hands the key to the named member with a greater epoch;
/// the old leader demotes gracefully and follows it.
fn switchover(c: &Cluster, leader: usize, epoch: u64) -> (usize, u64) {
    let target = (leader + 1) % 3;
    c.wait_for("all members see the leader", LIMIT, |c| {
        (0..3).all(|i| c.status(i).is_some_and(|s| s["leader"] == c.members[leader].name))
    });
    let out = c.ctl(leader, &["switchover", "--candidate", &c.members[target].name, "--wait", "80"]);
    assert!(out.status.success(), "{}", text(&out));
    let (now, next) = c.wait_leader(LIMIT, |i, _| i != leader);
    assert_eq!(now, target, "the named candidate takes over");
    assert!(next > epoch, "switchover epoch {next} must exceed {epoch}");
    wait_follows(c, leader, target);
    let events = c.events();
    assert!(events.contains(&format!("{} demoted (graceful)", c.members[leader].name)), "{events}");
    (target, next)
}

/// (3) SIGTERM of the leader: it demotes, releases the key before it exits (so right after
/// its exit no one reads it as leader), and another member is promoted after its demote.
fn sigterm_release(c: &mut Cluster, leader: usize, epoch: u64) -> (usize, u64) {
    let name = c.members[leader].name.clone();
    let from = c.events().len();
    let code = c.members[leader].proc.as_mut().unwrap().terminate(LIMIT);
    assert_eq!(code, Some(0), "SIGTERM ends the leader cleanly");
    c.members[leader].proc = None;
    let via = (leader + 1) % 3;
    let list = c.ctl(via, &["list"]);
    let out = text(&list);
    assert!(list.status.success(), "{out}");
    assert!(!out.contains(&format!("leader: {name},")), "the key must be released before the exit: {out}");

    let (next, next_epoch) = c.wait_leader(LIMIT, |i, _| i != leader);
    assert!(next_epoch > epoch, "epoch {next_epoch} after the release must exceed {epoch}");
    let events = events_since(c, from);
    let demoted = line_of(&events, &format!("{name} demoted"));
    let promoted = line_of(&events, &format!("{} promoted under epoch {next_epoch}", c.members[next].name));
    assert!(
        matches!((demoted, promoted), (Some(d), Some(p)) if d < p),
        "the old leader demotes before the next is promoted: {events}"
    );
    (next, next_epoch)
}

/// (1) and (4): kill -9 of the leader daemon, its resource left running as primary; another
/// member takes over with a greater epoch and the dead leader's writes are fenced. The old
/// daemon, restarted, demotes its resource before anything else and then follows.
fn crash_and_restart_former_leader(c: &mut Cluster, leader: usize, epoch: u64) {
    let name = c.members[leader].name.clone();
    c.members[leader].proc.as_mut().unwrap().kill9();
    let (next, next_epoch) = c.wait_leader(LIMIT, |i, _| i != leader);
    assert!(next_epoch > epoch, "failover epoch {next_epoch} must exceed {epoch}");
    assert!(c.client_write(next), "the new leader accepts writes");
    let role = std::fs::read_to_string(c.resource_dir.join(&name).join("role")).unwrap_or_default();
    assert_eq!(role.trim(), "primary", "the dead leader's resource still runs as primary");
    assert!(!c.client_write(leader), "the dead leader's stale epoch {epoch} is fenced by {next_epoch}");

    let from = c.events().len();
    let log_from = c.log(leader).len();
    c.start_member(leader);
    wait_follows(c, leader, next);
    let events = events_since(c, from);
    let mine: Vec<&str> = events.lines().filter(|l| l.contains(&format!("{name} "))).collect();
    assert!(
        mine.first().is_some_and(|l| l.contains(&format!("{name} demoted"))),
        "the restarted former leader's first action must be a demote: {events}"
    );
    assert!(!events.contains(&format!("{name} promoted")), "{events}");
    let log = plain(c.log(leader).get(log_from..).unwrap_or_default());
    assert!(!log.contains("still primary: demote first"), "follow ran before demote:\n{log}");
    // The daemon's own account agrees: the demote hook ran (and ended) before any follow hook.
    let demote_ran = line_of(&log, "running the demote hook");
    let demoted = line_of(&log, "daemon: demoted");
    let follow_ran = line_of(&log, "running the follow hook");
    assert!(
        matches!((demote_ran, demoted, follow_ran), (Some(a), Some(b), Some(c)) if a < b && b < c),
        "the restarted former leader must demote, then follow:\n{log}"
    );
    assert_eq!(c.leader().map(|l| l.0), Some(next), "the new leader keeps the key");
    assert!(c.client_write(next));
}

fn scenario(store: Store) {
    let mut c = Cluster::start(store, 3);
    let (first, epoch1) = c.wait_leader(LIMIT, |_, _| true);
    let (second, epoch2) = switchover(&c, first, epoch1);
    let (third, epoch3) = sigterm_release(&mut c, second, epoch2);
    // Back to three members before the crash.
    c.start_member(second);
    wait_follows(&c, second, third);
    crash_and_restart_former_leader(&mut c, third, epoch3);
    // Shown with --nocapture: the timeline of the run.
    eprintln!("{} resource events:\n{}", c.store.section().lines().next().unwrap_or(""), c.events());
}

#[test]
fn ha_daemon_on_real_consul() {
    if let Some(store) = Store::consul_or_skip() {
        scenario(store);
    }
}

#[test]
fn ha_daemon_on_real_kubernetes() {
    if let Some(store) = Store::kubernetes_or_skip() {
        scenario(store);
    }
}

/// Issue 18: the daemon and ctl on a Consul agent that serves HTTPS only to clients with a
/// certificate (`[consul] cacert / cert / key`): a leader is elected and a switchover to a
/// named candidate goes through.
#[test]
fn consul_over_tls_elects_and_switches_over() {
    let Some(store) = Store::consul_tls() else { return };
    let c = Cluster::start(store, 3);
    let (leader, epoch) = c.wait_leader(LIMIT, |_, _| true);
    let out = c.ctl(leader, &["list"]);
    assert!(out.status.success(), "ctl reaches the agent over TLS: {}", text(&out));
    let (next, next_epoch) = switchover(&c, leader, epoch);
    assert_ne!(next, leader);
    assert!(next_epoch > epoch);
}

/// `ctl remove-garbage-leader` on a one-member cluster whose leader key is `key`: a valid key
/// is refused; `write_garbage` writes an undecodable record over the leader's, which `ctl list`
/// shows while the member demotes and cannot take the key back; without `--force` (and no
/// key typed) nothing is removed; with it the key is removed and the member leads again at
/// a greater epoch. `version_name` is what the store calls the version it compared.
fn garbage_leader(store: Store, key: &str, version_name: &str, write_garbage: impl FnOnce(&Cluster)) {
    let c = Cluster::start(store, 1);
    let (_, epoch) = c.wait_leader(LIMIT, |_, _| true);
    let out = c.ctl(0, &["remove-garbage-leader", "--force"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no garbage leader key"), "{}", text(&out));
    assert_eq!(c.leader().map(|(_, e)| e), Some(epoch), "the valid key stays");

    write_garbage(&c);
    let list = |c: &Cluster| -> serde_json::Value {
        let out = c.ctl(0, &["list", "--format", "json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
    };
    let shown = |l: &serde_json::Value| {
        l["garbage"].as_array().is_some_and(|g| g.iter().any(|g| g["kind"] == "leader" && g["key"] == key))
    };
    c.wait_for("ctl list to show the garbage leader key and no leader", LIMIT, |c| {
        let l = list(c);
        l["leader"].is_null() && shown(&l)
    });
    c.wait_for("the member to stop accepting writes", LIMIT, |c| !c.client_write(0));

    // Without --force the key must be typed; ctl's stdin is empty here, so nothing happens.
    let out = c.ctl(0, &["remove-garbage-leader"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not confirmed"), "{}", text(&out));
    assert!(shown(&list(&c)), "the garbage is still there");

    let out = c.ctl(0, &["remove-garbage-leader", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains(&format!("removed the undecodable leader key (it was at {version_name} ")), "{said}");
    let (_, next) = c.wait_leader(LIMIT, |_, e| e > epoch);
    assert!(next > epoch);
    c.wait_for("the garbage to be gone from ctl list", LIMIT, |c| !shown(&list(c)));
}

/// Consul: a plain PUT over the held leader key keeps the holder's session on it, so it
/// blocks the key until `ctl remove-garbage-leader` deletes it with `?cas=<ModifyIndex>`.
#[test]
fn ctl_removes_a_garbage_leader_key_on_real_consul() {
    let Some(store) = Store::consul_or_skip() else { return };
    garbage_leader(store, "e2e/e2e/leader", "ModifyIndex", |c| {
        let Store::Consul { agent, .. } = &c.store else { unreachable!("consul") };
        let url = format!("{}/v1/kv/e2e/e2e/leader", agent.address());
        let (code, body) = common::http("PUT", &url, None, Some("not a leader record {"));
        assert_eq!((code, body.trim()), (200, "true"), "PUT garbage");
    });
}

/// Kubernetes: the holder's record edited by hand into garbage, with a lease duration of an
/// hour so members do not take the Lease over by expiry during the test; `ctl
/// remove-garbage-leader` deletes it with resourceVersion and uid preconditions.
#[test]
fn ctl_removes_a_garbage_leader_lease_on_real_kubernetes() {
    let Some(store) = Store::kubernetes_or_skip() else { return };
    garbage_leader(store, "e2e-leader", "resourceVersion", |c| {
        let Store::Kubernetes { server, .. } = &c.store else { unreachable!("kubernetes") };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            use k8s_openapi::api::coordination::v1::Lease;
            let client = server.client(server.admin_token()).await.expect("kube client");
            let api: kube::Api<Lease> = kube::Api::namespaced(client, common::KUBE_NAMESPACE);
            let mut lease = api.get("e2e-leader").await.expect("the leader Lease");
            lease
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert("leasehold.io/leader".into(), "not a leader record {".into());
            lease.spec.get_or_insert_with(Default::default).lease_duration_seconds = Some(3600);
            api.replace("e2e-leader", &Default::default(), &lease).await.expect("replace with garbage");
        });
    });
}
