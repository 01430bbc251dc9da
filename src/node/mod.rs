//! The HA state machine, sans-IO.
//!
//! ```text
//!   timer, store answers, watch events,        +--------+        store requests, watchdog,
//!   resource answers and status, peer      ---> |  Node  | --->   promote(epoch) / demote(mode),
//!   replies: handle(Input, now)                +--------+        follow: poll_action()
//!                                                  |
//!                                 poll_timeout(): when to call handle(Input::Timeout, now)
//! ```
//!
//! [`Node`] reads no clock and does no I/O: every input carries `now`, every output is an
//! [`Action`] for the driver (the tokio driver, the simulator, or a test). That is what lets the
//! simulator run it under virtual time and replay a failure from a seed.
//!
//! The safety rules of DESIGN.md it enforces:
//! 1. the belief of leadership ends at `renew sent + ttl * (1 - drift) - safety_margin`
//!    ([`Timing::belief_for`]); when renewal fails, demotion starts at once and at the latest
//!    at that instant;
//! 2. only a won `acquire` / `renew` extends leadership; a read can only take it away;
//! 3. an acquire with an unknown outcome is followed by a re-read, and the node promotes only
//!    after the read shows its own token *and* a renewal succeeds;
//! 4. write key -> arm watchdog -> promote(epoch); demote -> confirmed -> release.
//!
//! Inside, the node's state is one enum (`state.rs`: follower, holding the key, promoting,
//! leader, failsafe re-acquiring, demoting) whose variants own the key and its belief, and
//! every deadline it waits on sits in one table (`timers.rs`), whose earliest entry is
//! [`Node::poll_timeout`].

mod action;
mod input;
mod known;
mod state;
mod timers;

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

pub use action::{Action, DemoteMode, RequestId};
pub use input::{AdminError, AdminRequest, Input, NodeEvent, ResourceStatus};

use crate::config::Timing;
use crate::dcs::{CasOutcome, Expect, Lease};
use crate::error::DcsError;
use crate::record::{
    ClusterView, ConfigRecord, ControlKey, Epoch, FailoverRecord, HistoryEntry, HistoryRecord, LeaderRecord,
    LeaderView, MemberRecord, Record, ResourceRole, StatusRecord, SyncRecord, Tags, Version, Versioned,
};
use crate::rules::{self, ElectionFacts, PeerReply, Reason, Verdict, WatchdogHealth};
use crate::time::{Instant, WallTime};
use known::Known;
use state::{Held, State};
use timers::{Timer, Timers};

/// How long, in ttls, a member absent from the store stays on the roster an election asks.
/// Asking a member that is really gone costs at most one probe timeout per election; missing
/// one that is alive and ahead loses what only it had.
pub const ROSTER_MEMORY_TTLS: u32 = 10;

/// The promotion reason of a failsafe re-acquisition: the same primary under a new epoch.
const REACQUIRED: &str = "failsafe re-acquisition";

/// Watchdog policy (Patroni's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchdogMode {
    /// No watchdog.
    #[default]
    Off,
    /// Use it if it can be armed; lead without it otherwise.
    Automatic,
    /// Never lead without a working watchdog.
    Required,
}

/// The standby name that stands for "any standby" in [`Action::SetSyncStandbys`]
/// (PostgreSQL's `synchronous_standby_names = '*'`): in strict synchronous mode with no
/// eligible standby the leader asks for `["*"]`, and the resource must then acknowledge no
/// write until a standby has it. It is never published in the sync key, so whoever acknowledges
/// under it, only the leader stays promotable.
pub const ANY_STANDBY: &str = "*";

/// Static configuration of one member.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// Member name, unique in the scope.
    pub name: String,
    /// Differs on every process start of this member (a random number or a start time from
    /// the driver); part of the leader token so two incarnations of one member are told
    /// apart. Tokens also carry the member name, so members may share incarnation numbers.
    pub incarnation: u64,
    /// Timing, validated by [`Node::new`].
    pub timing: Timing,
    /// Election tags.
    pub tags: Tags,
    /// Our REST API, published for peers.
    pub api_url: Option<String>,
    /// Where replicas reach our resource.
    pub conn_url: Option<String>,
    /// Watchdog policy.
    pub watchdog: WatchdogMode,
    /// Synchronous mode (the `config` key can also switch it on).
    pub synchronous_mode: bool,
    /// Synchronous mode: how many synchronous standbys the leader keeps (Patroni's
    /// `synchronous_node_count`); fewer while fewer replicas are eligible. At least 1 by its
    /// type. The resource must acknowledge a write only once every standby it was given has it.
    pub synchronous_node_count: NonZeroUsize,
    /// Synchronous mode: with no eligible standby, commits wait instead of running unprotected
    /// (Patroni's `synchronous_mode_strict`): the leader then asks the resource for
    /// [`ANY_STANDBY`], also as soon as its promotion is confirmed. The resource should start
    /// a promotion in strict mode already waiting (the daemon's PostgreSQL resource writes
    /// `*` before promoting), or writes in between go unprotected.
    pub synchronous_mode_strict: bool,
    /// Failsafe mode (the `config` key can also switch it on).
    pub failsafe_mode: bool,
}

impl NodeConfig {
    /// A configuration with defaults for everything but the name.
    pub fn new(name: impl Into<String>, incarnation: u64) -> Self {
        NodeConfig {
            name: name.into(),
            incarnation,
            timing: Timing::default(),
            tags: Tags::default(),
            api_url: None,
            conn_url: None,
            watchdog: WatchdogMode::Off,
            synchronous_mode: false,
            synchronous_node_count: NonZeroUsize::MIN,
            synchronous_mode_strict: false,
            failsafe_mode: false,
        }
    }
}

/// The node's role as seen from outside (REST `/status`, metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// Holds the key, resource primary.
    Leader,
    /// Holds the key, promotion in progress.
    Promoting,
    /// Stepping down.
    Demoting,
    /// Following a leader or waiting for one.
    Replica,
    /// Stopped after a fatal error.
    Stopped,
}

/// A snapshot of the node for status endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeStatus {
    /// Role.
    pub role: NodeRole,
    /// Epoch of the lease we hold, if any.
    pub epoch: Option<Epoch>,
    /// Until when we may act as leader, if we hold the key.
    pub lease_deadline: Option<Instant>,
    /// The current leader's name, as last loaded.
    pub leader: Option<String>,
    /// The cluster is paused.
    pub paused: bool,
    /// The last reason we did not race for a free key.
    pub last_refusal: Option<Reason>,
    /// When the last successful load completed.
    pub last_load: Option<Instant>,
}

#[derive(Clone, Debug, PartialEq)]
enum StoreOp {
    Load,
    Acquire(LeaderRecord),
    Renew,
    Release(Lease),
    Publish(MemberRecord),
    Write { key: ControlKey, expect: Expect, value: Vec<u8>, then: AfterWrite },
    Delete { key: ControlKey, expect: Version, then: AfterWrite },
}

/// What to do when a control write completes.
#[derive(Clone, Debug, PartialEq)]
enum AfterWrite {
    Nothing,
    /// The sync key now names only us: promotion may go ahead.
    PromoteAfterSync,
    /// The sync key was shrunk: reconfigure the resource's standbys.
    SetStandbys(Vec<String>),
    Admin(RequestId),
    Status(u64),
}

#[derive(Clone, Debug)]
struct InFlight {
    id: RequestId,
    op: StoreOp,
    sent_at: Instant,
}

#[derive(Clone, Debug, PartialEq)]
enum ProbePurpose {
    Election,
    Switchover { candidate: Option<String> },
}

#[derive(Clone, Debug)]
struct Probe {
    id: RequestId,
    purpose: ProbePurpose,
}

/// The HA state machine of one member in one scope. See the [module docs](self).
///
/// # Methods
///
/// * Inputs (each takes `now`): [`handle`](Node::handle) with an [`Input`] for every answer
///   to an [`Action`], every timer and every watch event, and [`Input::Shutdown`];
///   [`handle_admin`](Node::handle_admin) and [`handle_failsafe_ping`](Node::handle_failsafe_ping)
///   for requests that need an answer at once.
/// * Outputs: [`poll_action`](Node::poll_action) (what the driver must do),
///   [`poll_event`](Node::poll_event) (what happened, for logs and users) and
///   [`poll_timeout`](Node::poll_timeout) (when to wake the node).
/// * Queries, which change nothing: [`status`](Node::status),
///   [`is_acting_leader`](Node::is_acting_leader), [`view`](Node::view),
///   [`shared_view`](Node::shared_view), [`config`](Node::config),
///   [`is_stopped`](Node::is_stopped).
///
/// # Calling contract
///
/// * A new node does nothing until its first timeout, which [`poll_timeout`](Node::poll_timeout)
///   puts at the `now` it was created with.
/// * After every input: drain [`poll_action`](Node::poll_action) and carry each action out
///   in order, answering it later with its [`Input`]; drain [`poll_event`](Node::poll_event);
///   then re-read [`poll_timeout`](Node::poll_timeout), which any input may move earlier or
///   later, and call `handle(Input::Timeout, now)` once it has passed. A store request, a
///   probe or a failsafe check left unanswered fails at its deadline (a store request as an
///   unknown outcome, rule 3).
/// * Waking the node early is harmless; waking it late is not: the belief deadline is one of
///   its timeouts, and a leader must have started demoting by then (rule 1).
/// * `now` comes from one monotonic clock and never goes backwards between calls.
/// * [`poll_timeout`](Node::poll_timeout) is `None` only once the node has stopped. A
///   stopped node takes no new work, but still answers a demotion it asked for: keep
///   draining actions until the resource has stepped down.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,

    // The state and the deadlines it waits on.
    /// Whether we hold the key and what the resource was asked to be, with what only that
    /// state has.
    state: State,
    /// Every deadline the node waits on; [`poll_timeout`](Node::poll_timeout) is its
    /// earliest.
    timers: Timers,
    /// When the current cycle started (renewal retries count from it).
    cycle_start: Instant,
    /// [`Input::Shutdown`] arrived: finish stepping down, then stop.
    shutting_down: bool,
    /// Stopped after a shutdown or a fatal error; no new store requests.
    stopped: bool,

    // Outputs and requests in flight.
    actions: VecDeque<Action>,
    events: VecDeque<NodeEvent>,
    next_id: u64,
    /// Store requests waiting for the one in flight; they go out one at a time.
    queue: VecDeque<StoreOp>,
    /// The store request in flight (its deadline is [`Timer::Request`]).
    in_flight: Option<InFlight>,
    /// The peer probe in flight (its deadline is [`Timer::Probe`]). Not part of the state: a
    /// switchover probe outlives the demotion it may cause, and blocks an election until it
    /// is answered or times out.
    probe: Option<Probe>,
    /// The failsafe check in flight (its deadline is [`Timer::FailsafeCheck`]).
    failsafe_check: Option<RequestId>,

    // What the node knows of the cluster and of its resource.
    /// The last view read; shared, so the node's own copies and a caller that hands the same
    /// view to several nodes (the simulator) clone no records.
    view: Option<Arc<ClusterView>>,
    last_load: Option<Instant>,
    /// A watch fired since the last load.
    view_stale: bool,
    /// The next load belongs to a regular cycle: publish our member record after it.
    regular_load: bool,
    /// The revision the last [`Action::Watch`] watches from; `Unknown` after a watch fired.
    watched: Known<Option<Version>>,
    /// The leader last reported in [`NodeEvent::LeaderChanged`].
    last_leader: Known<Option<String>>,
    /// The leader key as last read (epoch, version) and when a read first showed it so.
    /// Unchanged for a ttl, a Kubernetes backend reports it absent; no store event marks that
    /// moment, so a follower reads then (`arm_expiry_read`).
    leader_seen: Option<(Epoch, Version, Instant)>,
    /// Every member seen registered in a loaded view within [`ROSTER_MEMORY_TTLS`] ttls, with
    /// when it was last seen. An election asks these too: a member whose record expired
    /// because it lost the store may still run, answer peers, and be ahead of us.
    roster: BTreeMap<String, (MemberRecord, Instant)>,
    /// Our member record as last written.
    published: Option<MemberRecord>,
    resource: ResourceStatus,
    /// A status report has arrived since start. Until then the resource may still run as a
    /// primary from an earlier life, and following anyone would fail (or worse).
    resource_known: bool,
    /// The leader the resource was last told to follow; `Unknown` when it must be told again.
    followed: Known<Option<String>>,
    watchdog: WatchdogHealth,
    watchdog_armed: bool,

    // Racing for the key. An acquire in flight is not a state of its own: its answer can
    // arrive in any state (a node that found its resource primary demotes meanwhile).
    /// Acquisitions tried so far; part of the next token.
    attempts: u64,
    /// Token of an acquire in flight or whose outcome is unknown.
    pending_token: Option<String>,
    /// The last reason we did not race for a free key.
    last_refusal: Option<Reason>,
    /// After a failed pre-promote: no racing before this instant.
    backoff_until: Option<Instant>,
    /// Failsafe mode: a leader whose store is unreachable pinged us; no racing before this
    /// instant.
    failsafe_leader_until: Option<Instant>,

    // Keeping the key. These outlive the state that set them (see `lose_lease`, which clears
    // them), so they are not part of it.
    /// The epoch whose promotion waits for our write of the sync key.
    promote_waits_for_sync: Option<Epoch>,
    /// When renewals began to fail.
    renew_failing_since: Option<Instant>,
    /// Failsafe mode: when every member last confirmed us, since our renewals began to fail.
    failsafe_confirmed: Option<Instant>,
    /// Synchronous mode: the standbys the resource was last asked to wait for.
    resource_standbys: Vec<String>,
    /// The last wall-clock reading ([`Input::WallClock`]) and the instant it was taken at.
    wall: Option<(Instant, WallTime)>,
}

