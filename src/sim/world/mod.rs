//! [`World`]: the event queue, the nodes, the store and the network of one run. This file
//! holds the state and the event loop; each concern lives in a file of its own: the
//! [store], the [network], node [processes](process), their
//! [resources](resource_ops), [replication], [faults] and the [timeline].

mod faults;
mod network;
mod process;
mod replication;
mod resource_ops;
mod store;
mod timeline;

use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use super::clock::LocalClock;
use super::config::{Envelope, Knobs, Mutation, SimConfig};
use super::fault::{Direction, Fault, TimedFault, schedule_within};
use super::invariants::{Checker, Decision, Happening};
use super::picture::{NodeState, Picture, RoleBar};
use super::profile::StoreProfile;
use super::report::{Report, Timeline};
use super::resource::{Entry, FencedSink, Role, SimResource};
use super::rng::SimRng;
use crate::dcs::{CasOutcome, Lease, WatchEvent};
use crate::error::DcsError;
use crate::node::{ANY_STANDBY, Action, Input, Node, NodeConfig, NodeEvent, RequestId, ResourceStatus};
use crate::record::{ClusterView, DecodeCache, Epoch, Key, LeaderView, ResourceRole, Version};
use crate::rules::PeerReply;
use crate::testkit::model::{MemoryModel, SessionId};
use crate::time::Instant;

/// The scope every simulated node serves.
pub(crate) const SCOPE: &str = "sim";

type Nanos = u64;

fn ns(d: Duration) -> Nanos {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

fn at(t: Nanos) -> Instant {
    Instant::from_origin(Duration::from_nanos(t))
}

#[derive(Debug)]
enum Req {
    Node(Action),
    Keepalive,
    /// A cleanly stopped process ends its store session (the daemon's `Store::close`, the
    /// client's `shutdown`); nobody waits for the answer. `k8s_held` is the leader Lease as
    /// the Kubernetes client last wrote it, if it still counts it held: (epoch, the write's
    /// `k8s_renews`), its resourceVersion stand-in.
    Close {
        k8s_held: Option<(Epoch, u64)>,
    },
}

#[derive(Debug)]
enum Reply {
    /// The answer to a node's request, as the node takes it. Kubernetes only, the leader key
    /// as (epoch, renewals): what a load's observer saw of it (the observed-time rule), or what
    /// a won acquire or renewal wrote (what the client then counts held, for its close).
    Node(Input, Option<(u64, u64)>),
    /// The session keep-alive's answer (a new session if the old one was gone).
    Keepalive(Option<SessionId>),
}

#[derive(Debug, Clone, Copy)]
enum FaultEnd {
    StoreLink(usize, Direction),
    PeerLink(usize, usize),
    WatchLoss(usize),
    Slow(usize, Duration),
    Stall(usize),
    NetDelay(Duration),
}

#[derive(Debug)]
enum Ev {
    Timer { n: usize, generation: u64 },
    Arrive { n: usize, session: SessionId, req: Box<Req> },
    Reply { n: usize, inc: u64, reply: Box<Reply> },
    ResDone { n: usize, inc: u64 },
    Replicate,
    ClientWrite,
    StoreExpiry,
    WatchFire { n: usize, inc: u64 },
    Probe { n: usize, inc: u64, id: RequestId, replies: Vec<PeerReply> },
    Failsafe { n: usize, inc: u64, id: RequestId, ok: bool },
    Keepalive { n: usize, inc: u64 },
    FaultStart(usize),
    FaultEnd { heal: u64, end: FaultEnd },
    Restart { n: usize },
    Unpause { n: usize, generation: u64 },
    ShutdownTimeout { n: usize, inc: u64 },
    StoreUp { heal: u64 },
    EndChaos,
}

impl Ev {
    /// Events consumed by a node's process; buffered while its machine is paused.
    fn target(&self) -> Option<usize> {
        match self {
            Ev::Timer { n, .. }
            | Ev::Reply { n, .. }
            | Ev::ResDone { n, .. }
            | Ev::WatchFire { n, .. }
            | Ev::Probe { n, .. }
            | Ev::Failsafe { n, .. }
            | Ev::Keepalive { n, .. } => Some(*n),
            _ => None,
        }
    }

    fn code(&self) -> u64 {
        match self {
            Ev::Timer { .. } => 1,
            Ev::Arrive { .. } => 2,
            Ev::Reply { .. } => 3,
            Ev::ResDone { .. } => 4,
            Ev::Replicate => 5,
            Ev::ClientWrite => 6,
            Ev::StoreExpiry => 7,
            Ev::WatchFire { .. } => 8,
            Ev::Probe { .. } => 9,
            Ev::Failsafe { .. } => 10,
            Ev::Keepalive { .. } => 11,
            Ev::FaultStart(_) => 12,
            Ev::FaultEnd { .. } => 13,
            Ev::Restart { .. } => 14,
            Ev::Unpause { .. } => 15,
            Ev::ShutdownTimeout { .. } => 16,
            Ev::StoreUp { .. } => 17,
            Ev::EndChaos => 18,
        }
    }
}

/// A queue entry: the event itself waits in `World::events` (events are large; moving
/// them through every heap sift cost more than the rest of a step). One `u128` so that a
/// heap comparison is one comparison: time, then push order, then the slab slot; reversed,
/// because `BinaryHeap` is a max-heap and the earliest must come out first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Scheduled(std::cmp::Reverse<u128>);

/// Bits of a [`Scheduled`] key for the slab slot (the push counter takes the next 40).
const SLOT_BITS: u32 = 24;

impl Scheduled {
    fn new(t: Nanos, seq: u64, slot: u32) -> Self {
        assert!(slot < 1 << SLOT_BITS, "more than 16 M events queued at once: an event leak");
        assert!(seq < 1 << (64 - SLOT_BITS), "more than 10^12 events in one run");
        let order = (u128::from(seq) << SLOT_BITS) | u128::from(slot);
        Scheduled(std::cmp::Reverse((u128::from(t) << 64) | order))
    }

    fn t(self) -> Nanos {
        (self.0.0 >> 64) as Nanos
    }

    fn slot(self) -> u32 {
        (self.0.0 & ((1 << SLOT_BITS) - 1)) as u32
    }
}

#[derive(Debug, Clone)]
enum ResOp {
    Promote(Epoch),
    Demote,
    Follow(Option<String>),
    SetSync(Vec<String>),
}

/// The leader key as the store holds it, for I1'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StoreLease {
    pub node: usize,
    pub epoch: Epoch,
    /// Real instant from which another node could take the key over.
    pub expires: Nanos,
}

