//! The "healthy enough" rules (DESIGN.md rule 8, Patroni's `is_healthiest_node`) as one pure
//! function over facts gathered by the caller: [`evaluate`].
//!
//! The rules are checked in Patroni's order and the first that fails is reported, so a verdict
//! always names one reason an operator can act on.

use serde::{Deserialize, Serialize};

use crate::record::{FailoverRecord, MemberRecord, ResourceRole, SyncRecord};

/// One peer's answer to the health probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerReply {
    /// The peer answered with its status: the shape of its member record, read fresh.
    Reachable(MemberRecord),
    /// The peer did not answer in time; it is ignored, like Patroni does.
    Unreachable {
        /// Member name.
        name: String,
    },
}

impl PeerReply {
    /// The peer's name.
    pub fn name(&self) -> &str {
        match self {
            PeerReply::Reachable(s) => &s.name,
            PeerReply::Unreachable { name } => name,
        }
    }
}

/// State of the local watchdog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WatchdogHealth {
    /// No watchdog configured.
    #[default]
    Off,
    /// The device can be armed.
    Working,
    /// The device cannot be armed.
    Failed,
}

/// Everything the rules look at, gathered by the caller for one decision.
#[derive(Clone, Debug)]
pub struct ElectionFacts<'a> {
    /// This member's own status.
    pub me: &'a MemberRecord,
    /// The leader's last published position (`status` key), if any.
    pub leader_position: Option<u64>,
    /// The cluster's current timeline (from `history`), if known.
    pub cluster_timeline: Option<u64>,
    /// Lag limit in bytes.
    pub maximum_lag_on_failover: u64,
    /// Every other member that was probed.
    pub peers: &'a [PeerReply],
    /// The cluster is paused.
    pub paused: bool,
    /// Synchronous mode is on and this is the sync state. `Some(None)`: no sync key yet, so no
    /// write was ever acknowledged synchronously (a leader writes the key naming itself before
    /// it promotes), and any member may race, as in Patroni where an empty sync state restricts
    /// nobody.
    pub synchronous: Option<Option<&'a SyncRecord>>,
    /// A pending manual switchover or failover.
    pub failover: Option<&'a FailoverRecord>,
    /// The watchdog mode is `required`.
    pub watchdog_required: bool,
    /// The local watchdog's state.
    pub watchdog: WatchdogHealth,
    /// Within a ttl of releasing the key after a failed pre-promote.
    pub in_pre_promote_backoff: bool,
}

/// The rules' answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// May race for the leader key.
    Eligible,
    /// Must not race, for this reason.
    Ineligible(Reason),
}

impl Verdict {
    /// Whether the verdict is [`Verdict::Eligible`].
    pub fn is_eligible(&self) -> bool {
        matches!(self, Verdict::Eligible)
    }
}

/// Why a member may not race for the leader key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// Too far behind the last known leader position.
    Lagging {
        /// Bytes behind (`u64::MAX` when our own position is unknown).
        lag: u64,
        /// The limit.
        max: u64,
    },
    /// A reachable peer that could be promoted is further ahead.
    PeerAhead {
        /// The peer.
        peer: String,
        /// Its position.
        peer_position: u64,
        /// Ours.
        my_position: u64,
    },
    /// A reachable peer still runs as primary (the old leader is alive).
    OldPrimaryRunning {
        /// The peer.
        peer: String,
    },
    /// Tagged `nofailover` (or `failover_priority: 0`).
    NoFailoverTag,
    /// An equally advanced peer has a higher `failover_priority`.
    LowerPriority {
        /// The peer.
        peer: String,
        /// Its priority.
        peer_priority: u32,
        /// Ours.
        my_priority: u32,
    },
    /// Synchronous mode is on and this member is not in the sync set.
    NotInSyncSet,
    /// The watchdog is `required` and does not work.
    WatchdogNotWorking,
    /// The cluster is paused: no automatic failover.
    Paused,
    /// Backing off for a ttl after a failed pre-promote.
    PrePromoteBackoff,
    /// A manual failover names another, healthy candidate.
    ManualFailoverToOther {
        /// The named candidate.
        candidate: String,
    },
    /// Our timeline is behind the cluster's: another member was promoted after us.
    TimelineBehind {
        /// Ours.
        mine: u64,
        /// The cluster's.
        cluster: u64,
    },
}

