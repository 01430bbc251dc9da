//! [`KubeDcs`]: one election scope as Leases in one namespace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::WatchParams;
use kube::core::WatchEvent as KubeEvent;
use leasehold::dcs::{CasOutcome, Dcs, Expect, Lease as HeldLease, StoreBounds, WatchEvent};
use leasehold::{
    ClusterView, ControlKey, DcsError, Epoch, LeaderRecord, LeaderView, MemberRecord, RawEntry, RawView, Record,
    Version,
};
use tokio::time::Instant;

use crate::client::{Held, Inner, Write};
use crate::error::{Op, api_code, classify};
use crate::mirror::{CATCH_UP_WAIT, Mirror, rv_number};
use crate::names::{EPOCH_ANNOTATION, LEADER_ANNOTATION, ObjectRole, ScopeNames, VALUE_ANNOTATION};
use crate::objects::{self, Fingerprint, duration_secs, new_lease, stamp, wall_now};
use crate::observe::now;

/// Attempts at bumping the epoch counter before an acquire gives up with `Unavailable`.
const COUNTER_ATTEMPTS: usize = 8;

/// What the last `load` saw, so a watch from its revision can ignore heartbeats and wake
/// when a holder it showed would expire.
#[derive(Debug)]
struct Snapshot {
    revision: String,
    loaded_at: Instant,
    objects: HashMap<String, Fingerprint>,
    /// Objects with a holder (leader, members) and how long they may stay unrenewed.
    holders: HashMap<String, Duration>,
    /// Member Leases unrenewed for longer than [`MEMBER_REMOVAL_AFTER`] ttls, with their
    /// resourceVersion: the leader deletes them after its next renewal.
    dead_members: Vec<(String, String)>,
    /// The scope's epoch counter Lease as listed (or last written), if it exists.
    counter: Option<Lease>,
}

/// A member Lease left unrenewed for this many ttls is deleted by the leader (by server
/// time, or seen unchanged that long by the leader itself). Its owner, if alive after all,
/// writes it again on its next keep-alive (a PUT of a missing Lease creates it).
pub const MEMBER_REMOVAL_AFTER: u32 = 3;

/// One election scope, stored as `coordination.k8s.io/v1` Leases (see the crate docs for
/// the layout). Created by [`KubeClient::scope`](crate::KubeClient::scope).
pub struct KubeDcs {
    inner: Arc<Inner>,
    scope: String,
    names: Result<ScopeNames, String>,
    snapshot: Mutex<Option<Snapshot>>,
}

impl std::fmt::Debug for KubeDcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDcs").field("scope", &self.scope).field("namespace", &self.inner.namespace).finish()
    }
}

fn invalid_record(what: &str, e: impl std::fmt::Display) -> DcsError {
    DcsError::fatal(format!("refusing to write an invalid {what} record (readers would see garbage): {e}"))
}

impl KubeDcs {
    pub(crate) fn new(inner: Arc<Inner>, scope: &str) -> Self {
        let names = ScopeNames::new(&inner.options.prefix, scope, &inner.options.labels).map_err(|e| e.to_string());
        KubeDcs { inner, scope: scope.to_string(), names, snapshot: Mutex::new(None) }
    }

    fn names(&self) -> Result<&ScopeNames, DcsError> {
        self.inner.check_running()?;
        self.names.as_ref().map_err(DcsError::fatal)
    }

    fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The leader as it is now, for a `Lost` answer (no expiry judgement: it was just written).
    async fn current_leader(&self, name: &str) -> Result<Option<LeaderView>, DcsError> {
        Ok(self.inner.get(name).await?.as_ref().and_then(objects::leader_view))
    }

