//! [`MemoryModel`]: a synchronous, deterministic, linearizable model of a consensus store.
//!
//! It behaves like etcd v3 reduced to what [`Dcs`](crate::Dcs) needs: one global revision
//! counter bumped by every write, keys that remember their create and modify revisions, and
//! sessions (etcd leases) with a TTL that delete the keys bound to them when they expire.
//!
//! Time is a parameter: every operation takes `now` and first expires the sessions that are
//! due, so the same model serves the async [`MemoryStore`](super::MemoryStore) (fed from a
//! clock) and the deterministic simulator (fed virtual time). Nothing here reads a clock,
//! draws a random number or iterates a hash map, so equal inputs give equal outputs.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::dcs::{CasOutcome, Expect, Lease, WatchEvent};
use crate::error::DcsError;
use crate::node::{Action, Input, Node};
use crate::record::{
    ClusterView, ControlKey, DecodeCache, Epoch, Key, LeaderRecord, LeaderView, MemberRecord, RawEntry, RawView,
    Record, Version,
};
use crate::time::Instant;

/// A session (an etcd lease, a ZooKeeper or Consul session): keys bound to it vanish when it
/// expires or is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "session-{}", self.0)
    }
}

#[derive(Clone, Debug)]
struct Session {
    ttl: Duration,
    /// The session is expired at and after this instant.
    expires_at: Instant,
}

#[derive(Clone, Debug)]
struct Entry {
    /// The key's path, kept so that every read does not format it again.
    path: String,
    bytes: Vec<u8>,
    create_revision: u64,
    mod_revision: u64,
    owner: Option<SessionId>,
}

#[derive(Clone, Debug, Default)]
struct ScopeData {
    keys: BTreeMap<Key, Entry>,
    /// Revision of the last write in this scope, for watches.
    changed_at: u64,
}

/// The reference store: scopes of keys, one global revision, sessions with TTLs.
///
/// Guarantees, which the conformance suite also checks of every real backend:
///
/// * every write increments the global revision by one; a key's version is the revision that
///   last wrote it, and the leader key's epoch is the revision that created it, so epochs
///   strictly increase across acquisitions;
/// * a session expires at `last refresh + ttl` (or whatever [`set_session_expiry`] says) and
///   the keys bound to it are deleted in one write at the first operation at or after that
///   instant;
/// * control keys are never bound to a session.
///
/// [`set_session_expiry`]: MemoryModel::set_session_expiry
#[derive(Clone, Debug, Default)]
pub struct MemoryModel {
    revision: u64,
    compacted: u64,
    next_session: u64,
    sessions: BTreeMap<SessionId, Session>,
    scopes: BTreeMap<String, ScopeData>,
}

