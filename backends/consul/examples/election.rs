//! Leader election on Consul with the election handle: campaign, act under the epoch until the
//! term is lost, resign.
//!
//! `cargo run -p leasehold-consul --example election -- http://127.0.0.1:8500 member-1`

use std::sync::Arc;
use std::time::Duration;

use leasehold::{Election, Timing};
use leasehold_consul::{ConsulClient, ConsulOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "http://127.0.0.1:8500".into());
    let member = args.next().unwrap_or_else(|| format!("member-{}", std::process::id()));

    // --- the election part ---
    // One Timing for the client and the node: the ttl has one source. Consul's session TTL
    // is ttl / 2 and has a 10 s floor, so ttl is at least 20 s.
    let timing = Timing {
        ttl: Duration::from_secs(20),
        loop_wait: Duration::from_secs(4),
        retry_timeout: Duration::from_secs(5),
        ..Timing::default()
    };
    let store = ConsulClient::connect(ConsulOptions { address, ..ConsulOptions::default() }, &timing).await?;
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
