//! The REST API (axum): status for peers and load balancers, Prometheus metrics, and the
//! token-protected admin verbs.
//!
//! | endpoint | 200 when | otherwise |
//! |---|---|---|
//! | `GET /status` | always (the JSON peers use in the leader race) | |
//! | `GET /primary` | we hold the lease and the resource runs as primary | 503 |
//! | `GET /leader` | we hold the lease | 503 |
//! | `GET /replica?lag=<bytes or 16MB>` | the resource runs as a replica, within `lag` of the leader | 503 (400 on a bad `lag`) |
//! | `GET /health` | the resource runs | 503 |
//! | `GET /liveness` | the HA loop made progress within ttl (leader) or 2 x ttl | 503 |
//! | `GET /readiness` | we lead, or the resource runs and the view is fresh | 503 |
//! | `GET /metrics` | Prometheus text | |
//! | `POST /switchover`, `/failover`, `/pause`, `/resume`, `/failsafe` | `Authorization: Bearer <restapi.token>` | 401 bad token, 403 no token configured |
//! | `POST /restart`, `/reload`, `/reinitialize` | the same token; the resource did it | 501 the resource cannot, 409 reinitialize on the leader, 500 it failed |
//! | `POST /switchover` with `scheduled_at`, `POST /restart` with `schedule` | the same token; 202 scheduled | 400 a bad or past time (naming the field), 409 one already scheduled |
//! | `DELETE /switchover`, `DELETE /restart` | the same token; 200 the schedule is cancelled | 404 nothing is scheduled |
//!
//! Every GET also answers HEAD with the same status code and no body. With
//! `restapi.certfile` the API is served over HTTPS ([`serve`]); with `verify_client =
//! "optional"` the POST endpoints also need a client certificate (Patroni's rule), with
//! `"required"` every connection does.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::net::SocketAddr;

use async_trait::async_trait;
use axum::Json;
use axum::Router;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::{IncomingStream, Listener};
use leasehold::WallTime;
use leasehold::driver::{DriverHandle, DriverState, Resource};
use leasehold::node::{AdminError, AdminRequest, NodeRole};
use leasehold::{MemberRecord, ResourceRole};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, RwLock};

use crate::config::DaemonConfig;
use crate::metrics::Metrics;
use crate::tls::VerifyClient;

/// What an operator can ask of a member's resource through the API (`ctl restart`, `reload`,
/// `reinit`), beside what the driver asks of it. Implemented by the daemon's resources; the
/// core [`Resource`] trait has no such verbs.
#[async_trait]
pub trait MemberActions: Send + Sync + 'static {
    /// Restarts the resource in the role it has. `Err` says why it could not.
    async fn restart(&self) -> Result<(), String>;
    /// Makes the resource re-read its configuration.
    async fn reload(&self) -> Result<(), String>;
    /// A replica throws its data away and copies it anew from `leader` (reachable at
    /// `conn_url`). Never called on the leader.
    async fn reinitialize(&self, leader: &str, conn_url: Option<&str>) -> Result<(), String>;
    /// Whether a changed setting waits for a restart; `None` when the resource cannot tell.
    async fn pending_restart(&self) -> Option<bool> {
        None
    }
}

/// What the handlers share.
pub struct ApiState {
    /// The configuration.
    pub config: Arc<DaemonConfig>,
    /// The driver; `None` once shutdown has begun.
    pub driver: RwLock<Option<DriverHandle>>,
    /// When the driver last published a state (the HA loop made progress).
    pub last_progress: Mutex<tokio::time::Instant>,
    /// Leader changes seen since start.
    pub leader_changes: AtomicU64,
    /// The last leader seen, for counting changes of holder.
    pub last_leader: std::sync::Mutex<Option<String>>,
    /// Asked afresh by `/status`: the driver's copy of the resource status can be up to a
    /// second old, and a peer deciding a leader race must not see a demoted primary as
    /// still running.
    pub resource: Option<Arc<dyn Resource>>,
    /// Resource settings (PostgreSQL parameters) that wait for a restart of the resource, as
    /// `pending_restart` shows them beside the dynamic timing's.
    pub resource_pending_restart: std::sync::Mutex<Vec<String>>,
    /// Restart, reload and reinitialize of the resource, when it supports them.
    pub actions: Option<Arc<dyn MemberActions>>,
    /// Store and resource latency histograms, rendered by `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Serializes restart, reload and reinitialize: one operator action at a time.
    pub action_lock: Mutex<()>,
    /// The scheduled restart of this member's resource, if any, and the task waiting for it.
    /// It lives in this process, as Patroni's does: a restart of the daemon forgets it.
    pub scheduled_restart: std::sync::Mutex<Option<(WallTime, tokio::task::JoinHandle<()>)>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").field("config", &self.config).finish_non_exhaustive()
    }
}

impl ApiState {
    /// State for `config` and a running driver.
    pub fn new(
        config: Arc<DaemonConfig>,
        driver: DriverHandle,
        resource: Option<Arc<dyn Resource>>,
        actions: Option<Arc<dyn MemberActions>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        #[allow(clippy::disallowed_methods)] // the API reports real time since the loop's last step
        let now = tokio::time::Instant::now();
        Arc::new(ApiState {
            config,
            driver: RwLock::new(Some(driver)),
            last_progress: Mutex::new(now),
            leader_changes: AtomicU64::new(0),
            last_leader: std::sync::Mutex::new(None),
            resource,
            resource_pending_restart: std::sync::Mutex::new(Vec::new()),
            actions,
            metrics,
            action_lock: Mutex::new(()),
            scheduled_restart: std::sync::Mutex::new(None),
        })
    }

