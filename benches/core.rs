//! Criterion benches of the pure core: one Node decision step and rule evaluation.
//!
//! Targets (issue 2): a step under 1 µs with 5 members; the rules over 100 members under 20 µs.
//! Run: `cargo bench --bench core`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use leasehold::node::{Action, Input, Node, NodeConfig};
use leasehold::rules::{ElectionFacts, evaluate};
use leasehold::{
    CasOutcome, ClusterView, Epoch, Instant, LeaderRecord, LeaderView, MemberRecord, PeerReply, ResourceRole, Tags,
    Timing, Version, Versioned, WatchdogHealth,
};

fn at(ms: u64) -> Instant {
    Instant::from_origin(Duration::from_millis(ms))
}

fn members(n: usize) -> Vec<Versioned<MemberRecord>> {
    (0..n)
        .map(|i| {
            let mut m = MemberRecord::new(format!("n{i}"));
            m.running = true;
            m.role = ResourceRole::Replica;
            m.position = Some(1000 + i as u64);
            Versioned { value: m, version: Version::new(i as u64 + 1) }
        })
        .collect()
}

fn view(n: usize, leader: &str) -> ClusterView {
    ClusterView {
        revision: Some(Version::new(100)),
        leader: Some(LeaderView {
            record: LeaderRecord { member: leader.into(), token: "t".into(), api_url: None, conn_url: None },
            epoch: Epoch(7),
            version: Version::new(7),
        }),
        members: members(n),
        ..ClusterView::default()
    }
}

fn follower_step(c: &mut Criterion) {
    // A replica's cycle: the loaded view shows a healthy leader; the node decides to keep
    // following. This is the decision made on every loop by every non-leader.
    let mut cfg = NodeConfig::new("n1", 1);
    cfg.timing = Timing::fast();
    let mut node = Node::new(cfg, at(0)).unwrap();
    let v = Arc::new(view(5, "n0"));
    let mut now = 0;
    c.bench_function("node_step/follower_load_5_members", |b| {
        b.iter(|| {
            now += 1000;
            node.handle(Input::Timeout, at(now));
            while let Some(a) = node.poll_action() {
                match a {
                    Action::Load { id } => node.handle(Input::Loaded { id, result: Ok(black_box(v.clone())) }, at(now)),
                    Action::PublishMember { id, .. } => node.handle(Input::Written { id, result: Ok(true) }, at(now)),
                    _ => {}
                }
            }
        })
    });
}

fn leader_step(c: &mut Criterion) {
    // A leader's cycle: renew won, view loaded, nothing to change.
    let mut cfg = NodeConfig::new("n0", 1);
    cfg.timing = Timing::fast();
    let mut node = Node::new(cfg, at(0)).unwrap();
    node.handle(Input::Timeout, at(0));
    let mut token = String::new();
    let mut lease = None;
    while let Some(a) = node.poll_action() {
        match a {
            Action::Load { id } => {
                node.handle(Input::Loaded { id, result: Ok(Arc::new(ClusterView::default())) }, at(1))
            }
            Action::Acquire { id, record } => {
                token = record.token.clone();
                let l = leasehold::Lease {
                    record,
                    epoch: Epoch(7),
                    version: Version::new(7),
                    valid_for: Duration::from_secs(5),
                };
                lease = Some(l.clone());
                node.handle(Input::Acquired { id, result: Ok(CasOutcome::Won(l)) }, at(2));
            }
            Action::PublishMember { id, .. } | Action::WriteControl { id, .. } | Action::DeleteControl { id, .. } => {
                node.handle(Input::Written { id, result: Ok(true) }, at(2))
            }
            _ => {}
        }
    }
    node.handle(Input::Promoted(Ok(())), at(3));
    let lease = lease.expect("acquired");
    let mut v = view(5, "n0");
    v.leader.as_mut().unwrap().record.token = token;
    let v = Arc::new(v);
    let mut now = 3;
    c.bench_function("node_step/leader_renew_and_load_5_members", |b| {
        b.iter(|| {
            now += 1000;
            node.handle(Input::Timeout, at(now));
            while let Some(a) = node.poll_action() {
                match a {
                    Action::Renew { id, .. } => {
                        node.handle(Input::Renewed { id, result: Ok(CasOutcome::Won(lease.clone())) }, at(now))
                    }
                    Action::Load { id } => node.handle(Input::Loaded { id, result: Ok(black_box(v.clone())) }, at(now)),
                    Action::PublishMember { id, .. }
                    | Action::WriteControl { id, .. }
                    | Action::DeleteControl { id, .. } => node.handle(Input::Written { id, result: Ok(true) }, at(now)),
                    _ => {}
                }
            }
        })
    });
}

fn rules(c: &mut Criterion) {
    let mut group = c.benchmark_group("rules/evaluate");
    for n in [3usize, 5, 15, 100] {
        let me = MemberRecord {
            name: "me".into(),
            api_url: None,
            conn_url: None,
            role: ResourceRole::Replica,
            running: true,
            position: Some(5000),
            timeline: Some(3),
            tags: Tags::default(),
            watchdog_failed: false,
        };
        // Every peer is reachable and behind us: the worst case, all of them are inspected.
        let peers: Vec<PeerReply> = (0..n - 1)
            .map(|i| {
                PeerReply::Reachable(MemberRecord {
                    name: format!("p{i}"),
                    position: Some(4000 + i as u64),
                    ..me.clone()
                })
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                evaluate(black_box(&ElectionFacts {
                    me: &me,
                    leader_position: Some(5000),
                    cluster_timeline: Some(3),
                    maximum_lag_on_failover: 1 << 20,
                    peers: &peers,
                    paused: false,
                    synchronous: None,
                    failover: None,
                    watchdog_required: false,
                    watchdog: WatchdogHealth::Off,
                    in_pre_promote_backoff: false,
                }))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, follower_step, leader_step, rules);
criterion_main!(benches);
