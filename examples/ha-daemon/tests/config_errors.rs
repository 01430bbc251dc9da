//! Bad configuration files: the binary exits with code 2 and a message naming the key.

mod common;

use std::process::Command;

fn check(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(common::bin())
        .arg("--config")
        .arg(&path)
        .args(["run", "--check-config"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.code(), common::text(&out))
}

fn good() -> String {
    format!(
        "scope = \"s\"\nname = \"n1\"\n[hooks]\ndir = \"{}\"\n[etcd]\nendpoints = \"http://127.0.0.1:2379\"\n",
        common::hooks_dir().display()
    )
}

#[test]
fn a_good_config_checks_ok() {
    let (code, out) = check(&good(), &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok (scope s, member n1, store etcd"), "{out}");
}

/// A config text, environment overrides, and what the error must say.
type Case = (String, &'static [(&'static str, &'static str)], &'static str);

#[test]
fn bad_configs_name_the_key_and_the_rule() {
    let cases: Vec<Case> = vec![
        (good().replace("name = \"n1\"\n", ""), &[], "config key `name`: is required"),
        (
            format!("ttl = 10\n{}", good()),
            &[],
            "config key `ttl`: loop_wait (10s) + 2 * retry_timeout (10s) = 30s exceeds ttl (10s)",
        ),
        (format!("tll = 10\n{}", good()), &[], "config key `tll`"),
        (good().replace("http://127.0.0.1:2379", "127.0.0.1:2379"), &[], "config key `etcd.endpoints`"),
        (format!("{}[consul]\n", good()), &[], "exactly one store section is required; found etcd and consul"),
        (good(), &[("LEASEHOLD_LOOP_WAIT", "x")], "LEASEHOLD_LOOP_WAIT"),
        (good(), &[("LEASEHOLD_RESTAPI__LISTEN", "everywhere")], "config key `restapi.listen`"),
        ("scope = \n".to_string(), &[], "config key `file`"),
    ];
    for (config, env, expected) in cases {
        let (code, out) = check(&config, env);
        assert_eq!(code, Some(2), "{config}\n{out}");
        assert!(out.contains(expected), "expected {expected:?} in:\n{out}");
        assert!(!out.contains("panicked"), "{out}");
    }
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = Command::new(common::bin()).args(["--config", "/nonexistent/leasehold.toml", "run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(common::text(&out).contains("cannot read /nonexistent/leasehold.toml"), "{}", common::text(&out));
    let out = Command::new(common::bin()).arg("run").env_remove("LEASEHOLD_CONFIG").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(common::text(&out).contains("--config"));
}
