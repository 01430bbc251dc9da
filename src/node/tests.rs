//! Scripted tests of the state machine: each feeds answers by hand and checks the order of
//! the actions that come out. The simulator checks the same rules under random faults.

use std::time::Duration;

use super::*;
use crate::dcs::WatchEvent;
use crate::record::{Version, Versioned};

pub(super) fn at(ms: u64) -> Instant {
    Instant::from_origin(Duration::from_millis(ms))
}

/// A node whose resource has reported once: a running replica.
fn node(name: &str) -> Node {
    let mut cfg = NodeConfig::new(name, 0xabc);
    cfg.timing = Timing::fast(); // ttl 5 s, loop 1 s, retry 1.5 s, margin 1 s
    let mut n = Node::new(cfg, at(0)).unwrap();
    n.handle_resource_status(replica(), at(0));
    n
}

fn replica() -> ResourceStatus {
    ResourceStatus { running: true, role: ResourceRole::Replica, ..Default::default() }
}

pub(super) fn drain(n: &mut Node) -> Vec<Action> {
    std::iter::from_fn(|| n.poll_action()).collect()
}

fn leader_view(member: &str, token: &str, epoch: u64) -> LeaderView {
    LeaderView {
        record: LeaderRecord { member: member.into(), token: token.into(), api_url: None, conn_url: None },
        epoch: Epoch(epoch),
        version: Version::new(epoch),
    }
}

fn view_with(leader: Option<LeaderView>) -> ClusterView {
    ClusterView { revision: Some(Version::new(1)), leader, ..ClusterView::default() }
}

fn lease_from(record: &LeaderRecord, epoch: u64) -> Lease {
    Lease {
        record: record.clone(),
        epoch: Epoch(epoch),
        version: Version::new(epoch),
        valid_for: Duration::from_secs(5),
    }
}

/// Runs the first cycle on an empty store up to the acquire request.
fn start_and_acquire(n: &mut Node) -> (RequestId, LeaderRecord) {
    n.handle_timeout(at(0));
    let Some(Action::Load { id }) = n.poll_action() else { panic!("first action must be a load") };
    n.handle_load(id, Ok(view_with(None)), at(10));
    let actions = drain(n);
    let acquire = actions.iter().find_map(|a| match a {
        Action::Acquire { id, record } => Some((*id, record.clone())),
        _ => None,
    });
    acquire.unwrap_or_else(|| panic!("expected an acquire, got {actions:?}"))
}

/// Answers every queued store write with success until a non-write action shows up.
pub(super) fn answer_writes(n: &mut Node, now: Instant) -> Vec<Action> {
    let mut out = Vec::new();
    while let Some(a) = n.poll_action() {
        match a {
            Action::PublishMember { id, .. } | Action::WriteControl { id, .. } | Action::DeleteControl { id, .. } => {
                n.handle_write(id, Ok(true), now)
            }
            other => out.push(other),
        }
    }
    out
}

#[test]
fn single_node_acquires_then_promotes_with_the_epoch() {
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    assert_eq!(record.member, "a");
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    let actions = drain(&mut n);
    assert!(actions.contains(&Action::Promote { epoch: Epoch(7) }), "{actions:?}");
    assert!(!n.is_acting_leader(at(30)), "not acting before the resource confirms");
    n.handle_promoted(Ok(()), at(40));
    assert!(n.is_acting_leader(at(50)));
    // Belief counts from when the acquire was sent (t=10), not when it was answered.
    let deadline = n.status().lease_deadline.unwrap();
    assert_eq!(deadline, at(10) + Timing::fast().belief_for(Duration::from_secs(5)));
    assert!(!n.is_acting_leader(deadline));
}

#[test]
fn history_calls_the_first_leader_bootstrap_and_a_later_one_failover() {
    let promote_and_get_history = |view: ClusterView| {
        let mut n = node("a");
        n.handle_timeout(at(0));
        let Some(Action::Load { id }) = n.poll_action() else { panic!("first action must be a load") };
        n.handle_load(id, Ok(view), at(10));
        let acquire = drain(&mut n).into_iter().find_map(|a| match a {
            Action::Acquire { id, record } => Some((id, record)),
            _ => None,
        });
        let (id, record) = acquire.expect("an acquire");
        n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
        answer_writes(&mut n, at(20));
        n.handle_promoted(Ok(()), at(40));
        drain(&mut n).into_iter().find_map(|a| match a {
            Action::WriteControl { key: ControlKey::History, value, .. } => HistoryRecord::decode("h", &value).ok(),
            _ => None,
        })
    };
    let first = promote_and_get_history(view_with(None)).expect("the first leader records history");
    assert_eq!(first.0.iter().map(|e| (e.timeline, e.reason.as_str())).collect::<Vec<_>>(), [(1, "bootstrap")]);
    let mut later = view_with(None);
    later.history = Some(Versioned { value: first, version: Version::new(3) });
    let second = promote_and_get_history(later).expect("a later leader records history");
    assert_eq!(second.0.last().map(|e| (e.timeline, e.reason.as_str())), Some((2, "failover")));
    // A history key holding garbage is not "no history": the cluster has had a leader.
    let mut garbage = view_with(None);
    garbage.garbage_versions.insert(ControlKey::History, Version::new(4));
    let third = promote_and_get_history(garbage).expect("a leader over garbage history records history");
    assert_eq!(third.0.last().map(|e| e.reason.as_str()), Some("failover"));
}

#[test]
fn watchdog_is_armed_before_promote() {
    let mut cfg = NodeConfig::new("a", 1);
    cfg.timing = Timing::fast();
    cfg.watchdog = WatchdogMode::Required;
    let mut n = Node::new(cfg, at(0)).unwrap();
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 3))), at(20));
    let actions = drain(&mut n);
    let arm = actions.iter().position(|a| matches!(a, Action::ArmWatchdog { .. })).expect("arm");
    let promote = actions.iter().position(|a| matches!(a, Action::Promote { .. })).expect("promote");
    assert!(arm < promote, "{actions:?}");
}

/// Found by reading the state enum (helper note): a required watchdog that fails while the
/// sync-key write before promotion is in flight starts a demotion; the write landing after
/// that must not promote.
#[test]
fn a_watchdog_failure_during_the_sync_write_is_never_followed_by_a_promotion() {
    let mut cfg = NodeConfig::new("a", 1);
    cfg.timing = Timing::fast();
    cfg.watchdog = WatchdogMode::Required;
    cfg.synchronous_mode = true;
    let mut n = Node::new(cfg, at(0)).unwrap();
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 3))), at(20));
    let actions = drain(&mut n);
    let write = actions
        .iter()
        .find_map(|a| match a {
            Action::WriteControl { id, key: ControlKey::Sync, .. } => Some(*id),
            _ => None,
        })
        .expect("the sync key is written before promoting");
    n.handle(Input::WatchdogFailed, at(30));
    let during = drain(&mut n);
    n.handle_write(write, Ok(true), at(40));
    let after = drain(&mut n);
    assert!(
        !during.iter().chain(&after).any(|a| matches!(a, Action::Promote { .. })),
        "promoted after the watchdog failed: {during:?} then {after:?}"
    );
}

#[test]
fn failed_renewals_demote_before_the_belief_runs_out() {
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    n.handle_promoted(Ok(()), at(30));
    let deadline = n.status().lease_deadline.unwrap();
    let mut demoted_at = None;
    let mut now = at(30);
    // Every renewal fails as "unavailable"; drive the timers until the node demotes.
    for _ in 0..1000 {
        for a in answer_writes(&mut n, now) {
            match a {
                Action::Renew { id, .. } => n.handle_renew(id, Err(DcsError::unavailable("down")), now),
                Action::Load { id } => n.handle_load(id, Err(DcsError::unavailable("down")), now),
                Action::Demote { mode } => {
                    demoted_at.get_or_insert((now, mode));
                }
                Action::Release { .. } => panic!("must never release a key it cannot renew"),
                _ => {}
            }
        }
        if demoted_at.is_some() {
            break;
        }
        now = n.poll_timeout().unwrap().max(now);
        n.handle_timeout(now);
    }
    let (when, mode) = demoted_at.expect("node never demoted");
    assert!(when < deadline, "demoted at {when:?}, belief ended at {deadline:?}");
    assert_eq!(mode, DemoteMode::Offline);
    assert!(!n.is_acting_leader(when));
}

#[test]
fn silent_store_still_demotes_at_the_deadline() {
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    n.handle_promoted(Ok(()), at(30));
    drain(&mut n);
    let deadline = n.status().lease_deadline.unwrap();
    // No store answer ever arrives: only timers fire.
    let mut now = at(30);
    let mut demoted = false;
    while now < deadline + Duration::from_secs(1) && !demoted {
        now = n.poll_timeout().unwrap();
        n.handle_timeout(now);
        demoted = drain(&mut n).iter().any(|a| matches!(a, Action::Demote { .. }));
    }
    assert!(demoted && now <= deadline, "demote at {now:?}, deadline {deadline:?}");
}

