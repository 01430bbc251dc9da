//! The configuration file (TOML), its environment overrides and its validation.
//!
//! The format is documented in the crate's README and in `leasehold-ha.sample.toml`. Every
//! error is a [`ConfigError`] naming the key and the rule it broke.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use leasehold::node::{NodeConfig, WatchdogMode};
use leasehold::{Tags, Timing};
use serde::Deserialize;

use crate::postgres::config::{PostgresConfig, RawPostgres};

/// Environment variables that start with this prefix override keys of the file:
/// `LEASEHOLD_TTL=20` sets `ttl`, `LEASEHOLD_ETCD__ENDPOINTS=...` sets `etcd.endpoints`.
pub const ENV_PREFIX: &str = "LEASEHOLD_";

/// Variables with the prefix that are not config keys (the config path, the log filter).
const ENV_RESERVED: [&str; 2] = ["LEASEHOLD_CONFIG", "LEASEHOLD_LOG"];

/// A configuration broke a rule. `key` is the dotted key (`ttl`, `etcd.endpoints`, ...), or
/// `file` when the file itself cannot be read or parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The key at fault.
    pub key: String,
    /// The rule and the offending value.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { key: key.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The validated configuration of one daemon.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonConfig {
    /// The cluster (election scope) name.
    pub scope: String,
    /// This member's name, unique in the scope.
    pub name: String,
    /// Timing, validated.
    pub timing: Timing,
    /// Election tags.
    pub tags: Tags,
    /// Watchdog policy and device.
    pub watchdog: WatchdogConfig,
    /// Only members of the sync set may be promoted automatically.
    pub synchronous_mode: bool,
    /// Synchronous mode: with no synchronous standby, commits wait rather than run
    /// unprotected (`synchronous_standby_names = '*'`).
    pub synchronous_mode_strict: bool,
    /// Synchronous mode: how many synchronous standbys the leader keeps (Patroni's key, at
    /// least 1; fewer while fewer replicas are eligible). Commits wait for all of them.
    pub synchronous_node_count: NonZeroUsize,
    /// Keep the leader through a store outage while every member confirms it.
    pub failsafe_mode: bool,
    /// How replicas reach this member's resource (passed to their `follow` hook).
    pub conn_url: Option<String>,
    /// The REST API.
    pub restapi: RestApiConfig,
    /// The `[ctl]` section: how `ctl` talks to members' APIs.
    pub ctl: CtlConfig,
    /// The resource: hooks or the native PostgreSQL resource.
    pub resource: ResourceConfig,
    /// The consensus store.
    pub store: StoreConfig,
    /// Logging: `[log] level`, changed at runtime by SIGHUP.
    pub log_level: String,
}

/// The `[watchdog]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchdogConfig {
    /// `off`, `automatic` or `required`.
    pub mode: WatchdogMode,
    /// The device (default `/dev/watchdog`).
    pub device: PathBuf,
}

/// The `[restapi]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestApiConfig {
    /// Where to listen (default `127.0.0.1:8008`).
    pub listen: SocketAddr,
    /// The URL peers and `ctl` use to reach this API (default `http://<listen>`).
    pub connect_url: String,
    /// Bearer token required by the POST endpoints; without one they are refused.
    pub token: Option<String>,
    /// HTTPS (`certfile` + `keyfile`, optional `cafile` and `verify_client`); `None`: HTTP.
    pub tls: Option<crate::tls::ServerTls>,
}

/// The `[ctl]` section (Patroni's `ctl.cacert / certfile / keyfile`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CtlConfig {
    /// CA and client certificate for `https://` member APIs, as configured in `[ctl]`.
    pub tls: crate::tls::ClientTls,
}

impl DaemonConfig {
    /// How this member's probes reach its peers: verified against `restapi.cafile`, and
    /// presenting `restapi.certfile` when peers ask for client certificates.
    pub fn peer_tls(&self) -> crate::tls::ClientTls {
        let Some(t) = &self.restapi.tls else { return crate::tls::ClientTls::default() };
        crate::tls::ClientTls {
            cacert: t.cafile.clone(),
            identity: (t.verify_client != crate::tls::VerifyClient::None)
                .then(|| (t.certfile.clone(), t.keyfile.clone())),
        }
    }

    /// How `ctl` reaches members: `ctl.cacert` (else `restapi.cafile`) and `ctl.certfile` /
    /// `ctl.keyfile` (else the member's own certificate when its API verifies clients).
    pub fn ctl_tls(&self) -> crate::tls::ClientTls {
        let peer = self.peer_tls();
        crate::tls::ClientTls {
            cacert: self.ctl.tls.cacert.clone().or(peer.cacert),
            identity: self.ctl.tls.identity.clone().or(peer.identity),
        }
    }
}

/// Which resource the daemon drives: exactly one of `[hooks]` and `[postgresql]`.
#[derive(Clone, Debug, PartialEq)]
pub enum ResourceConfig {
    /// `[hooks]`: external programs.
    Hooks(HooksConfig),
    /// `[postgresql]`: the native PostgreSQL resource.
    Postgres(Box<PostgresConfig>),
}

/// The `[hooks]` section: programs that drive the resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HooksConfig {
    /// Run with the epoch as its argument.
    pub promote: PathBuf,
    /// Run with the demote mode as its argument.
    pub demote: PathBuf,
    /// Run with the leader's name and connection URL as arguments.
    pub follow: PathBuf,
    /// Prints JSON `{"running", "role", "position", "timeline"}`.
    pub status: PathBuf,
    /// Optional hooks for the operator's `restart`, `reload` and `reinit`.
    pub actions: Box<ActionHooks>,
    /// Upper bound for promote, demote and follow.
    pub timeout: Duration,
    /// Upper bound for status.
    pub status_timeout: Duration,
    /// Extra environment for every hook.
    pub env: BTreeMap<String, String>,
}

/// Optional hooks for operator actions (`ctl restart`, `reload`, `reinit`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActionHooks {
    /// Restarts the resource in its current role (`POST /restart`).
    pub restart: Option<PathBuf>,
    /// Makes the resource re-read its configuration (`POST /reload`).
    pub reload: Option<PathBuf>,
    /// A replica throws its data away and copies it anew from the leader, with the leader's
    /// name and conn url as arguments (`POST /reinitialize`).
    pub reinit: Option<PathBuf>,
}

/// The store section that is present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// `[etcd]`
    Etcd(EtcdSection),
    /// `[zookeeper]`
    Zookeeper(ZookeeperSection),
    /// `[consul]`
    Consul(ConsulSection),
    /// `[kubernetes]`
    Kubernetes(KubernetesSection),
}

impl StoreConfig {
    /// The section's name.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreConfig::Etcd(_) => "etcd",
            StoreConfig::Zookeeper(_) => "zookeeper",
            StoreConfig::Consul(_) => "consul",
            StoreConfig::Kubernetes(_) => "kubernetes",
        }
    }
}

/// `[etcd]`: etcd v3 over gRPC.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    /// Client URLs (`http://host:port`); a list or one comma-separated string.
    pub endpoints: Endpoints,
    /// Key prefix (Patroni's `namespace`, default `/service`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// User name for authentication.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for authentication.
    #[serde(default)]
    pub password: Option<String>,
    /// PEM CA certificate of the etcd servers; required with `https://` endpoints (no system
    /// trust store is built in). Patroni's `cacert`.
    #[serde(default)]
    pub cacert: Option<PathBuf>,
    /// PEM client certificate, for servers started with `--client-cert-auth`; needs `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// A lease of its own for the member keys, with this TTL (at least `ttl`); unset, they
    /// share the leader's ttl lease as in Patroni. A longer one makes an idle member send a
    /// keep-alive every `member_ttl / 3` instead of every `ttl / 3`; a member that died stays
    /// listed until it runs out (synchronous standbys are chosen among those streaming, so a
    /// dead one does not hold commits that long). Leader keys always keep the ttl.
    #[serde(default, deserialize_with = "opt_duration")]
    pub member_ttl: Option<Duration>,
}

