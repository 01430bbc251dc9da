//! The async driver end to end on the in-memory reference store, in paused (virtual) tokio time:
//! election, crash failover, switchover, clean shutdown, and a leader cut off from its store.
//!
//! Virtual time makes the order of events exact, so these tests can state "before the ttl ran
//! out" as a fact about the run rather than a wall-clock race.
#![cfg(all(feature = "testkit", feature = "tokio"))]
// Tests run members as tasks and read tokio's (virtual) clock.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use leasehold::driver::{self, DriverHandle, NoWatchdog, PeerProbe, Resource};
use leasehold::node::{AdminRequest, DemoteMode, NodeConfig, NodeEvent, ResourceStatus};
use leasehold::testkit::{Fault, MemoryClient, MemoryDcs, MemoryStore, TokioClock};
use leasehold::{Dcs, Epoch, MemberRecord, ResourceRole, Timing};
use tokio::time::Instant;

const SCOPE: &str = "driver";

/// A resource that is a role and an epoch; it remembers every promotion.
#[derive(Default)]
struct FakeResource {
    state: Mutex<(ResourceRole, Epoch)>,
    promotions: Mutex<Vec<Epoch>>,
}

#[async_trait]
impl Resource for FakeResource {
    async fn promote(&self, epoch: Epoch) -> Result<(), String> {
        *self.state.lock().unwrap() = (ResourceRole::Primary, epoch);
        self.promotions.lock().unwrap().push(epoch);
        Ok(())
    }

    async fn demote(&self, _mode: DemoteMode) -> Result<(), String> {
        self.state.lock().unwrap().0 = ResourceRole::Replica;
        Ok(())
    }

    async fn follow(&self, _leader: Option<&str>, _conn_url: Option<&str>) -> Result<(), String> {
        Ok(())
    }

    async fn status(&self) -> ResourceStatus {
        let (role, epoch) = *self.state.lock().unwrap();
        ResourceStatus {
            running: true,
            role,
            position: Some(100),
            timeline: Some(epoch.0),
            sync_confirmed: Vec::new(),
            streaming: None,
        }
    }
}

/// Peers answer from their resource while they are alive.
#[derive(Default)]
struct FakeProbe {
    alive: Mutex<BTreeMap<String, Arc<FakeResource>>>,
}

#[async_trait]
impl PeerProbe for FakeProbe {
    async fn probe(&self, peer: &MemberRecord) -> Option<MemberRecord> {
        let resource = self.alive.lock().unwrap().get(&peer.name)?.clone();
        let s = resource.status().await;
        Some(MemberRecord {
            name: peer.name.clone(),
            api_url: None,
            conn_url: None,
            role: s.role,
            running: s.running,
            position: s.position,
            timeline: s.timeline,
            tags: peer.tags.clone(),
            watchdog_failed: false,
        })
    }
}

/// Every event of every member, stamped with virtual time since the start.
type EventLog = Arc<Mutex<Vec<(Duration, String, NodeEvent)>>>;

struct Member {
    name: String,
    client: Option<MemoryClient>,
    dcs: MemoryDcs,
    driver: Option<DriverHandle>,
    resource: Arc<FakeResource>,
}

struct Cluster {
    start: Instant,
    store: MemoryStore,
    timing: Timing,
    probe: Arc<FakeProbe>,
    log: EventLog,
    members: Vec<Member>,
}

impl Cluster {
    fn new(names: &[&str]) -> Cluster {
        let timing = Timing::fast();
        let mut cluster = Cluster {
            start: Instant::now(),
            store: MemoryStore::new(Arc::new(TokioClock::new()), timing.ttl),
            timing,
            probe: Arc::new(FakeProbe::default()),
            log: EventLog::default(),
            members: Vec::new(),
        };
        for name in names {
            cluster.add(name);
        }
        cluster
    }

