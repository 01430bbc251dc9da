//! One election scope over the shared connection and lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use leasehold::{
    CasOutcome, ClusterView, ControlKey, Dcs, DcsError, Epoch, Expect, Key, LeaderRecord, LeaderView, Lease,
    MemberRecord, RawEntry, RawView, Record, StoreBounds, Version, WatchEvent,
};

use crate::client::{Inner, Published, Which, lock, now};
use crate::error::{Op, classify, is_compacted, never_sent, timed};
use crate::mirror::Entry;

/// How long after a holder stops its keys may outlive the TTL: etcd checks for expired
/// leases every 500 ms, revokes through raft, and a new raft leader extends every lease
/// by an election timeout (1 s by default).
const EXPIRY_SLACK: Duration = Duration::from_secs(2);
/// Watch wake-up in a healthy cluster (events are pushed; this is generous).
const WATCH_LATENCY: Duration = Duration::from_millis(500);
/// Pause before re-opening a broken watch stream.
const WATCH_RETRY: Duration = Duration::from_millis(250);
/// How long a read waits for the mirror to apply a revision this process was told about
/// before it reads by range instead.
const MIRROR_WAIT: Duration = Duration::from_millis(500);

/// One election scope in etcd: keys `<prefix>/<scope>/...` (Patroni's layout).
///
/// * `leader`: the [`LeaderRecord`], attached to the process lease. Acquire is a txn on
///   `create_revision == 0`; its `create_revision` is the fencing epoch, its `mod_revision`
///   the version. Renew confirms with a linearizable txn that the key still holds our
///   record at our epoch on our lease, while a shared lease keep-alive extends it. Release
///   compares epoch and record before deleting.
/// * `members/<name>`: [`MemberRecord`]s, attached to the process lease; an unchanged record
///   is not re-written.
/// * `config`, `failover`, `sync`, `initialize`, `history`, `status`: control keys without a
///   lease, compare-and-set on `mod_revision` (absent: `create_revision == 0`).
///
/// With [`EtcdOptions::watch_mirror`](crate::EtcdOptions::watch_mirror) (the default), one
/// watch per process over the whole prefix keeps a mirror of every scope (one range when it
/// starts or when etcd compacted its history). `load` returns the mirror's state of the
/// scope, which includes every write this process made or was told about; `watch` waits
/// for a change of the scope's leader or control keys (member records wake nobody); `renew`
/// of a key the mirror shows unchanged is a lease keep-alive alone. Why that is safe, and
/// when the mirror is not used (it then falls back to a linearizable range and a watch
/// stream per call): see the crate documentation, "One watch per process". A leader learns
/// that its key was deleted or changed from the mirror's event (its next renewal is
/// `Lost`); a process whose lease ended learns it from the keep-alive (`LeaseLost`).
///
/// Without the mirror, reads are linearizable ranges over `<prefix>/<scope>/`; `watch`
/// opens a watch on that prefix from the given revision + 1, re-opens it (on any member)
/// from the same revision when the stream breaks, and reports [`WatchEvent::Resync`] when
/// etcd compacted it.
#[derive(Clone)]
pub struct EtcdDcs {
    inner: Arc<Inner>,
    scope: String,
    /// `<prefix>/<scope>/`
    base: String,
    leader: String,
    invalid: Option<String>,
    /// A write of this handle had an unknown outcome: the next read is a linearizable range,
    /// so a node looking for its own token reads the store, not a mirror that may lag.
    linearize: Arc<AtomicBool>,
}

impl std::fmt::Debug for EtcdDcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdDcs").field("scope", &self.scope).field("base", &self.base).finish_non_exhaustive()
    }
}

fn check_scope(scope: &str) -> Option<String> {
    if scope.is_empty() {
        return Some("etcd scope name is empty".into());
    }
    if scope.contains('/') || scope.contains(char::is_control) {
        return Some(format!("etcd scope name {scope:?} contains '/' or a control character"));
    }
    None
}

