//! How to reach the Consul agent and how to lay out and time the keys. The leader ttl comes
//! from the [`Timing`] given to [`ConsulClient::connect`](crate::ConsulClient::connect).

use std::path::PathBuf;
use std::time::Duration;

use leasehold::{OptionsError, Timing};

/// Consul's default floor on session TTLs (its `session_ttl_min`): 10 s.
pub const CONSUL_SESSION_TTL_MIN: Duration = Duration::from_secs(10);

/// Consistency mode of reads that do not decide anything (watches). Decision reads
/// ([`Dcs::load`](leasehold::Dcs::load), the reads inside acquire/renew/release) are always
/// `consistent`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Consul's default: served by the leader, without the extra round of `consistent`.
    #[default]
    Default,
    /// `?consistent`: linearizable, one extra round trip among the servers.
    Consistent,
    /// `?stale`: any server may answer, possibly behind.
    Stale,
}

/// HTTPS settings (needs the crate feature `tls`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsulTls {
    /// PEM file of the CA that signed the agent's certificate (added to the system roots).
    pub ca_cert: Option<PathBuf>,
    /// PEM file of the client certificate, for agents with `verify_incoming`.
    pub client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key, PKCS#8 (`BEGIN PRIVATE KEY`).
    pub client_key: Option<PathBuf>,
}

/// Options of a [`ConsulClient`](crate::ConsulClient).
#[derive(Clone, Debug)]
pub struct ConsulOptions {
    /// The agent's HTTP API, `http://host:port` or `https://host:port` (default
    /// `http://127.0.0.1:8500`). Use the local client agent: Patroni issue 522 shows what
    /// a remote server agent's blips do to sessions.
    pub address: String,
    /// `?dc=`: the datacenter to talk to; `None` is the agent's own.
    pub datacenter: Option<String>,
    /// ACL token sent as `X-Consul-Token`. It needs `session:write` on the agent's node and
    /// `key:write` on the prefix. `None` sends no token (the agent's default token applies).
    pub token: Option<String>,
    /// HTTPS settings; `Some` needs the crate feature `tls` and an `https://` address.
    pub tls: Option<ConsulTls>,
    /// Key prefix; a scope's keys are `<prefix>/<scope>/leader`, `.../members/<name>`, ...
    /// (Patroni's layout without the leading `/`). Default `service`.
    pub prefix: String,
    /// The servers' `session_ttl_min` (Consul's floor on session TTLs; default 10 s, as
    /// Consul's). Lower it only together with the servers' own setting; an agent that
    /// refuses the session TTL anyway is a fatal error naming the floor.
    pub session_ttl_min: Duration,
    /// Session lock-delay: how long Consul blocks re-acquiring a key after its session was
    /// invalidated. Near zero by default (1 ms, as Patroni); Consul's own default is 15 s.
    pub lock_delay: Duration,
    /// Health checks the session is tied to (sent as `Checks`, which Consul 1.6 and later
    /// honour; 1.6 ignores `NodeChecks`). Every check must be registered on the agent's node,
    /// or the session is refused. Empty by default: a TTL-only session (Patroni issue 522:
    /// `serfHealth` invalidated sessions on short network blips).
    pub checks: Vec<String>,
    /// Consistency of non-decision reads (watches).
    pub consistency: Consistency,
    /// Upper bound on one request (blocking queries get their `wait` on top). A read that
    /// runs out is `Unavailable`, a write `OutcomeUnknown`.
    pub request_timeout: Duration,
    /// Name given to the session (shown by `consul operator` tools).
    pub session_name: String,
    /// One blocking query per client over the whole prefix keeps a mirror of every scope
    /// (default `true`): loads are served from it, watches wait on it, and a leader whose key
    /// the mirror shows unchanged renews with the shared session renewal alone. `false`:
    /// every load is a `?consistent` read, every watch its own blocking query, every renew a
    /// session renewal plus a read (see the crate documentation, "One blocking query per
    /// process").
    pub watch_mirror: bool,
    /// Most requests this client has in flight at once (default 32); blocking queries, which
    /// wait for minutes by design, are not counted. More wait for a free slot, within their
    /// `request_timeout`; one that finds none is `Unavailable`, nothing sent. It bounds the
    /// connections one process opens: without it, a process leading a thousand scopes opened
    /// about a thousand at start-up, and Consul 1.6.3 and later close connections beyond
    /// `limits.http_max_conns_per_client` (200 by default, counted per client address, so
    /// shared by every process on the host).
    pub max_requests: usize,
}