#[test]
fn unknown_acquire_outcome_rereads_and_renews_before_promoting() {
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Err(DcsError::unknown("reply lost")), at(20));
    let actions = drain(&mut n);
    assert!(!actions.iter().any(|a| matches!(a, Action::Promote { .. })), "{actions:?}");
    let load = actions.iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None });
    let load = load.expect("re-read after unknown outcome");
    // The read shows our own token: adopt, but renew before acting.
    n.handle_load(load, Ok(view_with(Some(leader_view("a", &record.token, 9)))), at(30));
    let actions = answer_writes(&mut n, at(30));
    assert!(!actions.iter().any(|a| matches!(a, Action::Promote { .. })), "{actions:?}");
    let renew = actions
        .iter()
        .find_map(|a| if let Action::Renew { id, lease } = a { Some((*id, lease.clone())) } else { None });
    let (renew, lease) = renew.expect("renew before promote");
    assert_eq!(lease.epoch, Epoch(9));
    n.handle_renew(renew, Ok(CasOutcome::Won(Lease { valid_for: Duration::from_secs(5), ..lease })), at(40));
    assert!(drain(&mut n).contains(&Action::Promote { epoch: Epoch(9) }));
}

#[test]
fn unknown_acquire_outcome_with_another_holder_follows_it() {
    let mut n = node("a");
    let (id, _) = start_and_acquire(&mut n);
    n.handle_acquire(id, Err(DcsError::unknown("timeout")), at(20));
    let load = drain(&mut n).iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None }).unwrap();
    n.handle_load(load, Ok(view_with(Some(leader_view("b", "other", 4)))), at(30));
    let actions = answer_writes(&mut n, at(30));
    assert!(actions.contains(&Action::Follow { leader: Some("b".into()), conn_url: None }), "{actions:?}");
    assert!(!actions.iter().any(|a| matches!(a, Action::Promote { .. } | Action::Renew { .. })));
}

#[test]
fn lost_key_demotes_at_once_and_never_releases() {
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    n.handle_promoted(Ok(()), at(30));
    answer_writes(&mut n, at(30));
    n.handle_timeout(at(1010));
    let renew = drain(&mut n).iter().find_map(|a| if let Action::Renew { id, .. } = a { Some(*id) } else { None });
    n.handle_renew(renew.expect("renew each loop"), Ok(CasOutcome::Lost(Some(leader_view("b", "x", 8)))), at(1020));
    let actions = drain(&mut n);
    assert_eq!(actions.first(), Some(&Action::Demote { mode: DemoteMode::ImmediateNoLock }), "{actions:?}");
    n.handle_demoted(Ok(()), at(1030));
    let after = drain(&mut n);
    assert!(!after.iter().any(|a| matches!(a, Action::Release { .. })), "{after:?}");
}

#[test]
fn a_read_showing_another_holder_ends_leadership() {
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    n.handle_promoted(Ok(()), at(30));
    answer_writes(&mut n, at(30));
    // A watch says the scope changed: the leader re-reads at its next cycle.
    n.handle_watch_event(WatchEvent::Changed, at(500));
    n.handle_timeout(at(1010));
    let actions = drain(&mut n);
    let renew = actions.iter().find_map(|a| if let Action::Renew { id, .. } = a { Some(*id) } else { None }).unwrap();
    n.handle_renew(renew, Err(DcsError::unavailable("blip")), at(1015));
    let load = drain(&mut n).iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None }).unwrap();
    n.handle_load(load, Ok(view_with(Some(leader_view("b", "x", 8)))), at(1020));
    assert!(drain(&mut n).contains(&Action::Demote { mode: DemoteMode::ImmediateNoLock }));
    assert!(!n.is_acting_leader(at(1021)));
}

#[test]
fn switchover_demotes_then_releases() {
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    n.handle_promoted(Ok(()), at(30));
    n.handle_resource_status(
        ResourceStatus { running: true, role: ResourceRole::Primary, position: Some(100), ..Default::default() },
        at(30),
    );
    answer_writes(&mut n, at(30));
    n.handle_watch_event(WatchEvent::Changed, at(500));
    n.handle_timeout(at(1010));
    let renew =
        drain(&mut n).iter().find_map(|a| if let Action::Renew { id, .. } = a { Some(*id) } else { None }).unwrap();
    n.handle_renew(renew, Ok(CasOutcome::Won(lease_from(&record, 7))), at(1020));
    let load = drain(&mut n).iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None }).unwrap();
    let mut view = view_with(Some(leader_view("a", &record.token, 7)));
    let mut b = MemberRecord::new("b");
    b.running = true;
    b.role = ResourceRole::Replica;
    view.members.push(Versioned { value: b.clone(), version: Version::new(2) });
    view.failover = Some(Versioned {
        value: FailoverRecord { leader: Some("a".into()), candidate: Some("b".into()), scheduled_at: None },
        version: Version::new(3),
    });
    n.handle_load(load, Ok(view), at(1030));
    let actions = answer_writes(&mut n, at(1030));
    let probe = actions.iter().find_map(|a| if let Action::ProbePeers { id, .. } = a { Some(*id) } else { None });
    let status = MemberRecord {
        name: "b".into(),
        api_url: None,
        conn_url: None,
        role: ResourceRole::Replica,
        running: true,
        position: Some(100),
        timeline: None,
        tags: Tags::default(),
        watchdog_failed: false,
    };
    n.handle_peer_replies(probe.expect("probe the candidate"), vec![PeerReply::Reachable(status)], at(1040));
    let actions = answer_writes(&mut n, at(1040));
    assert_eq!(actions, vec![Action::Demote { mode: DemoteMode::Graceful }]);
    n.handle_demoted(Ok(()), at(1500));
    let actions = drain(&mut n);
    assert!(actions.iter().any(|a| matches!(a, Action::Release { .. })), "release after the demote: {actions:?}");
}

#[test]
fn an_accepted_admin_request_starts_a_cycle_at_once() {
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    n.handle_promoted(Ok(()), at(30));
    answer_writes(&mut n, at(30));
    let mut view = view_with(Some(leader_view("a", &record.token, 7)));
    view.members.push(Versioned { value: MemberRecord::new("b"), version: Version::new(2) });
    n.handle_watch_event(WatchEvent::Changed, at(500));
    n.handle_timeout(at(1000));
    let renew = drain(&mut n).iter().find_map(|a| if let Action::Renew { id, .. } = a { Some(*id) } else { None });
    n.handle_renew(renew.expect("the leader renews"), Ok(CasOutcome::Won(lease_from(&record, 7))), at(1005));
    let load = drain(&mut n).iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None });
    n.handle_load(load.expect("a watch event makes the leader re-read"), Ok(view), at(1010));
    answer_writes(&mut n, at(1010));
    let next_regular = n.poll_timeout().unwrap();
    n.handle_admin(AdminRequest::Switchover { candidate: Some("b".into()), scheduled_at: None }, at(1100)).unwrap();
    let write =
        drain(&mut n).iter().find_map(|a| if let Action::WriteControl { id, .. } = a { Some(*id) } else { None });
    n.handle_write(write.expect("the failover key is written"), Ok(true), at(1110));
    assert!(n.poll_timeout().unwrap() <= at(1110), "next wake-up {:?}, regular {next_regular:?}", n.poll_timeout());
    n.handle_timeout(at(1110));
    // Store calls go one at a time: the renewal first, then the read.
    let renew = drain(&mut n).iter().find_map(|a| if let Action::Renew { id, .. } = a { Some(*id) } else { None });
    n.handle_renew(renew.expect("the cycle renews first"), Ok(CasOutcome::Won(lease_from(&record, 7))), at(1115));
    assert!(drain(&mut n).iter().any(|a| matches!(a, Action::Load { .. })), "the leader re-reads at once");
}

/// Found by the simulator (synchronous mode, a reply lost): a sync-key write that timed out
/// left the node waiting for it forever, holding the key without ever promoting.
#[test]
fn a_sync_key_write_that_times_out_is_retried_and_the_leader_promotes() {
    let mut cfg = NodeConfig::new("a", 0xabc);
    cfg.timing = Timing::fast();
    cfg.synchronous_mode = true;
    let mut n = Node::new(cfg, at(0)).unwrap();
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    let actions = drain(&mut n);
    assert!(
        actions.iter().any(|a| matches!(a, Action::WriteControl { key: ControlKey::Sync, .. })),
        "the sync key is written before promoting: {actions:?}"
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Promote { .. })));
    // No answer: the write's deadline (retry_timeout) passes; its outcome is unknown.
    n.handle_timeout(at(1600));
    let mut promoted = false;
    let mut now = 1600;
    let mut sync_written = false;
    while now < 4000 && !promoted {
        for a in drain(&mut n) {
            match a {
                Action::Renew { id, .. } => n.handle_renew(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(now)),
                Action::Load { id } => {
                    let mut view = view_with(Some(leader_view("a", &record.token, 7)));
                    // The timed-out write had been applied after all.
                    view.sync = Some(Versioned {
                        value: SyncRecord { leader: "a".into(), sync_standby: Vec::new() },
                        version: Version::new(9),
                    });
                    n.handle_load(id, Ok(view), at(now));
                }
                Action::WriteControl { id, key, .. } => {
                    sync_written |= key == ControlKey::Sync;
                    n.handle_write(id, Ok(true), at(now));
                }
                Action::PublishMember { id, .. } | Action::DeleteControl { id, .. } => {
                    n.handle_write(id, Ok(true), at(now))
                }
                Action::Promote { epoch } => {
                    assert_eq!(epoch, Epoch(7));
                    promoted = true;
                }
                _ => {}
            }
        }
        now += 50;
        n.handle_timeout(at(now));
    }
    assert!(promoted, "the leader never promoted after the sync write timed out");
    assert!(!sync_written, "the re-read showed the key already names us; no second write needed");
}

