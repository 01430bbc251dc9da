//! `leasehold-ha run`: wires the configuration, the store, the hooks, the REST API and the
//! driver together, and shuts down cleanly on SIGTERM or SIGINT.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use leasehold::driver::{self, LinuxWatchdog, NoWatchdog, Resource, Watchdog};
use leasehold::node::{NodeEvent, WatchdogMode};
use tokio::signal::unix::{SignalKind, signal};

use crate::api::{self, ApiState, MemberActions};
use crate::config::{DaemonConfig, ResourceConfig};
use crate::hooks::{HookResource, mode_name};
use crate::metrics::{MeteredDcs, MeteredResource, Metrics};
use crate::postgres::PgResource;
use crate::probe::HttpProbe;
use crate::store;

/// The resource as the driver sees it, the native PostgreSQL one when configured, and the
/// operator actions it offers.
type Resources = (Arc<dyn Resource>, Option<Arc<PgResource>>, Arc<dyn MemberActions>);

/// A number that differs on every start, so two incarnations of a member are told apart.
fn incarnation() -> u64 {
    #[allow(clippy::disallowed_methods)] // only uniqueness matters here, not the time
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    (u64::from(std::process::id()) << 40) ^ (nanos as u64)
}

/// The timing the store's `config` key asks for, when it differs from the file's and is
/// valid; a document that breaks a rule is logged, naming the key, and the file's timing used.
async fn dynamic_timing(config: &DaemonConfig, store: &store::Store) -> Option<leasehold::Timing> {
    let view = match store.dcs.load().await {
        Ok(view) => view,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the dynamic configuration; starting with the file's timing");
            return None;
        }
    };
    let (doc, _, _) = crate::dynamic::current(&view);
    let (dynamic, errors) = crate::dynamic::read(&doc);
    for e in &errors {
        tracing::error!(key = %e.key, "the dynamic configuration in the store: {}; the file's value is used", e.message);
    }
    let timing = dynamic.timing(&config.timing);
    if timing == config.timing {
        return None;
    }
    let checked = timing
        .validate()
        .map_err(|e| crate::config::ConfigError::new(e.field, e.message))
        .and_then(|()| crate::config::validate_store(&config.store, &timing));
    match checked {
        Ok(()) => {
            tracing::info!(
                ttl = timing.ttl.as_secs(),
                loop_wait = timing.loop_wait.as_secs(),
                retry_timeout = timing.retry_timeout.as_secs(),
                "running with the timing of the dynamic configuration (it overrides the file)"
            );
            Some(timing)
        }
        Err(e) => {
            tracing::error!(key = %e.key, "the dynamic configuration's timing is refused: {}; running with the file's", e.message);
            None
        }
    }
}

/// SIGHUP: re-reads the file and applies what can change while running (the log level). A
/// file that no longer validates changes nothing; the error names the key.
fn reload(path: &std::path::Path) {
    match DaemonConfig::load(path) {
        Ok(new) => match crate::logging::set_level(&new.log_level) {
            Ok(what) => tracing::info!(level = %new.log_level, "SIGHUP: log level {what}"),
            Err(e) => tracing::error!("SIGHUP: config key `log.level`: {e}"),
        },
        Err(e) => tracing::error!("SIGHUP: {}: {e}; nothing changed", path.display()),
    }
}

