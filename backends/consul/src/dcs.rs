//! One election scope over Consul KV: the `Dcs` implementation.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use leasehold::{
    CasOutcome, ClusterView, ControlKey, Dcs, DcsError, Epoch, Expect, GarbageRemoval, Key, LeaderRecord, LeaderView,
    Lease, MemberRecord, RawEntry, RawView, Record, StoreBounds, Version, WatchEvent,
};

use crate::api::{Acquired, Entry};
use crate::client::{ConsulClient, now};
use crate::options::Consistency;

/// Watches wake within this in a healthy cluster (blocking queries answer at once).
const WATCH_LATENCY: Duration = Duration::from_secs(1);
/// How long a read waits for the mirror to show what this process was told about before
/// it reads the store instead (a round after a change pauses at most 500 ms; a waiting
/// reader cuts the pause short).
const MIRROR_WAIT: Duration = Duration::from_millis(500);

/// One election scope: keys under `<prefix>/<scope>/`, sharing the client's session.
///
/// * The leader key is acquired with `?acquire=<session>` and so vanishes with the session
///   (`Behavior = delete`). Its fencing epoch and CAS version are its `ModifyIndex` at
///   acquisition: Consul's index is global and strictly increasing, and nothing rewrites the
///   key while it is held (renewal only renews the session).
/// * Members are acquired with the session too; control keys are plain `?cas=` writes.
/// * `load` comes from the process's mirror (one blocking query over the whole prefix, see
///   the crate documentation) once it shows everything this process wrote or was told
///   about, else it is one recursive `?consistent` read. Its revision is the
///   `X-Consul-Index` plus a fingerprint of the scope's keys, so a watch without the mirror
///   can tell a real change from a blocking query that returned for another reason.
/// * `watch` waits on the mirror for a change of the leader or a control key (member
///   records wake nobody); without it, it runs a blocking query of its own on the scope.
/// * `renew` renews the session; with a usable mirror showing the key unchanged (record,
///   `ModifyIndex`, our session) that renewal is all, shared by every scope of the process;
///   else a consistent read checks the key. A leader learns that its key was deleted or
///   changed from the mirror (its next renew is `Lost`), and that its session ended from
///   the renewal (`LeaseLost`).
#[derive(Clone, Debug)]
pub struct ConsulDcs {
    client: ConsulClient,
    scope: String,
    /// `<prefix>/<scope>/`, without a leading `/`.
    base: String,
    /// A write of this handle had an unknown outcome: the next read is a `?consistent` read,
    /// so a node looking for its own token reads the store, not a mirror that may lag.
    linearize: Arc<AtomicBool>,
}

fn key_path(prefix: &str, scope: &str, key: &Key) -> String {
    key.path(prefix, scope).trim_start_matches('/').to_string()
}

/// Identifies the scope's contents: the keys and their ModifyIndex.
fn fingerprint(entries: &[Entry]) -> u64 {
    let mut h = DefaultHasher::new();
    let mut pairs: Vec<(&str, u64)> = entries.iter().map(|e| (e.key.as_str(), e.modify_index)).collect();
    pairs.sort_unstable();
    pairs.hash(&mut h);
    h.finish()
}

/// `index.fingerprint`, or a bare index from elsewhere.
fn parse_cursor(v: &Version) -> Option<(u64, Option<u64>)> {
    let text = v.to_text();
    match text.split_once('.') {
        Some((i, f)) => Some((i.parse().ok()?, Some(u64::from_str_radix(f, 16).ok()?))),
        None => Some((text.parse().ok()?, None)),
    }
}

fn cursor(index: u64, entries: &[Entry]) -> Version {
    Version::opaque(format!("{index}.{:016x}", fingerprint(entries)))
}

impl ConsulDcs {
    pub(crate) fn new(client: ConsulClient, scope: &str) -> Self {
        let prefix = client.inner.options.prefix.clone();
        let base = key_path(&prefix, scope, &Key::Leader).trim_end_matches("leader").to_string();
        ConsulDcs { client, scope: scope.to_string(), base, linearize: Arc::new(AtomicBool::new(false)) }
    }

