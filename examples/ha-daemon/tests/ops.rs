//! Issue 18, for operators coming from Patroni: the REST API over TLS (`restapi.certfile`,
//! `keyfile`, `cafile`, `verify_client`; `ctl.cacert`), the ctl verbs `topology`, `restart`,
//! `reload`, `reinit`, `remove` and `--format yaml`, and the latency histograms on
//! `/metrics`. Real etcd, real daemon processes, the file resource; certificates are made
//! in-process (`leasehold_test_servers::make_pki`; members serve with the server certificate
//! and present it to peers). Waits use deadlines; nothing asserts on elapsed time.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::actions::{actions_log, start};
use common::{Cluster, Store, TOKEN, text};
use leasehold_test_servers::make_pki;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(40);

/// `ctl <args>` through member `via`'s config with `input` on stdin.
fn ctl_with_input(c: &Cluster, via: usize, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(common::bin())
        .arg("--config")
        .arg(&c.members[via].config)
        .arg("ctl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// `ctl list --format json`, parsed.
fn list(c: &Cluster, via: usize) -> Value {
    let out = c.ctl(via, &["list", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

/// Waits until `ctl list` shows a leader whose API answered (its state is not guessed).
fn wait_listed_leader(c: &Cluster, via: usize) -> String {
    let mut last = Value::Null;
    #[allow(clippy::disallowed_methods)] // a deadline, not a measurement
    let until = std::time::Instant::now() + LIMIT;
    #[allow(clippy::disallowed_methods)]
    while std::time::Instant::now() < until {
        last = list(c, via);
        if let Some(leader) = last["leader"].as_str() {
            let members = last["members"].as_array().cloned().unwrap_or_default();
            if members.len() == c.members.len() && members.iter().all(|m| m["state"] != "running?") {
                return leader.to_string();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    c.dump();
    panic!("no leader listed with every member answering: {last}");
}

/// curl over HTTPS: `ca` to verify the server (none: the system's roots), an optional client
/// certificate; (status, body), status 0 when the connection or handshake failed.
fn curl(method: &str, url: &str, ca: Option<&Path>, client: Option<(&Path, &Path)>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "10", "-X", method, "-o", "-", "-w", "\n%{http_code}", "-H"]);
    cmd.arg(format!("Authorization: Bearer {TOKEN}"));
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd.arg(url).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn rest_api_over_tls_with_client_certificates() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path());
    // n1 and n3 require client certificates on every connection; n2 only on POSTs.
    let tls = |i: usize| {
        format!(
            "certfile = \"{}\"\nkeyfile = \"{}\"\ncafile = \"{}\"\nverify_client = \"{}\"\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display(),
            if i == 1 { "optional" } else { "required" }
        )
    };
    let ctl = format!(
        "[ctl]\ncacert = \"{}\"\ncertfile = \"{}\"\nkeyfile = \"{}\"\n",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let c = start(Store::etcd(), "ops", 3, tls, &ctl);
    let client = Some((pki.client_cert.as_path(), pki.client_key.as_path()));

    // ctl reads every member's /status over HTTPS (a member it could not reach shows `running?`).
    let leader = wait_listed_leader(&c, 0);
    let listed = list(&c, 0);
    for m in listed["members"].as_array().unwrap() {
        assert!(m["api_url"].as_str().unwrap().starts_with("https://"), "{listed}");
    }

    let n1 = &c.members[0].api;
    let (code, body) = curl("GET", &format!("{n1}/status"), Some(&pki.ca), client);
    assert_eq!(code, 200, "served over TLS to a client with the CA and a certificate: {body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["name"], "n1");
    let (code, _) = curl("GET", &format!("{n1}/status"), None, client);
    assert_eq!(code, 0, "a client without the CA refuses the server's certificate");
    let (code, _) = curl("GET", &format!("{n1}/status"), Some(&pki.ca), None);
    assert_eq!(code, 0, "verify_client = required refuses a client without a certificate");
    let plain = n1.replace("https://", "http://");
    let (code, _) = curl("GET", &format!("{plain}/status"), None, None);
    assert_ne!(code, 200, "no plain HTTP on a TLS port");

    // verify_client = optional: reads without a certificate, POSTs only with one.
    let n2 = &c.members[1].api;
    let (code, _) = curl("GET", &format!("{n2}/status"), Some(&pki.ca), None);
    assert_eq!(code, 200, "optional: GET without a client certificate");
    let (code, body) = curl("POST", &format!("{n2}/reload"), Some(&pki.ca), None);
    assert_eq!(code, 403, "optional: POST without a client certificate: {body}");
    assert!(body.contains("client certificate"), "{body}");
    assert!(!actions_log(&c).contains("n2 reload"), "nothing was done: {}", actions_log(&c));
    let (code, body) = curl("POST", &format!("{n2}/reload"), Some(&pki.ca), client);
    assert_eq!(code, 200, "optional: POST with a client certificate: {body}");
    assert!(actions_log(&c).contains("n2 reload"), "{}", actions_log(&c));

    // A switchover end to end: ctl -> leader (HTTPS), the leader probes the candidate over
    // HTTPS with its own certificate, ctl waits for the new leader's /primary over HTTPS.
    let candidate = c.members.iter().map(|m| m.name.clone()).find(|n| *n != leader).unwrap();
    let out = c.ctl(0, &["switchover", "--candidate", &candidate, "--wait", "40"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("new leader {candidate}")), "{}", text(&out));
    assert_eq!(wait_listed_leader(&c, 2), candidate);

    // A ctl trusting another CA (`ctl.cacert`) refuses every member's certificate: it reads
    // the store but cannot tell the members' state.
    let other_dir = tempfile::tempdir().unwrap();
    let other = make_pki(other_dir.path());
    let own = std::fs::read_to_string(&c.members[0].config).unwrap();
    let wrong_ca = own.replace(
        &format!("[ctl]\ncacert = \"{}\"", pki.ca.display()),
        &format!("[ctl]\ncacert = \"{}\"", other.ca.display()),
    );
    assert_ne!(own, wrong_ca);
    let path = c.dir.path().join("wrong-ca.toml");
    std::fs::write(&path, wrong_ca).unwrap();
    let out = Command::new(common::bin())
        .arg("--config")
        .arg(&path)
        .args(["ctl", "list", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = listed["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{listed}");
    assert!(members.iter().all(|m| m["state"] == "running?" && m["lease_left_ms"].is_null()), "{listed}");
    let out = Command::new(common::bin())
        .arg("--config")
        .arg(&path)
        .args(["ctl", "reload", &candidate, "--force"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("did not answer"), "{}", text(&out));
}

#[test]
fn bad_tls_files_are_refused_at_check_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let other = tempfile::tempdir().unwrap();
    let other_pki = make_pki(other.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let base = |restapi: &str, ctl: &str| {
        format!(
            "scope = \"s\"\nname = \"n1\"\n[restapi]\n{restapi}{ctl}[hooks]\ndir = \"{}\"\n[etcd]\nendpoints = \"http://127.0.0.1:2379\"\n",
            common::hooks_dir().display()
        )
    };
    let files =
        |cert: &Path, key: &Path| format!("certfile = \"{}\"\nkeyfile = \"{}\"\n", cert.display(), key.display());
    let missing = dir.path().join("missing.pem");
    let cases: Vec<(String, &str)> = vec![
        (base(&files(&missing, &pki.server_key), ""), "config key `restapi.certfile`: cannot read"),
        (base(&files(&garbage, &pki.server_key), ""), "config key `restapi.certfile`"),
        (base(&files(&pki.server_cert, &garbage), ""), "config key `restapi.keyfile`"),
        (base(&files(&pki.server_cert, &other_pki.server_key), ""), "config key `restapi.keyfile`"),
        (
            base(&format!("certfile = \"{}\"\n", pki.server_cert.display()), ""),
            "config key `restapi.keyfile`: is required",
        ),
        (
            base(&format!("{}verify_client = \"required\"\n", files(&pki.server_cert, &pki.server_key)), ""),
            "config key `restapi.cafile`",
        ),
        (
            base(&format!("{}verify_client = \"sometimes\"\n", files(&pki.server_cert, &pki.server_key)), ""),
            "verify_client",
        ),
        (
            base(&format!("{}cafile = \"{}\"\n", files(&pki.server_cert, &pki.server_key), garbage.display()), ""),
            "config key `restapi.cafile`",
        ),
        (
            base(&format!("{}connect_url = \"http://127.0.0.1:8008\"\n", files(&pki.server_cert, &pki.server_key)), ""),
            "config key `restapi.connect_url`",
        ),
        (base("", &format!("[ctl]\ncacert = \"{}\"\n", missing.display())), "config key `ctl.cacert`"),
        (base("", &format!("[ctl]\ncertfile = \"{}\"\n", pki.client_cert.display())), "config key `ctl.keyfile`"),
    ];
    for (config, expected) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &config).unwrap();
        let out =
            Command::new(common::bin()).arg("--config").arg(&path).args(["run", "--check-config"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{config}\n{}", text(&out));
        assert!(text(&out).contains(expected), "expected {expected:?} in:\n{}", text(&out));
        assert!(!text(&out).contains("panicked"), "{}", text(&out));
    }
    // The good files pass, and the default connect URL is https.
    let path = dir.path().join("good.toml");
    std::fs::write(&path, base(&files(&pki.server_cert, &pki.server_key), "")).unwrap();
    let out = Command::new(common::bin()).arg("--config").arg(&path).args(["run", "--check-config"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("api https://127.0.0.1:8008"), "{}", text(&out));
}

/// `ctl <args>` through member 0, its stdout parsed as YAML.
fn yaml(c: &Cluster, args: &[&str]) -> serde_yaml_ng::Value {
    let out = c.ctl(0, args);
    assert!(out.status.success(), "{}", text(&out));
    serde_yaml_ng::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

#[test]
fn ctl_verbs_topology_restart_reload_reinit_remove_and_metrics() {
    let mut c = start(Store::etcd(), "ops", 3, |_| String::new(), "");
    let leader = wait_listed_leader(&c, 0);
    let li = c.members.iter().position(|m| m.name == leader).unwrap();
    let replica = c.members.iter().map(|m| m.name.clone()).find(|n| *n != leader).unwrap();

    // topology: the leader at the root, the two replicas below it.
    let out = c.ctl(0, &["topology"]);
    assert!(out.status.success(), "{}", text(&out));
    let tree = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = tree.lines().collect();
    assert!(lines[1].starts_with(&format!("{leader} (leader")), "{tree}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("├── ") || l.starts_with("└── ")).count(), 2, "{tree}");
    assert!(lines.last().unwrap().starts_with("└── "), "{tree}");

    // --format yaml for topology, list and history: documents a YAML reader accepts.
    let topo = yaml(&c, &["topology", "--format", "yaml"]);
    assert_eq!(topo["leader"]["name"].as_str(), Some(leader.as_str()));
    assert_eq!(topo["leader"]["replicas"].as_sequence().map(Vec::len), Some(2));
    let listed = yaml(&c, &["list", "--format", "yaml"]);
    assert_eq!(listed["leader"].as_str(), Some(leader.as_str()));
    assert_eq!(listed["members"].as_sequence().map(Vec::len), Some(3));
    let history = yaml(&c, &["history", "--format", "yaml"]);
    assert!(history.as_sequence().is_some(), "history is a list: {history:?}");

    // restart / reload: confirmation, --force, unknown members.
    let out = ctl_with_input(&c, 0, &["restart", &replica], "no\n");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not confirmed"), "{}", text(&out));
    assert!(!actions_log(&c).contains("restart"), "{}", actions_log(&c));
    let out = ctl_with_input(&c, 0, &["restart", &replica], "yes\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(actions_log(&c).contains(&format!("{replica} restart")), "{}", actions_log(&c));
    let out = c.ctl(0, &["reload", &leader, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(actions_log(&c).contains(&format!("{leader} reload")), "{}", actions_log(&c));
    let out = c.ctl(0, &["restart", "nosuch", "--force"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("\"nosuch\" is not a registered member of ops"), "{}", text(&out));

    // reinit: refused on the leader (by ctl, and by the member's API), done on a replica
    // with the leader's name and conn url.
    let out = c.ctl(0, &["reinit", &leader, "--force"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is the leader"), "{}", text(&out));
    let (code, body) = common::http("POST", &format!("{}/reinitialize", c.members[li].api), Some(TOKEN), None);
    assert_eq!(code, 409, "{body}");
    let out = c.ctl(0, &["reinit", &replica, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(actions_log(&c).contains(&format!("{replica} reinit {leader} file://{leader}")), "{}", actions_log(&c));
    assert!(!actions_log(&c).contains(&format!("{leader} reinit")), "{}", actions_log(&c));

    // Histograms on /metrics: the leader's acquire and renew, every store method's counts,
    // and the resource's actions (promote, and the restart asked above).
    let metrics_of = |c: &Cluster, i: usize| common::http("GET", &format!("{}/metrics", c.members[i].api), None, None);
    // The first renewal comes one loop_wait after the election.
    c.wait_for("the leader renewed", LIMIT, |c| metrics_of(c, li).1.contains("method=\"renew\",le=\"+Inf\"}"));
    let (code, metrics) = metrics_of(&c, li);
    assert_eq!(code, 200);
    for needle in [
        "# TYPE leasehold_store_request_duration_seconds histogram",
        "leasehold_store_request_duration_seconds_bucket{scope=\"ops\",name=\"",
        "method=\"acquire\",le=\"+Inf\"}",
        "method=\"renew\",le=\"0.001\"}",
        "leasehold_store_requests_total{",
        "method=\"renew\",outcome=\"ok\"}",
        "action=\"promote\",le=\"+Inf\"} 1",
        "action=\"reload\",le=\"+Inf\"} 1",
        "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes{scope=\"ops\"",
        "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total{scope=\"ops\"",
    ] {
        assert!(metrics.contains(needle), "{needle:?} missing from:\n{metrics}");
    }
    let replica_i = c.members.iter().position(|m| m.name == replica).unwrap();
    let (_, metrics) = common::http("GET", &format!("{}/metrics", c.members[replica_i].api), None, None);
    assert!(metrics.contains("action=\"restart\",le=\"+Inf\"} 1"), "{metrics}");
    assert!(metrics.contains("action=\"follow\""), "{metrics}");

    // remove: refused while members are alive; after they stop, only with the scope typed.
    let out = ctl_with_input(&c, 0, &["remove"], "ops\n");
    assert!(!out.status.success());
    assert!(text(&out).contains("are alive") && text(&out).contains("--force"), "{}", text(&out));
    for m in c.members.iter_mut() {
        m.proc.as_mut().unwrap().terminate(Duration::from_secs(20));
    }
    c.wait_for("members gone from the store", LIMIT, |c| {
        let l = list(c, 0);
        l["members"].as_array().is_some_and(Vec::is_empty) && l["leader"].is_null()
    });
    let out = ctl_with_input(&c, 0, &["remove"], "wrong\n");
    assert!(!out.status.success());
    assert!(text(&out).contains("not confirmed"), "{}", text(&out));
    assert!(
        yaml(&c, &["history", "--format", "yaml"]).as_sequence().is_some_and(|h| !h.is_empty()),
        "nothing removed yet"
    );
    let out = ctl_with_input(&c, 0, &["remove"], "ops\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("control keys of ops"), "{}", text(&out));
    let history = yaml(&c, &["history", "--format", "yaml"]);
    assert!(history.as_sequence().is_some_and(Vec::is_empty), "history wiped: {history:?}");
    let out = ctl_with_input(&c, 0, &["remove"], "ops\n");
    assert!(text(&out).contains("removed 0 control keys"), "nothing left: {}", text(&out));
}
