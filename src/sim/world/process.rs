//! Node processes: start, crash, pause, and carrying out what each node asks.

use super::*;

impl World {
    pub(super) fn start_process(&mut self, n: usize) {
        let inc = self.slots[n].inc + 1;
        let now_l = self.slots[n].local(self.now);
        let mut cfg = NodeConfig::new(self.slots[n].name.clone(), inc);
        cfg.timing = self.node_timing.clone();
        cfg.api_url = Some(format!("http://{}", self.slots[n].name));
        cfg.conn_url = Some(self.slots[n].name.clone());
        cfg.synchronous_mode = self.cfg.synchronous;
        cfg.synchronous_node_count = NonZeroUsize::new(self.cfg.sync_count).unwrap_or(NonZeroUsize::MIN);
        cfg.synchronous_mode_strict = self.cfg.strict;
        let node = Node::new(cfg, now_l).expect("simulated timing is valid");
        let session = self.model.open_session(self.cfg.profile.session_ttl(self.cfg.timing.ttl), at(self.now));
        self.sessions.push(session);
        let slot = &mut self.slots[n];
        slot.inc = inc;
        slot.node = Some(node);
        slot.session = session;
        slot.down = false;
        slot.paused = false;
        slot.inbox.clear();
        slot.sent.clear();
        slot.watch = None;
        slot.k8s_seen = None;
        slot.k8s_expired = None;
        slot.k8s_held = None;
        slot.status_sent = None;
        // A new process opens a new connection.
        slot.unanswered_since = None;
        slot.connection_dead = false;
        slot.res.running = true;
        slot.res.role = Role::Replica(None);
        slot.res.sync_standbys.clear();
        slot.res.pending_sync.clear();
        slot.res_ops.clear();
        slot.res_busy = None;
        slot.decision = None;
        slot.last_probe.clear();
        slot.probe_asked = None;
        slot.shown_members.clear();
        slot.unanswered_acquire = None;
        slot.declared_until = None;
        slot.declared_epoch = None;
        self.mix(0x5354_4152_5400 + n as u64);
        let d = self.cfg.timing.ttl / 3;
        self.after(d, Ev::Keepalive { n, inc });
        self.settle(n);
        self.schedule_expiry();
    }

    pub(super) fn crash(&mut self, n: usize, down_for: Duration) {
        let slot = &mut self.slots[n];
        if slot.node.is_none() {
            return;
        }
        slot.node = None;
        slot.inc += 1;
        slot.down = true;
        slot.paused = false;
        slot.inbox.clear();
        slot.res.running = false;
        slot.res.role = Role::Replica(None);
        slot.res.pending_sync.clear();
        slot.res_ops.clear();
        slot.res_busy = None;
        slot.timer_gen += 1;
        slot.timer_at = None;
        slot.restart_after = None;
        if !self.healed {
            self.after(down_for, Ev::Restart { n });
        } else {
            self.after(Duration::ZERO, Ev::Restart { n });
        }
    }

    pub(super) fn unpause(&mut self, n: usize) {
        self.slots[n].paused = false;
        let inbox = std::mem::take(&mut self.slots[n].inbox);
        for ev in inbox {
            self.push(self.now, ev);
        }
        self.settle(n);
    }

    /// Feeds the node its resource status, carries out every action it emitted, and
    /// re-arms its timer.
    pub(super) fn settle(&mut self, n: usize) {
        self.settles += 1;
        for _ in 0..10_000 {
            self.feed_status(n);
            let Some(node) = self.slots[n].node.as_mut() else { return };
            // Buffers reused across calls (a nested settle finds them taken and allocates).
            let mut actions = std::mem::take(&mut self.settle_actions);
            let mut events = std::mem::take(&mut self.settle_events);
            while let Some(a) = node.poll_action() {
                actions.push(a);
            }
            while let Some(e) = node.poll_event() {
                events.push(e);
            }
            let idle = actions.is_empty() && events.is_empty();
            for e in events.drain(..) {
                self.on_node_event(n, e);
            }
            for a in actions.drain(..) {
                self.do_action(n, a);
            }
            self.settle_actions = actions;
            self.settle_events = events;
            if idle {
                break;
            }
        }
        let Some(node) = self.slots[n].node.as_ref() else { return };
        if node.is_stopped() {
            let d = self.slots[n].restart_after.take().unwrap_or(self.cfg.timing.loop_wait);
            // The driver has stopped; the daemon then closes its store session, as it does
            // after any stop of its loop (a crash or a kill sends nothing).
            self.send_close(n);
            self.crash(n, d);
            return;
        }
        let timeout = node.poll_timeout();
        let slot = &mut self.slots[n];
        // Most settles leave the deadline where it was: keep the queued timer instead of
        // queueing a copy (stale copies were two thirds of all events).
        if let (Some(t), Some(queued)) = (timeout, slot.timer_at)
            && slot.clock.real_when(t, self.now) == queued
            && queued > self.now
        {
            return;
        }
        slot.timer_gen += 1;
        slot.timer_at = None;
        if let Some(t) = timeout {
            let mut real = slot.clock.real_when(t, self.now);
            // Guard against a node whose timer never moves forward: virtual time would stand
            // still. Push it on and count it (a driver would busy-loop there).
            if real <= self.now {
                slot.same_instant_timers += 1;
                if slot.same_instant_timers > 1000 {
                    slot.same_instant_timers = 0;
                    self.timer_spins += 1;
                    real = self.now + 1_000_000;
                }
            } else {
                slot.same_instant_timers = 0;
            }
            let generation = slot.timer_gen;
            slot.timer_at = Some(real);
            self.push(real, Ev::Timer { n, generation });
        }
    }

