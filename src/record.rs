//! Records stored in the DCS, their stable encoding, and the consistent [`ClusterView`].
//!
//! # Encoding
//!
//! Every record is one UTF-8 JSON object (the history record is a JSON array) with the field
//! names documented on each type. Unknown fields are ignored so newer writers can add fields;
//! a missing required field, a wrong type, invalid UTF-8 or more than [`MAX_RECORD_BYTES`] bytes
//! is a [`DecodeError`]. The field names are part of the stable format: renaming one is a
//! breaking change.
//!
//! Bytes read from a store are untrusted. [`RawView::decode`] turns each bad record into a
//! reported problem (a `tracing` warning plus an entry in [`ClusterView::problems`]) and treats
//! the record as absent, so garbage never stops the HA loop and never panics.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::DecodeError;

/// Records larger than this are rejected without parsing.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// An opaque compare-and-set token for one key, or a store-wide revision used as a watch
/// cursor: etcd `mod_revision`, ZooKeeper `stat.version` / zxid, Consul `ModifyIndex`,
/// Kubernetes `resourceVersion`. Only equality is meaningful.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Version(VersionRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum VersionRepr {
    Num(u64),
    Text(Arc<str>),
}

impl Version {
    /// A numeric version.
    pub const fn new(n: u64) -> Self {
        Version(VersionRepr::Num(n))
    }

    /// An opaque string version (Kubernetes `resourceVersion`).
    pub fn opaque(s: impl Into<Arc<str>>) -> Self {
        Version(VersionRepr::Text(s.into()))
    }

    /// The number, if this version is numeric.
    pub fn as_u64(&self) -> Option<u64> {
        match &self.0 {
            VersionRepr::Num(n) => Some(*n),
            VersionRepr::Text(s) => s.parse().ok(),
        }
    }

    /// The version as text (numbers in decimal).
    pub fn to_text(&self) -> String {
        match &self.0 {
            VersionRepr::Num(n) => n.to_string(),
            VersionRepr::Text(s) => s.to_string(),
        }
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            VersionRepr::Num(n) => write!(f, "v{n}"),
            VersionRepr::Text(s) => write!(f, "v{s:?}"),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// A fencing token: strictly greater for every later acquisition of a scope's leader key,
/// including re-acquisition by the same member. `Resource::promote` receives it so the
/// resource can reject writes from an older leader.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A decoded value together with its CAS version.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    /// The decoded record.
    pub value: T,
    /// Its version, for compare-and-set.
    pub version: Version,
}

/// A record type with a stable JSON encoding.
pub trait Record: Serialize + DeserializeOwned + Sized {
    /// Short name used in errors and logs (`"leader"`, `"member"`, ...).
    const KIND: &'static str;

    /// Checks invariants serde cannot express. Called after parsing.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// The stable encoding.
    fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no floats.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes untrusted bytes. Never panics.
    fn decode(key: &str, bytes: &[u8]) -> Result<Self, DecodeError> {
        let err = |reason: String| DecodeError { what: Self::KIND, key: key.to_string(), reason };
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(err(format!("{} bytes exceeds the {} byte limit", bytes.len(), MAX_RECORD_BYTES)));
        }
        let value: Self = serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
        value.validate().map_err(err)?;
        Ok(value)
    }
}

fn check_name(field: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if name.len() > 253 {
        return Err(format!("{field} is {} bytes long, the limit is 253", name.len()));
    }
    if name.chars().any(|c| c.is_control() || c == '/') {
        return Err(format!("{field} {name:?} contains '/' or a control character"));
    }
    Ok(())
}

/// The value of the leader key: who holds it, and the holder's per-acquisition token.
///
/// JSON: `{"member": "n1", "token": "5f3a-7", "api_url": "http://...", "conn_url": "..."}`;
/// `api_url` and `conn_url` are optional.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The holder's member name.
    pub member: String,
    /// Unique per acquisition attempt: lets a holder recognise its own record after an
    /// acquire whose reply was lost, and tells two incarnations of one member apart.
    pub token: String,
    /// The holder's REST API, for peers and the ctl tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// How replicas reach the holder's resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_url: Option<String>,
}

impl Record for LeaderRecord {
    const KIND: &'static str = "leader";
    fn validate(&self) -> Result<(), String> {
        check_name("member", &self.member)?;
        if self.token.is_empty() {
            return Err("token is empty".into());
        }
        Ok(())
    }
}

