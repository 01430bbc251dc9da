//! [`World`]: the event queue, the nodes, the store and the network of one run.

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
use crate::record::{ClusterView, DecodeCache, Epoch, LeaderView, ResourceRole, Version};
use crate::rules::{PeerReply, PeerStatus};
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
}

#[derive(Debug)]
enum Reply {
    /// The answer to a node's request, as the node takes it. A load carries what a Kubernetes
    /// observer saw of the leader key (epoch, renewals) for the observed-time rule.
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
    to_store_cut: u32,
    from_store_cut: u32,
    watch_cut: u32,
    stall: u32,
    slow: Duration,
    reconnect_until: Nanos,
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
                to_store_cut: 0,
                from_store_cut: 0,
                watch_cut: 0,
                stall: 0,
                slow: Duration::ZERO,
                reconnect_until: 0,
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

    /// Queues the next replication round on the fixed grid `k * replication_interval`,
    /// unless one is queued. Rounds stop while they find nothing to do.
    fn arm_replication(&mut self) {
        if self.replication_armed {
            return;
        }
        self.replication_armed = true;
        let d = ns(self.knobs.replication_interval).max(1);
        let next = (self.now / d + 1) * d;
        self.push(next, Ev::Replicate);
    }

    fn after(&mut self, d: Duration, ev: Ev) {
        let t = self.now.saturating_add(ns(d));
        self.push(t, ev);
    }

    /// Folds `x` into the trace hash: a word at a time (a multiply and a rotate), order-sensitive.
    pub(crate) fn mix(&mut self, x: u64) {
        self.hash = (self.hash ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }

    fn net_delay(&mut self) -> Duration {
        let (lo, hi) = self.knobs.net_delay;
        self.rng.duration(lo, hi) + self.net_extra
    }

    fn lost(&mut self) -> bool {
        let p = self.knobs.loss_ppm;
        self.rng.chance(p)
    }

    fn peer_ok(&self, from: usize, to: usize) -> bool {
        from == to || self.peer_cut[from * self.cfg.nodes + to] == 0
    }

    fn alive(&self, n: usize) -> bool {
        self.slots[n].node.is_some() && !self.slots[n].paused
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }

    // === the loop ===

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

    /// Records what the SVG picture shows: node states, promotions, acknowledged writes.
    /// With `unchanged` (see [`Checker::step`]) the node states are as last recorded.
    fn picture_step(&mut self, unchanged: bool) {
        if self.timeline.capacity() == 0 {
            return;
        }
        for h in &self.happened {
            if let Happening::BecamePrimary { node, epoch } = *h {
                self.picture.promotion(self.now, node, epoch);
            }
        }
        for a in &self.acked[self.pictured_acks..] {
            self.picture.write(a.at, a.node);
        }
        self.pictured_acks = self.acked.len();
        if unchanged {
            return;
        }
        let nodes = self.slots.len();
        let any_peer_cut = self.peer_cut.iter().any(|c| *c > 0);
        for (i, slot) in self.slots.iter().enumerate() {
            let role = if slot.node.is_none() {
                RoleBar::Down
            } else if slot.paused {
                RoleBar::Paused
            } else if slot.acting().is_some() {
                RoleBar::Primary
            } else if matches!(slot.res_busy, Some(ResOp::Promote(_))) {
                RoleBar::Promoting
            } else if matches!(slot.res_busy, Some(ResOp::Demote)) {
                RoleBar::Demoting
            } else {
                RoleBar::Replica
            };
            let peer_cut = any_peer_cut
                && (0..nodes).any(|j| self.peer_cut[i * nodes + j] > 0 || self.peer_cut[j * nodes + i] > 0);
            let state = NodeState {
                role,
                belief: slot.node.is_some() && slot.declared_until.is_some_and(|u| u > self.now),
                holds_key: self.lease.is_some_and(|l| l.node == i),
                store_cut: slot.to_store_cut + slot.from_store_cut > 0,
                peer_cut,
            };
            self.picture.state(i, self.now, state);
        }
    }

    pub(crate) fn glyphs(&self) -> String {
        let (buf, len) = self.glyph_bytes();
        String::from_utf8_lossy(&buf[..len]).into_owned()
    }

    /// The glyphs of [`glyphs`](Self::glyphs) without allocating (at most 9 nodes, 4 bytes each).
    fn glyph_bytes(&self) -> ([u8; 36], usize) {
        let mut buf = [b' '; 36];
        let mut len = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            let g = if slot.node.is_none() {
                'x'
            } else if slot.paused {
                'z'
            } else if slot.acting().is_some() {
                'P'
            } else if matches!(slot.res_busy, Some(ResOp::Promote(_))) {
                'p'
            } else if matches!(slot.res_busy, Some(ResOp::Demote)) {
                'd'
            } else {
                'r'
            };
            buf[len] = g as u8;
            buf[len + 1] = if self.lease.is_some_and(|l| l.node == i) { b'L' } else { b' ' };
            buf[len + 2] = if slot.to_store_cut + slot.from_store_cut > 0 { b'#' } else { b' ' };
            len += 4;
        }
        (buf, len)
    }

    fn row_if_changed(&mut self) {
        if self.timeline.capacity() == 0 {
            return;
        }
        let (buf, len) = self.glyph_bytes();
        if self.timeline.last_glyphs().as_bytes() != &buf[..len] {
            let g = String::from_utf8_lossy(&buf[..len]).into_owned();
            self.timeline.push(self.now, g, String::new());
        }
    }