impl MemoryModel {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        MemoryModel::default()
    }

    /// The current global revision (the number of writes so far).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Opens a session that expires `ttl` after `now` unless kept alive.
    pub fn open_session(&mut self, ttl: Duration, now: Instant) -> SessionId {
        self.expire(now);
        self.next_session += 1;
        let id = SessionId(self.next_session);
        self.sessions.insert(id, Session { ttl, expires_at: now + ttl });
        id
    }

    /// Refreshes a session so it lives at least its ttl from `now`; returns that ttl (the
    /// guaranteed remaining life, measured from `now`).
    ///
    /// [`DcsError::LeaseLost`] when the session expired, was closed or never existed.
    pub fn keep_alive(&mut self, id: SessionId, now: Instant) -> Result<Duration, DcsError> {
        self.expire(now);
        let session = self.sessions.get_mut(&id).ok_or_else(|| lost_session(id))?;
        // Never move an expiry earlier: `set_session_expiry` may have granted more.
        session.expires_at = session.expires_at.max(now + session.ttl);
        Ok(session.ttl)
    }

    /// Ends a session now, deleting every key bound to it (one write, if it owned any).
    /// Closing an unknown session does nothing.
    pub fn close_session(&mut self, id: SessionId, now: Instant) {
        self.expire(now);
        if self.sessions.remove(&id).is_some() {
            self.delete_owned_by(id);
        }
    }

    /// Deletes `members/<name>` if `session` wrote it last (a conditional delete, as the
    /// Kubernetes client's at shutdown: a record rewritten since by another process stays).
    /// Returns whether it deleted.
    #[cfg(feature = "sim")]
    pub(crate) fn delete_member_of(&mut self, scope: &str, name: &str, session: SessionId, now: Instant) -> bool {
        self.expire(now);
        let key = Key::Member(name.to_string());
        let ours = self.scopes.get(scope).and_then(|d| d.keys.get(&key)).is_some_and(|e| e.owner == Some(session));
        if ours {
            self.delete(scope, &key);
        }
        ours
    }

    /// When the session expires, if it is alive (as of the last operation).
    pub fn session_expiry(&self, id: SessionId) -> Option<Instant> {
        self.sessions.get(&id).map(|s| s.expires_at)
    }

    /// Moves a session's expiry, earlier or later. The simulator uses it to model etcd
    /// resetting every lease to its full TTL on a leader change, or Consul expiring sessions
    /// lazily. Returns `false` if the session is not alive. The new expiry takes effect at
    /// the next operation.
    pub fn set_session_expiry(&mut self, id: SessionId, at: Instant) -> bool {
        match self.sessions.get_mut(&id) {
            Some(session) => {
                session.expires_at = at;
                true
            }
            None => false,
        }
    }

    /// The earliest expiry among live sessions: when [`expire`](MemoryModel::expire) will next
    /// have something to do.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.sessions.values().map(|s| s.expires_at).min()
    }

    /// Ends every session whose expiry is at or before `now` and deletes the keys bound to
    /// it, one write (one revision) per session that owned keys. Every other operation
    /// calls this first.
    pub fn expire(&mut self, now: Instant) {
        if self.sessions.values().all(|s| s.expires_at > now) {
            return;
        }
        let due: Vec<SessionId> =
            self.sessions.iter().filter(|(_, s)| s.expires_at <= now).map(|(id, _)| *id).collect();
        for id in due {
            self.sessions.remove(&id);
            self.delete_owned_by(id);
        }
    }

    /// Reads a scope in one snapshot, decoded through [`RawView::decode`] so garbage is
    /// reported in [`ClusterView::problems`] and treated as absent.
    pub fn load(&mut self, scope: &str, now: Instant) -> ClusterView {
        self.expire(now);
        self.raw_view(scope).decode()
    }

    /// As [`load`](Self::load), re-parsing only the records whose bytes changed since the
    /// last load through `cache` (see [`DecodeCache`]).
    pub fn load_cached(&mut self, scope: &str, now: Instant, cache: &mut DecodeCache) -> ClusterView {
        self.expire(now);
        self.raw_view(scope).decode_cached(cache)
    }

    /// Creates the leader key with `record`, bound to `session`, if it does not exist, and
    /// refreshes the session. The epoch is the creating revision.
    ///
    /// `Lost(current)` if the key exists (`None` when it holds garbage);
    /// [`DcsError::LeaseLost`] if the session is gone; [`DcsError::Fatal`] if `record` is
    /// not valid (it would be garbage to every reader).
    pub fn acquire(
        &mut self,
        scope: &str,
        session: SessionId,
        record: &LeaderRecord,
        now: Instant,
    ) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        self.expire(now);
        record.validate().map_err(|why| DcsError::fatal(format!("invalid leader record: {why}")))?;
        let ttl = self.keep_alive(session, now)?;
        if self.scopes.get(scope).is_some_and(|s| s.keys.contains_key(&Key::Leader)) {
            return Ok(CasOutcome::Lost(self.leader_view(scope)));
        }
        let revision = self.put(scope, Key::Leader, record.encode(), Some(session));
        Ok(CasOutcome::Won(Lease {
            record: record.clone(),
            epoch: Epoch(revision),
            version: Version::new(revision),
            valid_for: ttl,
        }))
    }

    /// Refreshes `session` if the leader key is still the one `lease` describes: created at
    /// `lease.epoch`, holding `lease.record`'s member and token, bound to `session`. Writes
    /// nothing, so the version stays the same.
    ///
    /// `Won` carries `valid_for` = the session's ttl from `now`. `Lost(current)` otherwise;
    /// [`DcsError::LeaseLost`] if the session is gone.
    pub fn renew(
        &mut self,
        scope: &str,
        session: SessionId,
        lease: &Lease,
        now: Instant,
    ) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        self.expire(now);
        if !self.sessions.contains_key(&session) {
            return Err(lost_session(session));
        }
        let held = self.leader_entry(scope).filter(|e| {
            e.owner == Some(session) && e.create_revision == lease.epoch.0 && holds_record(e, &lease.record)
        });
        let Some(entry) = held else {
            return Ok(CasOutcome::Lost(self.leader_view(scope)));
        };
        let version = Version::new(entry.mod_revision);
        let ttl = self.keep_alive(session, now)?;
        Ok(CasOutcome::Won(Lease { record: lease.record.clone(), epoch: lease.epoch, version, valid_for: ttl }))
    }

    /// Deletes the leader key if it was created at `lease.epoch` and holds `lease.record`'s
    /// member and token (compare-and-delete). `Lost(current)` otherwise; nothing is deleted.
    pub fn release(&mut self, scope: &str, lease: &Lease, now: Instant) -> CasOutcome<(), Option<LeaderView>> {
        self.expire(now);
        let held = self
            .leader_entry(scope)
            .is_some_and(|e| e.create_revision == lease.epoch.0 && holds_record(e, &lease.record));
        if !held {
            return CasOutcome::Lost(self.leader_view(scope));
        }
        self.delete(scope, &Key::Leader);
        CasOutcome::Won(())
    }

    /// Creates or replaces `members/<member.name>`, bound to `session`.
    ///
    /// [`DcsError::LeaseLost`] if the session is gone; [`DcsError::Fatal`] if the record is
    /// not valid.
    pub fn publish_member(
        &mut self,
        scope: &str,
        session: SessionId,
        member: &MemberRecord,
        now: Instant,
    ) -> Result<(), DcsError> {
        self.expire(now);
        member.validate().map_err(|why| DcsError::fatal(format!("invalid member record: {why}")))?;
        if !self.sessions.contains_key(&session) {
            return Err(lost_session(session));
        }
        self.put(scope, Key::Member(member.name.clone()), member.encode(), Some(session));
        Ok(())
    }

    /// Writes a control key with compare-and-set. `Won` carries the new version, `Lost` the
    /// current one (`None` if absent). The bytes are stored as given.
    pub fn write_control(
        &mut self,
        scope: &str,
        key: ControlKey,
        expect: &Expect,
        value: &[u8],
        now: Instant,
    ) -> CasOutcome<Version, Option<Version>> {
        self.expire(now);
        let current = self.control_version(scope, key);
        let holds = match expect {
            Expect::Absent => current.is_none(),
            Expect::Version(v) => current.as_ref() == Some(v),
        };
        if !holds {
            return CasOutcome::Lost(current);
        }
        CasOutcome::Won(Version::new(self.put(scope, Key::Control(key), value.to_vec(), None)))
    }

    /// Deletes a control key if its version is `expect`; `Lost` carries the current version.
    pub fn delete_control(
        &mut self,
        scope: &str,
        key: ControlKey,
        expect: &Version,
        now: Instant,
    ) -> CasOutcome<(), Option<Version>> {
        self.expire(now);
        let current = self.control_version(scope, key);
        if current.as_ref() != Some(expect) {
            return CasOutcome::Lost(current);
        }
        self.delete(scope, &Key::Control(key));
        CasOutcome::Won(())
    }

    /// Stores `bytes` at `key` unconditionally and bound to no session, bypassing every
    /// check: garbage injection for tests. Returns the new revision.
    pub fn put_raw(&mut self, scope: &str, key: &Key, bytes: Vec<u8>) -> u64 {
        self.put(scope, key.clone(), bytes, None)
    }

    /// Whether anything in `scope` was written or deleted after revision `rev`.
    pub fn changes_since(&self, scope: &str, rev: u64) -> bool {
        self.scopes.get(scope).is_some_and(|s| s.changed_at > rev)
    }

    /// Forgets history up to and including `rev` (capped at the current revision): watches
    /// from an older revision report [`WatchEvent::Resync`] from now on.
    pub fn compact(&mut self, rev: u64) {
        self.compacted = self.compacted.max(rev.min(self.revision));
    }

    /// The revision up to which history has been compacted.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// What a watch on `scope` from revision `after` would report at `now`:
    /// `Some(Resync)` if history after `after` was compacted away or `after` is not a
    /// revision of this store, `Some(Changed)` if the scope changed after it, `None` if
    /// nothing happened yet (keep waiting).
    pub fn poll_watch(&mut self, scope: &str, after: &Version, now: Instant) -> Option<WatchEvent> {
        self.expire(now);
        let Some(after) = after.as_u64() else {
            return Some(WatchEvent::Resync);
        };
        if after < self.compacted {
            Some(WatchEvent::Resync)
        } else if self.changes_since(scope, after) {
            Some(WatchEvent::Changed)
        } else {
            None
        }
    }

    /// The keys of `scope`, in key order, each with the revision that last wrote it: what a
    /// watch that filters by key (the simulator's) compares between two revisions.
    #[cfg(feature = "sim")]
    pub(crate) fn key_revisions(&self, scope: &str) -> impl Iterator<Item = (&Key, u64)> {
        self.scopes.get(scope).into_iter().flat_map(|d| d.keys.iter().map(|(k, e)| (k, e.mod_revision)))
    }

    fn raw_view(&self, scope: &str) -> RawView {
        let mut raw = RawView { revision: Some(Version::new(self.revision)), ..RawView::default() };
        let Some(data) = self.scopes.get(scope) else {
            return raw;
        };
        for (key, entry) in &data.keys {
            let raw_entry = RawEntry {
                key: entry.path.clone(),
                bytes: entry.bytes.clone(),
                version: Version::new(entry.mod_revision),
            };
            match key {
                Key::Leader => raw.leader = Some((raw_entry, Epoch(entry.create_revision))),
                Key::Member(_) => raw.members.push(raw_entry),
                Key::Control(c) => raw.control.push((*c, raw_entry)),
            }
        }
        raw
    }

    fn leader_entry(&self, scope: &str) -> Option<&Entry> {
        self.scopes.get(scope)?.keys.get(&Key::Leader)
    }

    /// The decoded leader key; `None` if absent or garbage.
    pub(crate) fn leader_view(&self, scope: &str) -> Option<LeaderView> {
        let entry = self.leader_entry(scope)?;
        let record = LeaderRecord::decode(&Key::Leader.path("", scope), &entry.bytes).ok()?;
        Some(LeaderView { record, epoch: Epoch(entry.create_revision), version: Version::new(entry.mod_revision) })
    }

    fn control_version(&self, scope: &str, key: ControlKey) -> Option<Version> {
        let entry = self.scopes.get(scope)?.keys.get(&Key::Control(key))?;
        Some(Version::new(entry.mod_revision))
    }

    /// One write: bumps the revision; keeps the create revision of an existing key.
    fn put(&mut self, scope: &str, key: Key, bytes: Vec<u8>, owner: Option<SessionId>) -> u64 {
        self.revision += 1;
        let revision = self.revision;
        let data = self.scopes.entry(scope.to_string()).or_default();
        data.changed_at = revision;
        match data.keys.get_mut(&key) {
            Some(e) => {
                e.bytes = bytes;
                e.mod_revision = revision;
                e.owner = owner;
            }
            None => {
                let path = key.path("", scope);
                data.keys.insert(key, Entry { path, bytes, create_revision: revision, mod_revision: revision, owner });
            }
        }
        revision
    }

    /// One write deleting one key (no-op if absent).
    fn delete(&mut self, scope: &str, key: &Key) {
        let Some(data) = self.scopes.get_mut(scope) else { return };
        if data.keys.remove(key).is_some() {
            self.revision += 1;
            data.changed_at = self.revision;
        }
    }

    /// One write deleting every key bound to `id`, in every scope (no-op if none).
    fn delete_owned_by(&mut self, id: SessionId) {
        let next = self.revision + 1;
        let mut deleted = false;
        for data in self.scopes.values_mut() {
            let before = data.keys.len();
            data.keys.retain(|_, e| e.owner != Some(id));
            if data.keys.len() != before {
                data.changed_at = next;
                deleted = true;
            }
        }
        if deleted {
            self.revision = next;
        }
    }
}