/// `[zookeeper]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZookeeperSection {
    /// `host:port` of the ensemble members; a list or one comma-separated string.
    pub hosts: Endpoints,
    /// Path prefix (default `/service`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// PEM CA certificate of the servers; setting it connects over TLS (to the servers'
    /// `secureClientPort`, so `hosts` name those ports). Patroni's `cacert`.
    #[serde(default)]
    pub cacert: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (servers with `ssl.clientAuth=need`); needs `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Check that a server's certificate names the host it is reached by (default true).
    #[serde(default = "default_true")]
    pub verify: bool,
}

fn default_true() -> bool {
    true
}

/// `[consul]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulSection {
    /// The agent's HTTP address (default `http://127.0.0.1:8500`).
    #[serde(default = "default_consul")]
    pub address: String,
    /// ACL token.
    #[serde(default)]
    pub token: Option<String>,
    /// Key prefix (default `service`).
    #[serde(default = "default_consul_prefix")]
    pub prefix: String,
    /// PEM CA certificate of the agent, added to the system roots; needs an `https://`
    /// address. Patroni's `cacert`.
    #[serde(default)]
    pub cacert: Option<PathBuf>,
    /// PEM client certificate, for agents with `verify_incoming`; needs `key`. Patroni's `cert`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM PKCS#8 private key of `cert` (`BEGIN PRIVATE KEY`). Patroni's `key`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// `[kubernetes]`
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSection {
    /// Namespace of the Lease objects (default: the context's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Prepended to object names.
    #[serde(default)]
    pub prefix: String,
    /// A kubeconfig file (default: `KUBECONFIG`, `~/.kube/config`, then in-cluster).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context.
    #[serde(default)]
    pub context: Option<String>,
    /// Extra labels on every object.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The pod whose role label this daemon keeps current (default: `$POD_NAME`; with
    /// neither, no pod is labelled).
    #[serde(default)]
    pub pod_name: Option<String>,
    /// The pod label that carries the role (Patroni's `role_label`, default `role`).
    #[serde(default = "default_role_label")]
    pub role_label: String,
    /// Its value on the leader's pod (Patroni's `leader_label_value`, default `primary`;
    /// `master` for selectors written for Patroni before 4.0).
    #[serde(default = "default_leader_label_value")]
    pub leader_label_value: String,
    /// Its value on every other member's pod (Patroni's `follower_label_value`, default `replica`).
    #[serde(default = "default_follower_label_value")]
    pub follower_label_value: String,
    /// The pod label naming the cluster, with the scope as its value (Patroni's
    /// `scope_label`, default `cluster-name`): a new leader lists the pods with it and the
    /// leader value, to take the label off a crashed leader's pod before labelling its own.
    #[serde(default = "default_scope_label")]
    pub scope_label: String,
}

fn default_role_label() -> String {
    "role".into()
}
fn default_leader_label_value() -> String {
    "primary".into()
}
fn default_follower_label_value() -> String {
    "replica".into()
}
fn default_scope_label() -> String {
    "cluster-name".into()
}

fn default_prefix() -> String {
    "/service".into()
}
fn default_consul() -> String {
    "http://127.0.0.1:8500".into()
}
fn default_consul_prefix() -> String {
    "service".into()
}

/// A list of endpoints, written as a TOML array or one comma-separated string (handy in
/// environment variables).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Endpoints(pub Vec<String>);

impl<'de> Deserialize<'de> for Endpoints {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            One(String),
            Many(Vec<String>),
        }
        let list = match Repr::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a list of strings or one comma-separated string"))?
        {
            Repr::One(s) => s.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect(),
            Repr::Many(v) => v,
        };
        Ok(Endpoints(list))
    }
}

/// The file as written, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    scope: Option<String>,
    name: Option<String>,
    #[serde(default, deserialize_with = "opt_duration")]
    ttl: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    loop_wait: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    retry_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    safety_margin: Option<Duration>,
    max_drift_ppm: Option<u32>,
    maximum_lag_on_failover: Option<u64>,
    #[serde(default)]
    synchronous_mode: bool,
    #[serde(default)]
    synchronous_mode_strict: bool,
    synchronous_node_count: Option<u32>,
    #[serde(default)]
    failsafe_mode: bool,
    conn_url: Option<String>,
    #[serde(default)]
    tags: RawTags,
    #[serde(default)]
    watchdog: RawWatchdog,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    restapi: RawRestApi,
    #[serde(default)]
    ctl: RawCtl,
    hooks: Option<RawHooks>,
    postgresql: Option<RawPostgres>,
    etcd: Option<EtcdSection>,
    zookeeper: Option<ZookeeperSection>,
    consul: Option<ConsulSection>,
    kubernetes: Option<KubernetesSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTags {
    #[serde(default)]
    nofailover: bool,
    #[serde(default = "one")]
    failover_priority: u32,
    #[serde(default)]
    nosync: bool,
}

impl Default for RawTags {
    fn default() -> Self {
        RawTags { nofailover: false, failover_priority: 1, nosync: false }
    }
}

