//! A cluster whose hooks log the operator actions (`restart`, `reload`, `reinit`) to an
//! actions log, for the ctl and scheduling tests.

use std::path::{Path, PathBuf};

use super::{Cluster, Member, Store, TOKEN, free_port};

/// A hooks directory: the file resource's hooks plus `restart`, `reload` and `reinit` hooks
/// that log `<member> <action> <args>` to `$ACTIONS_LOG`.
pub fn hooks_with_actions(dir: &Path) -> PathBuf {
    let hooks = dir.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    for f in ["promote", "demote", "follow", "status", "write", "lib.sh"] {
        std::os::unix::fs::symlink(super::hooks_dir().join(f), hooks.join(f)).unwrap();
    }
    for action in ["restart", "reload", "reinit"] {
        let p = hooks.join(action);
        std::fs::write(&p, format!("#!/bin/sh\necho \"$LEASEHOLD_NAME {action} $*\" >> \"$ACTIONS_LOG\"\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    hooks
}

/// Writes configs for `n` members of `scope` (`restapi_extra(i)` is added to member i's
/// `[restapi]`, `tail` to every file) with [`hooks_with_actions`] and starts them.
pub fn start(store: Store, scope: &str, n: usize, restapi_extra: impl Fn(usize) -> String, tail: &str) -> Cluster {
    let dir = tempfile::Builder::new().prefix(&format!("leasehold-ha-{scope}-")).tempdir().unwrap();
    let resource_dir = dir.path().join("resource");
    std::fs::create_dir_all(&resource_dir).unwrap();
    let hooks = hooks_with_actions(dir.path());
    let log = dir.path().join("actions.log");
    let mut members = Vec::new();
    for i in 0..n {
        let name = format!("n{}", i + 1);
        let port = free_port();
        let extra = restapi_extra(i);
        let scheme = if extra.contains("certfile") { "https" } else { "http" };
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "scope = \"{scope}\"\nname = \"{name}\"\n{}safety_margin = \"1s\"\nconn_url = \"file://{name}\"\n\
                 [watchdog]\nmode = \"off\"\n[restapi]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n{extra}\
                 [hooks]\ndir = \"{}\"\n[hooks.env]\nFILE_RESOURCE_DIR = \"{}\"\nACTIONS_LOG = \"{}\"\n{}{tail}",
                store.timing(),
                hooks.display(),
                resource_dir.display(),
                log.display(),
                store.section()
            ),
        )
        .unwrap();
        members.push(Member { name, config, api: format!("{scheme}://127.0.0.1:{port}"), proc: None });
    }
    let mut cluster = Cluster { members, resource_dir, dir, store };
    for i in 0..n {
        cluster.start_member(i);
    }
    cluster
}

pub fn actions_log(c: &Cluster) -> String {
    std::fs::read_to_string(c.dir.path().join("actions.log")).unwrap_or_default()
}