/// Where a scheduled switchover stands for the leader it is aimed at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Schedule {
    /// Not scheduled, or its time has come: act now.
    Due,
    /// Its time comes in this long.
    Later(Duration),
    /// Its time passed this long ago, more than 1.5 loop_wait (Patroni's bound): the leader
    /// was not running then, and acting now would surprise the operator. Dropped.
    Stale(Duration),
    /// No wall-clock time given yet, or the cluster is paused: wait.
    Wait,
}

impl Node {
    /// A node that starts its first cycle at `now`. Fails if the timing is invalid.
    pub fn new(cfg: NodeConfig, now: Instant) -> Result<Self, crate::config::TimingError> {
        cfg.timing.validate()?;
        let watchdog = if cfg.watchdog == WatchdogMode::Off { WatchdogHealth::Off } else { WatchdogHealth::Working };
        let mut timers = Timers::default();
        timers.set(Timer::Cycle, now);
        Ok(Node {
            cfg,
            next_id: 0,
            attempts: 0,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            queue: VecDeque::new(),
            in_flight: None,
            probe: None,
            failsafe_check: None,
            view: None,
            last_load: None,
            watched: Known::Unknown,
            resource: ResourceStatus::default(),
            resource_known: false,
            state: State::Follower,
            pending_token: None,
            promote_waits_for_sync: None,
            followed: Known::Unknown,
            published: None,
            roster: BTreeMap::new(),
            resource_standbys: Vec::new(),
            wall: None,
            cycle_start: now,
            timers,
            renew_failing_since: None,
            backoff_until: None,
            failsafe_leader_until: None,
            failsafe_confirmed: None,
            watchdog,
            watchdog_armed: false,
            last_refusal: None,
            last_leader: Known::Unknown,
            leader_seen: None,
            view_stale: true,
            regular_load: false,
            shutting_down: false,
            stopped: false,
        })
    }

    // === inputs ===

