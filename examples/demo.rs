//! A failover you can watch: three members in one process on the in-memory reference store.
//!
//! Each member has its own store client (its own session, as separate processes would), a
//! tiny in-memory resource that accepts client writes only as primary, and a fenced sink that
//! rejects writes carrying an epoch older than the newest it has seen. The demo:
//!
//! 1. starts the members and shows who leads;
//! 2. kills the leader (no demotion, no release: its session just stops) and times the failover;
//! 3. asks the new leader for a graceful switchover and times the handover.
//!
//! Run: `cargo run --example demo --features testkit,tokio`

// A demo program measures real elapsed time and runs one task per member; the workspace bans
// these calls only to keep the library's core clock-free.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use leasehold::driver::{self, DriverHandle, NoWatchdog, PeerProbe, Resource};
use leasehold::node::{AdminRequest, DemoteMode, NodeConfig, NodeEvent, ResourceStatus};
use leasehold::testkit::{MemoryClient, MemoryStore, TokioClock};
use leasehold::{Epoch, MemberRecord, ResourceRole, Timing};
use tokio::time::Instant;

const SCOPE: &str = "demo";

/// Rejects writes from epochs older than the newest it has seen: what makes a stale leader
/// harmless even if it keeps running.
#[derive(Default)]
struct FencedSink {
    newest: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
}

impl FencedSink {
    fn write(&self, epoch: Epoch) -> bool {
        let newest = self.newest.fetch_max(epoch.0, Ordering::SeqCst).max(epoch.0);
        if epoch.0 < newest {
            self.rejected.fetch_add(1, Ordering::SeqCst);
            false
        } else {
            self.accepted.fetch_add(1, Ordering::SeqCst);
            true
        }
    }
}

/// A resource that is only a role, a position and an epoch.
struct DemoResource {
    alive: AtomicBool,
    state: Mutex<(ResourceRole, Epoch, u64)>,
}

impl DemoResource {
    fn new() -> Arc<Self> {
        Arc::new(DemoResource { alive: AtomicBool::new(true), state: Mutex::new((ResourceRole::Replica, Epoch(0), 0)) })
    }

    /// A client write: accepted only by a live primary, and only if the sink accepts its epoch.
    fn client_write(&self, sink: &FencedSink) -> bool {
        let mut s = self.state.lock().unwrap();
        if !self.alive.load(Ordering::SeqCst) || s.0 != ResourceRole::Primary {
            return false;
        }
        if sink.write(s.1) {
            s.2 += 1;
            true
        } else {
            false
        }
    }
}

#[async_trait]
impl Resource for DemoResource {
    async fn promote(&self, epoch: Epoch) -> Result<(), String> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut s = self.state.lock().unwrap();
        *s = (ResourceRole::Primary, epoch, s.2);
        Ok(())
    }

    async fn demote(&self, mode: DemoteMode) -> Result<(), String> {
        if mode == DemoteMode::Graceful {
            tokio::time::sleep(Duration::from_millis(100)).await; // a checkpoint
        }
        self.state.lock().unwrap().0 = ResourceRole::Replica;
        Ok(())
    }

    async fn follow(&self, _leader: Option<&str>, _conn_url: Option<&str>) -> Result<(), String> {
        Ok(())
    }

    async fn status(&self) -> ResourceStatus {
        let s = self.state.lock().unwrap();
        ResourceStatus {
            running: self.alive.load(Ordering::SeqCst),
            role: s.0,
            position: Some(s.2),
            timeline: Some(s.1.0),
            sync_confirmed: Vec::new(),
            streaming: None,
        }
    }
}

/// Peers answer from their resource, as their REST API would; a killed member is silent.
struct DemoProbe {
    resources: BTreeMap<String, Arc<DemoResource>>,
}

