//! Leader election on ZooKeeper with the election handle: campaign, act under the epoch until the
//! term is lost, resign.
//!
//! `cargo run -p leasehold-zookeeper --example election -- 127.0.0.1:2181 member-1`

use std::sync::Arc;
use std::time::Duration;

use leasehold::{Election, Timing};
use leasehold_zookeeper::{ZkClient, ZkOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let connect = args.next().unwrap_or_else(|| "127.0.0.1:2181".into());
    let member = args.next().unwrap_or_else(|| format!("member-{}", std::process::id()));

    // --- the election part ---
    // One Timing for the client and the node: the ttl has one source.
    let timing = Timing {
        ttl: Duration::from_secs(10),
        loop_wait: Duration::from_secs(2),
        retry_timeout: Duration::from_secs(3),
        ..Timing::default()
    };
    let store = ZkClient::connect(ZkOptions { connect, ..ZkOptions::default() }, &timing).await?;
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
