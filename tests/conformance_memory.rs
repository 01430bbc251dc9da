//! The conformance suite against the in-memory reference store, and proof that the suite
//! fails stores that break the contract.
#![cfg(feature = "testkit")]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leasehold::testkit::conformance::{self, Client, Harness, SuiteReport, run_suite};
use leasehold::testkit::{MemoryClient, MemoryDcs, MemoryStore, TokioClock};
use leasehold::{
    CasOutcome, ClusterView, ControlKey, Dcs, DcsError, Epoch, Expect, Key, LeaderRecord, LeaderView, Lease,
    MemberRecord, StoreBounds, Version, WatchEvent,
};

fn store(ttl: Duration) -> MemoryStore {
    MemoryStore::new(Arc::new(TokioClock::new()), ttl)
}

fn assert_complete(report: &SuiteReport) {
    assert_eq!(report.passed, conformance::ALL_CHECKS.to_vec(), "{report}");
    assert!(report.skipped.is_empty(), "{report}");
}

/// Real time and a 2 s ttl: the suite waits for real expiry, as it will against servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_in_real_time() {
    let report = run_suite(&store(Duration::from_secs(2))).await;
    println!("{report}");
    assert_complete(&report);
}

/// Paused time: the same suite, with virtual time jumping over every wait.
#[tokio::test(start_paused = true)]
async fn memory_store_passes_in_paused_time() {
    let report = run_suite(&store(Duration::from_secs(10))).await;
    assert_complete(&report);
}

/// What a deliberately broken store gets wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    /// acquire always wins, overwriting the holder.
    AcquireAlwaysWins,
    /// renew ignores its condition.
    RenewAlwaysWins,
    /// watch returns Changed at once.
    WatchAlwaysFires,
    /// load drops members.
    LoadForgetsMembers,
    /// The session outlives a crash by far more than max_expiry promises.
    ExpiryTooLate,
    /// Keys expire well before the ttl.
    ExpiryTooEarly,
    /// write_control ignores the expected version.
    BlindControlWrites,
}

struct BrokenHarness {
    store: MemoryStore,
    bug: Bug,
}

struct BrokenClient {
    inner: MemoryClient,
    bug: Bug,
}

struct BrokenDcs {
    inner: MemoryDcs,
    bug: Bug,
}

#[async_trait]
impl Harness for BrokenHarness {
    async fn open_client(&self) -> Result<Box<dyn Client>, DcsError> {
        Ok(Box::new(BrokenClient { inner: self.store.client(), bug: self.bug }))
    }
    async fn write_garbage(&self, scope: &str, key: &Key) -> Result<(), DcsError> {
        self.store.write_garbage(scope, key).await
    }
    async fn compact(&self) -> Result<bool, DcsError> {
        Harness::compact(&self.store).await
    }
}

#[async_trait]
impl Client for BrokenClient {
    fn scope(&self, scope: &str) -> Arc<dyn Dcs> {
        Arc::new(BrokenDcs { inner: self.inner.scope(scope), bug: self.bug })
    }
    async fn crash(self: Box<Self>) {
        if self.bug == Bug::ExpiryTooLate {
            // Keep the client (and its background keep-alive) running forever.
            std::mem::forget(self.inner);
        } else {
            self.inner.crash().await;
        }
    }
}

