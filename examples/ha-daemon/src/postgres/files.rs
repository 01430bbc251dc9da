//! Pure helpers of the PostgreSQL resource: the files it writes (`postgresql.conf`,
//! `pg_hba.conf`, connection strings) and the output it reads (`pg_controldata`, timeline
//! history files, LSNs).

use std::fmt::Write as _;

use leasehold::node::ANY_STANDBY;

use super::config::PostgresConfig;

/// What this member runs as, for `postgresql.conf`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role<'a> {
    /// A primary with these synchronous standby names (`None`: no synchronous replication).
    Primary {
        /// The `synchronous_standby_names` value, already formatted.
        sync: Option<String>,
    },
    /// A standby streaming from `upstream` (a libpq connection string), or from nobody.
    Standby {
        /// `primary_conninfo`.
        upstream: Option<&'a str>,
        /// `primary_slot_name`.
        slot: Option<String>,
    },
}

/// Quotes a `postgresql.conf` string value.
pub fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes a libpq connection-string value.
pub fn conninfo_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A replication slot name for member `name` (Patroni's rule: lower case, `[a-z0-9_]`).
pub fn slot_name(name: &str) -> String {
    let s: String =
        name.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).take(63).collect();
    s
}

/// `synchronous_standby_names` for `names`: `N (a, b, ...)` with N the number of names, so a
/// commit waits for every one of them (any may be promoted); `*` when the node asks for
/// [`ANY_STANDBY`] (strict mode without a standby), and also for an empty list in strict mode
/// (the setting a promotion starts with); nothing without a standby otherwise.
pub fn sync_standby_names(names: &[String], strict: bool) -> Option<String> {
    if names.is_empty() {
        return strict.then(|| ANY_STANDBY.to_string());
    }
    if names == [ANY_STANDBY] {
        return Some(ANY_STANDBY.to_string());
    }
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{}\"", n.replace('"', "\"\""))).collect();
    Some(format!("{} ({})", names.len(), quoted.join(", ")))
}

/// The whole `postgresql.conf` (rewritten before every start and every reconfiguration, so a
/// base backup or a rewind, which copy the leader's files, never leave the leader's settings).
pub fn postgresql_conf(cfg: &PostgresConfig, role: &Role<'_>) -> String {
    let mut s = String::from("# Written by leasehold-ha before every start; edits here are overwritten.\n");
    let _ = writeln!(s, "listen_addresses = {}", conf_quote(&cfg.listen_host));
    let _ = writeln!(s, "port = {}", cfg.port);
    let _ = writeln!(s, "unix_socket_directories = {}", conf_quote(&cfg.socket_dir.display().to_string()));
    // Defaults a replicated, rewindable cluster needs; `parameters` may override them.
    let defaults = [
        ("wal_level", "replica"),
        ("hot_standby", "on"),
        ("wal_log_hints", "on"),
        ("max_wal_senders", "10"),
        ("max_replication_slots", "10"),
        ("wal_keep_size", "'128MB'"),
        ("max_connections", "100"),
        ("wal_retrieve_retry_interval", "'1s'"),
    ];
    for (k, v) in defaults {
        if !cfg.parameters.contains_key(k) {
            let _ = writeln!(s, "{k} = {v}");
        }
    }
    for (k, v) in &cfg.parameters {
        let _ = writeln!(s, "{k} = {}", conf_quote(v));
    }
    // The dynamic configuration's parameters, after the file's so they win (the file gives
    // bootstrap defaults), before the settings the resource manages (which they cannot name).
    let _ = writeln!(s, "include_if_exists = {}", conf_quote(DYNAMIC_CONF));
    match role {
        Role::Primary { sync } => {
            let _ = writeln!(s, "synchronous_standby_names = {}", conf_quote(sync.as_deref().unwrap_or("")));
        }
        Role::Standby { upstream, slot } => {
            if let Some(u) = upstream {
                let _ = writeln!(s, "primary_conninfo = {}", conf_quote(u));
            }
            if let Some(slot) = slot {
                let _ = writeln!(s, "primary_slot_name = {}", conf_quote(slot));
            }
            let _ = writeln!(s, "recovery_target_timeline = 'latest'");
        }
    }
    s
}

/// The file, in the data directory, holding the dynamic configuration's PostgreSQL parameters.
pub const DYNAMIC_CONF: &str = "leasehold-dynamic.conf";

/// The text of [`DYNAMIC_CONF`].
pub fn dynamic_conf(parameters: &std::collections::BTreeMap<String, String>) -> String {
    let mut s = String::from("# The store's dynamic configuration (ctl edit-config); rewritten when it changes.\n");
    for (k, v) in parameters {
        let _ = writeln!(s, "{k} = {}", conf_quote(v));
    }
    s
}