/// What a member's resource is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ResourceRole {
    /// Accepting writes.
    Primary,
    /// Following a primary.
    Replica,
    /// Stopped, starting, crashed or unknown.
    #[default]
    #[serde(other)]
    Unknown,
}

/// Member tags that steer elections (Patroni's names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    /// Never become leader automatically.
    #[serde(default)]
    pub nofailover: bool,
    /// Higher wins among equally advanced candidates; 0 means never (like `nofailover`).
    #[serde(default = "default_priority")]
    pub failover_priority: u32,
    /// Never be chosen as a synchronous standby.
    #[serde(default)]
    pub nosync: bool,
}

fn default_priority() -> u32 {
    1
}

impl Default for Tags {
    fn default() -> Self {
        Tags { nofailover: false, failover_priority: 1, nosync: false }
    }
}

impl Tags {
    /// Whether these tags allow automatic promotion at all.
    pub fn allows_failover(&self) -> bool {
        !self.nofailover && self.failover_priority > 0
    }
}

/// A member's registration, published with the process's TTL.
///
/// JSON: `{"name", "api_url"?, "conn_url"?, "role", "running", "position"?, "timeline"?,
/// "tags": {"nofailover", "failover_priority", "nosync"}, "watchdog_failed"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Member name, unique in the scope.
    pub name: String,
    /// REST API base URL, probed by peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// How clients and replicas reach this member's resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_url: Option<String>,
    /// The resource's role as last seen by the member.
    #[serde(default)]
    pub role: ResourceRole,
    /// Whether the resource is running.
    #[serde(default)]
    pub running: bool,
    /// Replication position (bytes, LSN-like).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// Timeline (increments on every promotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u64>,
    /// Election tags.
    #[serde(default)]
    pub tags: Tags,
    /// A `required` watchdog could not be armed on this member.
    #[serde(default)]
    pub watchdog_failed: bool,
}

impl MemberRecord {
    /// Whether this member could itself be promoted (Patroni's `failover_limitation`).
    pub fn may_be_promoted(&self) -> bool {
        self.tags.allows_failover() && !self.watchdog_failed
    }

    /// A minimal record for `name`.
    pub fn new(name: impl Into<String>) -> Self {
        MemberRecord {
            name: name.into(),
            api_url: None,
            conn_url: None,
            role: ResourceRole::Unknown,
            running: false,
            position: None,
            timeline: None,
            tags: Tags::default(),
            watchdog_failed: false,
        }
    }
}

impl Record for MemberRecord {
    const KIND: &'static str = "member";
    fn validate(&self) -> Result<(), String> {
        check_name("name", &self.name)
    }
}

/// A manual switchover (`leader` set) or failover (`candidate` only) request.
///
/// JSON: `{"leader"?: "n1", "candidate"?: "n2", "scheduled_at"?: "2026-12-07T03:00:00+00:00"}`;
/// at least one of `leader` and `candidate` must be set, and only a switchover (with a
/// `leader`) may be scheduled. `scheduled_at` is Patroni's field: an RFC 3339 time with an
/// offset. The schedule lives in the store, so it survives a restart of the leader's process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FailoverRecord {
    /// For a switchover: the current leader that must step down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The member that should take over; `None` lets the rules pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// A scheduled switchover: the leader steps down at this time, not before (`None`: now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<crate::time::WallTime>,
}

impl Record for FailoverRecord {
    const KIND: &'static str = "failover";
    fn validate(&self) -> Result<(), String> {
        if self.leader.is_none() && self.candidate.is_none() {
            return Err("neither leader nor candidate is set".into());
        }
        if let Some(l) = &self.leader {
            check_name("leader", l)?;
        }
        if let Some(c) = &self.candidate {
            check_name("candidate", c)?;
        }
        if self.scheduled_at.is_some() && self.leader.is_none() {
            return Err("scheduled_at is set without a leader: only a switchover can be scheduled".into());
        }
        Ok(())
    }
}

/// Synchronous replication state: only these members may be promoted automatically.
///
/// JSON: `{"leader": "n1", "sync_standby": ["n2"]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    /// The primary the set belongs to.
    pub leader: String,
    /// Members that acknowledge every write.
    #[serde(default)]
    pub sync_standby: Vec<String>,
}

