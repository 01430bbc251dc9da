//! One etcd connection and one lease per process, shared by any number of scope handles.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, PutOptions, TlsOptions};
use leasehold::{DcsError, Timing};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::dcs::EtcdDcs;
use crate::error::{Op, timed};
use crate::keeper;
use crate::mirror::Mirror;
use crate::options::EtcdOptions;

/// The current process lease as this process knows it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseState {
    /// etcd's lease id.
    pub(crate) id: i64,
    /// The lease lives at least until here (send time of the last acknowledged keep-alive
    /// plus the TTL), on this process's monotonic clock.
    pub(crate) expires: Instant,
    /// When the last acknowledged keep-alive (or the grant) was sent.
    pub(crate) sent: Instant,
    /// etcd said the lease is gone; a new one is being granted.
    pub(crate) lost: bool,
}

/// A keep-alive that etcd acknowledged: lease `id` lives at least until `expires`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ack {
    pub(crate) id: i64,
    pub(crate) expires: Instant,
}

/// A member key this process keeps, re-written under a new lease after a re-grant.
#[derive(Clone, Debug)]
pub(crate) struct Published {
    pub(crate) bytes: Vec<u8>,
    /// The lease the bytes were last written with; `None` when a write is still owed.
    pub(crate) written_with: Option<i64>,
}

pub(crate) type Waiter = oneshot::Sender<Result<Ack, DcsError>>;

/// Which of the process's leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    /// The process lease (ttl): leader keys, and member keys without a member lease.
    Process,
    /// The member lease (`EtcdOptions::member_ttl`).
    Members,
}

impl Which {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Which::Process => "process",
            Which::Members => "member",
        }
    }
}

/// The lease that carries member keys when [`EtcdOptions::member_ttl`] is set, with its own
/// keep-alive task.
pub(crate) struct MemberLease {
    pub(crate) ttl: Duration,
    pub(crate) lease: Mutex<LeaseState>,
    refresh: mpsc::UnboundedSender<Waiter>,
}

pub(crate) struct Inner {
    pub(crate) etcd: Client,
    pub(crate) options: EtcdOptions,
    /// The TTL etcd granted (it may raise a short one to its minimum).
    pub(crate) ttl: Duration,
    /// `Timing::ttl` given to `connect`, before rounding to whole seconds and etcd's minimum.
    pub(crate) configured_ttl: Duration,
    pub(crate) lease: Mutex<LeaseState>,
    /// Member keys of this process, by full key.
    pub(crate) published: Mutex<BTreeMap<String, Published>>,
    /// Leader keys this process holds. While any is held, only `acquire`/`renew` keep the
    /// lease alive, so a holder that stops renewing loses its keys within the TTL.
    pub(crate) held: Mutex<BTreeSet<String>>,
    /// Requests sent to etcd by this client (unary calls, keep-alive messages, watch streams).
    pub(crate) requests: AtomicU64,
    /// The process's watch over the whole prefix.
    pub(crate) mirror: Mirror,
    /// The highest revision this process has been told about (its own writes, and keys that
    /// lost compare-and-sets returned): the mirror must have applied it before it is read.
    pub(crate) seen: AtomicU64,
    /// How old an acknowledged keep-alive a renewal may reuse instead of sending its own.
    pub(crate) reuse: Duration,
    refresh: mpsc::UnboundedSender<Waiter>,
    /// The member lease, when member keys have one of their own.
    pub(crate) members: Option<MemberLease>,
    stopped: AtomicBool,
    /// The keep-alive tasks (process lease, member lease).
    keepers: Mutex<Vec<AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self.keepers.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            task.abort();
        }
    }
}

