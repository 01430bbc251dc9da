//! Faults and fault schedules.

use std::fmt;
use std::time::Duration;

use super::config::{Envelope, SimConfig};
use super::profile::StoreProfile;
use super::rng::SimRng;

/// Which direction of a node's link to the store is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Both ways.
    Both,
    /// Requests from the node are lost; the store's messages still arrive.
    ToStore,
    /// Replies and watch events to the node are lost; its requests still arrive until its
    /// client gives the silent connection up (`StoreProfile::dead_connection_after`), and
    /// then no more until the cut heals (a reconnect needs an answer too).
    FromStore,
}

/// One fault. Durations are real (simulated) time; nodes are indexes `0..nodes`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Cut a node's link to the store.
    StorePartition {
        /// The node.
        node: usize,
        /// Which way.
        direction: Direction,
        /// For how long.
        duration: Duration,
    },
    /// Messages from `from` to `to` (probes, replication) are lost.
    PeerPartition {
        /// Sender.
        from: usize,
        /// Receiver.
        to: usize,
        /// For how long.
        duration: Duration,
    },
    /// The whole machine stops (the HA process and the resource); its clock keeps running.
    Pause {
        /// The node.
        node: usize,
        /// For how long.
        duration: Duration,
    },
    /// The machine crashes and restarts after `down_for` with a fresh process.
    Crash {
        /// The node.
        node: usize,
        /// Downtime.
        down_for: Duration,
    },
    /// Clean shutdown (demote, release), restart after `down_for`.
    Shutdown {
        /// The node.
        node: usize,
        /// Downtime.
        down_for: Duration,
    },
    /// The node's monotonic clock jumps forward.
    ClockStep {
        /// The node.
        node: usize,
        /// By how much.
        forward: Duration,
    },
    /// The node's clock rate error changes.
    Drift {
        /// The node.
        node: usize,
        /// New rate error, parts per million (negative: slow).
        ppm: i32,
    },
    /// The store's own leader changes: requests arriving meanwhile are dropped; afterwards
    /// the profile decides what happens to session timers.
    StoreLeaderChange {
        /// How long the store answers nothing.
        unavailable_for: Duration,
    },
    /// Watch events to a node are lost.
    WatchLoss {
        /// The node.
        node: usize,
        /// For how long.
        duration: Duration,
    },
    /// Promote and demote take `extra` longer on a node.
    SlowResource {
        /// The node.
        node: usize,
        /// Added delay.
        extra: Duration,
        /// For how long.
        duration: Duration,
    },
    /// A replica stops replicating (a lag spike).
    ReplicationStall {
        /// The node.
        node: usize,
        /// For how long.
        duration: Duration,
    },
    /// Every message takes `extra` longer.
    NetworkDelay {
        /// Added one-way delay.
        extra: Duration,
        /// For how long.
        duration: Duration,
    },
}

impl Fault {
    /// The node the fault is about, if one.
    pub fn node(&self) -> Option<usize> {
        match self {
            Fault::StorePartition { node, .. }
            | Fault::Pause { node, .. }
            | Fault::Crash { node, .. }
            | Fault::Shutdown { node, .. }
            | Fault::ClockStep { node, .. }
            | Fault::Drift { node, .. }
            | Fault::WatchLoss { node, .. }
            | Fault::SlowResource { node, .. }
            | Fault::ReplicationStall { node, .. } => Some(*node),
            Fault::PeerPartition { from, .. } => Some(*from),
            Fault::StoreLeaderChange { .. } | Fault::NetworkDelay { .. } => None,
        }
    }

    /// Whether this fault stays inside `env`, where leases alone must prevent two acting
    /// primaries (I1). Outside it only fencing protects, and overlap is measured instead.
    ///
    /// A forward clock step is harmless where the holder alone times its belief, but on
    /// Kubernetes observers time the holder's lease on their own clocks (client-go rule), so a
    /// step larger than the envelope's budget lets an observer take over early: outside.
    pub fn within(&self, env: &Envelope, max_drift_ppm: u32, profile: StoreProfile) -> bool {
        match self {
            Fault::ClockStep { forward, .. } if profile == StoreProfile::Kubernetes => *forward <= env.max_pause,
            Fault::Pause { duration, .. } => *duration <= env.max_pause,
            Fault::Drift { ppm, .. } => ppm.unsigned_abs() <= max_drift_ppm,
            Fault::SlowResource { extra, .. } => *extra <= env.max_slow_extra,
            _ => true,
        }
    }
}

/// Whether a whole schedule stays inside `env`: every fault does ([`Fault::within`]) and no
/// node's pauses add up past the pause budget. Two pauses of one node whose gap is shorter
/// than the time a demote may take act as one: the node wakes past its deadline, starts the
/// demote, and is frozen again before the demote completes (seed 232286858507 of the long
/// sweep: 537 ms and 653 ms, 11 ms apart, each inside the 653 ms budget, 1.19 s together).
pub fn schedule_within(faults: &[TimedFault], env: &Envelope, max_drift_ppm: u32, profile: StoreProfile) -> bool {
    if !faults.iter().all(|f| f.fault.within(env, max_drift_ppm, profile)) {
        return false;
    }
    let joins = env.max_pause + env.max_demote + env.max_slow_extra;
    let mut pauses: Vec<(usize, Duration, Duration)> = faults
        .iter()
        .filter_map(|f| match f.fault {
            Fault::Pause { node, duration } => Some((node, f.at, duration)),
            _ => None,
        })
        .collect();
    pauses.sort();
    let mut run: Option<(usize, Duration, Duration)> = None; // node, end of the last pause, total
    for (node, at, duration) in pauses {
        run = match run {
            Some((n, end, total)) if n == node && at < end + joins => {
                Some((node, end.max(at + duration), total + duration))
            }
            _ => Some((node, at + duration, duration)),
        };
        if run.is_some_and(|r| r.2 > env.max_pause) {
            return false;
        }
    }
    true
}