fn one() -> u32 {
    1
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatchdog {
    mode: Option<WatchdogMode>,
    device: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestApi {
    listen: Option<String>,
    connect_url: Option<String>,
    token: Option<String>,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
    cafile: Option<PathBuf>,
    verify_client: Option<crate::tls::VerifyClient>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCtl {
    cacert: Option<PathBuf>,
    certfile: Option<PathBuf>,
    keyfile: Option<PathBuf>,
}

impl RawRestApi {
    /// The TLS files, relative to `base`, checked (read, parsed, key fits certificate).
    fn tls(&self, base: &Path) -> Result<Option<crate::tls::ServerTls>, ConfigError> {
        let verify_client = self.verify_client.unwrap_or_default();
        let (certfile, keyfile) = match (&self.certfile, &self.keyfile) {
            (None, None) => {
                for (key, set) in [
                    ("restapi.cafile", self.cafile.is_some()),
                    ("restapi.verify_client", verify_client != crate::tls::VerifyClient::None),
                ] {
                    if set {
                        return Err(ConfigError::new(
                            key,
                            "needs restapi.certfile and restapi.keyfile (the API serves HTTPS only with both)",
                        ));
                    }
                }
                return Ok(None);
            }
            (Some(_), None) => return Err(ConfigError::new("restapi.keyfile", "is required with restapi.certfile")),
            (None, Some(_)) => return Err(ConfigError::new("restapi.certfile", "is required with restapi.keyfile")),
            (Some(c), Some(k)) => (base.join(c), base.join(k)),
        };
        let tls = crate::tls::ServerTls {
            certfile,
            keyfile,
            cafile: self.cafile.as_ref().map(|c| base.join(c)),
            verify_client,
        };
        tls.server_config()?;
        Ok(Some(tls))
    }
}

impl RawCtl {
    fn validate(self, base: &Path) -> Result<CtlConfig, ConfigError> {
        let identity = match (self.certfile, self.keyfile) {
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::new("ctl.keyfile", "is required with ctl.certfile")),
            (None, Some(_)) => return Err(ConfigError::new("ctl.certfile", "is required with ctl.keyfile")),
            (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
        };
        let tls = crate::tls::ClientTls { cacert: self.cacert.map(|c| base.join(c)), identity };
        tls.check("ctl.cacert", "ctl.certfile", "ctl.keyfile")?;
        Ok(CtlConfig { tls })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    /// A directory holding `promote`, `demote`, `follow` and `status`; single entries
    /// below override it.
    dir: Option<PathBuf>,
    promote: Option<PathBuf>,
    demote: Option<PathBuf>,
    follow: Option<PathBuf>,
    status: Option<PathBuf>,
    restart: Option<PathBuf>,
    reload: Option<PathBuf>,
    reinit: Option<PathBuf>,
    #[serde(default, deserialize_with = "opt_duration")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    status_timeout: Option<Duration>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// Durations as humantime text (`"10s"`, `"1500ms"`, `"1m 30s"`) or a number of seconds, like
/// Patroni's; parsed by the core's `leasehold::config` (humantime), as `Timing` is.
fn opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Secs(f64),
        Text(String),
    }
    let repr = Repr::deserialize(d)
        .map_err(|_| serde::de::Error::custom("expected a duration like \"10s\", \"1500ms\" or a number of seconds"))?;
    let parsed = match repr {
        Repr::Secs(s) => leasehold::config::duration_from_secs(s),
        Repr::Text(t) => leasehold::config::parse_duration(&t),
    };
    parsed.map(Some).map_err(serde::de::Error::custom)
}

impl DaemonConfig {
    /// Reads `path`, applies the process's `LEASEHOLD_*` environment variables and validates.
    pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("file", format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, std::env::vars(), &base)
    }

    /// Parses `text`, applies the `LEASEHOLD_*` variables among `env` and validates. Relative
    /// hook paths are resolved against `base` (the config file's directory).
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        base: &Path,
    ) -> Result<DaemonConfig, ConfigError> {
        let mut table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| ConfigError::new("file", e.to_string()))?;
        let applied = apply_env(&mut table, env)?;
        let raw: RawConfig = if applied.is_empty() {
            toml::from_str(text).map_err(|e| parse_error(e, text, &[]))?
        } else {
            // Re-render the merged document so the error points at the key, as in a file.
            let merged = toml::to_string(&table).map_err(|e| ConfigError::new("file", e.to_string()))?;
            toml::from_str(&merged).map_err(|e| parse_error(e, &merged, &applied))?
        };
        raw.validate(base)
    }

    /// The node configuration the driver runs with.
    pub fn node_config(&self, incarnation: u64) -> NodeConfig {
        let mut cfg = NodeConfig::new(self.name.clone(), incarnation);
        cfg.timing = self.timing.clone();
        cfg.tags = self.tags.clone();
        cfg.api_url = Some(self.restapi.connect_url.clone());
        cfg.conn_url = self.conn_url.clone();
        cfg.watchdog = self.watchdog.mode;
        cfg.synchronous_mode = self.synchronous_mode;
        cfg.synchronous_node_count = self.synchronous_node_count;
        cfg.synchronous_mode_strict = self.synchronous_mode_strict;
        // The native resource publishes its own conn_url when none is configured.
        if cfg.conn_url.is_none()
            && let ResourceConfig::Postgres(pg) = &self.resource
        {
            cfg.conn_url = Some(pg.conn_url());
        }
        cfg.failsafe_mode = self.failsafe_mode;
        cfg
    }
}

fn parse_error(e: toml::de::Error, text: &str, applied: &[String]) -> ConfigError {
    let unknown = e.message().split('`').nth(1).filter(|_| e.message().starts_with("unknown field"));
    let key = match (unknown, e.span()) {
        (Some(field), Some(span)) => Some(key_path(text, span.start, Some(field))),
        (Some(field), None) => Some(field.to_string()),
        // A wrong type or value: the key on the line the error points at.
        (None, Some(span)) => Some(key_path(text, span.start, None)),
        (None, None) => None,
    };
    let mut message = e.to_string().trim_end().to_string();
    if !applied.is_empty() {
        message.push_str(&format!("\n(after environment overrides from {})", applied.join(", ")));
    }
    ConfigError::new(key.filter(|k| !k.is_empty()).unwrap_or_else(|| "file".to_string()), message)
}

/// The dotted key at byte `at` of `text` (`postgresql.listen`): the `[table]` header above it
/// and the key on its line, or `field` when the error names one.
fn key_path(text: &str, at: usize, field: Option<&str>) -> String {
    let before = &text[..at.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let on_line = line.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_string());
    let key = match (field, on_line, line.trim().starts_with('[')) {
        (Some(f), _, _) => Some(f.to_string()),
        (None, Some(k), false) => Some(k),
        _ => None,
    };
    match (table, key) {
        (Some(t), Some(k)) if !t.is_empty() => format!("{t}.{k}"),
        (Some(t), None) => t,
        (None, Some(k)) => k,
        _ => String::new(),
    }
}

/// Applies `LEASEHOLD_<KEY>` variables: `__` separates nesting levels, names are
/// lowercased. Values are read as TOML values (`20`, `true`, `["a", "b"]`) and fall back to
/// plain strings; a key that is a string in the file stays a string. Returns the variables
/// applied.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let mut vars: Vec<(String, String)> =
        env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX) && !ENV_RESERVED.contains(&k.as_str())).collect();
    vars.sort();
    let mut applied = Vec::new();
    for (var, value) in vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..].split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::new(var, "empty key segment; use LEASEHOLD_<KEY> or LEASEHOLD_<SECTION>__<KEY>"));
        }
        let dotted = path.join(".");
        let (last, parents) = path.split_last().expect("split yields at least one segment");
        let mut cur = &mut *table;
        for p in parents {
            let entry = cur.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = entry.as_table_mut().ok_or_else(|| {
                ConfigError::new(&dotted, format!("{var} sets a key inside `{p}`, which is not a section"))
            })?;
        }
        let parsed = match cur.get(last.as_str()) {
            Some(toml::Value::String(_)) => toml::Value::String(value.clone()),
            _ => format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.clone())),
        };
        cur.insert(last.clone(), parsed);
        applied.push(var);
    }
    Ok(applied)
}

