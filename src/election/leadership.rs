//! What [`Election::campaign`](super::Election::campaign) returns: one term of leadership.

use std::future::Future;

use tokio_util::sync::CancellationToken;

use crate::record::Epoch;

/// One term as leader: its fencing epoch and a signal that fires when the term ends.
///
/// The signal fires no later than the moment this member's belief of holding the key ends
/// (`renewal sent + ttl * (1 - drift) - safety_margin`, DESIGN.md rule 1), so before any
/// other member can acquire the key; also when the member resigns, when a read shows the key
/// gone or taken, and when the store reports a fatal error. Once fired it stays fired: a
/// later term is a new `Leadership` with a greater epoch.
///
/// Clones share the signal.
#[derive(Clone, Debug)]
pub struct Leadership {
    member: String,
    epoch: Epoch,
    lost: CancellationToken,
}

impl Leadership {
    pub(super) fn new(member: String, epoch: Epoch, lost: CancellationToken) -> Self {
        Leadership { member, epoch, lost }
    }

    /// Fires the lost signal (the supervisor, when the node stops acting or its deadline
    /// passes).
    pub(super) fn end(&self) {
        self.lost.cancel();
    }

    /// The fencing token of this term: strictly greater than the epoch of every earlier term
    /// in the scope, by any member. Hand it to whatever you write to, so it can reject a
    /// writer whose term has ended.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The member name this term belongs to.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// Whether the term has ended. Check it (or await [`lost`](Self::lost)) before each
    /// action that only the leader may take.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Resolves when the term ends (at once if it already has).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.lost.clone().cancelled_owned()
    }

    /// A token cancelled when the term ends, for APIs that take a
    /// [`CancellationToken`] (client-go hands `OnStartedLeading` such a context).
    /// Cancelling it yourself does not end the term: use
    /// [`Election::resign`](super::Election::resign) for that.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.lost.child_token()
    }
}
