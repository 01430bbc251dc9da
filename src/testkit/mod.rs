//! The in-memory reference store and the conformance suite every backend runs
//! (feature `testkit`).
//!
//! * [`model::MemoryModel`]: the store as a synchronous, deterministic state machine taking
//!   `now` as an argument; the simulator drives it directly.
//! * [`MemoryStore`] / [`MemoryClient`] / [`MemoryDcs`]: the model behind the async
//!   [`Dcs`](crate::Dcs) trait, one session per client, for examples and driver tests, with
//!   [`Fault`] injection.
//! * [`conformance`]: the contract checks. A backend runs them by implementing
//!   [`conformance::Harness`] and calling [`conformance::run_suite`].
//! * [`TokioClock`] and [`ManualClock`]: [`Clock`](crate::Clock)s for the above.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use leasehold::testkit::{MemoryStore, TokioClock};
//! use leasehold::{Dcs, LeaderRecord};
//!
//! let store = MemoryStore::new(Arc::new(TokioClock::new()), Duration::from_secs(2));
//! let client = store.client();
//! let dcs = client.scope("pg");
//! let record = LeaderRecord { member: "n1".into(), token: "t1".into(), api_url: None, conn_url: None };
//! let lease = dcs.acquire(&record).await.unwrap().won().unwrap();
//! assert_eq!(dcs.load().await.unwrap().leader.unwrap().epoch, lease.epoch);
//! # }
//! ```

mod clock;
pub mod conformance;
pub mod election;
mod fault;
mod memory;
pub mod model;

pub use clock::{ManualClock, TokioClock};
pub use fault::{DcsCall, Fault};
pub use memory::{MemoryClient, MemoryDcs, MemoryStore};
pub use model::{MemoryModel, SessionId};
