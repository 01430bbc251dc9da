//! I4: liveness. After the chaos phase (every fault healed, crashed nodes restarted, failure
//! rates zero) a leader acts within [`SimConfig::liveness_bound`](crate::sim::SimConfig::liveness_bound)
//! and the same single leader keeps acting until the end (no flapping).
//!
//! Source: reference/simulation.md §3.2 I4 and §1.2 (VOPR's safety-then-liveness phases);
//! DESIGN.md "after faults stop, a leader exists within ttl + loop_wait + a small bound";
//! Patroni's worst case ttl + loop_wait + ~2 s (reference/simulation.md §5). The bound adds
//! what a profile may keep a dead key (Consul 2x ttl, lock-delay, ZooKeeper reconnect) and
//! one stuck request (retry_timeout) plus an election round.

use super::{Findings, InvariantId};
use crate::sim::world::World;

#[derive(Default)]
pub(crate) struct Liveness {
    leader: Option<usize>,
    failed: bool,
}

impl Liveness {
    fn deadline(w: &World) -> u64 {
        w.liveness_deadline
    }

    pub fn step(&mut self, w: &World, f: &mut Findings) {
        if w.cfg.liveness.is_zero() || self.failed || w.now < Self::deadline(w) {
            return;
        }
        let acting: Vec<usize> =
            w.slots.iter().enumerate().filter(|(_, s)| s.acting().is_some()).map(|(i, _)| i).collect();
        let leader = *self.leader.get_or_insert(acting.first().copied().unwrap_or(usize::MAX));
        if acting != [leader] {
            self.failed = true;
            let detail = if leader == usize::MAX {
                format!(
                    "no leader {:.3}s after the faults stopped (bound {:.3}s)",
                    (w.now - w.chaos_end) as f64 / 1e9,
                    w.cfg.liveness_bound().as_secs_f64()
                )
            } else {
                format!("leader n{leader} was settled, now acting: {acting:?}")
            };
            f.breach(w, InvariantId::I4, None, false, detail);
        }
    }

    pub fn finish(&mut self, w: &World, f: &mut Findings) {
        if !w.cfg.liveness.is_zero() && w.now >= Self::deadline(w) {
            self.step(w, f);
        }
    }
}
