//! The conformance suite: the [`Dcs`] contract as executable checks, run by every backend.
//!
//! A backend implements [`Harness`] (how to open independent clients, write garbage and
//! compact history in its store) and calls [`run_suite`]:
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use leasehold::testkit::conformance::run_suite;
//! use leasehold::testkit::{MemoryStore, TokioClock};
//!
//! #[tokio::main]
//! async fn main() {
//!     // A backend passes its own `Harness` here (a real server, killed on drop).
//!     let harness = MemoryStore::new(Arc::new(TokioClock::new()), Duration::from_secs(2));
//!     let report = run_suite(&harness).await;
//!     println!("{report}");
//! }
//! ```
//!
//! # What the suite needs from the test
//!
//! * A tokio runtime with the time driver. Waiting uses `tokio::time`, so the suite also runs
//!   in paused time against [`MemoryStore`](super::MemoryStore); real servers need real time.
//! * A store where it may create scopes freely. Scope names are `lh<random>-<n>-<check>`
//!   (lowercase letters, digits and `-`, at most 32 characters), unique per run, so re-runs
//!   against a persistent server do not collide. Keys are left behind (control keys never
//!   expire); use a throw-away server or prefix.
//! * About a dozen clients at once (8 race for one key), each as a separate process would be.
//!   A crashed client is never used again.
//!
//! # Timing
//!
//! Checks are semantic, not speed assertions. The only timing properties checked are the
//! contract's: the leader key exists at least `max(ttl, valid_for)` after the last renew call
//! *started* (a hard bound: measured so that a slow machine can only make it pass), and keys
//! of a crashed client are gone no later than `max_expiry + max(2 s, max_expiry / 2)` after
//! the crash returned (a soft bound with generous slack for noisy machines). Watches must
//! wake within `max(5 s, 10 * watch_latency)`. The checks that wait for expiry run
//! concurrently, so a run takes roughly `1.5 * ttl + 2 * max_expiry` plus a few seconds.
//!
//! # Points backends tend to miss
//!
//! * Versions returned by writes must equal the versions `load` reports for the same state
//!   (leader key after acquire and after renew, control keys after every write).
//! * `Lost` carries the current state: an acquire that loses names the holder (epoch and
//!   token); a failed control write carries the current version, `None` when absent.
//! * A watch on a quiet scope returns [`WatchEvent::Timeout`], not `Changed` or `Resync`,
//!   even while a scope whose name extends it (`<scope>0`) is written: watch `<scope>/`,
//!   not `<scope>`. A change made between `load` and `watch` must still wake the watch.
//! * The Resync check writes to the scope between the `load` and [`Harness::compact`], so
//!   the watched revision is strictly older than the compaction point.
//! * Acquire over a garbage leader key may win or be `Lost(None)`, never `Lost(Some)`.
//! * After a crash the same member name re-acquires through a new client; `Lost` is
//!   retried for up to `max_expiry + slack` (Consul's lock-delay, Kubernetes observers).
//! * Epochs must not restart when the leader key is deleted (a counter kept *on* the leader
//!   key, such as Kubernetes' `leaseTransitions`, does). [`Harness::delete_leader_key`] lets
//!   the check delete it behind the backend's back, also while it is held.

use std::collections::BTreeSet;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::join_all;

use crate::dcs::{CasOutcome, Dcs, Expect, Lease, StoreBounds, WatchEvent};
use crate::error::DcsError;
use crate::record::{
    ClusterView, ConfigRecord, ControlKey, Epoch, FailoverRecord, HistoryEntry, HistoryRecord, InitializeRecord, Key,
    LeaderRecord, LeaderView, MemberRecord, Record, StatusRecord, SyncRecord,
};

/// How the suite reaches a backend's store.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// A new independent client, as a separate process would have: its own connection and lease/session.
    async fn open_client(&self) -> Result<Box<dyn Client>, DcsError>;
    /// Writes bytes that are not a valid record at `key` of `scope`, bypassing the backend's encoding.
    async fn write_garbage(&self, scope: &str, key: &Key) -> Result<(), DcsError>;
    /// Makes the store drop history so that a watch from a revision before this call must report Resync.
    /// Returns Ok(false) when the store cannot do that (the check is then skipped and reported as skipped).
    async fn compact(&self) -> Result<bool, DcsError>;
    /// Deletes the leader key of `scope` behind the backend's back, as an operator's
    /// `kubectl delete lease` or `consul kv delete` would; succeeds when it is absent.
    /// Returns Ok(false) when the harness cannot (the default): the check
    /// [`EPOCHS_SURVIVE_DELETION`] then relies on `release`, which deletes the key on stores
    /// where that is what release does (etcd, ZooKeeper, the in-memory store).
    async fn delete_leader_key(&self, _scope: &str) -> Result<bool, DcsError> {
        Ok(false)
    }
}

/// One process's connection to the store, as opened by [`Harness::open_client`].
#[async_trait::async_trait]
pub trait Client: Send + Sync {
    /// A handle on `scope` sharing this client's connection and lease/session.
    fn scope(&self, scope: &str) -> Arc<dyn Dcs>;
    /// Stops renewing and drops the connection without any cleanup, as a killed process.
    async fn crash(self: Box<Self>);
}