    fn remember(&self, name: &str, object: &Lease, record: &LeaderRecord, epoch: Epoch) {
        self.inner.observations.observe(name, objects::rv(object), now());
        let held = Held { object: object.clone(), record: record.clone(), epoch };
        self.inner.held.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_string(), held);
    }

    fn forget_held(&self, name: &str) {
        self.inner.held.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
    }

    /// The leader Lease as `lease` left it, if this process wrote it last at `lease.version`;
    /// otherwise read it and check that it still is that acquisition. `Err(view)` means it
    /// is not ours any more.
    async fn our_leader(&self, name: &str, lease: &HeldLease) -> Result<Result<Lease, Option<LeaderView>>, DcsError> {
        let cached = self.inner.held.lock().unwrap_or_else(PoisonError::into_inner).get(name).cloned();
        if let Some(held) = cached
            && held.record == lease.record
            && held.epoch == lease.epoch
            && objects::rv(&held.object) == lease.version.to_text()
        {
            return Ok(Ok(held.object));
        }
        self.fresh_leader(name, lease).await
    }

    async fn fresh_leader(&self, name: &str, lease: &HeldLease) -> Result<Result<Lease, Option<LeaderView>>, DcsError> {
        match self.inner.get(name).await? {
            Some(current) if objects::held_as(&current, &lease.record, lease.epoch) => Ok(Ok(current)),
            Some(current) => Ok(Err(objects::leader_view(&current))),
            None => Ok(Err(None)),
        }
    }

    /// Writes the leader Lease holding `record` at `epoch` (acquire and renew), based on
    /// `base` (its resourceVersion is the condition). On a conflict, re-reads once and
    /// retries if the Lease is still this acquisition (someone edited labels, say).
    async fn write_leader(
        &self,
        name: &str,
        mut base: Lease,
        lease: &HeldLease,
        release: bool,
    ) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        let names = self.names()?;
        for attempt in 0..2 {
            let mut object = base.clone();
            let spec = object.spec.get_or_insert_with(LeaseSpec::default);
            spec.renew_time = Some(wall_now());
            let annotation = if release {
                spec.holder_identity = None;
                None
            } else {
                spec.holder_identity = Some(lease.record.member.clone());
                spec.lease_duration_seconds = Some(duration_secs(self.ttl()));
                Some(String::from_utf8(lease.record.encode()).unwrap_or_default())
            };
            stamp(&mut object, &names.labels("leader"), LEADER_ANNOTATION, annotation);
            stamp(&mut object, &names.labels("leader"), EPOCH_ANNOTATION, Some(lease.epoch.0.to_string()));
            let rv = objects::rv(&base).to_string();
            match self.inner.patch(&object, &rv).await? {
                Write::Done(written) => return Ok(CasOutcome::Won(written)),
                Write::Missing => return Ok(CasOutcome::Lost(None)),
                Write::Conflict if attempt == 0 => match self.fresh_leader(name, lease).await? {
                    Ok(current) => base = current,
                    Err(view) => return Ok(CasOutcome::Lost(view)),
                },
                Write::Conflict => return Ok(CasOutcome::Lost(self.current_leader(name).await?)),
            }
        }
        Ok(CasOutcome::Lost(self.current_leader(name).await?))
    }

    /// Takes the next fencing epoch from the scope's counter Lease (`<scope>-epoch`): the
    /// greater of the counter and `floor` (the epoch on the leader Lease), plus one, written
    /// by compare-and-set (create, or PATCH at the counter's resourceVersion). The counter
    /// outlives the leader Lease, so epochs keep increasing when the leader Lease is deleted
    /// or hand-edited. A counter bump whose leader write then loses only leaves a gap.
    ///
    /// `None`: while racing for the counter, the leader Lease changed from `seen` (another
    /// candidate got there first), so this acquire has lost.
    async fn next_epoch(
        &self,
        names: &ScopeNames,
        floor: u64,
        seen: Option<&Lease>,
    ) -> Result<Option<Epoch>, DcsError> {
        let name = names.epoch_counter();
        // The last load listed the scope's objects, the counter among them (or showed it
        // absent): start from that and save a GET; a stale copy only costs a conflict, after
        // which the counter is read afresh.
        let mut cached: Option<Option<Lease>> = {
            let snapshot = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
            snapshot.as_ref().map(|s| s.counter.clone())
        };
        for _ in 0..COUNTER_ATTEMPTS {
            let from_cache = cached.is_some();
            let counter = match cached.take() {
                Some(c) => c,
                None => self.inner.get(&name).await?,
            };
            let stored = counter.as_ref().and_then(objects::epoch_annotation).unwrap_or(0);
            let next = stored.max(floor) + 1;
            let annotations = [(EPOCH_ANNOTATION.to_string(), next.to_string())].into();
            let object = new_lease(
                name.clone(),
                &self.inner.namespace,
                names.labels("counter"),
                annotations,
                LeaseSpec::default(),
            );
            let written = match &counter {
                None => self.inner.create(&object).await?,
                Some(c) => self.inner.patch(&object, objects::rv(c)).await?,
            };
            match written {
                Write::Done(written) => {
                    if let Some(s) = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
                        s.counter = Some(written);
                    }
                    return Ok(Some(Epoch(next)));
                }
                Write::Conflict | Write::Missing if from_cache => {}
                Write::Conflict | Write::Missing => {
                    let leader = self.inner.get(&names.leader()).await?;
                    if leader.as_ref().map(objects::rv) != seen.map(objects::rv) {
                        return Ok(None);
                    }
                }
            }
        }
        Err(DcsError::unavailable(format!("epoch counter {name} kept changing under every write; try again")))
    }

    /// The view of the scope's objects `items` as of `revision` (a LIST or the mirror),
    /// judged by the expiry rule, remembered for `watch` and the next acquire.
    fn view_of(
        &self,
        names: &ScopeNames,
        items: Vec<Lease>,
        revision: String,
        server_now: Option<k8s_openapi::jiff::Timestamp>,
    ) -> ClusterView {
        let seen_at = now();
        let ttl = self.ttl();
        let obs = &self.inner.observations;
        let mut raw = RawView { revision: Some(Version::opaque(revision.as_str())), ..RawView::default() };
        let mut snapshot = Snapshot {
            revision,
            loaded_at: seen_at,
            objects: HashMap::new(),
            holders: HashMap::new(),
            dead_members: Vec::new(),
            counter: None,
        };
        let counter_name = names.epoch_counter();
        for item in &items {
            let (name, rv) = (objects::name(item), objects::rv(item));
            if name == counter_name {
                snapshot.counter = Some(item.clone());
            }
            let Some(role) = names.role_of(name) else { continue };
            snapshot.objects.insert(name.to_string(), Fingerprint::of(item));
            let entry = |bytes: Vec<u8>| RawEntry { key: name.to_string(), bytes, version: Version::opaque(rv) };
            match role {
                ObjectRole::Control(key) => {
                    raw.control.push((key, entry(objects::record_bytes(item, VALUE_ANNOTATION))))
                }
                ObjectRole::Leader | ObjectRole::Member(_) => {
                    if objects::holder(item).is_none() {
                        continue;
                    }
                    let duration = objects::hold_duration(item, ttl);
                    let observed = seen_at.saturating_duration_since(obs.observe(name, rv, seen_at));
                    // Members only: a fresh reader has not watched anything yet, so it also
                    // asks the server's clock how long ago the record was written. The
                    // leader key keeps client-go's observer-only rule (no clock but ours
                    // decides a takeover).
                    let server_age = match role {
                        ObjectRole::Member(_) => objects::server_age(item, server_now),
                        _ => None,
                    };
                    let unrenewed = server_age.map_or(observed, |age| age.max(observed));
                    if unrenewed >= duration {
                        tracing::debug!(
                            object = name,
                            ?duration,
                            ?unrenewed,
                            "not renewed for its lease duration: gone"
                        );
                        if matches!(role, ObjectRole::Member(_)) && unrenewed >= duration * MEMBER_REMOVAL_AFTER {
                            snapshot.dead_members.push((name.to_string(), rv.to_string()));
                        }
                        continue;
                    }
                    snapshot.holders.insert(name.to_string(), duration);
                    if role == ObjectRole::Leader {
                        let (bytes, epoch) = objects::leader_entry(item).unwrap_or_default();
                        raw.leader = Some((entry(bytes), epoch));
                    } else {
                        raw.members.push(entry(objects::record_bytes(item, crate::names::MEMBER_ANNOTATION)));
                    }
                }
            }
        }
        obs.forget(|name| names.role_of(name).is_none() || snapshot.objects.contains_key(name));
        *self.snapshot.lock().unwrap_or_else(PoisonError::into_inner) = Some(snapshot);
        raw.decode()
    }

    /// `watch` served by the mirror: see [`Dcs::watch`].
    async fn watch_mirror(&self, mirror: &Mirror, since: u64, deadline: Instant) -> WatchEvent {
        let (holders, loaded_at) = {
            let snapshot = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
            match snapshot.as_ref().filter(|s| rv_number(&s.revision) == Some(since)) {
                Some(s) => (s.holders.clone(), s.loaded_at),
                None => (HashMap::new(), now()),
            }
        };
        let obs = &self.inner.observations;
        let expiry =
            holders.iter().filter_map(|(name, d)| obs.since(name).map(|s| s + *d)).filter(|at| *at > loaded_at).min();
        let wake = expiry.map_or(deadline, |at| at.min(deadline));
        if mirror.wait(&self.scope, since, wake).await || wake < deadline {
            WatchEvent::Changed
        } else {
            WatchEvent::Timeout
        }
    }

    /// The leader's housekeeping: deletes the member Leases the last `load` found unrenewed
    /// for [`MEMBER_REMOVAL_AFTER`] ttls, each conditional on the version it saw (a member
    /// that came back in between is kept). Failures are logged, never returned: the renewal
    /// itself succeeded.
    async fn remove_dead_members(&self) {
        let dead = {
            let mut snapshot = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
            snapshot.as_mut().map(|s| std::mem::take(&mut s.dead_members)).unwrap_or_default()
        };
        for (name, rv) in dead {
            match self.inner.delete(&name, &rv).await {
                Ok(Write::Done(())) => {
                    tracing::info!(object = %name, "removed the Lease of a member gone for {MEMBER_REMOVAL_AFTER} ttls")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(object = %name, error = %e, "could not remove a dead member's Lease"),
            }
        }
    }

    async fn control_version(&self, name: &str) -> Result<Option<Version>, DcsError> {
        Ok(self.inner.get(name).await?.map(|l| Version::opaque(objects::rv(&l))))
    }

    /// The store's current resourceVersion, for a watch without a starting point.
    async fn current_revision(&self, names: &ScopeNames) -> Result<String, DcsError> {
        let list = self.inner.list(&names.selector()).await?;
        Ok(list.metadata.resource_version.unwrap_or_default())
    }
}