impl Default for ConsulOptions {
    fn default() -> Self {
        ConsulOptions {
            address: "http://127.0.0.1:8500".into(),
            datacenter: None,
            token: None,
            tls: None,
            prefix: "service".into(),
            session_ttl_min: CONSUL_SESSION_TTL_MIN,
            lock_delay: Duration::from_millis(1),
            checks: Vec::new(),
            consistency: Consistency::Default,
            request_timeout: Duration::from_secs(10),
            session_name: "leasehold".into(),
            watch_mirror: true,
            max_requests: 32,
        }
    }
}

impl ConsulOptions {
    /// Checks every field, and `timing.ttl` as the leader ttl. The session TTL is half of
    /// it, because Consul may take up to twice the session TTL to invalidate a session: a dead
    /// holder's key is gone within ttl (plus lock-delay). Consul refuses session TTLs below
    /// its `session_ttl_min` (10 s unless the servers set it lower), so `timing.ttl` must be
    /// at least `2 * session_ttl_min`: 20 s by default. A shorter ttl is refused, never
    /// silently stretched.
    pub fn validate(&self, timing: &Timing) -> Result<(), OptionsError> {
        let fail = |field, message: String| Err(OptionsError { store: "consul", field, message });
        let scheme = self.address.split_once("://").map(|(s, _)| s);
        let url = reqwest::Url::parse(&self.address);
        match (scheme, &url) {
            (Some("http" | "https"), Ok(u)) if u.host().is_some() => {}
            _ => return fail("address", format!("{:?} must be http://host:port or https://host:port", self.address)),
        }
        if let Ok(u) = &url
            && (u.path() != "/" || u.query().is_some())
        {
            return fail("address", format!("{:?} must not have a path or query", self.address));
        }
        let https = scheme == Some("https");
        if (https || self.tls.is_some()) && !cfg!(feature = "tls") {
            return fail("tls", "HTTPS needs leasehold-consul built with the `tls` feature".into());
        }
        if self.tls.is_some() && !https {
            return fail("tls", format!("TLS settings need an https:// address, not {:?}", self.address));
        }
        if let Some(tls) = &self.tls
            && tls.client_cert.is_some() != tls.client_key.is_some()
        {
            return fail("tls", "client_cert and client_key must be given together".into());
        }
        if let Some(dc) = &self.datacenter
            && (dc.is_empty() || !dc.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return fail("datacenter", format!("{dc:?} must be non-empty letters, digits, '-' or '_'"));
        }
        if let Some(token) = &self.token
            && (token.is_empty() || token.chars().any(|c| c.is_control() || c == ' '))
        {
            return fail(
                "token",
                "must be non-empty without spaces or control characters (leave it None for no token)".into(),
            );
        }
        if self.prefix.chars().any(|c| c.is_control() || c == '?' || c == '#') || self.prefix.contains("//") {
            return fail("prefix", format!("{:?} must not contain control characters, '?', '#' or '//'", self.prefix));
        }
        if self.session_ttl_min < Duration::from_millis(1) {
            return fail("session_ttl_min", format!("{:?} must be at least 1 ms", self.session_ttl_min));
        }
        let session_ttl = session_ttl(timing);
        if session_ttl < self.session_ttl_min {
            return fail(
                "timing.ttl",
                format!(
                    "{:?} is too short for Consul: the session TTL is ttl / 2 = {:?}, below Consul's {:?} session-TTL floor \
                     (session_ttl_min); use a ttl of at least {:?}, or set session_ttl_min if your Consul servers use a lower one",
                    timing.ttl,
                    session_ttl,
                    self.session_ttl_min,
                    self.session_ttl_min * 2
                ),
            );
        }
        if session_ttl > Duration::from_secs(86_400) {
            return fail(
                "timing.ttl",
                format!("{:?} is too long: Consul's session TTL (ttl / 2) is at most 24 h", timing.ttl),
            );
        }
        if self.lock_delay > Duration::from_secs(60) {
            return fail("lock_delay", format!("{:?} exceeds Consul's limit of 60 s", self.lock_delay));
        }
        if self.request_timeout.is_zero() {
            return fail("request_timeout", "must be greater than zero".into());
        }
        if self.max_requests == 0 {
            return fail("max_requests", "must be at least 1".into());
        }
        if self.checks.iter().any(String::is_empty) {
            return fail("checks", "check names must not be empty".into());
        }
        Ok(())
    }
}

