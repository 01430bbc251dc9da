//! The behaviour suite of [`Election`], run on any store through a
//! conformance [`Harness`]: a backend runs it with
//! `run_election_suite(&harness).await` and asserts on the report.
//!
//! The timing is derived from the ttl the harness's clients were built with
//! ([`Dcs::configured_ttl`]); waits from the longer of it and the lease the store enforces.
//! No check asserts on elapsed time: they assert order (a term's lost signal fires before
//! another member's campaign returns), exclusivity and epochs. Waits are bounded by
//! [`PATIENCE_TTLS`] ttls only so that a broken store fails instead of hanging.
#![allow(clippy::disallowed_methods)] // spawns campaign tasks

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, watch};

use super::conformance::{Client, Harness};
use crate::config::Timing;
use crate::dcs::{CasOutcome, Dcs, Lease, StoreBounds, WatchEvent};
use crate::election::{Election, Leader, Leadership};
use crate::error::DcsError;
use crate::record::{ClusterView, ControlKey, LeaderRecord, LeaderView, MemberRecord, Version};

/// Two members campaign at once; only one leads until it resigns.
pub const EXCLUSIVE_CAMPAIGN: &str = "exclusive campaign";
/// A resign hands the key to the other campaigner, and the same handle campaigns again.
pub const RESIGN_HANDS_OVER: &str = "resign hands over and the handle campaigns again";
/// A leader cut from the store fires its lost signal before another member's campaign returns.
pub const LOST_BEFORE_TAKEOVER: &str = "lost signal fires before another member leads";
/// An observer that never campaigns sees every term, in order, with increasing epochs.
pub const OBSERVE_SEES_EVERY_CHANGE: &str = "observe sees every change in order";

/// Every check, in the order [`run_election_suite`] runs them.
pub const ALL_ELECTION_CHECKS: [&str; 4] =
    [EXCLUSIVE_CAMPAIGN, RESIGN_HANDS_OVER, LOST_BEFORE_TAKEOVER, OBSERVE_SEES_EVERY_CHANGE];

/// Bound on every wait, in ttls.
pub const PATIENCE_TTLS: u32 = 20;

/// The checks that passed (a failing check panics with its name and what it saw).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElectionReport {
    /// Names of the checks that passed, in order.
    pub passed: Vec<&'static str>,
}

/// A timing that fits a store lease of `ttl`: loop_wait ttl/5, retry_timeout 3 ttl/10,
/// safety_margin ttl/5 (valid for any ttl of a few hundred milliseconds or more).
pub fn timing_for(ttl: Duration) -> Timing {
    Timing { ttl, loop_wait: ttl / 5, retry_timeout: ttl * 3 / 10, safety_margin: ttl / 5, ..Timing::default() }
}

/// Runs every check on `harness`, each in a scope of its own.
pub async fn run_election_suite(harness: &dyn Harness) -> ElectionReport {
    let suite = Suite::new(harness).await;
    let mut report = ElectionReport::default();
    exclusive_campaign(&suite).await;
    report.passed.push(EXCLUSIVE_CAMPAIGN);
    tracing::info!(check = EXCLUSIVE_CAMPAIGN, "election suite: passed");
    resign_hands_over(&suite).await;
    report.passed.push(RESIGN_HANDS_OVER);
    tracing::info!(check = RESIGN_HANDS_OVER, "election suite: passed");
    lost_before_takeover(&suite).await;
    report.passed.push(LOST_BEFORE_TAKEOVER);
    tracing::info!(check = LOST_BEFORE_TAKEOVER, "election suite: passed");
    observe_sees_every_change(&suite).await;
    report.passed.push(OBSERVE_SEES_EVERY_CHANGE);
    tracing::info!(check = OBSERVE_SEES_EVERY_CHANGE, "election suite: passed");
    report
}

struct Suite<'a> {
    harness: &'a dyn Harness,
    prefix: String,
    timing: Timing,
    patience: Duration,
    /// Clients opened by the suite, kept alive until it ends.
    clients: Mutex<Vec<Box<dyn Client>>>,
}