fn check_name(key: &str, value: Option<String>) -> Result<String, ConfigError> {
    let v = value.ok_or_else(|| ConfigError::new(key, "is required"))?;
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !ok {
        return Err(ConfigError::new(
            key,
            format!("{v:?} must be 1 to 63 characters of letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(v)
}

fn check_url(key: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let rest = schemes.iter().find_map(|s| url.strip_prefix(s));
    let Some(rest) = rest else {
        return Err(ConfigError::new(key, format!("{url:?} must start with {}", schemes.join(" or "))));
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || !host.contains(':') {
        return Err(ConfigError::new(key, format!("{url:?} must name a host and a port, like http://127.0.0.1:2379")));
    }
    Ok(())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl RawConfig {
    fn validate(self, base: &Path) -> Result<DaemonConfig, ConfigError> {
        let scope = check_name("scope", self.scope)?;
        let name = check_name("name", self.name)?;

        let defaults = Timing::default();
        let ttl = self.ttl.unwrap_or(defaults.ttl);
        let timing = Timing {
            ttl,
            loop_wait: self.loop_wait.unwrap_or(defaults.loop_wait),
            retry_timeout: self.retry_timeout.unwrap_or(defaults.retry_timeout),
            // Patroni has no margin; ours defaults to what leaves a short ttl usable.
            safety_margin: self.safety_margin.unwrap_or_else(|| (ttl / 5).min(defaults.safety_margin)),
            max_drift_ppm: self.max_drift_ppm.unwrap_or(defaults.max_drift_ppm),
            maximum_lag_on_failover: self.maximum_lag_on_failover.unwrap_or(defaults.maximum_lag_on_failover),
        };
        timing.validate().map_err(|e| ConfigError::new(e.field, e.message))?;

        let tags = Tags {
            nofailover: self.tags.nofailover,
            failover_priority: self.tags.failover_priority,
            nosync: self.tags.nosync,
        };

        let watchdog = WatchdogConfig {
            // Patroni's default: use a watchdog when there is one.
            mode: self.watchdog.mode.unwrap_or(WatchdogMode::Automatic),
            device: self.watchdog.device.unwrap_or_else(|| PathBuf::from("/dev/watchdog")),
        };
        if watchdog.mode == WatchdogMode::Required && !watchdog.device.exists() {
            return Err(ConfigError::new(
                "watchdog.device",
                format!(
                    "{} does not exist, and watchdog.mode = \"required\" never leads without a working watchdog",
                    watchdog.device.display()
                ),
            ));
        }

        let tls = self.restapi.tls(base)?;
        let listen_text = self.restapi.listen.unwrap_or_else(|| "127.0.0.1:8008".into());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError::new(
                "restapi.listen",
                format!("{listen_text:?} must be an IP address and port, like 127.0.0.1:8008"),
            )
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let connect_url = match self.restapi.connect_url {
            Some(u) => {
                check_url("restapi.connect_url", &u, &[&format!("{scheme}://")])?;
                u.trim_end_matches('/').to_string()
            }
            None if listen.ip().is_unspecified() => {
                return Err(ConfigError::new(
                    "restapi.connect_url",
                    format!(
                        "is required when restapi.listen ({listen}) is a wildcard address: peers need a reachable URL"
                    ),
                ));
            }
            None => format!("{scheme}://{listen}"),
        };
        if let Some(t) = &self.restapi.token
            && (t.len() < 8 || t.chars().any(char::is_whitespace))
        {
            return Err(ConfigError::new("restapi.token", "must be at least 8 characters without whitespace"));
        }
        let restapi = RestApiConfig { listen, connect_url, token: self.restapi.token, tls };
        let ctl = self.ctl.validate(base)?;

        let resource = match (self.hooks, self.postgresql) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "hooks|postgresql",
                    "one resource per member: [hooks] or [postgresql], not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "hooks|postgresql",
                    "a resource section is required: [postgresql] (native PostgreSQL) or [hooks] (programs)",
                ));
            }
            (None, Some(pg)) => ResourceConfig::Postgres(Box::new(pg.validate(base)?)),
            (Some(raw_hooks), None) => ResourceConfig::Hooks(validate_hooks(raw_hooks, base)?),
        };

        let mut stores = Vec::new();
        if let Some(s) = self.etcd {
            stores.push(StoreConfig::Etcd(s));
        }
        if let Some(s) = self.zookeeper {
            stores.push(StoreConfig::Zookeeper(s));
        }
        if let Some(s) = self.consul {
            stores.push(StoreConfig::Consul(s));
        }
        if let Some(s) = self.kubernetes {
            stores.push(StoreConfig::Kubernetes(s));
        }
        if stores.len() != 1 {
            let found: Vec<_> = stores.iter().map(StoreConfig::kind).collect();
            return Err(ConfigError::new(
                "etcd|zookeeper|consul|kubernetes",
                if found.is_empty() {
                    "exactly one store section is required; none is present".to_string()
                } else {
                    format!("exactly one store section is required; found {}", found.join(" and "))
                },
            ));
        }
        let store = stores.remove(0);
        validate_store(&store, &timing)?;

        if self.synchronous_mode && matches!(resource, ResourceConfig::Hooks(_)) {
            // The node keeps the sync key, but no hook confirms synchronous standbys or sets
            // them in the resource, so the sync set could never grow past the leader and
            // automatic failover would be silently off. The native resource does both.
            return Err(ConfigError::new(
                "synchronous_mode",
                "needs the [postgresql] resource (no hook confirms synchronous standbys)",
            ));
        }
        if self.synchronous_mode_strict && !self.synchronous_mode {
            return Err(ConfigError::new("synchronous_mode_strict", "needs synchronous_mode = true"));
        }
        let synchronous_node_count = usize::try_from(self.synchronous_node_count.unwrap_or(1))
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| {
                ConfigError::new(
                    "synchronous_node_count",
                    "0: must be at least 1 (how many synchronous standbys the leader keeps)",
                )
            })?;
        if let (Some(u), ResourceConfig::Postgres(_)) = (&self.conn_url, &resource) {
            return Err(ConfigError::new(
                "conn_url",
                format!("{u:?}: with [postgresql] the member's address is postgresql.connect_address"),
            ));
        }

        if let Some(u) = &self.conn_url
            && u.trim().is_empty()
        {
            return Err(ConfigError::new("conn_url", "must not be empty when set"));
        }

        Ok(DaemonConfig {
            scope,
            name,
            timing,
            tags,
            watchdog,
            synchronous_mode: self.synchronous_mode,
            synchronous_mode_strict: self.synchronous_mode_strict,
            synchronous_node_count,
            failsafe_mode: self.failsafe_mode,
            conn_url: self.conn_url,
            restapi,
            ctl,
            resource,
            store,
            log_level: validate_log_level(self.log.level)?,
        })
    }
}

/// `[log]`: what the daemon logs (to standard error; see the README for journald and files).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    /// A `tracing` filter: `info`, `debug`, `warn,leasehold=debug`, ...
    level: Option<String>,
}

fn validate_log_level(level: Option<String>) -> Result<String, ConfigError> {
    let level = level.unwrap_or_else(|| "info".into());
    tracing_subscriber::EnvFilter::try_new(&level)
        .map_err(|e| ConfigError::new("log.level", format!("{level:?} is not a log filter: {e}")))?;
    Ok(level)
}

/// An optional hook: the explicit path must be executable; `<dir>/<key>` is used when it is.
fn optional_hook(
    dir: &Option<PathBuf>,
    base: &Path,
    key: &str,
    explicit: Option<PathBuf>,
) -> Result<Option<PathBuf>, ConfigError> {
    match (explicit, dir) {
        (Some(p), _) => {
            let path = base.join(p);
            if !is_executable(&path) {
                return Err(ConfigError::new(
                    format!("hooks.{key}"),
                    format!("{} must be an executable file", path.display()),
                ));
            }
            Ok(Some(path))
        }
        (None, Some(d)) => Ok(Some(d.join(key)).filter(|p| is_executable(p))),
        (None, None) => Ok(None),
    }
}

fn validate_hooks(raw_hooks: RawHooks, base: &Path) -> Result<HooksConfig, ConfigError> {
    let dir = raw_hooks.dir.map(|d| base.join(d));
    let hook = |key: &str, explicit: Option<PathBuf>| -> Result<PathBuf, ConfigError> {
        let path = match (explicit, &dir) {
            (Some(p), _) => base.join(p),
            (None, Some(d)) => d.join(key),
            (None, None) => {
                return Err(ConfigError::new(format!("hooks.{key}"), "is required (or set hooks.dir)"));
            }
        };
        if !is_executable(&path) {
            return Err(ConfigError::new(
                format!("hooks.{key}"),
                format!("{} must be an executable file", path.display()),
            ));
        }
        Ok(path)
    };
    let hooks = HooksConfig {
        promote: hook("promote", raw_hooks.promote)?,
        demote: hook("demote", raw_hooks.demote)?,
        follow: hook("follow", raw_hooks.follow)?,
        status: hook("status", raw_hooks.status)?,
        actions: Box::new(ActionHooks {
            restart: optional_hook(&dir, base, "restart", raw_hooks.restart)?,
            reload: optional_hook(&dir, base, "reload", raw_hooks.reload)?,
            reinit: optional_hook(&dir, base, "reinit", raw_hooks.reinit)?,
        }),
        timeout: raw_hooks.timeout.unwrap_or(Duration::from_secs(60)),
        status_timeout: raw_hooks.status_timeout.unwrap_or(Duration::from_secs(5)),
        env: raw_hooks.env,
    };
    if hooks.timeout.is_zero() {
        return Err(ConfigError::new("hooks.timeout", "must be greater than zero"));
    }
    if hooks.status_timeout.is_zero() {
        return Err(ConfigError::new("hooks.status_timeout", "must be greater than zero"));
    }
    Ok(hooks)
}