    async fn state(&self) -> Option<DriverState> {
        self.driver.read().await.as_ref().map(DriverHandle::state)
    }

    /// The driver's state with the resource's status asked afresh (Patroni also queries
    /// PostgreSQL on every health check).
    async fn fresh_state(&self) -> Option<DriverState> {
        let mut s = self.state().await?;
        if let Some(r) = &self.resource {
            s.resource = r.status().await;
        }
        Some(s)
    }

    #[allow(clippy::disallowed_methods)] // see `new`
    async fn since_progress(&self) -> Duration {
        self.last_progress.lock().await.elapsed()
    }
}

/// The `/status` document: the member's record as it would publish it now (read fresh, the
/// one member shape the library uses everywhere, so a peer's probe decodes it directly), and
/// the daemon's state beside it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusDoc {
    /// Name, role, running, position, timeline, tags, watchdog_failed, api_url, conn_url.
    #[serde(flatten)]
    pub member: MemberRecord,
    /// The HA state: `leader`, `promoting`, `demoting`, `replica` or `stopped`.
    pub state: String,
    /// Whether the resource may act as primary now (we hold a valid lease).
    pub acting: bool,
    /// The scope.
    pub scope: String,
    /// The current leader, as last loaded.
    pub leader: Option<String>,
    /// Our fencing epoch, if we hold the key.
    pub epoch: Option<u64>,
    /// Milliseconds left on our lease belief, if we hold the key.
    pub lease_remaining_ms: Option<u64>,
    /// The leader's last published position.
    pub leader_position: Option<u64>,
    /// Bytes behind the leader's last published position.
    pub lag: Option<u64>,
    /// The cluster is paused.
    pub paused: bool,
    /// Why we last declined to race for a free key.
    pub last_refusal: Option<String>,
    /// Synchronous mode: the sync key's standbys (only members there may be promoted
    /// automatically), when the key belongs to the current leader.
    #[serde(default)]
    pub sync_standby: Vec<String>,
    /// A changed setting of the resource waits for a restart (`null`: the resource cannot tell).
    #[serde(default)]
    pub pending_restart: Option<bool>,
    /// Settings waiting for a restart, by name: the dynamic configuration's timing, which this
    /// process applies at its next start (`ttl: 20 s (running with 30 s)`), and PostgreSQL
    /// parameters the server applies only on restart (`postgresql.parameters.max_connections`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_restart_settings: Vec<String>,
    /// A restart of this member's resource scheduled through `POST /restart` (Patroni's
    /// `scheduled_restart`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_restart: Option<ScheduledRestart>,
    /// A switchover scheduled in the store (Patroni's `scheduled_switchover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_switchover: Option<ScheduledSwitchover>,
}

/// A scheduled restart as `/status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledRestart {
    /// When (RFC 3339).
    pub schedule: WallTime,
}

/// A scheduled switchover as `/status` shows it (Patroni's field names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledSwitchover {
    /// When (RFC 3339).
    pub at: WallTime,
    /// The leader that steps down then.
    pub from: Option<String>,
    /// The member that should take over (`null`: the best one).
    #[serde(default)]
    pub to: Option<String>,
}

/// Lower-case name of a node role.
pub fn state_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Leader => "leader",
        NodeRole::Promoting => "promoting",
        NodeRole::Demoting => "demoting",
        NodeRole::Replica => "replica",
        NodeRole::Stopped => "stopped",
    }
}

fn status_doc(cfg: &DaemonConfig, s: &DriverState) -> StatusDoc {
    let leader_position = s.view.as_ref().and_then(|v| v.status.as_ref()).map(|st| st.value.position);
    let me = s.view.as_ref().and_then(|v| v.member(&cfg.name).cloned());
    StatusDoc {
        member: MemberRecord {
            name: cfg.name.clone(),
            api_url: Some(cfg.restapi.connect_url.clone()),
            conn_url: cfg.node_config(0).conn_url,
            role: s.resource.role,
            running: s.resource.running,
            position: s.resource.position,
            timeline: s.resource.timeline,
            tags: cfg.tags.clone(),
            watchdog_failed: me.is_some_and(|m| m.watchdog_failed),
        },
        state: state_name(s.status.role).into(),
        acting: s.acting,
        scope: cfg.scope.clone(),
        leader: s.status.leader.clone(),
        epoch: s.status.epoch.map(|e| e.0),
        lease_remaining_ms: s.lease_remaining.map(|d| d.as_millis() as u64),
        leader_position,
        lag: match (leader_position, s.resource.position) {
            (Some(l), Some(p)) => Some(l.saturating_sub(p)),
            _ => None,
        },
        paused: s.status.paused,
        last_refusal: s.status.last_refusal.as_ref().map(ToString::to_string),
        sync_standby: s
            .view
            .as_ref()
            .and_then(|v| v.sync.as_ref().filter(|k| Some(&k.value.leader) == s.status.leader.as_ref()))
            .map(|k| k.value.sync_standby.clone())
            .unwrap_or_default(),
        pending_restart: None,
        pending_restart_settings: s
            .view
            .as_ref()
            .map(|v| crate::dynamic::read(&crate::dynamic::current(v).0).0.pending_restart(&cfg.timing))
            .unwrap_or_default(),
        scheduled_restart: None,
        scheduled_switchover: s.view.as_ref().and_then(|v| v.failover.as_ref()).and_then(|f| {
            let f = &f.value;
            f.scheduled_at.map(|at| ScheduledSwitchover { at, from: f.leader.clone(), to: f.candidate.clone() })
        }),
    }
}