impl KubeDcs {
    /// Deletes the scope's leader Lease if its holder's record does not decode as a leader
    /// record, with preconditions on exactly the resourceVersion and uid read: the operator's
    /// way out of a hand-edited or corrupted Lease (members take it over only after seeing it
    /// unchanged for its lease duration, and a hand-made one may be rewritten meanwhile). A
    /// valid record, ours or a foreign holder's (client-go), is never touched, and a Lease
    /// without a holder is no leader key (`Absent`). The epoch keeps growing afterwards: it
    /// comes from the scope's counter Lease, which is left alone.
    pub async fn remove_garbage_leader(&self) -> Result<leasehold::GarbageRemoval, DcsError> {
        use leasehold::GarbageRemoval;
        let name = self.names()?.leader();
        let Some(lease) = self.inner.get(&name).await? else { return Ok(GarbageRemoval::Absent) };
        let Some((bytes, _)) = objects::leader_entry(&lease) else { return Ok(GarbageRemoval::Absent) };
        if LeaderRecord::decode(&name, &bytes).is_ok() {
            return Ok(GarbageRemoval::Valid);
        }
        let rv = objects::rv(&lease).to_string();
        Ok(match self.inner.delete_exact(&name, &rv, lease.metadata.uid.as_deref()).await? {
            Write::Done(()) => {
                self.forget_held(&name);
                GarbageRemoval::Removed { version: Version::opaque(rv) }
            }
            Write::Conflict | Write::Missing => GarbageRemoval::Changed,
        })
    }
}

