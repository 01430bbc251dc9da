//! [`MemoryStore`]: the reference model behind the async [`Dcs`] trait.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::conformance::{Client, Harness};
use super::fault::{DcsCall, Fault, FaultPlan};
use super::model::{MemoryModel, SessionId};
use crate::dcs::{CasOutcome, Dcs, Expect, Lease, StoreBounds, WatchEvent};
use crate::error::DcsError;
use crate::record::{ClusterView, ControlKey, Key, LeaderRecord, LeaderView, MemberRecord, Version};
use crate::time::{Clock, Instant};

/// How long after a change a watch returns, at most, in this store (it wakes on the write
/// itself, or on the instant a session is due to expire).
const WATCH_LATENCY: Duration = Duration::from_millis(50);

/// An in-process consensus store: a [`MemoryModel`] shared by any number of
/// [`MemoryClient`]s, each with its own session, as separate processes would have.
///
/// Cloning gives another handle on the same store. `now` for the model comes from the
/// store's [`Clock`]; waiting (watches, keep-alives) uses tokio's timer, so use
/// [`TokioClock`](super::TokioClock) unless the test drives the model by hand.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    model: Mutex<MemoryModel>,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    /// The model's revision after the last operation; watches wait on it.
    revision: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, MemoryModel> {
        self.model.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the model at the clock's current reading, then wakes watchers if anything
    /// was written. The clock is read under the lock so the model sees time move forward.
    fn with<R>(&self, f: impl FnOnce(&mut MemoryModel, Instant) -> R) -> R {
        let mut model = self.lock();
        let now = self.clock.now();
        let result = f(&mut model, now);
        let revision = model.revision();
        drop(model);
        self.revision.send_if_modified(|seen| {
            let changed = *seen != revision;
            *seen = revision;
            changed
        });
        result
    }

    fn bounds(&self) -> StoreBounds {
        // A keep-alive in flight when the holder dies can extend its keys by one period.
        let max_expiry = self.ttl + keep_alive_period(self.ttl);
        StoreBounds { ttl: self.ttl, max_expiry, watch_latency: WATCH_LATENCY, member_expiry: max_expiry }
    }
}

fn keep_alive_period(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(1))
}

impl MemoryStore {
    /// An empty store whose sessions live `ttl` after their last keep-alive.
    pub fn new(clock: Arc<dyn Clock>, ttl: Duration) -> Self {
        let (revision, _) = watch::channel(0);
        MemoryStore { shared: Arc::new(Shared { model: Mutex::new(MemoryModel::new()), clock, ttl, revision }) }
    }

    /// A new client with its own session, kept alive while the client or any of its scope
    /// handles exists: on every call, and by a background task every ttl/3 when a tokio
    /// runtime is running.
    pub fn client(&self) -> MemoryClient {
        let session = self.shared.with(|m, now| m.open_session(self.shared.ttl, now));
        let inner = Arc::new(ClientShared {
            store: self.shared.clone(),
            session: AtomicU64::new(session.0),
            stopped: AtomicBool::new(false),
            keep_alive: Mutex::new(None),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // The test kit stands in for a real client library, whose keep-alive runs in the
            // background; it is the one place outside the driver that spawns. The task holds
            // only a weak reference and ends when the client and its handles are gone.
            let weak = Arc::downgrade(&inner);
            let period = keep_alive_period(self.shared.ttl);
            let task = runtime.spawn(async move {
                loop {
                    tokio::time::sleep(period).await;
                    let Some(client) = weak.upgrade() else { return };
                    client.keep_alive();
                }
            });
            *inner.keep_alive.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        }
        MemoryClient { inner }
    }

    /// The timing promises of every handle on this store.
    pub fn bounds(&self) -> StoreBounds {
        self.shared.bounds()
    }

    /// Stores `bytes` at `key` of `scope` unconditionally and bound to no session
    /// (garbage injection). Returns the new revision.
    pub fn put_raw(&self, scope: &str, key: &Key, bytes: Vec<u8>) -> u64 {
        self.shared.with(|m, _| m.put_raw(scope, key, bytes))
    }

    /// Drops all history up to the current revision: watches from an older revision report
    /// [`WatchEvent::Resync`].
    pub fn compact(&self) {
        self.shared.with(|m, _| m.compact(m.revision()));
    }

    /// The current global revision.
    pub fn revision(&self) -> u64 {
        self.shared.with(|m, _| m.revision())
    }

    /// Runs `f` on the model at the clock's current reading (to inspect it, or to move a
    /// session's expiry); watchers are woken if `f` wrote anything.
    pub fn with_model<R>(&self, f: impl FnOnce(&mut MemoryModel, Instant) -> R) -> R {
        self.shared.with(f)
    }
}

#[async_trait]
impl Harness for MemoryStore {
    async fn open_client(&self) -> Result<Box<dyn Client>, DcsError> {
        Ok(Box::new(self.client()))
    }

