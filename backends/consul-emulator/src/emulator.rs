//! The running emulator: the agent's listener on its own thread and runtime (stoppable and
//! restartable on the same port), and a sweeper thread that invalidates expired sessions.

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::EmulatorConfig;
use crate::server::{MAX_VALUE_BYTES, RequestCounts, Shared, handle};
use crate::state::{KvEntry, SessionInfo};

/// How often the sweeper looks for sessions whose TTL timer fired.
const SWEEP_INTERVAL: Duration = Duration::from_millis(10);

/// A running Consul agent emulator on `127.0.0.1`.
///
/// Dropping it stops the listener (closing every connection and blocking query) and the
/// sweeper. [`stop_agent`](Emulator::stop_agent) and [`start_agent`](Emulator::start_agent)
/// take the HTTP listener down and back up on the same port while sessions and keys live
/// on, as when a client agent restarts but the servers keep the state.
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    agent: Mutex<Option<Agent>>,
    sweeper_stop: Arc<AtomicBool>,
    sweeper: Option<JoinHandle<()>>,
}

/// One generation of the HTTP listener.
struct Agent {
    stop: tokio::sync::watch::Sender<bool>,
    thread: JoinHandle<()>,
}

impl Agent {
    fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.thread.join();
    }
}

/// Binds a free port below 32768 (the range the project's tests use), trying random ones.
fn bind(port: Option<u16>) -> io::Result<TcpListener> {
    if let Some(port) = port {
        return TcpListener::bind((Ipv4Addr::LOCALHOST, port));
    }
    let random = RandomState::new();
    let mut last = io::Error::other("no attempt made");
    for attempt in 0u32..500 {
        let port = 10_000 + (random.hash_one(attempt) % 22_768) as u16;
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(io::Error::new(last.kind(), format!("no free port in 10000..32768 after 500 tries: {last}")))
}

fn serve(listener: TcpListener, shared: Arc<Shared>) -> io::Result<Agent> {
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let app = axum::Router::new()
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_VALUE_BYTES + 1024))
        .with_state(shared);
    let thread = std::thread::Builder::new().name(format!("consul-emulator-{port}")).spawn(move || {
        runtime.block_on(async move {
            let mut stopped = stopped;
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "consul emulator could not use its listener");
                    return;
                }
            };
            tokio::select! {
                result = axum::serve(listener, app) => {
                    if let Err(e) = result {
                        tracing::error!(error = %e, "consul emulator stopped");
                    }
                }
                _ = stopped.wait_for(|s| *s) => {}
            }
        });
        // Drops every connection task and blocking query still running.
        runtime.shutdown_timeout(Duration::from_secs(1));
    })?;
    Ok(Agent { stop, thread })
}

impl Emulator {
    /// Starts an emulator with `config`.
    pub fn start(config: EmulatorConfig) -> io::Result<Emulator> {
        let listener = bind(config.port)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let agent = serve(listener, shared.clone())?;
        let sweeper_stop = Arc::new(AtomicBool::new(false));
        let sweeper = {
            let (shared, stop) = (shared.clone(), sweeper_stop.clone());
            std::thread::Builder::new().name(format!("consul-emulator-sweeper-{}", addr.port())).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    shared.with_state(|s, now| s.expire(now));
                    std::thread::sleep(SWEEP_INTERVAL);
                }
            })?
        };
        tracing::debug!(%addr, "consul emulator listening");
        Ok(Emulator { addr, shared, agent: Mutex::new(Some(agent)), sweeper_stop, sweeper: Some(sweeper) })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, the agent address for a client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Fault: the agent goes down. The listener closes, open connections and blocking
    /// queries are cut; sessions keep ageing (the servers still run) and expire as usual.
    pub fn stop_agent(&self) {
        if let Some(agent) = self.agent.lock().unwrap_or_else(PoisonError::into_inner).take() {
            agent.stop();
        }
    }

    /// Brings the agent back on the same port after [`stop_agent`](Emulator::stop_agent).
    pub fn start_agent(&self) -> io::Result<()> {
        let mut agent = self.agent.lock().unwrap_or_else(PoisonError::into_inner);
        if agent.is_none() {
            *agent = Some(serve(bind(Some(self.addr.port()))?, self.shared.clone())?);
        }
        Ok(())
    }

    /// The current Raft index (that of the last write).
    pub fn index(&self) -> u64 {
        self.shared.with_state(|s, _| s.index())
    }

    /// Requests served so far, by endpoint.
    pub fn request_counts(&self) -> RequestCounts {
        self.shared.counts()
    }

    /// Every live session.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.shared.with_state(|s, now| s.sessions(now))
    }

    /// Fault: invalidates a session now, as a failing `serfHealth` check would, long before
    /// its TTL. Its locks are deleted or released and get its lock-delay. False if unknown.
    pub fn invalidate_session(&self, id: &str) -> bool {
        self.shared.with_state(|s, now| s.invalidate(id, now))
    }

    /// Reads a key as stored, bypassing HTTP and ACLs.
    pub fn kv(&self, key: &str) -> Option<KvEntry> {
        self.shared.with_state(|s, now| s.read(key, now).1)
    }

    /// Writes a key as another client would (a plain PUT), bypassing HTTP and ACLs.
    pub fn put_raw(&self, key: &str, value: &[u8]) {
        self.shared.with_state(|s, _| s.put(key, value.to_vec(), 0, None));
    }

    /// Fault: the next `n` blocking queries return at once with an unchanged index (Consul
    /// documents that a blocking query may return before anything changed).
    pub fn return_early(&self, n: u32) {
        self.shared.early_returns.fetch_add(n, Ordering::SeqCst);
    }

    /// Fault: the next `?acquire=` is applied, then the connection is closed before the
    /// answer's body is sent, so the client cannot know the outcome.
    pub fn drop_next_acquire_reply(&self) {
        self.shared.drop_next_acquire_reply.store(true, Ordering::SeqCst);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop_agent();
        self.sweeper_stop.store(true, Ordering::Relaxed);
        if let Some(sweeper) = self.sweeper.take() {
            let _ = sweeper.join();
        }
    }
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").field("addr", &self.addr).finish_non_exhaustive()
    }
}
