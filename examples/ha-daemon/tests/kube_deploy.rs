//! deploy/kubernetes against a real kube-apiserver (the backend's harness, gated as the
//! other real-server tests: a missing binary is one visible line outside CI, a failure in
//! CI). The server has no scheduler or kubelet, so the test plays their part: it creates the
//! StatefulSet's three Pods (and their claims) from its template through the API, and runs
//! the three `leasehold-ha` daemons as local processes with `POD_NAME`/`POD_NAMESPACE` and a
//! token from the TokenRequest API for the manifests' ServiceAccount (nothing more), over
//! the file resource. A sampler lists the pods the primary Service selects all along.
//!
//! Waits use deadlines; assertions are on states and orders, never on elapsed time.
// Tests read the clock for their deadlines and run a sampler thread; the workspace bans
// both only to keep the library's core pure.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Proc, Store, TOKEN, announce, free_port, hooks_dir, http_get_blocking, text};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(90);

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

fn yaml(path: &Path) -> Value {
    let body = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What `kubectl apply -k deploy/kubernetes` sends, rendered the way kustomize does for
/// this kustomization: every listed file, the namespace set on namespaced objects (and on
/// ServiceAccount subjects), the image renamed.
fn render() -> (String, Vec<Value>) {
    let kustomization = yaml(&deploy_dir().join("kustomization.yaml"));
    let namespace = kustomization["namespace"].as_str().expect("kustomization namespace").to_string();
    let images: Vec<(String, String)> = kustomization["images"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|i| {
                    let name = i["name"].as_str().unwrap().to_string();
                    let new = format!(
                        "{}:{}",
                        i["newName"].as_str().unwrap_or(&name),
                        i["newTag"].as_str().unwrap_or("latest")
                    );
                    (name, new)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut objects = Vec::new();
    for file in kustomization["resources"].as_array().expect("resources") {
        let mut object = yaml(&deploy_dir().join(file.as_str().unwrap()));
        if object["kind"] != "Namespace" {
            object["metadata"]["namespace"] = json!(namespace);
        }
        if let Some(subjects) = object["subjects"].as_array_mut() {
            for s in subjects.iter_mut().filter(|s| s["kind"] == "ServiceAccount") {
                s["namespace"] = json!(namespace);
            }
        }
        if let Some(containers) = object["spec"]["template"]["spec"]["containers"].as_array_mut() {
            for c in containers {
                if let Some((_, new)) = images.iter().find(|(name, _)| c["image"] == name.as_str()) {
                    c["image"] = json!(new);
                }
            }
        }
        objects.push(object);
    }
    (namespace, objects)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

/// The environment the StatefulSet gives the container, for pod `pod` at `ip`, with the
/// Secret's values resolved (what the kubelet does).
fn container_env(objects: &[Value], pod: &str, ip: &str) -> Vec<(String, String)> {
    let secret = find(objects, "Secret", "pg-credentials");
    let sts = find(objects, "StatefulSet", "pg");
    let mut env = Vec::new();
    for e in sts["spec"]["template"]["spec"]["containers"][0]["env"].as_array().expect("env") {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.replace("$(POD_NAME)", pod).replace("$(POD_IP)", ip)
        } else if let Some(key) = e["valueFrom"]["secretKeyRef"]["key"].as_str() {
            secret["stringData"][key].as_str().unwrap_or_else(|| panic!("secret key {key}")).to_string()
        } else {
            match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod.to_string(),
                Some("metadata.namespace") => "postgres-ha".to_string(),
                Some("status.podIP") => ip.to_string(),
                other => panic!("unexpected env source {other:?}"),
            }
        };
        env.push((name, value));
    }
    env
}

/// The ConfigMap's daemon configuration, with the StatefulSet's environment, passes the
/// daemon's own `--check-config`.
#[test]
fn configmap_passes_check_config_with_the_statefulset_environment() {
    if !Path::new("/usr/lib/postgresql/15/bin/pg_rewind").exists() {
        announce(
            "kube deploy: skipped --check-config of the ConfigMap: PostgreSQL 15 is not installed (scripts/setup.sh)",
        );
        return;
    }
    let (_, objects) = render();
    let config = find(&objects, "ConfigMap", "leasehold-ha")["data"]["leasehold-ha.toml"].as_str().expect("toml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leasehold-ha.toml");
    std::fs::write(&file, config).unwrap();
    let out = Command::new(common::bin())
        .arg("--config")
        .arg(&file)
        .args(["run", "--check-config"])
        .env_clear()
        .envs(container_env(&objects, "pg-1", "10.1.2.3"))
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("member pg-1, store kubernetes"), "{said}");
    assert!(said.contains("api http://10.1.2.3:8008"), "{said}");
    // Without the Secret's passwords the same file is refused, naming the key.
    let out = Command::new(common::bin())
        .arg("--config")
        .arg(&file)
        .args(["run", "--check-config"])
        .env_clear()
        .envs(container_env(&objects, "pg-1", "10.1.2.3").into_iter().filter(|(k, _)| !k.ends_with("PASSWORD")))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("postgresql.authentication.superuser.password"), "{}", text(&out));
}

