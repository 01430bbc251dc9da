//! Leader election over the consensus store an operator already runs (etcd v3, ZooKeeper,
//! Consul, the Kubernetes API), with fencing epochs, leases bounded on the holder's own
//! monotonic clock, and Patroni's failover rules.
//!
//! * [`dcs::Dcs`]: the one boundary to a store; each backend crate implements it
//!   (`leasehold-etcd`, `leasehold-zookeeper`, `leasehold-consul`, `leasehold-kube`).
//! * [`node::Node`]: the sans-IO HA state machine (one [`node::Input`] in, [`node::Action`]s
//!   out); [`rules`]: who may race for the key.
//! * `driver` (feature `tokio`): runs a `Node` against a `Dcs` and your `Resource`
//!   (`resource`), asking peers through a `PeerProbe` (`probe`), with a `Watchdog`
//!   (`watchdog`); the main types are re-exported here.
//! * `testkit` (feature `testkit`): the reference store and the conformance suite;
//!   `sim` (feature `sim`): the deterministic simulator.
//!
//! * [`Election`] (feature `tokio`): the simple path, `campaign` / `resign` / `observe`
//!   with a fencing epoch and a lost signal, on the same node and driver.
//!
//! ```
//! # #[cfg(feature = "testkit")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use leasehold::testkit::{MemoryStore, TokioClock};
//! use leasehold::{Election, Timing};
//!
//! // The in-memory reference store; a backend crate's client works the same way.
//! let store = MemoryStore::new(Arc::new(TokioClock::new()), Duration::from_secs(5));
//! let election = Election::new(Arc::new(store.client().scope("jobs")), "worker-1", Timing::fast())?;
//! let observer = election.observe();
//!
//! let leadership = election.campaign().await?;
//! assert!(leadership.epoch().0 > 0 && !leadership.is_lost());
//! // Act as leader, fencing with the epoch, until `leadership.lost()` fires or you resign.
//! election.resign().await;
//! assert!(leadership.is_lost());
//! # let _ = observer;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "testkit"))]
//! # fn main() {}
//! ```
//!
//! The README states the guarantees and their limits. Its "Using the library" example needs
//! a backend crate and a real store, so it runs as a doc test of `leasehold-etcd` (which
//! starts an etcd), not here.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
pub mod dcs;
pub mod error;
pub mod node;
pub mod record;
pub mod rules;
#[cfg(feature = "sim")]
pub mod sim;
pub mod time;

#[cfg(feature = "tokio")]
pub mod driver;
#[cfg(feature = "tokio")]
pub mod election;
#[cfg(feature = "tokio")]
pub mod probe;
#[cfg(feature = "tokio")]
pub mod resource;
#[cfg(feature = "testkit")]
pub mod testkit;
#[cfg(feature = "tokio")]
pub mod watchdog;

pub use config::{OptionsError, Timing, TimingError};
pub use dcs::{CasOutcome, Dcs, Expect, Lease, StoreBounds, WatchEvent};
#[cfg(feature = "tokio")]
pub use driver::{DriverHandle, DriverState, spawn};
#[cfg(feature = "tokio")]
pub use election::{Election, ElectionError, Leader, Leadership};
pub use error::{DcsError, DecodeError, NextStep};
pub use node::{Action, DemoteMode, Input, Node, NodeConfig, NodeEvent, ResourceStatus, WatchdogMode};
#[cfg(feature = "tokio")]
pub use probe::{PeerProbe, RecordProbe};
pub use record::{
    ClusterView, ConfigRecord, ControlKey, DecodeCache, Epoch, FailoverRecord, GarbageRemoval, HistoryEntry,
    HistoryRecord, InitializeRecord, Key, LeaderRecord, LeaderView, MemberRecord, RawEntry, RawView, Record,
    ResourceRole, StatusRecord, SyncRecord, Tags, Version, Versioned,
};
#[cfg(feature = "tokio")]
pub use resource::Resource;
pub use rules::{ElectionFacts, PeerReply, Reason, Verdict, WatchdogHealth};
pub use time::{Clock, Instant, WallTime, WallTimeError};
#[cfg(feature = "tokio")]
pub use watchdog::{LinuxWatchdog, NoWatchdog, Watchdog};
