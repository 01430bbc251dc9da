//! One connection to the Consul agent and one session, shared by any number of scope
//! handles, with the keep-alive that renews the session.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use leasehold::{DcsError, Timing};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::api::{Acquired, Api, Created};
use crate::dcs::ConsulDcs;
use crate::mirror::Mirror;
use crate::options::{ConsulOptions, session_ttl};

/// The caller's monotonic clock: lease validity is measured from when a request was sent.
#[allow(clippy::disallowed_methods)] // A backend is I/O: it times its own requests (DESIGN.md rule 1).
pub(crate) fn now() -> Instant {
    Instant::now()
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Longest wait of the mirror's blocking query (Consul caps waits at 10 minutes).
const MAX_MIRROR_WAIT: Duration = Duration::from_secs(600);

pub(crate) struct Inner {
    pub(crate) api: Api,
    pub(crate) options: ConsulOptions,
    /// The session TTL in force: half of `timing.ttl`.
    pub(crate) session_ttl: Duration,
    /// `Timing::ttl` given to `connect`.
    pub(crate) configured_ttl: Duration,
    /// Serialises session creation; `None` after the session was lost.
    session: tokio::sync::Mutex<Option<String>>,
    /// A copy of the current session ID readable without awaiting.
    current: Mutex<Option<String>>,
    /// When the last successful create or renew of the current session was *sent*.
    renewed: Mutex<Option<Instant>>,
    /// Member keys this process published (key -> value), re-published on a new session.
    members: Mutex<BTreeMap<String, Vec<u8>>>,
    /// One async lock per leader key: two acquires in one process (one session) must not both
    /// "win", since Consul lets a session re-acquire a key it already holds.
    acquire_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    stopped: AtomicBool,
    keepalive: Mutex<Option<AbortHandle>>,
    /// The process's view of the whole prefix (one blocking query), started on first use.
    pub(crate) mirror: Arc<Mirror>,
    /// How old a session renewal a leader's renew may reuse instead of sending its own.
    reuse: Duration,
    /// Serialises session renewals, so concurrent renews share one.
    renewing: tokio::sync::Mutex<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.keepalive).take() {
            task.abort();
        }
        self.mirror.stop();
    }
}

/// How old a session renewal a leader's renew may reuse: what the timing leaves spare of
/// the session TTL (`session_ttl - loop_wait - 2 * retry_timeout`, at most a third of it),
/// and at least `session_ttl / 60` (at most 500 ms), so a process leading many scopes sends a
/// few renewals a second, not one per scope. A reused renewal shortens the renewed lease by
/// its age, never more.
fn reuse_window(timing: &Timing, session_ttl: Duration) -> Duration {
    let spare = session_ttl.saturating_sub(timing.loop_wait + timing.retry_timeout * 2).min(session_ttl / 3);
    spare.max((session_ttl / 60).min(Duration::from_millis(500)))
}

/// A connection to a Consul agent for leader election: one HTTP client and one session.
///
/// Cheap to clone; every clone and every [`ConsulDcs`] from [`ConsulClient::scope`] shares the
/// session. The session is created by [`connect`](ConsulClient::connect) with TTL = `timing.ttl / 2`,
/// `Behavior = delete`, the configured lock-delay and no health checks (unless configured). A
/// keep-alive task renews it every session TTL / 3 and stops when the client and all its
/// handles are dropped, or on [`stop`](ConsulClient::stop). If the session is lost
/// (invalidated, expired), the keep-alive creates a new one and re-publishes this process's
/// member keys; leader keys held under the old session are gone, and renewing them reports
/// the loss.
#[derive(Clone)]
pub struct ConsulClient {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulClient")
            .field("address", &self.inner.options.address)
            .field("session", &*lock(&self.inner.current))
            .finish_non_exhaustive()
    }
}

