//! The leasehold HA daemon: a thin binary over the `leasehold` library.
//!
//! * [`config`]: the TOML configuration, `LEASEHOLD_*` environment overrides, validation;
//! * [`hooks`]: a [`Resource`](leasehold::driver::Resource) driven by external programs;
//! * [`postgres`]: the native PostgreSQL resource (`[postgresql]`), rewind and synchronous mode;
//! * [`api`]: the REST API (status, load-balancer checks, metrics, admin verbs);
//! * [`probe`]: peers probed over that API for the healthy-enough rules;
//! * [`tls`]: HTTPS for that API (server and clients), Patroni's `restapi.certfile` & co;
//! * [`metrics`]: latency histograms of the store and the resource for `/metrics`;
//! * [`ctl`]: operator commands that read the store and act through the leader's API;
//! * [`pod_role`]: on Kubernetes, the role label of the daemon's own pod;
//! * [`dynamic`]: the dynamic configuration in the store's `config` key (`ctl edit-config`);
//! * [`logging`]: the logger, its level changed by SIGHUP;
//! * [`daemon`]: `leasehold-ha run`.
//!
//! See the README for the configuration format and a walkthrough.

pub mod api;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod dynamic;
pub mod hooks;
pub mod logging;
pub mod metrics;
#[cfg(feature = "kubernetes")]
pub mod pod_role;
pub mod postgres;
pub mod probe;
pub mod store;
pub mod tls;
