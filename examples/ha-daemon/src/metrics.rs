//! Latency histograms for `/metrics`: every store request by method (acquire and renew among
//! them) and every resource action, measured by wrapping the [`Dcs`] and the [`Resource`]
//! the driver is given, so the core stays free of clocks and metrics.
//!
//! The exposition is Prometheus text, written by hand like the rest of `/metrics` (no
//! metrics crate is in the tree; a histogram is a few counters).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use leasehold::driver::Resource;
use leasehold::node::{DemoteMode, ResourceStatus};
use leasehold::{
    CasOutcome, ClusterView, ControlKey, Dcs, DcsError, Epoch, Expect, LeaderRecord, LeaderView, Lease, MemberRecord,
    StoreBounds, Version, WatchEvent,
};

/// Upper bounds of the buckets, in seconds (Prometheus' defaults, plus 1 ms and 2.5 ms for
/// loopback stores).
pub const BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One histogram: cumulative counts per bucket, the sum and the count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Observations at or below each of [`BUCKETS`] (not cumulative; summed when rendered).
    pub buckets: [u64; BUCKETS.len()],
    /// Sum of all observations, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i] += 1;
        }
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// How a store request ended, for `leasehold_store_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Answered (also a lost compare-and-set: the store did its job).
    Ok,
    /// A compare-and-set that lost.
    Lost,
    /// An error.
    Error,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Lost => "lost",
            Outcome::Error => "error",
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    store: BTreeMap<&'static str, Histogram>,
    requests: BTreeMap<(&'static str, Outcome), u64>,
    actions: BTreeMap<&'static str, Histogram>,
    action_failures: BTreeMap<&'static str, u64>,
}

/// The daemon's histograms, shared by the wrappers and the API.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a store request. `watch` is counted but not timed: it waits on purpose.
    pub fn store_request(&self, method: &'static str, took: Duration, outcome: Outcome) {
        let mut inner = self.lock();
        if method != "watch" {
            inner.store.entry(method).or_default().observe(took);
        }
        *inner.requests.entry((method, outcome)).or_default() += 1;
    }

    /// Records a resource action (`promote`, `demote`, `follow`, `status`, `restart`, ...).
    pub fn resource_action(&self, action: &'static str, took: Duration, ok: bool) {
        let mut inner = self.lock();
        inner.actions.entry(action).or_default().observe(took);
        if !ok {
            *inner.action_failures.entry(action).or_default() += 1;
        }
    }

    /// The store histogram for `method`, if any request was made.
    pub fn store_histogram(&self, method: &str) -> Option<Histogram> {
        self.lock().store.get(method).cloned()
    }

    /// Appends the Prometheus text of every series; `labels` are the member's own
    /// (`scope="..",name=".."`).
    pub fn render(&self, out: &mut String, labels: &str) {
        let inner = self.lock();
        let name = "leasehold_store_request_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Store requests by method (acquire, renew, load, ...), watch excluded.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (method, h) in &inner.store {
            h.render(out, name, &format!("{labels},method=\"{method}\""));
        }
        let name = "leasehold_store_requests_total";
        let _ = writeln!(out, "# HELP {name} Store requests by method and outcome (ok, lost compare-and-set, error).");
        let _ = writeln!(out, "# TYPE {name} counter");
        for ((method, outcome), n) in &inner.requests {
            let _ = writeln!(out, "{name}{{{labels},method=\"{method}\",outcome=\"{}\"}} {n}", outcome.name());
        }
        let name = "leasehold_resource_action_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Resource actions (promote, demote, follow, status, restart, ...).");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (action, h) in &inner.actions {
            h.render(out, name, &format!("{labels},action=\"{action}\""));
        }
        let name = "leasehold_resource_action_failures_total";
        let _ = writeln!(out, "# HELP {name} Resource actions that failed.");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (action, n) in &inner.action_failures {
            let _ = writeln!(out, "{name}{{{labels},action=\"{action}\"}} {n}");
        }
    }
}

/// The daemon process's own resident memory and CPU time, from `/proc/self` (Linux).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessStats {
    /// `VmRSS`, in bytes.
    pub rss_bytes: u64,
    /// User plus system CPU time since the process started, in seconds.
    pub cpu_seconds: f64,
}

