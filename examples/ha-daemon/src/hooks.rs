//! A [`Resource`] driven by external programs (hooks).
//!
//! | hook | arguments | environment | success |
//! |---|---|---|---|
//! | `promote` | epoch | `LEASEHOLD_EPOCH` | exit 0 once the resource accepts writes under that epoch |
//! | `demote` | mode (`graceful`, `immediate`, `immediate-nolock`, `offline`) | `LEASEHOLD_DEMOTE_MODE` | exit 0 once it no longer accepts writes |
//! | `follow` | leader name, leader conn url (empty strings when there is no leader) | `LEASEHOLD_LEADER`, `LEASEHOLD_LEADER_CONN_URL` | exit 0 |
//! | `status` | none | | exit 0 and one JSON object on stdout: `{"running", "role", "position", "timeline"}` |
//!
//! | `restart` (optional) | none | | exit 0 once the resource runs again in the same role |
//! | `reload` (optional) | none | | exit 0 once the resource re-read its configuration |
//! | `reinit` (optional) | leader name, leader conn url | `LEASEHOLD_LEADER`, `LEASEHOLD_LEADER_CONN_URL` | exit 0 once the replica's data is copied anew from the leader |
//!
//! A `status` hook may add `"pending_restart": true` when a setting waits for a restart.
//! Every hook also gets `LEASEHOLD_SCOPE`, `LEASEHOLD_NAME` and the `[hooks.env]` table.
//! A hook that runs past its timeout is killed and counts as failed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use leasehold::driver::Resource;
use leasehold::node::{DemoteMode, ResourceStatus};
use leasehold::{Epoch, ResourceRole};
use serde::Deserialize;
use tokio::process::Command;

use crate::config::HooksConfig;

/// Pause between attempts of a failed follow hook.
const FOLLOW_RETRY: Duration = Duration::from_secs(1);

/// Runs the configured hooks.
#[derive(Clone, Debug)]
pub struct HookResource {
    hooks: HooksConfig,
    base_env: BTreeMap<String, String>,
}

/// The JSON a `status` hook prints.
#[derive(Debug, Deserialize)]
struct StatusOutput {
    running: bool,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    position: Option<u64>,
    #[serde(default)]
    timeline: Option<u64>,
    #[serde(default)]
    pending_restart: Option<bool>,
}

/// The word a demote hook receives for `mode`.
pub fn mode_name(mode: DemoteMode) -> &'static str {
    match mode {
        DemoteMode::Graceful => "graceful",
        DemoteMode::Immediate => "immediate",
        DemoteMode::ImmediateNoLock => "immediate-nolock",
        DemoteMode::Offline => "offline",
    }
}

impl HookResource {
    /// Hooks for member `name` of `scope`.
    pub fn new(hooks: HooksConfig, scope: &str, name: &str) -> Self {
        let mut base_env = hooks.env.clone();
        base_env.insert("LEASEHOLD_SCOPE".into(), scope.into());
        base_env.insert("LEASEHOLD_NAME".into(), name.into());
        HookResource { hooks, base_env }
    }

    /// Runs `program` with `args`; stdout on exit 0, else a message with stderr's tail.
    async fn run(
        &self,
        what: &str,
        program: &PathBuf,
        args: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<String, String> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(&self.base_env)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| format!("{what} hook {}: cannot start: {e}", program.display()))?;
        let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(format!("{what} hook {}: {e}", program.display())),
            Err(_) => return Err(format!("{what} hook {}: no exit within {timeout:?}, killed", program.display())),
        };
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String =
                stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("; ");
            Err(format!("{what} hook {} failed ({}): {tail}", program.display(), out.status))
        }
    }

    /// Parses a `status` hook's output; anything unexpected reads as not running.
    fn parse_status(stdout: &str) -> Result<ResourceStatus, String> {
        let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        let s: StatusOutput =
            serde_json::from_str(line).map_err(|e| format!("status hook printed {line:?}, not status JSON: {e}"))?;
        let role = match s.role.as_deref() {
            Some("primary" | "master" | "leader") => ResourceRole::Primary,
            Some("replica" | "standby" | "secondary") => ResourceRole::Replica,
            _ => ResourceRole::Unknown,
        };
        Ok(ResourceStatus {
            running: s.running,
            role,
            position: s.position,
            timeline: s.timeline,
            sync_confirmed: Vec::new(),
            streaming: None,
        })
    }
}

#[async_trait]
impl crate::api::MemberActions for HookResource {
    async fn restart(&self) -> Result<(), String> {
        let Some(hook) = &self.hooks.actions.restart else { return Err(no_hook("restart")) };
        tracing::info!("running the restart hook");
        self.run("restart", hook, &[], &[], self.hooks.timeout).await.map(drop)
    }

    async fn reload(&self) -> Result<(), String> {
        let Some(hook) = &self.hooks.actions.reload else { return Err(no_hook("reload")) };
        tracing::info!("running the reload hook");
        self.run("reload", hook, &[], &[], self.hooks.timeout).await.map(drop)
    }

