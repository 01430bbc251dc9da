//! The log level changes at runtime: `[log] level` re-read on SIGHUP, against the binary on
//! real etcd; a level that does not parse changes nothing and names the key.

mod common;

use std::time::Duration;

use std::process::{Command, Stdio};

use common::{Cluster, Proc, Store, bin};

const LIMIT: Duration = Duration::from_secs(40);

fn hup(c: &Cluster) {
    let pid = c.members[0].proc.as_ref().expect("running").pid();
    // SAFETY: kill has no memory preconditions; the pid is our own child's.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
    assert_eq!(rc, 0, "SIGHUP delivered");
}

#[test]
fn sighup_rereads_the_log_level() {
    let mut c = Cluster::start(Store::etcd(), 1);
    c.wait_leader(LIMIT, |_, _| true);
    // The harness starts daemons with LEASEHOLD_LOG (which wins over the file): run this one
    // without it, logging to its own file.
    assert_eq!(c.members[0].proc.as_mut().unwrap().terminate(LIMIT), Some(0));
    let log_path = c.dir.path().join("hup.log");
    let log = std::fs::File::create(&log_path).unwrap();
    c.members[0].proc = Some(Proc::spawn(
        "n1",
        Command::new(bin())
            .arg("--config")
            .arg(&c.members[0].config)
            .arg("run")
            .env_remove("LEASEHOLD_LOG")
            .stdout(Stdio::null())
            .stderr(log),
    ));
    c.wait_leader(LIMIT, |_, _| true);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let base = std::fs::read_to_string(&c.members[0].config).unwrap();
    assert!(log().contains("INFO") && !log().contains("DEBUG"), "the default level is info:\n{}", log());

    // A level that does not parse: refused by name, the daemon keeps running at its level.
    std::fs::write(&c.members[0].config, format!("{base}\n[log]\nlevel = \"=== not a filter\"\n")).unwrap();
    hup(&c);
    c.wait_for("the bad level is refused, naming the key", LIMIT, |_| log().contains("config key `log.level`"));
    assert!(c.members[0].proc.as_mut().unwrap().is_running(), "a bad reload does not stop the daemon");
    assert!(!log().contains("DEBUG"));

    std::fs::write(&c.members[0].config, format!("{base}\n[log]\nlevel = \"debug\"\n")).unwrap();
    hup(&c);
    c.wait_for("debug lines after the reload", LIMIT, |_| {
        log().split("log level changed").nth(1).is_some_and(|after| after.contains("DEBUG"))
    });
    assert!(c.leader().is_some(), "still leading after the reloads");
}
