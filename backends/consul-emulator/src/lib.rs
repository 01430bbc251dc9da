//! A small Consul HTTP API emulator for testing `leasehold-consul`.
//!
//! It serves plain HTTP on a loopback port and implements, as Consul documents them, the
//! calls a session-based lock client makes:
//!
//! * sessions: `PUT /v1/session/create` (TTL between 10 s and 24 h, `Behavior`
//!   `release`/`delete`, `LockDelay`, `Checks`; like Consul 1.6, `NodeChecks` and
//!   `ServiceChecks` are ignored), `renew`,
//!   `destroy`, `GET /v1/session/info/:id`, `/v1/session/list`. A session is invalidated
//!   lazily, somewhere between its TTL and twice its TTL after the last renewal
//!   ([`Expiry`]); its keys are then released or deleted and get its lock-delay.
//! * KV: `GET` (single key, `?recurse`, `?raw`), `PUT` (`?cas=` with 0 = create-only,
//!   `?acquire=`, `?release=`, `?flags=`), `DELETE` (`?cas=`, `?recurse`), entries with
//!   base64 `Value`, `CreateIndex`, `ModifyIndex`, `LockIndex`, `Session`.
//! * blocking queries: `?index=&wait=` (default 5 min, at most 10 min, plus up to
//!   `wait / 16` of jitter), `X-Consul-Index` on every read; `?consistent`/`?stale`.
//! * ACLs: with tokens configured, 403 without a valid `X-Consul-Token`.
//!
//! Fault hooks: [`Emulator::stop_agent`]/[`start_agent`](Emulator::start_agent),
//! [`invalidate_session`](Emulator::invalidate_session),
//! [`return_early`](Emulator::return_early),
//! [`drop_next_acquire_reply`](Emulator::drop_next_acquire_reply).
//! See the README for what is not modelled.
//!
//! ```no_run
//! use leasehold_consul_emulator::{Emulator, EmulatorConfig};
//! let emulator = Emulator::start(EmulatorConfig::with_token("secret")).unwrap();
//! println!("Consul agent emulator at {}", emulator.url());
//! ```
// The emulator is a server: it runs threads, its own runtime and reads the clock for TTLs.
// The core's determinism rules do not apply here.
#![allow(clippy::disallowed_methods)]

mod config;
mod duration;
mod emulator;
mod server;
mod state;

pub use config::{CONSUL_SESSION_TTL_MIN, EmulatorConfig, Expiry, LOCK_DELAY_MAX, SESSION_TTL_MAX};
pub use duration::{format_go_duration, parse_go_duration};
pub use emulator::Emulator;
pub use server::{MAX_VALUE_BYTES, RequestCounts};
pub use state::{Behavior, KvEntry, SessionInfo};
