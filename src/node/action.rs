//! What the state machine asks its driver to do.

use std::time::Duration;

use crate::dcs::{Expect, Lease};
use crate::record::{ControlKey, Epoch, LeaderRecord, MemberRecord, Version};

/// Correlates an [`Action`] with the [`Input`](crate::node::Input) that answers it. Answers carrying an
/// id the node no longer waits for (late, duplicated, from before a restart) are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// How the resource steps down (Patroni's demote modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DemoteMode {
    /// Planned switchover: clean shutdown with a checkpoint; the key is released afterwards.
    Graceful,
    /// Unfit to lead (watchdog failure, failed promote): stop at once; the key is released.
    Immediate,
    /// The key was lost to someone else: stop at once; never touch the key.
    ImmediateNoLock,
    /// The store is unreachable: stop at once; the key is left to expire.
    Offline,
}

/// One thing for the driver to do. Store actions are issued one at a time; resource actions
/// (`ArmWatchdog`, `Promote`, `Demote`, `Follow`, `SetSyncStandbys`) must be carried out in the
/// order they were emitted.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Call [`Dcs::load`](crate::Dcs::load); answer with [`Input::Loaded`](crate::node::Input::Loaded).
    Load {
        /// Request id.
        id: RequestId,
    },
    /// Call [`Dcs::acquire`](crate::Dcs::acquire); answer with `Input::Acquired`.
    Acquire {
        /// Request id.
        id: RequestId,
        /// The record to write.
        record: LeaderRecord,
    },
    /// Call [`Dcs::renew`](crate::Dcs::renew); answer with `Input::Renewed`.
    Renew {
        /// Request id.
        id: RequestId,
        /// The lease to renew.
        lease: Lease,
    },
    /// Call [`Dcs::release`](crate::Dcs::release); answer with `Input::Released`.
    Release {
        /// Request id.
        id: RequestId,
        /// The lease to release.
        lease: Lease,
    },
    /// Call [`Dcs::publish_member`](crate::Dcs::publish_member); answer with `Input::Written`.
    PublishMember {
        /// Request id.
        id: RequestId,
        /// Our member record.
        record: MemberRecord,
    },
    /// Call [`Dcs::write_control`](crate::Dcs::write_control); answer with `Input::Written`.
    WriteControl {
        /// Request id.
        id: RequestId,
        /// Which key.
        key: ControlKey,
        /// Its precondition.
        expect: Expect,
        /// The encoded record.
        value: Vec<u8>,
    },
    /// Call [`Dcs::delete_control`](crate::Dcs::delete_control); answer with `Input::Written`.
    DeleteControl {
        /// Request id.
        id: RequestId,
        /// Which key.
        key: ControlKey,
        /// The version it must have.
        expect: Version,
    },
    /// (Re)start waiting for changes after `after`, replacing any earlier watch; report with
    /// `Input::Watched`. Only a hint: the node's own timer is the backstop.
    Watch {
        /// Revision of the last loaded view.
        after: Option<Version>,
    },
    /// Ask every listed peer for its status (GET `/status` on its API); answer with
    /// `Input::PeersAnswered`, marking silent peers unreachable.
    ProbePeers {
        /// Request id.
        id: RequestId,
        /// Whom to ask.
        peers: Vec<MemberRecord>,
    },
    /// Failsafe mode, store unreachable: ask every listed member to confirm us as leader;
    /// answer with `Input::FailsafeAnswered`.
    FailsafeCheck {
        /// Request id.
        id: RequestId,
        /// Whom to ask.
        peers: Vec<MemberRecord>,
        /// Our epoch, sent along.
        epoch: Epoch,
    },
    /// Arm the watchdog so the machine resets if not kept alive within `timeout`. A failure
    /// to arm is reported with `Input::WatchdogFailed`.
    ArmWatchdog {
        /// Reset deadline.
        timeout: Duration,
    },
    /// Reset the watchdog's countdown (sent only after a successful renewal).
    KeepAliveWatchdog,
    /// Disarm the watchdog.
    DisarmWatchdog,
    /// Make the resource primary under `epoch`; answer with `Input::Promoted`.
    Promote {
        /// The fencing token: the resource must reject writes from older epochs.
        epoch: Epoch,
    },
    /// Stop acting as primary; answer with `Input::Demoted`.
    Demote {
        /// How.
        mode: DemoteMode,
    },
    /// Replicate from this leader (or wait, when `None`).
    Follow {
        /// The leader's member name.
        leader: Option<String>,
        /// Where to reach its resource.
        conn_url: Option<String>,
    },
    /// Synchronous mode: make the resource wait for these standbys before acknowledging.
    SetSyncStandbys {
        /// Standby names.
        names: Vec<String>,
    },
}
