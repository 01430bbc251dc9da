//! I1: at most one node acts as primary on a valid lease at any real instant.
//!
//! Source: DESIGN.md, "What the simulator must show" ("at most one node acts as primary on a
//! valid lease at any real instant"); reference/simulation.md §3.2 I1, which makes it
//! envelope-conditional: inside the declared pause/drift envelope an overlap fails the run,
//! outside it the overlap is measured. Also measures failover latency (§3.3).

use std::time::Duration;

use super::{Findings, InvariantId};
use crate::sim::world::World;

#[derive(Default)]
pub(crate) struct NoOverlap {
    overlap_since: Option<u64>,
    gap_since: Option<u64>,
    seen_primary: bool,
}

impl NoOverlap {
    pub fn step(&mut self, w: &World, f: &mut Findings) {
        // Counted without collecting: this runs after every step.
        let count = w.slots.iter().filter(|s| s.acting().is_some()).count();
        if count > 1 {
            if self.overlap_since.is_none() {
                let acting: Vec<(usize, u64)> =
                    w.slots.iter().enumerate().filter_map(|(i, s)| s.acting().map(|e| (i, e.0))).collect();
                self.overlap_since = Some(w.now);
                f.measured.overlaps += 1;
                let who: Vec<String> = acting.iter().map(|(n, e)| format!("n{n} (epoch {e})")).collect();
                f.breach(w, InvariantId::I1, Some(acting[0].0), true, format!("acting at once: {}", who.join(", ")));
            }
        } else if let Some(since) = self.overlap_since.take() {
            f.measured.overlap += Duration::from_nanos(w.now - since);
        }
        match (count == 0, self.gap_since) {
            (true, None) if self.seen_primary => self.gap_since = Some(w.now),
            (false, Some(since)) => {
                f.measured.failovers.push(Duration::from_nanos(w.now - since));
                self.gap_since = None;
            }
            _ => {}
        }
        self.seen_primary |= count > 0;
    }

    pub fn finish(&mut self, w: &World, f: &mut Findings) {
        if let Some(since) = self.overlap_since.take() {
            f.measured.overlap += Duration::from_nanos(w.now - since);
        }
    }
}
