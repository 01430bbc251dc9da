//! `ctl restart`, `reload` and `reinit` on the native PostgreSQL resource (issue 18): etcd,
//! two daemons, two PostgreSQL 15 instances on loopback, asynchronous mode. A setting that
//! needs a restart shows as `pending_restart` until `ctl restart`; `ctl reinit` re-clones the
//! replica from the leader and is refused on the leader. Skipped, saying so, when
//! PostgreSQL 15 is not installed.
#![allow(clippy::disallowed_methods)] // deadlines read the clock

mod common;

use std::time::{Duration, Instant};

use common::pg::{PgCluster, PgSpec, no_extra, postmaster_pid, sql};
use common::text;

const LIMIT: Duration = Duration::from_secs(90);

/// Two members on the shared fixture: n1 leads, n2 replicates.
struct Cluster(PgCluster);

impl std::ops::Deref for Cluster {
    type Target = PgCluster;
    fn deref(&self) -> &PgCluster {
        &self.0
    }
}

impl Cluster {
    fn start() -> Cluster {
        let spec = PgSpec {
            members: 2,
            scope: "pgops",
            prefix: "/pg-ops",
            top: "ttl = \"5s\"\nloop_wait = \"1s\"\nretry_timeout = \"1500ms\"\nsafety_margin = \"1s\"".into(),
            postgresql: String::new(),
            member_extra: no_extra,
            proxies: false,
            etcd: String::new(),
        };
        let mut c = Cluster(PgCluster::new(&spec));
        c.0.start_member(0);
        c.wait("n1 leads", |c| c.status(0).filter(|s| s["acting"] == true && s["role"] == "primary"));
        c.0.start_member(1);
        c.wait("n2 replicates", |c| c.status(1).filter(|s| s["role"] == "replica" && s["running"] == true));
        c
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        self.0.ctl(0, args)
    }

    fn wait<T>(&self, what: &str, mut check: impl FnMut(&Cluster) -> Option<T>) -> T {
        let until = Instant::now() + LIMIT;
        while Instant::now() < until {
            if let Some(v) = check(self) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.dump(40);
        panic!("{what}: not reached within {LIMIT:?}");
    }
}

#[test]
fn restart_reload_and_reinit_on_postgresql() {
    if !common::pg::installed("pg_basebackup") {
        return;
    }
    let c = Cluster::start();
    let (p1, p2) = (c.members[0].pg_port, c.members[1].pg_port);
    assert_eq!(c.status(0).unwrap()["pending_restart"], false, "nothing pending at start");

    // A setting that needs a restart: pending after a reload, gone after ctl restart.
    sql(p1, "alter system set max_connections = 150").expect("ALTER SYSTEM on the leader");
    let out = c.ctl(&["reload", "n1", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    c.wait("n1 reports pending_restart", |c| c.status(0).filter(|s| s["pending_restart"] == true));
    let out = c.ctl(&["list"]);
    let row = String::from_utf8_lossy(&out.stdout).lines().find(|l| l.starts_with("n1 ")).unwrap_or("").to_string();
    assert!(row.contains(" * "), "list marks the pending restart: {}", text(&out));
    let pid_before = postmaster_pid(&c.members[0].data).expect("n1 runs");
    let out = c.ctl(&["restart", "n1", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(postmaster_pid(&c.members[0].data), Some(pid_before), "a new postmaster");
    assert_eq!(sql(p1, "show max_connections").as_deref(), Some("150"));
    c.wait("n1 leads, running, nothing pending", |c| {
        c.status(0).filter(|s| s["acting"] == true && s["role"] == "primary" && s["pending_restart"] == false)
    });

    // reinit: refused on the leader; the replica is cloned anew and streams again.
    let out = c.ctl(&["reinit", "n1", "--force"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is the leader"), "{}", text(&out));
    sql(p1, "create table before_reinit(n int); insert into before_reinit values (18)").expect("write on the leader");
    let replica_pid = postmaster_pid(&c.members[1].data).expect("n2 runs");
    let out = c.ctl(&["reinit", "n2", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(postmaster_pid(&c.members[1].data), Some(replica_pid), "n2 runs a new postmaster");
    c.wait("n2 replicates again", |c| c.status(1).filter(|s| s["role"] == "replica" && s["running"] == true));
    c.wait("the leader's rows are on n2", |_| sql(p2, "select n from before_reinit").filter(|v| v == "18"));
    let log = c.log(1);
    assert!(log.contains("reinitializing"), "n2's log says it reinitialized");
    assert!(log.contains("cloned with pg_basebackup"), "n2 cloned");
}