fn kv_entry(kv: &KeyValue) -> RawEntry {
    RawEntry {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        bytes: kv.value().to_vec(),
        version: Version::new(kv.mod_revision().unsigned_abs()),
    }
}

/// The key-values of the first range in a txn's responses.
fn got(resp: &TxnResponse) -> Option<KeyValue> {
    resp.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    })
}

fn revision(resp: &TxnResponse) -> u64 {
    resp.header().map(|h| h.revision().unsigned_abs()).unwrap_or_default()
}

/// The leader key as read; garbage is reported (logged) and treated as absent.
fn leader_view(kv: Option<KeyValue>) -> Option<LeaderView> {
    let kv = kv?;
    let key = String::from_utf8_lossy(kv.key());
    decode_leader(&key, kv.value(), kv.create_revision().unsigned_abs(), kv.mod_revision().unsigned_abs())
}

/// A leader key's bytes with its create and mod revisions; garbage is logged and `None`.
fn decode_leader(key: &str, bytes: &[u8], created: u64, modified: u64) -> Option<LeaderView> {
    let entry = RawEntry { key: key.to_string(), bytes: bytes.to_vec(), version: Version::new(modified) };
    match LeaderRecord::decode(&entry.key, &entry.bytes) {
        Ok(record) => Some(LeaderView { record, epoch: Epoch(created), version: entry.version }),
        Err(e) => {
            // Debug only: a load reports it (once per change of the bytes, with its consequence).
            tracing::debug!(key = %entry.key, reason = %e.reason, "garbage in the leader key");
            None
        }
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl EtcdDcs {
    pub(crate) fn new(inner: Arc<Inner>, scope: &str) -> Self {
        let prefix = inner.options.prefix.clone();
        EtcdDcs {
            leader: Key::Leader.path(&prefix, scope),
            base: format!("{}/{scope}/", prefix.trim_end_matches('/')),
            invalid: check_scope(scope),
            scope: scope.to_string(),
            inner,
            linearize: Arc::new(AtomicBool::new(false)),
        }
    }

    fn ready(&self) -> Result<(), DcsError> {
        if let Some(problem) = &self.invalid {
            return Err(DcsError::fatal(problem));
        }
        self.inner.check_running()
    }

    fn limit(&self) -> Duration {
        self.inner.options.request_timeout
    }

    async fn txn(&self, op: Op, what: &str, txn: Txn) -> Result<TxnResponse, DcsError> {
        self.inner.count();
        let resp = timed(op, what, self.limit(), || {
            let txn = txn.clone();
            async move { self.inner.etcd.kv_client().txn(txn).await }
        })
        .await;
        match &resp {
            Ok(r) => self.inner.saw(revision(r)),
            Err(DcsError::OutcomeUnknown { .. }) => self.linearize.store(true, Ordering::SeqCst),
            Err(_) => {}
        }
        resp
    }

    /// The scope's view from the mirror's entries (full keys) at `revision`.
    /// `entries` are each key with its `create_revision` (the leader key's epoch).
    fn view_of(&self, revision: Option<u64>, entries: impl Iterator<Item = (RawEntry, u64)>) -> ClusterView {
        let prefix = &self.inner.options.prefix;
        let mut raw = RawView { revision: revision.map(Version::new), ..RawView::default() };
        for (entry, created) in entries {
            match Key::parse(prefix, &self.scope, &entry.key) {
                Some(Key::Leader) => raw.leader = Some((entry, Epoch(created))),
                Some(Key::Member(_)) => raw.members.push(entry),
                Some(Key::Control(c)) => raw.control.push((c, entry)),
                // Keys other tools keep in the scope (Patroni's `optime/leader`, `failsafe`).
                None => {}
            }
        }
        raw.decode()
    }

    /// Renews from the mirror's copy of the leader key (`entry`): a lease keep-alive alone,
    /// since nothing but this process's own release removes a key of a live lease that
    /// leasehold wrote (acquire is create-only; others compare our epoch and record).
    async fn renew_by_keep_alive(
        &self,
        held: &Lease,
        lease_id: i64,
        started: tokio::time::Instant,
        entry: Option<Entry>,
    ) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        let record = held.record.encode();
        let ours = |e: &Option<Entry>| {
            e.as_ref().is_some_and(|e| e.created == held.epoch.0 && e.value == record && e.lease == lease_id)
        };
        if !ours(&entry) {
            lock(&self.inner.held).remove(&self.leader);
            self.inner.poke(Which::Process);
            return Ok(CasOutcome::Lost(entry.and_then(|e| self.leader_of(&e))));
        }
        let earliest = started.checked_sub(self.inner.reuse).unwrap_or(started);
        let ack = match self.inner.keep_alive_since(earliest).await {
            Ok(ack) if ack.id == lease_id => ack,
            Ok(_) | Err(DcsError::LeaseLost { .. }) => {
                lock(&self.inner.held).remove(&self.leader);
                return Err(DcsError::lease_lost("the process lease expired, and the leader key with it"));
            }
            Err(e) => return Err(e),
        };
        // A deletion or change the mirror applied while the keep-alive was out wins.
        match self.inner.mirror.get(&self.leader, 0, Duration::ZERO).await {
            Some(now_entry) if !ours(&now_entry) => {
                lock(&self.inner.held).remove(&self.leader);
                return Ok(CasOutcome::Lost(now_entry.and_then(|e| self.leader_of(&e))));
            }
            _ => {}
        }
        let version = entry.map(|e| e.modified).unwrap_or_default();
        Ok(CasOutcome::Won(Lease {
            record: held.record.clone(),
            epoch: held.epoch,
            version: Version::new(version),
            valid_for: ack.expires.saturating_duration_since(started),
        }))
    }

    /// The leader key as the mirror holds it; garbage is logged and treated as absent.
    fn leader_of(&self, e: &Entry) -> Option<LeaderView> {
        decode_leader(&self.leader, &e.value, e.created, e.modified)
    }

    fn control_key(&self, key: ControlKey) -> String {
        Key::Control(key).path(&self.inner.options.prefix, &self.scope)
    }

    /// The current control key's version after a failed compare.
    fn current_version(resp: &TxnResponse) -> Option<Version> {
        got(resp).map(|kv| Version::new(kv.mod_revision().unsigned_abs()))
    }
}

#[async_trait]
impl Dcs for EtcdDcs {
    fn scope(&self) -> &str {
        &self.scope
    }

    fn bounds(&self) -> StoreBounds {
        let max_expiry = self.inner.ttl + EXPIRY_SLACK;
        let member_expiry = self.inner.lease_ttl(self.inner.member_lease()) + EXPIRY_SLACK;
        StoreBounds { ttl: self.inner.ttl, max_expiry, watch_latency: WATCH_LATENCY, member_expiry }
    }

    fn configured_ttl(&self) -> Duration {
        self.inner.configured_ttl
    }

    async fn load(&self) -> Result<ClusterView, DcsError> {
        self.ready()?;
        self.inner.mirror.start(&self.inner);
        if !self.linearize.swap(false, Ordering::SeqCst) {
            let seen = self.inner.seen.load(Ordering::SeqCst);
            if let Some((revision, entries)) = self.inner.mirror.snapshot(&self.base, seen, MIRROR_WAIT).await {
                let entries = entries
                    .into_iter()
                    .map(|(key, e)| (RawEntry { key, bytes: e.value, version: Version::new(e.modified) }, e.created));
                return Ok(self.view_of(Some(revision), entries));
            }
        }
        self.inner.count();
        let what = format!("load {}", self.base);
        let resp = timed(Op::Read, &what, self.limit(), || async {
            self.inner.etcd.kv_client().get(self.base.as_str(), Some(GetOptions::new().with_prefix())).await
        })
        .await?;
        let revision = resp.header().map(|h| h.revision().unsigned_abs());
        if let Some(r) = revision {
            // Later reads from the mirror must not go back before this one.
            self.inner.saw(r);
        }
        // A key that is not UTF-8 is none of ours (it cannot parse as a scope key).
        let entries = resp
            .kvs()
            .iter()
            .filter(|kv| std::str::from_utf8(kv.key()).is_ok())
            .map(|kv| (kv_entry(kv), kv.create_revision().unsigned_abs()));
        Ok(self.view_of(revision, entries))
    }

    async fn acquire(&self, record: &LeaderRecord) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        self.ready()?;
        let started = now();
        // A process lease that carries no member keys is not kept alive while this process
        // leads nothing and may have lapsed: make sure it lives before a key is attached to
        // it. A keep-alive of a lapsed lease fails and the keeper grants a new one, which the
        // second keep-alive then refreshes. One or two requests more per acquisition.
        let first = match &self.inner.members {
            Some(_) => Some(self.inner.keep_alive_regranting().await.map_err(|e| match e {
                DcsError::LeaseLost { message } => {
                    DcsError::unavailable(format!("{message}; a new lease is being granted, retry"))
                }
                other => other,
            })?),
            None => None,
        };
        let lease = self.inner.current_lease()?;
        let txn = Txn::new()
            .when([Compare::create_revision(self.leader.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(self.leader.as_str(), record.encode(), Some(PutOptions::new().with_lease(lease.id)))])
            .or_else([TxnOp::get(self.leader.as_str(), None)]);
        let what = format!("acquire {}", self.leader);
        let (kept, resp) = match first {
            Some(ack) => (Ok(ack), self.txn(Op::Write, &what, txn).await),
            None => tokio::join!(self.inner.keep_alive(), self.txn(Op::Write, &what, txn)),
        };
        let resp = match resp {
            Err(DcsError::LeaseLost { message }) => {
                // The txn failed as a whole: nothing was written. The keeper grants a new lease.
                self.inner.poke(Which::Process);
                return Err(DcsError::unavailable(format!("{message}; a new lease is being granted, retry")));
            }
            other => other?,
        };
        if !resp.succeeded() {
            return Ok(CasOutcome::Lost(leader_view(got(&resp))));
        }
        lock(&self.inner.held).insert(self.leader.clone());
        let revision = revision(&resp);
        let expires = match kept {
            Ok(ack) if ack.id == lease.id => ack.expires,
            _ => lock(&self.inner.lease).expires,
        };
        Ok(CasOutcome::Won(Lease {
            record: record.clone(),
            epoch: Epoch(revision),
            version: Version::new(revision),
            valid_for: expires.saturating_duration_since(started),
        }))
    }

    async fn renew(&self, held: &Lease) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        self.ready()?;
        self.inner.mirror.start(&self.inner);
        let started = now();
        let lease = self.inner.current_lease().map_err(|_| {
            lock(&self.inner.held).remove(&self.leader);
            DcsError::lease_lost("the process lease expired, and the leader key with it")
        })?;
        if !self.linearize.load(Ordering::SeqCst) {
            let seen = self.inner.seen.load(Ordering::SeqCst);
            if let Some(entry) = self.inner.mirror.get(&self.leader, seen, MIRROR_WAIT).await {
                return self.renew_by_keep_alive(held, lease.id, started, entry).await;
            }
        }
        let key = self.leader.as_str();
        let txn = Txn::new()
            .when([
                Compare::create_revision(key, CompareOp::Equal, to_i64(held.epoch.0)),
                Compare::value(key, CompareOp::Equal, held.record.encode()),
                Compare::lease(key, CompareOp::Equal, lease.id),
            ])
            .and_then([TxnOp::get(key, None)])
            .or_else([TxnOp::get(key, None)]);
        let what = format!("renew {key}");
        let (kept, resp) = tokio::join!(self.inner.keep_alive(), self.txn(Op::Read, &what, txn));
        let resp = resp?;
        if !resp.succeeded() {
            lock(&self.inner.held).remove(&self.leader);
            self.inner.poke(Which::Process);
            return Ok(CasOutcome::Lost(leader_view(got(&resp))));
        }
        let ack = match kept {
            Ok(ack) if ack.id == lease.id => ack,
            Ok(_) | Err(DcsError::LeaseLost { .. }) => {
                lock(&self.inner.held).remove(&self.leader);
                return Err(DcsError::lease_lost("the process lease expired, and the leader key with it"));
            }
            Err(e) => return Err(e),
        };
        let version = got(&resp).map(|kv| kv.mod_revision().unsigned_abs()).unwrap_or_default();
        Ok(CasOutcome::Won(Lease {
            record: held.record.clone(),
            epoch: held.epoch,
            version: Version::new(version),
            valid_for: ack.expires.saturating_duration_since(started),
        }))
    }

    async fn release(&self, held: &Lease) -> Result<CasOutcome<(), Option<LeaderView>>, DcsError> {
        self.ready()?;
        let key = self.leader.as_str();
        let txn = Txn::new()
            .when([
                Compare::create_revision(key, CompareOp::Equal, to_i64(held.epoch.0)),
                Compare::value(key, CompareOp::Equal, held.record.encode()),
            ])
            .and_then([TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]);
        let what = format!("release {key}");
        let resp = self.txn(Op::Write, &what, txn).await?;
        if !resp.succeeded() {
            return Ok(CasOutcome::Lost(leader_view(got(&resp))));
        }
        lock(&self.inner.held).remove(&self.leader);
        // Background keep-alives resume once no leader key is held.
        self.inner.poke(Which::Process);
        Ok(CasOutcome::Won(()))
    }

    async fn publish_member(&self, member: &MemberRecord) -> Result<(), DcsError> {
        self.ready()?;
        if let Err(e) = MemberRecord::decode("member", &member.encode()) {
            return Err(DcsError::fatal(format!("member record cannot be published: {}", e.reason)));
        }
        let key = Key::Member(member.name.clone()).path(&self.inner.options.prefix, &self.scope);
        let bytes = member.encode();
        let which = self.inner.member_lease();
        let lease = self.inner.current(which)?;
        let unchanged =
            lock(&self.inner.published).get(&key).is_some_and(|p| p.bytes == bytes && p.written_with == Some(lease.id));
        if unchanged {
            return Ok(());
        }
        // Claimed before the put, so the keeper's re-publish running meanwhile does not write
        // the same bytes a second time; owed again (re-written by the keeper) if it fails.
        let claim = Published { bytes: bytes.clone(), written_with: Some(lease.id) };
        lock(&self.inner.published).insert(key.clone(), claim);
        let result = self.inner.put_member(&key, bytes.clone(), lease.id).await;
        if result.is_err()
            && let Some(entry) = lock(&self.inner.published).get_mut(&key)
            && entry.bytes == bytes
            && entry.written_with == Some(lease.id)
        {
            entry.written_with = None;
        }
        match result {
            Err(DcsError::LeaseLost { message }) => {
                self.inner.poke(which);
                Err(DcsError::unavailable(format!("{message}; the keeper re-writes the member under a new lease")))
            }
            other => other,
        }
    }

    async fn write_control(
        &self,
        key: ControlKey,
        expect: Expect,
        value: &[u8],
    ) -> Result<CasOutcome<Version, Option<Version>>, DcsError> {
        self.ready()?;
        let path = self.control_key(key);
        let compare = match &expect {
            Expect::Absent => Compare::create_revision(path.as_str(), CompareOp::Equal, 0),
            Expect::Version(v) => {
                let Some(n) = v.as_u64().filter(|n| *n > 0) else {
                    return Ok(CasOutcome::Lost(self.control_version(&path).await?));
                };
                Compare::mod_revision(path.as_str(), CompareOp::Equal, to_i64(n))
            }
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(path.as_str(), value.to_vec(), None)])
            .or_else([TxnOp::get(path.as_str(), None)]);
        let resp = self.txn(Op::Write, &format!("write {path}"), txn).await?;
        if resp.succeeded() {
            Ok(CasOutcome::Won(Version::new(revision(&resp))))
        } else {
            Ok(CasOutcome::Lost(Self::current_version(&resp)))
        }
    }

    async fn delete_control(
        &self,
        key: ControlKey,
        expect: &Version,
    ) -> Result<CasOutcome<(), Option<Version>>, DcsError> {
        self.ready()?;
        let path = self.control_key(key);
        let Some(n) = expect.as_u64().filter(|n| *n > 0) else {
            return Ok(CasOutcome::Lost(self.control_version(&path).await?));
        };
        let txn = Txn::new()
            .when([Compare::mod_revision(path.as_str(), CompareOp::Equal, to_i64(n))])
            .and_then([TxnOp::delete(path.as_str(), None)])
            .or_else([TxnOp::get(path.as_str(), None)]);
        let resp = self.txn(Op::Write, &format!("delete {path}"), txn).await?;
        if resp.succeeded() { Ok(CasOutcome::Won(())) } else { Ok(CasOutcome::Lost(Self::current_version(&resp))) }
    }

    async fn watch(&self, after: Option<&Version>, timeout: Duration) -> Result<WatchEvent, DcsError> {
        self.ready()?;
        self.inner.mirror.start(&self.inner);
        let deadline = now() + timeout;
        if let Some(wakes) = self.inner.mirror.subscribe(&self.inner.options.prefix, &self.scope) {
            return Ok(self.wait_for_wake(wakes, after, deadline).await);
        }
        self.watch_stream(after, deadline).await
    }
}

