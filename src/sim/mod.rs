//! The deterministic simulator (feature `sim`).
//!
//! It runs real [`Node`](crate::node::Node)s (never a copy of their logic) under virtual time:
//! an event queue jumps from one event to the next, and one `u64` seed derives every choice
//! (network delays, losses, store outcomes, clock offsets and rates, promote and demote
//! times). The world around the nodes:
//!
//! * **store**: [`MemoryModel`](crate::testkit::MemoryModel) plus a [`StoreProfile`] for etcd,
//!   ZooKeeper, Consul or Kubernetes expiry and visibility timing. Each call ends ok, rejected
//!   (not applied), applied with its reply lost, or timed out (not applied, no reply).
//! * **nodes**: a `Node`, a local monotonic clock (offset, drift, forward steps), a process
//!   that can pause, crash, restart or shut down cleanly, and a resource: a replicated log of
//!   `(epoch, position, write id)` with replicas that lag, synchronous acknowledgement, and
//!   replicas that refuse WAL from older epochs. A fenced sink in front of the primaries
//!   rejects writes from epochs older than the newest it has seen.
//! * **faults** ([`Fault`]): store and peer partitions (one-way too), delay, loss, pauses,
//!   crashes, clock drift and steps, store leader changes, lost watch events, slow
//!   promote/demote, replication stalls.
//! * **invariants** ([`InvariantId`]), checked after every step: I1, I1', I2, I3, I4, I5, I6, I7, I8.
//!
//! A run has a chaos phase (faults) and a liveness phase (everything healed; I4 must hold).
//!
//! ```
//! use std::time::Duration;
//! use leasehold::sim::{Fault, InvariantId, Scenario};
//!
//! // Three nodes on etcd; the first leader is cut off from the store for 8 s.
//! let report = Scenario::new(3)
//!     .seed(42)
//!     .fault(Duration::from_secs(10), Fault::Crash { node: 0, down_for: Duration::from_secs(8) })
//!     .chaos(Duration::from_secs(30))
//!     .run();
//! report.assert_holds(&InvariantId::ALL);
//! assert!(report.measured.failovers.len() <= 3);
//! ```

mod clock;
mod config;
mod fault;
pub mod invariants;
mod picture;
mod profile;
mod report;
mod resource;
mod rng;
pub mod strategy;
mod world;

use std::time::Duration;

pub use clock::LocalClock;
pub use config::{Envelope, Knobs, Mutation, SimConfig};
pub use fault::{Direction, Fault, TimedFault, random_schedule, random_schedule_of, schedule_within};
pub use invariants::{InvariantId, Measured, Violation};
pub use picture::{Mark, NodeState, Picture, RoleBar};
pub use profile::StoreProfile;
pub use report::{Report, Timeline};
pub use resource::{Entry, FencedSink, Role, SimResource, WRITE_BYTES, common_prefix};
pub use rng::SimRng;

use crate::config::Timing;

/// A scripted or random failover scenario: topology, configuration, seed and timed faults.
/// Build it, [`run`](Scenario::run) it, and assert on the [`Report`].
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The configuration.
    pub config: SimConfig,
    /// The seed (network, store outcomes, clocks, resource timings).
    pub seed: u64,
    /// The faults.
    pub faults: Vec<TimedFault>,
    /// `(count, beyond)` when the whole schedule came from one [`random_faults`]
    /// call, so that the report can print the sweep command that replays it.
    ///
    /// [`random_faults`]: Scenario::random_faults
    pub drawn: Option<(usize, bool)>,
}

impl Scenario {
    /// `nodes` members (1 to 9) on etcd with [`Timing::fast`], seed 0, no faults.
    pub fn new(nodes: usize) -> Self {
        Scenario { config: SimConfig::new(nodes), seed: 0, faults: Vec::new(), drawn: None }
    }

    /// From a whole configuration.
    pub fn with_config(config: SimConfig) -> Self {
        Scenario { config, seed: 0, faults: Vec::new(), drawn: None }
    }

    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the store profile.
    pub fn profile(mut self, profile: StoreProfile) -> Self {
        self.config.profile = profile;
        self.config.liveness = self.config.liveness_bound() + 2 * self.config.timing.ttl;
        self
    }

    /// Sets the timing (validated when the nodes start).
    pub fn timing(mut self, timing: Timing) -> Self {
        self.config.timing = timing;
        self.config.liveness = self.config.liveness_bound() + 2 * self.config.timing.ttl;
        self
    }

    /// Synchronous replication mode.
    pub fn synchronous(mut self, on: bool) -> Self {
        self.config.synchronous = on;
        self
    }

    /// Synchronous mode with `count` standbys (0 counts as 1); `strict`: no write is
    /// acknowledged without a synchronous copy. Switches synchronous mode on.
    pub fn sync_standbys(mut self, count: usize, strict: bool) -> Self {
        self.config.synchronous = true;
        self.config.sync_count = count.max(1);
        self.config.strict = strict;
        self
    }

    /// Length of the chaos phase.
    pub fn chaos(mut self, chaos: Duration) -> Self {
        self.config.chaos = chaos;
        self
    }

    /// Switches off a safety rule.
    pub fn mutation(mut self, m: Mutation) -> Self {
        self.config.mutation = Some(m);
        self
    }

    /// Adds a fault at `at`.
    pub fn fault(mut self, at: Duration, fault: Fault) -> Self {
        self.faults.push(TimedFault { at, fault });
        self.drawn = None;
        self
    }

    /// Adds faults.
    pub fn faults(mut self, faults: impl IntoIterator<Item = TimedFault>) -> Self {
        self.faults.extend(faults);
        self.drawn = None;
        self
    }

    /// Adds `count` random faults drawn from the seed ([`random_schedule`]); with `beyond`,
    /// some may leave the envelope.
    pub fn random_faults(mut self, count: usize, beyond: bool) -> Self {
        let mut rng = SimRng::new(self.seed).fork(0xfa);
        self.drawn = self.faults.is_empty().then_some((count, beyond));
        self.faults.extend(random_schedule(&mut rng, &self.config, count, beyond));
        self
    }

    /// Adds `count` random faults of the given classes ([`random_schedule_of`]).
    pub fn random_faults_of(mut self, count: usize, beyond: bool, classes: &[u64]) -> Self {
        let mut rng = SimRng::new(self.seed).fork(0xfa);
        self.faults.extend(random_schedule_of(&mut rng, &self.config, count, beyond, classes));
        self.drawn = None;
        self
    }

    /// Runs the scenario.
    pub fn run(&self) -> Report {
        let mut report = world::World::new(self.config.clone(), self.seed, self.faults.clone()).run();
        report.drawn = self.drawn;
        report
    }
}
