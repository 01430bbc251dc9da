//! The [`Dcs`] trait over one scope's znodes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use leasehold::{
    CasOutcome, ClusterView, ControlKey, Dcs, DcsError, Epoch, Expect, GarbageRemoval, Key, LeaderRecord, LeaderView,
    Lease, MemberRecord, RawEntry, RawView, Record, StoreBounds, Version, WatchEvent,
};
use zookeeper_client as zk;

use crate::error::{Op, classify};
use crate::mirror::{Seen, Snapshot};
use crate::session::{Session, Shared, now};

/// How long a healthy ensemble takes to deliver a watch event (generous; loopback is ~1 ms).
const WATCH_LATENCY: Duration = Duration::from_millis(200);

/// How long a `load` waits for the mirror to apply what it has been told before it asks the
/// server instead.
const MIRROR_WAIT: Duration = Duration::from_millis(500);

/// Tries of a `load` whose member list changed between listing and reading.
const SNAPSHOT_TRIES: usize = 4;

/// One election scope: the znodes under `<prefix>/<scope>`.
///
/// | znode | kind | version reported |
/// |---|---|---|
/// | `leader` | ephemeral, owned by the holder's session | `mzxid`; the epoch is `czxid` |
/// | `members/<name>` | ephemeral | `mzxid` |
/// | `config`, `failover`, `sync`, `initialize`, `history`, `status` | persistent | data `version` (the CAS condition) |
///
/// A deleted control key is left as an empty znode (a tombstone, read as absent), so its
/// data version keeps growing and a stale version can never match a re-created key.
///
/// With [`ZkOptions::watch_mirror`](crate::ZkOptions::watch_mirror) (the default) `load`,
/// `watch`, `renew` and `publish_member` use the session's mirror when it is usable: see the
/// crate documentation, "One watch per session". A leader learns that its znode was deleted
/// or changed from the mirror's event (its next renewal is `Lost`), and that its session
/// ended from the session state (`LeaseLost`).
#[derive(Clone)]
pub struct ZkDcs {
    shared: Arc<Shared>,
    scope: String,
    invalid: Option<String>,
    /// A write of this handle had an unknown outcome: the next `load` asks the server.
    linearize: Arc<AtomicBool>,
}

impl std::fmt::Debug for ZkDcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkDcs").field("scope", &self.scope).finish_non_exhaustive()
    }
}

/// A watch cursor: connection generation, scope event count, highest zxid read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    generation: u64,
    seq: u64,
    zxid: i64,
}

/// A watch cursor from the mirror: its epoch and the scope's count of leader and control
/// changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MirrorCursor {
    epoch: u64,
    seq: u64,
}

impl MirrorCursor {
    fn version(self) -> Version {
        Version::opaque(format!("m:{}:{}", self.epoch, self.seq))
    }

    fn parse(v: &Version) -> Option<MirrorCursor> {
        let text = v.to_text();
        let mut parts = text.strip_prefix("m:")?.split(':');
        let cursor = MirrorCursor { epoch: parts.next()?.parse().ok()?, seq: parts.next()?.parse().ok()? };
        parts.next().is_none().then_some(cursor)
    }
}

impl Cursor {
    fn version(self) -> Version {
        Version::opaque(format!("{}:{}:{}", self.generation, self.seq, self.zxid))
    }