    fn row(&mut self, note: &str) {
        if self.timeline.capacity() == 0 {
            return;
        }
        let g = self.glyphs();
        self.timeline.push(self.now, g, note.to_string());
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
                    self.send_to_store(n, Req::Keepalive);
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

    fn start_process(&mut self, n: usize) {
        let inc = self.slots[n].inc + 1;
        let now_l = self.slots[n].local(self.now);
        let mut cfg = NodeConfig::new(self.slots[n].name.clone(), inc);
        cfg.timing = self.node_timing.clone();
        cfg.api_url = Some(format!("http://{}", self.slots[n].name));
        cfg.conn_url = Some(self.slots[n].name.clone());
        cfg.synchronous_mode = self.cfg.synchronous;
        cfg.synchronous_node_count = NonZeroUsize::new(self.cfg.sync_count).unwrap_or(NonZeroUsize::MIN);
        cfg.synchronous_mode_strict = self.cfg.strict;
        let node = Node::new(cfg, now_l).expect("simulated timing is valid");
        let session = self.model.open_session(self.cfg.profile.session_ttl(self.cfg.timing.ttl), at(self.now));
        self.sessions.push(session);
        let slot = &mut self.slots[n];
        slot.inc = inc;
        slot.node = Some(node);
        slot.session = session;
        slot.down = false;
        slot.paused = false;
        slot.inbox.clear();
        slot.sent.clear();
        slot.watch = None;
        slot.k8s_seen = None;
        slot.k8s_expired = None;
        slot.status_sent = None;
        slot.res.running = true;
        slot.res.role = Role::Replica(None);
        slot.res.sync_standbys.clear();
        slot.res.pending_sync.clear();
        slot.res_ops.clear();
        slot.res_busy = None;
        slot.decision = None;
        slot.last_probe.clear();
        slot.probe_asked = None;
        slot.shown_members.clear();
        slot.unanswered_acquire = None;
        slot.declared_until = None;
        slot.declared_epoch = None;
        self.mix(0x5354_4152_5400 + n as u64);
        let d = self.cfg.timing.ttl / 3;
        self.after(d, Ev::Keepalive { n, inc });
        self.settle(n);
        self.schedule_expiry();
    }

    fn crash(&mut self, n: usize, down_for: Duration) {
        let slot = &mut self.slots[n];
        if slot.node.is_none() {
            return;
        }
        slot.node = None;
        slot.inc += 1;
        slot.down = true;
        slot.paused = false;
        slot.inbox.clear();
        slot.res.running = false;
        slot.res.role = Role::Replica(None);
        slot.res.pending_sync.clear();
        slot.res_ops.clear();
        slot.res_busy = None;
        slot.timer_gen += 1;
        slot.timer_at = None;
        slot.restart_after = None;
        if !self.healed {
            self.after(down_for, Ev::Restart { n });
        } else {
            self.after(Duration::ZERO, Ev::Restart { n });
        }
    }

    fn unpause(&mut self, n: usize) {
        self.slots[n].paused = false;
        let inbox = std::mem::take(&mut self.slots[n].inbox);
        for ev in inbox {
            self.push(self.now, ev);
        }
        self.settle(n);
    }

    /// Feeds the node its resource status, carries out every action it emitted, and
    /// re-arms its timer.
    fn settle(&mut self, n: usize) {
        self.settles += 1;
        for _ in 0..10_000 {
            self.feed_status(n);
            let Some(node) = self.slots[n].node.as_mut() else { return };
            // Buffers reused across calls (a nested settle finds them taken and allocates).
            let mut actions = std::mem::take(&mut self.settle_actions);
            let mut events = std::mem::take(&mut self.settle_events);
            while let Some(a) = node.poll_action() {
                actions.push(a);
            }
            while let Some(e) = node.poll_event() {
                events.push(e);
            }
            let idle = actions.is_empty() && events.is_empty();
            for e in events.drain(..) {
                self.on_node_event(n, e);
            }
            for a in actions.drain(..) {
                self.do_action(n, a);
            }
            self.settle_actions = actions;
            self.settle_events = events;
            if idle {
                break;
            }
        }
        let Some(node) = self.slots[n].node.as_ref() else { return };
        if node.is_stopped() {
            let d = self.slots[n].restart_after.take().unwrap_or(self.cfg.timing.loop_wait);
            self.crash(n, d);
            return;
        }
        let timeout = node.poll_timeout();
        let slot = &mut self.slots[n];
        // Most settles leave the deadline where it was: keep the queued timer instead of
        // queueing a copy (stale copies were two thirds of all events).
        if let (Some(t), Some(queued)) = (timeout, slot.timer_at)
            && slot.clock.real_when(t, self.now) == queued
            && queued > self.now
        {
            return;
        }
        slot.timer_gen += 1;
        slot.timer_at = None;
        if let Some(t) = timeout {
            let mut real = slot.clock.real_when(t, self.now);
            // Guard against a node whose timer never moves forward: virtual time would stand
            // still. Push it on and count it (a driver would busy-loop there).
            if real <= self.now {
                slot.same_instant_timers += 1;
                if slot.same_instant_timers > 1000 {
                    slot.same_instant_timers = 0;
                    self.timer_spins += 1;
                    real = self.now + 1_000_000;
                }
            } else {
                slot.same_instant_timers = 0;
            }
            let generation = slot.timer_gen;
            slot.timer_at = Some(real);
            self.push(real, Ev::Timer { n, generation });
        }
    }

    fn on_node_event(&mut self, n: usize, e: NodeEvent) {
        let code = match &e {
            NodeEvent::Acquired { epoch } => 0x100 + epoch.0,
            NodeEvent::Promoted { epoch } => 0x200 + epoch.0,
            NodeEvent::Demoting { .. } => 0x300,
            NodeEvent::Demoted => 0x400,
            NodeEvent::LeaderChanged { .. } => 0x500,
            NodeEvent::NotEligible(_) => 0x600,
            NodeEvent::AdminDone { .. } => 0x700,
            NodeEvent::Fatal(_) => 0x800,
        };
        self.mix(code + ((n as u64) << 32));
        match e {
            NodeEvent::Demoting { mode, why } => {
                self.row(&format!("{} demoting ({mode:?}): {why}", self.slots[n].name))
            }
            NodeEvent::Acquired { epoch } => {
                self.row(&format!("{} acquired the key, epoch {}", self.slots[n].name, epoch.0))
            }
            NodeEvent::Fatal(why) => self.row(&format!("{} fatal: {why}", self.slots[n].name)),
            _ => {}
        }
    }

    fn status_of(&self, n: usize) -> ResourceStatus {
        let slot = &self.slots[n];
        let primary = slot.res.primary_epoch().is_some();
        let sync_confirmed = if primary && self.cfg.mutation == Some(Mutation::ConfirmSyncEarly) {
            slot.res.sync_standbys.clone()
        } else if primary {
            slot.res
                .sync_standbys
                .iter()
                .filter(|s| {
                    self.index_of(s).is_some_and(|j| {
                        self.alive(j)
                            && self.slots[j].res.role == Role::Replica(Some(n))
                            && self.peer_ok(n, j)
                            && self.peer_ok(j, n)
                            && self.caught_up(j, n)
                    })
                })
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        ResourceStatus {
            running: slot.res.running,
            role: if primary { ResourceRole::Primary } else { ResourceRole::Replica },
            position: Some(slot.res.position()),
            timeline: None,
            sync_confirmed,
        }
    }

    /// Whether standby `j` holds every write of primary `n` that is not waiting for a
    /// synchronous copy (PostgreSQL reports a standby `sync` only once it has caught up;
    /// connected is not enough). Logs that agree at one index agree before it (write ids
    /// are unique and replicas copy prefixes), so one comparison suffices.
    fn caught_up(&self, j: usize, n: usize) -> bool {
        let (standby, primary) = (&self.slots[j].res.log, &self.slots[n].res);
        let need = primary.pending_sync.iter().map(|(idx, _)| *idx).min().unwrap_or(primary.log.len());
        need == 0 || (standby.len() >= need && standby[need - 1] == primary.log[need - 1])
    }

    fn feed_status(&mut self, n: usize) {
        if self.slots[n].node.is_none() {
            return;
        }
        let mut status = self.status_of(n);
        if self.cfg.mutation == Some(Mutation::StaleOwnPosition)
            && let Some(&(_, p)) = self.slots[n].positions.front()
        {
            status.position = Some(p);
        }
        if self.slots[n].status_sent.as_ref() == Some(&status) {
            return;
        }
        let now = self.slots[n].local(self.now);
        self.slots[n].status_sent = Some(status.clone());
        if let Some(node) = self.slots[n].node.as_mut() {
            node.handle(Input::ResourceStatus(status), now);
        }
    }

    fn do_action(&mut self, n: usize, a: Action) {
        let now_l = self.slots[n].local(self.now);
        match a {
            Action::Load { id }
            | Action::Acquire { id, .. }
            | Action::Renew { id, .. }
            | Action::Release { id, .. }
            | Action::PublishMember { id, .. }
            | Action::WriteControl { id, .. }
            | Action::DeleteControl { id, .. } => {
                self.mix(0x1000 + id.0);
                match &a {
                    Action::Acquire { record, .. } => {
                        self.record_decision(n);
                        self.slots[n].unanswered_acquire = Some(record.clone());
                    }
                    Action::Renew { lease, .. } | Action::Release { lease, .. } => {
                        let names_us = lease.record.member == self.slots[n].name;
                        self.happened.push(Happening::LeaseSent { node: n, epoch: lease.epoch, names_us });
                    }
                    _ => {}
                }
                self.slots[n].sent.insert(id.0, now_l);
                if self.slots[n].sent.len() > 64 {
                    let first = *self.slots[n].sent.keys().next().expect("non-empty");
                    self.slots[n].sent.remove(&first);
                }
                self.send_to_store(n, Req::Node(a));
            }
            Action::Watch { after } => {
                let after = after.unwrap_or_else(|| Version::new(self.model.revision()));
                self.slots[n].watch = Some(after);
                self.fire_watches();
            }
            Action::ProbePeers { id, mut peers } => {
                if self.cfg.mutation == Some(Mutation::AskRegisteredOnly) {
                    let view = self.slots[n].node.as_ref().and_then(|node| node.view());
                    peers.retain(|p| view.is_some_and(|v| v.member(&p.name).is_some()));
                }
                let asked = peers.iter().map(|p| p.name.clone()).collect();
                self.slots[n].probe_asked = Some(ProbeTruth { asked, present: self.present_peers(n) });
                self.slots[n].last_probe.clear();
                let replies: Vec<PeerReply> = peers.iter().map(|p| self.probe_one(n, &p.name)).collect();
                let d = 2 * self.net_delay();
                let inc = self.slots[n].inc;
                self.after(d, Ev::Probe { n, inc, id, replies });
            }
            Action::FailsafeCheck { id, peers, .. } => {
                let name = self.slots[n].name.clone();
                let mut ok = !peers.is_empty();
                for p in &peers {
                    let Some(j) = self.index_of(&p.name) else {
                        ok = false;
                        continue;
                    };
                    if !(self.alive(j) && self.peer_ok(n, j) && self.peer_ok(j, n)) {
                        ok = false;
                        continue;
                    }
                    let pl = self.slots[j].local(self.now);
                    let accepted = self.slots[j].node.as_mut().is_some_and(|node| node.handle_failsafe_ping(&name, pl));
                    ok &= accepted;
                }
                let d = 2 * self.net_delay();
                let inc = self.slots[n].inc;
                self.after(d, Ev::Failsafe { n, inc, id, ok });
            }
            Action::ArmWatchdog { .. } | Action::KeepAliveWatchdog | Action::DisarmWatchdog => {}
            Action::Promote { epoch } => {
                self.happened.push(Happening::PromoteAsked { node: n, epoch });
                self.row(&format!("{} promote(epoch {})", self.slots[n].name, epoch.0));
                self.res_op(n, ResOp::Promote(epoch));
            }
            Action::Demote { mode } => {
                self.mix(0x2000 + mode as u64);
                // A leader's switchover probe says nothing about a later election.
                self.slots[n].last_probe.clear();
                self.slots[n].probe_asked = None;
                self.res_op(n, ResOp::Demote);
            }
            Action::Follow { leader, .. } => self.res_op(n, ResOp::Follow(leader)),
            Action::SetSyncStandbys { names } => self.res_op(n, ResOp::SetSync(names)),
        }
    }

    fn record_decision(&mut self, n: usize) {
        if self.slots[n].node.is_none() {
            return;
        }
        // The replies and the peers present belong to the probe behind this acquire; a node
        // that asked nobody decided at once, so who was present is who is present now.
        let probe = self.slots[n].probe_asked.take();
        let probe = probe.unwrap_or_else(|| ProbeTruth { asked: Vec::new(), present: self.present_peers(n) });
        let peers = std::mem::take(&mut self.slots[n].last_probe);
        let view = self.slots[n].node.as_ref().and_then(|node| node.view());
        let decision = Decision {
            at: self.now,
            my_position: self.slots[n].res.position(),
            leader_position: view.and_then(|v| v.status.as_ref()).map(|s| s.value.position),
            sync: view.and_then(|v| v.sync.as_ref()).map(|s| s.value.clone()),
            peers,
            asked: probe.asked,
            present: probe.present,
            real_max_position: self.slots.iter().map(|s| s.res.position()).max().unwrap_or(0),
        };
        self.slots[n].decision = Some(decision);
    }

    /// The other nodes that are up, that `n` and they can reach, and that `n` saw registered
    /// within the roster's memory or finds on the leader's roster in its current view, with
    /// their real log positions: whom an election by `n` could have known of and heard from
    /// right now. A member nothing names to `n` cannot be asked.
    fn present_peers(&self, n: usize) -> Vec<(String, u64)> {
        // A little under the node's memory: the node measures it on its own drifting clock.
        let memory = ns(self.cfg.timing.ttl * crate::node::ROSTER_MEMORY_TTLS) * 9 / 10;
        let status = self.slots[n].node.as_ref().and_then(|node| node.view()).and_then(|v| v.status.as_ref());
        let shown = |j: usize| {
            let name = &self.slots[j].name;
            self.slots[n].shown_members.get(name).is_some_and(|t| self.now < t + memory)
                || status.is_some_and(|s| s.value.members.contains_key(name))
        };
        (0..self.slots.len())
            .filter(|&j| j != n && self.alive(j) && self.peer_ok(n, j) && self.peer_ok(j, n) && shown(j))
            .map(|j| (self.slots[j].name.clone(), self.slots[j].res.position()))
            .collect()
    }

    fn probe_one(&mut self, n: usize, name: &str) -> PeerReply {
        let Some(j) = self.index_of(name) else { return PeerReply::Unreachable { name: name.to_string() } };
        if !(self.alive(j) && self.peer_ok(n, j) && self.peer_ok(j, n)) || self.lost() {
            return PeerReply::Unreachable { name: name.to_string() };
        }
        let s = self.status_of(j);
        PeerReply::Reachable(PeerStatus {
            name: name.to_string(),
            role: s.role,
            running: s.running,
            position: s.position,
            timeline: s.timeline,
            tags: Default::default(),
            watchdog_failed: false,
        })
    }

    // === resource ===

    fn res_op(&mut self, n: usize, op: ResOp) {
        self.slots[n].res_ops.push_back(op);
        self.pump_resource(n);
    }

    fn pump_resource(&mut self, n: usize) {
        while self.slots[n].res_busy.is_none() {
            let Some(op) = self.slots[n].res_ops.pop_front() else { return };
            match op {
                ResOp::Promote(_) | ResOp::Demote => {
                    let (lo, hi) = if matches!(op, ResOp::Promote(_)) { self.knobs.promote } else { self.knobs.demote };
                    let d = self.rng.duration(lo, hi) + self.slots[n].slow;
                    if matches!(op, ResOp::Demote) && self.cfg.mutation == Some(Mutation::AckDemoteEarly) {
                        self.slots[n].demote_acked_early = true;
                        let now = self.slots[n].local(self.now);
                        if let Some(node) = self.slots[n].node.as_mut() {
                            node.handle(Input::Demoted(Ok(())), now);
                        }
                    }
                    self.slots[n].res_busy = Some(op);
                    let inc = self.slots[n].inc;
                    self.after(d, Ev::ResDone { n, inc });
                }
                ResOp::Follow(leader) => {
                    let idx = leader.as_deref().and_then(|l| self.index_of(l));
                    // No leader named: a standby streams on from whatever it streamed from,
                    // as PostgreSQL does with its primary_conninfo unchanged.
                    if self.slots[n].res.primary_epoch().is_none() && (idx.is_some() || leader.is_some()) {
                        self.slots[n].res.role = Role::Replica(idx);
                    }
                }
                ResOp::SetSync(mut names) => {
                    // `*` (strict mode) names no slot, so writes wait until the leader names a
                    // standby: stricter than PostgreSQL, where any connected standby may then
                    // acknowledge (the sync key does not name it, so nothing relies on it).
                    if self.cfg.mutation == Some(Mutation::StrictAsNone) && names == [ANY_STANDBY] {
                        names.clear();
                    }
                    self.slots[n].res.sync_standbys = names;
                    if self.slots[n].res.sync_standbys.is_empty() {
                        // Nobody to wait for: waiting writes complete without a sync copy.
                        let pending = std::mem::take(&mut self.slots[n].res.pending_sync);
                        for (_, write_id) in pending {
                            self.acked.push(Acked { write_id, at: self.now, sync: false, node: n });
                        }
                    }
                }
            }
        }
    }

    fn resource_done(&mut self, n: usize) {
        let Some(op) = self.slots[n].res_busy.take() else { return };
        let now = self.slots[n].local(self.now);
        match op {
            ResOp::Promote(epoch) => {
                let res = &mut self.slots[n].res;
                res.role = Role::Primary(epoch);
                res.max_epoch = res.max_epoch.max(epoch);
                res.pending_sync.clear();
                if self.cfg.strict && res.sync_standbys.is_empty() && self.cfg.mutation != Some(Mutation::StrictAsNone)
                {
                    // A strict resource starts as primary already waiting for a standby (the
                    // PostgreSQL resource writes `*` before it promotes): the node may never
                    // get to ask, if a demote overtakes the promotion.
                    res.sync_standbys = vec![ANY_STANDBY.to_string()];
                }
                self.happened.push(Happening::BecamePrimary { node: n, epoch });
                if let Some(node) = self.slots[n].node.as_mut() {
                    node.handle(Input::Promoted(Ok(())), now);
                }
            }
            ResOp::Demote => {
                if self.slots[n].res.primary_epoch().is_some() {
                    self.picture.demotion(self.now, n);
                }
                let res = &mut self.slots[n].res;
                res.role = Role::Replica(None);
                res.pending_sync.clear();
                res.sync_standbys.clear();
                if !std::mem::take(&mut self.slots[n].demote_acked_early)
                    && let Some(node) = self.slots[n].node.as_mut()
                {
                    node.handle(Input::Demoted(Ok(())), now);
                }
            }
            _ => {}
        }
        self.pump_resource(n);
        self.settle(n);
    }

    fn client_write(&mut self) {
        for n in 0..self.slots.len() {
            let Some(epoch) = self.slots[n].acting() else { continue };
            self.next_write += 1;
            let write_id = self.next_write;
            match self.sink.offer(epoch) {
                Err(_) => continue,
                Ok(previous) => self.happened.push(Happening::SinkAccepted { node: n, epoch, previous }),
            }
            let res = &mut self.slots[n].res;
            res.log.push(Entry { epoch, write_id });
            if self.cfg.synchronous && !res.sync_standbys.is_empty() {
                let idx = res.log.len() - 1;
                res.pending_sync.push((idx, write_id));
            } else {
                self.acked.push(Acked { write_id, at: self.now, sync: false, node: n });
            }
            // The node learns its new position at its next step, as a driver that polls the
            // resource status does (feeding it after every write cost a node step per write).
        }
    }

    /// The slot replica `n` can copy from right now, if any.
    fn replication_source(&self, n: usize) -> Option<usize> {
        let Role::Replica(Some(src)) = self.slots[n].res.role else { return None };
        let ok = src != n
            && self.slots[n].serving()
            && self.slots[src].serving()
            && self.slots[n].stall == 0
            && self.peer_ok(src, n)
            && self.peer_ok(n, src)
            && self.slots[src].res.running;
        ok.then_some(src)
    }

    /// Whether a replication round now would copy anything: after a round, only a replica
    /// whose source changed later in the same round (a cascade) has something left.
    fn replication_pending(&self) -> bool {
        (0..self.slots.len()).any(|n| {
            // A primary's log does not change during a round: its replicas got all of it.
            let Role::Replica(Some(src)) = self.slots[n].res.role else { return false };
            if matches!(self.slots[src].res.role, Role::Primary(_)) {
                return false;
            }
            self.replication_source(n).is_some_and(|src| {
                let (r, s) = (&self.slots[n].res, &self.slots[src].res);
                s.max_epoch >= r.max_epoch
                    && (r.log.len(), r.log.last(), r.max_epoch) != (s.log.len(), s.log.last(), s.max_epoch)
            })
        })
    }

    /// One replication round; returns whether it changed anything (a round that changed
    /// nothing repeats exactly until some other event happens).
    fn replicate(&mut self) -> bool {
        let mut changed = false;
        for n in 0..self.slots.len() {
            let Some(src) = self.replication_source(n) else { continue };
            // Two distinct slots borrowed at once (src != n was checked above).
            let (replica, source) = if n < src {
                let (lo, hi) = self.slots.split_at_mut(src);
                (&mut lo[n].res, &hi[0].res)
            } else {
                let (lo, hi) = self.slots.split_at_mut(n);
                (&mut hi[0].res, &lo[src].res)
            };
            let before = (replica.log.len(), replica.log.last().copied(), replica.max_epoch);
            let copied = replica.replicate_from(source);
            if !copied {
                continue;
            }
            let res = &self.slots[n].res;
            changed |= before != (res.log.len(), res.log.last().copied(), res.max_epoch);
            let acked_before = self.acked.len();
            // Synchronous acknowledgement: a waiting write completes once every standby the
            // primary waits for has it (`N (a, b, ...)` with N names); this one just copied.
            let source = &self.slots[src].res;
            if source.primary_epoch().is_some() && source.sync_standbys.iter().any(|s| *s == self.slots[n].name) {
                let any_one = self.cfg.mutation == Some(Mutation::AckOnAnyStandby);
                let standbys: Vec<Option<usize>> = if any_one {
                    vec![Some(n)]
                } else {
                    source.sync_standbys.iter().map(|s| self.index_of(s)).collect()
                };
                let pending = std::mem::take(&mut self.slots[src].res.pending_sync);
                let mut keep = Vec::new();
                for (idx, write_id) in pending {
                    let has = |j: &Option<usize>| {
                        j.is_some_and(|j| self.slots[j].res.log.get(idx).is_some_and(|e| e.write_id == write_id))
                    };
                    if standbys.iter().all(has) {
                        self.acked.push(Acked { write_id, at: self.now, sync: true, node: src });
                    } else {
                        keep.push((idx, write_id));
                    }
                }
                self.slots[src].res.pending_sync = keep;
            }
            changed |= self.acked.len() != acked_before;
            // The replica learns its new position at its next step (the driver polls the
            // resource once per loop_wait; telling the node after every round cost a node
            // step per replica per round).
            // Without synchronous standbys, before and now, the confirmed set stays empty.
            let sent = self.slots[src].status_sent.as_ref().map_or(&[][..], |s| &s.sync_confirmed[..]);
            let quiet = self.slots[src].res.sync_standbys.is_empty() && sent.is_empty();
            if !quiet && self.status_of(src).sync_confirmed[..] != *sent {
                changed = true;
                self.settle(src);
            }
        }
        changed
    }

    // === network and store ===

    fn send_to_store(&mut self, n: usize, req: Req) {
        if self.slots[n].to_store_cut > 0 || self.lost() {
            self.unknown_as_won(n, &req);
            return;
        }
        let d = self.net_delay();
        let session = self.slots[n].session;
        self.after(d, Ev::Arrive { n, session, req: Box::new(req) });
    }

    /// Mutation [`Mutation::UnknownAsWon`]: the driver answers an acquire whose outcome it
    /// cannot know as won, with a guessed epoch, instead of letting the node re-read.
    fn unknown_as_won(&mut self, n: usize, req: &Req) {
        if self.cfg.mutation != Some(Mutation::UnknownAsWon) {
            return;
        }
        let Req::Node(Action::Acquire { id, record }) = req else { return };
        let epoch = Epoch(self.model.revision() + 1);
        let lease =
            Lease { record: record.clone(), epoch, version: Version::new(epoch.0), valid_for: self.cfg.timing.ttl };
        let inc = self.slots[n].inc;
        let d = self.cfg.timing.retry_timeout / 2;
        let won = Input::Acquired { id: *id, result: Ok(CasOutcome::Won(lease)) };
        self.after(d, Ev::Reply { n, inc, reply: Box::new(Reply::Node(won, None)) });
    }

    fn reply(&mut self, n: usize, reply: Reply) {
        if self.slots[n].from_store_cut > 0 || self.lost() {
            return;
        }
        let d = self.net_delay();
        let inc = self.slots[n].inc;
        self.after(d, Ev::Reply { n, inc, reply: Box::new(reply) });
    }

    fn store_arrive(&mut self, n: usize, session: SessionId, req: Req) {
        if self.now < self.store_down_until {
            self.unknown_as_won(n, &req);
            return; // the store is electing a leader: dropped without an answer
        }
        let now = at(self.now);
        if self.now < self.slots[n].reconnect_until {
            if let Some(r) = rejected(&req, DcsError::unavailable("reconnecting")) {
                self.reply(n, r);
            }
            return;
        }
        let roll = self.rng.range(0, 999_999) as u32;
        let k = &self.knobs;
        let (reject, lost, vanish) =
            (k.reject_ppm, k.reject_ppm + k.reply_lost_ppm, k.reject_ppm + k.reply_lost_ppm + k.timeout_ppm);
        if roll < reject {
            if let Some(r) = rejected(&req, DcsError::unavailable("rejected")) {
                self.reply(n, r);
            }
            return;
        }
        if roll >= lost && roll < vanish {
            self.unknown_as_won(n, &req);
            return; // timed out: not applied, no answer
        }
        let reply = self.apply(n, session, req, now);
        self.store_changed();
        if roll >= reject && roll < lost {
            // Applied, reply lost: the client sees a timeout, or an explicit unknown outcome.
            if let Some(Reply::Node(Input::Acquired { id, result: Ok(CasOutcome::Won(lease)) }, _)) = &reply
                && self.cfg.mutation == Some(Mutation::UnknownAsWon)
            {
                let won = Input::Acquired { id: *id, result: Ok(CasOutcome::Won(lease.clone())) };
                self.reply(n, Reply::Node(won, None));
            } else if self.rng.chance(500_000)
                && let Some(r) = reply.as_ref().and_then(reply_id)
                && let Some(r) = rejected_id(r, DcsError::unknown("reply lost"))
            {
                self.reply(n, r);
            }
            return;
        }
        if let Some(r) = reply {
            self.reply(n, r);
        }
    }

    fn consul_lazy(&mut self, session: SessionId, now: Instant) {
        if self.cfg.profile == StoreProfile::Consul {
            let ttl = self.cfg.timing.ttl;
            let extra = self.rng.duration(Duration::ZERO, ttl);
            self.model.set_session_expiry(session, now + ttl + extra);
        }
    }

    fn apply(&mut self, n: usize, session: SessionId, req: Req, now: Instant) -> Option<Reply> {
        let action = match req {
            Req::Keepalive => {
                return Some(match self.model.keep_alive(session, now) {
                    Ok(_) => {
                        self.consul_lazy(session, now);
                        Reply::Keepalive(None)
                    }
                    Err(_) => {
                        let s = self.model.open_session(self.cfg.profile.session_ttl(self.cfg.timing.ttl), now);
                        self.sessions.push(s);
                        Reply::Keepalive(Some(s))
                    }
                });
            }
            Req::Node(a) => a,
        };
        if matches!(action, Action::Acquire { .. } | Action::Renew { .. } | Action::Release { .. }) {
            self.leader_dirty = true;
        }
        Some(match action {
            Action::Load { id } => {
                let view = self.load_view(now);
                let key = view.leader.as_ref().map(|l| (l.epoch.0, self.k8s_renews));
                Reply::Node(Input::Loaded { id, result: Ok(view) }, key)
            }
            Action::Acquire { id, record } => {
                if self.now < self.lock_delay_until {
                    return Some(Reply::Node(Input::Acquired { id, result: Ok(CasOutcome::Lost(None)) }, None));
                }
                if self.cfg.profile == StoreProfile::Kubernetes
                    && let Some(current) = self.load_leader(now)
                {
                    // Takeover is a CAS on the version the observer saw expire.
                    if self.slots[n].k8s_expired == Some((current.epoch.0, self.k8s_renews)) {
                        let old = Lease {
                            record: current.record.clone(),
                            epoch: current.epoch,
                            version: current.version.clone(),
                            valid_for: Duration::ZERO,
                        };
                        let _ = self.model.release(SCOPE, &old, now);
                    }
                }
                let result = self.model.acquire(SCOPE, session, &record, now);
                if let Ok(CasOutcome::Won(lease)) = &result {
                    self.granted.insert(lease.epoch);
                    self.happened.push(Happening::Granted { node: n, epoch: lease.epoch });
                    self.lease_session = Some(session);
                    let expires = if self.cfg.profile == StoreProfile::Kubernetes {
                        self.now + ns(crate::time::shrink_by_drift(self.cfg.timing.ttl, self.cfg.timing.max_drift_ppm))
                    } else {
                        u64::MAX
                    };
                    self.lease = Some(StoreLease { node: n, epoch: lease.epoch, expires });
                    self.k8s_renews += 1;
                    self.consul_lazy(session, now);
                }
                Reply::Node(Input::Acquired { id, result }, None)
            }
            Action::Renew { id, lease } => {
                let result = self.model.renew(SCOPE, session, &lease, now);
                if let Ok(CasOutcome::Won(_)) = &result {
                    self.k8s_renews += 1;
                    self.consul_lazy(session, now);
                    if self.cfg.profile == StoreProfile::Kubernetes
                        && let Some(l) = self.lease.as_mut()
                    {
                        // Renewals are writes: an observer restarts its ttl from seeing one.
                        l.expires = self.now
                            + ns(crate::time::shrink_by_drift(self.cfg.timing.ttl, self.cfg.timing.max_drift_ppm));
                    }
                }
                Reply::Node(Input::Renewed { id, result }, None)
            }
            Action::Release { id, lease } => {
                let result = self.model.release(SCOPE, &lease, now);
                if result.is_won() {
                    self.just_released = true;
                }
                Reply::Node(Input::Released { id, result: Ok(result) }, None)
            }
            Action::PublishMember { id, record } => {
                let result = self.model.publish_member(SCOPE, session, &record, now).map(|()| true);
                Reply::Node(Input::Written { id, result }, None)
            }
            Action::WriteControl { id, key, expect, value } => {
                let won = self.model.write_control(SCOPE, key, &expect, &value, now).is_won();
                Reply::Node(Input::Written { id, result: Ok(won) }, None)
            }
            Action::DeleteControl { id, key, expect } => {
                let won = self.model.delete_control(SCOPE, key, &expect, now).is_won();
                Reply::Node(Input::Written { id, result: Ok(won) }, None)
            }
            _ => return None,
        })
    }

    /// `MemoryModel::load` with the decoded view cached per store revision: a load expires
    /// sessions, then decodes every record; the decoded view only changes with the revision.
    fn load_view(&mut self, now: Instant) -> Arc<ClusterView> {
        self.model.expire(now);
        let rev = self.model.revision();
        match &self.view_cache {
            Some((r, v)) if *r == rev => v.clone(),
            _ => {
                let v = Arc::new(self.model.load_cached(SCOPE, now, &mut self.decode_cache));
                self.view_cache = Some((rev, v.clone()));
                v
            }
        }
    }

    /// The leader key alone (from the cached view when it is current; else only the
    /// leader key is decoded).
    fn load_leader(&mut self, now: Instant) -> Option<LeaderView> {
        self.model.expire(now);
        let rev = self.model.revision();
        match &self.view_cache {
            Some((r, v)) if *r == rev => v.leader.clone(),
            _ => self.model.leader_view(SCOPE),
        }
    }

    /// After any store operation: track the leader key, wake watches, plan the next expiry.
    fn store_changed(&mut self) {
        let rev = self.model.revision();
        // The key can also vanish when its session expires inside any store operation.
        let key_session_gone = match (self.lease, self.lease_session) {
            (Some(_), Some(s)) => self.model.session_expiry(s).is_none(),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if rev != self.last_rev {
            self.last_rev = rev;
            if self.leader_dirty || key_session_gone {
                self.leader_dirty = false;
                self.leader_changed();
            }
            self.fire_watches();
        }
        self.just_released = false;
        if self.cfg.profile != StoreProfile::Kubernetes
            && let (Some(l), Some(s)) = (self.lease.as_mut(), self.lease_session)
        {
            l.expires = self.model.session_expiry(s).map_or(u64::MAX, |e| ns(e.since_origin()));
        }
        self.schedule_expiry();
    }

    /// Re-reads the leader key into `lease` (I1') and starts a lock-delay when it vanished.
    fn leader_changed(&mut self) {
        let leader = self.load_leader(at(self.now));
        let had = self.lease.is_some();
        match leader {
            Some(l) if self.lease.is_some_and(|s| s.epoch == l.epoch) => {}
            Some(l) => {
                // Re-created under a name we can map (k8s takeover path sets it on acquire).
                let node = self.index_of(&l.record.member).unwrap_or(usize::MAX);
                self.lease = Some(StoreLease { node, epoch: l.epoch, expires: u64::MAX });
            }
            None => {
                self.lease = None;
                self.lease_session = None;
                if had && !self.just_released {
                    self.lock_delay_until = self.now + ns(self.cfg.profile.lock_delay());
                }
            }
        }
    }

    fn schedule_expiry(&mut self) {
        if let Some(t) = self.model.next_expiry() {
            let t = ns(t.since_origin());
            if self.expiry_at.is_none_or(|s| t < s) && t < u64::MAX / 2 {
                self.expiry_at = Some(t);
                self.push(t, Ev::StoreExpiry);
            }
        }
    }

    fn fire_watches(&mut self) {
        for n in 0..self.slots.len() {
            let Some(after) = self.slots[n].watch.clone() else { continue };
            if self.slots[n].node.is_none() || self.model.poll_watch(SCOPE, &after, at(self.now)).is_none() {
                continue;
            }
            self.slots[n].watch = None;
            let p = self.knobs.watch_loss_ppm;
            if self.slots[n].from_store_cut > 0 || self.slots[n].watch_cut > 0 || self.rng.chance(p) {
                continue;
            }
            let (lo, hi) = self.knobs.watch_delay;
            let d = self.rng.duration(lo, hi) + self.net_extra;
            let inc = self.slots[n].inc;
            self.after(d, Ev::WatchFire { n, inc });
        }
    }

    fn deliver(&mut self, n: usize, reply: Reply) {
        let now = self.slots[n].local(self.now);
        let ttl = self.cfg.timing.ttl;
        let (mut input, key) = match reply {
            Reply::Node(input, key) => (input, key),
            Reply::Keepalive(new) => {
                if let Some(s) = new {
                    self.slots[n].session = s;
                }
                return;
            }
        };
        // The simulator's own bookkeeping, before the node sees the answer.
        match &mut input {
            Input::Loaded { id, result } => {
                if let Ok(view) = result {
                    self.adopt_foreign_key(n, view);
                    if let Some(l) = &view.leader {
                        self.slots[n].seen_epoch = self.slots[n].seen_epoch.max(l.epoch);
                    }
                    if self.cfg.profile == StoreProfile::Kubernetes {
                        self.k8s_observe(n, view, key, now, ttl);
                    }
                }
                self.slots[n].sent.remove(&id.0);
            }
            Input::Acquired { result: Ok(_), .. } => self.slots[n].unanswered_acquire = None,
            Input::Released { id, .. } | Input::Written { id, .. } => {
                self.slots[n].sent.remove(&id.0);
            }
            _ => {}
        }
        let belief = match &input {
            Input::Acquired { id, result } | Input::Renewed { id, result } => Some((
                *id,
                result.as_ref().ok().and_then(|r| match r {
                    CasOutcome::Won(l) => Some((l.epoch, l.valid_for)),
                    CasOutcome::Lost(_) => None,
                }),
            )),
            _ => None,
        };
        let delivered = match &input {
            Input::Loaded { result: Ok(view), .. } => Some(view.clone()),
            _ => None,
        };
        if let Some(node) = self.slots[n].node.as_mut() {
            node.handle(input, now);
        }
        if let Some((id, won)) = belief {
            self.note_belief(n, id, won);
        }
        self.note_shown_members(n, delivered);
    }

    /// Records the members a delivered view showed registered to node `n`, if the node took
    /// the view: a late answer to a load it already gave up on is
    /// dropped by the node and shows it nothing.
    fn note_shown_members(&mut self, n: usize, delivered: Option<Arc<ClusterView>>) {
        let Some(view) = delivered else { return };
        let taken = self.slots[n].node.as_ref().and_then(|node| node.view()).is_some_and(|v| std::ptr::eq(v, &*view));
        if !taken {
            return;
        }
        for m in &view.members {
            self.slots[n].shown_members.insert(m.value.name.clone(), self.now);
        }
    }

    /// Mutation [`Mutation::AdoptForeignKey`]: a node whose acquire went unanswered reads
    /// another member's leader record as its own, as a node that compares tokens alone does
    /// when two members' tokens collide.
    fn adopt_foreign_key(&mut self, n: usize, view: &mut Arc<ClusterView>) {
        if self.cfg.mutation != Some(Mutation::AdoptForeignKey) {
            return;
        }
        let Some(mine) = self.slots[n].unanswered_acquire.clone() else { return };
        if view.leader.as_ref().is_some_and(|l| l.record.member != mine.member)
            && let Some(l) = Arc::make_mut(view).leader.as_mut()
        {
            l.record = mine;
        }
    }

    /// client-go's rule: a lease is expired only once this observer saw it unchanged for
    /// ttl on its own clock. Records it hides as expired so the takeover CAS can match (the
    /// shared view is copied only then).
    fn k8s_observe(
        &mut self,
        n: usize,
        view: &mut Arc<ClusterView>,
        key: Option<(u64, u64)>,
        now: Instant,
        ttl: Duration,
    ) {
        let (Some(l), Some(key)) = (&view.leader, key) else { return };
        let held = self.slots[n].node.as_ref().and_then(|node| node.status().epoch);
        if held == Some(l.epoch) {
            return;
        }
        match self.slots[n].k8s_seen {
            Some((seen, since)) if seen == key => {
                if now >= since + ttl {
                    self.slots[n].k8s_expired = Some(key);
                    Arc::make_mut(view).leader = None;
                }
            }
            _ => self.slots[n].k8s_seen = Some((key, now)),
        }
    }

    fn note_belief(&mut self, n: usize, id: RequestId, won: Option<(Epoch, Duration)>) {
        let sent = self.slots[n].sent.remove(&id.0);
        let (Some((epoch, valid_for)), Some(sent)) = (won, sent) else { return };
        let Some(node) = self.slots[n].node.as_ref() else { return };
        let status = node.status();
        let now = self.slots[n].local(self.now);
        if status.epoch == Some(epoch) && status.lease_deadline.is_some_and(|d| d > now) {
            let local_end = sent + self.cfg.timing.belief_for(valid_for);
            let until = self.slots[n].clock.real_when(local_end, self.now);
            // A late answer to an older renewal (the node ignores it: not in flight) must not
            // pull the belief back before one a newer, accepted renewal gave; requests go out
            // in order, so the latest end is the accepted one's.
            let slot = &mut self.slots[n];
            slot.declared_until = Some(
                slot.declared_until.filter(|_| slot.declared_epoch == Some(epoch)).map_or(until, |u| u.max(until)),
            );
            slot.declared_epoch = Some(epoch);
        }
    }

    // === faults ===

    fn start_fault(&mut self, f: Fault) {
        let heal = self.heal;
        match f {
            Fault::StorePartition { node, direction, duration } => {
                let s = &mut self.slots[node];
                if matches!(direction, Direction::Both | Direction::ToStore) {
                    s.to_store_cut += 1;
                }
                if matches!(direction, Direction::Both | Direction::FromStore) {
                    s.from_store_cut += 1;
                }
                self.after(duration, Ev::FaultEnd { heal, end: FaultEnd::StoreLink(node, direction) });
            }
            Fault::PeerPartition { from, to, duration } => {
                if from != to && to < self.cfg.nodes {
                    self.peer_cut[from * self.cfg.nodes + to] += 1;
                    self.after(duration, Ev::FaultEnd { heal, end: FaultEnd::PeerLink(from, to) });
                }
            }
            Fault::Pause { node, duration } => {
                if self.alive(node) {
                    let s = &mut self.slots[node];
                    s.paused = true;
                    s.pause_gen += 1;
                    let generation = s.pause_gen;
                    self.after(duration, Ev::Unpause { n: node, generation });
                }
            }
            Fault::Crash { node, down_for } => self.crash(node, down_for),
            Fault::Shutdown { node, down_for } => {
                if self.alive(node) {
                    let now = self.slots[node].local(self.now);
                    self.slots[node].restart_after = Some(down_for);
                    if let Some(x) = self.slots[node].node.as_mut() {
                        x.handle(Input::Shutdown, now);
                    }
                    let inc = self.slots[node].inc;
                    let limit = 3 * self.cfg.timing.retry_timeout;
                    self.after(limit, Ev::ShutdownTimeout { n: node, inc });
                    self.settle(node);
                }
            }
            Fault::ClockStep { node, forward } => {
                self.slots[node].clock.step(self.now, forward);
                self.settle(node);
            }
            Fault::Drift { node, ppm } => {
                self.slots[node].clock.set_drift(self.now, i64::from(ppm));
                self.settle(node);
            }
            Fault::StoreLeaderChange { unavailable_for } => {
                self.store_down_until = self.store_down_until.max(self.now + ns(unavailable_for));
                self.push(self.store_down_until, Ev::StoreUp { heal });
            }
            Fault::WatchLoss { node, duration } => {
                self.slots[node].watch_cut += 1;
                self.after(duration, Ev::FaultEnd { heal, end: FaultEnd::WatchLoss(node) });
            }
            Fault::SlowResource { node, extra, duration } => {
                self.slots[node].slow += extra;
                self.after(duration, Ev::FaultEnd { heal, end: FaultEnd::Slow(node, extra) });
            }
            Fault::ReplicationStall { node, duration } => {
                self.slots[node].stall += 1;
                self.after(duration, Ev::FaultEnd { heal, end: FaultEnd::Stall(node) });
            }
            Fault::NetworkDelay { extra, duration } => {
                self.net_extra += extra;
                self.after(duration, Ev::FaultEnd { heal, end: FaultEnd::NetDelay(extra) });
            }
        }
    }

    fn end_fault(&mut self, end: FaultEnd) {
        match end {
            FaultEnd::StoreLink(n, direction) => {
                let s = &mut self.slots[n];
                if matches!(direction, Direction::Both | Direction::ToStore) {
                    s.to_store_cut = s.to_store_cut.saturating_sub(1);
                }
                if matches!(direction, Direction::Both | Direction::FromStore) {
                    s.from_store_cut = s.from_store_cut.saturating_sub(1);
                }
                let delay = self.cfg.profile.reconnect_delay(self.cfg.timing.ttl);
                if s.to_store_cut + s.from_store_cut == 0 && !delay.is_zero() {
                    let d = self.rng.duration(Duration::ZERO, delay);
                    self.slots[n].reconnect_until = self.now + ns(d);
                }
            }
            FaultEnd::PeerLink(a, b) => {
                let i = a * self.cfg.nodes + b;
                self.peer_cut[i] = self.peer_cut[i].saturating_sub(1);
            }
            FaultEnd::WatchLoss(n) => self.slots[n].watch_cut = self.slots[n].watch_cut.saturating_sub(1),
            FaultEnd::Slow(n, extra) => self.slots[n].slow = self.slots[n].slow.saturating_sub(extra),
            FaultEnd::Stall(n) => self.slots[n].stall = self.slots[n].stall.saturating_sub(1),
            FaultEnd::NetDelay(extra) => self.net_extra = self.net_extra.saturating_sub(extra),
        }
    }

    fn store_up(&mut self) {
        if self.now < self.store_down_until {
            return;
        }
        if self.cfg.profile.resets_on_leader_change() {
            // The new store leader starts every session's timer afresh.
            let full = at(self.now) + self.cfg.timing.ttl;
            for s in self.sessions.clone() {
                if let Some(e) = self.model.session_expiry(s) {
                    self.model.set_session_expiry(s, e.max(full));
                }
            }
            self.leader_dirty = true;
            self.store_changed();
        }
    }

    /// The liveness phase begins: every fault heals, crashed nodes restart, paused ones
    /// resume, and random failure rates drop to zero (TigerBeetle's VOPR does the same).
    fn end_chaos(&mut self) {
        self.row("chaos ends: everything heals");
        self.healed = true;
        self.heal += 1;
        self.peer_cut.iter_mut().for_each(|c| *c = 0);
        self.net_extra = Duration::ZERO;
        self.knobs.loss_ppm = 0;
        self.knobs.reject_ppm = 0;
        self.knobs.reply_lost_ppm = 0;
        self.knobs.timeout_ppm = 0;
        self.knobs.watch_loss_ppm = 0;
        if self.now < self.store_down_until {
            self.store_down_until = self.now;
            self.store_up();
        }
        for n in 0..self.slots.len() {
            let s = &mut self.slots[n];
            s.to_store_cut = 0;
            s.from_store_cut = 0;
            s.watch_cut = 0;
            s.stall = 0;
            s.slow = Duration::ZERO;
            s.reconnect_until = 0;
            if s.paused {
                self.unpause(n);
            }
            if self.slots[n].down {
                self.start_process(n);
            }
        }
    }

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

fn reply_id(r: &Reply) -> Option<(u8, RequestId)> {
    match r {
        Reply::Node(Input::Loaded { id, .. }, _) => Some((0, *id)),
        Reply::Node(Input::Acquired { id, .. }, _) => Some((1, *id)),
        Reply::Node(Input::Renewed { id, .. }, _) => Some((2, *id)),
        Reply::Node(Input::Released { id, .. }, _) => Some((3, *id)),
        Reply::Node(Input::Written { id, .. }, _) => Some((4, *id)),
        Reply::Node(..) | Reply::Keepalive(_) => None,
    }
}

fn rejected_id((kind, id): (u8, RequestId), e: DcsError) -> Option<Reply> {
    let input = match kind {
        0 => Input::Loaded { id, result: Err(e) },
        1 => Input::Acquired { id, result: Err(e) },
        2 => Input::Renewed { id, result: Err(e) },
        3 => Input::Released { id, result: Err(e) },
        _ => Input::Written { id, result: Err(e) },
    };
    Some(Reply::Node(input, None))
}

fn rejected(req: &Req, e: DcsError) -> Option<Reply> {
    let Req::Node(a) = req else { return None };
    let kind = match a {
        Action::Load { id } => (0, *id),
        Action::Acquire { id, .. } => (1, *id),
        Action::Renew { id, .. } => (2, *id),
        Action::Release { id, .. } => (3, *id),
        Action::PublishMember { id, .. } | Action::WriteControl { id, .. } | Action::DeleteControl { id, .. } => {
            (4, *id)
        }
        _ => return None,
    };
    rejected_id(kind, e)
}
