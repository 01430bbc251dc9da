//! The one ZooKeeper session a process shares between all its scopes: connecting, failing
//! fast while disconnected, replacing an expired session, and re-registering members.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use leasehold::{DcsError, Epoch};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use zookeeper_client as zk;

use crate::error::{Op, classify, interrupted};
use crate::mirror::Mirror;
use crate::options::{AclPolicy, ZkOptions, parse_connect};

/// The caller's monotonic clock.
#[allow(clippy::disallowed_methods)] // A store client times its own requests and its session's silence.
pub(crate) fn now() -> Instant {
    Instant::now()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One established ZooKeeper session.
pub(crate) struct Session {
    /// The client, chrooted if the connect string names a chroot.
    pub(crate) zk: zk::Client,
    /// 1 for the first session of a [`ZkClient`](crate::ZkClient), +1 for each replacement.
    pub(crate) number: u64,
    /// The negotiated session timeout.
    pub(crate) timeout: Duration,
    /// The client's idle limit before it declares the connection dead.
    pub(crate) connection_timeout: Duration,
}

impl Session {
    pub(crate) fn id(&self) -> i64 {
        self.zk.session_id().0
    }
}

/// What the process knows about its link to the server.
struct Link {
    connected: bool,
    /// Start of the last request the server answered: the server heard from us after it.
    last_answered: Instant,
    /// When the client declared the connection lost.
    disconnected_at: Option<Instant>,
}

/// A persistent recursive watch on one scope's subtree, counting its events.
pub(crate) struct ScopeWatch {
    pub(crate) session: u64,
    pub(crate) seq: watch::Sender<u64>,
    task: AbortHandle,
}

impl Drop for ScopeWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) struct Shared {
    pub(crate) options: ZkOptions,
    /// `Timing::ttl` given to `connect`: the session timeout every session asks for.
    pub(crate) ttl: Duration,
    acls: Vec<zk::Acl>,
    runtime: tokio::runtime::Handle,
    session: RwLock<Option<Arc<Session>>>,
    link: Mutex<Link>,
    /// Bumped on every disconnect and every new session: a watch cursor from an older
    /// generation reports Resync, since events may have been lost in between.
    pub(crate) generation: watch::Sender<u64>,
    scopes: Mutex<HashMap<String, Arc<ScopeWatch>>>,
    /// Member znodes this process published (path to record), recreated in a new session.
    members: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Leader znodes this process created: path to (epoch, session number).
    held: Mutex<HashMap<String, (Epoch, u64)>>,
    /// Directories known to exist.
    dirs: Mutex<HashSet<String>>,
    fatal: Mutex<Option<String>>,
    supervisor: Mutex<Option<AbortHandle>>,
    /// The watch-fed view of every scope (when [`ZkOptions::watch_mirror`] is on).
    pub(crate) mirror: Mirror,
    /// How old a `sync` a mirror renewal may reuse as proof that the session is alive.
    pub(crate) reuse: Duration,
    /// Start of the last `sync` the ensemble answered, and the session number it ran in.
    synced: Mutex<Option<(Instant, u64)>>,
    /// One proof-of-life `sync` at a time, shared by every scope renewing meanwhile.
    probe: tokio::sync::Mutex<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.supervisor).take() {
            task.abort();
        }
        self.mirror.stop();
    }
}

fn acls_for(options: &ZkOptions) -> Vec<zk::Acl> {
    let creator = zk::Acl::new(zk::Permission::ALL, zk::AuthId::new("auth", ""));
    match options.acl {
        AclPolicy::Open => vec![zk::Acl::new(zk::Permission::ALL, zk::AuthId::anyone())],
        AclPolicy::CreatorOnly => vec![creator],
        AclPolicy::CreatorWriteOthersRead => {
            vec![creator, zk::Acl::new(zk::Permission::READ, zk::AuthId::anyone())]
        }
    }
}

