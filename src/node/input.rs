//! What goes into the node ([`Input`], the resource's status, admin requests) and the events
//! that come out.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::action::{DemoteMode, RequestId};
use crate::dcs::{CasOutcome, Lease, WatchEvent};
use crate::error::DcsError;
use crate::record::{ClusterView, Epoch, LeaderView, ResourceRole};
use crate::rules::{PeerReply, Reason};
use crate::time::WallTime;

/// What the local resource reports about itself (the `status` hook).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// Whether it runs.
    pub running: bool,
    /// Primary, replica or unknown.
    pub role: ResourceRole,
    /// Replication position (received or written), bytes.
    #[serde(default)]
    pub position: Option<u64>,
    /// Timeline.
    #[serde(default)]
    pub timeline: Option<u64>,
    /// Synchronous mode: standbys the resource confirms are synchronous and caught up.
    #[serde(default)]
    pub sync_confirmed: Vec<String>,
    /// A primary's standbys that are connected and streaming from it now (PostgreSQL:
    /// `pg_stat_replication` in state `streaming`), or `None` when the resource cannot tell.
    /// Synchronous mode: when known, a standby that is not streaming is not chosen and a
    /// chosen one is dropped, whatever its member record says (a member record can outlive
    /// its process, by up to the store's member expiry).
    #[serde(default)]
    pub streaming: Option<Vec<String>>,
}

/// An operator's request, through the REST API or the ctl tool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum AdminRequest {
    /// The current leader (this node) steps down, to `candidate` or the best member.
    Switchover {
        /// Preferred successor.
        #[serde(default)]
        candidate: Option<String>,
        /// Step down at this wall-clock time rather than now (Patroni's `scheduled_at`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheduled_at: Option<WallTime>,
    },
    /// Cancel a scheduled switchover that has not happened yet (Patroni's `DELETE
    /// /switchover`, `patronictl flush <cluster> switchover`). Any member may send it.
    CancelScheduledSwitchover,
    /// Promote `candidate` even without a healthy leader.
    Failover {
        /// The member to promote.
        candidate: String,
    },
    /// Maintenance mode: no automatic failover.
    Pause,
    /// Leave maintenance mode.
    Resume,
}

/// Why an admin request was refused before anything was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The node has not loaded the cluster yet.
    #[error("the cluster state is not known yet; retry in a moment")]
    NotReady,
    /// A switchover must be sent to the leader.
    #[error("this member is not the leader; send the switchover to {}", leader.as_deref().unwrap_or("the leader (none is known now)"))]
    NotLeader {
        /// The leader, if known.
        leader: Option<String>,
    },
    /// The candidate is not a registered member.
    #[error("{0} is not a registered member of this cluster")]
    UnknownMember(String),
    /// The candidate may not be promoted.
    #[error("{0} is tagged nofailover or has failover_priority 0")]
    CandidateIneligible(String),
    /// A switchover or failover is already pending.
    #[error("a switchover or failover is already pending")]
    AlreadyPending,
    /// Pause or resume that would not change anything.
    #[error("the cluster is already {0}")]
    NoChange(&'static str),
    /// A switchover scheduled at a time that has passed.
    #[error("cannot schedule a switchover in the past: {at} is before now ({now})")]
    ScheduledInPast {
        /// The time asked for.
        at: WallTime,
        /// The node's wall clock.
        now: WallTime,
    },
    /// A switchover scheduled while the cluster is paused (Patroni refuses it too: a paused
    /// cluster runs no scheduled action).
    #[error("cannot schedule a switchover while the cluster is paused; resume it first")]
    ScheduledWhilePaused,
    /// The node has not been given the wall-clock time yet
    /// ([`Input::WallClock`]), so it cannot tell whether a schedule lies in the future.
    #[error("this member does not know the wall-clock time yet; retry in a moment")]
    WallClockUnknown,
    /// A cancel with no scheduled switchover pending.
    #[error("no switchover is scheduled")]
    NothingScheduled,
}

/// Something that happened, for logs, metrics, the simulator and the demo.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// We acquired the key and asked the resource to promote.
    Acquired {
        /// The fencing token.
        epoch: Epoch,
    },
    /// The resource confirmed it is primary.
    Promoted {
        /// The fencing token.
        epoch: Epoch,
    },
    /// We asked the resource to step down.
    Demoting {
        /// How.
        mode: DemoteMode,
        /// Why, for humans.
        why: &'static str,
    },
    /// The resource confirmed it stopped acting as primary.
    Demoted,
    /// The leader key changed holder (as seen by a load).
    LeaderChanged {
        /// The new holder, if any.
        leader: Option<String>,
    },
    /// The key is free but the rules say we may not race.
    NotEligible(Reason),
    /// An admin request was written (`ok`) or lost a race (`!ok`).
    AdminDone {
        /// The id returned by `handle_admin`.
        id: RequestId,
        /// Whether the write won.
        ok: bool,
    },
    /// The store reported a fatal error; the node stopped.
    Fatal(String),
}