/// Runs the daemon until a signal or a fatal store error. Returns the process exit code.
pub async fn run(mut config: DaemonConfig, path: std::path::PathBuf) -> anyhow::Result<i32> {
    // Bind first: a busy port is a configuration problem worth failing on before joining.
    let listener = tokio::net::TcpListener::bind(config.restapi.listen)
        .await
        .with_context(|| format!("config key `restapi.listen`: cannot listen on {}", config.restapi.listen))?;
    let mut store = store::connect(&config.store, &config.scope, &config.timing)
        .await
        .with_context(|| format!("cannot connect to the {} store", config.store.kind()))?;
    if let Some(timing) = dynamic_timing(&config, &store).await {
        if timing.ttl != config.timing.ttl {
            // The store's lease or session was made with the file's ttl: make it again.
            store.close().await;
            store = store::connect(&config.store, &config.scope, &timing)
                .await
                .with_context(|| format!("cannot connect to the {} store", config.store.kind()))?;
        }
        config.timing = timing;
    }
    let config = Arc::new(config);
    // Every store request and resource action is timed for /metrics.
    let metrics = Arc::new(Metrics::default());
    let dcs: Arc<dyn leasehold::Dcs> = Arc::new(MeteredDcs::new(store.dcs.clone(), metrics.clone()));
    tracing::info!(scope = %config.scope, name = %config.name, store = config.store.kind(), api = %config.restapi.connect_url, "starting");

    let (resource, postgres, actions): Resources = match &config.resource {
        ResourceConfig::Hooks(h) => {
            let hooks = Arc::new(HookResource::new(h.clone(), &config.scope, &config.name));
            (hooks.clone(), None, hooks)
        }
        ResourceConfig::Postgres(p) => {
            let pg = Arc::new(
                PgResource::new(
                    (**p).clone(),
                    &config.scope,
                    &config.name,
                    config.synchronous_mode,
                    config.synchronous_mode_strict,
                )
                .map_err(anyhow::Error::msg)?,
            );
            (pg.clone(), Some(pg.clone()), pg)
        }
    };
    // On Kubernetes, the daemon's own pod carries the role label the primary Service selects.
    #[cfg(feature = "kubernetes")]
    let resource: Arc<dyn Resource> = match &config.store {
        crate::config::StoreConfig::Kubernetes(section) => {
            match crate::pod_role::PodRoleLabel::wrap(
                resource.clone(),
                section,
                &config.scope,
                config.timing.retry_timeout,
            )
            .await
            .context("the pod role label")?
            {
                Some(labelled) => {
                    let s = labelled.settings();
                    tracing::info!(pod = %s.pod, namespace = %s.namespace, label = %s.role_label, "keeping the pod's role label current");
                    Arc::new(labelled)
                }
                None => {
                    tracing::info!("no pod to label (kubernetes.pod_name and POD_NAME unset)");
                    resource
                }
            }
        }
        _ => resource,
    };
    // Patroni's 2 s, but at most half of retry_timeout: the node drops an election probe whose
    // answers (and our own fresh status, read after them) arrive past retry_timeout, so a
    // silent peer (a frozen daemon) that eats the whole window would stall every election.
    let probe_timeout = Duration::from_secs(2).min(config.timing.retry_timeout / 2);
    let probe = Arc::new(HttpProbe::new(probe_timeout, config.restapi.token.clone(), &config.peer_tls())?);
    let resource: Arc<dyn Resource> = Arc::new(MeteredResource::new(resource, metrics.clone()));
    let watchdog: Box<dyn Watchdog> = match config.watchdog.mode {
        WatchdogMode::Off => Box::new(NoWatchdog),
        _ => Box::new(LinuxWatchdog::new(&config.watchdog.device)),
    };
    let handle = driver::spawn(config.node_config(incarnation()), dcs, resource.clone(), probe, watchdog)
        .map_err(|e| anyhow::anyhow!("config key `{}`: {}", e.field, e.message))?;
    if let Some(pg) = &postgres {
        pg.attach(handle.watch_state());
    }
    let mut events = handle.subscribe();
    let mut states = handle.watch_state();
    let state_watch = handle.watch_state();
    let state = ApiState::new(config.clone(), handle, Some(resource), Some(actions), metrics);

    // Progress tracking for /liveness, and leader-change counting for /metrics.
    let progress = state.clone();
    #[allow(clippy::disallowed_methods)] // the daemon owns its tasks; the core stays clock-free
    let progress_task = tokio::spawn(async move {
        while states.changed().await.is_ok() {
            *progress.last_progress.lock().await = tokio::time::Instant::now();
        }
    });
    // The dynamic configuration's PostgreSQL parameters, applied by a reload when they change.
    let parameters_task = postgres.map(|pg| {
        let (api, mut states) = (state.clone(), state_watch.clone());
        #[allow(clippy::disallowed_methods)] // see above
        tokio::spawn(async move {
            let mut applied = None;
            while states.changed().await.is_ok() {
                let view = states.borrow_and_update().view.clone();
                let Some(view) = view else { continue };
                let wanted = crate::dynamic::read(&crate::dynamic::current(&view).0).0.parameters;
                let changed = applied.as_ref() != Some(&wanted);
                if changed {
                    match pg.apply_parameters(&wanted).await {
                        Ok(None) => {} // no data directory yet
                        Ok(Some(refused)) => {
                            tracing::info!(parameters = wanted.len(), "applied the dynamic configuration's PostgreSQL parameters");
                            for r in refused {
                                tracing::error!("PostgreSQL refused a parameter of the dynamic configuration: {r}");
                            }
                            applied = Some(wanted);
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot apply the dynamic configuration's PostgreSQL parameters; trying again next loop"),
                    }
                }
                // Once per loop (one query on the status connection): an operator's ALTER
                // SYSTEM or a restart shows up too, and `/status` asks PostgreSQL nothing.
                let pending = pg.pending_restart_names().await;
                *api.resource_pending_restart.lock().unwrap_or_else(|e| e.into_inner()) = pending;
            }
        })
    });
    let counter = state.clone();
    #[allow(clippy::disallowed_methods)] // see above
    let events_task = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ev) => log_event(&counter, &ev),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event log lagged")
                }
                Err(_) => break,
            }
        }
    });

    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api_state = state.clone();
    #[allow(clippy::disallowed_methods)] // see above
    let server = tokio::spawn(async move {
        let stopped = async move {
            let _ = api_stopped.await;
        };
        if let Err(e) = api::serve(listener, api_state, stopped).await {
            tracing::error!(error = %e, "the REST API stopped");
        }
    });

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let code = loop {
        tokio::select! {
            _ = hup.recv() => reload(&path),
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break 0; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break 0; }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if state.driver.read().await.as_ref().is_none_or(|d| d.is_finished()) {
                    tracing::error!("the HA loop stopped (fatal store error)");
                    break 1;
                }
            }
        }
    };
    // A leader demotes, then releases the key, before the process exits.
    if let Some(d) = state.driver.write().await.take() {
        d.shutdown().await;
    }
    let _ = stop_api.send(());
    let _ = server.await;
    progress_task.abort();
    events_task.abort();
    if let Some(t) = parameters_task {
        t.abort();
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(code)
}