impl SyncRecord {
    /// Whether `name` is the sync leader or one of its standbys.
    pub fn contains(&self, name: &str) -> bool {
        self.leader == name || self.sync_standby.iter().any(|s| s == name)
    }
}

impl Record for SyncRecord {
    const KIND: &'static str = "sync";
    fn validate(&self) -> Result<(), String> {
        check_name("leader", &self.leader)?;
        self.sync_standby.iter().try_for_each(|s| check_name("sync_standby", s))
    }
}

/// One line of the promotion history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Timeline this promotion started (1 for the first leader, then one more each time).
    pub timeline: u64,
    /// The promoted member's position when it was promoted (where the old timeline ended).
    pub position: u64,
    /// Why: `"bootstrap"` (the first leader, no history yet), `"failover"`, `"switchover"`
    /// or `"manual failover"`.
    #[serde(default)]
    pub reason: String,
    /// The member promoted.
    pub leader: String,
    /// The epoch it was promoted under.
    #[serde(default)]
    pub epoch: Epoch,
}

/// The promotion history. JSON: an array of [`HistoryEntry`] objects.
///
/// Shared (`Arc`): every load of every member carries it, up to 100 lines, and it changes
/// only at a promotion, so copies of a view share one history. Change it with
/// [`Arc::make_mut`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(from = "Vec<HistoryEntry>", into = "Vec<HistoryEntry>")]
pub struct HistoryRecord(pub Arc<Vec<HistoryEntry>>);

impl From<Vec<HistoryEntry>> for HistoryRecord {
    fn from(entries: Vec<HistoryEntry>) -> Self {
        HistoryRecord(Arc::new(entries))
    }
}

impl From<HistoryRecord> for Vec<HistoryEntry> {
    fn from(record: HistoryRecord) -> Self {
        Arc::unwrap_or_clone(record.0)
    }
}

impl Record for HistoryRecord {
    const KIND: &'static str = "history";
}

/// Written by the leader after successful renewals.
///
/// JSON: `{"position": 123, "failsafe"?: {"n1": "http://..."}, "members"?: {"n1": "http://..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusRecord {
    /// The leader's last known position.
    pub position: u64,
    /// With failsafe mode: the members (name to API URL) that must all confirm the leader
    /// during a store outage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe: Option<BTreeMap<String, String>>,
    /// Every member (name to API URL, empty when it has none) the leader saw registered
    /// recently, itself included, like Patroni's `retain_slots`. A member whose record expired
    /// (it lost the store but may still run, and be ahead) stays on this list for a while, so a
    /// candidate that never saw it, or just restarted, still asks it before promoting.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<String, String>,
}

impl Record for StatusRecord {
    const KIND: &'static str = "status";
}

/// Dynamic cluster configuration shared by all members.
///
/// JSON: `{"pause"?: bool, "synchronous_mode"?: bool, "failsafe_mode"?: bool,
/// "maximum_lag_on_failover"?: u64}`; other keys are kept in `extra`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ConfigRecord {
    /// Maintenance mode: no automatic failover, demotion or promotion.
    #[serde(default)]
    pub pause: bool,
    /// Only members of the sync set may be promoted automatically.
    #[serde(default)]
    pub synchronous_mode: bool,
    /// Keep the leader through a store outage while every member confirms it.
    #[serde(default)]
    pub failsafe_mode: bool,
    /// Overrides the local `maximum_lag_on_failover` (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum_lag_on_failover: Option<u64>,
    /// Keys this version does not interpret.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Record for ConfigRecord {
    const KIND: &'static str = "config";
}

/// The `initialize` key: the identity of the data set, set once by the first leader.
///
/// JSON: `{"system_id": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitializeRecord {
    /// Identifies the data set (PostgreSQL's system identifier).
    pub system_id: String,
}

impl Record for InitializeRecord {
    const KIND: &'static str = "initialize";
}

/// The scope's control keys, written with versioned compare-and-set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ControlKey {
    /// [`ConfigRecord`]
    Config,
    /// [`FailoverRecord`]
    Failover,
    /// [`SyncRecord`]
    Sync,
    /// [`InitializeRecord`]
    Initialize,
    /// [`HistoryRecord`]
    History,
    /// [`StatusRecord`]
    Status,
}

