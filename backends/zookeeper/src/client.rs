//! One ZooKeeper session shared by any number of scope handles.

use std::sync::Arc;
use std::time::Duration;

use leasehold::DcsError;

use crate::dcs::ZkDcs;
use crate::options::ZkOptions;
use crate::session::{Shared, open_session};

/// A ZooKeeper session for leader election.
///
/// Cheap to clone; every clone and every [`ZkDcs`] from [`ZkClient::scope`] share one
/// session, so the heartbeat cost is one ping per session, whatever the number of scopes.
/// The session is watched in the background: disconnects make requests fail fast and
/// watches report a resync; an expired session is replaced by a new one in which this
/// process's member znodes are recreated (leader keys are not: leadership ended with the
/// old session). Dropping the last handle closes the session, so every ephemeral znode of
/// this process vanishes at once (unless [`ZkOptions::detached`]).
#[derive(Clone)]
pub struct ZkClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ZkClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkClient")
            .field("connect", &self.shared.options.connect)
            .field("session_id", &self.session_id())
            .finish_non_exhaustive()
    }
}

impl ZkClient {
    /// Validates `options` and opens a session.
    ///
    /// Errors: invalid options (the message names the field) and rejected credentials are
    /// [`DcsError::Fatal`]; no reachable server is [`DcsError::Unavailable`]. Must be called
    /// inside a tokio runtime (the session supervisor runs on it).
    pub async fn connect(options: ZkOptions) -> Result<ZkClient, DcsError> {
        options.validate().map_err(|e| DcsError::fatal(e.to_string()))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| DcsError::fatal("ZkClient::connect must be called inside a tokio runtime"))?;
        let session = open_session(&options, 1).await?;
        Ok(ZkClient { shared: Shared::new(options, session, runtime) })
    }

    /// A handle on election scope `scope`, stored under `<prefix>/<scope>`. A scope name
    /// that is empty or contains `/` or control characters makes every call on the handle
    /// fail with [`DcsError::Fatal`].
    pub fn scope(&self, scope: &str) -> ZkDcs {
        ZkDcs::new(self.shared.clone(), scope)
    }

    /// The negotiated session timeout: the lease every scope gets. It differs from
    /// [`ZkOptions::ttl`] when the server clamped the request to its `[2, 20] x tickTime` range.
    pub fn session_timeout(&self) -> Duration {
        self.shared.timeout()
    }

    /// Whether the server clamped the requested session timeout.
    pub fn session_timeout_clamped(&self) -> bool {
        self.session_timeout() != self.shared.options.ttl
    }

    /// The current session's id (0 once closed); changes when an expired session is replaced.
    pub fn session_id(&self) -> i64 {
        self.shared.session().map(|s| s.id()).unwrap_or(0)
    }

    /// Whether the client is connected to a server right now.
    pub fn is_connected(&self) -> bool {
        self.shared.is_connected()
    }

    /// Ends the session now and makes every handle fail with [`DcsError::Fatal`]. Without
    /// [`ZkOptions::detached`] the session is closed on the server and this process's
    /// ephemeral znodes (leader keys, members) vanish at once; release leader keys first
    /// for an orderly step-down. With `detached`, the connection is just dropped and the
    /// znodes expire with the session timeout, as after a crash.
    pub fn close(&self) {
        self.shared.close();
    }

    /// The current session, for the test harness's raw writes.
    #[cfg(feature = "testing")]
    pub(crate) fn shared_session(&self) -> Result<Arc<crate::session::Session>, DcsError> {
        self.shared.session()
    }
}
