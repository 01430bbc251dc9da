//! The async driver (feature `tokio`): runs a [`Node`] against a [`Dcs`], a [`Resource`],
//! a [`PeerProbe`] and a [`Watchdog`].
//!
//! This is the only part of the crate that reads the clock and spawns tasks. It maps
//! `tokio::time::Instant` onto the node's [`Instant`], executes the node's actions, and feeds
//! the results back:
//!
//! * store requests run one at a time (the node issues them that way), each bounded by
//!   `retry_timeout`; a request that times out is reported as an unknown outcome;
//! * resource actions (watchdog, promote, demote, follow, sync standbys) run on one worker in
//!   the order the node emitted them, so "arm watchdog -> promote" and "demote -> release"
//!   keep their order;
//! * watches and peer probes run beside them and only wake the node.
//!
//! Many scopes in one process: spawn one driver per scope, each with a handle from the same
//! backend store client; they share its connection and lease.
#![allow(clippy::disallowed_methods)] // the driver is where the clock is read and tasks are spawned

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::TimingError;
use crate::dcs::{CasOutcome, Dcs, WatchEvent};
use crate::error::DcsError;
use crate::node::{
    Action, AdminError, AdminRequest, DemoteMode, Input, Node, NodeConfig, NodeEvent, NodeRole, NodeStatus,
};
use crate::node::{RequestId, ResourceStatus};
use crate::record::{ClusterView, Epoch};
use crate::rules::PeerReply;
use crate::time::Instant;

pub use crate::probe::{PeerProbe, RecordProbe};
pub use crate::resource::Resource;
pub use crate::watchdog::{LinuxWatchdog, NoWatchdog, Watchdog};

/// Counters for metrics endpoints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DriverMetrics {
    /// Renewals won.
    pub renewals: u64,
    /// Store requests that failed.
    pub store_errors: u64,
    /// Latency of the last won renewal.
    pub last_renew_latency: Option<Duration>,
    /// Promotions confirmed by the resource.
    pub promotions: u64,
    /// Demotions confirmed by the resource.
    pub demotions: u64,
}

/// What the driver publishes after every step.
#[derive(Clone, Debug)]
pub struct DriverState {
    /// The node's status.
    pub status: NodeStatus,
    /// Whether the resource may act as primary right now.
    pub acting: bool,
    /// Time left on our lease belief, if we hold the key.
    pub lease_remaining: Option<Duration>,
    /// The resource's last reported status.
    pub resource: ResourceStatus,
    /// The last loaded view.
    pub view: Option<Arc<ClusterView>>,
    /// Counters.
    pub metrics: DriverMetrics,
}

enum Command {
    Admin(AdminRequest, oneshot::Sender<Result<bool, AdminError>>),
    FailsafePing(String, oneshot::Sender<bool>),
    Shutdown,
}

enum ResourceCmd {
    Arm(Duration),
    KeepAlive,
    Disarm,
    Promote(Epoch),
    Demote(DemoteMode),
    Follow(Option<String>, Option<String>),
    SetSync(Vec<String>),
}

/// A running driver. Dropping the handle does not stop it; call [`DriverHandle::shutdown`]
/// (clean: demote, release) or [`DriverHandle::abort`] (as if the process died).
#[derive(Debug)]
pub struct DriverHandle {
    state: watch::Receiver<DriverState>,
    events: broadcast::Sender<NodeEvent>,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
    /// The tokio instant the node's [`Instant::ZERO`] stands for.
    origin: tokio::time::Instant,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl DriverHandle {
    /// The latest published state.
    pub fn state(&self) -> DriverState {
        self.state.borrow().clone()
    }

    /// The tokio instant that a node [`Instant`] of this driver stands for: the node counts
    /// time from the moment the driver was spawned, so a
    /// [`NodeStatus::lease_deadline`] becomes a timer deadline with this.
    pub fn tokio_instant(&self, at: Instant) -> tokio::time::Instant {
        self.origin + at.since_origin()
    }

    /// A receiver that sees every state change.
    pub fn watch_state(&self) -> watch::Receiver<DriverState> {
        self.state.clone()
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Submits an admin request; resolves when it was written (`true`) or lost a race
    /// (`false`).
    pub async fn admin(&self, request: AdminRequest) -> Result<bool, AdminError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Admin(request, tx)).await.map_err(|_| AdminError::NotReady)?;
        rx.await.map_err(|_| AdminError::NotReady)?
    }

