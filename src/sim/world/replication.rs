//! Replication: replicas copy their source's log in rounds.

use super::*;

impl World {
    /// Queues the next replication round on the fixed grid `k * replication_interval`,
    /// unless one is queued. Rounds stop while they find nothing to do.
    pub(super) fn arm_replication(&mut self) {
        if self.replication_armed {
            return;
        }
        self.replication_armed = true;
        let d = ns(self.knobs.replication_interval).max(1);
        let next = (self.now / d + 1) * d;
        self.push(next, Ev::Replicate);
    }

    /// The slot replica `n` can copy from right now, if any.
    pub(super) fn replication_source(&self, n: usize) -> Option<usize> {
        let Role::Replica(Some(src)) = self.slots[n].res.role else { return None };
        let ok = src != n
            && self.slots[n].serving()
            && self.slots[src].serving()
            && self.slots[n].stall == 0
            && self.peer_ok(src, n)
            && self.peer_ok(n, src)
            && self.slots[src].res.running;
        ok.then_some(src)
    }

    /// Whether a replication round now would copy anything: after a round, only a replica
    /// whose source changed later in the same round (a cascade) has something left.
    pub(super) fn replication_pending(&self) -> bool {
        (0..self.slots.len()).any(|n| {
            // A primary's log does not change during a round: its replicas got all of it.
            let Role::Replica(Some(src)) = self.slots[n].res.role else { return false };
            if matches!(self.slots[src].res.role, Role::Primary(_)) {
                return false;
            }
            self.replication_source(n).is_some_and(|src| {
                let (r, s) = (&self.slots[n].res, &self.slots[src].res);
                s.max_epoch >= r.max_epoch
                    && (r.log.len(), r.log.last(), r.max_epoch) != (s.log.len(), s.log.last(), s.max_epoch)
            })
        })
    }

    /// One replication round; returns whether it changed anything (a round that changed
    /// nothing repeats exactly until some other event happens).
    pub(super) fn replicate(&mut self) -> bool {
        let mut changed = false;
        for n in 0..self.slots.len() {
            let Some(src) = self.replication_source(n) else { continue };
            // Two distinct slots borrowed at once (src != n was checked above).
            let (replica, source) = if n < src {
                let (lo, hi) = self.slots.split_at_mut(src);
                (&mut lo[n].res, &hi[0].res)
            } else {
                let (lo, hi) = self.slots.split_at_mut(n);
                (&mut hi[0].res, &lo[src].res)
            };
            let before = (replica.log.len(), replica.log.last().copied(), replica.max_epoch);
            let copied = replica.replicate_from(source);
            if !copied {
                continue;
            }
            let res = &self.slots[n].res;
            changed |= before != (res.log.len(), res.log.last().copied(), res.max_epoch);
            let acked_before = self.acked.len();
            // Synchronous acknowledgement: a waiting write completes once every standby the
            // primary waits for has it (`N (a, b, ...)` with N names); this one just copied.
            let source = &self.slots[src].res;
            if source.primary_epoch().is_some() && source.sync_standbys.iter().any(|s| *s == self.slots[n].name) {
                let any_one = self.cfg.mutation == Some(Mutation::AckOnAnyStandby);
                let standbys: Vec<Option<usize>> = if any_one {
                    vec![Some(n)]
                } else {
                    source.sync_standbys.iter().map(|s| self.index_of(s)).collect()
                };
                let pending = std::mem::take(&mut self.slots[src].res.pending_sync);
                let mut keep = Vec::new();
                for (idx, write_id) in pending {
                    let has = |j: &Option<usize>| {
                        j.is_some_and(|j| self.slots[j].res.log.get(idx).is_some_and(|e| e.write_id == write_id))
                    };
                    if standbys.iter().all(has) {
                        self.acked.push(Acked { write_id, at: self.now, sync: true, node: src });
                    } else {
                        keep.push((idx, write_id));
                    }
                }
                self.slots[src].res.pending_sync = keep;
            }
            changed |= self.acked.len() != acked_before;
            // The replica learns its new position at its next step (the driver polls the
            // resource once per loop_wait; telling the node after every round cost a node
            // step per replica per round).
            // Without synchronous standbys, before and now, the confirmed set stays empty.
            let sent = self.slots[src].status_sent.as_ref().map_or(&[][..], |s| &s.sync_confirmed[..]);
            let quiet = self.slots[src].res.sync_standbys.is_empty() && sent.is_empty();
            if !quiet && self.status_of(src).sync_confirmed[..] != *sent {
                changed = true;
                self.settle(src);
            }
        }
        changed
    }

    // === network and store ===
}