    fn key(&self, key: &Key) -> String {
        key_path(&self.client.inner.options.prefix, &self.scope, key)
    }

    fn check(&self) -> Result<(), DcsError> {
        self.client.check_running()?;
        if self.scope.is_empty() || self.scope.contains('/') || self.scope.chars().any(char::is_control) {
            return Err(DcsError::fatal(format!(
                "scope name {:?} must be non-empty without '/' or control characters",
                self.scope
            )));
        }
        Ok(())
    }

    /// The leader as stored in `entry`, if it decodes.
    fn leader_view(entry: &Entry) -> Option<LeaderView> {
        let record = LeaderRecord::decode(&entry.key, &entry.value).ok()?;
        Some(LeaderView { record, epoch: Epoch(entry.modify_index), version: Version::new(entry.modify_index) })
    }

    async fn current_leader(&self) -> Result<Option<LeaderView>, DcsError> {
        Ok(self.get(&self.key(&Key::Leader)).await?.as_ref().and_then(Self::leader_view))
    }

    /// Whether `entry` is the leader key `lease` describes.
    fn is_lease(entry: &Entry, lease: &Lease) -> bool {
        entry.modify_index == lease.epoch.0
            && LeaderRecord::decode(&entry.key, &entry.value).is_ok_and(|r| r == lease.record)
    }

    fn raw_view(&self, index: u64, entries: &[Entry]) -> RawView {
        let mut raw = RawView { revision: Some(cursor(index, entries)), ..RawView::default() };
        for e in entries {
            let Some(rest) = e.key.strip_prefix(&self.base) else { continue };
            let Some(key) = Key::parse("", &self.scope, &format!("/{}/{rest}", self.scope)) else { continue };
            let raw_entry =
                RawEntry { key: e.key.clone(), bytes: e.value.clone(), version: Version::new(e.modify_index) };
            // A valid leader or member record that no session holds is a leftover (a session
            // with Behavior=release, a hand-made key): nobody is alive behind it.
            let unheld_but_valid = e.session.is_none()
                && match &key {
                    Key::Leader => LeaderRecord::decode(&e.key, &e.value).is_ok(),
                    Key::Member(_) => MemberRecord::decode(&e.key, &e.value).is_ok(),
                    Key::Control(_) => false,
                };
            if unheld_but_valid {
                continue;
            }
            match key {
                Key::Leader => raw.leader = Some((raw_entry, Epoch(e.modify_index))),
                Key::Member(_) => raw.members.push(raw_entry),
                Key::Control(c) => raw.control.push((c, raw_entry)),
            }
        }
        raw
    }
}

impl ConsulDcs {
    /// Deletes the scope's leader key if it does not decode as a leader record, by a
    /// `DELETE ?cas=<ModifyIndex>` on exactly the entry read: the operator's way out of a
    /// hand-written or corrupted key that blocks elections (a session holds it, so no member
    /// can acquire it). A valid record, of any member, held or not, is never touched.
    ///
    /// Consul answers `true` to a cas delete of a key that is already gone, so a key someone
    /// else deleted in between is reported `Removed` too: either way it is gone.
    pub async fn remove_garbage_leader(&self) -> Result<GarbageRemoval, DcsError> {
        self.check()?;
        let key = self.key(&Key::Leader);
        let Some(e) = self.get(&key).await? else { return Ok(GarbageRemoval::Absent) };
        if LeaderRecord::decode(&e.key, &e.value).is_ok() {
            return Ok(GarbageRemoval::Valid);
        }
        let deleted = self.client.inner.api.delete_cas(&key, e.modify_index).await;
        if self.note(deleted)? {
            self.client.inner.mirror.deleted(&key, e.modify_index);
            Ok(GarbageRemoval::Removed { version: Version::new(e.modify_index) })
        } else {
            Ok(GarbageRemoval::Changed)
        }
    }
}

impl ConsulDcs {
    /// A write that may have been applied makes this handle's next read a `?consistent` one.
    fn note<T>(&self, result: Result<T, DcsError>) -> Result<T, DcsError> {
        if let Err(e) = &result
            && e.is_outcome_unknown()
        {
            self.linearize.store(true, Ordering::SeqCst);
        }
        result
    }

