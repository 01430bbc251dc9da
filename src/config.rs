//! Timing parameters, with Patroni's names and defaults, validated.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::shrink_by_drift;

/// How long leadership lasts and how often the HA loop runs.
///
/// The names and defaults are Patroni's (`ttl` 30 s, `loop_wait` 10 s, `retry_timeout` 10 s,
/// `maximum_lag_on_failover` 1 MiB). leasehold adds `safety_margin` (time reserved to finish
/// demoting before the lease could expire) and `max_drift_ppm` (how much faster or slower a
/// local clock may run than real time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// Leader key lifetime without renewal.
    #[serde(with = "humantime_serde_compat")]
    pub ttl: Duration,
    /// Pause between HA loop cycles.
    #[serde(with = "humantime_serde_compat")]
    pub loop_wait: Duration,
    /// How long one store operation may be retried before it counts as failed.
    #[serde(with = "humantime_serde_compat")]
    pub retry_timeout: Duration,
    /// A replica further behind the last known leader position (bytes) may not be promoted.
    pub maximum_lag_on_failover: u64,
    /// Reserved at the end of each lease for demoting: the leader acts at most until
    /// `renew sent + ttl * (1 - drift) - safety_margin`.
    #[serde(with = "humantime_serde_compat")]
    pub safety_margin: Duration,
    /// Maximum clock rate error, in parts per million (1000 = 0.1 %).
    pub max_drift_ppm: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ttl: Duration::from_secs(30),
            loop_wait: Duration::from_secs(10),
            retry_timeout: Duration::from_secs(10),
            maximum_lag_on_failover: 1 << 20,
            safety_margin: Duration::from_secs(5),
            max_drift_ppm: 1000,
        }
    }
}

/// A [`Timing`] broke a rule. The message names the field, the numbers and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid timing: {field}: {message}")]
pub struct TimingError {
    /// The field at fault (`"ttl"`, `"loop_wait"`, ...).
    pub field: &'static str,
    /// The rule and the numbers.
    pub message: String,
}

/// A store client's option broke a rule: one error type for every backend crate's
/// `*Options::validate`. The message names the field and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {store} option {field}: {message}")]
pub struct OptionsError {
    /// The store the options are for (`"etcd"`, `"zookeeper"`, `"consul"`, `"kubernetes"`).
    pub store: &'static str,
    /// The field at fault (`"endpoints"`, `"timing.ttl"`, ...).
    pub field: &'static str,
    /// The rule and the value.
    pub message: String,
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

impl Timing {
    /// A profile for fast failover in tests and demos: ttl 5 s, loop_wait 1 s,
    /// retry_timeout 1.5 s, safety_margin 1 s.
    pub fn fast() -> Self {
        Timing {
            ttl: Duration::from_secs(5),
            loop_wait: Duration::from_secs(1),
            retry_timeout: Duration::from_millis(1500),
            safety_margin: Duration::from_secs(1),
            ..Timing::default()
        }
    }

    /// Checks every rule (DESIGN.md rule 9):
    ///
    /// * `loop_wait + 2 * retry_timeout <= ttl` (Patroni's rule);
    /// * `loop_wait + retry_timeout + safety_margin <= ttl * (1 - drift)`: a renewal that
    ///   starts one loop after the last and takes the full retry budget still completes
    ///   while the leader may act, and the margin remains for demoting;
    /// * every duration is positive and `max_drift_ppm < 100_000` (10 %).
    pub fn validate(&self) -> Result<(), TimingError> {
        let fail = |field, message: String| Err(TimingError { field, message });
        for (field, d) in [
            ("ttl", self.ttl),
            ("loop_wait", self.loop_wait),
            ("retry_timeout", self.retry_timeout),
            ("safety_margin", self.safety_margin),
        ] {
            if d.is_zero() {
                return fail(field, "must be greater than zero".into());
            }
        }
        if self.max_drift_ppm >= 100_000 {
            return fail(
                "max_drift_ppm",
                format!("{} ppm is 10 % or more; clocks that bad cannot bound a lease", self.max_drift_ppm),
            );
        }
        let needed = self.loop_wait + 2 * self.retry_timeout;
        if needed > self.ttl {
            return fail(
                "ttl",
                format!(
                    "loop_wait ({}) + 2 * retry_timeout ({}) = {} exceeds ttl ({}); the rule is loop_wait + 2 * retry_timeout <= ttl",
                    secs(self.loop_wait),
                    secs(self.retry_timeout),
                    secs(needed),
                    secs(self.ttl)
                ),
            );
        }
        let usable = shrink_by_drift(self.ttl, self.max_drift_ppm);
        let needed = self.loop_wait + self.retry_timeout + self.safety_margin;
        if needed > usable {
            return fail(
                "safety_margin",
                format!(
                    "loop_wait ({}) + retry_timeout ({}) + safety_margin ({}) = {} exceeds ttl adjusted for drift ({}); no time would be left to demote",
                    secs(self.loop_wait),
                    secs(self.retry_timeout),
                    secs(self.safety_margin),
                    secs(needed),
                    secs(usable)
                ),
            );
        }
        Ok(())
    }