impl std::fmt::Display for Reason {
    /// For operators: plain words, "unknown" for a position nobody reported.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Lagging { lag: u64::MAX, max } => {
                write!(f, "lagging: own position unknown (limit {max} bytes behind the leader)")
            }
            Reason::Lagging { lag, max } => write!(f, "lagging: {lag} bytes behind the leader (limit {max})"),
            Reason::PeerAhead { peer, peer_position, my_position } => {
                write!(f, "{peer} is further ahead ({peer_position} against our {my_position})")
            }
            Reason::OldPrimaryRunning { peer } => write!(f, "the old primary {peer} still runs"),
            Reason::NoFailoverTag => f.write_str("tagged nofailover (or failover_priority 0)"),
            Reason::LowerPriority { peer, peer_priority, my_priority } => write!(
                f,
                "{peer} is as far ahead and has a higher failover_priority ({peer_priority} against our {my_priority})"
            ),
            Reason::NotInSyncSet => f.write_str("synchronous mode: not in the sync key"),
            Reason::WatchdogNotWorking => f.write_str("the required watchdog does not work"),
            Reason::Paused => f.write_str("the cluster is paused"),
            Reason::PrePromoteBackoff => f.write_str("backing off for a ttl after a failed promote"),
            Reason::ManualFailoverToOther { candidate } => write!(f, "a manual failover names {candidate}"),
            Reason::TimelineBehind { mine, cluster } => {
                write!(f, "our timeline {mine} is behind the cluster's {cluster}")
            }
        }
    }
}

/// Decides whether this member may race for the leader key. Pure: same facts, same verdict.
pub fn evaluate(f: &ElectionFacts<'_>) -> Verdict {
    use Verdict::Ineligible as No;
    let me = f.me;
    if f.in_pre_promote_backoff {
        return No(Reason::PrePromoteBackoff);
    }
    let named_candidate = f.failover.and_then(|r| r.candidate.as_deref());
    let named_me = named_candidate == Some(me.name.as_str());
    // A switchover the former leader already carried out (it demoted and released the key)
    // must end with a new primary even if a pause arrived meanwhile: the operator asked for
    // the change before pausing, and the old primary is gone.
    let switchover_under_way =
        f.failover.is_some_and(|r| r.candidate.is_none() && r.leader.as_deref().is_some_and(|l| l != me.name));
    if f.paused && !named_me && !switchover_under_way {
        // In pause only an explicitly named candidate may take over (Patroni 3.10).
        return No(Reason::Paused);
    }
    if !me.tags.allows_failover() {
        return No(Reason::NoFailoverTag);
    }
    if f.watchdog_required && f.watchdog != WatchdogHealth::Working {
        return No(Reason::WatchdogNotWorking);
    }
    if let (Some(mine), Some(cluster)) = (me.timeline, f.cluster_timeline)
        && mine < cluster
        && me.role == ResourceRole::Primary
    {
        // An old primary whose timeline is behind must not grab the key back.
        return No(Reason::TimelineBehind { mine, cluster });
    }
    if let Some(candidate) = named_candidate {
        if named_me {
            // A manual failover to us bypasses lag and sync checks, as Patroni documents,
            // but never promotes next to a running primary.
            return match running_primary(f) {
                Some(peer) => No(Reason::OldPrimaryRunning { peer: peer.to_string() }),
                None => Verdict::Eligible,
            };
        }
        if candidate_is_healthy(f, candidate) {
            return No(Reason::ManualFailoverToOther { candidate: candidate.to_string() });
        }
    }
    if let Some(Some(sync)) = f.synchronous
        && !sync.contains(&me.name)
    {
        return No(Reason::NotInSyncSet);
    }
    if let Some(leader_pos) = f.leader_position {
        let lag = me.position.map_or(u64::MAX, |p| leader_pos.saturating_sub(p));
        if lag > f.maximum_lag_on_failover {
            return No(Reason::Lagging { lag, max: f.maximum_lag_on_failover });
        }
    }
    if let Some(peer) = running_primary(f) {
        return No(Reason::OldPrimaryRunning { peer: peer.to_string() });
    }
    let my_position = me.position.unwrap_or(0);
    let former_leader = f.failover.and_then(|r| r.leader.as_deref());
    for peer in reachable(f) {
        if !peer.may_be_promoted() || Some(peer.name.as_str()) == former_leader {
            continue;
        }
        if let Some(Some(sync)) = f.synchronous
            && !sync.contains(&peer.name)
        {
            continue;
        }
        let peer_position = peer.position.unwrap_or(0);
        if peer_position > my_position {
            return No(Reason::PeerAhead { peer: peer.name.clone(), peer_position, my_position });
        }
        if peer_position == my_position && peer.tags.failover_priority > me.tags.failover_priority {
            return No(Reason::LowerPriority {
                peer: peer.name.clone(),
                peer_priority: peer.tags.failover_priority,
                my_priority: me.tags.failover_priority,
            });
        }
    }
    Verdict::Eligible
}

