//! How to reach the ensemble, where the scopes live, and who may touch the znodes. The
//! session timeout comes from the [`Timing`] given to [`ZkClient::connect`](crate::ZkClient::connect).

use std::path::PathBuf;
use std::time::Duration;

use leasehold::{OptionsError, Timing};

/// Digest credentials (`user:password`), sent with `addAuth("digest", ...)` on every connection.
#[derive(Clone, PartialEq, Eq)]
pub struct DigestAuth {
    /// The user name; must not contain `:`.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestAuth").field("user", &self.user).field("password", &"<redacted>").finish()
    }
}

/// The ACL put on every znode this backend creates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AclPolicy {
    /// `world:anyone` may do everything (ZooKeeper's open ACL).
    #[default]
    Open,
    /// Only the creating identity (`auth` scheme: the digest user) may do anything; needs
    /// [`ZkOptions::digest`].
    CreatorOnly,
    /// The creating identity may do everything, everyone else may read (observers, tools);
    /// needs [`ZkOptions::digest`].
    CreatorWriteOthersRead,
}

/// TLS to every server of the connect string (ZooKeeper's `secureClientPort`, served by
/// `serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory`). Needs this crate's
/// `tls` feature; the certificates are read when the client connects (and again for each
/// replacement session).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZkTls {
    /// PEM file of the CA certificate(s) the servers' certificates must chain to (the
    /// server's `ssl.trustStore` side). No system trust store is used.
    pub ca_file: PathBuf,
    /// PEM client certificate (chain) for mutual TLS, needed when the server has
    /// `ssl.clientAuth=need` (its default). Needs [`key_file`](Self::key_file).
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of [`cert_file`](Self::cert_file).
    pub key_file: Option<PathBuf>,
    /// Check that each server's certificate names the host (or IP address) it was reached
    /// by, as in the connect string. On by default; turning it off leaves only the CA check,
    /// so any certificate from that CA is accepted for any server.
    pub verify_hostname: bool,
}

impl ZkTls {
    /// TLS that trusts `ca_file`, without a client certificate, with hostname verification.
    pub fn new(ca_file: impl Into<PathBuf>) -> ZkTls {
        ZkTls { ca_file: ca_file.into(), cert_file: None, key_file: None, verify_hostname: true }
    }
}

/// Options of a [`ZkClient`](crate::ZkClient).
#[derive(Clone, Debug)]
pub struct ZkOptions {
    /// Comma-separated `host:port` list, as the Java client takes it
    /// (`zk1:2181,zk2:2181,zk3:2181`), optionally followed by a chroot (`.../leasehold`).
    /// The chroot is created (with [`acl`](Self::acl)) if it does not exist.
    pub connect: String,
    /// Parent path of every scope inside the chroot: scope `pg` lives at `<prefix>/pg`.
    /// Absolute, no trailing `/`; Patroni uses `/service`.
    pub prefix: String,
    /// Idle time after which the client declares its connection dead and tries the next
    /// server. `None`: the client's default, 2/5 of the negotiated session timeout.
    pub connection_timeout: Option<Duration>,
    /// Upper bound on one request. A read that runs out is `Unavailable`, a write `OutcomeUnknown`.
    pub request_timeout: Duration,
    /// Digest credentials for this process's identity.
    pub digest: Option<DigestAuth>,
    /// ACL of every znode created (directories, leader, members, control keys).
    pub acl: AclPolicy,
    /// `sync` before every `load`, so a read served by a lagging follower still sees every
    /// write committed before the call (a linearizable read). Off saves one round trip per
    /// load but only guarantees that this process never reads older than its own writes.
    pub sync_reads: bool,
    /// Leave the session open when the client is dropped, so it expires by timeout as after a
    /// crash (tests, or handing the session to another process). Normally `false`: dropping
    /// the last handle closes the session and every ephemeral znode vanishes at once.
    pub detached: bool,
    /// Connect to every server over TLS (`None`: plaintext). Needs the `tls` feature; without
    /// it [`validate`](Self::validate) rejects `Some`. With TLS on, connecting installs
    /// rustls' *ring* provider as the process-wide default crypto provider if none is
    /// installed yet.
    pub tls: Option<ZkTls>,
    /// One persistent recursive watch per session over [`prefix`](Self::prefix) keeps a
    /// mirror of every scope (see the crate docs, "One watch per session"): `load` is
    /// answered from it, `watch` waits on it for leader and control changes only, and an
    /// idle leader's renewal needs no request of its own. On by default; off: every `load`
    /// and `renew` asks the server, and `watch` arms a watch per scope.
    pub watch_mirror: bool,
}

