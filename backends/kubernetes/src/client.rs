//! One connection to the API server, shared by any number of scope handles, with the
//! keep-alive that renews this process's member Leases.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{DeleteParams, ListParams, ObjectList, Patch, PatchParams, PostParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Config};
use leasehold::{DcsError, Epoch, LeaderRecord, MemberRecord, Record, Timing};
use tokio::task::AbortHandle;

use crate::dcs::KubeDcs;
use crate::error::{Op, api_code, classify, timed};
use crate::mirror::{self, Mirror};
use crate::names::{LEADER_ANNOTATION, MEMBER_ANNOTATION, ScopeNames};
use crate::objects::{self, duration_secs, new_lease, stamp, wall_now};
use crate::observe::Observations;
use crate::options::{ConfigSource, KubeOptions};

/// How a conditional write ended when it did not fail.
#[derive(Debug)]
pub(crate) enum Write<T> {
    /// Applied.
    Done(T),
    /// 409: a stale resourceVersion, a failed precondition, or the name already exists.
    Conflict,
    /// 404: the object does not exist.
    Missing,
}

/// The last leader Lease this process wrote, so a renewal needs no read first.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub(crate) object: Lease,
    pub(crate) record: LeaderRecord,
    pub(crate) epoch: Epoch,
}

/// A member Lease this process keeps alive.
#[derive(Debug)]
pub(crate) struct PublishedMember {
    pub(crate) names: ScopeNames,
    pub(crate) name: String,
    pub(crate) record: MemberRecord,
    pub(crate) last: Option<Lease>,
}

pub(crate) struct Inner {
    pub(crate) api: Api<Lease>,
    /// The same connection, for the one raw request (a LIST that also reads the `Date` header).
    client: kube::Client,
    pub(crate) namespace: String,
    pub(crate) options: KubeOptions,
    /// `leaseDurationSeconds`: `timing.ttl` rounded up to whole seconds.
    pub(crate) ttl: Duration,
    /// `Timing::ttl` given to `connect`.
    pub(crate) configured_ttl: Duration,
    pub(crate) observations: Observations,
    pub(crate) held: Mutex<HashMap<String, Held>>,
    /// One async lock per member object: a publish and a keep-alive never interleave, so an
    /// older record can never overwrite a newer one.
    members: Mutex<HashMap<String, Arc<tokio::sync::Mutex<PublishedMember>>>>,
    stopped: AtomicBool,
    keepalive: Mutex<Option<AbortHandle>>,
    /// The process-wide LIST + WATCH (`KubeOptions::watch_mirror`), started by the first
    /// `load` or `watch` on any handle.
    pub(crate) mirror: Option<Arc<Mirror>>,
    mirror_task: Mutex<Option<AbortHandle>>,
    /// Objects with a write of unknown outcome since the last LIST of their scope.
    unsure: Mutex<std::collections::HashSet<String>>,
    runtime: tokio::runtime::Handle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.abort_tasks();
    }
}

/// A connection to the Kubernetes API server for leader election.
///
/// Cheap to clone; every clone and every [`KubeDcs`] handle from [`KubeClient::scope`] shares
/// one `kube::Client` (one connection pool) and one keep-alive task. The keep-alive renews
/// this process's member Leases every `ttl / 3` (one PUT per published member) and stops
/// when the client and all its handles are dropped, or on [`KubeClient::stop`].
#[derive(Clone)]
pub struct KubeClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient").field("namespace", &self.inner.namespace).finish_non_exhaustive()
    }
}