impl ControlKey {
    /// Every control key.
    pub const ALL: [ControlKey; 6] = [
        ControlKey::Config,
        ControlKey::Failover,
        ControlKey::Sync,
        ControlKey::Initialize,
        ControlKey::History,
        ControlKey::Status,
    ];

    /// The key's name in the store layout (`config`, `failover`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ControlKey::Config => "config",
            ControlKey::Failover => "failover",
            ControlKey::Sync => "sync",
            ControlKey::Initialize => "initialize",
            ControlKey::History => "history",
            ControlKey::Status => "status",
        }
    }

    /// The inverse of [`ControlKey::name`].
    pub fn from_name(name: &str) -> Option<ControlKey> {
        ControlKey::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Where a record lives inside a scope. Backends map it onto their own namespace with
/// [`Key::path`] (etcd, ZooKeeper, Consul) or object names (Kubernetes).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// The leader key.
    Leader,
    /// `members/<name>`.
    Member(String),
    /// One of the control keys.
    Control(ControlKey),
}

impl Key {
    /// `<prefix>/<scope>/<leader|members/name|config|...>`, Patroni's layout. `prefix` is
    /// used as given (for example `/service`).
    pub fn path(&self, prefix: &str, scope: &str) -> String {
        let prefix = prefix.trim_end_matches('/');
        match self {
            Key::Leader => format!("{prefix}/{scope}/leader"),
            Key::Member(m) => format!("{prefix}/{scope}/members/{m}"),
            Key::Control(c) => format!("{prefix}/{scope}/{}", c.name()),
        }
    }

    /// The inverse of [`Key::path`]: which key `path` is, if it lies in the scope.
    pub fn parse(prefix: &str, scope: &str, path: &str) -> Option<Key> {
        let base = format!("{}/{scope}/", prefix.trim_end_matches('/'));
        let rest = path.strip_prefix(&base)?;
        if rest == "leader" {
            return Some(Key::Leader);
        }
        if let Some(m) = rest.strip_prefix("members/") {
            return (!m.is_empty() && !m.contains('/')).then(|| Key::Member(m.to_string()));
        }
        ControlKey::from_name(rest).map(Key::Control)
    }
}

/// The leader key as read: record, fencing epoch and CAS version.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaderView {
    /// The decoded value.
    pub record: LeaderRecord,
    /// The acquisition's fencing token.
    pub epoch: Epoch,
    /// CAS version of the leader key.
    pub version: Version,
}

/// One consistent snapshot of a scope, as returned by [`Dcs::load`](crate::Dcs::load).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    /// Cursor for [`Dcs::watch`](crate::Dcs::watch): changes after this snapshot.
    pub revision: Option<Version>,
    /// The current leader, if the key exists and decodes.
    pub leader: Option<LeaderView>,
    /// Registered members, sorted by name.
    pub members: Vec<Versioned<MemberRecord>>,
    /// `config`
    pub config: Option<Versioned<ConfigRecord>>,
    /// `failover`
    pub failover: Option<Versioned<FailoverRecord>>,
    /// `sync`
    pub sync: Option<Versioned<SyncRecord>>,
    /// `initialize`
    pub initialize: Option<Versioned<InitializeRecord>>,
    /// `history`
    pub history: Option<Versioned<HistoryRecord>>,
    /// `status`
    pub status: Option<Versioned<StatusRecord>>,
    /// Records that failed to decode and were treated as absent.
    pub problems: Vec<DecodeError>,
    /// CAS versions of control keys that exist but did not decode, so a writer can still
    /// replace garbage with compare-and-set.
    pub garbage_versions: BTreeMap<ControlKey, Version>,
}

impl ClusterView {
    /// The member record named `name`.
    pub fn member(&self, name: &str) -> Option<&MemberRecord> {
        self.members.iter().map(|m| &m.value).find(|m| m.name == name)
    }

    /// The CAS version of a control key, whether or not its value decoded.
    pub fn control_version(&self, key: ControlKey) -> Option<&Version> {
        let decoded = match key {
            ControlKey::Config => self.config.as_ref().map(|v| &v.version),
            ControlKey::Failover => self.failover.as_ref().map(|v| &v.version),
            ControlKey::Sync => self.sync.as_ref().map(|v| &v.version),
            ControlKey::Initialize => self.initialize.as_ref().map(|v| &v.version),
            ControlKey::History => self.history.as_ref().map(|v| &v.version),
            ControlKey::Status => self.status.as_ref().map(|v| &v.version),
        };
        decoded.or_else(|| self.garbage_versions.get(&key))
    }
}