impl ConsulClient {
    /// Validates `options`, creates the session with TTL `timing.ttl / 2` and starts its
    /// keep-alive. Give every node on this client the same `timing`: the driver refuses one
    /// whose ttl differs ([`Dcs::configured_ttl`](leasehold::Dcs)).
    ///
    /// Errors: invalid options, a refused or missing ACL token (403) and TLS files that
    /// cannot be read are [`DcsError::Fatal`] with a message naming the cause; an agent that
    /// cannot be reached is [`DcsError::Unavailable`]. A ttl whose session TTL (ttl / 2) is
    /// below `session_ttl_min` (Consul's 10 s floor by default) is refused by the option
    /// check; an agent that refuses the session TTL anyway (`Invalid Session TTL`: its floor
    /// is higher than `session_ttl_min` says) is [`DcsError::Fatal`] naming the floor. The
    /// TTL is never stretched behind the caller's back: the lease would outlive its ttl.
    pub async fn connect(options: ConsulOptions, timing: &Timing) -> Result<ConsulClient, DcsError> {
        options.validate(timing).map_err(|e| DcsError::fatal_with(e.to_string(), e))?;
        let api = Api::new(&options)?;
        let session_ttl = session_ttl(timing);
        let sent = now();
        let id = match Self::create(&api, &options, session_ttl).await? {
            Created::Id(id) => id,
            Created::InvalidTtl { min, message } => {
                let floor =
                    min.map_or_else(|| "its session-TTL floor".to_string(), |m| format!("its {m:?} session-TTL floor"));
                return Err(DcsError::fatal(format!(
                    "consul refused the session TTL {session_ttl:?} (ttl / 2 of ttl {:?}), below {floor} \
                     (session_ttl_min); raise ttl to at least twice the floor ({message})",
                    timing.ttl
                )));
            }
        };
        tracing::debug!(session = %id, ttl = ?session_ttl, "consul session created");
        let options_prefix = options.prefix.clone();
        let inner = Arc::new(Inner {
            api,
            options,
            session_ttl,
            configured_ttl: timing.ttl,
            session: tokio::sync::Mutex::new(Some(id.clone())),
            current: Mutex::new(Some(id)),
            renewed: Mutex::new(Some(sent)),
            members: Mutex::default(),
            acquire_locks: Mutex::default(),
            stopped: AtomicBool::new(false),
            keepalive: Mutex::new(None),
            mirror: Arc::new(Mirror::new(&options_prefix)),
            reuse: reuse_window(timing, session_ttl),
            renewing: tokio::sync::Mutex::new(()),
        });
        let weak = Arc::downgrade(&inner);
        // One keep-alive per client, the equivalent of etcd's lease keep-alive stream; it holds
        // only a Weak so dropping the client ends it.
        let task = tokio::runtime::Handle::current().spawn(keepalive(weak, session_ttl));
        *lock(&inner.keepalive) = Some(task.abort_handle());
        Ok(ConsulClient { inner })
    }

    async fn create(api: &Api, options: &ConsulOptions, ttl: Duration) -> Result<Created, DcsError> {
        api.create_session(&options.session_name, ttl, options.lock_delay, &options.checks).await
    }

    /// A handle on one election scope, sharing this client's session.
    pub fn scope(&self, scope: &str) -> ConsulDcs {
        ConsulDcs::new(self.clone(), scope)
    }

    /// The current session ID (`None` between losing a session and creating the next).
    pub fn session_id(&self) -> Option<String> {
        lock(&self.inner.current).clone()
    }

    /// The `timing.ttl` this client was built with.
    pub fn configured_ttl(&self) -> Duration {
        self.inner.configured_ttl
    }

    /// The lease the store enforces: the session TTL, `timing.ttl / 2` (Consul may take up to
    /// twice that to invalidate a session, so a dead holder's key is gone within ttl).
    pub fn lease_ttl(&self) -> Duration {
        self.inner.session_ttl
    }

