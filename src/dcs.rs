//! The `Dcs` trait: the only boundary between leasehold and a consensus store.
//!
//! One `Dcs` value serves one election *scope* (one cluster). A backend's store client owns
//! one connection and one lease or session per process and hands out any number of scope
//! handles that share them (etcd: one lease; ZooKeeper: one session; Consul: one session;
//! Kubernetes: one client), so one process can take part in a thousand elections at the cost
//! of one keep-alive stream.
//!
//! # Time in the contract
//!
//! "ttl" below is the backend's lease TTL ([`StoreBounds::ttl`]): what the store enforces,
//! which may differ from the [`Timing::ttl`](crate::Timing) the client was built with
//! ([`Dcs::configured_ttl`]; Consul's session floor, ZooKeeper's negotiation, etcd's whole
//! seconds). Every guarantee about
//! expiry is measured on the caller's monotonic clock **from the moment the call was made**
//! (before the request was sent), never from when the reply arrived: the reply may have been
//! delayed arbitrarily.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::DcsError;
use crate::record::{ClusterView, ControlKey, Epoch, LeaderRecord, LeaderView, MemberRecord, Version};

/// The result of a conditional write: losing the race is a value, not an error.
#[derive(Clone, Debug, PartialEq)]
pub enum CasOutcome<W, L> {
    /// The write was applied.
    Won(W),
    /// The condition did not hold; nothing was written. Carries what is there instead.
    Lost(L),
}

impl<W, L> CasOutcome<W, L> {
    /// Whether the write was applied.
    pub fn is_won(&self) -> bool {
        matches!(self, CasOutcome::Won(_))
    }

    /// The winning value, if any.
    pub fn won(self) -> Option<W> {
        match self {
            CasOutcome::Won(w) => Some(w),
            CasOutcome::Lost(_) => None,
        }
    }
}

/// Proof of holding a scope's leader key, returned by [`Dcs::acquire`] and [`Dcs::renew`].
#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    /// The record we wrote (member name and per-acquisition token).
    pub record: LeaderRecord,
    /// Fencing token of this acquisition; unchanged by renewals.
    pub epoch: Epoch,
    /// CAS version of the leader key after the write (may change on every renewal).
    pub version: Version,
    /// The key is guaranteed to exist, holding this record, for at least this long measured
    /// from the moment the `acquire`/`renew` call was made. The holder's belief is derived
    /// from it (DESIGN.md rule 1).
    pub valid_for: Duration,
}

/// The precondition of a control-key write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist (create-only).
    Absent,
    /// The key must exist with exactly this version.
    Version(Version),
}

/// Why a [`Dcs::watch`] call returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// Something in the scope changed after the given revision; re-load.
    Changed,
    /// The store could not tell what happened since the given revision (history compacted,
    /// 410 Gone, session re-established). Re-load; assume everything changed.
    Resync,
    /// Nothing was observed before the timeout. Not a guarantee that nothing changed.
    Timeout,
}

/// What a backend promises about timing, checked by the conformance suite and used by the
/// simulator's store profiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreBounds {
    /// The lease or session TTL the store enforces (after any clamping by the server).
    pub ttl: Duration,
    /// Latest moment, after the holder's last successful renew call was made, at which other
    /// clients are guaranteed to see the leader key gone (or treated as expired) once the
    /// holder stops. At least `ttl`; Consul may take up to 2x its session TTL, Kubernetes
    /// observers wait a full TTL after *seeing* the last renewal.
    pub max_expiry: Duration,
    /// Longest delay, in a healthy store, between a change and a `watch` call returning.
    pub watch_latency: Duration,
    /// Latest moment, after a process stops, at which other clients are guaranteed to see
    /// its member records gone. At least `max_expiry`; longer where a backend keeps member
    /// records on a longer lease than leader keys (etcd's `member_ttl`).
    pub member_expiry: Duration,
}