fn lost_session(id: SessionId) -> DcsError {
    DcsError::lease_lost(format!("{id} expired or was closed"))
}

fn holds_record(entry: &Entry, record: &LeaderRecord) -> bool {
    LeaderRecord::decode("leader", &entry.bytes).is_ok_and(|r| r.member == record.member && r.token == record.token)
}

/// Carries out one of a [`Node`]'s store actions against `model` and hands the node the
/// answer, as a driver would. Other actions (watch, probes, resource actions) are ignored.
///
/// `error` injects a failure: [`DcsError::OutcomeUnknown`] applies the request and then
/// reports the error (the reply was lost); any other class reports the error without
/// applying anything.
pub fn answer(
    model: &mut MemoryModel,
    session: SessionId,
    scope: &str,
    node: &mut Node,
    action: Action,
    error: Option<DcsError>,
    now: Instant,
) {
    let apply = error.as_ref().is_none_or(DcsError::is_outcome_unknown);
    match action {
        Action::Load { id } => {
            let result = if apply { Ok(model.load(scope, now)) } else { Err(not_applied()) };
            node.handle(Input::Loaded { id, result: reply(error, result).map(Arc::new) }, now);
        }
        Action::Acquire { id, record } => {
            let result = if apply { model.acquire(scope, session, &record, now) } else { Err(not_applied()) };
            node.handle(Input::Acquired { id, result: reply(error, result) }, now);
        }
        Action::Renew { id, lease } => {
            let result = if apply { model.renew(scope, session, &lease, now) } else { Err(not_applied()) };
            node.handle(Input::Renewed { id, result: reply(error, result) }, now);
        }
        Action::Release { id, lease } => {
            let result = if apply { Ok(model.release(scope, &lease, now)) } else { Err(not_applied()) };
            node.handle(Input::Released { id, result: reply(error, result) }, now);
        }
        Action::PublishMember { id, record } => {
            let result = if apply { model.publish_member(scope, session, &record, now) } else { Err(not_applied()) };
            node.handle(Input::Written { id, result: reply(error, result.map(|()| true)) }, now);
        }
        Action::WriteControl { id, key, expect, value } => {
            let result = if apply {
                Ok(model.write_control(scope, key, &expect, &value, now).is_won())
            } else {
                Err(not_applied())
            };
            node.handle(Input::Written { id, result: reply(error, result) }, now);
        }
        Action::DeleteControl { id, key, expect } => {
            let result =
                if apply { Ok(model.delete_control(scope, key, &expect, now).is_won()) } else { Err(not_applied()) };
            node.handle(Input::Written { id, result: reply(error, result) }, now);
        }
        _ => {}
    }
}