/// The shortest lease etcd grants with its default election timeout (1000 ms).
const ETCD_MIN_TTL: Duration = Duration::from_secs(2);

/// The session timeouts a ZooKeeper server grants with its default settings: it clamps a
/// request to `[minSessionTimeout, maxSessionTimeout]`, by default `[2, 20] x tickTime`, and
/// tickTime defaults to 2000 ms.
pub(crate) const ZK_DEFAULT_SESSION_TIMEOUTS: (Duration, Duration) = (Duration::from_secs(4), Duration::from_secs(40));

/// The store's rules on a timing (etcd's minimum lease, Consul's session floor, ZooKeeper's
/// session timeout range, ...).
pub(crate) fn validate_store(store: &StoreConfig, timing: &Timing) -> Result<(), ConfigError> {
    let kind = store.kind();
    if !crate::store::built_in(kind) {
        return Err(ConfigError::new(
            kind,
            format!("the {kind} backend is not built in to this binary (rebuild with `--features {kind}`)"),
        ));
    }
    match store {
        StoreConfig::Etcd(s) => {
            if s.endpoints.0.is_empty() {
                return Err(ConfigError::new("etcd.endpoints", "needs at least one URL, like http://127.0.0.1:2379"));
            }
            for e in &s.endpoints.0 {
                check_url("etcd.endpoints", e, &["http://", "https://"])?;
            }
            check_prefix("etcd.prefix", &s.prefix)?;
            // The client's own rules (TLS files with https:// endpoints, cert with key),
            // refused here rather than at connect.
            #[cfg(feature = "etcd")]
            crate::store::etcd_options(s, timing).validate(timing).map_err(|e| {
                let key = match e.field {
                    "ca_file" => "etcd.cacert".to_string(),
                    "cert_file" => "etcd.cert".to_string(),
                    "key_file" => "etcd.key".to_string(),
                    "user" => "etcd.username".to_string(),
                    "timing.ttl" => "ttl".to_string(),
                    "request_timeout" | "dial_timeout" => "retry_timeout".to_string(),
                    field => format!("etcd.{field}"),
                };
                ConfigError::new(
                    key,
                    e.message.replace("ca_file", "cacert").replace("cert_file", "cert").replace("key_file", "key"),
                )
            })?;
            // etcd raises a lease's TTL to its minimum (1.5 x the election timeout, 2 s at the
            // default 1000 ms): the leader key would outlive the ttl every member plans with.
            if timing.ttl < ETCD_MIN_TTL {
                return Err(ConfigError::new(
                    "ttl",
                    format!(
                        "{:?} is below etcd's minimum lease TTL of {ETCD_MIN_TTL:?} (with its default election timeout); etcd would grant a longer lease than every member plans with",
                        timing.ttl
                    ),
                ));
            }
            if s.username.is_some() != s.password.is_some() {
                return Err(ConfigError::new("etcd.password", "username and password must be set together"));
            }
        }
        StoreConfig::Zookeeper(s) => {
            if s.hosts.0.is_empty() {
                return Err(ConfigError::new("zookeeper.hosts", "needs at least one host:port"));
            }
            for h in &s.hosts.0 {
                if h.rsplit_once(':').is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err()) {
                    return Err(ConfigError::new("zookeeper.hosts", format!("{h:?} must be host:port")));
                }
            }
            check_prefix("zookeeper.prefix", &s.prefix)?;
            if s.cacert.is_none() && (s.cert.is_some() || s.key.is_some() || !s.verify) {
                return Err(ConfigError::new(
                    "zookeeper.cacert",
                    "cert, key and verify apply to TLS, which needs cacert",
                ));
            }
            if s.cert.is_some() != s.key.is_some() {
                let key = if s.cert.is_some() { "zookeeper.key" } else { "zookeeper.cert" };
                return Err(ConfigError::new(key, "cert and key must be set together"));
            }
            // The session timeout is the ttl; a server clamps it, and the leader key (an
            // ephemeral znode) would then live longer or shorter than every member plans with.
            let (min, max) = ZK_DEFAULT_SESSION_TIMEOUTS;
            if timing.ttl < min || timing.ttl > max {
                return Err(ConfigError::new(
                    "ttl",
                    format!(
                        "{:?} is outside the session timeouts ZooKeeper grants with its default settings: \
                         [minSessionTimeout, maxSessionTimeout] = [2, 20] x tickTime = [{min:?}, {max:?}] at tickTime 2000 ms, \
                         and it would clamp the session timeout (the ttl); a server with another tickTime or \
                         explicit min/maxSessionTimeout has other bounds, but the ttl must be within these",
                        timing.ttl
                    ),
                ));
            }
        }
        StoreConfig::Consul(s) => {
            check_url("consul.address", &s.address, &["http://", "https://"])?;
            // The client's own rules, e.g. a ttl under twice Consul's 10 s session-TTL floor,
            // refused here rather than at connect.
            #[cfg(feature = "consul")]
            crate::store::consul_options(s, timing).validate(timing).map_err(|e| {
                let key = match e.field {
                    "timing.ttl" => "ttl".to_string(),
                    "request_timeout" => "retry_timeout".to_string(),
                    "tls" if s.cert.is_some() != s.key.is_some() => {
                        if s.cert.is_some() { "consul.key" } else { "consul.cert" }.to_string()
                    }
                    "tls" => "consul.cacert".to_string(),
                    field => format!("consul.{field}"),
                };
                let message =
                    e.message.replace("client_cert", "cert").replace("client_key", "key").replace("ca_cert", "cacert");
                ConfigError::new(key, message)
            })?;
            #[cfg(not(feature = "consul"))]
            let _ = (s, timing);
        }
        StoreConfig::Kubernetes(s) => {
            for (key, value) in [("kubernetes.role_label", &s.role_label), ("kubernetes.scope_label", &s.scope_label)] {
                check_label_key(key, value)?;
            }
            for (key, value) in [
                ("kubernetes.leader_label_value", &s.leader_label_value),
                ("kubernetes.follower_label_value", &s.follower_label_value),
            ] {
                check_label_value(key, value)?;
            }
            if s.leader_label_value == s.follower_label_value {
                return Err(ConfigError::new(
                    "kubernetes.follower_label_value",
                    format!("{:?} must differ from leader_label_value", s.follower_label_value),
                ));
            }
            if let Some(pod) = &s.pod_name
                && (pod.is_empty()
                    || pod.len() > 253
                    || !pod.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'))
            {
                return Err(ConfigError::new(
                    "kubernetes.pod_name",
                    format!("{pod:?} must be a pod name: lowercase letters, digits, '-' and '.'"),
                ));
            }
        }
    }
    Ok(())
}

/// A label value: at most 63 letters, digits, `-`, `_` and `.`, starting and ending with a
/// letter or digit (Kubernetes' rule).
fn check_label_value(key: &str, value: &str) -> Result<(), ConfigError> {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let ok = !value.is_empty()
        && value.len() <= 63
        && edge(value.chars().next())
        && edge(value.chars().last())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!(
                "{value:?} must be a label value: at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends"
            ),
        ))
    }
}

/// A label key: an optional DNS prefix and `/`, then a name with the rule of a value.
fn check_label_key(key: &str, value: &str) -> Result<(), ConfigError> {
    let name = match value.rsplit_once('/') {
        Some((prefix, name)) => {
            let ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !ok {
                return Err(ConfigError::new(key, format!("{value:?}: the prefix must be a DNS subdomain")));
            }
            name
        }
        None => value,
    };
    check_label_value(key, name)
}

