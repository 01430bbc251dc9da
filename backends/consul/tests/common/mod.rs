//! Shared test plumbing: an emulator, client options, and the conformance harness.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use leasehold::testkit::conformance::{Client as SuiteClient, Harness};
use leasehold::testkit::election::timing_for;
use leasehold::{Dcs, DcsError, Key, Timing};
use leasehold_consul::testing::{ConsulAgent, ConsulAgentConfig};
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

/// The timing most tests use: ttl 2 s (session TTL 1 s), the rest from [`timing_for`].
pub fn timing() -> Timing {
    timing_for(Duration::from_secs(2))
}

pub fn options(emulator: &Emulator) -> ConsulOptions {
    ConsulOptions {
        address: emulator.url(),
        token: Some(TOKEN.into()),
        // The emulator's floor as configured above.
        session_ttl_min: Duration::from_millis(100),
        request_timeout: Duration::from_secs(5),
        ..ConsulOptions::default()
    }
}

/// The session-TTL floor the real agent is started with, so tests can use ttl 2 s.
pub const AGENT_SESSION_TTL_MIN: Duration = Duration::from_secs(1);

/// What the tests run against: a real Consul agent when one is found (see
/// `leasehold_consul::testing`), else the in-repo emulator, saying so in one line.
#[allow(clippy::large_enum_variant)] // one per test; boxing would only add derefs
pub enum Target {
    /// A real `consul agent -dev` with ACLs on (master token `TOKEN`) and `session_ttl_min` 1 s.
    Real(ConsulAgent),
    /// The emulator, requiring `TOKEN`.
    Emulator(Emulator),
}

impl Target {
    /// A real agent if a binary is found, else the emulator (sessions invalidated at twice
    /// their TTL, as a server does); prints which.
    /// `LEASEHOLD_TEST_EMULATORS=1` forces the emulator (to check the fallback path).
    pub async fn start() -> Target {
        let forced = std::env::var_os("LEASEHOLD_TEST_EMULATORS").is_some_and(|v| v == "1");
        let binary = if forced { None } else { ConsulAgent::binary().expect("the shared consul is usable") };
        match binary {
            Some(_) => {
                let config = ConsulAgentConfig {
                    session_ttl_min: Some(AGENT_SESSION_TTL_MIN),
                    acl_master_token: Some(TOKEN.into()),
                    tls: None,
                };
                let agent = ConsulAgent::start(config).await.expect("consul starts");
                announce(format!(
                    "consul tests: real agent {} ({}) at {}",
                    agent.version(),
                    agent.binary_found().path.display(),
                    agent.address()
                ));
                Target::Real(agent)
            }
            None => {
                announce(
                    "consul tests: NO consul found (LEASEHOLD_CONSUL_BIN, PATH, ../shared/servers): running against the in-repo EMULATOR".into(),
                );
                Target::Emulator(emulator(Expiry::AtTwiceTtl))
            }
        }
    }

    pub fn is_real(&self) -> bool {
        matches!(self, Target::Real(_))
    }

    /// Client options with the master token.
    pub fn options(&self) -> ConsulOptions {
        match self {
            Target::Real(agent) => ConsulOptions { session_ttl_min: AGENT_SESSION_TTL_MIN, ..agent.options() },
            Target::Emulator(e) => options(e),
        }
    }

    pub fn address(&self) -> String {
        match self {
            Target::Real(agent) => agent.address(),
            Target::Emulator(e) => e.url(),
        }
    }

    /// A raw HTTP call with the master token: (status, body).
    pub async fn http(&self, method: reqwest::Method, path: &str, body: Option<String>) -> (u16, String) {
        let mut request = reqwest::Client::new().request(method, format!("{}{path}", self.address()));
        request = request.header("X-Consul-Token", TOKEN);
        if let Some(b) = body {
            request = request.body(b);
        }
        let response = request.send().await.expect("the agent answers");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Destroys a session through the API (what a failing health check or an operator does).
    pub async fn invalidate_session(&self, id: &str) -> bool {
        match self {
            Target::Emulator(e) => e.invalidate_session(id),
            Target::Real(_) => {
                let (status, body) = self.http(reqwest::Method::PUT, &format!("/v1/session/destroy/{id}"), None).await;
                status == 200 && body.trim() == "true"
            }
        }
    }

    /// Whether session `id` still exists.
    pub async fn session_exists(&self, id: &str) -> bool {
        let (status, body) = self.http(reqwest::Method::GET, &format!("/v1/session/info/{id}"), None).await;
        status == 200 && body.contains(id)
    }

    /// `GET /v1/session/info/:id` as JSON (the first element).
    pub async fn session_info(&self, id: &str) -> serde_json::Value {
        let (_, body) = self.http(reqwest::Method::GET, &format!("/v1/session/info/{id}"), None).await;
        let list: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        list[0].clone()
    }
}

/// The conformance harness on a [`Target`].
pub struct TargetHarness {
    pub target: Target,
    pub ttl: Duration,
}

#[async_trait::async_trait]
impl Harness for TargetHarness {
    async fn open_client(&self) -> Result<Box<dyn SuiteClient>, DcsError> {
        Ok(Box::new(Process(ConsulClient::connect(self.target.options(), &timing_for(self.ttl)).await?)))
    }

    async fn write_garbage(&self, scope: &str, key: &Key) -> Result<(), DcsError> {
        let path = format!("/v1/kv/{}", garbage_key(PREFIX, scope, key));
        let (status, body) = self.target.http(reqwest::Method::PUT, &path, Some("{not json \u{1}".into())).await;
        if status != 200 {
            return Err(DcsError::fatal(format!("write garbage: {status} {body}")));
        }
        Ok(())
    }

    async fn compact(&self) -> Result<bool, DcsError> {
        // Consul keeps no watch history to compact: a blocking query only compares indexes.
        Ok(false)
    }

    async fn delete_leader_key(&self, scope: &str) -> Result<bool, DcsError> {
        let path = format!("/v1/kv/{}", garbage_key(PREFIX, scope, &Key::Leader));
        let (status, body) = self.target.http(reqwest::Method::DELETE, &path, None).await;
        if status != 200 {
            return Err(DcsError::fatal(format!("delete the leader key: {status} {body}")));
        }
        Ok(true)
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
        Ok(Box::new(Process(ConsulClient::connect(options(&self.emulator), &timing_for(self.ttl)).await?)))
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

/// Prints `line` once per test binary (a repeated line is dropped), straight to stderr: the
/// test harness captures `println!`, and what the tests ran against must show in CI's output.
pub fn announce(line: String) {
    use std::io::Write;
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !said.contains(&line) {
        let _ = writeln!(std::io::stderr(), "{line}");
        said.push(line);
    }
}