    /// Notes the index of an entry this process was told about, so later loads from the
    /// mirror do not go back before it.
    fn saw(&self, entry: Option<&Entry>) {
        if let Some(e) = entry {
            self.client.inner.mirror.saw(e.modify_index);
        }
    }

    /// One key by a `?consistent` read, noted as seen.
    async fn get(&self, key: &str) -> Result<Option<Entry>, DcsError> {
        let entry = self.client.inner.api.get(key).await?;
        self.saw(entry.as_ref());
        Ok(entry)
    }

    /// Whether the mirror may be used now: it is switched on, and this process's session
    /// renewal succeeded recently (the mirror checks the rest).
    fn mirror_usable(&self) -> bool {
        self.client.inner.options.watch_mirror && self.client.renew_recent()
    }

    /// The scope from the mirror, once it shows everything this process was told about.
    async fn load_from_mirror(&self) -> Option<ClusterView> {
        if !self.mirror_usable() {
            return None;
        }
        let base = &self.base;
        let (index, entries) = self
            .client
            .inner
            .mirror
            .read(MIRROR_WAIT, |index, keys| {
                let entries: Vec<Entry> = keys
                    .range(base.clone()..)
                    .take_while(|(k, _)| k.starts_with(base.as_str()))
                    .map(|(_, e)| e.clone())
                    .collect();
                (index, entries)
            })
            .await?;
        Some(self.raw_view(index, &entries).decode())
    }

    /// Whether `entry` is the leader key `lease` describes, held by `session`.
    fn is_ours(entry: Option<&Entry>, lease: &Lease, session: &str) -> bool {
        entry.is_some_and(|e| Self::is_lease(e, lease) && e.session.as_deref() == Some(session))
    }

