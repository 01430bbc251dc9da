//! One blocking query per process over the whole key prefix: a mirror of every scope's keys.
//!
//! It feeds [`load`](leasehold::Dcs::load) without a request, wakes
//! [`watch`](leasehold::Dcs::watch) waiters on leader and control key changes only (member
//! records wake nobody), and shows [`renew`](leasehold::Dcs::renew) whether the leader key is
//! still ours.
//!
//! Each round is `GET /v1/kv/<prefix>/?recurse&consistent&index=<X-Consul-Index>&wait=<ttl>`.
//! Consul answers a blocking query with the whole prefix as of one index (one state-store
//! snapshot), and `consistent` makes the server confirm it is still the raft leader before
//! every answer, so each answer is what a `?consistent` read would have returned when it was
//! made. The mirror is used only while
//!
//! * the last round answered (a failed round marks it unusable until the next answer),
//! * the caller's session renewal succeeded recently (see
//!   [`ConsulClient::renew_recent`](crate::ConsulClient)): the agent reached the servers'
//!   leader that recently, and
//! * it has caught up with everything this process was told about: every index seen in
//!   its own reads, writes and lost compare-and-sets, and every write whose index Consul does
//!   not return (deletes, member acquires) either shows in the mirror or was made before a
//!   round that has since answered was sent.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold::Key;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::api::{Api, Entry, Listing};
use crate::client::{lock, now};
use crate::options::Consistency;

/// Pause before retrying a failed round.
const RETRY: Duration = Duration::from_millis(250);
/// Bounds of the pause after a round that changed something, before the next: a busy
/// prefix is read at most a few times a second, however often it changes (see `gap`).
const MIN_GAP: Duration = Duration::from_millis(10);
const MAX_GAP: Duration = Duration::from_millis(500);

/// What wakes a scope's waiters: a leader or control key changed at `index`, or the mirror
/// started over (`resync`) at `index`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Wake {
    pub(crate) index: u64,
    pub(crate) resync: bool,
}

/// A write of this process whose index Consul does not return.
#[derive(Clone, Debug)]
enum Expect {
    /// The key was written with this value.
    Written(Vec<u8>),
    /// The key was deleted at this `ModifyIndex`: absent, or re-created later.
    Deleted(u64),
}

#[derive(Clone, Debug)]
struct Pending {
    expect: Expect,
    /// When the write was acknowledged: any round sent after it shows it.
    acked: Instant,
}

impl Pending {
    fn satisfied(&self, round_sent: Option<Instant>, entry: Option<&Entry>) -> bool {
        if round_sent.is_some_and(|sent| sent >= self.acked) {
            return true;
        }
        match (&self.expect, entry) {
            (Expect::Written(value), Some(e)) => &e.value == value,
            (Expect::Written(_), None) => false,
            (Expect::Deleted(_), None) => true,
            (Expect::Deleted(index), Some(e)) => e.modify_index > *index,
        }
    }
}

#[derive(Default)]
struct State {
    /// The last round answered; `keys` is the prefix at `index`.
    live: bool,
    index: u64,
    /// When the round whose answer is applied was sent.
    round_sent: Option<Instant>,
    /// The index of the last start-over: a waiter whose view is older re-loads.
    synced_at: u64,
    /// Every key under the prefix, by full key.
    keys: BTreeMap<String, Entry>,
    /// Per scope, the last wake; created by the first waiter or the first change seen.
    scopes: HashMap<String, watch::Sender<Wake>>,
    /// The highest index this process was told about under the prefix.
    seen: u64,
    /// Writes without a known index, by key, not yet shown by the mirror.
    pending: HashMap<String, Pending>,
}