/// One input to the [`Node`](super::Node): the answer to an [`Action`](super::Action) it
/// emitted, or something that happened. Give it to [`Node::handle`](super::Node::handle) with
/// the current time; then drain [`poll_action`](super::Node::poll_action) and
/// [`poll_event`](super::Node::poll_event), and re-read
/// [`poll_timeout`](super::Node::poll_timeout). An answer whose id the node no longer waits
/// for (late, or already timed out) is ignored.
#[derive(Debug)]
#[non_exhaustive]
pub enum Input {
    /// The time set by `poll_timeout` came (an early wake-up is harmless: the node checks
    /// every deadline against `now`).
    Timeout,
    /// The answer to [`Action::Load`](super::Action::Load). A shared view is kept as it is,
    /// never changed.
    Loaded {
        /// The request's id.
        id: RequestId,
        /// The view, or why there is none.
        result: Result<Arc<ClusterView>, DcsError>,
    },
    /// The answer to [`Action::Acquire`](super::Action::Acquire).
    Acquired {
        /// The request's id.
        id: RequestId,
        /// The lease won, or the holder that beat us.
        result: Result<CasOutcome<Lease, Option<LeaderView>>, DcsError>,
    },
    /// The answer to [`Action::Renew`](super::Action::Renew).
    Renewed {
        /// The request's id.
        id: RequestId,
        /// The lease extended, or the key's current holder (`None`: the key is gone).
        result: Result<CasOutcome<Lease, Option<LeaderView>>, DcsError>,
    },
    /// The answer to [`Action::Release`](super::Action::Release).
    Released {
        /// The request's id.
        id: RequestId,
        /// Released, or someone else holds the key.
        result: Result<CasOutcome<(), Option<LeaderView>>, DcsError>,
    },
    /// The answer to [`Action::PublishMember`](super::Action::PublishMember),
    /// [`Action::WriteControl`](super::Action::WriteControl) or
    /// [`Action::DeleteControl`](super::Action::DeleteControl): `Ok(true)` for a write that
    /// won, `Ok(false)` for a lost condition.
    Written {
        /// The request's id.
        id: RequestId,
        /// Won, lost, or why it failed.
        result: Result<bool, DcsError>,
    },
    /// The watch started by [`Action::Watch`](super::Action::Watch) reported.
    Watched(WatchEvent),
    /// The answer to [`Action::ProbePeers`](super::Action::ProbePeers), one reply per peer
    /// asked (silent peers as unreachable).
    PeersAnswered {
        /// The request's id.
        id: RequestId,
        /// One reply per peer.
        replies: Vec<PeerReply>,
    },
    /// The answer to [`Action::FailsafeCheck`](super::Action::FailsafeCheck).
    FailsafeAnswered {
        /// The request's id.
        id: RequestId,
        /// Every listed member accepted us as leader.
        all_confirmed: bool,
    },
    /// The answer to [`Action::Promote`](super::Action::Promote). An error is a failed
    /// pre-promote: the node releases the key and backs off for a ttl.
    Promoted(Result<(), String>),
    /// The answer to [`Action::Demote`](super::Action::Demote). An error is retried.
    Demoted(Result<(), String>),
    /// The resource could not follow the leader named by the last
    /// [`Action::Follow`](super::Action::Follow); the next read of the cluster asks again.
    FollowFailed,
    /// The watchdog could not be armed.
    WatchdogFailed,
    /// The resource's latest status: after every resource action, and at least once a loop.
    ResourceStatus(ResourceStatus),
    /// Stop cleanly: a leader demotes gracefully and releases the key once the resource
    /// confirms; anyone else stops at once.
    Shutdown,
    /// The wall-clock time at the `now` this input comes with. The node keeps the last
    /// reading and extrapolates it on the monotonic clock; only scheduled switchovers use it.
    /// Send it at least once a loop (the tokio driver sends it before every timeout), so a
    /// wall clock stepped by NTP is followed. Without it, a scheduled switchover waits.
    WallClock(WallTime),
}
