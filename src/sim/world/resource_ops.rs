//! The simulated resource of each node: promote, demote, follow, and client writes.

use super::*;

impl World {
    pub(super) fn res_op(&mut self, n: usize, op: ResOp) {
        self.slots[n].res_ops.push_back(op);
        self.pump_resource(n);
    }

    pub(super) fn pump_resource(&mut self, n: usize) {
        while self.slots[n].res_busy.is_none() {
            let Some(op) = self.slots[n].res_ops.pop_front() else { return };
            match op {
                ResOp::Promote(_) | ResOp::Demote => {
                    let (lo, hi) = if matches!(op, ResOp::Promote(_)) { self.knobs.promote } else { self.knobs.demote };
                    let d = self.rng.duration(lo, hi) + self.slots[n].slow;
                    if matches!(op, ResOp::Demote) && self.cfg.mutation == Some(Mutation::AckDemoteEarly) {
                        self.slots[n].demote_acked_early = true;
                        let now = self.slots[n].local(self.now);
                        if let Some(node) = self.slots[n].node.as_mut() {
                            node.handle(Input::Demoted(Ok(())), now);
                        }
                    }
                    self.slots[n].res_busy = Some(op);
                    let inc = self.slots[n].inc;
                    self.after(d, Ev::ResDone { n, inc });
                }
                ResOp::Follow(leader) => {
                    let idx = leader.as_deref().and_then(|l| self.index_of(l));
                    // No leader named: a PostgreSQL standby streams on from whatever it
                    // streamed from (primary_conninfo unchanged), if the run models that.
                    let keep_streaming = self.cfg.standbys_stream_without_leader && leader.is_none();
                    if self.slots[n].res.primary_epoch().is_none() && !keep_streaming {
                        self.slots[n].res.role = Role::Replica(idx);
                    }
                }
                ResOp::SetSync(mut names) => {
                    // `*` (strict mode) names no slot, so writes wait until the leader names a
                    // standby: stricter than PostgreSQL, where any connected standby may then
                    // acknowledge (the sync key does not name it, so nothing relies on it).
                    if self.cfg.mutation == Some(Mutation::StrictAsNone) && names == [ANY_STANDBY] {
                        names.clear();
                    }
                    self.slots[n].res.sync_standbys = names;
                    if self.slots[n].res.sync_standbys.is_empty() {
                        // Nobody to wait for: waiting writes complete without a sync copy.
                        let pending = std::mem::take(&mut self.slots[n].res.pending_sync);
                        for (_, write_id) in pending {
                            self.acked.push(Acked { write_id, at: self.now, sync: false, node: n });
                        }
                    }
                }
            }
        }
    }

    pub(super) fn resource_done(&mut self, n: usize) {
        let Some(op) = self.slots[n].res_busy.take() else { return };
        let now = self.slots[n].local(self.now);
        match op {
            ResOp::Promote(epoch) => {
                let res = &mut self.slots[n].res;
                res.role = Role::Primary(epoch);
                res.max_epoch = res.max_epoch.max(epoch);
                res.pending_sync.clear();
                if self.cfg.strict && res.sync_standbys.is_empty() && self.cfg.mutation != Some(Mutation::StrictAsNone)
                {
                    // A strict resource starts as primary already waiting for a standby (the
                    // PostgreSQL resource writes `*` before it promotes): the node may never
                    // get to ask, if a demote overtakes the promotion.
                    res.sync_standbys = vec![ANY_STANDBY.to_string()];
                }
                self.happened.push(Happening::BecamePrimary { node: n, epoch });
                if let Some(node) = self.slots[n].node.as_mut() {
                    node.handle(Input::Promoted(Ok(())), now);
                }
            }
            ResOp::Demote => {
                if self.slots[n].res.primary_epoch().is_some() {
                    self.picture.demotion(self.now, n);
                }
                let res = &mut self.slots[n].res;
                res.role = Role::Replica(None);
                res.pending_sync.clear();
                res.sync_standbys.clear();
                if !std::mem::take(&mut self.slots[n].demote_acked_early)
                    && let Some(node) = self.slots[n].node.as_mut()
                {
                    node.handle(Input::Demoted(Ok(())), now);
                }
            }
            _ => {}
        }
        self.pump_resource(n);
        self.settle(n);
    }

    pub(super) fn client_write(&mut self) {
        for n in 0..self.slots.len() {
            let Some(epoch) = self.slots[n].acting() else { continue };
            self.next_write += 1;
            let write_id = self.next_write;
            match self.sink.offer(epoch) {
                Err(_) => continue,
                Ok(previous) => self.happened.push(Happening::SinkAccepted { node: n, epoch, previous }),
            }
            let res = &mut self.slots[n].res;
            res.log.push(Entry { epoch, write_id });
            if self.cfg.synchronous && !res.sync_standbys.is_empty() {
                let idx = res.log.len() - 1;
                res.pending_sync.push((idx, write_id));
            } else {
                self.acked.push(Acked { write_id, at: self.now, sync: false, node: n });
            }
            // The node learns its new position at its next step, as a driver that polls the
            // resource status does (feeding it after every write cost a node step per write).
        }
    }
}
