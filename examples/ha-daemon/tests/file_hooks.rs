//! The file resource's hooks run concurrently for one member (the daemon polls `status` while
//! a `follow` may run): `status` must never fail because `follow` changed a file under it. A
//! failed status makes the member look down to its peers, and a switchover to it then went to
//! another member (seen in the e2e test on a fresh machine).

use std::path::Path;
use std::process::{Command, Output};

fn hook(dir: &Path, name: &str, args: &[&str]) -> Output {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/file").join(name))
        .args(args)
        .env("FILE_RESOURCE_DIR", dir)
        .env("LEASEHOLD_NAME", "a")
        .output()
        .expect("the hook runs")
}

#[test]
#[allow(clippy::disallowed_methods)] // a thread runs `follow` beside `status`: the race is the test
fn status_never_fails_while_follow_changes_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    std::fs::write(dir.path().join("b/position"), "5\n").unwrap();
    let root = dir.path().to_path_buf();
    let follower = std::thread::spawn(move || {
        for _ in 0..300 {
            assert!(hook(&root, "follow", &["b", "file://b"]).status.success());
            assert!(hook(&root, "follow", &["", ""]).status.success());
        }
    });
    let mut failures = Vec::new();
    while !follower.is_finished() {
        let out = hook(dir.path(), "status", &[]);
        if !out.status.success() {
            failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    follower.join().unwrap();
    assert!(failures.is_empty(), "{} status runs failed, first: {}", failures.len(), failures[0]);
    // Replication copied b's position while it was followed.
    let out = hook(dir.path(), "status", &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"running": true, "role": "replica", "position": 5, "timeline": 0}"#
    );
}
