//! The election handle (feature `tokio`): hold a scope's leader key with a fencing epoch, in
//! three calls, like etcd's `concurrency.Election` or client-go's `LeaderElector`.
//!
//! * [`Election::campaign`] waits until this member holds the key and returns a
//!   [`Leadership`]: the epoch (fencing token) and a lost signal (a future and a
//!   `CancellationToken`);
//! * [`Election::resign`] steps down and releases the key; the same handle can campaign again;
//! * [`Election::observe`] follows who holds the key ([`Leader`]), for any member.
//!
//! There is no second implementation of the safety rules here. A campaign runs the
//! [`driver`] with the sans-IO [`Node`](crate::node::Node), so the node alone
//! decides when the key is held: belief bounded on the monotonic clock from when a renewal was
//! sent, extended only by a won conditional write, re-read after an unknown outcome. The
//! election plugs in a resource whose `promote` starts a term and whose `demote` fires the
//! term's lost signal before confirming, so the key is released only after the signal fired.
//! A timer on the node's lease deadline fires it too, should the driver stall.
//!
//! Members that campaign race for a free key with nobody's health to compare (peers are
//! reported unreachable), so the first to write wins, as in etcd's election.
#![allow(clippy::disallowed_methods)] // runs the driver: spawns its supervisor and observer tasks

mod latch;
mod leadership;
mod observer;

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

pub use leadership::Leadership;
pub use observer::Leader;

use crate::config::{Timing, TimingError};
use crate::dcs::Dcs;
use crate::driver::{self, DriverHandle, DriverState, NoWatchdog, RecordProbe};
use crate::node::{NodeConfig, NodeEvent, NodeRole};
use latch::Latch;

/// Why [`Election::new`] or [`Election::campaign`] failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ElectionError {
    /// The timing breaks a rule; the error names the field and the numbers.
    #[error(transparent)]
    Timing(#[from] TimingError),
    /// The member name is empty.
    #[error("invalid member name: it must not be empty")]
    EmptyName,
    /// [`Election::resign`] was called while this campaign waited.
    #[error("the campaign was ended by resign()")]
    Resigned,
    /// The store reported a fatal error (bad credentials, a scope that cannot exist...).
    #[error("the election stopped: {0}")]
    Stopped(String),
}

/// One member's handle on one election scope. See the [module docs](self).
///
/// Dropping the handle resigns in the background (a tokio runtime must still be running);
/// call [`resign`](Self::resign) to wait until the key is released.
pub struct Election {
    dcs: Arc<dyn Dcs>,
    config: NodeConfig,
    run: Mutex<Option<Run>>,
    observer: OnceLock<Observer>,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election").field("scope", &self.dcs.scope()).field("member", &self.config.name).finish()
    }
}

/// One campaign: a driver, from `campaign` until resign, loss or a fatal error.
#[derive(Debug)]
struct Run {
    shared: Arc<RunShared>,
    phase: watch::Receiver<Phase>,
}

/// What a run's supervisor shares with the handle.
#[derive(Debug)]
struct RunShared {
    /// Taken by whoever shuts the driver down first (resign or the supervisor).
    driver: Mutex<Option<DriverHandle>>,
    phase: watch::Sender<Phase>,
    resigning: AtomicBool,
}

#[derive(Clone, Debug)]
enum Phase {
    Campaigning,
    Leading(Leadership),
    Ended(End),
}

#[derive(Clone, Debug, PartialEq)]
enum End {
    Resigned,
    Lost,
    Stopped(String),
}

#[derive(Debug)]
struct Observer {
    leader: watch::Sender<Option<Leader>>,
    task: JoinHandle<()>,
}

impl Election {
    /// A handle for `member` on the scope `dcs` serves, with `timing` (validated:
    /// `loop_wait + 2 * retry_timeout <= ttl` and room for the safety margin, DESIGN.md
    /// rule 9). `timing.ttl` must be the ttl the store client was built with
    /// ([`Dcs::configured_ttl`]: connect the client with the same `Timing`); a store granting
    /// less shortens every term's belief to what it granted.
    pub fn new(dcs: Arc<dyn Dcs>, member: impl Into<String>, timing: Timing) -> Result<Self, ElectionError> {
        let mut config = NodeConfig::new(member, 0);
        config.timing = timing;
        Self::with_config(dcs, config)
    }

