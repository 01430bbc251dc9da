//! [`Election::observe`](super::Election::observe): who holds the key, for any member.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::dcs::{Dcs, WatchEvent};
use crate::record::{Epoch, LeaderView};

/// The holder of a scope's leader key, as read from the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Leader {
    /// The holder's member name.
    pub holder: String,
    /// The epoch (fencing token) of the holder's term.
    pub epoch: Epoch,
}

impl From<&LeaderView> for Leader {
    fn from(view: &LeaderView) -> Self {
        Leader { holder: view.record.member.clone(), epoch: view.epoch }
    }
}

/// Reads the scope, publishes the leader when it differs from the last one published, and
/// waits for the store's watch or `every`, whichever comes first. Reads only: observing
/// never writes, so it needs no safety rule. The timer is the backstop (DESIGN.md rule 7),
/// and on Kubernetes it is what lets the store report an expired holder as gone.
pub(super) async fn observe(dcs: Arc<dyn Dcs>, leader: watch::Sender<Option<Leader>>, every: Duration) {
    loop {
        let after = match tokio::time::timeout(every, dcs.load()).await {
            Ok(Ok(view)) => {
                let now = view.leader.as_ref().map(Leader::from);
                leader.send_if_modified(|current| {
                    let changed = *current != now;
                    *current = now;
                    changed
                });
                view.revision
            }
            Ok(Err(e)) => {
                tracing::debug!(scope = dcs.scope(), error = %e, "observe: load failed; retrying");
                tokio::time::sleep(every).await;
                continue;
            }
            Err(_) => continue,
        };
        match tokio::time::timeout(every, dcs.watch(after.as_ref(), every)).await {
            Ok(Ok(WatchEvent::Changed | WatchEvent::Resync | WatchEvent::Timeout)) | Err(_) => {}
            // A watch that fails at once would turn this loop into a busy one.
            Ok(Err(_)) => tokio::time::sleep(every).await,
        }
    }
}