    fn parse(v: &Version) -> Option<Cursor> {
        let text = v.to_text();
        let mut parts = text.split(':');
        let cursor = Cursor {
            generation: parts.next()?.parse().ok()?,
            seq: parts.next()?.parse().ok()?,
            zxid: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(cursor)
    }
}

fn check_scope(scope: &str) -> Option<String> {
    if scope.is_empty() || scope.len() > 200 {
        return Some(format!("scope name {scope:?} must be 1 to 200 bytes long"));
    }
    if scope.contains('/') || scope.chars().any(char::is_control) || scope == "." || scope == ".." {
        return Some(format!("scope name {scope:?} must not contain '/' or control characters, nor be '.' or '..'"));
    }
    if scope == "zookeeper" {
        return Some("scope name \"zookeeper\" is reserved by ZooKeeper".into());
    }
    None
}

fn version_of(v: i32) -> Version {
    Version::new(u64::try_from(v).unwrap_or(0))
}

fn zxid_version(zxid: i64) -> Version {
    Version::new(u64::try_from(zxid).unwrap_or(0))
}

fn epoch_of(stat: &zk::Stat) -> Epoch {
    Epoch(u64::try_from(stat.czxid).unwrap_or(0))
}

/// The leader znode's content as a view, `None` if it does not decode.
fn leader_view(path: &str, data: &[u8], stat: &zk::Stat) -> Option<LeaderView> {
    decode_leader(path, data, stat.czxid, stat.mzxid)
}

/// A leader znode's data with its czxid (the epoch) and mzxid; garbage is logged and `None`.
fn decode_leader(path: &str, data: &[u8], czxid: i64, mzxid: i64) -> Option<LeaderView> {
    match LeaderRecord::decode(path, data) {
        Ok(record) => {
            Some(LeaderView { record, epoch: Epoch(u64::try_from(czxid).unwrap_or(0)), version: zxid_version(mzxid) })
        }
        Err(e) => {
            tracing::warn!(%path, reason = %e.reason, consequence = leasehold::record::garbage_consequence("leader"), "garbage in the leader znode");
            None
        }
    }
}

impl ZkDcs {
    pub(crate) fn new(shared: Arc<Shared>, scope: &str) -> ZkDcs {
        ZkDcs {
            shared,
            scope: scope.to_string(),
            invalid: check_scope(scope),
            linearize: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A write with an unknown outcome makes the next `load` ask the server, so a node
    /// looking for its own token reads the store itself.
    fn noted<T>(&self, result: Result<T, DcsError>) -> Result<T, DcsError> {
        if matches!(&result, Err(e) if e.is_outcome_unknown()) {
            self.linearize.store(true, Ordering::SeqCst);
        }
        result
    }

    /// The scope as the mirror holds it, when the mirror is on and usable (started here on
    /// first use).
    async fn mirrored(&self, session: &Session) -> Option<Snapshot> {
        if !self.shared.options.watch_mirror {
            return None;
        }
        self.shared.mirror.start(&self.shared);
        if !self.shared.is_connected() {
            return None;
        }
        let generation = *self.shared.generation.borrow();
        self.shared.mirror.snapshot(&self.scope, session.number, generation, MIRROR_WAIT).await
    }

    /// The scope's view from a mirror snapshot.
    fn view_of(&self, snapshot: Snapshot) -> ClusterView {
        let prefix = &self.shared.options.prefix;
        let revision = MirrorCursor { epoch: snapshot.epoch, seq: snapshot.seq }.version();
        let mut raw = RawView { revision: Some(revision), ..RawView::default() };
        for (path, e) in snapshot.entries {
            match Key::parse(prefix, &self.scope, &path) {
                Some(Key::Leader) => {
                    let epoch = Epoch(u64::try_from(e.czxid).unwrap_or(0));
                    raw.leader = Some((RawEntry { key: path, bytes: e.data, version: zxid_version(e.mzxid) }, epoch));
                }
                Some(Key::Member(_)) => {
                    raw.members.push(RawEntry { key: path, bytes: e.data, version: zxid_version(e.mzxid) });
                }
                // An empty control znode is a deleted key's tombstone.
                Some(Key::Control(key)) if !e.data.is_empty() => {
                    raw.control.push((key, RawEntry { key: path, bytes: e.data, version: version_of(e.version) }));
                }
                Some(Key::Control(_)) | None => {}
            }
        }
        raw.decode()
    }

    /// `Some(current)` when the snapshot's leader znode is not the one `lease` holds in this
    /// session: what `Lost` reports.
    fn not_ours(&self, session: &Session, lease: &Lease, snapshot: &Snapshot) -> Option<Option<LeaderView>> {
        let path = self.path(&Key::Leader);
        let Some((_, entry)) = snapshot.entries.iter().find(|(p, _)| *p == path) else { return Some(None) };
        let Some(current) = decode_leader(&path, &entry.data, entry.czxid, entry.mzxid) else { return Some(None) };
        let ours = current.epoch == lease.epoch && current.record == lease.record && entry.owner == session.id();
        (!ours).then_some(Some(current))
    }

    fn path(&self, key: &Key) -> String {
        key.path(&self.shared.options.prefix, &self.scope)
    }

    fn scope_path(&self) -> String {
        format!("{}/{}", self.shared.options.prefix, self.scope)
    }

    fn members_path(&self) -> String {
        format!("{}/members", self.scope_path())
    }

    /// The current session, after checking the scope name.
    fn session(&self) -> Result<Arc<Session>, DcsError> {
        if let Some(why) = &self.invalid {
            return Err(DcsError::fatal(why.clone()));
        }
        self.shared.session()
    }

    /// Reads the leader znode: `None` if absent.
    async fn read_leader(&self, session: &Session, what: &str) -> Result<Option<(Vec<u8>, zk::Stat)>, DcsError> {
        let path = self.path(&Key::Leader);
        match self.shared.run(session, Op::Read, what, |zk| zk.get_data(&path)).await? {
            Ok(found) => Ok(Some(found)),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(classify(Op::Read, what, e)),
        }
    }

    /// The leader as `Lost` reports it.
    async fn current_leader(&self, session: &Session, what: &str) -> Result<Option<LeaderView>, DcsError> {
        let path = self.path(&Key::Leader);
        Ok(self.read_leader(session, what).await?.and_then(|(data, stat)| leader_view(&path, &data, &stat)))
    }

    /// The control key's version as `Lost` reports it: `None` when absent or a tombstone.
    async fn current_control(&self, session: &Session, path: &str, what: &str) -> Result<Option<Version>, DcsError> {
        match self.shared.run(session, Op::Read, what, |zk| zk.get_data(path)).await? {
            Ok((data, _)) if data.is_empty() => Ok(None),
            Ok((_, stat)) => Ok(Some(version_of(stat.version))),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(classify(Op::Read, what, e)),
        }
    }

    /// One consistent read of the scope. The member list is read again inside the multi-read
    /// that fetches the data, and the read is retried if it changed in between.
    async fn snapshot(&self, session: &Session) -> Result<RawView, DcsError> {
        let what = "loading the scope";
        let watch = self.shared.scope_watch(session, &self.scope_path()).await?;
        let generation = *self.shared.generation.borrow();
        // Taken before reading: an event counted later may repeat a change the read saw
        // (a spurious wake-up), but a change the read missed is always counted after.
        let seq = *watch.seq.borrow();
        if self.shared.options.sync_reads {
            let scope_path = self.scope_path();
            if let Err(e) = self.shared.run(session, Op::Read, what, |zk| zk.sync(&scope_path)).await? {
                return Err(classify(Op::Read, what, e));
            }
        }
        let members_path = self.members_path();
        let scope_path = self.scope_path();
        let leader_path = self.path(&Key::Leader);
        let controls: Vec<(ControlKey, String)> =
            ControlKey::ALL.into_iter().map(|k| (k, self.path(&Key::Control(k)))).collect();
        let mut names = match self.shared.run(session, Op::Read, what, |zk| zk.list_children(&members_path)).await? {
            Ok(names) => names,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(classify(Op::Read, what, e)),
        };
        for _ in 0..SNAPSHOT_TRIES {
            names.sort();
            let member_paths: Vec<String> = names.iter().map(|n| format!("{members_path}/{n}")).collect();
            let results = {
                let mut reader = session.zk.new_multi_reader();
                let mut add = |p: &str, children: bool| {
                    if children { reader.add_get_children(p) } else { reader.add_get_data(p) }
                        .map_err(|e| classify(Op::Read, what, e))
                };
                add(&scope_path, false)?;
                add(&members_path, true)?;
                add(&members_path, false)?;
                add(&leader_path, false)?;
                for (_, p) in &controls {
                    add(p, false)?;
                }
                for p in &member_paths {
                    add(p, false)?;
                }
                match self.shared.run(session, Op::Read, what, |_| reader.commit()).await? {
                    Ok(results) => results,
                    Err(e) => return Err(classify(Op::Read, what, e)),
                }
            };
            let expected = 4 + controls.len() + member_paths.len();
            if results.len() != expected {
                return Err(DcsError::unavailable(format!(
                    "{what}: multi-read answered {} results for {expected} reads",
                    results.len()
                )));
            }
            let mut results = results.into_iter();
            let mut zxid = 0i64;
            let data = |r: zk::MultiReadResult, zxid: &mut i64| match r {
                zk::MultiReadResult::Data { data, stat } => {
                    *zxid = (*zxid).max(stat.mzxid).max(stat.pzxid);
                    Ok(Some((data, stat)))
                }
                zk::MultiReadResult::Error { err: zk::Error::NoNode } => Ok(None),
                zk::MultiReadResult::Error { err } => Err(classify(Op::Read, what, err)),
                other => Err(DcsError::unavailable(format!("{what}: unexpected multi-read result {other:?}"))),
            };
            let _scope_dir = results.next().map(|r| data(r, &mut zxid)).transpose()?;
            let listed = match results.next() {
                Some(zk::MultiReadResult::Children { children }) => children,
                Some(zk::MultiReadResult::Error { err: zk::Error::NoNode }) => Vec::new(),
                Some(zk::MultiReadResult::Error { err }) => return Err(classify(Op::Read, what, err)),
                other => {
                    return Err(DcsError::unavailable(format!("{what}: unexpected multi-read result {other:?}")));
                }
            };
            let _members_dir = results.next().map(|r| data(r, &mut zxid)).transpose()?;
            let leader = results.next().map(|r| data(r, &mut zxid)).transpose()?.flatten();
            let mut control = Vec::new();
            for (key, path) in &controls {
                if let Some((bytes, stat)) = results.next().map(|r| data(r, &mut zxid)).transpose()?.flatten()
                    && !bytes.is_empty()
                {
                    control.push((*key, RawEntry { key: path.clone(), bytes, version: version_of(stat.version) }));
                }
            }
            let mut members = Vec::new();
            for path in &member_paths {
                if let Some((bytes, stat)) = results.next().map(|r| data(r, &mut zxid)).transpose()?.flatten() {
                    members.push(RawEntry { key: path.clone(), bytes, version: zxid_version(stat.mzxid) });
                }
            }
            let mut listed = listed;
            listed.sort();
            if listed != names {
                // A member came or went between the listing and the read: read again.
                names = listed;
                continue;
            }
            return Ok(RawView {
                revision: Some(Cursor { generation, seq, zxid }.version()),
                leader: leader.map(|(bytes, stat)| {
                    (RawEntry { key: leader_path.clone(), bytes, version: zxid_version(stat.mzxid) }, epoch_of(&stat))
                }),
                members,
                control,
            });
        }
        Err(DcsError::unavailable(format!("{what}: the member list kept changing during {SNAPSHOT_TRIES} reads")))
    }

    /// Renewal when the session cannot be asked: the belief ends on our own clock.
    fn renew_offline(&self, session: &Session) -> DcsError {
        let silent = now().saturating_duration_since(self.shared.last_contact(session));
        if silent >= session.timeout {
            DcsError::lease_lost(format!(
                "no contact with ZooKeeper for {silent:?}, at least the session timeout {:?}: the session has expired or is about to",
                session.timeout
            ))
        } else {
            DcsError::unavailable(format!(
                "disconnected from ZooKeeper for now ({silent:?} since the server last heard from us, session timeout {:?})",
                session.timeout
            ))
        }
    }
}

#[async_trait]
impl Dcs for ZkDcs {
    fn scope(&self) -> &str {
        &self.scope
    }

    /// `ttl` is the negotiated session timeout. The server expires a silent session within
    /// one tick after that (tick <= timeout / 2), and a follower reports its sessions' pings
    /// to the leader every half tick, hence `max_expiry` = 1.5 x the timeout.
    fn bounds(&self) -> StoreBounds {
        let ttl = self.shared.timeout();
        StoreBounds { ttl, max_expiry: ttl + ttl / 2, watch_latency: WATCH_LATENCY, member_expiry: ttl + ttl / 2 }
    }

    fn configured_ttl(&self) -> Duration {
        self.shared.ttl
    }

    async fn load(&self) -> Result<ClusterView, DcsError> {
        let session = self.session()?;
        if !self.linearize.swap(false, Ordering::SeqCst)
            && let Some(snapshot) = self.mirrored(&session).await
        {
            return Ok(self.view_of(snapshot));
        }
        Ok(self.snapshot(&session).await?.decode())
    }

    async fn acquire(&self, record: &LeaderRecord) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        let result = self.acquire_once(record).await;
        self.noted(result)
    }

    /// With a usable mirror (see the crate docs), the leader znode as the mirror shows it
    /// must still be ours (epoch = czxid, token, owner = our session), and a `sync` answered
    /// by the ensemble at most a short reuse window before the call (one serves every scope
    /// renewing meanwhile) proves the session alive: the session keeps the ephemeral znode,
    /// and only a delete, which the mirror shows, removes it earlier. `valid_for` runs from
    /// that `sync`. Without a usable mirror: a pipelined `sync` + read of the znode.
    async fn renew(&self, lease: &Lease) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        let started = now();
        let session = self.session()?;
        let path = self.path(&Key::Leader);
        if let Some(number) = self.shared.held_in(&path, lease.epoch)
            && number != session.number
        {
            return Err(DcsError::lease_lost(
                "the ZooKeeper session that created the leader key expired; the key went with it",
            ));
        }
        if !self.shared.is_connected() {
            return Err(self.renew_offline(&session));
        }
        if !self.linearize.load(Ordering::SeqCst)
            && let Some(snapshot) = self.mirrored(&session).await
        {
            if let Some(lost) = self.not_ours(&session, lease, &snapshot) {
                return Ok(CasOutcome::Lost(lost));
            }
            let contact = match self.shared.proof_of_life(&session, started).await {
                Ok(at) => at,
                Err(e) if e.is_retryable() && !self.shared.is_connected() => return Err(self.renew_offline(&session)),
                Err(e) => return Err(e),
            };
            // A deletion the mirror applied while the sync was out wins.
            let Some(snapshot) = self.mirrored(&session).await else { return self.renew_by_read(lease).await };
            if let Some(lost) = self.not_ours(&session, lease, &snapshot) {
                return Ok(CasOutcome::Lost(lost));
            }
            let mzxid = snapshot.entries.iter().find(|(p, _)| *p == path).map_or(0, |(_, e)| e.mzxid);
            return Ok(CasOutcome::Won(Lease {
                record: lease.record.clone(),
                epoch: lease.epoch,
                version: zxid_version(mzxid),
                valid_for: (contact + session.timeout).saturating_duration_since(started).min(session.timeout),
            }));
        }
        self.renew_by_read(lease).await
    }