    /// [`new`](Self::new) with every node option (tags, URLs published in the member
    /// record, a watchdog policy...). `config.incarnation` is ignored: each campaign draws
    /// its own, so that two terms of one member are told apart.
    pub fn with_config(dcs: Arc<dyn Dcs>, config: NodeConfig) -> Result<Self, ElectionError> {
        if config.name.is_empty() {
            return Err(ElectionError::EmptyName);
        }
        config.timing.validate()?;
        config.timing.check_client_ttl(dcs.configured_ttl())?;
        let granted = dcs.bounds().ttl;
        if granted < config.timing.ttl {
            tracing::warn!(scope = dcs.scope(), ?granted, ttl = ?config.timing.ttl,
                "the store grants a shorter lease than timing.ttl; each term's belief is cut to it");
        }
        Ok(Election { dcs, config, run: Mutex::new(None), observer: OnceLock::new() })
    }

    /// This member's name.
    pub fn member(&self) -> &str {
        &self.config.name
    }

    /// Waits until this member holds the leader key and may act on it, and returns the term.
    ///
    /// Joins the race if this handle is not in it (at the first call, after `resign`, after a
    /// term was lost), and keeps racing while another member leads. Called while leading, it
    /// returns the current term. Cancel-safe: dropping the future leaves the member in the
    /// race, and a later call picks up where it was; call [`resign`](Self::resign) to leave.
    ///
    /// A term that ends takes the member out of the race (the driver releases the key if it
    /// still holds it); the next `campaign` joins again.
    pub async fn campaign(&self) -> Result<Leadership, ElectionError> {
        loop {
            let mut phase = self.join_race()?;
            let seen = match phase.wait_for(|p| !matches!(p, Phase::Campaigning)).await {
                Ok(p) => p.clone(),
                Err(_) => Phase::Ended(End::Stopped("the election task ended".into())),
            };
            match seen {
                Phase::Leading(term) if !term.is_lost() => return Ok(term),
                // Ended already: wait for the run to wind down, then join again.
                Phase::Leading(_) => {
                    let _ = phase.wait_for(|p| matches!(p, Phase::Ended(_))).await;
                }
                Phase::Ended(End::Lost) | Phase::Campaigning => {}
                Phase::Ended(End::Resigned) => return Err(ElectionError::Resigned),
                Phase::Ended(End::Stopped(why)) => {
                    self.forget_run(&phase);
                    return Err(ElectionError::Stopped(why));
                }
            }
        }
    }

    /// Steps down and leaves the race. A leader's term ends (its lost signal fires), then the
    /// key is released by compare-and-delete on this term's token (DESIGN.md rule 4); a
    /// member that does not lead just stops racing. Returns once done; a campaign waiting
    /// meanwhile returns [`ElectionError::Resigned`]. Does nothing outside a campaign.
    pub async fn resign(&self) {
        let run = self.run.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(run) = run else { return };
        run.shared.resigning.store(true, Ordering::SeqCst);
        let driver = run.shared.driver.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(driver) = driver {
            driver.shutdown().await;
        }
        // The supervisor may have been shutting the driver down itself (a term just lost).
        let mut phase = run.phase;
        let _ = phase.wait_for(|p| matches!(p, Phase::Ended(_))).await;
    }

    /// The scope's leader key holder, updated whenever a read of the store shows a different
    /// holder or epoch (`None`: the key is free). Needs no campaign. Every change is seen
    /// unless it is overtaken before one read of the store completes; the receiver keeps the
    /// latest. Must be called inside a tokio runtime.
    pub fn observe(&self) -> watch::Receiver<Option<Leader>> {
        let observer = self.observer.get_or_init(|| {
            let (leader, _) = watch::channel(None);
            let every = self.config.timing.loop_wait;
            let task = tokio::spawn(observer::observe(self.dcs.clone(), leader.clone(), every));
            Observer { leader, task }
        });
        observer.leader.subscribe()
    }

    /// The phase receiver of the current run, starting one if there is none or it ended.
    fn join_race(&self) -> Result<watch::Receiver<Phase>, ElectionError> {
        let mut run = self.run.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = run.as_ref()
            && !matches!(*r.phase.borrow(), Phase::Ended(_))
        {
            return Ok(r.phase.clone());
        }
        let started = self.start_run()?;
        let phase = started.phase.clone();
        *run = Some(started);
        Ok(phase)
    }

