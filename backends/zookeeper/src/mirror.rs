//! One persistent recursive watch per session over the whole prefix: a mirror of the znodes
//! (data and stat) of every scope this process has asked about. A scope is read once when
//! it is first asked about (and again after every disconnect); events of other scopes under
//! the prefix are ignored, so they cost nothing.
//!
//! It answers [`load`](leasehold::Dcs::load) without a request, wakes
//! [`watch`](leasehold::Dcs::watch) waiters on leader and control znode changes only, and
//! shows [`renew`](leasehold::Dcs::renew) whether the leader znode is still ours.
//!
//! ZooKeeper's events carry no data (and, before 3.9, no zxid), so every created or changed
//! znode is read once after its event (one `getData`, pipelined). The mirror stands in for a
//! read only when it is *quiescent*: every event the client library had received when the
//! caller asked has been applied and every read those events started has been answered.
//! Then the mirror equals the tree at the moment the server answered the last of those
//! reads: a znode that changed after its last read would have produced an event, and the
//! server sends a change's notification before any reply it makes later on the same
//! connection, so that event would have been received and its read applied. Reads are
//! applied in the order their events arrived, and a znode never goes back to an older
//! `mzxid`. The same ordering gives a process its own writes and what a lost
//! compare-and-set read: the notification for the change arrived before the reply.
//!
//! The mirror is used only while the session's connection is up and has not dropped since
//! the mirror's last full read: ZooKeeper does not replay a persistent watch's events missed
//! while disconnected (the client library re-registers the watch on reconnect, but the gap
//! is unknown), so any disconnect ends the mirror's epoch and the next connection reads the
//! tree again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use futures::{Future, FutureExt};
use leasehold::{ControlKey, Key};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use zookeeper_client as zk;

use crate::session::{Session, Shared, now};

/// Pause before following again after the watch or a read failed; doubled after each
/// attempt that never got live (a scope whose reads keep failing, e.g. `NoAuth`), up to
/// `MAX_RETRY`.
const RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One znode as the mirror holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) data: Vec<u8>,
    /// The leader znode's epoch.
    pub(crate) czxid: i64,
    /// A member's or the leader's version.
    pub(crate) mzxid: i64,
    /// A control key's version (the CAS condition).
    pub(crate) version: i32,
    /// The session owning an ephemeral znode (0: persistent).
    pub(crate) owner: i64,
}

impl Entry {
    fn of(data: Vec<u8>, stat: &zk::Stat) -> Entry {
        Entry { data, czxid: stat.czxid, mzxid: stat.mzxid, version: stat.version, owner: stat.ephemeral_owner }
    }
}

/// A scope's znodes at one moment, and the cursor a waiter starts from.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// The mirror's epoch (one per full read) and the scope's wake count when taken.
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
    /// Full path to znode, for every leader, member and control znode of the scope.
    pub(crate) entries: Vec<(String, Entry)>,
}

struct Request {
    scope: String,
    reply: oneshot::Sender<Snapshot>,
}

#[derive(Default)]
struct State {
    /// The task follows the watch (it may still be reading the known scopes).
    following: bool,
    /// Following, and the initial read is applied.
    live: bool,
    /// The session number and connection generation the mirror follows.
    session: u64,
    generation: u64,
    /// Bumped when the mirror starts or stops following: a waiter from another epoch resyncs.
    epoch: u64,
    nodes: BTreeMap<String, Entry>,
    /// Per scope, a count of leader and control znode changes.
    wakes: HashMap<String, u64>,
}

/// The session's mirror of `<prefix>/`; see the module docs.
pub(crate) struct Mirror {
    state: Mutex<State>,
    /// Bumped on every wake and epoch change.
    ticks: watch::Sender<u64>,
    requests: mpsc::UnboundedSender<Request>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Request>>>,
    started: AtomicBool,
    task: Mutex<Option<AbortHandle>>,
}

