//! Time as a value: the core never reads a clock.
//!
//! [`Instant`] is a point on some monotonic clock chosen by whoever drives the core (the tokio
//! driver maps `std::time::Instant` onto it; the simulator uses virtual time). Only differences
//! between instants of the same clock mean anything.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

/// A point on a monotonic clock, measured from an arbitrary origin.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(Duration);

impl Instant {
    /// The clock's origin.
    pub const ZERO: Instant = Instant(Duration::ZERO);

    /// The instant `since_origin` after the clock's origin.
    pub const fn from_origin(since_origin: Duration) -> Self {
        Instant(since_origin)
    }

    /// Time elapsed since the clock's origin.
    pub const fn since_origin(self) -> Duration {
        self.0
    }

    /// `self - earlier`, or zero when `earlier` is later than `self`.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// `self - d`, or the origin when that would go below it.
    pub fn saturating_sub(self, d: Duration) -> Instant {
        Instant(self.0.saturating_sub(d))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(rhs))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, rhs: Duration) {
        self.0 = self.0.saturating_add(rhs);
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_since(rhs)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t+{:.3}s", self.0.as_secs_f64())
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A source of [`Instant`]s. The core never calls one; the driver, the test kit and the
/// simulator pass its readings into the state machine.
pub trait Clock: Send + Sync + 'static {
    /// The current instant. Must never go backwards.
    fn now(&self) -> Instant;
}

/// Scales `d` by `(1 - rate)` (rate in parts per million), rounding down: the shortest real
/// duration that a clock running `rate` fast could report as `d`.
pub fn shrink_by_drift(d: Duration, drift_ppm: u32) -> Duration {
    let nanos = d.as_nanos();
    let kept = nanos - nanos * u128::from(drift_ppm.min(1_000_000)) / 1_000_000;
    Duration::from_nanos(kept.min(u128::from(u64::MAX)) as u64)
}

/// Scales `d` by `(1 + rate)` (rate in parts per million), rounding up.
pub fn stretch_by_drift(d: Duration, drift_ppm: u32) -> Duration {
    let nanos = d.as_nanos();
    let extra = (nanos * u128::from(drift_ppm)).div_ceil(1_000_000);
    Duration::from_nanos((nanos + extra).min(u128::from(u64::MAX)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_scaling_rounds_towards_safety() {
        let d = Duration::from_secs(30);
        assert_eq!(shrink_by_drift(d, 1000), Duration::from_millis(29_970));
        assert_eq!(stretch_by_drift(d, 1000), Duration::from_millis(30_030));
        assert_eq!(shrink_by_drift(d, 0), d);
        assert_eq!(Instant::ZERO.saturating_sub(d), Instant::ZERO);
        assert_eq!((Instant::ZERO + d) - (Instant::ZERO + d + d), Duration::ZERO);
    }
}