    /// Forgets the current run if it is the one `phase` belongs to.
    fn forget_run(&self, phase: &watch::Receiver<Phase>) {
        let mut run = self.run.lock().unwrap_or_else(PoisonError::into_inner);
        if run.as_ref().is_some_and(|r| r.phase.same_channel(phase)) {
            *run = None;
        }
    }

    fn start_run(&self) -> Result<Run, ElectionError> {
        let mut config = self.config.clone();
        config.incarnation = fresh_incarnation();
        let latch = Arc::new(Latch::default());
        let driver = driver::spawn(
            config,
            self.dcs.clone(),
            latch.clone(),
            Arc::new(RecordProbe { trust_records: false }),
            Box::new(NoWatchdog),
        )?;
        let supervisor = Supervisor {
            state: driver.watch_state(),
            events: driver.subscribe(),
            origin: driver.tokio_instant(crate::time::Instant::ZERO),
            latch,
            member: self.config.name.clone(),
        };
        let (phase_tx, phase) = watch::channel(Phase::Campaigning);
        let shared = Arc::new(RunShared {
            driver: Mutex::new(Some(driver)),
            phase: phase_tx,
            resigning: AtomicBool::new(false),
        });
        tokio::spawn(supervisor.run(shared.clone()));
        Ok(Run { shared, phase })
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        if let Some(observer) = self.observer.get() {
            observer.task.abort();
        }
        let run = self.run.get_mut().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(run) = run {
            run.shared.resigning.store(true, Ordering::SeqCst);
            let driver = run.shared.driver.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let (Some(driver), Ok(runtime)) = (driver, tokio::runtime::Handle::try_current()) {
                runtime.spawn(driver.shutdown());
            }
        }
    }
}

/// Watches one run's driver: publishes the term once the node acts as leader, and ends it
/// when the node stops acting, when the resource was told to demote, or when the node's lease
/// deadline passes without a renewal published (a stalled driver).
struct Supervisor {
    state: watch::Receiver<DriverState>,
    events: broadcast::Receiver<NodeEvent>,
    origin: tokio::time::Instant,
    latch: Arc<Latch>,
    member: String,
}

impl Supervisor {
    async fn run(mut self, shared: Arc<RunShared>) {
        let mut term: Option<Leadership> = None;
        let end = loop {
            let (acting, epoch, deadline, stopped) = {
                let s = self.state.borrow_and_update();
                (s.acting, s.status.epoch, s.status.lease_deadline, s.status.role == NodeRole::Stopped)
            };
            if stopped {
                break End::Stopped(self.fatal_reason());
            }
            match &term {
                None => {
                    if acting
                        && let Some(epoch) = epoch
                        && let Some(token) = self.latch.token_for(epoch)
                    {
                        let t = Leadership::new(self.member.clone(), epoch, token);
                        term = Some(t.clone());
                        shared.phase.send_replace(Phase::Leading(t));
                    }
                }
                Some(t) if !acting || epoch != Some(t.epoch()) => break End::Lost,
                Some(_) => {}
            }
            // The node's deadline is measured from the driver's origin.
            let until = term.as_ref().and(deadline).map(|d| self.origin + d.since_origin());
            let lost = term.as_ref().map(Leadership::lost);
            tokio::select! {
                changed = self.state.changed() => if changed.is_err() {
                    break End::Stopped("the driver ended".into());
                },
                () = sleep_until(until) => {
                    tracing::warn!(member = %self.member, "lease deadline passed without a renewal; ending the term");
                    break End::Lost;
                }
                () = maybe(lost) => break End::Lost,
            }
        };
        // Fire first: whatever happens to the key next, nobody acts on this term any more.
        if let Some(t) = &term {
            t.end();
        }
        let driver = shared.driver.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(driver) = driver {
            driver.shutdown().await;
        }
        let end = if shared.resigning.load(Ordering::SeqCst) { End::Resigned } else { end };
        shared.phase.send_replace(Phase::Ended(end));
    }

    fn fatal_reason(&mut self) -> String {
        while let Ok(ev) = self.events.try_recv() {
            if let NodeEvent::Fatal(why) = ev {
                return why;
            }
        }
        "the node stopped".into()
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn maybe(future: Option<impl std::future::Future<Output = ()>>) {
    match future {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// A number that differs between runs and processes without asking the user for one:
/// `RandomState` is seeded from the OS once per process and stepped per instance.
fn fresh_incarnation() -> u64 {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(RUNS.fetch_add(1, Ordering::Relaxed))
}
