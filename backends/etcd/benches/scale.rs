//! "From 1 to 1001 clusters": many election scopes served by three processes on one real etcd.
//!
//! `cargo bench -p leasehold-etcd --bench scale [-- --scopes 1001 --ttl 30 --loop-wait 10 --retry-timeout 10 --idle 60]`
//!
//! Starts etcd on loopback, then three member processes (this binary again, `member` mode),
//! each running one HA driver per scope with a stub resource, all on one store client (one
//! lease). Once every scope has a leader it prints, over the idle window: etcd's requests per
//! second by gRPC method (from etcd's own `/metrics`), and each process's RSS and CPU. Then it
//! kills with SIGKILL the process that leads the most scopes and prints how long until every
//! scope it led has a new leader (median and maximum over those scopes). Not a CI test: a
//! figure for the README and the notes. Every process it starts is stopped by pid. The
//! store-independent half is `leasehold_test_servers::scale`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use leasehold_etcd::testing::EtcdServer;
use leasehold_etcd::{EtcdClient, EtcdDcs, EtcdOptions};
use leasehold_test_servers::scale::{self, ScaleStore, Settings};

/// The server and the coordinator's own client.
struct Etcd {
    server: EtcdServer,
    client: EtcdClient,
}

fn options(endpoint: &str) -> EtcdOptions {
    EtcdOptions { endpoints: vec![endpoint.to_string()], ..EtcdOptions::default() }
}

#[async_trait]
impl ScaleStore for Etcd {
    type Client = EtcdClient;
    type Scope = EtcdDcs;

    async fn connect(endpoint: &str, s: &Settings) -> EtcdClient {
        EtcdClient::connect(options(endpoint), &s.timing()).await.expect("connects")
    }

    fn scope(client: &EtcdClient, name: &str) -> EtcdDcs {
        client.scope(name)
    }

    async fn start(s: &Settings) -> Option<Etcd> {
        let server = EtcdServer::start().await.expect("etcd starts");
        let client = Etcd::connect(&server.endpoint(), s).await;
        Some(Etcd { server, client })
    }

    fn describe(&self) -> String {
        format!("etcd at {}", self.server.endpoint())
    }

    fn endpoint(&self, _index: usize) -> String {
        self.server.endpoint()
    }

    fn observer(&self) -> &EtcdClient {
        &self.client
    }

    /// gRPC messages etcd received, by method.
    async fn requests(&self) -> BTreeMap<String, f64> {
        let metrics = self.server.metrics().await.expect("metrics");
        let mut out = BTreeMap::new();
        for line in metrics.lines().filter(|l| l.starts_with("grpc_server_msg_received_total{")) {
            let method = line.split("grpc_method=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?");
            let n: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            *out.entry(method.to_string()).or_default() += n;
        }
        out
    }

    fn server_pids(&self) -> Vec<(String, u32)> {
        self.server.pid().map(|p| ("etcd".to_string(), p)).into_iter().collect()
    }
}

fn main() {
    scale::main::<Etcd>();
}
