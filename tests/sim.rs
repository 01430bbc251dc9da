//! Properties of the deterministic simulator (feature `sim`): safety inside the envelope over
//! random seeds and proptest-generated fault schedules (shrunk to a minimal failing schedule on
//! failure), determinism, and proof that the simulator can fail: each safety rule switched off
//! (a [`Mutation`]) must produce a violation of its invariant within a bounded number of seeds.
#![cfg(feature = "sim")]

use std::time::Duration;

use leasehold::sim::{
    Direction, Fault, InvariantId, Mutation, Report, Scenario, SimConfig, StoreProfile, TimedFault, strategy,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// Shorter runs than the default keep CI fast: 40 s of chaos, then the liveness phase.
fn cfg(nodes: usize, profile: StoreProfile) -> SimConfig {
    let mut c = SimConfig::new(nodes);
    c.chaos = Duration::from_secs(40);
    c.profile = profile;
    c.liveness = c.liveness_bound() + 2 * c.timing.ttl;
    c
}

fn fail_with(r: &Report) -> TestCaseError {
    TestCaseError::fail(format!("\n{r}"))
}

#[test]
fn fault_free_runs_elect_one_leader_on_every_profile() {
    for profile in StoreProfile::ALL {
        for nodes in [1, 3, 5] {
            let r = Scenario::with_config(cfg(nodes, profile)).seed(nodes as u64).run();
            r.assert_holds(&InvariantId::ALL);
            assert_eq!(r.measured.overlaps, 0, "{r}");
            assert!(r.measured.failovers.is_empty(), "a fault-free run never fails over:\n{r}");
            assert!(r.steps > 1000, "the run did work: {r}");
        }
    }
}

#[test]
fn same_seed_same_trace_hash() {
    for (i, profile) in StoreProfile::ALL.into_iter().enumerate() {
        let s = Scenario::with_config(cfg(3, profile)).seed(1000 + i as u64).random_faults(15, true);
        let (a, b) = (s.run(), s.run());
        assert_eq!((a.trace_hash, a.steps), (b.trace_hash, b.steps), "{profile}: same seed must replay exactly");
        assert_eq!(a.violations, b.violations);
        let other = Scenario::with_config(cfg(3, profile)).seed(2000 + i as u64).random_faults(15, true).run();
        assert_ne!(a.trace_hash, other.trace_hash, "{profile}: different seeds, different traces");
    }
}

/// A fixed sweep: random seeds, random swarm fault mixes, inside the envelope, every profile,
/// both replication modes. Every invariant must hold.
#[test]
fn sweep_inside_the_envelope_holds_every_invariant() {
    let mut runs = 0;
    for profile in StoreProfile::ALL {
        for seed in 0..150u64 {
            let nodes = 1 + (seed % 5) as usize;
            let mut c = cfg(nodes, profile);
            c.timeline_rows = 200;
            let r = Scenario::with_config(c).seed(seed).random_faults(12, false).run();
            r.assert_holds(&InvariantId::ALL);
            runs += u64::from(r.within_envelope);
        }
    }
    // Only Kubernetes runs with large clock steps leave the envelope.
    assert!(runs > 500, "{runs} of 600 runs inside the envelope");
}

/// Synchronous mode: a first leader is elected without a sync key, failover stays inside the
/// sync set, and no acknowledged write is lost (I5), under the same random faults.
#[test]
fn synchronous_mode_elects_and_loses_no_acknowledged_write() {
    let mut failovers = 0;
    for profile in StoreProfile::ALL {
        for seed in 0..40u64 {
            let mut c = cfg(3, profile);
            c.synchronous = true;
            let r = Scenario::with_config(c).seed(5000 + seed).random_faults(12, false).run();
            r.assert_holds(&InvariantId::ALL);
            assert_eq!(r.measured.lost_acked_writes, 0, "{r}");
            failovers += r.measured.failovers.len();
        }
    }
    // The faults did make leaders change, so the sync-set rule was exercised, not idle.
    assert!(failovers > 20, "only {failovers} failovers in 160 synchronous runs");
}

/// Two and three synchronous standbys, and strict mode, under the same random faults: the
/// leader keeps a sync key of confirmed standbys, each holding every acknowledged write, and in
/// strict mode no write is acknowledged without a synchronous copy (I5).
#[test]
fn several_sync_standbys_and_strict_mode_lose_no_acknowledged_write() {
    let mut failovers = 0;
    let mut acked_strict = 0;
    for profile in StoreProfile::ALL {
        for seed in 0..24u64 {
            let (nodes, count, strict) = [(3, 2, false), (5, 2, false), (5, 3, true), (3, 1, true)][seed as usize % 4];
            let c = cfg(nodes, profile);
            let r =
                Scenario::with_config(c).sync_standbys(count, strict).seed(7000 + seed).random_faults(12, false).run();
            r.assert_holds(&InvariantId::ALL);
            assert_eq!(r.measured.lost_acked_writes, 0, "{r}");
            failovers += r.measured.failovers.len();
            if strict {
                acked_strict += r.measured.acked_writes;
            }
        }
    }
    assert!(failovers > 10, "only {failovers} failovers in 96 runs");
    assert!(acked_strict > 1000, "strict runs acknowledged only {acked_strict} writes: commits never completed");
}

/// Outside the envelope (long pauses, large drift, slow demotes) fencing, promotion rules,
/// synchronous writes and epochs must still hold; overlap is only measured.
#[test]
fn sweep_beyond_the_envelope_keeps_the_unconditional_invariants() {
    let unconditional = [InvariantId::I2, InvariantId::I3, InvariantId::I5, InvariantId::I7];
    let mut outside = 0;
    for profile in StoreProfile::ALL {
        for seed in 0..80u64 {
            let c = cfg(3, profile);
            let r = Scenario::with_config(c).seed(seed).random_faults(15, true).run();
            r.assert_holds(&unconditional);
            outside += u64::from(!r.within_envelope);
        }
    }
    assert!(outside > 10, "the sweep must leave the envelope sometimes ({outside})");
}

proptest! {
    #![proptest_config(Config { cases: 96, max_shrink_iters: 200, failure_persistence: None, ..Config::default() })]

    /// Explicit fault schedules inside the envelope: proptest shrinks a failure by removing
    /// faults and shortening them.
    #[test]
    fn generated_schedules_inside_the_envelope_are_safe(
        seed in any::<u64>(),
        profile in prop_oneof![Just(StoreProfile::Etcd), Just(StoreProfile::ZooKeeper), Just(StoreProfile::Consul), Just(StoreProfile::Kubernetes)],
        nodes in 1usize..=5,
        faults in strategy::schedule(5, Duration::from_secs(40), 12, 10_000, 600),
    ) {
        let r = Scenario::with_config(cfg(nodes, profile)).seed(seed).faults(faults).run();
        if !r.is_ok() {
            return Err(fail_with(&r));
        }
    }
}

/// Runs seeds until the mutated simulator breaks one of `expected`; returns that report.
fn find(mutation: Mutation, expected: &[InvariantId], seeds: u64, build: impl Fn(u64) -> Scenario) -> Report {
    for seed in 0..seeds {
        let r = build(seed).mutation(mutation).run();
        if expected.iter().any(|id| r.violated(*id)) {
            println!("{mutation:?} found at seed {seed}:\n{r}");
            return r;
        }
    }
    panic!("{mutation:?}: no violation of {expected:?} in {seeds} seeds: the simulator cannot see this rule");
}

#[test]
fn no_safety_margin_is_caught() {
    let r = find(Mutation::NoSafetyMargin, &[InvariantId::I1, InvariantId::I1Prime, InvariantId::I6], 50, |seed| {
        Scenario::with_config(cfg(3, StoreProfile::Etcd)).seed(seed).random_faults_of(8, false, &[0, 6])
    });
    assert!(r.within_envelope, "found inside the envelope, where it counts");
}

#[test]
fn no_fencing_at_the_sink_is_caught() {
    find(Mutation::NoFencing, &[InvariantId::I2], 100, |seed| {
        Scenario::with_config(cfg(3, StoreProfile::Etcd)).seed(seed).random_faults_of(6, true, &[2])
    });
    // The same schedules with fencing on: I2 holds, the sink rejected the stale writes.
    let mut rejected = 0;
    for seed in 0..30 {
        let r = Scenario::with_config(cfg(3, StoreProfile::Etcd)).seed(seed).random_faults_of(6, true, &[2]).run();
        r.assert_holds(&[InvariantId::I2]);
        rejected += r.measured.fenced_rejections;
    }
    assert!(rejected > 0, "fencing must have had something to reject");
}

#[test]
fn demote_after_release_is_caught() {
    find(Mutation::AckDemoteEarly, &[InvariantId::I1Prime], 50, |seed| {
        Scenario::with_config(cfg(3, StoreProfile::Etcd)).seed(seed).random_faults_of(6, false, &[4])
    });
}

#[test]
fn no_lag_check_is_caught() {
    find(Mutation::NoLagCheck, &[InvariantId::I3], 50, |seed| {
        let s = Duration::from_secs;
        Scenario::with_config(cfg(2, StoreProfile::Etcd))
            .seed(seed)
            .fault(s(1), leasehold::sim::Fault::ReplicationStall { node: 0, duration: s(35) })
            .fault(s(1), leasehold::sim::Fault::ReplicationStall { node: 1, duration: s(35) })
            .fault(s(15), leasehold::sim::Fault::Crash { node: 0, down_for: s(8) })
            .fault(s(28), leasehold::sim::Fault::Crash { node: 1, down_for: s(8) })
    });
}

#[test]
fn acting_on_an_unknown_acquire_is_caught() {
    find(Mutation::UnknownAsWon, &[InvariantId::I1Prime, InvariantId::I1, InvariantId::I2], 60, |seed| {
        Scenario::with_config(cfg(3, StoreProfile::Etcd)).seed(seed).random_faults_of(10, false, &[0, 3, 7])
    });
}

/// One sweep schedule, as `sim_sweep --reproduce SEED --profile P --nodes N [--sync]
/// --faults F --chaos-secs 120` draws it.
struct Replay {
    profile: StoreProfile,
    nodes: usize,
    sync: bool,
    faults: usize,
    seed: u64,
    chaos_secs: u64,
}

impl Replay {
    const fn new(profile: StoreProfile, nodes: usize, faults: usize, seed: u64) -> Self {
        Replay { profile, nodes, sync: false, faults, seed, chaos_secs: 120 }
    }

    const fn chaos(mut self, secs: u64) -> Self {
        self.chaos_secs = secs;
        self
    }

    fn scenario(&self) -> Scenario {
        let mut c = SimConfig::new(self.nodes);
        c.synchronous = self.sync;
        Scenario::with_config(c)
            .profile(self.profile)
            .chaos(Duration::from_secs(self.chaos_secs))
            .seed(self.seed)
            .random_faults(self.faults, false)
    }
}

/// Issue 13, I1': a member being shut down took the current leader's record for the answer to
/// its own lost acquire (equal tokens, member not compared) and released that key.
const FOREIGN_KEY_RELEASES: [Replay; 6] = [
    Replay::new(StoreProfile::Consul, 5, 24, 7_000_724),
    Replay::new(StoreProfile::Etcd, 3, 40, 30_001_007),
    Replay::new(StoreProfile::ZooKeeper, 3, 40, 30_001_007),
    Replay::new(StoreProfile::Kubernetes, 3, 40, 30_001_007),
    Replay::new(StoreProfile::Kubernetes, 3, 40, 30_002_212),
    Replay::new(StoreProfile::Consul, 5, 50, 80_001_469),
];

/// Issue 13, I3: a candidate promoted past a peer that was ahead and reachable, because that
/// peer's registration had expired (it was cut from the store) and nobody asked it.
const PROMOTIONS_PAST_AN_UNREGISTERED_PEER: [Replay; 14] = [
    Replay::new(StoreProfile::Etcd, 3, 40, 30_000_646),
    Replay::new(StoreProfile::Etcd, 3, 40, 30_000_873),
    Replay::new(StoreProfile::Etcd, 3, 40, 30_001_528),
    Replay::new(StoreProfile::Etcd, 3, 40, 30_001_951),
    Replay::new(StoreProfile::Etcd, 3, 40, 30_002_060),
    Replay::new(StoreProfile::ZooKeeper, 3, 40, 30_000_519),
    Replay::new(StoreProfile::ZooKeeper, 3, 40, 30_000_533),
    Replay::new(StoreProfile::ZooKeeper, 3, 40, 30_001_433),
    Replay::new(StoreProfile::ZooKeeper, 3, 40, 30_001_577),
    Replay::new(StoreProfile::ZooKeeper, 3, 40, 30_002_443),
    Replay::new(StoreProfile::ZooKeeper, 3, 40, 30_002_826),
    Replay::new(StoreProfile::Consul, 3, 40, 30_002_298),
    Replay::new(StoreProfile::Consul, 3, 40, 30_002_366),
    Replay { profile: StoreProfile::Etcd, nodes: 3, sync: true, faults: 50, seed: 70_000_023, chaos_secs: 120 },
];

/// Found by the long sweeps (`scripts/long-sweep.sh`); the first four in the simulator's own
/// bookkeeping: I3 counted members as "could have been asked" from a load the node had
/// already given up on, or from a status roster no longer in its view; I6 let a late answer
/// to an older renewal (ignored by the node) pull the declared belief back.
const LONG_SWEEP_FINDINGS: [Replay; 6] = [
    Replay::new(StoreProfile::Etcd, 3, 38, 277_360_463_235).chaos(30),
    Replay::new(StoreProfile::ZooKeeper, 3, 32, 277_360_495_270).chaos(30),
    Replay::new(StoreProfile::Etcd, 3, 31, 277_360_471_209).chaos(30),
    Replay::new(StoreProfile::Consul, 3, 38, 277_360_526_276).chaos(30),
    // I5 (a real bug): n1 raced on a stale view whose sync key named it, won the key, and
    // promoted over the fresh sync key, which named n0; n0 held synchronously acknowledged
    // writes n1 lacked. Now the fresh sync key must name the winner, or it gives the key back.
    Replay { profile: StoreProfile::Consul, nodes: 3, sync: true, faults: 15, seed: 229_435_991_069, chaos_secs: 30 },
    // The simulator's own model: standbys told "no leader" kept streaming from a deposed,
    // restarted primary whose log diverged, so a candidate's log was cut back between its
    // decision and its acquire (I3 compares at the acquire). Streaming on is now a knob, off
    // by default (`SimConfig::standbys_stream_without_leader`).
    Replay::new(StoreProfile::Etcd, 3, 40, 645_385_024_341).chaos(30),
];

#[test]
fn issue_13_replays_hold_every_invariant() {
    for r in FOREIGN_KEY_RELEASES.iter().chain(&PROMOTIONS_PAST_AN_UNREGISTERED_PEER).chain(&LONG_SWEEP_FINDINGS) {
        let report = r.scenario().run();
        assert!(report.steps > 1000, "the replay ran: {report}");
        report.assert_holds(&InvariantId::ALL);
    }
}

/// Issue 17, seed 20 of the default sweep (`sim_sweep --reproduce 20 --profile etcd --nodes 3
/// --faults 12 --chaos-secs 120`): a clock step ends the leader's belief, it demotes offline
/// while the store keeps its key, and it must take that key back within one loop. Member
/// publishes wake no watch in the simulator, so no read another member's publish triggers
/// may hide a node that waits for its next regular loop (it did: 2.03 s, a loop late).
#[test]
fn an_offline_demotion_on_a_clock_step_re_elects_within_one_loop() {
    let replay = Replay::new(StoreProfile::Etcd, 3, 12, 20);
    let report = replay.scenario().run();
    report.assert_holds(&InvariantId::ALL);
    let text = report.to_string();
    assert!(
        text.contains("ClockStep") && text.contains("demoting (Offline): lease belief ran out"),
        "the schedule no longer has the clock step and the offline demotion it tests:\n{report}"
    );
    let loop_wait = SimConfig::new(3).timing.loop_wait;
    // Simulated time: the same on every machine and every run.
    assert_eq!(report.measured.failovers.len(), 1, "{report}");
    assert!(
        report.measured.failovers.iter().all(|f| *f <= loop_wait),
        "re-election took {:?}, more than one loop ({loop_wait:?}):\n{report}",
        report.measured.failovers
    );
}

/// The 1,000,000-schedule sweep's one finding was the envelope's bookkeeping: n0 was frozen
/// for 537 ms across its deadline, woke, started its demote and was frozen again 11 ms later
/// for 653 ms. Each pause fit the pause budget; together they did not, and the run was still
/// counted inside the envelope, where I1' and I6 fail it. Such a run is outside: measured, not
/// failed.
#[test]
fn two_pauses_before_a_demote_completes_count_as_one() {
    let r = Replay {
        profile: StoreProfile::ZooKeeper,
        nodes: 5,
        sync: true,
        faults: 31,
        seed: 232_286_858_507,
        chaos_secs: 30,
    };
    let scenario = r.scenario();
    let env = scenario.config.envelope();
    let pauses: Vec<_> = scenario.faults.iter().filter(|f| matches!(f.fault, Fault::Pause { node: 0, .. })).collect();
    assert!(
        pauses.len() >= 2 && pauses.iter().all(|f| f.fault.within(&env, 1000, StoreProfile::ZooKeeper)),
        "{pauses:?}"
    );
    let report = scenario.run();
    assert!(!report.within_envelope, "{report}");
    // That seed's run breached through these pauses until issue 17 changed which store
    // changes wake watches, and with them the trace. The same shape, built by hand so that no
    // change of trace can take it away: a node cut from the store is frozen just before its
    // belief ends, wakes past it for 11 ms, starts demoting and is frozen again. Each pause
    // fits the envelope; together they do not. When the belief ends and who leads depend on
    // the trace, so seeds, nodes and offsets of the first pause are tried until one breaches.
    let ms = Duration::from_millis;
    let c = {
        let mut c = SimConfig::new(3);
        c.profile = StoreProfile::ZooKeeper;
        c.chaos = Duration::from_secs(30);
        c
    };
    let most = c.envelope().max_pause;
    let tries = (0..8u64)
        .flat_map(|seed| (0..3).flat_map(move |node| (3_000..4_600).step_by(50).map(move |o| (seed, node, o))));
    let mut breached = None;
    for (seed, node, offset) in tries {
        let cut = TimedFault {
            at: ms(10_000),
            fault: Fault::StorePartition { node, direction: Direction::ToStore, duration: ms(10_000) },
        };
        let first = TimedFault { at: ms(10_000 + offset), fault: Fault::Pause { node, duration: most } };
        let second = TimedFault { at: first.at + most + ms(11), fault: Fault::Pause { node, duration: most } };
        let two = Scenario::with_config(c.clone()).seed(seed).faults([cut.clone(), first.clone(), second]).run();
        assert!(!two.within_envelope, "two pauses 11 ms apart are one: {two}");
        if two.measured.outside_envelope_breaches > 0 {
            breached = Some((seed, cut, first));
            break;
        }
    }
    let (seed, cut, first) = breached.expect("no schedule of two in-budget pauses breached");
    // The first pause alone, with the same cut, stays inside the envelope and safe: the
    // second one made the breach.
    let one = Scenario::with_config(c).seed(seed).faults([cut, first]).run();
    assert!(one.within_envelope, "{one}");
    one.assert_holds(&InvariantId::ALL);
    assert_eq!(one.measured.outside_envelope_breaches, 0, "{one}");
}

/// Runs `replays` with `mutation` until one breaks an invariant of `expected`.
fn find_among(mutation: Mutation, expected: &[InvariantId], replays: &[Replay]) -> Report {
    for r in replays {
        let report = r.scenario().mutation(mutation).run();
        if expected.iter().any(|id| report.violated(*id)) {
            println!("{mutation:?} found at seed {}:\n{report}", r.seed);
            return report;
        }
    }
    panic!(
        "{mutation:?}: no violation of {expected:?} in {} replays: the simulator cannot see this rule",
        replays.len()
    );
}

#[test]
fn adopting_another_members_key_is_caught() {
    find_among(Mutation::AdoptForeignKey, &[InvariantId::I8], &FOREIGN_KEY_RELEASES);
}

#[test]
fn asking_only_registered_members_is_caught() {
    find_among(Mutation::AskRegisteredOnly, &[InvariantId::I3], &PROMOTIONS_PAST_AN_UNREGISTERED_PEER);
}

/// proptest finds a failure of the margin mutation and shrinks it to a short schedule, which
/// is printed with its timeline.
#[test]
fn a_failure_shrinks_to_a_small_schedule() {
    let mut runner =
        TestRunner::new(Config { cases: 64, max_shrink_iters: 300, failure_persistence: None, ..Config::default() });
    let strat = (any::<u64>(), strategy::schedule(3, Duration::from_secs(40), 20, 10_000, 600));
    let result = runner.run(&strat, |(seed, faults)| {
        let r = Scenario::with_config(cfg(3, StoreProfile::Etcd))
            .seed(seed)
            .faults(faults)
            .mutation(Mutation::NoSafetyMargin)
            .run();
        if r.violated(InvariantId::I6) || r.violated(InvariantId::I1) || r.violated(InvariantId::I1Prime) {
            return Err(fail_with(&r));
        }
        Ok(())
    });
    match result {
        Err(TestError::Fail(reason, (seed, faults))) => {
            println!("shrunk to {} faults (seed {seed}):{reason}", faults.len());
            assert!(faults.len() <= 10, "shrinking left {} faults", faults.len());
        }
        other => panic!("the margin mutation was not found: {other:?}"),
    }
}

/// Checks that `svg` is well-formed enough for a browser: every tag closes, in order, and
/// attribute values are quoted. Returns the element names seen.
fn check_svg(svg: &str) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').expect("unterminated tag") + open;
        let tag = &rest[open + 1..close];
        assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes in <{tag}>");
        let text = &rest[..open];
        assert!(!text.contains('>'), "stray '>' in text {text:?}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "closing </{name}> out of order");
        } else {
            let name = tag.split(|c: char| c.is_whitespace() || c == '/').next().unwrap_or("").to_string();
            assert!(!name.is_empty(), "empty tag name");
            seen.push(name.clone());
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        rest = &rest[close + 1..];
    }
    assert!(stack.is_empty(), "unclosed tags {stack:?}");
    assert!(rest.trim().is_empty(), "text after the root element");
    seen
}

