//! One watch per process over the whole key prefix: a mirror of every scope's keys.
//!
//! It feeds [`load`](leasehold::Dcs::load) without a request, wakes
//! [`watch`](leasehold::Dcs::watch) waiters on leader and control key changes only (member
//! records change with every WAL position and wake nobody), and shows
//! [`renew`](leasehold::Dcs::renew) whether the leader key is still ours.
//!
//! Why a mirror may stand in for a read: etcd delivers a watch's events in revision order
//! and never skips one (a compacted history is reported, and answered here with one fresh
//! range). So the mirror is always the state of the prefix *at some revision*: exactly what a
//! linearizable read made a little earlier would have returned. Every decision in the node is
//! already made on a view that may be stale by the time it arrives, and every write that can
//! change leadership is conditional, so a view that is older by the watch delay changes how
//! soon a node acts, never what it may do. The mirror is used only while
//!
//! * the stream is established (from the created response until it breaks), which also
//!   says the member we watch through is not cut off from the cluster: the client asks
//!   every stream to require a raft leader (etcd-client's `with_require_leader`), and etcd
//!   cancels such streams once the member has had no leader for three election timeouts
//!   (its `monitorLeader`; a member cut off from the majority loses its leader within one
//!   election timeout: it stops hearing heartbeats and becomes a candidate, and a leader
//!   cut off steps down by check-quorum). A frozen member or a dead connection is found by
//!   the HTTP/2 pings (`keepalive_interval`). Test:
//!   `tests/faults.rs::a_mirror_on_a_member_without_a_raft_leader_stops_serving_loads`; and
//! * it has caught up with every revision this process was told about (its own writes, and
//!   what lost compare-and-sets returned), so a process reads its own writes.
//!
//! Otherwise callers fall back to a linearizable range, as without a mirror. A stream that
//! answers nothing for a progress request (one every four lease ttls) within the request
//! timeout is treated as broken.
//! Progress answers never advance the mirror's revision (see `caught_up` for why).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions, WatchResponse};
use leasehold::Key;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::client::{Inner, lock, now};
use crate::error::{Op, is_compacted, timed};

/// Pause before re-opening a broken stream or retrying a failed range.
const RETRY: Duration = Duration::from_millis(250);
/// How long a revision a reader waits for may stay unapplied before the mirror reads the
/// prefix again.
const RESYNC_GRACE: Duration = Duration::from_millis(100);

/// One key as the mirror holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) value: Vec<u8>,
    /// `create_revision`: the leader key's epoch.
    pub(crate) created: u64,
    /// `mod_revision`: the key's version.
    pub(crate) modified: u64,
    /// The lease the key is attached to (0: none).
    pub(crate) lease: i64,
}

impl Entry {
    fn of(kv: &KeyValue) -> Entry {
        Entry {
            value: kv.value().to_vec(),
            created: kv.create_revision().unsigned_abs(),
            modified: kv.mod_revision().unsigned_abs(),
            lease: kv.lease(),
        }
    }
}

/// What wakes a scope's waiters: a leader or control key changed at `revision`, or the
/// mirror re-read everything (`resync`) at `revision`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Wake {
    pub(crate) revision: u64,
    pub(crate) resync: bool,
}

#[derive(Default)]
struct State {
    /// The stream is established and `keys` is the prefix at `revision`.
    live: bool,
    revision: u64,
    /// The revision of the last full range: a waiter whose view is older re-loads.
    synced_at: u64,
    /// Every key under the prefix, by full key.
    keys: BTreeMap<String, Entry>,
    /// Per scope, the last wake; created by the first waiter or the first change seen.
    scopes: HashMap<String, watch::Sender<Wake>>,
}