/// Whom an election probe asked, and who was really there to ask (for I3).
#[derive(Clone, Debug)]
struct ProbeTruth {
    asked: Vec<String>,
    present: Vec<(String, u64)>,
}

/// One member: its process (a real [`Node`]), machine, clock and resource.
pub(crate) struct Slot {
    pub name: String,
    pub node: Option<Node>,
    pub inc: u64,
    pub clock: LocalClock,
    pub res: SimResource,
    res_ops: VecDeque<ResOp>,
    res_busy: Option<ResOp>,
    demote_acked_early: bool,
    session: SessionId,
    pub paused: bool,
    /// Whether a pause freezes the resource too ([`SimConfig::pause_freezes_resource`]).
    pause_freezes_resource: bool,
    pause_gen: u64,
    /// [`Mutation::StaleOwnPosition`]: positions read at timer ticks; the node is told the
    /// newest one at least a loop old.
    positions: VecDeque<(Nanos, u64)>,
    inbox: Vec<Ev>,
    timer_gen: u64,
    /// When the live `Timer` event (generation `timer_gen`) fires; `None`: none is queued.
    timer_at: Option<Nanos>,
    sent: BTreeMap<u64, Instant>,
    /// Real instant at which the belief ends under the *declared* timing (I6), as the clock
    /// ran when the renewal was answered (a later forward step only makes the node stop sooner).
    pub declared_until: Option<Nanos>,
    /// The epoch `declared_until` belongs to.
    declared_epoch: Option<Epoch>,
    pub decision: Option<Decision>,
    last_probe: Vec<PeerReply>,
    /// Who the node's last election probe asked, and who was really there (for I3).
    probe_asked: Option<ProbeTruth>,
    /// Every member this process saw registered in a view it took, and when last (for I3:
    /// whom it could know of; the leader's roster counts while the node's view shows it).
    shown_members: BTreeMap<String, Nanos>,
    /// The record of an acquire this node sent and has not had an answer to (for the
    /// [`Mutation::AdoptForeignKey`] mutation).
    unanswered_acquire: Option<crate::record::LeaderRecord>,
    /// Newest leader epoch this node has seen in a load (I7).
    pub seen_epoch: Epoch,
    watch: Option<Version>,
    k8s_seen: Option<((u64, u64), Instant)>,
    k8s_expired: Option<(u64, u64)>,
    /// Kubernetes: the leader Lease this process's client counts held (its `held` map), as
    /// (epoch, `k8s_renews` of the write it was answered for); cleared by an answered
    /// release or a lost renewal, as the client forgets it then.
    k8s_held: Option<(Epoch, u64)>,
    to_store_cut: u32,
    from_store_cut: u32,
    watch_cut: u32,
    stall: u32,
    slow: Duration,
    reconnect_until: Nanos,
    /// The first request sent since the store last answered this node, while unanswered
    /// ([`World::connection_carries`]).
    unanswered_since: Option<Nanos>,
    /// The node's client gave its store connection up for dead; cleared by the next answer.
    connection_dead: bool,
    status_sent: Option<ResourceStatus>,
    pub down: bool,
    restart_after: Option<Duration>,
    same_instant_timers: u32,
}

