//! Faults: starting and ending each one, and the end of the chaos phase.

use super::*;

impl World {
    pub(super) fn start_fault(&mut self, f: Fault) {
        let heal = self.heal;
        match f {
            Fault::StorePartition { node, direction, duration } => {
                let s = &mut self.slots[node];
                if matches!(direction, Direction::Both | Direction::ToStore) {
                    s.to_store_cut += 1;
                }
                if matches!(direction, Direction::Both | Direction::FromStore) {
                    s.from_store_cut += 1;
                }
                self.after(duration, Ev::FaultEnd { heal, end: FaultEnd::StoreLink(node, direction) });
            }
            Fault::PeerPartition { from, to, duration } => {
                if from != to && to < self.cfg.nodes {
                    self.peer_cut[from * self.cfg.nodes + to] += 1;
                    self.after(duration, Ev::FaultEnd { heal, end: FaultEnd::PeerLink(from, to) });
                }
            }
            Fault::Pause { node, duration } => {
                if self.alive(node) {
                    let s = &mut self.slots[node];
                    s.paused = true;
                    s.pause_gen += 1;
                    let generation = s.pause_gen;
                    self.after(duration, Ev::Unpause { n: node, generation });
                }
            }
            Fault::Crash { node, down_for } => self.crash(node, down_for),
            Fault::Shutdown { node, down_for } => {
                if self.alive(node) {
                    let now = self.slots[node].local(self.now);
                    self.slots[node].restart_after = Some(down_for);
                    if let Some(x) = self.slots[node].node.as_mut() {
                        x.handle(Input::Shutdown, now);
                    }
                    let inc = self.slots[node].inc;
                    let limit = 3 * self.cfg.timing.retry_timeout;
                    self.after(limit, Ev::ShutdownTimeout { n: node, inc });
                    self.settle(node);
                }
            }
            Fault::ClockStep { node, forward } => {
                self.slots[node].clock.step(self.now, forward);
                self.settle(node);
            }
            Fault::Drift { node, ppm } => {
                self.slots[node].clock.set_drift(self.now, i64::from(ppm));
                self.settle(node);
            }
            Fault::StoreLeaderChange { unavailable_for } => {
                self.store_down_until = self.store_down_until.max(self.now + ns(unavailable_for));
                self.push(self.store_down_until, Ev::StoreUp { heal });
            }
            Fault::WatchLoss { node, duration } => {
                self.slots[node].watch_cut += 1;
                self.after(duration, Ev::FaultEnd { heal, end: FaultEnd::WatchLoss(node) });
            }
            Fault::SlowResource { node, extra, duration } => {
                self.slots[node].slow += extra;
                self.after(duration, Ev::FaultEnd { heal, end: FaultEnd::Slow(node, extra) });
            }
            Fault::ReplicationStall { node, duration } => {
                self.slots[node].stall += 1;
                self.after(duration, Ev::FaultEnd { heal, end: FaultEnd::Stall(node) });
            }
            Fault::NetworkDelay { extra, duration } => {
                self.net_extra += extra;
                self.after(duration, Ev::FaultEnd { heal, end: FaultEnd::NetDelay(extra) });
            }
        }
    }

    pub(super) fn end_fault(&mut self, end: FaultEnd) {
        match end {
            FaultEnd::StoreLink(n, direction) => {
                let s = &mut self.slots[n];
                if matches!(direction, Direction::Both | Direction::ToStore) {
                    s.to_store_cut = s.to_store_cut.saturating_sub(1);
                }
                if matches!(direction, Direction::Both | Direction::FromStore) {
                    s.from_store_cut = s.from_store_cut.saturating_sub(1);
                }
                let delay = self.cfg.profile.reconnect_delay(self.cfg.timing.ttl);
                if s.to_store_cut + s.from_store_cut == 0 && !delay.is_zero() {
                    let d = self.rng.duration(Duration::ZERO, delay);
                    self.slots[n].reconnect_until = self.now + ns(d);
                }
            }
            FaultEnd::PeerLink(a, b) => {
                let i = a * self.cfg.nodes + b;
                self.peer_cut[i] = self.peer_cut[i].saturating_sub(1);
            }
            FaultEnd::WatchLoss(n) => self.slots[n].watch_cut = self.slots[n].watch_cut.saturating_sub(1),
            FaultEnd::Slow(n, extra) => self.slots[n].slow = self.slots[n].slow.saturating_sub(extra),
            FaultEnd::Stall(n) => self.slots[n].stall = self.slots[n].stall.saturating_sub(1),
            FaultEnd::NetDelay(extra) => self.net_extra = self.net_extra.saturating_sub(extra),
        }
    }

    pub(super) fn store_up(&mut self) {
        if self.now < self.store_down_until {
            return;
        }
        if self.cfg.profile.resets_on_leader_change() {
            // The new store leader starts every session's timer afresh.
            let full = at(self.now) + self.cfg.timing.ttl;
            for s in self.sessions.clone() {
                if let Some(e) = self.model.session_expiry(s) {
                    self.model.set_session_expiry(s, e.max(full));
                }
            }
            self.leader_dirty = true;
            self.store_changed();
        }
    }

    /// The liveness phase begins: every fault heals, crashed nodes restart, paused ones
    /// resume, and random failure rates drop to zero (TigerBeetle's VOPR does the same).
    pub(super) fn end_chaos(&mut self) {
        self.row("chaos ends: everything heals");
        self.healed = true;
        self.heal += 1;
        self.peer_cut.iter_mut().for_each(|c| *c = 0);
        self.net_extra = Duration::ZERO;
        self.knobs.loss_ppm = 0;
        self.knobs.reject_ppm = 0;
        self.knobs.reply_lost_ppm = 0;
        self.knobs.timeout_ppm = 0;
        self.knobs.watch_loss_ppm = 0;
        if self.now < self.store_down_until {
            self.store_down_until = self.now;
            self.store_up();
        }
        for n in 0..self.slots.len() {
            let s = &mut self.slots[n];
            s.to_store_cut = 0;
            s.from_store_cut = 0;
            s.watch_cut = 0;
            s.stall = 0;
            s.slow = Duration::ZERO;
            s.reconnect_until = 0;
            if s.paused {
                self.unpause(n);
            }
            if self.slots[n].down {
                self.start_process(n);
            }
        }
    }
}
