//! I3: promotion only within max lag of the leader position, never past a reachable peer
//! that is ahead, never next to a running primary.
//!
//! Source: reference/simulation.md §3.2 I3; DESIGN.md rule 8 ("healthy enough": not lagging
//! more than `maximum_lag_on_failover` behind the last known leader position; no reachable
//! eligible peer ahead; the old leader not reachable as a running primary); Patroni's
//! `_is_healthiest_node` (reference/patroni.md §3.4). Checked at every promote against what the
//! simulator told the node (its real position, the store's status key in its view, the probe
//! replies it was given) and the *declared* `maximum_lag_on_failover`. Decisions made on stale
//! data (the real furthest log was more than max lag ahead) are counted, not failed.
//!
//! "Reachable" is the truth, not what the node chose to ask: a peer that was up and
//! mutually reachable when the election probe went out, ahead, and not asked at all, is a
//! breach (a member whose store registration expired still runs and answers peers; issue 13),
//! provided the node could name it: it saw the peer registered in a view it took within the
//! roster's memory, or the leader's roster in its current view lists it. Nothing else names a
//! member, so nothing else can make a node ask it (README, "What it does not guarantee").
//! A peer that was asked and whose answer was lost in the network is not: the node cannot
//! know, and Patroni ignores unanswered peers too.

use super::{Findings, Happening, InvariantId};
use crate::record::ResourceRole;
use crate::rules::PeerReply;
use crate::sim::world::World;

#[derive(Default)]
pub(crate) struct PromotionEligibility;

impl PromotionEligibility {
    pub fn step(&mut self, w: &World, happened: &[Happening], f: &mut Findings) {
        let max_lag = w.cfg.timing.maximum_lag_on_failover;
        for h in happened {
            let Happening::PromoteAsked { node, epoch } = *h else { continue };
            let Some(d) = &w.slots[node].decision else { continue };
            let mine = d.my_position;
            if let Some(lp) = d.leader_position
                && lp.saturating_sub(mine) > max_lag
            {
                let detail = format!(
                    "promotes under epoch {} at position {mine}, {} bytes behind the leader's {lp} (max {max_lag})",
                    epoch.0,
                    lp - mine
                );
                f.breach(w, InvariantId::I3, Some(node), false, detail);
            }
            let excluded_by_sync = |name: &str| w.cfg.synchronous && d.sync.as_ref().is_some_and(|s| !s.contains(name));
            for p in &d.peers {
                let PeerReply::Reachable(p) = p else { continue };
                if excluded_by_sync(&p.name) {
                    continue;
                }
                let pos = p.position.unwrap_or(0);
                if p.may_be_promoted() && pos > mine {
                    let detail = format!("promotes at position {mine} past reachable peer {} at {pos}", p.name);
                    f.breach(w, InvariantId::I3, Some(node), false, detail);
                }
                if p.running && p.role == ResourceRole::Primary {
                    let detail = format!("promotes while peer {} answered as a running primary", p.name);
                    f.breach(w, InvariantId::I3, Some(node), false, detail);
                }
            }
            for (name, pos) in &d.present {
                if *pos > mine && !excluded_by_sync(name) && !d.asked.contains(name) {
                    let detail = format!("promotes at position {mine} without asking {name}, reachable and at {pos}");
                    f.breach(w, InvariantId::I3, Some(node), false, detail);
                }
            }
            if d.real_max_position.saturating_sub(mine) > max_lag {
                f.measured.stale_decisions += 1;
            }
            let _ = d.at;
        }
    }
}
