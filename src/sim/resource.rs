//! The simulated resource: a replicated log of `(epoch, position, write id)`, and the fenced
//! sink that stands for shared storage.

use crate::record::Epoch;

/// Bytes per client write: positions are byte offsets, as `maximum_lag_on_failover` expects.
pub const WRITE_BYTES: u64 = 8192;

/// One write in a log. Its position is `(index + 1) * WRITE_BYTES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Epoch of the primary that accepted it.
    pub epoch: Epoch,
    /// Unique id of the client write.
    pub write_id: u64,
}

/// What the resource is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Replicating from the named node (or waiting, when `None`).
    Replica(Option<usize>),
    /// Accepting writes under this epoch.
    Primary(Epoch),
}

/// A node's resource (think PostgreSQL): a log, a role, the standbys it waits for.
#[derive(Clone, Debug)]
pub struct SimResource {
    /// Whether it runs (false while its machine is crashed).
    pub running: bool,
    /// Role.
    pub role: Role,
    /// The log.
    pub log: Vec<Entry>,
    /// The newest epoch it has seen (promoted under, or replicated from); it refuses WAL from
    /// primaries of older epochs (fencing on replicas).
    pub max_epoch: Epoch,
    /// Synchronous standbys it waits for.
    pub sync_standbys: Vec<String>,
    /// Writes accepted but waiting for a synchronous standby: (log index, write id).
    pub pending_sync: Vec<(usize, u64)>,
}

impl SimResource {
    /// A running replica with an empty log.
    pub fn new() -> Self {
        SimResource {
            running: true,
            role: Role::Replica(None),
            log: Vec::new(),
            max_epoch: Epoch(0),
            sync_standbys: Vec::new(),
            pending_sync: Vec::new(),
        }
    }

    /// A fresh resource with room for `writes` log entries.
    pub fn with_capacity(writes: usize) -> Self {
        SimResource { log: Vec::with_capacity(writes), ..SimResource::new() }
    }

    /// Replication position in bytes.
    pub fn position(&self) -> u64 {
        self.log.len() as u64 * WRITE_BYTES
    }

    /// The epoch it accepts writes under, if primary and running.
    pub fn primary_epoch(&self) -> Option<Epoch> {
        match self.role {
            Role::Primary(e) if self.running => Some(e),
            _ => None,
        }
    }

    /// Copies `source`'s log: keeps the longest common prefix (a diverged tail is rewound, as
    /// pg_rewind does), then appends what is missing. Refuses (returns `false`) a source whose
    /// newest epoch is older than ours.
    pub fn replicate_from(&mut self, source: &SimResource) -> bool {
        if source.max_epoch < self.max_epoch {
            return false;
        }
        let common = common_prefix(&self.log, &source.log);
        if common < self.log.len() {
            self.log.truncate(common);
        }
        if source.log.len() > self.log.len() {
            self.log.extend_from_slice(&source.log[self.log.len()..]);
        }
        self.max_epoch = self.max_epoch.max(source.max_epoch);
        true
    }
}

impl Default for SimResource {
    fn default() -> Self {
        SimResource::new()
    }
}

/// Length of the common prefix of two logs. Once logs diverge they never agree again (write
/// ids are unique), so equality is monotone and a binary search finds the boundary.
pub fn common_prefix(a: &[Entry], b: &[Entry]) -> usize {
    let max = a.len().min(b.len());
    if max == 0 || a[max - 1] == b[max - 1] {
        return max;
    }
    let (mut lo, mut hi) = (0, max - 1); // a[..lo] agrees; a[hi] differs
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if a[mid - 1] == b[mid - 1] { lo = mid } else { hi = mid - 1 }
    }
    lo
}

/// Shared storage or a router in front of the primaries: it remembers the newest epoch it has
/// accepted and rejects older ones (unless fencing is switched off by a mutation).
#[derive(Clone, Debug, Default)]
pub struct FencedSink {
    /// Whether it enforces fencing.
    pub enforce: bool,
    /// Newest epoch accepted.
    pub max_epoch: Epoch,
    /// Writes accepted.
    pub accepted: u64,
    /// Writes rejected for an old epoch.
    pub rejected: u64,
}

impl FencedSink {
    /// Offers a write under `epoch`; `Ok(previous newest epoch)` if accepted.
    pub fn offer(&mut self, epoch: Epoch) -> Result<Epoch, Epoch> {
        if self.enforce && epoch < self.max_epoch {
            self.rejected += 1;
            return Err(self.max_epoch);
        }
        let before = self.max_epoch;
        self.max_epoch = self.max_epoch.max(epoch);
        self.accepted += 1;
        Ok(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(epoch: u64, id: u64) -> Entry {
        Entry { epoch: Epoch(epoch), write_id: id }
    }

    #[test]
    fn replication_rewinds_a_forked_tail_and_refuses_old_epochs() {
        let mut primary = SimResource::new();
        primary.log = vec![e(1, 1), e(1, 2), e(5, 7)];
        primary.max_epoch = Epoch(5);
        let mut replica = SimResource::new();
        replica.log = vec![e(1, 1), e(1, 2), e(1, 3), e(1, 4)];
        replica.max_epoch = Epoch(1);
        assert_eq!(common_prefix(&replica.log, &primary.log), 2);
        assert!(replica.replicate_from(&primary));
        assert_eq!(replica.log, primary.log);
        let mut old = SimResource::new();
        old.max_epoch = Epoch(1);
        old.log = vec![e(1, 1)];
        assert!(!replica.replicate_from(&old));
        assert_eq!(replica.log.len(), 3);
    }

    #[test]
    fn sink_rejects_older_epochs_only_when_enforcing() {
        let mut s = FencedSink { enforce: true, ..FencedSink::default() };
        assert!(s.offer(Epoch(3)).is_ok());
        assert!(s.offer(Epoch(3)).is_ok());
        assert_eq!(s.offer(Epoch(2)), Err(Epoch(3)));
        s.enforce = false;
        assert_eq!(s.offer(Epoch(2)), Ok(Epoch(3)));
    }
}