/// The router for `state`.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/primary", get(primary))
        // Patroni's names, so HAProxy and monitoring configurations carry over unchanged.
        .route("/patroni", get(status))
        .route("/master", get(primary))
        .route("/read-write", get(primary))
        .route("/read-only", get(read_only))
        .route("/history", get(history))
        .route("/cluster", get(cluster))
        .route("/config", get(dynamic_config))
        .route("/leader", get(leader))
        .route("/replica", get(replica))
        .route("/health", get(health))
        .route("/liveness", get(liveness))
        .route("/readiness", get(readiness))
        .route("/metrics", get(metrics))
        .route("/switchover", post(switchover).delete(cancel_switchover))
        .route("/failover", post(failover))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/failsafe", post(failsafe))
        .route("/restart", post(restart).delete(cancel_restart))
        .route("/reload", post(reload))
        .route("/reinitialize", post(reinitialize))
        .layer(axum::middleware::from_fn_with_state(state.clone(), client_cert_for_posts))
        .with_state(state)
}

/// What the API knows about a connection: whether the client presented a certificate that
/// `restapi.cafile` verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// A verified client certificate was presented.
    pub client_cert: bool,
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(_: IncomingStream<'_, TcpListener>) -> Self {
        Peer { client_cert: false }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        // rustls keeps peer certificates only once its verifier accepted them.
        Peer { client_cert: stream.io().get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty()) }
    }
}

/// `verify_client = "optional"`: the POST endpoints need a client certificate (Patroni's
/// rule for its unsafe endpoints); GET and HEAD do not.
async fn client_cert_for_posts(State(st): Shared, request: Request, next: Next) -> Response {
    let optional = st.config.restapi.tls.as_ref().is_some_and(|t| t.verify_client == VerifyClient::Optional);
    let has_cert = request.extensions().get::<ConnectInfo<Peer>>().is_some_and(|c| c.0.client_cert);
    if optional && request.method() == Method::POST && !has_cert {
        let msg = "a client certificate is required for POST endpoints (restapi.verify_client = optional)";
        return (StatusCode::FORBIDDEN, Json(serde_json::json!({"error": msg}))).into_response();
    }
    next.run(request).await
}

/// A TCP listener that hands axum only connections whose TLS handshake finished. Handshakes
/// run in their own tasks (bounded by [`HANDSHAKE_TIMEOUT`]), so a slow or silent client does
/// not hold up the others.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    done_tx: tokio::sync::mpsc::Sender<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    done_rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
}

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsListener {
    /// Serves `config` on `tcp`.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        let (done_tx, done_rx) = tokio::sync::mpsc::channel(64);
        TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(config), done_tx, done_rx }
    }
}

impl Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                Some(done) = self.done_rx.recv() => return done,
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, addr)) => {
                        let acceptor = self.acceptor.clone();
                        let done = self.done_tx.clone();
                        #[allow(clippy::disallowed_methods)] // the daemon owns its tasks
                        tokio::spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => {
                                    let _ = done.send((tls, addr)).await;
                                }
                                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "REST API: TLS handshake failed"),
                                Err(_) => tracing::debug!(%addr, "REST API: TLS handshake timed out"),
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "REST API: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Serves the API on `listener` until `shutdown` completes: HTTPS when `restapi.certfile` is
/// set, else HTTP.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = state.config.restapi.tls.clone();
    let app = router(state);
    match tls {
        None => {
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(shutdown)
                .await?
        }
        Some(t) => {
            let config = t.server_config().map_err(anyhow::Error::msg)?;
            axum::serve(TlsListener::new(listener, config), app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(shutdown)
                .await?
        }
    }
    Ok(())
}

type Shared = State<Arc<ApiState>>;

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"error": "shutting down"}))).into_response()
}

/// Adds the PostgreSQL parameters waiting for a restart to the dynamic timing's, unless the
/// resource has just said nothing waits (it was restarted since they were read).
fn settings_pending_restart(st: &ApiState, doc: &mut StatusDoc) {
    if doc.pending_restart == Some(false) {
        return;
    }
    let parameters = st.resource_pending_restart.lock().unwrap_or_else(|e| e.into_inner());
    doc.pending_restart_settings.extend(parameters.iter().map(|p| format!("postgresql.parameters.{p}")));
}

/// The status document with 200 if `ok`, else 503.
async fn check(st: &ApiState, ok: impl FnOnce(&DriverState, &StatusDoc) -> bool) -> Response {
    let Some(s) = st.fresh_state().await else { return unavailable() };
    let mut doc = status_doc(&st.config, &s);
    settings_pending_restart(st, &mut doc);
    doc.scheduled_restart = st.scheduled_restart_at().map(|schedule| ScheduledRestart { schedule });
    let code = if ok(&s, &doc) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(doc)).into_response()
}