impl State {
    /// `scope`'s wake sender; a new one starts at the scope's last leader or control change
    /// the mirror can still see (or its last full range, which may have hidden a deletion).
    fn sender(&mut self, prefix: &str, scope: &str) -> &watch::Sender<Wake> {
        if !self.scopes.contains_key(scope) {
            let base = format!("{}/{scope}/", prefix.trim_end_matches('/'));
            let last_change = self
                .keys
                .range(base.clone()..)
                .take_while(|(k, _)| k.starts_with(&base))
                .filter(|(k, _)| scope_of(prefix, k).is_some_and(|(_, wakes)| wakes))
                .map(|(_, e)| e.modified)
                .max()
                .unwrap_or(0);
            let wake = Wake { revision: last_change.max(self.synced_at), resync: false };
            self.scopes.insert(scope.to_string(), watch::Sender::new(wake));
        }
        &self.scopes[scope]
    }

    fn wake_all(&mut self, wake: Wake) {
        for tx in self.scopes.values() {
            tx.send_replace(wake);
        }
    }
}

/// The process's mirror of `<prefix>/`; see the module docs.
pub(crate) struct Mirror {
    state: Mutex<State>,
    /// The applied revision, for loads waiting to read their own writes.
    applied: watch::Sender<u64>,
    started: AtomicBool,
    task: Mutex<Option<AbortHandle>>,
    /// A reader waits for a revision the mirror has not applied (`wanted`): read again.
    resync_wanted: Notify,
    wanted: AtomicU64,
}

impl Default for Mirror {
    fn default() -> Self {
        Mirror {
            state: Mutex::default(),
            applied: watch::Sender::new(0),
            started: AtomicBool::new(false),
            task: Mutex::new(None),
            resync_wanted: Notify::new(),
            wanted: AtomicU64::new(0),
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Mirror {
    /// Starts the mirror's task on first use (a process that only makes a few calls, like a
    /// ctl command, never opens the stream).
    pub(crate) fn start(&self, inner: &Arc<Inner>) {
        if !inner.options.watch_mirror || self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        // The client owns its watch, as it owns its keep-alive (started within the caller's
        // runtime: every `Dcs` call runs in one).
        let task = tokio::runtime::Handle::current().spawn(run(Arc::downgrade(inner)));
        *lock(&self.task) = Some(task.abort_handle());
    }

    /// Ends the task; the mirror is no longer used.
    pub(crate) fn stop(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        lock(&self.state).live = false;
    }

    /// The keys under `base` and the revision they are the state at, once the mirror has
    /// applied revision `seen`; `None` when the mirror may not stand in for a read (not
    /// live, or not caught up within `wait`).
    pub(crate) async fn snapshot(&self, base: &str, seen: u64, wait: Duration) -> Option<(u64, Vec<(String, Entry)>)> {
        self.caught_up(seen, wait).await?;
        let state = lock(&self.state);
        if !state.live {
            return None;
        }
        let entries = state
            .keys
            .range(base.to_string()..)
            .take_while(|(k, _)| k.starts_with(base))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        Some((state.revision, entries))
    }

    /// The key `key` as the mirror holds it (`Some(None)`: absent), under the same
    /// conditions as [`snapshot`](Self::snapshot).
    pub(crate) async fn get(&self, key: &str, seen: u64, wait: Duration) -> Option<Option<Entry>> {
        self.caught_up(seen, wait).await?;
        let state = lock(&self.state);
        state.live.then(|| state.keys.get(key).cloned())
    }

    /// Waits until the mirror is usable and has applied `seen`.
    async fn caught_up(&self, seen: u64, wait: Duration) -> Option<()> {
        if !lock(&self.state).live {
            return None;
        }
        let mut applied = self.applied.subscribe();
        if *applied.borrow() < seen {
            // The revision may be another prefix's write, which no event of ours reaches.
            // etcd's progress answers could say "everything up to there is sent", but before
            // 3.4.25 / 3.5.8 one may overtake events still in flight (etcd issue 15220), so
            // the mirror reads the prefix again instead (rare: a read by range, or a lost
            // compare-and-set, while the mirror was behind).
            self.wanted.fetch_max(seen, Ordering::SeqCst);
            self.resync_wanted.notify_one();
        }
        tokio::time::timeout(wait, applied.wait_for(|r| *r >= seen)).await.ok()?.ok()?;
        Some(())
    }

    /// A receiver of `scope`'s wakes, or `None` while the mirror is not live.
    pub(crate) fn subscribe(&self, prefix: &str, scope: &str) -> Option<watch::Receiver<Wake>> {
        let mut state = lock(&self.state);
        if !state.live {
            return None;
        }
        Some(state.sender(prefix, scope).subscribe())
    }

    /// Replaces everything with a fresh range at `revision`.
    fn reset(&self, revision: u64, kvs: &[KeyValue]) {
        let mut state = lock(&self.state);
        state.keys = kvs.iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), Entry::of(kv))).collect();
        state.revision = revision;
        state.synced_at = revision;
        state.live = false;
        state.wake_all(Wake { revision, resync: true });
        drop(state);
        self.applied.send_replace(revision);
    }

