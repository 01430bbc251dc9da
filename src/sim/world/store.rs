//! The simulated store: requests arrive, are applied to the model with the profile's
//! quirks, and answers travel back to the nodes.

use super::*;

impl World {
    pub(super) fn send_to_store(&mut self, n: usize, req: Req) {
        if self.slots[n].to_store_cut > 0 || !self.connection_carries(n) || self.lost() {
            self.unknown_as_won(n, &req);
            return;
        }
        let d = self.net_delay();
        let session = self.slots[n].session;
        self.after(d, Ev::Arrive { n, session, req: Box::new(req) });
    }

    /// A process whose driver stopped ends its store session, as the daemon's `Store::close`
    /// does with the client's `shutdown`: etcd revokes the process lease, ZooKeeper closes the
    /// session, Consul destroys it, so every key bound to it (its member key, a leader key it
    /// demoted offline from, one an unanswered acquire created) goes at once instead of a ttl
    /// later. Kubernetes has no session: see [`end_session`](Self::end_session). The request
    /// takes the road every request takes (cuts, dead connection, loss, a store electing a
    /// leader, a reconnecting ZooKeeper client, rejection): if it does not arrive the session
    /// lives on until it expires, as when the real client's close fails. One attempt, no retry.
    pub(super) fn send_close(&mut self, n: usize) {
        let k8s_held = self.slots[n].k8s_held.take();
        self.send_to_store(n, Req::Close { k8s_held });
    }

    /// The store side of [`send_close`](Self::send_close) for the process that ran on
    /// `session`. Kubernetes (`end_all` in backends/kubernetes/src/client.rs): the member
    /// Lease is deleted and the leader Lease the client still counts held has its holder
    /// cleared, each only if unchanged since this process wrote it.
    pub(super) fn end_session(&mut self, n: usize, session: SessionId, k8s_held: Option<(Epoch, u64)>, now: Instant) {
        if self.cfg.profile != StoreProfile::Kubernetes {
            self.model.close_session(session, now);
            self.leader_dirty = true;
            return;
        }
        if let Some((epoch, renews)) = k8s_held
            && renews == self.k8s_renews
            && let Some(current) = self.load_leader(now)
            && current.epoch == epoch
            && current.record.member == self.slots[n].name
        {
            let lease = Lease {
                record: current.record.clone(),
                epoch,
                version: current.version.clone(),
                valid_for: Duration::ZERO,
            };
            if self.model.release(SCOPE, &lease, now).is_won() {
                self.leader_dirty = true;
                self.just_released = true;
            }
        }
        let name = self.slots[n].name.clone();
        self.model.delete_member_of(SCOPE, &name, session, now);
    }

    /// Mutation [`Mutation::UnknownAsWon`]: the driver answers an acquire whose outcome it
    /// cannot know as won, with a guessed epoch, instead of letting the node re-read.
    pub(super) fn unknown_as_won(&mut self, n: usize, req: &Req) {
        if self.cfg.mutation != Some(Mutation::UnknownAsWon) {
            return;
        }
        let Req::Node(Action::Acquire { id, record }) = req else { return };
        let epoch = Epoch(self.model.revision() + 1);
        let lease =
            Lease { record: record.clone(), epoch, version: Version::new(epoch.0), valid_for: self.cfg.timing.ttl };
        let inc = self.slots[n].inc;
        let d = self.cfg.timing.retry_timeout / 2;
        let won = Input::Acquired { id: *id, result: Ok(CasOutcome::Won(lease)) };
        self.after(d, Ev::Reply { n, inc, reply: Box::new(Reply::Node(won, None)) });
    }

    pub(super) fn reply(&mut self, n: usize, reply: Reply) {
        if self.slots[n].from_store_cut > 0 || self.lost() {
            return;
        }
        let d = self.net_delay();
        let inc = self.slots[n].inc;
        self.after(d, Ev::Reply { n, inc, reply: Box::new(reply) });
    }