impl Default for Mirror {
    fn default() -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        Mirror {
            state: Mutex::default(),
            ticks: watch::Sender::new(0),
            requests,
            receiver: Mutex::new(Some(receiver)),
            started: AtomicBool::new(false),
            task: Mutex::new(None),
        }
    }
}

/// What a waiter on the mirror saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    Changed,
    Resync,
    Timeout,
}

impl Mirror {
    /// Starts the mirror's task on first use.
    pub(crate) fn start(&self, shared: &Arc<Shared>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(receiver) = lock(&self.receiver).take() else { return };
        // The first callers wait for the first read instead of asking the server.
        lock(&self.state).following = true;
        let task = shared.runtime().spawn(run(Arc::downgrade(shared), receiver));
        *lock(&self.task) = Some(task.abort_handle());
    }

    /// Ends the task; the mirror is no longer used.
    pub(crate) fn stop(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        self.set_live(false, 0, 0);
    }

    /// Whether the mirror follows `session` in connection generation `generation`.
    pub(crate) fn usable(&self, session: u64, generation: u64) -> bool {
        let state = lock(&self.state);
        state.live && state.session == session && state.generation == generation
    }

    /// `scope`'s znodes once the mirror is quiescent (see the module docs), or `None` when it
    /// is not usable or does not get there within `wait` (a mirror still reading the tree
    /// answers when it is done).
    pub(crate) async fn snapshot(
        &self,
        scope: &str,
        session: u64,
        generation: u64,
        wait: Duration,
    ) -> Option<Snapshot> {
        if !lock(&self.state).following {
            return None;
        }
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request { scope: scope.to_string(), reply }).ok()?;
        let snapshot = tokio::time::timeout(wait, answer).await.ok()?.ok()?;
        // The connection may have dropped while the answer was on its way.
        (self.usable(session, generation) && lock(&self.state).epoch == snapshot.epoch).then_some(snapshot)
    }

    /// Waits until `scope`'s leader or a control znode changes after `seq` (wakes counted in
    /// epoch `epoch`), or the epoch ends, or `deadline` passes.
    pub(crate) async fn wait(&self, scope: &str, epoch: u64, seq: u64, deadline: tokio::time::Instant) -> Seen {
        let mut ticks = self.ticks.subscribe();
        loop {
            ticks.borrow_and_update();
            {
                let state = lock(&self.state);
                if state.epoch != epoch || !state.live {
                    return Seen::Resync;
                }
                if state.wakes.get(scope).copied().unwrap_or(0) > seq {
                    return Seen::Changed;
                }
            }
            tokio::select! {
                r = ticks.changed() => if r.is_err() { return Seen::Resync },
                () = tokio::time::sleep_until(deadline) => return Seen::Timeout,
            }
        }
    }

    fn set_live(&self, live: bool, session: u64, generation: u64) {
        let mut state = lock(&self.state);
        if !live || !state.live {
            state.epoch += 1;
        }
        state.live = live;
        state.session = session;
        state.generation = generation;
        if !live {
            state.nodes.clear();
        }
        drop(state);
        self.ticks.send_modify(|t| *t += 1);
    }

    fn snapshot_now(&self, prefix: &str, scope: &str) -> Snapshot {
        let state = lock(&self.state);
        let base = format!("{}/{scope}/", prefix.trim_end_matches('/'));
        let entries = state
            .nodes
            .range(base.clone()..)
            .take_while(|(k, _)| k.starts_with(&base))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        Snapshot { epoch: state.epoch, seq: state.wakes.get(scope).copied().unwrap_or(0), entries }
    }

    /// Applies one znode's new state (`None`: absent); wakes the scope's waiters when a
    /// leader or control znode changed.
    fn apply(&self, prefix: &str, path: &str, entry: Option<Entry>) {
        let Some((scope, wakes)) = scope_of(prefix, path) else { return };
        let mut state = lock(&self.state);
        let old = state.nodes.get(path);
        let changed = match (&entry, old) {
            // A read answered before a later one that was applied first: keep the newer.
            (Some(new), Some(old)) if new.mzxid < old.mzxid => return,
            (Some(new), Some(old)) => new != old,
            (None, None) => false,
            _ => true,
        };
        match entry {
            Some(e) => state.nodes.insert(path.to_string(), e),
            None => state.nodes.remove(path),
        };
        if changed && wakes {
            *state.wakes.entry(scope).or_default() += 1;
            drop(state);
            self.ticks.send_modify(|t| *t += 1);
        }
    }

    /// Replaces a scope's znodes with a fresh read of it.
    fn replace_scope(&self, prefix: &str, scope: &str, entries: Vec<(String, Entry)>) {
        let base = format!("{}/{scope}/", prefix.trim_end_matches('/'));
        let stale: Vec<String> = {
            let state = lock(&self.state);
            state
                .nodes
                .range(base.clone()..)
                .take_while(|(k, _)| k.starts_with(&base))
                .filter(|(k, _)| !entries.iter().any(|(p, _)| p == *k))
                .map(|(k, _)| k.clone())
                .collect()
        };
        for path in stale {
            self.apply(prefix, &path, None);
        }
        for (path, entry) in entries {
            self.apply(prefix, &path, Some(entry));
        }
    }
}