/// The SVG picture of a crash failover plus a partition is well-formed and shows a promotion
/// mark for every promotion of the run, on the right node, under the right epoch.
#[test]
fn svg_timeline_of_a_failover_is_well_formed_and_marks_every_promotion() {
    use leasehold::sim::{Direction, Fault};
    let s = Duration::from_secs;
    let r = Scenario::with_config(cfg(3, StoreProfile::Etcd))
        .seed(7)
        .fault(s(8), Fault::Crash { node: 0, down_for: s(6) })
        .fault(s(8), Fault::Crash { node: 1, down_for: s(6) })
        .fault(s(8), Fault::Crash { node: 2, down_for: s(6) })
        .fault(s(20), Fault::StorePartition { node: 0, direction: Direction::Both, duration: s(5) })
        .fault(s(20), Fault::StorePartition { node: 1, direction: Direction::Both, duration: s(5) })
        .fault(s(20), Fault::StorePartition { node: 2, direction: Direction::Both, duration: s(5) })
        .run();
    r.assert_holds(&InvariantId::ALL);
    // Everybody crashed and everybody was cut off once: at least three leaders.
    let promotions = r.picture.promotions();
    assert!(promotions.len() >= 3, "expected failovers:\n{r}");
    let svg = r.svg();
    let elements = check_svg(&svg);
    assert_eq!(elements.first().map(String::as_str), Some("svg"));
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    for p in promotions {
        let mark = format!(
            "class=\"promotion\" data-node=\"{}\" data-epoch=\"{}\" data-at-ns=\"{}\"",
            p.node,
            p.epoch.expect("a promotion has an epoch").0,
            p.at.as_nanos()
        );
        assert!(svg.contains(&mark), "no mark {mark}");
    }
    assert_eq!(svg.matches("class=\"promotion\"").count(), promotions.len());
    // The picture agrees with the text timeline: every "promote(epoch N)" there was carried out.
    let text = r.timeline.render(3);
    for p in promotions {
        let needle = format!("n{} promote(epoch {})", p.node, p.epoch.map_or(0, |e| e.0));
        assert!(text.contains(&needle), "{needle} not in the text timeline:\n{text}");
    }
    for class in ["role primary", "role replica", "role down", "belief", "key", "store-cut", "write", "fault"] {
        assert!(svg.contains(&format!("class=\"{class}")), "no {class} element");
    }
    assert!(!r.picture.demotions().is_empty(), "the store cut makes the leader demote");
}