fn reachable<'a>(f: &'a ElectionFacts<'_>) -> impl Iterator<Item = &'a MemberRecord> {
    f.peers.iter().filter_map(|p| match p {
        PeerReply::Reachable(s) if s.name != f.me.name => Some(s),
        _ => None,
    })
}

fn running_primary<'a>(f: &'a ElectionFacts<'_>) -> Option<&'a str> {
    reachable(f).find(|p| p.running && p.role == ResourceRole::Primary).map(|p| p.name.as_str())
}

/// A named candidate is healthy when it answered, may be promoted and is not lagging.
fn candidate_is_healthy(f: &ElectionFacts<'_>, candidate: &str) -> bool {
    reachable(f).any(|p| p.name == candidate && can_take_over(p, f.leader_position, f.maximum_lag_on_failover, None))
}

/// Whether `peer` can take over from a leader at `leader_position`: it runs, may be promoted,
/// and lags by at most `max_lag` (an unknown position of its own fails when the leader's is
/// known). With `sync_set` (synchronous mode) it must also be in the sync key; `Some(None)`,
/// no sync key, qualifies nobody. One rule for a switchover's candidate (checked by the
/// leader) and for the candidate of a manual failover (checked by the others).
pub fn can_take_over(
    peer: &MemberRecord,
    leader_position: Option<u64>,
    max_lag: u64,
    sync_set: Option<Option<&SyncRecord>>,
) -> bool {
    peer.running
        && peer.may_be_promoted()
        && sync_set.is_none_or(|s| s.is_some_and(|s| s.contains(&peer.name)))
        && match (leader_position, peer.position) {
            (Some(l), Some(pos)) => l.saturating_sub(pos) <= max_lag,
            (Some(_), None) => false,
            (None, _) => true,
        }
}

#[cfg(test)]
mod display_tests {
    use super::Reason;

    #[test]
    fn reasons_read_as_words_without_sentinels_or_debug_formats() {
        let unknown = Reason::Lagging { lag: u64::MAX, max: 1 << 20 }.to_string();
        assert!(unknown.contains("unknown") && !unknown.contains(&u64::MAX.to_string()), "{unknown}");
        let ahead = Reason::PeerAhead { peer: "n2".into(), peer_position: 200, my_position: 100 }.to_string();
        assert_eq!(ahead, "n2 is further ahead (200 against our 100)");
        for r in [Reason::NotInSyncSet, Reason::Paused, Reason::ManualFailoverToOther { candidate: "n3".into() }] {
            let s = r.to_string();
            assert!(!s.contains('{') && !s.contains('"') && !s.contains("Some("), "{s}");
        }
    }
}