impl State {
    /// `scope`'s wake sender; a new one starts at the scope's last leader or control change
    /// the mirror can still see, or its last start-over (which may have hidden a deletion).
    fn sender(&mut self, dir: &str, scope: &str) -> &watch::Sender<Wake> {
        if !self.scopes.contains_key(scope) {
            let base = format!("{dir}{scope}/");
            let last_change = self
                .keys
                .range(base.clone()..)
                .take_while(|(k, _)| k.starts_with(&base))
                .filter(|(k, _)| scope_of(dir, k).is_some_and(|(_, wakes)| wakes))
                .map(|(_, e)| e.modify_index)
                .max()
                .unwrap_or(0);
            let wake = Wake { index: last_change.max(self.synced_at), resync: false };
            self.scopes.insert(scope.to_string(), watch::Sender::new(wake));
        }
        &self.scopes[scope]
    }

    fn prune(&mut self) {
        let (round_sent, keys) = (self.round_sent, &self.keys);
        self.pending.retain(|key, p| !p.satisfied(round_sent, keys.get(key)));
    }

    fn caught_up(&self) -> bool {
        self.live && self.index >= self.seen && self.pending.is_empty()
    }
}

/// The process's mirror of `<prefix>/`; see the module docs.
pub(crate) struct Mirror {
    /// `<prefix>/` without a leading `/`.
    dir: String,
    state: Mutex<State>,
    /// Counts applied rounds, for readers waiting to catch up.
    rounds: watch::Sender<u64>,
    started: AtomicBool,
    task: Mutex<Option<AbortHandle>>,
    /// A reader waits for the mirror: skip the pause between rounds.
    hurry: Notify,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Mirror {
    pub(crate) fn new(prefix: &str) -> Mirror {
        let trimmed = prefix.trim_matches('/');
        let dir = if trimmed.is_empty() { String::new() } else { format!("{trimmed}/") };
        Mirror {
            dir,
            state: Mutex::default(),
            rounds: watch::Sender::new(0),
            started: AtomicBool::new(false),
            task: Mutex::new(None),
            hurry: Notify::new(),
        }
    }

    /// Starts the mirror's task on first use (a process that only makes a few calls, like a
    /// ctl command, never runs it). The task holds the mirror and a copy of the HTTP client,
    /// never the client itself, so dropping the client ends the session's keep-alive at once.
    pub(crate) fn start(self: &Arc<Self>, api: &Api, wait: Duration) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let task = tokio::runtime::Handle::current().spawn(run(Arc::clone(self), api.clone(), wait));
        *lock(&self.task) = Some(task.abort_handle());
    }

    /// Ends the task; the mirror is no longer used.
    pub(crate) fn stop(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        lock(&self.state).live = false;
    }

    /// Notes that this process was told about `index` (a key under the prefix had it).
    pub(crate) fn saw(&self, index: u64) {
        let mut state = lock(&self.state);
        state.seen = state.seen.max(index);
    }

    /// Notes a write of `value` to `key` acknowledged now, whose index is unknown.
    pub(crate) fn wrote(&self, key: &str, value: &[u8]) {
        self.expect(key, Expect::Written(value.to_vec()));
    }

    /// Notes a delete of `key` at `modify_index` acknowledged now.
    pub(crate) fn deleted(&self, key: &str, modify_index: u64) {
        self.expect(key, Expect::Deleted(modify_index));
    }

    fn expect(&self, key: &str, expect: Expect) {
        let mut state = lock(&self.state);
        state.pending.insert(key.to_string(), Pending { expect, acked: now() });
        state.prune();
    }

    /// Runs `f` on the mirror once it has caught up (see the module docs), waiting at most
    /// `wait`; `None` when the mirror may not stand in for a read.
    pub(crate) async fn read<T>(&self, wait: Duration, f: impl Fn(u64, &BTreeMap<String, Entry>) -> T) -> Option<T> {
        let deadline = now() + wait;
        let mut rounds = self.rounds.subscribe();
        loop {
            {
                let state = lock(&self.state);
                if !state.live {
                    return None;
                }
                if state.caught_up() {
                    return Some(f(state.index, &state.keys));
                }
            }
            self.hurry.notify_one();
            match tokio::time::timeout_at(deadline, rounds.changed()).await {
                Ok(Ok(())) => {}
                Err(_) | Ok(Err(_)) => return None,
            }
        }
    }