/// The sync key grows only after the resource confirms the standby has caught up. The
/// scenario: the sync standby n1 acknowledges writes that the stalled n2 lacks, n1 crashes, the
/// leader moves the sync set to n2; with the rule off the key names n2 at once, the leader
/// crashes and n2 is promoted without the writes n1 acknowledged.
fn sync_switch(seed: u64) -> Scenario {
    use leasehold::sim::Fault;
    let s = Duration::from_secs;
    let mut c = cfg(3, StoreProfile::Etcd);
    c.synchronous = true;
    // Slow writes keep the stalled standby within maximum_lag_on_failover.
    c.write_interval = Duration::from_millis(200);
    Scenario::with_config(c)
        .seed(seed)
        .fault(s(5), Fault::ReplicationStall { node: 2, duration: s(25) })
        .fault(s(6), Fault::Crash { node: 1, down_for: s(30) })
        .fault(s(16), Fault::Crash { node: 0, down_for: s(10) })
}

#[test]
fn sync_key_growing_before_the_standby_caught_up_is_caught() {
    let r = find(Mutation::ConfirmSyncEarly, &[InvariantId::I5], 30, sync_switch);
    // The same scenario with the rule on loses no synchronously acknowledged write.
    let fixed = sync_switch(r.seed).run();
    fixed.assert_holds(&InvariantId::ALL);
    for seed in 0..30 {
        sync_switch(seed).run().assert_holds(&[InvariantId::I5]);
    }
}

