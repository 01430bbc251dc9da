//! Compatibility with client-go's `tools/leaderelection` on the same Lease: on a real
//! kube-apiserver where one is found (else the emulator), and with the real client-go 1.19
//! elector from `../shared/servers/client-go-elector.xz`.

mod common;

use std::time::Duration;

use common::{NAMESPACE, Target, options, timing_for};
use k8s_openapi::api::coordination::v1::Lease;
use leasehold::{CasOutcome, Dcs, Epoch, LeaderRecord, Record};
use leasehold_kube::testing::{Guarded, find_binary};
use leasehold_kube::{EPOCH_ANNOTATION, KubeClient, LEADER_ANNOTATION};
use leasehold_kube_emulator::micro_time;
use serde_json::{Value, json};

fn record(member: &str, token: &str) -> LeaderRecord {
    LeaderRecord {
        member: member.into(),
        token: token.into(),
        api_url: Some("http://10.0.0.1:8008".into()),
        conn_url: None,
    }
}

async fn client(target: &Target, ttl: u64) -> KubeClient {
    let kube = target.kube(Some(target.admin_token())).await;
    KubeClient::from_client(kube, NAMESPACE, options(), &timing_for(Duration::from_secs(ttl))).expect("client")
}

/// The fields of client-go's `coordinationv1.LeaseSpec` (Go struct tags), as JSON names.
const LEASE_SPEC_FIELDS: [&str; 7] = [
    "holderIdentity",
    "leaseDurationSeconds",
    "acquireTime",
    "renewTime",
    "leaseTransitions",
    "preferredHolder",
    "strategy",
];

/// Checks `spec` the way Go's `json.Unmarshal` into `LeaseSpec` would: known names, the
/// right JSON types, MicroTime in `RFC3339Micro` (exactly 6 fractional digits).
fn assert_client_go_spec(spec: &Value) {
    let spec = spec.as_object().expect("spec is an object");
    for key in spec.keys() {
        assert!(LEASE_SPEC_FIELDS.contains(&key.as_str()), "unknown LeaseSpec field {key:?} (client-go would drop it)");
    }
    assert!(spec["holderIdentity"].is_string() || spec.get("holderIdentity").is_none());
    for int in ["leaseDurationSeconds", "leaseTransitions"] {
        let n = spec[int].as_i64().unwrap_or_else(|| panic!("{int} is a JSON integer: {spec:?}"));
        assert!(i32::try_from(n).is_ok(), "{int} fits Go's int32");
    }
    for time in ["acquireTime", "renewTime"] {
        let text = spec[time].as_str().unwrap_or_else(|| panic!("{time} is a string: {spec:?}"));
        micro_time(text).unwrap_or_else(|e| panic!("{time}: {e}"));
        assert!(text.ends_with('Z') && text.len() == "2024-01-01T00:00:00.000000Z".len(), "{time} = {text:?}");
        let parsed: k8s_openapi::jiff::Timestamp = text.parse().expect("a valid timestamp");
        assert!(parsed.as_second() > 1_600_000_000, "{time} is the wall clock, not an epoch offset");
    }
}