#[test]
fn a_failed_follow_is_asked_again_at_the_next_read() {
    let mut n = node("b");
    n.handle_timeout(at(0));
    let follows = |actions: &[Action]| actions.iter().filter(|a| matches!(a, Action::Follow { .. })).count();
    let load_with_leader = |n: &mut Node, t: u64| {
        let load = drain(n).iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None });
        n.handle_load(load.expect("a read"), Ok(view_with(Some(leader_view("a", "x", 3)))), at(t));
        answer_writes(n, at(t))
    };
    let first = load_with_leader(&mut n, 10);
    assert_eq!(follows(&first), 1, "{first:?}");
    // Same leader, follow succeeded: not asked again.
    n.handle_timeout(at(1000));
    assert_eq!(follows(&load_with_leader(&mut n, 1010)), 0);
    // Follow failed: the next read asks again.
    n.handle_follow_failed(at(1020));
    n.handle_timeout(at(2000));
    assert_eq!(follows(&load_with_leader(&mut n, 2010)), 1);
}

#[test]
fn a_candidate_missing_from_a_stale_view_makes_the_leader_re_read_at_once() {
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    n.handle_promoted(Ok(()), at(30));
    answer_writes(&mut n, at(30));
    let switch_to_c = || AdminRequest::Switchover { candidate: Some("c".into()), scheduled_at: None };
    assert_eq!(n.handle_admin(switch_to_c(), at(100)), Err(AdminError::UnknownMember("c".into())));
    // c registers: the watch fires, the leader's view is now known to be old. Still refused
    // (no request is written for a name nobody has seen), but the leader re-reads at once.
    n.handle_watch_event(WatchEvent::Changed, at(200));
    let regular = n.poll_timeout().unwrap();
    assert_eq!(n.handle_admin(switch_to_c(), at(210)), Err(AdminError::UnknownMember("c".into())));
    assert!(n.poll_timeout().unwrap() <= at(210), "re-read scheduled at once, not at {regular:?}");
    n.handle_timeout(at(210));
    let renew = drain(&mut n).iter().find_map(|a| if let Action::Renew { id, .. } = a { Some(*id) } else { None });
    n.handle_renew(renew.expect("the cycle renews first"), Ok(CasOutcome::Won(lease_from(&record, 7))), at(215));
    let load = drain(&mut n).iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None });
    let mut view = view_with(Some(leader_view("a", &record.token, 7)));
    view.members.push(Versioned { value: MemberRecord::new("c"), version: Version::new(5) });
    n.handle_load(load.expect("the re-read"), Ok(view), at(220));
    answer_writes(&mut n, at(220));
    assert!(n.handle_admin(switch_to_c(), at(230)).is_ok(), "the retry sees the new member");
}

#[test]
fn history_names_a_switchover_even_when_the_request_is_cleared_during_promotion() {
    let mut n = node("b");
    n.handle_timeout(at(0));
    let load = drain(&mut n).iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None });
    let mut view = view_with(None);
    view.failover = Some(Versioned {
        value: FailoverRecord { leader: Some("a".into()), candidate: Some("b".into()), scheduled_at: None },
        version: Version::new(4),
    });
    n.handle_load(load.unwrap(), Ok(view), at(10));
    let actions = answer_writes(&mut n, at(10));
    let (id, record) = actions
        .iter()
        .find_map(|a| if let Action::Acquire { id, record } = a { Some((*id, record.clone())) } else { None })
        .unwrap_or_else(|| panic!("the named candidate races: {actions:?}"));
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    assert!(answer_writes(&mut n, at(20)).contains(&Action::Promote { epoch: Epoch(7) }));
    // While the resource promotes, a read no longer shows the request (the new leader cleared it).
    n.handle_watch_event(WatchEvent::Changed, at(30));
    n.handle_timeout(at(1000));
    let mut history = None;
    for _ in 0..4 {
        for a in drain(&mut n) {
            match a {
                Action::Renew { id, .. } => n.handle_renew(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(1010)),
                Action::Load { id } => {
                    n.handle_load(id, Ok(view_with(Some(leader_view("b", &record.token, 7)))), at(1010))
                }
                Action::PublishMember { id, .. }
                | Action::WriteControl { id, .. }
                | Action::DeleteControl { id, .. } => n.handle_write(id, Ok(true), at(1010)),
                _ => {}
            }
        }
    }
    n.handle_promoted(Ok(()), at(1100));
    for _ in 0..10 {
        for a in drain(&mut n) {
            match a {
                Action::WriteControl { id, key, value, .. } => {
                    if key == ControlKey::History {
                        history = Some(HistoryRecord::decode("history", &value).expect("a valid history record"));
                    }
                    n.handle_write(id, Ok(true), at(1110));
                }
                Action::PublishMember { id, .. } | Action::DeleteControl { id, .. } => {
                    n.handle_write(id, Ok(true), at(1110))
                }
                Action::Renew { id, .. } => n.handle_renew(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(1110)),
                Action::Load { id } => {
                    n.handle_load(id, Ok(view_with(Some(leader_view("b", &record.token, 7)))), at(1110))
                }
                _ => {}
            }
        }
    }
    let history = history.expect("the new leader records history");
    assert_eq!(history.0.last().map(|e| e.reason.as_str()), Some("switchover"), "{history:?}");
}

#[test]
fn ineligible_member_does_not_race() {
    let mut cfg = NodeConfig::new("a", 1);
    cfg.timing = Timing::fast();
    cfg.tags.nofailover = true;
    let mut n = Node::new(cfg, at(0)).unwrap();
    n.handle_timeout(at(0));
    let Some(Action::Load { id }) = n.poll_action() else { panic!() };
    n.handle_load(id, Ok(view_with(None)), at(10));
    let actions = answer_writes(&mut n, at(10));
    assert!(!actions.iter().any(|a| matches!(a, Action::Acquire { .. })), "{actions:?}");
    assert_eq!(n.status().last_refusal, Some(Reason::NoFailoverTag));
}

#[test]
fn late_answers_are_ignored() {
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    // The acquire times out inside the node first (no answer within retry_timeout)...
    n.handle_timeout(at(10) + Duration::from_millis(1500));
    // ...then the real answer arrives: it must not be acted on.
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(1600));
    assert!(!drain(&mut n).iter().any(|a| matches!(a, Action::Promote { .. })));
}

#[test]
fn watch_events_start_a_cycle_early() {
    let mut n = node("a");
    n.handle_timeout(at(0));
    let Some(Action::Load { id }) = n.poll_action() else { panic!() };
    n.handle_load(id, Ok(view_with(Some(leader_view("b", "t", 1)))), at(5));
    answer_writes(&mut n, at(5));
    assert_eq!(n.poll_timeout(), Some(at(1000)));
    n.handle_watch_event(WatchEvent::Changed, at(200));
    let actions = drain(&mut n);
    let load = actions.iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None });
    let load = load.unwrap_or_else(|| panic!("a follower re-reads at once on a watch event: {actions:?}"));
    // The leader key vanished: the follower races without waiting for its timer.
    n.handle_load(load, Ok(view_with(None)), at(210));
    assert!(drain(&mut n).iter().any(|a| matches!(a, Action::Acquire { .. })));
}

#[test]
fn an_idle_leader_renews_without_reading() {
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    n.handle_promoted(Ok(()), at(30));
    answer_writes(&mut n, at(30));
    n.handle_timeout(at(1010));
    let actions = drain(&mut n);
    assert!(matches!(actions.as_slice(), [Action::Renew { .. }]), "{actions:?}");
}

#[test]
fn invalid_timing_is_refused() {
    let mut cfg = NodeConfig::new("a", 1);
    cfg.timing.loop_wait = Duration::from_secs(60);
    assert_eq!(Node::new(cfg, at(0)).unwrap_err().field, "ttl");
}

#[test]
fn shutdown_demotes_before_releasing() {
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    n.handle_promoted(Ok(()), at(30));
    answer_writes(&mut n, at(30));
    n.handle_shutdown(at(40));
    let actions = answer_writes(&mut n, at(40));
    assert_eq!(actions, vec![Action::Demote { mode: DemoteMode::Graceful }]);
    assert!(!n.is_stopped());
    n.handle_demoted(Ok(()), at(50));
    let actions = answer_writes(&mut n, at(50));
    let release = actions.iter().find_map(|a| if let Action::Release { id, .. } = a { Some(*id) } else { None });
    n.handle_release(release.expect("release after demote"), Ok(CasOutcome::Won(())), at(60));
    assert!(n.is_stopped());
    assert_eq!(n.poll_timeout(), None);
}

#[test]
fn shutdown_of_a_replica_stops_at_once() {
    let mut n = node("a");
    n.handle_timeout(at(0));
    n.handle_shutdown(at(1));
    assert!(n.is_stopped());
}