/// One undecoded entry read by a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    /// The store key or object name, for error reports.
    pub key: String,
    /// The stored bytes.
    pub bytes: Vec<u8>,
    /// The entry's CAS version.
    pub version: Version,
}

/// What a backend read for one scope, before decoding. Backends fill it from one consistent
/// read and call [`RawView::decode`], so every backend treats garbage the same way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawView {
    /// Cursor for watches.
    pub revision: Option<Version>,
    /// The leader key and its epoch.
    pub leader: Option<(RawEntry, Epoch)>,
    /// Member keys.
    pub members: Vec<RawEntry>,
    /// Control keys.
    pub control: Vec<(ControlKey, RawEntry)>,
}

impl RawView {
    /// Decodes every entry; undecodable ones are logged, listed in
    /// [`ClusterView::problems`] and treated as absent.
    pub fn decode(self) -> ClusterView {
        self.decode_inner(None)
    }

    /// As [`decode`](Self::decode), but entries whose bytes equal those `cache` saw under the
    /// same key are not parsed again (a follower loads every loop; most records do not
    /// change between loads). Garbage is reported again on every load, as by `decode`.
    pub fn decode_cached(self, cache: &mut DecodeCache) -> ClusterView {
        cache.round += 1;
        let view = self.decode_inner(Some(&mut *cache));
        let round = cache.round;
        cache.entries.retain(|_, e| e.seen == round);
        view
    }

    fn decode_inner(self, mut cache: Option<&mut DecodeCache>) -> ClusterView {
        let mut view = ClusterView { revision: self.revision, ..ClusterView::default() };
        if let Some((entry, epoch)) = self.leader
            && let Some(record) = decode_or_report::<LeaderRecord>(&entry, &mut view.problems, cache.as_deref_mut())
        {
            view.leader = Some(LeaderView { record, epoch, version: entry.version });
        }
        for entry in self.members {
            if let Some(value) = decode_or_report::<MemberRecord>(&entry, &mut view.problems, cache.as_deref_mut()) {
                view.members.push(Versioned { value, version: entry.version });
            }
        }
        view.members.sort_by(|a, b| a.value.name.cmp(&b.value.name));
        view.members.dedup_by(|a, b| a.value.name == b.value.name);
        for (key, entry) in self.control {
            let before = view.problems.len();
            let (p, c) = (&mut view.problems, cache.as_deref_mut());
            match key {
                ControlKey::Config => view.config = decode_versioned(&entry, p, c),
                ControlKey::Failover => view.failover = decode_versioned(&entry, p, c),
                ControlKey::Sync => view.sync = decode_versioned(&entry, p, c),
                ControlKey::Initialize => view.initialize = decode_versioned(&entry, p, c),
                ControlKey::History => view.history = decode_versioned(&entry, p, c),
                ControlKey::Status => view.status = decode_versioned(&entry, p, c),
            }
            if view.problems.len() > before {
                view.garbage_versions.insert(key, entry.version);
            }
        }
        view
    }
}

/// Decoded records by store key, for [`RawView::decode_cached`]. A hit needs the same key,
/// record type and bytes (not just the same version), so it is correct whatever a backend's
/// versions mean. Entries for keys absent from the last decoded view are dropped, so the
/// cache holds at most one view's worth of records.
#[derive(Default)]
pub struct DecodeCache {
    entries: std::collections::HashMap<String, CachedEntry>,
    round: u64,
}

impl fmt::Debug for DecodeCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecodeCache").field("entries", &self.entries.len()).finish()
    }
}

struct CachedEntry {
    bytes: Vec<u8>,
    /// The `Result<T, DecodeError>` of decoding `bytes` as `T`: typed, so that the same
    /// bytes read as another record type (garbage as one, valid as another) miss.
    decoded: Box<dyn std::any::Any + Send + Sync>,
    seen: u64,
}

fn decode_versioned<T: Record + Clone + Send + Sync + 'static>(
    entry: &RawEntry,
    problems: &mut Vec<DecodeError>,
    cache: Option<&mut DecodeCache>,
) -> Option<Versioned<T>> {
    decode_or_report::<T>(entry, problems, cache).map(|value| Versioned { value, version: entry.version.clone() })
}