    /// The key `key` as the mirror holds it now (`Some(None)`: absent), without waiting;
    /// `None` when the mirror is not live.
    pub(crate) fn get_now(&self, key: &str) -> Option<Option<Entry>> {
        let state = lock(&self.state);
        state.live.then(|| state.keys.get(key).cloned())
    }

    /// A receiver of `scope`'s wakes, or `None` while the mirror is not live.
    pub(crate) fn subscribe(&self, scope: &str) -> Option<watch::Receiver<Wake>> {
        let mut state = lock(&self.state);
        if !state.live {
            return None;
        }
        Some(state.sender(&self.dir, scope).subscribe())
    }

    fn set_live(&self, live: bool) {
        lock(&self.state).live = live;
    }

    /// Applies one answer of the round sent at `sent`; whether anything changed.
    fn apply(&self, listing: Listing, sent: Instant) -> bool {
        let mut state = lock(&self.state);
        let keys: BTreeMap<String, Entry> =
            listing.entries.into_iter().filter(|e| e.key.starts_with(&self.dir)).map(|e| (e.key.clone(), e)).collect();
        let changed = keys != state.keys || listing.index != state.index;
        if state.index == 0 || listing.index < state.index {
            // The first answer, or the index went back (a snapshot restore, a new cluster):
            // Consul says to start over. Every waiter re-loads.
            if state.index != 0 {
                tracing::info!(
                    from = state.index,
                    to = listing.index,
                    "consul index went back; the mirror starts over"
                );
            }
            state.synced_at = listing.index;
            for tx in state.scopes.values() {
                tx.send_replace(Wake { index: listing.index, resync: true });
            }
        } else {
            let mut wakes: Vec<(String, u64)> = Vec::new();
            for (key, entry) in &keys {
                if state.keys.get(key) != Some(entry)
                    && let Some((scope, true)) = scope_of(&self.dir, key)
                {
                    wakes.push((scope, entry.modify_index));
                }
            }
            for key in state.keys.keys() {
                if !keys.contains_key(key)
                    && let Some((scope, true)) = scope_of(&self.dir, key)
                {
                    wakes.push((scope, listing.index));
                }
            }
            for (scope, index) in wakes {
                state.sender(&self.dir, &scope).send_replace(Wake { index, resync: false });
            }
        }
        state.keys = keys;
        state.index = listing.index;
        state.round_sent = Some(sent);
        state.live = true;
        state.prune();
        drop(state);
        self.rounds.send_modify(|n| *n += 1);
        changed
    }

    /// The index the mirror has applied.
    pub(crate) fn index(&self) -> u64 {
        lock(&self.state).index
    }
}

/// The scope a key under `dir` belongs to, and whether a change to it wakes waiters (leader
/// and control keys do; member records and other tools' keys do not).
fn scope_of(dir: &str, key: &str) -> Option<(String, bool)> {
    let rest = key.strip_prefix(dir)?;
    let (scope, _) = rest.split_once('/')?;
    let wakes = match Key::parse("", scope, &format!("/{rest}")) {
        Some(Key::Leader | Key::Control(_)) => true,
        Some(Key::Member(_)) | None => false,
    };
    Some((scope.to_string(), wakes))
}

/// How long to pause after a round that changed something: a quarter of a microsecond per
/// byte of the answer (a 2 MB prefix is read at most twice a second), within
/// [`MIN_GAP`, `MAX_GAP`].
fn gap(bytes: usize) -> Duration {
    let nanos = u64::try_from(bytes).unwrap_or(u64::MAX).saturating_mul(250);
    Duration::from_nanos(nanos).clamp(MIN_GAP, MAX_GAP)
}