impl<'a> Suite<'a> {
    async fn new(harness: &'a dyn Harness) -> Suite<'a> {
        let probe = harness.open_client().await.expect("the store accepts a client");
        let dcs = probe.scope("probe");
        let timing = timing_for(dcs.configured_ttl());
        timing.validate().expect("the clients' ttl gives a valid timing");
        let longest = dcs.configured_ttl().max(dcs.bounds().ttl);
        let prefix = format!("election-{:x}", RandomState::new().hash_one(0u8) & 0xffff_ffff);
        Suite { harness, prefix, timing, patience: longest * PATIENCE_TTLS, clients: Mutex::new(vec![probe]) }
    }

    async fn dcs(&self, scope: &str) -> Arc<dyn Dcs> {
        let (client, dcs) = self.client(scope).await;
        self.clients.lock().unwrap_or_else(PoisonError::into_inner).push(client);
        dcs
    }

    /// A client of its own (own session) and its handle on `scope`.
    async fn client(&self, scope: &str) -> (Box<dyn Client>, Arc<dyn Dcs>) {
        let client = self.harness.open_client().await.expect("the store accepts a client");
        let dcs = client.scope(&format!("{}-{scope}", self.prefix));
        (client, dcs)
    }

    fn election(&self, dcs: Arc<dyn Dcs>, member: &str) -> Election {
        Election::new(dcs, member, self.timing.clone()).expect("valid election")
    }

    async fn within<T>(&self, what: &str, f: impl std::future::Future<Output = T>) -> T {
        match tokio::time::timeout(self.patience, f).await {
            Ok(v) => v,
            Err(_) => panic!("election suite: {what}: nothing within {:?}", self.patience),
        }
    }

    /// Waits until `observer` shows `term` as the holder.
    async fn seen(&self, observer: &mut watch::Receiver<Option<Leader>>, term: &Leadership) {
        let want = Some(Leader { holder: term.member().to_string(), epoch: term.epoch() });
        self.within("observe shows the new leader", observer.wait_for(|l| *l == want)).await.expect("observer runs");
    }
}

/// Campaigns in a task; the returned term is checked against every term still live.
fn campaign_task(election: Arc<Election>, live: Arc<Mutex<Vec<Leadership>>>) -> tokio::task::JoinHandle<Leadership> {
    tokio::spawn(async move {
        let term = election.campaign().await.expect("campaign succeeds");
        let mut live = live.lock().unwrap_or_else(PoisonError::into_inner);
        for other in live.iter() {
            assert!(
                other.is_lost(),
                "{EXCLUSIVE_CAMPAIGN}: {} got epoch {} while {}'s term under epoch {} was still live",
                term.member(),
                term.epoch(),
                other.member(),
                other.epoch()
            );
            assert!(other.epoch() < term.epoch(), "epochs increase: {} then {}", other.epoch(), term.epoch());
        }
        live.push(term.clone());
        term
    })
}

async fn exclusive_campaign(suite: &Suite<'_>) {
    let (a, b) = (suite.dcs("exclusive").await, suite.dcs("exclusive").await);
    let (a, b) = (Arc::new(suite.election(a, "a")), Arc::new(suite.election(b, "b")));
    let mut observer = a.observe();
    let live = Arc::new(Mutex::new(Vec::new()));
    let mut ta = campaign_task(a.clone(), live.clone());
    let mut tb = campaign_task(b.clone(), live.clone());
    let first = suite
        .within("one of two campaigns returns", async {
            tokio::select! {
                r = &mut ta => (r.expect("campaign task"), true),
                r = &mut tb => (r.expect("campaign task"), false),
            }
        })
        .await;
    let (winner_term, a_won) = first;
    suite.seen(&mut observer, &winner_term).await;
    // Several renewal rounds: the other campaign must still be waiting.
    tokio::time::sleep(suite.timing.ttl).await;
    let (winner, loser_task) = if a_won { (&a, &tb) } else { (&b, &ta) };
    assert!(!loser_task.is_finished(), "{EXCLUSIVE_CAMPAIGN}: both campaigns returned while the first term was live");
    assert!(!winner_term.is_lost(), "{EXCLUSIVE_CAMPAIGN}: the winner's term ended without cause");
    winner.resign().await;
    assert!(winner_term.is_lost(), "{EXCLUSIVE_CAMPAIGN}: resign returned before the term's lost signal fired");
    let loser_term = suite
        .within("the other campaign returns after resign", async {
            if a_won { (&mut tb).await } else { (&mut ta).await }
        })
        .await
        .expect("campaign task");
    assert!(loser_term.epoch() > winner_term.epoch(), "{EXCLUSIVE_CAMPAIGN}: epochs increase");
    a.resign().await;
    b.resign().await;
}

async fn resign_hands_over(suite: &Suite<'_>) {
    let (a, b) = (suite.dcs("handover").await, suite.dcs("handover").await);
    let (a, b) = (Arc::new(suite.election(a, "a")), Arc::new(suite.election(b, "b")));
    let live = Arc::new(Mutex::new(Vec::new()));
    let first = suite.within("a campaigns alone", campaign_task(a.clone(), live.clone())).await.expect("task");
    assert_eq!(first.member(), "a");
    let tb = campaign_task(b.clone(), live.clone());
    a.resign().await;
    assert!(first.is_lost(), "{RESIGN_HANDS_OVER}: resign returned with the term still live");
    let second = suite.within("b takes over after a resigns", tb).await.expect("task");
    assert_eq!(second.member(), "b");
    // The same handle joins again and waits for b.
    let ta = campaign_task(a.clone(), live.clone());
    b.resign().await;
    let third = suite.within("a leads again after b resigns", ta).await.expect("task");
    assert_eq!(third.member(), "a", "{RESIGN_HANDS_OVER}");
    assert!(first.epoch() < second.epoch() && second.epoch() < third.epoch(), "{RESIGN_HANDS_OVER}: epochs increase");
    // Resigning twice, or without a campaign, is harmless.
    a.resign().await;
    a.resign().await;
    assert!(third.is_lost());
}

async fn lost_before_takeover(suite: &Suite<'_>) {
    let (client, dcs) = suite.client("cut").await;
    let cut = Arc::new(Cuttable::new(dcs));
    let a = Arc::new(suite.election(cut.clone(), "a"));
    let b = Arc::new(suite.election(suite.dcs("cut").await, "b"));
    let live = Arc::new(Mutex::new(Vec::new()));
    let first = suite.within("a campaigns alone", campaign_task(a.clone(), live.clone())).await.expect("task");
    let order = Arc::new(AtomicU64::new(0));
    let lost_at = {
        let (order, lost) = (order.clone(), first.lost());
        tokio::spawn(async move {
            lost.await;
            order.fetch_add(1, Ordering::SeqCst) + 1
        })
    };
    let tb = {
        let (b, order) = (b.clone(), order.clone());
        let live = live.clone();
        tokio::spawn(async move {
            let term = campaign_task(b, live).await.expect("task");
            (term, order.fetch_add(1, Ordering::SeqCst) + 1)
        })
    };
    // a can no longer reach the store: its calls hang, and its session is no longer kept
    // alive (a backend's keep-alive runs beside the node's renewals).
    cut.cut();
    client.crash().await;
    let (second, took_over_at) = suite.within("b takes over from a cut leader", tb).await.expect("task");
    let lost_at = suite.within("a's lost signal", lost_at).await.expect("task");
    assert!(
        lost_at < took_over_at,
        "{LOST_BEFORE_TAKEOVER}: b's campaign returned (#{took_over_at}) before a's lost signal fired (#{lost_at})"
    );
    assert!(second.epoch() > first.epoch(), "{LOST_BEFORE_TAKEOVER}: epochs increase");
    b.resign().await;
    a.resign().await;
}

async fn observe_sees_every_change(suite: &Suite<'_>) {
    let (a, b) = (suite.dcs("observe").await, suite.dcs("observe").await);
    let (a, b) = (Arc::new(suite.election(a, "a")), Arc::new(suite.election(b, "b")));
    let watcher = suite.election(suite.dcs("observe").await, "watcher");
    let mut rx = watcher.observe();
    let seen = Arc::new(Mutex::new(Vec::<Leader>::new()));
    let stop = Arc::new(Notify::new());
    let collector = {
        let (mut rx, seen, stop) = (rx.clone(), seen.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    () = stop.notified() => return,
                }
                if let Some(l) = rx.borrow_and_update().clone() {
                    seen.lock().unwrap_or_else(PoisonError::into_inner).push(l);
                }
            }
        })
    };
    let live = Arc::new(Mutex::new(Vec::new()));
    let mut terms = Vec::new();
    for member in [&a, &b, &a] {
        let term = suite.within("campaign", campaign_task(member.clone(), live.clone())).await.expect("task");
        suite.seen(&mut rx, &term).await;
        // The collector too, before the term ends: a watch keeps only the latest value, so a
        // collector the scheduler left behind would miss a term that came and went.
        let want = Leader { holder: term.member().to_string(), epoch: term.epoch() };
        let collected = async {
            while seen.lock().unwrap_or_else(PoisonError::into_inner).last() != Some(&want) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        suite.within("the collector records the new leader", collected).await;
        member.resign().await;
        terms.push(want);
    }
    stop.notify_one();
    collector.await.expect("collector");
    let seen = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(seen, terms, "{OBSERVE_SEES_EVERY_CHANGE}: every term once, in order");
    assert!(seen.windows(2).all(|w| w[0].epoch < w[1].epoch), "{OBSERVE_SEES_EVERY_CHANGE}: epochs increase");
}

