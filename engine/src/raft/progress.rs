//! The leader's view of one follower's log (Raft paper Figure 2's nextIndex and matchIndex) and
//! the flow control around it: probe until the follower's log matches, then replicate with a
//! bounded window of appends in flight (etcd raft's Progress and Inflights, written anew).

use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches: one append at a time.
    Probe,
    /// The logs match up to `matched`: stream appends, at most the inflight window at once.
    Replicate,
    /// The follower needs entries that were compacted: a snapshot is on its way, nothing else
    /// is sent until it is acknowledged or reported done or failed.
    Snapshot,
}

/// Last indexes of the appends in flight to one follower, oldest first.
#[derive(Clone, Debug)]
pub struct Inflights {
    capacity: usize,
    last_indexes: VecDeque<u64>,
}

impl Inflights {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            last_indexes: VecDeque::new(),
        }
    }

    pub fn full(&self) -> bool {
        self.last_indexes.len() >= self.capacity
    }

    pub fn add(&mut self, last_index: u64) {
        debug_assert!(!self.full(), "inflight window overflow");
        debug_assert!(
            self.last_indexes.back().is_none_or(|&b| b < last_index),
            "inflight appends must carry increasing indexes"
        );
        self.last_indexes.push_back(last_index);
    }

    /// Frees every append whose last index is `<= index`.
    pub fn free_le(&mut self, index: u64) {
        while self.last_indexes.front().is_some_and(|&f| f <= index) {
            self.last_indexes.pop_front();
        }
    }

    pub fn reset(&mut self) {
        self.last_indexes.clear();
    }
}

#[derive(Clone, Debug)]
pub struct Progress {
    /// The highest index known to be replicated (durably) on the follower.
    pub matched: u64,
    /// The next index to send.
    pub next: u64,
    pub state: ProgressState,
    /// In probe state: an append is outstanding, wait for its answer or a heartbeat response.
    pub probe_sent: bool,
    pub inflights: Inflights,
    /// In snapshot state: the index of the snapshot sent.
    pub pending_snapshot: u64,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// The latest heartbeat round this follower acknowledged (ReadIndex and lease).
    pub read_round_acked: u64,
    /// Heartbeat answers in a row that found the follower lagging with `matched` unchanged: in
    /// replicate state that means appends were lost, and the leader falls back to probing.
    pub stalled_heartbeats: u32,
    matched_at_last_heartbeat: u64,
}

impl Progress {
    pub fn new(next: u64, max_inflight: usize) -> Self {
        Self {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(max_inflight),
            pending_snapshot: 0,
            recent_active: false,
            read_round_acked: 0,
            stalled_heartbeats: 0,
            matched_at_last_heartbeat: 0,
        }
    }

    pub fn become_probe(&mut self) {
        // Coming from a snapshot, probe right after it (its acknowledgement may be lost).
        self.next = (self.matched + 1).max(self.pending_snapshot + 1);
        self.pending_snapshot = 0;
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub fn become_snapshot(&mut self, index: u64) {
        self.state = ProgressState::Snapshot;
        self.pending_snapshot = index;
        self.probe_sent = false;
        self.inflights.reset();
    }

    pub fn become_replicate(&mut self) {
        self.pending_snapshot = 0;
        self.state = ProgressState::Replicate;
        self.probe_sent = false;
        self.inflights.reset();
        self.next = self.matched + 1;
    }

    /// Whether the leader should hold back appends to this follower.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }

    /// A heartbeat answer arrived; `lagging` if the follower lacks entries. Returns whether the
    /// appends in flight look lost (no progress for two heartbeats in replicate state), in which
    /// case the progress is back in probe state.
    pub fn heartbeat_answered(&mut self, lagging: bool) -> bool {
        self.probe_sent = false;
        if lagging && self.matched == self.matched_at_last_heartbeat {
            self.stalled_heartbeats += 1;
        } else {
            self.stalled_heartbeats = 0;
        }
        self.matched_at_last_heartbeat = self.matched;
        if self.state == ProgressState::Replicate && self.stalled_heartbeats >= 2 {
            self.become_probe();
            self.stalled_heartbeats = 0;
            return true;
        }
        false
    }

    /// The follower acknowledged entries up to `index`. Returns whether `matched` moved.
    pub fn maybe_update(&mut self, index: u64) -> bool {
        let updated = index > self.matched;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        updated
    }

    /// An append ending at `last` was sent in replicate state: move `next` past it.
    pub fn sent_entries(&mut self, last: u64) {
        match self.state {
            ProgressState::Replicate => {
                self.next = last + 1;
                self.inflights.add(last);
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => {}
        }
    }

    /// The follower rejected the append after `rejected`; `hint` is where the leader should
    /// probe next (fast backtracking). Returns false for a stale rejection (already handled).
    pub fn maybe_decr_to(&mut self, rejected: u64, hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next == 0 || self.next - 1 != rejected {
            return false;
        }
        self.next = rejected.min(hint + 1).max(self.matched + 1).max(1);
        self.probe_sent = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflights_bound_the_window_and_free_in_order() {
        let mut f = Inflights::new(3);
        f.add(2);
        f.add(5);
        f.add(9);
        assert!(f.full());
        f.free_le(5);
        assert!(!f.full());
        f.add(10);
        f.add(11);
        assert!(f.full());
        f.free_le(100);
        assert!(!f.full());
    }

    #[test]
    fn stale_rejections_are_ignored() {
        let mut p = Progress::new(10, 4);
        p.probe_sent = true;
        assert!(
            !p.maybe_decr_to(5, 3),
            "rejection of an append that was not the last probe"
        );
        assert!(p.maybe_decr_to(9, 4));
        assert_eq!(p.next, 5);
        assert!(!p.probe_sent);
        p.matched = 4;
        p.become_replicate();
        assert!(!p.maybe_decr_to(3, 0), "rejected below match: stale");
    }
}