async fn status(State(st): Shared) -> Response {
    let Some(s) = st.fresh_state().await else { return unavailable() };
    let mut doc = status_doc(&st.config, &s);
    if let Some(a) = &st.actions {
        doc.pending_restart = a.pending_restart().await;
    }
    settings_pending_restart(&st, &mut doc);
    doc.scheduled_restart = st.scheduled_restart_at().map(|schedule| ScheduledRestart { schedule });
    (StatusCode::OK, Json(doc)).into_response()
}

async fn primary(State(st): Shared) -> Response {
    check(&st, |s, _| s.acting && s.resource.running && s.resource.role == ResourceRole::Primary).await
}

/// Patroni's `/read-only`: 200 on any running member that can serve reads (the primary or a
/// replica), 503 otherwise.
async fn read_only(State(st): Shared) -> Response {
    check(&st, |s, _| s.resource.running && s.resource.role != ResourceRole::Unknown).await
}

/// Patroni's `/history`: the cluster's timeline history, as `[[timeline, position, reason,
/// timestamp-or-null, leader]]`.
async fn history(State(st): Shared) -> Response {
    let Some(s) = st.fresh_state().await else { return unavailable() };
    let entries: Vec<serde_json::Value> = s
        .view
        .as_ref()
        .and_then(|v| v.history.as_ref())
        .map(|h| {
            h.value
                .0
                .iter()
                .map(|e| serde_json::json!([e.timeline, e.position, e.reason, serde_json::Value::Null, e.leader]))
                .collect()
        })
        .unwrap_or_default();
    (StatusCode::OK, Json(entries)).into_response()
}

/// Patroni's `/cluster`: every registered member with its role, state, timeline and lag.
async fn cluster(State(st): Shared) -> Response {
    let Some(s) = st.fresh_state().await else { return unavailable() };
    let Some(view) = s.view.as_ref() else { return unavailable() };
    let leader = view.leader.as_ref().map(|l| l.record.member.as_str());
    let leader_position = view.status.as_ref().map(|st| st.value.position);
    let members: Vec<serde_json::Value> = view
        .members
        .iter()
        .map(|m| {
            let m = &m.value;
            let role = if Some(m.name.as_str()) == leader { "leader" } else { "replica" };
            let lag = match (leader_position, m.position) {
                _ if Some(m.name.as_str()) == leader => serde_json::json!(0),
                (Some(l), Some(p)) => serde_json::json!(l.saturating_sub(p)),
                _ => serde_json::json!("unknown"),
            };
            serde_json::json!({
                "name": m.name,
                "role": role,
                "state": if m.running { "running" } else { "stopped" },
                "api_url": m.api_url,
                "conn_url": m.conn_url,
                "timeline": m.timeline,
                "lag": lag,
                "tags": m.tags,
            })
        })
        .collect();
    (StatusCode::OK, Json(serde_json::json!({"scope": st.config.scope, "members": members}))).into_response()
}

/// Patroni's `/config`: the dynamic configuration in the store (`{}` when there is none).
async fn dynamic_config(State(st): Shared) -> Response {
    let Some(s) = st.fresh_state().await else { return unavailable() };
    let config = s.view.as_ref().and_then(|v| v.config.as_ref()).map(|c| c.value.clone()).unwrap_or_default();
    (StatusCode::OK, Json(config)).into_response()
}

async fn leader(State(st): Shared) -> Response {
    check(&st, |s, _| s.acting).await
}

async fn health(State(st): Shared) -> Response {
    check(&st, |s, _| s.resource.running).await
}

async fn liveness(State(st): Shared) -> Response {
    let idle = st.since_progress().await;
    let ttl = st.config.timing.ttl;
    check(&st, |s, _| {
        let limit = if s.acting { ttl } else { 2 * ttl };
        s.status.paused || idle <= limit
    })
    .await
}

async fn readiness(State(st): Shared) -> Response {
    let idle = st.since_progress().await;
    let ttl = st.config.timing.ttl;
    check(&st, |s, _| s.acting || (s.resource.running && idle <= ttl)).await
}

/// `?lag=` for `/replica`.
#[derive(Debug, Deserialize)]
pub struct LagQuery {
    lag: Option<String>,
}

/// Parses `1048576`, `16MB`, `512kB`, `1GB` into bytes.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

async fn replica(State(st): Shared, Query(q): Query<LagQuery>) -> Response {
    let max = match q.lag.as_deref().map(parse_bytes) {
        None => u64::MAX,
        Some(Some(n)) => n,
        Some(None) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "lag must be bytes, like 1048576 or 16MB"})),
            )
                .into_response();
        }
    };
    check(&st, |s, doc| {
        s.resource.running && s.resource.role == ResourceRole::Replica && !s.acting && doc.lag.unwrap_or(0) <= max
    })
    .await
}