fn check_prefix(key: &str, prefix: &str) -> Result<(), ConfigError> {
    if !prefix.starts_with('/') || prefix.contains("//") {
        return Err(ConfigError::new(key, format!("{prefix:?} must be an absolute path like /service")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/file")
    }

    fn base(extra: &str) -> String {
        format!(
            "scope = \"demo\"\nname = \"n1\"\n{extra}\n[hooks]\ndir = {:?}\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
            hooks_dir().display().to_string()
        )
    }

    #[test]
    fn log_level_is_a_filter_named_in_its_error() {
        assert_eq!(parse(&base("")).unwrap().log_level, "info");
        assert_eq!(parse(&base("[log]\nlevel = \"warn,leasehold=debug\"")).unwrap().log_level, "warn,leasehold=debug");
        let e = parse(&base("[log]\nlevel = \"=== x\"")).unwrap_err();
        assert_eq!(e.key, "log.level", "{e}");
        let e = parse(&base("[log]\nfile = \"/var/log/x\"")).unwrap_err();
        assert!(e.to_string().contains("file"), "unknown keys are refused: {e}");
    }

    fn parse(text: &str) -> Result<DaemonConfig, ConfigError> {
        DaemonConfig::parse(text, Vec::new(), Path::new("/"))
    }

    fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<DaemonConfig, ConfigError> {
        DaemonConfig::parse(text, env.iter().map(|(k, v)| (k.to_string(), v.to_string())), Path::new("/"))
    }

    #[test]
    fn zookeeper_tls_keys_parse_and_are_checked() {
        let zk = |extra: &str| {
            let text = format!(
                "scope = \"demo\"\nname = \"n1\"\n[hooks]\ndir = {:?}\n[zookeeper]\nhosts = [\"127.0.0.1:2281\"]\n{extra}\n",
                hooks_dir().display().to_string()
            );
            parse(&text)
        };
        let c = zk("cacert = \"/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"").unwrap();
        let StoreConfig::Zookeeper(s) = &c.store else { panic!("zookeeper section: {:?}", c.store) };
        assert_eq!(s.cacert.as_deref(), Some(Path::new("/ca.pem")));
        assert!(s.verify);
        let StoreConfig::Zookeeper(s) = zk("").unwrap().store else { panic!("zookeeper section") };
        assert_eq!((s.cacert, s.cert, s.key), (None, None, None));
        assert_eq!(zk("cert = \"/c.pem\"\nkey = \"/k.pem\"").unwrap_err().key, "zookeeper.cacert");
        assert_eq!(zk("verify = false").unwrap_err().key, "zookeeper.cacert");
        assert_eq!(zk("cacert = \"/ca.pem\"\ncert = \"/c.pem\"").unwrap_err().key, "zookeeper.key");
        assert_eq!(zk("cacert = \"/ca.pem\"\nkey = \"/k.pem\"").unwrap_err().key, "zookeeper.cert");
    }

    /// A ttl a ZooKeeper server with default settings would clamp (its session timeout range
    /// is [2, 20] x tickTime = [4 s, 40 s]) is refused naming `ttl`, the rule and that another
    /// tickTime differs; the bounds themselves are accepted.
    #[test]
    fn a_ttl_outside_zookeepers_default_session_timeouts_is_refused() {
        let zk = |timing: &str| {
            let text = format!(
                "scope = \"demo\"\nname = \"n1\"\n{timing}\n[hooks]\ndir = {:?}\n[zookeeper]\nhosts = [\"127.0.0.1:2181\"]\n",
                hooks_dir().display().to_string()
            );
            parse(&text)
        };
        let short = "ttl = \"3s\"\nloop_wait = \"1s\"\nretry_timeout = \"1s\"\nsafety_margin = \"500ms\"";
        let e = zk(short).unwrap_err();
        assert_eq!(e.key, "ttl", "{e}");
        for needle in ["3s is outside", "[2, 20] x tickTime = [4s, 40s]", "tickTime 2000 ms", "another tickTime"] {
            assert!(e.message.contains(needle), "{needle:?} in {e}");
        }
        let e = zk("ttl = \"41s\"").unwrap_err();
        assert_eq!(e.key, "ttl", "{e}");
        assert!(e.message.contains("41s is outside"), "{e}");
        let low = "ttl = \"4s\"\nloop_wait = \"1s\"\nretry_timeout = \"1s\"\nsafety_margin = \"500ms\"";
        assert!(zk(low).is_ok(), "{:?}", zk(low).err());
        assert!(zk("ttl = \"40s\"").is_ok(), "{:?}", zk("ttl = \"40s\"").err());
        // The default ttl (30 s) is within the range.
        assert!(zk("").is_ok(), "{:?}", zk("").err());
    }

    /// Issue 14: a ttl Consul cannot honour (its session TTL has a 10 s floor, and the
    /// backend asks for ttl / 2) is refused by `--check-config`, naming the floor.
    #[test]
    fn consul_ttl_below_the_session_floor_is_refused_before_start() {
        let consul = |ttl: u64| {
            let text = format!(
                "scope = \"demo\"\nname = \"n1\"\nttl = \"{ttl}s\"\nloop_wait = \"2s\"\nretry_timeout = \"4s\"\n\
                 [hooks]\ndir = {:?}\n[consul]\naddress = \"http://127.0.0.1:8500\"\n",
                hooks_dir().display().to_string()
            );
            parse(&text)
        };
        let e = consul(10).unwrap_err();
        assert_eq!(e.key, "ttl", "{e}");
        assert!(e.message.contains("10"), "the message names Consul's floor: {e}");
        assert!(consul(20).is_ok(), "{:?}", consul(20).err());
    }

    /// Issue 18: `[consul]` takes Patroni's `cacert` / `cert` / `key`; a bad combination is
    /// refused by `--check-config`, naming the key.
    #[test]
    fn consul_tls_keys_are_checked_naming_the_key() {
        let consul = |address: &str, extra: &str| {
            let text = format!(
                "scope = \"demo\"\nname = \"n1\"\nttl = \"30s\"\n[hooks]\ndir = {:?}\n[consul]\naddress = \"{address}\"\n{extra}\n",
                hooks_dir().display().to_string()
            );
            parse(&text)
        };
        let c = consul("https://127.0.0.1:8501", "cacert = \"/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"").unwrap();
        let StoreConfig::Consul(s) = &c.store else { panic!("consul section") };
        let options = crate::store::consul_options(s, &c.timing);
        let tls = options.tls.expect("TLS settings reach the client");
        assert_eq!(tls.ca_cert.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(
            (tls.client_cert.as_deref(), tls.client_key.as_deref()),
            (Some(Path::new("/c.pem")), Some(Path::new("/k.pem")))
        );
        for (address, extra, key) in [
            ("http://127.0.0.1:8500", "cacert = \"/ca.pem\"", "consul.cacert"),
            ("https://127.0.0.1:8501", "cert = \"/c.pem\"", "consul.key"),
            ("https://127.0.0.1:8501", "key = \"/k.pem\"", "consul.cert"),
            ("https://127.0.0.1:8501", "cafile = \"/ca.pem\"", "consul.cafile"),
        ] {
            let e = consul(address, extra).unwrap_err();
            assert_eq!(e.key, key, "{extra}: {e}");
        }
    }

    /// The pod role label keys take Patroni's names and defaults, and bad values name the key.
    #[test]
    fn kubernetes_role_label_keys() {
        let kube = |extra: &str| {
            let text = format!(
                "scope = \"demo\"\nname = \"n1\"\n[hooks]\ndir = {:?}\n[kubernetes]\n{extra}\n",
                hooks_dir().display().to_string()
            );
            parse(&text)
        };
        let StoreConfig::Kubernetes(s) = kube("").unwrap().store else { panic!("kubernetes section") };
        assert_eq!(
            (s.pod_name, s.role_label.as_str(), s.leader_label_value.as_str(), s.follower_label_value.as_str()),
            (None, "role", "primary", "replica")
        );
        assert_eq!(s.scope_label, "cluster-name");
        let StoreConfig::Kubernetes(s) = kube("leader_label_value = \"master\"\npod_name = \"pg-0\"").unwrap().store
        else {
            panic!("kubernetes section")
        };
        assert_eq!((s.leader_label_value.as_str(), s.pod_name.as_deref()), ("master", Some("pg-0")));
        let key = |extra: &str| kube(extra).unwrap_err().key;
        assert_eq!(key("role_label = \"bad key!\""), "kubernetes.role_label");
        assert_eq!(key("scope_label = \"/x\""), "kubernetes.scope_label");
        assert_eq!(key("leader_label_value = \"-primary\""), "kubernetes.leader_label_value");
        assert_eq!(key("follower_label_value = \"primary\""), "kubernetes.follower_label_value");
        assert_eq!(key("pod_name = \"Pg_0\""), "kubernetes.pod_name");
    }

    #[test]
    fn synchronous_mode_needs_the_postgresql_resource() {
        let e = parse(&base("synchronous_mode = true")).unwrap_err();
        assert_eq!(e.key, "synchronous_mode");
        assert!(e.message.contains("[postgresql]"), "{e}");
    }

    fn pg(top: &str, section: &str) -> Result<DaemonConfig, ConfigError> {
        let listen = if section.contains("listen") { "" } else { "listen = \"127.0.0.1:5433\"" };
        let text = format!(
            "scope = \"demo\"\nname = \"n1\"\n{top}\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n\
             [postgresql]\ndata_dir = \"/srv/pg/n1\"\n{listen}\n{section}\n\
             [postgresql.authentication.superuser]\npassword = \"su-pw\"\n\
             [postgresql.authentication.replication]\nusername = \"repl\"\npassword = \"repl-pw\"\n"
        );
        parse(&text)
    }

    #[test]
    fn synchronous_node_count_reaches_the_node_and_zero_is_refused() {
        if !Path::new("/usr/lib/postgresql/15/bin/pg_rewind").exists() {
            eprintln!("skipped: PostgreSQL 15 is not installed (scripts/setup.sh)");
            return;
        }
        let c = pg("synchronous_mode = true\nsynchronous_node_count = 2", "").unwrap();
        assert_eq!(c.synchronous_node_count.get(), 2);
        let node = c.node_config(1);
        assert_eq!(node.synchronous_node_count.get(), 2);
        assert!(node.synchronous_mode && !node.synchronous_mode_strict);
        let e = pg("synchronous_mode = true\nsynchronous_node_count = 0", "").unwrap_err();
        assert_eq!(e.key, "synchronous_node_count");
        assert!(e.message.contains("at least 1"), "{e}");
        // A negative count fails in the TOML parser, whose message quotes the line.
        let e = pg("synchronous_mode = true\nsynchronous_node_count = -1", "").unwrap_err();
        assert!(e.to_string().contains("synchronous_node_count"), "{e}");
    }

    #[test]
    fn postgresql_section_takes_patroni_names_and_defaults() {
        if !Path::new("/usr/lib/postgresql/15/bin/pg_rewind").exists() {
            eprintln!("skipped: PostgreSQL 15 is not installed (scripts/setup.sh)");
            return;
        }
        let c = pg("synchronous_mode = true\nsynchronous_mode_strict = true", "").unwrap();
        let ResourceConfig::Postgres(p) = &c.resource else { panic!("postgresql resource") };
        assert!(c.synchronous_mode && c.synchronous_mode_strict);
        assert_eq!(c.synchronous_node_count.get(), 1);
        assert!(c.node_config(1).synchronous_mode_strict, "strict mode reaches the node");
        assert_eq!((p.port, p.connect_address.as_str()), (5433, "127.0.0.1:5433"));
        assert_eq!(p.superuser.username, "postgres");
        assert_eq!(p.replication.username, "repl");
        assert!(p.use_slots && p.use_pg_rewind && !p.remove_data_directory_on_rewind_failure);
        assert_eq!(c.node_config(1).conn_url.as_deref(), Some("postgresql://127.0.0.1:5433/postgres"));
        assert!(!format!("{p:?}").contains("su-pw"), "passwords stay out of debug output");
        assert_eq!(c.watchdog.mode, WatchdogMode::Automatic);

        let key = |top: &str, section: &str| pg(top, section).unwrap_err().key;
        assert_eq!(key("synchronous_mode_strict = true", ""), "synchronous_mode_strict");
        assert_eq!(key("synchronous_mode = true\nsynchronous_node_count = 0", ""), "synchronous_node_count");
        assert_eq!(key("conn_url = \"x\"", ""), "conn_url");
        assert_eq!(key("", "[postgresql.parameters]\nport = 1"), "postgresql.parameters.port");
        assert_eq!(
            key("", "[postgresql.parameters]\nsynchronous_standby_names = \"*\""),
            "postgresql.parameters.synchronous_standby_names"
        );
        assert_eq!(key("", "[postgresql.parameters]\nwal_log_hints = false"), "postgresql.parameters.wal_log_hints");
        assert_eq!(key("", "bin_dir = \"/nowhere\""), "postgresql.bin_dir");
        assert_eq!(key("", "listen = \"5432\""), "postgresql.listen");
        assert_eq!(key("", "listen = \"0.0.0.0:5432\""), "postgresql.connect_address");
        assert_eq!(key("", "create_replica_methods = [\"wal_e\"]"), "postgresql.create_replica_methods");
        let text = base("").replace("[etcd]", "[postgresql]\ndata_dir = \"/x\"\n[etcd]");
        assert_eq!(parse(&text).unwrap_err().key, "hooks|postgresql");
        let e = pg("", "").map(|_| ()).and_then(|_| {
            parse(
                "scope = \"d\"\nname = \"n\"\n[etcd]\nendpoints = [\"http://a:1\"]\n[postgresql]\ndata_dir = \"/x\"\n\
                 [postgresql.authentication.superuser]\npassword = \"p\"\n",
            )
            .map(|_| ())
        });
        assert_eq!(e.unwrap_err().key, "postgresql.authentication.replication");
    }

    #[test]
    fn minimal_config_takes_patroni_defaults() {
        let c = parse(&base("")).unwrap();
        assert_eq!(c.scope, "demo");
        assert_eq!(c.timing.ttl, Duration::from_secs(30));
        assert_eq!(c.timing.loop_wait, Duration::from_secs(10));
        assert_eq!(c.timing.maximum_lag_on_failover, 1 << 20);
        assert_eq!(c.restapi.listen, "127.0.0.1:8008".parse().unwrap());
        assert_eq!(c.restapi.connect_url, "http://127.0.0.1:8008");
        assert_eq!(c.watchdog.mode, WatchdogMode::Automatic);
        assert!(matches!(c.store, StoreConfig::Etcd(ref e) if e.prefix == "/service"));
        let ResourceConfig::Hooks(h) = &c.resource else { panic!("hooks resource") };
        assert_eq!(h.status, hooks_dir().join("status"));
    }

    #[test]
    fn the_sample_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("leasehold-ha.sample.toml");
        let c = DaemonConfig::load(&path).unwrap();
        assert_eq!(c.name, "node1");
        assert_eq!(c.tags.failover_priority, 1);
    }

    #[test]
    fn short_ttl_gets_a_fitting_margin() {
        let c = parse(&base("ttl = 5\nloop_wait = \"1s\"\nretry_timeout = \"1500ms\"")).unwrap();
        assert_eq!(c.timing.safety_margin, Duration::from_secs(1));
    }

    #[test]
    fn timing_errors_name_the_key_and_rule() {
        let e = parse(&base("ttl = 10\nloop_wait = 5\nretry_timeout = 5")).unwrap_err();
        assert_eq!(e.key, "ttl");
        assert!(e.message.contains("loop_wait + 2 * retry_timeout <= ttl"), "{e}");
        let e = parse(&base("ttl = \"ten\"")).unwrap_err();
        assert!(e.to_string().contains("ttl") && e.message.contains("duration"), "{e}");
    }

    #[test]
    fn etcd_tls_files_are_checked_by_check_config() {
        let https = |extra: &str| {
            parse(&base("").replace(
                "endpoints = [\"http://127.0.0.1:2379\"]",
                &format!("endpoints = [\"https://127.0.0.1:2379\"]\n{extra}"),
            ))
        };
        let e = https("").unwrap_err();
        assert_eq!(e.key, "etcd.cacert", "{e}");
        assert!(e.message.contains("required with https://"), "{e}");
        let e = https("cacert = \"/ca.pem\"\ncert = \"/c.pem\"").unwrap_err();
        assert_eq!(e.key, "etcd.key", "{e}");
        let c = https("cacert = \"/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"").unwrap();
        let StoreConfig::Etcd(s) = &c.store else { panic!("an etcd section") };
        assert_eq!(s.cacert.as_deref(), Some(Path::new("/ca.pem")));
        // TLS files with plain http:// endpoints are a mistake, named at the endpoints.
        let plain = parse(&base("").replace(
            "endpoints = [\"http://127.0.0.1:2379\"]",
            "endpoints = [\"http://127.0.0.1:2379\"]\ncacert = \"/ca.pem\"",
        ))
        .unwrap_err();
        assert_eq!(plain.key, "etcd.endpoints", "{plain}");
    }

    #[test]
    fn an_etcd_member_ttl_shorter_than_the_ttl_is_refused_naming_the_key() {
        let with = |value: &str| {
            parse(&base("").replace(
                "endpoints = [\"http://127.0.0.1:2379\"]",
                &format!("endpoints = [\"http://127.0.0.1:2379\"]\nmember_ttl = {value}"),
            ))
        };
        let e = with("\"10s\"").unwrap_err();
        assert_eq!(e.key, "etcd.member_ttl", "{e}");
        assert!(e.message.contains("shorter than timing.ttl"), "{e}");
        let e = with("\"soon\"").unwrap_err();
        assert!(e.to_string().contains("member_ttl"), "{e}");
        let c = with("120").unwrap();
        let StoreConfig::Etcd(s) = &c.store else { panic!("an etcd section") };
        assert_eq!(s.member_ttl, Some(Duration::from_secs(120)));
        #[cfg(feature = "etcd")]
        assert_eq!(crate::store::etcd_options(s, &c.timing).member_ttl, Some(Duration::from_secs(120)));
    }

    #[test]
    fn a_ttl_etcd_cannot_grant_is_refused() {
        let e = parse(&base(
            "ttl = \"1500ms\"\nloop_wait = \"100ms\"\nretry_timeout = \"200ms\"\nsafety_margin = \"300ms\"",
        ))
        .unwrap_err();
        assert_eq!(e.key, "ttl", "{e}");
        assert!(e.message.contains("etcd's minimum lease TTL"), "{e}");
    }

    #[test]
    fn type_errors_name_the_field() {
        let e = parse(&base("ttl = \"ten\"")).unwrap_err();
        assert_eq!(e.key, "ttl", "{e}");
        let e = parse(&base("failsafe_mode = \"yes\"")).unwrap_err();
        assert_eq!(e.key, "failsafe_mode", "{e}");
        let e = parse(&base("[tags]\nfailover_priority = \"high\"")).unwrap_err();
        assert_eq!(e.key, "tags.failover_priority", "{e}");
        let e = parse(&base("").replace("endpoints = [\"http://127.0.0.1:2379\"]", "endpoints = 7")).unwrap_err();
        assert_eq!(e.key, "etcd.endpoints", "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse(&base("tll = 30")).unwrap_err();
        assert_eq!(e.key, "tll");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn required_keys_are_named() {
        let e = parse("name = \"n1\"\n[etcd]\nendpoints = \"http://a:1\"").unwrap_err();
        assert_eq!(e.key, "scope");
        let e = parse(&base("").replace("name = \"n1\"", "name = \"bad/name\"")).unwrap_err();
        assert_eq!(e.key, "name");
        assert!(e.message.contains("letters, digits"), "{e}");
    }

    #[test]
    fn exactly_one_store_section() {
        let none = base("").replace("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n", "");
        let e = parse(&none).unwrap_err();
        assert!(e.message.contains("none is present"), "{e}");
        let two = format!("{}\n[consul]\naddress = \"http://127.0.0.1:8500\"\n", base(""));
        let e = parse(&two).unwrap_err();
        assert!(e.message.contains("found etcd and consul"), "{e}");
    }

    #[test]
    fn store_sections_are_checked() {
        let e = parse(&base("").replace("http://127.0.0.1:2379", "127.0.0.1:2379")).unwrap_err();
        assert_eq!(e.key, "etcd.endpoints");
        let e = parse(&base("").replace("[\"http://127.0.0.1:2379\"]", "[]")).unwrap_err();
        assert_eq!(e.key, "etcd.endpoints");
    }

    #[test]
    fn restapi_and_hooks_are_checked() {
        let e = parse(&base("[restapi]\nlisten = \"localhost\"")).unwrap_err();
        assert_eq!(e.key, "restapi.listen");
        let e = parse(&base("[restapi]\nlisten = \"0.0.0.0:8008\"")).unwrap_err();
        assert_eq!(e.key, "restapi.connect_url");
        let e = parse(&base("[restapi]\ntoken = \"short\"")).unwrap_err();
        assert_eq!(e.key, "restapi.token");
        let e = parse(&base("").replace("hooks/file", "hooks/nowhere")).unwrap_err();
        assert_eq!(e.key, "hooks.promote");
        assert!(e.message.contains("executable"), "{e}");
        let e = parse(&base("[watchdog]\nmode = \"sometimes\"")).unwrap_err();
        assert!(e.message.contains("sometimes"), "{e}");
    }

    #[test]
    fn environment_overrides_keys() {
        let c = parse_env(
            &base(""),
            &[
                ("LEASEHOLD_TTL", "40"),
                ("LEASEHOLD_ETCD__ENDPOINTS", "http://127.0.0.1:1,http://127.0.0.1:2"),
                ("LEASEHOLD_TAGS__NOFAILOVER", "true"),
                ("LEASEHOLD_NAME", "123"),
                ("LEASEHOLD_RESTAPI__TOKEN", "s3cret-token"),
                ("LEASEHOLD_CONFIG", "/ignored"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.timing.ttl, Duration::from_secs(40));
        assert_eq!(c.name, "123");
        assert!(c.tags.nofailover);
        assert_eq!(c.restapi.token.as_deref(), Some("s3cret-token"));
        let StoreConfig::Etcd(e) = c.store else { panic!("etcd expected") };
        assert_eq!(e.endpoints.0, vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]);
    }

    #[test]
    fn environment_errors_say_where_they_came_from() {
        let e = parse_env(&base(""), &[("LEASEHOLD_LOOP_WAIT", "25")]).unwrap_err();
        assert_eq!(e.key, "ttl");
        let e = parse_env(&base(""), &[("LEASEHOLD_TLL", "25")]).unwrap_err();
        assert_eq!(e.key, "tll");
        assert!(e.message.contains("LEASEHOLD_TLL"), "{e}");
        let e = parse_env(&base(""), &[("LEASEHOLD_SCOPE__X", "1")]).unwrap_err();
        assert_eq!(e.key, "scope.x");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in ["", "=", "scope = [", "\u{0}", "[etcd]\nendpoints = 5", "ttl = -3"] {
            assert!(parse(text).is_err(), "{text:?}");
        }
    }
}