/// The replay command carries every option that shapes a drawn run, and only such runs get one.
#[test]
fn replay_command_names_every_option_of_a_drawn_run() {
    let mut cfg = SimConfig::new(3);
    cfg.chaos = Duration::from_secs(40);
    cfg.synchronous = true;
    let drawn = Scenario::with_config(cfg.clone()).profile(StoreProfile::Consul).seed(7).random_faults(5, true);
    let cmd = drawn.clone().mutation(Mutation::NoFencing).run().replay_command().expect("a drawn run replays");
    for part in [
        "--reproduce 7",
        "--profile consul",
        "--nodes 3",
        "--faults 5",
        "--chaos-secs 40",
        "--sync",
        "--beyond",
        "--mutation NoFencing",
    ] {
        assert!(cmd.contains(part), "{part:?} missing from {cmd}");
    }
    let patroni = Scenario::with_config(cfg.clone()).timing(leasehold::Timing::default()).random_faults(2, false);
    assert!(patroni.run().replay_command().expect("replays").contains("--timing patroni"));
    let hand_written = drawn.fault(Duration::from_secs(1), Fault::Crash { node: 0, down_for: Duration::from_secs(1) });
    assert_eq!(hand_written.run().replay_command(), None, "an added fault is not in the sweep's schedule");
}

