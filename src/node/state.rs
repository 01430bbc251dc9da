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