    async fn release(&self, lease: &Lease) -> Result<CasOutcome<(), Option<LeaderView>>, DcsError> {
        let result = self.release_once(lease).await;
        self.noted(result)
    }

    /// With a usable mirror that shows the member znode owned by our session, an unchanged
    /// record sends nothing (the znode already is what the write would make it) and a
    /// changed one is a single `setData` at the version the mirror shows.
    async fn publish_member(&self, member: &MemberRecord) -> Result<(), DcsError> {
        let session = self.session()?;
        member.validate().map_err(|e| DcsError::fatal(format!("publish_member: invalid member record: {e}")))?;
        let path = self.path(&Key::Member(member.name.clone()));
        let bytes = member.encode();
        if !self.linearize.load(Ordering::SeqCst)
            && let Some(snapshot) = self.mirrored(&session).await
            && let Some((_, mine)) = snapshot.entries.iter().find(|(p, e)| *p == path && e.owner == session.id())
        {
            self.shared.remember_member(&path, &bytes);
            if mine.data == bytes {
                return Ok(());
            }
            // Our own znode at a known version: one conditional setData instead of
            // create, stat and setData.
            let what = "publishing a member";
            let version = mine.version;
            match self.shared.run(&session, Op::Write, what, |zk| zk.set_data(&path, &bytes, Some(version))).await {
                Ok(Ok(_)) => return Ok(()),
                // Changed or gone meanwhile: the full path below sorts it out.
                Ok(Err(zk::Error::BadVersion | zk::Error::NoNode)) => {}
                Ok(Err(e)) => return self.noted(Err(classify(Op::Write, what, e))),
                Err(e) => return self.noted(Err(e)),
            }
        }
        let result = self.publish_once(member).await;
        self.noted(result)
    }