/// Whether the server answered (so the session was alive when it handled the request).
fn answered(e: &zk::Error) -> bool {
    use zk::Error as E;
    matches!(e, E::NoNode | E::NodeExists | E::BadVersion | E::NotEmpty | E::NoAuth | E::NoChildrenForEphemerals)
}

/// Opens a new session as `options` say, asking for a session timeout of `ttl`.
pub(crate) async fn open_session(options: &ZkOptions, ttl: Duration, number: u64) -> Result<Session, DcsError> {
    let connect = parse_connect(&options.connect).map_err(|e| DcsError::fatal(e.to_string()))?;
    let hosts = connect.hosts();
    let mut connector = zk::Client::connector().with_session_timeout(ttl).with_fail_eagerly();
    if let Some(c) = options.connection_timeout {
        connector = connector.with_connection_timeout(c);
    }
    if let Some(d) = &options.digest {
        connector = connector.with_auth("digest", format!("{}:{}", d.user, d.password).as_bytes());
    }
    if options.detached {
        connector = connector.with_detached();
    }
    #[cfg(feature = "tls")]
    let tls = match &options.tls {
        Some(tls) => {
            crate::tls::install_default_provider();
            let loaded = crate::tls::load(tls)?;
            connector = connector.with_tls(loaded.options.clone());
            Some(loaded)
        }
        None => None,
    };
    let limit = ttl + options.request_timeout;
    let connecting = async {
        #[cfg(feature = "tls")]
        if tls.is_some() {
            // Every server of the connect string over TLS.
            return connector.secure_connect(&hosts).await;
        }
        connector.connect(&hosts).await
    };
    let result = tokio::time::timeout(limit, connecting).await;
    #[cfg(feature = "tls")]
    if let (Some(tls), Err(_) | Ok(Err(zk::Error::NoHosts))) = (&tls, &result)
        && let Some(why) = crate::tls::diagnose(tls.probe.clone(), connect.servers.clone()).await
    {
        return Err(DcsError::fatal(format!("no ZooKeeper server in {hosts:?} accepted a TLS session: {why}")));
    }
    let client = match result {
        Err(_) => {
            return Err(DcsError::unavailable(format!(
                "no ZooKeeper server in {hosts:?} established a session within {limit:?}"
            )));
        }
        Ok(Err(zk::Error::NoHosts)) => {
            return Err(DcsError::unavailable(format!(
                "no ZooKeeper server in {hosts:?} accepted a connection (refused, unresolvable or unreachable{})",
                if options.tls.is_some() {
                    ", or a TLS session: check it is the server's secureClientPort"
                } else {
                    ""
                }
            )));
        }
        Ok(Err(e @ zk::Error::AuthFailed)) => {
            return Err(DcsError::fatal_with(format!("ZooKeeper at {hosts:?} rejected the credentials"), e));
        }
        Ok(Err(e)) => return Err(classify(Op::Read, &format!("connecting to {hosts:?}"), e)),
        Ok(Ok(client)) => client,
    };
    let client = match connect.chroot {
        None => client,
        Some(chroot) => {
            let acls = acls_for(options);
            let create = zk::CreateMode::Persistent.with_acls(zk::Acls::new(&acls));
            match client.mkdir(&chroot, &create).await {
                Ok(()) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(classify(Op::Write, &format!("creating chroot {chroot}"), e)),
            }
            client.chroot(chroot.clone()).map_err(|_| {
                DcsError::fatal(format!("invalid zookeeper option connect: chroot {chroot:?} is not a valid path"))
            })?
        }
    };
    let timeout = client.session_timeout();
    if timeout != ttl {
        tracing::warn!(
            requested = ?ttl,
            negotiated = ?timeout,
            "ZooKeeper clamped the session timeout to its [2, 20] x tickTime range; leases follow the negotiated value"
        );
    }
    let connection_timeout = options.connection_timeout.unwrap_or(timeout * 2 / 5);
    tracing::info!(session = %client.session_id(), ?timeout, number, "ZooKeeper session established");
    Ok(Session { zk: client, number, timeout, connection_timeout })
}

