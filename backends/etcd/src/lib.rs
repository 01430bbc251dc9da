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
//!   scopes cost one keep-alive stream.
//! * Acquire: txn `create_revision(leader) == 0` → put with the lease. The key's
//!   `create_revision` is the fencing [`Epoch`](leasehold::Epoch): every acquisition creates the
//!   key anew at a higher store revision.
//! * Renew: a lease keep-alive sent after the call started (its TTL gives
//!   [`Lease::valid_for`](leasehold::Lease)) plus a linearizable txn that the key still holds
//!   our record at our epoch on our lease. Release: compare epoch and record, then delete.
//! * Reads are linearizable; watches resume from the last revision after a broken stream and
//!   report [`WatchEvent::Resync`](leasehold::WatchEvent) after compaction.
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
pub use dcs::EtcdDcs;
pub use options::EtcdOptions;