    /// Stops at once, sending nothing: the background keep-alive ends and every call on every
    /// handle fails with [`DcsError::Fatal`]. This process's keys stay until the store expires
    /// its session (within 2x the session TTL), as after a crash.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        if let Some(task) = lock(&self.inner.keepalive).take() {
            task.abort();
        }
        self.inner.mirror.stop();
    }

    /// Starts the process's mirror (one blocking query on the prefix) unless it runs or is
    /// switched off ([`ConsulOptions::watch_mirror`]).
    pub(crate) fn start_mirror(&self) {
        if self.inner.options.watch_mirror && !self.inner.stopped.load(Ordering::SeqCst) {
            let wait = self.inner.configured_ttl.clamp(Duration::from_secs(1), MAX_MIRROR_WAIT);
            self.inner.mirror.start(&self.inner.api, wait);
        }
    }

    /// Whether the last successful session renewal was sent within `session_ttl / 3 +
    /// request_timeout`: the agent reached the servers' leader that recently, so a mirror
    /// it feeds is not cut off from the cluster (a cut-off agent's blocking query goes
    /// silent rather than failing).
    pub(crate) fn renew_recent(&self) -> bool {
        let limit = self.inner.session_ttl / 3 + self.inner.options.request_timeout;
        lock(&self.inner.renewed).is_some_and(|sent| now().saturating_duration_since(sent) <= limit)
    }

    /// A session renewal sent at or after `earliest`: the last one when it is that recent,
    /// else a new one. Concurrent callers share one request.
    pub(crate) async fn renew_session_since(&self, earliest: Instant) -> Result<(String, Instant), DcsError> {
        let _one_at_a_time = self.inner.renewing.lock().await;
        let last = *lock(&self.inner.renewed);
        if let (Some(sent), Some(id)) = (last, self.session_id())
            && sent >= earliest
        {
            return Ok((id, sent));
        }
        self.renew_session().await
    }

    /// The oldest renewal a renew that started at `started` may reuse.
    pub(crate) fn reuse_since(&self, started: Instant) -> Instant {
        started.checked_sub(self.inner.reuse).unwrap_or(started)
    }

    /// Stops like [`stop`](Self::stop), then ends this process's session on the store
    /// (Consul: destroys it) and waits for the answer, at most `request_timeout`, so every
    /// key held through it (members and any leader key still held) is gone now. Release
    /// leader keys with [`Dcs::release`](leasehold::Dcs::release) first for an orderly
    /// step-down.
    pub async fn shutdown(&self) -> Result<(), DcsError> {
        self.stop();
        let id = self.inner.session.lock().await.take();
        *lock(&self.inner.current) = None;
        match id {
            Some(id) => self.inner.api.destroy_session(&id).await,
            None => Ok(()),
        }
    }

    pub(crate) fn check_running(&self) -> Result<(), DcsError> {
        if self.inner.stopped.load(Ordering::SeqCst) {
            return Err(DcsError::fatal("consul client was stopped"));
        }
        Ok(())
    }

    /// The current session, creating one if the last was lost.
    pub(crate) async fn ensure_session(&self) -> Result<String, DcsError> {
        self.check_running()?;
        let inner = &self.inner;
        let mut slot = inner.session.lock().await;
        if let Some(id) = &*slot {
            return Ok(id.clone());
        }
        let sent = now();
        let id = match Self::create(&inner.api, &inner.options, inner.session_ttl).await? {
            Created::Id(id) => id,
            Created::InvalidTtl { message, .. } => {
                return Err(DcsError::fatal(format!("consul session/create: {message}")));
            }
        };
        tracing::info!(session = %id, "consul: created a new session after losing the last one");
        *slot = Some(id.clone());
        *lock(&inner.current) = Some(id.clone());
        *lock(&inner.renewed) = Some(sent);
        let members: Vec<(String, Vec<u8>)> =
            lock(&inner.members).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (key, value) in members {
            if let Err(e) = self.publish_key(&key, &value, &id).await {
                tracing::warn!(%key, error = %e, "consul: could not re-publish a member key on the new session");
            }
        }
        Ok(id)
    }

    /// Forgets `id` if it is still the current session.
    pub(crate) async fn lose_session(&self, id: &str) {
        let mut slot = self.inner.session.lock().await;
        if slot.as_deref() == Some(id) {
            tracing::warn!(session = %id, "consul session is gone (invalidated or expired)");
            *slot = None;
            *lock(&self.inner.current) = None;
            *lock(&self.inner.renewed) = None;
        }
    }

    /// Renews the session. Returns its ID and when the renewal was sent; a session that is
    /// gone is [`DcsError::LeaseLost`].
    pub(crate) async fn renew_session(&self) -> Result<(String, Instant), DcsError> {
        self.check_running()?;
        let Some(id) = self.session_id() else {
            return Err(DcsError::lease_lost("the consul session was lost; a new one is being created"));
        };
        let sent = now();
        if !self.inner.api.renew_session(&id).await? {
            self.lose_session(&id).await;
            return Err(DcsError::lease_lost(format!(
                "consul session {id} is gone (invalidated, expired or destroyed)"
            )));
        }
        let mut renewed = lock(&self.inner.renewed);
        if self.session_id().as_deref() == Some(id.as_str()) && renewed.is_none_or(|r| r < sent) {
            *renewed = Some(sent);
        }
        Ok((id, sent))
    }

    /// How long, from `from`, the current session is guaranteed to live.
    pub(crate) fn valid_from(&self, from: Instant) -> Duration {
        match *lock(&self.inner.renewed) {
            Some(sent) => (sent + self.inner.session_ttl).saturating_duration_since(from),
            None => Duration::ZERO,
        }
    }

    pub(crate) fn acquire_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.inner.acquire_locks).entry(key.to_string()).or_default().clone()
    }

    /// Binds a member key to `session`: acquire; if an old session of ours (or a crashed
    /// incarnation) still holds it, delete that and acquire again (as Patroni does).
    pub(crate) async fn publish_key(&self, key: &str, value: &[u8], session: &str) -> Result<(), DcsError> {
        let api = &self.inner.api;
        for _ in 0..2 {
            match api.acquire(key, value, session).await? {
                Acquired::Done(true) => return Ok(()),
                Acquired::InvalidSession => {
                    self.lose_session(session).await;
                    return Err(DcsError::unavailable("consul session was invalidated; a new one is being created"));
                }
                Acquired::Done(false) => match api.get(key).await? {
                    Some(e) if e.session.is_some() && e.session.as_deref() != Some(session) => {
                        api.delete_cas(key, e.modify_index).await?;
                    }
                    _ => {}
                },
            }
        }
        Err(DcsError::unavailable(format!(
            "consul: member key {key:?} is locked (lock-delay after a lost session); retry"
        )))
    }

    pub(crate) fn remember_member(&self, key: &str, value: &[u8]) {
        lock(&self.inner.members).insert(key.to_string(), value.to_vec());
    }
}

async fn keepalive(weak: Weak<Inner>, session_ttl: Duration) {
    let interval = (session_ttl / 3).max(Duration::from_millis(1));
    let mut pause = interval;
    loop {
        tokio::time::sleep(pause).await;
        let Some(inner) = weak.upgrade() else { return };
        let client = ConsulClient { inner };
        if client.check_running().is_err() {
            return;
        }
        // A leader's renew renews the same session: count it, so a process leading scopes
        // sends no keep-alive of its own while its renewals come often enough.
        let age = lock(&client.inner.renewed).map(|sent| now().saturating_duration_since(sent));
        if let Some(age) = age
            && age < interval
        {
            pause = (interval - age).max(Duration::from_millis(1));
            continue;
        }
        let result = match client.renew_session().await {
            Err(e) if e.is_lease_lost() => client.ensure_session().await.map(|_| ()),
            other => other.map(|_| ()),
        };
        pause = match result {
            Ok(()) => interval,
            Err(e) => {
                tracing::warn!(error = %e, "consul session keep-alive failed; retrying");
                (interval / 3).max(Duration::from_millis(1))
            }
        };
    }
}