impl Shared {
    pub(crate) fn new(
        options: ZkOptions,
        ttl: Duration,
        reuse: Duration,
        session: Session,
        runtime: tokio::runtime::Handle,
    ) -> Arc<Shared> {
        let shared = Arc::new(Shared {
            acls: acls_for(&options),
            options,
            ttl,
            runtime,
            session: RwLock::new(Some(Arc::new(session))),
            link: Mutex::new(Link { connected: true, last_answered: now(), disconnected_at: None }),
            generation: watch::Sender::new(0),
            scopes: Mutex::new(HashMap::new()),
            members: Mutex::new(BTreeMap::new()),
            held: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashSet::new()),
            fatal: Mutex::new(None),
            supervisor: Mutex::new(None),
            mirror: Mirror::default(),
            reuse,
            synced: Mutex::new(None),
            probe: tokio::sync::Mutex::new(()),
        });
        let task = shared.runtime.spawn(supervise(Arc::downgrade(&shared)));
        *lock(&shared.supervisor) = Some(task.abort_handle());
        shared
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// The start of a `sync` the ensemble answered in `session`, at most [`reuse`](Self::reuse)
    /// before `started`: proof that the ensemble leader heard from the session after that
    /// instant, so it keeps the session (and its ephemeral znodes) for at least the session
    /// timeout from then. One `sync` serves every renewal that comes while it is fresh.
    pub(crate) async fn proof_of_life(&self, session: &Session, started: Instant) -> Result<Instant, DcsError> {
        let earliest = started.checked_sub(self.reuse).unwrap_or(started);
        let fresh = || {
            let synced = *lock(&self.synced);
            synced.filter(|(at, n)| *n == session.number && *at >= earliest).map(|(at, _)| at)
        };
        if let Some(at) = fresh() {
            return Ok(at);
        }
        let _one = self.probe.lock().await;
        if let Some(at) = fresh() {
            return Ok(at);
        }
        let what = "proving the session is alive";
        let sent = now();
        let prefix = self.options.prefix.clone();
        match self.run(session, Op::Read, what, |zk| zk.sync(&prefix)).await? {
            Ok(()) => {
                let mut synced = lock(&self.synced);
                if synced.is_none_or(|(at, n)| n != session.number || at < sent) {
                    *synced = Some((sent, session.number));
                }
                Ok(sent)
            }
            Err(zk::Error::SessionExpired) => Err(DcsError::lease_lost("the ZooKeeper session expired")),
            Err(e) => Err(classify(Op::Read, what, e)),
        }
    }

