//! Every deadline a [`Node`](super::Node) waits on, in one table.

use crate::time::Instant;

/// The kinds of deadline, one slot each in [`Timers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// The next cycle: the regular one, or earlier when a read is due at once or when the
    /// leader key a follower read would count as expired if unchanged. Armed from the start
    /// until the node stops.
    Cycle,
    /// The end of the belief of leadership while promoting or leader (rule 1). Mirrors the
    /// state's `acting_until`; written only by `Node::arm_state_timers`.
    Belief,
    /// A failsafe re-acquisition must have won by then. Mirrors `State::Reacquiring::until`;
    /// written only by `Node::arm_state_timers`.
    Reacquire,
    /// The store request in flight has had no answer for `retry_timeout`: its outcome is unknown.
    Request,
    /// The peer probe in flight (election or switchover) is given up.
    Probe,
    /// The failsafe check in flight counts as not confirmed.
    FailsafeCheck,
    /// Renew outside the loop: a failed renewal again, or one due before the next loop
    /// because the store granted less than the loop leaves room for.
    RenewRetry,
    /// A scheduled switchover aimed at us falls due: read the cluster then, and act on it.
    Scheduled,
}

impl Timer {
    const COUNT: usize = 8;
}

/// One optional deadline per [`Timer`]; [`next`](Timers::next) is what
/// [`Node::poll_timeout`](super::Node::poll_timeout) returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Timers {
    slots: [Option<Instant>; Timer::COUNT],
}

impl Timers {
    /// Arms `timer` at `at`, replacing an earlier setting.
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        self.slots[timer as usize] = Some(at);
    }

    /// Arms `timer` at `at` unless it is already armed earlier.
    pub(super) fn set_no_later(&mut self, timer: Timer, at: Instant) {
        let slot = &mut self.slots[timer as usize];
        *slot = Some(slot.map_or(at, |t| t.min(at)));
    }

    /// Arms `timer` at `at`, or disarms it with `None`.
    pub(super) fn set_or_clear(&mut self, timer: Timer, at: Option<Instant>) {
        self.slots[timer as usize] = at;
    }

    /// Disarms `timer`.
    pub(super) fn clear(&mut self, timer: Timer) {
        self.slots[timer as usize] = None;
    }

    /// When `timer` fires, if armed.
    pub(super) fn get(&self, timer: Timer) -> Option<Instant> {
        self.slots[timer as usize]
    }

    /// Whether `timer` is armed and due at `now`.
    pub(super) fn is_due(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|t| now >= t)
    }

    /// The earliest armed deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.slots.iter().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_origin(Duration::from_millis(ms))
    }

    #[test]
    fn next_is_the_earliest_armed_slot() {
        let mut t = Timers::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Cycle, at(500));
        t.set(Timer::Request, at(300));
        t.set(Timer::Probe, at(400));
        assert_eq!(t.next(), Some(at(300)));
        t.clear(Timer::Request);
        assert_eq!(t.next(), Some(at(400)));
        t.set_no_later(Timer::Cycle, at(600));
        assert_eq!(t.get(Timer::Cycle), Some(at(500)), "a later time does not postpone");
        t.set_no_later(Timer::Cycle, at(100));
        assert_eq!(t.next(), Some(at(100)));
        assert!(t.is_due(Timer::Cycle, at(100)));
        assert!(!t.is_due(Timer::Probe, at(399)));
        assert!(!t.is_due(Timer::RenewRetry, at(10_000)), "a disarmed timer is never due");
        t.set_or_clear(Timer::Cycle, None);
        assert_eq!(t.next(), Some(at(400)));
    }
}
