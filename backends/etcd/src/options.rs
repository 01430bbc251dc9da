//! How to reach etcd. The lease ttl comes from the [`Timing`] given to
//! [`EtcdClient::connect`](crate::EtcdClient::connect).

use std::path::PathBuf;
use std::time::Duration;

use leasehold::{OptionsError, Timing};

/// Options of an [`EtcdClient`](crate::EtcdClient).
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client URLs of the cluster members (`http://10.0.0.1:2379`, `https://...`). Calls are
    /// balanced over the members that answer; a dead or frozen member is dropped by the
    /// HTTP/2 keep-alive and the per-request timeout. All must use the same scheme.
    pub endpoints: Vec<String>,
    /// Key prefix (Patroni's namespace): keys are `<prefix>/<scope>/leader`,
    /// `<prefix>/<scope>/members/<name>`, `<prefix>/<scope>/config`, ... Must start with `/`.
    pub prefix: String,
    /// PEM file of the CA that signed the servers' certificates. Required for `https://`
    /// endpoints (no system trust store is built in).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers started with `--client-cert-auth`. Needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// User name for etcd's authentication (`etcdctl user add`). Needs `password`.
    pub user: Option<String>,
    /// Password of `user`.
    pub password: Option<String>,
    /// Upper bound on connecting (TCP + TLS) to one member and on the first requests of
    /// [`EtcdClient::connect`](crate::EtcdClient::connect) (authentication, lease grant).
    pub dial_timeout: Duration,
    /// Upper bound on one request. A read that runs out is `Unavailable`, a write
    /// `OutcomeUnknown`. Also bounds how long a lease keep-alive may wait for its answer.
    pub request_timeout: Duration,
    /// HTTP/2 ping interval (and ping timeout) that detects a frozen or unreachable member
    /// while no request is in flight. etcd answers pings sent more often than its
    /// `--grpc-keepalive-min-time` (default 5 s) by closing the connection, so keep it at
    /// least that.
    pub keepalive_interval: Duration,
    /// Serve reads and wake-ups from one watch per process over the whole prefix (see
    /// [`EtcdDcs`](crate::EtcdDcs)): an idle follower then sends nothing but the shared lease
    /// keep-alive. Off: every `load` is a linearizable range and every `watch` its own stream.
    pub watch_mirror: bool,
    /// Give member keys a lease of their own with this TTL (whole seconds, at least
    /// `timing.ttl`), kept alive every third of it. `None` (the default): member keys share
    /// the process lease (ttl), as Patroni's member keys have the ttl.
    ///
    /// What it buys: an idle follower's only request is then that lease's keep-alive, every
    /// `member_ttl / 3` instead of every `ttl / 3`, and a process that leads nothing keeps no
    /// ttl lease alive (its next acquisition first keeps it alive, and when etcd says it
    /// lapsed, grants a new one: one to three requests more on a failover). What it costs: a
    /// member that died stays listed, with its last record, until `member_ttl` has passed;
    /// whatever reads member records sees it that long. A synchronous-mode leader is not
    /// misled when its resource reports who streams from it
    /// ([`ResourceStatus::streaming`](leasehold::ResourceStatus::streaming); the daemon's
    /// PostgreSQL resource does): a dead standby leaves the set whatever its record says.
    /// Without that report it keeps waiting for a dead standby until the record expires.
    /// Election safety does not depend on it: a leader key always lives on the ttl lease,
    /// and peers are probed before a failover.
    pub member_ttl: Option<Duration>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/service".into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password: None,
            dial_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(5),
            watch_mirror: true,
            member_ttl: None,
        }
    }
}

