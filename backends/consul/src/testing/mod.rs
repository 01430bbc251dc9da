//! A real Consul agent for tests and benchmarks (feature `testing`).
//!
//! [`ConsulAgent`] starts `consul agent -dev` (one in-memory server that is also the client
//! agent) on free `127.0.0.1` ports below 32768 in a temporary directory, optionally with
//! ACLs (default deny, a master token) and a lowered `session_ttl_min`, and waits until it
//! has a leader. Dropping it kills the process by pid and waits for it, also when a test
//! panics.
//!
//! The binary is `$LEASEHOLD_CONSUL_BIN`, else `consul` on `PATH`, else
//! `<workspace>/../shared/servers/consul.xz`, checked against that folder's `SHA256SUMS`
//! and decompressed once into the target directory. [`ConsulAgent::binary`] says whether
//! one is there, so a test can fall back to the emulator (and say so) when it is not.
//!
//! Finding the binary and guarding the process come from `leasehold-test-servers`, shared
//! with `leasehold-kube`'s harness.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use leasehold_consul::testing::{ConsulAgent, ConsulAgentConfig};
//! use leasehold_consul::ConsulClient;
//!
//! let agent = ConsulAgent::start(ConsulAgentConfig::default()).await?;
//! let client = ConsulClient::connect(agent.options(), &agent.timing()).await.expect("connects");
//! # drop(client); Ok(()) }
//! ```

use std::io;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use leasehold::Timing;
use tempfile::TempDir;

pub use leasehold_test_servers::{Found, Guarded, ServerBinary, find as find_binary, free_port, shared_servers_dir};

use crate::ConsulOptions;

/// How long to wait for the agent to elect itself.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Attempts at starting (a picked port may be taken meanwhile).
const START_ATTEMPTS: u32 = 3;

/// How to start the agent.
#[derive(Clone, Debug, Default)]
pub struct ConsulAgentConfig {
    /// The servers' `session_ttl_min` (Consul's default: 10 s). Tests lower it to run with
    /// short ttls; [`ConsulAgent::options`] passes it on.
    pub session_ttl_min: Option<Duration>,
    /// Turn ACLs on: default policy deny, this bootstrap (`master`) token.
    pub acl_master_token: Option<String>,
    /// Also serve HTTPS with this PKI's server certificate, requiring a client certificate
    /// signed by its CA (`verify_incoming_https`); [`ConsulAgent::https_options`] connects.
    pub tls: Option<leasehold_test_servers::Pki>,
}

/// A running `consul agent -dev`; dropping it kills it.
pub struct ConsulAgent {
    dir: TempDir,
    binary: ServerBinary,
    http_port: u16,
    https_port: Option<u16>,
    args: Vec<String>,
    config: ConsulAgentConfig,
    agent: Guarded,
    version: String,
}

impl std::fmt::Debug for ConsulAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulAgent").field("address", &self.address()).field("version", &self.version).finish()
    }
}

