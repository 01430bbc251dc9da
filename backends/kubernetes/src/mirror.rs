//! One label-selected LIST + WATCH per client over every Lease this process's scopes use: a
//! mirror with resourceVersions.
//!
//! It feeds [`load`](leasehold::Dcs::load) without a request and wakes
//! [`watch`](leasehold::Dcs::watch) waiters on leader and control object changes only
//! (member heartbeats and leader renewals that touch nothing but `renewTime` wake nobody).
//! Renewals never consult it: Kubernetes has no shared lease, so every leader Lease is
//! renewed by its own conditional PATCH.
//!
//! The task LISTs `app.kubernetes.io/managed-by=leasehold` (plus the client's extra labels)
//! in the namespace with no resourceVersion (a quorum read), then WATCHes from the list's
//! resourceVersion with bookmarks, re-watching from the last version seen when a watch ends;
//! a watch that answers 410 Gone (history compacted) relists once. As events are applied, the
//! client's [`Observations`](crate::observe::Observations) record when this process first saw
//! each (object, resourceVersion), so the expiry rule keeps its meaning: a watch from a
//! version is gap-free, so an object the mirror still shows at version `v` has not been
//! written since the mirror first saw `v`.
//!
//! A scope's load is served by the mirror only while it is *live* (a watch is established)
//! and has caught up with every resourceVersion this process was told about *in that scope*:
//! objects its own writes returned, objects it read while resolving a lost compare-and-set,
//! and objects it deleted (or found missing) which the mirror must show gone or rewritten.
//! Per scope, so that a process writing in hundreds of scopes (a renewal per leader per loop)
//! does not make every other scope's load wait for the watch; a load waits up to
//! [`CATCH_UP_WAIT`] for its own scope before it falls back to a LIST. resourceVersions are compared as
//! integers (what every API server over etcd hands out); a version that is not a number
//! makes the mirror unusable, and reads fall back to a LIST.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, PoisonError, Weak};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::WatchParams;
use kube::core::WatchEvent as KubeEvent;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::Inner;
use crate::error::api_code;
use crate::names::{MANAGED_BY, ROLE_LABEL, SCOPE_LABEL};
use crate::objects::{self, Fingerprint};
use crate::observe::now;

/// Pause before retrying after a failed LIST or WATCH.
const RETRY: Duration = Duration::from_millis(250);
/// How long a load waits for the mirror to show this process's own latest write in its scope
/// (the watch delivers it within milliseconds on a healthy server) before it LISTs instead.
pub(crate) const CATCH_UP_WAIT: Duration = Duration::from_millis(500);
/// `timeoutSeconds` of each WATCH: the server ends it then and the mirror re-watches from
/// the last version it saw (a bookmark usually arrives just before).
const WATCH_SECONDS: u32 = 290;

/// A resourceVersion as a number (`None`: not one, so not comparable).
pub(crate) fn rv_number(rv: &str) -> Option<u64> {
    rv.parse().ok()
}

/// The scope's objects as the mirror holds them, for a `load`.
#[derive(Debug)]
pub(crate) struct MirrorView {
    /// The mirror's resourceVersion: the view is the scope as of it.
    pub(crate) revision: u64,
    /// The scope's objects (those labelled with its scope).
    pub(crate) items: Vec<Lease>,
    /// The API server's clock now, estimated from the `Date` of the last LIST answer.
    pub(crate) server_now: Option<k8s_openapi::jiff::Timestamp>,
}

#[derive(Debug, Default)]
struct State {
    /// A watch is established and every event so far was applied.
    live: bool,
    /// The highest resourceVersion applied (list, event or bookmark).
    revision: u64,
    /// The resourceVersion of the last LIST: waiters with an older view re-load (a relist
    /// after 410 may have skipped changes).
    synced_at: u64,
    objects: HashMap<String, Lease>,
    /// The names of `objects` by their scope label: a load reads its scope only.
    by_scope: HashMap<String, HashSet<String>>,
    /// Per scope, the resourceVersion of its last leader or control object change.
    wakes: HashMap<String, u64>,
    /// Per scope, the highest resourceVersion this process was told about by its own requests.
    seen: HashMap<String, u64>,
    /// The same for objects without a scope label: they hold back every scope.
    seen_unscoped: u64,
    /// Objects this process deleted, or found missing, at a version: the mirror must show
    /// them absent or newer before it is used.
    gone: HashMap<String, u64>,
    /// A resourceVersion that is not a number was seen: never usable.
    opaque: bool,
    /// The `Date` of the last LIST answer and when it arrived.
    server_clock: Option<(k8s_openapi::jiff::Timestamp, Instant)>,
}