#[async_trait]
impl Dcs for KubeDcs {
    fn scope(&self) -> &str {
        &self.scope
    }

    /// `ttl` is `leaseDurationSeconds`. There is no server-side expiry: another client
    /// treats a holder as gone once it has seen the Lease unchanged for the duration on its
    /// own clock, counted from when it first saw the last renewal. An observer that reads
    /// the scope at least once per ttl (the HA loop does, every `loop_wait`) therefore sees
    /// the key gone at most `2 * ttl` after the holder's last renew call: `max_expiry`.
    fn bounds(&self) -> StoreBounds {
        let ttl = self.ttl();
        StoreBounds { ttl, max_expiry: ttl * 2, watch_latency: Duration::from_secs(1), member_expiry: ttl * 2 }
    }

    fn configured_ttl(&self) -> Duration {
        self.inner.configured_ttl
    }

    /// From the client's mirror when it is usable (live, caught up with everything this
    /// process wrote or was told in this scope, waiting up to 500 ms for that; no write of
    /// unknown outcome in this scope since the last LIST): no request. Otherwise one
    /// label-selected LIST. Either way, when the scope holds
    /// no leader Lease of ours, one GET of the leader Lease by name follows: an elector
    /// without our labels (client-go) may hold it, and it must be shown and respected as a
    /// foreign holder.
    async fn load(&self) -> Result<ClusterView, DcsError> {
        let names = self.names()?;
        let leader_name = names.leader();
        let counter_name = names.epoch_counter();
        let in_scope = |name: &str| names.role_of(name).is_some() || name == counter_name;
        let mirrored = match self.inner.mirror() {
            Some(mirror) if !self.inner.unsure(in_scope) => mirror.view(&self.scope, in_scope, CATCH_UP_WAIT).await,
            _ => None,
        };
        let (mut items, revision, server_now) = match mirrored {
            Some(view) => (view.items, view.revision.to_string(), view.server_now),
            None => {
                let (list, server_now) = self.inner.list_dated(&names.selector()).await?;
                list.items.iter().for_each(|item| self.inner.told(item));
                self.inner.settle_unsure(in_scope);
                (list.items, list.metadata.resource_version.unwrap_or_default(), server_now)
            }
        };
        if !items.iter().any(|item| objects::name(item) == leader_name)
            && let Some(unlabelled) = self.inner.get(&leader_name).await?
        {
            items.push(unlabelled);
        }
        Ok(self.view_of(names, items, revision, server_now))
    }