/// Two synchronous standbys; n2's replication stalls, so writes it lacks are acknowledged only
/// if the resource drops the count (waits for one standby instead of both). n1 crashes (the key
/// shrinks to n2), then the leader: n2 is promoted without those writes.
fn two_standbys_one_stalled(seed: u64) -> Scenario {
    let s = Duration::from_secs;
    let mut c = cfg(3, StoreProfile::Etcd);
    // Slow writes keep the stalled standby within maximum_lag_on_failover.
    c.write_interval = Duration::from_millis(200);
    Scenario::with_config(c)
        .sync_standbys(2, false)
        .seed(seed)
        .fault(s(8), Fault::ReplicationStall { node: 2, duration: s(25) })
        .fault(s(9), Fault::Crash { node: 1, down_for: s(30) })
        .fault(s(19), Fault::Crash { node: 0, down_for: s(10) })
}

#[test]
fn a_resource_that_drops_the_sync_count_is_caught() {
    let r = find(Mutation::AckOnAnyStandby, &[InvariantId::I5], 30, two_standbys_one_stalled);
    // With the count kept, the same schedules lose no synchronously acknowledged write.
    two_standbys_one_stalled(r.seed).run().assert_holds(&InvariantId::ALL);
    for seed in 0..30 {
        two_standbys_one_stalled(seed).run().assert_holds(&[InvariantId::I5]);
    }
}