#[async_trait]
impl PeerProbe for DemoProbe {
    async fn probe(&self, peer: &MemberRecord) -> Option<MemberRecord> {
        let r = self.resources.get(&peer.name)?;
        if !r.alive.load(Ordering::SeqCst) {
            return None;
        }
        let s = r.status().await;
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

struct Member {
    name: String,
    client: Option<MemoryClient>,
    driver: Option<DriverHandle>,
    resource: Arc<DemoResource>,
}

fn say(start: Instant, what: impl std::fmt::Display) {
    println!("[{:>7.3}s] {what}", start.elapsed().as_secs_f64());
}

fn leader_of(members: &[Member]) -> Option<usize> {
    members.iter().position(|m| m.driver.as_ref().is_some_and(|d| d.state().acting))
}

async fn wait_for_leader(members: &[Member], not: Option<&str>, limit: Duration) -> Option<usize> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some(i) = leader_of(members)
            && Some(members[i].name.as_str()) != not
        {
            return Some(i);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::main]
async fn main() {
    let timing = Timing::fast();
    println!("leasehold demo: 3 members, in-memory store, ttl {:?}, loop_wait {:?}", timing.ttl, timing.loop_wait);
    let start = Instant::now();
    let store = MemoryStore::new(Arc::new(TokioClock::new()), timing.ttl);
    let sink = Arc::new(FencedSink::default());
    let names = ["alpha", "bravo", "charlie"];
    let resources: BTreeMap<String, Arc<DemoResource>> =
        names.iter().map(|n| (n.to_string(), DemoResource::new())).collect();
    let probe = Arc::new(DemoProbe { resources: resources.clone() });
    let mut members = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let client = store.client();
        let mut cfg = NodeConfig::new(*name, 0x1000 + i as u64);
        cfg.timing = timing.clone();
        let handle = driver::spawn(
            cfg,
            Arc::new(client.scope(SCOPE)),
            resources[*name].clone(),
            probe.clone(),
            Box::new(NoWatchdog),
        )
        .expect("valid timing");
        let mut events = handle.subscribe();
        let who = name.to_string();
        tokio::spawn(async move {
            while let Ok(ev) = events.recv().await {
                match ev {
                    NodeEvent::Acquired { epoch } => {
                        say(start, format!("{who}: acquired the leader key, epoch {epoch}"))
                    }
                    NodeEvent::Promoted { epoch } => {
                        say(start, format!("{who}: promoted, accepting writes under epoch {epoch}"))
                    }
                    NodeEvent::Demoting { mode, why } => say(start, format!("{who}: demoting ({mode:?}): {why}")),
                    NodeEvent::Demoted => say(start, format!("{who}: demoted")),
                    _ => {}
                }
            }
        });
        members.push(Member {
            name: name.to_string(),
            client: Some(client),
            driver: Some(handle),
            resource: resources[*name].clone(),
        });
    }

    // A client that writes to whoever is primary, every 20 ms.
    let writer_resources: Vec<Arc<DemoResource>> = members.iter().map(|m| m.resource.clone()).collect();
    let writer_sink = sink.clone();
    tokio::spawn(async move {
        loop {
            for r in &writer_resources {
                r.client_write(&writer_sink);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    let Some(first) = wait_for_leader(&members, None, Duration::from_secs(20)).await else {
        panic!("no leader elected within 20 s");
    };
    say(start, format!("== {} leads; letting it serve writes for 2 s", members[first].name));
    tokio::time::sleep(Duration::from_secs(2)).await;
    print_members(&members);

    // 1. Kill the leader: no demotion, no release. Its lease has to run out.
    let victim = members[first].name.clone();
    let remaining = members[first].driver.as_ref().unwrap().state().lease_remaining.unwrap_or_default();
    say(start, format!("== kill -9 {victim} (its lease belief had {:.2}s left)", remaining.as_secs_f64()));
    let killed_at = Instant::now();
    members[first].resource.alive.store(false, Ordering::SeqCst);
    members[first].driver.take().unwrap().abort();
    members[first].client.take().unwrap().crash().await;
    let Some(second) = wait_for_leader(&members, Some(&victim), Duration::from_secs(30)).await else {
        panic!("no failover within 30 s");
    };
    let failover = killed_at.elapsed();
    say(
        start,
        format!(
            "== failover: {} accepts writes {:.3}s after the kill (ttl {:?})",
            members[second].name,
            failover.as_secs_f64(),
            timing.ttl
        ),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    print_members(&members);

    // 2. Graceful switchover to the remaining replica.
    let from = members[second].name.clone();
    let to = members.iter().find(|m| m.driver.is_some() && m.name != from).map(|m| m.name.clone()).unwrap();
    say(start, format!("== switchover {from} -> {to}"));
    let asked = Instant::now();
    let ok = members[second]
        .driver
        .as_ref()
        .unwrap()
        .admin(AdminRequest::Switchover { candidate: Some(to.clone()), scheduled_at: None })
        .await;
    say(start, format!("switchover request written: {ok:?}"));
    let Some(third) = wait_for_leader(&members, Some(&from), Duration::from_secs(30)).await else {
        panic!("switchover did not complete within 30 s");
    };
    let handover = asked.elapsed();
    say(
        start,
        format!(
            "== switchover: {} accepts writes {:.3}s after the request",
            members[third].name,
            handover.as_secs_f64()
        ),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    print_members(&members);

    println!();
    println!("summary");
    println!(
        "  crash failover (kill -9 of the leader -> new primary writable): {:>7.3}s   (ttl {:?})",
        failover.as_secs_f64(),
        timing.ttl
    );
    println!("  graceful switchover (request -> new primary writable):          {:>7.3}s", handover.as_secs_f64());
    println!(
        "  client writes accepted: {}, rejected by fencing: {}",
        sink.accepted.load(Ordering::SeqCst),
        sink.rejected.load(Ordering::SeqCst)
    );
    for m in members.iter_mut() {
        if let Some(d) = m.driver.take() {
            d.shutdown().await;
        }
    }
}

fn print_members(members: &[Member]) {
    println!("    {:<8} {:<9} {:>6} {:>9} {:>12}", "member", "role", "epoch", "position", "lease left");
    for m in members {
        let (role, epoch, lease) = match &m.driver {
            None => ("dead".to_string(), String::new(), String::new()),
            Some(d) => {
                let s = d.state();
                (
                    format!("{:?}", s.status.role).to_lowercase(),
                    s.status.epoch.map(|e| e.to_string()).unwrap_or_default(),
                    s.lease_remaining.map(|r| format!("{:.2}s", r.as_secs_f64())).unwrap_or_default(),
                )
            }
        };
        let pos = m.resource.state.lock().unwrap().2;
        println!("    {:<8} {:<9} {:>6} {:>9} {:>12}", m.name, role, epoch, pos, lease);
    }
}
