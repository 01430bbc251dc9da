//! client-go's expiry rule: a holder is gone once *this process* has seen the same
//! resourceVersion, unchanged, for the lease duration on its own monotonic clock.
//!
//! Versions are store-wide and never reused, so seeing version `v` at `t0` and again at
//! `t1` proves that nothing was written to the object in between, however rarely we look.
//! Clock offsets between machines do not matter; clock *rates* do (the timing's drift bound).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The caller's monotonic clock. The backend owns the expiry rule, so it reads the clock
/// itself (like a store client's keep-alive); tokio's clock lets tests pause time.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now() -> Instant {
    Instant::now()
}

#[derive(Clone, Debug)]
struct Seen {
    rv: String,
    since: Instant,
}

/// When this process first saw each object at its current resourceVersion.
#[derive(Debug, Default)]
pub(crate) struct Observations(Mutex<HashMap<String, Seen>>);

impl Observations {
    /// Records that object `name` is at `rv` as of `now`; returns since when it has been
    /// seen at that version.
    pub(crate) fn observe(&self, name: &str, rv: &str, now: Instant) -> Instant {
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match seen.get(name) {
            Some(s) if s.rv == rv => s.since,
            _ => {
                seen.insert(name.to_string(), Seen { rv: rv.to_string(), since: now });
                now
            }
        }
    }

    /// Whether the holder of `name` at `rv` counts as gone: unchanged for `duration`.
    pub(crate) fn expired(&self, name: &str, rv: &str, duration: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.observe(name, rv, now)) >= duration
    }

    /// Since when `name` has been seen at its current version, if it has been seen.
    pub(crate) fn since(&self, name: &str) -> Option<Instant> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(name).map(|s| s.since)
    }

    /// Drops objects that no longer exist.
    pub(crate) fn forget(&self, keep: impl Fn(&str) -> bool) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).retain(|name, _| keep(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expiry_counts_from_the_first_sighting_of_a_version() {
        let obs = Observations::default();
        let ttl = Duration::from_secs(10);
        let t0 = now();
        assert!(!obs.expired("l", "5", ttl, t0));
        assert!(!obs.expired("l", "5", ttl, t0 + Duration::from_secs(9)));
        // A renewal seen late restarts the wait from when we saw it.
        assert!(!obs.expired("l", "6", ttl, t0 + Duration::from_secs(12)));
        assert!(!obs.expired("l", "6", ttl, t0 + Duration::from_secs(21)));
        assert!(obs.expired("l", "6", ttl, t0 + Duration::from_secs(22)));
        assert_eq!(obs.since("l"), Some(t0 + Duration::from_secs(12)));
        obs.forget(|n| n != "l");
        assert_eq!(obs.since("l"), None);
    }
}
