//! The RBAC Role in `manifests/` is enough for every backend call, and every verb in it is needed.

mod common;

use std::time::Duration;

use common::{NAMESPACE, kube_client, options};
use leasehold::{CasOutcome, ControlKey, Dcs, DcsError, Expect, LeaderRecord, MemberRecord};
use leasehold_kube::KubeClient;
use leasehold_kube_emulator::{AccessToken, Emulator, EmulatorConfig, Resource, Verb};

/// The rules of `manifests/role.yaml`: (apiGroup, resource, verbs), read with a small
/// line parser (the file is flat YAML with inline lists).
fn role_rules() -> Vec<(String, String, Vec<String>)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/role.yaml")).expect("role.yaml");
    let list = |line: &str| -> Vec<String> {
        let inner = line.split_once('[').and_then(|(_, r)| r.split_once(']')).map(|(l, _)| l).unwrap_or_default();
        inner.split(',').map(|s| s.trim().trim_matches('"').to_string()).filter(|s| !s.is_empty()).collect()
    };
    let (mut rules, mut group, mut resources) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines().map(str::trim) {
        if line.starts_with("- apiGroups:") {
            group = list(line);
        } else if line.starts_with("resources:") {
            resources = list(line);
        } else if line.starts_with("verbs:") {
            for g in &group {
                for r in &resources {
                    rules.push((g.clone(), r.clone(), list(line)));
                }
            }
        }
    }
    rules
}

fn verb(name: &str) -> Verb {
    *Verb::ALL.iter().find(|v| v.as_str() == name).unwrap_or_else(|| panic!("unknown verb {name:?} in role.yaml"))
}

/// Every call the backend makes, in the order an HA node makes them.
async fn every_call(emulator: &Emulator, token: &str) -> Result<(), DcsError> {
    let kube = kube_client(&emulator.url(), Some(token));
    let client = KubeClient::from_client(kube, NAMESPACE, options(Duration::from_secs(5)))?;
    let dcs = client.scope("pg");
    let view = dcs.load().await?;
    dcs.watch(view.revision.as_ref(), Duration::from_millis(100)).await?;
    dcs.publish_member(&MemberRecord::new("pod-a")).await?;
    dcs.publish_member(&MemberRecord { running: true, ..MemberRecord::new("pod-a") }).await?;
    let record = LeaderRecord { member: "pod-a".into(), token: "t".into(), api_url: None, conn_url: None };
    let lease = dcs.acquire(&record).await?.won().expect("free");
    let lease = dcs.renew(&lease).await?.won().expect("ours");
    let CasOutcome::Won(v) = dcs.write_control(ControlKey::Config, Expect::Absent, b"{}").await? else {
        panic!("absent")
    };
    let CasOutcome::Won(v) = dcs.write_control(ControlKey::Config, Expect::Version(v), br#"{"pause":true}"#).await?
    else {
        panic!("current version")
    };
    assert!(dcs.delete_control(ControlKey::Config, &v).await?.is_won());
    assert!(dcs.release(&lease).await?.is_won());
    client.stop();
    Ok(())
}

#[tokio::test]
async fn the_role_allows_every_call_and_each_verb_is_needed() {
    let rules = role_rules();
    assert_eq!(rules.len(), 1, "one rule: {rules:?}");
    let (group, resource, verbs) = &rules[0];
    assert_eq!((group.as_str(), resource.as_str()), ("coordination.k8s.io", "leases"), "only Leases");
    let verbs: Vec<Verb> = verbs.iter().map(|v| verb(v)).collect();
    let token = |name: &str, verbs: &[Verb]| {
        AccessToken::with_verbs(name, verbs).only_resources(&[Resource::Lease]).only_namespaces(&[NAMESPACE])
    };

    let emulator =
        Emulator::start(EmulatorConfig { tokens: vec![token("role", &verbs)], ..EmulatorConfig::default() }).unwrap();
    every_call(&emulator, "role").await.expect("the Role allows every call");

    for missing in &verbs {
        let fewer: Vec<Verb> = verbs.iter().copied().filter(|v| v != missing).collect();
        let emulator =
            Emulator::start(EmulatorConfig { tokens: vec![token("less", &fewer)], ..EmulatorConfig::default() })
                .unwrap();
        let err = every_call(&emulator, "less").await.expect_err("a verb was removed");
        assert!(err.is_fatal() && err.to_string().contains("403"), "without {missing:?}: {err}");
    }
}