    /// Checks that `self.ttl` is the ttl the store client was built with (`client_ttl`, from
    /// [`Dcs::configured_ttl`](crate::Dcs::configured_ttl)): the ttl has one source, the
    /// `Timing` given to both the client and the node. The store may still enforce a
    /// different lease ([`StoreBounds::ttl`](crate::StoreBounds)); that is compared elsewhere.
    pub fn check_client_ttl(&self, client_ttl: Duration) -> Result<(), TimingError> {
        if self.ttl == client_ttl {
            return Ok(());
        }
        Err(TimingError {
            field: "ttl",
            message: format!(
                "timing.ttl ({}) differs from the ttl the store client was built with ({}); \
                 connect the client with the same Timing the node uses",
                secs(self.ttl),
                secs(client_ttl)
            ),
        })
    }

    /// How long after a renew call was made the leader may act: `ttl * (1 - drift) -
    /// safety_margin`, with `ttl` capped at what the store granted.
    pub fn belief_for(&self, granted: Duration) -> Duration {
        shrink_by_drift(granted.min(self.ttl), self.max_drift_ppm).saturating_sub(self.safety_margin)
    }

    /// The watchdog timeout: the device must fire before the lease can expire.
    pub fn watchdog_timeout(&self) -> Duration {
        shrink_by_drift(self.ttl, self.max_drift_ppm).saturating_sub(self.safety_margin / 2)
    }
}

/// Durations as humantime text ("10s", "1500ms", "1m 30s") or a plain number of seconds,
/// as Patroni takes them; written back as humantime text.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Secs(f64),
        Text(String),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Secs(s) => super::duration_from_secs(s).map_err(serde::de::Error::custom),
            Repr::Text(t) => super::parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// A number of seconds as a duration: finite, not negative, below 10^12.
pub fn duration_from_secs(secs: f64) -> Result<Duration, String> {
    if secs.is_finite() && (0.0..1e12).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("{secs} is not a valid number of seconds"))
    }
}

/// Parses a duration written as humantime text (`"10s"`, `"1500ms"`, `"2m"`, `"1h 30m"`) or as
/// a bare number of seconds (`"7"`, `"0.5"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return duration_from_secs(secs);
    }
    humantime::parse_duration(t).map_err(|e| format!("{text:?} is not a duration like 10s or 1500ms: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_patronis_and_valid() {
        let t = Timing::default();
        assert_eq!(t.ttl, Duration::from_secs(30));
        assert_eq!(t.loop_wait, Duration::from_secs(10));
        assert_eq!(t.retry_timeout, Duration::from_secs(10));
        assert_eq!(t.maximum_lag_on_failover, 1_048_576);
        t.validate().unwrap();
        Timing::fast().validate().unwrap();
    }

    #[test]
    fn patroni_rule_names_the_numbers() {
        let t = Timing { loop_wait: Duration::from_secs(15), ..Timing::default() };
        let e = t.validate().unwrap_err();
        assert_eq!(e.field, "ttl");
        assert!(e.message.contains("15s") && e.message.contains("35s") && e.message.contains("30s"), "{e}");
        assert!(e.message.contains("loop_wait + 2 * retry_timeout <= ttl"));
    }

    #[test]
    fn margin_must_leave_room_to_demote() {
        let t = Timing { safety_margin: Duration::from_secs(11), ..Timing::default() };
        let e = t.validate().unwrap_err();
        assert_eq!(e.field, "safety_margin");
        assert!(e.message.contains("31s"), "{e}");
        let zero = Timing { loop_wait: Duration::ZERO, ..Timing::default() };
        assert_eq!(zero.validate().unwrap_err().field, "loop_wait");
        let drift = Timing { max_drift_ppm: 200_000, ..Timing::default() };
        assert_eq!(drift.validate().unwrap_err().field, "max_drift_ppm");
    }

    #[test]
    fn a_client_built_with_another_ttl_is_refused_naming_both() {
        let t = Timing::default();
        t.check_client_ttl(Duration::from_secs(30)).unwrap();
        let e = t.check_client_ttl(Duration::from_secs(20)).unwrap_err();
        assert_eq!(e.field, "ttl");
        assert!(e.message.contains("30s") && e.message.contains("20s"), "{e}");
    }

    #[test]
    fn belief_is_shorter_than_the_granted_ttl() {
        let t = Timing::default();
        assert_eq!(t.belief_for(Duration::from_secs(30)), Duration::from_millis(24_970));
        assert_eq!(t.belief_for(Duration::from_secs(60)), Duration::from_millis(24_970));
        assert_eq!(t.belief_for(Duration::from_secs(20)), Duration::from_millis(14_980));
        assert!(t.watchdog_timeout() > t.belief_for(t.ttl));
        assert!(t.watchdog_timeout() < t.ttl);
    }

    #[test]
    fn durations_parse_from_text_and_numbers() {
        assert_eq!(parse_duration("1500ms").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("-3").is_err());
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        let text = serde_json::to_string(&Timing::fast()).unwrap();
        assert!(text.contains(r#""retry_timeout":"1s 500ms""#), "{text}");
        assert_eq!(serde_json::from_str::<Timing>(&text).unwrap(), Timing::fast());
        let t: Timing = serde_json::from_str(r#"{"ttl": "20s", "loop_wait": 2}"#).unwrap();
        assert_eq!(t.ttl, Duration::from_secs(20));
        assert_eq!(t.loop_wait, Duration::from_secs(2));
        assert!(serde_json::from_str::<Timing>(r#"{"tll": 3}"#).is_err());
    }
}
