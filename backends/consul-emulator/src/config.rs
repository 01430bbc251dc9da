//! How an emulator behaves: ACL tokens, session TTL bounds, when sessions are invalidated.

use std::time::Duration;

/// Consul's lower bound on a session TTL (`session_ttl_min`, default 10 s).
pub const CONSUL_SESSION_TTL_MIN: Duration = Duration::from_secs(10);
/// Consul's upper bound on a session TTL (24 h).
pub const SESSION_TTL_MAX: Duration = Duration::from_secs(86_400);
/// Consul caps lock-delay at 60 s.
pub const LOCK_DELAY_MAX: Duration = Duration::from_secs(60);

/// When, between TTL and 2x TTL after its last renewal, a session is invalidated.
///
/// Consul documents only the bounds ("the session may be invalidated any time between TTL
/// and 2x TTL"; the server arms its timer at 2x TTL). Tests choose an end or a seeded mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Exactly TTL after the renewal: the earliest Consul allows.
    AtTtl,
    /// Exactly 2x TTL after the renewal: what a Consul server does.
    AtTwiceTtl,
    /// Uniformly in `[TTL, 2x TTL]`, drawn for every create/renew from a generator seeded with
    /// this value, so a run is reproducible.
    Seeded(u64),
}

/// The emulator's configuration.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// ACL tokens accepted in `X-Consul-Token`, `Authorization: Bearer` or `?token=`. Empty:
    /// ACLs are disabled and every request is allowed. Non-empty: a request without a token is
    /// a 403 `Permission denied`, an unknown token a 403 `ACL not found`.
    pub tokens: Vec<String>,
    /// The agent's datacenter; a `?dc=` naming another one is a 500 `No path to datacenter`.
    pub datacenter: String,
    /// The node name sessions are created on.
    pub node: String,
    /// Smallest session TTL accepted. **Consul's is 10 s** ([`CONSUL_SESSION_TTL_MIN`]);
    /// anything lower is a documented deviation that lets tests expire sessions quickly.
    pub session_ttl_min: Duration,
    /// When sessions are invalidated after their TTL.
    pub expiry: Expiry,
    /// Seed of the generator that picks the jitter added to blocking queries' `wait`
    /// (up to `wait / 16`, as Consul does) and session IDs.
    pub seed: u64,
    /// Fixed port on 127.0.0.1; `None` picks a free one below 32768.
    pub port: Option<u16>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            tokens: Vec::new(),
            datacenter: "dc1".into(),
            node: "emulator".into(),
            session_ttl_min: CONSUL_SESSION_TTL_MIN,
            expiry: Expiry::Seeded(1),
            seed: 1,
            port: None,
        }
    }
}

impl EmulatorConfig {
    /// ACLs on, with one accepted token.
    pub fn with_token(token: impl Into<String>) -> Self {
        EmulatorConfig { tokens: vec![token.into()], ..EmulatorConfig::default() }
    }

    /// **Deviation from Consul**: accept session TTLs down to `min` (Consul's floor is 10 s).
    pub fn session_ttl_min(mut self, min: Duration) -> Self {
        self.session_ttl_min = min;
        self
    }

    /// Sets when sessions are invalidated.
    pub fn expiry(mut self, expiry: Expiry) -> Self {
        self.expiry = expiry;
        self
    }
}