    /// Renews from the mirror's copy of the leader key: the session renewal alone, shared by
    /// every scope of the process. The key was acquired with our session (`Behavior =
    /// delete`): while the session lives, only a delete or a write by a client removes or
    /// changes it, and the mirror shows either (crate docs, "One blocking query per
    /// process").
    async fn renew_from_mirror(
        &self,
        lease: &Lease,
        entry: Option<Entry>,
    ) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        let started = now();
        let Some(session) = self.client.session_id() else {
            return Err(DcsError::lease_lost("the consul session was lost; a new one is being created"));
        };
        if !Self::is_ours(entry.as_ref(), lease, &session) {
            return Ok(CasOutcome::Lost(entry.as_ref().and_then(Self::leader_view)));
        }
        let (renewed, sent) = self.client.renew_session_since(self.client.reuse_since(started)).await?;
        if renewed != session {
            return Err(DcsError::lease_lost(format!("consul session {session} was replaced; its keys went with it")));
        }
        // A deletion or change the mirror applied while the renewal was out wins.
        let key = self.key(&Key::Leader);
        if let Some(now_entry) = self.client.inner.mirror.get_now(&key)
            && !Self::is_ours(now_entry.as_ref(), lease, &session)
        {
            return Ok(CasOutcome::Lost(now_entry.as_ref().and_then(Self::leader_view)));
        }
        let valid_for = (sent + self.client.inner.session_ttl).saturating_duration_since(started);
        let version = entry.map_or(lease.epoch.0, |e| e.modify_index);
        Ok(CasOutcome::Won(Lease { version: Version::new(version), valid_for, ..lease.clone() }))
    }

    async fn acquire_key(&self, record: &LeaderRecord) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        record.validate().map_err(|e| DcsError::fatal(format!("invalid leader record: {e}")))?;
        let started = now();
        let key = self.key(&Key::Leader);
        let api = &self.client.inner.api;
        let lock = self.client.acquire_lock(&key);
        let _serialised = lock.lock().await;
        let session = self.client.ensure_session().await?;
        // Consul lets a session "acquire" a key it already holds (it just rewrites it), so look
        // first: a held key is someone's, ours included.
        if let Some(e) = self.get(&key).await?
            && e.session.is_some()
        {
            return Ok(CasOutcome::Lost(Self::leader_view(&e)));
        }
        let value = record.encode();
        match api.acquire(&key, &value, &session).await? {
            Acquired::InvalidSession => {
                self.client.lose_session(&session).await;
                return Err(DcsError::unavailable("consul session was invalidated; a new one is being created"));
            }
            Acquired::Done(false) => return Ok(CasOutcome::Lost(self.current_leader().await?)),
            Acquired::Done(true) => {}
        }
        // Consul does not return the new ModifyIndex: read it. The write is applied, so a failed
        // read leaves the outcome unknown to the caller.
        let entry = self
            .get(&key)
            .await
            .map_err(|e| DcsError::unknown(format!("acquired, but reading the epoch failed: {e}")))?;
        match entry {
            Some(e) if e.session.as_deref() == Some(session.as_str()) && e.value == value => {
                Ok(CasOutcome::Won(Lease {
                    record: record.clone(),
                    epoch: Epoch(e.modify_index),
                    version: Version::new(e.modify_index),
                    valid_for: self.client.valid_from(started),
                }))
            }
            other => Err(DcsError::unknown(format!(
                "acquired the leader key, but it changed before its epoch could be read (now {:?})",
                other.map(|e| (e.session, e.modify_index))
            ))),
        }
    }

    async fn renew_key(&self, lease: &Lease) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        self.client.start_mirror();
        let key = self.key(&Key::Leader);
        if !self.linearize.load(Ordering::SeqCst)
            && self.mirror_usable()
            && let Some(entry) = self.client.inner.mirror.read(MIRROR_WAIT, |_, keys| keys.get(&key).cloned()).await
        {
            return self.renew_from_mirror(lease, entry).await;
        }
        let started = now();
        let (session, sent) = self.client.renew_session().await?;
        let entry = self.get(&key).await?;
        match entry {
            Some(e) if Self::is_lease(&e, lease) && e.session.as_deref() == Some(session.as_str()) => {
                let valid_for = (sent + self.client.inner.session_ttl).saturating_duration_since(started);
                Ok(CasOutcome::Won(Lease { version: Version::new(e.modify_index), valid_for, ..lease.clone() }))
            }
            other => Ok(CasOutcome::Lost(other.as_ref().and_then(Self::leader_view))),
        }
    }

    async fn release_key(&self, lease: &Lease) -> Result<CasOutcome<(), Option<LeaderView>>, DcsError> {
        let key = self.key(&Key::Leader);
        let api = &self.client.inner.api;
        let entry = self.get(&key).await?;
        let Some(e) = entry.filter(|e| Self::is_lease(e, lease)) else {
            return Ok(CasOutcome::Lost(self.current_leader().await?));
        };
        if api.delete_cas(&key, e.modify_index).await? {
            self.client.inner.mirror.deleted(&key, e.modify_index);
            Ok(CasOutcome::Won(()))
        } else {
            Ok(CasOutcome::Lost(self.current_leader().await?))
        }
    }

    async fn publish(&self, member: &MemberRecord) -> Result<(), DcsError> {
        member.validate().map_err(|e| DcsError::fatal(format!("invalid member record: {e}")))?;
        let key = self.key(&Key::Member(member.name.clone()));
        let value = member.encode();
        let session = self.client.ensure_session().await?;
        // The mirror shows this very record held by this session: nothing to write (the
        // driver publishes every loop; only a change costs a request, as on etcd).
        if let Some(Some(e)) = self.client.inner.mirror.get_now(&key)
            && e.value == value
            && e.session.as_deref() == Some(session.as_str())
        {
            return Ok(());
        }
        self.client.publish_key(&key, &value, &session).await?;
        self.client.inner.mirror.wrote(&key, &value);
        self.client.remember_member(&key, &value);
        Ok(())
    }

    async fn write_control_key(
        &self,
        key: ControlKey,
        expect: Expect,
        value: &[u8],
    ) -> Result<CasOutcome<Version, Option<Version>>, DcsError> {
        let path = self.key(&Key::Control(key));
        let api = &self.client.inner.api;
        let current = || async { Ok::<_, DcsError>(self.get(&path).await?.map(|e| Version::new(e.modify_index))) };
        let cas = match &expect {
            Expect::Absent => 0,
            // Consul indexes start above 0; 0 would mean "create only", not this version.
            Expect::Version(v) => match v.as_u64() {
                Some(n) if n > 0 => n,
                _ => return Ok(CasOutcome::Lost(current().await?)),
            },
        };
        if !api.put_cas(&path, value, cas).await? {
            return Ok(CasOutcome::Lost(current().await?));
        }
        // Consul does not return the new ModifyIndex; read it back (Patroni does the same).
        match self
            .get(&path)
            .await
            .map_err(|e| DcsError::unknown(format!("written, but reading its version failed: {e}")))?
        {
            Some(e) if e.value == value => Ok(CasOutcome::Won(Version::new(e.modify_index))),
            _ => Err(DcsError::unknown(format!(
                "{} was written, then changed before its version could be read",
                key.name()
            ))),
        }
    }

    async fn delete_control_key(
        &self,
        key: ControlKey,
        expect: &Version,
    ) -> Result<CasOutcome<(), Option<Version>>, DcsError> {
        let path = self.key(&Key::Control(key));
        let api = &self.client.inner.api;
        // Consul answers `true` to a cas delete of a missing key: look first.
        let Some(e) = self.get(&path).await? else { return Ok(CasOutcome::Lost(None)) };
        if Some(e.modify_index) != expect.as_u64() {
            return Ok(CasOutcome::Lost(Some(Version::new(e.modify_index))));
        }
        if api.delete_cas(&path, e.modify_index).await? {
            self.client.inner.mirror.deleted(&path, e.modify_index);
            return Ok(CasOutcome::Won(()));
        }
        Ok(CasOutcome::Lost(self.get(&path).await?.map(|e| Version::new(e.modify_index))))
    }

    /// Waits on the mirror for a leader or control key change after index `floor`.
    async fn wait_for_wake(
        mut wakes: tokio::sync::watch::Receiver<crate::mirror::Wake>,
        floor: Option<u64>,
        deadline: tokio::time::Instant,
    ) -> WatchEvent {
        let floor = floor.unwrap_or_else(|| wakes.borrow().index);
        loop {
            let wake = *wakes.borrow_and_update();
            if wake.index > floor {
                return if wake.resync { WatchEvent::Resync } else { WatchEvent::Changed };
            }
            match tokio::time::timeout_at(deadline, wakes.changed()).await {
                Err(_) => return WatchEvent::Timeout,
                Ok(Err(_)) => return WatchEvent::Resync,
                Ok(Ok(())) => {}
            }
        }
    }

    /// A blocking query of its own on the scope (without a live mirror).
    async fn watch_query(
        &self,
        after: Option<&Version>,
        deadline: tokio::time::Instant,
    ) -> Result<WatchEvent, DcsError> {
        let api = &self.client.inner.api;
        let mode = self.client.inner.options.consistency;
        let (mut index, print) = match after.map(parse_cursor) {
            Some(Some(c)) => c,
            Some(None) => return Ok(WatchEvent::Resync),
            None => {
                let listing = api.read(&self.base, true, mode, None).await?;
                (listing.index, Some(fingerprint(&listing.entries)))
            }
        };
        loop {
            let remaining = deadline.saturating_duration_since(now());
            if remaining < Duration::from_millis(5) {
                return Ok(WatchEvent::Timeout);
            }
            // Leave room for Consul's jitter (up to wait / 16) inside our own timeout.
            let wait = (remaining * 16 / 17).max(Duration::from_millis(1));
            let listing = api.read(&self.base, true, mode, Some((index.max(1), wait))).await?;
            if listing.index < index {
                // The index went backwards (snapshot restore, tombstones reaped): Consul says
                // to start over.
                return Ok(WatchEvent::Resync);
            }
            let changed = match print {
                Some(p) => fingerprint(&listing.entries) != p,
                None => listing.index > index,
            };
            if changed {
                return Ok(WatchEvent::Changed);
            }
            // Returned early, at `wait`, or for a write elsewhere: keep waiting from here.
            index = listing.index;
        }
    }
}