    async fn write_garbage(&self, scope: &str, key: &Key) -> Result<(), DcsError> {
        self.put_raw(scope, key, b"\xff\x00 not a record {".to_vec());
        Ok(())
    }

    async fn compact(&self) -> Result<bool, DcsError> {
        MemoryStore::compact(self);
        Ok(true)
    }
}

struct ClientShared {
    store: Arc<Shared>,
    /// The current session; replaced (under the model lock) once a call finds it expired.
    session: AtomicU64,
    /// Set by `crash` and `close`: every call fails from then on.
    stopped: AtomicBool,
    keep_alive: Mutex<Option<JoinHandle<()>>>,
}

impl ClientShared {
    fn session(&self) -> SessionId {
        SessionId(self.session.load(Ordering::SeqCst))
    }

    fn keep_alive(&self) {
        if !self.stopped.load(Ordering::SeqCst) {
            // A dead session is noticed and replaced by the next call that needs it.
            let _ = self.store.with(|m, now| m.keep_alive(self.session(), now));
        }
    }

    /// The session for a write bound to it. If it expired, the error is reported once and
    /// a new session is opened for later calls, as a real client re-establishes one.
    fn live_session(&self, model: &mut MemoryModel, now: Instant) -> Result<SessionId, DcsError> {
        let session = self.session();
        match model.keep_alive(session, now) {
            Ok(_) => Ok(session),
            Err(e) => {
                let fresh = model.open_session(self.store.ttl, now);
                self.session.store(fresh.0, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(task) = self.keep_alive.lock().unwrap_or_else(PoisonError::into_inner).take() {
            task.abort();
        }
    }
}

impl Drop for ClientShared {
    fn drop(&mut self) {
        if let Some(task) = self.keep_alive.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            task.abort();
        }
    }
}

/// One process's connection to a [`MemoryStore`]: one session shared by every scope handle.
pub struct MemoryClient {
    inner: Arc<ClientShared>,
}

impl MemoryClient {
    /// A [`Dcs`] handle on `scope`, sharing this client's session.
    pub fn scope(&self, scope: impl Into<String>) -> MemoryDcs {
        MemoryDcs { scope: scope.into(), client: self.inner.clone(), faults: Arc::default() }
    }

    /// The client's current session.
    pub fn session(&self) -> SessionId {
        self.inner.session()
    }

    /// Dies like a killed process: keep-alives stop, nothing is cleaned up, the session's
    /// keys expire after the ttl. Calls through this client's handles fail with
    /// [`DcsError::Unavailable`] from now on.
    pub async fn crash(self) {
        self.inner.stop();
    }

    /// Shuts down cleanly: the session is closed and its keys are deleted at once. Calls
    /// through this client's handles fail with [`DcsError::Unavailable`] from now on.
    pub async fn close(self) {
        self.inner.stop();
        let session = self.inner.session();
        self.inner.store.with(|m, now| m.close_session(session, now));
    }
}

#[async_trait]
impl Client for MemoryClient {
    fn scope(&self, scope: &str) -> Arc<dyn Dcs> {
        Arc::new(MemoryClient::scope(self, scope))
    }

    async fn crash(self: Box<Self>) {
        MemoryClient::crash(*self).await;
    }
}

/// A [`MemoryClient`]'s handle on one scope. Clones share the handle's injected faults.
///
/// Behaves as the model says (see [`MemoryModel`]), plus: every call refreshes the
/// client's session; the first session-bound call after the session expired reports
/// [`DcsError::LeaseLost`] and the client opens a new session; `watch(None, ..)` waits for
/// changes after the call; a foreign (non-numeric) version makes `watch` report `Resync`.
#[derive(Clone)]
pub struct MemoryDcs {
    scope: String,
    client: Arc<ClientShared>,
    faults: Arc<Mutex<FaultPlan>>,
}

impl MemoryDcs {
    /// Makes the next `calls` calls through this handle (and its clones) fail with `fault`.
    pub fn fail_next(&self, calls: u32, fault: Fault) {
        self.plan().add(None, calls, fault);
    }

    /// Makes the next `calls` calls of kind `call` fail with `fault`.
    pub fn fail_next_of(&self, call: DcsCall, calls: u32, fault: Fault) {
        self.plan().add(Some(call), calls, fault);
    }

    /// Drops every pending injected fault.
    pub fn clear_faults(&self) {
        self.plan().clear();
    }

    /// The session this handle's writes are bound to.
    pub fn session(&self) -> SessionId {
        self.client.session()
    }

    fn plan(&self) -> MutexGuard<'_, FaultPlan> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The checks every call makes before reaching the model: a stopped client fails, an
    /// injected fault that does not apply fails. Returns the fault to report afterwards.
    fn admit(&self, call: DcsCall) -> Result<Option<Fault>, DcsError> {
        if self.client.stopped.load(Ordering::SeqCst) {
            return Err(DcsError::unavailable("memory client crashed or closed"));
        }
        match self.plan().take(call) {
            Some(fault) if !fault.applies() => Err(fault.error(call)),
            fault => Ok(fault),
        }
    }

    /// Runs one call against the model, keeping the session alive first.
    fn call<T>(
        &self,
        call: DcsCall,
        f: impl FnOnce(&ClientShared, &mut MemoryModel, Instant) -> Result<T, DcsError>,
    ) -> Result<T, DcsError> {
        let fault = self.admit(call)?;
        let result = self.client.store.with(|model, now| {
            // Every call doubles as a keep-alive; a dead session is handled by `live_session`.
            let _ = model.keep_alive(self.client.session(), now);
            f(&self.client, model, now)
        });
        match fault {
            Some(fault) => Err(fault.error(call)),
            None => result,
        }
    }
}

#[async_trait]
impl Dcs for MemoryDcs {
    fn scope(&self) -> &str {
        &self.scope
    }

    fn bounds(&self) -> StoreBounds {
        self.client.store.bounds()
    }

    fn configured_ttl(&self) -> Duration {
        // The reference store enforces exactly the ttl it was built with.
        self.client.store.ttl
    }

    async fn load(&self) -> Result<ClusterView, DcsError> {
        self.call(DcsCall::Load, |_, m, now| Ok(m.load(&self.scope, now)))
    }

    async fn acquire(&self, record: &LeaderRecord) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        self.call(DcsCall::Acquire, |c, m, now| {
            let session = c.live_session(m, now)?;
            m.acquire(&self.scope, session, record, now)
        })
    }

    async fn renew(&self, lease: &Lease) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        self.call(DcsCall::Renew, |c, m, now| {
            let session = c.live_session(m, now)?;
            m.renew(&self.scope, session, lease, now)
        })
    }

