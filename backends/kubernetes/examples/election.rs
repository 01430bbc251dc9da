//! Leader election on Kubernetes (a Lease) with the election handle: campaign, act under the epoch until the
//! term is lost, resign.
//!
//! `cargo run -p leasehold-kube --example election -- default member-1   # uses the kubeconfig or in-cluster config`

use std::sync::Arc;
use std::time::Duration;

use leasehold::{Election, Timing};
use leasehold_kube::{KubeClient, KubeOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let namespace = args.next().unwrap_or_else(|| "default".into());
    let member = args.next().unwrap_or_else(|| format!("member-{}", std::process::id()));

    // --- the election part ---
    // One Timing for the client and the node: the ttl has one source.
    let timing = Timing {
        ttl: Duration::from_secs(10),
        loop_wait: Duration::from_secs(2),
        retry_timeout: Duration::from_secs(3),
        ..Timing::default()
    };
    let store =
        KubeClient::connect(KubeOptions { namespace: Some(namespace), ..KubeOptions::default() }, &timing).await?;
    let election = Election::new(Arc::new(store.scope("my-service")), member, timing)?;

    let leadership = election.campaign().await?;
    println!("leading under epoch {}", leadership.epoch());
    tokio::select! {
        () = leadership.lost() => println!("lost leadership"),
        () = do_leader_work(leadership.epoch()) => election.resign().await,
    }
    // --- end of the election part ---
    store.shutdown().await?;
    Ok(())
}

/// Whatever only the leader may do; pass the epoch to what you write to, so it can fence.
async fn do_leader_work(epoch: leasehold::Epoch) {
    println!("working as leader under epoch {epoch}");
    tokio::time::sleep(Duration::from_secs(5)).await;
}