#[async_trait]
impl Dcs for ConsulDcs {
    fn scope(&self) -> &str {
        &self.scope
    }

    /// `ttl` is the session TTL in force; `max_expiry` is twice that (Consul may wait that
    /// long to invalidate) plus the lock-delay that then blocks re-acquisition.
    fn bounds(&self) -> StoreBounds {
        let ttl = self.client.inner.session_ttl;
        let max_expiry = 2 * ttl + self.client.inner.options.lock_delay;
        StoreBounds { ttl, max_expiry, watch_latency: WATCH_LATENCY, member_expiry: max_expiry }
    }

    fn configured_ttl(&self) -> Duration {
        self.client.inner.configured_ttl
    }

    async fn load(&self) -> Result<ClusterView, DcsError> {
        self.check()?;
        self.client.start_mirror();
        if !self.linearize.swap(false, Ordering::SeqCst)
            && let Some(view) = self.load_from_mirror().await
        {
            return Ok(view);
        }
        let listing = self.client.inner.api.read(&self.base, true, Consistency::Consistent, None).await?;
        // The index of a listing with entries is the scope's own (its highest ModifyIndex or
        // tombstone); an empty scope answers the whole table's index, which the mirror of
        // this prefix may never reach, so it is not noted.
        if !listing.entries.is_empty() {
            self.client.inner.mirror.saw(listing.index);
        }
        Ok(self.raw_view(listing.index, &listing.entries).decode())
    }

