//! Data-driven tests of the healthy-enough rules: every `tests/rules/*.cases` file holds
//! readable cases (facts in, verdict out). Format, one fact per line:
//!
//! ```text
//! case: <what it shows>
//! me <name> [pos=N] [tl=N] [role=primary|replica|unknown] [stopped] [nofailover] [priority=N] [nosync]
//! peer <name> [same options as me] [watchdog_failed]
//! unreachable <name>
//! leader_position N
//! cluster_timeline N
//! max_lag N                      (default 1048576)
//! paused
//! sync <leader> [standby,standby]   (synchronous mode on; `sync -` = on, no sync state)
//! failover [leader=<name>] [candidate=<name>]
//! watchdog required working|failed
//! backoff
//! expect eligible | expect ineligible <reason> [key=value ...]
//! ```
//! Reasons use the snake_case names of `leasehold::Reason` (lagging, peer_ahead, ...); the
//! optional key=value pairs must match the reason's fields.

use std::fs;
use std::path::Path;

use leasehold::rules::{ElectionFacts, evaluate};
use leasehold::{FailoverRecord, MemberRecord, PeerReply, ResourceRole, SyncRecord, Tags, Verdict, WatchdogHealth};

#[derive(Default)]
struct Case {
    title: String,
    line: usize,
    me: Option<MemberRecord>,
    peers: Vec<PeerReply>,
    leader_position: Option<u64>,
    cluster_timeline: Option<u64>,
    max_lag: Option<u64>,
    paused: bool,
    sync: Option<Option<SyncRecord>>,
    failover: Option<FailoverRecord>,
    watchdog_required: bool,
    watchdog: WatchdogHealth,
    backoff: bool,
    expect: Vec<String>,
}

fn status(words: &[&str], file: &str, line: usize) -> MemberRecord {
    let name = words.first().unwrap_or_else(|| panic!("{file}:{line}: missing member name"));
    let mut s = MemberRecord {
        name: name.to_string(),
        api_url: None,
        conn_url: None,
        role: ResourceRole::Replica,
        running: true,
        position: None,
        timeline: None,
        tags: Tags::default(),
        watchdog_failed: false,
    };
    for w in &words[1..] {
        let (k, v) = w.split_once('=').unwrap_or((w, ""));
        let num = || v.parse::<u64>().unwrap_or_else(|_| panic!("{file}:{line}: {k} needs a number, got {v:?}"));
        match k {
            "pos" => s.position = Some(num()),
            "tl" => s.timeline = Some(num()),
            "priority" => s.tags.failover_priority = num() as u32,
            "role" => {
                s.role = match v {
                    "primary" => ResourceRole::Primary,
                    "replica" => ResourceRole::Replica,
                    "unknown" => ResourceRole::Unknown,
                    other => panic!("{file}:{line}: unknown role {other:?}"),
                }
            }
            "stopped" => s.running = false,
            "nofailover" => s.tags.nofailover = true,
            "nosync" => s.tags.nosync = true,
            "watchdog_failed" => s.watchdog_failed = true,
            other => panic!("{file}:{line}: unknown member option {other:?}"),
        }
    }
    s
}

fn parse(file: &str, text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut cur: Option<Case> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(title) = l.strip_prefix("case:") {
            cases.extend(cur.take());
            cur = Some(Case { title: title.trim().to_string(), line, ..Case::default() });
            continue;
        }
        let c = cur.as_mut().unwrap_or_else(|| panic!("{file}:{line}: fact before the first `case:`"));
        let words: Vec<&str> = l.split_whitespace().collect();
        let num = |w: Option<&&str>| -> u64 {
            w.and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{file}:{line}: expected a number in {l:?}"))
        };
        match words[0] {
            "me" => c.me = Some(status(&words[1..], file, line)),
            "peer" => c.peers.push(PeerReply::Reachable(status(&words[1..], file, line))),
            "unreachable" => c.peers.push(PeerReply::Unreachable { name: words[1].to_string() }),
            "leader_position" => c.leader_position = Some(num(words.get(1))),
            "cluster_timeline" => c.cluster_timeline = Some(num(words.get(1))),
            "max_lag" => c.max_lag = Some(num(words.get(1))),
            "paused" => c.paused = true,
            "backoff" => c.backoff = true,
            "sync" => {
                c.sync = Some(match words.get(1) {
                    Some(&"-") | None => None,
                    Some(leader) => Some(SyncRecord {
                        leader: leader.to_string(),
                        sync_standby: words
                            .get(2)
                            .map(|s| s.split(',').map(String::from).collect())
                            .unwrap_or_default(),
                    }),
                })
            }
            "failover" => {
                let mut f = FailoverRecord::default();
                for w in &words[1..] {
                    match w.split_once('=') {
                        Some(("leader", v)) => f.leader = Some(v.to_string()),
                        Some(("candidate", v)) => f.candidate = Some(v.to_string()),
                        _ => panic!("{file}:{line}: unknown failover option {w:?}"),
                    }
                }
                c.failover = Some(f);
            }
            "watchdog" => {
                c.watchdog_required = words.get(1) == Some(&"required");
                c.watchdog = match words.get(2) {
                    Some(&"working") => WatchdogHealth::Working,
                    Some(&"failed") => WatchdogHealth::Failed,
                    _ => WatchdogHealth::Off,
                };
            }
            "expect" => c.expect = words[1..].iter().map(|s| s.to_string()).collect(),
            other => panic!("{file}:{line}: unknown fact {other:?}"),
        }
    }
    cases.extend(cur);
    cases
}

