//! [`State`]: what a node is, with the fields only that state has.

use crate::dcs::Lease;
use crate::record::Epoch;
use crate::time::Instant;

use super::NodeRole;

/// The leader key as we hold it.
#[derive(Clone, Debug)]
pub(super) struct Held {
    pub(super) lease: Lease,
    /// The end of our belief: we must not act as leader at or after this instant.
    pub(super) acting_until: Instant,
}

/// The node's state: whether it holds the key and what its resource was asked to be.
///
/// Stopping is not a state: a stopped node still sees a demotion it asked for through
/// (`Node::is_stopped` is a flag of its own).
#[derive(Clone, Debug, Default)]
pub(super) enum State {
    /// No key, resource not primary: following a leader, or racing for a free key (an
    /// election probe or an acquire may be in flight; both can outlive this state).
    #[default]
    Follower,
    /// The key is ours, the resource is not primary: won and not promoted yet (paused,
    /// waiting for the sync key or a fresh view), won by an answer that came too late, or
    /// adopted (an acquire whose answer was lost, a key this process dropped). A key not
    /// proven by a renewal since has `acting_until` in the past; only a won renewal makes
    /// it act.
    Holding(Held),
    /// The resource was asked to promote under `epoch`.
    Promoting {
        held: Held,
        epoch: Epoch,
        /// Why, taken when it started (the failover request is cleared meanwhile).
        reason: &'static str,
    },
    /// The resource is confirmed primary under `epoch`.
    Leader { held: Held, epoch: Epoch },
    /// Failsafe: the key expired while the store was unreachable and nobody took it; every
    /// member confirmed us, so the resource stays primary under `epoch` until `until` while
    /// the node takes the key back under a new epoch. `adopted`: that acquire's answer was
    /// lost and a read showed the key ours; it acts once a renewal proves it.
    Reacquiring { epoch: Epoch, until: Instant, adopted: Option<Held> },
    /// The resource was asked to demote; with `release`, the key is released once it
    /// confirms (rule 4), and renewals continue meanwhile.
    Demoting { release: bool, held: Option<Held> },
}

impl State {
    /// The key, if we hold it.
    pub(super) fn held(&self) -> Option<&Held> {
        match self {
            State::Follower => None,
            State::Holding(held) | State::Promoting { held, .. } | State::Leader { held, .. } => Some(held),
            State::Reacquiring { adopted: held, .. } | State::Demoting { held, .. } => held.as_ref(),
        }
    }

    /// The key, if we hold it, to change its belief.
    pub(super) fn held_mut(&mut self) -> Option<&mut Held> {
        match self {
            State::Follower => None,
            State::Holding(held) | State::Promoting { held, .. } | State::Leader { held, .. } => Some(held),
            State::Reacquiring { adopted: held, .. } | State::Demoting { held, .. } => held.as_mut(),
        }
    }

    /// Takes the key out of the state; the resource's part stays (a holding node becomes a
    /// follower). Not for promoting or leader states, whose key is what they act on.
    pub(super) fn take_held(&mut self) -> Option<Held> {
        match self {
            State::Follower | State::Promoting { .. } | State::Leader { .. } => None,
            State::Holding(_) => match std::mem::take(self) {
                State::Holding(held) => Some(held),
                _ => unreachable!(),
            },
            State::Reacquiring { adopted: held, .. } | State::Demoting { held, .. } => held.take(),
        }
    }

    /// The resource is neither primary nor asked to be, nor stepping down.
    pub(super) fn is_replica(&self) -> bool {
        matches!(self, State::Follower | State::Holding(_))
    }

    /// The resource is primary or asked to become one.
    pub(super) fn is_promoting_or_acting(&self) -> bool {
        matches!(self, State::Promoting { .. } | State::Leader { .. } | State::Reacquiring { .. })
    }