async fn metrics(State(st): Shared) -> Response {
    let Some(s) = st.state().await else { return unavailable() };
    let cfg = &st.config;
    let labels = format!("scope=\"{}\",name=\"{}\"", cfg.scope, cfg.name);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}");
    };
    let m = &s.metrics;
    metric("leasehold_leader", "gauge", "1 while this member holds a valid lease.", u8::from(s.acting).to_string());
    metric(
        "leasehold_primary",
        "gauge",
        "1 while the resource reports the primary role.",
        u8::from(s.resource.role == ResourceRole::Primary).to_string(),
    );
    metric("leasehold_running", "gauge", "1 while the resource runs.", u8::from(s.resource.running).to_string());
    metric(
        "leasehold_epoch",
        "gauge",
        "Fencing epoch of the lease held, 0 if none.",
        s.status.epoch.map_or(0, |e| e.0).to_string(),
    );
    metric(
        "leasehold_lease_remaining_seconds",
        "gauge",
        "Time left on the lease belief.",
        s.lease_remaining.map_or(0.0, |d| d.as_secs_f64()).to_string(),
    );
    metric(
        "leasehold_renew_latency_seconds",
        "gauge",
        "Latency of the last successful renewal.",
        m.last_renew_latency.map_or(0.0, |d| d.as_secs_f64()).to_string(),
    );
    metric("leasehold_renewals_total", "counter", "Renewals won.", m.renewals.to_string());
    metric("leasehold_store_errors_total", "counter", "Store requests that failed.", m.store_errors.to_string());
    metric("leasehold_promotions_total", "counter", "Promotions confirmed by the resource.", m.promotions.to_string());
    metric("leasehold_demotions_total", "counter", "Demotions confirmed by the resource.", m.demotions.to_string());
    metric(
        "leasehold_failovers_total",
        "counter",
        "Changes of leader (one member to another) seen by this member since it started; the leader found at start-up is not one.",
        st.leader_changes.load(Ordering::Relaxed).to_string(),
    );
    metric("leasehold_paused", "gauge", "1 while the cluster is paused.", u8::from(s.status.paused).to_string());
    metric(
        "leasehold_position_bytes",
        "gauge",
        "The resource's position.",
        s.resource.position.unwrap_or(0).to_string(),
    );
    if let Some(p) = crate::metrics::ProcessStats::read() {
        metric("process_resident_memory_bytes", "gauge", "Resident memory of the daemon.", p.rss_bytes.to_string());
        metric(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the daemon (not its hooks' or PostgreSQL's).",
            format!("{:.2}", p.cpu_seconds),
        );
    }
    if let Some(view) = &s.view {
        let mut garbage = std::collections::BTreeMap::<&str, usize>::new();
        for p in &view.problems {
            *garbage.entry(p.what).or_default() += 1;
        }
        let name = "leasehold_store_garbage_records";
        let _ = writeln!(
            out,
            "# HELP {name} Records in the scope that do not decode, by kind (a leader one blocks elections: see ctl list).\n# TYPE {name} gauge"
        );
        // Every kind of record the store holds: the leader, members, each control key.
        let kinds = ["leader", "member"].into_iter().chain(leasehold::ControlKey::ALL.iter().map(|k| k.name()));
        for kind in kinds {
            let _ = writeln!(out, "{name}{{{labels},kind=\"{kind}\"}} {}", garbage.get(kind).copied().unwrap_or(0));
        }
    }
    let _ = writeln!(out, "# HELP leasehold_state The member's HA state.\n# TYPE leasehold_state gauge");
    for role in [NodeRole::Leader, NodeRole::Promoting, NodeRole::Demoting, NodeRole::Replica, NodeRole::Stopped] {
        let on = u8::from(s.status.role == role);
        let _ = writeln!(out, "leasehold_state{{{labels},state=\"{}\"}} {on}", state_name(role));
    }
    st.metrics.render(&mut out, &labels);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

fn authorize(st: &ApiState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(token) = &st.config.restapi.token else {
        return Err(Box::new(
            (
                StatusCode::FORBIDDEN,
                Json(serde_json::json!({"error": "write endpoints are disabled: set restapi.token"})),
            )
                .into_response(),
        ));
    };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Compare without an early exit so timing does not reveal a matching prefix.
    let ok = given.is_some_and(|g| {
        g.len() == token.len() && g.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if ok {
        Ok(())
    } else {
        Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(serde_json::json!({"error": "missing or wrong bearer token"})),
            )
                .into_response(),
        ))
    }
}

async fn admin(st: &ApiState, headers: &HeaderMap, request: AdminRequest) -> Response {
    if let Err(r) = authorize(st, headers) {
        return *r;
    }
    let guard = st.driver.read().await;
    let Some(driver) = guard.as_ref() else { return unavailable() };
    let (code, body) = match driver.admin(request.clone()).await {
        Ok(true) => (StatusCode::ACCEPTED, serde_json::json!({"accepted": request})),
        Ok(false) => (StatusCode::CONFLICT, serde_json::json!({"error": "lost a race with another writer; retry"})),
        Err(e) => {
            let code = match &e {
                AdminError::NotReady | AdminError::WallClockUnknown => StatusCode::SERVICE_UNAVAILABLE,
                AdminError::UnknownMember(_)
                | AdminError::CandidateIneligible(_)
                | AdminError::ScheduledInPast { .. }
                | AdminError::ScheduledWhilePaused => StatusCode::BAD_REQUEST,
                AdminError::NothingScheduled => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            let leader = match &e {
                AdminError::NotLeader { leader } => leader.clone(),
                _ => None,
            };
            (code, serde_json::json!({"error": e.to_string(), "leader": leader}))
        }
    };
    (code, Json(body)).into_response()
}

/// Body of `POST /switchover` and `POST /failover`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateBody {
    /// The member that should take over.
    #[serde(default)]
    pub candidate: Option<String>,
    /// Patroni's field: the leader the request is meant for. When given it must be this
    /// cluster's leader, so a request aimed at a leader that has since changed acts on nothing.
    #[serde(default)]
    pub leader: Option<String>,
    /// `POST /switchover` only: switch over at this time (RFC 3339 with an offset, like
    /// `2026-12-07T03:00+00:00`) instead of now (Patroni's field).
    /// A string; any other JSON type is refused naming the field.
    #[serde(default)]
    pub scheduled_at: Option<Value>,
}

