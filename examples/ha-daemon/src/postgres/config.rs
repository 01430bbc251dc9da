//! The `[postgresql]` section, with Patroni's key names where Patroni has one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// Settings the resource writes itself; setting them in `postgresql.parameters` is an error.
const MANAGED: [&str; 9] = [
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "synchronous_standby_names",
    "primary_conninfo",
    "primary_slot_name",
    "recovery_target_timeline",
    "hba_file",
    "config_file",
];

/// The resource writes `name` itself, so configuring it is an error.
pub fn managed_parameter(name: &str) -> bool {
    MANAGED.contains(&name)
}

/// A login: user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// The role name.
    pub username: String,
    /// Its password (sent with SCRAM; never logged).
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("username", &self.username).field("password", &"<hidden>").finish()
    }
}

/// Programs run after PostgreSQL events, as Patroni's: `<program> <action> <role> <scope>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Callbacks {
    /// After PostgreSQL started.
    pub on_start: Option<PathBuf>,
    /// After PostgreSQL stopped.
    pub on_stop: Option<PathBuf>,
    /// After a promotion or a demotion.
    pub on_role_change: Option<PathBuf>,
}

/// The validated `[postgresql]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct PostgresConfig {
    /// The data directory (`PGDATA`).
    pub data_dir: PathBuf,
    /// Where `initdb`, `pg_ctl`, `pg_basebackup`, `pg_rewind` and `pg_controldata` live.
    pub bin_dir: PathBuf,
    /// The address and port PostgreSQL listens on.
    pub listen_host: String,
    /// The port.
    pub port: u16,
    /// `host:port` other members use to reach this PostgreSQL.
    pub connect_address: String,
    /// The directory of the Unix socket (the daemon's own status connection uses it).
    pub socket_dir: PathBuf,
    /// The superuser: the daemon's status connection, and `pg_rewind` against the leader.
    pub superuser: Login,
    /// The replication role standbys stream with (created by the first primary).
    pub replication: Login,
    /// Extra `postgresql.conf` settings.
    pub parameters: BTreeMap<String, String>,
    /// `pg_hba.conf` lines; empty for the default (password logins from loopback and the socket).
    pub pg_hba: Vec<String>,
    /// One physical replication slot per member on the primary.
    pub use_slots: bool,
    /// Rejoin a former primary with `pg_rewind` rather than a new base backup.
    pub use_pg_rewind: bool,
    /// After a failed rewind, delete the old data directory instead of keeping it aside.
    pub remove_data_directory_on_rewind_failure: bool,
    /// Bound for `pg_ctl` start, stop and promote.
    pub pg_ctl_timeout: Duration,
    /// The operating-system user PostgreSQL runs as when the daemon runs as root.
    pub os_user: String,
    /// Event programs.
    pub callbacks: Callbacks,
}

