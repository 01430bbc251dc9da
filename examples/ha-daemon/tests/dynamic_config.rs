//! The dynamic configuration against the binary on real etcd: `ctl show-config` and
//! `ctl edit-config` (validated, shown as a diff, confirmed, written with compare-and-set), and
//! members that report the settings they apply only at their next start, then apply them.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Cluster, Store, bin, text};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(40);

fn show_config(c: &Cluster) -> Value {
    let out = c.ctl(0, &["show-config"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("show-config prints JSON: {e}\n{}", text(&out)))
}

fn pending(c: &Cluster, i: usize) -> Vec<String> {
    c.status(i)
        .and_then(|s| s["pending_restart_settings"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect()
}

#[test]
fn edit_config_validates_confirms_writes_and_members_apply_it_at_restart() {
    let mut c = Cluster::start(Store::etcd(), 3);
    c.wait_leader(LIMIT, |_, _| true);
    let before = show_config(&c);
    let out = c.ctl(0, &["show-config", "--format", "yaml"]);
    assert!(out.status.success(), "{}", text(&out));
    let yaml: Value = serde_saphyr::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("show-config --format yaml prints YAML: {e}\n{}", text(&out)));
    assert_eq!(yaml, before, "the YAML and JSON forms hold the same document");

    // Refused before anything is written, naming the key.
    for (args, key) in [
        (vec!["--set", "ttl=abc"], "ttl"),
        (vec!["--set", "loop_wait=30"], "loop_wait"),
        (vec!["--set", "tll=30"], "tll"),
        (vec!["--pg", "port=5433"], "postgresql.parameters.port"),
        (vec!["--set", "novalue"], "--set"),
    ] {
        let mut all = vec!["edit-config", "--force"];
        all.extend(args.iter().copied());
        let out = c.ctl(0, &all);
        assert!(!out.status.success(), "{args:?} must be refused: {}", text(&out));
        assert!(text(&out).contains(&format!("`{key}`")), "{args:?}: the error names {key}: {}", text(&out));
    }
    assert_eq!(show_config(&c), before, "a refused edit writes nothing");

    // Not confirmed: nothing written.
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(&c.members[0].config)
        .args(["ctl", "edit-config", "--set", "ttl=8"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctl runs");
    child.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("+ ttl: 8") && text(&out).contains("not changed"), "{}", text(&out));
    assert_eq!(show_config(&c), before, "an unconfirmed edit writes nothing");

    // Written: the diff is shown, the store holds the document.
    let out = c.ctl(1, &["edit-config", "--force", "--set", "ttl=8", "--set", "loop_wait=2", "--pg", "work_mem=8MB"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("+ ttl: 8") && shown.contains("+ loop_wait: 2"), "{shown}");
    assert!(shown.contains("+ postgresql.parameters.work_mem: \"8MB\""), "{shown}");
    let doc = show_config(&c);
    assert_eq!((doc["ttl"].as_u64(), doc["loop_wait"].as_u64()), (Some(8), Some(2)), "{doc}");
    assert_eq!(doc["postgresql"]["parameters"]["work_mem"], "8MB", "{doc}");
    let again = c.ctl(2, &["edit-config", "--force", "--set", "ttl=8"]);
    assert!(text(&again).contains("no changes"), "{}", text(&again));

    // Every running member reports what it applies at its next start.
    c.wait_for("every member reports a pending restart", LIMIT, |c| {
        (0..3).all(|i| {
            let p = pending(c, i);
            p.iter().any(|s| s.starts_with("ttl: 8 s")) && p.iter().any(|s| s.starts_with("loop_wait: 2 s"))
        })
    });
    let list = text(&c.ctl(0, &["list"]));
    assert!(list.contains("pending restart: n1"), "{list}");

    // A restarted member runs with the store's timing and has nothing pending.
    let (leader, _) = c.wait_leader(LIMIT, |_, _| true);
    let replica = (0..3).find(|&i| i != leader).unwrap();
    assert_eq!(c.members[replica].proc.as_mut().unwrap().terminate(LIMIT), Some(0));
    c.start_member(replica);
    c.wait_for("the restarted member applies the dynamic timing", LIMIT, |c| {
        c.status(replica).is_some_and(|s| s["state"] == "replica") && pending(c, replica).is_empty()
    });
    assert!(c.log(replica).contains("running with the timing of the dynamic configuration"), "{}", c.log(replica));
    assert!(!pending(&c, leader).is_empty(), "the leader was not restarted: still pending");
}