    pub(crate) fn create_options(&self, mode: zk::CreateMode) -> zk::CreateOptions<'_> {
        mode.with_acls(zk::Acls::new(&self.acls))
    }

    /// The current session, or why there is none.
    pub(crate) fn session(&self) -> Result<Arc<Session>, DcsError> {
        if let Some(why) = lock(&self.fatal).clone() {
            return Err(DcsError::fatal(why));
        }
        let session = self.session.read().unwrap_or_else(PoisonError::into_inner).clone();
        session.ok_or_else(|| DcsError::fatal("this ZkClient was closed"))
    }

    /// The negotiated session timeout of the current session (the requested ttl once closed).
    pub(crate) fn timeout(&self) -> Duration {
        self.session().map(|s| s.timeout).unwrap_or(self.ttl)
    }

    /// Drops the session at once and refuses further calls. The client library closes it
    /// on the server in the background once no request holds it (unless detached).
    pub(crate) fn close(&self) {
        if let Some(task) = lock(&self.supervisor).take() {
            task.abort();
        }
        lock(&self.scopes).clear();
        self.mirror.stop();
        self.session.write().unwrap_or_else(PoisonError::into_inner).take();
        self.generation.send_modify(|g| *g += 1);
    }

    /// [`close`](Self::close), then waits until the client library has closed the session on
    /// the server, at most `request_timeout`. A detached session is only dropped.
    pub(crate) async fn shutdown(&self) -> Result<(), DcsError> {
        let session = self.session.read().unwrap_or_else(PoisonError::into_inner).clone();
        let states = session.as_ref().map(|s| s.zk.state_watcher());
        self.close();
        // The library sends closeSession when the last handle on the client is dropped.
        drop(session);
        let Some(mut states) = states else { return Ok(()) };
        if self.options.detached {
            return Ok(());
        }
        let closed = async {
            while !states.peek_state().is_terminated() {
                states.changed().await;
            }
        };
        tokio::time::timeout(self.options.request_timeout, closed).await.map_err(|_| {
            DcsError::unknown(format!(
                "closing the ZooKeeper session: no answer within request_timeout {:?}; it ends by timeout at the latest",
                self.options.request_timeout
            ))
        })
    }

    /// Conservative estimate of the last moment the server heard from this session.
    pub(crate) fn last_contact(&self, session: &Session) -> Instant {
        let link = lock(&self.link);
        match link.disconnected_at {
            // Connected: the client pings whenever idle, so the server heard from us within
            // the connection timeout (else the client would have declared the link dead).
            None if link.connected => now().checked_sub(session.connection_timeout).unwrap_or(link.last_answered),
            // The client declares a link dead after `connection_timeout` of silence, checked
            // every eighth of it; a reply came at most that long before, for a ping sent at
            // most that long before the reply.
            Some(at) => {
                let silent = session.connection_timeout * 2 + session.connection_timeout / 8;
                link.last_answered.max(at.checked_sub(silent).unwrap_or(link.last_answered))
            }
            None => link.last_answered,
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        lock(&self.link).connected
    }

    /// Sends one request unless the session is disconnected (fail fast, Patroni issue 1981),
    /// and waits at most `request_timeout` for it. The outer error is this backend's verdict;
    /// the inner result is the server's answer for the caller to interpret.
    pub(crate) async fn run<'s, T, F>(
        &self,
        session: &'s Session,
        op: Op,
        what: &str,
        request: impl FnOnce(&'s zk::Client) -> F,
    ) -> Result<Result<T, zk::Error>, DcsError>
    where
        F: Future<Output = Result<T, zk::Error>>,
    {
        let mut states = session.zk.state_watcher();
        match session.zk.state() {
            zk::SessionState::SyncConnected => {}
            zk::SessionState::AuthFailed => {
                return Err(DcsError::fatal(format!("{what}: ZooKeeper rejected this session's credentials")));
            }
            state => {
                return Err(DcsError::unavailable(format!(
                    "{what}: not sent, the ZooKeeper session is {state} (failing fast instead of queueing)"
                )));
            }
        }
        let started = now();
        let reply = request(&session.zk);
        let dropped = async {
            loop {
                match states.changed().await {
                    zk::SessionState::SyncConnected => continue,
                    state => return state,
                }
            }
        };
        let result = tokio::select! {
            r = reply => r,
            () = tokio::time::sleep(self.options.request_timeout) => {
                return Err(interrupted(op, what, &format!("no answer within {:?}", self.options.request_timeout)));
            }
            state = dropped => return Err(interrupted(op, what, &format!("the session became {state} while waiting"))),
        };
        match &result {
            Ok(_) => self.answered(started),
            Err(e) if answered(e) => self.answered(started),
            Err(_) => {}
        }
        Ok(result)
    }

    fn answered(&self, started: Instant) {
        let mut link = lock(&self.link);
        link.last_answered = link.last_answered.max(started);
    }

    /// `mkdir -p path` once per process and session.
    pub(crate) async fn ensure_dir(&self, session: &Session, path: &str) -> Result<(), DcsError> {
        if lock(&self.dirs).contains(path) {
            return Ok(());
        }
        let create = self.create_options(zk::CreateMode::Persistent);
        match self.run(session, Op::Write, "creating scope directories", |zk| zk.mkdir(path, &create)).await? {
            Ok(()) | Err(zk::Error::NodeExists) => {
                lock(&self.dirs).insert(path.to_string());
                Ok(())
            }
            Err(e) => Err(classify(Op::Write, &format!("creating {path}"), e)),
        }
    }

    /// Forgets that `path` exists (it was found missing).
    pub(crate) fn forget_dir(&self, path: &str) {
        lock(&self.dirs).remove(path);
    }

    pub(crate) fn hold(&self, path: &str, epoch: Epoch, session: u64) {
        lock(&self.held).insert(path.to_string(), (epoch, session));
    }

    pub(crate) fn unhold(&self, path: &str, epoch: Epoch) {
        let mut held = lock(&self.held);
        if held.get(path).is_some_and(|(e, _)| *e == epoch) {
            held.remove(path);
        }
    }

    /// The session number under which this process acquired `epoch` at `path`, if it did.
    pub(crate) fn held_in(&self, path: &str, epoch: Epoch) -> Option<u64> {
        lock(&self.held).get(path).filter(|(e, _)| *e == epoch).map(|(_, s)| *s)
    }

    pub(crate) fn remember_member(&self, path: &str, bytes: &[u8]) {
        lock(&self.members).insert(path.to_string(), bytes.to_vec());
    }

    /// Creates or replaces the ephemeral member znode `path` in `session`.
    pub(crate) async fn write_member(&self, session: &Session, path: &str, bytes: &[u8]) -> Result<(), DcsError> {
        let ephemeral = self.create_options(zk::CreateMode::Ephemeral);
        let what = "publishing a member";
        for _ in 0..4 {
            match self.run(session, Op::Write, what, |zk| zk.create(path, bytes, &ephemeral)).await? {
                Ok(_) => return Ok(()),
                Err(zk::Error::NoNode) => {
                    let parent = &path[..path.rfind('/').unwrap_or(0)];
                    self.forget_dir(parent);
                    self.ensure_dir(session, parent).await?;
                }
                Err(zk::Error::NodeExists) => {
                    let stat = match self.run(session, Op::Read, what, |zk| zk.check_stat(path)).await? {
                        Ok(Some(stat)) => stat,
                        Ok(None) => continue,
                        Err(e) => return Err(classify(Op::Read, what, e)),
                    };
                    if stat.ephemeral_owner == session.id() {
                        match self.run(session, Op::Write, what, |zk| zk.set_data(path, bytes, None)).await? {
                            Ok(_) => return Ok(()),
                            Err(zk::Error::NoNode) => continue,
                            Err(e) => return Err(classify(Op::Write, what, e)),
                        }
                    }
                    // Left by an earlier session of this member (or written by hand): replace
                    // it with one bound to our session, so it vanishes when we do.
                    match self.run(session, Op::Write, what, |zk| zk.delete(path, Some(stat.version))).await? {
                        Ok(()) | Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => continue,
                        Err(e) => return Err(classify(Op::Write, what, e)),
                    }
                }
                Err(e) => return Err(classify(Op::Write, what, e)),
            }
        }
        Err(DcsError::unknown(format!("{what}: {path} kept changing under concurrent writers")))
    }

    /// The scope's watch in the current session, armed on first use.
    pub(crate) async fn scope_watch(&self, session: &Session, path: &str) -> Result<Arc<ScopeWatch>, DcsError> {
        if let Some(w) = lock(&self.scopes).get(path).filter(|w| w.session == session.number) {
            return Ok(w.clone());
        }
        let what = "arming a persistent watch";
        let mut watcher = match self
            .run(session, Op::Read, what, |zk| zk.watch(path, zk::AddWatchMode::PersistentRecursive))
            .await?
        {
            Ok(w) => w,
            Err(e) => return Err(classify(Op::Read, what, e)),
        };
        let seq = watch::Sender::new(0u64);
        let counter = seq.clone();
        let task = self.runtime.spawn(async move {
            loop {
                let event = watcher.changed().await;
                match event.event_type {
                    zk::EventType::Session if event.session_state.is_terminated() => return,
                    // Disconnects bump the client-wide generation in the supervisor.
                    zk::EventType::Session => {}
                    _ => counter.send_modify(|s| *s += 1),
                }
            }
        });
        let fresh = Arc::new(ScopeWatch { session: session.number, seq, task: task.abort_handle() });
        let mut scopes = lock(&self.scopes);
        match scopes.get(path).filter(|w| w.session == session.number) {
            // Another caller armed it meanwhile; ours is dropped (and its task aborted).
            Some(existing) => Ok(existing.clone()),
            None => {
                scopes.insert(path.to_string(), fresh.clone());
                Ok(fresh)
            }
        }
    }

    /// The scope's watch if it is armed in the current session.
    pub(crate) fn armed(&self, path: &str, session: u64) -> Option<Arc<ScopeWatch>> {
        lock(&self.scopes).get(path).filter(|w| w.session == session).cloned()
    }

    fn set_connected(&self, connected: bool) {
        let mut link = lock(&self.link);
        if connected {
            link.connected = true;
            link.disconnected_at = None;
        } else if link.connected {
            link.connected = false;
            link.disconnected_at = Some(now());
        }
    }

    /// Installs a new session after expiry and re-registers this process's members in it.
    async fn install(&self, session: Session) {
        let session = Arc::new(session);
        lock(&self.scopes).clear();
        lock(&self.dirs).clear();
        *self.session.write().unwrap_or_else(PoisonError::into_inner) = Some(session.clone());
        {
            let mut link = lock(&self.link);
            *link = Link { connected: true, last_answered: now(), disconnected_at: None };
        }
        self.generation.send_modify(|g| *g += 1);
        let members = lock(&self.members).clone();
        for (path, bytes) in members {
            if let Err(e) = self.write_member(&session, &path, &bytes).await {
                tracing::warn!(%path, error = %e, "could not re-register a member in the new session; the next publish retries");
            }
        }
    }
}