#[tokio::test]
async fn a_lease_written_by_this_backend_reads_as_client_go_lease_spec() {
    let target = Target::start().await;
    let dcs = client(&target, 15).await.scope("pg");
    let lease = dcs.acquire(&record("pod-a", "tok-1")).await.unwrap().won().expect("free lease is won");
    let stored = target.object("pg-leader").await.expect("the leader Lease exists");
    assert_eq!(stored["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(stored["kind"], "Lease");
    let spec = &stored["spec"];
    assert_client_go_spec(spec);
    assert_eq!(spec["holderIdentity"], "pod-a");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0, "client-go starts counting holder changes at 0");
    let epoch = stored["metadata"]["annotations"][EPOCH_ANNOTATION].as_str().expect("epoch annotation");
    assert_eq!(epoch, lease.epoch.0.to_string(), "the fencing epoch has its own annotation");
    let annotation = stored["metadata"]["annotations"][LEADER_ANNOTATION].as_str().expect("leader annotation");
    assert_eq!(LeaderRecord::decode("annotation", annotation.as_bytes()).unwrap(), lease.record);
    // The typed client decodes it too.
    let typed: Lease = serde_json::from_value(stored.clone()).expect("decodes as k8s-openapi Lease");
    assert_eq!(typed.spec.unwrap().holder_identity.as_deref(), Some("pod-a"));

    tokio::time::sleep(Duration::from_millis(20)).await;
    let renewed = dcs.renew(&lease).await.unwrap().won().expect("renew wins");
    let after = target.object("pg-leader").await.unwrap();
    assert_client_go_spec(&after["spec"]);
    assert_eq!(after["spec"]["acquireTime"], spec["acquireTime"], "a renewal keeps acquireTime");
    assert_ne!(after["spec"]["renewTime"], spec["renewTime"], "a renewal moves renewTime");
    assert_eq!(after["spec"]["leaseTransitions"], spec["leaseTransitions"], "a renewal is not a transition");
    assert_eq!(after["metadata"]["resourceVersion"].as_str(), Some(renewed.version.to_text().as_str()));

    assert!(dcs.release(&renewed).await.unwrap().is_won());
    let released = target.object("pg-leader").await.unwrap();
    assert!(released["spec"]["holderIdentity"].as_str().is_none_or(str::is_empty), "release clears the holder");
    assert_eq!(released["spec"]["leaseTransitions"], spec["leaseTransitions"], "release is no transition");
    assert!(released["metadata"]["annotations"].get(LEADER_ANNOTATION).is_none());

    // The same holder again: no transition (client-go counts holder changes); another: one.
    let again = dcs.acquire(&record("pod-a", "tok-2")).await.unwrap().won().expect("free again");
    assert!(again.epoch > lease.epoch, "every acquisition gets a greater epoch");
    let stored = target.object("pg-leader").await.unwrap();
    assert_eq!(
        stored["spec"]["leaseTransitions"], 1,
        "released (holder empty) -> pod-a is a holder change, as client-go counts it"
    );
    assert!(dcs.release(&again).await.unwrap().is_won());
    let other = client(&target, 15).await.scope("pg");
    let third = other.acquire(&record("pod-b", "tok-3")).await.unwrap().won().expect("free again");
    assert!(third.epoch > again.epoch);
    assert_eq!(target.object("pg-leader").await.unwrap()["spec"]["leaseTransitions"], 2);
}

/// A Lease as client-go's `LeaseLock.Create/Update` writes it: no labels, no annotations.
fn client_go_lease(holder: &str, renew_time: &str, transitions: i32, duration: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "pg-leader", "namespace": NAMESPACE},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": "2000-01-01T00:00:00.000000Z",
            "renewTime": renew_time,
            "leaseTransitions": transitions,
        },
    })
}

