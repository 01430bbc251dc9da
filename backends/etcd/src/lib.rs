//! leasehold backend for etcd v3: leader election with one lease per process, compare-and-set
//! transactions and watches, over [etcd-client](https://docs.rs/etcd-client).
//!
//! # Layout (Patroni's)
//!
//! | key | value | lease |
//! |---|---|---|
//! | `<prefix>/<scope>/leader` | [`LeaderRecord`](leasehold::LeaderRecord) JSON | the process lease |
//! | `<prefix>/<scope>/members/<name>` | [`MemberRecord`](leasehold::MemberRecord) JSON | the process lease |
//! | `<prefix>/<scope>/config`, `failover`, `sync`, `initialize`, `history`, `status` | the record's JSON | none |
//!
//! # Rules
//!
//! * One lease per [`EtcdClient`] (one per process), shared by every scope: a thousand
//!   scopes cost one keep-alive stream. With [`EtcdOptions::member_ttl`], member keys get a
//!   second, longer lease: an idle follower then keeps only that one alive (every
//!   `member_ttl / 3`), and the ttl lease, once lapsed, is granted anew by the next acquisition.
//! * Acquire: txn `create_revision(leader) == 0` → put with the lease. The key's
//!   `create_revision` is the fencing [`Epoch`](leasehold::Epoch): every acquisition creates the
//!   key anew at a higher store revision.
//! * Renew: a lease keep-alive (its send time plus the TTL gives
//!   [`Lease::valid_for`](leasehold::Lease)) and proof that the key still holds our record at
//!   our epoch on our lease: the process's mirror (below) when it is usable, else a
//!   linearizable txn. Release: compare epoch and record, then delete.
//! * Watches resume from the last revision after a broken stream and report
//!   [`WatchEvent::Resync`](leasehold::WatchEvent) when etcd compacted the history.
//!
//! # One watch per process: the mirror
//!
//! With [`EtcdOptions::watch_mirror`] (the default) each client keeps one watch over the whole
//! prefix, started by the first `load` or `watch`, and a mirror of every key under it. An
//! idle follower then sends nothing but the shared lease keep-alive (and one watch progress
//! probe per four ttls): `load` is answered from the mirror, `watch` waits on it for a change of the
//! leader or a control key, and an idle leader's `renew` is a keep-alive alone, shared by
//! every scope the process leads (`cargo bench -p leasehold-etcd --bench scale`: 1,001 scopes
//! x 3 members in three processes, 0.7 requests/s in total at ttl 30 s).
//!
//! Why this keeps the rules (DESIGN.md 1-3):
//!
//! * **A view from the mirror is a real past state.** etcd delivers a watch's events in
//!   revision order without gaps (a compacted history is reported, and answered with one
//!   fresh range), so the mirror always equals the prefix at some revision: what a
//!   linearizable read made a moment earlier would have returned. Every node decision already
//!   allows for a view that is stale on arrival, and every write that can change leadership
//!   is conditional. A load never goes back: the mirror must have applied every revision this
//!   process was told about (its writes, what lost compare-and-sets and ranges returned),
//!   else it reads the prefix again (progress notifications are not trusted for this: before
//!   etcd 3.4.25 / 3.5.8 one may overtake events, etcd issue 15220).
//! * **The mirror is used only while it can be current:** its stream is established, which
//!   says the member serving it has a raft leader: every stream asks etcd to require one
//!   (etcd-client's `with_require_leader`), and etcd cancels such streams once the member has
//!   had no leader for three election timeouts; a member cut off from the majority loses its
//!   leader within one. A frozen member or dead connection is found by the HTTP/2 pings, and
//!   a stream that does not answer a progress request (one every four ttls) within the
//!   request timeout is re-opened. After a write with an unknown outcome the scope's next
//!   read is a linearizable range, so a node looking for its own token reads the store itself.
//! * **Renewal by keep-alive proves the key is kept.** The leader key is attached to the
//!   process lease; while the lease lives, the key can only disappear or change by a
//!   delete or a put. leasehold never writes over a live key (acquire is create-only) and
//!   deletes one only by compare-and-delete on the holder's epoch and record, which only the
//!   holder has. So a keep-alive sent at `t` keeps the key until `t + ttl`, and the renewal
//!   is valid for that long from the call. The leader learns that its key was deleted or
//!   changed from the mirror's event (an operator's `etcdctl del`, a restore): its next renew
//!   is `Lost`, and a deletion applied while the keep-alive was out wins. The lease itself
//!   ending (revoked, expired during a partition) is the keep-alive's answer:
//!   [`DcsError::LeaseLost`](leasehold::DcsError).
//! * A renewal may reuse a keep-alive sent shortly before it instead of sending its own:
//!   while the belief it still gives exceeds `retry_timeout` by a loop (at most ttl / 10),
//!   and at least `min(ttl / 60, 500 ms)` old, so a process leading a thousand scopes sends
//!   about two keep-alives a second. The node renews again `retry_timeout` before its belief
//!   ends, which always sends one: an idle leader at ttl 30 / loop_wait 10 / retry_timeout 10
//!   sends a keep-alive about every 15 s and still rides out any store outage shorter than
//!   `retry_timeout` (Patroni's promise). The renewed lease is shorter by the reused
//!   keep-alive's age, never longer than what etcd granted.
//!
//! Without the mirror, or while it is not usable, reads are linearizable ranges and each
//! `watch` opens its own stream on the scope.
//!
//! * A frozen member is detected by HTTP/2 pings ([`EtcdOptions::keepalive_interval`]) and
//!   per-request timeouts; calls then go to the other endpoints.
//! * A wrong user or password is [`DcsError::Fatal`](leasehold::DcsError); an unreachable
//!   cluster at connect is `Unavailable` naming the endpoints.
//!
//! ```no_run
//! # async fn demo() -> Result<(), leasehold::DcsError> {
//! use leasehold::{Dcs, Timing};
//! use leasehold_etcd::{EtcdClient, EtcdOptions};
//!
//! // The lease ttl comes from the Timing the nodes use too.
//! let timing = Timing::default();
//! let options = EtcdOptions { endpoints: vec!["http://127.0.0.1:2379".into()], ..EtcdOptions::default() };
//! let client = EtcdClient::connect(options, &timing).await?;
//! let pg = client.scope("pg");
//! let view = pg.load().await?;
//! println!("leader: {:?}", view.leader.map(|l| l.record.member));
//! # Ok(()) }
//! ```
//!
//! Feature `testing` adds [`testing`]: real etcd processes (a single node or a three-node
//! cluster) on free loopback ports, killed by pid on drop.

mod client;
mod dcs;
mod error;
mod keeper;
mod mirror;
mod options;
#[cfg(feature = "testing")]
pub mod testing;

/// The main README's "Using the library" snippet, compiled and run as a doc test here (it
/// needs this crate and a real etcd, which the `testing` harness starts).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

pub use client::EtcdClient;
pub use dcs::{EtcdDcs, GarbageRemoval};
pub use options::EtcdOptions;
