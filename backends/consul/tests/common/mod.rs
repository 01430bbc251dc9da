//! Shared test plumbing: an emulator, client options, and the conformance harness.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use leasehold::testkit::conformance::{Client as SuiteClient, Harness};
use leasehold::{Dcs, DcsError, Key};
use leasehold_consul::{ConsulClient, ConsulOptions};
use leasehold_consul_emulator::{Emulator, EmulatorConfig, Expiry};

pub const TOKEN: &str = "test-token";
pub const PREFIX: &str = "service";

/// An emulator requiring `TOKEN`, accepting session TTLs down to 100 ms (a documented
/// deviation: Consul's floor is 10 s) so sessions expire within a test's patience.
pub fn emulator(expiry: Expiry) -> Emulator {
    let config = EmulatorConfig::with_token(TOKEN).session_ttl_min(Duration::from_millis(100)).expiry(expiry);
    Emulator::start(config).expect("emulator starts")
}

pub fn options(emulator: &Emulator, ttl: Duration) -> ConsulOptions {
    ConsulOptions {
        address: emulator.url(),
        token: Some(TOKEN.into()),
        ttl,
        request_timeout: Duration::from_secs(5),
        ..ConsulOptions::default()
    }
}

/// Writes garbage with a plain PUT, as a foreign writer would, in the backend's layout.
pub fn garbage_key(prefix: &str, scope: &str, key: &Key) -> String {
    key.path(prefix, scope).trim_start_matches('/').to_string()
}

/// One suite client: a ConsulClient of its own (own HTTP client and session).
pub struct Process(pub ConsulClient);

#[async_trait::async_trait]
impl SuiteClient for Process {
    fn scope(&self, scope: &str) -> Arc<dyn Dcs> {
        Arc::new(self.0.scope(scope))
    }

    async fn crash(self: Box<Self>) {
        self.0.stop();
    }
}

/// The conformance harness on the emulator.
pub struct EmulatorHarness {
    pub emulator: Emulator,
    pub ttl: Duration,
}

#[async_trait::async_trait]
impl Harness for EmulatorHarness {
    async fn open_client(&self) -> Result<Box<dyn SuiteClient>, DcsError> {
        Ok(Box::new(Process(ConsulClient::connect(options(&self.emulator, self.ttl)).await?)))
    }

    async fn write_garbage(&self, scope: &str, key: &Key) -> Result<(), DcsError> {
        self.emulator.put_raw(&garbage_key(PREFIX, scope, key), b"{not json \x01");
        Ok(())
    }

    async fn compact(&self) -> Result<bool, DcsError> {
        // Consul keeps no watch history to compact: a blocking query only compares indexes.
        Ok(false)
    }
}

/// The conformance harness on a real agent (`LEASEHOLD_CONSUL_ADDR`, optional `LEASEHOLD_CONSUL_TOKEN`).
pub struct AgentHarness {
    pub options: ConsulOptions,
}

#[async_trait::async_trait]
impl Harness for AgentHarness {
    async fn open_client(&self) -> Result<Box<dyn SuiteClient>, DcsError> {
        Ok(Box::new(Process(ConsulClient::connect(self.options.clone()).await?)))
    }

    async fn write_garbage(&self, scope: &str, key: &Key) -> Result<(), DcsError> {
        let url = format!(
            "{}/v1/kv/{}",
            self.options.address.trim_end_matches('/'),
            garbage_key(&self.options.prefix, scope, key)
        );
        let mut request = reqwest::Client::new().put(url).body(b"{not json \x01".to_vec());
        if let Some(token) = &self.options.token {
            request = request.header("X-Consul-Token", token);
        }
        let response = request.send().await.map_err(|e| DcsError::unavailable_with("write garbage", e))?;
        if !response.status().is_success() {
            return Err(DcsError::fatal(format!("write garbage: {}", response.status())));
        }
        Ok(())
    }

    async fn compact(&self) -> Result<bool, DcsError> {
        Ok(false)
    }
}