/// The scope a path under `prefix` belongs to, and whether a change to it wakes waiters:
/// `None` for paths that are not a leader, member or control znode.
fn scope_of(prefix: &str, path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix(prefix.trim_end_matches('/'))?.strip_prefix('/')?;
    let scope = rest.split('/').next()?;
    match Key::parse(prefix, scope, path)? {
        Key::Leader | Key::Control(_) => Some((scope.to_string(), true)),
        Key::Member(_) => Some((scope.to_string(), false)),
    }
}

type Step = Pin<Box<dyn Future<Output = Result<Applied, zk::Error>> + Send>>;

/// A finished step of the mirror's queue, applied in the order the steps were queued.
enum Applied {
    Node(String, Option<Entry>),
    Scope(String, Vec<(String, Entry)>),
}

/// Reads one znode (sent now, so it is answered after every event already received).
fn read_node(zk: &zk::Client, path: String) -> Step {
    let reply = zk.get_data(&path);
    Box::pin(async move {
        match reply.await {
            Ok((data, stat)) => Ok(Applied::Node(path, Some(Entry::of(data, &stat)))),
            Err(zk::Error::NoNode) => Ok(Applied::Node(path, None)),
            Err(e) => Err(e),
        }
    })
}

/// Reads a whole scope: its member list, then every leader, control and member znode in
/// one multi-read; again if the member list changed in between.
fn read_scope(zk: &zk::Client, prefix: &str, scope: String) -> Step {
    let zk = zk.clone();
    let base = format!("{}/{scope}", prefix.trim_end_matches('/'));
    let members = format!("{base}/members");
    let listing = zk.get_children(&members);
    Box::pin(async move {
        let mut names = match listing.await {
            Ok((names, _)) => names,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut paths: Vec<String> = std::iter::once(format!("{base}/leader"))
            .chain(ControlKey::ALL.into_iter().map(|k| format!("{base}/{}", k.name())))
            .collect();
        let fixed = paths.len();
        for _ in 0..4 {
            names.sort();
            paths.truncate(fixed);
            paths.extend(names.iter().map(|n| format!("{members}/{n}")));
            let mut reader = zk.new_multi_reader();
            reader.add_get_children(&members)?;
            for p in &paths {
                reader.add_get_data(p)?;
            }
            let mut results = reader.commit().await?.into_iter();
            let mut listed = match results.next() {
                Some(zk::MultiReadResult::Children { children }) => children,
                Some(zk::MultiReadResult::Error { err: zk::Error::NoNode }) => Vec::new(),
                Some(zk::MultiReadResult::Error { err }) => return Err(err),
                _ => return Err(zk::Error::UnexpectedError("multi-read answered the wrong kind".into())),
            };
            let mut entries = Vec::new();
            for (path, result) in paths.iter().zip(results) {
                match result {
                    zk::MultiReadResult::Data { data, stat } => entries.push((path.clone(), Entry::of(data, &stat))),
                    zk::MultiReadResult::Error { err: zk::Error::NoNode } => {}
                    zk::MultiReadResult::Error { err } => return Err(err),
                    _ => return Err(zk::Error::UnexpectedError("multi-read answered the wrong kind".into())),
                }
            }
            listed.sort();
            if listed == names {
                return Ok(Applied::Scope(scope, entries));
            }
            names = listed;
        }
        Err(zk::Error::UnexpectedError("the member list kept changing".into()))
    })
}

/// The mirror's task: wait for a connection, arm the watch, read the known scopes, follow; after
/// any disconnect, start over.
async fn run(shared: Weak<Shared>, mut requests: mpsc::UnboundedReceiver<Request>) {
    // The scopes this process asked about: only they are mirrored, so a process serving one
    // cluster under a prefix shared by a thousand reads no other cluster's changes.
    let mut known: HashSet<String> = HashSet::new();
    let mut pause = RETRY;
    loop {
        let Some(strong) = shared.upgrade() else { return };
        let Ok(session) = strong.session() else { return };
        let mut generations = strong.generation.subscribe();
        let generation = *generations.borrow_and_update();
        let connected = strong.is_connected();
        let prefix = strong.options.prefix.clone();
        let timeout = strong.options.request_timeout;
        drop(strong);
        if connected {
            let why = follow(&shared, &session, generation, &prefix, timeout, &mut requests, &mut known).await;
            tracing::debug!(reason = %why, "ZooKeeper mirror stopped following; it reads the tree again");
        }
        if let Some(strong) = shared.upgrade() {
            let was_live = {
                let mut state = lock(&strong.mirror.state);
                state.following = false;
                state.live
            };
            if connected {
                pause = if was_live { RETRY } else { (pause * 2).min(MAX_RETRY) };
            }
            strong.mirror.set_live(false, 0, 0);
        }
        // Callers waiting on the old epoch fall back to reading.
        while requests.try_recv().is_ok() {}
        drop(session);
        if !connected {
            let _ = tokio::time::timeout(RETRY * 4, generations.changed()).await;
        }
        tokio::time::sleep(if connected { pause } else { RETRY }).await;
    }
}

/// Follows the prefix in `session` until the connection drops or a read fails; returns why.
async fn follow(
    shared: &Weak<Shared>,
    session: &Session,
    generation: u64,
    prefix: &str,
    timeout: Duration,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    known: &mut HashSet<String>,
) -> String {
    let zk = &session.zk;
    let mut watcher = match tokio::time::timeout(timeout, zk.watch(prefix, zk::AddWatchMode::PersistentRecursive)).await
    {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => return format!("arming the watch failed: {e}"),
        Err(_) => return "arming the watch timed out".into(),
    };
    // Armed before reading: a change after a read always arrives as an event.
    match shared.upgrade() {
        Some(strong) => lock(&strong.mirror.state).following = true,
        None => return "the client is gone".into(),
    }
    let mut queue: FuturesOrdered<Step> = FuturesOrdered::new();
    for scope in known.iter() {
        queue.push_back(read_scope(zk, prefix, scope.clone()));
    }
    let mut waiting: Vec<Request> = Vec::new();
    let mut head_since = now();
    let mut live = false;
    loop {
        tokio::select! {
            event = watcher.changed() => {
                if let Err(why) = queue_event(zk, prefix, known, &event, &mut queue) {
                    return why;
                }
            }
            request = requests.recv() => match request {
                Some(r) => {
                    // A scope asked about for the first time is read once, then followed.
                    if known.insert(r.scope.clone()) {
                        queue.push_back(read_scope(zk, prefix, r.scope.clone()));
                    }
                    waiting.push(r);
                }
                None => return "the client is gone".into(),
            },
            step = queue.next(), if !queue.is_empty() => {
                head_since = now();
                let Some(mirror) = shared.upgrade() else { return "the client is gone".into() };
                match step {
                    Some(Ok(Applied::Node(path, entry))) => mirror.mirror.apply(prefix, &path, entry),
                    Some(Ok(Applied::Scope(scope, entries))) => mirror.mirror.replace_scope(prefix, &scope, entries),
                    Some(Err(e)) => return format!("a read failed: {e}"),
                    None => {}
                }
            }
            () = tokio::time::sleep_until(head_since + timeout), if !queue.is_empty() => {
                return "a read got no answer within the request timeout".into();
            }
        }
        if !queue.is_empty() {
            continue;
        }
        head_since = now();
        // Events the library already received belong before any answer: take them first.
        while let Some(event) = watcher.changed().now_or_never() {
            if let Err(why) = queue_event(zk, prefix, known, &event, &mut queue) {
                return why;
            }
        }
        if !queue.is_empty() {
            continue;
        }
        let Some(strong) = shared.upgrade() else { return "the client is gone".into() };
        if !live {
            live = true;
            strong.mirror.set_live(true, session.number, generation);
            tracing::debug!(nodes = lock(&strong.mirror.state).nodes.len(), "ZooKeeper mirror read the tree");
        }
        for r in waiting.drain(..) {
            let _ = r.reply.send(strong.mirror.snapshot_now(prefix, &r.scope));
        }
    }
}

/// Queues what an event asks for; `Err` when it says the connection dropped.
fn queue_event(
    zk: &zk::Client,
    prefix: &str,
    known: &HashSet<String>,
    event: &zk::WatchedEvent,
    queue: &mut FuturesOrdered<Step>,
) -> Result<(), String> {
    match event.event_type {
        zk::EventType::Session => match event.session_state {
            zk::SessionState::SyncConnected => Ok(()),
            state => Err(format!("the session became {state}")),
        },
        _ if !scope_of(prefix, &event.path).is_some_and(|(scope, _)| known.contains(&scope)) => Ok(()),
        zk::EventType::NodeDeleted => {
            let path = event.path.clone();
            queue.push_back(Box::pin(async move { Ok(Applied::Node(path, None)) }));
            Ok(())
        }
        zk::EventType::NodeCreated | zk::EventType::NodeDataChanged => {
            queue.push_back(read_node(zk, event.path.clone()));
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_znodes_wake_nobody_and_other_paths_are_ignored() {
        assert_eq!(scope_of("/service", "/service/pg/leader"), Some(("pg".into(), true)));
        assert_eq!(scope_of("/service", "/service/pg/failover"), Some(("pg".into(), true)));
        assert_eq!(scope_of("/service", "/service/pg/members/n1"), Some(("pg".into(), false)));
        assert_eq!(scope_of("/service", "/service/pg/members"), None);
        assert_eq!(scope_of("/service", "/service/pg"), None);
        assert_eq!(scope_of("/service", "/servicex/pg/leader"), None);
    }

    #[test]
    fn an_older_read_never_replaces_a_newer_one() {
        let mirror = Mirror::default();
        let entry = |mzxid, data: &[u8]| Entry { data: data.to_vec(), czxid: 1, mzxid, version: 0, owner: 7 };
        mirror.apply("/s", "/s/pg/leader", Some(entry(5, b"new")));
        mirror.apply("/s", "/s/pg/leader", Some(entry(3, b"old")));
        assert_eq!(mirror.snapshot_now("/s", "pg").entries, vec![("/s/pg/leader".to_string(), entry(5, b"new"))]);
        assert_eq!(mirror.snapshot_now("/s", "pg").seq, 1);
        mirror.apply("/s", "/s/pg/members/a", Some(entry(6, b"m")));
        assert_eq!(mirror.snapshot_now("/s", "pg").seq, 1, "a member write wakes nobody");
        mirror.apply("/s", "/s/pg/leader", None);
        assert_eq!(mirror.snapshot_now("/s", "pg").seq, 2);
    }
}