/// Strict mode with both replicas down for a while: the leader has no standby, and a resource
/// that reads the wildcard as "no standby" acknowledges writes nobody else has.
fn strict_without_standbys(seed: u64) -> Scenario {
    let s = Duration::from_secs;
    Scenario::with_config(cfg(3, StoreProfile::Etcd))
        .sync_standbys(1, true)
        .seed(seed)
        .fault(s(8), Fault::Crash { node: 1, down_for: s(10) })
        .fault(s(8), Fault::Crash { node: 2, down_for: s(10) })
}

#[test]
fn strict_mode_acknowledging_without_a_standby_is_caught() {
    let r = find(Mutation::StrictAsNone, &[InvariantId::I5], 10, strict_without_standbys);
    assert!(r.violations.iter().any(|v| v.detail.contains("strict mode")), "{r}");
    let fixed = strict_without_standbys(r.seed).run();
    fixed.assert_holds(&InvariantId::ALL);
    assert!(fixed.measured.acked_writes > 0, "commits resumed once the standbys were back: {fixed}");
}

/// Issue 15, election liveness: the leader's node is frozen for 20 s (beyond the envelope)
/// while its resource keeps taking writes and streaming them to both replicas. Each
/// candidate used to compare its own position, read as its loop began, with the other's
/// fresh answer, see it ahead, and refuse (`PeerAhead`), so nobody was promoted until the
/// frozen node woke. Read after the peers answered, a candidate's own position is the
/// fresher one, and the key's holder is replaced while the old node is still frozen.
///
/// Returns, per seed, whether a replica was promoted while the leader's node was frozen.
fn replaced_during_the_freeze(mutation: Option<Mutation>) -> Vec<bool> {
    let (freeze_at, freeze) = (Duration::from_secs(10), Duration::from_secs(20));
    (1..=5)
        .map(|seed| {
            let base = || {
                let mut c = cfg(3, StoreProfile::Etcd);
                // The daemon alone is frozen; PostgreSQL serves and streams on.
                c.pause_freezes_resource = false;
                c.standbys_stream_without_leader = true;
                let s = Scenario::with_config(c).seed(seed);
                if let Some(m) = mutation { s.mutation(m) } else { s }
            };
            let first = base().run().picture.promotions().first().map(|p| p.node).expect("a first leader");
            let r = base().fault(freeze_at, Fault::Pause { node: first, duration: freeze }).run();
            let promotions = r.picture.promotions();
            assert!(
                promotions.first().is_some_and(|p| p.node == first && p.at < freeze_at),
                "n{first} leads when it is frozen:\n{r}"
            );
            assert!(r.violations.is_empty(), "{r}");
            promotions.iter().any(|p| p.node != first && p.at > freeze_at && p.at < freeze_at + freeze)
        })
        .collect()
}