#[async_trait]
impl Dcs for BrokenDcs {
    fn scope(&self) -> &str {
        self.inner.scope()
    }
    fn bounds(&self) -> StoreBounds {
        let mut bounds = self.inner.bounds();
        if self.bug == Bug::ExpiryTooEarly {
            // Promise four times the ttl the store really has.
            bounds.ttl *= 4;
            bounds.max_expiry *= 4;
        }
        bounds
    }
    fn configured_ttl(&self) -> Duration {
        self.inner.configured_ttl()
    }
    async fn load(&self) -> Result<ClusterView, DcsError> {
        let mut view = self.inner.load().await?;
        if self.bug == Bug::LoadForgetsMembers {
            view.members.clear();
        }
        Ok(view)
    }
    async fn acquire(&self, record: &LeaderRecord) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        let outcome = self.inner.acquire(record).await?;
        if self.bug == Bug::AcquireAlwaysWins
            && let CasOutcome::Lost(Some(current)) = outcome
        {
            return Ok(CasOutcome::Won(Lease {
                record: record.clone(),
                epoch: Epoch(current.epoch.0 + 1),
                version: current.version,
                valid_for: self.bounds().ttl,
            }));
        }
        Ok(outcome)
    }
    async fn renew(&self, lease: &Lease) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        let outcome = self.inner.renew(lease).await;
        if self.bug == Bug::RenewAlwaysWins {
            return Ok(CasOutcome::Won(lease.clone()));
        }
        outcome
    }
    async fn release(&self, lease: &Lease) -> Result<CasOutcome<(), Option<LeaderView>>, DcsError> {
        self.inner.release(lease).await
    }
    async fn publish_member(&self, member: &MemberRecord) -> Result<(), DcsError> {
        self.inner.publish_member(member).await
    }
    async fn write_control(
        &self,
        key: ControlKey,
        expect: Expect,
        value: &[u8],
    ) -> Result<CasOutcome<Version, Option<Version>>, DcsError> {
        if self.bug == Bug::BlindControlWrites
            && let Some(current) = self.inner.load().await?.control_version(key).cloned()
        {
            return self.inner.write_control(key, Expect::Version(current), value).await;
        }
        self.inner.write_control(key, expect, value).await
    }
    async fn delete_control(
        &self,
        key: ControlKey,
        expect: &Version,
    ) -> Result<CasOutcome<(), Option<Version>>, DcsError> {
        self.inner.delete_control(key, expect).await
    }
    async fn watch(&self, after: Option<&Version>, timeout: Duration) -> Result<WatchEvent, DcsError> {
        if self.bug == Bug::WatchAlwaysFires {
            return Ok(WatchEvent::Changed);
        }
        self.inner.watch(after, timeout).await
    }
}

/// Runs the suite against a broken store in paused time; returns the panic message.
async fn failure_of(bug: Bug) -> String {
    let harness = BrokenHarness { store: store(Duration::from_secs(10)), bug };
    // Spawned so the suite's panic is caught as a JoinError instead of failing this test.
    #[allow(clippy::disallowed_methods)]
    let run = tokio::spawn(async move { run_suite(&harness).await });
    match run.await {
        Ok(report) => panic!("the suite passed a store with bug {bug:?}:\n{report}"),
        Err(e) => {
            assert!(e.is_panic(), "{e}");
            let payload = e.into_panic();
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        }
    }
}

async fn assert_caught(bug: Bug, check: &str) {
    let message = failure_of(bug).await;
    assert!(message.contains(&format!("`{check}` failed")), "bug {bug:?} was caught by the wrong check: {message}");
    assert!(message.contains("expected:") && message.contains("seen:"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn suite_catches_acquire_that_always_wins() {
    assert_caught(Bug::AcquireAlwaysWins, conformance::EXCLUSIVE_ACQUISITION).await;
}

#[tokio::test(start_paused = true)]
async fn suite_catches_renew_that_ignores_its_condition() {
    assert_caught(Bug::RenewAlwaysWins, conformance::ONLY_THE_HOLDER).await;
}

#[tokio::test(start_paused = true)]
async fn suite_catches_blind_control_writes() {
    assert_caught(Bug::BlindControlWrites, conformance::CONTROL_KEY_CAS).await;
}

#[tokio::test(start_paused = true)]
async fn suite_catches_a_watch_that_always_fires() {
    assert_caught(Bug::WatchAlwaysFires, conformance::WATCH_QUIET).await;
}

#[tokio::test(start_paused = true)]
async fn suite_catches_a_load_that_drops_members() {
    assert_caught(Bug::LoadForgetsMembers, conformance::GARBAGE).await;
}

#[tokio::test(start_paused = true)]
async fn suite_catches_keys_that_outlive_a_crash() {
    let message = failure_of(Bug::ExpiryTooLate).await;
    // Three checks wait for a crash concurrently; whichever gives up first reports it.
    let caught = [conformance::EXPIRY_WITHIN_MAX, conformance::MEMBER_EXPIRES_WITH_OWNER, conformance::MANY_SCOPES]
        .iter()
        .any(|c| message.contains(&format!("`{c}` failed")));
    assert!(caught, "{message}");
}

#[tokio::test(start_paused = true)]
async fn suite_catches_keys_that_expire_before_the_ttl() {
    let message = failure_of(Bug::ExpiryTooEarly).await;
    let caught = [conformance::EXPIRY_NOT_BEFORE_TTL, conformance::MANY_SCOPES]
        .iter()
        .any(|c| message.contains(&format!("`{c}` failed")));
    assert!(caught, "{message}");
}
