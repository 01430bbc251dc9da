//! [`SimConfig`], the declared fault [`Envelope`], [`Mutation`]s and per-seed [`Knobs`].

use std::time::Duration;

use super::profile::StoreProfile;
use super::rng::SimRng;
use crate::config::Timing;

/// A safety rule switched off, to prove the simulator notices (a simulator that cannot fail
/// proves nothing). Every mutation lives in the simulator, none in the node's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// Nodes run with a 1 ms safety margin and assume perfect clocks, while the invariants
    /// keep the declared timing. Expected: I1, I1' or I6.
    NoSafetyMargin,
    /// The fenced sink accepts writes from any epoch. Expected: I2.
    NoFencing,
    /// The resource reports "demoted" as soon as asked, before it stops accepting writes, so
    /// the key is released while the old primary still acts. Expected: I1'.
    AckDemoteEarly,
    /// Nodes run with an unlimited `maximum_lag_on_failover`. Expected: I3.
    NoLagCheck,
    /// The driver treats an acquire whose outcome is unknown (request or reply lost) as won,
    /// instead of letting the node re-read (DESIGN.md rule 3). Expected: I1'.
    UnknownAsWon,
    /// The resource confirms a synchronous standby as soon as it is configured, before the
    /// standby is connected and has caught up, so the leader grows the sync key to a standby
    /// that lacks writes acknowledged by the previous one. Expected: I5.
    ConfirmSyncEarly,
    /// The member check is off: a node whose acquire went unanswered takes the leader record
    /// it reads next as its own although it names another member (what comparing tokens
    /// alone concluded when two members' tokens collided). Expected: I8.
    AdoptForeignKey,
    /// An election asks only the members registered in the node's last view, as before the
    /// roster: a member whose registration expired (cut from the store, still running, maybe
    /// ahead) is never asked. Expected: I3.
    AskRegisteredOnly,
    /// The resource acknowledges a write once any one of its synchronous standbys has it, as
    /// `synchronous_standby_names = '1 (a, b)'` would where the leader asked for `2 (a, b)`:
    /// the count is dropped, so a standby in the sync key may lack acknowledged writes.
    /// Expected: I5, with `sync_count` 2 or more.
    AckOnAnyStandby,
    /// The resource reads the strict-mode wildcard (`*`) as "no standby" and acknowledges
    /// writes at once. Expected: I5 in strict mode.
    StrictAsNone,
    /// The driver decides an election on its own position as read at the start of the loop
    /// (up to a loop old) against the peers' fresh answers, as before issue 15: while the old
    /// primary still streams, every candidate sees the others ahead and none races. No
    /// safety invariant breaks; the failover waits until the old primary stops writing
    /// (`tests/sim.rs`, `a_paused_leader_whose_primary_still_streams_is_replaced`).
    StaleOwnPosition,
}

impl Mutation {
    /// Every mutation.
    pub const ALL: [Mutation; 11] = [
        Mutation::NoSafetyMargin,
        Mutation::NoFencing,
        Mutation::AckDemoteEarly,
        Mutation::NoLagCheck,
        Mutation::UnknownAsWon,
        Mutation::ConfirmSyncEarly,
        Mutation::AdoptForeignKey,
        Mutation::AskRegisteredOnly,
        Mutation::AckOnAnyStandby,
        Mutation::StrictAsNone,
        Mutation::StaleOwnPosition,
    ];
}

/// The declared fault envelope: inside it leases alone must keep primaries apart (I1, I1',
/// I6 fail the run); outside it only fencing protects (overlap is measured, not failed).
///
/// Derivation: a holder's belief ends, in real time, at most `ttl - margin` after it sent
/// its last successful renewal; no observer can take over before `ttl * (1 - drift)` after
/// that. A pause `P` plus a demote taking `D` must fit in between:
/// `P + D <= margin - drift * ttl`. The budget is split 2/3 pause, 1/3 demote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Longest process pause.
    pub max_pause: Duration,
    /// Longest base demote (and promote) time.
    pub max_demote: Duration,
    /// Longest extra delay a slow resource adds to a demote.
    pub max_slow_extra: Duration,
}

impl Envelope {
    /// The envelope for `timing`.
    pub fn for_timing(timing: &Timing) -> Self {
        let drift = timing.ttl.as_nanos() * u128::from(timing.max_drift_ppm) / 1_000_000;
        let budget = timing
            .safety_margin
            .saturating_sub(Duration::from_nanos(2 * drift as u64))
            .saturating_sub(Duration::from_millis(10));
        Envelope { max_pause: budget * 2 / 3, max_demote: budget / 6, max_slow_extra: budget / 6 }
    }
}

