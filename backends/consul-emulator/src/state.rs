//! The agent's state: one Raft-like index, sessions and the KV store, as Consul's state store
//! keeps them. Pure data and rules; time comes in as an argument.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{EmulatorConfig, Expiry, LOCK_DELAY_MAX, SESSION_TTL_MAX};
use crate::duration::format_go_duration;

/// What happens to a session's locks when it is invalidated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// The locks are released; the keys stay.
    Release,
    /// The locked keys are deleted.
    Delete,
}

/// One KV entry as Consul stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    /// The full key.
    pub key: String,
    /// The stored bytes.
    pub value: Vec<u8>,
    /// Opaque client flags.
    pub flags: u64,
    /// Index of the write that created the key.
    pub create_index: u64,
    /// Index of the last write to the key.
    pub modify_index: u64,
    /// How many times the key was acquired (bumped on every new lock holder).
    pub lock_index: u64,
    /// The session holding the lock, if any.
    pub session: Option<String>,
}

/// One session as the emulator keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session ID.
    pub id: String,
    /// Free-form name.
    pub name: String,
    /// The node it belongs to.
    pub node: String,
    /// Its TTL; `None` for a session without one.
    pub ttl: Option<Duration>,
    /// What invalidation does to its locks.
    pub behavior: Behavior,
    /// Lock-delay applied to its keys after invalidation.
    pub lock_delay: Duration,
    /// Node checks it is tied to (`serfHealth` unless the creator passed lists).
    pub node_checks: Vec<String>,
    /// Service checks it is tied to.
    pub service_checks: Vec<String>,
    /// Index of the write that created it.
    pub create_index: u64,
    /// Index of its last change.
    pub modify_index: u64,
}

#[derive(Debug)]
struct Session {
    info: SessionInfo,
    /// When the TTL timer fires (lazily, by the sweeper or the next request).
    invalidate_at: Option<Instant>,
}

/// A request for a new session (already parsed).
#[derive(Clone, Debug)]
pub struct NewSession {
    pub name: String,
    pub ttl: Option<Duration>,
    pub behavior: Behavior,
    pub lock_delay: Duration,
    pub node_checks: Vec<String>,
    pub service_checks: Vec<String>,
}

/// Errors Consul's state store reports (served as HTTP 500 with the text as body).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateError(pub String);

pub struct State {
    config: EmulatorConfig,
    index: u64,
    kv: BTreeMap<String, KvEntry>,
    /// Index of the deletion of each deleted key (Consul's graveyard), for list indexes.
    tombstones: BTreeMap<String, u64>,
    sessions: HashMap<String, Session>,
    lock_delays: HashMap<String, Instant>,
    rng: StdRng,
}