impl Slot {
    /// Whether the resource accepts writes right now: it runs as primary on a live machine.
    pub fn acting(&self) -> Option<Epoch> {
        if !self.serving() {
            return None;
        }
        self.res.primary_epoch()
    }

    /// Whether the resource runs right now: its machine is up and not frozen.
    fn serving(&self) -> bool {
        self.node.is_some() && !(self.paused && self.pause_freezes_resource)
    }

    pub fn local(&self, now: Nanos) -> Instant {
        self.clock.local_at(now)
    }
}

/// A client write that was acknowledged.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Acked {
    pub write_id: u64,
    pub at: Nanos,
    /// Acknowledged after a synchronous standby had it.
    pub sync: bool,
    /// Acknowledged by this node's resource.
    pub node: usize,
}

/// The whole simulated world of one run.
pub(crate) struct World {
    pub cfg: SimConfig,
    pub seed: u64,
    pub knobs: Knobs,
    pub faults: Vec<TimedFault>,
    pub within_envelope: bool,
    pub now: Nanos,
    pub chaos_end: Nanos,
    pub end: Nanos,
    queue: BinaryHeap<Scheduled>,
    events: Vec<Option<Ev>>,
    free_events: Vec<u32>,
    seq: u64,
    rng: SimRng,
    pub slots: Vec<Slot>,
    model: MemoryModel,
    sessions: Vec<SessionId>,
    store_down_until: Nanos,
    lock_delay_until: Nanos,
    k8s_renews: u64,
    just_released: bool,
    last_rev: u64,
    /// The keys that wake watches ([`wakes_watches`](store::wakes_watches)) with the revision
    /// that last wrote each, as `store_changed` last saw them.
    watched_keys: Vec<(Key, u64)>,
    /// The revision at which a key that wakes watches last changed (was written or deleted).
    watched_rev: u64,
    expiry_at: Option<Nanos>,
    pub lease: Option<StoreLease>,
    lease_session: Option<SessionId>,
    pub granted: std::collections::BTreeSet<Epoch>,
    peer_cut: Vec<u32>,
    net_extra: Duration,
    heal: u64,
    pub healed: bool,
    pub sink: FencedSink,
    next_write: u64,
    pub acked: Vec<Acked>,
    happened: Vec<Happening>,
    /// Taken out while it runs (it reads the world); boxed so taking it moves a pointer.
    checker: Option<Box<Checker>>,
    hash: u64,
    pub steps: u64,
    /// Node timers pushed on because they kept firing at one instant.
    pub timer_spins: u64,
    pub timeline: Timeline,
    /// Per-node intervals and marks for the SVG (empty without a timeline).
    pub picture: Picture,
    /// Acknowledged writes already counted in the picture.
    pictured_acks: usize,
    node_timing: crate::config::Timing,
    /// The declared envelope (computed once; invariants read it every step).
    pub env: Envelope,
    /// I4: from this instant exactly one node must act.
    pub liveness_deadline: Nanos,
    /// The decoded store view at a revision (decoding is the costliest part of a load).
    view_cache: Option<(u64, Arc<ClusterView>)>,
    /// Records decoded by earlier loads (most do not change between revisions).
    decode_cache: DecodeCache,
    /// The leader key may have changed since `store_changed` last looked (an acquire, renew
    /// or release was applied, or sessions expired); other writes cannot change it.
    leader_dirty: bool,
    settle_actions: Vec<Action>,
    settle_events: Vec<NodeEvent>,
    /// A replication round is queued.
    replication_armed: bool,
    /// Push number reserved for the start of fault 0 (fault `i` has `fault_seq + i`).
    fault_seq: u64,
    /// See [`World::timed_horizon`]; quiet steps before it skip the time-dependent checks.
    timed_horizon: Nanos,
    /// Calls of `settle` so far (a step without one left every node as it was).
    settles: u64,
}