/// Concurrent candidates: exactly one acquire wins, the others are `Lost` naming the winner.
pub const EXCLUSIVE_ACQUISITION: &str = "exclusive acquisition under concurrent candidates";
/// Control keys: create-only twice, stale version, stale delete: all `Lost` with the current version.
pub const CONTROL_KEY_CAS: &str = "compare-and-set conflicts on every control key";
/// Release and renew with a lease that is not the holder's are `Lost` and change nothing.
pub const ONLY_THE_HOLDER: &str = "release and renew only by the holder";
/// Epochs strictly increase, also when the same member name re-acquires after a release.
pub const EPOCHS_INCREASE: &str = "epochs strictly increase across acquisitions";
/// Epochs strictly increase when the leader key is deleted between acquisitions, or while it is held.
pub const EPOCHS_SURVIVE_DELETION: &str = "epochs keep increasing across deletion of the leader key";
/// Garbage is reported in `problems`, treated as absent, and control keys holding it can be replaced by CAS.
pub const GARBAGE: &str = "garbage is reported, treated as absent and replaceable";
/// A watch on a quiet scope times out: writes in another scope (even one whose name extends it) do not wake it.
pub const WATCH_QUIET: &str = "watch ignores other scopes and times out when nothing changes";
/// A watch returns `Changed` for a change made before or during the call.
pub const WATCH_WAKES: &str = "watch wakes on a change";
/// After the store compacts history, a watch from an older revision returns at once:
/// `Resync`, or `Changed` from a client that kept the history (a watch-fed mirror).
pub const WATCH_RESYNC: &str = "watch reports Resync after compaction";
/// The leader key of a crashed holder outlives `max(ttl, valid_for)` from the last renew call.
pub const EXPIRY_NOT_BEFORE_TTL: &str = "leader key expires no earlier than ttl after the last renew";
/// The leader key of a crashed holder is gone within `max_expiry` (plus slack) after the crash.
pub const EXPIRY_WITHIN_MAX: &str = "leader key expires within max_expiry after a crash";
/// Once another holder exists, the old lease's renew and release are `Lost` (or `LeaseLost`).
pub const RENEW_AFTER_TAKEOVER: &str = "renew of a taken-over lease is Lost";
/// The same member name re-acquiring after expiry gets a greater epoch.
pub const EPOCH_AFTER_EXPIRY: &str = "epoch increases on re-acquisition after expiry";
/// A crashed client's member record vanishes within `member_expiry` (plus slack).
pub const MEMBER_EXPIRES_WITH_OWNER: &str = "member records expire with their owner";
/// A live but idle client's member record stays, for longer than the ttl.
pub const MEMBER_LIVES_WITH_OWNER: &str = "member records live while their idle owner lives";
/// One client holds and renews 50 scopes; its crash releases them all.
pub const MANY_SCOPES: &str = "many scopes on one client";

/// Every check, in the order reports list them.
pub const ALL_CHECKS: [&str; 16] = [
    EXCLUSIVE_ACQUISITION,
    CONTROL_KEY_CAS,
    ONLY_THE_HOLDER,
    EPOCHS_INCREASE,
    EPOCHS_SURVIVE_DELETION,
    GARBAGE,
    WATCH_QUIET,
    WATCH_WAKES,
    WATCH_RESYNC,
    EXPIRY_NOT_BEFORE_TTL,
    EXPIRY_WITHIN_MAX,
    RENEW_AFTER_TAKEOVER,
    EPOCH_AFTER_EXPIRY,
    MEMBER_EXPIRES_WITH_OWNER,
    MEMBER_LIVES_WITH_OWNER,
    MANY_SCOPES,
];

/// What a [`run_suite`] run checked. A failed check panics instead of being listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SuiteReport {
    /// Checks that passed, in [`ALL_CHECKS`] order.
    pub passed: Vec<&'static str>,
    /// Checks the store cannot take part in (for example compaction on ZooKeeper).
    pub skipped: Vec<&'static str>,
}

impl fmt::Display for SuiteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for name in &self.passed {
            writeln!(f, "passed:  {name}")?;
        }
        for name in &self.skipped {
            writeln!(f, "skipped: {name}")?;
        }
        Ok(())
    }
}

/// Runs every check; panics with the check's name and what was expected vs seen on the first failure.
///
/// Quick checks run one after another; the three that wait for keys to expire then run
/// concurrently. Transient [`DcsError::Unavailable`] errors (not applied) are retried a few
/// times; any other error fails the check that got it.
pub async fn run_suite(harness: &dyn Harness) -> SuiteReport {
    let suite = Suite::new(harness);
    tracing::info!(prefix = %suite.prefix, "conformance suite starting");
    exclusive_acquisition(&suite).await;
    control_key_cas(&suite).await;
    only_the_holder(&suite).await;
    epochs_increase(&suite).await;
    epochs_survive_deletion(&suite).await;
    garbage(&suite).await;
    watch(&suite).await;
    watch_resync(&suite).await;
    tokio::join!(leader_expiry(&suite), member_expiry(&suite), many_scopes(&suite));
    suite.into_report()
}

/// `Unavailable` means "not applied", so retrying is always safe; a few tries ride out a
/// hiccup of a real server without hiding a backend that is simply down.
const RETRIES: u32 = 5;
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long a watch on a quiet scope runs before it must report `Timeout`.
const QUIET_WATCH: Duration = Duration::from_secs(1);
/// Delay before a write that a running watch must notice.
const WRITE_DELAY: Duration = Duration::from_millis(200);
/// Scopes held by one client in [`MANY_SCOPES`].
const MANY: usize = 50;

/// Awaits a store call, retrying `Unavailable`; any other error fails `$check`.
macro_rules! call {
    ($check:expr, $what:expr, $op:expr) => {{
        let mut attempt = 0u32;
        loop {
            match $op.await {
                Err(e) if e.is_retryable() && attempt < RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => break $check.ok($what, other),
            }
        }
    }};
}

/// A named check: its failures panic with the name, what was expected and what was seen.
#[derive(Clone, Copy, Debug)]
struct Check(&'static str);

impl Check {
    #[track_caller]
    fn fail(self, expected: impl fmt::Display, seen: impl fmt::Debug) -> ! {
        panic!("conformance check `{}` failed\n  expected: {expected}\n  seen:     {seen:?}", self.0)
    }

    #[track_caller]
    fn ensure(self, ok: bool, expected: impl fmt::Display, seen: impl fmt::Debug) {
        if !ok {
            self.fail(expected, seen);
        }
    }

    #[track_caller]
    fn ok<T>(self, what: &str, result: Result<T, DcsError>) -> T {
        match result {
            Ok(v) => v,
            Err(e) => self.fail(format_args!("{what} to succeed"), e),
        }
    }
}

/// Per-run state: names, the harness, the report.
struct Suite<'h> {
    harness: &'h dyn Harness,
    prefix: String,
    next: AtomicU64,
    passed: Mutex<BTreeSet<&'static str>>,
    skipped: Mutex<BTreeSet<&'static str>>,
}

