//! I7: epochs never go backwards: each node promotes under ever newer epochs, and never under
//! one older than a leader epoch it has already seen in the store.
//!
//! Source: reference/simulation.md §3.2 I7; DESIGN.md rule 5 ("every acquisition yields an
//! Epoch strictly greater than every earlier acquisition in that scope").

use super::{Findings, Happening, InvariantId};
use crate::sim::world::World;

#[derive(Default)]
pub(crate) struct EpochsForward {
    last: Vec<u64>,
}

impl EpochsForward {
    pub fn step(&mut self, w: &World, happened: &[Happening], f: &mut Findings) {
        if self.last.len() < w.slots.len() {
            self.last.resize(w.slots.len(), 0);
        }
        for h in happened {
            let Happening::PromoteAsked { node, epoch } = *h else { continue };
            if epoch.0 < self.last[node] {
                let d = format!("promotes under epoch {} after epoch {}", epoch.0, self.last[node]);
                f.breach(w, InvariantId::I7, Some(node), false, d);
            }
            let seen = w.slots[node].seen_epoch;
            if epoch < seen {
                let d = format!("promotes under epoch {} after seeing leader epoch {} in the store", epoch.0, seen.0);
                f.breach(w, InvariantId::I7, Some(node), false, d);
            }
            self.last[node] = self.last[node].max(epoch.0);
        }
    }
}