/// A scope handle that can be cut from the store: once cut, every call waits forever, as in a
/// partition (the driver turns that into unknown outcomes after `retry_timeout`). A backend
/// keeps its session alive beside the node's renewals, so the check also crashes the client.
struct Cuttable {
    inner: Arc<dyn Dcs>,
    cut: watch::Sender<bool>,
}

impl Cuttable {
    fn new(inner: Arc<dyn Dcs>) -> Self {
        Cuttable { inner, cut: watch::channel(false).0 }
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }

    async fn gate(&self) {
        if *self.cut.borrow() {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl Dcs for Cuttable {
    fn scope(&self) -> &str {
        self.inner.scope()
    }
    fn bounds(&self) -> StoreBounds {
        self.inner.bounds()
    }
    fn configured_ttl(&self) -> Duration {
        self.inner.configured_ttl()
    }
    async fn load(&self) -> Result<ClusterView, DcsError> {
        self.gate().await;
        self.inner.load().await
    }
    async fn acquire(&self, record: &LeaderRecord) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        self.gate().await;
        self.inner.acquire(record).await
    }
    async fn renew(&self, lease: &Lease) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        self.gate().await;
        self.inner.renew(lease).await
    }
    async fn release(&self, lease: &Lease) -> Result<CasOutcome<(), Option<LeaderView>>, DcsError> {
        self.gate().await;
        self.inner.release(lease).await
    }
    async fn publish_member(&self, member: &MemberRecord) -> Result<(), DcsError> {
        self.gate().await;
        self.inner.publish_member(member).await
    }
    async fn write_control(
        &self,
        key: ControlKey,
        expect: crate::dcs::Expect,
        value: &[u8],
    ) -> Result<CasOutcome<Version, Option<Version>>, DcsError> {
        self.gate().await;
        self.inner.write_control(key, expect, value).await
    }
    async fn delete_control(
        &self,
        key: ControlKey,
        expect: &Version,
    ) -> Result<CasOutcome<(), Option<Version>>, DcsError> {
        self.gate().await;
        self.inner.delete_control(key, expect).await
    }
    async fn watch(&self, after: Option<&Version>, timeout: Duration) -> Result<WatchEvent, DcsError> {
        self.gate().await;
        self.inner.watch(after, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::testkit::{MemoryStore, TokioClock};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_suite_passes_on_the_reference_store() {
        let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("info").try_init();
        let store = MemoryStore::new(Arc::new(TokioClock::new()), Duration::from_secs(1));
        let report = run_election_suite(&store).await;
        assert_eq!(report.passed, ALL_ELECTION_CHECKS);
    }

    #[tokio::test]
    async fn bad_input_is_a_clear_error() {
        let store = MemoryStore::new(Arc::new(TokioClock::new()), Duration::from_secs(1));
        let dcs: Arc<dyn Dcs> = Arc::new(store.client().scope("s"));
        let e = Election::new(dcs.clone(), "", timing_for(Duration::from_secs(1))).unwrap_err();
        assert_eq!(e, crate::ElectionError::EmptyName);
        let bad = Timing { ttl: Duration::from_secs(10), ..Timing::default() };
        match Election::new(dcs, "a", bad).unwrap_err() {
            crate::ElectionError::Timing(t) => assert_eq!(t.field, "ttl"),
            other => panic!("expected a timing error, got {other}"),
        }
    }
}