impl EtcdOptions {
    /// Whether the endpoints use TLS (`https://`).
    pub fn uses_tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// Checks every field, and `timing.ttl` as the process lease's TTL: at least 1 s and at
    /// most etcd's maximum. A fractional ttl is asked for rounded up to whole seconds.
    pub fn validate(&self, timing: &Timing) -> Result<(), OptionsError> {
        let fail = |field, message: String| Err(OptionsError { store: "etcd", field, message });
        if self.endpoints.is_empty() {
            return fail("endpoints", "at least one endpoint is needed".into());
        }
        for e in &self.endpoints {
            let rest = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://"));
            match rest {
                Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {}
                _ => return fail("endpoints", format!("{e:?} must be an http:// or https:// URL with a host")),
            }
        }
        let tls = self.uses_tls();
        if tls && self.endpoints.iter().any(|e| e.starts_with("http://")) {
            return fail("endpoints", "mixes http:// and https:// URLs; use one scheme for every member".into());
        }
        if !self.prefix.starts_with('/') || self.prefix.contains(char::is_control) {
            return fail("prefix", format!("{:?} must start with '/' and contain no control characters", self.prefix));
        }
        if tls && self.ca_file.is_none() {
            return fail("ca_file", "is required with https:// endpoints (no system trust store is built in)".into());
        }
        if !tls && (self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()) {
            return fail("endpoints", "TLS files are set but the endpoints are http://; use https:// URLs".into());
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            let field = if self.cert_file.is_some() { "key_file" } else { "cert_file" };
            return fail(field, "cert_file and key_file must be given together".into());
        }
        match (&self.user, &self.password) {
            (Some(u), Some(_)) if u.is_empty() => return fail("user", "must not be empty".into()),
            (Some(_), None) => return fail("password", "is required when user is set".into()),
            (None, Some(_)) => return fail("user", "is required when password is set".into()),
            _ => {}
        }
        for (field, value) in [
            ("dial_timeout", self.dial_timeout),
            ("request_timeout", self.request_timeout),
            ("keepalive_interval", self.keepalive_interval),
        ] {
            if value.is_zero() {
                return fail(field, "must be greater than zero".into());
            }
        }
        if timing.ttl < Duration::from_secs(1) {
            return fail("timing.ttl", format!("{:?} is below etcd's 1 s lease granularity", timing.ttl));
        }
        if timing.ttl > Duration::from_secs(9_000_000_000) {
            return fail("timing.ttl", format!("{:?} is longer than etcd's maximum lease TTL", timing.ttl));
        }
        if let Some(member_ttl) = self.member_ttl {
            if member_ttl < timing.ttl {
                let message =
                    format!("{member_ttl:?} is shorter than timing.ttl {:?}; use at least the ttl", timing.ttl);
                return fail("member_ttl", message);
            }
            if member_ttl > Duration::from_secs(9_000_000_000) {
                return fail("member_ttl", format!("{member_ttl:?} is longer than etcd's maximum lease TTL"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_name_the_field() {
        let ok = EtcdOptions::default();
        let timing = Timing::default();
        assert!(ok.validate(&timing).is_ok());
        assert!(ok.validate(&Timing { ttl: Duration::from_millis(1500), ..timing.clone() }).is_ok());
        let tls = EtcdOptions {
            endpoints: vec!["https://a:2379".into()],
            ca_file: Some("ca.pem".into()),
            ..EtcdOptions::default()
        };
        assert!(tls.validate(&timing).is_ok());
        let cases = [
            (EtcdOptions { endpoints: vec![], ..ok.clone() }, "endpoints"),
            (EtcdOptions { endpoints: vec!["127.0.0.1:2379".into()], ..ok.clone() }, "endpoints"),
            (EtcdOptions { endpoints: vec!["http://a".into(), "https://b".into()], ..ok.clone() }, "endpoints"),
            (EtcdOptions { prefix: "service".into(), ..ok.clone() }, "prefix"),
            (EtcdOptions { ca_file: None, ..tls.clone() }, "ca_file"),
            (EtcdOptions { ca_file: Some("ca.pem".into()), ..ok.clone() }, "endpoints"),
            (EtcdOptions { cert_file: Some("c.pem".into()), ..tls.clone() }, "key_file"),
            (EtcdOptions { key_file: Some("k.pem".into()), ..tls.clone() }, "cert_file"),
            (EtcdOptions { user: Some("u".into()), ..ok.clone() }, "password"),
            (EtcdOptions { password: Some("p".into()), ..ok.clone() }, "user"),
            (EtcdOptions { user: Some(String::new()), password: Some("p".into()), ..ok.clone() }, "user"),
            (EtcdOptions { dial_timeout: Duration::ZERO, ..ok.clone() }, "dial_timeout"),
            (EtcdOptions { request_timeout: Duration::ZERO, ..ok.clone() }, "request_timeout"),
            (EtcdOptions { keepalive_interval: Duration::ZERO, ..ok.clone() }, "keepalive_interval"),
            (EtcdOptions { member_ttl: Some(Duration::from_secs(29)), ..ok.clone() }, "member_ttl"),
        ];
        for (options, field) in cases {
            let err = options.validate(&timing).expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().contains(field), "{err}");
        }
        for ttl in [Duration::ZERO, Duration::from_millis(999), Duration::from_secs(10_000_000_000)] {
            let err = ok.validate(&Timing { ttl, ..timing.clone() }).expect_err("ttl");
            assert_eq!(err.field, "timing.ttl", "{err}");
            assert!(err.to_string().starts_with("invalid etcd option timing.ttl"), "{err}");
        }
    }
}