/// What a record of `kind` that does not decode means for the cluster, for the log.
pub fn garbage_consequence(kind: &str) -> &'static str {
    match kind {
        "leader" => {
            "read as no leader, but no member can take the key while it exists: elections are blocked until it expires or an operator deletes it"
        }
        "member" => "the member is left out of elections and the roster",
        "failover" => "read as no pending switchover; the next request replaces it",
        "sync" => "read as no synchronous standby: only the leader may be promoted until the leader rewrites it",
        "history" => "read as no history; the next promotion rewrites it",
        "status" => "read as no leader position: lag checks use members' own reports until the leader rewrites it",
        "config" => "read as no dynamic configuration: each member's own file applies",
        "initialize" => "read as an uninitialised cluster marker",
        _ => "treated as absent",
    }
}

/// What removing an undecodable leader key did (each backend's `remove_garbage_leader`: the
/// operator's way out of a hand-written or corrupted key that blocks elections). The key is
/// deleted only if it still holds exactly what was read, and never if it decodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GarbageRemoval {
    /// The undecodable leader key was deleted (it had not changed since it was read).
    Removed {
        /// Its version when it was read and deleted (etcd: `mod_revision`; ZooKeeper: the
        /// znode's `mzxid`; Consul: `ModifyIndex`; Kubernetes: `resourceVersion`).
        version: Version,
    },
    /// There is no leader key.
    Absent,
    /// The leader key decodes as a leader record: it is not garbage, nothing was deleted.
    Valid,
    /// It changed (or went) between the read and the delete; nothing was deleted.
    Changed,
}