impl Default for ZkOptions {
    fn default() -> Self {
        ZkOptions {
            connect: "127.0.0.1:2181".into(),
            prefix: "/service".into(),
            connection_timeout: None,
            request_timeout: Duration::from_secs(5),
            digest: None,
            acl: AclPolicy::Open,
            sync_reads: true,
            detached: false,
            tls: None,
            watch_mirror: true,
        }
    }
}

/// The servers and chroot of a connect string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConnectString {
    pub(crate) servers: Vec<(String, u16)>,
    pub(crate) chroot: Option<String>,
}

impl ConnectString {
    /// `host:port,...` without the chroot, as the client library takes it.
    pub(crate) fn hosts(&self) -> String {
        let hosts: Vec<String> = self.servers.iter().map(|(h, p)| format!("{h}:{p}")).collect();
        hosts.join(",")
    }
}

fn check_path(field: &'static str, path: &str) -> Result<(), OptionsError> {
    let fail = |message: String| Err(OptionsError { store: "zookeeper", field, message });
    if !path.starts_with('/') {
        return fail(format!("{path:?} must be an absolute path starting with '/'"));
    }
    if path.len() > 1 && path.ends_with('/') {
        return fail(format!("{path:?} must not end with '/'"));
    }
    if path.len() > 1 && path[1..].split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return fail(format!("{path:?} has an empty, '.' or '..' component"));
    }
    if path.chars().any(|c| c.is_control()) {
        return fail(format!("{path:?} contains a control character"));
    }
    Ok(())
}