/// Renders a verdict in the case-file vocabulary: `eligible` or `ineligible <reason> k=v...`.
fn render(v: &Verdict) -> Vec<String> {
    match v {
        Verdict::Eligible => vec!["eligible".into()],
        Verdict::Ineligible(reason) => {
            let json = serde_json::to_value(reason).expect("reasons serialize");
            let obj = json.as_object().expect("tagged enum");
            let mut out = vec!["ineligible".to_string(), obj["reason"].as_str().unwrap().to_string()];
            for (k, v) in obj.iter().filter(|(k, _)| *k != "reason") {
                out.push(format!("{k}={}", v.as_str().map(String::from).unwrap_or_else(|| v.to_string())));
            }
            out
        }
    }
}

fn check(file: &str, c: &Case) -> Result<(), String> {
    let me = c.me.as_ref().ok_or_else(|| format!("{file}:{}: case {:?} has no `me`", c.line, c.title))?;
    let facts = ElectionFacts {
        me,
        leader_position: c.leader_position,
        cluster_timeline: c.cluster_timeline,
        maximum_lag_on_failover: c.max_lag.unwrap_or(1 << 20),
        peers: &c.peers,
        paused: c.paused,
        synchronous: c.sync.as_ref().map(|s| s.as_ref()),
        failover: c.failover.as_ref(),
        watchdog_required: c.watchdog_required,
        watchdog: c.watchdog,
        in_pre_promote_backoff: c.backoff,
    };
    let got = render(&evaluate(&facts));
    if c.expect.is_empty() {
        return Err(format!("{file}:{}: case {:?} has no `expect`", c.line, c.title));
    }
    // Expected words must be a prefix-or-subset: verdict and reason in order, then any fields.
    let ok = c.expect.len() <= got.len()
        && c.expect.iter().take(2).zip(&got).all(|(e, g)| e == g)
        && c.expect.iter().skip(2).all(|e| got.contains(e));
    if ok {
        Ok(())
    } else {
        Err(format!("{file}:{}: {:?}: expected `{}`, got `{}`", c.line, c.title, c.expect.join(" "), got.join(" ")))
    }
}

#[test]
fn rule_case_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rules");
    let mut files: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut failures = Vec::new();
    let mut total = 0;
    let mut reasons_seen = std::collections::BTreeSet::new();
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "cases")) {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        for case in parse(&name, &fs::read_to_string(path).unwrap()) {
            total += 1;
            if let [verdict, reason, ..] = case.expect.as_slice()
                && verdict == "ineligible"
            {
                reasons_seen.insert(reason.clone());
            }
            if let Err(e) = check(&name, &case) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{} of {total} cases failed:\n{}", failures.len(), failures.join("\n"));
    // Every reason of DESIGN.md rule 8 has at least one case.
    for reason in [
        "lagging",
        "peer_ahead",
        "old_primary_running",
        "no_failover_tag",
        "lower_priority",
        "not_in_sync_set",
        "watchdog_not_working",
        "paused",
        "pre_promote_backoff",
        "manual_failover_to_other",
        "timeline_behind",
    ] {
        assert!(reasons_seen.contains(reason), "no case file covers reason {reason:?}");
    }
    assert!(total >= 30, "only {total} cases");
}

#[test]
fn a_wrong_expectation_is_reported() {
    // The runner itself must be able to fail.
    let cases = parse("inline", "case: x\nme a pos=1\nexpect ineligible paused\n");
    assert!(check("inline", &cases[0]).unwrap_err().contains("expected `ineligible paused`, got `eligible`"));
}