fn decode_or_report<T: Record + Clone + Send + Sync + 'static>(
    entry: &RawEntry,
    problems: &mut Vec<DecodeError>,
    cache: Option<&mut DecodeCache>,
) -> Option<T> {
    // Garbage is logged when first seen (a cache hit is the same bytes seen before), not on
    // every load.
    let mut fresh = true;
    let decoded = match cache {
        None => T::decode(&entry.key, &entry.bytes),
        Some(cache) => {
            let round = cache.round;
            let hit = cache.entries.get_mut(&entry.key).filter(|c| c.bytes == entry.bytes).and_then(|c| {
                c.seen = round;
                c.decoded.downcast_ref::<Result<T, DecodeError>>()
            });
            match hit {
                Some(decoded) => {
                    fresh = false;
                    decoded.clone()
                }
                None => {
                    let decoded = T::decode(&entry.key, &entry.bytes);
                    let cached =
                        CachedEntry { bytes: entry.bytes.clone(), decoded: Box::new(decoded.clone()), seen: round };
                    cache.entries.insert(entry.key.clone(), cached);
                    decoded
                }
            }
        }
    };
    match decoded {
        Ok(v) => Some(v),
        Err(e) => {
            if fresh {
                let consequence = garbage_consequence(T::KIND);
                tracing::warn!(key = %entry.key, kind = T::KIND, reason = %e.reason, consequence, "garbage in the store");
            }
            problems.push(e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, bytes: &[u8], v: u64) -> RawEntry {
        RawEntry { key: key.into(), bytes: bytes.to_vec(), version: Version::new(v) }
    }

    #[test]
    fn records_round_trip_through_their_encoding() {
        let mut m = MemberRecord::new("n1");
        m.position = Some(42);
        m.tags.failover_priority = 3;
        assert_eq!(MemberRecord::decode("k", &m.encode()).unwrap(), m);
        let l = LeaderRecord { member: "n1".into(), token: "t-1".into(), api_url: None, conn_url: None };
        assert_eq!(l.encode(), br#"{"member":"n1","token":"t-1"}"#);
        assert_eq!(LeaderRecord::decode("k", &l.encode()).unwrap(), l);
        let h = HistoryRecord::from(vec![HistoryEntry {
            timeline: 1,
            position: 10,
            reason: "failover".into(),
            leader: "n2".into(),
            epoch: Epoch(7),
        }]);
        assert_eq!(HistoryRecord::decode("k", &h.encode()).unwrap(), h);
    }

    #[test]
    fn garbage_is_reported_and_treated_as_absent() {
        let raw = RawView {
            revision: Some(Version::new(9)),
            leader: Some((entry("/s/c/leader", b"\xff\xfe", 3), Epoch(3))),
            members: vec![entry("/s/c/members/a", br#"{"name":"a"}"#, 4), entry("/s/c/members/b", b"{", 5)],
            control: vec![
                (ControlKey::Failover, entry("/s/c/failover", b"{}", 6)),
                (ControlKey::Config, entry("/s/c/config", br#"{"pause":true}"#, 7)),
            ],
        };
        let view = raw.decode();
        assert!(view.leader.is_none());
        assert_eq!(view.members.len(), 1);
        assert!(view.failover.is_none());
        assert_eq!(view.control_version(ControlKey::Failover), Some(&Version::new(6)));
        assert!(view.config.unwrap().value.pause);
        assert_eq!(view.problems.len(), 3);
    }

    #[test]
    fn cached_decoding_equals_fresh_decoding_and_reparses_changed_bytes() {
        let leader = LeaderRecord { member: "a".into(), token: "t1".into(), api_url: None, conn_url: None };
        let raw = |member_b: &[u8], with_a: bool| RawView {
            revision: Some(Version::new(9)),
            leader: Some((entry("/s/c/leader", &leader.encode(), 3), Epoch(3))),
            members: [
                with_a.then(|| entry("/s/c/members/a", br#"{"name":"a","position":1}"#, 4)),
                Some(entry("/s/c/members/b", member_b, 5)),
            ]
            .into_iter()
            .flatten()
            .collect(),
            control: vec![(ControlKey::Failover, entry("/s/c/failover", b"{", 6))],
        };
        let mut cache = DecodeCache::default();
        let b1 = br#"{"name":"b","position":7}"#;
        let b2 = br#"{"name":"b","position":8}"#;
        for round in [raw(b1, true), raw(b1, true), raw(b2, true), raw(b2, false), raw(b"[", true)] {
            let fresh = round.clone().decode();
            let cached = round.decode_cached(&mut cache);
            // Garbage (the failover key, and b in the last round) is reported every time.
            assert_eq!(cached, fresh);
            assert!(!cached.problems.is_empty());
        }
        assert_eq!(raw(b2, true).decode_cached(&mut cache).members[1].value.position, Some(8));
        // Keys absent from the last view are dropped: here the leader, a, b and failover.
        assert_eq!(cache.entries.len(), 4);
        let empty = RawView { revision: Some(Version::new(10)), ..RawView::default() };
        assert_eq!(
            empty.decode_cached(&mut cache),
            ClusterView { revision: Some(Version::new(10)), ..Default::default() }
        );
        assert!(cache.entries.is_empty());
    }

    #[test]
    fn cached_garbage_is_reported_as_the_kind_it_was_read_as() {
        // Found by the decode_view fuzz target: one key string and one garbage value, read as
        // two record types; the cache must not hand the first type's error to the second.
        let raw = RawView {
            revision: Some(Version::new(1)),
            control: vec![
                (ControlKey::Failover, entry("control", b"", 9)),
                (ControlKey::Config, entry("control", b"", 9)),
            ],
            ..RawView::default()
        };
        let mut cache = DecodeCache::default();
        assert_eq!(raw.clone().decode_cached(&mut cache), raw.clone().decode());
        let kinds: Vec<_> = raw.clone().decode_cached(&mut cache).problems.iter().map(|p| p.what).collect();
        assert_eq!(kinds, ["failover", "config"]);
    }

    #[test]
    fn oversized_and_invalid_names_are_rejected() {
        let big = vec![b' '; MAX_RECORD_BYTES + 1];
        assert!(MemberRecord::decode("k", &big).is_err());
        assert!(MemberRecord::decode("k", br#"{"name":""}"#).is_err());
        assert!(MemberRecord::decode("k", br#"{"name":"a/b"}"#).is_err());
        assert!(LeaderRecord::decode("k", br#"{"member":"a","token":""}"#).is_err());
    }

    #[test]
    fn key_paths_round_trip() {
        for key in [Key::Leader, Key::Member("n1".into()), Key::Control(ControlKey::Sync)] {
            let p = key.path("/service/", "pg");
            assert_eq!(Key::parse("/service", "pg", &p), Some(key));
        }
        assert_eq!(Key::parse("/service", "pg", "/service/pg2/leader"), None);
        assert_eq!(Key::parse("/service", "pg", "/service/pg/members/"), None);
    }
}
