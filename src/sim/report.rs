//! [`Report`]: what a run found, and its [`Timeline`].

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::time::Duration;

use super::config::SimConfig;
use super::fault::TimedFault;
use super::invariants::{Checker, InvariantId, Measured, Violation};
use super::picture::Picture;
use super::world::World;
use crate::config::Timing;

/// A column timeline: one row each time a node's glyphs change, plus annotated rows for
/// faults, promotions, demotions and violations.
///
/// Glyphs per node: `P` acting primary, `p` promoting, `d` demoting, `r` replica, `x` down,
/// `z` paused; then `L` if it holds the leader key in the store, then `#` if cut from the store.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    capacity: usize,
    /// The first `capacity / 4` rows, kept for good.
    head: Vec<Row>,
    /// The most recent rows (a ring: dropping the oldest moves nothing).
    tail: VecDeque<Row>,
    dropped: usize,
}

type Row = (u64, String, String);

impl Timeline {
    pub(crate) fn new(capacity: usize) -> Self {
        Timeline { capacity, head: Vec::new(), tail: VecDeque::new(), dropped: 0 }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn last_glyphs(&self) -> &str {
        self.tail.back().or(self.head.last()).map_or("", |r| r.1.as_str())
    }

    /// Keeps the start and the most recent rows: the end is where failures are.
    pub(crate) fn push(&mut self, t: u64, glyphs: String, note: String) {
        if self.capacity == 0 {
            return;
        }
        if self.head.len() < self.capacity / 4 {
            self.head.push((t, glyphs, note));
            return;
        }
        if self.head.len() + self.tail.len() >= self.capacity {
            self.tail.pop_front();
            self.dropped += 1;
        }
        self.tail.push_back((t, glyphs, note));
    }

    /// Number of rows kept.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Whether no rows were kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Renders the timeline as text.
    pub fn render(&self, nodes: usize) -> String {
        let mut out = String::new();
        let _ = write!(out, "{:>10}  ", "time");
        for i in 0..nodes {
            let _ = write!(out, "{:<4}", format!("n{i}"));
        }
        out.push_str(" note\n");
        for (i, (t, g, note)) in self.head.iter().chain(&self.tail).enumerate() {
            if self.dropped > 0 && i == self.head.len() {
                let _ = writeln!(out, "{:>10}  ({} rows dropped)", "...", self.dropped);
            }
            let _ = writeln!(out, "{:>9.3}s  {g} {note}", *t as f64 / 1e9);
        }
        out
    }
}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The configuration.
    pub config: SimConfig,
    /// The fault schedule that was run.
    pub faults: Vec<TimedFault>,
    /// Whether every fault stayed inside the declared envelope.
    pub within_envelope: bool,
    /// Broken invariants.
    pub violations: Vec<Violation>,
    /// Measurements.
    pub measured: Measured,
    /// Simulated time.
    pub simulated: Duration,
    /// Events processed.
    pub steps: u64,
    /// Hash of the whole trace (equal for equal seeds and schedules).
    pub trace_hash: u64,
    /// The timeline.
    pub timeline: Timeline,
    /// Per-node intervals and marks, drawn by [`svg`](Report::svg).
    pub picture: Picture,
    /// How the schedule was drawn, from [`Scenario::drawn`](super::Scenario::drawn).
    pub drawn: Option<(usize, bool)>,
}

impl Report {
    pub(crate) fn build(w: &World, checker: &Checker) -> Self {
        Report {
            seed: w.seed,
            config: w.cfg.clone(),
            faults: w.faults.clone(),
            within_envelope: w.within_envelope,
            violations: checker.found.violations.clone(),
            measured: checker.found.measured.clone(),
            simulated: Duration::from_nanos(w.now),
            steps: w.steps,
            trace_hash: w.trace_hash(),
            timeline: w.timeline.clone(),
            picture: w.picture.clone(),
            drawn: None,
        }
    }