/// Go's duration syntax for whole milliseconds (`1500ms`).
fn go_millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl ConsulAgent {
    /// The consul binary, if one can be found (see the module docs); an error when the
    /// shared copy is present but does not match its checksum.
    pub fn binary() -> io::Result<Option<ServerBinary>> {
        leasehold_test_servers::find("consul", "LEASEHOLD_CONSUL_BIN")
    }

    /// Starts the agent and waits until it has a leader. Fails when no binary is found.
    pub async fn start(config: ConsulAgentConfig) -> io::Result<ConsulAgent> {
        let binary = ConsulAgent::binary()?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no consul: set LEASEHOLD_CONSUL_BIN, put it on PATH, or provide {}/consul.xz",
                    shared_servers_dir().display()
                ),
            )
        })?;
        let version = Command::new(&binary.path)
            .arg("version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_string())?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match ConsulAgent::start_once(&binary, &config, &version).await {
                Ok(agent) => return Ok(agent),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("consul did not start")))
    }

    async fn start_once(binary: &ServerBinary, config: &ConsulAgentConfig, version: &str) -> io::Result<ConsulAgent> {
        let dir = tempfile::Builder::new().prefix("leasehold-consul-").tempdir()?;
        let http_port = free_port()?;
        let mut args: Vec<String> = vec!["agent".into(), "-dev".into()];
        for (flag, port) in [
            ("-http-port", http_port),
            ("-dns-port", free_port()?),
            ("-server-port", free_port()?),
            ("-serf-lan-port", free_port()?),
            ("-serf-wan-port", free_port()?),
            ("-grpc-port", free_port()?),
        ] {
            args.push(flag.into());
            args.push(port.to_string());
        }
        args.extend(["-client", "127.0.0.1", "-bind", "127.0.0.1", "-node", "leasehold-test"].map(String::from));
        args.push(format!("-data-dir={}", dir.path().join("data").display()));
        let mut hcl = Vec::new();
        if let Some(min) = config.session_ttl_min {
            hcl.push(format!("session_ttl_min = \"{}\"", go_millis(min)));
        }
        let https_port = match &config.tls {
            Some(pki) => {
                let port = free_port()?;
                hcl.push(format!("ports {{ https = {port} }}"));
                hcl.push(format!(
                    "cert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\nverify_incoming_https = true",
                    pki.server_cert.display(),
                    pki.server_key.display(),
                    pki.ca.display()
                ));
                Some(port)
            }
            None => None,
        };
        if let Some(token) = &config.acl_master_token {
            hcl.push(format!(
                "acl {{ enabled = true, default_policy = \"deny\", down_policy = \"extend-cache\", tokens {{ master = \"{token}\", agent = \"{token}\" }} }}"
            ));
        }
        for line in hcl {
            args.push("-hcl".into());
            args.push(line);
        }
        let mut agent = ConsulAgent {
            agent: Guarded::spawn(Self::command(&binary.path, &args), &dir.path().join("consul.log"))?,
            dir,
            binary: binary.clone(),
            http_port,
            https_port,
            args,
            config: config.clone(),
            version: version.to_string(),
        };
        agent.wait_ready().await?;
        Ok(agent)
    }

    fn command(path: &Path, args: &[String]) -> Command {
        let mut command = Command::new(path);
        command.args(args);
        command
    }

    /// Polls `/v1/status/leader` until it names a leader.
    async fn wait_ready(&mut self) -> io::Result<()> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().map_err(io::Error::other)?;
        let url = format!("{}/v1/status/leader", self.address());
        let mut last = String::new();
        for _ in 0..READY_WITHIN.as_millis() / 100 {
            if !self.agent.is_running() {
                return Err(io::Error::other(format!("consul exited while starting:\n{}", self.agent.log_tail(20))));
            }
            match http.get(&url).send().await {
                Ok(r) => match r.text().await {
                    Ok(body) if body.trim().trim_matches('"').contains(':') => return Ok(()),
                    Ok(body) => last = body,
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(io::Error::other(format!(
            "consul had no leader within {READY_WITHIN:?} ({last}):\n{}",
            self.agent.log_tail(20)
        )))
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `consul version`'s first line, such as `Consul 1.6.2-dev (1200f25e)`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where the binary came from.
    pub fn binary_found(&self) -> &ServerBinary {
        &self.binary
    }

    /// The ACL bootstrap token, when ACLs are on.
    pub fn master_token(&self) -> Option<&str> {
        self.config.acl_master_token.as_deref()
    }

    /// Client options for this agent: its address, the master token, `session_ttl_min` as
    /// the agent was started with. Connect with [`timing`](Self::timing).
    pub fn options(&self) -> ConsulOptions {
        ConsulOptions {
            address: self.address(),
            token: self.config.acl_master_token.clone(),
            session_ttl_min: self.session_ttl_min(),
            request_timeout: Duration::from_secs(5),
            ..ConsulOptions::default()
        }
    }

    /// Client options over HTTPS with the PKI's CA and client certificate, when the agent
    /// was started with [`ConsulAgentConfig::tls`].
    pub fn https_options(&self) -> Option<ConsulOptions> {
        let (port, pki) = (self.https_port?, self.config.tls.as_ref()?);
        Some(ConsulOptions {
            address: format!("https://127.0.0.1:{port}"),
            tls: Some(crate::ConsulTls {
                ca_cert: Some(pki.ca.clone()),
                client_cert: Some(pki.client_cert.clone()),
                client_key: Some(pki.client_key.clone()),
            }),
            ..self.options()
        })
    }

    /// A timing for clients and nodes on this agent: ttl 2 x its `session_ttl_min` (the
    /// shortest it accepts), loop_wait ttl / 5, retry_timeout 3 ttl / 10, safety_margin ttl / 5.
    pub fn timing(&self) -> Timing {
        let ttl = self.session_ttl_min() * 2;
        Timing { ttl, loop_wait: ttl / 5, retry_timeout: ttl * 3 / 10, safety_margin: ttl / 5, ..Timing::default() }
    }

    fn session_ttl_min(&self) -> Duration {
        self.config.session_ttl_min.unwrap_or(crate::CONSUL_SESSION_TTL_MIN)
    }

    /// The temporary directory (data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.agent.pid()
    }

    /// Kills the agent (SIGKILL). A `-dev` agent keeps its data in memory: a restart starts empty.
    pub fn kill(&mut self) {
        self.agent.kill();
    }

    /// Starts the agent again on the same ports and waits for its leader.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.agent.kill();
        self.agent = Guarded::spawn(Self::command(&self.binary.path, &self.args), &self.dir.path().join("consul.log"))?;
        self.wait_ready().await
    }

    /// The last lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.agent.log_tail(lines)
    }
}
