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
//! * The leader is an ephemeral znode, the fencing epoch its `czxid`. Renewal must find our
//!   znode (epoch, token, owner = our session) in the mirror (below) and a recent `sync`
//!   answered, or without a usable mirror a `sync` + read round trip; the session's heartbeat
//!   keeps the znode alive. While disconnected, renewal fails at once:
//!   `Unavailable` until the server may have expired the session (no contact for the session
//!   timeout, by this process's own clock), `LeaseLost` after. The client library only
//!   reports `Expired` after reconnecting or after 1.4x the timeout, so leadership never
//!   waits for that event.
//! * Every request made while disconnected fails fast instead of queueing (Patroni issue
//!   1981); a request that gets no answer within [`ZkOptions::request_timeout`] is
//!   `Unavailable` (read) or `OutcomeUnknown` (write).
//! * An expired session is replaced in the background; this process's member znodes are
//!   re-created in the new one, leader keys are not (`renew` reports `LeaseLost`).
//! * Watches: one persistent recursive watch per session over the prefix (the mirror, below;
//!   ZooKeeper 3.6+), or without it one per scope. A watch cursor from before a disconnect
//!   reports `Resync`, since ZooKeeper does not replay missed events.
//! * TLS (feature `tls`, off by default): [`ZkOptions::tls`] reaches every server's
//!   `secureClientPort` with a CA, an optional client certificate (mutual TLS) and hostname
//!   verification on by default. A refused handshake (unknown CA, wrong name, client
//!   certificate refused) is [`DcsError::Fatal`](leasehold::DcsError) and says which.
//!
//! # One watch per session: the mirror
//!
//! With [`ZkOptions::watch_mirror`] (the default) each session keeps one persistent recursive
//! watch over the whole prefix, started by the first `load`, `renew`, `publish_member` or
//! `watch`, and a mirror of the leader, member and control znodes (data, `czxid`, `mzxid`,
//! data version, ephemeral owner) of every scope the process uses. A scope is read once
//! (one member listing and one multi-read) when it is first used and again after every
//! disconnect, and kept current by the watch's events: ZooKeeper's events carry no data, so
//! each created or changed znode of a scope in use costs the process one pipelined
//! `getData`; changes in other scopes under the prefix are ignored.
//! Then an idle follower sends nothing but the session's pings: `load` is answered from the
//! mirror, `watch` waits on it for a leader or control change (member znodes wake nobody),
//! `publish_member` of an unchanged record sends nothing, and an idle leader's `renew` sends
//! at most one `sync` per reuse window, shared by every scope the process leads.
//!
//! Why this keeps the rules (DESIGN.md 1-3):
//!
//! * **A view from the mirror is a real past state.** A `load` is served only when the
//!   mirror is quiescent: every event the client library had received when the call asked
//!   has been applied, and every read it started has been answered. ZooKeeper sends a
//!   change's notification on a connection before any later reply, so then the mirror
//!   equals the tree at the moment of its last answer, and it includes every write this
//!   process made or read (its writes' and its reads' replies came after the notifications
//!   of what they show). Every node decision already allows for a view that is stale on
//!   arrival, and every write that can change leadership is conditional.
//! * **The mirror is used only while it can be current:** the session is connected and has
//!   not been disconnected since the mirror's last full read (a persistent watch misses the
//!   events of a disconnect; the client library re-registers it, but what was missed is
//!   unknown, so the mirror reads the tree again). A ZooKeeper server that loses its quorum
//!   closes its client connections, so a connected mirror is fed by a server in the quorum.
//!   After a write with an unknown outcome the scope's next `load` asks the server (`sync`
//!   and a multi-read), so a node looking for its own token reads the store itself.
//! * **Renewal without a read of the znode.** The leader znode is ephemeral: while the
//!   session lives, only a delete removes it, and only a `setData` changes it. leasehold
//!   never writes over a leader znode (acquire is create-only) and deletes it only after
//!   comparing epoch, token and owner, which only the holder passes. So while the mirror
//!   shows the znode at our epoch, with our record, owned by our session, the session alone
//!   keeps it, and the renewal is valid as long as the session surely lives: the session
//!   timeout from the start of a `sync` the ensemble answered (the `sync` goes through the
//!   ensemble leader, so a server cut off from the quorum cannot answer it). A `sync` at
//!   most a reuse window old serves (what the timing leaves spare, `ttl - loop_wait - 2 *
//!   retry_timeout`, at most `ttl / 3`, at least `min(ttl / 60, 500 ms)`); the renewal is
//!   then shorter by its age. The session's own pings are not used as that proof: the client
//!   library does not say when one was answered, and notifications arriving keep a
//!   connection "up" even if our packets no longer reach the server.
//! * **What tells the leader its znode is gone:** the mirror's event (an operator's delete,
//!   a restore) makes the next renewal `Lost`, also when it arrives while the `sync` is out;
//!   the session ending is `LeaseLost`, from the session state as without the mirror (while
//!   disconnected the belief ends on this process's own clock, `renew` fails fast, and a
//!   replaced session never renews a znode of the old one).
//!
//! Without the mirror, or while it is not usable, `load` is a `sync` and a multi-read,
//! `renew` a pipelined `sync` and read of the leader znode, and `watch` arms a persistent
//! recursive watch per scope (which wakes on member changes too).
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
mod mirror;
mod options;
mod session;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "tls")]
mod tls;

pub use client::ZkClient;
pub use dcs::ZkDcs;
pub use options::{AclPolicy, DigestAuth, ZkOptions, ZkTls};