/// The mirror's task: one blocking query after another from the last answer's index.
async fn run(mirror: Arc<Mirror>, api: Api, wait: Duration) {
    loop {
        let index = mirror.index();
        let sent = now();
        let answer = api.read(&mirror.dir, true, Consistency::Consistent, Some((index.max(1), wait))).await;
        let pause = match answer {
            Ok(listing) => {
                let bytes = listing.bytes;
                if mirror.apply(listing, sent) { gap(bytes) } else { Duration::ZERO }
            }
            Err(e) => {
                tracing::debug!(error = %e, "consul mirror's blocking query failed; retrying");
                mirror.set_live(false);
                RETRY
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = mirror.hurry.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str, index: u64) -> Entry {
        Entry {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_index: index,
            modify_index: index,
            session: None,
        }
    }

    #[test]
    fn member_records_wake_nobody_and_other_prefixes_are_ignored() {
        assert_eq!(scope_of("service/", "service/pg/leader"), Some(("pg".into(), true)));
        assert_eq!(scope_of("service/", "service/pg/failover"), Some(("pg".into(), true)));
        assert_eq!(scope_of("service/", "service/pg/members/n1"), Some(("pg".into(), false)));
        assert_eq!(scope_of("service/", "service/pg/optime/leader"), Some(("pg".into(), false)));
        assert_eq!(scope_of("service/", "servicex/pg/leader"), None);
        assert_eq!(scope_of("", "pg/leader"), Some(("pg".into(), true)));
    }

    #[test]
    fn leader_changes_wake_member_changes_do_not() {
        let mirror = Mirror::new("service");
        let t = now();
        let listing = |entries: Vec<Entry>, index| Listing { index, entries, bytes: 0 };
        mirror.apply(listing(vec![entry("service/pg/leader", "a", 5), entry("service/pg/members/m", "x", 6)], 6), t);
        let mut wakes = mirror.subscribe("pg").expect("live");
        let first = *wakes.borrow_and_update();
        mirror.apply(listing(vec![entry("service/pg/leader", "a", 5), entry("service/pg/members/m", "y", 7)], 7), t);
        assert!(!wakes.has_changed().expect("open"), "a member write wakes nobody");
        mirror.apply(listing(vec![entry("service/pg/members/m", "y", 7)], 8), t);
        assert!(wakes.has_changed().expect("open"), "a deleted leader wakes");
        let wake = *wakes.borrow_and_update();
        assert!(wake.index > first.index && !wake.resync, "{wake:?} after {first:?}");
        mirror.apply(listing(vec![], 3), t);
        assert!(wakes.borrow_and_update().resync, "an index going back wakes with a resync");
    }

    #[test]
    fn writes_without_an_index_hold_reads_back_until_shown() {
        let mirror = Mirror::new("service");
        let t = now();
        mirror.apply(Listing { index: 4, entries: vec![entry("service/pg/leader", "a", 4)], bytes: 0 }, t);
        assert!(lock(&mirror.state).caught_up());
        mirror.deleted("service/pg/leader", 4);
        assert!(!lock(&mirror.state).caught_up(), "the delete is not shown yet");
        mirror.apply(Listing { index: 9, entries: vec![], bytes: 0 }, t);
        assert!(lock(&mirror.state).caught_up(), "the key is gone");
        mirror.wrote("service/pg/members/m", b"v");
        mirror.saw(12);
        mirror.apply(Listing { index: 10, entries: vec![entry("service/pg/members/m", "v", 10)], bytes: 0 }, t);
        assert!(!lock(&mirror.state).caught_up(), "index 12 was seen, the mirror is at 10");
        mirror.apply(Listing { index: 12, entries: vec![entry("service/pg/members/m", "v", 10)], bytes: 0 }, now());
        assert!(lock(&mirror.state).caught_up());
        assert_eq!(gap(0), MIN_GAP);
        assert_eq!(gap(2_000_000), MAX_GAP);
    }
}