    async fn acquire(&self, record: &LeaderRecord) -> Result<CasOutcome<HeldLease, Option<LeaderView>>, DcsError> {
        let names = self.names()?;
        record.validate().map_err(|e| invalid_record("leader", e))?;
        let name = names.leader();
        let ttl = self.ttl();
        let text = String::from_utf8(record.encode()).unwrap_or_default();
        let current = self.inner.get(&name).await?;
        if let Some(existing) = &current
            && objects::holder(existing).is_some()
        {
            let (rv, duration) = (objects::rv(existing), objects::hold_duration(existing, ttl));
            if !self.inner.observations.expired(&name, rv, duration, now()) {
                return Ok(CasOutcome::Lost(objects::leader_view(existing)));
            }
            tracing::info!(object = %name, %rv, ?duration, "leader Lease unchanged for its duration: taking it over");
        }
        let floor = current.as_ref().and_then(objects::epoch_annotation).unwrap_or(0);
        let Some(epoch) = self.next_epoch(names, floor, current.as_ref()).await? else {
            return Ok(CasOutcome::Lost(self.current_leader(&name).await?));
        };
        let spec = |transitions: i32| LeaseSpec {
            holder_identity: Some(record.member.clone()),
            lease_duration_seconds: Some(duration_secs(ttl)),
            acquire_time: Some(wall_now()),
            renew_time: Some(wall_now()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let annotations =
            [(LEADER_ANNOTATION.to_string(), text), (EPOCH_ANNOTATION.to_string(), epoch.0.to_string())].into();
        let written = match current {
            // client-go starts leaseTransitions at 0 on create.
            None => {
                let fresh =
                    new_lease(name.clone(), &self.inner.namespace, names.labels("leader"), annotations, spec(0));
                self.inner.create(&fresh).await?
            }
            Some(existing) => {
                // client-go counts holder changes only: the same identity taking its own
                // expired Lease back is no transition.
                let same = objects::holder(&existing) == Some(record.member.as_str());
                let transitions = objects::transitions(&existing) + u64::from(!same);
                let Ok(transitions) = i32::try_from(transitions) else {
                    return Err(DcsError::fatal(format!("leaseTransitions of {name} cannot grow any further")));
                };
                let rv = objects::rv(&existing).to_string();
                let mut object = existing;
                object.spec = Some(spec(transitions));
                let labels = names.labels("leader");
                object.metadata.labels.get_or_insert_with(Default::default).extend(labels);
                object.metadata.annotations = Some(annotations);
                self.inner.patch(&object, &rv).await?
            }
        };
        match written {
            Write::Done(object) => {
                self.remember(&name, &object, record, epoch);
                let version = Version::opaque(objects::rv(&object));
                Ok(CasOutcome::Won(HeldLease { record: record.clone(), epoch, version, valid_for: ttl }))
            }
            Write::Conflict | Write::Missing => Ok(CasOutcome::Lost(self.current_leader(&name).await?)),
        }
    }

    async fn renew(&self, lease: &HeldLease) -> Result<CasOutcome<HeldLease, Option<LeaderView>>, DcsError> {
        let name = self.names()?.leader();
        let base = match self.our_leader(&name, lease).await? {
            Ok(base) => base,
            Err(view) => {
                self.forget_held(&name);
                return Ok(CasOutcome::Lost(view));
            }
        };
        match self.write_leader(&name, base, lease, false).await? {
            CasOutcome::Won(object) => {
                self.remember(&name, &object, &lease.record, lease.epoch);
                self.remove_dead_members().await;
                let version = Version::opaque(objects::rv(&object));
                Ok(CasOutcome::Won(HeldLease { version, valid_for: self.ttl(), ..lease.clone() }))
            }
            CasOutcome::Lost(view) => {
                self.forget_held(&name);
                Ok(CasOutcome::Lost(view))
            }
        }
    }

    async fn release(&self, lease: &HeldLease) -> Result<CasOutcome<(), Option<LeaderView>>, DcsError> {
        let name = self.names()?.leader();
        let base = match self.our_leader(&name, lease).await? {
            Ok(base) => base,
            Err(view) => return Ok(CasOutcome::Lost(view)),
        };
        let outcome = self.write_leader(&name, base, lease, true).await?;
        self.forget_held(&name);
        Ok(match outcome {
            CasOutcome::Won(object) => {
                self.inner.observations.observe(&name, objects::rv(&object), now());
                CasOutcome::Won(())
            }
            CasOutcome::Lost(view) => CasOutcome::Lost(view),
        })
    }

    async fn publish_member(&self, member: &MemberRecord) -> Result<(), DcsError> {
        let names = self.names()?;
        member.validate().map_err(|e| invalid_record("member", e))?;
        self.inner.publish_member(names, member).await
    }

    async fn write_control(
        &self,
        key: ControlKey,
        expect: Expect,
        value: &[u8],
    ) -> Result<CasOutcome<Version, Option<Version>>, DcsError> {
        let names = self.names()?;
        let name = names.control(key);
        let text = std::str::from_utf8(value).map_err(|e| {
            DcsError::fatal(format!("control key {} must be UTF-8 to fit an annotation: {e}", key.name()))
        })?;
        let labels = names.labels("control");
        let annotations = [(VALUE_ANNOTATION.to_string(), text.to_string())].into();
        let object = new_lease(name.clone(), &self.inner.namespace, labels, annotations, LeaseSpec::default());
        let written = match expect {
            Expect::Absent => self.inner.create(&object).await?,
            // A versioned write of an absent (or deleted) key must not create it: PATCH, not PUT.
            Expect::Version(v) => self.inner.patch(&object, &v.to_text()).await?,
        };
        match written {
            Write::Done(object) => Ok(CasOutcome::Won(Version::opaque(objects::rv(&object)))),
            Write::Conflict => Ok(CasOutcome::Lost(self.control_version(&name).await?)),
            Write::Missing => Ok(CasOutcome::Lost(None)),
        }
    }

    async fn delete_control(
        &self,
        key: ControlKey,
        expect: &Version,
    ) -> Result<CasOutcome<(), Option<Version>>, DcsError> {
        let name = self.names()?.control(key);
        match self.inner.delete(&name, &expect.to_text()).await? {
            Write::Done(()) => Ok(CasOutcome::Won(())),
            Write::Conflict => Ok(CasOutcome::Lost(self.control_version(&name).await?)),
            Write::Missing => Ok(CasOutcome::Lost(None)),
        }
    }

    /// Waits for a change of the scope after `after` (a resourceVersion from `load`). Only
    /// changes of the leader and control Leases wake it: member heartbeats and records, and
    /// leader renewals that touch nothing but `renewTime`, do not. It also wakes when a holder
    /// shown by that load would expire by the observer rule.
    ///
    /// Served by the client's mirror while it is live and holds the scope's leader Lease (no
    /// request); otherwise one WATCH of the scope's Leases, where 410 Gone (an ERROR event or
    /// the HTTP status) is [`WatchEvent::Resync`]. A mirror that stops being live or relists
    /// wakes its waiters with [`WatchEvent::Changed`]: the next `load` reads afresh.
    async fn watch(&self, after: Option<&Version>, timeout: Duration) -> Result<WatchEvent, DcsError> {
        let names = self.names()?;
        let deadline = now() + timeout;
        if let Some(mirror) = self.inner.mirror()
            && mirror.holds(&names.leader())
            && let Some(since) = after.map_or(Some(mirror.revision()), |v| rv_number(&v.to_text()))
        {
            return Ok(self.watch_mirror(mirror, since, deadline).await);
        }
        let mut since = match after {
            Some(v) => v.to_text(),
            None => self.current_revision(names).await?,
        };
        let (mut known, holders, loaded_at) = {
            let snapshot = self.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
            match snapshot.as_ref().filter(|s| s.revision == since) {
                Some(s) => (Some(s.objects.clone()), s.holders.clone(), s.loaded_at),
                None => (None, HashMap::new(), now()),
            }
        };
        let obs = &self.inner.observations;
        // A holder the load showed alive wakes us when it would expire.
        let expiry = |holders: &HashMap<String, Duration>| {
            holders.iter().filter_map(|(name, d)| obs.since(name).map(|s| s + *d)).filter(|at| *at > loaded_at).min()
        };
        let what = format!("watch Leases in {} with {}", self.inner.namespace, names.selector());
        loop {
            let wake = expiry(&holders).map_or(deadline, |at| at.min(deadline));
            if now() >= wake {
                return Ok(if wake < deadline { WatchEvent::Changed } else { WatchEvent::Timeout });
            }
            let remaining = wake.saturating_duration_since(now());
            let params = WatchParams::default()
                .labels(&names.selector())
                .timeout(u32::try_from(remaining.as_secs() + 1).unwrap_or(290).min(290));
            let opened = tokio::time::timeout(remaining, self.inner.api.watch(&params, &since)).await;
            let stream = match opened {
                Err(_) => continue,
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) if api_code(&e) == Some(410) => return Ok(WatchEvent::Resync),
                Ok(Err(e)) => return Err(classify(Op::Read, &what, e)),
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                let next = tokio::time::timeout_at(wake, stream.next()).await;
                let event = match next {
                    Err(_) => break,
                    Ok(None) => break,
                    Ok(Some(Err(e))) => return Err(classify(Op::Read, &what, e)),
                    Ok(Some(Ok(event))) => event,
                };
                let (object, deleted) = match event {
                    KubeEvent::Added(l) | KubeEvent::Modified(l) => (l, false),
                    KubeEvent::Deleted(l) => (l, true),
                    KubeEvent::Bookmark(b) => {
                        since = b.metadata.resource_version;
                        continue;
                    }
                    KubeEvent::Error(status) if status.code == 410 => return Ok(WatchEvent::Resync),
                    KubeEvent::Error(status) => {
                        return Err(DcsError::unavailable(format!(
                            "{what}: error event {}: {}",
                            status.code, status.message
                        )));
                    }
                };
                since = objects::rv(&object).to_string();
                let name = objects::name(&object).to_string();
                let Some(role) = names.role_of(&name) else { continue };
                obs.observe(&name, &since, now());
                // Member records wake nobody (the `Dcs::watch` contract allows it), as on the mirror.
                if matches!(role, ObjectRole::Member(_)) {
                    continue;
                }
                let Some(known) = known.as_mut() else { return Ok(WatchEvent::Changed) };
                let changed = if deleted {
                    known.remove(&name).is_some()
                } else {
                    known.insert(name.clone(), Fingerprint::of(&object)).as_ref() != Some(&Fingerprint::of(&object))
                };
                if changed {
                    return Ok(WatchEvent::Changed);
                }
            }
        }
    }
}
