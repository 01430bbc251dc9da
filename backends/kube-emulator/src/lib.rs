//! A small Kubernetes API server emulator for testing `leasehold-kube`.
//!
//! It serves plain HTTP on a loopback port and implements, as the Kubernetes API documents
//! them, the calls a leader-election client makes on `coordination.k8s.io/v1` Leases and
//! core `v1` ConfigMaps: get, list (label and field selectors), create (409 AlreadyExists),
//! replace (409 Conflict on a stale `resourceVersion`; a missing Lease is created, as a real
//! API server does), JSON merge patch (a `resourceVersion` in the patch is a precondition; a
//! patch never creates), delete (with `uid` and `resourceVersion` preconditions), and watch streams (`?watch=true&resourceVersion=`,
//! ADDED/MODIFIED/DELETED as newline-delimited JSON, optional BOOKMARKs, 410 Gone after
//! compaction). Errors are `Status` objects. Requests need a bearer token when tokens are
//! configured (401 without a valid one, 403 for a verb the token lacks).
//!
//! Objects are kept as JSON values exactly as clients send them (plus the fields the server
//! sets: `uid`, `resourceVersion`, `creationTimestamp`, `namespace`). `resourceVersion` is
//! one store-wide counter rendered as a string. See the README for what is not modelled.
//!
//! ```no_run
//! use leasehold_kube_emulator::{Emulator, EmulatorConfig};
//! let emulator = Emulator::start(EmulatorConfig::with_token("secret")).unwrap();
//! println!("API server emulator at {}", emulator.url());
//! // Dropping the emulator stops it and closes every connection.
//! ```
// The emulator is a server: it spawns tasks for watch streams, runs its own thread and reads
// the wall clock for creation timestamps. The core's determinism rules do not apply here.
#![allow(clippy::disallowed_methods)]

mod config;
mod emulator;
mod resource;
mod selector;
mod server;
mod status;
mod store;
mod validate;

pub use config::{AccessToken, EmulatorConfig, Fault, GoneStyle, Verb};
pub use emulator::Emulator;
pub use resource::Resource;
pub use selector::{FieldSelector, LabelSelector};
pub use server::RequestCounts;
pub use status::ApiError;
pub use validate::micro_time;