impl<'h> Suite<'h> {
    fn new(harness: &'h dyn Harness) -> Self {
        // Random per process (std seeds it from the OS) and per call: no clock, no rand crate.
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let random = RandomState::new().hash_one((std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed)));
        Suite {
            harness,
            prefix: format!("lh{:07x}", random & 0xfff_ffff),
            next: AtomicU64::new(0),
            passed: Mutex::default(),
            skipped: Mutex::default(),
        }
    }

    fn unique(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// A scope name no earlier run used.
    fn scope(&self, tag: &str) -> String {
        format!("{}-{}-{tag}", self.prefix, self.unique())
    }

    /// A leader record for `member` with a fresh token.
    fn leader(&self, member: &str) -> LeaderRecord {
        LeaderRecord {
            member: member.to_string(),
            token: format!("{}-t{}", self.prefix, self.unique()),
            api_url: Some(format!("http://127.0.0.1:8008/{member}")),
            conn_url: None,
        }
    }

    async fn client(&self, check: Check) -> Box<dyn Client> {
        call!(check, "open_client", self.harness.open_client())
    }

    fn passed(&self, check: Check) {
        self.passed.lock().unwrap_or_else(PoisonError::into_inner).insert(check.0);
        tracing::info!(check = check.0, "conformance check passed");
    }

    fn skipped(&self, check: Check, why: &str) {
        self.skipped.lock().unwrap_or_else(PoisonError::into_inner).insert(check.0);
        tracing::info!(check = check.0, why, "conformance check skipped");
    }

    fn into_report(self) -> SuiteReport {
        let passed = self.passed.into_inner().unwrap_or_else(PoisonError::into_inner);
        let skipped = self.skipped.into_inner().unwrap_or_else(PoisonError::into_inner);
        SuiteReport {
            passed: ALL_CHECKS.into_iter().filter(|c| passed.contains(c)).collect(),
            skipped: ALL_CHECKS.into_iter().filter(|c| skipped.contains(c)).collect(),
        }
    }
}