impl World {
    pub fn new(cfg: SimConfig, seed: u64, mut faults: Vec<TimedFault>) -> Self {
        let root = SimRng::new(seed);
        let knobs = Knobs::draw(&mut root.fork(1), &cfg);
        let env = cfg.envelope();
        faults.retain(|f| f.at < cfg.chaos && f.fault.node().is_none_or(|n| n < cfg.nodes));
        faults.sort_by_key(|f| f.at);
        let within_envelope = schedule_within(&faults, &env, cfg.timing.max_drift_ppm, cfg.profile);
        let mut node_timing = cfg.timing.clone();
        match cfg.mutation {
            Some(Mutation::NoSafetyMargin) => {
                node_timing.safety_margin = Duration::from_millis(1);
                node_timing.max_drift_ppm = 0;
            }
            Some(Mutation::NoLagCheck) => node_timing.maximum_lag_on_failover = u64::MAX,
            _ => {}
        }
        let chaos_end = ns(cfg.chaos);
        let end = chaos_end + ns(cfg.liveness);
        let mut model = MemoryModel::new();
        let mut sessions = Vec::new();
        let mut slots = Vec::new();
        let mut clock_rng = root.fork(2);
        // Every log ends up holding about every write of the run (replicas copy the primary's),
        // so room for them all up front costs no more memory than growing there, without the
        // copies; capped for absurd write rates.
        let expected_writes = (end / ns(cfg.write_interval).max(1)).min(1 << 22) as usize + 64;
        for i in 0..cfg.nodes {
            let session = model.open_session(cfg.profile.session_ttl(cfg.timing.ttl), Instant::ZERO);
            sessions.push(session);
            let offset = clock_rng.duration(Duration::ZERO, Duration::from_secs(3600));
            slots.push(Slot {
                name: format!("n{i}"),
                node: None,
                inc: 0,
                clock: LocalClock::new(offset, knobs.drift_ppm[i]),
                res: SimResource::with_capacity(expected_writes),
                res_ops: VecDeque::new(),
                res_busy: None,
                demote_acked_early: false,
                session,
                paused: false,
                pause_freezes_resource: cfg.pause_freezes_resource,
                positions: VecDeque::new(),
                pause_gen: 0,
                inbox: Vec::new(),
                timer_gen: 0,
                timer_at: None,
                sent: BTreeMap::new(),
                declared_until: None,
                declared_epoch: None,
                decision: None,
                last_probe: Vec::new(),
                probe_asked: None,
                shown_members: BTreeMap::new(),
                unanswered_acquire: None,
                seen_epoch: Epoch(0),
                watch: None,
                k8s_seen: None,
                k8s_expired: None,
                k8s_held: None,
                to_store_cut: 0,
                from_store_cut: 0,
                watch_cut: 0,
                stall: 0,
                slow: Duration::ZERO,
                reconnect_until: 0,
                unanswered_since: None,
                connection_dead: false,
                status_sent: None,
                down: false,
                restart_after: None,
                same_instant_timers: 0,
            });
        }
        let n = cfg.nodes;
        let timeline = Timeline::new(cfg.timeline_rows);
        let picture = if cfg.timeline_rows > 0 { Picture::new(n, end) } else { Picture::default() };
        let mut w = World {
            sink: FencedSink { enforce: cfg.mutation != Some(Mutation::NoFencing), ..FencedSink::default() },
            cfg,
            seed,
            knobs,
            faults,
            within_envelope,
            now: 0,
            chaos_end,
            end,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            free_events: Vec::new(),
            seq: 0,
            rng: root.fork(3),
            slots,
            model,
            sessions,
            store_down_until: 0,
            lock_delay_until: 0,
            k8s_renews: 0,
            just_released: false,
            last_rev: 0,
            watched_keys: Vec::new(),
            watched_rev: 0,
            expiry_at: None,
            lease: None,
            lease_session: None,
            granted: Default::default(),
            peer_cut: vec![0; n * n],
            net_extra: Duration::ZERO,
            heal: 0,
            healed: false,
            next_write: 0,
            acked: Vec::with_capacity(expected_writes),
            happened: Vec::new(),
            checker: Some(Box::default()),
            hash: 0xcbf2_9ce4_8422_2325,
            steps: 0,
            timer_spins: 0,
            timeline,
            picture,
            pictured_acks: 0,
            node_timing,
            env,
            liveness_deadline: 0,
            view_cache: None,
            decode_cache: DecodeCache::default(),
            leader_dirty: true,
            settle_actions: Vec::new(),
            settle_events: Vec::new(),
            replication_armed: false,
            fault_seq: 0,
            settles: 0,
            timed_horizon: 0,
        };
        w.liveness_deadline = w.chaos_end + ns(w.cfg.liveness_bound());
        for i in 0..n {
            w.start_process(i);
        }
        // Faults are queued one at a time (a day of chaos holds thousands; a heap that held
        // them all was deeper for every other event), each with the push number it would
        // have had if all were queued now, so same-instant events keep their order.
        w.fault_seq = w.seq + 1;
        w.seq += w.faults.len() as u64;
        w.queue_fault(0);
        w.arm_replication();
        let wi = ns(w.cfg.write_interval);
        w.push(wi, Ev::ClientWrite);
        w.push(chaos_end, Ev::EndChaos);
        w.schedule_expiry();
        w
    }