impl State {
    pub fn new(config: EmulatorConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        // Raft's first entries are configuration; Consul's index never starts at 0.
        State {
            config,
            index: 1,
            kv: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            sessions: HashMap::new(),
            lock_delays: HashMap::new(),
            rng,
        }
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    fn deadline(&mut self, ttl: Option<Duration>, now: Instant) -> Option<Instant> {
        let ttl = ttl?;
        let factor = match self.config.expiry {
            Expiry::AtTtl => 1.0,
            Expiry::AtTwiceTtl => 2.0,
            Expiry::Seeded(_) => self.rng.random_range(1.0..=2.0),
        };
        Some(now + ttl.mul_f64(factor))
    }

    /// `PUT /v1/session/create`.
    pub fn create_session(&mut self, new: NewSession, now: Instant) -> Result<String, StateError> {
        if let Some(ttl) = new.ttl
            && !ttl.is_zero()
            && (ttl < self.config.session_ttl_min || ttl > SESSION_TTL_MAX)
        {
            return Err(StateError(format!(
                "Invalid Session TTL '{}', must be between [{}={}]",
                ttl.as_nanos(),
                format_go_duration(self.config.session_ttl_min),
                format_go_duration(SESSION_TTL_MAX)
            )));
        }
        for check in new.node_checks.iter().chain(&new.service_checks) {
            if check != "serfHealth" {
                return Err(StateError(format!("Missing check '{check}' registration")));
            }
        }
        let id = self.session_id();
        let index = self.bump();
        let ttl = new.ttl.filter(|t| !t.is_zero());
        let invalidate_at = self.deadline(ttl, now);
        let info = SessionInfo {
            id: id.clone(),
            name: new.name,
            node: self.config.node.clone(),
            ttl,
            behavior: new.behavior,
            lock_delay: new.lock_delay.min(LOCK_DELAY_MAX),
            node_checks: new.node_checks,
            service_checks: new.service_checks,
            create_index: index,
            modify_index: index,
        };
        self.sessions.insert(id.clone(), Session { info, invalidate_at });
        Ok(id)
    }

    fn session_id(&mut self) -> String {
        let a: u128 = self.rng.random();
        let h = format!("{a:032x}");
        format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
    }

    /// `PUT /v1/session/renew/:id`: `None` once the session is gone.
    pub fn renew_session(&mut self, id: &str, now: Instant) -> Option<SessionInfo> {
        self.expire(now);
        let ttl = self.sessions.get(id)?.info.ttl;
        let deadline = self.deadline(ttl, now);
        let session = self.sessions.get_mut(id)?;
        session.invalidate_at = deadline;
        Some(session.info.clone())
    }

    /// `GET /v1/session/info/:id`.
    pub fn session(&mut self, id: &str, now: Instant) -> Option<SessionInfo> {
        self.expire(now);
        self.sessions.get(id).map(|s| s.info.clone())
    }

    /// Every live session.
    pub fn sessions(&mut self, now: Instant) -> Vec<SessionInfo> {
        self.expire(now);
        let mut all: Vec<_> = self.sessions.values().map(|s| s.info.clone()).collect();
        all.sort_by_key(|s| s.create_index);
        all
    }

    /// `PUT /v1/session/destroy/:id`, a failing health check, or a TTL that ran out: the
    /// session's locks are released or deleted and get the session's lock-delay.
    pub fn invalidate(&mut self, id: &str, now: Instant) -> bool {
        let Some(session) = self.sessions.remove(id) else { return false };
        let held: Vec<String> =
            self.kv.values().filter(|e| e.session.as_deref() == Some(id)).map(|e| e.key.clone()).collect();
        if held.is_empty() {
            self.bump();
        }
        for key in held {
            let index = self.bump();
            match session.info.behavior {
                Behavior::Delete => {
                    self.kv.remove(&key);
                    self.tombstones.insert(key.clone(), index);
                }
                Behavior::Release => {
                    if let Some(e) = self.kv.get_mut(&key) {
                        e.session = None;
                        e.modify_index = index;
                    }
                }
            }
            if !session.info.lock_delay.is_zero() {
                self.lock_delays.insert(key, now + session.info.lock_delay);
            }
        }
        true
    }

    /// Invalidates every session whose TTL timer has fired. Returns whether any did.
    pub fn expire(&mut self, now: Instant) -> bool {
        let due: Vec<String> = (self.sessions.values())
            .filter(|s| s.invalidate_at.is_some_and(|at| at <= now))
            .map(|s| s.info.id.clone())
            .collect();
        for id in &due {
            tracing::debug!(session = %id, "consul emulator: session TTL ran out");
            self.invalidate(id, now);
        }
        !due.is_empty()
    }

    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&KvEntry> {
        self.kv.get(key)
    }

    /// A single-key read: the entry and the index Consul reports (the entry's ModifyIndex,
    /// or the table's index when absent).
    pub fn read(&mut self, key: &str, now: Instant) -> (u64, Option<KvEntry>) {
        self.expire(now);
        match self.kv.get(key) {
            Some(e) => (e.modify_index, Some(e.clone())),
            None => (self.index, None),
        }
    }

    /// A recursive read: entries under `prefix` and the index Consul reports (the highest
    /// ModifyIndex or tombstone under the prefix, the table's index if there is neither).
    pub fn list(&mut self, prefix: &str, now: Instant) -> (u64, Vec<KvEntry>) {
        self.expire(now);
        let entries: Vec<KvEntry> = self
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect();
        let mut index = entries.iter().map(|e| e.modify_index).max().unwrap_or(0);
        let graves = self.tombstones.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix));
        index = index.max(graves.map(|(_, i)| *i).max().unwrap_or(0));
        if prefix.is_empty() || index == 0 {
            index = self.index;
        }
        (index, entries)
    }

    /// Plain or compare-and-set write (`cas`: 0 = only if absent, else the ModifyIndex).
    pub fn put(&mut self, key: &str, value: Vec<u8>, flags: u64, cas: Option<u64>) -> bool {
        let existing = self.kv.get(key);
        match (cas, existing) {
            (Some(0), Some(_)) => return false,
            (Some(i), Some(e)) if i != 0 && e.modify_index != i => return false,
            (Some(i), None) if i != 0 => return false,
            _ => {}
        }
        let index = self.bump();
        self.write(key, value, flags, index, None);
        true
    }

    fn write(&mut self, key: &str, value: Vec<u8>, flags: u64, index: u64, lock: Option<(String, bool)>) {
        self.tombstones.remove(key);
        let entry = self.kv.entry(key.to_string()).or_insert_with(|| KvEntry {
            key: key.to_string(),
            value: Vec::new(),
            flags: 0,
            create_index: index,
            modify_index: index,
            lock_index: 0,
            session: None,
        });
        entry.value = value;
        entry.flags = flags;
        entry.modify_index = index;
        if let Some((session, new_holder)) = lock {
            if new_holder {
                entry.lock_index += 1;
            }
            entry.session = Some(session);
        }
    }

    /// `?acquire=<session>`: false if another session holds the key or lock-delay is active.
    /// The holder acquiring again just updates the value.
    pub fn acquire(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
        now: Instant,
    ) -> Result<bool, StateError> {
        self.expire(now);
        if !self.sessions.contains_key(session) {
            return Err(StateError(format!("invalid session {session:?}")));
        }
        if let Some(until) = self.lock_delays.get(key) {
            if *until > now {
                return Ok(false);
            }
            self.lock_delays.remove(key);
        }
        let new_holder = match self.kv.get(key).and_then(|e| e.session.as_deref()) {
            Some(holder) if holder != session => return Ok(false),
            Some(_) => false,
            None => true,
        };
        let index = self.bump();
        self.write(key, value, flags, index, Some((session.to_string(), new_holder)));
        Ok(true)
    }

    /// `?release=<session>`: false unless `session` holds the key.
    pub fn release(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
        now: Instant,
    ) -> Result<bool, StateError> {
        self.expire(now);
        if !self.sessions.contains_key(session) {
            return Err(StateError(format!("invalid session {session:?}")));
        }
        match self.kv.get(key) {
            Some(e) if e.session.as_deref() == Some(session) => {}
            _ => return Ok(false),
        }
        let index = self.bump();
        self.write(key, value, flags, index, None);
        if let Some(e) = self.kv.get_mut(key) {
            e.session = None;
        }
        Ok(true)
    }

    /// `DELETE` of one key. With `cas`, false if the key exists at another ModifyIndex; a
    /// missing key counts as deleted (true), as in Consul.
    pub fn delete(&mut self, key: &str, cas: Option<u64>) -> bool {
        if let Some(i) = cas {
            match self.kv.get(key) {
                None => return true,
                Some(e) if e.modify_index != i => return false,
                Some(_) => {}
            }
        }
        if self.kv.remove(key).is_some() {
            let index = self.bump();
            self.tombstones.insert(key.to_string(), index);
        }
        true
    }

    /// `DELETE ?recurse`: every key under `prefix`.
    pub fn delete_tree(&mut self, prefix: &str) {
        let keys: Vec<String> = self
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        let index = self.bump();
        for key in keys {
            self.kv.remove(&key);
            self.tombstones.insert(key, index);
        }
    }

    /// A deterministic jitter in `[0, wait / 16]`.
    pub fn jitter(&mut self, wait: Duration) -> Duration {
        let max = (wait / 16).as_nanos() as u64;
        Duration::from_nanos(if max == 0 { 0 } else { self.rng.random_range(0..=max) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(expiry: Expiry) -> State {
        State::new(EmulatorConfig { session_ttl_min: Duration::from_secs(1), expiry, ..EmulatorConfig::default() })
    }

    fn session(s: &mut State, behavior: Behavior, lock_delay: Duration, now: Instant) -> String {
        let new = NewSession {
            name: "t".into(),
            ttl: Some(Duration::from_secs(10)),
            behavior,
            lock_delay,
            node_checks: vec![],
            service_checks: vec![],
        };
        s.create_session(new, now).unwrap()
    }

    #[test]
    fn sessions_expire_between_ttl_and_twice_ttl() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        for (expiry, alive_until, gone_at) in [
            (Expiry::AtTtl, ttl - Duration::from_millis(1), ttl),
            (Expiry::AtTwiceTtl, 2 * ttl - Duration::from_millis(1), 2 * ttl),
        ] {
            let mut s = state(expiry);
            let id = session(&mut s, Behavior::Delete, Duration::ZERO, t0);
            assert!(s.session(&id, t0 + alive_until).is_some(), "{expiry:?}");
            assert!(s.session(&id, t0 + gone_at).is_none(), "{expiry:?}");
        }
        // Seeded: somewhere in between, and the same for the same seed.
        let when = |seed| {
            let mut s = state(Expiry::Seeded(seed));
            let id = session(&mut s, Behavior::Delete, Duration::ZERO, t0);
            (0..=2000u64).map(|ms| t0 + Duration::from_millis(ms * 10)).find(|t| s.session(&id, *t).is_none()).unwrap()
                - t0
        };
        let (a, b) = (when(7), when(7));
        assert_eq!(a, b);
        assert!(a >= ttl && a <= 2 * ttl, "{a:?}");
    }

    #[test]
    fn renewal_restarts_the_timer() {
        let t0 = Instant::now();
        let mut s = state(Expiry::AtTtl);
        let id = session(&mut s, Behavior::Delete, Duration::ZERO, t0);
        assert!(s.renew_session(&id, t0 + Duration::from_secs(9)).is_some());
        assert!(s.session(&id, t0 + Duration::from_secs(18)).is_some());
        assert!(s.session(&id, t0 + Duration::from_secs(19)).is_none());
        assert!(s.renew_session(&id, t0 + Duration::from_secs(19)).is_none());
    }

    #[test]
    fn invalidation_deletes_or_releases_and_applies_lock_delay() {
        let t0 = Instant::now();
        let mut s = state(Expiry::AtTtl);
        let del = session(&mut s, Behavior::Delete, Duration::from_secs(5), t0);
        let rel = session(&mut s, Behavior::Release, Duration::ZERO, t0);
        assert_eq!(s.acquire("a", b"1".to_vec(), 0, &del, t0), Ok(true));
        assert_eq!(s.acquire("b", b"2".to_vec(), 0, &rel, t0), Ok(true));
        assert!(s.invalidate(&del, t0));
        assert!(s.invalidate(&rel, t0));
        assert!(s.get("a").is_none());
        assert_eq!(s.get("b").unwrap().session, None);
        let other = session(&mut s, Behavior::Delete, Duration::ZERO, t0);
        assert_eq!(s.acquire("a", b"x".to_vec(), 0, &other, t0 + Duration::from_secs(4)), Ok(false));
        assert_eq!(s.acquire("a", b"x".to_vec(), 0, &other, t0 + Duration::from_secs(5)), Ok(true));
        assert_eq!(s.acquire("b", b"y".to_vec(), 0, &other, t0), Ok(true));
        assert_eq!(s.get("b").unwrap().lock_index, 2);
    }

    #[test]
    fn cas_and_lock_rules() {
        let t0 = Instant::now();
        let mut s = state(Expiry::AtTtl);
        assert!(s.put("k", b"1".to_vec(), 0, Some(0)));
        assert!(!s.put("k", b"2".to_vec(), 0, Some(0)));
        let m = s.get("k").unwrap().modify_index;
        assert!(!s.put("k", b"2".to_vec(), 0, Some(m + 1)));
        assert!(s.put("k", b"2".to_vec(), 0, Some(m)));
        assert!(!s.put("absent", b"2".to_vec(), 0, Some(5)));
        assert!(!s.delete("k", Some(m)));
        assert!(s.delete("k", Some(s.get("k").unwrap().modify_index)));
        assert!(s.delete("k", Some(1)), "a missing key counts as deleted");
        let a = session(&mut s, Behavior::Delete, Duration::ZERO, t0);
        let b = session(&mut s, Behavior::Delete, Duration::ZERO, t0);
        assert_eq!(s.acquire("l", b"a".to_vec(), 0, &a, t0), Ok(true));
        assert_eq!(s.acquire("l", b"b".to_vec(), 0, &b, t0), Ok(false));
        assert_eq!(s.acquire("l", b"a2".to_vec(), 0, &a, t0), Ok(true));
        assert_eq!(s.get("l").unwrap().lock_index, 1);
        assert_eq!(s.release("l", b"a3".to_vec(), 0, &b, t0), Ok(false));
        assert_eq!(s.release("l", b"a3".to_vec(), 0, &a, t0), Ok(true));
        assert!(s.acquire("l", vec![], 0, "nope", t0).is_err());
    }

    #[test]
    fn list_index_follows_the_prefix() {
        let mut s = state(Expiry::AtTtl);
        let t0 = Instant::now();
        s.put("a/x", vec![], 0, None);
        s.put("b/x", vec![], 0, None);
        let (i, e) = s.list("a/", t0);
        assert_eq!((i, e.len()), (s.get("a/x").unwrap().modify_index, 1));
        s.delete("a/x", None);
        let (i2, e) = s.list("a/", t0);
        assert!(e.is_empty() && i2 > i);
        s.put("b/y", vec![], 0, None);
        assert_eq!(s.list("a/", t0).0, i2, "tombstones keep the prefix's index");
        assert_eq!(s.list("c/", t0).0, s.index(), "an empty prefix reports the table index");
    }
}