/// Requests to the API server with curl, verifying its certificate.
struct Api {
    url: String,
    ca: PathBuf,
}

impl Api {
    fn call(&self, method: &str, path: &str, token: &str, body: Option<&Value>, content: &str) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        // Not curl's own user agent: this 1.19 build crashes pretty-printing JSON, which
        // the server does for user agents starting with "curl" (notes/kubernetes.md).
        cmd.args([
            "-sS",
            "-A",
            "leasehold-test",
            "-m",
            "10",
            "-X",
            method,
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(&self.ca)
        .args(["-H", &format!("Authorization: Bearer {token}")]);
        if let Some(b) = body {
            cmd.args(["-H", &format!("Content-Type: {content}"), "-d", &b.to_string()]);
        }
        let out = cmd.arg(format!("{}{path}", self.url)).output().expect("curl runs");
        let all = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = all.rsplit_once('\n').unwrap_or(("", "0"));
        let code = code.trim().parse().unwrap_or(0);
        let parsed = serde_json::from_str(body).unwrap_or_else(
            |_| json!({"raw": body, "curl": String::from_utf8_lossy(&out.stderr), "exit": out.status.code()}),
        );
        (code, parsed)
    }

    fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call("GET", path, token, None, "")
    }

    fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.call("POST", path, token, Some(body), "application/json")
    }
}

/// The collection path of `object` (all kinds in deploy/kubernetes are plain plurals).
fn collection(object: &Value) -> String {
    let api = object["apiVersion"].as_str().unwrap();
    let plural = format!("{}s", object["kind"].as_str().unwrap().to_ascii_lowercase());
    let base = if api.contains('/') { format!("/apis/{api}") } else { format!("/api/{api}") };
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{base}/namespaces/{ns}/{plural}"),
        None => format!("{base}/{plural}"),
    }
}

/// Names of the pods matching `selector` (a Service's `spec.selector`).
fn selected(api: &Api, token: &str, ns: &str, selector: &Value) -> Option<BTreeSet<String>> {
    let query: Vec<String> =
        selector.as_object()?.iter().map(|(k, v)| format!("{k}%3D{}", v.as_str().unwrap_or(""))).collect();
    let (code, list) = api.get(&format!("/api/v1/namespaces/{ns}/pods?labelSelector={}", query.join(",")), token);
    (code == 200).then(|| {
        list["items"]
            .as_array()
            .map(|items| items.iter().filter_map(|p| p["metadata"]["name"].as_str().map(String::from)).collect())
    })?
}

/// `text` without ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
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

/// (samples taken, most pods selected at once, every sample with more than one).
type Samples = (usize, usize, Vec<BTreeSet<String>>);

struct Member {
    pod: String,
    config: PathBuf,
    api: String,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Member {
    fn start(&mut self, namespace: &str) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        // As the StatefulSet gives it: the pod's name and namespace (downward API).
        let proc = Proc::spawn(
            &self.pod,
            Command::new(common::bin())
                .arg("--config")
                .arg(&self.config)
                .arg("run")
                .env("LEASEHOLD_LOG", "info,leasehold=debug")
                .env("POD_NAME", &self.pod)
                .env("POD_NAMESPACE", namespace)
                .stdout(std::process::Stdio::null())
                .stderr(log),
        );
        self.proc = Some(proc);
    }

