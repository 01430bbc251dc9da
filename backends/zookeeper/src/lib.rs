//! leasehold backend for ZooKeeper, over [`zookeeper-client`](zookeeper_client).
//!
//! # Layout
//!
//! Patroni's: scope `pg` lives at `<prefix>/pg` (default prefix `/service`, optionally under
//! a chroot from the connect string):
//!
//! | znode | kind | meaning |
//! |---|---|---|
//! | `<prefix>/<scope>/leader` | ephemeral | the [`LeaderRecord`](leasehold::LeaderRecord); epoch = `czxid` |
//! | `<prefix>/<scope>/members/<name>` | ephemeral | a [`MemberRecord`](leasehold::MemberRecord) |
//! | `<prefix>/<scope>/{config,failover,sync,initialize,history,status}` | persistent | control keys, CAS by data version |
//!
//! # Rules
//!
//! * One session per [`ZkClient`], shared by every scope: the lease is the session timeout,
//!   asked for as the [`Timing::ttl`](leasehold::Timing) given to [`ZkClient::connect`]. The
//!   server may clamp it to `[2, 20] x tickTime`; the negotiated value is logged, returned by
//!   [`ZkClient::lease_ttl`] (with [`ZkClient::ttl_clamped`]), and is what
//!   [`Lease::valid_for`](leasehold::Lease) and [`StoreBounds`](leasehold::StoreBounds) promise.
//! * The leader is an ephemeral znode, the fencing epoch its `czxid`. Renewal is a
//!   `sync` + read round trip that must find our znode (epoch, token, owner = our session);
//!   the session's heartbeat keeps it alive. While disconnected, renewal fails at once:
//!   `Unavailable` until the server may have expired the session (no contact for the session
//!   timeout, by this process's own clock), `LeaseLost` after. The client library only
//!   reports `Expired` after reconnecting or after 1.4x the timeout, so leadership never
//!   waits for that event.
//! * Every request made while disconnected fails fast instead of queueing (Patroni issue
//!   1981); a request that gets no answer within [`ZkOptions::request_timeout`] is
//!   `Unavailable` (read) or `OutcomeUnknown` (write).
//! * An expired session is replaced in the background; this process's member znodes are
//!   re-created in the new one, leader keys are not (`renew` reports `LeaseLost`).
//! * Watches: one persistent recursive watch per scope (ZooKeeper 3.6+). A watch cursor
//!   from before a disconnect reports `Resync`, since ZooKeeper does not replay missed events.
//! * TLS (feature `tls`, off by default): [`ZkOptions::tls`] reaches every server's
//!   `secureClientPort` with a CA, an optional client certificate (mutual TLS) and hostname
//!   verification on by default. A refused handshake (unknown CA, wrong name, client
//!   certificate refused) is [`DcsError::Fatal`](leasehold::DcsError) and says which.
//!
//! ```no_run
//! # async fn demo() -> Result<(), leasehold::DcsError> {
//! use std::time::Duration;
//! use leasehold::{Dcs, Timing};
//! use leasehold_zookeeper::{ZkClient, ZkOptions};
//!
//! // The session timeout comes from the Timing the nodes use too.
//! let timing = Timing {
//!     ttl: Duration::from_secs(10),
//!     loop_wait: Duration::from_secs(2),
//!     retry_timeout: Duration::from_secs(3),
//!     ..Timing::default()
//! };
//! let options = ZkOptions { connect: "zk1:2181,zk2:2181,zk3:2181/ha".into(), ..ZkOptions::default() };
//! let client = ZkClient::connect(options, &timing).await?;
//! let pg = client.scope("pg");
//! let view = pg.load().await?;
//! println!("leader: {:?}", view.leader.map(|l| l.record.member));
//! # Ok(()) }
//! ```

mod client;
mod dcs;
mod error;
mod options;
mod session;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "tls")]
mod tls;

pub use client::ZkClient;
pub use dcs::ZkDcs;
pub use options::{AclPolicy, DigestAuth, ZkOptions, ZkTls};