    /// The one entry point for inputs: store answers, resource answers, timers, watch events.
    /// After it, drain [`poll_action`](Self::poll_action) and [`poll_event`](Self::poll_event)
    /// and re-read [`poll_timeout`](Self::poll_timeout). Requests that answer at once have
    /// methods of their own: [`handle_admin`](Self::handle_admin) and
    /// [`handle_failsafe_ping`](Self::handle_failsafe_ping).
    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Timeout => self.handle_timeout(now),
            Input::Loaded { id, result } => self.handle_load_shared(id, result, now),
            Input::Acquired { id, result } => self.handle_acquire(id, result, now),
            Input::Renewed { id, result } => self.handle_renew(id, result, now),
            Input::Released { id, result } => self.handle_release(id, result, now),
            Input::Written { id, result } => self.handle_write(id, result, now),
            Input::Watched(event) => self.handle_watch_event(event, now),
            Input::PeersAnswered { id, replies } => self.handle_peer_replies(id, replies, now),
            Input::FailsafeAnswered { id, all_confirmed } => self.handle_failsafe_result(id, all_confirmed, now),
            Input::Promoted(result) => self.handle_promoted(result, now),
            Input::Demoted(result) => self.handle_demoted(result, now),
            Input::FollowFailed => self.handle_follow_failed(now),
            Input::WatchdogFailed => self.handle_watchdog_failed(now),
            Input::ResourceStatus(status) => self.handle_resource_status(status, now),
            Input::Shutdown => self.handle_shutdown(now),
            Input::WallClock(wall) => self.wall = Some((now, wall)),
        }
    }

    /// An operator's request. Writes the matching control key; completion is reported as
    /// [`NodeEvent::AdminDone`] with the returned id.
    pub fn handle_admin(&mut self, request: AdminRequest, now: Instant) -> Result<RequestId, AdminError> {
        let view = self.view.as_ref().ok_or(AdminError::NotReady)?;
        let candidate = match &request {
            AdminRequest::Switchover { .. } if self.state.held().is_none() => {
                return Err(AdminError::NotLeader { leader: view.leader.as_ref().map(|l| l.record.member.clone()) });
            }
            AdminRequest::Switchover { candidate: Some(c), .. } | AdminRequest::Failover { candidate: c } => {
                Some(c.clone())
            }
            _ => None,
        };
        if let Some(c) = candidate {
            self.check_candidate_fresh(&c, now)?;
        }
        let view = self.view.as_ref().ok_or(AdminError::NotReady)?;
        let (key, expect, value) = match request {
            AdminRequest::Switchover { candidate, scheduled_at } => {
                if self.state.held().is_none() {
                    return Err(AdminError::NotLeader {
                        leader: view.leader.as_ref().map(|l| l.record.member.clone()),
                    });
                }
                if view.failover.is_some() {
                    return Err(AdminError::AlreadyPending);
                }
                if let Some(at) = scheduled_at {
                    let wall = self.wall_now(now).ok_or(AdminError::WallClockUnknown)?;
                    if at <= wall {
                        return Err(AdminError::ScheduledInPast { at, now: wall });
                    }
                    if self.paused() {
                        return Err(AdminError::ScheduledWhilePaused);
                    }
                }
                let rec = FailoverRecord { leader: Some(self.cfg.name.clone()), candidate, scheduled_at };
                (ControlKey::Failover, expect_for(view, ControlKey::Failover), rec.encode())
            }
            AdminRequest::CancelScheduledSwitchover => {
                let Some(expect) =
                    view.failover.as_ref().filter(|f| f.value.scheduled_at.is_some()).map(|f| f.version.clone())
                else {
                    return Err(AdminError::NothingScheduled);
                };
                let id = self.next_request_id();
                let then = AfterWrite::Admin(id);
                self.queue.push_back(StoreOp::Delete { key: ControlKey::Failover, expect, then });
                self.pump(now);
                return Ok(id);
            }
            AdminRequest::Failover { candidate } => {
                if view.failover.is_some() {
                    return Err(AdminError::AlreadyPending);
                }
                let rec = FailoverRecord { leader: None, candidate: Some(candidate), scheduled_at: None };
                (ControlKey::Failover, expect_for(view, ControlKey::Failover), rec.encode())
            }
            AdminRequest::Pause | AdminRequest::Resume => {
                let pause = request == AdminRequest::Pause;
                let mut cfg = view.config.as_ref().map(|c| c.value.clone()).unwrap_or_default();
                if cfg.pause == pause {
                    return Err(AdminError::NoChange(if pause { "paused" } else { "running" }));
                }
                cfg.pause = pause;
                (ControlKey::Config, expect_for(view, ControlKey::Config), cfg.encode())
            }
        };
        let id = self.next_request_id();
        self.queue.push_back(StoreOp::Write { key, expect, value, then: AfterWrite::Admin(id) });
        self.pump(now);
        Ok(id)
    }

    /// Failsafe mode: the leader `leader` pinged us while its store is unreachable. Returns
    /// whether we accept it; if so we do not race for the key for one ttl.
    pub fn handle_failsafe_ping(&mut self, leader: &str, now: Instant) -> bool {
        if !self.failsafe_on() || self.state.held().is_some() {
            return false;
        }
        if let Some(v) = &self.view
            && v.leader.as_ref().is_some_and(|l| l.record.member != leader)
        {
            return false;
        }
        self.failsafe_leader_until =
            Some(now + crate::time::stretch_by_drift(self.cfg.timing.ttl, self.cfg.timing.max_drift_ppm));
        true
    }

    // === outputs ===

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// When to call [`handle`](Node::handle) with [`Input::Timeout`] next: the earliest of
    /// the next cycle, the belief deadline, and the deadlines of what is in flight. `None`
    /// only once stopped.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        self.debug_assert_timers_in_step();
        // The cycle timer is always armed, so a running node always has a next deadline.
        self.timers.next()
    }

    // === queries ===

    /// A snapshot for status endpoints.
    pub fn status(&self) -> NodeStatus {
        let role = if self.stopped { NodeRole::Stopped } else { self.state.role() };
        NodeStatus {
            role,
            epoch: self.state.held().map(|h| h.lease.epoch),
            lease_deadline: self.state.held().map(|h| h.acting_until),
            leader: self.view.as_ref().and_then(|v| v.leader.as_ref()).map(|l| l.record.member.clone()),
            paused: self.paused(),
            last_refusal: self.last_refusal.clone(),
            last_load: self.last_load,
        }
    }

    /// Whether the resource may accept writes as primary right now: it is confirmed primary
    /// and our belief of holding the key has not run out.
    pub fn is_acting_leader(&self, now: Instant) -> bool {
        self.state.acting_epoch().is_some() && self.state.belief().is_some_and(|until| now < until)
    }

    /// The last loaded view.
    pub fn view(&self) -> Option<&ClusterView> {
        self.view.as_deref()
    }

    /// The last cluster view, shared: no copy is made (the node never changes a view it took).
    pub fn shared_view(&self) -> Option<Arc<ClusterView>> {
        self.view.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Whether the node has stopped (after [`Input::Shutdown`] completed, or a fatal
    /// error). A stopped node sends no more store requests and has no timeout; it still
    /// sees a demotion it asked for through ([`Input::Demoted`]).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    // === input handlers ===

    /// Clean shutdown: a leader demotes gracefully and releases the key once the resource
    /// confirms (rule 4); anyone else stops at once. No new cycles start.
    fn handle_shutdown(&mut self, now: Instant) {
        if self.stopped || self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.end_probe();
        self.queue.retain(|op| matches!(op, StoreOp::Renew));
        match &mut self.state {
            State::Promoting { .. } | State::Leader { .. } | State::Reacquiring { .. } => {
                self.demote(DemoteMode::Graceful, "shutting down", true, now);
            }
            State::Demoting { release, held } => *release = held.is_some(),
            State::Holding(_) => {
                if let Some(h) = self.state.take_held() {
                    self.disarm_watchdog();
                    self.enqueue_front(StoreOp::Release(h.lease));
                }
            }
            State::Follower => self.stopped = true,
        }
        self.pump(now);
    }

    /// Timers: the loop, the lease belief, request deadlines.
    fn handle_timeout(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        if let Some(h) = self.state.held()
            && now >= h.acting_until
        {
            if matches!(self.state, State::Promoting { .. } | State::Leader { .. }) {
                tracing::warn!(node = %self.cfg.name, "lease belief ran out without a successful renewal");
                self.lose_lease(now, DemoteMode::Offline, "lease belief ran out");
            } else if !self.queue.contains(&StoreOp::Renew)
                && !self.is_in_flight(&StoreOp::Renew)
                && self.timers.get(Timer::RenewRetry).is_none()
            {
                // Not acting (an adopted key, or a won answer that came too late): no harm
                // done, but only a won renewal may start acting again.
                self.enqueue_front(StoreOp::Renew);
            }
        }
        if let Some(f) = &self.in_flight
            && self.timers.is_due(Timer::Request, now)
        {
            let id = f.id;
            // No answer within retry_timeout: the outcome is unknown (rule 3).
            self.handle_store_error(id, DcsError::unknown("no answer within retry_timeout"), now);
        }
        if self.timers.is_due(Timer::Probe, now) {
            self.end_probe();
        }
        if let Some(id) = self.failsafe_check
            && self.timers.is_due(Timer::FailsafeCheck, now)
        {
            self.handle_failsafe_result(id, false, now);
        }
        if self.timers.is_due(Timer::Reacquire, now) {
            self.lose_lease(
                now,
                DemoteMode::Offline,
                "could not take the leader key back before the failsafe belief ran out",
            );
        }
        if self.timers.is_due(Timer::RenewRetry, now) {
            self.timers.clear(Timer::RenewRetry);
            if self.state.held().is_some() {
                self.enqueue_front(StoreOp::Renew);
            }
        }
        if self.timers.is_due(Timer::Scheduled, now) {
            // A scheduled switchover falls due: decide on a fresh read (it may have been
            // cancelled meanwhile).
            self.timers.clear(Timer::Scheduled);
            self.view_stale = true;
            self.timers.set_no_later(Timer::Cycle, now);
        }
        if self.timers.is_due(Timer::Cycle, now) {
            self.start_cycle(now);
        }
        self.pump(now);
    }

    /// The answer to [`Action::Load`].
    #[cfg(test)]
    fn handle_load(&mut self, id: RequestId, result: Result<ClusterView, DcsError>, now: Instant) {
        self.handle_load_shared(id, result.map(Arc::new), now);
    }

    /// The answer to a load, for a view shared with other owners: the node
    /// keeps the `Arc` and never changes the view.
    fn handle_load_shared(&mut self, id: RequestId, result: Result<Arc<ClusterView>, DcsError>, now: Instant) {
        let Some(_) = self.take_in_flight(id) else { return };
        match result {
            Ok(view) => {
                self.last_load = Some(now);
                self.on_view(view, now);
            }
            Err(e) => self.on_store_error(StoreOp::Load, e, now),
        }
        self.pump(now);
    }

    /// The answer to [`Action::Acquire`].
    fn handle_acquire(
        &mut self,
        id: RequestId,
        result: Result<CasOutcome<Lease, Option<LeaderView>>, DcsError>,
        now: Instant,
    ) {
        let Some(f) = self.take_in_flight(id) else { return };
        match result {
            Ok(CasOutcome::Won(lease)) => self.take_lease(lease, f.sent_at, now),
            Ok(CasOutcome::Lost(current)) => {
                self.pending_token = None;
                if matches!(self.state, State::Reacquiring { .. }) {
                    self.lose_lease(now, DemoteMode::ImmediateNoLock, "another member took the leader key first");
                }
                if let Some(l) = current {
                    self.follow(Some(&l), now);
                }
            }
            Err(e) => self.on_store_error(f.op, e, now),
        }
        self.pump(now);
    }

    /// The answer to [`Action::Renew`].
    fn handle_renew(
        &mut self,
        id: RequestId,
        result: Result<CasOutcome<Lease, Option<LeaderView>>, DcsError>,
        now: Instant,
    ) {
        let Some(f) = self.take_in_flight(id) else { return };
        match result {
            // A renewal of a lease we have since given up (handed to a release, or lost)
            // must not bring it back.
            Ok(CasOutcome::Won(lease)) if self.state.held().is_some_and(|h| h.lease.epoch == lease.epoch) => {
                self.renew_failing_since = None;
                self.take_lease(lease, f.sent_at, now);
            }
            Ok(CasOutcome::Won(_)) => {}
            Ok(CasOutcome::Lost(None)) if self.may_reacquire(now) => self.reacquire(),
            Ok(CasOutcome::Lost(current)) => {
                let why = if current.is_some() { "leader key lost to another holder" } else { "leader key is gone" };
                self.lose_lease(now, DemoteMode::ImmediateNoLock, why);
                if let Some(l) = current {
                    self.follow(Some(&l), now);
                }
            }
            Err(e) => self.on_store_error(f.op, e, now),
        }
        self.pump(now);
    }

    /// The answer to [`Action::Release`].
    fn handle_release(
        &mut self,
        id: RequestId,
        result: Result<CasOutcome<(), Option<LeaderView>>, DcsError>,
        now: Instant,
    ) {
        let Some(_) = self.take_in_flight(id) else { return };
        if self.shutting_down {
            self.stopped = true;
            self.queue.clear();
            return;
        }
        if let Err(e) = result {
            // The key expires by itself; a release is only a courtesy that speeds up failover.
            tracing::info!(node = %self.cfg.name, error = %e, "release failed; the key will expire");
            if e.is_fatal() {
                self.fatal(e, now);
            }
        }
        self.schedule_cycle(now);
        self.pump(now);
    }

    /// The answer to [`Action::PublishMember`], [`Action::WriteControl`] and
    /// [`Action::DeleteControl`]. `won` is `Ok(true)` for `Won`, `Ok(false)` for `Lost`.
    fn handle_write(&mut self, id: RequestId, result: Result<bool, DcsError>, now: Instant) {
        let Some(f) = self.take_in_flight(id) else { return };
        match (f.op, result) {
            (StoreOp::Publish(record), Ok(_)) => self.published = Some(record),
            (StoreOp::Write { then, .. } | StoreOp::Delete { then, .. }, Ok(won)) => self.after_write(then, won, now),
            (_, Ok(_)) => {}
            (op, Err(e)) => self.on_store_error(op, e, now),
        }
        self.pump(now);
    }

    /// A watch fired: start a cycle soon (at most once per `retry` interval).
    fn handle_watch_event(&mut self, event: crate::dcs::WatchEvent, now: Instant) {
        match event {
            crate::dcs::WatchEvent::Timeout => {}
            crate::dcs::WatchEvent::Changed | crate::dcs::WatchEvent::Resync => {
                self.watched = Known::Unknown;
                self.view_stale = true;
                // A leader reads at its next regular cycle; everyone else reads at once so a
                // vanished leader key starts an election without waiting for the timer. The
                // read alone writes nothing, so events cannot feed back into more events.
                if self.state.held().is_none() && !self.shutting_down && !self.stopped {
                    if !self.queue.contains(&StoreOp::Load) && !self.is_in_flight(&StoreOp::Load) {
                        self.queue.push_back(StoreOp::Load);
                    }
                    self.pump(now);
                }
            }
        }
    }

    /// The latest status of the local resource.
    fn handle_resource_status(&mut self, status: ResourceStatus, now: Instant) {
        let was_primary = self.resource.role == ResourceRole::Primary && self.resource.running;
        let first = !std::mem::replace(&mut self.resource_known, true);
        // As sets: PostgreSQL lists `pg_stat_replication` in no particular order.
        let same_streaming = match (&status.streaming, &self.resource.streaming) {
            (Some(a), Some(b)) => same_members(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        let standbys_moved = !same_streaming || !same_members(&status.sync_confirmed, &self.resource.sync_confirmed);
        self.resource = status;
        // A standby that started or stopped streaming, or was confirmed: a cycle now, not a
        // loop later (until the key grows after a promotion, nobody else may be promoted). A
        // cycle, not the sync step on the view we have: that view may predate our own last
        // write of the sync key, and the key must never name more than the resource waits for.
        if standbys_moved && self.sync_on() && self.state.acting_epoch().is_some() {
            self.view_stale = true;
            self.schedule_cycle(now);
        }
        let is_primary = self.resource.role == ResourceRole::Primary && self.resource.running;
        // A resource that reports primary without our say-so is demoted (Patroni: "demoting
        // self because I do not have the lock").
        if is_primary && !was_primary && matches!(self.state, State::Follower) && !self.paused() {
            self.demote(DemoteMode::ImmediateNoLock, "resource is primary but we do not hold the key", false, now);
        } else if first
            && self.state.is_replica()
            && let Some(view) = &self.view
        {
            // Following was held back until the resource was known (see `follow`).
            let leader = view.leader.clone();
            self.follow(leader.as_ref(), now);
        }
    }

    /// The answer to [`Action::ProbePeers`].
    fn handle_peer_replies(&mut self, id: RequestId, replies: Vec<PeerReply>, now: Instant) {
        let Some(probe) = self.probe.take_if(|p| p.id == id) else { return };
        self.timers.clear(Timer::Probe);
        match probe.purpose {
            ProbePurpose::Election => self.decide_election(&replies, now),
            ProbePurpose::Switchover { candidate } => self.decide_switchover(candidate, &replies, now),
        }
        self.pump(now);
    }

    /// The answer to [`Action::FailsafeCheck`]: `all_confirmed` only if every listed member
    /// accepted us as leader.
    fn handle_failsafe_result(&mut self, id: RequestId, all_confirmed: bool, now: Instant) {
        let Some(_) = self.failsafe_check.take_if(|i| *i == id) else { return };
        self.timers.clear(Timer::FailsafeCheck);
        let Some(sent_at) = self.renew_failing_since else { return };
        if all_confirmed && self.state.held().is_some() {
            // Every member promised not to race for a ttl after our ping, which was sent no
            // earlier than `now - retry_timeout`: extend the belief from then.
            let from = now.saturating_sub(self.cfg.timing.retry_timeout).max(sent_at);
            self.extend_belief(from + self.cfg.timing.belief_for(self.cfg.timing.ttl));
            if self.failsafe_confirmed.replace(now).is_none() {
                tracing::warn!(node = %self.cfg.name, "store unreachable; every member confirmed us (failsafe): staying leader");
            } else {
                tracing::debug!(node = %self.cfg.name, "store still unreachable; every member confirmed us again");
            }
            self.keepalive_watchdog();
        } else {
            self.lose_lease(now, DemoteMode::Offline, "store unreachable and failsafe not confirmed by every member");
        }
    }

    /// The answer to [`Action::Promote`]. An error is a failed pre-promote: the key is
    /// released and the node backs off for a ttl.
    fn handle_promoted(&mut self, result: Result<(), String>, now: Instant) {
        let State::Promoting { epoch, reason, .. } = self.state else { return };
        match result {
            Ok(()) => {
                if let State::Promoting { held, .. } = std::mem::take(&mut self.state) {
                    self.set_state(State::Leader { held, epoch });
                }
                self.events.push_back(NodeEvent::Promoted { epoch });
                // The same primary under a new epoch is no new timeline (a history entry would
                // make every replica look a timeline behind) and keeps its standbys.
                if reason != REACQUIRED {
                    self.record_history(epoch, reason);
                    if self.sync_on() && self.cfg.synchronous_mode_strict {
                        // Strict: the sync key names only us, so there is no standby yet. Asked
                        // only once promoted (a resource that failed to promote is no primary to
                        // reconfigure); a strict resource starts its promotion waiting already.
                        self.resource_standbys = self.standbys_request(Vec::new());
                        self.actions.push_back(Action::SetSyncStandbys { names: self.resource_standbys.clone() });
                    }
                }
            }
            Err(why) => {
                tracing::warn!(node = %self.cfg.name, %why, "promote failed; releasing the key and backing off");
                self.backoff_until = Some(now + self.cfg.timing.ttl);
                self.demote(DemoteMode::Immediate, "promote failed", true, now);
            }
        }
        self.pump(now);
    }

    /// The answer to [`Action::Demote`].
    fn handle_demoted(&mut self, result: Result<(), String>, now: Instant) {
        let State::Demoting { release, .. } = self.state else { return };
        if let Err(why) = result {
            tracing::error!(node = %self.cfg.name, %why, "demote failed; retrying immediately");
            self.actions.push_back(Action::Demote { mode: DemoteMode::Immediate });
            return;
        }
        let held = self.state.take_held();
        self.set_state(State::Follower);
        self.events.push_back(NodeEvent::Demoted);
        self.disarm_watchdog();
        if release && let Some(h) = held {
            self.enqueue_front(StoreOp::Release(h.lease));
        }
        if self.shutting_down && !self.queue.iter().any(|op| matches!(op, StoreOp::Release(_))) {
            self.stopped = true;
            return;
        }
        let leader = self.view.as_ref().and_then(|v| v.leader.clone());
        self.followed = Known::Unknown;
        self.follow(leader.as_ref(), now);
        // A replica again: read at once whom to follow, whether the key is free, or whether
        // it is still our own (an offline demotion leaves it in the store, and only this
        // process can take it back). No store event is due to trigger that read: nothing
        // but our own resource changed.
        self.schedule_cycle(now);
        self.pump(now);
    }

    /// The resource could not follow the leader named by the last [`Action::Follow`] (for
    /// example the leader was still initialising). The next read of the cluster asks again.
    fn handle_follow_failed(&mut self, _now: Instant) {
        self.followed = Known::Unknown;
    }

    /// [`check_candidate`] on the current view; a member unknown to a view a watch marked stale
    /// may just have registered, so the view is re-read at once and a retry will see it.
    fn check_candidate_fresh(&mut self, candidate: &str, now: Instant) -> Result<(), AdminError> {
        let Some(view) = &self.view else { return Err(AdminError::NotReady) };
        let checked = check_candidate(view, candidate);
        if matches!(checked, Err(AdminError::UnknownMember(_))) && self.view_stale {
            self.schedule_cycle(now);
        }
        checked
    }

    /// The watchdog could not be armed.
    fn handle_watchdog_failed(&mut self, now: Instant) {
        self.watchdog = WatchdogHealth::Failed;
        self.watchdog_armed = false;
        if self.cfg.watchdog == WatchdogMode::Required && self.state.held().is_some() {
            self.demote(DemoteMode::Immediate, "required watchdog cannot be armed", true, now);
        }
        self.pump(now);
    }

    // === the cycle ===

    fn start_cycle(&mut self, now: Instant) {
        if self.shutting_down {
            self.timers.set(Timer::Cycle, now + self.cfg.timing.loop_wait);
            if self.state.held().is_some()
                && !self.queue.contains(&StoreOp::Renew)
                && !self.is_in_flight(&StoreOp::Renew)
            {
                self.enqueue_front(StoreOp::Renew);
            }
            return;
        }
        self.cycle_start = now;
        self.timers.set(Timer::Cycle, now + self.cfg.timing.loop_wait);
        self.arm_expiry_read(now);
        if self.state.held().is_some() && !self.queue.contains(&StoreOp::Renew) && !self.is_in_flight(&StoreOp::Renew) {
            // Renew first: only a won renewal extends leadership (rule 2).
            self.enqueue_front(StoreOp::Renew);
        }
        // A leader needs the view for admin requests, the status key, and in synchronous or
        // failsafe mode for the members (whom the resource waits for, whom a failsafe check
        // asks). Member publishes wake no watch, so in those modes it reads every cycle;
        // otherwise when a watch says something changed, or at least once per ttl/2 as a
        // backstop (rule 7).
        let view_old = self.last_load.is_none_or(|t| now >= t + self.cfg.timing.ttl / 2);
        let needs_members = self.sync_on() || self.failsafe_on();
        if (self.state.held().is_none() || self.view_stale || view_old || needs_members)
            && !self.queue.contains(&StoreOp::Load)
            && !self.is_in_flight(&StoreOp::Load)
        {
            self.queue.push_back(StoreOp::Load);
        }
        self.regular_load = true;
    }

    fn schedule_cycle(&mut self, now: Instant) {
        self.timers.set_no_later(Timer::Cycle, now);
    }

    /// A follower reads again when the leader key it last read, if still unchanged, counts as
    /// expired: a ttl after a read first showed it. A Kubernetes lease that is no longer
    /// renewed is deleted by nobody and so wakes no watch; without this read the follower
    /// would notice it at its next loop (or at a read some other write happened to cause).
    /// Elsewhere the key vanishes and wakes every watch; there this costs at most one early
    /// cycle per leader key, as renewals there do not change the key.
    fn arm_expiry_read(&mut self, now: Instant) {
        if self.state.held().is_some() {
            return;
        }
        if let Some((_, _, seen)) = &self.leader_seen {
            let expired_at = *seen + self.cfg.timing.ttl;
            if expired_at > now {
                self.timers.set_no_later(Timer::Cycle, expired_at);
            }
        }
    }

    fn on_view(&mut self, view: Arc<ClusterView>, now: Instant) {
        let leader = view.leader.clone();
        let leader_name = leader.as_ref().map(|l| l.record.member.clone());
        if !self.last_leader.is(&leader_name) {
            self.last_leader = Known::Value(leader_name.clone());
            self.events.push_back(NodeEvent::LeaderChanged { leader: leader_name });
        }
        if !self.watched.is(&view.revision) {
            self.watched = Known::Value(view.revision.clone());
            self.actions.push_back(Action::Watch { after: view.revision.clone() });
        }
        match &leader {
            Some(l) if self.leader_seen.as_ref().is_some_and(|(e, v, _)| *e == l.epoch && *v == l.version) => {}
            Some(l) => {
                self.leader_seen = Some((l.epoch, l.version.clone(), now));
                self.arm_expiry_read(now);
            }
            None => self.leader_seen = None,
        }
        self.remember_members(&view, now);
        self.view = Some(view);
        self.view_stale = false;
        if std::mem::take(&mut self.regular_load) || self.published.is_none() {
            self.publish_member_if_changed();
        }

        if let Some(h) = self.state.held() {
            let ours = leader.as_ref().is_some_and(|l| {
                l.epoch == h.lease.epoch
                    && l.record.member == h.lease.record.member
                    && l.record.token == h.lease.record.token
            });
            if !ours {
                if leader.is_none() && self.may_reacquire(now) {
                    self.reacquire();
                    return;
                }
                // A linearizable read shows the key gone or someone else's: leadership is
                // over. A read may take leadership away, never confirm it (rule 2).
                self.lose_lease(now, DemoteMode::ImmediateNoLock, "leader key is gone or held by another member");
                self.follow(leader.as_ref(), now);
                return;
            }
            self.leader_duties(now);
            return;
        }
        // "Ours" is always the member name and the token, never the token alone: a record
        // that names another member is never adopted, renewed or released by us.
        let unanswered_acquire = matches!((&self.pending_token, &leader),
            (Some(t), Some(l)) if l.record.member == self.cfg.name && &l.record.token == t);
        // A key this process wrote but no longer believes it holds (it demoted offline while
        // the store kept its session alive): nobody else can acquire it while it exists, so
        // abandoning it would leave the cluster leaderless for as long as we live.
        let abandoned_own_key = matches!(self.state, State::Follower)
            && !self.shutting_down
            && leader.as_ref().is_some_and(|l| self.is_this_incarnations(&l.record));
        if let Some(l) = &leader
            && (unanswered_acquire || abandoned_own_key)
        {
            // Our acquire went through although its answer was lost (rule 3), or we dropped
            // our own key: adopt it, but act only after a renewal proves it and starts the
            // belief afresh.
            let lease = Lease {
                record: l.record.clone(),
                epoch: l.epoch,
                version: l.version.clone(),
                valid_for: Duration::ZERO,
            };
            self.adopt(Held { lease, acting_until: now });
            self.pending_token = None;
            self.enqueue_front(StoreOp::Renew);
            return;
        }
        match leader {
            Some(l) => {
                self.pending_token = None;
                if self.state.is_promoting_or_acting() {
                    self.demote(DemoteMode::ImmediateNoLock, "another member holds the leader key", false, now);
                }
                self.follow(Some(&l), now);
            }
            None => {
                if self.pending_token.is_some() {
                    // Unknown outcome, and the key is free: the acquire did not happen.
                    self.pending_token = None;
                }
                if matches!(self.state, State::Reacquiring { .. }) {
                    // The previous attempt failed before reaching the store: try again.
                    if !self.in_flight_is_acquire() && !self.queue.iter().any(|op| matches!(op, StoreOp::Acquire(_))) {
                        let op = self.acquire_op();
                        self.enqueue_front(op);
                    }
                    return;
                }
                if self.state.is_promoting_or_acting() {
                    self.demote(DemoteMode::Offline, "resource is primary but the key is free", false, now);
                    return;
                }
                if self.failsafe_leader_until.is_some_and(|t| now < t) {
                    return;
                }
                self.follow(None, now);
                self.start_election(now);
            }
        }
    }

    fn start_election(&mut self, now: Instant) {
        if self.probe.is_some() || !self.state.is_replica() || self.in_flight_is_acquire() {
            return;
        }
        let Some(view) = &self.view else { return };
        let peers = self.election_peers(view);
        let id = self.next_request_id();
        self.start_probe(id, ProbePurpose::Election, now);
        if peers.is_empty() {
            // Nobody to ask: decide at once.
            self.end_probe();
            self.decide_election(&[], now);
        } else {
            self.actions.push_back(Action::ProbePeers { id, peers });
        }
    }

    fn decide_election(&mut self, replies: &[PeerReply], now: Instant) {
        let Some(view) = &self.view else { return };
        if view.leader.is_some() || !matches!(self.state, State::Follower) {
            return;
        }
        let me = self.my_record();
        let sync = view.sync.as_ref().map(|s| &s.value);
        let facts = ElectionFacts {
            me: &me,
            leader_position: view.status.as_ref().map(|s| s.value.position),
            cluster_timeline: cluster_timeline(view),
            maximum_lag_on_failover: self.max_lag(),
            peers: replies,
            paused: self.paused(),
            synchronous: self.sync_on().then_some(sync),
            failover: self.in_force(view.failover.as_ref(), now),
            watchdog_required: self.cfg.watchdog == WatchdogMode::Required,
            watchdog: self.watchdog,
            in_pre_promote_backoff: self.backoff_until.is_some_and(|t| now < t),
        };
        match rules::evaluate(&facts) {
            Verdict::Eligible => {
                self.last_refusal = None;
                let op = self.acquire_op();
                self.enqueue_front(op);
            }
            Verdict::Ineligible(reason) => {
                if self.last_refusal.as_ref() != Some(&reason) {
                    tracing::info!(node = %self.cfg.name, %reason, "not racing for the free leader key");
                    self.events.push_back(NodeEvent::NotEligible(reason.clone()));
                }
                self.last_refusal = Some(reason);
            }
        }
    }

    /// A store may grant less than the ttl (Consul guarantees a session only for its TTL,
    /// ttl / 2): the loop's renewal could then come after the belief ran out. Renew early
    /// enough that a renewal failing for the whole retry budget, or for half the belief if
    /// that is shorter, still ends inside it. With a full-ttl grant this is later than the
    /// next loop and changes nothing.
    fn renew_before_belief_ends(&mut self, sent_at: Instant, acting_until: Instant, now: Instant) {
        let budget = self.cfg.timing.retry_timeout.min(acting_until.saturating_since(sent_at) / 2);
        let due = acting_until.saturating_sub(budget).max(now);
        if self.timers.get(Timer::Cycle).is_none_or(|cycle| due < cycle) {
            self.timers.set_no_later(Timer::RenewRetry, due);
        }
    }

    fn take_lease(&mut self, lease: Lease, sent_at: Instant, now: Instant) {
        let acting_until = sent_at + self.cfg.timing.belief_for(lease.valid_for);
        let epoch = lease.epoch;
        let fresh = self.state.held().is_none_or(|h| h.lease.epoch != epoch);
        self.pending_token = None;
        self.failsafe_confirmed = None;
        let reacquired = matches!(self.state, State::Reacquiring { .. });
        if acting_until <= now {
            // The answer came too late to act on; keep the key and renew at once.
            self.hold(Held { lease, acting_until: now });
            self.timers.set(Timer::RenewRetry, now);
            return;
        }
        self.hold(Held { lease, acting_until });
        self.renew_before_belief_ends(sent_at, acting_until, now);
        if fresh {
            self.events.push_back(NodeEvent::Acquired { epoch });
        }
        self.keepalive_watchdog();
        if self.state.is_replica() {
            self.become_primary(epoch, now);
        } else if let State::Leader { epoch: old, .. } = self.state
            && reacquired
            && old != epoch
        {
            // The resource never stopped: hand it the new epoch so that its fence follows.
            tracing::warn!(node = %self.cfg.name, old = %old, new = %epoch, "took the leader key back after the store outage (failsafe); the resource kept running as primary");
            if let State::Leader { held, .. } = std::mem::take(&mut self.state) {
                self.set_state(State::Promoting { held, epoch, reason: REACQUIRED });
            }
            self.actions.push_back(Action::Promote { epoch });
        }
    }

    /// Rule 4: the key is ours -> arm watchdog -> (sync key) -> promote(epoch).
    fn become_primary(&mut self, epoch: Epoch, now: Instant) {
        if self.paused() {
            // Paused: hold the key but change nothing in the resource unless it already runs
            // as primary; Patroni makes no automatic promotions in maintenance mode. A manual
            // switchover or failover in progress is not automatic: it promotes (a pause that
            // arrived mid-switchover would otherwise leave no primary until resume).
            let requested = self.in_force(self.view.as_ref().and_then(|v| v.failover.as_ref()), now).is_some();
            let already_primary = self.resource.running && self.resource.role == ResourceRole::Primary;
            if !already_primary && !requested {
                return;
            }
        }
        if self.cfg.watchdog != WatchdogMode::Off && !self.paused() && !self.watchdog_armed {
            self.actions.push_back(Action::ArmWatchdog { timeout: self.cfg.timing.watchdog_timeout() });
            self.watchdog_armed = true;
        }
        if self.sync_on() {
            let Some(view) = &self.view else { return };
            if self.view_stale {
                // The sync key is written by compare-and-set, so only from a fresh view; the
                // queued read brings us back here through the leader's duties.
                return;
            }
            let mine =
                view.sync.as_ref().is_some_and(|s| s.value.leader == self.cfg.name && s.value.sync_standby.is_empty());
            // We raced on the view of the election, which may be older than this one: the sync
            // key we are about to take over by compare-and-set must name us, or another member
            // may hold writes acknowledged synchronously that we lack. Give the key back.
            // (A manual switchover or failover naming us bypasses the sync set in the rules,
            // so it does here too.)
            let named = self
                .in_force(view.failover.as_ref(), now)
                .is_some_and(|f| f.candidate.as_deref() == Some(&self.cfg.name));
            if let Some(s) = view.sync.as_ref().map(|s| &s.value)
                && !s.contains(&self.cfg.name)
                && !named
            {
                tracing::warn!(node = %self.cfg.name, sync = ?s, "won the key but the sync key does not name us; releasing it");
                self.last_refusal = Some(Reason::NotInSyncSet);
                if let Some(h) = self.state.take_held() {
                    self.disarm_watchdog();
                    self.enqueue_front(StoreOp::Release(h.lease));
                }
                return;
            }
            if !mine {
                if self.promote_waits_for_sync.is_none() {
                    let rec = SyncRecord { leader: self.cfg.name.clone(), sync_standby: Vec::new() };
                    let expect = expect_for(view, ControlKey::Sync);
                    self.promote_waits_for_sync = Some(epoch);
                    self.enqueue_front(StoreOp::Write {
                        key: ControlKey::Sync,
                        expect,
                        value: rec.encode(),
                        then: AfterWrite::PromoteAfterSync,
                    });
                }
                return;
            }
        }
        self.promote(epoch, now);
    }

    /// Asks the resource to promote under `epoch`, on the key we hold.
    fn promote(&mut self, epoch: Epoch, now: Instant) {
        let view = self.view.as_deref();
        // No history key at all (garbage in it has a version): the first leader recorded.
        let first = view.is_some_and(|v| v.control_version(ControlKey::History).is_none());
        let reason = match self.in_force(view.and_then(|v| v.failover.as_ref()), now) {
            Some(f) if f.leader.is_some() => "switchover",
            Some(_) => "manual failover",
            None if first => "bootstrap",
            None => "failover",
        };
        let held = match std::mem::take(&mut self.state) {
            State::Holding(held) | State::Promoting { held, .. } | State::Leader { held, .. } => Some(held),
            State::Reacquiring { adopted: held, .. } | State::Demoting { held, .. } => held,
            State::Follower => None,
        };
        // Every caller holds the key (checked just before); without one there is nothing to
        // promote on.
        let Some(held) = held else { return };
        self.set_state(State::Promoting { held, epoch, reason });
        self.followed = Known::Unknown;
        self.resource_standbys.clear();
        self.actions.push_back(Action::Promote { epoch });
        // A new leader clears a satisfied or stale failover request.
        if let Some(f) = self.view.as_ref().and_then(|v| v.failover.as_ref()) {
            self.queue.push_back(StoreOp::Delete {
                key: ControlKey::Failover,
                expect: f.version.clone(),
                then: AfterWrite::Nothing,
            });
        }
    }

    fn leader_duties(&mut self, now: Instant) {
        let Some(view) = self.view.clone() else { return };
        if let State::Holding(h) = &self.state
            && self.promote_waits_for_sync.is_none()
            && now < h.acting_until
        {
            let epoch = h.lease.epoch;
            self.become_primary(epoch, now);
        }
        // Status: the leader's position and the roster, written only when they changed.
        if let Some(pos) = self.resource.position
            && self.state.acting_epoch().is_some()
        {
            let failsafe = self.failsafe_on().then(|| {
                view.members
                    .iter()
                    .map(|m| (m.value.name.clone(), m.value.api_url.clone().unwrap_or_default()))
                    .collect()
            });
            let current = view.status.as_ref().map(|s| &s.value);
            let unchanged =
                current.is_some_and(|c| c.position == pos && c.failsafe == failsafe && self.roster_is(&c.members));
            if !unchanged {
                let members = self
                    .roster
                    .values()
                    .map(|(m, _)| (m.name.clone(), m.api_url.clone().unwrap_or_default()))
                    .chain(std::iter::once((self.cfg.name.clone(), self.cfg.api_url.clone().unwrap_or_default())))
                    .collect();
                let rec = StatusRecord { position: pos, failsafe, members };
                self.queue.push_back(StoreOp::Write {
                    key: ControlKey::Status,
                    expect: expect_for(&view, ControlKey::Status),
                    value: rec.encode(),
                    then: AfterWrite::Status(pos),
                });
            }
        }
        if self.sync_on() && self.state.acting_epoch().is_some() {
            self.maintain_sync_set(&view);
        }
        let Some(f) = &view.failover else {
            self.timers.clear(Timer::Scheduled);
            return;
        };
        let req = &f.value;
        let me = self.cfg.name.as_str();
        let aimed_at_me =
            req.leader.as_deref() == Some(me) || (req.leader.is_none() && req.candidate.as_deref() != Some(me));
        if req.candidate.as_deref() == Some(me) || !aimed_at_me {
            // Satisfied (we lead) or addressed to a former leader (also a scheduled one: the
            // leader it was meant for is gone): clear it.
            self.timers.clear(Timer::Scheduled);
            self.queue.push_back(StoreOp::Delete {
                key: ControlKey::Failover,
                expect: f.version.clone(),
                then: AfterWrite::Nothing,
            });
            return;
        }
        match self.schedule_of(req, now) {
            Schedule::Due => self.timers.clear(Timer::Scheduled),
            Schedule::Later(wait) => {
                // Logged when first seen or moved (a stepped clock), not at every read.
                let due = now + wait;
                let moved =
                    self.timers.get(Timer::Scheduled).is_none_or(|t| (t - due).max(due - t) > Duration::from_secs(1));
                if moved {
                    tracing::info!(node = %self.cfg.name, at = ?req.scheduled_at, in_secs = wait.as_secs(), "awaiting the scheduled switchover");
                }
                self.timers.set(Timer::Scheduled, now + wait);
                return;
            }
            Schedule::Stale(late) => {
                tracing::warn!(
                    node = %self.cfg.name,
                    at = ?req.scheduled_at,
                    late_secs = late.as_secs(),
                    "dropping a scheduled switchover whose time passed more than 1.5 loop_wait ago (this leader was not running its loop then)"
                );
                self.timers.clear(Timer::Scheduled);
                self.queue.push_back(StoreOp::Delete {
                    key: ControlKey::Failover,
                    expect: f.version.clone(),
                    then: AfterWrite::Nothing,
                });
                return;
            }
            Schedule::Wait => {
                self.timers.clear(Timer::Scheduled);
                tracing::debug!(node = %self.cfg.name, at = ?req.scheduled_at, "a scheduled switchover waits: paused, or no wall-clock time yet");
                return;
            }
        }
        if self.state.acting_epoch().is_some() && self.probe.is_none() {
            let peers: Vec<MemberRecord> =
                view.members.iter().map(|m| &m.value).filter(|m| m.name != me).cloned().collect();
            let id = self.next_request_id();
            self.start_probe(id, ProbePurpose::Switchover { candidate: req.candidate.clone() }, now);
            self.actions.push_back(Action::ProbePeers { id, peers });
        }
    }

    fn decide_switchover(&mut self, candidate: Option<String>, replies: &[PeerReply], now: Instant) {
        let Some(view) = self.view.clone() else { return };
        let Some(f) = &view.failover else { return };
        let leader_pos = self.resource.position;
        let sync = view.sync.as_ref().map(|s| &s.value);
        let sync_set = self.sync_on().then_some(sync);
        let healthy = replies.iter().any(|r| match r {
            PeerReply::Reachable(p) => {
                candidate.as_deref().is_none_or(|c| c == p.name)
                    && crate::rules::can_take_over(p, leader_pos, self.max_lag(), sync_set)
            }
            PeerReply::Unreachable { .. } => false,
        });
        if healthy && self.state.acting_epoch().is_some() {
            self.demote(DemoteMode::Graceful, "switchover requested", true, now);
        } else {
            tracing::warn!(node = %self.cfg.name, ?candidate, "switchover refused: no healthy candidate");
            self.queue.push_back(StoreOp::Delete {
                key: ControlKey::Failover,
                expect: f.version.clone(),
                then: AfterWrite::Nothing,
            });
        }
    }

    /// Synchronous mode, as the leader: keep the sync key a subset of the standbys the
    /// resource waits for and has confirmed (Patroni's ordering). A standby leaves the key
    /// before the resource stops waiting for it: once out of the key it can no longer be
    /// promoted, so writes it lacks are safe to acknowledge. A standby joins the resource's
    /// set first and the key only once the resource confirms it has caught up.
    fn maintain_sync_set(&mut self, view: &ClusterView) {
        let me = self.cfg.name.as_str();
        let published: Vec<String> = match view.sync.as_ref() {
            Some(s) if s.value.leader == me => s.value.sync_standby.clone(),
            _ => return, // written before promotion; wait for it to show up
        };
        let pending = self.queue.iter().any(|op| matches!(op, StoreOp::Write { key: ControlKey::Sync, .. }))
            || self.in_flight.as_ref().is_some_and(|f| matches!(f.op, StoreOp::Write { key: ControlKey::Sync, .. }));
        if pending {
            return;
        }
        let desired = self.choose_sync_standbys(view, &published);
        let version = expect_for(view, ControlKey::Sync);
        if published.iter().any(|p| !desired.contains(p)) {
            // Shrink the key to the standbys we keep; the resource is reconfigured only once
            // that write won (`AfterWrite::SetStandbys`).
            let kept = published.iter().filter(|p| desired.contains(p)).cloned().collect();
            let rec = SyncRecord { leader: me.to_string(), sync_standby: kept };
            self.queue.push_back(StoreOp::Write {
                key: ControlKey::Sync,
                expect: version,
                value: rec.encode(),
                then: AfterWrite::SetStandbys(self.standbys_request(desired)),
            });
            return;
        }
        // Every published standby is desired: waiting for more (or for fewer unpublished
        // ones) takes nothing from the key's promise.
        let request = self.standbys_request(desired.clone());
        if !same_members(&self.resource_standbys, &request) {
            self.resource_standbys = request.clone();
            self.actions.push_back(Action::SetSyncStandbys { names: request });
            return;
        }
        // Grow the key by the confirmed standbys. A published standby the resource stops
        // confirming for a while stays: the resource still waits for it, so it still has every
        // acknowledged write, and dropping it would only narrow who may be promoted.
        let grown: Vec<String> = desired
            .iter()
            .filter(|d| published.contains(d) || self.resource.sync_confirmed.contains(d))
            .cloned()
            .collect();
        if grown.len() > published.len() {
            let rec = SyncRecord { leader: me.to_string(), sync_standby: grown };
            self.queue.push_back(StoreOp::Write {
                key: ControlKey::Sync,
                expect: version,
                value: rec.encode(),
                then: AfterWrite::Nothing,
            });
        }
    }

    /// The synchronous standbys the leader wants, at most `synchronous_node_count`: those it
    /// has (published, then asked of the resource) while they stay eligible, then the most
    /// advanced eligible replicas, ties by name. Eligible: another member, a running replica,
    /// not tagged `nosync`, streaming from us when the resource says who streams (Patroni
    /// picks from `pg_stat_replication` too: a dead standby's member record may live on for
    /// the store's member expiry, and in non-strict mode every commit would wait for it
    /// that long). Keeping the ones it has matters (Patroni does too): choosing the
    /// most advanced every cycle flipped between two replicas streaming at nearly the same
    /// position, and every flip narrows the key until the new standby is confirmed, a window
    /// in which a leader crash leaves nobody promotable.
    fn choose_sync_standbys(&self, view: &ClusterView, published: &[String]) -> Vec<String> {
        let me = self.cfg.name.as_str();
        let count = self.cfg.synchronous_node_count.get();
        let mut eligible: Vec<&MemberRecord> = view
            .members
            .iter()
            .map(|m| &m.value)
            .filter(|m| m.name != me && m.running && m.role == ResourceRole::Replica && !m.tags.nosync)
            .filter(|m| self.resource.streaming.as_ref().is_none_or(|s| s.contains(&m.name)))
            .collect();
        let mut chosen: Vec<String> = Vec::with_capacity(count);
        for name in published.iter().chain(&self.resource_standbys) {
            if chosen.len() < count && !chosen.contains(name) && eligible.iter().any(|m| &m.name == name) {
                chosen.push(name.clone());
            }
        }
        eligible.retain(|m| !chosen.contains(&m.name));
        eligible.sort_by(|a, b| b.position.cmp(&a.position).then_with(|| a.name.cmp(&b.name)));
        let room = count - chosen.len();
        chosen.extend(eligible.into_iter().take(room).map(|m| m.name.clone()));
        chosen
    }

    /// What the resource is asked to wait for: `standbys`, or in strict mode with none,
    /// [`ANY_STANDBY`] (commits wait rather than run unprotected).
    fn standbys_request(&self, standbys: Vec<String>) -> Vec<String> {
        if standbys.is_empty() && self.cfg.synchronous_mode_strict { vec![ANY_STANDBY.to_string()] } else { standbys }
    }

    fn after_write(&mut self, then: AfterWrite, won: bool, now: Instant) {
        match then {
            AfterWrite::Nothing | AfterWrite::Status(_) => {}
            AfterWrite::Admin(id) => {
                self.events.push_back(NodeEvent::AdminDone { id, ok: won });
                if won {
                    // Act on the request now rather than a loop_wait later: a switchover sent to
                    // the leader is what an operator times.
                    self.view_stale = true;
                    self.timers.set_no_later(Timer::Cycle, now);
                }
            }
            AfterWrite::PromoteAfterSync => {
                let epoch = self.promote_waits_for_sync.take();
                // Only from `Holding`: a node that began demoting meanwhile (a required
                // watchdog failed, a shutdown) must not promote when the write lands.
                let holding = match &self.state {
                    State::Holding(h) => Some(h),
                    _ => None,
                };
                match (won, epoch, holding) {
                    (true, Some(e), Some(h)) if h.lease.epoch == e && now < h.acting_until => self.promote(e, now),
                    // Lost the CAS or the lease: re-read now and decide again. The sync key's
                    // change woke our watch while we held the key, which starts no read, and
                    // a failover is waiting on us.
                    _ => {
                        self.view_stale = true;
                        self.schedule_cycle(now);
                    }
                }
            }
            AfterWrite::SetStandbys(names) => {
                if won {
                    self.resource_standbys = names.clone();
                    self.actions.push_back(Action::SetSyncStandbys { names });
                }
            }
        }
    }

    fn record_history(&mut self, epoch: Epoch, reason: &'static str) {
        let Some(view) = &self.view else { return };
        let mut history = view.history.as_ref().map(|h| h.value.clone()).unwrap_or_default();
        let timeline = history.0.last().map_or(1, |e| e.timeline + 1);
        let entries = Arc::make_mut(&mut history.0);
        entries.push(HistoryEntry {
            timeline,
            position: self.resource.position.unwrap_or(0),
            reason: reason.into(),
            leader: self.cfg.name.clone(),
            epoch,
        });
        // Keep the record bounded.
        if entries.len() > 100 {
            let drop = entries.len() - 100;
            entries.drain(..drop);
        }
        let expect = expect_for(view, ControlKey::History);
        self.queue.push_back(StoreOp::Write {
            key: ControlKey::History,
            expect,
            value: HistoryRecord::encode(&history),
            then: AfterWrite::Nothing,
        });
    }

    // === stepping down ===

    /// The key is lost (or its belief ran out): forget it, stop renewing it, and demote at
    /// once without touching it (rule 4).
    fn lose_lease(&mut self, now: Instant, mode: DemoteMode, why: &'static str) {
        // What the resource does once the key is gone: nothing, demote, or go on demoting.
        enum Then {
            Disarm,
            Demote,
            KeepDemoting,
        }
        let then = match &mut self.state {
            State::Follower | State::Demoting { held: None, .. } => return,
            State::Holding(_) => {
                self.set_state(State::Follower);
                Then::Disarm
            }
            State::Promoting { .. } | State::Leader { .. } | State::Reacquiring { .. } => Then::Demote,
            State::Demoting { release, held } => {
                // Nothing is left to release.
                *release = false;
                *held = None;
                Then::KeepDemoting
            }
        };
        self.timers.clear(Timer::RenewRetry);
        self.renew_failing_since = None;
        self.end_failsafe_check();
        self.failsafe_confirmed = None;
        self.promote_waits_for_sync = None;
        self.queue.retain(|op| !matches!(op, StoreOp::Renew | StoreOp::Release(_)));
        match then {
            Then::Disarm => {
                // A replica already: read at once, as after a completed demotion. A watch
                // event that came while we held the key started no read.
                self.disarm_watchdog();
                self.schedule_cycle(now);
            }
            // The read that matters comes once the resource has stepped down
            // (`handle_demoted`); this one is a backstop should the demotion hang.
            Then::Demote => self.start_demote(mode, why, false, None),
            Then::KeepDemoting => {}
        }
        self.schedule_cycle(now + self.cfg.timing.loop_wait.min(Duration::from_secs(1)));
    }

    /// Asks the resource to step down. With `release`, the key is released once the demotion
    /// is confirmed (rule 4: demote -> confirm -> release), and renewals continue meanwhile.
    fn demote(&mut self, mode: DemoteMode, why: &'static str, release: bool, _now: Instant) {
        let held = match std::mem::take(&mut self.state) {
            State::Demoting { release: r, held } => {
                // Already stepping down; a lost key cancels a pending release.
                let release = r && release && held.is_some();
                self.set_state(State::Demoting { release, held });
                return;
            }
            State::Follower => None,
            State::Holding(held) | State::Promoting { held, .. } | State::Leader { held, .. } => Some(held),
            State::Reacquiring { adopted, .. } => adopted,
        };
        let release = release && held.is_some();
        self.start_demote(mode, why, release, held);
    }

    /// Enters [`State::Demoting`] from any other state and asks the resource to demote.
    fn start_demote(&mut self, mode: DemoteMode, why: &'static str, release: bool, held: Option<Held>) {
        self.set_state(State::Demoting { release, held });
        self.events.push_back(NodeEvent::Demoting { mode, why });
        tracing::warn!(node = %self.cfg.name, ?mode, why, "demoting");
        self.actions.push_back(Action::Demote { mode });
    }

    fn follow(&mut self, leader: Option<&LeaderView>, _now: Instant) {
        // A process restarted under a resource still running as primary (a former leader)
        // must demote before anything else: not follow until the first status report says
        // what the resource is.
        if !self.state.is_replica() || !self.resource_known {
            return;
        }
        // Never follow ourselves (a view loaded while we still held the key).
        let leader = leader.filter(|l| l.record.member != self.cfg.name);
        let name = leader.map(|l| l.record.member.clone());
        if self.followed.is(&name) {
            return;
        }
        let conn_url = leader.and_then(|l| l.record.conn_url.clone());
        self.followed = Known::Value(name.clone());
        self.actions.push_back(Action::Follow { leader: name, conn_url });
    }

    fn fatal(&mut self, e: DcsError, now: Instant) {
        tracing::error!(node = %self.cfg.name, error = %e, "fatal store error; stopping");
        if self.state.is_promoting_or_acting() {
            self.demote(DemoteMode::Offline, "fatal store error", false, now);
        }
        // Whatever the resource does, the key is no longer ours to renew or release.
        self.state.take_held();
        self.stopped = true;
        self.queue.clear();
        self.events.push_back(NodeEvent::Fatal(e.to_string()));
    }

    // === store errors ===

    fn handle_store_error(&mut self, id: RequestId, e: DcsError, now: Instant) {
        let Some(f) = self.take_in_flight(id) else { return };
        self.on_store_error(f.op, e, now);
    }

    fn on_store_error(&mut self, op: StoreOp, e: DcsError, now: Instant) {
        // Whoever waits on a write hears of its failure, also when the store call timed out.
        match &op {
            StoreOp::Write { then: AfterWrite::Admin(admin), .. }
            | StoreOp::Delete { then: AfterWrite::Admin(admin), .. } => {
                tracing::warn!(node = %self.cfg.name, error = %e, "admin write failed");
                self.events.push_back(NodeEvent::AdminDone { id: *admin, ok: false });
            }
            StoreOp::Write { then: AfterWrite::PromoteAfterSync, .. } => {
                // Promotion waits (Patroni postpones it too); the write may have been applied,
                // so re-read before the next attempt rather than repeat a stale compare-and-set.
                tracing::warn!(node = %self.cfg.name, error = %e, "could not write the sync key before promoting");
                self.promote_waits_for_sync = None;
                self.view_stale = true;
            }
            _ => {}
        }
        if e.is_fatal() {
            self.fatal(e, now);
            return;
        }
        match op {
            StoreOp::Acquire(_) if e.is_outcome_unknown() => {
                // Rule 3: maybe ours. Re-read before anything else; keep the token.
                self.enqueue_front(StoreOp::Load);
            }
            StoreOp::Acquire(_) => {
                self.pending_token = None;
                if matches!(self.state, State::Reacquiring { .. }) {
                    // Retry from a fresh read soon; the belief deadline still bounds acting.
                    self.schedule_cycle(now + (self.cfg.timing.retry_timeout / 8).max(Duration::from_millis(50)));
                }
            }
            StoreOp::Renew if e.is_lease_lost() && self.may_reacquire(now) => self.reacquire(),
            StoreOp::Renew if e.is_lease_lost() => {
                self.lose_lease(now, DemoteMode::ImmediateNoLock, "session or lease lost");
            }
            StoreOp::Renew => self.renew_failed(e, now),
            StoreOp::Write { then: AfterWrite::Admin(_) | AfterWrite::PromoteAfterSync, .. }
            | StoreOp::Delete { then: AfterWrite::Admin(_), .. } => {}
            // As in `handle_release`: the key expires by itself, so a shutdown ends with its
            // release whatever the answer, also when none came within retry_timeout.
            StoreOp::Release(_) if self.shutting_down => {
                tracing::info!(node = %self.cfg.name, error = %e, "release failed while shutting down; the key will expire");
                self.stopped = true;
                self.queue.clear();
            }
            StoreOp::Load => {
                tracing::info!(node = %self.cfg.name, error = %e, "load failed");
                // Retry soon; a leader keeps renewing regardless.
                let retry = now + self.cfg.timing.loop_wait.min(Duration::from_secs(1));
                self.timers.set_no_later(Timer::Cycle, retry);
            }
            _ => tracing::info!(node = %self.cfg.name, error = %e, "store request failed"),
        }
    }

    /// Failsafe (Patroni's too): a leader every member confirmed while the store was
    /// unreachable, whose key expired meanwhile with nobody taking it, takes it back rather
    /// than demoting, while the belief that confirmation gave still runs. The members promised
    /// not to race for a ttl after our ping, so nobody else can have promoted.
    fn may_reacquire(&self, now: Instant) -> bool {
        self.failsafe_on()
            && self.failsafe_confirmed.is_some()
            && !self.shutting_down
            && self.state.acting_epoch().is_some()
            && self.state.held().is_some_and(|h| now < h.acting_until)
    }

    fn reacquire(&mut self) {
        let epoch = match &self.state {
            State::Leader { epoch, .. } | State::Reacquiring { epoch, adopted: Some(_), .. } => *epoch,
            _ => return,
        };
        let Some(h) = self.state.held() else { return };
        tracing::warn!(node = %self.cfg.name, epoch = %h.lease.epoch, "the leader key expired while the store was unreachable and nobody took it; every member confirmed us (failsafe): taking it back without demoting");
        let until = h.acting_until;
        self.set_state(State::Reacquiring { epoch, until, adopted: None });
        self.timers.clear(Timer::RenewRetry);
        self.renew_failing_since = None;
        self.end_failsafe_check();
        self.failsafe_confirmed = None;
        self.queue.retain(|op| !matches!(op, StoreOp::Renew | StoreOp::Release(_)));
        let op = self.acquire_op();
        self.enqueue_front(op);
    }

    /// An acquire of the key under a fresh token, remembered until answered (rule 3).
    fn acquire_op(&mut self) -> StoreOp {
        self.attempts += 1;
        let token = self.token(self.attempts);
        let record = LeaderRecord {
            member: self.cfg.name.clone(),
            token: token.clone(),
            api_url: self.cfg.api_url.clone(),
            conn_url: self.cfg.conn_url.clone(),
        };
        self.pending_token = Some(token);
        StoreOp::Acquire(record)
    }

    fn renew_failed(&mut self, e: DcsError, now: Instant) {
        // Not holding (the key was released meanwhile): nothing to retry, and no failure
        // clock to start, or a later term's first failed renewal would find its budget spent.
        let Some((epoch, acting_until)) = self.state.held().map(|h| (h.lease.epoch, h.acting_until)) else { return };
        let since = *self.renew_failing_since.get_or_insert(self.cycle_start.min(now));
        let budget_left = now < since + self.cfg.timing.retry_timeout;
        let retry_at = now + (self.cfg.timing.retry_timeout / 8).max(Duration::from_millis(50));
        if budget_left && retry_at < acting_until {
            tracing::info!(node = %self.cfg.name, error = %e, "renew failed; retrying");
            self.timers.set(Timer::RenewRetry, retry_at);
            return;
        }
        if self.failsafe_on() && self.state.acting_epoch().is_some() {
            // Once confirmed, ask again once per loop (Patroni's cadence), not on every renewal
            // retry: the confirmed belief runs ttl - margin - retry_timeout, more than a loop.
            let cadence = self.cfg.timing.loop_wait.min(self.cfg.timing.ttl / 4);
            let recheck_due = self.failsafe_confirmed.is_none_or(|at| now >= at + cadence);
            if self.failsafe_check.is_none() && recheck_due {
                let peers: Vec<MemberRecord> = self
                    .view
                    .as_ref()
                    .map(|v| v.members.iter().map(|m| &m.value).filter(|m| m.name != self.cfg.name).cloned().collect())
                    .unwrap_or_default();
                let id = self.next_request_id();
                // The check must finish while we may still act.
                let deadline = acting_until.min(now + self.cfg.timing.retry_timeout);
                self.failsafe_check = Some(id);
                self.timers.set(Timer::FailsafeCheck, deadline);
                self.actions.push_back(Action::FailsafeCheck { id, peers, epoch });
            }
            // A check in flight has its own deadline; a confirmed belief is bounded by
            // `acting_until` like any other.
            if self.failsafe_check.is_some() || self.failsafe_confirmed.is_some() {
                self.timers.set(Timer::RenewRetry, retry_at);
                return;
            }
        }
        self.lose_lease(now, DemoteMode::Offline, "cannot renew the leader key within retry_timeout");
    }

    // === state ===

    /// Every change of variant goes through here; a change inside one ends with
    /// [`arm_state_timers`](Self::arm_state_timers).
    fn set_state(&mut self, state: State) {
        self.state = state;
        self.arm_state_timers();
    }

    /// The belief and re-acquisition timers follow the state; this is the one place that
    /// writes them.
    fn arm_state_timers(&mut self) {
        self.timers.set_or_clear(Timer::Belief, self.state.belief_deadline());
        self.timers.set_or_clear(Timer::Reacquire, self.state.reacquire_deadline());
    }

    /// Holds `held` from a won acquire or renewal: a replica holds the key, a promoting or
    /// leading node renews it, a failsafe re-acquisition is over (the resource never
    /// stopped acting), a demoting node keeps it for the release.
    // Inlined so that the caller builds the key in place (a leader's every renewal).
    #[inline(always)]
    fn hold(&mut self, held: Held) {
        // In place where the variant stays: a leader renews on every cycle, and moving the
        // whole state out and back showed in the step benchmark.
        let next = match &mut self.state {
            State::Holding(h) | State::Promoting { held: h, .. } | State::Leader { held: h, .. } => {
                *h = held;
                None
            }
            State::Demoting { held: h, .. } => {
                *h = Some(held);
                None
            }
            State::Follower => Some(State::Holding(held)),
            State::Reacquiring { epoch, .. } => Some(State::Leader { held, epoch: *epoch }),
        };
        match next {
            Some(state) => self.set_state(state),
            None => self.arm_state_timers(),
        }
    }

    /// Adopts a key a read showed ours although we did not know we held it (an acquire whose
    /// answer was lost, a key this process dropped). It acts only once a renewal proves it.
    fn adopt(&mut self, held: Held) {
        match &mut self.state {
            State::Follower => self.set_state(State::Holding(held)),
            State::Reacquiring { adopted: h, .. } | State::Demoting { held: h, .. } => *h = Some(held),
            // Only a node that holds no key adopts one; were it otherwise, the adopted key
            // would simply replace it.
            State::Holding(h) | State::Promoting { held: h, .. } | State::Leader { held: h, .. } => *h = held,
        }
        self.arm_state_timers();
    }

    /// Each timer that mirrors something is armed exactly while that something exists.
    fn debug_assert_timers_in_step(&self) {
        debug_assert_eq!(self.timers.get(Timer::Belief), self.state.belief_deadline(), "belief timer");
        debug_assert_eq!(self.timers.get(Timer::Reacquire), self.state.reacquire_deadline(), "reacquire timer");
        debug_assert_eq!(self.timers.get(Timer::Request).is_some(), self.in_flight.is_some(), "request timer");
        debug_assert_eq!(self.timers.get(Timer::Probe).is_some(), self.probe.is_some(), "probe timer");
        debug_assert_eq!(
            self.timers.get(Timer::FailsafeCheck).is_some(),
            self.failsafe_check.is_some(),
            "failsafe check timer"
        );
    }

    /// Failsafe: every member confirmed us, so the belief in the key we hold runs at least
    /// until `until`.
    fn extend_belief(&mut self, until: Instant) {
        if let Some(h) = self.state.held_mut() {
            h.acting_until = h.acting_until.max(until);
        }
        self.arm_state_timers();
    }

    // === plumbing ===

    /// The token of our `attempt`-th acquisition: `{member}/{incarnation:x}-{attempt}`.
    /// Member names are unique in a scope, so tokens are unique across members by
    /// construction, whatever incarnation numbers callers choose; the incarnation tells two
    /// processes of one member apart.
    fn token(&self, attempt: u64) -> String {
        format!("{}/{:x}-{attempt}", self.cfg.name, self.cfg.incarnation)
    }

    /// Whether `record` was written by this process (this member, this incarnation), by any
    /// of its attempts.
    fn is_this_incarnations(&self, record: &LeaderRecord) -> bool {
        if record.member != self.cfg.name {
            return false;
        }
        let prefix = format!("{}/{:x}-", self.cfg.name, self.cfg.incarnation);
        record.token.strip_prefix(&prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }

    fn next_request_id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId(self.next_id)
    }

    fn enqueue_front(&mut self, op: StoreOp) {
        if !self.queue.contains(&op) && !self.is_in_flight(&op) {
            self.queue.push_front(op);
        }
    }

    fn is_in_flight(&self, op: &StoreOp) -> bool {
        self.in_flight.as_ref().is_some_and(|f| &f.op == op)
    }

    fn in_flight_is_acquire(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|f| matches!(f.op, StoreOp::Acquire(_)))
            || self.queue.iter().any(|op| matches!(op, StoreOp::Acquire(_)))
    }

    fn take_in_flight(&mut self, id: RequestId) -> Option<InFlight> {
        let taken = self.in_flight.take_if(|f| f.id == id);
        if taken.is_some() {
            self.timers.clear(Timer::Request);
        }
        taken
    }

    fn start_probe(&mut self, id: RequestId, purpose: ProbePurpose, now: Instant) {
        self.probe = Some(Probe { id, purpose });
        self.timers.set(Timer::Probe, now + self.cfg.timing.retry_timeout);
    }

    fn end_probe(&mut self) {
        self.probe = None;
        self.timers.clear(Timer::Probe);
    }

    fn end_failsafe_check(&mut self) {
        self.failsafe_check = None;
        self.timers.clear(Timer::FailsafeCheck);
    }

    /// Issues the next queued store request if none is in flight.
    fn pump(&mut self, now: Instant) {
        if self.stopped || self.in_flight.is_some() {
            return;
        }
        let Some(op) = self.queue.pop_front() else { return };
        let id = self.next_request_id();
        let action = match &op {
            StoreOp::Load => Action::Load { id },
            StoreOp::Acquire(record) => Action::Acquire { id, record: record.clone() },
            StoreOp::Renew => match self.state.held() {
                Some(h) => {
                    debug_assert_eq!(h.lease.record.member, self.cfg.name, "renewing another member's key");
                    Action::Renew { id, lease: h.lease.clone() }
                }
                None => return self.pump(now),
            },
            StoreOp::Release(lease) => {
                debug_assert_eq!(lease.record.member, self.cfg.name, "releasing another member's key");
                Action::Release { id, lease: lease.clone() }
            }
            StoreOp::Publish(record) => Action::PublishMember { id, record: record.clone() },
            StoreOp::Write { key, expect, value, .. } => {
                Action::WriteControl { id, key: *key, expect: expect.clone(), value: value.clone() }
            }
            StoreOp::Delete { key, expect, .. } => Action::DeleteControl { id, key: *key, expect: expect.clone() },
        };
        self.in_flight = Some(InFlight { id, op, sent_at: now });
        self.timers.set(Timer::Request, now + self.cfg.timing.retry_timeout);
        self.actions.push_back(action);
    }

    fn publish_member_if_changed(&mut self) {
        let record = self.my_record();
        let registered = self.view.as_ref().and_then(|v| v.member(&self.cfg.name)) == Some(&record);
        if registered && self.published.as_ref() == Some(&record) {
            return;
        }
        if !self.queue.iter().any(|op| matches!(op, StoreOp::Publish(_))) {
            self.queue.push_back(StoreOp::Publish(record));
        }
    }

    /// Keeps the roster: members in `view` are seen now; absent ones are forgotten after
    /// [`ROSTER_MEMORY_TTLS`] ttls.
    fn remember_members(&mut self, view: &ClusterView, now: Instant) {
        for m in view.members.iter().map(|m| &m.value).filter(|m| m.name != self.cfg.name) {
            // Most loads change no member record: refresh the time without a clone.
            match self.roster.get_mut(&m.name) {
                Some((known, seen)) => {
                    if known != m {
                        known.clone_from(m);
                    }
                    *seen = now;
                }
                None => {
                    self.roster.insert(m.name.clone(), (m.clone(), now));
                }
            }
        }
        let memory = self.cfg.timing.ttl * ROSTER_MEMORY_TTLS;
        self.roster.retain(|_, (_, seen)| now < *seen + memory);
    }

    /// Whether `members` (a status key's roster) names exactly us and our roster, with the
    /// same API URLs. Checked on every leader cycle, so without building a map.
    fn roster_is(&self, members: &BTreeMap<String, String>) -> bool {
        let url = |u: &Option<String>, v: &str| u.as_deref().unwrap_or_default() == v;
        members.len() == self.roster.len() + 1
            && members.iter().all(|(name, api)| {
                if *name == self.cfg.name {
                    url(&self.cfg.api_url, api)
                } else {
                    self.roster.get(name).is_some_and(|(m, _)| url(&m.api_url, api))
                }
            })
    }

    /// Whom an election asks: the members registered in `view`, then those on our roster,
    /// then those on the leader's roster in the status key (a restarted process knows no
    /// one yet), each once, never ourselves.
    fn election_peers(&self, view: &ClusterView) -> Vec<MemberRecord> {
        let mut peers: BTreeMap<&str, MemberRecord> = BTreeMap::new();
        let registered = view.members.iter().map(|m| &m.value);
        for m in registered.chain(self.roster.values().map(|(m, _)| m)) {
            peers.entry(m.name.as_str()).or_insert_with(|| m.clone());
        }
        if let Some(status) = &view.status {
            for (name, api_url) in &status.value.members {
                peers.entry(name.as_str()).or_insert_with(|| MemberRecord {
                    api_url: (!api_url.is_empty()).then(|| api_url.clone()),
                    ..MemberRecord::new(name.as_str())
                });
            }
        }
        peers.remove(self.cfg.name.as_str());
        peers.into_values().collect()
    }

    fn my_record(&self) -> MemberRecord {
        MemberRecord {
            name: self.cfg.name.clone(),
            api_url: self.cfg.api_url.clone(),
            conn_url: self.cfg.conn_url.clone(),
            role: self.resource.role,
            running: self.resource.running,
            position: self.resource.position,
            timeline: self.resource.timeline,
            tags: self.cfg.tags.clone(),
            watchdog_failed: self.cfg.watchdog == WatchdogMode::Required && self.watchdog == WatchdogHealth::Failed,
        }
    }

    fn config_record(&self) -> Option<&ConfigRecord> {
        self.view.as_ref().and_then(|v| v.config.as_ref()).map(|c| &c.value)
    }

    fn paused(&self) -> bool {
        self.config_record().is_some_and(|c| c.pause)
    }

    fn sync_on(&self) -> bool {
        self.cfg.synchronous_mode || self.config_record().is_some_and(|c| c.synchronous_mode)
    }

    fn failsafe_on(&self) -> bool {
        self.cfg.failsafe_mode || self.config_record().is_some_and(|c| c.failsafe_mode)
    }

    fn max_lag(&self) -> u64 {
        self.config_record().and_then(|c| c.maximum_lag_on_failover).unwrap_or(self.cfg.timing.maximum_lag_on_failover)
    }

    /// The wall-clock time at `now`: the last reading moved on by the monotonic clock.
    fn wall_now(&self, now: Instant) -> Option<WallTime> {
        self.wall.map(|(at, wall)| wall.saturating_add(now.saturating_since(at)))
    }

    /// The failover request `f` if it is in force at `now`: not scheduled, or its time has
    /// come on our wall clock. A schedule still ahead (or with no wall clock known) is not: a
    /// leader lost before that time leaves an ordinary failover, under every rule; a named
    /// candidate's bypass of the lag and sync checks must not come from a switchover that the
    /// leader never checked. A member whose clock runs behind sees a started switchover as
    /// not in force for a moment: it then follows the ordinary rules, which are safe.
    fn in_force<'v>(&self, f: Option<&'v Versioned<FailoverRecord>>, now: Instant) -> Option<&'v FailoverRecord> {
        let f = &f?.value;
        match f.scheduled_at {
            None => Some(f),
            Some(at) => self.wall_now(now).is_some_and(|wall| at <= wall).then_some(f),
        }
    }

    /// Whether the leader named by `req` acts on it at `now` (Patroni's
    /// `should_run_scheduled_action`, without its sleep: a timer wakes us at the time).
    fn schedule_of(&self, req: &FailoverRecord, now: Instant) -> Schedule {
        let Some(at) = req.scheduled_at else { return Schedule::Due };
        let Some(wall) = self.wall_now(now).filter(|_| !self.paused()) else { return Schedule::Wait };
        let ahead = wall.millis_until(at);
        if ahead > 0 {
            return Schedule::Later(Duration::from_millis(ahead.unsigned_abs()));
        }
        let late = Duration::from_millis(ahead.unsigned_abs());
        if late > self.cfg.timing.loop_wait.mul_f64(1.5) { Schedule::Stale(late) } else { Schedule::Due }
    }

    fn keepalive_watchdog(&mut self) {
        if self.watchdog_armed {
            self.actions.push_back(Action::KeepAliveWatchdog);
        }
    }

    fn disarm_watchdog(&mut self) {
        if self.watchdog_armed {
            self.watchdog_armed = false;
            self.actions.push_back(Action::DisarmWatchdog);
        }
    }
}

fn expect_for(view: &ClusterView, key: ControlKey) -> Expect {
    match view.control_version(key) {
        Some(v) => Expect::Version(v.clone()),
        None => Expect::Absent,
    }
}

/// Whether two standby lists name the same members, in any order (the resource waits for all
/// of them, so the order carries no meaning; re-sending a reordered list would only restart the
/// resource's confirmation).
fn same_members(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

fn cluster_timeline(view: &ClusterView) -> Option<u64> {
    view.history.as_ref().and_then(|h| h.value.0.last()).map(|e| e.timeline + 1)
}

fn check_candidate(view: &ClusterView, candidate: &str) -> Result<(), AdminError> {
    let m = view.member(candidate).ok_or_else(|| AdminError::UnknownMember(candidate.to_string()))?;
    if !m.tags.allows_failover() {
        return Err(AdminError::CandidateIneligible(candidate.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod scheduled_tests;
#[cfg(test)]
mod tests;
