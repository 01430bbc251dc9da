//! One election scope over Consul KV: the `Dcs` implementation.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use async_trait::async_trait;
use leasehold::{
    CasOutcome, ClusterView, ControlKey, Dcs, DcsError, Epoch, Expect, Key, LeaderRecord, LeaderView, Lease,
    MemberRecord, RawEntry, RawView, Record, StoreBounds, Version, WatchEvent,
};

use crate::api::{Acquired, Entry};
use crate::client::{ConsulClient, now};
use crate::options::Consistency;

/// Watches wake within this in a healthy cluster (blocking queries answer at once).
const WATCH_LATENCY: Duration = Duration::from_secs(1);

/// One election scope: keys under `<prefix>/<scope>/`, sharing the client's session.
///
/// * The leader key is acquired with `?acquire=<session>` and so vanishes with the session
///   (`Behavior = delete`). Its fencing epoch and CAS version are its `ModifyIndex` at
///   acquisition: Consul's index is global and strictly increasing, and nothing rewrites the
///   key while it is held (renewal only renews the session).
/// * Members are acquired with the session too; control keys are plain `?cas=` writes.
/// * `load` is one recursive `?consistent` read. Its revision is the `X-Consul-Index`
///   plus a fingerprint of the scope's keys, so a watch can tell a real change from a
///   blocking query that returned for another reason.
#[derive(Clone, Debug)]
pub struct ConsulDcs {
    client: ConsulClient,
    scope: String,
    /// `<prefix>/<scope>/`, without a leading `/`.
    base: String,
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
        ConsulDcs { client, scope: scope.to_string(), base }
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
        Ok(self.client.inner.api.get(&self.key(&Key::Leader)).await?.as_ref().and_then(Self::leader_view))
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

#[async_trait]
impl Dcs for ConsulDcs {
    fn scope(&self) -> &str {
        &self.scope
    }

    /// `ttl` is the session TTL in force; `max_expiry` is twice that (Consul may wait that
    /// long to invalidate) plus the lock-delay that then blocks re-acquisition.
    fn bounds(&self) -> StoreBounds {
        let ttl = self.client.inner.session_ttl;
        StoreBounds { ttl, max_expiry: 2 * ttl + self.client.inner.options.lock_delay, watch_latency: WATCH_LATENCY }
    }

    fn configured_ttl(&self) -> Duration {
        self.client.inner.configured_ttl
    }

    async fn load(&self) -> Result<ClusterView, DcsError> {
        self.check()?;
        let listing = self.client.inner.api.read(&self.base, true, Consistency::Consistent, None).await?;
        Ok(self.raw_view(listing.index, &listing.entries).decode())
    }

    async fn acquire(&self, record: &LeaderRecord) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        self.check()?;
        record.validate().map_err(|e| DcsError::fatal(format!("invalid leader record: {e}")))?;
        let started = now();
        let key = self.key(&Key::Leader);
        let api = &self.client.inner.api;
        let lock = self.client.acquire_lock(&key);
        let _serialised = lock.lock().await;
        let session = self.client.ensure_session().await?;
        // Consul lets a session "acquire" a key it already holds (it just rewrites it), so look
        // first: a held key is someone's, ours included.
        if let Some(e) = api.get(&key).await?
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
        let entry = api
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

    async fn renew(&self, lease: &Lease) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        self.check()?;
        let started = now();
        let (session, sent) = self.client.renew_session().await?;
        let entry = self.client.inner.api.get(&self.key(&Key::Leader)).await?;
        match entry {
            Some(e) if Self::is_lease(&e, lease) && e.session.as_deref() == Some(session.as_str()) => {
                let valid_for = (sent + self.client.inner.session_ttl).saturating_duration_since(started);
                Ok(CasOutcome::Won(Lease { version: Version::new(e.modify_index), valid_for, ..lease.clone() }))
            }
            other => Ok(CasOutcome::Lost(other.as_ref().and_then(Self::leader_view))),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<CasOutcome<(), Option<LeaderView>>, DcsError> {
        self.check()?;
        let key = self.key(&Key::Leader);
        let api = &self.client.inner.api;
        let entry = api.get(&key).await?;
        let Some(e) = entry.filter(|e| Self::is_lease(e, lease)) else {
            return Ok(CasOutcome::Lost(self.current_leader().await?));
        };
        if api.delete_cas(&key, e.modify_index).await? {
            Ok(CasOutcome::Won(()))
        } else {
            Ok(CasOutcome::Lost(self.current_leader().await?))
        }
    }

    async fn publish_member(&self, member: &MemberRecord) -> Result<(), DcsError> {
        self.check()?;
        member.validate().map_err(|e| DcsError::fatal(format!("invalid member record: {e}")))?;
        let key = self.key(&Key::Member(member.name.clone()));
        let value = member.encode();
        let session = self.client.ensure_session().await?;
        self.client.publish_key(&key, &value, &session).await?;
        self.client.remember_member(&key, &value);
        Ok(())
    }

    async fn write_control(
        &self,
        key: ControlKey,
        expect: Expect,
        value: &[u8],
    ) -> Result<CasOutcome<Version, Option<Version>>, DcsError> {
        self.check()?;
        let path = self.key(&Key::Control(key));
        let api = &self.client.inner.api;
        let current = || async { Ok::<_, DcsError>(api.get(&path).await?.map(|e| Version::new(e.modify_index))) };
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
        match api
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

    async fn delete_control(
        &self,
        key: ControlKey,
        expect: &Version,
    ) -> Result<CasOutcome<(), Option<Version>>, DcsError> {
        self.check()?;
        let path = self.key(&Key::Control(key));
        let api = &self.client.inner.api;
        // Consul answers `true` to a cas delete of a missing key: look first.
        let Some(e) = api.get(&path).await? else { return Ok(CasOutcome::Lost(None)) };
        if Some(e.modify_index) != expect.as_u64() {
            return Ok(CasOutcome::Lost(Some(Version::new(e.modify_index))));
        }
        if api.delete_cas(&path, e.modify_index).await? {
            return Ok(CasOutcome::Won(()));
        }
        Ok(CasOutcome::Lost(api.get(&path).await?.map(|e| Version::new(e.modify_index))))
    }

    async fn watch(&self, after: Option<&Version>, timeout: Duration) -> Result<WatchEvent, DcsError> {
        self.check()?;
        let deadline = now() + timeout;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let entries = vec![Entry { key: "a".into(), value: vec![], modify_index: 3, session: None }];
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