#[test]
fn an_adopted_key_survives_until_its_renewal_answers() {
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Err(DcsError::unknown("reply lost")), at(20));
    let load = drain(&mut n).iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None }).unwrap();
    n.handle_load(load, Ok(view_with(Some(leader_view("a", &record.token, 9)))), at(30));
    // The driver calls handle_timeout on every turn of its loop; the adopted key is not
    // acting yet, so this must not throw it away.
    n.handle_timeout(at(31));
    let actions = answer_writes(&mut n, at(31));
    let (renew, lease) = actions
        .iter()
        .find_map(|a| if let Action::Renew { id, lease } = a { Some((*id, lease.clone())) } else { None })
        .expect("renew the adopted key");
    n.handle_renew(renew, Ok(CasOutcome::Won(Lease { valid_for: Duration::from_secs(5), ..lease })), at(40));
    assert!(drain(&mut n).contains(&Action::Promote { epoch: Epoch(9) }));
}

#[test]
fn own_key_left_after_an_offline_demotion_is_renewed_not_abandoned() {
    // Found by the simulator: renewals fail long enough for an offline demotion, but the
    // store keeps the process's session (and so the key) alive. Nobody else can acquire an
    // existing key, so unless the node takes its own key back the cluster has no leader for
    // as long as the process lives.
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    n.handle_promoted(Ok(()), at(30));
    let mut now = at(30);
    let mut demoted = false;
    for _ in 0..1000 {
        for a in answer_writes(&mut n, now) {
            match a {
                Action::Renew { id, .. } => n.handle_renew(id, Err(DcsError::unavailable("down")), now),
                Action::Load { id } => n.handle_load(id, Err(DcsError::unavailable("down")), now),
                Action::Demote { mode } => {
                    assert_eq!(mode, DemoteMode::Offline);
                    n.handle_demoted(Ok(()), now);
                    demoted = true;
                }
                _ => {}
            }
        }
        if demoted {
            break;
        }
        now = n.poll_timeout().unwrap().max(now);
        n.handle_timeout(now);
    }
    assert!(demoted && !n.is_acting_leader(now));
    // The store answers again and still shows our key, with our token.
    let mine = ClusterView { leader: Some(leader_view("a", &record.token, 7)), ..view_with(None) };
    let mut renew = None;
    for _ in 0..100 {
        now = n.poll_timeout().unwrap().max(now);
        n.handle_timeout(now);
        for a in answer_writes(&mut n, now) {
            match a {
                Action::Load { id } => n.handle_load(id, Ok(mine.clone()), now),
                Action::Renew { id, lease } => {
                    assert_eq!((lease.epoch, lease.record.token.as_str()), (Epoch(7), record.token.as_str()));
                    renew = Some(id);
                }
                Action::Acquire { .. } => panic!("must not race for a key that exists"),
                _ => {}
            }
        }
        if renew.is_some() {
            break;
        }
    }
    let id = renew.expect("the node never renewed its own key: the cluster would stay leaderless");
    assert!(!n.is_acting_leader(now), "a read alone must not restore leadership (rule 2)");
    assert!(!drain(&mut n).iter().any(|a| matches!(a, Action::Promote { .. })));
    n.handle_renew(id, Ok(CasOutcome::Won(lease_from(&record, 7))), now);
    let actions = drain(&mut n);
    assert!(actions.contains(&Action::Promote { epoch: Epoch(7) }), "{actions:?}");
}

/// The first action that is a load, if any.
fn load_in(actions: &[Action]) -> Option<RequestId> {
    actions.iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None })
}

#[test]
fn a_completed_offline_demotion_reads_at_once() {
    // Issue 17: member publishes wake no watch, so no other member's write triggers the read
    // that finds our own key left in the store after an offline demotion (simulator seed 20:
    // re-elected a loop late). The node reads as soon as its resource has stepped down.
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    n.handle_promoted(Ok(()), at(30));
    let mut now = at(30);
    let mut demoted = false;
    for _ in 0..1000 {
        for a in answer_writes(&mut n, now) {
            match a {
                Action::Renew { id, .. } => n.handle_renew(id, Err(DcsError::unavailable("down")), now),
                Action::Load { id } => n.handle_load(id, Err(DcsError::unavailable("down")), now),
                Action::Demote { mode } => {
                    assert_eq!(mode, DemoteMode::Offline);
                    demoted = true;
                }
                _ => {}
            }
        }
        if demoted {
            break;
        }
        now = n.poll_timeout().unwrap().max(now);
        n.handle_timeout(now);
    }
    assert!(demoted, "the node never demoted");
    let confirmed = now + Duration::from_millis(1);
    n.handle_demoted(Ok(()), confirmed);
    let early = drain(&mut n);
    let timeout = n.poll_timeout().unwrap();
    assert!(
        load_in(&early).is_some() || timeout <= confirmed,
        "no read until {timeout:?} after the demotion was confirmed at {confirmed:?}: {early:?}"
    );
    n.handle_timeout(confirmed);
    let actions: Vec<Action> = early.into_iter().chain(drain(&mut n)).collect();
    let load = load_in(&actions).unwrap_or_else(|| panic!("a demoted node reads at once: {actions:?}"));
    // The read shows our key: the node renews it (and acts only once that renewal wins).
    let mine = ClusterView { leader: Some(leader_view("a", &record.token, 7)), ..view_with(None) };
    n.handle_load(load, Ok(mine), confirmed);
    let after = answer_writes(&mut n, confirmed);
    assert!(after.iter().any(|a| matches!(a, Action::Renew { .. })), "{after:?}");
    assert!(!n.is_acting_leader(confirmed), "a read alone must not restore leadership (rule 2)");
}

#[test]
fn a_held_key_found_gone_is_followed_by_a_read_at_once() {
    // A node that holds the key without acting (here: its acquire was answered too late)
    // learns from a renewal that the key is gone. It is a replica already; it reads at once
    // rather than at its next loop, since the watch event the key's deletion caused came
    // while it held the key and started no read.
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    let too_late = Lease { valid_for: Duration::from_secs(1), ..lease_from(&record, 7) };
    n.handle_acquire(id, Ok(CasOutcome::Won(too_late)), at(20));
    assert_eq!(n.status().role, NodeRole::Promoting, "holding the key, not acting");
    n.handle_timeout(at(20));
    let actions = answer_writes(&mut n, at(20));
    let renew = actions.iter().find_map(|a| if let Action::Renew { id, .. } = a { Some(*id) } else { None });
    let renew = renew.unwrap_or_else(|| panic!("a key held too late is renewed at once: {actions:?}"));
    n.handle_renew(renew, Ok(CasOutcome::Lost(None)), at(30));
    assert_eq!(n.status().role, NodeRole::Replica);
    let timeout = n.poll_timeout().unwrap();
    assert!(timeout <= at(30), "no read until {timeout:?}");
    n.handle_timeout(at(30));
    let actions = drain(&mut n);
    assert!(load_in(&actions).is_some(), "{actions:?}");
}

#[test]
fn a_follower_reads_when_an_unchanged_leader_key_would_count_as_expired() {
    // A Kubernetes lease nobody renews is reported absent once a reader has seen it unchanged
    // for a ttl; nothing is deleted, so no watch wakes the follower at that moment (member
    // publishes no longer do either). It reads then, not at its next loop.
    let mut n = node("a");
    let view = view_with(Some(leader_view("b", "b/1-1", 1)));
    let mut now = at(0);
    let mut reads = Vec::new();
    n.handle_timeout(now);
    while now < at(6500) {
        for a in answer_writes(&mut n, now) {
            if let Action::Load { id } = a {
                reads.push(now);
                // Answered 7 ms later: the key was first seen at t = 7 ms.
                now += Duration::from_millis(7);
                n.handle_load(id, Ok(view.clone()), now);
                answer_writes(&mut n, now);
            }
        }
        now = n.poll_timeout().unwrap().max(now);
        n.handle_timeout(now);
    }
    let expired_at = at(7) + Duration::from_secs(5);
    assert!(reads.contains(&expired_at), "no read at {expired_at:?}: {reads:?}");
    let early = reads.iter().filter(|r| **r > at(5000) && **r < at(6000)).count();
    assert_eq!(early, 1, "one early read, then the regular loop again: {reads:?}");
}

#[test]
fn an_adopted_key_does_not_make_the_timer_spin() {
    // Found by the simulator (virtual time stood still): an adopted key has a belief that
    // ended at adoption, and `poll_timeout` returned that past instant until the renewal came
    // back, so a driver would call `handle_timeout` in a busy loop.
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Err(DcsError::unknown("reply lost")), at(1600));
    let Some(Action::Load { id }) = drain(&mut n).into_iter().find(|a| matches!(a, Action::Load { .. })) else {
        panic!("an unknown acquire must be followed by a read")
    };
    let mine = ClusterView { leader: Some(leader_view("a", &record.token, 7)), ..view_with(None) };
    n.handle_load(id, Ok(mine), at(1700));
    let actions = answer_writes(&mut n, at(1700));
    assert!(actions.iter().any(|a| matches!(a, Action::Renew { .. })), "{actions:?}");
    assert!(!n.is_acting_leader(at(1700)));
    n.handle_timeout(at(1700)); // brings the loop timer up to date
    assert!(!drain(&mut n).iter().any(|a| matches!(a, Action::Promote { .. })));
    let next = n.poll_timeout().unwrap();
    assert!(next > at(1700), "timer at {next:?} is not in the future");
    n.handle_timeout(next);
    assert!(n.poll_timeout().unwrap() > next, "and it keeps moving forward");
}

