//! "From 1 to 1001 clusters" on Consul: many election scopes served by three processes on one
//! real Consul agent (`-dev`, from `LEASEHOLD_CONSUL_BIN`, `PATH` or `../shared/servers`).
//!
//! `cargo bench -p leasehold-consul --bench scale [-- --scopes 1001 --ttl 30 --loop-wait 10 --retry-timeout 10 --idle 60]`
//!
//! The Consul counterpart of `backends/etcd/benches/scale.rs`: starts the agent on loopback
//! (stock `session_ttl_min` 10 s), then three member processes (this binary again, `member`
//! mode), each running one HA driver per scope with a stub resource, all on one
//! `ConsulClient` (one session), each through its own counting proxy. Once every scope has a
//! leader it prints, over the idle window: the HTTP requests per second each process sent
//! (by endpoint, from `CutProxy::http_requests`) and each process's RSS and CPU. Then it kills
//! with SIGKILL the process that leads the most scopes and prints how long until every scope
//! it led has a new leader (median and maximum). Not a CI test: a figure for the notes.
//! Without a consul binary it says so and measures nothing. Every process it starts is
//! stopped by pid. The store-independent half is `leasehold_test_servers::scale`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use leasehold_consul::testing::{ConsulAgent, ConsulAgentConfig};
use leasehold_consul::{ConsulClient, ConsulDcs, ConsulOptions};
use leasehold_test_servers::CutProxy;
use leasehold_test_servers::scale::{self, MEMBERS, ScaleStore, Settings};

/// The agent, the coordinator's own client straight to it (not counted) and one counting
/// proxy per member process.
struct Consul {
    agent: ConsulAgent,
    client: ConsulClient,
    proxies: Vec<(String, CutProxy)>,
}

#[async_trait]
impl ScaleStore for Consul {
    type Client = ConsulClient;
    type Scope = ConsulDcs;

    async fn connect(address: &str, s: &Settings) -> ConsulClient {
        let options = ConsulOptions {
            address: address.to_string(),
            request_timeout: Duration::from_secs(5),
            ..ConsulOptions::default()
        };
        ConsulClient::connect(options, &s.timing()).await.expect("connects")
    }

    fn scope(client: &ConsulClient, name: &str) -> ConsulDcs {
        client.scope(name)
    }

    async fn start(s: &Settings) -> Option<Consul> {
        if ConsulAgent::binary().expect("usable").is_none() {
            println!("no consul found (LEASEHOLD_CONSUL_BIN, PATH, ../shared/servers): nothing to measure");
            return None;
        }
        let agent = ConsulAgent::start(ConsulAgentConfig::default()).await.expect("consul starts");
        let port = agent.address().rsplit(':').next().and_then(|p| p.parse().ok()).expect("agent port");
        let proxies = MEMBERS.iter().map(|m| (m.to_string(), CutProxy::start(port).expect("proxy"))).collect();
        let client = ConsulClient::connect(agent.options(), &s.timing()).await.expect("connects");
        Some(Consul { agent, client, proxies })
    }

    fn describe(&self) -> String {
        format!(
            "{} at {} (session TTL {:?} for ttl {:?})",
            self.agent.version(),
            self.agent.address(),
            self.client.lease_ttl(),
            self.client.configured_ttl()
        )
    }

    fn endpoint(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.proxies[index].1.port())
    }

    fn observer(&self) -> &ConsulClient {
        &self.client
    }

    /// By member and request kind (`PUT /v1/kv/service/*/leader`): ids and scope names cut off.
    async fn requests(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (member, proxy) in &self.proxies {
            for (line, n) in proxy.http_requests() {
                *out.entry(format!("{member} {}", kind(&line))).or_default() += n as f64;
            }
        }
        out
    }

    fn server_pids(&self) -> Vec<(String, u32)> {
        self.agent.pid().map(|p| ("consul".to_string(), p)).into_iter().collect()
    }

    async fn stop(self) {
        let _ = self.client.shutdown().await;
    }
}

/// `PUT /v1/kv/service/c0042/members/m1` -> `PUT /v1/kv/service/*/members`;
/// `PUT /v1/session/renew/<id>` -> `PUT /v1/session/renew` (the proxy already cut the query).
fn kind(line: &str) -> String {
    let parts: Vec<&str> = line.split('/').collect();
    match parts.get(2) {
        Some(&"kv") if parts.len() > 5 => format!("{}/*/{}", parts[..4].join("/"), parts[5]),
        _ => parts.iter().take(4).copied().collect::<Vec<_>>().join("/"),
    }
}

fn main() {
    scale::main::<Consul>();
}
