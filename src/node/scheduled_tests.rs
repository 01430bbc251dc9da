//! Scripted tests of scheduled switchovers: a leader acts on one only once it is due, drops
//! one too far in the past, and waits without a wall clock.

use std::time::Duration;

use super::tests::{answer_writes, at, drain};
use super::*;
use crate::dcs::WatchEvent;
use crate::record::{Version, Versioned};

/// Wall-clock time at `at(0)` in these tests: 2026-12-07T03:00:00Z.
const WALL0: i64 = 1_796_612_400_000;

fn wall(ms_after: i64) -> WallTime {
    WallTime::from_unix_millis(WALL0 + ms_after)
}

fn lease_from(record: &LeaderRecord) -> Lease {
    Lease { record: record.clone(), epoch: Epoch(7), version: Version::new(7), valid_for: Duration::from_secs(5) }
}

fn healthy(name: &str) -> MemberRecord {
    let mut m = MemberRecord::new(name);
    m.running = true;
    m.role = ResourceRole::Replica;
    m.position = Some(100);
    m
}

/// The cluster as the leader `a` reads it, with member `b` and `failover` pending.
fn view(record: &LeaderRecord, failover: Option<FailoverRecord>, paused: bool) -> ClusterView {
    let leader = LeaderView { record: record.clone(), epoch: Epoch(7), version: Version::new(7) };
    ClusterView {
        revision: Some(Version::new(1)),
        leader: Some(leader),
        members: vec![Versioned { value: healthy("b"), version: Version::new(2) }],
        failover: failover.map(|value| Versioned { value, version: Version::new(3) }),
        config: paused
            .then(|| Versioned { value: ConfigRecord { pause: true, ..Default::default() }, version: Version::new(4) }),
        ..ClusterView::default()
    }
}

fn switchover_at(at_wall: Option<WallTime>) -> FailoverRecord {
    FailoverRecord { leader: Some("a".into()), candidate: Some("b".into()), scheduled_at: at_wall }
}

/// A leader `a` (epoch 7) that has just read nothing pending, at t = 1010 ms; with
/// `wall_clock` the driver told it the wall-clock time at t = 0.
fn leader(wall_clock: bool) -> (Node, LeaderRecord) {
    let mut cfg = NodeConfig::new("a", 0xabc);
    cfg.timing = Timing::fast(); // ttl 5 s, loop 1 s
    let mut n = Node::new(cfg, at(0)).unwrap();
    if wall_clock {
        n.handle(Input::WallClock(wall(0)), at(0));
    }
    n.handle_resource_status(
        ResourceStatus { running: true, role: ResourceRole::Replica, ..Default::default() },
        at(0),
    );
    n.handle_timeout(at(0));
    let Some(Action::Load { id }) = n.poll_action() else { panic!("first action must be a load") };
    n.handle_load(id, Ok(ClusterView { revision: Some(Version::new(1)), ..ClusterView::default() }), at(10));
    let (id, record) = drain(&mut n)
        .into_iter()
        .find_map(|a| match a {
            Action::Acquire { id, record } => Some((id, record)),
            _ => None,
        })
        .expect("an acquire");
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record))), at(20));
    n.handle_promoted(Ok(()), at(30));
    n.handle_resource_status(
        ResourceStatus { running: true, role: ResourceRole::Primary, position: Some(100), ..Default::default() },
        at(30),
    );
    answer_writes(&mut n, at(30));
    (n, record)
}

/// Runs one cycle at `now` in which the leader renews and reads `v`; returns what follows.
fn cycle_reading(n: &mut Node, record: &LeaderRecord, v: ClusterView, now: Instant) -> Vec<Action> {
    n.handle_watch_event(WatchEvent::Changed, now);
    n.handle_timeout(now);
    let mut out = Vec::new();
    for _ in 0..10 {
        for a in drain(n) {
            match a {
                Action::Renew { id, .. } => n.handle_renew(id, Ok(CasOutcome::Won(lease_from(record))), now),
                Action::Load { id } => n.handle_load(id, Ok(v.clone()), now),
                Action::PublishMember { id, .. } => n.handle_write(id, Ok(true), now),
                write @ (Action::WriteControl { id, .. } | Action::DeleteControl { id, .. }) => {
                    n.handle_write(id, Ok(true), now);
                    out.push(write);
                }
                other => out.push(other),
            }
        }
    }
    out
}

fn probes(actions: &[Action]) -> Option<RequestId> {
    actions.iter().find_map(|a| if let Action::ProbePeers { id, .. } = a { Some(*id) } else { None })
}

fn deletes_failover(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::DeleteControl { key: ControlKey::Failover, .. }))
}