/// A 400 naming the shape the endpoint expects; nothing is acted on.
fn bad_body(expected: &str, why: impl std::fmt::Display) -> Response {
    let msg = format!("the body must be {expected}: {why}");
    (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": msg}))).into_response()
}

/// Parses an admin body strictly: empty (where allowed) or exactly the expected JSON object.
/// Anything else (`[]`, `garbage`, unknown fields, wrong types) is refused.
fn parse_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    empty_ok: bool,
    expected: &str,
) -> Result<T, Box<Response>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if empty_ok { Ok(T::default()) } else { Err(Box::new(bad_body(expected, "it is empty"))) };
    }
    // Objects only: serde would also read a struct from an array (`[]` is every field's
    // default), which once turned a garbage body into a switchover.
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| Box::new(bad_body(expected, e)))?;
    if !value.is_object() {
        return Err(Box::new(bad_body(expected, "it is not a JSON object")));
    }
    serde_json::from_value(value).map_err(|e| Box::new(bad_body(expected, e)))
}

const CANDIDATE_SHAPE: &str = "empty or a JSON object {\"candidate\": \"<member>\", \"leader\": \"<member>\", \"scheduled_at\": \"<RFC 3339 time>\"} (all optional)";

/// A 400 for a time field that does not parse or lies in the past; nothing is acted on.
fn bad_time(field: &str, why: impl std::fmt::Display) -> Response {
    let msg = format!("{field}: {why}");
    (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": msg, "field": field}))).into_response()
}

/// Reads an optional schedule field: absent or `null` is "now"; else an RFC 3339 time with
/// an offset that lies in the future by this process's wall clock.
fn parse_schedule(field: &str, value: Option<&Value>) -> Result<Option<WallTime>, Box<Response>> {
    let text = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => text,
        Some(other) => {
            return Err(Box::new(bad_time(field, format!("must be a string with an RFC 3339 time, not {other}"))));
        }
    };
    let at = WallTime::parse(text).map_err(|e| Box::new(bad_time(field, e)))?;
    let now = wall_clock();
    if at <= now {
        return Err(Box::new(bad_time(field, format!("{at} is in the past (now: {now})"))));
    }
    Ok(Some(at))
}