/// A fault and when it starts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TimedFault {
    /// Start, measured from the beginning of the run.
    pub at: Duration,
    /// What.
    pub fault: Fault,
}

impl fmt::Display for TimedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>8.3}s {:?}", self.at.as_secs_f64(), self.fault)
    }
}

/// Draws a schedule for a run: swarm style, each fault class is switched on with
/// probability one half per run, then `count` faults are drawn among the enabled classes.
/// `beyond` allows faults outside the envelope (long pauses, large drift).
pub fn random_schedule(rng: &mut SimRng, cfg: &SimConfig, count: usize, beyond: bool) -> Vec<TimedFault> {
    let classes: Vec<u64> = (0..12).filter(|_| rng.chance(500_000)).collect();
    let classes = if classes.is_empty() { vec![rng.range(0, 11)] } else { classes };
    random_schedule_of(rng, cfg, count, beyond, &classes)
}

/// Like [`random_schedule`] with the fault classes given: 0 store partition, 1 peer
/// partition, 2 pause, 3 crash, 4 clean shutdown, 5 clock step, 6 drift, 7 store leader
/// change, 8 watch loss, 9 slow resource, 10 replication stall, 11 network delay.
pub fn random_schedule_of(
    rng: &mut SimRng,
    cfg: &SimConfig,
    count: usize,
    beyond: bool,
    classes: &[u64],
) -> Vec<TimedFault> {
    let n = cfg.nodes as u64;
    let ttl = cfg.timing.ttl;
    let env = cfg.envelope();
    let classes = if classes.is_empty() { &[0][..] } else { classes };
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let at = rng.duration(Duration::ZERO, cfg.chaos);
        let node = rng.range(0, n - 1) as usize;
        let short = rng.duration(Duration::from_millis(100), 2 * ttl);
        let fault = match *rng.pick(classes) {
            0 => Fault::StorePartition {
                node,
                direction: *rng.pick(&[Direction::Both, Direction::ToStore, Direction::FromStore]),
                duration: short,
            },
            1 => Fault::PeerPartition { from: node, to: rng.range(0, n - 1) as usize, duration: short },
            2 => Fault::Pause {
                node,
                duration: if beyond && rng.chance(500_000) {
                    rng.duration(ttl / 2, 3 * ttl)
                } else {
                    rng.duration(Duration::from_millis(10), env.max_pause)
                },
            },
            3 => Fault::Crash { node, down_for: rng.duration(Duration::from_millis(100), 2 * ttl) },
            4 => Fault::Shutdown { node, down_for: rng.duration(Duration::from_millis(100), ttl) },
            5 => Fault::ClockStep { node, forward: rng.duration(Duration::from_millis(1), ttl) },
            6 => {
                let max = i64::from(cfg.timing.max_drift_ppm) * if beyond { 40 } else { 1 };
                Fault::Drift { node, ppm: (rng.range(0, 2 * max as u64) as i64 - max) as i32 }
            }
            7 => Fault::StoreLeaderChange { unavailable_for: rng.duration(Duration::from_millis(50), ttl / 2) },
            8 => Fault::WatchLoss { node, duration: short },
            9 => Fault::SlowResource {
                node,
                extra: if beyond && rng.chance(300_000) {
                    rng.duration(ttl / 4, ttl)
                } else {
                    rng.duration(Duration::ZERO, env.max_slow_extra)
                },
                duration: short,
            },
            10 => Fault::ReplicationStall { node, duration: rng.duration(ttl, 4 * ttl) },
            _ => Fault::NetworkDelay { extra: rng.duration(Duration::from_millis(5), ttl / 10), duration: short },
        };
        out.push(TimedFault { at, fault });
    }
    out.sort_by_key(|f| f.at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause(node: usize, at_ms: u64, ms: u64) -> TimedFault {
        TimedFault {
            at: Duration::from_millis(at_ms),
            fault: Fault::Pause { node, duration: Duration::from_millis(ms) },
        }
    }

    #[test]
    fn pauses_add_up_until_a_demote_could_have_completed() {
        let env = Envelope::for_timing(&super::super::config::SimConfig::new(3).timing);
        let most = env.max_pause.as_millis() as u64;
        let within = |faults: &[TimedFault]| schedule_within(faults, &env, 1000, StoreProfile::Etcd);
        assert!(within(&[pause(0, 1_000, most)]));
        assert!(!within(&[pause(0, 1_000, most + 1)]));
        // Frozen again 11 ms after waking: one long pause.
        assert!(!within(&[pause(0, 1_000, most / 2 + 10), pause(0, 1_011 + most / 2 + 10, most / 2 + 10)]));
        // Far apart, or on different nodes: independent.
        assert!(within(&[pause(0, 1_000, most), pause(0, 10_000, most)]));
        assert!(within(&[pause(0, 1_000, most), pause(1, 1_000, most)]));
    }
}