/// The session TTL a client asks for: half of `timing.ttl` (Consul may wait up to twice the
/// session TTL before it invalidates a session).
pub(crate) fn session_ttl(timing: &Timing) -> Duration {
    timing.ttl / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_name_the_field() {
        let ok = ConsulOptions::default();
        let timing = Timing::default();
        assert!(ok.validate(&timing).is_ok());
        for ttl in [Duration::from_millis(1), Duration::from_secs(19), Duration::from_secs(200_000)] {
            let err = ok.validate(&Timing { ttl, ..timing.clone() }).expect_err("ttl");
            assert_eq!(err.field, "timing.ttl", "{err}");
            assert!(err.to_string().starts_with("invalid consul option timing.ttl"), "{err}");
        }
        let cases = [
            (ConsulOptions { address: "127.0.0.1:8500".into(), ..ok.clone() }, "address"),
            (ConsulOptions { address: "http://h:1/v1".into(), ..ok.clone() }, "address"),
            (ConsulOptions { datacenter: Some("dc 1".into()), ..ok.clone() }, "datacenter"),
            (ConsulOptions { token: Some(String::new()), ..ok.clone() }, "token"),
            (ConsulOptions { prefix: "a//b".into(), ..ok.clone() }, "prefix"),
            (ConsulOptions { session_ttl_min: Duration::ZERO, ..ok.clone() }, "session_ttl_min"),
            (ConsulOptions { lock_delay: Duration::from_secs(61), ..ok.clone() }, "lock_delay"),
            (ConsulOptions { request_timeout: Duration::ZERO, ..ok.clone() }, "request_timeout"),
            (ConsulOptions { checks: vec![String::new()], ..ok.clone() }, "checks"),
            (ConsulOptions { max_requests: 0, ..ok.clone() }, "max_requests"),
            (ConsulOptions { tls: Some(ConsulTls::default()), ..ok.clone() }, "tls"),
        ];
        for (options, field) in cases {
            let err = options.validate(&timing).expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn a_ttl_below_twice_consuls_session_ttl_floor_is_refused_naming_it() {
        let options = ConsulOptions::default();
        let ttl = |secs| Timing { ttl: Duration::from_secs(secs), ..Timing::default() };
        assert!(options.validate(&ttl(20)).is_ok(), "ttl 20 s: session TTL 10 s, Consul's floor");
        let err = options.validate(&ttl(10)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("10s session-TTL floor") && text.contains("at least 20s"), "{text}");
        let lowered = ConsulOptions { session_ttl_min: Duration::from_secs(1), ..ConsulOptions::default() };
        assert!(lowered.validate(&ttl(2)).is_ok(), "servers with session_ttl_min = 1s allow ttl 2 s");
    }
}