#[test]
fn a_renewal_answered_after_a_graceful_demotion_does_not_promote_again() {
    // Found by the simulator: a renewal in flight while a shutdown demoted the resource came
    // back won after the lease had been handed to the release; the node took the lease
    // again, promoted, and the release then deleted the key under a running primary.
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    n.handle_promoted(Ok(()), at(30));
    answer_writes(&mut n, at(30));
    n.handle_timeout(at(1000)); // next cycle: a renewal goes out
    let renew = answer_writes(&mut n, at(1000)).into_iter().find_map(|a| match a {
        Action::Renew { id, .. } => Some(id),
        _ => None,
    });
    let renew = renew.expect("the leader renews every cycle");
    n.handle_shutdown(at(1010));
    assert!(drain(&mut n).iter().any(|a| matches!(a, Action::Demote { mode: DemoteMode::Graceful })));
    n.handle_demoted(Ok(()), at(1020));
    n.handle_renew(renew, Ok(CasOutcome::Won(lease_from(&record, 7))), at(1030));
    let actions = drain(&mut n);
    assert!(!actions.iter().any(|a| matches!(a, Action::Promote { .. })), "{actions:?}");
    assert!(actions.iter().any(|a| matches!(a, Action::Release { .. })), "the release goes ahead: {actions:?}");
    assert!(!n.is_acting_leader(at(1030)));
}

/// Issue 13: two members with the same incarnation number and attempt count. Their tokens
/// differ (the member name is in them), and a member whose acquire answer was lost never takes
/// another member's record for its own, even one forged to carry its token: it neither renews
/// nor releases it, also when shut down.
#[test]
fn members_sharing_incarnations_never_adopt_each_others_keys() {
    let (mut a, mut b) = (node("a"), node("b"));
    let (a_id, a_record) = start_and_acquire(&mut a);
    let (b_id, b_record) = start_and_acquire(&mut b);
    assert_eq!(a.config().incarnation, b.config().incarnation);
    assert_ne!(a_record.token, b_record.token, "tokens are unique across members by construction");
    a.handle_acquire(a_id, Ok(CasOutcome::Won(lease_from(&a_record, 7))), at(20));
    // b's answer is lost: the outcome is unknown and b re-reads before anything else.
    b.handle_acquire(b_id, Err(DcsError::unknown("reply lost")), at(20));
    let load = drain(&mut b).iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None });
    let forged = LeaderView {
        record: LeaderRecord { token: b_record.token.clone(), ..a_record.clone() },
        ..leader_view("a", "", 7)
    };
    for (i, leader) in [forged, leader_view("a", &a_record.token, 7)].into_iter().enumerate() {
        let load = if i == 0 {
            load.expect("b re-reads after an unknown outcome")
        } else {
            b.handle_watch_event(WatchEvent::Changed, at(40));
            drain(&mut b).iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None }).unwrap()
        };
        b.handle_load(load, Ok(view_with(Some(leader))), at(30 + i as u64 * 20));
        let actions = answer_writes(&mut b, at(30));
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Renew { .. } | Action::Release { .. })),
            "b touched a's key: {actions:?}"
        );
        assert_eq!(b.status().epoch, None, "b holds nothing");
    }
    b.handle_shutdown(at(100));
    let actions = drain(&mut b);
    assert!(!actions.iter().any(|a| matches!(a, Action::Release { .. })), "{actions:?}");
    assert!(b.is_stopped());
}

/// Issue 13: an election asks members whose registration expired (they lost the store, may
/// still run and be ahead), from its own memory and from the leader's roster in the status key.
#[test]
fn an_election_asks_members_whose_registration_expired() {
    // Whom the election after a read of `view` asks; nobody when it decides at once.
    let probed = |n: &mut Node, view: ClusterView, now: Instant| -> Vec<String> {
        n.handle_timeout(now);
        let load = drain(n).iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None });
        n.handle_load(load.expect("a load"), Ok(view), now);
        let actions = answer_writes(n, now);
        let peers = actions.iter().find_map(|a| match a {
            Action::ProbePeers { peers, .. } => Some(peers.iter().map(|p| p.name.clone()).collect()),
            _ => None,
        });
        let decided_at_once = actions.iter().any(|a| matches!(a, Action::Acquire { .. }));
        peers.unwrap_or_else(|| {
            assert!(decided_at_once, "neither a probe nor an acquire: {actions:?}");
            Vec::new()
        })
    };
    let member = |name: &str| Versioned { value: MemberRecord::new(name), version: Version::new(2) };
    // Seen registered, then gone from the store: still asked, until it has been gone for
    // ROSTER_MEMORY_TTLS ttls.
    let mut a = node("a");
    let mut first = view_with(Some(leader_view("c", "c/1-1", 3)));
    first.members = vec![member("a"), member("b"), member("c")];
    a.handle_timeout(at(0));
    let load = drain(&mut a).iter().find_map(|x| if let Action::Load { id } = x { Some(*id) } else { None });
    a.handle_load(load.unwrap(), Ok(first), at(10));
    drain(&mut a);
    let mut expired = view_with(None);
    expired.members = vec![member("a")];
    assert_eq!(probed(&mut a, expired.clone(), at(5_000)), ["b", "c"]);
    let forgotten = at(10) + Timing::fast().ttl * ROSTER_MEMORY_TTLS;
    let mut late = node("a");
    late.roster = a.roster.clone();
    assert!(probed(&mut late, expired, forgotten).is_empty(), "forgotten after {ROSTER_MEMORY_TTLS} ttls");
    // A fresh process knows nobody: the leader's roster in the status key names them.
    let mut fresh = node("a");
    let mut with_status = view_with(None);
    with_status.members = vec![member("a")];
    let members = [("a", ""), ("b", "http://b:8008"), ("c", "")].map(|(n, u)| (n.to_string(), u.to_string()));
    with_status.status = Some(Versioned {
        value: StatusRecord { position: 5, members: members.into_iter().collect(), ..StatusRecord::default() },
        version: Version::new(9),
    });
    assert_eq!(probed(&mut fresh, with_status, at(0)), ["b", "c"]);
}

/// Issue 14: a process restarted under a resource that still runs as primary (a former
/// leader) demotes before anything else: it does not follow the new leader until its first
/// status report, and when that says primary, the demote comes first.
#[test]
fn a_restarted_former_leader_demotes_before_following() {
    let mut cfg = NodeConfig::new("a", 0xdef);
    cfg.timing = Timing::fast();
    let mut n = Node::new(cfg, at(0)).unwrap();
    n.handle_timeout(at(0));
    let load = drain(&mut n).iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None });
    n.handle_load(load.expect("a load"), Ok(view_with(Some(leader_view("b", "b/1-1", 9)))), at(10));
    let before = answer_writes(&mut n, at(10));
    assert!(
        !before.iter().any(|a| matches!(a, Action::Follow { .. })),
        "followed before knowing the resource: {before:?}"
    );
    n.handle_resource_status(ResourceStatus { role: ResourceRole::Primary, ..replica() }, at(20));
    assert_eq!(drain(&mut n), vec![Action::Demote { mode: DemoteMode::ImmediateNoLock }]);
    n.handle_demoted(Ok(()), at(30));
    let after = drain(&mut n);
    assert!(after.contains(&Action::Follow { leader: Some("b".into()), conn_url: None }), "{after:?}");
    // A replica's first report lets it follow at once.
    let mut r = Node::new(n.config().clone(), at(0)).unwrap();
    r.handle_timeout(at(0));
    let load = drain(&mut r).iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None });
    r.handle_load(load.expect("a load"), Ok(view_with(Some(leader_view("b", "b/1-1", 9)))), at(10));
    answer_writes(&mut r, at(10));
    r.handle_resource_status(replica(), at(20));
    assert_eq!(drain(&mut r), vec![Action::Follow { leader: Some("b".into()), conn_url: None }]);
}

/// Issue 15: a pause that arrives while a switchover is under way (the old leader already
/// released the key) must not leave the cluster without a primary: the winner promotes.
#[test]
fn a_pause_during_a_switchover_still_ends_with_a_primary() {
    let mut n = node("a");
    n.handle_timeout(at(0));
    let load = drain(&mut n).iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None });
    let mut view = view_with(None);
    view.config =
        Some(Versioned { value: ConfigRecord { pause: true, ..ConfigRecord::default() }, version: Version::new(2) });
    view.failover = Some(Versioned {
        value: FailoverRecord { leader: Some("c".into()), candidate: None, scheduled_at: None },
        version: Version::new(3),
    });
    n.handle_load(load.expect("a load"), Ok(view), at(10));
    let actions = answer_writes(&mut n, at(10));
    let (id, record) = actions
        .iter()
        .find_map(|a| if let Action::Acquire { id, record } = a { Some((*id, record.clone())) } else { None })
        .unwrap_or_else(|| panic!("races although paused: {actions:?}"));
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    let actions = answer_writes(&mut n, at(20));
    assert!(actions.contains(&Action::Promote { epoch: Epoch(7) }), "{actions:?}");
}

