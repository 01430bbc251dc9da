//! The invariants, one file each, checked after every step of a run.
//!
//! I1, I1' and I6 hold only inside the declared [`Envelope`](super::Envelope): outside it
//! their breaches are counted as measurements, not failures. I2, I3, I5 and I7 hold always.
//! I4 is checked in the fault-free liveness phase.

mod i1;
mod i1_prime;
mod i2;
mod i3;
mod i4;
mod i5;
mod i6;
mod i7;
mod i8;

use std::fmt;
use std::time::Duration;

use super::world::World;
use crate::record::{Epoch, SyncRecord};
use crate::rules::PeerReply;

/// Which invariant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InvariantId {
    /// At most one node acts as primary at any real instant (inside the envelope).
    I1,
    /// Every acting node is covered by its lease in the store (inside the envelope).
    I1Prime,
    /// Fencing: no two nodes under one epoch; the sink accepts non-decreasing, granted epochs.
    I2,
    /// Promotion only within max lag and never past a reachable peer that is ahead.
    I3,
    /// Liveness: after the faults stop a leader exists within the bound, and stays.
    I4,
    /// Synchronous mode: no acknowledged write is lost.
    I5,
    /// A leader that cannot renew stops acting before its belief runs out.
    I6,
    /// Epochs never go backwards.
    I7,
    /// No node renews or releases a key another member acquired, or a record that names
    /// another member.
    I8,
}

impl InvariantId {
    /// Every invariant.
    pub const ALL: [InvariantId; 9] = [
        InvariantId::I1,
        InvariantId::I1Prime,
        InvariantId::I2,
        InvariantId::I3,
        InvariantId::I4,
        InvariantId::I5,
        InvariantId::I6,
        InvariantId::I7,
        InvariantId::I8,
    ];
}

