//! Timing from untrusted JSON (the daemon's config path): parse and validate never panic,
//! and a validated timing leaves a positive belief.
#![no_main]

use leasehold::Timing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = serde_json::from_slice::<Timing>(data) {
        if t.validate().is_ok() {
            assert!(t.belief_for(t.ttl) > std::time::Duration::ZERO);
            assert!(t.watchdog_timeout() < t.ttl);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = leasehold::config::parse_duration(s);
    }
});
