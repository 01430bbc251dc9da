//! I1': every acting node is covered by its lease.
//!
//! Source: reference/simulation.md §3.2 I1' ("Acting(n, T) implies the DCS record at T names
//! n with epoch(n) and T < E"); DESIGN.md rules 1 and 4 (belief bounded by the lease; demote
//! -> confirm -> release). Envelope-conditional like I1. For Kubernetes, where the server never
//! expires anything, `E` is the last renewal seen by the store plus `ttl * (1 - drift)`: the
//! earliest instant an observer may take over.

use std::collections::BTreeSet;

use super::{Findings, InvariantId};
use crate::sim::world::World;

#[derive(Default)]
pub(crate) struct LeaseCoverage {
    reported: BTreeSet<(usize, u64)>,
}

impl LeaseCoverage {
    pub fn step(&mut self, w: &World, f: &mut Findings) {
        for (n, slot) in w.slots.iter().enumerate() {
            let Some(epoch) = slot.acting() else { continue };
            let covered = w.lease.is_some_and(|l| l.node == n && l.epoch == epoch && w.now < l.expires);
            if !covered && self.reported.insert((n, epoch.0)) {
                let detail = match w.lease {
                    None => format!("acts under epoch {} but the leader key is gone", epoch.0),
                    Some(l) if l.node != n || l.epoch != epoch => {
                        format!("acts under epoch {} but the key is n{}'s epoch {}", epoch.0, l.node, l.epoch.0)
                    }
                    Some(l) => format!(
                        "acts under epoch {} {:.3}s after its lease could expire",
                        epoch.0,
                        (w.now - l.expires) as f64 / 1e9
                    ),
                };
                f.breach(w, InvariantId::I1Prime, Some(n), true, detail);
            }
        }
    }
}
