//! Logging to standard error with a level that can change while the daemon runs: `[log] level`
//! in the file, overridden by `LEASEHOLD_LOG`, re-read on SIGHUP.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the process's logger with `level` (a `tracing` filter), unless `LEASEHOLD_LOG`
/// names one. Call once, before anything logs.
pub fn init(level: &str) {
    let filter = std::env::var("LEASEHOLD_LOG")
        .ok()
        .and_then(|l| EnvFilter::try_new(l).ok())
        .unwrap_or_else(|| EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() {
        let _ = LEVEL.set(handle);
    }
}

/// Changes the level of the logger [`init`] installed. `LEASEHOLD_LOG`, when set, still wins
/// (the environment is the operator's override of the file).
pub fn set_level(level: &str) -> Result<&'static str, String> {
    if std::env::var_os("LEASEHOLD_LOG").is_some() {
        return Ok("kept: LEASEHOLD_LOG is set and overrides log.level");
    }
    let filter = EnvFilter::try_new(level).map_err(|e| format!("{level:?} is not a log filter: {e}"))?;
    let handle = LEVEL.get().ok_or("no reloadable logger installed")?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    Ok("changed")
}