#[test]
fn a_paused_leader_whose_primary_still_streams_is_replaced() {
    assert_eq!(replaced_during_the_freeze(None), [true; 5]);
}

#[test]
fn comparing_a_stale_own_position_with_fresh_peers_is_caught() {
    let replaced = replaced_during_the_freeze(Some(Mutation::StaleOwnPosition));
    eprintln!("replaced during the freeze, per seed: {replaced:?}");
    assert!(replaced.iter().any(|r| !r), "every seed failed over, so the scenario cannot see the mutual refusal");
}

/// A leader cut `FromStore` (its requests reach the store, no answer comes back) loses its key
/// before the cut heals, on every profile: its client gives the silent connection up and cannot
/// reconnect while answers cannot come back, so its keep-alives and renewals stop reaching the
/// store, its session (or Kubernetes lease) runs out, and another member takes over. Before the
/// simulator modelled connections, the cut leader's keep-alives kept its key for the whole cut.
#[test]
fn a_leader_cut_from_store_answers_loses_its_key_during_the_cut() {
    let s = Duration::from_secs;
    let (cut_at, cut_for) = (s(10), s(25));
    for profile in StoreProfile::ALL {
        let base = || Scenario::with_config(cfg(3, profile)).seed(3);
        let first = base().run().picture.promotions().first().map(|p| p.node).expect("a first leader");
        let cut = Fault::StorePartition { node: first, direction: Direction::FromStore, duration: cut_for };
        let r = base().fault(cut_at, cut).run();
        r.assert_holds(&InvariantId::ALL);
        let promotions = r.picture.promotions();
        assert!(
            promotions.first().is_some_and(|p| p.node == first && p.at < cut_at),
            "{profile}: n{first} leads when it is cut:\n{r}"
        );
        assert!(
            promotions.iter().any(|p| p.node != first && p.at > cut_at && p.at < cut_at + cut_for),
            "{profile}: nobody took over from n{first} while it heard nothing from the store:\n{r}"
        );
    }
}

