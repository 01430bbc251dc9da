//! The resource an [`Election`](super::Election) runs under the driver: nothing to start or
//! stop, only the lost signal of each term.

use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::driver::Resource;
use crate::node::{DemoteMode, ResourceStatus};
use crate::record::{Epoch, ResourceRole};

/// A [`Resource`] whose "primary" is a cancellation token per term: `promote` creates it,
/// `demote` cancels it before confirming, so the node releases the key (rule 4: demote ->
/// confirmed -> release) only after every holder of the token has been told.
#[derive(Debug, Default)]
pub(super) struct Latch {
    term: Mutex<Option<(Epoch, CancellationToken)>>,
}

impl Latch {
    /// The lost signal of the term under `epoch`, if that term is the current one.
    pub(super) fn token_for(&self, epoch: Epoch) -> Option<CancellationToken> {
        let term = self.term.lock().unwrap_or_else(PoisonError::into_inner);
        term.as_ref().filter(|(e, _)| *e == epoch).map(|(_, token)| token.clone())
    }

    /// Ends the current term, if any.
    fn end_term(&self) {
        if let Some((_, token)) = self.term.lock().unwrap_or_else(PoisonError::into_inner).take() {
            token.cancel();
        }
    }
}

#[async_trait]
impl Resource for Latch {
    async fn promote(&self, epoch: Epoch) -> Result<(), String> {
        // A promotion under a new epoch ends the old term first: a Leadership never outlives
        // the epoch it carries.
        self.end_term();
        *self.term.lock().unwrap_or_else(PoisonError::into_inner) = Some((epoch, CancellationToken::new()));
        Ok(())
    }

    async fn demote(&self, _mode: DemoteMode) -> Result<(), String> {
        self.end_term();
        Ok(())
    }

    async fn follow(&self, _leader: Option<&str>, _conn_url: Option<&str>) -> Result<(), String> {
        Ok(())
    }

    async fn status(&self) -> ResourceStatus {
        let leading = self.term.lock().unwrap_or_else(PoisonError::into_inner).is_some();
        ResourceStatus {
            running: true,
            role: if leading { ResourceRole::Primary } else { ResourceRole::Replica },
            ..ResourceStatus::default()
        }
    }
}
