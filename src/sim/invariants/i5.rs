//! I5: in synchronous mode no acknowledged write is lost.
//!
//! Source: reference/simulation.md §3.2 I5 ("every write acknowledged to a client while
//! synchronous replication was in force is in the log of every node that later acts as
//! leader"); DESIGN.md "in synchronous mode no acknowledged write is lost"; Patroni's
//! synchronous_mode (only members of the `/sync` key may be promoted; the key shrinks before
//! and grows after the resource's standby set). Checked whenever a resource becomes primary.
//! In asynchronous mode acknowledged writes missing from the final primary are measured.
//!
//! Strict mode (`synchronous_mode_strict`, Patroni: "commits wait rather than run
//! unprotected"): every acknowledged write was acknowledged synchronously, so none can depend
//! on the old primary surviving. Checked on every new acknowledgement.

use super::{Findings, Happening, InvariantId};
use crate::sim::world::World;

#[derive(Default)]
pub(crate) struct NoLostSyncWrite {
    /// Acknowledgements already checked for strict mode.
    strict_checked: usize,
}

impl NoLostSyncWrite {
    pub fn step(&mut self, w: &World, happened: &[Happening], f: &mut Findings) {
        if !w.cfg.synchronous {
            return;
        }
        if w.cfg.strict {
            let fresh = &w.acked[self.strict_checked.min(w.acked.len())..];
            self.strict_checked = w.acked.len();
            if let Some(a) = fresh.iter().find(|a| !a.sync) {
                let detail = format!(
                    "strict mode: write {} acknowledged by n{} at {:.3}s without a synchronous copy",
                    a.write_id,
                    a.node,
                    a.at as f64 / 1e9
                );
                f.breach(w, InvariantId::I5, Some(a.node), false, detail);
            }
        }
        for h in happened {
            let Happening::BecamePrimary { node, epoch } = *h else { continue };
            let missing = w.missing_acked(node, true);
            if !missing.is_empty() {
                let first = w.acked.iter().find(|a| a.write_id == missing[0]);
                let detail = format!(
                    "became primary under epoch {} without {} synchronously acknowledged writes (first: {:?}, acked by n{} at {:.3}s)",
                    epoch.0,
                    missing.len(),
                    &missing[..missing.len().min(5)],
                    first.map_or(0, |a| a.node),
                    first.map_or(0.0, |a| a.at as f64 / 1e9),
                );
                f.breach(w, InvariantId::I5, Some(node), false, detail);
            }
        }
    }

    pub fn finish(&mut self, w: &World, f: &mut Findings) {
        f.measured.acked_writes = w.acked.len() as u64;
        if let Some(n) = w.slots.iter().position(|s| s.acting().is_some()) {
            f.measured.lost_acked_writes = w.missing_acked(n, false).len() as u64;
        }
    }
}
