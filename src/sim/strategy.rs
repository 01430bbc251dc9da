//! proptest strategies that generate explicit fault schedules, so shrinking removes faults
//! and shortens them until a failure is minimal.

use std::time::Duration;

use proptest::prelude::*;

use super::fault::{Direction, Fault, TimedFault};

fn ms(lo: u64, hi: u64) -> impl Strategy<Value = Duration> {
    (lo..=hi).prop_map(Duration::from_millis)
}

/// One fault on a cluster of `nodes`, starting within `chaos`. Durations are drawn up to
/// `max_ms`; pauses and slow resources up to `max_pause_ms` (pass the envelope's bounds to stay
/// inside it, larger ones to leave it).
pub fn fault(nodes: usize, chaos: Duration, max_ms: u64, max_pause_ms: u64) -> impl Strategy<Value = TimedFault> {
    let n = nodes.max(1);
    let node = 0..n;
    let fault = prop_oneof![
        (
            node.clone(),
            prop_oneof![Just(Direction::Both), Just(Direction::ToStore), Just(Direction::FromStore)],
            ms(50, max_ms)
        )
            .prop_map(|(node, direction, duration)| Fault::StorePartition { node, direction, duration }),
        (node.clone(), 0..n, ms(50, max_ms)).prop_map(|(from, to, duration)| Fault::PeerPartition {
            from,
            to,
            duration
        }),
        (node.clone(), ms(1, max_pause_ms)).prop_map(|(node, duration)| Fault::Pause { node, duration }),
        (node.clone(), ms(50, max_ms)).prop_map(|(node, down_for)| Fault::Crash { node, down_for }),
        (node.clone(), ms(50, max_ms)).prop_map(|(node, down_for)| Fault::Shutdown { node, down_for }),
        (node.clone(), ms(1, max_ms)).prop_map(|(node, forward)| Fault::ClockStep { node, forward }),
        ms(10, max_ms / 2).prop_map(|unavailable_for| Fault::StoreLeaderChange { unavailable_for }),
        (node.clone(), ms(50, max_ms)).prop_map(|(node, duration)| Fault::WatchLoss { node, duration }),
        (node.clone(), ms(0, max_pause_ms / 4), ms(50, max_ms))
            .prop_map(|(node, extra, duration)| Fault::SlowResource { node, extra, duration }),
        (node, ms(50, 4 * max_ms)).prop_map(|(node, duration)| Fault::ReplicationStall { node, duration }),
    ];
    (0..chaos.as_millis() as u64, fault).prop_map(|(at, fault)| TimedFault { at: Duration::from_millis(at), fault })
}

/// A schedule of up to `max_faults` faults.
pub fn schedule(
    nodes: usize,
    chaos: Duration,
    max_faults: usize,
    max_ms: u64,
    max_pause_ms: u64,
) -> impl Strategy<Value = Vec<TimedFault>> {
    proptest::collection::vec(fault(nodes, chaos, max_ms, max_pause_ms), 0..=max_faults)
}