    pub(super) fn on_node_event(&mut self, n: usize, e: NodeEvent) {
        let code = match &e {
            NodeEvent::Acquired { epoch } => 0x100 + epoch.0,
            NodeEvent::Promoted { epoch } => 0x200 + epoch.0,
            NodeEvent::Demoting { .. } => 0x300,
            NodeEvent::Demoted => 0x400,
            NodeEvent::LeaderChanged { .. } => 0x500,
            NodeEvent::NotEligible(_) => 0x600,
            NodeEvent::AdminDone { .. } => 0x700,
            NodeEvent::Fatal(_) => 0x800,
        };
        self.mix(code + ((n as u64) << 32));
        match e {
            NodeEvent::Demoting { mode, why } => {
                self.row(&format!("{} demoting ({mode:?}): {why}", self.slots[n].name))
            }
            NodeEvent::Acquired { epoch } => {
                self.row(&format!("{} acquired the key, epoch {}", self.slots[n].name, epoch.0))
            }
            NodeEvent::Fatal(why) => self.row(&format!("{} fatal: {why}", self.slots[n].name)),
            _ => {}
        }
    }

    pub(super) fn status_of(&self, n: usize) -> ResourceStatus {
        let slot = &self.slots[n];
        let primary = slot.res.primary_epoch().is_some();
        let sync_confirmed = if primary && self.cfg.mutation == Some(Mutation::ConfirmSyncEarly) {
            slot.res.sync_standbys.clone()
        } else if primary {
            slot.res
                .sync_standbys
                .iter()
                .filter(|s| {
                    self.index_of(s).is_some_and(|j| {
                        self.alive(j)
                            && self.slots[j].res.role == Role::Replica(Some(n))
                            && self.peer_ok(n, j)
                            && self.peer_ok(j, n)
                            && self.caught_up(j, n)
                    })
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        // Connected and streaming: alive, following us, both directions up (caught up or not).
        let streaming = primary.then(|| {
            (0..self.slots.len())
                .filter(|&j| {
                    j != n
                        && self.alive(j)
                        && self.slots[j].res.role == Role::Replica(Some(n))
                        && self.peer_ok(n, j)
                        && self.peer_ok(j, n)
                })
                .map(|j| self.slots[j].name.clone())
                .collect()
        });
        ResourceStatus {
            running: slot.res.running,
            role: if primary { ResourceRole::Primary } else { ResourceRole::Replica },
            position: Some(slot.res.position()),
            timeline: None,
            sync_confirmed,
            streaming,
        }
    }

    /// Whether standby `j` holds every write of primary `n` that is not waiting for a
    /// synchronous copy (PostgreSQL reports a standby `sync` only once it has caught up;
    /// connected is not enough). Logs that agree at one index agree before it (write ids
    /// are unique and replicas copy prefixes), so one comparison suffices.
    pub(super) fn caught_up(&self, j: usize, n: usize) -> bool {
        let (standby, primary) = (&self.slots[j].res.log, &self.slots[n].res);
        let need = primary.pending_sync.iter().map(|(idx, _)| *idx).min().unwrap_or(primary.log.len());
        need == 0 || (standby.len() >= need && standby[need - 1] == primary.log[need - 1])
    }

    pub(super) fn feed_status(&mut self, n: usize) {
        if self.slots[n].node.is_none() {
            return;
        }
        let mut status = self.status_of(n);
        if self.cfg.mutation == Some(Mutation::StaleOwnPosition)
            && let Some(&(_, p)) = self.slots[n].positions.front()
        {
            status.position = Some(p);
        }
        if self.slots[n].status_sent.as_ref() == Some(&status) {
            return;
        }
        let now = self.slots[n].local(self.now);
        self.slots[n].status_sent = Some(status.clone());
        if let Some(node) = self.slots[n].node.as_mut() {
            node.handle(Input::ResourceStatus(status), now);
        }
    }

    pub(super) fn do_action(&mut self, n: usize, a: Action) {
        let now_l = self.slots[n].local(self.now);
        match a {
            Action::Load { id }
            | Action::Acquire { id, .. }
            | Action::Renew { id, .. }
            | Action::Release { id, .. }
            | Action::PublishMember { id, .. }
            | Action::WriteControl { id, .. }
            | Action::DeleteControl { id, .. } => {
                self.mix(0x1000 + id.0);
                match &a {
                    Action::Acquire { record, .. } => {
                        self.record_decision(n);
                        self.slots[n].unanswered_acquire = Some(record.clone());
                    }
                    Action::Renew { lease, .. } | Action::Release { lease, .. } => {
                        let names_us = lease.record.member == self.slots[n].name;
                        self.happened.push(Happening::LeaseSent { node: n, epoch: lease.epoch, names_us });
                    }
                    _ => {}
                }
                self.slots[n].sent.insert(id.0, now_l);
                if self.slots[n].sent.len() > 64 {
                    let first = *self.slots[n].sent.keys().next().expect("non-empty");
                    self.slots[n].sent.remove(&first);
                }
                self.send_to_store(n, Req::Node(a));
            }
            Action::Watch { after } => {
                let after = after.unwrap_or_else(|| Version::new(self.model.revision()));
                self.slots[n].watch = Some(after);
                self.fire_watches();
            }
            Action::ProbePeers { id, mut peers } => {
                if self.cfg.mutation == Some(Mutation::AskRegisteredOnly) {
                    let view = self.slots[n].node.as_ref().and_then(|node| node.view());
                    peers.retain(|p| view.is_some_and(|v| v.member(&p.name).is_some()));
                }
                let asked = peers.iter().map(|p| p.name.clone()).collect();
                self.slots[n].probe_asked = Some(ProbeTruth { asked, present: self.present_peers(n) });
                self.slots[n].last_probe.clear();
                let replies: Vec<PeerReply> = peers.iter().map(|p| self.probe_one(n, &p.name)).collect();
                let d = 2 * self.net_delay();
                let inc = self.slots[n].inc;
                self.after(d, Ev::Probe { n, inc, id, replies });
            }
            Action::FailsafeCheck { id, peers, .. } => {
                let name = self.slots[n].name.clone();
                let mut ok = !peers.is_empty();
                for p in &peers {
                    let Some(j) = self.index_of(&p.name) else {
                        ok = false;
                        continue;
                    };
                    if !(self.alive(j) && self.peer_ok(n, j) && self.peer_ok(j, n)) {
                        ok = false;
                        continue;
                    }
                    let pl = self.slots[j].local(self.now);
                    let accepted = self.slots[j].node.as_mut().is_some_and(|node| node.handle_failsafe_ping(&name, pl));
                    ok &= accepted;
                }
                let d = 2 * self.net_delay();
                let inc = self.slots[n].inc;
                self.after(d, Ev::Failsafe { n, inc, id, ok });
            }
            Action::ArmWatchdog { .. } | Action::KeepAliveWatchdog | Action::DisarmWatchdog => {}
            Action::Promote { epoch } => {
                self.happened.push(Happening::PromoteAsked { node: n, epoch });
                self.row(&format!("{} promote(epoch {})", self.slots[n].name, epoch.0));
                self.res_op(n, ResOp::Promote(epoch));
            }
            Action::Demote { mode } => {
                self.mix(0x2000 + mode as u64);
                // A leader's switchover probe says nothing about a later election.
                self.slots[n].last_probe.clear();
                self.slots[n].probe_asked = None;
                self.res_op(n, ResOp::Demote);
            }
            Action::Follow { leader, .. } => self.res_op(n, ResOp::Follow(leader)),
            Action::SetSyncStandbys { names } => self.res_op(n, ResOp::SetSync(names)),
        }
    }

    pub(super) fn record_decision(&mut self, n: usize) {
        if self.slots[n].node.is_none() {
            return;
        }
        // The replies and the peers present belong to the probe behind this acquire; a node
        // that asked nobody decided at once, so who was present is who is present now.
        let probe = self.slots[n].probe_asked.take();
        let probe = probe.unwrap_or_else(|| ProbeTruth { asked: Vec::new(), present: self.present_peers(n) });
        let peers = std::mem::take(&mut self.slots[n].last_probe);
        let view = self.slots[n].node.as_ref().and_then(|node| node.view());
        let decision = Decision {
            at: self.now,
            my_position: self.slots[n].res.position(),
            leader_position: view.and_then(|v| v.status.as_ref()).map(|s| s.value.position),
            sync: view.and_then(|v| v.sync.as_ref()).map(|s| s.value.clone()),
            peers,
            asked: probe.asked,
            present: probe.present,
            real_max_position: self.slots.iter().map(|s| s.res.position()).max().unwrap_or(0),
        };
        self.slots[n].decision = Some(decision);
    }
}
