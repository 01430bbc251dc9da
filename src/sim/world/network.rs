//! The simulated network between nodes: delays, loss, partitions, and peer probes.

use super::*;

impl World {
    pub(super) fn net_delay(&mut self) -> Duration {
        let (lo, hi) = self.knobs.net_delay;
        self.rng.duration(lo, hi) + self.net_extra
    }

    pub(super) fn lost(&mut self) -> bool {
        let p = self.knobs.loss_ppm;
        self.rng.chance(p)
    }

    pub(super) fn peer_ok(&self, from: usize, to: usize) -> bool {
        from == to || self.peer_cut[from * self.cfg.nodes + to] == 0
    }

    pub(super) fn alive(&self, n: usize) -> bool {
        self.slots[n].node.is_some() && !self.slots[n].paused
    }

    pub(super) fn index_of(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }

    // === the loop ===

    pub(super) fn probe_one(&mut self, n: usize, name: &str) -> PeerReply {
        let Some(j) = self.index_of(name) else { return PeerReply::Unreachable { name: name.to_string() } };
        if !(self.alive(j) && self.peer_ok(n, j) && self.peer_ok(j, n)) || self.lost() {
            return PeerReply::Unreachable { name: name.to_string() };
        }
        let s = self.status_of(j);
        PeerReply::Reachable(crate::record::MemberRecord {
            name: name.to_string(),
            api_url: None,
            conn_url: None,
            role: s.role,
            running: s.running,
            position: s.position,
            timeline: s.timeline,
            tags: Default::default(),
            watchdog_failed: false,
        })
    }

    // === resource ===

    /// The other nodes that are up, that `n` and they can reach, and that `n` saw registered
    /// within the roster's memory or finds on the leader's roster in its current view, with
    /// their real log positions: whom an election by `n` could have known of and heard from
    /// right now. A member nothing names to `n` cannot be asked.
    pub(super) fn present_peers(&self, n: usize) -> Vec<(String, u64)> {
        // A little under the node's memory: the node measures it on its own drifting clock.
        let memory = ns(self.cfg.timing.ttl * crate::node::ROSTER_MEMORY_TTLS) * 9 / 10;
        let status = self.slots[n].node.as_ref().and_then(|node| node.view()).and_then(|v| v.status.as_ref());
        let shown = |j: usize| {
            let name = &self.slots[j].name;
            self.slots[n].shown_members.get(name).is_some_and(|t| self.now < t + memory)
                || status.is_some_and(|s| s.value.members.contains_key(name))
        };
        (0..self.slots.len())
            .filter(|&j| j != n && self.alive(j) && self.peer_ok(n, j) && self.peer_ok(j, n) && shown(j))
            .map(|j| (self.slots[j].name.clone(), self.slots[j].res.position()))
            .collect()
    }
}
