//! [`Resource`]: the thing a member makes highly available, as the driver sees it.

use async_trait::async_trait;

use crate::node::{DemoteMode, ResourceStatus};
use crate::record::Epoch;

/// The thing being made highly available (a database, a scheduler...). Calls are made one at
/// a time, in order.
#[async_trait]
pub trait Resource: Send + Sync + 'static {
    /// Start acting as primary. `epoch` is the fencing token: from now on the resource (or
    /// whatever it writes to) should reject writes carrying an older epoch. An error is a
    /// failed pre-promote: the node releases the key and backs off for a ttl.
    ///
    /// In failsafe mode it may also be called while the resource already acts as primary,
    /// with a newer epoch: the key expired during a store outage and the same member took it
    /// back. Adopt the epoch for fencing and keep everything else (writes, synchronous
    /// standbys) as it is.
    async fn promote(&self, epoch: Epoch) -> Result<(), String>;

    /// Stop acting as primary. Must not return `Ok` before the resource has stopped accepting
    /// writes; the key is released only after that (DESIGN.md rule 4).
    async fn demote(&self, mode: DemoteMode) -> Result<(), String>;

    /// Replicate from `leader` (reachable at `conn_url`), or wait when `None`.
    async fn follow(&self, leader: Option<&str>, conn_url: Option<&str>) -> Result<(), String>;

    /// Current state. Must answer quickly; a resource that cannot tell reports
    /// `running: false`.
    async fn status(&self) -> ResourceStatus;

    /// Synchronous mode: acknowledge writes only after **every** one of `names` has them
    /// (PostgreSQL: `synchronous_standby_names = 'N (a, b, ...)'` with N the number of
    /// names); any member the sync key names may be promoted, so each must hold every
    /// acknowledged write. `["*"]` ([`ANY_STANDBY`](crate::node::ANY_STANDBY), strict mode)
    /// means "some standby": acknowledge nothing until one has it. An empty list: do not wait.
    /// Report the standbys that have caught up in [`ResourceStatus::sync_confirmed`], and
    /// those connected at all in [`ResourceStatus::streaming`] (else the node goes by member
    /// records, which may outlive a dead standby).
    async fn set_sync_standbys(&self, names: &[String]) -> Result<(), String> {
        let _ = names;
        Ok(())
    }
}