impl ProcessStats {
    /// The current figures; `None` where `/proc` is not there or not readable.
    pub fn read() -> Option<ProcessStats> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // SAFETY: sysconf reads a constant of the running system; no memory is involved.
        #[allow(unsafe_code)]
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Self::parse(&status, &stat, u64::try_from(ticks).ok().filter(|t| *t > 0)?)
    }

    /// Parses `/proc/self/status` (for `VmRSS: <n> kB`) and `/proc/self/stat` (utime and
    /// stime, fields 14 and 15, after the command name in parentheses, which may hold spaces).
    fn parse(status: &str, stat: &str, ticks_per_second: u64) -> Option<ProcessStats> {
        let rss_kib: u64 =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // After ")": field 3 (state) is index 0, so utime (14) is index 11 and stime (15) 12.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(ProcessStats { rss_bytes: rss_kib * 1024, cpu_seconds: (utime + stime) as f64 / ticks_per_second as f64 })
    }
}

/// Times `f`. The daemon measures real durations; the core never reads a clock.
#[allow(clippy::disallowed_methods)]
async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let started = std::time::Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

fn outcome<W, L>(r: &Result<CasOutcome<W, L>, DcsError>) -> Outcome {
    match r {
        Ok(CasOutcome::Won(_)) => Outcome::Ok,
        Ok(CasOutcome::Lost(_)) => Outcome::Lost,
        Err(_) => Outcome::Error,
    }
}

fn plain<T>(r: &Result<T, DcsError>) -> Outcome {
    if r.is_ok() { Outcome::Ok } else { Outcome::Error }
}

/// A [`Dcs`] that records every request in [`Metrics`] and forwards it unchanged.
pub struct MeteredDcs {
    inner: Arc<dyn Dcs>,
    metrics: Arc<Metrics>,
}

impl MeteredDcs {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Dcs>, metrics: Arc<Metrics>) -> Self {
        MeteredDcs { inner, metrics }
    }
}

#[async_trait]
impl Dcs for MeteredDcs {
    fn scope(&self) -> &str {
        self.inner.scope()
    }

    fn bounds(&self) -> StoreBounds {
        self.inner.bounds()
    }

    fn configured_ttl(&self) -> std::time::Duration {
        self.inner.configured_ttl()
    }

    async fn load(&self) -> Result<ClusterView, DcsError> {
        let (r, took) = timed(self.inner.load()).await;
        self.metrics.store_request("load", took, plain(&r));
        r
    }

    async fn acquire(&self, record: &LeaderRecord) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        let (r, took) = timed(self.inner.acquire(record)).await;
        self.metrics.store_request("acquire", took, outcome(&r));
        r
    }

    async fn renew(&self, lease: &Lease) -> Result<CasOutcome<Lease, Option<LeaderView>>, DcsError> {
        let (r, took) = timed(self.inner.renew(lease)).await;
        self.metrics.store_request("renew", took, outcome(&r));
        r
    }

    async fn release(&self, lease: &Lease) -> Result<CasOutcome<(), Option<LeaderView>>, DcsError> {
        let (r, took) = timed(self.inner.release(lease)).await;
        self.metrics.store_request("release", took, outcome(&r));
        r
    }

    async fn publish_member(&self, member: &MemberRecord) -> Result<(), DcsError> {
        let (r, took) = timed(self.inner.publish_member(member)).await;
        self.metrics.store_request("publish_member", took, plain(&r));
        r
    }

    async fn write_control(
        &self,
        key: ControlKey,
        expect: Expect,
        value: &[u8],
    ) -> Result<CasOutcome<Version, Option<Version>>, DcsError> {
        let (r, took) = timed(self.inner.write_control(key, expect, value)).await;
        self.metrics.store_request("write_control", took, outcome(&r));
        r
    }

    async fn delete_control(
        &self,
        key: ControlKey,
        expect: &Version,
    ) -> Result<CasOutcome<(), Option<Version>>, DcsError> {
        let (r, took) = timed(self.inner.delete_control(key, expect)).await;
        self.metrics.store_request("delete_control", took, outcome(&r));
        r
    }

    async fn watch(&self, after: Option<&Version>, timeout: Duration) -> Result<WatchEvent, DcsError> {
        let (r, took) = timed(self.inner.watch(after, timeout)).await;
        self.metrics.store_request("watch", took, plain(&r));
        r
    }
}