/// Follows the session's state: marks disconnects (watch generations), and replaces an
/// expired session. Holds only a weak reference so dropping every handle closes the session.
async fn supervise(shared: Weak<Shared>) {
    loop {
        let watched = shared.upgrade().and_then(|s| s.session().ok()).map(|s| (s.zk.state_watcher(), s.zk.state()));
        let Some((mut states, initial)) = watched else { return };
        // A change between opening the session and subscribing is handled first.
        let mut pending = Some(initial);
        let state = loop {
            let state = match pending.take() {
                Some(state) => state,
                None => states.changed().await,
            };
            let Some(shared) = shared.upgrade() else { return };
            match state {
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    shared.set_connected(true);
                    tracing::debug!("ZooKeeper connection established");
                }
                zk::SessionState::Disconnected => {
                    shared.set_connected(false);
                    shared.generation.send_modify(|g| *g += 1);
                    tracing::warn!("ZooKeeper connection lost; requests fail fast until it is back");
                }
                terminal => break terminal,
            }
        };
        let Some(current) = shared.upgrade() else { return };
        current.set_connected(false);
        current.generation.send_modify(|g| *g += 1);
        match state {
            zk::SessionState::AuthFailed => {
                *lock(&current.fatal) = Some("ZooKeeper rejected this session's credentials".into());
                tracing::error!("ZooKeeper authentication failed; the client stops");
                return;
            }
            zk::SessionState::Closed => return,
            _ => {}
        }
        tracing::warn!("ZooKeeper session expired; leadership is lost, opening a new session");
        let (options, ttl, number) = match current.session() {
            Ok(s) => (current.options.clone(), current.ttl, s.number + 1),
            Err(_) => return,
        };
        drop(current);
        let mut backoff = Duration::from_millis(100);
        let session = loop {
            match open_session(&options, ttl, number).await {
                Ok(session) => break session,
                Err(e) if e.is_fatal() => {
                    if let Some(s) = shared.upgrade() {
                        *lock(&s.fatal) = Some(e.to_string());
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "cannot open a new ZooKeeper session yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            if shared.upgrade().is_none() {
                return;
            }
        };
        let Some(current) = shared.upgrade() else { return };
        current.install(session).await;
    }
}