/// Long sweep, I5: a member that raced on an older view and won the key gives it back,
/// without promoting, when the fresh sync key names someone else as the synchronous standby.
#[test]
fn a_winner_the_fresh_sync_key_does_not_name_gives_the_key_back() {
    let mut cfg = NodeConfig::new("a", 0xabc);
    cfg.timing = Timing::fast();
    cfg.synchronous_mode = true;
    let mut n = Node::new(cfg, at(0)).unwrap();
    n.handle_resource_status(replica(), at(0));
    n.handle_timeout(at(0));
    let load = drain(&mut n).iter().find_map(|a| if let Action::Load { id } = a { Some(*id) } else { None });
    // The view the election saw: no sync key yet, so anyone may race.
    n.handle_load(load.expect("a load"), Ok(view_with(None)), at(10));
    let actions = answer_writes(&mut n, at(10));
    let (id, record) = actions
        .iter()
        .find_map(|a| if let Action::Acquire { id, record } = a { Some((*id, record.clone())) } else { None })
        .unwrap_or_else(|| panic!("races: {actions:?}"));
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    // The leader's duties read afresh: the sync key names b's standby c, not us.
    let mut fresh = view_with(Some(leader_view("a", &record.token, 7)));
    fresh.sync = Some(Versioned {
        value: SyncRecord { leader: "b".into(), sync_standby: vec!["c".into()] },
        version: Version::new(5),
    });
    n.handle_watch_event(WatchEvent::Changed, at(30));
    let mut released = false;
    for step in 0..8 {
        let now = at(40 + step * 500);
        for a in drain(&mut n) {
            match a {
                Action::Load { id } => n.handle_load(id, Ok(fresh.clone()), now),
                Action::Renew { id, .. } => n.handle_renew(id, Ok(CasOutcome::Won(lease_from(&record, 7))), now),
                Action::Release { id, lease } => {
                    assert_eq!(lease.epoch, Epoch(7));
                    released = true;
                    n.handle_release(id, Ok(CasOutcome::Won(())), now);
                }
                Action::Promote { .. } => panic!("promoted over a sync key that does not name it"),
                // A write expecting no sync key loses: the store has b's (the election's view
                // was older). Taking over b's key by its version would be the bug.
                Action::WriteControl { id, key: ControlKey::Sync, expect: Expect::Absent, .. } => {
                    n.handle_write(id, Ok(false), now)
                }
                Action::WriteControl { key: ControlKey::Sync, .. } => panic!("took over the fresh sync key"),
                Action::PublishMember { id, .. }
                | Action::WriteControl { id, .. }
                | Action::DeleteControl { id, .. } => n.handle_write(id, Ok(true), now),
                _ => {}
            }
        }
        n.handle_timeout(now);
    }
    assert!(released, "the key is given back");
    assert_eq!(n.status().last_refusal, Some(Reason::NotInSyncSet));
}

/// What a synchronous-mode leader did, in order: sync-key writes (applied by the scripted
/// store) and the standby sets it asked of the resource.
#[derive(Clone, Debug, PartialEq)]
enum SyncStep {
    Key(Vec<String>),
    Resource(Vec<String>),
}