pub(crate) fn parse_connect(connect: &str) -> Result<ConnectString, OptionsError> {
    let fail = |message: String| Err(OptionsError { store: "zookeeper", field: "connect", message });
    let (hosts, chroot) = match connect.find('/') {
        Some(i) => (&connect[..i], Some(&connect[i..])),
        None => (connect, None),
    };
    let chroot = match chroot {
        None | Some("/") => None,
        Some(c) => {
            check_path("connect", c)?;
            Some(c.to_string())
        }
    };
    if hosts.trim().is_empty() {
        return fail(format!("{connect:?} names no server; expected host:port[,host:port...][/chroot]"));
    }
    let mut servers = Vec::new();
    for part in hosts.split(',') {
        let part = part.trim();
        let Some((host, port)) = part.rsplit_once(':') else {
            return fail(format!("server {part:?} in {connect:?} has no port; expected host:port"));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return fail(format!("server {part:?} in {connect:?} has an empty or invalid host"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => servers.push((host.to_string(), p)),
            _ => return fail(format!("server {part:?} in {connect:?}: port {port:?} is not a number in 1..=65535")),
        }
    }
    Ok(ConnectString { servers, chroot })
}

impl ZkOptions {
    /// Checks every field, and `timing.ttl` as the session timeout to ask for (Patroni:
    /// session timeout = ttl): between 100 ms and `i32::MAX` milliseconds. The server clamps
    /// it to `[2, 20] x tickTime`; [`ZkClient::lease_ttl`](crate::ZkClient::lease_ttl) reports
    /// the negotiated value.
    pub fn validate(&self, timing: &Timing) -> Result<(), OptionsError> {
        let fail = |field, message: String| Err(OptionsError { store: "zookeeper", field, message });
        parse_connect(&self.connect)?;
        check_path("prefix", &self.prefix)?;
        if self.prefix == "/" {
            return fail("prefix", "must not be the root; use for example \"/service\"".into());
        }
        let ttl = timing.ttl;
        if ttl < Duration::from_millis(100) || ttl > Duration::from_millis(i32::MAX as u64) {
            return fail("timing.ttl", format!("{ttl:?} must be between 100ms and i32::MAX milliseconds"));
        }
        if let Some(c) = self.connection_timeout
            && (c.is_zero() || c >= ttl)
        {
            return fail("connection_timeout", format!("{c:?} must be greater than zero and below timing.ttl {ttl:?}"));
        }
        if self.request_timeout.is_zero() {
            return fail("request_timeout", "must be greater than zero".into());
        }
        if let Some(d) = &self.digest {
            if d.user.is_empty() || d.user.contains(':') {
                return fail("digest", format!("user {:?} must be non-empty and must not contain ':'", d.user));
            }
        } else if self.acl != AclPolicy::Open {
            return fail("acl", format!("{:?} protects znodes by the creator's identity and needs digest", self.acl));
        }
        if let Some(tls) = &self.tls {
            if !cfg!(feature = "tls") {
                return fail("tls", "this build has no TLS support: enable leasehold-zookeeper's `tls` feature".into());
            }
            if tls.ca_file.as_os_str().is_empty() {
                return fail(
                    "tls.ca_file",
                    "must name a PEM file of the CA that signed the servers' certificates".into(),
                );
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), None) => return fail("tls.key_file", "is required with tls.cert_file".into()),
                (None, Some(_)) => return fail("tls.cert_file", "is required with tls.key_file".into()),
                (Some(c), _) if c.as_os_str().is_empty() => return fail("tls.cert_file", "must not be empty".into()),
                (_, Some(k)) if k.as_os_str().is_empty() => return fail("tls.key_file", "must not be empty".into()),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_strings_parse() {
        let c = parse_connect("a:1, b:2,[::1]:3/lh/x").unwrap();
        assert_eq!(c.servers, vec![("a".into(), 1), ("b".into(), 2), ("::1".into(), 3)]);
        assert_eq!(c.chroot.as_deref(), Some("/lh/x"));
        assert_eq!(c.hosts(), "a:1,b:2,::1:3");
        assert_eq!(parse_connect("a:1/").unwrap().chroot, None);
    }

    #[test]
    fn bad_options_name_the_field() {
        let ok = ZkOptions::default();
        let timing = Timing::default();
        assert!(ok.validate(&timing).is_ok());
        let digest = Some(DigestAuth { user: "u".into(), password: "p".into() });
        let cases = [
            (ZkOptions { connect: String::new(), ..ok.clone() }, "connect"),
            (ZkOptions { connect: "localhost".into(), ..ok.clone() }, "connect"),
            (ZkOptions { connect: "a:0".into(), ..ok.clone() }, "connect"),
            (ZkOptions { connect: "a:99999".into(), ..ok.clone() }, "connect"),
            (ZkOptions { connect: "a:1,:2".into(), ..ok.clone() }, "connect"),
            (ZkOptions { connect: "a:1/x//y".into(), ..ok.clone() }, "connect"),
            (ZkOptions { prefix: "service".into(), ..ok.clone() }, "prefix"),
            (ZkOptions { prefix: "/".into(), ..ok.clone() }, "prefix"),
            (ZkOptions { prefix: "/a/".into(), ..ok.clone() }, "prefix"),
            (ZkOptions { connection_timeout: Some(Duration::from_secs(60)), ..ok.clone() }, "connection_timeout"),
            (ZkOptions { request_timeout: Duration::ZERO, ..ok.clone() }, "request_timeout"),
            (ZkOptions { acl: AclPolicy::CreatorOnly, ..ok.clone() }, "acl"),
            (
                ZkOptions { digest: Some(DigestAuth { user: "a:b".into(), password: "p".into() }), ..ok.clone() },
                "digest",
            ),
        ];
        for (options, field) in cases {
            let err = options.validate(&timing).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
        let tls = |t: ZkTls| ZkOptions { tls: Some(t), ..ok.clone() };
        let with_cert =
            ZkTls { cert_file: Some("c.pem".into()), key_file: Some("k.pem".into()), ..ZkTls::new("ca.pem") };
        if cfg!(feature = "tls") {
            assert!(tls(ZkTls::new("ca.pem")).validate(&timing).is_ok());
            assert!(tls(with_cert.clone()).validate(&timing).is_ok());
            let cases = [
                (ZkTls::new(""), "tls.ca_file"),
                (ZkTls { key_file: None, ..with_cert.clone() }, "tls.key_file"),
                (ZkTls { cert_file: None, ..with_cert.clone() }, "tls.cert_file"),
                (ZkTls { cert_file: Some("".into()), ..with_cert.clone() }, "tls.cert_file"),
                (ZkTls { key_file: Some("".into()), ..with_cert }, "tls.key_file"),
            ];
            for (t, field) in cases {
                let err = tls(t).validate(&timing).expect_err(field);
                assert_eq!(err.field, field, "{err}");
            }
        } else {
            assert_eq!(tls(ZkTls::new("ca.pem")).validate(&timing).expect_err("no tls feature").field, "tls");
        }
        assert!(ZkOptions { acl: AclPolicy::CreatorOnly, digest, ..ok.clone() }.validate(&timing).is_ok());
        for ttl in [Duration::ZERO, Duration::from_millis(99), Duration::from_secs(3_000_000)] {
            let err = ok.validate(&Timing { ttl, ..timing.clone() }).expect_err("ttl");
            assert_eq!(err.field, "timing.ttl", "{err}");
            assert!(err.to_string().starts_with("invalid zookeeper option timing.ttl"), "{err}");
        }
    }

    #[test]
    fn digest_password_is_not_printed() {
        let d = DigestAuth { user: "u".into(), password: "secret".into() };
        assert!(!format!("{d:?}").contains("secret"));
    }
}