    async fn write_control(
        &self,
        key: ControlKey,
        expect: Expect,
        value: &[u8],
    ) -> Result<CasOutcome<Version, Option<Version>>, DcsError> {
        let result = self.write_control_once(key, expect, value).await;
        self.noted(result)
    }

    async fn delete_control(
        &self,
        key: ControlKey,
        expect: &Version,
    ) -> Result<CasOutcome<(), Option<Version>>, DcsError> {
        let result = self.delete_control_once(key, expect).await;
        self.noted(result)
    }

    /// With a usable mirror: waits for a change of the scope's leader or a control znode
    /// (member znodes wake nobody); a cursor from an earlier mirror epoch (a disconnect or a
    /// new session since) reports `Resync`. Without: the scope's own persistent recursive
    /// watch, which wakes on every change in the scope.
    async fn watch(&self, after: Option<&Version>, timeout: Duration) -> Result<WatchEvent, DcsError> {
        let session = self.session()?;
        let deadline = now() + timeout;
        let cursor = match after {
            Some(v) => match MirrorCursor::parse(v) {
                Some(c) => c,
                None => return self.watch_scope(after, timeout).await,
            },
            // From now: the scope's state in the mirror (which follows it from then on).
            None => match self.mirrored(&session).await {
                Some(snapshot) => MirrorCursor { epoch: snapshot.epoch, seq: snapshot.seq },
                None => return self.watch_scope(None, timeout).await,
            },
        };
        Ok(match self.shared.mirror.wait(&self.scope, cursor.epoch, cursor.seq, deadline).await {
            Seen::Changed => WatchEvent::Changed,
            Seen::Resync => WatchEvent::Resync,
            Seen::Timeout => WatchEvent::Timeout,
        })
    }
}

impl ZkDcs {
    /// Deletes the scope's leader znode if it does not decode as a leader record, by a delete
    /// at exactly the data version read: the operator's way out of a hand-written or corrupted
    /// znode that blocks elections (no member may create a znode that exists). A valid record,
    /// of any member, is never touched.
    ///
    /// ZooKeeper can condition a delete on the data version only. A znode deleted and
    /// created again between the read and the delete starts at version 0 again, so a garbage
    /// znode at version 0 that someone else deletes and a member re-creates in that instant
    /// would be deleted too (the member then loses its key and demotes; nothing unsafe, but
    /// an election is lost). Etcd, Consul and Kubernetes compare a never-reused revision.
    pub async fn remove_garbage_leader(&self) -> Result<GarbageRemoval, DcsError> {
        let session = self.session()?;
        let what = "removing an undecodable leader key";
        let path = self.path(&Key::Leader);
        // Through the ensemble leader first: a lagging server could show an old value.
        let scope_path = self.scope_path();
        match self.shared.run(&session, Op::Read, what, |zk| zk.sync(&scope_path)).await? {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) => return Err(classify(Op::Read, what, e)),
        }
        let Some((data, stat)) = self.read_leader(&session, what).await? else { return Ok(GarbageRemoval::Absent) };
        if LeaderRecord::decode(&path, &data).is_ok() {
            return Ok(GarbageRemoval::Valid);
        }
        let result = match self.shared.run(&session, Op::Write, what, |zk| zk.delete(&path, Some(stat.version))).await {
            Ok(Ok(())) => Ok(GarbageRemoval::Removed { version: zxid_version(stat.mzxid) }),
            Ok(Err(zk::Error::NoNode | zk::Error::BadVersion)) => Ok(GarbageRemoval::Changed),
            Ok(Err(e)) => Err(classify(Op::Write, what, e)),
            Err(e) => Err(e),
        };
        self.noted(result)
    }
}

