//! leasehold backend for Consul: leader election on a session-bound KV lock, over a thin
//! client of Consul's HTTP API (reqwest; see `reference/crates.md` §3 for why not a crate).
//!
//! # Layout (Patroni's, without the leading `/`)
//!
//! | key | how it is written |
//! |---|---|
//! | `<prefix>/<scope>/leader` | `PUT ?acquire=<session>`: the [`LeaderRecord`](leasehold::LeaderRecord) JSON |
//! | `<prefix>/<scope>/members/<name>` | `PUT ?acquire=<session>`: the [`MemberRecord`](leasehold::MemberRecord) JSON |
//! | `<prefix>/<scope>/config`, `failover`, `sync`, `initialize`, `history`, `status` | `PUT ?cas=<ModifyIndex>` (`cas=0`: create only) |
//!
//! # Rules
//!
//! * One session per process ([`ConsulClient`]), TTL = `timing.ttl / 2` because Consul may take up to
//!   twice the TTL to invalidate it, `Behavior = delete` (keys vanish with the session),
//!   lock-delay 1 ms by default, no health checks by default (Patroni issue 522: `serfHealth`
//!   dropped leaders on short blips). A keep-alive renews it every TTL / 3.
//! * Consul refuses session TTLs below its `session_ttl_min` (10 s by default), so ttl must
//!   be at least 20 s ([`ConsulOptions::session_ttl_min`] if the servers use a lower floor).
//!   A shorter ttl is refused with an error naming the floor, never silently stretched.
//! * Health checks ([`ConsulOptions::checks`]) are sent as `Checks`, which Consul 1.6 and
//!   later honour (1.6 ignores `NodeChecks`).
//! * Acquire is `PUT ?acquire=<session>` after a consistent read showed the key free. The
//!   fencing epoch is the key's `ModifyIndex` at acquisition: Consul's index is global and
//!   only grows, so every acquisition gets a greater one.
//! * Renew renews the session (404: [`DcsError::LeaseLost`](leasehold::DcsError)) and
//!   checks that the key still holds our record at our epoch and is bound to our session;
//!   otherwise it is `Lost`. The check is the process's mirror (below) when it is usable,
//!   else a consistent read. Release is `DELETE ?cas=<ModifyIndex>`.
//! * Without the mirror, loads read `?consistent`, and watches are blocking queries on the
//!   scope (`?index=&wait=`, timeout padded for Consul's `wait / 16` jitter) in the
//!   configured [`Consistency`], telling a real change from an early or unrelated return by
//!   a fingerprint of the scope's keys.
//! * Patroni issue 2070: a cleanly stopped agent destroys its sessions at once, so the
//!   leader key goes before the leader demotes; run the agent so that it is not stopped
//!   under a running leader. Issue 301: tools that only inspect (a ctl) must not own
//!   sessions; use [`ConsulDcs::load`](leasehold::Dcs::load) from a client that holds nothing.
//!
//! # One blocking query per process: the mirror
//!
//! With [`ConsulOptions::watch_mirror`] (the default) each client runs one blocking query
//! over the whole prefix, started by the first `load`, `renew` or `watch`:
//! `GET /v1/kv/<prefix>/?recurse&consistent&index=<X-Consul-Index>&wait=<ttl>`, and keeps
//! every key's value, `CreateIndex`, `ModifyIndex` and `Session`. `load` is answered from it,
//! `watch` waits on it for a change of the scope's leader or a control key (member records
//! wake nobody), and a leader whose key it shows unchanged renews with the session renewal
//! alone, shared by every scope of the process (a renewal sent at most a short window
//! before is reused, like etcd's keep-alive). An idle follower sends the session renewal
//! (three per session TTL) and one query per ttl; a thousand idle leader scopes add nothing
//! per scope.
//!
//! What it costs: Consul answers each round with the whole prefix. With 1,001 scopes of a
//! leader and three members (about 450 bytes a key in Consul's JSON) that is about 2 MB a
//! round: one round per ttl when nothing changes, and one per change otherwise, so a round
//! that changed something is followed by a pause of 250 ns per byte of the answer (10 to 500
//! ms; a reader waiting for the mirror cuts it short). A busy fleet is read at most twice a
//! second per process (about 4 MB/s), however often its member records change. The choice
//! against one query per scope: idle, that costs a request per scope per ttl (1,001 per
//! process), against one; against `?keys` plus reads of the changed keys: `?keys` carries no
//! index, so every key would be read on every change.
//!
//! Why this keeps the rules (DESIGN.md 1-3):
//!
//! * **A view from the mirror is a real past state.** Each answer is the prefix at one
//!   index, and `consistent` makes the server confirm its leadership before answering: it
//!   is what a `?consistent` read made a moment earlier would have returned. Every node
//!   decision already allows for a view that is stale on arrival, and every write that can
//!   change leadership is conditional (`?acquire`, `?cas`).
//! * **A load never goes back.** The mirror must show every index this process was told
//!   about (its writes read back, what lost compare-and-sets and reads returned), and every
//!   write whose index Consul does not return (deletes, member writes) must show in it, or
//!   a round sent after that write answered; else the load waits a little (cutting the
//!   pause between rounds short), then reads `?consistent`. After a write with an unknown
//!   outcome, the scope's next load reads `?consistent`, so a node looking for its own
//!   token reads the store itself. An index that goes back (a snapshot restore) makes
//!   every waiter re-load ([`WatchEvent::Resync`](leasehold::WatchEvent)).
//! * **The mirror is used only while it can be current:** its last round answered, and
//!   this process's last successful session renewal was sent at most `session_ttl / 3 +
//!   request_timeout` ago. Renewals are handled by the servers' leader, so an answer shows
//!   the agent was not cut off from the servers (a cut-off agent's blocking query goes
//!   silent rather than failing; it ends at `wait + wait / 16 + request_timeout`).
//! * **Renewal by session renewal proves the key is kept.** The leader key was acquired
//!   with this process's session, whose `Behavior` is `delete`. While the session lives,
//!   Consul lets no other session acquire the key; it disappears or changes only by a
//!   `DELETE` or a plain `PUT` from a client with `key:write` on it. leasehold never writes
//!   a held key (acquire looks first and refuses a key any session holds) and deletes one
//!   only in `release`, by `?cas` on the holder's `ModifyIndex` after matching the holder's
//!   record and token, which only the holder has. So a renewal answered 200, sent at `t`,
//!   keeps the session, and the key with it, until at least `t + session_ttl`, and the
//!   renewal is valid for that long from the call. The session ending (expired during a
//!   partition, destroyed by an operator, a health check failing) is the renewal's 404:
//!   [`DcsError::LeaseLost`](leasehold::DcsError); Consul then deletes the key. What tells
//!   the leader that its key was deleted or changed by someone else (an operator's `consul
//!   kv delete`, another tool's write, a restore) is the mirror: the key absent, or its
//!   value, `ModifyIndex` or `Session` different, makes the next renew `Lost`; a change the
//!   mirror applied while the renewal was out wins.
//! * A reused renewal: within what the timing leaves spare of the session TTL
//!   (`session_ttl - loop_wait - 2 * retry_timeout`, at most a third of it) and at least
//!   `min(session_ttl / 60, 500 ms)`. The renewed lease is shorter by the reused renewal's
//!   age, never longer than the session TTL from when it was sent.
//!
//! Without the mirror ([`ConsulOptions::watch_mirror`] `false`), or while it is not usable,
//! loads and renewals read `?consistent` and each `watch` runs its own blocking query.
//!
//! ```no_run
//! # async fn demo() -> Result<(), leasehold::DcsError> {
//! use leasehold::{Dcs, Timing};
//! use leasehold_consul::{ConsulClient, ConsulOptions};
//!
//! // The leader ttl (30 s; session TTL 15 s) comes from the Timing the nodes use too.
//! let timing = Timing::default();
//! let options = ConsulOptions { token: Some("secret".into()), ..ConsulOptions::default() };
//! let client = ConsulClient::connect(options, &timing).await?;
//! let pg = client.scope("pg");
//! let view = pg.load().await?;
//! println!("leader: {:?}", view.leader.map(|l| l.record.member));
//! # Ok(()) }
//! ```

mod api;
mod client;
mod dcs;
mod mirror;
mod options;

#[cfg(feature = "testing")]
pub mod testing;

/// This crate's README snippet, compiled and run as a doc test against a real agent.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use client::ConsulClient;
pub use dcs::ConsulDcs;
pub use options::{CONSUL_SESSION_TTL_MIN, Consistency, ConsulOptions, ConsulTls};