/// How old a keep-alive a renewal may reuse: while the belief it still gives the node
/// ([`Timing::belief_for`]) exceeds `retry_timeout` by a loop (at most `ttl / 10`), and at
/// least `ttl / 60` (at most 500 ms) so a process leading many scopes sends a few
/// keep-alives a second, not one per renewal. The node renews again `retry_timeout` before
/// its belief ends (`Node`'s early renewal), which is then older than this window: so a
/// leader keeps Patroni's promise (a store outage shorter than `retry_timeout` costs no
/// leadership) with one keep-alive per `belief - retry_timeout` instead of one per loop. A
/// reused keep-alive shortens the renewed lease by its age, never more.
fn reuse_window(timing: &Timing, ttl: Duration) -> Duration {
    let slack = timing.loop_wait.min(ttl / 10);
    let spare = timing.belief_for(ttl).saturating_sub(timing.retry_timeout + slack);
    spare.max((ttl / 60).min(Duration::from_millis(500)))
}

/// Grants lease `which` at connect: `ttl` rounded up to whole seconds (etcd may raise it to
/// its minimum); the granted TTL is `expires - sent`.
async fn grant(etcd: &Client, which: Which, ttl: Duration, limit: Duration) -> Result<LeaseState, DcsError> {
    let asked = i64::try_from(ttl.as_secs_f64().ceil() as u64).unwrap_or(i64::MAX);
    let sent = now();
    let what = format!("grant the {} lease", which.name());
    let grant = timed(Op::Write, &what, limit, || async { etcd.lease_client().grant(asked, None).await }).await?;
    if !grant.error().is_empty() || grant.ttl() <= 0 {
        return Err(DcsError::unavailable(format!(
            "etcd did not grant the {} lease (ttl {}): {}",
            which.name(),
            grant.ttl(),
            grant.error()
        )));
    }
    let expires = sent + Duration::from_secs(grant.ttl().unsigned_abs());
    Ok(LeaseState { id: grant.id(), expires, sent, lost: false })
}

/// The current instant on the monotonic clock.
#[allow(clippy::disallowed_methods)] // a store client measures its own lease on the real clock
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Locks a std mutex; a panic elsewhere cannot leave these plain maps half-updated.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection to an etcd v3 cluster for leader election.
///
/// Cheap to clone; every clone and every [`EtcdDcs`] handle from [`EtcdClient::scope`] shares
/// one gRPC channel and **one lease**: every leader key and member key this process writes is
/// attached to it, so a crash removes them all within the TTL.
///
/// The lease is kept alive by a background task every `ttl / 3` while this process holds no
/// leader key. While it holds one, only [`Dcs::acquire`](leasehold::Dcs::acquire) and
/// [`Dcs::renew`](leasehold::Dcs::renew) refresh it (concurrent calls share one keep-alive),
/// so a holder that stops renewing loses its keys a TTL after its last renew, as in Patroni.
/// When etcd reports the lease gone, the task grants a new one and re-writes this process's
/// member keys; leader keys are gone with the old lease and renewals of them are `Lost`.
///
/// With [`EtcdOptions::member_ttl`] the member keys live on a second lease of that TTL, kept
/// alive in the background every third of it; the ttl lease then carries only leader keys,
/// gets no background keep-alive and lapses while the process leads nothing (an acquisition
/// first sends a keep-alive; etcd answers that a lapsed lease is gone, the keeper grants a new
/// one, and a second keep-alive refreshes it).
#[derive(Clone)]
pub struct EtcdClient {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lease = *lock(&self.inner.lease);
        f.debug_struct("EtcdClient")
            .field("endpoints", &self.inner.options.endpoints)
            .field("prefix", &self.inner.options.prefix)
            .field("lease", &lease.id)
            .finish_non_exhaustive()
    }
}

fn read_file(field: &str, path: &std::path::Path) -> Result<Vec<u8>, DcsError> {
    std::fs::read(path)
        .map_err(|e| DcsError::fatal(format!("etcd option {field}: cannot read {}: {e}", path.display())))
}

fn connect_options(options: &EtcdOptions) -> Result<ConnectOptions, DcsError> {
    let mut co = ConnectOptions::new()
        .with_connect_timeout(options.dial_timeout)
        .with_keep_alive(options.keepalive_interval, options.keepalive_interval)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true)
        .with_auto_token_refresh(true);
    if let (Some(user), Some(password)) = (&options.user, &options.password) {
        co = co.with_user(user.clone(), password.clone());
    }
    if options.uses_tls() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &options.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read_file("ca_file", ca)?));
        }
        if let (Some(cert), Some(key)) = (&options.cert_file, &options.key_file) {
            tls = tls.identity(Identity::from_pem(read_file("cert_file", cert)?, read_file("key_file", key)?));
        }
        co = co.with_tls(tls);
    }
    Ok(co)
}