    /// Waiters keep waiting while the stream is re-opened: it resumes from the mirror's
    /// revision, so no event is missed; a lost history wakes them with a resync.
    fn set_live(&self, live: bool) {
        lock(&self.state).live = live;
    }

    /// Applies one watch response; `false` when it says history was lost.
    fn apply(&self, prefix: &str, resp: &WatchResponse) -> bool {
        if resp.compact_revision() > 0 || (resp.canceled() && resp.cancel_reason().contains("compacted")) {
            return false;
        }
        let mut state = lock(&self.state);
        let mut revision = state.revision;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let at = kv.mod_revision().unsigned_abs();
            revision = revision.max(at);
            match event.event_type() {
                EventType::Put => state.keys.insert(key.clone(), Entry::of(kv)),
                EventType::Delete => state.keys.remove(&key),
            };
            if let Some((scope, true)) = scope_of(prefix, &key) {
                state.sender(prefix, &scope).send_replace(Wake { revision: at, resync: false });
            }
        }
        // A progress answer (no events) only shows the stream is alive: see `caught_up`.
        state.revision = revision;
        drop(state);
        self.applied.send_if_modified(|r| {
            let newer = revision > *r;
            *r = (*r).max(revision);
            newer
        });
        true
    }
}

/// The scope a key under `prefix` belongs to, and whether a change to it wakes waiters
/// (leader and control keys do; member records do not).
fn scope_of(prefix: &str, key: &str) -> Option<(String, bool)> {
    let rest = key.strip_prefix(prefix.trim_end_matches('/'))?.strip_prefix('/')?;
    let scope = rest.split('/').next()?;
    let wakes = match Key::parse(prefix, scope, key) {
        Some(Key::Leader | Key::Control(_)) => true,
        Some(Key::Member(_)) | None => false,
    };
    Some((scope.to_string(), wakes))
}

