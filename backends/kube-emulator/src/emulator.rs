//! The running emulator: its own thread and runtime, stopped (every connection closed) on drop.

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use serde_json::Value;

use crate::config::{EmulatorConfig, Fault};
use crate::resource::Resource;
use crate::server::{RequestCounts, Shared, handle};
use crate::status::ApiError;
use crate::store::ObjectKey;

/// The API server's request body limit (3 MiB).
const BODY_LIMIT: usize = 3 * 1024 * 1024;

/// A running API server emulator on `127.0.0.1`.
///
/// It runs on its own thread with its own tokio runtime, so it works the same from sync
/// code, from `#[tokio::test]` and from benchmarks. Dropping it stops the runtime, which
/// closes every connection and ends every watch stream.
pub struct Emulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
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

impl Emulator {
    /// Starts an emulator with `config`.
    pub fn start(config: EmulatorConfig) -> io::Result<Emulator> {
        let listener = bind(config.port)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared::new(config, stopped.clone()));
        let app =
            axum::Router::new().fallback(handle).layer(DefaultBodyLimit::max(BODY_LIMIT)).with_state(shared.clone());
        let thread = std::thread::Builder::new().name(format!("kube-emulator-{}", addr.port())).spawn(move || {
            runtime.block_on(async move {
                let mut stopped = stopped;
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "kube emulator could not use its listener");
                        return;
                    }
                };
                tokio::select! {
                    result = axum::serve(listener, app) => {
                        if let Err(e) = result {
                            tracing::error!(error = %e, "kube emulator stopped");
                        }
                    }
                    _ = stopped.wait_for(|s| *s) => {}
                }
            });
            // Drops every connection task and watch stream still running.
            runtime.shutdown_timeout(Duration::from_secs(1));
        })?;
        tracing::debug!(%addr, "kube emulator listening");
        Ok(Emulator { addr, shared, stop, thread: Some(thread) })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, the cluster URL for a client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The store-wide resourceVersion (that of the last write).
    pub fn resource_version(&self) -> u64 {
        self.shared.store.resource_version()
    }

    /// Compacts the watch history: a watch from any version before now gets 410 Gone.
    /// Returns the oldest version that can still be watched from.
    pub fn compact(&self) -> u64 {
        self.shared.store.compact()
    }

    /// Requests served so far, by verb.
    pub fn request_counts(&self) -> RequestCounts {
        self.shared.counts()
    }

    /// Makes the next write requests (create, update, delete) fail, one fault each, in order.
    pub fn inject_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        self.shared.inject(faults);
    }

    /// Reads an object as stored, bypassing HTTP and auth (for assertions in tests).
    pub fn object(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        let key = ObjectKey { resource, namespace: namespace.into(), name: name.into() };
        self.shared.store.get(&key).ok()
    }

    /// Creates or replaces an object as another client would (validated, versioned, watched),
    /// bypassing HTTP and auth. A `metadata.resourceVersion` in `object` is ignored.
    pub fn put_object(&self, resource: Resource, namespace: &str, mut object: Value) -> Result<Value, ApiError> {
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let key = ObjectKey { resource, namespace: namespace.into(), name };
        match self.shared.store.replace(&key, object.clone()) {
            Err(e) if e.code == 404 => self.shared.store.create(resource, namespace, object),
            other => other,
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").field("addr", &self.addr).finish_non_exhaustive()
    }
}