async fn load_config(source: &ConfigSource) -> Result<Config, DcsError> {
    let fatal = |what: &str, e: &dyn std::fmt::Display| {
        DcsError::fatal(format!("kubernetes client configuration ({what}): {e}"))
    };
    match source {
        ConfigSource::Infer => Config::infer().await.map_err(|e| fatal("kubeconfig or in-cluster", &e)),
        ConfigSource::InCluster => Config::incluster().map_err(|e| fatal("in-cluster service account", &e)),
        ConfigSource::Kubeconfig { path, context } => {
            let options = KubeConfigOptions { context: context.clone(), ..KubeConfigOptions::default() };
            match path {
                Some(p) => {
                    let file =
                        Kubeconfig::read_from(p).map_err(|e| fatal(&format!("kubeconfig {}", p.display()), &e))?;
                    Config::from_custom_kubeconfig(file, &options).await.map_err(|e| fatal("kubeconfig", &e))
                }
                None => Config::from_kubeconfig(&options).await.map_err(|e| fatal("kubeconfig", &e)),
            }
        }
        ConfigSource::Explicit(config) => Ok((**config).clone()),
    }
}

/// Installs rustls' *ring* provider as the process-wide default crypto provider, unless one
/// is installed already (then it does nothing).
///
/// kube builds its TLS configuration with rustls' `ClientConfig::builder()`, which takes the
/// process default. When the binary also links rustls' aws-lc-rs provider (for example
/// through leasehold-zookeeper's `tls` feature, whose TLS library enables it), rustls cannot
/// pick one by itself and that call panics. [`KubeClient::connect`] calls this first; call it
/// yourself before building a `kube::Client` for [`KubeClient::from_client`].
pub fn install_default_crypto_provider() {
    // Err means a provider is installed already (ours or the application's): fine either way.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl KubeClient {
    /// Connects as `options` say, with `timing.ttl` (rounded up to whole seconds) as the
    /// lease duration. Give every node on this client the same `timing`: the driver refuses
    /// one whose ttl differs ([`Dcs::configured_ttl`](leasehold::Dcs)). Configuration
    /// problems (bad options, no kubeconfig, an unusable certificate) are
    /// [`DcsError::Fatal`]. No request is made yet: credentials are checked by the first call
    /// (401/403 are fatal there).
    pub async fn connect(options: KubeOptions, timing: &Timing) -> Result<KubeClient, DcsError> {
        options.validate(timing).map_err(|e| DcsError::fatal(e.to_string()))?;
        let mut config = load_config(&options.config).await?;
        // kube retries 429/503/504 by default; a retried write whose first attempt went
        // through would then look like a lost race (409). We classify and retry ourselves.
        config.default_retry = false;
        let namespace = options.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        install_default_crypto_provider();
        let client = kube::Client::try_from(config)
            .map_err(|e| DcsError::fatal_with("kubernetes client cannot be built from the configuration", e))?;
        KubeClient::from_client(client, &namespace, options, timing)
    }

    /// Uses an existing `kube::Client` on `namespace`, as [`connect`](Self::connect) does
    /// with `options` and `timing`. Must be called within a tokio runtime (it starts the
    /// keep-alive task).
    pub fn from_client(
        client: kube::Client,
        namespace: &str,
        options: KubeOptions,
        timing: &Timing,
    ) -> Result<KubeClient, DcsError> {
        options.validate(timing).map_err(|e| DcsError::fatal(e.to_string()))?;
        crate::names::dns_label(namespace)
            .map_err(|e| DcsError::fatal(format!("kubernetes namespace {namespace:?} {e}")))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| DcsError::fatal("KubeClient must be created inside a tokio runtime"))?;
        let mirror = options.watch_mirror.then(|| Arc::new(Mirror::new(&options.labels)));
        let inner = Arc::new(Inner {
            api: Api::namespaced(client.clone(), namespace),
            client,
            namespace: namespace.to_string(),
            options,
            ttl: Duration::from_secs(timing.ttl.as_secs_f64().ceil() as u64),
            configured_ttl: timing.ttl,
            observations: Observations::default(),
            held: Mutex::new(HashMap::new()),
            members: Mutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
            keepalive: Mutex::new(None),
            mirror,
            mirror_task: Mutex::new(None),
            unsure: Mutex::new(Default::default()),
            runtime,
        });
        let every = inner.ttl / 3;
        // The client owns its keep-alive, as a store client owns its session heartbeat.
        let task = inner.runtime.spawn(keep_alive(Arc::downgrade(&inner), every));
        *inner.keepalive.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.abort_handle());
        Ok(KubeClient { inner })
    }

    /// A handle on election scope `scope`. The scope must be a DNS-1123 label (it becomes
    /// part of object names and a label value); otherwise every call on the handle fails
    /// with [`DcsError::Fatal`] naming the rule.
    pub fn scope(&self, scope: &str) -> KubeDcs {
        KubeDcs::new(self.inner.clone(), scope)
    }

    /// The namespace in use.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The `timing.ttl` this client was built with.
    pub fn configured_ttl(&self) -> Duration {
        self.inner.configured_ttl
    }

    /// The lease the store enforces: `leaseDurationSeconds`, `timing.ttl` rounded up to whole
    /// seconds (observers expire a holder after seeing it unchanged that long).
    pub fn lease_ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Stops at once, sending nothing: the background keep-alive ends and every call on every
    /// handle fails with [`DcsError::Fatal`]. This process's Leases stay until observers
    /// expire them (unchanged for `leaseDurationSeconds`), as after a crash.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.abort_tasks();
    }

    /// Stops like [`stop`](Self::stop), then ends what this process holds on the store and
    /// waits for the answers, each at most `request_timeout`, so every key held (members and
    /// any leader key still held) is gone now. Kubernetes has no session: each member Lease
    /// is deleted and each leader Lease still held has its holder cleared, both conditional
    /// on the resourceVersion this process wrote (an object changed since is left alone).
    /// Release leader keys with [`Dcs::release`](leasehold::Dcs::release) first for an
    /// orderly step-down. The first error is returned after every object was tried.
    pub async fn shutdown(&self) -> Result<(), DcsError> {
        self.stop();
        self.inner.end_all().await
    }
}

