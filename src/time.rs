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

/// A point in civil time (the wall clock), to the millisecond: when a scheduled switchover
/// is due. The core never reads the wall clock either; the driver passes its readings in
/// ([`Input::WallClock`](crate::node::Input::WallClock)).
///
/// Text form (and JSON: a string): RFC 3339 with a mandatory offset, as Patroni's
/// `scheduled_at` (`2026-12-07T03:00+00:00`, `2026-12-07T03:00:00Z`); written in UTC as
/// `2026-12-07T03:00:00+00:00`, which Patroni's parser reads too.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallTime(i64);

/// Why a text is not a [`WallTime`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an RFC 3339 time with an offset (like 2026-12-07T03:00+00:00): {why}")]
pub struct WallTimeError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub why: String,
}

impl WallTime {
    /// The time `ms` milliseconds after 1970-01-01T00:00:00Z (negative: before).
    pub const fn from_unix_millis(ms: i64) -> Self {
        WallTime(ms)
    }

    /// Milliseconds since 1970-01-01T00:00:00Z.
    pub const fn unix_millis(self) -> i64 {
        self.0
    }

    /// Parses RFC 3339 (ISO 8601 with an offset; seconds optional). A time without an offset
    /// is refused: which zone it meant is a guess (Patroni refuses it too).
    pub fn parse(text: &str) -> Result<Self, WallTimeError> {
        let err = |why: String| WallTimeError { text: text.to_string(), why };
        let ts: jiff::Timestamp = text.trim().parse().map_err(|e: jiff::Error| err(e.to_string()))?;
        Ok(WallTime(ts.as_millisecond()))
    }

    /// `self + d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Self {
        WallTime(self.0.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    /// `later - self` in milliseconds: positive when `later` is after `self`.
    pub fn millis_until(self, later: WallTime) -> i64 {
        later.0.saturating_sub(self.0)
    }
}

impl fmt::Display for WallTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match jiff::Timestamp::from_millisecond(self.0) {
            Ok(ts) => write!(f, "{}", ts.display_with_offset(jiff::tz::Offset::UTC)),
            // Outside years -9999..=9999: say what it is rather than fail.
            Err(_) => write!(f, "unix ms {}", self.0),
        }
    }
}

impl fmt::Debug for WallTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for WallTime {
    type Err = WallTimeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WallTime::parse(s)
    }
}

impl serde::Serialize for WallTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for WallTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        WallTime::parse(&text).map_err(serde::de::Error::custom)
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

    #[test]
    fn wall_time_reads_patroni_shapes_and_writes_utc() {
        let t = WallTime::parse("2026-12-07T03:00+00:00").unwrap();
        assert_eq!(t, WallTime::parse("2026-12-07T03:00:00Z").unwrap());
        assert_eq!(t, WallTime::parse("2026-12-07T04:00:00+01:00").unwrap());
        assert_eq!(t.unix_millis(), 1_796_612_400_000);
        assert_eq!(t.to_string(), "2026-12-07T03:00:00+00:00");
        assert_eq!(WallTime::parse(&t.to_string()).unwrap(), t);
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"2026-12-07T03:00:00+00:00\"");
        assert_eq!(
            serde_json::from_str::<WallTime>("\"2026-12-07T03:00:00.250Z\"").unwrap().unix_millis(),
            1_796_612_400_250
        );
        assert_eq!(t.millis_until(t.saturating_add(Duration::from_secs(2))), 2000);
        assert_eq!(t.saturating_add(Duration::from_secs(2)).millis_until(t), -2000);
    }

    #[test]
    fn wall_time_refuses_text_without_an_offset_or_garbage() {
        for bad in ["2026-12-07T03:00", "2026-12-07", "tomorrow", "", "2026-13-07T03:00Z", "1796612400"] {
            let e = WallTime::parse(bad).unwrap_err();
            assert_eq!(e.text, bad);
            assert!(e.to_string().contains("RFC 3339"), "{e}");
        }
        assert!(serde_json::from_str::<WallTime>("12").is_err());
    }
}