impl PostgresConfig {
    /// `postgresql://host:port/postgres`: what the member publishes as its `conn_url`.
    pub fn conn_url(&self) -> String {
        format!("postgresql://{}/postgres", self.connect_address)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPostgres {
    data_dir: Option<PathBuf>,
    bin_dir: Option<PathBuf>,
    listen: Option<String>,
    connect_address: Option<String>,
    #[serde(default)]
    authentication: RawAuthentication,
    #[serde(default)]
    parameters: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pg_hba: Vec<String>,
    use_slots: Option<bool>,
    use_pg_rewind: Option<bool>,
    #[serde(default)]
    remove_data_directory_on_rewind_failure: bool,
    create_replica_methods: Option<Vec<String>>,
    pg_ctl_timeout: Option<u64>,
    os_user: Option<String>,
    #[serde(default)]
    callbacks: RawCallbacks,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthentication {
    superuser: Option<RawLogin>,
    replication: Option<RawLogin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogin {
    username: Option<String>,
    password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCallbacks {
    on_start: Option<PathBuf>,
    on_stop: Option<PathBuf>,
    on_role_change: Option<PathBuf>,
}

fn login(raw: Option<RawLogin>, key: &str, default_user: &str) -> Result<Login, ConfigError> {
    let raw = raw.ok_or_else(|| {
        ConfigError::new(
            format!("postgresql.authentication.{key}"),
            "is required: a [postgresql.authentication.".to_string() + key + "] table with username and password",
        )
    })?;
    let username = raw.username.unwrap_or_else(|| default_user.to_string());
    if username.is_empty() || !username.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(ConfigError::new(
            format!("postgresql.authentication.{key}.username"),
            format!("{username:?} must be letters, digits and '_'"),
        ));
    }
    let password = raw.password.ok_or_else(|| {
        ConfigError::new(
            format!("postgresql.authentication.{key}.password"),
            "is required (logins use SCRAM passwords)",
        )
    })?;
    if password.is_empty() || password.contains('\n') || password.contains('\0') {
        return Err(ConfigError::new(
            format!("postgresql.authentication.{key}.password"),
            "must be non-empty, on one line",
        ));
    }
    Ok(Login { username, password })
}

/// `host:port` → (host, port), naming `key` on error.
fn host_port(key: &str, text: &str) -> Result<(String, u16), ConfigError> {
    let bad = || ConfigError::new(key, format!("{text:?} must be host:port, like 127.0.0.1:5432"));
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(',') || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port))
}

fn executable(key: &str, path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let ok = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if ok { Ok(()) } else { Err(ConfigError::new(key, format!("{} must be an executable file", path.display()))) }
}

impl RawPostgres {
    pub(crate) fn validate(self, base: &Path) -> Result<PostgresConfig, ConfigError> {
        let data_dir = base.join(self.data_dir.ok_or_else(|| ConfigError::new("postgresql.data_dir", "is required"))?);
        let bin_dir = base.join(self.bin_dir.unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin")));
        for program in ["initdb", "pg_ctl", "pg_basebackup", "pg_rewind", "pg_controldata", "postgres"] {
            executable("postgresql.bin_dir", &bin_dir.join(program))?;
        }
        let listen = self.listen.unwrap_or_else(|| "127.0.0.1:5432".into());
        let (listen_host, port) = host_port("postgresql.listen", &listen)?;
        let connect_address = match self.connect_address {
            Some(c) => {
                host_port("postgresql.connect_address", &c)?;
                c
            }
            None if listen_host == "0.0.0.0" || listen_host == "::" || listen_host == "*" => {
                return Err(ConfigError::new(
                    "postgresql.connect_address",
                    format!("is required when postgresql.listen ({listen}) is a wildcard address"),
                ));
            }
            None => listen.clone(),
        };
        let superuser = login(self.authentication.superuser, "superuser", "postgres")?;
        let replication = login(self.authentication.replication, "replication", "replicator")?;
        if superuser.username == replication.username {
            return Err(ConfigError::new(
                "postgresql.authentication.replication.username",
                "must differ from the superuser's: the replication role gets only the REPLICATION attribute",
            ));
        }
        let mut parameters = BTreeMap::new();
        for (k, v) in self.parameters {
            let key = format!("postgresql.parameters.{k}");
            if MANAGED.contains(&k.as_str()) {
                return Err(ConfigError::new(
                    key,
                    "is managed by leasehold-ha (from listen, replication and sync settings)",
                ));
            }
            if !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                return Err(ConfigError::new(key, "is not a PostgreSQL setting name"));
            }
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => if b { "on" } else { "off" }.to_string(),
                other => return Err(ConfigError::new(key, format!("{other} must be a string, number or boolean"))),
            };
            if text.contains('\n') {
                return Err(ConfigError::new(key, "must be on one line"));
            }
            parameters.insert(k, text);
        }
        let use_pg_rewind = self.use_pg_rewind.unwrap_or(true);
        if let Some(v) = parameters.get("wal_level")
            && v == "minimal"
        {
            return Err(ConfigError::new(
                "postgresql.parameters.wal_level",
                "minimal cannot feed standbys; use replica",
            ));
        }
        if use_pg_rewind
            && let Some(v) = parameters.get("wal_log_hints")
            && matches!(v.as_str(), "off" | "false" | "0")
        {
            return Err(ConfigError::new(
                "postgresql.parameters.wal_log_hints",
                "must stay on with use_pg_rewind (pg_rewind needs hint-bit changes in the WAL)",
            ));
        }
        if let Some(methods) = self.create_replica_methods
            && methods.iter().any(|m| m != "basebackup")
        {
            return Err(ConfigError::new(
                "postgresql.create_replica_methods",
                format!("{methods:?}: only \"basebackup\" (pg_basebackup) is supported"),
            ));
        }
        for line in &self.pg_hba {
            if line.contains('\n') {
                return Err(ConfigError::new("postgresql.pg_hba", "each entry must be one line"));
            }
        }
        let pg_ctl_timeout = Duration::from_secs(self.pg_ctl_timeout.unwrap_or(60));
        if pg_ctl_timeout.is_zero() {
            return Err(ConfigError::new("postgresql.pg_ctl_timeout", "must be at least 1 second"));
        }
        let os_user = self.os_user.unwrap_or_else(|| "postgres".into());
        let callbacks = Callbacks {
            on_start: self.callbacks.on_start.map(|p| base.join(p)),
            on_stop: self.callbacks.on_stop.map(|p| base.join(p)),
            on_role_change: self.callbacks.on_role_change.map(|p| base.join(p)),
        };
        for (key, p) in [
            ("postgresql.callbacks.on_start", &callbacks.on_start),
            ("postgresql.callbacks.on_stop", &callbacks.on_stop),
            ("postgresql.callbacks.on_role_change", &callbacks.on_role_change),
        ] {
            if let Some(p) = p {
                executable(key, p)?;
            }
        }
        let socket_dir = data_dir.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/tmp"));
        let socket_path_len = socket_dir.as_os_str().len() + format!("/.s.PGSQL.{port}.lock").len();
        if socket_path_len > 100 {
            return Err(ConfigError::new(
                "postgresql.data_dir",
                "its parent directory holds the Unix socket, and its path is too long for one (keep it under 80 bytes)",
            ));
        }
        Ok(PostgresConfig {
            data_dir,
            bin_dir,
            listen_host,
            port,
            connect_address,
            socket_dir,
            superuser,
            replication,
            parameters,
            pg_hba: self.pg_hba,
            use_slots: self.use_slots.unwrap_or(true),
            use_pg_rewind,
            remove_data_directory_on_rewind_failure: self.remove_data_directory_on_rewind_failure,
            pg_ctl_timeout,
            os_user,
            callbacks,
        })
    }
}
