//! Peers are asked about themselves over their REST API (`GET /status`), Patroni style.

use std::time::Duration;

use async_trait::async_trait;
use leasehold::driver::PeerProbe;
use leasehold::{Epoch, MemberRecord};

/// Probes peers with one short HTTP request each; silence or garbage reads as unreachable.
#[derive(Clone, Debug)]
pub struct HttpProbe {
    client: reqwest::Client,
    token: Option<String>,
}

impl HttpProbe {
    /// A probe whose requests give up after `timeout` (Patroni uses 2 s). `token` is sent to
    /// peers' `/failsafe` endpoint. Peers whose API is `https://` are verified against
    /// `tls.cacert`, and `tls.identity` is presented when they ask for a client certificate.
    pub fn new(timeout: Duration, token: Option<String>, tls: &crate::tls::ClientTls) -> anyhow::Result<Self> {
        Ok(HttpProbe { client: tls.http_client(timeout)?, token })
    }
}

#[async_trait]
impl PeerProbe for HttpProbe {
    async fn probe(&self, peer: &MemberRecord) -> Option<MemberRecord> {
        let url = format!("{}/status", peer.api_url.as_deref()?.trim_end_matches('/'));
        let reply = self.client.get(&url).send().await.ok()?;
        let status: MemberRecord = reply.json().await.ok()?;
        // A different member answering at that address is not the peer.
        (status.name == peer.name).then_some(status)
    }

    async fn failsafe_confirm(&self, peer: &MemberRecord, leader: &str, epoch: Epoch) -> bool {
        let Some(api) = peer.api_url.as_deref() else { return false };
        let mut req = self
            .client
            .post(format!("{}/failsafe", api.trim_end_matches('/')))
            .json(&serde_json::json!({"leader": leader, "epoch": epoch.0}));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req.send().await.is_ok_and(|r| r.status().is_success())
    }
}
