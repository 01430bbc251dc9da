//! Clocks for the test kit: tokio's (pausable) monotonic clock and a hand-driven one.

use std::sync::Mutex;
use std::time::Duration;

use crate::time::{Clock, Instant};

/// [`tokio::time::Instant`] mapped onto [`Instant`], measured from the clock's creation.
///
/// It follows tokio's clock, so tests with `#[tokio::test(start_paused = true)]` run in
/// virtual time that jumps forward whenever every task is idle.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading [`Instant::ZERO`] now.
    #[allow(clippy::disallowed_methods)] // The test kit stands in for a driver: it may read the clock.
    pub fn new() -> Self {
        TokioClock { origin: tokio::time::Instant::now() }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    #[allow(clippy::disallowed_methods)] // See `new`.
    fn now(&self) -> Instant {
        Instant::from_origin(tokio::time::Instant::now().saturating_duration_since(self.origin))
    }
}

/// A clock that moves only when told to, for unit tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Mutex<Instant>,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Instant) -> Self {
        ManualClock { now: Mutex::new(start) }
    }

    /// Moves the clock forward by `d` and returns the new reading.
    pub fn advance(&self, d: Duration) -> Instant {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += d;
        *now
    }

    /// Sets the clock to `to`, unless that is earlier than its reading (a monotonic clock
    /// never goes back; the earlier value is ignored). Returns the new reading.
    pub fn set(&self, to: Instant) -> Instant {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now = (*now).max(to);
        *now
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_forward() {
        let c = ManualClock::new(Instant::ZERO);
        assert_eq!(c.advance(Duration::from_secs(2)), Instant::from_origin(Duration::from_secs(2)));
        assert_eq!(c.set(Instant::ZERO), Instant::from_origin(Duration::from_secs(2)));
        assert_eq!(c.set(Instant::from_origin(Duration::from_secs(5))), c.now());
        assert_eq!(c.now().since_origin(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = TokioClock::new();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(c.now().since_origin(), Duration::from_secs(3));
    }
}
