//! I8: a node renews and releases only keys it acquired itself, with records that name it.
//!
//! Source: DESIGN.md rule 4 ("lost the key: demote at once, never touch the key") and the
//! release's compare-and-delete on our token; issue 13: a member being shut down released
//! another member's key because it took that member's record for the answer to its own lost
//! acquire (tokens collided, the member was not compared). Checked on every renew and
//! release sent, against the store's grants: the epoch must have been granted to the sender.
//! A store's own compare-and-set may still refuse such a request; the invariant holds the
//! node to not sending it, so no store's leniency can turn it into a deleted key.

use std::collections::BTreeMap;

use super::{Findings, Happening, InvariantId};
use crate::record::Epoch;
use crate::sim::world::World;

#[derive(Default)]
pub(crate) struct OwnKeysOnly {
    granted_to: BTreeMap<Epoch, usize>,
}

impl OwnKeysOnly {
    pub fn step(&mut self, w: &World, happened: &[Happening], f: &mut Findings) {
        for h in happened {
            match *h {
                Happening::Granted { node, epoch } => {
                    self.granted_to.insert(epoch, node);
                }
                Happening::LeaseSent { node, epoch, names_us } => {
                    let owner = self.granted_to.get(&epoch).copied();
                    if !names_us || owner.is_some_and(|o| o != node) {
                        let whose = match owner {
                            Some(o) => format!("n{o}'s key"),
                            None => "a key never granted to it".to_string(),
                        };
                        let record = if names_us { "its own name" } else { "another member's name" };
                        let detail = format!("sends a renew or release for epoch {} ({whose}) with {record}", epoch.0);
                        f.breach(w, InvariantId::I8, Some(node), false, detail);
                    }
                }
                _ => {}
            }
        }
    }
}