impl EtcdDcs {
    /// Waits on the mirror for a leader or control key change after `after`.
    async fn wait_for_wake(
        &self,
        mut wakes: tokio::sync::watch::Receiver<crate::mirror::Wake>,
        after: Option<&Version>,
        deadline: tokio::time::Instant,
    ) -> WatchEvent {
        let floor = after.and_then(Version::as_u64).unwrap_or_else(|| wakes.borrow().revision);
        loop {
            let wake = *wakes.borrow_and_update();
            if wake.revision > floor {
                return if wake.resync { WatchEvent::Resync } else { WatchEvent::Changed };
            }
            match tokio::time::timeout_at(deadline, wakes.changed()).await {
                Err(_) => return WatchEvent::Timeout,
                Ok(Err(_)) => return WatchEvent::Resync,
                Ok(Ok(())) => {}
            }
        }
    }

    /// A watch stream of its own on the scope (without a live mirror).
    async fn watch_stream(
        &self,
        after: Option<&Version>,
        deadline: tokio::time::Instant,
    ) -> Result<WatchEvent, DcsError> {
        // Events after `floor` count. The stream starts *at* `floor` (already seen by the
        // caller's load), so a compaction past it is reported even when etcd still holds
        // `floor + 1`. Unknown until a stream reports it when the caller gave no revision.
        let mut floor = after.and_then(Version::as_u64);
        let mut last_error: Option<DcsError> = None;
        loop {
            if now() >= deadline {
                return match last_error {
                    Some(e) if floor.is_none() => Err(e),
                    _ => Ok(WatchEvent::Timeout),
                };
            }
            let mut options = WatchOptions::new().with_prefix();
            if let Some(rev) = floor {
                options = options.with_start_revision(to_i64(rev.max(1)));
            }
            self.inner.count();
            let opened = tokio::time::timeout_at(deadline, async {
                self.inner.etcd.watch_client().watch(self.base.as_str(), Some(options)).await
            })
            .await;
            let mut stream = match opened {
                Err(_) => continue,
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) if is_compacted(&e) => return Ok(WatchEvent::Resync),
                Ok(Err(e)) => {
                    let pause = if never_sent(&e) { Duration::from_millis(20) } else { WATCH_RETRY };
                    let e = classify(Op::Read, &format!("watch {}", self.base), e);
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    last_error = Some(e);
                    tokio::time::sleep_until(deadline.min(now() + pause)).await;
                    continue;
                }
            };
            loop {
                let message = match tokio::time::timeout_at(deadline, stream.message()).await {
                    Err(_) => return Ok(WatchEvent::Timeout),
                    Ok(m) => m,
                };
                match message {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 {
                            return Ok(WatchEvent::Resync);
                        }
                        let newer = |e: &etcd_client::Event| {
                            e.kv().is_none_or(|kv| floor.is_none_or(|f| kv.mod_revision().unsigned_abs() > f))
                        };
                        if resp.events().iter().any(newer) {
                            return Ok(WatchEvent::Changed);
                        }
                        if resp.canceled() {
                            if resp.cancel_reason().contains("compacted") {
                                return Ok(WatchEvent::Resync);
                            }
                            tracing::debug!(reason = resp.cancel_reason(), "etcd cancelled a watch; re-opening");
                            break;
                        }
                        if floor.is_none()
                            && let Some(h) = resp.header()
                        {
                            // Nothing up to the stream's creation revision is ours to report.
                            floor = Some(h.revision().unsigned_abs());
                        }
                    }
                    Ok(None) => break,
                    Err(e) if is_compacted(&e) => return Ok(WatchEvent::Resync),
                    Err(e) => {
                        tracing::debug!(error = %e, "etcd watch stream broke; re-opening from the same revision");
                        last_error = Some(classify(Op::Read, &format!("watch {}", self.base), e));
                        break;
                    }
                }
            }
            tokio::time::sleep_until(deadline.min(now() + WATCH_RETRY)).await;
        }
    }
}