    pub(super) fn store_arrive(&mut self, n: usize, session: SessionId, req: Req) {
        if self.now < self.store_down_until {
            self.unknown_as_won(n, &req);
            return; // the store is electing a leader: dropped without an answer
        }
        let now = at(self.now);
        if self.now < self.slots[n].reconnect_until {
            if let Some(r) = rejected(&req, DcsError::unavailable("reconnecting")) {
                self.reply(n, r);
            }
            return;
        }
        let roll = self.rng.range(0, 999_999) as u32;
        let k = &self.knobs;
        let (reject, lost, vanish) =
            (k.reject_ppm, k.reject_ppm + k.reply_lost_ppm, k.reject_ppm + k.reply_lost_ppm + k.timeout_ppm);
        if roll < reject {
            if let Some(r) = rejected(&req, DcsError::unavailable("rejected")) {
                self.reply(n, r);
            }
            return;
        }
        if roll >= lost && roll < vanish {
            self.unknown_as_won(n, &req);
            return; // timed out: not applied, no answer
        }
        let reply = self.apply(n, session, req, now);
        self.store_changed();
        if roll >= reject && roll < lost {
            // Applied, reply lost: the client sees a timeout, or an explicit unknown outcome.
            if let Some(Reply::Node(Input::Acquired { id, result: Ok(CasOutcome::Won(lease)) }, _)) = &reply
                && self.cfg.mutation == Some(Mutation::UnknownAsWon)
            {
                let won = Input::Acquired { id: *id, result: Ok(CasOutcome::Won(lease.clone())) };
                self.reply(n, Reply::Node(won, None));
            } else if self.rng.chance(500_000)
                && let Some(r) = reply.as_ref().and_then(reply_id)
                && let Some(r) = rejected_id(r, DcsError::unknown("reply lost"))
            {
                self.reply(n, r);
            }
            return;
        }
        if let Some(r) = reply {
            self.reply(n, r);
        }
    }

    pub(super) fn consul_lazy(&mut self, session: SessionId, now: Instant) {
        if self.cfg.profile == StoreProfile::Consul {
            let ttl = self.cfg.timing.ttl;
            let extra = self.rng.duration(Duration::ZERO, ttl);
            self.model.set_session_expiry(session, now + ttl + extra);
        }
    }

