//! Arbitrary sequences of inputs to the state machine, answered by the in-memory reference
//! store or by arbitrary errors: the node must never panic, and it must never act as leader
//! past the belief it was granted.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use leasehold::node::{Action, Input, Node, NodeConfig, ResourceStatus};
use leasehold::testkit::model::MemoryModel;
use leasehold::{DcsError, Instant, ResourceRole, Timing};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Step {
    Advance(u16),
    AnswerNext { fail: Option<u8> },
    Promoted(bool),
    Demoted(bool),
    Status { primary: bool, pos: u32 },
    Crash,
}

fuzz_target!(|steps: Vec<Step>| {
    let mut cfg = NodeConfig::new("a", 1);
    cfg.timing = Timing::fast();
    let mut now = Instant::ZERO;
    let Ok(mut node) = Node::new(cfg, now) else { return };
    let mut model = MemoryModel::new();
    let mut session = model.open_session(Duration::from_secs(5), now);
    let mut pending: Vec<Action> = Vec::new();
    for step in steps.into_iter().take(200) {
        match step {
            Step::Advance(ms) => {
                now += Duration::from_millis(u64::from(ms));
                node.handle(Input::Timeout, now);
            }
            Step::AnswerNext { fail } => {
                if pending.is_empty() {
                    continue;
                }
                let a = pending.remove(0);
                let err = fail.map(|f| match f % 3 {
                    0 => DcsError::unavailable("fuzz"),
                    1 => DcsError::unknown("fuzz"),
                    _ => DcsError::lease_lost("fuzz"),
                });
                leasehold::testkit::model::answer(&mut model, session, "s", &mut node, a, err, now);
            }
            Step::Promoted(ok) => node.handle(Input::Promoted(if ok { Ok(()) } else { Err("fuzz".into()) }), now),
            Step::Demoted(ok) => node.handle(Input::Demoted(if ok { Ok(()) } else { Err("fuzz".into()) }), now),
            Step::Status { primary, pos } => node.handle(
                Input::ResourceStatus(ResourceStatus {
                    running: true,
                    role: if primary { ResourceRole::Primary } else { ResourceRole::Replica },
                    position: Some(u64::from(pos)),
                    ..ResourceStatus::default()
                }),
                now,
            ),
            Step::Crash => {
                model.close_session(session, now);
                session = model.open_session(Duration::from_secs(5), now);
            }
        }
        while let Some(a) = node.poll_action() {
            pending.push(a);
        }
        if let Some(deadline) = node.status().lease_deadline {
            assert!(!node.is_acting_leader(now) || now < deadline);
        }
    }
});
