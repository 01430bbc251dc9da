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
//! | `<prefix><scope>-epoch` | none | annotation `leasehold.io/epoch`: the greatest fencing epoch handed out |
//!
//! `kubectl get lease <scope>-leader` and client-go based tools read the leader as usual.
//!
//! # Rules
//!
//! * Every compare-and-set is a create (`Expect::Absent`, first acquisition) or a JSON merge
//!   PATCH carrying the last seen `metadata.resourceVersion`: 409 is a lost race
//!   ([`CasOutcome::Lost`](leasehold::CasOutcome)), 404 means the object is gone (`Lost(None)`);
//!   a PATCH never creates, unlike a PUT, which a real API server turns into a create when
//!   the Lease was deleted. Deletes carry a `resourceVersion` precondition. Only a process's
//!   own member Leases are written with PUT.
//! * The fencing epoch comes from the scope's counter Lease `<scope>-epoch`, bumped by
//!   compare-and-set before every acquisition (to one more than the greater of the counter
//!   and the epoch on the leader Lease) and stored on the leader Lease in the
//!   `leasehold.io/epoch` annotation. Deleting or editing the leader Lease does not make
//!   epochs repeat; deleting both the counter and the leader Lease would.
//! * `leaseTransitions` keeps client-go's meaning: 0 on create, +1 when the holder changes.
//!   A Lease held by an identity without a leasehold record (a client-go elector) is a
//!   foreign holder: shown with its identity and respected, never garbage.
//! * There is no server-side expiry. A candidate treats a holder (leader or member) as gone
//!   only after it has seen the same `resourceVersion`, unchanged, for the longer of
//!   `leaseDurationSeconds` and its own ttl, on its own monotonic clock (client-go's rule);
//!   `load` then reports it absent and `acquire` replaces it at that version.
//! * Members stay alive while their client runs: the keep-alive renews each published
//!   member Lease every ttl/3. Watches ignore these heartbeats (and leader renewals).
//! * A member Lease also reads as gone once the API server's own clock says it was last
//!   written (newest `managedFields` time) a ttl or more ago (`Date` of the LIST answer, less
//!   2 s for whole-second stamps): a fresh reader needs no watching first. The leader deletes
//!   member Leases unrenewed for [`MEMBER_REMOVAL_AFTER`] ttls, after a successful renew.
//! * 401 and 403 are [`DcsError::Fatal`](leasehold::DcsError) with a message naming the
//!   fix; the RBAC Role the backend needs is in `backends/kubernetes/manifests/`.
//!
//! # One watch per process: the mirror
//!
//! With [`KubeOptions::watch_mirror`] (the default) each [`KubeClient`] keeps one
//! label-selected LIST + WATCH (`app.kubernetes.io/managed-by=leasehold` and the extra labels)
//! over the namespace, started by the first `load` or `watch`: a mirror of every scope's
//! Leases with their resourceVersions. `load` is served from it without a request while the
//! watch is established, it has caught up with every resourceVersion this process's own
//! writes returned or its lost compare-and-sets read (and shows what it deleted as gone), and
//! no write in the scope had an unknown outcome since the scope's last LIST; otherwise `load`
//! LISTs as before. 410 Gone relists once. The expiry rule is unchanged: as the mirror
//! applies events it records when this process first saw each (object, resourceVersion), and
//! a gap-free watch proves the object unchanged since. `watch` wakes only on leader and
//! control Lease changes (and holder expiry). An idle follower sends nothing but its member
//! keep-alive. Renewals do not use the mirror: Kubernetes has no shared lease, so each leader
//! Lease is renewed by its own conditional PATCH, one request per Lease per renewal; a leader
//! learns that its Lease was changed or deleted from that PATCH's 409 or 404.
//!
//! ```no_run
//! # async fn demo() -> Result<(), leasehold::DcsError> {
//! use leasehold::{Dcs, Timing};
//! use leasehold_kube::{KubeClient, KubeOptions};
//!
//! // The lease duration comes from the Timing the nodes use too.
//! let timing = Timing::default();
//! let options = KubeOptions { namespace: Some("db".into()), ..KubeOptions::default() };
//! let client = KubeClient::connect(options, &timing).await?;
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
mod mirror;
mod names;
mod objects;
mod observe;
mod options;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::{KubeClient, install_default_crypto_provider};
pub use dcs::{KubeDcs, MEMBER_REMOVAL_AFTER};
pub use names::{
    EPOCH_ANNOTATION, LEADER_ANNOTATION, MANAGED_BY, MEMBER_ANNOTATION, ROLE_LABEL, SCOPE_LABEL, VALUE_ANNOTATION,
};
pub use options::{ConfigSource, KubeOptions};