    pub(super) fn apply(&mut self, n: usize, session: SessionId, req: Req, now: Instant) -> Option<Reply> {
        let action = match req {
            Req::Keepalive => {
                return Some(match self.model.keep_alive(session, now) {
                    Ok(_) => {
                        self.consul_lazy(session, now);
                        Reply::Keepalive(None)
                    }
                    Err(_) => {
                        let s = self.model.open_session(self.cfg.profile.session_ttl(self.cfg.timing.ttl), now);
                        self.sessions.push(s);
                        Reply::Keepalive(Some(s))
                    }
                });
            }
            Req::Close { k8s_held } => {
                self.end_session(n, session, k8s_held, now);
                return None;
            }
            Req::Node(a) => a,
        };
        if matches!(action, Action::Acquire { .. } | Action::Renew { .. } | Action::Release { .. }) {
            self.leader_dirty = true;
        }
        Some(match action {
            Action::Load { id } => {
                let view = self.load_view(now);
                let key = view.leader.as_ref().map(|l| (l.epoch.0, self.k8s_renews));
                Reply::Node(Input::Loaded { id, result: Ok(view) }, key)
            }
            Action::Acquire { id, record } => {
                if self.now < self.lock_delay_until {
                    return Some(Reply::Node(Input::Acquired { id, result: Ok(CasOutcome::Lost(None)) }, None));
                }
                if self.cfg.profile == StoreProfile::Kubernetes
                    && let Some(current) = self.load_leader(now)
                {
                    // Takeover is a CAS on the version the observer saw expire.
                    if self.slots[n].k8s_expired == Some((current.epoch.0, self.k8s_renews)) {
                        let old = Lease {
                            record: current.record.clone(),
                            epoch: current.epoch,
                            version: current.version.clone(),
                            valid_for: Duration::ZERO,
                        };
                        let _ = self.model.release(SCOPE, &old, now);
                    }
                }
                let result = self.model.acquire(SCOPE, session, &record, now);
                if let Ok(CasOutcome::Won(lease)) = &result {
                    self.granted.insert(lease.epoch);
                    self.happened.push(Happening::Granted { node: n, epoch: lease.epoch });
                    self.lease_session = Some(session);
                    let expires = if self.cfg.profile == StoreProfile::Kubernetes {
                        self.now + ns(crate::time::shrink_by_drift(self.cfg.timing.ttl, self.cfg.timing.max_drift_ppm))
                    } else {
                        u64::MAX
                    };
                    self.lease = Some(StoreLease { node: n, epoch: lease.epoch, expires });
                    self.k8s_renews += 1;
                    self.consul_lazy(session, now);
                }
                let wrote = self.k8s_wrote(&result);
                Reply::Node(Input::Acquired { id, result }, wrote)
            }
            Action::Renew { id, lease } => {
                let result = self.model.renew(SCOPE, session, &lease, now);
                if let Ok(CasOutcome::Won(_)) = &result {
                    self.k8s_renews += 1;
                    self.consul_lazy(session, now);
                    if self.cfg.profile == StoreProfile::Kubernetes
                        && let Some(l) = self.lease.as_mut()
                    {
                        // Renewals are writes: an observer restarts its ttl from seeing one.
                        l.expires = self.now
                            + ns(crate::time::shrink_by_drift(self.cfg.timing.ttl, self.cfg.timing.max_drift_ppm));
                    }
                }
                let wrote = self.k8s_wrote(&result);
                Reply::Node(Input::Renewed { id, result }, wrote)
            }
            Action::Release { id, lease } => {
                let result = self.model.release(SCOPE, &lease, now);
                if result.is_won() {
                    self.just_released = true;
                }
                Reply::Node(Input::Released { id, result: Ok(result) }, None)
            }
            Action::PublishMember { id, record } => {
                let result = self.model.publish_member(SCOPE, session, &record, now).map(|()| true);
                Reply::Node(Input::Written { id, result }, None)
            }
            Action::WriteControl { id, key, expect, value } => {
                let won = self.model.write_control(SCOPE, key, &expect, &value, now).is_won();
                Reply::Node(Input::Written { id, result: Ok(won) }, None)
            }
            Action::DeleteControl { id, key, expect } => {
                let won = self.model.delete_control(SCOPE, key, &expect, now).is_won();
                Reply::Node(Input::Written { id, result: Ok(won) }, None)
            }
            _ => return None,
        })
    }

    /// Kubernetes: the leader Lease a won acquire or renewal just wrote, as (epoch,
    /// `k8s_renews`), carried in the reply so the client remembers it once answered.
    fn k8s_wrote(&self, result: &Result<CasOutcome<Lease, Option<LeaderView>>, DcsError>) -> Option<(u64, u64)> {
        match result {
            Ok(CasOutcome::Won(lease)) if self.cfg.profile == StoreProfile::Kubernetes => {
                Some((lease.epoch.0, self.k8s_renews))
            }
            _ => None,
        }
    }

    /// `MemoryModel::load` with the decoded view cached per store revision: a load expires
    /// sessions, then decodes every record; the decoded view only changes with the revision.
    pub(super) fn load_view(&mut self, now: Instant) -> Arc<ClusterView> {
        self.model.expire(now);
        let rev = self.model.revision();
        match &self.view_cache {
            Some((r, v)) if *r == rev => v.clone(),
            _ => {
                let v = Arc::new(self.model.load_cached(SCOPE, now, &mut self.decode_cache));
                self.view_cache = Some((rev, v.clone()));
                v
            }
        }
    }

    /// The leader key alone (from the cached view when it is current; else only the
    /// leader key is decoded).
    pub(super) fn load_leader(&mut self, now: Instant) -> Option<LeaderView> {
        self.model.expire(now);
        let rev = self.model.revision();
        match &self.view_cache {
            Some((r, v)) if *r == rev => v.leader.clone(),
            _ => self.model.leader_view(SCOPE),
        }
    }