    fn push(&mut self, t: Nanos, ev: Ev) {
        self.seq += 1;
        self.push_as(t, self.seq, ev);
    }

    /// Queues the start of fault `i`, if there is one (faults are sorted by time).
    fn queue_fault(&mut self, i: usize) {
        if let Some(f) = self.faults.get(i) {
            let t = ns(f.at);
            self.push_as(t, self.fault_seq + i as u64, Ev::FaultStart(i));
        }
    }

    fn push_as(&mut self, t: Nanos, seq: u64, ev: Ev) {
        let slot = match self.free_events.pop() {
            Some(i) => {
                self.events[i as usize] = Some(ev);
                i
            }
            None => {
                self.events.push(Some(ev));
                (self.events.len() - 1) as u32
            }
        };
        self.queue.push(Scheduled::new(t.max(self.now), seq, slot));
    }

    fn after(&mut self, d: Duration, ev: Ev) {
        let t = self.now.saturating_add(ns(d));
        self.push(t, ev);
    }

    /// Folds `x` into the trace hash: a word at a time (a multiply and a rotate), order-sensitive.
    pub(crate) fn mix(&mut self, x: u64) {
        self.hash = (self.hash ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }

    /// Runs to the end and returns the report.
    pub fn run(mut self) -> Report {
        self.row("start");
        while let Some(s) = self.queue.pop() {
            if s.t() > self.end {
                break;
            }
            let ev = self.events[s.slot() as usize].take().expect("a queued event");
            self.free_events.push(s.slot());
            // A timer superseded by a later settle: nothing happens, so it is not a step.
            if let Ev::Timer { n, generation } = ev
                && generation != self.slots[n].timer_gen
            {
                continue;
            }
            self.now = s.t();
            self.steps += 1;
            let code = ev.code();
            self.mix(s.t());
            self.mix(code);
            if let Some(n) = ev.target()
                && self.slots[n].paused
            {
                self.slots[n].inbox.push(ev);
                continue;
            }
            let replication_tick = matches!(ev, Ev::Replicate);
            let quiet_kind = matches!(ev, Ev::Replicate | Ev::ClientWrite);
            let settles = self.settles;
            self.handle(ev);
            // A write or replication round that told no node anything changed no role, lease,
            // belief or timeline glyph.
            let quiet = quiet_kind && self.settles == settles;
            if !replication_tick {
                // Anything else may give replicas something to copy.
                self.arm_replication();
            }
            self.check(quiet);
        }
        self.now = self.end;
        let mut checker = self.checker.take().expect("the checker is in place");
        checker.finish(&self);
        self.checker = Some(checker);
        self.row("end");
        Report::build(&self, self.checker.as_deref().expect("the checker is in place"))
    }

    fn check(&mut self, quiet: bool) {
        let happened = std::mem::take(&mut self.happened);
        for h in &happened {
            self.mix(h.code());
        }
        // A quiet step before the next deadline finds exactly what the last full check found.
        let unchanged = quiet && self.now < self.timed_horizon;
        let mut checker = self.checker.take().expect("the checker is in place");
        let before = checker.violations_len();
        checker.step(self, &happened, unchanged);
        let fresh: Vec<String> = checker.found.violations[before..].iter().map(|v| format!("VIOLATION {v}")).collect();
        self.checker = Some(checker);
        self.happened = happened;
        self.picture_step(unchanged);
        self.happened.clear();
        if !quiet || !fresh.is_empty() {
            self.row_if_changed();
        }
        if !unchanged {
            self.timed_horizon = self.timed_horizon();
        }
        for f in fresh {
            self.row(&f);
        }
    }

    /// The first instant at which a time-dependent check could turn out differently with the
    /// state as it is now: a lease expiring under an acting node (I1'), a belief plus its
    /// allowance running out (I6), a belief bar ending (picture), the liveness deadline (I4).
    fn timed_horizon(&self) -> Nanos {
        let allowance = ns(self.env.max_pause + self.env.max_demote + self.env.max_slow_extra);
        let mut h = if self.now < self.liveness_deadline { self.liveness_deadline } else { Nanos::MAX };
        for (n, slot) in self.slots.iter().enumerate() {
            if let Some(until) = slot.declared_until
                && slot.node.is_some()
            {
                if until > self.now {
                    h = h.min(until);
                }
                if slot.acting().is_some() {
                    h = h.min(until.saturating_add(allowance));
                }
            }
            if let (Some(_), Some(l)) = (slot.acting(), self.lease)
                && l.node == n
            {
                h = h.min(l.expires);
            }
        }
        h
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Timer { n, generation } => {
                if generation == self.slots[n].timer_gen && self.slots[n].node.is_some() {
                    self.slots[n].timer_at = None;
                    if self.cfg.mutation == Some(Mutation::StaleOwnPosition) {
                        let loop_ago = self.now.saturating_sub(self.cfg.timing.loop_wait.as_nanos() as Nanos);
                        let slot = &mut self.slots[n];
                        slot.positions.push_back((self.now, slot.res.position()));
                        while slot.positions.get(1).is_some_and(|&(t, _)| t <= loop_ago) {
                            slot.positions.pop_front();
                        }
                    }
                    let now = self.slots[n].local(self.now);
                    if let Some(node) = self.slots[n].node.as_mut() {
                        node.handle(Input::Timeout, now);
                    }
                    self.settle(n);
                }
            }
            Ev::Arrive { n, session, req } => self.store_arrive(n, session, *req),
            Ev::Reply { n, inc, reply } => {
                if inc == self.slots[n].inc && self.slots[n].node.is_some() {
                    self.heard_from_store(n);
                    self.deliver(n, *reply);
                    self.settle(n);
                }
            }
            Ev::ResDone { n, inc } => {
                if inc == self.slots[n].inc {
                    self.resource_done(n);
                }
            }
            Ev::Replicate => {
                self.replication_armed = false;
                let settles = self.settles;
                // A round copies every log it can; another is due only if a node was told
                // something (it may have acted) or a source changed after its replicas copied.
                if self.replicate() && (self.settles != settles || self.replication_pending()) {
                    self.arm_replication();
                }
            }
            Ev::ClientWrite => {
                self.client_write();
                let d = self.cfg.write_interval;
                self.after(d, Ev::ClientWrite);
            }
            Ev::StoreExpiry => {
                self.expiry_at = None;
                self.model.expire(at(self.now));
                self.leader_dirty = true;
                self.store_changed();
            }
            Ev::WatchFire { n, inc } => {
                if inc == self.slots[n].inc {
                    self.heard_from_store(n);
                    let now = self.slots[n].local(self.now);
                    if let Some(node) = self.slots[n].node.as_mut() {
                        node.handle(Input::Watched(WatchEvent::Changed), now);
                    }
                    self.settle(n);
                }
            }
            Ev::Probe { n, inc, id, mut replies } => {
                if inc == self.slots[n].inc {
                    if self.cfg.mutation == Some(Mutation::StaleOwnPosition) {
                        // The peers' answers as fresh as they come; our own position stays
                        // as the loop began.
                        replies = replies.iter().map(|r| self.probe_one(n, r.name())).collect();
                    }
                    // Our own status read after the peers answered, as the driver does: with
                    // the old primary still streaming, ours is then the fresher, and one
                    // candidate races (issue 15).
                    self.feed_status(n);
                    let now = self.slots[n].local(self.now);
                    self.slots[n].last_probe = replies.clone();
                    if let Some(node) = self.slots[n].node.as_mut() {
                        node.handle(Input::PeersAnswered { id, replies }, now);
                    }
                    self.settle(n);
                }
            }
            Ev::Failsafe { n, inc, id, ok } => {
                if inc == self.slots[n].inc {
                    let now = self.slots[n].local(self.now);
                    if let Some(node) = self.slots[n].node.as_mut() {
                        node.handle(Input::FailsafeAnswered { id, all_confirmed: ok }, now);
                    }
                    self.settle(n);
                }
            }
            Ev::Keepalive { n, inc } => {
                if inc == self.slots[n].inc && self.slots[n].node.is_some() {
                    if self.keeps_alive_in_background(n) {
                        self.send_to_store(n, Req::Keepalive);
                    }
                    let d = self.cfg.timing.ttl / 3;
                    self.after(d, Ev::Keepalive { n, inc });
                }
            }
            Ev::FaultStart(i) => {
                self.queue_fault(i + 1);
                if !self.healed {
                    let f = self.faults[i].clone();
                    self.row(&format!("fault {:?}", f.fault));
                    self.start_fault(f.fault);
                }
            }
            Ev::FaultEnd { heal, end } => {
                if heal == self.heal {
                    self.end_fault(end);
                }
            }
            Ev::Restart { n } => {
                if self.slots[n].down {
                    self.start_process(n);
                }
            }
            Ev::Unpause { n, generation } => {
                if self.slots[n].paused && self.slots[n].pause_gen == generation {
                    self.unpause(n);
                }
            }
            Ev::ShutdownTimeout { n, inc } => {
                if inc == self.slots[n].inc && self.slots[n].node.is_some() {
                    let d = self.slots[n].restart_after.take().unwrap_or_default();
                    self.crash(n, d);
                }
            }
            Ev::StoreUp { heal } => {
                if heal == self.heal {
                    self.store_up();
                }
            }
            Ev::EndChaos => self.end_chaos(),
        }
    }