/// This process's wall-clock time.
#[allow(clippy::disallowed_methods)] // schedules are wall-clock times
fn wall_clock() -> WallTime {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    WallTime::from_unix_millis(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}

async fn switchover(State(st): Shared, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = authorize(&st, &headers) {
        return *r;
    }
    let b: CandidateBody = match parse_body(&body, true, CANDIDATE_SHAPE) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let scheduled_at = match parse_schedule("scheduled_at", b.scheduled_at.as_ref()) {
        Ok(at) => at,
        Err(r) => return *r,
    };
    if let Err(r) = check_leader_field(&st, b.leader.as_deref()).await {
        return *r;
    }
    if let Some(c) = b.candidate.as_deref()
        && let Err(r) = check_candidate_health(&st, c).await
    {
        return *r;
    }
    admin(&st, &headers, AdminRequest::Switchover { candidate: b.candidate, scheduled_at }).await
}

/// Patroni's `DELETE /switchover`: cancels a scheduled switchover (any member may). 200
/// cancelled, 404 none is scheduled, 409 the failover key changed meanwhile.
async fn cancel_switchover(State(st): Shared, headers: HeaderMap) -> Response {
    let response = admin(&st, &headers, AdminRequest::CancelScheduledSwitchover).await;
    if response.status() == StatusCode::ACCEPTED {
        return (StatusCode::OK, Json(serde_json::json!({"deleted": "scheduled switchover"}))).into_response();
    }
    response
}

async fn failover(State(st): Shared, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = authorize(&st, &headers) {
        return *r;
    }
    let shape = "a JSON object {\"candidate\": \"<member>\"}";
    let b: CandidateBody = match parse_body(&body, false, shape) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if b.scheduled_at.as_ref().is_some_and(|v| !v.is_null()) {
        return bad_time("scheduled_at", "a failover cannot be scheduled; schedule a switchover");
    }
    let Some(candidate) = b.candidate else { return bad_body(shape, "\"candidate\" is missing") };
    if let Err(r) = check_leader_field(&st, b.leader.as_deref()).await {
        return *r;
    }
    if let Err(r) = check_candidate_health(&st, &candidate).await {
        return *r;
    }
    admin(&st, &headers, AdminRequest::Failover { candidate }).await
}

/// A named candidate is asked about itself before anything is written (Patroni does the
/// same): one that does not answer, does not run, or may not be promoted is refused at once
/// with 412 and the reason, instead of a 202 the leader would later drop. An unregistered
/// name is left to the node (400).
async fn check_candidate_health(st: &ApiState, candidate: &str) -> Result<(), Box<Response>> {
    use leasehold::driver::PeerProbe;
    let Some(s) = st.fresh_state().await else { return Err(Box::new(unavailable())) };
    let Some(member) = s.view.as_ref().and_then(|v| v.member(candidate)).cloned() else { return Ok(()) };
    let refuse = |why: String| {
        let msg = format!("{candidate} cannot take over: {why}");
        Box::new((StatusCode::PRECONDITION_FAILED, Json(serde_json::json!({"error": msg}))).into_response())
    };
    let probe = crate::probe::HttpProbe::new(Duration::from_secs(2), None, &st.config.peer_tls())
        .map_err(|e| refuse(e.to_string()))?;
    match probe.probe(&member).await {
        None => Err(refuse("it does not answer at its REST API".into())),
        Some(p) if !p.running => Err(refuse("its resource is not running".into())),
        Some(p) if !p.may_be_promoted() => {
            Err(refuse("it is tagged nofailover or its required watchdog failed".into()))
        }
        Some(_) => Ok(()),
    }
}

/// A request naming a `leader` that is not the current one is refused (409), as Patroni does.
async fn check_leader_field(st: &ApiState, leader: Option<&str>) -> Result<(), Box<Response>> {
    let Some(named) = leader else { return Ok(()) };
    let current = st.fresh_state().await.and_then(|s| s.status.leader.clone());
    if current.as_deref() == Some(named) {
        return Ok(());
    }
    let msg = format!("{named:?} is not the leader (the leader is {})", current.as_deref().unwrap_or("unknown"));
    Err(Box::new((StatusCode::CONFLICT, Json(serde_json::json!({"error": msg, "leader": current}))).into_response()))
}

/// `/pause` and `/resume` take no arguments: an empty body or `{}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArguments {}

async fn pause(State(st): Shared, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    no_arguments_then(&st, &headers, &body, AdminRequest::Pause).await
}

async fn resume(State(st): Shared, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    no_arguments_then(&st, &headers, &body, AdminRequest::Resume).await
}

async fn no_arguments_then(st: &ApiState, headers: &HeaderMap, body: &[u8], request: AdminRequest) -> Response {
    if let Err(r) = authorize(st, headers) {
        return *r;
    }
    if let Err(r) = parse_body::<NoArguments>(body, true, "empty or {}") {
        return *r;
    }
    admin(st, headers, request).await
}

/// Body of `POST /failsafe`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FailsafeBody {
    /// The leader asking to be confirmed.
    pub leader: String,
    /// The leader's epoch (informational).
    #[serde(default)]
    pub epoch: Option<u64>,
}

async fn failsafe(State(st): Shared, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = authorize(&st, &headers) {
        return *r;
    }
    let body: FailsafeBody = match parse_body(&body, false, "a JSON object {\"leader\": \"<member>\"}") {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let guard = st.driver.read().await;
    let Some(driver) = guard.as_ref() else { return unavailable() };
    if driver.failsafe_ping(&body.leader).await {
        (StatusCode::OK, "Accepted").into_response()
    } else {
        (StatusCode::CONFLICT, "Rejected").into_response()
    }
}

/// Which operator action a POST asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Restart,
    Reload,
    Reinitialize,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Restart => "restart",
            Action::Reload => "reload",
            Action::Reinitialize => "reinitialize",
        }
    }
}

/// Body of `POST /restart`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartBody {
    /// Restart at this time (RFC 3339 with an offset) instead of now (Patroni's field).
    #[serde(default)]
    schedule: Option<Value>,
}

async fn restart(State(st): Shared, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Err(r) = authorize(&st, &headers) {
        return *r;
    }
    let shape = "empty or a JSON object {\"schedule\": \"<RFC 3339 time>\"}";
    let b: RestartBody = match parse_body(&body, true, shape) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match parse_schedule("schedule", b.schedule.as_ref()) {
        Ok(None) => member_action(&st, &headers, &[], Action::Restart).await,
        Ok(Some(at)) => schedule_restart(&st, at),
        Err(r) => *r,
    }
}