/// One election scope in a consensus store.
///
/// # To ensure correctness (all backends)
///
/// * Reads are consistent and never go back: [`load`](Dcs::load) returns the scope as of one
///   store revision, never older than a state the same process has already been told about
///   (its own successful writes, what a lost compare-and-set returned, an earlier load), and
///   shows other clients' writes within [`StoreBounds::watch_latency`].
/// * Every write that can change leadership is conditional; a failed condition is
///   [`CasOutcome::Lost`], never an error, and writes nothing.
/// * Errors follow [`DcsError`]'s classes: a request that may have been applied must be
///   reported as [`DcsError::OutcomeUnknown`], never as `Unavailable`.
/// * Bytes in the store are untrusted: undecodable records are reported through
///   [`ClusterView::problems`] and treated as absent, never a panic or an error.
/// * Calls may be made concurrently from several tasks.
#[async_trait]
pub trait Dcs: Send + Sync + 'static {
    /// The scope's name.
    fn scope(&self) -> &str;

    /// The backend's timing promises: what the store enforces.
    fn bounds(&self) -> StoreBounds;

    /// The [`Timing::ttl`](crate::Timing) the store client was built with (`connect(options,
    /// &timing)`), before any rounding or clamping by the store. The driver and the election
    /// handle refuse a node whose `timing.ttl` differs from it, so the ttl has one source.
    fn configured_ttl(&self) -> Duration;

    /// Reads the whole scope in one consistent snapshot: the leader key with its epoch and
    /// version, members, and every control key. A backend may serve it from a watch-fed
    /// mirror of the store (etcd does, one watch per process): such a view is the state at a
    /// slightly earlier revision, exactly what a linearizable read made a moment before would
    /// have returned, and it includes every write this process made or was told about.
    ///
    /// The view may be stale by the time it arrives; use it to decide what to *try*, never
    /// as proof of holding the leader key (DESIGN.md rule 2). Kubernetes: a leader whose
    /// record this process has seen unchanged for its lease duration is reported as absent.
    async fn load(&self) -> Result<ClusterView, DcsError>;

    /// Creates the leader key with `record` if it does not exist, bound to this process's
    /// lease or session. Atomic: of concurrent callers at most one wins.
    ///
    /// `Won(lease)`: we hold the key; its epoch is strictly greater than every earlier
    /// acquisition in this scope (also one by the same member name). `Lost(current)`: someone
    /// else holds it (`None` if it vanished again before it could be read). An
    /// [`OutcomeUnknown`](DcsError::OutcomeUnknown) error means the key may now be ours:
    /// re-load and look for `record.token` before acting.
    async fn acquire(&self, record: &LeaderRecord) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError>;

    /// Extends our hold on the leader key, conditional on the key still being the one
    /// `lease` describes (same epoch and token). Refreshes the process's lease or session.
    ///
    /// `Won(new)`: `new.valid_for` is measured from this call. `Lost(current)`: the key is
    /// gone or someone else's; demote at once and never touch the key again.
    /// [`DcsError::LeaseLost`]: the session expired; same as `Lost`.
    async fn renew(&self, lease: &Lease) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError>;

    /// Deletes the leader key if it still holds `lease`'s epoch and token
    /// (compare-and-delete). Call only after the resource has stopped acting as primary.
    /// `Lost` means it was no longer ours; nothing was deleted.
    async fn release(&self, lease: &Lease) -> Result<CasOutcome<(), Option<LeaderView>>, DcsError>;

    /// Creates or replaces `members/<member.name>`, bound to this process's lease or session
    /// so it disappears within [`StoreBounds::max_expiry`] after the process stops.
    async fn publish_member(&self, member: &MemberRecord) -> Result<(), DcsError>;

    /// Writes a control key with compare-and-set. `Won(version)` carries the new version;
    /// `Lost(current)` the current version (`None` if absent). Control keys never expire.
    async fn write_control(
        &self,
        key: ControlKey,
        expect: Expect,
        value: &[u8],
    ) -> Result<CasOutcome<Version, Option<Version>>, DcsError>;

    /// Deletes a control key if it has exactly version `expect`.
    async fn delete_control(
        &self,
        key: ControlKey,
        expect: &Version,
    ) -> Result<CasOutcome<(), Option<Version>>, DcsError>;

    /// Waits until the scope's leader key or a control key changes after revision `after`
    /// (from [`ClusterView::revision`]), or `timeout` passes. A change of member records
    /// alone need not wake it (they change with every replication position; a waiter re-reads
    /// them on its own timer). Wakes within
    /// [`StoreBounds::watch_latency`] in a healthy store, but correctness never depends on
    /// it (DESIGN.md rule 7): events may be lost, and callers keep their own timer. Lost
    /// history is reported as [`WatchEvent::Resync`], never skipped silently.
    async fn watch(&self, after: Option<&Version>, timeout: Duration) -> Result<WatchEvent, DcsError>;
}