    async fn acquire(&self, record: &LeaderRecord) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        self.check()?;
        self.note(self.acquire_key(record).await)
    }

    async fn renew(&self, lease: &Lease) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        self.check()?;
        self.note(self.renew_key(lease).await)
    }

    async fn release(&self, lease: &Lease) -> Result<CasOutcome<(), Option<LeaderView>>, DcsError> {
        self.check()?;
        self.note(self.release_key(lease).await)
    }

    async fn publish_member(&self, member: &MemberRecord) -> Result<(), DcsError> {
        self.check()?;
        self.note(self.publish(member).await)
    }

    async fn write_control(
        &self,
        key: ControlKey,
        expect: Expect,
        value: &[u8],
    ) -> Result<CasOutcome<Version, Option<Version>>, DcsError> {
        self.check()?;
        self.note(self.write_control_key(key, expect, value).await)
    }

    async fn delete_control(
        &self,
        key: ControlKey,
        expect: &Version,
    ) -> Result<CasOutcome<(), Option<Version>>, DcsError> {
        self.check()?;
        self.note(self.delete_control_key(key, expect).await)
    }

    /// With the mirror live, waits for a change of the scope's leader or control keys
    /// (member records wake nobody); else a blocking query of its own on the scope.
    async fn watch(&self, after: Option<&Version>, timeout: Duration) -> Result<WatchEvent, DcsError> {
        self.check()?;
        self.client.start_mirror();
        let deadline = now() + timeout;
        let floor = match after.map(parse_cursor) {
            Some(Some((index, _))) => Some(index),
            Some(None) => return Ok(WatchEvent::Resync),
            None => None,
        };
        if self.client.inner.options.watch_mirror
            && let Some(wakes) = self.client.inner.mirror.subscribe(&self.scope)
        {
            return Ok(Self::wait_for_wake(wakes, floor, deadline).await);
        }
        self.watch_query(after, deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let entries = vec![Entry { key: "a".into(), value: vec![], create_index: 3, modify_index: 3, session: None }];
        let v = cursor(9, &entries);
        assert_eq!(parse_cursor(&v), Some((9, Some(fingerprint(&entries)))));
        assert_eq!(parse_cursor(&Version::new(4)), Some((4, None)));
        assert_eq!(parse_cursor(&Version::opaque("x.y")), None);
        assert_ne!(fingerprint(&entries), fingerprint(&[]));
    }

    #[test]
    fn keys_have_no_leading_slash() {
        assert_eq!(key_path("service", "pg", &Key::Leader), "service/pg/leader");
        assert_eq!(key_path("", "pg", &Key::Member("a".into())), "pg/members/a");
        assert_eq!(key_path("/a/b/", "pg", &Key::Control(ControlKey::Sync)), "a/b/pg/sync");
    }
}