impl EtcdClient {
    /// Connects, authenticates (when `user` is set) and grants the process lease with
    /// `timing.ttl` (rounded up to whole seconds). Give every node on this client the same
    /// `timing`: the driver refuses one whose ttl differs ([`Dcs::configured_ttl`](leasehold::Dcs)).
    ///
    /// Bad options, unreadable TLS files and a wrong user or password are
    /// [`DcsError::Fatal`] with a message naming the cause; an unreachable cluster is
    /// [`DcsError::Unavailable`] naming the endpoints. Must be called within a tokio runtime
    /// (it starts the keep-alive task).
    pub async fn connect(options: EtcdOptions, timing: &Timing) -> Result<EtcdClient, DcsError> {
        options.validate(timing).map_err(|e| DcsError::fatal(e.to_string()))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| DcsError::fatal("EtcdClient::connect must be called inside a tokio runtime"))?;
        let co = connect_options(&options)?;
        let endpoints = options.endpoints.join(",");
        let unreachable = |e: DcsError| match e {
            DcsError::Fatal { .. } | DcsError::LeaseLost { .. } => e,
            other => DcsError::unavailable(format!(
                "no etcd member of {endpoints} answered within dial_timeout {:?}: {other}",
                options.dial_timeout
            )),
        };
        // Connecting authenticates when a user is set, so it is the first request.
        let etcd =
            timed(Op::Read, "connect", options.dial_timeout, || Client::connect(&options.endpoints, Some(co.clone())))
                .await
                .map_err(unreachable)?;
        let process = grant(&etcd, Which::Process, timing.ttl, options.dial_timeout).await.map_err(unreachable)?;
        let ttl = process.expires - process.sent;
        if ttl != timing.ttl {
            tracing::info!(asked = ?timing.ttl, granted = ?ttl, "etcd granted another lease TTL than timing.ttl");
        }
        let (refresh, requests) = mpsc::unbounded_channel();
        let members = match options.member_ttl {
            None => None,
            Some(member_ttl) => {
                let lease =
                    grant(&etcd, Which::Members, member_ttl, options.dial_timeout).await.map_err(unreachable)?;
                let (refresh, requests) = mpsc::unbounded_channel();
                let ttl = lease.expires - lease.sent;
                Some((MemberLease { ttl, lease: Mutex::new(lease), refresh }, requests))
            }
        };
        let (members, member_requests) = match members {
            Some((lease, requests)) => (Some(lease), Some(requests)),
            None => (None, None),
        };
        let inner = Arc::new(Inner {
            etcd,
            options,
            ttl,
            configured_ttl: timing.ttl,
            lease: Mutex::new(process),
            published: Mutex::new(BTreeMap::new()),
            held: Mutex::new(BTreeSet::new()),
            requests: AtomicU64::new(if members.is_some() { 3 } else { 2 }),
            mirror: Mirror::default(),
            seen: AtomicU64::new(0),
            reuse: reuse_window(timing, ttl),
            refresh,
            members,
            stopped: AtomicBool::new(false),
            keepers: Mutex::new(Vec::new()),
        });
        // The client owns its keep-alives, as a store client owns its session heartbeat.
        let task = runtime.spawn(keeper::run(Arc::downgrade(&inner), Which::Process, requests));
        lock(&inner.keepers).push(task.abort_handle());
        if let Some(requests) = member_requests {
            let task = runtime.spawn(keeper::run(Arc::downgrade(&inner), Which::Members, requests));
            lock(&inner.keepers).push(task.abort_handle());
        }
        tracing::debug!(lease = process.id, ?ttl, "etcd process lease granted");
        Ok(EtcdClient { inner })
    }

    /// A handle on election scope `scope`: keys under `<prefix>/<scope>/`. The scope must be
    /// non-empty and contain no `/` or control characters; otherwise every call on the
    /// handle fails with [`DcsError::Fatal`] naming the rule.
    pub fn scope(&self, scope: &str) -> EtcdDcs {
        EtcdDcs::new(self.inner.clone(), scope)
    }

    /// The `timing.ttl` this client was built with.
    pub fn configured_ttl(&self) -> Duration {
        self.inner.configured_ttl
    }

    /// The lease TTL the store enforces: what etcd granted (`timing.ttl` rounded up to whole
    /// seconds, or raised to etcd's minimum).
    pub fn lease_ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The current process lease id.
    pub fn lease_id(&self) -> i64 {
        lock(&self.inner.lease).id
    }

    /// How many requests this client has sent to etcd: unary calls, lease keep-alive
    /// messages and watch streams opened. For measuring idle cost.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// The underlying etcd-client handle (same channel and credentials), for tools and tests.
    pub fn raw(&self) -> Client {
        self.inner.etcd.clone()
    }

    /// Stops at once, sending nothing: the background keep-alive ends and every call on every
    /// handle fails with [`DcsError::Fatal`]. This process's keys stay until the store expires
    /// its lease, as after a crash.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.mirror.stop();
        for task in lock(&self.inner.keepers).drain(..) {
            task.abort();
        }
    }

    /// Stops like [`stop`](Self::stop), then ends this process's lease on the store (etcd:
    /// revokes it) and waits for the answer, at most `request_timeout`, so every key held
    /// through it (members and any leader key still held) is gone now. Release leader keys
    /// with [`Dcs::release`](leasehold::Dcs::release) first for an orderly step-down.
    pub async fn shutdown(&self) -> Result<(), DcsError> {
        self.stop();
        let mut leases = vec![(Which::Process, lock(&self.inner.lease).id)];
        if let Some(members) = &self.inner.members {
            leases.push((Which::Members, lock(&members.lease).id));
        }
        for (which, id) in leases {
            self.inner.count();
            let what = format!("revoke the {} lease", which.name());
            timed(Op::Write, &what, self.inner.options.request_timeout, || async {
                self.inner.etcd.lease_client().revoke(id).await
            })
            .await?;
        }
        Ok(())
    }
}