/// `pg_hba.conf`: the configured lines, or password logins over the socket and loopback.
pub fn pg_hba(cfg: &PostgresConfig) -> String {
    let mut s = String::from("# Written by leasehold-ha before every start.\n");
    if cfg.pg_hba.is_empty() {
        let r = &cfg.replication.username;
        s.push_str("local all all scram-sha-256\n");
        s.push_str("host all all 127.0.0.1/32 scram-sha-256\n");
        s.push_str("host all all ::1/128 scram-sha-256\n");
        let _ = writeln!(s, "local replication {r} scram-sha-256");
        let _ = writeln!(s, "host replication {r} 127.0.0.1/32 scram-sha-256");
        let _ = writeln!(s, "host replication {r} ::1/128 scram-sha-256");
    } else {
        for line in &cfg.pg_hba {
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}

/// The parts of a member's `conn_url` (`postgresql://host:port/...` or `host=.. port=..`).
pub fn parse_conn_url(url: &str) -> Option<(String, u16)> {
    if let Some(rest) = url.strip_prefix("postgresql://").or_else(|| url.strip_prefix("postgres://")) {
        let hostport = rest.split(['/', '?']).next()?;
        let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
        let (h, p) = hostport.rsplit_once(':')?;
        return Some((h.trim_start_matches('[').trim_end_matches(']').to_string(), p.parse().ok()?));
    }
    let mut host = None;
    let mut port = 5432;
    for part in url.split_whitespace() {
        match part.split_once('=') {
            Some(("host", h)) => host = Some(h.to_string()),
            Some(("port", p)) => port = p.parse().ok()?,
            _ => {}
        }
    }
    Some((host?, port))
}

/// A libpq connection string to `host:port` as `user`.
pub fn conninfo(host: &str, port: u16, user: &str, password: &str, application_name: &str, dbname: &str) -> String {
    format!(
        "host={} port={port} user={} password={} application_name={} dbname={dbname} connect_timeout=3",
        conninfo_quote(host),
        conninfo_quote(user),
        conninfo_quote(password),
        conninfo_quote(application_name)
    )
}

/// `Database cluster state` of `pg_controldata`, as the rejoin logic needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// `shut down`: a primary stopped cleanly.
    ShutDown,
    /// `in production` (or `in crash recovery`, `shutting down`): a primary that did not stop cleanly.
    Crashed,
    /// `shut down in recovery` or `in archive recovery`: a standby.
    Standby,
}

/// Parses `pg_controldata` output: the state and the latest checkpoint's timeline.
pub fn parse_controldata(out: &str) -> Option<(ClusterState, u64)> {
    let field = |name: &str| {
        out.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == name).map(|(_, v)| v.trim()))
    };
    let state = match field("Database cluster state")? {
        "shut down" => ClusterState::ShutDown,
        "in production" | "in crash recovery" | "shutting down" => ClusterState::Crashed,
        "shut down in recovery" | "in archive recovery" => ClusterState::Standby,
        _ => return None,
    };
    let tli = field("Latest checkpoint's TimeLineID")?.parse().ok()?;
    Some((state, tli))
}

/// Parses an LSN (`16/B374D848`) into bytes.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// In a timeline history file, the position where the history left `timeline`.
pub fn switchpoint(history: &str, timeline: u64) -> Option<u64> {
    history.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let tli: u64 = f.next()?.parse().ok()?;
        (tli == timeline).then(|| f.next().and_then(parse_lsn)).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_names() {
        assert_eq!(conf_quote("it's"), "'it''s'");
        assert_eq!(conninfo_quote("a'b\\c"), "'a\\'b\\\\c'");
        assert_eq!(slot_name("Node-1.x"), "node_1_x");
        assert_eq!(sync_standby_names(&[], false), None);
        assert_eq!(sync_standby_names(&[], true).as_deref(), Some("*"));
        assert_eq!(sync_standby_names(&["n2".into()], true).as_deref(), Some("1 (\"n2\")"));
        assert_eq!(
            sync_standby_names(&["n2".into(), "n3".into()], false).as_deref(),
            Some("2 (\"n2\", \"n3\")"),
            "a commit waits for every standby the node named"
        );
        assert_eq!(sync_standby_names(&[ANY_STANDBY.into()], true).as_deref(), Some("*"));
        assert_eq!(sync_standby_names(&[ANY_STANDBY.into()], false).as_deref(), Some("*"), "the node asked for it");
    }

    #[test]
    fn conn_urls_in_both_forms() {
        assert_eq!(parse_conn_url("postgresql://127.0.0.1:5433/postgres"), Some(("127.0.0.1".into(), 5433)));
        assert_eq!(parse_conn_url("postgres://u@db:5432"), Some(("db".into(), 5432)));
        assert_eq!(parse_conn_url("host=h port=7 dbname=x"), Some(("h".into(), 7)));
        assert_eq!(parse_conn_url("dbname=x"), None);
        assert_eq!(parse_conn_url("postgresql://h:port/"), None);
    }

    #[test]
    fn controldata_history_and_lsn() {
        let out = "pg_control version number:            1300\nDatabase cluster state:               in production\nLatest checkpoint's TimeLineID:       3\n";
        assert_eq!(parse_controldata(out), Some((ClusterState::Crashed, 3)));
        let out = out.replace("in production", "shut down in recovery");
        assert_eq!(parse_controldata(&out), Some((ClusterState::Standby, 3)));
        assert_eq!(parse_controldata("garbage"), None);
        assert_eq!(parse_lsn("1/10"), Some((1 << 32) + 16));
        assert_eq!(parse_lsn("x"), None);
        let h = "1\t0/3000060\tno recovery target specified\n\n2\t0/5000108\tno recovery target specified\n";
        assert_eq!(switchpoint(h, 1), Some(0x3000060));
        assert_eq!(switchpoint(h, 2), Some(0x5000108));
        assert_eq!(switchpoint(h, 3), None);
    }
}