/// The mirror's task: range, then follow the watch; re-open a broken stream from the last
/// applied revision; range again only when etcd lost the history.
async fn run(inner: Weak<Inner>) {
    let mut resume: Option<u64> = None;
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let from = match resume {
            Some(revision) => revision,
            None => match sync(&strong).await {
                Some(revision) => revision,
                None => {
                    drop(strong);
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        resume = follow(&strong, from).await;
        strong.mirror.set_live(false);
        drop(strong);
        tokio::time::sleep(RETRY).await;
    }
}

/// One linearizable range over the prefix into the mirror; the revision it is the state at.
async fn sync(inner: &Inner) -> Option<u64> {
    let prefix = inner.options.prefix.trim_end_matches('/').to_string() + "/";
    inner.count();
    let resp = timed(Op::Read, "mirror the prefix", inner.options.request_timeout, || async {
        inner.etcd.kv_client().get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await
    })
    .await;
    match resp {
        Ok(resp) => {
            let revision = resp.header().map(|h| h.revision().unsigned_abs()).unwrap_or_default();
            inner.mirror.reset(revision, resp.kvs());
            tracing::debug!(revision, keys = resp.kvs().len(), "etcd mirror loaded the prefix");
            Some(revision)
        }
        Err(e) => {
            tracing::debug!(error = %e, "etcd mirror could not read the prefix; retrying");
            None
        }
    }
}

/// Follows the prefix from `after + 1` until the stream breaks. `Some(revision)`: re-open
/// from there; `None`: history was lost, range again.
async fn follow(inner: &Inner, after: u64) -> Option<u64> {
    let prefix = inner.options.prefix.trim_end_matches('/').to_string() + "/";
    let options = WatchOptions::new().with_prefix().with_start_revision(i64::try_from(after + 1).unwrap_or(i64::MAX));
    inner.count();
    let opened = tokio::time::timeout(inner.options.request_timeout, async {
        inner.etcd.watch_client().watch(prefix.as_str(), Some(options)).await
    })
    .await;
    let mut stream = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) if is_compacted(&e) => return None,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "etcd mirror could not open its watch; retrying");
            return Some(after);
        }
        Err(_) => return Some(after),
    };
    // A progress request every four lease ttls (of the member lease when there is one): a
    // stream that answers nothing is treated as broken. Rare, because it is a request an idle
    // process would otherwise not send; a dead connection is found sooner by the HTTP/2
    // pings, and a member without a raft leader cancels the stream (require-leader).
    let every = inner.lease_ttl(inner.member_lease()) * 4;
    let mut next_probe = now() + every;
    let mut probe_due: Option<Instant> = None;
    let mut resync_check: Option<Instant> = None;
    loop {
        let wake_at = probe_due.unwrap_or(next_probe);
        let message = tokio::select! {
            m = stream.message() => m,
            () = inner.mirror.resync_wanted.notified(), if resync_check.is_none() => {
                // Our own writes arrive as events within milliseconds: give them that long.
                resync_check = Some(now() + RESYNC_GRACE);
                continue;
            }
            () = tokio::time::sleep_until(resync_check.unwrap_or(wake_at)), if resync_check.is_some() => {
                resync_check = None;
                if inner.mirror.wanted.load(Ordering::SeqCst) > inner.mirror_revision() {
                    return None;
                }
                continue;
            }
            () = tokio::time::sleep_until(wake_at) => {
                if probe_due.is_some() {
                    tracing::warn!("etcd mirror's watch answered no progress request; re-opening it");
                    return Some(inner.mirror_revision());
                }
                inner.count();
                if stream.request_progress().await.is_err() {
                    return Some(inner.mirror_revision());
                }
                probe_due = Some(now() + inner.options.request_timeout);
                continue;
            }
        };
        match message {
            Ok(Some(resp)) => {
                probe_due = None;
                next_probe = now() + every;
                if resp.created() {
                    inner.mirror.set_live(true);
                }
                if !inner.mirror.apply(&inner.options.prefix, &resp) {
                    tracing::info!("etcd compacted past the mirror's revision; reading the prefix again");
                    return None;
                }
                if resp.canceled() {
                    tracing::debug!(reason = resp.cancel_reason(), "etcd cancelled the mirror's watch; re-opening");
                    return Some(inner.mirror_revision());
                }
            }
            Ok(None) => return Some(inner.mirror_revision()),
            Err(e) if is_compacted(&e) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "etcd mirror's watch broke; re-opening from its revision");
                return Some(inner.mirror_revision());
            }
        }
    }
}

impl Inner {
    /// The revision the mirror has applied.
    pub(crate) fn mirror_revision(&self) -> u64 {
        *self.mirror.applied.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_records_wake_nobody_and_other_prefixes_are_ignored() {
        assert_eq!(scope_of("/service", "/service/pg/leader"), Some(("pg".into(), true)));
        assert_eq!(scope_of("/service/", "/service/pg/failover"), Some(("pg".into(), true)));
        assert_eq!(scope_of("/service", "/service/pg/members/n1"), Some(("pg".into(), false)));
        assert_eq!(scope_of("/service", "/service/pg/optime/leader"), Some(("pg".into(), false)));
        assert_eq!(scope_of("/service", "/servicex/pg/leader"), None);
    }
}