/// Schedules the restart: a task waits for the time on the wall clock and then restarts as
/// `POST /restart` does (after any action running then). 202 scheduled, 409 one is already,
/// 501 the resource cannot restart.
fn schedule_restart(st: &Arc<ApiState>, at: WallTime) -> Response {
    let reply = |code: StatusCode, msg: String| (code, Json(serde_json::json!({"error": msg}))).into_response();
    let Some(actions) = st.actions.clone() else {
        return reply(StatusCode::NOT_IMPLEMENTED, "this member's resource cannot restart".into());
    };
    let mut slot = st.scheduled_restart.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((other, _)) = slot.as_ref() {
        return reply(StatusCode::CONFLICT, format!("another restart is already scheduled at {other}"));
    }
    let weak = Arc::downgrade(st);
    let late_limit = st.config.timing.loop_wait.mul_f64(1.5);
    #[allow(clippy::disallowed_methods)] // the daemon owns its tasks; it waits for the schedule
    let task = tokio::spawn(async move {
        // Sleep in steps, re-reading the wall clock, so a stepped system clock is followed.
        loop {
            let ahead = wall_clock().millis_until(at);
            if ahead <= 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(ahead.unsigned_abs().min(1000))).await;
        }
        let Some(st) = weak.upgrade() else { return };
        // From here on the restart is under way: a cancel finds nothing to cancel.
        let mine = st.scheduled_restart.lock().unwrap_or_else(|e| e.into_inner()).take_if(|(t, _)| *t == at);
        if mine.is_none() {
            return;
        }
        let late = Duration::from_millis(at.millis_until(wall_clock()).max(0).unsigned_abs());
        if late > late_limit {
            // The process was suspended past the time (Patroni drops such a schedule too).
            tracing::warn!(%at, late_secs = late.as_secs(), "dropping a scheduled restart whose time passed long ago");
            return;
        }
        tracing::info!(%at, "scheduled restart");
        let _one_at_a_time = st.action_lock.lock().await;
        #[allow(clippy::disallowed_methods)] // the action's duration goes into /metrics
        let started = std::time::Instant::now();
        let result = actions.restart().await;
        st.metrics.resource_action("restart", started.elapsed(), result.is_ok());
        match result {
            Ok(()) => tracing::info!(%at, "scheduled restart done"),
            Err(e) => tracing::warn!(%at, error = %e, "scheduled restart failed"),
        }
    });
    *slot = Some((at, task));
    (StatusCode::ACCEPTED, Json(serde_json::json!({"scheduled": "restart", "schedule": at}))).into_response()
}

/// Patroni's `DELETE /restart`: cancels this member's scheduled restart. 200 cancelled, 404
/// none is scheduled (or it has started).
async fn cancel_restart(State(st): Shared, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&st, &headers) {
        return *r;
    }
    let taken = st.scheduled_restart.lock().unwrap_or_else(|e| e.into_inner()).take();
    match taken {
        Some((at, task)) => {
            task.abort();
            (StatusCode::OK, Json(serde_json::json!({"deleted": "scheduled restart", "schedule": at}))).into_response()
        }
        None => (StatusCode::NOT_FOUND, Json(serde_json::json!({"error": "no restart is scheduled"}))).into_response(),
    }
}

impl ApiState {
    /// When this member's scheduled restart is due, if one is.
    pub fn scheduled_restart_at(&self) -> Option<WallTime> {
        self.scheduled_restart.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(at, _)| *at)
    }
}

async fn reload(State(st): Shared, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    member_action(&st, &headers, &body, Action::Reload).await
}

async fn reinitialize(State(st): Shared, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    member_action(&st, &headers, &body, Action::Reinitialize).await
}

/// Runs an operator action on the resource and answers once it is done: 200 done, 409
/// reinitialize on the leader (or with no leader to copy from) or another action running,
/// 501 the resource has no such action, 500 it failed (with its message).
#[allow(clippy::disallowed_methods)] // the action's duration goes into /metrics
async fn member_action(st: &ApiState, headers: &HeaderMap, body: &[u8], action: Action) -> Response {
    let reply = |code: StatusCode, msg: String| (code, Json(serde_json::json!({"error": msg}))).into_response();
    if let Err(r) = authorize(st, headers) {
        return *r;
    }
    if let Err(r) = parse_body::<NoArguments>(body, true, "empty or {}") {
        return *r;
    }
    let Some(actions) = st.actions.clone() else {
        return reply(StatusCode::NOT_IMPLEMENTED, format!("this member's resource cannot {}", action.name()));
    };
    let Ok(_one_at_a_time) = st.action_lock.try_lock() else {
        return reply(StatusCode::CONFLICT, "another restart, reload or reinitialize is running".into());
    };
    let started = std::time::Instant::now();
    let result = match action {
        Action::Restart => actions.restart().await,
        Action::Reload => actions.reload().await,
        Action::Reinitialize => {
            let Some(s) = st.fresh_state().await else { return unavailable() };
            let leader = s.view.as_ref().and_then(|v| v.leader.as_ref()).map(|l| l.record.clone());
            match leader {
                _ if s.acting || s.status.role == NodeRole::Leader => {
                    return reply(
                        StatusCode::CONFLICT,
                        format!("{} is the leader: only a replica is reinitialized", st.config.name),
                    );
                }
                Some(l) if l.member == st.config.name => {
                    return reply(
                        StatusCode::CONFLICT,
                        format!("{} holds the leader key: only a replica is reinitialized", st.config.name),
                    );
                }
                None => return reply(StatusCode::CONFLICT, "there is no leader to copy the data from".into()),
                Some(l) => actions.reinitialize(&l.member, l.conn_url.as_deref()).await,
            }
        }
    };
    st.metrics.resource_action(action.name(), started.elapsed(), result.is_ok());
    match result {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"done": action.name()}))).into_response(),
        Err(e) if e.starts_with("this member has no ") => reply(StatusCode::NOT_IMPLEMENTED, e),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{} failed: {e}", action.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_units() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("16MB"), Some(16 << 20));
        assert_eq!(parse_bytes("512kB"), Some(512 << 10));
        assert_eq!(parse_bytes("1 GB"), Some(1 << 30));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-1"), None);
        assert_eq!(parse_bytes("99999999999999999999GB"), None);
    }
}
