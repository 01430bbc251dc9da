//! I6: a leader that cannot renew stops acting before its belief runs out.
//!
//! Source: reference/simulation.md §3.2 I6 ("a leader that cannot renew stops acting within
//! D_demote of its last successful renew; Patroni: before ttl - safety_margin"); DESIGN.md
//! rule 1 ("the node must have finished demoting before that instant ... it never waits for the
//! store to tell it"). The belief is computed from the *declared* timing: last successful
//! acquire/renew sent at `s` (local clock) gives `s + ttl * (1 - drift) - safety_margin`.
//! The resource may keep acting for the envelope's demote and pause allowance after that,
//! measured in real time (a forward clock step only ends the belief sooner).
//! Envelope-conditional.

use std::collections::BTreeSet;

use super::{Findings, InvariantId};
use crate::sim::world::World;

#[derive(Default)]
pub(crate) struct BoundedDemotion {
    reported: BTreeSet<(usize, u64)>,
}

impl BoundedDemotion {
    pub fn step(&mut self, w: &World, f: &mut Findings) {
        let env = w.env;
        let allowance = env.max_pause + env.max_demote + env.max_slow_extra;
        for (n, slot) in w.slots.iter().enumerate() {
            let (Some(epoch), Some(until)) = (slot.acting(), slot.declared_until) else { continue };
            if w.now > until + allowance.as_nanos() as u64 && self.reported.insert((n, epoch.0)) {
                let detail = format!(
                    "still acts under epoch {} {:.3}s after its declared belief ended (allowance {:.3}s)",
                    epoch.0,
                    (w.now - until) as f64 / 1e9,
                    allowance.as_secs_f64()
                );
                f.breach(w, InvariantId::I6, Some(n), true, detail);
            }
        }
    }
}
