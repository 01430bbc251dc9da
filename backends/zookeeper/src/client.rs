//! One ZooKeeper session shared by any number of scope handles.

use std::sync::Arc;
use std::time::Duration;

use leasehold::{DcsError, Timing};

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
/// this process vanishes at once (unless [`ZkOptions::detached`]); [`ZkClient::shutdown`]
/// does it and waits for the server's answer.
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

/// How old a `sync` a mirror renewal may reuse as proof that the session is alive: what the
/// timing leaves spare (`ttl - loop_wait - 2 * retry_timeout`, at most `ttl / 3`), and at
/// least `ttl / 60` (at most 500 ms), so a process leading many scopes sends a few `sync`s a
/// second, not one per renewal. A reused `sync` shortens the renewed lease by its age.
fn reuse_window(timing: &Timing) -> Duration {
    let ttl = timing.ttl;
    let spare = ttl.saturating_sub(timing.loop_wait + timing.retry_timeout * 2).min(ttl / 3);
    spare.max((ttl / 60).min(Duration::from_millis(500)))
}

impl ZkClient {
    /// Validates `options` and opens a session whose timeout is `timing.ttl` (the server may
    /// clamp it: [`lease_ttl`](Self::lease_ttl)). Give every node on this client the same
    /// `timing`: the driver refuses one whose ttl differs ([`Dcs::configured_ttl`](leasehold::Dcs)).
    ///
    /// Errors: invalid options (the message names the field) and rejected credentials are
    /// [`DcsError::Fatal`]; no reachable server is [`DcsError::Unavailable`]. Must be called
    /// inside a tokio runtime (the session supervisor runs on it).
    pub async fn connect(options: ZkOptions, timing: &Timing) -> Result<ZkClient, DcsError> {
        options.validate(timing).map_err(|e| DcsError::fatal(e.to_string()))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| DcsError::fatal("ZkClient::connect must be called inside a tokio runtime"))?;
        let session = open_session(&options, timing.ttl, 1).await?;
        Ok(ZkClient { shared: Shared::new(options, timing.ttl, reuse_window(timing), session, runtime) })
    }

    /// A handle on election scope `scope`, stored under `<prefix>/<scope>`. A scope name
    /// that is empty or contains `/` or control characters makes every call on the handle
    /// fail with [`DcsError::Fatal`].
    pub fn scope(&self, scope: &str) -> ZkDcs {
        ZkDcs::new(self.shared.clone(), scope)
    }

    /// The `timing.ttl` this client was built with: the session timeout it asks for.
    pub fn configured_ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// The lease the store enforces: the negotiated session timeout. It differs from
    /// [`configured_ttl`](Self::configured_ttl) when the server clamped the request to its
    /// `[2, 20] x tickTime` range ([`ttl_clamped`](Self::ttl_clamped)).
    pub fn lease_ttl(&self) -> Duration {
        self.shared.timeout()
    }

    /// Whether the server clamped the session timeout asked for (`timing.ttl`).
    pub fn ttl_clamped(&self) -> bool {
        self.lease_ttl() != self.configured_ttl()
    }

    /// The current session's id (0 once closed); changes when an expired session is replaced.
    pub fn session_id(&self) -> i64 {
        self.shared.session().map(|s| s.id()).unwrap_or(0)
    }

    /// Whether the client is connected to a server right now.
    pub fn is_connected(&self) -> bool {
        self.shared.is_connected()
    }

    /// Stops at once, without waiting for the store: the session supervisor and watches end
    /// and every call on every handle fails with [`DcsError::Fatal`]. ZooKeeper: the session
    /// is dropped; the client library still closes it on the server in the background
    /// (unless [`ZkOptions::detached`]: then the znodes expire with the session timeout, as
    /// after a crash).
    pub fn stop(&self) {
        self.shared.close();
    }

    /// Stops like [`stop`](Self::stop), then ends this process's session on the store
    /// (ZooKeeper: closes it) and waits for the answer, at most `request_timeout`, so every
    /// ephemeral znode held through it (members and any leader key still held) is gone now.
    /// Release leader keys with [`Dcs::release`](leasehold::Dcs::release) first for an orderly
    /// step-down. With [`ZkOptions::detached`] the session is only dropped, as by `stop`.
    pub async fn shutdown(&self) -> Result<(), DcsError> {
        self.shared.shutdown().await
    }

    /// The current session, for the test harness's raw writes.
    #[cfg(feature = "testing")]
    pub(crate) fn shared_session(&self) -> Result<Arc<crate::session::Session>, DcsError> {
        self.shared.session()
    }
}
