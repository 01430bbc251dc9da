//! [`PeerProbe`]: how a member asks its peers about themselves.

use async_trait::async_trait;

use crate::record::{Epoch, MemberRecord};

/// Asks peers about themselves (their REST API's `/status`).
#[async_trait]
pub trait PeerProbe: Send + Sync + 'static {
    /// `peer`'s status, or `None` if it did not answer within the probe's own timeout
    /// (keep it short: Patroni uses 2 s).
    async fn probe(&self, peer: &MemberRecord) -> Option<MemberRecord>;

    /// Failsafe mode: ask `peer` to accept `leader` (with `epoch`) while the store is
    /// unreachable. `true` only if it explicitly accepted.
    async fn failsafe_confirm(&self, peer: &MemberRecord, leader: &str, epoch: Epoch) -> bool {
        let _ = (peer, leader, epoch);
        false
    }
}

/// A probe for setups without peers' APIs: every peer is reported from its member record
/// only if `trust_records` is set, else as unreachable (the rules then ignore it).
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordProbe {
    /// Use the peer's own member record as its status.
    pub trust_records: bool,
}

#[async_trait]
impl PeerProbe for RecordProbe {
    async fn probe(&self, peer: &MemberRecord) -> Option<MemberRecord> {
        self.trust_records.then(|| peer.clone())
    }
}