    /// Failsafe mode: `leader` says its store is unreachable. Returns whether we accept it.
    pub async fn failsafe_ping(&self, leader: &str) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::FailsafePing(leader.to_string(), tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Clean shutdown: a leader demotes, then releases the key. Waits until done.
    pub async fn shutdown(self) {
        let _ = self.commands.send(Command::Shutdown).await;
        let _ = self.task.await;
    }

    /// Stops the loop at once, with no demotion and no release, as if the process was
    /// killed. The lease expires on the store's own schedule.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Whether the loop has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Starts a driver for one scope. Must be called inside a tokio runtime.
///
/// Errors: an invalid `cfg.timing`, or a `cfg.timing.ttl` other than the ttl the store client
/// behind `dcs` was built with ([`Dcs::configured_ttl`]; one `Timing` feeds both).
pub fn spawn(
    cfg: NodeConfig,
    dcs: Arc<dyn Dcs>,
    resource: Arc<dyn Resource>,
    probe: Arc<dyn PeerProbe>,
    watchdog: Box<dyn Watchdog>,
) -> Result<DriverHandle, TimingError> {
    cfg.timing.check_client_ttl(dcs.configured_ttl())?;
    let base = tokio::time::Instant::now();
    let node = Node::new(cfg, Instant::ZERO)?;
    let status = node.status();
    let (state_tx, state_rx) = watch::channel(DriverState {
        status,
        acting: false,
        lease_remaining: None,
        resource: ResourceStatus::default(),
        view: None,
        metrics: DriverMetrics::default(),
    });
    let (events, _) = broadcast::channel(256);
    let (commands, command_rx) = mpsc::channel(16);
    let (inputs_tx, inputs_rx) = mpsc::unbounded_channel();
    let (res_tx, res_rx) = mpsc::unbounded_channel();
    let worker = tokio::spawn(resource_worker(resource.clone(), watchdog, res_rx, inputs_tx.clone()));
    let driver = Driver {
        node,
        base,
        dcs,
        resource,
        probe,
        state: state_tx,
        events: events.clone(),
        inputs_tx,
        inputs_rx,
        renew_sent: None,
        res_tx,
        watch_task: None,
        admin_waiters: Vec::new(),
        metrics: DriverMetrics::default(),
        resource_status: ResourceStatus::default(),
        worker,
    };
    let task = tokio::spawn(driver.run(command_rx));
    Ok(DriverHandle { state: state_rx, events, commands, task, origin: base })
}

/// The system's wall-clock time (before 1970 reads as 1970).
fn wall_clock() -> crate::time::WallTime {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    crate::time::WallTime::from_unix_millis(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}

struct Driver {
    node: Node,
    base: tokio::time::Instant,
    dcs: Arc<dyn Dcs>,
    resource: Arc<dyn Resource>,
    probe: Arc<dyn PeerProbe>,
    state: watch::Sender<DriverState>,
    events: broadcast::Sender<NodeEvent>,
    inputs_tx: mpsc::UnboundedSender<Input>,
    inputs_rx: mpsc::UnboundedReceiver<Input>,
    /// The renewal in flight and when it was sent, for the renew latency metric.
    renew_sent: Option<(RequestId, tokio::time::Instant)>,
    res_tx: mpsc::UnboundedSender<ResourceCmd>,
    watch_task: Option<JoinHandle<()>>,
    admin_waiters: Vec<(RequestId, oneshot::Sender<Result<bool, AdminError>>)>,
    metrics: DriverMetrics,
    resource_status: ResourceStatus,
    worker: JoinHandle<()>,
}

impl Driver {
    fn now(&self) -> Instant {
        Instant::from_origin(tokio::time::Instant::now().saturating_duration_since(self.base))
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        // Once per loop, as Patroni: a status check may be a process (a hook) and costs CPU;
        // role changes refresh it at once (see the resource worker).
        let poll_every = self.node.config().timing.loop_wait.max(Duration::from_millis(100));
        let mut status_tick = tokio::time::interval(poll_every);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commands_open = true;
        loop {
            let now = self.now();
            // The wall clock, for scheduled switchovers; read each turn so a step of the
            // system clock (NTP) is followed.
            self.node.handle(Input::WallClock(wall_clock()), now);
            self.node.handle(Input::Timeout, now);
            self.dispatch(now);
            self.publish(now);
            if self.node.is_stopped() {
                break;
            }
            let wake = self.node.poll_timeout().map(|t| self.base + t.since_origin());
            let sleep = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(input) = self.inputs_rx.recv() => self.apply(input),
                cmd = commands.recv(), if commands_open => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => commands_open = false,
                },
                _ = sleep => {}
                _ = status_tick.tick() => self.poll_status(),
            }
        }
        if let Some(w) = self.watch_task.take() {
            w.abort();
        }
        // Let the resource worker finish what it was asked (a final demote).
        drop(self.res_tx);
        let _ = self.worker.await;
    }

    fn command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Admin(req, reply) => match self.node.handle_admin(req, now) {
                Ok(id) => self.admin_waiters.push((id, reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::FailsafePing(leader, reply) => {
                let _ = reply.send(self.node.handle_failsafe_ping(&leader, now));
            }
            Command::Shutdown => self.node.handle(Input::Shutdown, now),
        }
    }

    /// Counts what the metrics need, then hands the input to the node.
    fn apply(&mut self, input: Input) {
        let now = self.now();
        match &input {
            Input::Loaded { result, .. } => self.metrics.store_errors += u64::from(result.is_err()),
            Input::Acquired { result, .. } => self.metrics.store_errors += u64::from(result.is_err()),
            Input::Written { result, .. } => self.metrics.store_errors += u64::from(result.is_err()),
            Input::Renewed { id, result } => match result {
                Ok(CasOutcome::Won(_)) => {
                    self.metrics.renewals += 1;
                    if let Some((_, sent)) = self.renew_sent.take_if(|(sent_id, _)| sent_id == id) {
                        self.metrics.last_renew_latency = Some(sent.elapsed());
                    }
                }
                Err(_) => self.metrics.store_errors += 1,
                Ok(CasOutcome::Lost(_)) => {}
            },
            Input::Promoted(r) => self.metrics.promotions += u64::from(r.is_ok()),
            Input::Demoted(r) => self.metrics.demotions += u64::from(r.is_ok()),
            Input::ResourceStatus(status) => self.resource_status = status.clone(),
            _ => {}
        }
        self.node.handle(input, now);
    }

    fn poll_status(&self) {
        let resource = self.resource.clone();
        let tx = self.inputs_tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(Input::ResourceStatus(resource.status().await));
        });
    }