/// A leader whose belief ends without its key being taken (a forward clock step: it demotes
/// offline and releases nothing) and that then shuts down cleanly leaves that key orphaned in
/// the store. The daemon's clean exit ends its store session (etcd revokes the lease,
/// ZooKeeper closes the session, Consul destroys it; Kubernetes clears the holder of the Lease
/// it still counts held), so the key goes at once and another member takes over, instead of
/// the store expiring it a ttl after the last renewal. Simulated time: the same on every run.
#[test]
fn a_clean_shutdown_ends_the_session_and_frees_an_orphaned_key_at_once() {
    let (s, ms) = (Duration::from_secs, Duration::from_millis);
    let step_at = s(10);
    for profile in StoreProfile::ALL {
        let c = cfg(3, profile);
        let (ttl, loop_wait) = (c.timing.ttl, c.timing.loop_wait);
        let base = || Scenario::with_config(c.clone()).seed(3);
        let first = base().run().picture.promotions().first().map(|p| p.node).expect("a first leader");
        let r = base()
            .fault(step_at, Fault::ClockStep { node: first, forward: ttl })
            .fault(step_at + ms(1), Fault::Shutdown { node: first, down_for: s(20) })
            .run();
        r.assert_holds(&InvariantId::ALL);
        let text = r.to_string();
        assert!(
            text.contains(&format!("n{first} demoting (Offline): lease belief ran out")),
            "{profile}: n{first} no longer demotes offline on the step, so its key is not orphaned:\n{r}"
        );
        let promotions = r.picture.promotions();
        assert!(
            promotions.first().is_some_and(|p| p.node == first && p.at < step_at),
            "{profile}: n{first} leads when its clock steps:\n{r}"
        );
        // Its last renewal reached the store at most a loop before the step; without the
        // close, the key lives at least a ttl from then (longer on Consul, or after a store
        // leader change).
        let kept_until = step_at + ttl - loop_wait;
        assert!(
            promotions.iter().any(|p| p.node != first && p.at > step_at && p.at < kept_until),
            "{profile}: nobody took over from n{first} before {kept_until:?}, when its orphaned key would expire on its own:\n{r}"
        );
    }
}