    async fn release(&self, lease: &Lease) -> Result<CasOutcome<(), Option<LeaderView>>, DcsError> {
        self.call(DcsCall::Release, |_, m, now| Ok(m.release(&self.scope, lease, now)))
    }

    async fn publish_member(&self, member: &MemberRecord) -> Result<(), DcsError> {
        self.call(DcsCall::PublishMember, |c, m, now| {
            let session = c.live_session(m, now)?;
            m.publish_member(&self.scope, session, member, now)
        })
    }

    async fn write_control(
        &self,
        key: ControlKey,
        expect: Expect,
        value: &[u8],
    ) -> Result<CasOutcome<Version, Option<Version>>, DcsError> {
        self.call(DcsCall::WriteControl, |_, m, now| Ok(m.write_control(&self.scope, key, &expect, value, now)))
    }

    async fn delete_control(
        &self,
        key: ControlKey,
        expect: &Version,
    ) -> Result<CasOutcome<(), Option<Version>>, DcsError> {
        self.call(DcsCall::DeleteControl, |_, m, now| Ok(m.delete_control(&self.scope, key, expect, now)))
    }

    async fn watch(&self, after: Option<&Version>, timeout: Duration) -> Result<WatchEvent, DcsError> {
        if let Some(fault) = self.admit(DcsCall::Watch)? {
            // A watch changes nothing, so "applied, reply lost" is just the error.
            return Err(fault.error(DcsCall::Watch));
        }
        let store = &self.client.store;
        // Subscribe before reading the model so no write between the two is missed.
        let mut changes = store.revision.subscribe();
        let after = store.with(|m, now| {
            let _ = m.keep_alive(self.client.session(), now);
            after.cloned().unwrap_or_else(|| Version::new(m.revision()))
        });
        let wait = async {
            loop {
                changes.borrow_and_update();
                let (event, next_expiry, now) =
                    store.with(|m, now| (m.poll_watch(&self.scope, &after, now), m.next_expiry(), now));
                if let Some(event) = event {
                    return event;
                }
                // Expiry happens when time passes, not on a write: wake when the next one is due.
                let expiry = next_expiry.map(|at| at.saturating_since(now) + Duration::from_millis(1));
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            // The store is gone; nothing more can happen.
                            std::future::pending::<()>().await;
                        }
                    }
                    () = tokio::time::sleep(expiry.unwrap_or(Duration::MAX)), if expiry.is_some() => {}
                }
            }
        };
        Ok(tokio::time::timeout(timeout, wait).await.unwrap_or(WatchEvent::Timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::ManualClock;

    const TTL: Duration = Duration::from_secs(6);

    fn record(member: &str, token: &str) -> LeaderRecord {
        LeaderRecord { member: member.into(), token: token.into(), api_url: None, conn_url: None }
    }

    fn manual_store() -> (Arc<ManualClock>, MemoryStore) {
        let clock = Arc::new(ManualClock::new(Instant::ZERO));
        (clock.clone(), MemoryStore::new(clock, TTL))
    }

    #[tokio::test]
    async fn reply_lost_applies_the_write_and_reports_unknown() {
        let (_, store) = manual_store();
        let dcs = store.client().scope("s");
        dcs.fail_next_of(DcsCall::Acquire, 1, Fault::ReplyLost);
        let err = dcs.acquire(&record("a", "t1")).await.unwrap_err();
        assert!(err.is_outcome_unknown(), "{err}");
        let view = dcs.load().await.unwrap();
        assert_eq!(view.leader.unwrap().record.token, "t1", "the write happened");
    }

    #[tokio::test]
    async fn other_faults_apply_nothing_and_count_down() {
        let (_, store) = manual_store();
        let dcs = store.client().scope("s");
        dcs.fail_next(2, Fault::Unavailable);
        assert!(dcs.acquire(&record("a", "t1")).await.unwrap_err().is_retryable());
        assert!(dcs.load().await.unwrap_err().is_retryable());
        assert!(dcs.load().await.unwrap().leader.is_none(), "not applied");
        dcs.fail_next_of(DcsCall::Renew, 1, Fault::LeaseLost);
        dcs.fail_next_of(DcsCall::Load, 1, Fault::RequestLost);
        dcs.fail_next_of(DcsCall::Watch, 1, Fault::Fatal);
        let lease = dcs.acquire(&record("a", "t2")).await.unwrap().won().unwrap();
        assert!(dcs.renew(&lease).await.unwrap_err().is_lease_lost());
        assert!(dcs.renew(&lease).await.unwrap().is_won(), "the session itself was not touched");
        assert!(dcs.load().await.unwrap_err().is_outcome_unknown());
        assert!(dcs.watch(None, Duration::ZERO).await.unwrap_err().is_fatal());
        // Faults belong to the handle: another handle on the same scope is unaffected.
        dcs.fail_next(1, Fault::Unavailable);
        let other = store.client().scope("s");
        assert!(other.load().await.is_ok());
        dcs.clear_faults();
        assert!(dcs.load().await.is_ok());
    }

    #[tokio::test]
    async fn crash_leaves_keys_to_expire_and_close_deletes_them() {
        let (clock, store) = manual_store();
        let observer = store.client().scope("s");
        let a = store.client();
        let lease = a.scope("s").acquire(&record("a", "t")).await.unwrap().won().unwrap();
        assert_eq!(lease.valid_for, TTL);
        let handle = a.scope("s");
        a.crash().await;
        assert!(handle.load().await.unwrap_err().is_retryable());
        clock.advance(TTL - Duration::from_millis(1));
        assert!(observer.load().await.unwrap().leader.is_some());
        clock.advance(Duration::from_millis(1));
        assert!(observer.load().await.unwrap().leader.is_none());

        let b = store.client();
        b.scope("s").publish_member(&MemberRecord::new("b")).await.unwrap();
        b.close().await;
        assert!(observer.load().await.unwrap().members.is_empty());
    }

    #[tokio::test]
    async fn an_expired_session_is_reported_once_then_replaced() {
        let (clock, store) = manual_store();
        let client = store.client();
        let dcs = client.scope("s");
        let first = client.session();
        clock.advance(TTL);
        let err = dcs.publish_member(&MemberRecord::new("a")).await.unwrap_err();
        assert!(err.is_lease_lost(), "{err}");
        assert_ne!(client.session(), first);
        dcs.publish_member(&MemberRecord::new("a")).await.unwrap();
        assert!(dcs.load().await.unwrap().member("a").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_background_keep_alive_holds_keys_while_the_client_lives() {
        let store = MemoryStore::new(Arc::new(crate::testkit::TokioClock::new()), TTL);
        let client = store.client();
        let dcs = client.scope("s");
        dcs.publish_member(&MemberRecord::new("a")).await.unwrap();
        let observer = store.client().scope("s");
        tokio::time::sleep(TTL * 5).await;
        assert!(observer.load().await.unwrap().member("a").is_some());
        drop(dcs);
        drop(client);
        tokio::time::sleep(TTL + TTL / 2).await;
        assert!(observer.load().await.unwrap().member("a").is_none(), "a dropped client stops renewing");
    }

    #[tokio::test(start_paused = true)]
    async fn watch_wakes_on_writes_and_on_expiry() {
        let store = MemoryStore::new(Arc::new(crate::testkit::TokioClock::new()), TTL);
        let watcher = store.client().scope("s");
        let writer = store.client();
        let rev = watcher.load().await.unwrap().revision;
        assert_eq!(watcher.watch(rev.as_ref(), Duration::from_secs(1)).await.unwrap(), WatchEvent::Timeout);
        writer.scope("s").publish_member(&MemberRecord::new("w")).await.unwrap();
        assert_eq!(watcher.watch(rev.as_ref(), Duration::from_secs(1)).await.unwrap(), WatchEvent::Changed);
        let rev = watcher.load().await.unwrap().revision;
        writer.crash().await;
        // No write happens: the member's expiry must wake the watch by itself.
        let event = watcher.watch(rev.as_ref(), TTL * 2).await.unwrap();
        assert_eq!(event, WatchEvent::Changed);
        assert!(watcher.load().await.unwrap().members.is_empty());
        store.compact();
        assert_eq!(watcher.watch(rev.as_ref(), Duration::from_secs(1)).await.unwrap(), WatchEvent::Resync);
    }
}