#[tokio::test]
async fn a_client_go_holder_is_respected_until_seen_unchanged_for_its_duration() {
    let target = Target::start().await;
    let dcs = client(&target, 1).await.scope("pg");
    // renewTime far in the past, as a holder with a skewed clock would write: the observed
    // time rule ignores it.
    target.put_object(client_go_lease("other-pod", "2000-01-01T00:00:00.000000Z", 7, 2)).await;
    let view = dcs.load().await.unwrap();
    let leader = view.leader.as_ref().expect("a foreign holder is a holder");
    assert_eq!(leader.record.member, "other-pod", "shown with its identity");
    assert!(view.problems.is_empty(), "a client-go holder is not garbage: {:?}", view.problems);

    // While the other holder keeps renewing (every 0.5 s, duration 2 s), every acquire loses.
    for i in 0..8 {
        let renew = format!("2000-01-01T00:00:{:02}.000000Z", i + 1);
        target.put_object(client_go_lease("other-pod", &renew, 7, 2)).await;
        let outcome = dcs.acquire(&record("pod-a", &format!("t{i}"))).await.unwrap();
        assert!(
            matches!(&outcome, CasOutcome::Lost(Some(v)) if v.record.member == "other-pod"),
            "round {i}: the foreign holder must not be stolen, and is named: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let held = target.object("pg-leader").await.unwrap();
    assert_eq!(held["spec"]["holderIdentity"], "other-pod");

    // It stops renewing: once seen unchanged for 2 s, the lease is taken with transitions + 1.
    let mut attempts = 0;
    let lease = loop {
        attempts += 1;
        assert!(attempts < 100, "the abandoned lease is never taken over");
        match dcs.acquire(&record("pod-a", "final")).await.unwrap() {
            CasOutcome::Won(lease) => break lease,
            CasOutcome::Lost(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(attempts > 1, "not taken on first sight");
    assert!(lease.epoch > Epoch(0));
    let taken = target.object("pg-leader").await.unwrap();
    assert_eq!(taken["spec"]["holderIdentity"], "pod-a");
    assert_eq!(taken["spec"]["leaseTransitions"], 8, "one holder change");
}

#[tokio::test]
async fn a_client_go_takeover_ends_our_lease_and_is_not_attributed_to_our_record() {
    let target = Target::start().await;
    let dcs = client(&target, 15).await.scope("pg");
    let lease = dcs.acquire(&record("pod-a", "tok")).await.unwrap().won().unwrap();
    // client-go reads the object, keeps metadata (our labels and annotation) and rewrites the spec.
    let mut object = target.object("pg-leader").await.unwrap();
    object["spec"]["holderIdentity"] = "other-pod".into();
    object["spec"]["leaseTransitions"] = json!(1);
    target.put_object(object).await;

    let foreign = |outcome: &CasOutcome<_, Option<leasehold::LeaderView>>| matches!(outcome, CasOutcome::Lost(Some(v)) if v.record.member == "other-pod" && v.record.token.starts_with("foreign:"));
    let outcome = dcs.renew(&lease).await.unwrap();
    assert!(foreign(&outcome), "our renew loses and names the foreign holder: {outcome:?}");
    let view = dcs.load().await.unwrap();
    let leader = view.leader.as_ref().expect("held by other-pod");
    assert_eq!(leader.record.member, "other-pod", "our stale annotation is not read as the new holder's record");
    assert_ne!(leader.record.token, "tok");
    assert!(view.problems.is_empty(), "a foreign holder is no garbage: {:?}", view.problems);
    let outcome = dcs.acquire(&record("pod-a", "again")).await.unwrap();
    assert!(foreign(&outcome), "{outcome:?}");
}

/// Milliseconds since midnight UTC of the wall clock now (the elector's log uses the same
/// clock and zone: it runs with `TZ=UTC`).
#[allow(clippy::disallowed_methods)] // The test compares its own wall clock with the elector's log.
fn wall_ms_of_day() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis() % 86_400_000).unwrap_or(0)
}

/// The elector's log lines as (ms of day, text): `03:53:36.237 +1.81s client-go: STARTED LEADING`.
fn elector_events(log: &str) -> Vec<(u64, String)> {
    log.lines()
        .filter_map(|line| {
            let (clock, rest) = line.split_once(' ')?;
            let (_, text) = rest.split_once("client-go: ")?;
            let mut parts = clock.split([':', '.']).map(|p| p.parse::<u64>().ok());
            let (h, m, s, ms) = (parts.next()??, parts.next()??, parts.next()??, parts.next()??);
            Some((((h * 60 + m) * 60 + s) * 1000 + ms, text.to_string()))
        })
        .collect()
}

fn first(events: &[(u64, String)], text: &str) -> Option<u64> {
    events.iter().find(|(_, t)| t.contains(text)).map(|(at, _)| *at)
}

/// Starts the real client-go 1.19 elector on Lease `pg-leader`; its log goes to `log`.
fn elector(server: &leasehold_kube::testing::KubeApiServer, id: &str, run_for: &str, log: &std::path::Path) -> Guarded {
    let binary = find_binary("client-go-elector", "LEASEHOLD_CLIENT_GO_ELECTOR_BIN")
        .expect("the shared elector is usable")
        .expect("client-go-elector is there when kube-apiserver is");
    let kubeconfig = server.kubeconfig(server.admin_token(), NAMESPACE).expect("kubeconfig");
    let mut command = std::process::Command::new(binary.path);
    command.env("TZ", "UTC").arg("-kubeconfig").arg(kubeconfig);
    command.args(["-ns", NAMESPACE, "-name", "pg-leader", "-id", id, "-for", run_for]);
    Guarded::spawn(command, log).expect("client-go-elector starts")
}

/// Whether `text` shows up in `log` within `within` (polled every 100 ms).
async fn wait_for_line(log: &std::path::Path, text: &str, within: Duration) -> bool {
    for _ in 0..within.as_millis() / 100 {
        if std::fs::read_to_string(log).unwrap_or_default().contains(text) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// client-go holds -> leasehold waits; client-go stops -> leasehold takes over; leasehold
/// holds -> client-go waits; leasehold releases -> client-go takes over. No two holders at
/// any instant, checked from both sides' wall-clock timestamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_both_ways_with_the_real_client_go_elector() {
    let target = Target::start().await;
    let Target::Real(server) = &target else {
        common::announce("skipped: the real client-go elector needs a real kube-apiserver (none found)".into());
        return;
    };
    let dcs = client(&target, 5).await.scope("pg");
    let log_a = server.dir().join("elector-a.log");
    // client-go 1.19: LeaseDuration 10 s, RetryPeriod 1 s; runs for 6 s, then stops.
    let _a = elector(server, "go-a", "6s", &log_a);
    assert!(wait_for_line(&log_a, "STARTED LEADING", Duration::from_secs(20)).await, "go-a never led");

    // While go-a holds (and then until its Lease has been seen unchanged for 10 s), every
    // acquire is Lost naming go-a.
    let (lease, won_sent) = loop {
        let sent = wall_ms_of_day();
        match dcs.acquire(&record("pod-a", &format!("t{sent}"))).await.expect("acquire") {
            CasOutcome::Won(lease) => break (lease, sent),
            CasOutcome::Lost(view) => {
                let holder = view.map(|v| v.record.member);
                assert_eq!(holder.as_deref(), Some("go-a"), "lost to the client-go holder, named");
                let view = dcs.load().await.expect("load");
                assert!(view.problems.is_empty(), "a client-go holder is not garbage: {:?}", view.problems);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let a = elector_events(&std::fs::read_to_string(&log_a).unwrap_or_default());
    let a_stopped = first(&a, "stopped leading").expect("go-a logged that it stopped leading");
    let a_started = first(&a, "STARTED LEADING").expect("go-a led");
    assert!(a_started < a_stopped);
    assert!(won_sent > a_stopped, "we acquired (sent at {won_sent}) only after go-a stopped leading ({a_stopped})");

    // leasehold holds: a second client-go elector only observes us.
    let log_b = server.dir().join("elector-b.log");
    let _b = elector(server, "go-b", "60s", &log_b);
    assert!(wait_for_line(&log_b, "observed leader \"pod-a\"", Duration::from_secs(20)).await, "go-b sees pod-a");
    let mut lease = lease;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        lease = dcs.renew(&lease).await.expect("renew").won().expect("we keep the Lease");
    }
    let release_sent = wall_ms_of_day();
    assert!(dcs.release(&lease).await.expect("release").is_won());
    assert!(
        wait_for_line(&log_b, "STARTED LEADING", Duration::from_secs(20)).await,
        "go-b takes over after our release"
    );
    let b = elector_events(&std::fs::read_to_string(&log_b).unwrap_or_default());
    let b_started = first(&b, "STARTED LEADING").expect("go-b led");
    assert!(
        b_started > release_sent,
        "go-b started leading ({b_started}) only after our release was sent ({release_sent})"
    );
    assert!(b_started > won_sent);

    // And now we wait for go-b.
    let outcome = dcs.acquire(&record("pod-a", "late")).await.expect("acquire");
    assert!(matches!(&outcome, CasOutcome::Lost(Some(v)) if v.record.member == "go-b"), "{outcome:?}");
    let stored = target.object("pg-leader").await.expect("the Lease");
    assert_eq!(stored["spec"]["holderIdentity"], "go-b");
    // Holder changes as client-go counts them: go-a (create: 0), pod-a (1), go-b (2).
    assert_eq!(stored["spec"]["leaseTransitions"], 2, "{stored}");
}