/// Whether `new` is a change of leader for the failover counter: another member than the
/// last one seen. The first leader seen at start-up and the leaderless gap in between are not.
fn is_leader_change(last: &mut Option<String>, new: Option<&str>) -> bool {
    let Some(new) = new else { return false };
    let changed = last.as_deref().is_some_and(|l| l != new);
    *last = Some(new.to_string());
    changed
}

fn log_event(state: &ApiState, ev: &NodeEvent) {
    match ev {
        NodeEvent::Acquired { epoch } => tracing::info!(%epoch, "acquired the leader key"),
        NodeEvent::Promoted { epoch } => tracing::info!(%epoch, "promoted: acting as primary"),
        NodeEvent::Demoting { mode, why } => tracing::warn!(mode = mode_name(*mode), why, "demoting"),
        NodeEvent::Demoted => tracing::info!("demoted"),
        NodeEvent::LeaderChanged { leader } => {
            let mut last = state.last_leader.lock().unwrap_or_else(|e| e.into_inner());
            if is_leader_change(&mut last, leader.as_deref()) {
                state.leader_changes.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(leader = leader.as_deref().unwrap_or("none"), "leader changed")
        }
        NodeEvent::NotEligible(reason) => tracing::info!(%reason, "not racing for the free leader key"),
        NodeEvent::Fatal(e) => tracing::error!(error = %e, "fatal store error"),
        other => tracing::debug!(event = ?other, "event"),
    }
}

#[cfg(test)]
mod tests {
    use super::is_leader_change;

    #[test]
    fn the_failover_counter_counts_changes_of_holder_only() {
        let mut last = None;
        let seen: Vec<bool> = [Some("n1"), None, Some("n1"), None, Some("n2"), Some("n2"), Some("n3")]
            .into_iter()
            .map(|l| is_leader_change(&mut last, l))
            .collect();
        assert_eq!(seen, [false, false, false, false, true, false, true]);
    }
}