    fn status(&self) -> Option<Value> {
        let (code, body) = http_get_blocking(&format!("{}/status", self.api))?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    fn log(&self) -> String {
        plain(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

fn leader(members: &[Member]) -> Option<usize> {
    let acting: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].proc.is_some())
        .filter(|&i| members[i].status().is_some_and(|s| s["acting"] == true && s["role"] == "primary"))
        .collect();
    (acting.len() == 1).then(|| acting[0])
}

fn wait(what: &str, members: &[Member], mut check: impl FnMut() -> bool) {
    let until = Instant::now() + LIMIT;
    while Instant::now() < until {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for m in members {
        let log = m.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("==== {} log:\n{}", m.pod, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    panic!("{what}: not reached within {LIMIT:?}");
}

#[test]
fn manifests_labels_and_rbac_on_real_kube_apiserver() {
    let Some(store) = Store::kubernetes_or_skip() else { return };
    let Store::Kubernetes { server, .. } = &store else { unreachable!() };
    let api = Api { url: server.url(), ca: server.ca_file() };
    let admin = server.admin_token().to_string();
    let (ns, mut objects) = render();

    // 1. The manifests are accepted by the server, as rendered.
    for object in &mut objects {
        if object["kind"] == "PodDisruptionBudget" && object["apiVersion"] == "policy/v1" {
            // policy/v1 exists from 1.21 on; this server is 1.19, which serves the same
            // fields as policy/v1beta1.
            announce("kube deploy: PodDisruptionBudget created as policy/v1beta1 (the test server is 1.19)");
            object["apiVersion"] = json!("policy/v1beta1");
        }
        let (code, answer) = api.post(&collection(object), &admin, object);
        assert_eq!(
            code,
            201,
            "{} {} refused: {answer}\n{}",
            object["kind"],
            object["metadata"]["name"],
            server.log_tail(400)
        );
    }
    let sts = find(&objects, "StatefulSet", "pg").clone();
    let replicas = sts["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(replicas, 3);

    // The token controller's part (1.19 admission wants a token Secret referenced by the
    // ServiceAccount before it admits a pod that mounts one): a token Secret for it.
    let (code, account) = api.get(&format!("/api/v1/namespaces/{ns}/serviceaccounts/leasehold"), &admin);
    assert_eq!(code, 200, "{account}");
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "leasehold-token", "namespace": ns, "annotations": {
            "kubernetes.io/service-account.name": "leasehold",
            "kubernetes.io/service-account.uid": account["metadata"]["uid"]}}});
    let (code, answer) = api.post(&format!("/api/v1/namespaces/{ns}/secrets"), &admin, &secret);
    assert_eq!(code, 201, "token secret: {answer}");
    let (code, answer) = api.call(
        "PATCH",
        &format!("/api/v1/namespaces/{ns}/serviceaccounts/leasehold"),
        &admin,
        Some(&json!({"secrets": [{"name": "leasehold-token"}]})),
        "application/merge-patch+json",
    );
    assert_eq!(code, 200, "service account secrets: {answer}");

    // 2. The StatefulSet controller's part: a claim per pod and the pods from the template.
    let template = &sts["spec"]["template"];
    let claim = &sts["spec"]["volumeClaimTemplates"][0];
    let pods: Vec<String> = (0..replicas).map(|i| format!("pg-{i}")).collect();
    for pod in &pods {
        let claim_name = format!("{}-{pod}", claim["metadata"]["name"].as_str().unwrap());
        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim_name, "namespace": ns, "labels": template["metadata"]["labels"]},
            "spec": claim["spec"]});
        let (code, answer) = api.post(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims"), &admin, &pvc);
        assert_eq!(code, 201, "claim {claim_name}: {answer}");
        let mut spec = template["spec"].clone();
        let volumes = spec["volumes"].as_array_mut().unwrap();
        volumes.push(json!({"name": claim["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim_name}}));
        let mut metadata = template["metadata"].clone();
        metadata["name"] = json!(pod);
        metadata["namespace"] = json!(ns);
        let object = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec});
        let (code, answer) = api.post(&format!("/api/v1/namespaces/{ns}/pods"), &admin, &object);
        assert_eq!(code, 201, "pod {pod}: {answer}");
    }

    // 3. A token for the manifests' ServiceAccount, from the TokenRequest API.
    let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}});
    let sa = find(&objects, "ServiceAccount", "leasehold")["metadata"]["name"].as_str().unwrap().to_string();
    let (code, answer) = api.post(&format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"), &admin, &request);
    assert_eq!(code, 201, "TokenRequest: {answer}");
    let token = answer["status"]["token"].as_str().expect("token").to_string();

    // 4. The Role allows what the daemon does and denies the rest.
    let allowed = [
        ("GET", format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases")),
        ("GET", format!("/api/v1/namespaces/{ns}/pods")),
    ];
    for (method, path) in &allowed {
        let (code, answer) = api.call(method, path, &token, None, "");
        assert_eq!(code, 200, "{method} {path} with the service account's token: {answer}");
    }
    let denied = [
        ("GET", format!("/api/v1/namespaces/{ns}/pods/pg-0")),
        ("DELETE", format!("/api/v1/namespaces/{ns}/pods/pg-0")),
        ("GET", format!("/api/v1/namespaces/{ns}/secrets")),
        ("GET", format!("/api/v1/namespaces/{ns}/secrets/pg-credentials")),
        ("GET", format!("/api/v1/namespaces/{ns}/configmaps")),
        ("GET", format!("/api/v1/namespaces/{ns}/endpoints")),
        ("GET", format!("/api/v1/namespaces/{ns}/services")),
        ("GET", format!("/apis/apps/v1/namespaces/{ns}/statefulsets")),
        ("GET", "/api/v1/namespaces/default/pods".to_string()),
        ("GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases".to_string()),
        ("GET", "/api/v1/nodes".to_string()),
    ];
    for (method, path) in &denied {
        let (code, answer) = api.call(method, path, &token, None, "");
        assert_eq!(code, 403, "{method} {path} must be forbidden to the service account: {answer}");
    }
    let (code, answer) = api.call(
        "PUT",
        &format!("/api/v1/namespaces/{ns}/pods/pg-0"),
        &token,
        Some(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pg-0"}})),
        "application/json",
    );
    assert_eq!(code, 403, "replacing a pod must be forbidden: {answer}");

    // 5. Three daemons, one per pod, with the service account's token and the file resource.
    let kubeconfig = server.kubeconfig(&token, &ns).expect("kubeconfig");
    let dir = tempfile::Builder::new().prefix("leasehold-kube-deploy-").tempdir().unwrap();
    let resource = dir.path().join("resource");
    std::fs::create_dir_all(&resource).unwrap();
    let mut members: Vec<Member> = pods
        .iter()
        .map(|pod| {
            let port = free_port();
            let config = dir.path().join(format!("{pod}.toml"));
            std::fs::write(
                &config,
                format!(
                    "scope = \"pg\"\nname = \"{pod}\"\n{timing}safety_margin = \"1s\"\nconn_url = \"file://{pod}\"\n\
                     [watchdog]\nmode = \"off\"\n[restapi]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n\
                     [hooks]\ndir = \"{hooks}\"\n[hooks.env]\nFILE_RESOURCE_DIR = \"{res}\"\n\
                     [kubernetes]\nkubeconfig = \"{kc}\"\n",
                    timing = store.timing(),
                    hooks = hooks_dir().display(),
                    res = resource.display(),
                    kc = kubeconfig.display(),
                ),
            )
            .unwrap();
            Member {
                pod: pod.clone(),
                config,
                api: format!("http://127.0.0.1:{port}"),
                log: dir.path().join(format!("{pod}.log")),
                proc: None,
            }
        })
        .collect();

    // The sampler: what the primary Service selects, as often as it can, all along.
    let primary_selector = find(&objects, "Service", "pg-primary")["spec"]["selector"].clone();
    let replica_selector = find(&objects, "Service", "pg-replicas")["spec"]["selector"].clone();
    assert_eq!(primary_selector["role"], "primary", "the primary Service selects the role label");
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Samples>> = Arc::new(Mutex::new((0, 0, Vec::new())));
    let sampler = {
        let (stop, seen, selector) = (stop.clone(), seen.clone(), primary_selector.clone());
        let (api, admin, ns) = (Api { url: api.url.clone(), ca: api.ca.clone() }, admin.clone(), ns.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Some(set) = selected(&api, &admin, &ns, &selector) {
                    let mut s = seen.lock().unwrap();
                    s.0 += 1;
                    s.1 = s.1.max(set.len());
                    if set.len() > 1 {
                        s.2.push(set);
                    }
                }
            }
        })
    };
    let primary_is =
        |want: &str| selected(&api, &admin, &ns, &primary_selector) == Some(BTreeSet::from([want.to_string()]));

    for m in &mut members {
        m.start(&ns);
    }
    let mut first = 0;
    wait("a leader whose pod alone carries the primary label", &members, || {
        leader(&members).is_some_and(|l| {
            first = l;
            primary_is(&members[l].pod)
        })
    });

    // kill -9 of the leader: its pod keeps the leader label, which the next leader takes
    // off before labelling its own pod.
    members[first].proc.as_mut().unwrap().kill9();
    members[first].proc = None;
    let mut second = 0;
    wait("a new leader whose pod alone carries the primary label after kill -9", &members, || {
        leader(&members).is_some_and(|l| {
            second = l;
            l != first && primary_is(&members[l].pod)
        })
    });
    let cleared = members[second].log().lines().any(|l| {
        l.contains("took the leader label off another pod") && l.contains(&format!("pod={}", members[first].pod))
    });
    assert!(cleared, "the new leader took the label off the crashed leader's pod:\n{}", members[second].log());
    members[first].start(&ns);
    wait("the restarted member follows", &members, || {
        members[first].status().is_some_and(|s| s["role"] == "replica" && s["leader"] == members[second].pod.as_str())
    });

    // Switchover to a named candidate: the old leader's label goes before its demote.
    let target = (0..3).find(|&i| i != second).unwrap();
    // The leader refuses a candidate it has not seen yet (the restarted member's record may
    // reach it after the member's own status says it follows; a CI run met that).
    wait("the leader lists the candidate", &members, || {
        http_get_blocking(&format!("{}/cluster", members[second].api)).is_some_and(|(code, body)| {
            code == 200
                && serde_json::from_str::<Value>(&body).is_ok_and(|c| {
                    c["members"].as_array().is_some_and(|m| m.iter().any(|m| m["name"] == members[target].pod.as_str()))
                })
        })
    });
    let log_from = members[second].log().len();
    let out = Command::new(common::bin())
        .arg("--config")
        .arg(&members[second].config)
        .args(["ctl", "switchover", "--candidate", &members[target].pod, "--wait", "80"])
        .output()
        .expect("ctl runs");
    assert!(out.status.success(), "{}", text(&out));
    wait("the candidate leads and alone carries the primary label", &members, || {
        leader(&members) == Some(target) && primary_is(&members[target].pod)
    });
    let log = members[second].log();
    let after = log.get(log_from..).unwrap_or_default();
    let label = after.find("pod role label set").map(|i| (i, after[i..].lines().next().unwrap_or("").to_string()));
    let demote = after.find("running the demote hook");
    match (label, demote) {
        (Some((l, line)), Some(d)) => {
            assert!(l < d, "the label must change before the demote hook runs:\n{after}");
            assert!(line.contains("value=\"replica\"") || line.contains("value=replica"), "{line}");
        }
        other => panic!("label change and demote not both logged ({other:?}):\n{after}"),
    }
    wait("the replicas Service selects the two others", &members, || {
        let others: BTreeSet<String> = (0..3).filter(|&i| i != target).map(|i| members[i].pod.clone()).collect();
        selected(&api, &admin, &ns, &replica_selector) == Some(others)
    });

    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let (samples, most, doubles) = seen.lock().unwrap().clone();
    announce(&format!(
        "kube deploy: the sampler listed the primary Service's pods {samples} times; at most {most} at once"
    ));
    assert!(samples > 0, "the sampler took no sample");
    assert!(doubles.is_empty(), "two pods carried the primary label at once: {doubles:?}");
    assert_eq!(most, 1);
    drop(members);
    drop(store);
}

/// Where `kubectl` is installed, its kustomize renders exactly the objects the real-server
/// test creates from its own reading of the kustomization (same kinds, names, namespaces,
/// subjects and image), so that test exercises what `kubectl apply -k` would send.
#[test]
fn kubectl_kustomize_renders_what_the_test_creates() {
    let out = match Command::new("kubectl").arg("kustomize").arg(deploy_dir()).output() {
        Ok(out) if out.status.success() => out,
        Ok(out) => panic!("kubectl kustomize deploy/kubernetes failed: {}", text(&out)),
        Err(_) => {
            announce(
                "kube deploy: no kubectl on PATH: the kustomize rendering is not compared (the test's own rendering is used)",
            );
            return;
        }
    };
    let rendered: Vec<Value> = serde_yaml_ng::Deserializer::from_slice(&out.stdout)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("kustomize output is YAML"))
        .collect();
    let (_, ours) = render();
    let key = |o: &Value| {
        (
            o["kind"].as_str().unwrap_or("").to_string(),
            o["metadata"]["name"].as_str().unwrap_or("").to_string(),
            o["metadata"]["namespace"].as_str().unwrap_or("").to_string(),
        )
    };
    let theirs: BTreeSet<_> = rendered.iter().map(key).collect();
    let mine: BTreeSet<_> = ours.iter().map(key).collect();
    assert_eq!(theirs, mine, "kustomize and the test disagree on the objects");
    for kind_name in [("StatefulSet", "pg"), ("RoleBinding", "leasehold")] {
        let a = find(&rendered, kind_name.0, kind_name.1);
        let b = find(&ours, kind_name.0, kind_name.1);
        assert_eq!(a["spec"]["template"]["spec"]["containers"], b["spec"]["template"]["spec"]["containers"]);
        assert_eq!(a["subjects"], b["subjects"]);
    }
}