    /// After any store operation: track the leader key, wake watches, plan the next expiry.
    pub(super) fn store_changed(&mut self) {
        let rev = self.model.revision();
        // The key can also vanish when its session expires inside any store operation.
        let key_session_gone = match (self.lease, self.lease_session) {
            (Some(_), Some(s)) => self.model.session_expiry(s).is_none(),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if rev != self.last_rev {
            self.last_rev = rev;
            if self.leader_dirty || key_session_gone {
                self.leader_dirty = false;
                self.leader_changed();
            }
            self.fire_watches();
        }
        self.just_released = false;
        if self.cfg.profile != StoreProfile::Kubernetes
            && let (Some(l), Some(s)) = (self.lease.as_mut(), self.lease_session)
        {
            l.expires = self.model.session_expiry(s).map_or(u64::MAX, |e| ns(e.since_origin()));
        }
        self.schedule_expiry();
    }

    /// Re-reads the leader key into `lease` (I1') and starts a lock-delay when it vanished.
    pub(super) fn leader_changed(&mut self) {
        let leader = self.load_leader(at(self.now));
        let had = self.lease.is_some();
        match leader {
            Some(l) if self.lease.is_some_and(|s| s.epoch == l.epoch) => {}
            Some(l) => {
                // Re-created under a name we can map (k8s takeover path sets it on acquire).
                let node = self.index_of(&l.record.member).unwrap_or(usize::MAX);
                self.lease = Some(StoreLease { node, epoch: l.epoch, expires: u64::MAX });
            }
            None => {
                self.lease = None;
                self.lease_session = None;
                if had && !self.just_released {
                    self.lock_delay_until = self.now + ns(self.cfg.profile.lock_delay());
                }
            }
        }
    }

    pub(super) fn schedule_expiry(&mut self) {
        if let Some(t) = self.model.next_expiry() {
            let t = ns(t.since_origin());
            if self.expiry_at.is_none_or(|s| t < s) && t < u64::MAX / 2 {
                self.expiry_at = Some(t);
                self.push(t, Ev::StoreExpiry);
            }
        }
    }

    /// Notes when a key that wakes watches last changed: a new revision on one of them, or
    /// one of them gone. Member records are left out here and only here ([`wakes_watches`]).
    pub(super) fn track_watched_keys(&mut self) {
        let watched = self.model.key_revisions(SCOPE).filter(|(k, _)| wakes_watches(k));
        if watched.eq(self.watched_keys.iter().map(|(k, r)| (k, *r))) {
            return;
        }
        let watched = self.model.key_revisions(SCOPE).filter(|(k, _)| wakes_watches(k));
        self.watched_keys = watched.map(|(k, r)| (k.clone(), r)).collect();
        self.watched_rev = self.model.revision();
    }

    /// What a watch from `after` reports now: `Resync` from a revision history no longer
    /// covers, `Changed` once a key that wakes watches changed after it, else nothing yet.
    pub(super) fn watch_event(&self, after: &Version) -> Option<WatchEvent> {
        match after.as_u64() {
            Some(after) if after >= self.model.compacted() => (self.watched_rev > after).then_some(WatchEvent::Changed),
            _ => Some(WatchEvent::Resync),
        }
    }

    pub(super) fn fire_watches(&mut self) {
        self.model.expire(at(self.now));
        self.track_watched_keys();
        for n in 0..self.slots.len() {
            let Some(after) = self.slots[n].watch.clone() else { continue };
            if self.slots[n].node.is_none() || self.watch_event(&after).is_none() {
                continue;
            }
            self.slots[n].watch = None;
            let p = self.knobs.watch_loss_ppm;
            if self.slots[n].from_store_cut > 0 || self.slots[n].watch_cut > 0 || self.rng.chance(p) {
                continue;
            }
            let (lo, hi) = self.knobs.watch_delay;
            let d = self.rng.duration(lo, hi) + self.net_extra;
            let inc = self.slots[n].inc;
            self.after(d, Ev::WatchFire { n, inc });
        }
    }

    pub(super) fn deliver(&mut self, n: usize, reply: Reply) {
        let now = self.slots[n].local(self.now);
        let ttl = self.cfg.timing.ttl;
        let (mut input, key) = match reply {
            Reply::Node(input, key) => (input, key),
            Reply::Keepalive(new) => {
                if let Some(s) = new {
                    self.slots[n].session = s;
                }
                return;
            }
        };
        // The simulator's own bookkeeping, before the node sees the answer.
        match &mut input {
            Input::Loaded { id, result } => {
                if let Ok(view) = result {
                    self.adopt_foreign_key(n, view);
                    if let Some(l) = &view.leader {
                        self.slots[n].seen_epoch = self.slots[n].seen_epoch.max(l.epoch);
                    }
                    if self.cfg.profile == StoreProfile::Kubernetes {
                        self.k8s_observe(n, view, key, now, ttl);
                    }
                }
                self.slots[n].sent.remove(&id.0);
            }
            Input::Acquired { result: Ok(_), .. } => self.slots[n].unanswered_acquire = None,
            Input::Released { id, .. } | Input::Written { id, .. } => {
                self.slots[n].sent.remove(&id.0);
            }
            _ => {}
        }
        self.k8s_remember(n, &input, key);
        let belief = match &input {
            Input::Acquired { id, result } | Input::Renewed { id, result } => Some((
                *id,
                result.as_ref().ok().and_then(|r| match r {
                    CasOutcome::Won(l) => Some((l.epoch, l.valid_for)),
                    CasOutcome::Lost(_) => None,
                }),
            )),
            _ => None,
        };
        let delivered = match &input {
            Input::Loaded { result: Ok(view), .. } => Some(view.clone()),
            _ => None,
        };
        if let Some(node) = self.slots[n].node.as_mut() {
            node.handle(input, now);
        }
        if let Some((id, won)) = belief {
            self.note_belief(n, id, won);
        }
        self.note_shown_members(n, delivered);
    }

    /// Kubernetes: what node `n`'s client counts held after this answer (`remember` on a
    /// won acquire or renewal, `forget_held` on a lost renewal or an answered release).
    fn k8s_remember(&mut self, n: usize, input: &Input, wrote: Option<(u64, u64)>) {
        if self.cfg.profile != StoreProfile::Kubernetes {
            return;
        }
        let slot = &mut self.slots[n];
        match input {
            Input::Acquired { result: Ok(CasOutcome::Won(_)), .. }
            | Input::Renewed { result: Ok(CasOutcome::Won(_)), .. } => {
                slot.k8s_held = wrote.map(|(epoch, renews)| (Epoch(epoch), renews));
            }
            Input::Renewed { result: Ok(CasOutcome::Lost(_)), .. } | Input::Released { result: Ok(_), .. } => {
                slot.k8s_held = None;
            }
            _ => {}
        }
    }

    /// Records the members a delivered view showed registered to node `n`, if the node took
    /// the view: a late answer to a load it already gave up on is
    /// dropped by the node and shows it nothing.
    pub(super) fn note_shown_members(&mut self, n: usize, delivered: Option<Arc<ClusterView>>) {
        let Some(view) = delivered else { return };
        let taken = self.slots[n].node.as_ref().and_then(|node| node.view()).is_some_and(|v| std::ptr::eq(v, &*view));
        if !taken {
            return;
        }
        for m in &view.members {
            self.slots[n].shown_members.insert(m.value.name.clone(), self.now);
        }
    }

    /// Mutation [`Mutation::AdoptForeignKey`]: a node whose acquire went unanswered reads
    /// another member's leader record as its own, as a node that compares tokens alone does
    /// when two members' tokens collide.
    pub(super) fn adopt_foreign_key(&mut self, n: usize, view: &mut Arc<ClusterView>) {
        if self.cfg.mutation != Some(Mutation::AdoptForeignKey) {
            return;
        }
        let Some(mine) = self.slots[n].unanswered_acquire.clone() else { return };
        if view.leader.as_ref().is_some_and(|l| l.record.member != mine.member)
            && let Some(l) = Arc::make_mut(view).leader.as_mut()
        {
            l.record = mine;
        }
    }

    /// client-go's rule: a lease is expired only once this observer saw it unchanged for
    /// ttl on its own clock. Records it hides as expired so the takeover CAS can match (the
    /// shared view is copied only then).
    pub(super) fn k8s_observe(
        &mut self,
        n: usize,
        view: &mut Arc<ClusterView>,
        key: Option<(u64, u64)>,
        now: Instant,
        ttl: Duration,
    ) {
        let (Some(l), Some(key)) = (&view.leader, key) else { return };
        let held = self.slots[n].node.as_ref().and_then(|node| node.status().epoch);
        if held == Some(l.epoch) {
            return;
        }
        match self.slots[n].k8s_seen {
            Some((seen, since)) if seen == key => {
                if now >= since + ttl {
                    self.slots[n].k8s_expired = Some(key);
                    Arc::make_mut(view).leader = None;
                }
            }
            _ => self.slots[n].k8s_seen = Some((key, now)),
        }
    }

    pub(super) fn note_belief(&mut self, n: usize, id: RequestId, won: Option<(Epoch, Duration)>) {
        let sent = self.slots[n].sent.remove(&id.0);
        let (Some((epoch, valid_for)), Some(sent)) = (won, sent) else { return };
        let Some(node) = self.slots[n].node.as_ref() else { return };
        let status = node.status();
        let now = self.slots[n].local(self.now);
        if status.epoch == Some(epoch) && status.lease_deadline.is_some_and(|d| d > now) {
            let local_end = sent + self.cfg.timing.belief_for(valid_for);
            let until = self.slots[n].clock.real_when(local_end, self.now);
            // A late answer to an older renewal (the node ignores it: not in flight) must not
            // pull the belief back before one a newer, accepted renewal gave; requests go out
            // in order, so the latest end is the accepted one's.
            let slot = &mut self.slots[n];
            slot.declared_until = Some(
                slot.declared_until.filter(|_| slot.declared_epoch == Some(epoch)).map_or(until, |u| u.max(until)),
            );
            slot.declared_epoch = Some(epoch);
        }
    }

    // === faults ===
}

/// The one rule for which changes wake a watch: the leader key and the control keys, never a
/// member record. Patroni watches the leader key alone, and the real backends follow this rule
/// from issue 17 on: members publish on every loop, and waking every watcher on each publish
/// costs a read per member per publish and hid election paths that waited for such a read.
pub(super) fn wakes_watches(key: &Key) -> bool {
    !matches!(key, Key::Member(_))
}

fn reply_id(r: &Reply) -> Option<(u8, RequestId)> {
    match r {
        Reply::Node(Input::Loaded { id, .. }, _) => Some((0, *id)),
        Reply::Node(Input::Acquired { id, .. }, _) => Some((1, *id)),
        Reply::Node(Input::Renewed { id, .. }, _) => Some((2, *id)),
        Reply::Node(Input::Released { id, .. }, _) => Some((3, *id)),
        Reply::Node(Input::Written { id, .. }, _) => Some((4, *id)),
        Reply::Node(..) | Reply::Keepalive(_) => None,
    }
}

fn rejected_id((kind, id): (u8, RequestId), e: DcsError) -> Option<Reply> {
    let input = match kind {
        0 => Input::Loaded { id, result: Err(e) },
        1 => Input::Acquired { id, result: Err(e) },
        2 => Input::Renewed { id, result: Err(e) },
        3 => Input::Released { id, result: Err(e) },
        _ => Input::Written { id, result: Err(e) },
    };
    Some(Reply::Node(input, None))
}

fn rejected(req: &Req, e: DcsError) -> Option<Reply> {
    let Req::Node(a) = req else { return None };
    let kind = match a {
        Action::Load { id } => (0, *id),
        Action::Acquire { id, .. } => (1, *id),
        Action::Renew { id, .. } => (2, *id),
        Action::Release { id, .. } => (3, *id),
        Action::PublishMember { id, .. } | Action::WriteControl { id, .. } | Action::DeleteControl { id, .. } => {
            (4, *id)
        }
        _ => return None,
    };
    rejected_id(kind, e)
}