/// Loads through `dcs` until `seen` holds of the view or the store's
/// [`watch_latency`](StoreBounds::watch_latency) has passed, and returns the last view:
/// another client's write reaches a reader within that bound ([`Dcs::load`]).
async fn load_until(check: Check, dcs: &dyn Dcs, seen: impl Fn(&ClusterView) -> bool) -> ClusterView {
    let until = now() + dcs.bounds().watch_latency;
    loop {
        let view = call!(check, "load", dcs.load());
        if seen(&view) || now() >= until {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The caller's monotonic clock, as a driver reads it.
#[allow(clippy::disallowed_methods)] // The suite stands in for a driver: it times real waiting.
fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// How often to poll while waiting for expiry.
fn poll_interval(bounds: &StoreBounds) -> Duration {
    (bounds.ttl / 20).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

/// Tolerance on top of `max_expiry` for noisy machines.
fn expiry_slack(bounds: &StoreBounds) -> Duration {
    (bounds.max_expiry / 2).max(Duration::from_secs(2))
}

/// How long a watch may take to see a change: generous, this is not a speed test.
fn watch_timeout(bounds: &StoreBounds) -> Duration {
    (bounds.watch_latency * 10).max(Duration::from_secs(5))
}

/// A valid record for `key`, different for each `n`.
fn control_value(key: ControlKey, n: u64) -> Vec<u8> {
    match key {
        ControlKey::Config => ConfigRecord { maximum_lag_on_failover: Some(n), ..ConfigRecord::default() }.encode(),
        ControlKey::Failover => {
            FailoverRecord { leader: None, candidate: Some(format!("m{n}")), scheduled_at: None }.encode()
        }
        ControlKey::Sync => SyncRecord { leader: format!("m{n}"), sync_standby: vec!["s".into()] }.encode(),
        ControlKey::Initialize => InitializeRecord { system_id: format!("id-{n}") }.encode(),
        ControlKey::History => HistoryRecord::from(vec![HistoryEntry {
            timeline: n,
            position: n * 100,
            reason: "conformance".into(),
            leader: "m".into(),
            epoch: Epoch(n),
        }])
        .encode(),
        ControlKey::Status => StatusRecord { position: n, ..StatusRecord::default() }.encode(),
    }
}

/// The decoded value of a control key, re-encoded (encoding is deterministic, so this
/// equals the bytes written if the store returned them intact).
fn control_bytes(view: &ClusterView, key: ControlKey) -> Option<Vec<u8>> {
    match key {
        ControlKey::Config => view.config.as_ref().map(|v| v.value.encode()),
        ControlKey::Failover => view.failover.as_ref().map(|v| v.value.encode()),
        ControlKey::Sync => view.sync.as_ref().map(|v| v.value.encode()),
        ControlKey::Initialize => view.initialize.as_ref().map(|v| v.value.encode()),
        ControlKey::History => view.history.as_ref().map(|v| v.value.encode()),
        ControlKey::Status => view.status.as_ref().map(|v| v.value.encode()),
    }
}

fn holds(view: &ClusterView, record: &LeaderRecord) -> bool {
    view.leader.as_ref().is_some_and(|l| l.record.member == record.member && l.record.token == record.token)
}

fn member_names(view: &ClusterView) -> Vec<&str> {
    view.members.iter().map(|m| m.value.name.as_str()).collect()
}

/// Acquires and insists on winning.
async fn must_acquire(check: Check, dcs: &dyn Dcs, record: &LeaderRecord) -> Lease {
    match call!(check, "acquire", dcs.acquire(record)) {
        CasOutcome::Won(lease) => {
            check.ensure(
                lease.record == *record,
                format_args!("the lease to carry the record written ({record:?})"),
                &lease.record,
            );
            lease
        }
        lost => check.fail(format_args!("acquire of a free leader key by {} to win", record.member), lost),
    }
}

async fn must_release(check: Check, dcs: &dyn Dcs, lease: &Lease) {
    let outcome = call!(check, "release", dcs.release(lease));
    check.ensure(outcome.is_won(), "release by the holder to win", outcome);
}

async fn exclusive_acquisition(suite: &Suite<'_>) {
    let check = Check(EXCLUSIVE_ACQUISITION);
    let scope = suite.scope("excl");
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(suite.client(check).await);
    }
    let handles: Vec<Arc<dyn Dcs>> = clients.iter().map(|c| c.scope(&scope)).collect();
    let records: Vec<LeaderRecord> = (0..handles.len()).map(|i| suite.leader(&format!("m{i}"))).collect();
    let results = join_all(handles.iter().zip(&records).map(|(dcs, record)| dcs.acquire(record))).await;
    let outcomes: Vec<_> =
        results.into_iter().enumerate().map(|(i, r)| check.ok(&format!("acquire by candidate {i}"), r)).collect();
    let wins: Vec<(usize, Lease)> = (outcomes.iter().enumerate())
        .filter_map(|(i, o)| match o {
            CasOutcome::Won(lease) => Some((i, lease.clone())),
            CasOutcome::Lost(_) => None,
        })
        .collect();
    let [(winner, lease)] = &wins[..] else {
        check.fail("exactly one of 8 concurrent acquires to win", &outcomes);
    };
    let (winner, lease) = (*winner, lease.clone());
    check.ensure(lease.record == records[winner], "the lease to carry the winner's record", &lease.record);
    for (i, outcome) in outcomes.iter().enumerate().filter(|(i, _)| *i != winner) {
        let names_winner = matches!(outcome, CasOutcome::Lost(Some(v))
            if v.record.token == lease.record.token && v.record.member == lease.record.member && v.epoch == lease.epoch);
        check.ensure(
            names_winner,
            format_args!("candidate {i} to be Lost naming {} at epoch {}", lease.record.member, lease.epoch),
            outcome,
        );
    }

    let other = &handles[(winner + 1) % handles.len()];
    let expected = LeaderView { record: lease.record.clone(), epoch: lease.epoch, version: lease.version.clone() };
    let view = load_until(check, &**other, |view| view.leader.as_ref() == Some(&expected)).await;
    check.ensure(
        view.leader.as_ref() == Some(&expected),
        format_args!("load to show the leader key as written: {expected:?}"),
        &view.leader,
    );

    let again = suite.leader(&lease.record.member);
    let outcome = call!(check, "second acquire by the holder", handles[winner].acquire(&again));
    check.ensure(
        matches!(&outcome, CasOutcome::Lost(Some(v)) if v.record.token == lease.record.token),
        "a second acquire, even by the holder, to be Lost naming the first",
        &outcome,
    );

    let renewed = match call!(check, "renew", handles[winner].renew(&lease)) {
        CasOutcome::Won(l) if l.epoch == lease.epoch && l.record == lease.record && !l.valid_for.is_zero() => l,
        other => check.fail("renew by the holder to win with the same epoch and record, valid for > 0", other),
    };
    let renewed_shown = |view: &ClusterView| {
        view.leader.as_ref().is_some_and(|l| l.version == renewed.version && l.epoch == lease.epoch)
    };
    let view = load_until(check, &**other, renewed_shown).await;
    check.ensure(
        renewed_shown(&view),
        format_args!("load after renew to show epoch {} and the renewed version {:?}", lease.epoch, renewed.version),
        &view.leader,
    );
    must_release(check, &*handles[winner], &renewed).await;
    suite.passed(check);
}

async fn control_key_cas(suite: &Suite<'_>) {
    let check = Check(CONTROL_KEY_CAS);
    let scope = suite.scope("cas");
    let (a, b) = (suite.client(check).await, suite.client(check).await);
    let (da, db) = (a.scope(&scope), b.scope(&scope));
    for key in ControlKey::ALL {
        let name = key.name();
        let (first, second, third) = (control_value(key, 1), control_value(key, 2), control_value(key, 3));
        let v1 = match call!(check, "write_control", da.write_control(key, Expect::Absent, &first)) {
            CasOutcome::Won(v) => v,
            other => check.fail(format_args!("a create-only write of absent `{name}` to win"), other),
        };
        let outcome = call!(check, "write_control", db.write_control(key, Expect::Absent, &second));
        check.ensure(
            outcome == CasOutcome::Lost(Some(v1.clone())),
            format_args!("a second create-only write of `{name}` to be Lost(Some({v1:?}))"),
            &outcome,
        );
        let v2 = match call!(check, "write_control", db.write_control(key, Expect::Version(v1.clone()), &second)) {
            CasOutcome::Won(v) if v != v1 => v,
            other => check.fail(format_args!("a write of `{name}` at its current version to win a new version"), other),
        };
        let outcome = call!(check, "write_control", da.write_control(key, Expect::Version(v1.clone()), &third));
        check.ensure(
            outcome == CasOutcome::Lost(Some(v2.clone())),
            format_args!("a write of `{name}` at the stale version {v1:?} to be Lost(Some({v2:?}))"),
            &outcome,
        );
        let outcome = call!(check, "delete_control", da.delete_control(key, &v1));
        check.ensure(
            outcome == CasOutcome::Lost(Some(v2.clone())),
            format_args!("a delete of `{name}` at the stale version {v1:?} to be Lost(Some({v2:?}))"),
            &outcome,
        );
        let view = call!(check, "load", da.load());
        check.ensure(
            view.control_version(key) == Some(&v2) && control_bytes(&view, key).as_ref() == Some(&second),
            format_args!("load to show `{name}` at {v2:?} holding {:?}", String::from_utf8_lossy(&second)),
            (view.control_version(key), control_bytes(&view, key).map(|b| String::from_utf8_lossy(&b).into_owned())),
        );
        check.ensure(view.problems.is_empty(), "no decode problems", &view.problems);
        let outcome = call!(check, "delete_control", db.delete_control(key, &v2));
        check.ensure(outcome.is_won(), format_args!("a delete of `{name}` at its current version to win"), &outcome);
        let outcome = call!(check, "delete_control", da.delete_control(key, &v2));
        check.ensure(
            outcome == CasOutcome::Lost(None),
            format_args!("a delete of absent `{name}` to be Lost(None)"),
            &outcome,
        );
        let outcome = call!(check, "write_control", da.write_control(key, Expect::Version(v2.clone()), &third));
        check.ensure(
            outcome == CasOutcome::Lost(None),
            format_args!("a versioned write of absent `{name}` to be Lost(None)"),
            &outcome,
        );
        let view = load_until(check, &*db, |view| view.control_version(key).is_none()).await;
        check.ensure(
            view.control_version(key).is_none(),
            format_args!("`{name}` to be gone after its delete"),
            view.control_version(key),
        );
    }
    suite.passed(check);
}

async fn only_the_holder(suite: &Suite<'_>) {
    let check = Check(ONLY_THE_HOLDER);
    let scope = suite.scope("holder");
    let (a, b) = (suite.client(check).await, suite.client(check).await);
    let (da, db) = (a.scope(&scope), b.scope(&scope));
    let lease = must_acquire(check, &*da, &suite.leader("a")).await;
    let forgeries = [
        ("another member's record at the holder's epoch", Lease { record: suite.leader("b"), ..lease.clone() }),
        (
            "the holder's name with another token",
            Lease { record: LeaderRecord { token: suite.leader("a").token, ..lease.record.clone() }, ..lease.clone() },
        ),
        (
            "the holder's record at another epoch",
            Lease { epoch: Epoch(lease.epoch.0.wrapping_add(1)), ..lease.clone() },
        ),
    ];
    for (what, forged) in &forgeries {
        for (who, dcs) in [("another client", &db), ("the holder's client", &da)] {
            let outcome = call!(check, "release", dcs.release(forged));
            check.ensure(
                matches!(&outcome, CasOutcome::Lost(Some(v)) if v.record.token == lease.record.token),
                format_args!("release by {who} with {what} to be Lost naming the holder"),
                &outcome,
            );
            let outcome = dcs.renew(forged).await;
            check.ensure(
                matches!(&outcome, Ok(CasOutcome::Lost(_))) || matches!(&outcome, Err(e) if e.is_lease_lost()),
                format_args!("renew by {who} with {what} to be Lost"),
                &outcome,
            );
        }
    }
    let untouched =
        |view: &ClusterView| holds(view, &lease.record) && view.leader.as_ref().is_some_and(|l| l.epoch == lease.epoch);
    let view = load_until(check, &*db, untouched).await;
    check.ensure(untouched(&view), "the holder's key to be untouched by the forged calls", &view.leader);
    must_release(check, &*da, &lease).await;
    let view = load_until(check, &*db, |view| view.leader.is_none()).await;
    check.ensure(view.leader.is_none(), "no leader after the holder's release", &view.leader);
    let outcome = call!(check, "release", da.release(&lease));
    check.ensure(outcome == CasOutcome::Lost(None), "a second release to be Lost(None)", &outcome);
    let outcome = da.renew(&lease).await;
    check.ensure(
        matches!(&outcome, Ok(CasOutcome::Lost(None))) || matches!(&outcome, Err(e) if e.is_lease_lost()),
        "renew after release to be Lost(None)",
        &outcome,
    );
    suite.passed(check);
}

async fn epochs_increase(suite: &Suite<'_>) {
    let check = Check(EPOCHS_INCREASE);
    let scope = suite.scope("epoch");
    let (a, b) = (suite.client(check).await, suite.client(check).await);
    let (da, db) = (a.scope(&scope), b.scope(&scope));
    let mut last: Option<Epoch> = None;
    // The same name twice on one client, the same name from another client, another name.
    for (dcs, member) in [(&da, "m"), (&da, "m"), (&db, "m"), (&da, "n")] {
        let lease = must_acquire(check, &**dcs, &suite.leader(member)).await;
        if let Some(prev) = last {
            check.ensure(
                lease.epoch > prev,
                format_args!("the epoch of {member}'s acquisition to exceed the previous one, {prev}"),
                lease.epoch,
            );
        }
        let view = load_until(check, &*db, |view| view.leader.as_ref().map(|l| l.epoch) == Some(lease.epoch)).await;
        check.ensure(
            view.leader.as_ref().map(|l| l.epoch) == Some(lease.epoch),
            format_args!("load to show the lease's epoch {}", lease.epoch),
            &view.leader,
        );
        must_release(check, &**dcs, &lease).await;
        last = Some(lease.epoch);
    }
    suite.passed(check);
}

async fn epochs_survive_deletion(suite: &Suite<'_>) {
    let check = Check(EPOCHS_SURVIVE_DELETION);
    let scope = suite.scope("del");
    let (a, b) = (suite.client(check).await, suite.client(check).await);
    let (da, db) = (a.scope(&scope), b.scope(&scope));
    let delete = || async {
        let mut attempt = 0u32;
        loop {
            match suite.harness.delete_leader_key(&scope).await {
                Err(e) if e.is_retryable() && attempt < RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                other => break check.ok("delete_leader_key", other),
            }
        }
    };
    let mut seen: Vec<Epoch> = Vec::new();
    let mut record = |lease: &Lease, what: &str| {
        if let Some(prev) = seen.iter().max() {
            check.ensure(
                lease.epoch > *prev,
                format_args!("the epoch of {what} to exceed every earlier one (the greatest was {prev})"),
                lease.epoch,
            );
        }
        seen.push(lease.epoch);
    };

    // Released, then deleted: the next acquisition still gets a greater epoch.
    let first = must_acquire(check, &*da, &suite.leader("a")).await;
    record(&first, "the first acquisition");
    must_release(check, &*da, &first).await;
    let deletes = delete().await;
    let second = must_acquire(check, &*db, &suite.leader("b")).await;
    record(&second, "an acquisition after the key was released and deleted");

    // Deleted while held (an operator removing the key): the holder's renew is Lost once
    // another member holds it, and the newcomer's epoch is greater.
    if deletes {
        delete().await;
        let view = call!(check, "load", da.load());
        check.ensure(view.leader.is_none(), "no leader after the held key was deleted", &view.leader);
        let third = must_acquire(check, &*da, &suite.leader("a")).await;
        record(&third, "an acquisition after the held key was deleted");
        let outcome = db.renew(&second).await;
        check.ensure(
            matches!(&outcome, Ok(CasOutcome::Lost(_))) || matches!(&outcome, Err(e) if e.is_lease_lost()),
            "renew by the holder whose key was deleted and re-acquired by another to be Lost",
            &outcome,
        );
        must_release(check, &*da, &third).await;
    } else {
        must_release(check, &*db, &second).await;
    }

    // Deleted again; the same member name from a fresh client.
    delete().await;
    let c = suite.client(check).await;
    let fourth = must_acquire(check, &*c.scope(&scope), &suite.leader("a")).await;
    record(&fourth, "a fresh client's acquisition after another deletion");
    let view = load_until(check, &*db, |view| view.leader.as_ref().map(|l| l.epoch) == Some(fourth.epoch)).await;
    check.ensure(
        view.leader.as_ref().map(|l| l.epoch) == Some(fourth.epoch),
        format_args!("load to show the latest epoch {}", fourth.epoch),
        &view.leader,
    );
    must_release(check, &*c.scope(&scope), &fourth).await;
    suite.passed(check);
}

async fn garbage(suite: &Suite<'_>) {
    let check = Check(GARBAGE);
    let scope = suite.scope("junk");
    let mut keys = vec![Key::Leader, Key::Member("junk".into())];
    keys.extend(ControlKey::ALL.map(Key::Control));
    for key in &keys {
        call!(check, &format!("write_garbage at {key:?}"), suite.harness.write_garbage(&scope, key));
    }
    let a = suite.client(check).await;
    let da = a.scope(&scope);
    call!(check, "publish_member", da.publish_member(&MemberRecord::new("ok")));
    let view = call!(check, "load", da.load());
    check.ensure(view.leader.is_none(), "a garbage leader key to read as no leader", &view.leader);
    check.ensure(member_names(&view) == ["ok"], "only the valid member to be listed", member_names(&view));
    check.ensure(
        view.problems.len() == keys.len(),
        format_args!("{} problems reported, one per garbage key", keys.len()),
        &view.problems,
    );
    for key in ControlKey::ALL {
        check.ensure(
            control_bytes(&view, key).is_none() && view.control_version(key).is_some(),
            format_args!("garbage in `{}` to read as absent but keep its version", key.name()),
            (control_bytes(&view, key), view.control_version(key)),
        );
    }
    // Creating the leader key over garbage may win or lose, but must never name a holder.
    let acquired = match call!(check, "acquire over a garbage leader key", da.acquire(&suite.leader("a"))) {
        CasOutcome::Won(lease) => Some(lease),
        CasOutcome::Lost(None) => None,
        lost => check.fail("acquire over garbage to win or be Lost(None)", lost),
    };
    for key in ControlKey::ALL {
        let name = key.name();
        let Some(version) = view.control_version(key).cloned() else {
            check.fail(format_args!("`{name}` to keep its version"), &view);
        };
        let value = control_value(key, 9);
        let outcome = call!(check, "write_control", da.write_control(key, Expect::Absent, &value));
        check.ensure(
            outcome == CasOutcome::Lost(Some(version.clone())),
            format_args!("a create-only write over garbage in `{name}` to be Lost(Some({version:?}))"),
            &outcome,
        );
        let outcome = call!(check, "write_control", da.write_control(key, Expect::Version(version.clone()), &value));
        check.ensure(
            outcome.is_won(),
            format_args!("a write over garbage in `{name}` at its version {version:?} to win"),
            &outcome,
        );
    }
    let view = call!(check, "load", da.load());
    for key in ControlKey::ALL {
        check.ensure(
            control_bytes(&view, key) == Some(control_value(key, 9)),
            format_args!("`{}` to hold the record that replaced the garbage", key.name()),
            control_bytes(&view, key).map(|b| String::from_utf8_lossy(&b).into_owned()),
        );
    }
    let expected_problems = if acquired.is_some() { 1 } else { 2 };
    check.ensure(
        view.problems.len() == expected_problems,
        format_args!("{expected_problems} problems left (the garbage member, and the leader key unless replaced)"),
        &view.problems,
    );
    if let Some(lease) = acquired {
        check.ensure(holds(&view, &lease.record), "a won acquire over garbage to show as leader", &view.leader);
        must_release(check, &*da, &lease).await;
    }
    suite.passed(check);
}

async fn watch(suite: &Suite<'_>) {
    let quiet = Check(WATCH_QUIET);
    let check = Check(WATCH_WAKES);
    let scope = suite.scope("watch");
    // A name that extends the watched one: a prefix watch without a separator would see it.
    let neighbour = format!("{scope}0");
    let (a, b) = (suite.client(check).await, suite.client(check).await);
    let (da, db, dn) = (a.scope(&scope), b.scope(&scope), b.scope(&neighbour));
    let bounds = da.bounds();
    let long = watch_timeout(&bounds);

    call!(quiet, "publish_member", dn.publish_member(&MemberRecord::new("n")));
    let view = call!(quiet, "load", da.load());
    check.ensure(view.members.is_empty(), "no members from a neighbouring scope", member_names(&view));
    let Some(rev) = view.revision.clone() else { check.fail("load to return a revision to watch from", &view) };
    let (event, ()) = tokio::join!(da.watch(Some(&rev), QUIET_WATCH), async {
        tokio::time::sleep(WRITE_DELAY).await;
        call!(
            quiet,
            "write_control",
            dn.write_control(ControlKey::Config, Expect::Absent, &control_value(ControlKey::Config, 1))
        );
    });
    let event = quiet.ok("watch", event);
    quiet.ensure(
        event == WatchEvent::Timeout,
        format_args!("a watch on a quiet scope to time out after {QUIET_WATCH:?} despite writes in {neighbour:?}"),
        event,
    );
    suite.passed(quiet);

    // A change between load and watch is not lost.
    let config = control_value(ControlKey::Config, 1);
    call!(check, "write_control", db.write_control(ControlKey::Config, Expect::Absent, &config));
    let event = check.ok("watch", da.watch(Some(&rev), long).await);
    check.ensure(event == WatchEvent::Changed, "a watch from before a control write to report Changed at once", event);

    // Changes while the watch runs: a leader key created, then deleted.
    let record = suite.leader("b");
    let view = call!(check, "load", da.load());
    let (event, lease) = tokio::join!(da.watch(view.revision.as_ref(), long), async {
        tokio::time::sleep(WRITE_DELAY).await;
        must_acquire(check, &*db, &record).await
    });
    let event = check.ok("watch", event);
    check.ensure(
        event == WatchEvent::Changed,
        format_args!("a running watch to see an acquire within {long:?}"),
        event,
    );
    let view = call!(check, "load", da.load());
    let (event, ()) = tokio::join!(da.watch(view.revision.as_ref(), long), async {
        tokio::time::sleep(WRITE_DELAY).await;
        must_release(check, &*db, &lease).await;
    });
    let event = check.ok("watch", event);
    check.ensure(event == WatchEvent::Changed, format_args!("a running watch to see a release within {long:?}"), event);
    suite.passed(check);
}

async fn watch_resync(suite: &Suite<'_>) {
    let check = Check(WATCH_RESYNC);
    let scope = suite.scope("resync");
    let (a, b) = (suite.client(check).await, suite.client(check).await);
    let (da, db) = (a.scope(&scope), b.scope(&scope));
    let long = watch_timeout(&da.bounds());
    let before = call!(check, "load", da.load());
    let history = control_value(ControlKey::History, 1);
    call!(check, "write_control", db.write_control(ControlKey::History, Expect::Absent, &history));
    if !call!(check, "compact", suite.harness.compact()) {
        suite.skipped(check, "the store cannot compact history");
        return;
    }
    let event = check.ok("watch", da.watch(before.revision.as_ref(), long).await);
    check.ensure(
        matches!(event, WatchEvent::Resync | WatchEvent::Changed),
        "a watch from a compacted revision to return at once: Resync (or Changed from a client that kept the history)",
        event,
    );
    // Watching from a revision read after the compaction works normally again.
    let after = load_until(check, &*da, |view| view.control_version(ControlKey::History).is_some()).await;
    let Some(v) = after.control_version(ControlKey::History).cloned() else {
        check.fail("the history key written before the compaction to be listed", &after)
    };
    call!(check, "delete_control", db.delete_control(ControlKey::History, &v));
    let event = check.ok("watch", da.watch(after.revision.as_ref(), long).await);
    check.ensure(event == WatchEvent::Changed, "a watch from after the compaction to report Changed", event);
    suite.passed(check);
}

async fn leader_expiry(suite: &Suite<'_>) {
    let (not_before, within) = (Check(EXPIRY_NOT_BEFORE_TTL), Check(EXPIRY_WITHIN_MAX));
    let (takeover, epoch_check) = (Check(RENEW_AFTER_TAKEOVER), Check(EPOCH_AFTER_EXPIRY));
    let scope = suite.scope("expiry");
    let holder = suite.client(within).await;
    let observer = suite.client(within).await;
    let (dh, dobs) = (holder.scope(&scope), observer.scope(&scope));
    let bounds = dobs.bounds();
    let first = must_acquire(within, &*dh, &suite.leader("m")).await;

    let renew_started = now();
    let lease = match dh.renew(&first).await {
        Ok(CasOutcome::Won(lease)) => lease,
        other => within.fail("renew by the holder to win", other),
    };
    let guaranteed = bounds.ttl.max(lease.valid_for);
    holder.crash().await;
    let crashed = now();
    let deadline = crashed + bounds.max_expiry + expiry_slack(&bounds);
    loop {
        let started = now();
        let view = call!(within, "load", dobs.load());
        let returned = now();
        if !holds(&view, &lease.record) {
            not_before.ensure(
                returned >= renew_started + guaranteed,
                format_args!(
                    "the key to exist for max(ttl, valid_for) = {guaranteed:?} after the last renew call started"
                ),
                format_args!("gone {:?} after it", returned - renew_started),
            );
            break;
        }
        within.ensure(
            started <= deadline,
            format_args!(
                "the key to be gone within max_expiry {:?} + slack {:?} after the crash",
                bounds.max_expiry,
                expiry_slack(&bounds)
            ),
            format_args!("still there {:?} after the crash", started - crashed),
        );
        tokio::time::sleep(poll_interval(&bounds)).await;
    }
    suite.passed(not_before);
    suite.passed(within);

    // The same member restarts and takes the key again. A store with client-side expiry
    // (Kubernetes) may make a fresh client wait out one more ttl first, so retry until then.
    let restarted = suite.client(epoch_check).await;
    let dr = restarted.scope(&scope);
    let record = suite.leader("m");
    let until = now() + bounds.max_expiry + expiry_slack(&bounds);
    let second = loop {
        match call!(epoch_check, "acquire", dr.acquire(&record)) {
            CasOutcome::Won(lease) => break lease,
            lost if now() > until => epoch_check.fail("the restarted member to acquire the expired key", lost),
            CasOutcome::Lost(_) => tokio::time::sleep(poll_interval(&bounds)).await,
        }
    };
    epoch_check.ensure(
        second.epoch > lease.epoch,
        format_args!("re-acquisition after expiry to get an epoch above {}", lease.epoch),
        second.epoch,
    );
    suite.passed(epoch_check);

    let bystander = suite.client(takeover).await;
    let dby = bystander.scope(&scope);
    for (who, dcs) in [("the new holder's client", &dr), ("a bystander", &dby)] {
        let outcome = dcs.renew(&lease).await;
        takeover.ensure(
            matches!(&outcome, Ok(CasOutcome::Lost(_))) || matches!(&outcome, Err(e) if e.is_lease_lost()),
            format_args!("renew of the old lease through {who} to be Lost or LeaseLost"),
            &outcome,
        );
        let outcome = call!(takeover, "release", dcs.release(&lease));
        takeover.ensure(
            matches!(&outcome, CasOutcome::Lost(Some(v)) if v.record.token == record.token),
            format_args!("release of the old lease through {who} to be Lost naming the new holder"),
            &outcome,
        );
    }
    let view = load_until(takeover, &*dby, |view| holds(view, &record)).await;
    takeover.ensure(holds(&view, &record), "the new holder to keep the key", &view.leader);
    suite.passed(takeover);
    must_release(takeover, &*dr, &second).await;
}

async fn member_expiry(suite: &Suite<'_>) {
    let (expires, lives) = (Check(MEMBER_EXPIRES_WITH_OWNER), Check(MEMBER_LIVES_WITH_OWNER));
    let scope = suite.scope("members");
    let (a, b, obs) = (suite.client(expires).await, suite.client(lives).await, suite.client(expires).await);
    let (da, db, dobs) = (a.scope(&scope), b.scope(&scope), obs.scope(&scope));
    let bounds = dobs.bounds();

    call!(expires, "publish_member", da.publish_member(&MemberRecord::new("a")));
    let view = load_until(expires, &*dobs, |view| view.member("a").is_some()).await;
    let Some(v1) = view.members.iter().find(|m| m.value.name == "a").map(|m| m.version.clone()) else {
        expires.fail("the published member `a` to be listed", member_names(&view));
    };
    let replaced = MemberRecord { position: Some(7), ..MemberRecord::new("a") };
    call!(expires, "publish_member", da.publish_member(&replaced));
    let replaced_shown = |view: &ClusterView| view.members.iter().any(|m| m.value == replaced && m.version != v1);
    let view = load_until(expires, &*dobs, replaced_shown).await;
    expires.ensure(replaced_shown(&view), "publishing again to replace the record under a new version", &view.members);

    let published = now();
    call!(lives, "publish_member", db.publish_member(&MemberRecord::new("b")));
    load_until(lives, &*dobs, |view| view.member("b").is_some()).await;
    a.crash().await;
    let crashed = now();
    let deadline = crashed + bounds.member_expiry + expiry_slack(&bounds);
    // `b` stays idle from here: no calls through its client at all.
    let idle_until = published + bounds.member_expiry.max(bounds.ttl) + bounds.ttl / 2;
    let mut a_gone = false;
    loop {
        let started = now();
        let view = call!(expires, "load", dobs.load());
        lives.ensure(
            view.member("b").is_some(),
            "the idle but live client's member `b` to stay",
            format_args!("gone {:?} after it was published; members {:?}", now() - published, member_names(&view)),
        );
        if !a_gone && view.member("a").is_none() {
            a_gone = true;
            suite.passed(expires);
        }
        if !a_gone {
            expires.ensure(
                started <= deadline,
                format_args!(
                    "the crashed client's member `a` to be gone within member_expiry {:?} + slack {:?}",
                    bounds.member_expiry,
                    expiry_slack(&bounds)
                ),
                format_args!("still there {:?} after the crash", started - crashed),
            );
        }
        if a_gone && started >= idle_until {
            break;
        }
        tokio::time::sleep(poll_interval(&bounds)).await;
    }
    suite.passed(lives);
}

async fn many_scopes(suite: &Suite<'_>) {
    let check = Check(MANY_SCOPES);
    let base = suite.scope("many");
    let client = suite.client(check).await;
    let observer = suite.client(check).await;
    let handles: Vec<Arc<dyn Dcs>> = (0..MANY).map(|i| client.scope(&format!("{base}-{i}"))).collect();
    let watchers: Vec<Arc<dyn Dcs>> = (0..MANY).map(|i| observer.scope(&format!("{base}-{i}"))).collect();
    let bounds = watchers[0].bounds();
    let records: Vec<LeaderRecord> = (0..MANY).map(|_| suite.leader("m")).collect();

    let results = join_all(handles.iter().zip(&records).map(|(dcs, r)| must_acquire(check, &**dcs, r))).await;
    let mut leases = results;
    // Renew for longer than one ttl: every key must survive through the shared session.
    for round in 0..3 {
        tokio::time::sleep(bounds.ttl / 2).await;
        let renewed = join_all(handles.iter().zip(&leases).map(|(dcs, lease)| dcs.renew(lease))).await;
        for (i, (outcome, lease)) in renewed.into_iter().zip(leases.iter_mut()).enumerate() {
            match outcome {
                Ok(CasOutcome::Won(l)) if l.epoch == lease.epoch => *lease = l,
                other => {
                    check.fail(format_args!("renew round {round} of scope {i} to win at epoch {}", lease.epoch), other)
                }
            }
        }
    }
    let views =
        join_all(watchers.iter().zip(&records).map(|(dcs, r)| load_until(check, &**dcs, |v| holds(v, r)))).await;
    for (i, view) in views.into_iter().enumerate() {
        check.ensure(holds(&view, &records[i]), format_args!("scope {i} to be held by the client"), &view.leader);
    }

    client.crash().await;
    let crashed = now();
    let deadline = crashed + bounds.max_expiry + expiry_slack(&bounds);
    loop {
        let started = now();
        let views = join_all(watchers.iter().map(|dcs| dcs.load())).await;
        let held = (views.into_iter().zip(&records)).map(|(view, record)| holds(&check.ok("load", view), record));
        let held = held.filter(|held| *held).count();
        if held == 0 {
            break;
        }
        check.ensure(
            started <= deadline,
            format_args!("all {MANY} keys to be gone within max_expiry + slack after the client crashed"),
            format_args!("{held} still held {:?} after the crash", started - crashed),
        );
        tokio::time::sleep(poll_interval(&bounds)).await;
    }
    suite.passed(check);
}
