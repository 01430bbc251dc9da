//! `leasehold-ha ctl`: reads the store directly (linearizable loads) and acts through the
//! leader's REST API, falling back to writing the control keys itself when no API answers.
//!
//! Members' APIs are reached over HTTPS when they publish `https://` URLs, verified against
//! `ctl.cacert` (else `restapi.cafile`), with `ctl.certfile` / `ctl.keyfile` as the client
//! certificate. Verbs that act (`restart`, `reload`, `reinit`, `remove`) ask for confirmation
//! on stdin unless `--force`, like patronictl.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use leasehold::{ClusterView, ControlKey, Dcs, Expect, FailoverRecord, Record, WallTime};
use serde_json::Value;

use crate::api::StatusDoc;
use crate::config::DaemonConfig;
use crate::{dynamic, store};

/// The ctl commands.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// A table of members: role, state, lag, epoch and the lease's remaining time.
    List {
        /// `pretty` (a table), `json` or `yaml`.
        #[arg(long, value_enum, default_value_t = Format::Pretty)]
        format: Format,
    },
    /// The leader steps down gracefully, to `--candidate` or the best member; now, or at
    /// `--scheduled` (cancel with `flush switchover`).
    Switchover {
        /// The member that should take over.
        #[arg(long)]
        candidate: Option<String>,
        /// How long to wait for the new leader, in seconds (not with `--scheduled`).
        #[arg(long, default_value_t = 60)]
        wait: u64,
        /// Switch over at this time instead of now: RFC 3339 with an offset, e.g.
        /// `2026-12-07T03:00+00:00` (`now`: at once). The schedule is kept in the store.
        #[arg(long, value_name = "TIME")]
        scheduled: Option<String>,
    },
    /// Promote `--candidate`, also when there is no healthy leader.
    Failover {
        /// The member to promote.
        #[arg(long)]
        candidate: String,
        /// How long to wait for the new leader, in seconds.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Maintenance mode: no automatic failover.
    Pause,
    /// Leave maintenance mode.
    Resume,
    /// The connection URL of the leader's resource, or of `--member` (patronictl's `dsn`).
    Dsn {
        /// A member other than the leader.
        #[arg(long)]
        member: Option<String>,
    },
    /// The dynamic configuration in the store (the `config` key).
    ShowConfig {
        /// `json` (also `pretty`) or `yaml` (as patronictl shows it).
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Change the dynamic configuration: validated, shown as a diff, confirmed (or `--force`),
    /// written with compare-and-set.
    EditConfig {
        /// `key=value`, e.g. `ttl=20` or `postgresql.parameters.work_mem=8MB`; `key=null` removes.
        #[arg(short = 's', long = "set")]
        set: Vec<String>,
        /// A PostgreSQL parameter, `name=value`.
        #[arg(short = 'p', long = "pg")]
        pg: Vec<String>,
        /// A JSON file (`-` for standard input) merged into the document first (a merge patch:
        /// `null` removes a key).
        #[arg(long)]
        apply: Option<std::path::PathBuf>,
        /// Write without asking.
        #[arg(long)]
        force: bool,
    },
    /// The promotion history.
    History {
        /// `pretty` (a table), `json` or `yaml`.
        #[arg(long, value_enum, default_value_t = Format::Pretty)]
        format: Format,
    },
    /// The leader and the replicas that follow it, as a tree.
    Topology {
        /// `pretty` (a tree), `json` or `yaml`.
        #[arg(long, value_enum, default_value_t = Format::Pretty)]
        format: Format,
    },
    /// Restart a member's resource in its current role (its `POST /restart`).
    Restart {
        /// The member.
        member: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
        /// How long to wait for the restart, in seconds.
        #[arg(long, default_value_t = 120)]
        wait: u64,
        /// Restart at this time instead of now: RFC 3339 with an offset, e.g.
        /// `2026-12-07T03:00+00:00` (`now`: at once). Kept by the member's daemon; cancel with
        /// `flush restart`.
        #[arg(long, value_name = "TIME")]
        scheduled: Option<String>,
    },
    /// Cancel what is scheduled: `flush switchover` (the cluster's), `flush restart [MEMBER]...`
    /// (every member's, or those named), as patronictl's `flush`.
    Flush {
        /// `switchover` or `restart`.
        #[arg(value_enum)]
        target: FlushTarget,
        /// `restart` only: the members whose schedules to cancel (default: all).
        members: Vec<String>,
    },
    /// Make a member's resource re-read its configuration (its `POST /reload`).
    Reload {
        /// The member.
        member: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// A replica throws its data away and copies it anew from the leader (its `POST
    /// /reinitialize`). Refused on the leader.
    Reinit {
        /// The replica.
        member: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
        /// How long to wait for the copy, in seconds.
        #[arg(long, default_value_t = 3600)]
        wait: u64,
    },
    /// Delete a leader key that does not decode (it blocks elections), after its key is typed
    /// on stdin: only if it still holds exactly what was read (etcd, ZooKeeper, Consul and
    /// Kubernetes alike). A valid leader record is never removed.
    RemoveGarbageLeader {
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Wipe the scope's keys from the store, after the scope's name is typed on stdin.
    /// Refused while a member is registered (alive) unless `--force`.
    Remove {
        /// Also while members are alive (their leader and member keys go with their sessions).
        #[arg(long)]
        force: bool,
    },
}

/// What `flush` cancels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlushTarget {
    /// The scheduled switchover (in the store).
    Switchover,
    /// Scheduled restarts (kept by each member's daemon).
    Restart,
}

/// Reads a `--scheduled` value: `None` for `now`, else an RFC 3339 time with an offset.
fn parse_scheduled(text: Option<&str>) -> anyhow::Result<Option<WallTime>> {
    match text.map(str::trim) {
        None => Ok(None),
        Some(t) if t.eq_ignore_ascii_case("now") => Ok(None),
        Some(t) => WallTime::parse(t).map(Some).context("--scheduled"),
    }
}

/// How `list`, `history` and `topology` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table for people.
    Pretty,
    /// One JSON document, for scripts.
    Json,
    /// The same document as YAML.
    Yaml,
}

/// A record in the store that does not decode, as `ctl list` shows it.
#[derive(Debug, serde::Serialize)]
struct Garbage {
    kind: &'static str,
    key: String,
    reason: String,
    consequence: &'static str,
    /// For a leader key: how to clear it (nothing else will while it is bound to a live lease).
    what_to_do: Option<String>,
}

/// The view's undecodable records with what they mean.
fn garbage(view: &ClusterView) -> Vec<Garbage> {
    view.problems
        .iter()
        .map(|p| Garbage {
            kind: p.what,
            key: p.key.clone(),
            reason: p.reason.clone(),
            consequence: leasehold::record::garbage_consequence(p.what),
            what_to_do: (p.what == "leader").then(|| {
                format!(
                    "check what wrote it, then delete {} with `ctl remove-garbage-leader` (it deletes the key only if it still holds what was read, never a valid record); members elect a leader at their next loop",
                    p.key
                )
            }),
        })
        .collect()
}

/// Prints `doc` as JSON or YAML (`Pretty` is the caller's own rendering).
fn print_doc(format: Format, doc: &impl serde::Serialize) -> anyhow::Result<()> {
    match format {
        Format::Yaml => print!("{}", serde_saphyr::to_string(doc).context("cannot render YAML")?),
        _ => println!("{}", serde_json::to_string_pretty(doc)?),
    }
    Ok(())
}

/// Asks `question` on stdout and reads one line from stdin; `Ok` only when the answer is
/// `expected` (an empty or closed stdin is a no).
fn confirm(question: &str, expected: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    print!("{question} ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() == expected { Ok(()) } else { bail!("not confirmed (expected {expected:?}); nothing was done") }
}

struct Ctl {
    config: DaemonConfig,
    dcs: std::sync::Arc<dyn Dcs>,
    http: reqwest::Client,
    tls: crate::tls::ClientTls,
}

/// Runs one ctl command; prints to stdout. Returns the process exit code.
pub async fn run(config: DaemonConfig, command: CtlCommand) -> anyhow::Result<i32> {
    let store = store::connect(&config.store, &config.scope, &config.timing)
        .await
        .with_context(|| format!("cannot connect to the {} store", config.store.kind()))?;
    let tls = config.ctl_tls();
    let http = tls.http_client(Duration::from_secs(2))?;
    let ctl = Ctl { config, dcs: store.dcs.clone(), http, tls };
    let code = match command {
        CtlCommand::List { format } => {
            let view = ctl.load().await?;
            let rows = ctl.rows(&view).await;
            match format {
                Format::Pretty => print!("{}", ctl.table(&view, &rows)),
                _ => print_doc(format, &ctl.list_json(&view, &rows))?,
            }
            0
        }
        CtlCommand::Dsn { member } => {
            let view = ctl.load().await?;
            let name = match member.or_else(|| view.leader.as_ref().map(|l| l.record.member.clone())) {
                Some(n) => n,
                None => bail!("there is no leader; name a member with --member"),
            };
            let url = view
                .leader
                .as_ref()
                .filter(|l| l.record.member == name)
                .and_then(|l| l.record.conn_url.clone())
                .or_else(|| view.member(&name).and_then(|m| m.conn_url.clone()));
            match url {
                Some(u) => println!("{u}"),
                None if view.member(&name).is_none() => {
                    bail!("{name} is not a registered member of {}", ctl.config.scope)
                }
                None => bail!("{name} publishes no connection URL"),
            }
            0
        }
        CtlCommand::History { format } => {
            let view = ctl.load().await?;
            match format {
                Format::Pretty => print!("{}", history_table(&view)),
                _ => {
                    let entries: Vec<leasehold::HistoryEntry> =
                        view.history.iter().flat_map(|h| h.value.0.iter().cloned()).collect();
                    print_doc(format, &entries)?
                }
            }
            0
        }
        CtlCommand::Topology { format } => {
            let view = ctl.load().await?;
            let rows = ctl.rows(&view).await;
            match format {
                Format::Pretty => print!("{}", ctl.topology_tree(&view, &rows)),
                _ => print_doc(format, &ctl.topology_doc(&view, &rows))?,
            }
            0
        }
        CtlCommand::Restart { member, force, wait, scheduled } => match parse_scheduled(scheduled.as_deref())? {
            None => ctl.member_action(&member, "restart", "/restart", force, Duration::from_secs(wait)).await?,
            Some(at) => ctl.schedule_restart(&member, at, force).await?,
        },
        CtlCommand::Flush { target: FlushTarget::Switchover, members } => {
            if !members.is_empty() {
                bail!("flush switchover takes no member names (the switchover is the cluster's)");
            }
            ctl.flush_switchover().await?
        }
        CtlCommand::Flush { target: FlushTarget::Restart, members } => ctl.flush_restart(&members).await?,
        CtlCommand::Reload { member, force } => {
            ctl.member_action(&member, "reload", "/reload", force, Duration::from_secs(60)).await?
        }
        CtlCommand::Reinit { member, force, wait } => {
            ctl.member_action(&member, "reinit", "/reinitialize", force, Duration::from_secs(wait)).await?
        }
        CtlCommand::Remove { force } => ctl.remove(force).await?,
        CtlCommand::RemoveGarbageLeader { force } => {
            let view = ctl.load().await?;
            let Some(g) = garbage(&view).into_iter().find(|g| g.kind == "leader") else {
                bail!("the leader key decodes (or is absent): there is no garbage leader key to remove")
            };
            println!("the leader record at {} does not decode: {}", g.key, g.reason);
            println!("{}", g.consequence);
            if !force {
                confirm(&format!("type the key ({}) to delete it:", g.key), &g.key)?;
            }
            println!("{}", store.remove_garbage_leader().await?);
            0
        }
        CtlCommand::Switchover { candidate, wait, scheduled } => {
            let at = parse_scheduled(scheduled.as_deref())?;
            ctl.switchover(candidate, at, Duration::from_secs(wait)).await?
        }
        CtlCommand::Failover { candidate, wait } => ctl.failover(candidate, Duration::from_secs(wait)).await?,
        CtlCommand::ShowConfig { format } => {
            let (doc, _, note) = dynamic::current(&ctl.load().await?);
            if let Some(note) = note {
                eprintln!("{note}");
            }
            print_doc(format, &doc)?;
            0
        }
        CtlCommand::EditConfig { set, pg, apply, force } => ctl.edit_config(set, pg, apply, force).await?,
        CtlCommand::Pause => ctl.set_pause(true).await?,
        CtlCommand::Resume => ctl.set_pause(false).await?,
    };
    store.close().await;
    Ok(code)
}

impl Ctl {
    async fn load(&self) -> anyhow::Result<ClusterView> {
        self.dcs.load().await.context("cannot read the cluster from the store")
    }

    async fn peer_status(&self, api_url: &str) -> Option<StatusDoc> {
        let r = self.http.get(format!("{api_url}/status")).send().await.ok()?;
        r.json().await.ok()
    }

    /// One row per registered member, its own API asked for the fresher view of itself.
    async fn rows(&self, view: &ClusterView) -> Vec<MemberRow> {
        let leader = view.leader.as_ref();
        let leader_pos = view.status.as_ref().map(|s| s.value.position);
        let statuses = futures::future::join_all(view.members.iter().map(|m| async move {
            match &m.value.api_url {
                Some(u) => self.peer_status(u).await,
                None => None,
            }
        }))
        .await;
        view.members
            .iter()
            .map(|m| &m.value)
            .zip(statuses)
            .map(|(m, st)| {
                let is_leader = leader.is_some_and(|l| l.record.member == m.name);
                // The member's own API is fresher than its record in the store.
                let role = if is_leader {
                    "leader".to_string()
                } else {
                    role_name(st.as_ref().map_or(m.role, |s| s.member.role)).to_string()
                };
                let state = match &st {
                    Some(s) => s.state.clone(),
                    None if m.running => "running?".into(),
                    None => "stopped?".into(),
                };
                let position = st.as_ref().and_then(|s| s.member.position).or(m.position);
                let lag = match (is_leader, leader_pos, position) {
                    (true, _, _) => Some(0),
                    (false, Some(l), Some(p)) => Some(l.saturating_sub(p)),
                    _ => None,
                };
                MemberRow {
                    name: m.name.clone(),
                    role,
                    state,
                    lag,
                    epoch: leader.filter(|_| is_leader).map(|l| l.epoch.0),
                    lease_left_ms: st.as_ref().and_then(|s| s.lease_remaining_ms),
                    pending_restart: st.as_ref().and_then(|s| s.pending_restart),
                    api_url: m.api_url.clone(),
                    pending_restart_settings: st
                        .as_ref()
                        .map(|s| s.pending_restart_settings.clone())
                        .unwrap_or_default(),
                    scheduled_restart: st.as_ref().and_then(|s| s.scheduled_restart.as_ref()).map(|r| r.schedule),
                }
            })
            .collect()
    }

    fn table(&self, view: &ClusterView, rows: &[MemberRow]) -> String {
        let leader = view.leader.as_ref();
        let paused = view.config.as_ref().is_some_and(|c| c.value.pause);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cluster {} ({}), leader: {}, epoch: {}{}",
            self.config.scope,
            self.config.store.kind(),
            leader.map_or("none", |l| l.record.member.as_str()),
            leader.map_or("-".to_string(), |l| l.epoch.to_string()),
            if paused { ", PAUSED" } else { "" }
        );
        let _ = writeln!(
            out,
            "{:<12} {:<8} {:<10} {:>10} {:>6} {:>11} {:>7}  api",
            "member", "role", "state", "lag", "epoch", "lease left", "restart"
        );
        for r in rows {
            let lag = match (r.role.as_str(), r.lag) {
                ("leader", _) => "-".to_string(),
                (_, Some(l)) => l.to_string(),
                (_, None) => "unknown".into(),
            };
            let _ = writeln!(
                out,
                "{:<12} {:<8} {:<10} {:>10} {:>6} {:>11} {:>7}  {}",
                r.name,
                r.role,
                r.state,
                lag,
                r.epoch.map_or("-".to_string(), |e| e.to_string()),
                r.lease_left_ms.map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                if r.pending_restart == Some(true) { "*" } else { "" },
                r.api_url.as_deref().unwrap_or("-")
            );
        }
        for r in rows.iter().filter(|r| !r.pending_restart_settings.is_empty()) {
            let _ = writeln!(out, "pending restart: {} ({})", r.name, r.pending_restart_settings.join(", "));
        }
        for g in garbage(view) {
            let _ = writeln!(
                out,
                "garbage in the store: the {} record at {} does not decode ({})",
                g.kind, g.key, g.reason
            );
            let _ = writeln!(out, "  consequence: {}", g.consequence);
            if let Some(todo) = &g.what_to_do {
                let _ = writeln!(out, "  what to do: {todo}");
            }
        }
        if let Some(f) = &view.failover {
            let _ = writeln!(
                out,
                "{}: {} (from {}, to {}){}",
                if f.value.scheduled_at.is_some() { "scheduled" } else { "pending" },
                if f.value.leader.is_some() { "switchover" } else { "failover" },
                f.value.leader.as_deref().unwrap_or("no leader"),
                f.value.candidate.as_deref().unwrap_or("the best member"),
                f.value.scheduled_at.map(|at| format!(" at {at}")).unwrap_or_default()
            );
        }
        for r in rows {
            if let Some(at) = r.scheduled_restart {
                let _ = writeln!(out, "scheduled: restart of {} at {at}", r.name);
            }
        }
        out
    }

    fn list_json(&self, view: &ClusterView, rows: &[MemberRow]) -> Value {
        let leader = view.leader.as_ref();
        serde_json::json!({
            "scope": self.config.scope,
            "store": self.config.store.kind(),
            "leader": leader.map(|l| l.record.member.clone()),
            "epoch": leader.map(|l| l.epoch.0),
            "paused": view.config.as_ref().is_some_and(|c| c.value.pause),
            "members": rows,
            "garbage": garbage(view),
            "pending": view.failover.as_ref().map(|f| serde_json::json!({
                "kind": if f.value.leader.is_some() { "switchover" } else { "failover" },
                "from": f.value.leader,
                "to": f.value.candidate,
                "scheduled_at": f.value.scheduled_at,
            })),
        })
    }

    /// POSTs `path` to the first API among `urls` that answers; `None` if none did.
    async fn post(&self, urls: &[String], path: &str, body: Value) -> Option<(u16, Value)> {
        for url in urls {
            let mut req = self.http.post(format!("{url}{path}")).json(&body);
            if let Some(t) = &self.config.restapi.token {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Ok(r) => {
                    let code = r.status().as_u16();
                    let body = r.json().await.unwrap_or(Value::Null);
                    return Some((code, body));
                }
                Err(e) => println!("{url} did not answer: {e}"),
            }
        }
        None
    }

    /// The candidate is registered (our read is linearizable) but the leader's view predates
    /// it: the leader re-reads at once when it refuses, so one retry a moment later suffices.
    async fn retry_after_reread(&self, urls: &[String], path: &str, body: Value) -> Option<(u16, Value)> {
        println!("the leader has not seen the candidate yet; retrying once after it re-reads");
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.post(urls, path, body).await
    }

    fn api_of(view: &ClusterView, member: &str) -> Option<String> {
        view.leader
            .as_ref()
            .filter(|l| l.record.member == member)
            .and_then(|l| l.record.api_url.clone())
            .or_else(|| view.member(member).and_then(|m| m.api_url.clone()))
    }

    /// Writes the failover key directly (the API route did not work).
    async fn write_failover(&self, view: &ClusterView, rec: FailoverRecord) -> anyhow::Result<()> {
        let expect = match view.control_version(ControlKey::Failover) {
            Some(_) if view.failover.is_some() => {
                let pending = view.failover.as_ref().map(|f| describe_failover(&f.value)).unwrap_or_default();
                bail!("a {pending} is already pending; wait for it or let it expire")
            }
            Some(v) => Expect::Version(v.clone()),
            None => Expect::Absent,
        };
        match self.dcs.write_control(ControlKey::Failover, expect, &rec.encode()).await? {
            leasehold::CasOutcome::Won(_) => {
                println!("wrote the failover key directly: {}", describe_failover(&rec));
                Ok(())
            }
            leasehold::CasOutcome::Lost(_) => bail!("another writer changed the failover key; retry"),
        }
    }

    fn report(code: u16, body: &Value) -> anyhow::Result<()> {
        if (200..300).contains(&code) {
            println!("accepted ({code})");
            Ok(())
        } else {
            bail!("refused ({code}): {}", body.get("error").and_then(Value::as_str).unwrap_or(&body.to_string()))
        }
    }

    async fn switchover(
        &self,
        candidate: Option<String>,
        scheduled_at: Option<WallTime>,
        wait: Duration,
    ) -> anyhow::Result<i32> {
        let view = self.load().await?;
        let Some(leader) = view.leader.clone() else { bail!("there is no leader to switch over from; use failover") };
        let from = leader.record.member.clone();
        println!(
            "switchover from {from} (epoch {}) to {}{}",
            leader.epoch,
            candidate.as_deref().unwrap_or("the best member"),
            scheduled_at.map(|at| format!(" at {at}")).unwrap_or_default()
        );
        let urls: Vec<String> = Self::api_of(&view, &from).into_iter().collect();
        let mut request = serde_json::json!({"candidate": candidate});
        if let Some(at) = scheduled_at {
            request["scheduled_at"] = Value::String(at.to_string());
        }
        let mut answer = self.post(&urls, "/switchover", request.clone()).await;
        // Only the leader's stale view is worth a retry, not a refused time.
        if let (Some((400, body)), Some(c)) = (&answer, &candidate)
            && view.member(c).is_some()
            && body.get("error").and_then(Value::as_str).is_some_and(|e| e.contains("not a registered member"))
        {
            answer = self.retry_after_reread(&urls, "/switchover", request).await;
        }
        match answer {
            Some((code, body)) => Self::report(code, &body)?,
            None => {
                let rec = FailoverRecord { leader: Some(from.clone()), candidate: candidate.clone(), scheduled_at };
                self.write_failover(&view, rec).await?
            }
        }
        if let Some(at) = scheduled_at {
            println!("switchover scheduled at {at}; `list` shows it, `flush switchover` cancels it");
            return Ok(0);
        }
        self.wait_for_new_leader(&from, candidate.as_deref(), wait).await
    }

    async fn failover(&self, candidate: String, wait: Duration) -> anyhow::Result<i32> {
        let view = self.load().await?;
        if view.member(&candidate).is_none() {
            bail!("{candidate:?} is not a registered member of {}", self.config.scope);
        }
        let old = view.leader.as_ref().map(|l| l.record.member.clone()).unwrap_or_default();
        println!("failover to {candidate}");
        // The leader first, then the candidate itself, then any member.
        let mut urls: Vec<String> = Vec::new();
        for name in [old.as_str(), candidate.as_str()] {
            if let Some(u) = Self::api_of(&view, name) {
                urls.push(u);
            }
        }
        urls.extend(view.members.iter().filter_map(|m| m.value.api_url.clone()));
        urls.dedup();
        let request = serde_json::json!({"candidate": candidate});
        let mut answer = self.post(&urls, "/failover", request.clone()).await;
        if let Some((400, _)) = &answer {
            answer = self.retry_after_reread(&urls, "/failover", request).await;
        }
        match answer {
            Some((code, body)) => Self::report(code, &body)?,
            None => {
                let rec = FailoverRecord { leader: None, candidate: Some(candidate.clone()), scheduled_at: None };
                self.write_failover(&view, rec).await?
            }
        }
        self.wait_for_new_leader(&old, Some(&candidate), wait).await
    }

    /// DELETEs `path` at the first API among `urls` that answers; `None` if none did.
    async fn delete(&self, urls: &[String], path: &str) -> Option<(u16, Value)> {
        for url in urls {
            let mut req = self.http.delete(format!("{url}{path}"));
            if let Some(t) = &self.config.restapi.token {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Ok(r) => {
                    let code = r.status().as_u16();
                    return Some((code, r.json().await.unwrap_or(Value::Null)));
                }
                Err(e) => println!("{url} did not answer: {e}"),
            }
        }
        None
    }

    /// Cancels the scheduled switchover: through a member's API (the leader's first), or by
    /// deleting the failover key directly (compare-and-delete) when no API answers.
    async fn flush_switchover(&self) -> anyhow::Result<i32> {
        let view = self.load().await?;
        let Some(f) = view.failover.as_ref().filter(|f| f.value.scheduled_at.is_some()) else {
            bail!("no switchover is scheduled in {}", self.config.scope);
        };
        println!("cancelling the {}", describe_failover(&f.value));
        let leader = view.leader.as_ref().map(|l| l.record.member.clone()).unwrap_or_default();
        let mut urls: Vec<String> = Self::api_of(&view, &leader).into_iter().collect();
        urls.extend(view.members.iter().filter_map(|m| m.value.api_url.clone()));
        urls.dedup();
        match self.delete(&urls, "/switchover").await {
            Some((200, _)) => println!("scheduled switchover cancelled"),
            Some((code, body)) => Self::report(code, &body)?,
            None => match self.dcs.delete_control(ControlKey::Failover, &f.version).await? {
                leasehold::CasOutcome::Won(()) => println!("deleted the failover key directly"),
                leasehold::CasOutcome::Lost(_) => bail!("the failover key changed meanwhile; look again with list"),
            },
        }
        Ok(0)
    }

    /// Schedules a restart of `member` through its API (`POST /restart` with `schedule`).
    async fn schedule_restart(&self, member: &str, at: WallTime, force: bool) -> anyhow::Result<i32> {
        let view = self.load().await?;
        if view.member(member).is_none() {
            bail!("{member:?} is not a registered member of {}", self.config.scope);
        }
        let Some(api) = Self::api_of(&view, member) else { bail!("{member} publishes no REST API URL") };
        if !force {
            let q = format!("restart member {member} of {} at {at}? Type yes to confirm:", self.config.scope);
            confirm(&q, "yes")?;
        }
        let body = serde_json::json!({"schedule": at.to_string()});
        let Some((code, body)) = self.post(&[api], "/restart", body).await else {
            bail!("{member}'s API did not answer; nothing was scheduled")
        };
        Self::report(code, &body)?;
        println!("restart of {member} scheduled at {at}; `list` shows it, `flush restart {member}` cancels it");
        Ok(0)
    }

    /// Cancels the scheduled restarts of `members` (all registered members when empty).
    async fn flush_restart(&self, members: &[String]) -> anyhow::Result<i32> {
        let view = self.load().await?;
        let names: Vec<String> = if members.is_empty() {
            view.members.iter().map(|m| m.value.name.clone()).collect()
        } else {
            members.to_vec()
        };
        let mut failed = false;
        for name in &names {
            let Some(api) = Self::api_of(&view, name) else {
                println!("{name}: not registered or no REST API URL");
                failed = true;
                continue;
            };
            match self.delete(&[api], "/restart").await {
                Some((200, body)) => println!(
                    "{name}: scheduled restart at {} cancelled",
                    body.get("schedule").and_then(Value::as_str).unwrap_or("?")
                ),
                Some((404, _)) => println!("{name}: no restart is scheduled"),
                Some((code, body)) => {
                    let why =
                        body.get("error").and_then(Value::as_str).map_or_else(|| body.to_string(), str::to_string);
                    println!("{name}: refused ({code}): {why}");
                    failed = true;
                }
                None => failed = true,
            }
        }
        Ok(i32::from(failed))
    }

    async fn edit_config(
        &self,
        set: Vec<String>,
        pg: Vec<String>,
        apply: Option<std::path::PathBuf>,
        force: bool,
    ) -> anyhow::Result<i32> {
        let apply = match apply {
            None => None,
            Some(path) => {
                let text = if path.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin()).context("cannot read the document from standard input")?
                } else {
                    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?
                };
                Some(
                    serde_json::from_str(&text)
                        .with_context(|| format!("{} is not a JSON document", path.display()))?,
                )
            }
        };
        let view = self.load().await?;
        let (old, expect, note) = dynamic::current(&view);
        if let Some(note) = note {
            eprintln!("{note}");
        }
        let new = dynamic::Edit { apply, set, pg }.apply_to(&old)?;
        dynamic::validate(&new, &self.config.timing, &self.config.store)?;
        let changes = dynamic::Changes::between(&old, &new);
        if changes.is_empty() {
            println!("no changes");
            return Ok(0);
        }
        print!("{changes}");
        if !force {
            print!("Apply these changes? [y/N] ");
            std::io::Write::flush(&mut std::io::stdout())?;
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                println!("not changed");
                return Ok(1);
            }
        }
        if !dynamic::write(self.dcs.as_ref(), expect, &new).await? {
            bail!(
                "the configuration changed in the store since it was read; nothing was written, run edit-config again"
            );
        }
        println!("configuration changed");
        Ok(0)
    }

    async fn set_pause(&self, pause: bool) -> anyhow::Result<i32> {
        let view = self.load().await?;
        let path = if pause { "/pause" } else { "/resume" };
        let mut urls: Vec<String> = view.leader.iter().filter_map(|l| l.record.api_url.clone()).collect();
        urls.extend(view.members.iter().filter_map(|m| m.value.api_url.clone()));
        urls.dedup();
        match self.post(&urls, path, serde_json::json!({})).await {
            Some((code, body)) => Self::report(code, &body)?,
            None => {
                let mut cfg = view.config.as_ref().map(|c| c.value.clone()).unwrap_or_default();
                if cfg.pause == pause {
                    println!("already {}", if pause { "paused" } else { "running" });
                    return Ok(0);
                }
                cfg.pause = pause;
                let expect = view.control_version(ControlKey::Config).cloned().map_or(Expect::Absent, Expect::Version);
                if !self.dcs.write_control(ControlKey::Config, expect, &cfg.encode()).await?.is_won() {
                    bail!("another writer changed the config key; retry");
                }
                println!("wrote the config key directly");
            }
        }
        println!("cluster {}", if pause { "paused" } else { "resumed" });
        Ok(0)
    }

    /// The leader at the root, the members that follow it below; members while there is no
    /// leader are listed at the root as well.
    fn topology_tree(&self, view: &ClusterView, rows: &[MemberRow]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "cluster {} ({})", self.config.scope, self.config.store.kind());
        let line = |r: &MemberRow| {
            let lag = match r.lag {
                _ if r.role == "leader" => String::new(),
                Some(l) => format!(", lag {l}"),
                None => ", lag unknown".into(),
            };
            let epoch = r.epoch.map(|e| format!(", epoch {e}")).unwrap_or_default();
            let pending = if r.pending_restart == Some(true) { ", pending restart" } else { "" };
            format!("{} ({}, {}{epoch}{lag}{pending})", r.name, r.role, r.state)
        };
        let leader = view.leader.as_ref().map(|l| l.record.member.as_str());
        match rows.iter().find(|r| Some(r.name.as_str()) == leader) {
            Some(root) => {
                let _ = writeln!(out, "{}", line(root));
                let replicas: Vec<&MemberRow> = rows.iter().filter(|r| r.name != root.name).collect();
                for (i, r) in replicas.iter().enumerate() {
                    let branch = if i + 1 == replicas.len() { "└──" } else { "├──" };
                    let _ = writeln!(out, "{branch} {}", line(r));
                }
            }
            None => {
                let _ = writeln!(out, "(no leader)");
                for r in rows {
                    let _ = writeln!(out, "{}", line(r));
                }
            }
        }
        out
    }

    fn topology_doc(&self, view: &ClusterView, rows: &[MemberRow]) -> Value {
        let leader = view.leader.as_ref().map(|l| l.record.member.as_str());
        let root = rows.iter().find(|r| Some(r.name.as_str()) == leader);
        let others: Vec<&MemberRow> = rows.iter().filter(|r| Some(r.name.as_str()) != leader).collect();
        serde_json::json!({
            "scope": self.config.scope,
            "leader": root.map(|r| {
                let mut node = serde_json::to_value(r).unwrap_or(Value::Null);
                node["replicas"] = serde_json::to_value(&others).unwrap_or(Value::Null);
                node
            }),
            // Without a leader nobody follows anyone: every member at the top.
            "members": if root.is_none() { serde_json::to_value(&others).unwrap_or(Value::Null) } else { Value::Array(vec![]) },
        })
    }

    /// `restart`, `reload` or `reinit` of `member` through its own API, after confirmation.
    async fn member_action(
        &self,
        member: &str,
        verb: &str,
        path: &str,
        force: bool,
        wait: Duration,
    ) -> anyhow::Result<i32> {
        let view = self.load().await?;
        if view.member(member).is_none() {
            bail!("{member:?} is not a registered member of {}", self.config.scope);
        }
        if verb == "reinit" && view.leader.as_ref().is_some_and(|l| l.record.member == member) {
            bail!("{member} is the leader: only a replica can be reinitialized (switch over first)");
        }
        let Some(api) = Self::api_of(&view, member) else { bail!("{member} publishes no REST API URL") };
        if !force {
            confirm(&format!("{verb} member {member} of {}? Type yes to confirm:", self.config.scope), "yes")?;
        }
        let client = self.tls.http_client(wait)?;
        let mut req = client.post(format!("{api}{path}")).json(&serde_json::json!({}));
        if let Some(t) = &self.config.restapi.token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.with_context(|| format!("{member}'s API at {api} did not answer"))?;
        let code = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&code) {
            println!("{verb} of {member}: done");
            Ok(0)
        } else {
            bail!(
                "{verb} of {member} refused ({code}): {}",
                body.get("error").and_then(Value::as_str).unwrap_or(&body.to_string())
            )
        }
    }

    /// Deletes every control key of the scope, after the scope's name is typed. Leader and
    /// member keys are bound to their owners' leases: they go when those members stop.
    async fn remove(&self, force: bool) -> anyhow::Result<i32> {
        let view = self.load().await?;
        let scope = &self.config.scope;
        let alive: Vec<&str> = view.members.iter().map(|m| m.value.name.as_str()).collect();
        if !alive.is_empty() && !force {
            bail!("members {} are alive (registered in {scope}): stop them first, or pass --force", alive.join(", "));
        }
        if let Some(l) = &view.leader {
            println!("warning: {} holds the leader key (epoch {})", l.record.member, l.epoch);
        }
        confirm(
            &format!("Remove every key of cluster {scope} from the store? Type the cluster name to confirm:"),
            scope,
        )?;
        let mut removed = 0;
        for key in [
            ControlKey::Failover,
            ControlKey::Config,
            ControlKey::Sync,
            ControlKey::Status,
            ControlKey::History,
            ControlKey::Initialize,
        ] {
            let Some(version) = view.control_version(key).cloned() else { continue };
            match self.dcs.delete_control(key, &version).await? {
                leasehold::CasOutcome::Won(()) => removed += 1,
                leasehold::CasOutcome::Lost(_) => {
                    bail!("the {} key changed while removing (a member is writing); retry", key.name())
                }
            }
        }
        println!("removed {removed} control keys of {scope}");
        if !alive.is_empty() {
            println!(
                "the leader and member keys of {} stay until those members stop (they are bound to their sessions)",
                alive.join(", ")
            );
        }
        Ok(0)
    }

    #[allow(clippy::disallowed_methods)] // an operator command reports how long the handover took
    async fn wait_for_new_leader(&self, old: &str, want: Option<&str>, wait: Duration) -> anyhow::Result<i32> {
        let started = tokio::time::Instant::now();
        while started.elapsed() < wait {
            if let Ok(view) = self.dcs.load().await
                && let Some(l) = &view.leader
                && l.record.member != old
                && want.is_none_or(|w| w == l.record.member)
            {
                // The key is taken; wait for the resource to be writable.
                let api = l.record.api_url.clone().unwrap_or_default();
                if let Ok(r) = self.http.get(format!("{api}/primary")).send().await
                    && r.status().is_success()
                {
                    println!(
                        "new leader {} (epoch {}) accepts writes {:.2}s after the request",
                        l.record.member,
                        l.epoch,
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(0);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("no new leader within {wait:?}");
        Ok(2)
    }
}

/// One member as `list` shows it (`lag`: bytes behind the leader; `null` when unknown).
#[derive(Debug, serde::Serialize)]
struct MemberRow {
    name: String,
    role: String,
    state: String,
    lag: Option<u64>,
    epoch: Option<u64>,
    lease_left_ms: Option<u64>,
    /// The member's resource waits for a restart (`null`: it cannot tell).
    pending_restart: Option<bool>,
    api_url: Option<String>,
    /// Settings waiting for a restart, by name (the dynamic timing, PostgreSQL parameters).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pending_restart_settings: Vec<String>,
    /// A restart of this member scheduled at its daemon (`POST /restart` with `schedule`).
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled_restart: Option<WallTime>,
}

fn role_name(role: leasehold::ResourceRole) -> &'static str {
    match role {
        leasehold::ResourceRole::Primary => "primary",
        leasehold::ResourceRole::Replica => "replica",
        leasehold::ResourceRole::Unknown => "unknown",
    }
}

fn history_table(view: &ClusterView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>8} {:>12} {:>6}  {:<12} reason", "timeline", "position", "epoch", "leader");
    for h in view.history.iter().flat_map(|h| h.value.0.iter()) {
        let _ = writeln!(out, "{:>8} {:>12} {:>6}  {:<12} {}", h.timeline, h.position, h.epoch.0, h.leader, h.reason);
    }
    out
}

/// `switchover from n1 to n2`, `failover to n2`: a failover request as an operator reads it.
fn describe_failover(f: &FailoverRecord) -> String {
    let kind = if f.leader.is_some() { "switchover" } else { "failover" };
    let from = f.leader.as_deref().map(|l| format!(" from {l}")).unwrap_or_default();
    let at = f.scheduled_at.map(|at| format!(" scheduled at {at}")).unwrap_or_default();
    format!("{kind}{from} to {}{at}", f.candidate.as_deref().unwrap_or("the best member"))
}