    /// Whether no invariant broke.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// Violations of one invariant.
    pub fn violations_of(&self, id: InvariantId) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(move |v| v.invariant == id)
    }

    /// Whether `id` broke.
    pub fn violated(&self, id: InvariantId) -> bool {
        self.violations_of(id).next().is_some()
    }

    /// Panics with the full report unless none of `ids` broke.
    pub fn assert_holds(&self, ids: &[InvariantId]) {
        if ids.iter().any(|id| self.violated(*id)) {
            panic!("{self}");
        }
    }

    /// The run as a self-contained SVG timeline: a row per node with bars for the role
    /// (primary, promoting, demoting, replica, paused, down), the lease belief, the store key,
    /// store and peer partitions; marks for promotions, demotions, client writes, faults and
    /// violations; a time axis and a legend. Empty rows when the run kept no timeline
    /// (`SimConfig::timeline_rows == 0`).
    pub fn svg(&self) -> String {
        let c = &self.config;
        let title = format!(
            "seed {} | {} | {} nodes{} | {} faults | {}",
            self.seed,
            c.profile,
            c.nodes,
            sync_label(c),
            self.faults.len(),
            if self.violations.is_empty() {
                "no violations".to_string()
            } else {
                format!("{} violations", self.violations.len())
            }
        );
        let faults: Vec<_> = self.faults.iter().map(|f| (f.at, f.fault.node(), f.to_string())).collect();
        let violations: Vec<_> = self.violations.iter().map(|v| (v.at, v.node, v.to_string())).collect();
        self.picture.svg(&title, &faults, &violations)
    }

    /// The sweep command that replays this run exactly, or `None` when the sweep cannot
    /// express it (a hand-written schedule, or a timing, write rate or liveness phase other
    /// than the sweep's).
    pub fn replay_command(&self) -> Option<String> {
        let c = &self.config;
        let (count, beyond) = self.drawn?;
        let chaos = c.chaos.as_secs();
        let patroni = c.timing == Timing::default();
        let sweep_like = (patroni || c.timing == Timing::fast())
            && c.write_interval == SimConfig::new(c.nodes).write_interval
            && c.liveness == c.liveness_bound() + 2 * c.timing.ttl
            && u128::from(chaos) * 1_000_000_000 == c.chaos.as_nanos();
        if !sweep_like {
            return None;
        }
        let mut cmd = format!(
            "cargo run --release --features sim --example sim_sweep -- --reproduce {} --profile {} --nodes {} --faults {count} --chaos-secs {chaos}",
            self.seed, c.profile, c.nodes
        );
        for (on, flag) in [
            (c.synchronous, " --sync"),
            (c.synchronous && c.strict, " --strict"),
            (beyond, " --beyond"),
            (patroni, " --timing patroni"),
        ] {
            if on {
                cmd.push_str(flag);
            }
        }
        if c.synchronous && c.sync_count > 1 {
            cmd.push_str(&format!(" --sync-count {}", c.sync_count));
        }
        if let Some(m) = c.mutation {
            cmd.push_str(&format!(" --mutation {m:?}"));
        }
        Some(cmd)
    }
}

/// `" | sync"`, with the count when above 1 and `strict` when on; empty in asynchronous mode.
fn sync_label(c: &SimConfig) -> String {
    if !c.synchronous {
        return String::new();
    }
    let mut s = String::from(" | sync");
    if c.sync_count > 1 {
        s.push_str(&format!(" x{}", c.sync_count));
    }
    if c.strict {
        s.push_str(" strict");
    }
    s
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "seed {} | profile {} | nodes {}{} | ttl {:?} loop {:?} retry {:?} margin {:?} drift {} ppm | mutation {:?} | {} envelope",
            self.seed,
            c.profile,
            c.nodes,
            if c.synchronous { sync_label(c) } else { " | sync false".to_string() },
            c.timing.ttl,
            c.timing.loop_wait,
            c.timing.retry_timeout,
            c.timing.safety_margin,
            c.timing.max_drift_ppm,
            c.mutation,
            if self.within_envelope { "inside the" } else { "OUTSIDE the" },
        )?;
        writeln!(
            f,
            "simulated {:.1}s in {} steps, trace hash {:016x}",
            self.simulated.as_secs_f64(),
            self.steps,
            self.trace_hash
        )?;
        writeln!(f, "fault schedule ({} faults):", self.faults.len())?;
        for fault in &self.faults {
            writeln!(f, "  {fault}")?;
        }
        if self.violations.is_empty() {
            writeln!(f, "no violations")?;
        } else {
            writeln!(f, "violations:")?;
            for v in &self.violations {
                writeln!(f, "  {v}")?;
            }
        }
        writeln!(f, "measured: {:?}", self.measured)?;
        writeln!(f, "timeline:\n{}", self.timeline.render(c.nodes))?;
        match self.replay_command() {
            Some(cmd) => writeln!(f, "replay: {cmd}"),
            None => {
                writeln!(f, "replay: the schedule above with `Scenario::faults` (the sweep cannot express this run)")
            }
        }
    }
}
