//! [`LocalClock`]: a node's monotonic clock as a function of real (simulated) time.

use std::time::Duration;

use crate::time::Instant;

/// A monotonic clock with an offset, a rate error and forward steps.
///
/// Local time is piecewise linear in real time:
/// `local = anchor_local + (real - anchor_real) * (1 + drift)`. A rate change or a step re-anchors the line at the current instant, so the
/// clock never goes backwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalClock {
    anchor_real: u64,
    anchor_local: u64,
    /// Rate error in parts per million; positive runs fast.
    drift_ppm: i64,
}

impl LocalClock {
    /// A clock reading `offset` at real time zero, running `drift_ppm` fast (negative: slow).
    pub fn new(offset: Duration, drift_ppm: i64) -> Self {
        LocalClock {
            anchor_real: 0,
            anchor_local: offset.as_nanos() as u64,
            drift_ppm: drift_ppm.clamp(-500_000, 500_000),
        }
    }

    /// The current rate error in ppm.
    pub fn drift_ppm(&self) -> i64 {
        self.drift_ppm
    }

    fn rate(&self) -> u128 {
        (1_000_000 + self.drift_ppm) as u128
    }

    /// The local reading at real time `real` (nanoseconds), which must not precede the last
    /// re-anchoring.
    pub fn local_at(&self, real: u64) -> Instant {
        let dt = u128::from(real.saturating_sub(self.anchor_real));
        let local = u128::from(self.anchor_local) + dt * self.rate() / 1_000_000;
        Instant::from_origin(Duration::from_nanos(local.min(u128::from(u64::MAX)) as u64))
    }

    /// The earliest real time at or after `not_before` at which the clock reads `local` or
    /// later.
    pub fn real_when(&self, local: Instant, not_before: u64) -> u64 {
        let target = local.since_origin().as_nanos().min(u128::from(u64::MAX)) as u64;
        if target <= self.anchor_local {
            return not_before.max(self.anchor_real);
        }
        let dl = u128::from(target - self.anchor_local);
        let dt = (dl * 1_000_000).div_ceil(self.rate());
        let real = u128::from(self.anchor_real) + dt;
        (real.min(u128::from(u64::MAX)) as u64).max(not_before)
    }

    /// Changes the rate from real time `now` on.
    pub fn set_drift(&mut self, now: u64, drift_ppm: i64) {
        self.reanchor(now, 0);
        self.drift_ppm = drift_ppm.clamp(-500_000, 500_000);
    }

    /// Jumps forward by `by` at real time `now` (a monotonic clock never steps back).
    pub fn step(&mut self, now: u64, by: Duration) {
        self.reanchor(now, by.as_nanos() as u64);
    }

    fn reanchor(&mut self, now: u64, extra: u64) {
        let local = self.local_at(now).since_origin().as_nanos() as u64;
        self.anchor_real = now;
        self.anchor_local = local.saturating_add(extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_when_inverts_local_at() {
        for drift in [-50_000i64, -1000, 0, 999, 70_000] {
            let mut c = LocalClock::new(Duration::from_secs(3), drift);
            c.step(5_000_000_000, Duration::from_millis(250));
            for target_ms in [0u64, 3_000, 9_999, 12_345, 100_000] {
                let target = Instant::from_origin(Duration::from_millis(target_ms));
                let real = c.real_when(target, 5_000_000_000);
                assert!(c.local_at(real) >= target, "drift {drift} target {target_ms}");
                if real > 5_000_000_000 {
                    assert!(c.local_at(real - 1) < target, "earliest instant, drift {drift}");
                }
            }
        }
    }

    #[test]
    fn steps_and_rate_changes_never_go_back() {
        let mut c = LocalClock::new(Duration::ZERO, 1000);
        let before = c.local_at(1_000_000_000);
        c.set_drift(1_000_000_000, -1000);
        assert_eq!(c.local_at(1_000_000_000), before);
        assert!(c.local_at(2_000_000_000) > before);
        c.step(2_000_000_000, Duration::from_secs(1));
        assert!(c.local_at(2_000_000_000) >= before + Duration::from_secs(1));
    }
}