impl ZkDcs {
    async fn acquire_once(&self, record: &LeaderRecord) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        let session = self.session()?;
        record.validate().map_err(|e| DcsError::fatal(format!("acquire: invalid leader record: {e}")))?;
        let what = "acquiring the leader key";
        let path = self.path(&Key::Leader);
        let bytes = record.encode();
        let ephemeral = self.shared.create_options(zk::CreateMode::Ephemeral);
        self.shared.ensure_dir(&session, &self.scope_path()).await?;
        for _ in 0..2 {
            match self.shared.run(&session, Op::Write, what, |zk| zk.create(&path, &bytes, &ephemeral)).await? {
                Ok((stat, _)) => {
                    let epoch = epoch_of(&stat);
                    self.shared.hold(&path, epoch, session.number);
                    return Ok(CasOutcome::Won(Lease {
                        record: record.clone(),
                        epoch,
                        version: zxid_version(stat.mzxid),
                        valid_for: session.timeout,
                    }));
                }
                Err(zk::Error::NodeExists) => {
                    return Ok(CasOutcome::Lost(self.current_leader(&session, what).await?));
                }
                Err(zk::Error::NoNode) => {
                    // The scope directory was removed by hand: create it again.
                    self.shared.forget_dir(&self.scope_path());
                    self.shared.ensure_dir(&session, &self.scope_path()).await?;
                }
                Err(e) => return Err(classify(Op::Write, what, e)),
            }
        }
        Err(DcsError::unavailable(format!("{what}: the scope directory {} keeps vanishing", self.scope_path())))
    }

    /// Renewal without the mirror: a round trip that proves the session is alive: `sync`
    /// (through the ensemble leader, so a follower cut off from the quorum cannot answer from
    /// stale state) and a read of
    /// the leader znode, which must still be ours (epoch = czxid, token, owner = our
    /// session). ZooKeeper's session heartbeat is the renewal itself; nothing is written, so
    /// watchers are not woken.
    async fn renew_by_read(&self, lease: &Lease) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        let session = self.session()?;
        let path = self.path(&Key::Leader);
        if let Some(number) = self.shared.held_in(&path, lease.epoch)
            && number != session.number
        {
            return Err(DcsError::lease_lost(
                "the ZooKeeper session that created the leader key expired; the key went with it",
            ));
        }
        if !self.shared.is_connected() {
            return Err(self.renew_offline(&session));
        }
        let what = "renewing the leader key";
        let scope_path = self.scope_path();
        let read = self
            .shared
            .run(&session, Op::Read, what, |zk| {
                // Pipelined: both are sent at once, answered in order.
                let sync = zk.sync(&scope_path);
                let get = zk.get_data(&path);
                async move {
                    sync.await?;
                    get.await
                }
            })
            .await;
        let (data, stat) = match read {
            Err(e) if e.is_retryable() && !self.shared.is_connected() => return Err(self.renew_offline(&session)),
            Err(e) => return Err(e),
            Ok(Err(zk::Error::NoNode)) => return Ok(CasOutcome::Lost(None)),
            Ok(Err(zk::Error::SessionExpired)) => {
                return Err(DcsError::lease_lost("the ZooKeeper session expired; the leader key went with it"));
            }
            Ok(Err(e)) => return Err(classify(Op::Read, what, e)),
            Ok(Ok(found)) => found,
        };
        let Some(current) = leader_view(&path, &data, &stat) else { return Ok(CasOutcome::Lost(None)) };
        if current.epoch != lease.epoch || current.record != lease.record || stat.ephemeral_owner != session.id() {
            return Ok(CasOutcome::Lost(Some(current)));
        }
        // The server heard from the session after this call started, so it keeps the session
        // (and the znode) for at least the timeout from then.
        Ok(CasOutcome::Won(Lease {
            record: current.record,
            epoch: current.epoch,
            version: current.version,
            valid_for: session.timeout,
        }))
    }

    /// Compare-and-delete: the znode must hold `lease`'s epoch and token and be owned by this
    /// client's session. Through another client it is `Lost`: without owning the session a
    /// delete by version could hit a znode re-created after the owner expired.
    async fn release_once(&self, lease: &Lease) -> Result<CasOutcome<(), Option<LeaderView>>, DcsError> {
        let session = self.session()?;
        let what = "releasing the leader key";
        let path = self.path(&Key::Leader);
        if self.shared.options.sync_reads {
            // The server this client talks to may lag the ensemble: catch up first, so a
            // release names the holder instead of reading the key as absent.
            let scope_path = self.scope_path();
            if let Err(e) = self.shared.run(&session, Op::Read, what, |zk| zk.sync(&scope_path)).await? {
                return Err(classify(Op::Read, what, e));
            }
        }
        for _ in 0..3 {
            let Some((data, stat)) = self.read_leader(&session, what).await? else {
                self.shared.unhold(&path, lease.epoch);
                return Ok(CasOutcome::Lost(None));
            };
            let Some(current) = leader_view(&path, &data, &stat) else { return Ok(CasOutcome::Lost(None)) };
            if current.epoch != lease.epoch || current.record != lease.record {
                return Ok(CasOutcome::Lost(Some(current)));
            }
            if stat.ephemeral_owner != session.id() {
                return Ok(CasOutcome::Lost(Some(current)));
            }
            match self.shared.run(&session, Op::Write, what, |zk| zk.delete(&path, Some(stat.version))).await? {
                Ok(()) => {
                    self.shared.unhold(&path, lease.epoch);
                    return Ok(CasOutcome::Won(()));
                }
                Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => continue,
                Err(e) => return Err(classify(Op::Write, what, e)),
            }
        }
        Err(DcsError::unknown(format!("{what}: the leader key kept changing")))
    }

    async fn publish_once(&self, member: &MemberRecord) -> Result<(), DcsError> {
        let session = self.session()?;
        member.validate().map_err(|e| DcsError::fatal(format!("publish_member: invalid member record: {e}")))?;
        let path = self.path(&Key::Member(member.name.clone()));
        let bytes = member.encode();
        // Remembered first: if the session expires now, the new one publishes it.
        self.shared.remember_member(&path, &bytes);
        self.shared.ensure_dir(&session, &self.members_path()).await?;
        self.shared.write_member(&session, &path, &bytes).await
    }

    async fn write_control_once(
        &self,
        key: ControlKey,
        expect: Expect,
        value: &[u8],
    ) -> Result<CasOutcome<Version, Option<Version>>, DcsError> {
        let session = self.session()?;
        let what = "writing a control key";
        if value.is_empty() {
            return Err(DcsError::fatal(format!("{what}: an empty value cannot be stored (it marks a deleted key)")));
        }
        let path = self.path(&Key::Control(key));
        match expect {
            Expect::Absent => {
                let persistent = self.shared.create_options(zk::CreateMode::Persistent);
                self.shared.ensure_dir(&session, &self.scope_path()).await?;
                for _ in 0..3 {
                    match self.shared.run(&session, Op::Write, what, |zk| zk.create(&path, value, &persistent)).await? {
                        Ok((stat, _)) => return Ok(CasOutcome::Won(version_of(stat.version))),
                        Err(zk::Error::NoNode) => {
                            self.shared.forget_dir(&self.scope_path());
                            self.shared.ensure_dir(&session, &self.scope_path()).await?;
                        }
                        Err(zk::Error::NodeExists) => {
                            let found = match self.shared.run(&session, Op::Read, what, |zk| zk.get_data(&path)).await?
                            {
                                Ok(found) => found,
                                Err(zk::Error::NoNode) => continue,
                                Err(e) => return Err(classify(Op::Read, what, e)),
                            };
                            let (data, stat) = found;
                            if !data.is_empty() {
                                return Ok(CasOutcome::Lost(Some(version_of(stat.version))));
                            }
                            // A tombstone: the key is absent; overwrite it at its version.
                            match self
                                .shared
                                .run(&session, Op::Write, what, |zk| zk.set_data(&path, value, Some(stat.version)))
                                .await?
                            {
                                Ok(stat) => return Ok(CasOutcome::Won(version_of(stat.version))),
                                Err(zk::Error::BadVersion) | Err(zk::Error::NoNode) => {
                                    return Ok(CasOutcome::Lost(self.current_control(&session, &path, what).await?));
                                }
                                Err(e) => return Err(classify(Op::Write, what, e)),
                            }
                        }
                        Err(e) => return Err(classify(Op::Write, what, e)),
                    }
                }
                Err(DcsError::unknown(format!("{what}: {path} kept changing")))
            }
            Expect::Version(v) => {
                let Some(expected) = v.as_u64().and_then(|n| i32::try_from(n).ok()) else {
                    return Ok(CasOutcome::Lost(self.current_control(&session, &path, what).await?));
                };
                match self.shared.run(&session, Op::Write, what, |zk| zk.set_data(&path, value, Some(expected))).await?
                {
                    Ok(stat) => Ok(CasOutcome::Won(version_of(stat.version))),
                    Err(zk::Error::BadVersion) | Err(zk::Error::NoNode) => {
                        Ok(CasOutcome::Lost(self.current_control(&session, &path, what).await?))
                    }
                    Err(e) => Err(classify(Op::Write, what, e)),
                }
            }
        }
    }

    /// Leaves an empty znode (a tombstone) so the key's version never restarts.
    async fn delete_control_once(
        &self,
        key: ControlKey,
        expect: &Version,
    ) -> Result<CasOutcome<(), Option<Version>>, DcsError> {
        let session = self.session()?;
        let what = "deleting a control key";
        let path = self.path(&Key::Control(key));
        let current = self.current_control(&session, &path, what).await?;
        if current.as_ref() != Some(expect) {
            return Ok(CasOutcome::Lost(current));
        }
        let Some(expected) = expect.as_u64().and_then(|n| i32::try_from(n).ok()) else {
            return Ok(CasOutcome::Lost(current));
        };
        match self.shared.run(&session, Op::Write, what, |zk| zk.set_data(&path, &[], Some(expected))).await? {
            Ok(_) => Ok(CasOutcome::Won(())),
            Err(zk::Error::BadVersion) | Err(zk::Error::NoNode) => {
                Ok(CasOutcome::Lost(self.current_control(&session, &path, what).await?))
            }
            Err(e) => Err(classify(Op::Write, what, e)),
        }
    }

    /// Without the mirror: waits on the scope's persistent recursive watch (armed by a `load`
    /// that asked the server), which wakes on every change in the scope. A cursor from
    /// before a disconnect or a new session reports `Resync`: ZooKeeper does not replay
    /// events missed while disconnected (ZOOKEEPER-4698).
    async fn watch_scope(&self, after: Option<&Version>, timeout: Duration) -> Result<WatchEvent, DcsError> {
        let session = self.session()?;
        let deadline = now() + timeout;
        let mut generations = self.shared.generation.subscribe();
        let cursor = match after {
            None => None,
            Some(v) => match Cursor::parse(v) {
                Some(c) => Some(c),
                None => return Ok(WatchEvent::Resync),
            },
        };
        let watch = match cursor {
            Some(c) => {
                if *generations.borrow_and_update() != c.generation {
                    return Ok(WatchEvent::Resync);
                }
                match self.shared.armed(&self.scope_path(), session.number) {
                    Some(w) => w,
                    None => return Ok(WatchEvent::Resync),
                }
            }
            None => self.shared.scope_watch(&session, &self.scope_path()).await?,
        };
        let mut events = watch.seq.subscribe();
        let generation = cursor.map_or(*generations.borrow_and_update(), |c| c.generation);
        let seen = cursor.map_or(*events.borrow_and_update(), |c| c.seq);
        loop {
            if *generations.borrow_and_update() != generation {
                return Ok(WatchEvent::Resync);
            }
            if *events.borrow_and_update() > seen {
                return Ok(WatchEvent::Changed);
            }
            tokio::select! {
                r = generations.changed() => if r.is_err() { return Ok(WatchEvent::Resync) },
                r = events.changed() => if r.is_err() { return Ok(WatchEvent::Resync) },
                () = tokio::time::sleep_until(deadline) => return Ok(WatchEvent::Timeout),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor { generation: 3, seq: 7, zxid: 0x1_0000_0005 };
        assert_eq!(Cursor::parse(&c.version()), Some(c));
        assert_eq!(Cursor::parse(&Version::new(5)), None);
        assert_eq!(Cursor::parse(&Version::opaque("1:2:3:4")), None);
        assert_eq!(Cursor::parse(&Version::opaque("a:b:c")), None);
        let m = MirrorCursor { epoch: 2, seq: 9 };
        assert_eq!(MirrorCursor::parse(&m.version()), Some(m));
        assert_eq!(Cursor::parse(&m.version()), None);
        assert_eq!(MirrorCursor::parse(&c.version()), None);
    }

    #[test]
    fn scope_names_are_checked() {
        assert!(check_scope("pg-1").is_none());
        for bad in ["", "a/b", "..", "zookeeper", "a\nb"] {
            assert!(check_scope(bad).is_some(), "{bad:?}");
        }
    }
}
