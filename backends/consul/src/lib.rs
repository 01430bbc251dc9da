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
//! * Renew renews the session (404: [`DcsError::LeaseLost`](leasehold::DcsError)) and then
//!   checks, with a consistent read, that the key still holds our record at our epoch and is
//!   bound to our session; otherwise it is `Lost`. Release is `DELETE ?cas=<ModifyIndex>`.
//! * Decisions read `?consistent`; watches are blocking queries (`?index=&wait=`, timeout
//!   padded for Consul's `wait / 16` jitter) in the configured [`Consistency`], and tell a
//!   real change from an early or unrelated return by a fingerprint of the scope's keys.
//! * Patroni issue 2070: a cleanly stopped agent destroys its sessions at once, so the
//!   leader key goes before the leader demotes; run the agent so that it is not stopped
//!   under a running leader. Issue 301: tools that only inspect (a ctl) must not own
//!   sessions; use [`ConsulDcs::load`](leasehold::Dcs::load) from a client that holds nothing.
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