impl Inner {
    pub(crate) fn check_running(&self) -> Result<(), DcsError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(DcsError::fatal("this EtcdClient was stopped"));
        }
        Ok(())
    }

    /// Counts one request to etcd.
    pub(crate) fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The state of lease `which` (the process lease when there is no member lease).
    pub(crate) fn lease_state(&self, which: Which) -> &Mutex<LeaseState> {
        match (which, &self.members) {
            (Which::Members, Some(members)) => &members.lease,
            _ => &self.lease,
        }
    }

    /// The TTL etcd granted lease `which`.
    pub(crate) fn lease_ttl(&self, which: Which) -> Duration {
        match (which, &self.members) {
            (Which::Members, Some(members)) => members.ttl,
            _ => self.ttl,
        }
    }

    /// The lease member keys are attached to.
    pub(crate) fn member_lease(&self) -> Which {
        if self.members.is_some() { Which::Members } else { Which::Process }
    }

    /// Whether lease `which` carries this process's member keys.
    pub(crate) fn carries_members(&self, which: Which) -> bool {
        self.member_lease() == which
    }

    /// Whether lease `which` gets a keep-alive every third of its TTL with nobody asking:
    /// a member lease always; the process lease while it carries member keys and no leader
    /// key is held (while one is held, only renewals keep it alive, so a holder that stops
    /// renewing loses its keys a TTL later). A process lease that carries nothing is left to
    /// lapse; the next acquisition's keep-alive finds it gone and the keeper grants a new one.
    pub(crate) fn kept_in_background(&self, which: Which) -> bool {
        match which {
            Which::Members => true,
            Which::Process => self.members.is_none() && lock(&self.held).is_empty(),
        }
    }

    /// Lease `which` to attach new keys to; unavailable while a lost lease is being replaced.
    pub(crate) fn current(&self, which: Which) -> Result<LeaseState, DcsError> {
        let lease = *lock(self.lease_state(which));
        if lease.lost {
            self.poke(which);
            let name = which.name();
            return Err(DcsError::unavailable(format!("the {name} lease expired; a new one is being granted, retry")));
        }
        Ok(lease)
    }

    /// The process lease to attach new keys to; see [`current`](Self::current).
    pub(crate) fn current_lease(&self) -> Result<LeaseState, DcsError> {
        self.current(Which::Process)
    }

    /// Asks lease `which`'s keeper for a keep-alive without waiting (it also re-grants a
    /// lost lease).
    pub(crate) fn poke(&self, which: Which) {
        let (tx, _rx) = oneshot::channel();
        let refresh = match (which, &self.members) {
            (Which::Members, Some(members)) => &members.refresh,
            _ => &self.refresh,
        };
        let _ = refresh.send(tx);
    }

    /// An acknowledged keep-alive sent at or after `earliest`: the last one when it is recent
    /// enough, else a new one (shared with concurrent callers).
    pub(crate) async fn keep_alive_since(&self, earliest: Instant) -> Result<Ack, DcsError> {
        let lease = *lock(&self.lease);
        if !lease.lost && lease.sent >= earliest {
            return Ok(Ack { id: lease.id, expires: lease.expires });
        }
        self.keep_alive().await
    }

    /// Notes that this process was told about `revision`.
    pub(crate) fn saw(&self, revision: u64) {
        self.seen.fetch_max(revision, Ordering::SeqCst);
    }

    /// A keep-alive sent after this call started. Concurrent callers share one.
    pub(crate) async fn keep_alive(&self) -> Result<Ack, DcsError> {
        let (tx, rx) = oneshot::channel();
        self.refresh.send(tx).map_err(|_| DcsError::fatal("the lease keeper of this EtcdClient has stopped"))?;
        rx.await.map_err(|_| DcsError::fatal("the lease keeper of this EtcdClient has stopped"))?
    }

    /// A keep-alive of the process lease; when etcd answers that it lapsed (the keeper then
    /// grants a new one), a second keep-alive of the new lease.
    pub(crate) async fn keep_alive_regranting(&self) -> Result<Ack, DcsError> {
        match self.keep_alive().await {
            Err(DcsError::LeaseLost { .. }) => self.keep_alive().await,
            other => other,
        }
    }

    /// Writes a member key with the current lease; `Ok(false)` when the lease is gone.
    pub(crate) async fn put_member(&self, key: &str, bytes: Vec<u8>, lease: i64) -> Result<(), DcsError> {
        self.count();
        let what = format!("publish member {key}");
        timed(Op::Write, &what, self.options.request_timeout, || {
            let bytes = bytes.clone();
            async move { self.etcd.kv_client().put(key, bytes, Some(PutOptions::new().with_lease(lease))).await }
        })
        .await
        .map(|resp| {
            if let Some(h) = resp.header() {
                self.saw(h.revision().unsigned_abs());
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loop's renewal reuses the keep-alive of the loop before, and the node's early
    /// renewal (`retry_timeout` before its belief ends) never does: otherwise a leader would
    /// keep acting on a keep-alive too old to leave it `retry_timeout` of store outage.
    #[test]
    fn loops_reuse_a_keep_alive_and_the_early_renewal_sends_one() {
        let secs = Duration::from_secs;
        let tight = Timing { ttl: secs(20), loop_wait: secs(1), retry_timeout: secs(3), ..Timing::default() };
        // The test harness's (testing::timing).
        let ms = Duration::from_millis;
        let tests = Timing {
            ttl: secs(2),
            loop_wait: ms(400),
            retry_timeout: ms(600),
            safety_margin: ms(400),
            ..Timing::default()
        };
        for timing in [Timing::default(), tight, tests] {
            let window = reuse_window(&timing, timing.ttl);
            let early = timing.belief_for(timing.ttl) - timing.retry_timeout;
            assert!(window >= timing.loop_wait, "{timing:?}: a loop's renewal cannot reuse ({window:?})");
            assert!(window < early, "{timing:?}: the early renewal at {early:?} would reuse ({window:?})");
        }
    }
}
