//! "From 1 to 1001 clusters" on ZooKeeper: many election scopes served by three processes on
//! one real ZooKeeper 3.8 (standalone).
//!
//! `cargo bench -p leasehold-zookeeper --bench scale [-- --scopes 1001 --ttl 30 --loop-wait 10 --retry-timeout 10 --idle 60]`
//!
//! The ZooKeeper counterpart of `backends/etcd/benches/scale.rs`: starts ZooKeeper on loopback
//! (maxSessionTimeout raised so the session timeout is the ttl), then three member processes
//! (this binary again, `member` mode), each running one HA driver per scope with a stub
//! resource, all on one `ZkClient` (one session). Once every scope has a leader it prints,
//! over the idle window: the packets the server received per second (`zk_packets_received`
//! from `mntr`) and each process's RSS and CPU. Then it kills with SIGKILL the process that
//! leads the most scopes and prints how long until every scope it led has a new leader
//! (median and maximum). Not a CI test: a figure for the notes. Every process it starts is
//! stopped by pid. The store-independent half is `leasehold_test_servers::scale`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use leasehold_test_servers::scale::{self, ScaleStore, Settings};
use leasehold_zookeeper::testing::{ZkConfig, ZkServer, four_letter};
use leasehold_zookeeper::{ZkClient, ZkDcs, ZkOptions};

/// The server and the coordinator's own client (its reads happen outside the idle window).
struct Zk {
    server: ZkServer,
    client: ZkClient,
}

#[async_trait]
impl ScaleStore for Zk {
    type Client = ZkClient;
    type Scope = ZkDcs;

    async fn connect(connect: &str, s: &Settings) -> ZkClient {
        let options = ZkOptions {
            connect: connect.to_string(),
            prefix: "/leasehold".into(),
            request_timeout: Duration::from_secs(5),
            ..ZkOptions::default()
        };
        ZkClient::connect(options, &s.timing()).await.expect("connects")
    }

    fn scope(client: &ZkClient, name: &str) -> ZkDcs {
        client.scope(name)
    }

    async fn start(s: &Settings) -> Option<Zk> {
        let config = ZkConfig { max_session_timeout: Some(Duration::from_secs(2 * s.ttl)), ..ZkConfig::new(1) };
        let server = ZkServer::start_with(config).await.expect("ZooKeeper starts");
        let client = Zk::connect(&server.connect_string(), s).await;
        Some(Zk { server, client })
    }

    fn describe(&self) -> String {
        format!(
            "ZooKeeper at {} (session timeout {:?} for ttl {:?})",
            self.server.connect_string(),
            self.client.lease_ttl(),
            self.client.configured_ttl()
        )
    }

    fn endpoint(&self, _index: usize) -> String {
        self.server.connect_string()
    }

    fn observer(&self) -> &ZkClient {
        &self.client
    }

    /// `zk_packets_received` from `mntr` (what `zk_real.rs` counts; includes the pings).
    async fn requests(&self) -> BTreeMap<String, f64> {
        let mntr = four_letter(self.server.client_port(0), "mntr").await.expect("mntr");
        let received = mntr
            .lines()
            .find_map(|l| l.strip_prefix("zk_packets_received"))
            .and_then(|v| v.trim().parse().ok())
            .expect("zk_packets_received in mntr");
        BTreeMap::from([("packets received (mntr)".to_string(), received)])
    }
}

fn main() {
    scale::main::<Zk>();
}