    fn dispatch(&mut self, _now: Instant) {
        while let Some(action) = self.node.poll_action() {
            self.execute(action);
        }
        while let Some(ev) = self.node.poll_event() {
            if let NodeEvent::AdminDone { id, ok } = &ev
                && let Some(pos) = self.admin_waiters.iter().position(|(w, _)| w == id)
            {
                let (_, reply) = self.admin_waiters.swap_remove(pos);
                let _ = reply.send(Ok(*ok));
            }
            tracing::debug!(event = ?ev, "node event");
            let _ = self.events.send(ev);
        }
    }

    fn execute(&mut self, action: Action) {
        let timeout = self.node.config().timing.retry_timeout;
        let dcs = self.dcs.clone();
        let tx = self.inputs_tx.clone();
        // Store calls are bounded: no answer within retry_timeout is an unknown outcome.
        macro_rules! store {
            ($call:expr, $wrap:expr) => {{
                tokio::spawn(async move {
                    let r = match tokio::time::timeout(timeout, $call).await {
                        Ok(r) => r,
                        Err(_) => Err(DcsError::unknown(format!("no answer within {timeout:?}"))),
                    };
                    let _ = tx.send($wrap(r));
                });
            }};
        }
        match action {
            Action::Load { id } => {
                store!(async move { dcs.load().await }, |r: Result<_, _>| Input::Loaded { id, result: r.map(Arc::new) })
            }
            Action::Acquire { id, record } => {
                store!(async move { dcs.acquire(&record).await }, |result| Input::Acquired { id, result })
            }
            Action::Renew { id, lease } => {
                self.renew_sent = Some((id, tokio::time::Instant::now()));
                store!(async move { dcs.renew(&lease).await }, |result| Input::Renewed { id, result })
            }
            Action::Release { id, lease } => {
                store!(async move { dcs.release(&lease).await }, |result| Input::Released { id, result })
            }
            Action::PublishMember { id, record } => {
                store!(async move { dcs.publish_member(&record).await.map(|()| true) }, |result| Input::Written {
                    id,
                    result
                })
            }
            Action::WriteControl { id, key, expect, value } => {
                store!(async move { dcs.write_control(key, expect, &value).await.map(|o| o.is_won()) }, |result| {
                    Input::Written { id, result }
                })
            }
            Action::DeleteControl { id, key, expect } => {
                store!(async move { dcs.delete_control(key, &expect).await.map(|o| o.is_won()) }, |result| {
                    Input::Written { id, result }
                })
            }
            Action::Watch { after } => {
                if let Some(t) = self.watch_task.take() {
                    t.abort();
                }
                self.watch_task = Some(tokio::spawn(async move {
                    loop {
                        match dcs.watch(after.as_ref(), Duration::from_secs(30)).await {
                            Ok(WatchEvent::Timeout) => continue,
                            Ok(ev) => {
                                let _ = tx.send(Input::Watched(ev));
                                return;
                            }
                            // The loop's timer is the backstop; back off and keep watching.
                            Err(e) => {
                                tracing::debug!(error = %e, "watch failed");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                }));
            }
            Action::ProbePeers { id, peers } => {
                let probe = self.probe.clone();
                let resource = self.resource.clone();
                // The node drops a probe answered after retry_timeout: the peers get half of
                // it and our own status read a quarter, so one silent peer (a paused daemon
                // whose kernel still accepts connections) cannot make every election late.
                let (peer_budget, status_budget) = (timeout / 2, timeout / 4);
                tokio::spawn(async move {
                    let replies = futures::future::join_all(peers.into_iter().map(|p| {
                        let probe = probe.clone();
                        async move {
                            match tokio::time::timeout(peer_budget, probe.probe(&p)).await {
                                Ok(Some(status)) => PeerReply::Reachable(status),
                                _ => PeerReply::Unreachable { name: p.name },
                            }
                        }
                    }))
                    .await;
                    // Our own position is read after the peers answered, so the rules never
                    // compare a status up to a loop old with the peers' fresh ones: with an old
                    // primary still streaming, two candidates each saw the other ahead and both
                    // refused (issue 15). Read last, ours is the fresher, and one of them races.
                    if let Ok(status) = tokio::time::timeout(status_budget, resource.status()).await {
                        let _ = tx.send(Input::ResourceStatus(status));
                    }
                    let _ = tx.send(Input::PeersAnswered { id, replies });
                });
            }
            Action::FailsafeCheck { id, peers, epoch } => {
                let probe = self.probe.clone();
                let me = self.node.config().name.clone();
                tokio::spawn(async move {
                    let answers = futures::future::join_all(peers.into_iter().map(|p| {
                        let probe = probe.clone();
                        let me = me.clone();
                        async move {
                            tokio::time::timeout(timeout, probe.failsafe_confirm(&p, &me, epoch)).await.unwrap_or(false)
                        }
                    }))
                    .await;
                    let _ = tx.send(Input::FailsafeAnswered { id, all_confirmed: answers.iter().all(|ok| *ok) });
                });
            }
            Action::ArmWatchdog { timeout } => self.resource_cmd(ResourceCmd::Arm(timeout)),
            Action::KeepAliveWatchdog => self.resource_cmd(ResourceCmd::KeepAlive),
            Action::DisarmWatchdog => self.resource_cmd(ResourceCmd::Disarm),
            Action::Promote { epoch } => self.resource_cmd(ResourceCmd::Promote(epoch)),
            Action::Demote { mode } => self.resource_cmd(ResourceCmd::Demote(mode)),
            Action::Follow { leader, conn_url } => self.resource_cmd(ResourceCmd::Follow(leader, conn_url)),
            Action::SetSyncStandbys { names } => self.resource_cmd(ResourceCmd::SetSync(names)),
        }
    }

    fn resource_cmd(&self, cmd: ResourceCmd) {
        let _ = self.res_tx.send(cmd);
    }

    fn publish(&mut self, now: Instant) {
        let status = self.node.status();
        let lease_remaining = status.lease_deadline.map(|d| d.saturating_since(now));
        let acting = self.node.is_acting_leader(now);
        let view = self.node.shared_view();
        let changed = {
            let cur = self.state.borrow();
            cur.status != status
                || cur.acting != acting
                || cur.metrics != self.metrics
                || cur.resource != self.resource_status
                || !match (&cur.view, &view) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (a, b) => a.is_none() && b.is_none(),
                }
        };
        if changed || status.role == NodeRole::Leader {
            let _ = self.state.send(DriverState {
                status,
                acting,
                lease_remaining,
                resource: self.resource_status.clone(),
                view,
                metrics: self.metrics.clone(),
            });
        }
    }
}

async fn resource_worker(
    resource: Arc<dyn Resource>,
    mut watchdog: Box<dyn Watchdog>,
    mut rx: mpsc::UnboundedReceiver<ResourceCmd>,
    tx: mpsc::UnboundedSender<Input>,
) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            ResourceCmd::Arm(timeout) => {
                if let Err(e) = watchdog.arm(timeout) {
                    tracing::error!(error = %e, "cannot arm the watchdog");
                    let _ = tx.send(Input::WatchdogFailed);
                }
            }
            ResourceCmd::KeepAlive => {
                if let Err(e) = watchdog.keepalive() {
                    tracing::error!(error = %e, "watchdog keepalive failed");
                }
            }
            ResourceCmd::Disarm => {
                if let Err(e) = watchdog.disarm() {
                    tracing::error!(error = %e, "cannot disarm the watchdog");
                }
            }
            // A role change is followed by a fresh status at once, so that peers probing this
            // member (and the node's own rules) do not see the old role for a polling interval.
            ResourceCmd::Promote(epoch) => {
                let r = resource.promote(epoch).await;
                let _ = tx.send(Input::Promoted(r));
                let _ = tx.send(Input::ResourceStatus(resource.status().await));
            }
            ResourceCmd::Demote(mode) => {
                let r = resource.demote(mode).await;
                let _ = tx.send(Input::Demoted(r));
                let _ = tx.send(Input::ResourceStatus(resource.status().await));
            }
            ResourceCmd::Follow(leader, url) => {
                if let Err(e) = resource.follow(leader.as_deref(), url.as_deref()).await {
                    tracing::warn!(error = %e, "follow failed; asking again at the next read");
                    let _ = tx.send(Input::FollowFailed);
                }
            }
            ResourceCmd::SetSync(names) => {
                if let Err(e) = resource.set_sync_standbys(&names).await {
                    tracing::warn!(error = %e, "could not set synchronous standbys");
                }
            }
        }
    }
}
