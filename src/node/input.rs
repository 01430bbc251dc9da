//! Inputs that are not store answers: the local resource, admin requests, events out.

use serde::{Deserialize, Serialize};

use super::action::{DemoteMode, RequestId};
use crate::record::{Epoch, ResourceRole};
use crate::rules::Reason;

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
    },
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
    #[error("this member is not the leader; send the switchover to {leader:?}")]
    NotLeader {
        /// The leader, if known.
        leader: Option<String>,
    },
    /// The candidate is not a registered member.
    #[error("{0:?} is not a registered member of this cluster")]
    UnknownMember(String),
    /// The candidate may not be promoted.
    #[error("{0:?} is tagged nofailover or has failover_priority 0")]
    CandidateIneligible(String),
    /// A switchover or failover is already pending.
    #[error("a switchover or failover is already pending")]
    AlreadyPending,
    /// Pause or resume that would not change anything.
    #[error("the cluster is already {0}")]
    NoChange(&'static str),
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