/// Everything that defines a run except the seed and the fault schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Cluster size, 1 to 9.
    pub nodes: usize,
    /// Store semantics.
    pub profile: StoreProfile,
    /// The declared timing (what the invariants assume).
    pub timing: Timing,
    /// Synchronous replication mode.
    pub synchronous: bool,
    /// Synchronous mode: how many synchronous standbys the leader keeps
    /// (`synchronous_node_count`); 0 counts as 1.
    pub sync_count: usize,
    /// Synchronous mode: strict (`synchronous_mode_strict`); no write is acknowledged without
    /// a synchronous copy.
    pub strict: bool,
    /// Length of the chaos phase; faults start only within it.
    pub chaos: Duration,
    /// Length of the fault-free liveness phase after it (zero: no liveness check).
    pub liveness: Duration,
    /// A safety rule switched off, if any.
    pub mutation: Option<Mutation>,
    /// One client write to every acting primary this often.
    pub write_interval: Duration,
    /// Keep a timeline of at most this many rows (0: none).
    pub timeline_rows: usize,
    /// Whether a [`Fault::Pause`](super::Fault::Pause) freezes the resource with its node (a
    /// frozen machine or container: the default) or the HA process alone (SIGSTOP of the
    /// daemon: PostgreSQL keeps serving and streaming, and nothing in the node can stop it).
    pub pause_freezes_resource: bool,
    /// Whether a standby told that there is no leader keeps streaming from its upstream (as
    /// PostgreSQL does: `primary_conninfo` unchanged) or stops (the default). Off by default:
    /// the simulated replica copies any log it reaches, divergent or not, where PostgreSQL
    /// would stop at a timeline fork, so streaming on from a deposed primary overstates what
    /// a real standby receives.
    pub standbys_stream_without_leader: bool,
}

impl SimConfig {
    /// A cluster of `nodes` on etcd with [`Timing::fast`], 2 minutes of chaos and a liveness
    /// phase long enough for I4.
    pub fn new(nodes: usize) -> Self {
        let timing = Timing::fast();
        let mut cfg = SimConfig {
            nodes: nodes.clamp(1, 9),
            profile: StoreProfile::Etcd,
            timing,
            synchronous: false,
            sync_count: 1,
            strict: false,
            chaos: Duration::from_secs(120),
            liveness: Duration::ZERO,
            mutation: None,
            write_interval: Duration::from_millis(50),
            timeline_rows: 400,
            pause_freezes_resource: true,
            standbys_stream_without_leader: false,
        };
        cfg.liveness = cfg.liveness_bound() + 2 * cfg.timing.ttl;
        cfg
    }

    /// The declared envelope.
    pub fn envelope(&self) -> Envelope {
        Envelope::for_timing(&self.timing)
    }

    /// I4's bound: after the last fault heals, some node acts as primary within this long.
    /// `max expiry of the profile + loop_wait + 2 * retry_timeout + lock-delay + reconnect +
    /// promote + 2 s` (Patroni's worst case is ttl + loop_wait + ~2 s; the store may keep a
    /// dead holder's key longer, a stuck request costs a retry_timeout, an election round one
    /// more).
    pub fn liveness_bound(&self) -> Duration {
        let t = &self.timing;
        self.profile.max_expiry(t.ttl)
            + t.loop_wait
            + 2 * t.retry_timeout
            + self.profile.lock_delay()
            + self.profile.reconnect_delay(t.ttl)
            + self.envelope().max_demote
            + Duration::from_secs(2)
    }
}

/// Per-run knobs drawn from the seed (swarm testing: every run gets its own mix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Knobs {
    /// One-way network delay range.
    pub net_delay: (Duration, Duration),
    /// Message loss, ppm.
    pub loss_ppm: u32,
    /// Store calls rejected before being applied, ppm.
    pub reject_ppm: u32,
    /// Store calls applied whose reply is lost, ppm.
    pub reply_lost_ppm: u32,
    /// Store calls that vanish (not applied, no reply), ppm.
    pub timeout_ppm: u32,
    /// Watch events lost, ppm.
    pub watch_loss_ppm: u32,
    /// Watch delivery delay range.
    pub watch_delay: (Duration, Duration),
    /// Promote duration range.
    pub promote: (Duration, Duration),
    /// Demote duration range.
    pub demote: (Duration, Duration),
    /// Replicas pull this often.
    pub replication_interval: Duration,
    /// Initial clock rate error of each node, ppm.
    pub drift_ppm: Vec<i64>,
}

impl Knobs {
    /// Draws the knobs for `cfg` from `rng`.
    pub fn draw(rng: &mut SimRng, cfg: &SimConfig) -> Self {
        let env = cfg.envelope();
        let ms = Duration::from_millis;
        let lo = rng.duration(ms(1), ms(10));
        let hi = lo + rng.duration(Duration::ZERO, ms(40));
        let max_drift = i64::from(cfg.timing.max_drift_ppm);
        let on = |rng: &mut SimRng, max: u64| if rng.chance(500_000) { rng.range(0, max) as u32 } else { 0 };
        Knobs {
            net_delay: (lo, hi),
            loss_ppm: on(rng, 30_000),
            reject_ppm: on(rng, 30_000),
            reply_lost_ppm: on(rng, 30_000),
            timeout_ppm: on(rng, 20_000),
            watch_loss_ppm: on(rng, 300_000),
            watch_delay: (ms(1), rng.duration(ms(1), ms(100))),
            promote: (ms(10), rng.duration(ms(10), env.max_demote)),
            demote: (ms(5), rng.duration(ms(5), env.max_demote)),
            replication_interval: rng.duration(ms(10), ms(100)),
            drift_ppm: (0..cfg.nodes).map(|_| rng.range(0, 2 * max_drift as u64) as i64 - max_drift).collect(),
        }
    }
}
