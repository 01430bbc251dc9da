//! The RBAC Role in `manifests/` is enough for every backend call, and every verb in it is
//! needed: on a real kube-apiserver where one is found (the Role bound to a plain user),
//! else on the emulator's token rules.

mod common;

use std::time::Duration;

use common::{NAMESPACE, Target, options, timing_for};
use leasehold::{CasOutcome, ControlKey, Dcs, DcsError, Expect, LeaderRecord, MemberRecord};
use leasehold_kube::KubeClient;

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

/// Every call the backend makes, in the order an HA node makes them.
async fn every_call(target: &Target, user: &str) -> Result<(), DcsError> {
    let kube = target.kube(Some(&target.token(user))).await;
    let client = KubeClient::from_client(kube, NAMESPACE, options(), &timing_for(Duration::from_secs(5)))?;
    // A scope per user: each run starts from nothing, as a fresh deployment does.
    let dcs = client.scope(&format!("pg-{user}"));
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
    let mut grants = vec![("role".to_string(), verbs.clone())];
    for missing in verbs {
        grants.push((format!("without-{missing}"), verbs.iter().filter(|v| *v != missing).cloned().collect()));
    }
    let grants: Vec<(&str, Vec<String>)> = grants.iter().map(|(u, v)| (u.as_str(), v.clone())).collect();
    let target = Target::with_grants(&grants).await;
    every_call(&target, "role").await.expect("the Role allows every call");
    for missing in verbs {
        let err = every_call(&target, &format!("without-{missing}")).await.expect_err("a verb was removed");
        assert!(err.is_fatal() && err.to_string().contains("403"), "without {missing:?}: {err}");
    }
}