/// The injected error if any, else the real result.
fn reply<T>(error: Option<DcsError>, result: Result<T, DcsError>) -> Result<T, DcsError> {
    match error {
        Some(e) => Err(e),
        None => result,
    }
}

fn not_applied() -> DcsError {
    DcsError::unavailable("not applied")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn at(secs: u64) -> Instant {
        Instant::from_origin(Duration::from_secs(secs))
    }

    fn leader(member: &str, token: &str) -> LeaderRecord {
        LeaderRecord { member: member.into(), token: token.into(), api_url: None, conn_url: None }
    }

    fn won<W: fmt::Debug, L: fmt::Debug>(o: CasOutcome<W, L>) -> W {
        match o {
            CasOutcome::Won(w) => w,
            CasOutcome::Lost(l) => panic!("expected Won, got Lost({l:?})"),
        }
    }

    fn lost<W: fmt::Debug, L: fmt::Debug>(o: CasOutcome<W, L>) -> L {
        match o {
            CasOutcome::Lost(l) => l,
            CasOutcome::Won(w) => panic!("expected Lost, got Won({w:?})"),
        }
    }

    #[test]
    fn acquire_is_exclusive_and_epochs_strictly_increase() {
        let mut m = MemoryModel::new();
        let a = m.open_session(TTL, at(0));
        let b = m.open_session(TTL, at(0));
        let la = won(m.acquire("s", a, &leader("a", "t1"), at(1)).unwrap());
        assert_eq!(la.valid_for, TTL);
        let seen = lost(m.acquire("s", b, &leader("b", "t2"), at(1)).unwrap()).unwrap();
        assert_eq!((seen.record.member.as_str(), seen.epoch), ("a", la.epoch));
        // The same member re-acquiring after a release gets a later epoch.
        won(m.release("s", &la, at(2)));
        let la2 = won(m.acquire("s", a, &leader("a", "t3"), at(3)).unwrap());
        assert!(la2.epoch > la.epoch);
        // An unrelated write in another scope also moves the revision; epochs stay ordered.
        m.write_control("other", ControlKey::Config, &Expect::Absent, b"{}", at(3));
        won(m.release("s", &la2, at(4)));
        let lb = won(m.acquire("s", b, &leader("a", "t4"), at(4)).unwrap());
        assert!(lb.epoch > la2.epoch);
        let view = m.load("s", at(4));
        assert_eq!(view.leader.unwrap().epoch, lb.epoch);
        assert_eq!(view.revision, Some(Version::new(m.revision())));
    }

    #[test]
    fn sessions_expire_at_ttl_and_take_their_keys_in_one_write() {
        let mut m = MemoryModel::new();
        let a = m.open_session(TTL, at(0));
        let keep = m.open_session(TTL, at(0));
        m.acquire("s", a, &leader("a", "t"), at(1)).unwrap();
        m.publish_member("s", a, &MemberRecord::new("a"), at(1)).unwrap();
        m.publish_member("t", a, &MemberRecord::new("a"), at(1)).unwrap();
        m.publish_member("s", keep, &MemberRecord::new("k"), at(1)).unwrap();
        assert_eq!(m.keep_alive(keep, at(9)).unwrap(), TTL);
        let before = m.revision();
        // Refreshed at 1 by acquire: alive until just before 11.
        m.expire(at(10));
        assert_eq!(m.session_expiry(a), Some(at(11)));
        assert!(m.load("s", at(10)).leader.is_some());
        let view = m.load("s", at(11));
        assert!(view.leader.is_none());
        assert_eq!(view.members.iter().map(|v| v.value.name.as_str()).collect::<Vec<_>>(), ["k"]);
        assert!(m.load("t", at(11)).members.is_empty());
        assert_eq!(m.revision(), before + 1, "one write for all the session's keys");
        assert!(m.changes_since("s", before) && m.changes_since("t", before));
        assert!(m.keep_alive(a, at(11)).unwrap_err().is_lease_lost());
        assert!(m.acquire("s", a, &leader("a", "t2"), at(11)).unwrap_err().is_lease_lost());
        assert!(m.publish_member("s", a, &MemberRecord::new("a"), at(11)).unwrap_err().is_lease_lost());
    }

    #[test]
    fn set_session_expiry_moves_expiry_both_ways() {
        let mut m = MemoryModel::new();
        let a = m.open_session(TTL, at(0));
        m.acquire("s", a, &leader("a", "t"), at(0)).unwrap();
        assert!(m.set_session_expiry(a, at(30)));
        // A keep-alive never shortens an expiry that was extended.
        m.keep_alive(a, at(1)).unwrap();
        assert_eq!(m.session_expiry(a), Some(at(30)));
        assert_eq!(m.next_expiry(), Some(at(30)));
        assert!(m.load("s", at(29)).leader.is_some());
        assert!(m.set_session_expiry(a, at(29)));
        assert!(m.load("s", at(29)).leader.is_none());
        assert!(!m.set_session_expiry(a, at(40)));
        assert_eq!(m.next_expiry(), None);
    }

    #[test]
    fn renew_needs_same_epoch_token_and_session() {
        let mut m = MemoryModel::new();
        let a = m.open_session(TTL, at(0));
        let b = m.open_session(TTL, at(0));
        let la = won(m.acquire("s", a, &leader("a", "t"), at(0)).unwrap());
        let renewed = won(m.renew("s", a, &la, at(5)).unwrap());
        assert_eq!((renewed.epoch, &renewed.version, renewed.valid_for), (la.epoch, &la.version, TTL));
        assert_eq!(m.session_expiry(a), Some(at(15)));
        let wrong_token = Lease { record: leader("a", "other"), ..la.clone() };
        assert!(lost(m.renew("s", a, &wrong_token, at(5)).unwrap()).is_some());
        let wrong_epoch = Lease { epoch: Epoch(la.epoch.0 + 1), ..la.clone() };
        assert!(lost(m.renew("s", a, &wrong_epoch, at(5)).unwrap()).is_some());
        // The right lease through another session would refresh the wrong session.
        assert!(lost(m.renew("s", b, &la, at(5)).unwrap()).is_some());
        // After expiry the session is gone.
        assert!(m.renew("s", a, &la, at(15)).unwrap_err().is_lease_lost());
        // Another holder: the old lease is Lost with the new holder named.
        assert!(m.session_expiry(b).is_none(), "b was never refreshed and expired at 10");
        let c = m.open_session(TTL, at(15));
        won(m.acquire("s", c, &leader("c", "u"), at(15)).unwrap());
        let d = m.open_session(TTL, at(15));
        assert_eq!(lost(m.renew("s", d, &la, at(15)).unwrap()).unwrap().record.member, "c");
    }

    #[test]
    fn release_is_compare_and_delete() {
        let mut m = MemoryModel::new();
        let a = m.open_session(TTL, at(0));
        let la = won(m.acquire("s", a, &leader("a", "t"), at(0)).unwrap());
        let forged = Lease { record: leader("b", "x"), ..la.clone() };
        assert_eq!(lost(m.release("s", &forged, at(1))).unwrap().record.token, "t");
        let stale = Lease { epoch: Epoch(la.epoch.0 + 1), ..la.clone() };
        assert!(lost(m.release("s", &stale, at(1))).is_some());
        won(m.release("s", &la, at(1)));
        assert!(lost(m.release("s", &la, at(1))).is_none());
        assert!(m.load("s", at(1)).leader.is_none());
    }

    #[test]
    fn control_keys_are_compare_and_set() {
        let mut m = MemoryModel::new();
        let k = ControlKey::Failover;
        let v1 = won(m.write_control("s", k, &Expect::Absent, br#"{"candidate":"a"}"#, at(0)));
        assert_eq!(lost(m.write_control("s", k, &Expect::Absent, b"{}", at(0))), Some(v1.clone()));
        let v2 = won(m.write_control("s", k, &Expect::Version(v1.clone()), br#"{"candidate":"b"}"#, at(0)));
        assert_ne!(v1, v2);
        assert_eq!(lost(m.write_control("s", k, &Expect::Version(v1.clone()), b"{}", at(0))), Some(v2.clone()));
        assert_eq!(lost(m.delete_control("s", k, &v1, at(0))), Some(v2.clone()));
        let view = m.load("s", at(0));
        assert_eq!(view.failover.unwrap().value.candidate.as_deref(), Some("b"));
        won(m.delete_control("s", k, &v2, at(0)));
        assert_eq!(lost(m.delete_control("s", k, &v2, at(0))), None);
        assert_eq!(lost(m.write_control("s", k, &Expect::Version(v2), b"{}", at(0))), None);
        // Control keys outlive every session.
        won(m.write_control("s", k, &Expect::Absent, br#"{"candidate":"c"}"#, at(0)));
        assert!(m.load("s", at(1000)).failover.is_some());
    }

    #[test]
    fn garbage_is_reported_and_can_be_replaced_by_cas() {
        let mut m = MemoryModel::new();
        let a = m.open_session(TTL, at(0));
        m.put_raw("s", &Key::Leader, b"\xff".to_vec());
        m.put_raw("s", &Key::Member("g".into()), b"{".to_vec());
        m.put_raw("s", &Key::Control(ControlKey::Sync), b"[]".to_vec());
        let view = m.load("s", at(0));
        assert!(view.leader.is_none() && view.members.is_empty() && view.sync.is_none());
        assert_eq!(view.problems.len(), 3);
        let v = view.control_version(ControlKey::Sync).cloned().unwrap();
        // A garbage leader key is not absent to acquire: it is Lost with nothing to name.
        assert_eq!(lost(m.acquire("s", a, &leader("a", "t"), at(0)).unwrap()), None);
        won(m.write_control("s", ControlKey::Sync, &Expect::Version(v), br#"{"leader":"a"}"#, at(0)));
        assert_eq!(m.load("s", at(0)).problems.len(), 2);
    }

    #[test]
    fn invalid_records_are_refused_not_stored() {
        let mut m = MemoryModel::new();
        let a = m.open_session(TTL, at(0));
        assert!(m.acquire("s", a, &leader("", "t"), at(0)).unwrap_err().is_fatal());
        assert!(m.publish_member("s", a, &MemberRecord::new("a/b"), at(0)).unwrap_err().is_fatal());
        assert_eq!(m.revision(), 0);
    }

    #[test]
    fn watches_see_changes_per_scope_and_resync_after_compaction() {
        let mut m = MemoryModel::new();
        let r0 = Version::new(m.revision());
        assert_eq!(m.poll_watch("s", &r0, at(0)), None);
        m.write_control("s1", ControlKey::Config, &Expect::Absent, b"{}", at(0));
        assert_eq!(m.poll_watch("s", &r0, at(0)), None, "a change in another scope is not ours");
        m.write_control("s", ControlKey::Config, &Expect::Absent, b"{}", at(0));
        assert_eq!(m.poll_watch("s", &r0, at(0)), Some(WatchEvent::Changed));
        let r2 = Version::new(m.revision());
        assert_eq!(m.poll_watch("s", &r2, at(0)), None);
        m.compact(m.revision());
        assert_eq!(m.poll_watch("s", &r0, at(0)), Some(WatchEvent::Resync));
        assert_eq!(m.poll_watch("s", &r2, at(0)), None, "nothing was lost after r2");
        assert_eq!(m.poll_watch("s", &Version::opaque("abc"), at(0)), Some(WatchEvent::Resync));
        // Expiry is a change too.
        let a = m.open_session(TTL, at(0));
        m.publish_member("s", a, &MemberRecord::new("a"), at(0)).unwrap();
        let r3 = Version::new(m.revision());
        assert_eq!(m.poll_watch("s", &r3, at(9)), None);
        assert_eq!(m.poll_watch("s", &r3, at(10)), Some(WatchEvent::Changed));
        m.compact(u64::MAX);
        assert_eq!(m.compacted(), m.revision());
    }

    #[test]
    fn close_session_deletes_at_once() {
        let mut m = MemoryModel::new();
        let a = m.open_session(TTL, at(0));
        m.acquire("s", a, &leader("a", "t"), at(0)).unwrap();
        m.close_session(a, at(1));
        assert!(m.load("s", at(1)).leader.is_none());
        assert_eq!(m.session_expiry(a), None);
        let rev = m.revision();
        m.close_session(a, at(1));
        assert_eq!(m.revision(), rev);
    }

    /// Drives a real node with `answer` until it acts as leader; the first acquire's reply is
    /// lost when `lose_first_acquire`, so the node must find its own token by re-reading.
    fn elect(lose_first_acquire: bool) -> (MemoryModel, Node, Instant) {
        let mut cfg = crate::node::NodeConfig::new("a", 1);
        cfg.timing = crate::Timing::fast();
        let mut now = Instant::ZERO;
        let mut node = Node::new(cfg, now).unwrap();
        let mut model = MemoryModel::new();
        let session = model.open_session(cfg_ttl(), now);
        let mut lose = lose_first_acquire;
        for _ in 0..200 {
            node.handle(Input::Timeout, now);
            while let Some(action) = node.poll_action() {
                match action {
                    Action::Promote { .. } => node.handle(Input::Promoted(Ok(())), now),
                    Action::Acquire { .. } if lose => {
                        lose = false;
                        answer(&mut model, session, "s", &mut node, action, Some(DcsError::unknown("lost")), now);
                    }
                    other => answer(&mut model, session, "s", &mut node, other, None, now),
                }
            }
            if node.is_acting_leader(now) {
                return (model, node, now);
            }
            now += Duration::from_millis(100);
        }
        panic!("no leadership after 20 s: {:?}", node.status());
    }

    fn cfg_ttl() -> Duration {
        crate::Timing::fast().ttl
    }

    #[test]
    fn answer_drives_a_node_to_leadership() {
        for lose_first_acquire in [false, true] {
            let (mut model, node, now) = elect(lose_first_acquire);
            let view = model.load("s", now);
            let held = view.leader.clone().expect("the node's key");
            assert_eq!(held.record.member, "a");
            assert_eq!(node.status().epoch, Some(held.epoch));
            assert!(view.member("a").is_some(), "the node published itself");
        }
    }

    #[test]
    fn same_inputs_same_outputs() {
        let run = || {
            let mut m = MemoryModel::new();
            let s: Vec<SessionId> = (0..3).map(|i| m.open_session(TTL, at(i))).collect();
            for (i, id) in s.iter().enumerate() {
                let _ = m.acquire("s", *id, &leader(&format!("n{i}"), "t"), at(i as u64 + 5));
                let _ = m.publish_member("s", *id, &MemberRecord::new(format!("n{i}")), at(i as u64 + 5));
            }
            format!("{:?}", (m.load("s", at(12)), m.load("s", at(30)), m.revision()))
        };
        assert_eq!(run(), run());
    }
}