impl fmt::Display for InvariantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvariantId::I1 => "I1",
            InvariantId::I1Prime => "I1'",
            InvariantId::I2 => "I2",
            InvariantId::I3 => "I3",
            InvariantId::I4 => "I4",
            InvariantId::I5 => "I5",
            InvariantId::I6 => "I6",
            InvariantId::I7 => "I7",
            InvariantId::I8 => "I8",
        })
    }
}

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which.
    pub invariant: InvariantId,
    /// When (simulated time since the start).
    pub at: Duration,
    /// The node at fault, if one.
    pub node: Option<usize>,
    /// What happened, with the numbers.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {:.3}s", self.invariant, self.at.as_secs_f64())?;
        if let Some(n) = self.node {
            write!(f, " node n{n}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What a node knew when it sent an acquire (for I3).
#[derive(Clone, Debug)]
pub(crate) struct Decision {
    pub at: u64,
    pub my_position: u64,
    pub leader_position: Option<u64>,
    pub sync: Option<SyncRecord>,
    pub peers: Vec<PeerReply>,
    /// Whom the election probe asked (empty when it decided without asking).
    pub asked: Vec<String>,
    /// Who was really up and mutually reachable when the probe went out, with their real
    /// positions.
    pub present: Vec<(String, u64)>,
    /// The furthest real position of any node's log at that instant.
    pub real_max_position: u64,
}

/// Notable things that happened during one step.
#[derive(Clone, Debug)]
pub(crate) enum Happening {
    /// A node asked its resource to promote.
    PromoteAsked { node: usize, epoch: Epoch },
    /// A resource became primary.
    BecamePrimary { node: usize, epoch: Epoch },
    /// The fenced sink accepted a write.
    SinkAccepted { node: usize, epoch: Epoch, previous: Epoch },
    /// The store granted an epoch.
    Granted { node: usize, epoch: Epoch },
    /// A node sent a renew or a release for the key under `epoch`, with a record that names
    /// it (`names_us`) or another member.
    LeaseSent { node: usize, epoch: Epoch, names_us: bool },
}

impl Happening {
    pub fn code(&self) -> u64 {
        match self {
            Happening::PromoteAsked { node, epoch } => 0x1_0000 + ((*node as u64) << 40) + epoch.0,
            Happening::BecamePrimary { node, epoch } => 0x2_0000 + ((*node as u64) << 40) + epoch.0,
            Happening::SinkAccepted { epoch, .. } => 0x3_0000 + epoch.0,
            Happening::Granted { node, epoch } => 0x4_0000 + ((*node as u64) << 40) + epoch.0,
            Happening::LeaseSent { node, epoch, .. } => 0x5_0000 + ((*node as u64) << 40) + epoch.0,
        }
    }
}

/// Measurements of a run (what is reported rather than failed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Measured {
    /// Total time two or more nodes acted as primary at once.
    pub overlap: Duration,
    /// How many such episodes.
    pub overlaps: u64,
    /// Breaches of envelope-conditional invariants in runs outside the envelope.
    pub outside_envelope_breaches: u64,
    /// Time from the last primary stopping to the next one acting, per incident.
    pub failovers: Vec<Duration>,
    /// Promotions decided on stale data: the real furthest log was more than max lag ahead.
    pub stale_decisions: u64,
    /// Acknowledged writes missing from the final primary's log.
    pub lost_acked_writes: u64,
    /// Writes acknowledged to clients (synchronously or not).
    pub acked_writes: u64,
    /// Writes the fenced sink rejected.
    pub fenced_rejections: u64,
    /// Times a node's timer kept firing at one instant (a busy loop in a real driver).
    pub timer_spins: u64,
}

/// Where checks put what they find.
#[derive(Default)]
pub(crate) struct Findings {
    pub violations: Vec<Violation>,
    pub measured: Measured,
    per_invariant: std::collections::BTreeMap<InvariantId, u32>,
}

impl Findings {
    /// Records a breach; `conditional` ones become measurements outside the envelope. At
    /// most 20 violations per invariant are kept.
    pub fn breach(&mut self, w: &World, inv: InvariantId, node: Option<usize>, conditional: bool, detail: String) {
        if conditional && !w.within_envelope {
            self.measured.outside_envelope_breaches += 1;
            return;
        }
        let count = self.per_invariant.entry(inv).or_default();
        *count += 1;
        if *count <= 20 {
            self.violations.push(Violation { invariant: inv, at: Duration::from_nanos(w.now), node, detail });
        }
    }
}

/// Runs every invariant.
#[derive(Default)]
pub(crate) struct Checker {
    pub found: Findings,
    i1: i1::NoOverlap,
    i1p: i1_prime::LeaseCoverage,
    i2: i2::Fencing,
    i3: i3::PromotionEligibility,
    i4: i4::Liveness,
    i5: i5::NoLostSyncWrite,
    i6: i6::BoundedDemotion,
    i7: i7::EpochsForward,
    i8: i8::OwnKeysOnly,
}

impl Checker {
    pub fn violations_len(&self) -> usize {
        self.found.violations.len()
    }

    /// Checks every invariant after a step. With `unchanged`, the caller vouches that no
    /// role, lease or belief changed since the last full check and that no deadline of
    /// [`World::timed_horizon`] has passed: I1, I1', I4 and I6 read only those (and the time,
    /// against those deadlines), so they would find what they found then, and are skipped.
    pub fn step(&mut self, w: &World, happened: &[Happening], unchanged: bool) {
        let f = &mut self.found;
        if !unchanged {
            self.i1.step(w, f);
            self.i1p.step(w, f);
            self.i4.step(w, f);
            self.i6.step(w, f);
        }
        self.i2.step(w, happened, f);
        self.i3.step(w, happened, f);
        self.i5.step(w, happened, f);
        self.i7.step(w, happened, f);
        self.i8.step(w, happened, f);
    }

    pub fn finish(&mut self, w: &World) {
        let f = &mut self.found;
        self.i1.finish(w, f);
        self.i4.finish(w, f);
        self.i5.finish(w, f);
        f.measured.fenced_rejections = w.sink.rejected;
        f.measured.timer_spins = w.timer_spins;
    }
}