/// A [`Resource`] that records every action in [`Metrics`] and forwards it unchanged.
pub struct MeteredResource {
    inner: Arc<dyn Resource>,
    metrics: Arc<Metrics>,
}

impl MeteredResource {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Resource>, metrics: Arc<Metrics>) -> Self {
        MeteredResource { inner, metrics }
    }
}

#[async_trait]
impl Resource for MeteredResource {
    async fn promote(&self, epoch: Epoch) -> Result<(), String> {
        let (r, took) = timed(self.inner.promote(epoch)).await;
        self.metrics.resource_action("promote", took, r.is_ok());
        r
    }

    async fn demote(&self, mode: DemoteMode) -> Result<(), String> {
        let (r, took) = timed(self.inner.demote(mode)).await;
        self.metrics.resource_action("demote", took, r.is_ok());
        r
    }

    async fn follow(&self, leader: Option<&str>, conn_url: Option<&str>) -> Result<(), String> {
        let (r, took) = timed(self.inner.follow(leader, conn_url)).await;
        self.metrics.resource_action("follow", took, r.is_ok());
        r
    }

    async fn status(&self) -> ResourceStatus {
        let (r, took) = timed(self.inner.status()).await;
        self.metrics.resource_action("status", took, true);
        r
    }

    async fn set_sync_standbys(&self, names: &[String]) -> Result<(), String> {
        let (r, took) = timed(self.inner.set_sync_standbys(names)).await;
        self.metrics.resource_action("set_sync_standbys", took, r.is_ok());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_parse_proc_files_and_refuse_garbage() {
        let status = "Name:\tleasehold-ha\nVmPeak:\t 9000 kB\nVmRSS:\t    5120 kB\nThreads:\t4\n";
        let stat = "1234 (leasehold ha) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1 0 0";
        let p = ProcessStats::parse(status, stat, 100).expect("parses");
        assert_eq!(p.rss_bytes, 5120 * 1024);
        assert!((p.cpu_seconds - 3.0).abs() < 1e-9, "{p:?}");
        assert_eq!(ProcessStats::parse("VmRSS: lots\n", stat, 100), None);
        assert_eq!(ProcessStats::parse(status, "1234 (truncated", 100), None);
        assert!(ProcessStats::read().is_some(), "this test runs on Linux");
    }

    #[test]
    fn histogram_buckets_are_cumulative_in_the_text() {
        let m = Metrics::default();
        m.store_request("renew", Duration::from_micros(500), Outcome::Ok);
        m.store_request("renew", Duration::from_millis(30), Outcome::Lost);
        m.store_request("renew", Duration::from_secs(60), Outcome::Error);
        m.store_request("watch", Duration::from_secs(5), Outcome::Ok);
        let mut out = String::new();
        m.render(&mut out, "scope=\"s\",name=\"n\"");
        let line = |prefix: &str| out.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
        let renew = "leasehold_store_request_duration_seconds_bucket{scope=\"s\",name=\"n\",method=\"renew\"";
        assert_eq!(line(&format!("{renew},le=\"0.001\"}}")).unwrap().rsplit(' ').next(), Some("1"));
        assert_eq!(line(&format!("{renew},le=\"0.05\"}}")).unwrap().rsplit(' ').next(), Some("2"));
        assert_eq!(line(&format!("{renew},le=\"10\"}}")).unwrap().rsplit(' ').next(), Some("2"));
        assert_eq!(line(&format!("{renew},le=\"+Inf\"}}")).unwrap().rsplit(' ').next(), Some("3"));
        assert!(!out.contains("method=\"watch\",le="), "watch is not timed:\n{out}");
        assert!(
            out.contains("leasehold_store_requests_total{scope=\"s\",name=\"n\",method=\"watch\",outcome=\"ok\"} 1")
        );
        assert!(out.contains("method=\"renew\",outcome=\"lost\"} 1"));
        assert_eq!(m.store_histogram("renew").unwrap().count, 3);
    }
}