#[test]
fn a_scheduled_switchover_waits_for_its_time_then_runs() {
    let (mut n, record) = leader(true);
    // Due 5 s after t = 0 on the wall clock.
    let v = view(&record, Some(switchover_at(Some(wall(5000)))), false);
    let actions = cycle_reading(&mut n, &record, v.clone(), at(1010));
    assert_eq!(probes(&actions), None, "not due: no switchover started: {actions:?}");
    assert!(!deletes_failover(&actions), "not due: the request stays: {actions:?}");
    assert_eq!(n.timers.get(Timer::Scheduled), Some(at(5000)), "woken when it falls due");
    assert!(n.poll_timeout().unwrap() <= at(5000));
    assert!(n.is_acting_leader(at(1020)));

    // At its time the leader re-reads and starts the switchover.
    n.handle_timeout(at(5000));
    assert_eq!(n.timers.get(Timer::Scheduled), None);
    let mut out = Vec::new();
    for _ in 0..10 {
        for a in drain(&mut n) {
            match a {
                Action::Renew { id, .. } => n.handle_renew(id, Ok(CasOutcome::Won(lease_from(&record))), at(5005)),
                Action::Load { id } => n.handle_load(id, Ok(v.clone()), at(5010)),
                Action::PublishMember { id, .. } => n.handle_write(id, Ok(true), at(5010)),
                other => out.push(other),
            }
        }
    }
    let probe = probes(&out).expect("the due switchover probes the candidate");
    n.handle_peer_replies(probe, vec![PeerReply::Reachable(healthy("b"))], at(5020));
    assert_eq!(answer_writes(&mut n, at(5020)), vec![Action::Demote { mode: DemoteMode::Graceful }]);
}

#[test]
fn a_switchover_due_a_moment_ago_runs_but_one_long_past_is_dropped() {
    // 1 s late (loop_wait 1 s: within 1.5 loop_wait): run.
    let (mut n, record) = leader(true);
    let actions = cycle_reading(&mut n, &record, view(&record, Some(switchover_at(Some(wall(10)))), false), at(1010));
    assert!(probes(&actions).is_some(), "{actions:?}");
    assert!(!deletes_failover(&actions));

    // 2 s late: stale, cleaned up, no switchover.
    let (mut n, record) = leader(true);
    let actions = cycle_reading(&mut n, &record, view(&record, Some(switchover_at(Some(wall(-990)))), false), at(1010));
    assert_eq!(probes(&actions), None, "{actions:?}");
    assert!(deletes_failover(&actions), "a stale schedule is deleted: {actions:?}");
    assert!(n.is_acting_leader(at(1020)), "and the leader stays");
}

#[test]
fn a_scheduled_switchover_waits_without_a_wall_clock_or_in_pause() {
    let (mut n, record) = leader(false);
    let actions = cycle_reading(&mut n, &record, view(&record, Some(switchover_at(Some(wall(0)))), false), at(1010));
    assert_eq!(probes(&actions), None, "{actions:?}");
    assert!(!deletes_failover(&actions), "kept for when the clock is known: {actions:?}");
    assert_eq!(n.timers.get(Timer::Scheduled), None);

    let (mut n, record) = leader(true);
    let actions = cycle_reading(&mut n, &record, view(&record, Some(switchover_at(Some(wall(500)))), true), at(1010));
    assert_eq!(probes(&actions), None, "paused: no scheduled action runs: {actions:?}");
    assert!(!deletes_failover(&actions), "{actions:?}");
}

#[test]
fn the_wall_clock_follows_the_monotonic_clock_between_readings() {
    let (mut n, record) = leader(true);
    // A later reading says the wall clock was stepped back 3 s: the schedule moves with it.
    n.handle(Input::WallClock(wall(-3000 + 1000)), at(1000));
    let actions = cycle_reading(&mut n, &record, view(&record, Some(switchover_at(Some(wall(5000)))), false), at(1010));
    assert_eq!(probes(&actions), None);
    assert_eq!(n.timers.get(Timer::Scheduled), Some(at(8000)));
}

#[test]
fn admin_schedules_only_in_the_future_with_a_clock_and_not_in_pause() {
    let sched = |t| AdminRequest::Switchover { candidate: None, scheduled_at: Some(t) };

    let (mut n, record) = leader(false);
    cycle_reading(&mut n, &record, view(&record, None, false), at(1010));
    assert_eq!(n.handle_admin(sched(wall(60_000)), at(1100)), Err(AdminError::WallClockUnknown));

    let (mut n, record) = leader(true);
    cycle_reading(&mut n, &record, view(&record, None, false), at(1010));
    assert_eq!(
        n.handle_admin(sched(wall(1000)), at(1100)),
        Err(AdminError::ScheduledInPast { at: wall(1000), now: wall(1100) })
    );
    assert!(drain(&mut n).is_empty(), "a refused request writes nothing");
    let id = n.handle_admin(sched(wall(60_000)), at(1100)).expect("a future time is accepted");
    let written = drain(&mut n).into_iter().find_map(|a| match a {
        Action::WriteControl { id, key: ControlKey::Failover, value, .. } => Some((id, value)),
        _ => None,
    });
    let (write, value) = written.expect("the failover key is written");
    let rec = FailoverRecord::decode("failover", &value).unwrap();
    assert_eq!(rec, FailoverRecord { leader: Some("a".into()), candidate: None, scheduled_at: Some(wall(60_000)) });
    n.handle_write(write, Ok(true), at(1110));
    assert!(std::iter::from_fn(|| n.poll_event()).any(|e| e == NodeEvent::AdminDone { id, ok: true }));

    let (mut n, record) = leader(true);
    cycle_reading(&mut n, &record, view(&record, None, true), at(1010));
    assert_eq!(n.handle_admin(sched(wall(60_000)), at(1100)), Err(AdminError::ScheduledWhilePaused));
}