async fn keep_alive(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.renew_members().await;
    }
}

impl Inner {
    fn abort_tasks(&self) {
        for slot in [&self.keepalive, &self.mirror_task] {
            if let Some(task) = slot.lock().unwrap_or_else(PoisonError::into_inner).take() {
                task.abort();
            }
        }
    }

    /// The mirror, started on first use; `None` when switched off or stopped.
    pub(crate) fn mirror(self: &Arc<Self>) -> Option<&Mirror> {
        let mirror = self.mirror.as_deref()?;
        if self.stopped.load(Ordering::SeqCst) {
            return None;
        }
        let mut task = self.mirror_task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.is_none() && !self.stopped.load(Ordering::SeqCst) {
            *task = Some(self.runtime.spawn(mirror::run(Arc::downgrade(self))).abort_handle());
        }
        Some(mirror)
    }

    /// A write to `name` whose outcome is unknown: loads of its scope LIST until one has.
    fn note_unsure<T>(&self, name: &str, result: &Result<T, DcsError>) {
        if let Err(e) = result
            && e.is_outcome_unknown()
            && self.mirror.is_some()
        {
            self.unsure.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_string());
        }
    }

    /// Whether a write to an object `is_ours` names has an unknown outcome.
    pub(crate) fn unsure(&self, is_ours: impl Fn(&str) -> bool) -> bool {
        self.unsure.lock().unwrap_or_else(PoisonError::into_inner).iter().any(|n| is_ours(n))
    }

    /// A LIST showed the objects `is_ours` names: their unknown outcomes are known now.
    pub(crate) fn settle_unsure(&self, is_ours: impl Fn(&str) -> bool) {
        self.unsure.lock().unwrap_or_else(PoisonError::into_inner).retain(|n| !is_ours(n));
    }

    /// Tells the mirror about an object this process read or wrote.
    pub(crate) fn told(&self, lease: &Lease) {
        if let Some(m) = &self.mirror {
            m.told(lease);
        }
    }

    /// Tells the mirror that `name` is gone as of `rv` (deleted by us, or found missing).
    fn told_gone(&self, name: &str, rv: &str) {
        if let Some(m) = &self.mirror {
            m.told_gone(name, rv);
        }
    }

    pub(crate) fn check_running(&self) -> Result<(), DcsError> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(DcsError::fatal("this KubeClient was stopped"));
        }
        Ok(())
    }

    fn limit(&self) -> Duration {
        self.options.request_timeout
    }

    /// GET; 404 is `None`.
    pub(crate) async fn get(&self, name: &str) -> Result<Option<Lease>, DcsError> {
        let what = format!("get Lease {}/{name}", self.namespace);
        match timed(Op::Read, &what, self.limit(), self.api.get(name)).await? {
            Ok(lease) => {
                self.told(&lease);
                Ok(Some(lease))
            }
            Err(e) if api_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(classify(Op::Read, &what, e)),
        }
    }

    /// LIST by label selector: a quorum read (no resourceVersion), so linearizable.
    pub(crate) async fn list(&self, selector: &str) -> Result<ObjectList<Lease>, DcsError> {
        let what = format!("list Leases in {} with {selector}", self.namespace);
        let params = ListParams::default().labels(selector);
        timed(Op::Read, &what, self.limit(), self.api.list(&params)).await?.map_err(|e| classify(Op::Read, &what, e))
    }

    /// LIST by label selector (a quorum read), also returning the API server's clock at the
    /// answer (the HTTP `Date` header, whole seconds), which lets a fresh reader judge how
    /// long ago an object was last written by the server's own clock.
    pub(crate) async fn list_dated(
        &self,
        selector: &str,
    ) -> Result<(ObjectList<Lease>, Option<k8s_openapi::jiff::Timestamp>), DcsError> {
        let what = format!("list Leases in {} with {selector}", self.namespace);
        let path = format!("/apis/coordination.k8s.io/v1/namespaces/{}/leases", self.namespace);
        let request = kube::core::Request::new(path)
            .list(&ListParams::default().labels(selector))
            .map_err(|e| DcsError::fatal(format!("{what}: cannot build the request: {e}")))?;
        let answer = async {
            let response = self.client.send(request.map(kube::client::Body::from)).await?;
            let status = response.status();
            let date = response
                .headers()
                .get(http::header::DATE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| k8s_openapi::jiff::fmt::rfc2822::parse(v).ok())
                .map(|z| z.timestamp());
            let bytes = response.into_body().collect_bytes().await?;
            if !status.is_success() {
                let text = String::from_utf8_lossy(&bytes);
                let api = serde_json::from_slice::<kube::core::Status>(&bytes)
                    .unwrap_or_else(|_| kube::core::Status::failure(text.trim(), "").with_code(status.as_u16()));
                return Err(kube::Error::Api(api.boxed()));
            }
            let list: ObjectList<Lease> = serde_json::from_slice(&bytes).map_err(kube::Error::SerdeError)?;
            Ok((list, date))
        };
        timed(Op::Read, &what, self.limit(), answer).await?.map_err(|e| classify(Op::Read, &what, e))
    }

    /// POST; 409 AlreadyExists is `Conflict`.
    pub(crate) async fn create(&self, lease: &Lease) -> Result<Write<Lease>, DcsError> {
        let result = self.create_once(lease).await;
        self.note_unsure(objects::name(lease), &result);
        result
    }

    async fn create_once(&self, lease: &Lease) -> Result<Write<Lease>, DcsError> {
        let what = format!("create Lease {}/{}", self.namespace, objects::name(lease));
        match timed(Op::Write, &what, self.limit(), self.api.create(&PostParams::default(), lease)).await? {
            Ok(l) => {
                self.told(&l);
                Ok(Write::Done(l))
            }
            Err(e) if api_code(&e) == Some(409) => Ok(Write::Conflict),
            Err(e) => Err(classify(Op::Write, &what, e)),
        }
    }

    /// Compare-and-set: turns the stored object into `lease` if it is still at
    /// resourceVersion `rv` (a JSON merge patch carrying `rv`, see
    /// [`objects::merge_patch`]). 409 is `Conflict`, 404 (no such object) `Missing`: unlike a
    /// PUT, a PATCH never creates.
    pub(crate) async fn patch(&self, lease: &Lease, rv: &str) -> Result<Write<Lease>, DcsError> {
        let result = self.patch_once(lease, rv).await;
        self.note_unsure(objects::name(lease), &result);
        result
    }

    async fn patch_once(&self, lease: &Lease, rv: &str) -> Result<Write<Lease>, DcsError> {
        let name = objects::name(lease);
        let what = format!("patch Lease {}/{name} at resourceVersion {rv}", self.namespace);
        let patch = Patch::Merge(objects::merge_patch(lease, rv));
        match timed(Op::Write, &what, self.limit(), self.api.patch(name, &PatchParams::default(), &patch)).await? {
            Ok(l) => {
                self.told(&l);
                Ok(Write::Done(l))
            }
            Err(e) if api_code(&e) == Some(409) => Ok(Write::Conflict),
            Err(e) if api_code(&e) == Some(404) => {
                self.told_gone(name, rv);
                Ok(Write::Missing)
            }
            Err(e) => Err(classify(Op::Write, &what, e)),
        }
    }

    /// PUT carrying the object's resourceVersion; 409 is `Conflict`, 404 `Missing`. Only for
    /// this process's own member Leases: a real API server creates a missing object on PUT,
    /// which is right for re-publishing a member and wrong for any compare-and-set.
    pub(crate) async fn replace(&self, lease: &Lease) -> Result<Write<Lease>, DcsError> {
        let result = self.replace_once(lease).await;
        self.note_unsure(objects::name(lease), &result);
        result
    }

    async fn replace_once(&self, lease: &Lease) -> Result<Write<Lease>, DcsError> {
        let name = objects::name(lease);
        let what = format!("replace Lease {}/{name} at resourceVersion {}", self.namespace, objects::rv(lease));
        match timed(Op::Write, &what, self.limit(), self.api.replace(name, &PostParams::default(), lease)).await? {
            Ok(l) => {
                self.told(&l);
                Ok(Write::Done(l))
            }
            Err(e) if api_code(&e) == Some(409) => Ok(Write::Conflict),
            Err(e) if api_code(&e) == Some(404) => Ok(Write::Missing),
            Err(e) => Err(classify(Op::Write, &what, e)),
        }
    }

    /// DELETE with a resourceVersion precondition; 409 is `Conflict`, 404 `Missing`.
    pub(crate) async fn delete(&self, name: &str, rv: &str) -> Result<Write<()>, DcsError> {
        self.delete_exact(name, rv, None).await
    }

    /// DELETE with a resourceVersion and, when given, a uid precondition (the object must be
    /// that very one, not a namesake created since); 409 is `Conflict`, 404 `Missing`.
    pub(crate) async fn delete_exact(&self, name: &str, rv: &str, uid: Option<&str>) -> Result<Write<()>, DcsError> {
        let result = self.delete_once(name, rv, uid).await;
        self.note_unsure(name, &result);
        result
    }

    async fn delete_once(&self, name: &str, rv: &str, uid: Option<&str>) -> Result<Write<()>, DcsError> {
        let what = format!("delete Lease {}/{name} at resourceVersion {rv}", self.namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions { resource_version: Some(rv.to_string()), uid: uid.map(str::to_string) }),
            ..DeleteParams::default()
        };
        match timed(Op::Write, &what, self.limit(), self.api.delete(name, &params)).await? {
            Ok(_) => {
                self.told_gone(name, rv);
                Ok(Write::Done(()))
            }
            Err(e) if api_code(&e) == Some(409) => Ok(Write::Conflict),
            Err(e) if api_code(&e) == Some(404) => {
                self.told_gone(name, rv);
                Ok(Write::Missing)
            }
            Err(e) => Err(classify(Op::Write, &what, e)),
        }
    }

    /// Creates or replaces a member Lease and keeps it alive from now on.
    pub(crate) async fn publish_member(&self, names: &ScopeNames, record: &MemberRecord) -> Result<(), DcsError> {
        let name = names.member(&record.name)?;
        let entry = {
            let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
            members
                .entry(name.clone())
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Mutex::new(PublishedMember {
                        names: names.clone(),
                        name: name.clone(),
                        record: record.clone(),
                        last: None,
                    }))
                })
                .clone()
        };
        let mut member = entry.lock().await;
        member.record = record.clone();
        self.put_member(&mut member).await
    }

    /// Writes `member`'s Lease: a replace at the last version we know, re-reading on a
    /// conflict (our own member object: last writer wins, as a re-registration should).
    async fn put_member(&self, member: &mut PublishedMember) -> Result<(), DcsError> {
        let text = String::from_utf8(member.record.encode()).unwrap_or_default();
        let labels = member.names.labels("member");
        for _ in 0..4 {
            let result = match member.last.take() {
                Some(mut lease) => {
                    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                    spec.holder_identity = Some(member.record.name.clone());
                    spec.lease_duration_seconds = Some(duration_secs(self.ttl));
                    spec.renew_time = Some(wall_now());
                    spec.acquire_time.get_or_insert_with(wall_now);
                    stamp(&mut lease, &labels, MEMBER_ANNOTATION, Some(text.clone()));
                    self.replace(&lease).await?
                }
                None => {
                    let spec = LeaseSpec {
                        holder_identity: Some(member.record.name.clone()),
                        lease_duration_seconds: Some(duration_secs(self.ttl)),
                        acquire_time: Some(wall_now()),
                        renew_time: Some(wall_now()),
                        ..LeaseSpec::default()
                    };
                    let annotations = [(MEMBER_ANNOTATION.to_string(), text.clone())].into();
                    self.create(&new_lease(member.name.clone(), &self.namespace, labels.clone(), annotations, spec))
                        .await?
                }
            };
            match result {
                Write::Done(lease) => {
                    self.observations.observe(&member.name, objects::rv(&lease), crate::observe::now());
                    member.last = Some(lease);
                    return Ok(());
                }
                Write::Conflict => member.last = self.get(&member.name).await?,
                Write::Missing => member.last = None,
            }
        }
        Err(DcsError::unavailable(format!("member Lease {} kept changing under every write; try again", member.name)))
    }

    /// Deletes every member Lease this process published and clears the holder of every
    /// leader Lease it still holds, each conditional on the version it last wrote.
    async fn end_all(&self) -> Result<(), DcsError> {
        let members: Vec<_> =
            self.members.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, m)| m).collect();
        let held: Vec<_> = self.held.lock().unwrap_or_else(PoisonError::into_inner).drain().map(|(_, h)| h).collect();
        let mut first_error = None;
        for member in members {
            let member = member.lock().await;
            let Some(last) = &member.last else { continue };
            // Conflict: rewritten by someone else since; Missing: gone already.
            if let Err(e) = self.delete(&member.name, objects::rv(last)).await {
                first_error.get_or_insert(e);
            }
        }
        for held in held {
            let mut object = held.object.clone();
            let spec = object.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = None;
            spec.renew_time = Some(wall_now());
            if let Some(annotations) = object.metadata.annotations.as_mut() {
                annotations.remove(LEADER_ANNOTATION);
            }
            let rv = objects::rv(&held.object).to_string();
            if let Err(e) = self.patch(&object, &rv).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// One keep-alive round: every published member, a few at a time.
    async fn renew_members(&self) {
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        let entries: Vec<_> = self.members.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        futures::stream::iter(entries)
            .for_each_concurrent(16, |entry| async move {
                let mut member = entry.lock().await;
                if let Err(e) = self.put_member(&mut member).await {
                    tracing::warn!(member = %member.name, error = %e, "member keep-alive failed");
                }
            })
            .await;
    }
}