/// A leader in synchronous mode driven loop by loop against a scripted store that applies its
/// sync-key writes, so each cycle loads what the last one wrote.
struct SyncLeader {
    n: Node,
    record: LeaderRecord,
    sync: Option<SyncRecord>,
    sync_version: u64,
    members: Vec<MemberRecord>,
    confirmed: Vec<String>,
    now: u64,
    steps: Vec<SyncStep>,
    /// What the resource says streams from the leader (`None`: it cannot tell).
    streaming: Option<Vec<String>>,
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl SyncLeader {
    /// Leader "a" with `count` synchronous standbys, promoted and acting.
    fn new(count: usize, strict: bool) -> Self {
        let mut cfg = NodeConfig::new("a", 0xabc);
        cfg.timing = Timing::fast();
        cfg.synchronous_mode = true;
        cfg.synchronous_node_count = NonZeroUsize::new(count).unwrap();
        cfg.synchronous_mode_strict = strict;
        let mut n = Node::new(cfg, at(0)).unwrap();
        let (id, record) = start_and_acquire(&mut n);
        n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
        let mut l = SyncLeader {
            n,
            record,
            sync: None,
            sync_version: 1,
            members: Vec::new(),
            confirmed: Vec::new(),
            now: 20,
            steps: Vec::new(),
            streaming: None,
        };
        l.settle();
        assert!(l.n.is_acting_leader(at(l.now)), "the leader did not promote: {:?}", l.steps);
        assert_eq!(l.sync, Some(SyncRecord { leader: "a".into(), sync_standby: Vec::new() }));
        l
    }

    fn replica(&mut self, name: &str, position: u64) {
        let mut m = MemberRecord::new(name);
        m.role = ResourceRole::Replica;
        m.running = true;
        m.position = Some(position);
        self.members.retain(|x| x.name != name);
        self.members.push(m);
        self.members.sort_by(|a, b| a.name.cmp(&b.name));
    }

    fn member(&mut self, name: &str) -> &mut MemberRecord {
        self.members.iter_mut().find(|m| m.name == name).expect("a known member")
    }

    fn view(&self) -> ClusterView {
        let mut v = view_with(Some(leader_view("a", &self.record.token, 7)));
        v.members = self.members.iter().map(|m| Versioned { value: m.clone(), version: Version::new(2) }).collect();
        v.sync = self.sync.clone().map(|s| Versioned { value: s, version: Version::new(self.sync_version) });
        v
    }

    /// Answers everything the node asks until it is quiet.
    fn settle(&mut self) {
        let now = at(self.now);
        loop {
            let actions = drain(&mut self.n);
            if actions.is_empty() {
                return;
            }
            for a in actions {
                match a {
                    Action::Renew { id, .. } => {
                        self.n.handle_renew(id, Ok(CasOutcome::Won(lease_from(&self.record, 7))), now)
                    }
                    Action::Load { id } => self.n.handle_load(id, Ok(self.view()), now),
                    Action::WriteControl { id, key: ControlKey::Sync, value, .. } => {
                        let rec = SyncRecord::decode("sync", &value).unwrap();
                        self.steps.push(SyncStep::Key(rec.sync_standby.clone()));
                        self.sync = Some(rec);
                        self.sync_version += 1;
                        self.n.handle_write(id, Ok(true), now);
                    }
                    Action::PublishMember { id, .. }
                    | Action::WriteControl { id, .. }
                    | Action::DeleteControl { id, .. } => self.n.handle_write(id, Ok(true), now),
                    Action::Promote { .. } => self.n.handle_promoted(Ok(()), now),
                    Action::SetSyncStandbys { names } => self.steps.push(SyncStep::Resource(names)),
                    _ => {}
                }
            }
        }
    }

    /// One loop: the resource reports (primary, with the confirmed standbys), a watch says the
    /// store changed (the test changes members between loops), then a cycle.
    fn cycle(&mut self) {
        self.now += 1000;
        self.n.handle_resource_status(self.status(), at(self.now));
        self.n.handle_watch_event(WatchEvent::Changed, at(self.now));
        self.n.handle_timeout(at(self.now));
        self.settle();
    }

    fn status(&self) -> ResourceStatus {
        ResourceStatus {
            running: true,
            role: ResourceRole::Primary,
            position: Some(1000),
            timeline: Some(1),
            sync_confirmed: self.confirmed.clone(),
            streaming: self.streaming.clone(),
        }
    }

    fn cycles(&mut self, count: usize) {
        for _ in 0..count {
            self.cycle();
        }
    }

    fn published(&self) -> Vec<String> {
        self.sync.as_ref().map(|s| s.sync_standby.clone()).unwrap_or_default()
    }

    fn take_steps(&mut self) -> Vec<SyncStep> {
        std::mem::take(&mut self.steps)
    }
}

#[test]
fn sync_count_two_fills_with_the_most_advanced_and_publishes_only_confirmed() {
    let mut l = SyncLeader::new(2, false);
    l.take_steps();
    l.replica("b", 300);
    l.replica("c", 500);
    l.replica("d", 500);
    l.replica("e", 900);
    l.member("e").tags.nosync = true;
    l.replica("f", 950);
    l.member("f").running = false;
    l.cycles(3);
    // The two most advanced eligible replicas, ties by name; nothing published unconfirmed.
    assert_eq!(l.take_steps(), [SyncStep::Resource(names(&["c", "d"]))]);
    assert!(l.published().is_empty());
    l.confirmed = names(&["d"]);
    l.cycles(2);
    assert_eq!(l.take_steps(), [SyncStep::Key(names(&["d"]))]);
    l.confirmed = names(&["c", "d"]);
    l.cycles(2);
    // Grown, keeping the published one first.
    assert_eq!(l.take_steps(), [SyncStep::Key(names(&["d", "c"]))]);
}

/// A leader with `synchronous_node_count = 2` and replicas b (300), c (500) and d (400):
/// c and d, the most advanced, are confirmed and published.
fn two_of_three_standbys_published() -> SyncLeader {
    let mut l = SyncLeader::new(2, false);
    l.replica("b", 300);
    l.replica("c", 500);
    l.replica("d", 400);
    l.cycle();
    l.confirmed = names(&["c", "d"]);
    l.cycles(2);
    assert_eq!(l.published(), ["c", "d"]);
    l.take_steps();
    l
}

#[test]
fn sync_count_two_keeps_its_standbys_while_they_stay_eligible() {
    let mut l = two_of_three_standbys_published();
    // b overtakes both, and a standby is briefly unconfirmed (a slow reply): nothing moves.
    l.member("b").position = Some(5000);
    l.confirmed = names(&["c"]);
    l.cycles(4);
    assert_eq!(l.take_steps(), []);
    assert_eq!(l.published(), ["c", "d"]);
}

#[test]
fn sync_count_two_replaces_one_standby_without_dropping_the_other() {
    let mut l = two_of_three_standbys_published();
    // d restarts: out of the key first, then the resource stops waiting for it and waits for
    // b instead; b joins the key once confirmed. c stays published throughout.
    l.member("d").running = false;
    l.cycles(3);
    assert_eq!(l.take_steps(), [SyncStep::Key(names(&["c"])), SyncStep::Resource(names(&["c", "b"]))]);
    l.confirmed = names(&["c", "b"]);
    l.cycles(2);
    assert_eq!(l.take_steps(), [SyncStep::Key(names(&["c", "b"]))]);
    // d comes back, more advanced than anyone: the set stays (sticky).
    l.member("d").running = true;
    l.member("d").position = Some(9000);
    l.cycles(3);
    assert_eq!(l.take_steps(), []);
}

#[test]
fn a_standby_that_stopped_streaming_leaves_the_set_while_its_member_record_lives_on() {
    let mut l = two_of_three_standbys_published();
    // d's process died: its member record still says a running replica (a member lease
    // outlives it), but the resource no longer sees it stream. Out of the key first, then
    // the resource waits for b instead, as when d's record goes.
    l.streaming = Some(names(&["b", "c"]));
    l.confirmed = names(&["c"]);
    l.cycles(3);
    assert_eq!(l.take_steps(), [SyncStep::Key(names(&["c"])), SyncStep::Resource(names(&["c", "b"]))]);
    // d streams again, more advanced than anyone: the set stays (sticky).
    l.streaming = Some(names(&["b", "c", "d"]));
    l.member("d").position = Some(9000);
    l.cycles(3);
    assert_eq!(l.take_steps(), []);
}

#[test]
fn a_new_standby_is_chosen_only_once_it_streams() {
    let mut l = SyncLeader::new(1, false);
    l.take_steps();
    l.streaming = Some(Vec::new());
    l.replica("b", 300);
    l.cycles(2);
    assert_eq!(l.take_steps(), [], "b's record alone does not make commits wait for it");
    l.streaming = Some(names(&["b"]));
    l.cycle();
    assert_eq!(l.take_steps(), [SyncStep::Resource(names(&["b"]))]);
}

#[test]
fn a_standby_that_starts_streaming_or_is_confirmed_is_acted_on_at_once_not_a_loop_later() {
    let mut l = SyncLeader::new(1, false);
    l.streaming = Some(Vec::new());
    l.replica("b", 300);
    l.cycles(2);
    l.take_steps();
    let next_loop = l.n.poll_timeout();
    l.now += 10;
    l.n.handle_resource_status(l.status(), at(l.now));
    assert_eq!(l.n.poll_timeout(), next_loop, "an unchanged status moves nothing");

    for change in 0..2 {
        match change {
            0 => l.streaming = Some(names(&["b"])),
            _ => l.confirmed = names(&["b"]),
        }
        l.now += 10;
        l.n.handle_resource_status(l.status(), at(l.now));
        assert_eq!(l.n.poll_timeout(), Some(at(l.now)), "a cycle at once after change {change}");
        l.n.handle_timeout(at(l.now));
        l.settle();
    }
    assert_eq!(l.take_steps(), [SyncStep::Resource(names(&["b"])), SyncStep::Key(names(&["b"]))]);
}

#[test]
fn the_same_standbys_listed_in_another_order_start_no_cycle() {
    let mut l = two_of_three_standbys_published();
    l.streaming = Some(names(&["b", "c", "d"]));
    l.cycle();
    let next_loop = l.n.poll_timeout();
    l.streaming = Some(names(&["d", "c", "b"]));
    l.confirmed = names(&["d", "c"]);
    l.now += 10;
    l.n.handle_resource_status(l.status(), at(l.now));
    assert_eq!(l.n.poll_timeout(), next_loop, "pg_stat_replication lists rows in no particular order");
}

#[test]
fn sync_count_one_still_chooses_a_single_standby() {
    let mut l = SyncLeader::new(1, false);
    l.take_steps();
    l.replica("b", 300);
    l.replica("c", 500);
    l.cycle();
    assert_eq!(l.take_steps(), [SyncStep::Resource(names(&["c"]))]);
    l.confirmed = names(&["c"]);
    l.cycles(2);
    assert_eq!(l.take_steps(), [SyncStep::Key(names(&["c"]))]);
    l.member("c").role = ResourceRole::Unknown;
    l.cycles(3);
    assert_eq!(l.take_steps(), [SyncStep::Key(Vec::new()), SyncStep::Resource(names(&["b"]))]);
    l.confirmed = names(&["b"]);
    l.cycles(2);
    assert_eq!(l.take_steps(), [SyncStep::Key(names(&["b"]))]);
}

#[test]
fn strict_mode_asks_for_any_standby_when_none_is_eligible() {
    let mut l = SyncLeader::new(1, true);
    // From the promotion on: the wildcard follows the promote, before any standby exists.
    let first = l.take_steps();
    assert_eq!(first.last(), Some(&SyncStep::Resource(names(&[ANY_STANDBY]))), "{first:?}");
    l.cycles(2);
    assert_eq!(l.take_steps(), [], "the wildcard is asked once");
    l.replica("b", 300);
    l.cycle();
    l.confirmed = names(&["b"]);
    l.cycles(2);
    assert_eq!(l.take_steps(), [SyncStep::Resource(names(&["b"])), SyncStep::Key(names(&["b"]))]);
    l.member("b").running = false;
    l.cycles(3);
    assert_eq!(l.take_steps(), [SyncStep::Key(Vec::new()), SyncStep::Resource(names(&[ANY_STANDBY]))]);
    assert!(l.published().is_empty(), "the wildcard is never published");
}

#[test]
fn without_strict_mode_no_standby_means_an_empty_set() {
    let mut l = SyncLeader::new(1, false);
    let first = l.take_steps();
    assert!(!first.iter().any(|s| matches!(s, SyncStep::Resource(_))), "{first:?}");
    l.replica("b", 300);
    l.cycle();
    l.confirmed = names(&["b"]);
    l.cycles(2);
    l.take_steps();
    l.member("b").running = false;
    l.cycles(3);
    assert_eq!(l.take_steps(), [SyncStep::Key(Vec::new()), SyncStep::Resource(Vec::new())]);
}

#[test]
fn strict_mode_asks_for_any_standby_only_once_promoted() {
    let mut cfg = NodeConfig::new("a", 0xabc);
    cfg.timing = Timing::fast();
    cfg.synchronous_mode = true;
    cfg.synchronous_mode_strict = true;
    let mut n = Node::new(cfg, at(0)).unwrap();
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    let actions = answer_writes(&mut n, at(20));
    assert!(actions.contains(&Action::Promote { epoch: Epoch(7) }), "{actions:?}");
    assert!(!actions.iter().any(|a| matches!(a, Action::SetSyncStandbys { .. })), "{actions:?}");
    // A failed promotion leaves a resource that is no primary: nothing to reconfigure.
    n.handle_promoted(Err("pg_ctl promote failed".into()), at(30));
    let after = drain(&mut n);
    assert!(!after.iter().any(|a| matches!(a, Action::SetSyncStandbys { .. })), "{after:?}");
}

// === failsafe mode ===

/// How the store answers in the failsafe tests, from a given time on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Store {
    /// Every request fails before being applied.
    Down,
    /// Back; the leader key expired and nobody took it.
    BackKeyGone,
    /// Back; another member holds the key.
    BackTakenBy(&'static str),
    /// Back for reads and renewals (the key is gone), but every acquire fails.
    BackAcquiresFail,
}

fn failsafe_view(store: Store) -> ClusterView {
    let mut view = view_with(match store {
        Store::BackTakenBy(m) => Some(leader_view(m, &format!("{m}/1-1"), 9)),
        _ => None,
    });
    view.members = ["a", "b"].map(|m| Versioned { value: MemberRecord::new(m), version: Version::new(1) }).to_vec();
    view
}

/// Answers every action the node emits from `from` to `until` as `store(now)` says, and
/// confirms (or not) every failsafe check. Returns the actions with the time they came out.
fn run_failsafe(
    n: &mut Node,
    from: Instant,
    until: Instant,
    store: impl Fn(Instant) -> Store,
    confirm: bool,
) -> Vec<(Instant, Action)> {
    let mut seen = Vec::new();
    let mut now = from;
    // What the store holds once we win the key (epoch 7 before the outage, 8 after).
    let mut ours: Option<Lease> = n.state.held().map(|h| h.lease.clone());
    while now < until {
        n.handle_timeout(now);
        while let Some(action) = n.poll_action() {
            let state = store(now);
            let unavailable = || DcsError::unavailable("store unreachable");
            // The epoch-7 key expired during the outage; an epoch-8 key is the one we took back.
            let mine = ours.as_ref().filter(|_| {
                state == Store::BackKeyGone && (now < at(1_000) || ours.as_ref().is_some_and(|l| l.epoch == Epoch(8)))
            });
            let current = match state {
                Store::BackTakenBy(_) => failsafe_view(state).leader,
                _ => mine.map(|l| LeaderView { record: l.record.clone(), epoch: l.epoch, version: l.version.clone() }),
            };
            match &action {
                Action::Load { id } => {
                    let mut view = failsafe_view(state);
                    view.leader = current;
                    n.handle_load(*id, if state == Store::Down { Err(unavailable()) } else { Ok(view) }, now)
                }
                Action::Renew { id, lease } => {
                    let answer = match state {
                        Store::Down => Err(unavailable()),
                        _ if mine.is_some_and(|l| l.epoch == lease.epoch) => Ok(CasOutcome::Won(lease.clone())),
                        _ => Ok(CasOutcome::Lost(current)),
                    };
                    n.handle_renew(*id, answer, now)
                }
                Action::Acquire { id, record } => {
                    let answer = match state {
                        Store::Down | Store::BackAcquiresFail => Err(unavailable()),
                        Store::BackKeyGone => {
                            let lease = lease_from(record, if now < at(1_000) { 7 } else { 8 });
                            ours = Some(lease.clone());
                            Ok(CasOutcome::Won(lease))
                        }
                        Store::BackTakenBy(_) => Ok(CasOutcome::Lost(current)),
                    };
                    n.handle_acquire(*id, answer, now)
                }
                Action::Release { id, .. } => n.handle_release(*id, Ok(CasOutcome::Won(())), now),
                Action::PublishMember { id, .. }
                | Action::WriteControl { id, .. }
                | Action::DeleteControl { id, .. } => {
                    n.handle_write(*id, if state == Store::Down { Err(unavailable()) } else { Ok(true) }, now)
                }
                Action::FailsafeCheck { id, .. } => n.handle_failsafe_result(*id, confirm, now),
                // Silent peers count as unreachable.
                Action::ProbePeers { id, .. } => n.handle_peer_replies(*id, Vec::new(), now),
                Action::Promote { .. } => n.handle_promoted(Ok(()), now),
                Action::Demote { .. } => n.handle_demoted(Ok(()), now),
                _ => {}
            }
            seen.push((now, action));
        }
        now = n.poll_timeout().map_or(until, |t| t.max(now + Duration::from_millis(1)));
    }
    seen
}

/// A failsafe leader "a" acting under epoch 7 at t = 50 ms, its peer "b" registered.
fn failsafe_leader() -> Node {
    let mut cfg = NodeConfig::new("a", 1);
    cfg.timing = Timing::fast();
    cfg.failsafe_mode = true;
    let mut n = Node::new(cfg, at(0)).unwrap();
    n.handle_resource_status(replica(), at(0));
    let actions = run_failsafe(&mut n, at(0), at(40), |_| Store::BackKeyGone, true);
    assert!(actions.iter().any(|(_, a)| *a == Action::Promote { epoch: Epoch(7) }), "{actions:?}");
    n.handle_resource_status(ResourceStatus { role: ResourceRole::Primary, ..replica() }, at(40));
    assert!(n.is_acting_leader(at(50)));
    n
}

fn demotes(actions: &[(Instant, Action)]) -> Vec<&Action> {
    actions.iter().map(|(_, a)| a).filter(|a| matches!(a, Action::Demote { .. })).collect()
}

/// The store is down from 1 s to 9 s: longer than the 5 s ttl, so the key expired.
fn outage_then(back: Store) -> impl Fn(Instant) -> Store {
    move |now| {
        if now < at(1_000) {
            Store::BackKeyGone
        } else if now < at(9_000) {
            Store::Down
        } else {
            back
        }
    }
}

#[test]
fn a_confirmed_failsafe_leader_takes_its_expired_key_back_without_demoting() {
    let mut n = failsafe_leader();
    let actions = run_failsafe(&mut n, at(50), at(12_000), outage_then(Store::BackKeyGone), true);
    assert!(demotes(&actions).is_empty(), "{actions:?}");
    // Confirmed again once per loop through the 8 s outage, not on every renewal retry.
    let checks = actions.iter().filter(|(_, a)| matches!(a, Action::FailsafeCheck { .. })).count();
    assert!((4..=10).contains(&checks), "{checks} checks: {actions:?}");
    let reacquire = actions.iter().position(|(t, a)| *t >= at(9_000) && matches!(a, Action::Acquire { .. }));
    let promote = actions.iter().position(|(_, a)| *a == Action::Promote { epoch: Epoch(8) });
    assert!(reacquire.is_some_and(|r| promote.is_some_and(|p| r < p)), "acquire, then the new epoch: {actions:?}");
    assert!(
        !actions.iter().any(|(_, a)| matches!(a, Action::WriteControl { key: ControlKey::History, .. })),
        "the same primary is no new timeline: {actions:?}"
    );
    assert!(n.is_acting_leader(at(12_000)));
    assert_eq!(n.status().epoch, Some(Epoch(8)));
}

#[test]
fn an_unconfirmed_failsafe_leader_demotes_when_renewals_run_out() {
    let mut n = failsafe_leader();
    let actions = run_failsafe(&mut n, at(50), at(12_000), outage_then(Store::BackKeyGone), false);
    let demoted = demotes(&actions);
    assert!(matches!(demoted.first(), Some(Action::Demote { mode: DemoteMode::Offline })), "{actions:?}");
    let demoted_at = actions.iter().find(|(_, a)| matches!(a, Action::Demote { .. })).map(|(t, _)| *t);
    assert!(demoted_at.is_some_and(|t| t < at(9_000)), "demoted during the outage: {demoted_at:?}");
}

#[test]
fn a_failsafe_leader_finding_another_holder_demotes() {
    let mut n = failsafe_leader();
    let actions = run_failsafe(&mut n, at(50), at(12_000), outage_then(Store::BackTakenBy("b")), true);
    assert!(!demotes(&actions).is_empty(), "{actions:?}");
    assert!(!actions.iter().any(|(_, a)| *a == Action::Promote { epoch: Epoch(8) }), "{actions:?}");
    assert!(!n.is_acting_leader(at(12_000)));
}

#[test]
fn a_failsafe_leader_that_cannot_take_the_key_back_demotes_before_its_belief_ends() {
    let mut n = failsafe_leader();
    let actions = run_failsafe(&mut n, at(50), at(20_000), outage_then(Store::BackAcquiresFail), true);
    assert!(actions.iter().any(|(t, a)| *t >= at(9_000) && matches!(a, Action::Acquire { .. })), "{actions:?}");
    let demoted_at = actions.iter().find(|(_, a)| matches!(a, Action::Demote { .. })).map(|(t, _)| *t);
    // The last confirmed belief ran at most ttl - margin past the outage's end.
    assert!(demoted_at.is_some_and(|t| t > at(9_000) && t <= at(9_000) + Duration::from_secs(4)), "{actions:?}");
    assert!(!n.is_acting_leader(at(20_000)));
}

#[test]
fn a_shutdown_whose_release_gets_no_answer_still_stops() {
    let mut n = node("a");
    let (id, record) = start_and_acquire(&mut n);
    n.handle_acquire(id, Ok(CasOutcome::Won(lease_from(&record, 7))), at(20));
    answer_writes(&mut n, at(20));
    n.handle_promoted(Ok(()), at(40));
    answer_writes(&mut n, at(40));
    n.handle(Input::Shutdown, at(100));
    assert!(drain(&mut n).iter().any(|a| matches!(a, Action::Demote { .. })), "a leader demotes first");
    n.handle(Input::Demoted(Ok(())), at(200));
    let actions = answer_writes(&mut n, at(200));
    assert!(actions.iter().any(|a| matches!(a, Action::Release { .. })), "{actions:?}");
    // No answer: the store is unreachable. The node's own deadline (retry_timeout) ends it;
    // the key expires by itself.
    n.handle(Input::Timeout, at(200) + Timing::fast().retry_timeout + Duration::from_millis(1));
    assert!(n.is_stopped(), "a shutdown must not wait forever for a release");
}

/// Consul guarantees a session only for its TTL (ttl / 2): a lease granted for less than
/// the loop leaves room for must be renewed before its belief runs out, not at the next loop.
#[test]
fn a_lease_shorter_than_the_loop_is_renewed_before_its_belief_runs_out() {
    let mut n = node("a");
    let short = Duration::from_millis(1800); // belief 0.8 s, loop 1 s
    let (id, record) = start_and_acquire(&mut n);
    let mut lease = Lease { valid_for: short, ..lease_from(&record, 7) };
    n.handle_acquire(id, Ok(CasOutcome::Won(lease.clone())), at(20));
    answer_writes(&mut n, at(20));
    n.handle_promoted(Ok(()), at(30));
    answer_writes(&mut n, at(30));
    let mut renewals = 0;
    while renewals < 5 {
        let deadline = n.status().lease_deadline.expect("holds the key");
        let wake = n.poll_timeout().expect("a timer is armed");
        assert!(wake < deadline, "next wake-up {wake:?} is not before the belief ends at {deadline:?}");
        n.handle_timeout(wake);
        for a in drain(&mut n) {
            match a {
                Action::Renew { id, lease: l } => {
                    renewals += 1;
                    lease = Lease { valid_for: short, ..l };
                    n.handle_renew(id, Ok(CasOutcome::Won(lease.clone())), wake + Duration::from_millis(5));
                }
                Action::Load { id } => n.handle_load(id, Ok(view_with(None)), wake),
                Action::Demote { .. } => panic!("demoted at {wake:?}: the renewal came after the belief ran out"),
                _ => {}
            }
        }
        answer_writes(&mut n, wake);
        assert!(n.is_acting_leader(wake), "still the leader at {wake:?}");
    }
}