    async fn reinitialize(&self, leader: &str, conn_url: Option<&str>) -> Result<(), String> {
        let Some(hook) = &self.hooks.actions.reinit else { return Err(no_hook("reinit")) };
        let u = conn_url.unwrap_or("");
        tracing::info!(leader, conn_url = u, "running the reinit hook");
        let env = [("LEASEHOLD_LEADER", leader), ("LEASEHOLD_LEADER_CONN_URL", u)];
        self.run("reinit", hook, &[leader, u], &env, self.hooks.timeout).await.map(drop)
    }

    async fn pending_restart(&self) -> Option<bool> {
        let out = self.run("status", &self.hooks.status, &[], &[], self.hooks.status_timeout).await.ok()?;
        let line = out.lines().rev().find(|l| !l.trim().is_empty())?;
        serde_json::from_str::<StatusOutput>(line).ok()?.pending_restart
    }
}

fn no_hook(name: &str) -> String {
    format!("this member has no {name} hook (set hooks.{name}, or put an executable `{name}` in hooks.dir)")
}

#[async_trait]
impl Resource for HookResource {
    async fn promote(&self, epoch: Epoch) -> Result<(), String> {
        let e = epoch.0.to_string();
        tracing::info!(%epoch, "running the promote hook");
        self.run("promote", &self.hooks.promote, &[&e], &[("LEASEHOLD_EPOCH", &e)], self.hooks.timeout).await?;
        Ok(())
    }

    async fn demote(&self, mode: DemoteMode) -> Result<(), String> {
        let m = mode_name(mode);
        tracing::info!(mode = m, "running the demote hook");
        self.run("demote", &self.hooks.demote, &[m], &[("LEASEHOLD_DEMOTE_MODE", m)], self.hooks.timeout).await?;
        Ok(())
    }

    async fn follow(&self, leader: Option<&str>, conn_url: Option<&str>) -> Result<(), String> {
        let (l, u) = (leader.unwrap_or(""), conn_url.unwrap_or(""));
        tracing::info!(leader = l, conn_url = u, "running the follow hook");
        let env = [("LEASEHOLD_LEADER", l), ("LEASEHOLD_LEADER_CONN_URL", u)];
        // The node asks to follow a leader once; a leader still starting up (initdb, crash
        // recovery) makes the first attempts fail, so retry within the hook timeout.
        #[allow(clippy::disallowed_methods)] // a retry budget in real time, not a decision
        let until = tokio::time::Instant::now() + self.hooks.timeout;
        loop {
            match self.run("follow", &self.hooks.follow, &[l, u], &env, self.hooks.timeout).await {
                Ok(_) => return Ok(()),
                #[allow(clippy::disallowed_methods)] // see above
                Err(e) if tokio::time::Instant::now() + FOLLOW_RETRY < until => {
                    tracing::warn!(error = %e, "follow hook failed; retrying");
                    tokio::time::sleep(FOLLOW_RETRY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn status(&self) -> ResourceStatus {
        let out = self.run("status", &self.hooks.status, &[], &[], self.hooks.status_timeout).await;
        match out.and_then(|o| Self::parse_status(&o)) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "status hook");
                ResourceStatus::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_output_is_parsed_leniently_but_not_blindly() {
        let s = HookResource::parse_status(
            "noise\n{\"running\":true,\"role\":\"primary\",\"position\":7,\"timeline\":2}\n",
        )
        .unwrap();
        assert!(s.running);
        assert_eq!(s.role, ResourceRole::Primary);
        assert_eq!((s.position, s.timeline), (Some(7), Some(2)));
        let s = HookResource::parse_status("{\"running\":false}").unwrap();
        assert_eq!(s.role, ResourceRole::Unknown);
        assert!(HookResource::parse_status("running").is_err());
        assert!(HookResource::parse_status("").is_err());
        assert!(HookResource::parse_status("{\"role\":\"primary\"}").is_err());
    }

    #[tokio::test]
    async fn hooks_get_arguments_and_failures_carry_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hook");
        std::fs::write(&script, "#!/bin/sh\necho \"$LEASEHOLD_NAME $*\" >> \"$OUT\"\n[ \"$1\" = 13 ] && { echo boom >&2; exit 3; }\necho '{\"running\":true,\"role\":\"replica\"}'\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let out = dir.path().join("out");
        let hooks = HooksConfig {
            promote: script.clone(),
            demote: script.clone(),
            follow: script.clone(),
            status: script.clone(),
            actions: Box::default(),
            timeout: Duration::from_secs(10),
            status_timeout: Duration::from_secs(10),
            env: [("OUT".to_string(), out.display().to_string())].into(),
        };
        let r = HookResource::new(hooks, "demo", "n1");
        r.promote(Epoch(5)).await.unwrap();
        r.demote(DemoteMode::ImmediateNoLock).await.unwrap();
        r.follow(Some("n2"), Some("host=x")).await.unwrap();
        let err = r.promote(Epoch(13)).await.unwrap_err();
        assert!(err.contains("boom") && err.contains("exit status: 3"), "{err}");
        assert_eq!(r.status().await.role, ResourceRole::Replica);
        let log = std::fs::read_to_string(out).unwrap();
        assert_eq!(log, "n1 5\nn1 immediate-nolock\nn1 n2 host=x\nn1 13\nn1 \n");
    }
}