    /// The resource is confirmed primary, under this epoch.
    pub(super) fn acting_epoch(&self) -> Option<Epoch> {
        match self {
            State::Leader { epoch, .. } | State::Reacquiring { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }

    /// The end of the belief the node waits on: while promoting or leader. A held key that
    /// does not act (holding, demoting, an adopted one) has a belief that may have ended,
    /// and waiting for that past instant would only make the driver spin.
    pub(super) fn belief_deadline(&self) -> Option<Instant> {
        match self {
            State::Promoting { held, .. } | State::Leader { held, .. } => Some(held.acting_until),
            _ => None,
        }
    }

    /// The end of a failsafe re-acquisition.
    pub(super) fn reacquire_deadline(&self) -> Option<Instant> {
        match self {
            State::Reacquiring { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// Until when the resource may act as primary: the held key's belief, or the
    /// re-acquisition's.
    pub(super) fn belief(&self) -> Option<Instant> {
        self.held().map(|h| h.acting_until).max(self.reacquire_deadline())
    }

    /// The role shown outside.
    pub(super) fn role(&self) -> NodeRole {
        match self {
            State::Follower => NodeRole::Replica,
            State::Holding(_) | State::Promoting { .. } => NodeRole::Promoting,
            State::Leader { .. } | State::Reacquiring { .. } => NodeRole::Leader,
            State::Demoting { .. } => NodeRole::Demoting,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::{LeaderRecord, Version};

    fn at(ms: u64) -> Instant {
        Instant::from_origin(Duration::from_millis(ms))
    }

    fn held(until: u64) -> Held {
        let record = LeaderRecord { member: "a".into(), token: "a/1-1".into(), api_url: None, conn_url: None };
        let lease = Lease { record, epoch: Epoch(7), version: Version::new(1), valid_for: Duration::from_secs(5) };
        Held { lease, acting_until: at(until) }
    }

    #[test]
    fn role_belief_and_deadlines_per_state() {
        let promoting = State::Promoting { held: held(100), epoch: Epoch(7), reason: "failover" };
        let leader = State::Leader { held: held(100), epoch: Epoch(7) };
        let reacquiring = State::Reacquiring { epoch: Epoch(7), until: at(300), adopted: Some(held(50)) };
        let demoting = State::Demoting { release: true, held: Some(held(100)) };
        let cases = [
            (State::Follower, NodeRole::Replica, None, None, None),
            (State::Holding(held(100)), NodeRole::Promoting, None, None, None),
            (promoting, NodeRole::Promoting, Some(at(100)), None, None),
            (leader, NodeRole::Leader, Some(at(100)), None, Some(Epoch(7))),
            (reacquiring, NodeRole::Leader, None, Some(at(300)), Some(Epoch(7))),
            (demoting, NodeRole::Demoting, None, None, None),
        ];
        for (state, role, belief_deadline, reacquire_deadline, acting) in cases {
            assert_eq!(state.role(), role, "{state:?}");
            assert_eq!(state.belief_deadline(), belief_deadline, "{state:?}");
            assert_eq!(state.reacquire_deadline(), reacquire_deadline, "{state:?}");
            assert_eq!(state.acting_epoch(), acting, "{state:?}");
        }
    }

    #[test]
    fn a_reacquisition_acts_until_the_later_of_its_two_beliefs() {
        let adopted_later = State::Reacquiring { epoch: Epoch(7), until: at(300), adopted: Some(held(400)) };
        assert_eq!(adopted_later.belief(), Some(at(400)));
        let none_adopted = State::Reacquiring { epoch: Epoch(7), until: at(300), adopted: None };
        assert_eq!(none_adopted.belief(), Some(at(300)));
        assert_eq!(State::Follower.belief(), None);
    }

    #[test]
    fn taking_the_key_keeps_the_resource_part() {
        let mut holding = State::Holding(held(100));
        assert!(holding.take_held().is_some());
        assert!(matches!(holding, State::Follower), "a holding node without its key is a follower");
        let mut demoting = State::Demoting { release: true, held: Some(held(100)) };
        assert!(demoting.take_held().is_some());
        assert!(matches!(demoting, State::Demoting { release: true, held: None }));
        let mut leader = State::Leader { held: held(100), epoch: Epoch(7) };
        assert!(leader.take_held().is_none(), "a leader's key is not taken this way");
        assert!(leader.held().is_some());
    }
}