/// What [`EtcdDcs::remove_garbage_leader`] did: the core crate's type, named here too so
/// existing callers keep compiling.
pub use leasehold::GarbageRemoval;

impl EtcdDcs {
    /// Deletes the scope's leader key if it does not decode as a leader record, by a
    /// compare-and-delete on exactly the bytes and revision read: the operator's way out of
    /// a hand-written or corrupted key that blocks elections (no member may take a key that
    /// exists). A valid record, of any member, is never touched.
    pub async fn remove_garbage_leader(&self) -> Result<GarbageRemoval, DcsError> {
        self.ready()?;
        let key = self.leader.as_str();
        self.inner.count();
        let resp = timed(Op::Read, &format!("read {key}"), self.limit(), || async {
            self.inner.etcd.kv_client().get(key, None).await
        })
        .await?;
        let Some(kv) = resp.kvs().first() else { return Ok(GarbageRemoval::Absent) };
        if LeaderRecord::decode(key, kv.value()).is_ok() {
            return Ok(GarbageRemoval::Valid);
        }
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key, CompareOp::Equal, kv.mod_revision()),
                Compare::value(key, CompareOp::Equal, kv.value().to_vec()),
            ])
            .and_then([TxnOp::delete(key, None)]);
        let resp = self.txn(Op::Write, &format!("delete undecodable {key}"), txn).await?;
        Ok(if resp.succeeded() {
            GarbageRemoval::Removed { version: Version::new(kv.mod_revision().unsigned_abs()) }
        } else {
            GarbageRemoval::Changed
        })
    }

    /// A control key's current version (`None` when absent), by a linearizable read.
    async fn control_version(&self, path: &str) -> Result<Option<Version>, DcsError> {
        self.inner.count();
        let resp = timed(Op::Read, &format!("read {path}"), self.limit(), || async {
            self.inner.etcd.kv_client().get(path, None).await
        })
        .await?;
        Ok(resp.kvs().first().map(|kv| Version::new(kv.mod_revision().unsigned_abs())))
    }
}