fn scope_of(lease: &Lease) -> Option<&str> {
    lease.metadata.labels.as_ref()?.get(SCOPE_LABEL).map(String::as_str)
}

impl State {
    /// Whether `scope`'s objects (`in_scope` names them, deleted ones included) show
    /// everything this process was told about them.
    fn caught_up(&mut self, scope: &str, in_scope: impl Fn(&str) -> bool) -> bool {
        let seen = self.seen.get(scope).copied().unwrap_or(0).max(self.seen_unscoped);
        if !self.live || self.opaque || self.revision < seen {
            return false;
        }
        let objects = &self.objects;
        self.gone
            .retain(|name, at| objects.get(name).is_some_and(|o| rv_number(objects::rv(o)).is_none_or(|v| v <= *at)));
        !self.gone.keys().any(|name| in_scope(name))
    }

    fn index(&mut self, lease: &Lease, name: &str, present: bool) {
        let Some(scope) = scope_of(lease) else { return };
        if present {
            self.by_scope.entry(scope.to_string()).or_default().insert(name.to_string());
        } else if let Some(names) = self.by_scope.get_mut(scope) {
            names.remove(name);
        }
    }

    fn wakes_scope(lease: &Lease) -> Option<String> {
        let labels = lease.metadata.labels.as_ref()?;
        let role = labels.get(ROLE_LABEL)?;
        (role == "leader" || role == "control").then(|| labels.get(SCOPE_LABEL).cloned()).flatten()
    }

    fn apply(&mut self, lease: Lease, deleted: bool) {
        let name = objects::name(&lease).to_string();
        let Some(rv) = rv_number(objects::rv(&lease)) else {
            self.opaque = true;
            return;
        };
        self.revision = self.revision.max(rv);
        let before =
            if deleted { self.objects.remove(&name) } else { self.objects.insert(name.clone(), lease.clone()) };
        if let Some(b) = &before {
            self.index(b, &name, false);
        }
        if !deleted {
            self.index(&lease, &name, true);
        }
        let changed = match (&before, deleted) {
            (Some(_), true) => true,
            (None, true) => false,
            (Some(b), false) => Fingerprint::of(b) != Fingerprint::of(&lease),
            (None, false) => true,
        };
        if changed && let Some(scope) = Self::wakes_scope(before.as_ref().unwrap_or(&lease)) {
            self.wakes.insert(scope, rv);
        }
    }
}

/// The process-wide mirror of one client (see the module docs).
#[derive(Debug)]
pub(crate) struct Mirror {
    /// `key=value` pairs every mirrored object carries.
    labels: BTreeMap<String, String>,
    state: Mutex<State>,
    /// Bumped on every applied change or liveness change; waiters re-check their scope.
    generation: watch::Sender<u64>,
}

