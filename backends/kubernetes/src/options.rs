//! How to reach the API server and how to name and label the objects. The lease duration
//! comes from the [`Timing`] given to [`KubeClient::connect`](crate::KubeClient::connect).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use leasehold::{OptionsError, Timing};

use crate::names;

/// Where the client configuration comes from.
#[derive(Clone, Debug, Default)]
pub enum ConfigSource {
    /// `KUBECONFIG` or `~/.kube/config`, else the in-cluster service account (kube's
    /// `Config::infer`).
    #[default]
    Infer,
    /// The pod's service account: `KUBERNETES_SERVICE_HOST`/`_PORT` and the mounted token and CA.
    InCluster,
    /// A kubeconfig file (`None`: `KUBECONFIG` or `~/.kube/config`), optionally a named context.
    Kubeconfig {
        /// The file; `None` uses the default lookup.
        path: Option<PathBuf>,
        /// The context to use; `None` uses the file's current context.
        context: Option<String>,
    },
    /// A ready configuration (tests, emulators, custom auth).
    Explicit(Box<kube::Config>),
}

/// Options of a [`KubeClient`](crate::KubeClient).
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// The namespace holding the objects; `None` uses the configuration's default namespace
    /// (the kubeconfig context's, or the service account's).
    pub namespace: Option<String>,
    /// Where the client configuration comes from.
    pub config: ConfigSource,
    /// Prepended to every object name (`<prefix><scope>-leader`), so several deployments can
    /// share a namespace. Empty or lowercase letters, digits, `-` and `.`, starting with a letter or digit.
    pub prefix: String,
    /// Extra labels put on every object (for example `app.kubernetes.io/part-of`). Keys in
    /// `leasehold.io/` and `app.kubernetes.io/managed-by` are reserved.
    pub labels: BTreeMap<String, String>,
    /// Upper bound on one API request (watches excepted). A read that runs out is
    /// `Unavailable`, a write `OutcomeUnknown`.
    pub request_timeout: Duration,
    /// Serve reads and wake-ups from one label-selected LIST + WATCH per client over all its
    /// scopes (see [`KubeDcs`](crate::KubeDcs)): an idle follower then sends nothing but its
    /// member keep-alive. Off: every `load` is a LIST and every `watch` its own WATCH.
    pub watch_mirror: bool,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            namespace: None,
            config: ConfigSource::Infer,
            prefix: String::new(),
            labels: BTreeMap::new(),
            request_timeout: Duration::from_secs(10),
            watch_mirror: true,
        }
    }
}

impl KubeOptions {
    /// Checks every field, and `timing.ttl` as the lease duration: at least 1 s and within
    /// `leaseDurationSeconds` (int32 seconds). A fractional ttl is written rounded up to whole
    /// seconds ([`KubeClient::lease_ttl`](crate::KubeClient::lease_ttl)).
    pub fn validate(&self, timing: &Timing) -> Result<(), OptionsError> {
        let fail = |field, message: String| Err(OptionsError { store: "kubernetes", field, message });
        if timing.ttl < Duration::from_secs(1) {
            return fail("timing.ttl", format!("{:?} is below 1 s, the unit of leaseDurationSeconds", timing.ttl));
        }
        if timing.ttl > Duration::from_secs(i32::MAX as u64) {
            return fail("timing.ttl", format!("{:?} does not fit leaseDurationSeconds (int32)", timing.ttl));
        }
        if self.request_timeout.is_zero() {
            return fail("request_timeout", "must be greater than zero".into());
        }
        if let Some(ns) = &self.namespace
            && let Err(e) = names::dns_label(ns)
        {
            return fail("namespace", format!("{ns:?} {e}"));
        }
        if !self.prefix.is_empty() {
            let ok = self.prefix.len() <= 100
                && self.prefix.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && self.prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !ok {
                return fail(
                    "prefix",
                    format!(
                        "{:?} must be at most 100 lowercase letters, digits, '-' or '.', starting with a letter or digit",
                        self.prefix
                    ),
                );
            }
        }
        for (k, v) in &self.labels {
            if k.starts_with(names::LABEL_DOMAIN) || k == names::MANAGED_BY {
                return fail("labels", format!("{k:?} is reserved for leasehold's own labels"));
            }
            if let Err(e) = names::label_key(k) {
                return fail("labels", format!("key {k:?}: {e}"));
            }
            if let Err(e) = names::label_value(v) {
                return fail("labels", format!("value {v:?} of {k:?}: {e}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_name_the_field() {
        let ok = KubeOptions::default();
        let timing = Timing::default();
        assert!(ok.validate(&timing).is_ok());
        assert!(ok.validate(&Timing { ttl: Duration::from_millis(1500), ..timing.clone() }).is_ok());
        for ttl in [Duration::ZERO, Duration::from_millis(999), Duration::from_secs(1 << 32)] {
            let err = ok.validate(&Timing { ttl, ..timing.clone() }).expect_err("ttl");
            assert_eq!(err.field, "timing.ttl", "{err}");
            assert!(err.to_string().starts_with("invalid kubernetes option timing.ttl"), "{err}");
        }
        let cases = [
            (KubeOptions { namespace: Some("Kube_System".into()), ..ok.clone() }, "namespace"),
            (KubeOptions { prefix: "-x".into(), ..ok.clone() }, "prefix"),
            (KubeOptions { labels: [("leasehold.io/x".into(), "y".into())].into(), ..ok.clone() }, "labels"),
            (KubeOptions { labels: [("team".into(), "a b".into())].into(), ..ok.clone() }, "labels"),
            (KubeOptions { request_timeout: Duration::ZERO, ..ok.clone() }, "request_timeout"),
        ];
        for (options, field) in cases {
            let err = options.validate(&timing).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }
}