    // === processes ===

    /// Acknowledged writes that are not in `n`'s log.
    pub(crate) fn missing_acked(&self, n: usize, sync_only: bool) -> Vec<u64> {
        let log = &self.slots[n].res.log;
        let mut ids: Vec<u64> = self.acked.iter().filter(|a| !sync_only || a.sync).map(|a| a.write_id).collect();
        // Write ids only grow along a log (replicas copy prefixes, primaries append new ids)
        // and acknowledgements mostly come in write order: then one merge walk finds them
        // all. Otherwise a binary search each, or a set should the log not be sorted.
        if !log.windows(2).all(|w| w[0].write_id < w[1].write_id) {
            let have: std::collections::HashSet<u64> = log.iter().map(|e| e.write_id).collect();
            ids.retain(|id| !have.contains(id));
        } else if ids.windows(2).all(|w| w[0] < w[1]) {
            let mut at = 0;
            ids.retain(|&id| {
                while at < log.len() && log[at].write_id < id {
                    at += 1;
                }
                !(at < log.len() && log[at].write_id == id)
            });
        } else {
            ids.retain(|&id| log.binary_search_by_key(&id, |e| e.write_id).is_err());
        }
        ids
    }

    pub(crate) fn trace_hash(&self) -> u64 {
        self.hash
    }
}