impl Mirror {
    pub(crate) fn new(extra_labels: &BTreeMap<String, String>) -> Self {
        let mut labels = extra_labels.clone();
        labels.insert(MANAGED_BY.to_string(), "leasehold".to_string());
        Mirror { labels, state: Mutex::new(State::default()), generation: watch::Sender::new(0) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// The label selector of the LIST and WATCH.
    pub(crate) fn selector(&self) -> String {
        self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }

    /// Whether `lease` is one the mirror would show.
    fn covers(&self, lease: &Lease) -> bool {
        let labels = lease.metadata.labels.as_ref();
        self.labels.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    }

    /// This process was told that `lease` is at its resourceVersion (a write's answer or a
    /// read): the mirror is not used until it has seen that far.
    pub(crate) fn told(&self, lease: &Lease) {
        if !self.covers(lease) {
            return;
        }
        let mut state = self.state();
        match (rv_number(objects::rv(lease)), scope_of(lease)) {
            (Some(rv), Some(scope)) => {
                let seen = state.seen.entry(scope.to_string()).or_insert(rv);
                *seen = (*seen).max(rv);
            }
            (Some(rv), None) => state.seen_unscoped = state.seen_unscoped.max(rv),
            (None, _) => state.opaque = true,
        }
    }

    /// This process deleted `name` at `rv`, or learnt it is missing: the mirror is not used
    /// until it shows the object absent or at a newer version.
    pub(crate) fn told_gone(&self, name: &str, rv: &str) {
        let mut state = self.state();
        match rv_number(rv) {
            Some(rv) => {
                let at = state.gone.entry(name.to_string()).or_insert(rv);
                *at = (*at).max(rv);
            }
            None => state.opaque = true,
        }
    }

    /// The objects labelled with `scope` once the mirror is usable for it, waiting up to
    /// `wait` while it is live but behind this process's own requests in the scope; `None`
    /// if it is not usable by then.
    pub(crate) async fn view(
        &self,
        scope: &str,
        in_scope: impl Fn(&str) -> bool,
        wait: Duration,
    ) -> Option<MirrorView> {
        let until = now() + wait;
        let mut generation = self.generation.subscribe();
        loop {
            {
                let mut state = self.state();
                if state.caught_up(scope, &in_scope) {
                    return Some(Self::view_of(&state, scope));
                }
                if !state.live || state.opaque {
                    return None;
                }
            }
            tokio::select! {
                changed = generation.changed() => if changed.is_err() { return None },
                () = tokio::time::sleep_until(until) => return None,
            }
        }
    }

    fn view_of(state: &State, scope: &str) -> MirrorView {
        let items = state
            .by_scope
            .get(scope)
            .into_iter()
            .flatten()
            .filter_map(|name| state.objects.get(name))
            .cloned()
            .collect();
        let server_now = state.server_clock.and_then(|(date, at)| {
            let elapsed = i64::try_from(now().saturating_duration_since(at).as_secs()).ok()?;
            k8s_openapi::jiff::Timestamp::from_second(date.as_second().checked_add(elapsed)?).ok()
        });
        MirrorView { revision: state.revision, items, server_now }
    }

    /// The highest resourceVersion the mirror applied.
    pub(crate) fn revision(&self) -> u64 {
        self.state().revision
    }

    /// Whether the mirror is live and holds the Lease `name` (a watch can then be served).
    pub(crate) fn holds(&self, name: &str) -> bool {
        let state = self.state();
        state.live && !state.opaque && state.objects.contains_key(name)
    }

    /// Waits until `scope` has a leader or control change after `since`, the mirror
    /// restarted after it or stopped being live (`true`: re-load), or `until` (`false`).
    pub(crate) async fn wait(&self, scope: &str, since: u64, until: Instant) -> bool {
        let mut generation = self.generation.subscribe();
        loop {
            {
                let state = self.state();
                let changed = state.wakes.get(scope).is_some_and(|&at| at > since);
                if !state.live || state.synced_at > since || changed {
                    return true;
                }
            }
            tokio::select! {
                changed = generation.changed() => if changed.is_err() { return true },
                () = tokio::time::sleep_until(until) => return false,
            }
        }
    }

    fn set_live(&self, live: bool) {
        let mut state = self.state();
        if state.live != live {
            state.live = live;
            drop(state);
            self.bump();
        }
    }

    fn reset(&self, items: Vec<Lease>, revision: &str, date: Option<k8s_openapi::jiff::Timestamp>) {
        let mut state = self.state();
        let Some(revision) = rv_number(revision) else {
            state.opaque = true;
            return;
        };
        let mut fresh = HashMap::new();
        state.by_scope.clear();
        for item in items {
            if rv_number(objects::rv(&item)).is_none() {
                state.opaque = true;
            }
            let name = objects::name(&item).to_string();
            state.index(&item, &name, true);
            fresh.insert(name, item);
        }
        state.objects = fresh;
        state.revision = state.revision.max(revision);
        state.synced_at = revision;
        state.server_clock = date.map(|d| (d, now()));
    }
}

/// The mirror's task: LIST, then WATCH from the list's version for as long as the client
/// lives; 410 relists, other failures retry after [`RETRY`] from the last version seen.
pub(crate) async fn run(inner: Weak<Inner>) {
    let mut resume: Option<String> = None;
    loop {
        let Some(client) = inner.upgrade() else { return };
        let Some(mirror) = client.mirror.clone() else { return };
        let selector = mirror.selector();
        let since = match resume.clone() {
            Some(since) => since,
            None => match client.list_dated(&selector).await {
                Ok((list, date)) => {
                    let revision = list.metadata.resource_version.clone().unwrap_or_default();
                    let at = now();
                    for item in &list.items {
                        client.observations.observe(objects::name(item), objects::rv(item), at);
                    }
                    mirror.reset(list.items, &revision, date);
                    revision
                }
                Err(e) => {
                    tracing::debug!(error = %e, "mirror list failed; retrying");
                    mirror.set_live(false);
                    drop(client);
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        let params = WatchParams::default().labels(&selector).timeout(WATCH_SECONDS);
        let opened = tokio::time::timeout(client.options.request_timeout, client.api.watch(&params, &since)).await;
        let stream = match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) if api_code(&e) == Some(410) => {
                tracing::info!(%since, "mirror watch history compacted (410): relisting");
                mirror.set_live(false);
                resume = None;
                continue;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "mirror watch failed; retrying");
                mirror.set_live(false);
                resume = Some(since);
                drop(client);
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(_) => {
                mirror.set_live(false);
                resume = Some(since);
                continue;
            }
        };
        mirror.set_live(true);
        resume = Some(since);
        // Only the stream is held while waiting: the client may be dropped meanwhile.
        let observations_of = Weak::clone(&inner);
        drop(client);
        let mut stream = std::pin::pin!(stream);
        let mut failed = false;
        while let Some(event) = stream.next().await {
            let Some(client) = observations_of.upgrade() else { return };
            let (lease, deleted) = match event {
                Ok(KubeEvent::Added(l)) | Ok(KubeEvent::Modified(l)) => (l, false),
                Ok(KubeEvent::Deleted(l)) => (l, true),
                Ok(KubeEvent::Bookmark(b)) => {
                    if let Some(rv) = rv_number(&b.metadata.resource_version) {
                        let mut state = mirror.state();
                        state.revision = state.revision.max(rv);
                    }
                    resume = Some(b.metadata.resource_version);
                    mirror.bump();
                    continue;
                }
                Ok(KubeEvent::Error(status)) if status.code == 410 => {
                    tracing::info!("mirror watch history compacted (410): relisting");
                    resume = None;
                    failed = true;
                    break;
                }
                Ok(KubeEvent::Error(status)) => {
                    tracing::debug!(code = status.code, message = %status.message, "mirror watch error event");
                    failed = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "mirror watch stream failed");
                    failed = true;
                    break;
                }
            };
            let (name, rv) = (objects::name(&lease).to_string(), objects::rv(&lease).to_string());
            if deleted {
                client.observations.forget(|n| n != name);
            } else {
                client.observations.observe(&name, &rv, now());
            }
            mirror.state().apply(lease, deleted);
            resume = Some(rv);
            mirror.bump();
        }
        // A watch that ends at its timeout is re-opened at once from the last version seen
        // (gap-free, so the mirror stays live); a failed one makes it unusable until then.
        if failed {
            mirror.set_live(false);
            tokio::time::sleep(RETRY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn lease(scope: &str, name: &str, rv: u64) -> Lease {
        let labels = BTreeMap::from([
            (MANAGED_BY.to_string(), "leasehold".to_string()),
            (SCOPE_LABEL.to_string(), scope.to_string()),
            (ROLE_LABEL.to_string(), "member".to_string()),
        ]);
        Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some(rv.to_string()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Lease::default()
        }
    }

    fn in_scope(scope: &'static str) -> impl Fn(&str) -> bool {
        move |name: &str| name.starts_with(scope)
    }

    /// A write in one scope holds back loads of that scope until the watch shows it, and no
    /// other scope's.
    #[test]
    fn own_writes_hold_back_only_their_own_scope() {
        let mirror = Mirror::new(&BTreeMap::new());
        mirror.reset(vec![lease("a", "a-m1", 5), lease("b", "b-m1", 6)], "6", None);
        mirror.state().live = true;
        mirror.told(&lease("a", "a-m1", 9));
        let mut state = mirror.state();
        assert!(!state.caught_up("a", in_scope("a")), "scope a must wait for its write at 9");
        assert!(state.caught_up("b", in_scope("b")), "scope b has nothing pending");
        state.apply(lease("a", "a-m1", 9), false);
        assert!(state.caught_up("a", in_scope("a")), "the watch delivered 9");
        let view = Mirror::view_of(&state, "a");
        assert_eq!(view.items.iter().map(objects::rv).collect::<Vec<_>>(), ["9"], "only scope a's object");
    }

    /// A deletion this process made holds back its scope until the mirror shows it gone.
    #[test]
    fn an_own_deletion_holds_back_only_its_scope() {
        let mirror = Mirror::new(&BTreeMap::new());
        mirror.reset(vec![lease("a", "a-leader", 5), lease("b", "b-m1", 6)], "6", None);
        mirror.state().live = true;
        mirror.told_gone("a-leader", "5");
        let mut state = mirror.state();
        assert!(!state.caught_up("a", in_scope("a")));
        assert!(state.caught_up("b", in_scope("b")));
        state.apply(lease("a", "a-leader", 7), true);
        assert!(state.caught_up("a", in_scope("a")));
        assert!(Mirror::view_of(&state, "a").items.is_empty(), "the deleted object left the index");
    }
}
