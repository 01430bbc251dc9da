//! Shared test plumbing: the conformance harness over real etcd and small helpers.
#![allow(dead_code)]

use std::sync::Arc;

use etcd_client::{CompactionOptions, GetOptions};
use leasehold::testkit::conformance::{Client as SuiteClient, Harness};
use leasehold::{Dcs, DcsError, Key, LeaderRecord, Timing};
use leasehold_etcd::{EtcdClient, EtcdOptions};

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
}

/// A raw etcd-client connection for checks that bypass the backend.
pub async fn raw(options: &EtcdOptions) -> etcd_client::Client {
    etcd_client::Client::connect(&options.endpoints, None).await.expect("raw etcd client connects")
}

pub fn leader(member: &str, token: &str) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: token.into(), api_url: None, conn_url: None }
}

/// One suite client: an EtcdClient of its own (own channel, own lease).
pub struct Process(pub EtcdClient);

#[async_trait::async_trait]
impl SuiteClient for Process {
    fn scope(&self, scope: &str) -> Arc<dyn Dcs> {
        Arc::new(self.0.scope(scope))
    }

    async fn crash(self: Box<Self>) {
        self.0.stop();
    }
}

/// The conformance harness on a real etcd.
pub struct EtcdHarness {
    pub options: EtcdOptions,
    pub timing: Timing,
    pub raw: etcd_client::Client,
}

impl EtcdHarness {
    pub async fn new(options: EtcdOptions, timing: Timing) -> Self {
        let raw = raw(&options).await;
        EtcdHarness { options, timing, raw }
    }
}

#[async_trait::async_trait]
impl Harness for EtcdHarness {
    async fn open_client(&self) -> Result<Box<dyn SuiteClient>, DcsError> {
        Ok(Box::new(Process(EtcdClient::connect(self.options.clone(), &self.timing).await?)))
    }

    async fn write_garbage(&self, scope: &str, key: &Key) -> Result<(), DcsError> {
        let path = key.path(&self.options.prefix, scope);
        self.raw
            .kv_client()
            .put(path, b"{not json \x01".to_vec(), None)
            .await
            .map(|_| ())
            .map_err(|e| DcsError::unavailable_with("write garbage", e))
    }

    async fn compact(&self) -> Result<bool, DcsError> {
        let mut kv = self.raw.kv_client();
        let now = kv
            .get("/", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| DcsError::unavailable_with("read the revision", e))?;
        let revision = now.header().map(|h| h.revision()).unwrap_or_default();
        kv.compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
            .map_err(|e| DcsError::unavailable_with("compact", e))?;
        Ok(true)
    }
}
