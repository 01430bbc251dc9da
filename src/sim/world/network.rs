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

    /// Whether a request node `n` sends now gets onto a working connection to the store. The
    /// one rule for connection liveness: every real client talks to its store over a
    /// connection (gRPC over HTTP/2 for etcd, a TCP session for ZooKeeper, HTTP for Consul and
    /// Kubernetes). When answers stop coming while requests are outstanding, the client gives
    /// the connection up after [`StoreProfile::dead_connection_after`] (its ping, read or
    /// request timeout), and a new one needs a round trip (a TCP handshake) that a cut of the
    /// store-to-node direction blocks too. So a node cut `FromStore` stops reaching the store
    /// soon after the cut begins - session keep-alives included, and its session then expires -
    /// instead of keeping its session and leader key alive for the whole cut. The first answer
    /// that reaches the node revives the connection ([`heard_from_store`](Self::heard_from_store)).
    /// Draws nothing from the RNG; without a `FromStore` cut it lets every request through.
    pub(super) fn connection_carries(&mut self, n: usize) -> bool {
        let detect = ns(self.cfg.profile.dead_connection_after(self.cfg.timing.ttl));
        let now = self.now;
        let s = &mut self.slots[n];
        match s.unanswered_since {
            None => s.unanswered_since = Some(now),
            Some(since) if now.saturating_sub(since) >= detect => s.connection_dead = true,
            Some(_) => {}
        }
        !s.connection_dead || s.from_store_cut == 0
    }

    /// Whether node `n`'s session gets a keep-alive of its own every ttl/3. etcd: not while
    /// the node holds the leader key - the real backend (`kept_in_background` in
    /// backends/etcd/src/client.rs) then keeps its lease alive by the leader's renewals alone,
    /// so a leader that stops renewing loses its key a ttl later whatever its connection does.
    pub(super) fn keeps_alive_in_background(&self, n: usize) -> bool {
        self.cfg.profile != StoreProfile::Etcd
            || self.slots[n].node.as_ref().is_none_or(|node| node.status().epoch.is_none())
    }

    /// Something from the store reached node `n`: its connection works.
    pub(super) fn heard_from_store(&mut self, n: usize) {
        let s = &mut self.slots[n];
        s.unanswered_since = None;
        s.connection_dead = false;
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
