//! leasehold backend for Kubernetes: leader election on `coordination.k8s.io/v1` Leases.
//!
//! # Layout
//!
//! Each election scope owns Leases in one namespace, all labelled
//! `app.kubernetes.io/managed-by=leasehold` and `leasehold.io/scope=<scope>` (plus
//! `leasehold.io/role` and any extra labels), so one label-selected LIST is a consistent,
//! linearizable snapshot of the whole scope:
//!
//! | object | holder fields | leasehold data |
//! |---|---|---|
//! | `<prefix><scope>-leader` | client-go's `holderIdentity`, `leaseDurationSeconds`, `acquireTime`, `renewTime`, `leaseTransitions` | annotation `leasehold.io/leader`: the [`LeaderRecord`](leasehold::LeaderRecord) (member, token, api_url, conn_url) |
//! | `<prefix><scope>-member-<name>` | `holderIdentity` = member, renewed by the client's keep-alive | annotation `leasehold.io/member`: the [`MemberRecord`](leasehold::MemberRecord) |
//! | `<prefix><scope>-config`, `-failover`, `-sync`, `-initialize`, `-history`, `-status` | none | annotation `leasehold.io/value`: the record |
//!
//! `kubectl get lease <scope>-leader` and client-go based tools read the leader as usual.
//!
//! # Rules
//!
//! * Every write is a PUT carrying the last seen `resourceVersion` (or a create); 409 is a
//!   lost race ([`CasOutcome::Lost`](leasehold::CasOutcome)). Deletes carry a
//!   `resourceVersion` precondition.
//! * The fencing epoch is `leaseTransitions`, bumped on every acquisition, also when the
//!   same member re-acquires after expiry. Release clears `holderIdentity` and keeps the
//!   counter; deleting the leader Lease by hand would restart it, so do not.
//! * There is no server-side expiry. A candidate treats a holder (leader or member) as gone
//!   only after it has seen the same `resourceVersion`, unchanged, for the longer of
//!   `leaseDurationSeconds` and its own ttl, on its own monotonic clock (client-go's rule);
//!   `load` then reports it absent and `acquire` replaces it at that version.
//! * Members stay alive while their client runs: the keep-alive renews each published
//!   member Lease every ttl/3. Watches ignore these heartbeats (and leader renewals).
//! * 401 and 403 are [`DcsError::Fatal`](leasehold::DcsError) with a message naming the
//!   fix; the RBAC Role the backend needs is in `backends/kubernetes/manifests/`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), leasehold::DcsError> {
//! use leasehold::Dcs;
//! use leasehold_kube::{KubeClient, KubeOptions};
//!
//! let client = KubeClient::connect(KubeOptions { namespace: Some("db".into()), ..KubeOptions::default() }).await?;
//! let pg = client.scope("pg");
//! let view = pg.load().await?;
//! println!("leader: {:?}", view.leader.map(|l| l.record.member));
//! # Ok(()) }
//! ```
//!
//! This crate does not pick a Kubernetes API version for k8s-openapi: the final binary
//! enables one of its `v1_*`/`earliest` features (Lease v1 exists in all of them).

mod client;
mod dcs;
mod error;
mod names;
mod objects;
mod observe;
mod options;

pub use client::{KubeClient, install_default_crypto_provider};
pub use dcs::KubeDcs;
pub use names::{LEADER_ANNOTATION, MANAGED_BY, MEMBER_ANNOTATION, ROLE_LABEL, SCOPE_LABEL, VALUE_ANNOTATION};
pub use options::{ConfigSource, KubeOptions, OptionsError};