    fn add(&mut self, name: &str) {
        let client = self.store.client();
        let dcs = client.scope(SCOPE);
        let resource = Arc::new(FakeResource::default());
        let mut cfg = NodeConfig::new(name, 0x100 + self.members.len() as u64);
        cfg.timing = self.timing.clone();
        let handle =
            driver::spawn(cfg, Arc::new(dcs.clone()), resource.clone(), self.probe.clone(), Box::new(NoWatchdog))
                .expect("valid timing");
        let mut events = handle.subscribe();
        let (log, start, who) = (self.log.clone(), self.start, name.to_string());
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                log.lock().unwrap().push((start.elapsed(), who.clone(), event));
            }
        });
        self.probe.alive.lock().unwrap().insert(name.to_string(), resource.clone());
        self.members.push(Member { name: name.into(), client: Some(client), dcs, driver: Some(handle), resource });
    }

    fn acting(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|&i| self.members[i].driver.as_ref().is_some_and(|d| d.state().acting)).collect()
    }

    /// Steps virtual time until exactly one member other than `not` acts; checks at every step
    /// that no two live members act at once.
    async fn wait_for_leader(&self, not: Option<usize>) -> usize {
        let until = Instant::now() + Duration::from_secs(120);
        while Instant::now() < until {
            let acting = self.acting();
            assert!(acting.len() <= 1, "two members act at once: {acting:?}\n{}", self.dump());
            if let [one] = acting[..]
                && Some(one) != not
            {
                return one;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader within 120 s of virtual time\n{}", self.dump());
    }

    fn epoch(&self, i: usize) -> Epoch {
        *self.members[i].resource.promotions.lock().unwrap().last().expect("promoted")
    }

    /// Kills member `i` the hard way: no demotion, no release; its session just stops.
    async fn crash(&mut self, i: usize) {
        self.members[i].driver.take().expect("running").abort();
        self.probe.alive.lock().unwrap().remove(&self.members[i].name);
        self.members[i].client.take().expect("running").crash().await;
    }

    fn events_of(&self, who: &str) -> Vec<(Duration, NodeEvent)> {
        self.log.lock().unwrap().iter().filter(|(_, w, _)| w == who).map(|(t, _, e)| (*t, e.clone())).collect()
    }

    fn first(&self, who: &str, what: impl Fn(&NodeEvent) -> bool) -> Option<Duration> {
        self.events_of(who).into_iter().find(|(_, e)| what(e)).map(|(t, _)| t)
    }

    fn dump(&self) -> String {
        self.log.lock().unwrap().iter().map(|(t, w, e)| format!("{:>8.3}s {w}: {e:?}\n", t.as_secs_f64())).collect()
    }
}

#[tokio::test(start_paused = true)]
async fn crash_of_the_leader_moves_leadership_to_a_greater_epoch() {
    let mut cluster = Cluster::new(&["a", "b", "c"]);
    let first = cluster.wait_for_leader(None).await;
    let first_epoch = cluster.epoch(first);
    // Let it lead for a few renewals first.
    tokio::time::sleep(cluster.timing.ttl * 2).await;
    assert_eq!(cluster.acting(), vec![first], "{}", cluster.dump());

    let crashed_at = cluster.start.elapsed();
    cluster.crash(first).await;
    let second = cluster.wait_for_leader(Some(first)).await;
    let second_epoch = cluster.epoch(second);
    assert!(second_epoch > first_epoch, "epoch went from {first_epoch} to {second_epoch}");

    // The new leader had to wait for the crashed session to expire: its key outlives the ttl.
    let acquired = cluster
        .first(&cluster.members[second].name, |e| matches!(e, NodeEvent::Acquired { epoch } if *epoch == second_epoch))
        .expect("the new leader logged its acquisition");
    assert!(acquired > crashed_at, "{}", cluster.dump());
    let bounds = cluster.members[second].dcs.bounds();
    assert!(
        acquired - crashed_at <= bounds.max_expiry + cluster.timing.loop_wait + cluster.timing.retry_timeout,
        "virtual failover took {:?}; the store promises expiry within {:?}\n{}",
        acquired - crashed_at,
        bounds.max_expiry,
        cluster.dump()
    );
}

#[tokio::test(start_paused = true)]
async fn switchover_hands_leadership_to_the_named_member() {
    let cluster = Cluster::new(&["a", "b", "c"]);
    let first = cluster.wait_for_leader(None).await;
    let target = (first + 1) % 3;
    let target_name = cluster.members[target].name.clone();
    // Members publish their records on regular cycles; the request needs the target's.
    tokio::time::sleep(cluster.timing.loop_wait * 3).await;

    let asked = cluster.start.elapsed();
    let accepted = cluster.members[first]
        .driver
        .as_ref()
        .unwrap()
        .admin(AdminRequest::Switchover { candidate: Some(target_name.clone()), scheduled_at: None })
        .await
        .expect("the leader accepts a switchover");
    assert!(accepted, "switchover refused\n{}", cluster.dump());
    let second = cluster.wait_for_leader(Some(first)).await;
    assert_eq!(second, target, "leadership went to {} instead\n{}", cluster.members[second].name, cluster.dump());
    assert!(cluster.epoch(second) > cluster.epoch(first));

    // Graceful: the old leader demoted before the new one acquired, and nobody waited for a ttl.
    let old = &cluster.members[first].name;
    let demoted = cluster.first(old, |e| matches!(e, NodeEvent::Demoted)).expect("old leader demoted");
    let acquired = cluster.first(&target_name, |e| matches!(e, NodeEvent::Acquired { .. })).expect("target acquired");
    assert!(demoted <= acquired, "{}", cluster.dump());
    assert!(acquired - asked < cluster.timing.ttl, "the handover waited for expiry\n{}", cluster.dump());
}

#[tokio::test(start_paused = true)]
async fn a_non_leader_refuses_a_switchover() {
    let cluster = Cluster::new(&["a", "b"]);
    let leader = cluster.wait_for_leader(None).await;
    let other = 1 - leader;
    let answer = cluster.members[other]
        .driver
        .as_ref()
        .unwrap()
        .admin(AdminRequest::Switchover { candidate: None, scheduled_at: None })
        .await;
    assert!(answer.is_err(), "a replica accepted a switchover: {answer:?}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_the_key_so_a_peer_takes_over_without_waiting_for_the_ttl() {
    let mut cluster = Cluster::new(&["a", "b"]);
    let first = cluster.wait_for_leader(None).await;
    tokio::time::sleep(cluster.timing.loop_wait * 2).await;
    let stopped_at = cluster.start.elapsed();
    cluster.members[first].driver.take().unwrap().shutdown().await;
    assert_eq!(cluster.members[first].resource.state.lock().unwrap().0, ResourceRole::Replica);
    cluster.probe.alive.lock().unwrap().remove(&cluster.members[first].name);

    let view = cluster.members[1 - first].dcs.load().await.expect("load");
    assert!(
        view.leader.as_ref().is_none_or(|l| l.record.member != cluster.members[first].name),
        "the stopped leader still holds the key: {:?}",
        view.leader
    );
    let second = cluster.wait_for_leader(Some(first)).await;
    let acquired =
        cluster.first(&cluster.members[second].name, |e| matches!(e, NodeEvent::Acquired { .. })).expect("acquired");
    assert!(acquired - stopped_at < cluster.timing.ttl, "took over only after expiry\n{}", cluster.dump());
}

/// Rule: a leader that cannot renew stops acting before its lease belief runs out, which is
/// before any peer can acquire the key.
#[tokio::test(start_paused = true)]
async fn a_leader_cut_off_from_the_store_demotes_before_anyone_else_acquires() {
    let mut cluster = Cluster::new(&["a", "b", "c"]);
    let first = cluster.wait_for_leader(None).await;
    tokio::time::sleep(cluster.timing.loop_wait * 2).await;
    let name = cluster.members[first].name.clone();
    // A partition between the leader and the store: every call fails without reaching it, and
    // the session's keep-alive stops, so the store expires the key one ttl later.
    cluster.members[first].dcs.fail_next(u32::MAX, Fault::Unavailable);
    cluster.members[first].client.take().unwrap().crash().await;
    cluster.probe.alive.lock().unwrap().remove(&name);
    let cut_at = cluster.start.elapsed();

    let until = Instant::now() + Duration::from_secs(60);
    while cluster.members[first].driver.as_ref().unwrap().state().acting && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let demoted =
        cluster.first(&name, |e| matches!(e, NodeEvent::Demoting { .. })).expect("the cut-off leader demoted");
    assert!(demoted > cut_at);
    assert!(!cluster.members[first].driver.as_ref().unwrap().state().acting);
    // No one else may have acquired before the demotion began.
    for m in cluster.members.iter().filter(|m| m.name != name) {
        if let Some(t) = cluster.first(&m.name, |e| matches!(e, NodeEvent::Acquired { .. })) {
            assert!(
                t > demoted,
                "{} acquired at {t:?}, before {name} demoted at {demoted:?}\n{}",
                m.name,
                cluster.dump()
            );
        }
    }
    // And the rest of the cluster recovers.
    let second = cluster.wait_for_leader(Some(first)).await;
    assert_ne!(second, first);
}

/// Issue 16: the ttl has one source. A node whose timing.ttl differs from the ttl the store
/// client was built with is refused by the driver and by the election handle, and the error
/// names both values.
#[tokio::test(start_paused = true)]
async fn a_timing_with_another_ttl_than_the_clients_is_refused() {
    let store = MemoryStore::new(Arc::new(TokioClock::new()), Duration::from_secs(5));
    let dcs: Arc<dyn Dcs> = Arc::new(store.client().scope(SCOPE));
    assert_eq!(dcs.configured_ttl(), Duration::from_secs(5));
    let timing = Timing { ttl: Duration::from_secs(6), ..Timing::fast() };
    timing.validate().expect("the timing itself is valid");

    let mut cfg = NodeConfig::new("n1", 1);
    cfg.timing = timing.clone();
    let spawned = driver::spawn(
        cfg,
        dcs.clone(),
        Arc::new(FakeResource::default()),
        Arc::new(FakeProbe::default()),
        Box::new(NoWatchdog),
    );
    let Err(refused) = spawned else { panic!("the driver refuses a ttl the client was not built with") };
    assert_eq!(refused.field, "ttl");
    assert!(refused.message.contains("6s") && refused.message.contains("5s"), "{refused}");

    let Err(refused) = leasehold::Election::new(dcs.clone(), "n1", timing) else {
        panic!("the election refuses it too")
    };
    let text = refused.to_string();
    assert!(text.contains("6s") && text.contains("5s"), "{text}");

    // The same timing with the client's ttl is accepted.
    let election = leasehold::Election::new(dcs, "n1", Timing::fast());
    assert!(election.is_ok(), "{:?}", election.err());
}