#[test]
fn cancel_deletes_only_a_scheduled_switchover() {
    let (mut n, record) = leader(true);
    cycle_reading(&mut n, &record, view(&record, None, false), at(1010));
    assert_eq!(n.handle_admin(AdminRequest::CancelScheduledSwitchover, at(1100)), Err(AdminError::NothingScheduled));

    let (mut n, record) = leader(true);
    cycle_reading(&mut n, &record, view(&record, Some(switchover_at(None)), false), at(1010));
    assert_eq!(
        n.handle_admin(AdminRequest::CancelScheduledSwitchover, at(1100)),
        Err(AdminError::NothingScheduled),
        "a switchover under way is not a schedule"
    );

    let (mut n, record) = leader(true);
    cycle_reading(&mut n, &record, view(&record, Some(switchover_at(Some(wall(60_000)))), false), at(1010));
    let id = n.handle_admin(AdminRequest::CancelScheduledSwitchover, at(1100)).unwrap();
    let delete = drain(&mut n).into_iter().find_map(|a| match a {
        Action::DeleteControl { id, key: ControlKey::Failover, expect } => Some((id, expect)),
        _ => None,
    });
    let (delete, expect) = delete.expect("the failover key is deleted");
    assert_eq!(expect, Version::new(3), "by compare-and-delete on the version read");
    n.handle_write(delete, Ok(false), at(1110));
    assert!(
        std::iter::from_fn(|| n.poll_event()).any(|e| e == NodeEvent::AdminDone { id, ok: false }),
        "a lost race is reported"
    );
}

#[test]
fn a_schedule_needs_a_leader_in_the_record() {
    let ok = br#"{"leader":"a","candidate":"b","scheduled_at":"2026-12-07T03:00+00:00"}"#;
    assert_eq!(FailoverRecord::decode("f", ok).unwrap().scheduled_at, Some(wall(0)));
    let no_leader = br#"{"candidate":"b","scheduled_at":"2026-12-07T03:00:00Z"}"#;
    let e = FailoverRecord::decode("f", no_leader).unwrap_err();
    assert!(e.to_string().contains("only a switchover can be scheduled"), "{e}");
    let garbage = br#"{"leader":"a","scheduled_at":"next tuesday"}"#;
    assert!(FailoverRecord::decode("f", garbage).is_err());
    let written = switchover_at(Some(wall(0))).encode();
    assert_eq!(
        std::str::from_utf8(&written).unwrap(),
        r#"{"leader":"a","candidate":"b","scheduled_at":"2026-12-07T03:00:00+00:00"}"#
    );
}

/// A replica named in a paused cluster may take over only from a request in force: a
/// switchover scheduled for later (its leader gone before it) is not one.
#[test]
fn a_replica_heeds_a_scheduled_request_only_once_its_time_has_come() {
    let race = |scheduled: WallTime| {
        let mut cfg = NodeConfig::new("b", 0xabc);
        cfg.timing = Timing::fast();
        let mut n = Node::new(cfg, at(0)).unwrap();
        n.handle(Input::WallClock(wall(0)), at(0));
        n.handle_resource_status(
            ResourceStatus { running: true, role: ResourceRole::Replica, ..Default::default() },
            at(0),
        );
        n.handle_timeout(at(0));
        let Some(Action::Load { id }) = n.poll_action() else { panic!("first action must be a load") };
        let v = ClusterView {
            revision: Some(Version::new(1)),
            failover: Some(Versioned {
                value: FailoverRecord {
                    leader: Some("a".into()),
                    candidate: Some("b".into()),
                    scheduled_at: Some(scheduled),
                },
                version: Version::new(3),
            }),
            config: Some(Versioned {
                value: ConfigRecord { pause: true, ..Default::default() },
                version: Version::new(4),
            }),
            ..ClusterView::default()
        };
        n.handle_load(id, Ok(v), at(10));
        let mut actions = answer_writes(&mut n, at(10));
        if let Some(probe) = probes(&actions) {
            n.handle_peer_replies(probe, Vec::new(), at(20));
            actions.extend(answer_writes(&mut n, at(20)));
        }
        (actions.iter().any(|a| matches!(a, Action::Acquire { .. })), n.status().last_refusal)
    };
    let (raced, refusal) = race(wall(60_000));
    assert!(!raced, "a schedule still ahead is an ordinary (here paused) failover");
    assert_eq!(refusal, Some(Reason::Paused));
    let (raced, refusal) = race(wall(-100));
    assert!(raced, "once due, the named candidate takes over even in pause ({refusal:?})");
}
