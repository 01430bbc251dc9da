//! I2: fencing, unconditional.
//!
//! Source: reference/simulation.md §3.2 I2 ((a) no two nodes act under one epoch; (b) the
//! fenced sink accepts non-decreasing epochs only; (c) no write carries an epoch the store
//! never granted); DESIGN.md rule 5 (fencing tokens) and "accepted writes carry
//! non-decreasing epochs". Holds under unbounded pauses, clock jumps and store failovers.

use std::collections::BTreeMap;

use super::{Findings, Happening, InvariantId};
use crate::sim::world::World;

#[derive(Default)]
pub(crate) struct Fencing {
    owner: BTreeMap<u64, usize>,
}

impl Fencing {
    pub fn step(&mut self, w: &World, happened: &[Happening], f: &mut Findings) {
        for h in happened {
            match *h {
                Happening::PromoteAsked { node, epoch } => {
                    if let Some(&other) = self.owner.get(&epoch.0)
                        && other != node
                    {
                        let d = format!("promotes under epoch {} which n{other} already used", epoch.0);
                        f.breach(w, InvariantId::I2, Some(node), false, d);
                    }
                    self.owner.insert(epoch.0, node);
                }
                Happening::SinkAccepted { node, epoch, previous } => {
                    if epoch < previous {
                        let d = format!("sink accepted a write under epoch {} after epoch {}", epoch.0, previous.0);
                        f.breach(w, InvariantId::I2, Some(node), false, d);
                    }
                    if !w.granted.contains(&epoch) {
                        let d = format!("sink accepted a write under epoch {}, never granted", epoch.0);
                        f.breach(w, InvariantId::I2, Some(node), false, d);
                    }
                }
                Happening::Granted { .. } | Happening::BecamePrimary { .. } | Happening::LeaseSent { .. } => {}
            }
        }
    }
}
