//! Linearizable reads without a log entry (Raft thesis 6.4): ReadIndex confirmed by a heartbeat
//! round, and the leader lease (6.4.1).
//!
//! Each leader heartbeat broadcast opens a numbered *round*; followers echo the round in their
//! response. A read that arrived before round `r` was sent is safe once a quorum acknowledged
//! round `r`: no other leader could have been elected by then without one of them hearing of it.
//! The lease reuses the same rounds: the send tick of the latest round a quorum acknowledged,
//! plus the election timeout minus a drift margin, is when the lease expires (followers promise
//! not to vote for anybody else for an election timeout after hearing from the leader).

use std::collections::VecDeque;

use bytes::Bytes;

/// A read the caller may serve once it has applied up to `index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub index: u64,
    pub context: Bytes,
}

/// A read the leader holds until a heartbeat round confirms its leadership.
#[derive(Clone, Debug)]
pub(crate) struct PendingRead {
    pub context: Bytes,
    /// Who asked: this replica, or a follower (follower read) to answer with a message.
    pub from: u64,
    pub index: u64,
    /// The round whose quorum acknowledgement releases this read.
    pub round: u64,
}

/// Most recent rounds kept for the lease's send-tick lookup. Rounds a quorum acknowledged are
/// pruned as they are; this bounds the ones that never are (a leader cut off from its quorum
/// steps down within an election timeout anyway).
const MAX_TRACKED_ROUNDS: usize = 1024;

#[derive(Clone, Debug, Default)]
pub(crate) struct ReadQueue {
    /// Confirmed in round order.
    pub pending: VecDeque<PendingRead>,
    /// Reads that arrived before the leader committed an entry of its term (thesis 6.4 step 1).
    pub waiting_commit: Vec<(Bytes, u64)>,
    /// The latest round this leader has broadcast.
    pub round: u64,
    /// `(round, tick it was sent at)`, increasing.
    round_ticks: VecDeque<(u64, u64)>,
    /// The lease is valid while the leader's tick count is below this.
    pub lease_expiry_tick: u64,
    /// Reads wait for a round that has not been broadcast yet.
    pub round_wanted: bool,
}

impl ReadQueue {
    pub fn len(&self) -> usize {
        self.pending.len() + self.waiting_commit.len()
    }

    /// Drops everything, as a replica that stops leading must.
    pub fn reset(&mut self) {
        self.pending.clear();
        self.waiting_commit.clear();
        self.round_ticks.clear();
        self.lease_expiry_tick = 0;
        self.round_wanted = false;
    }

    /// Opens the next round, sent at `tick`; returns its number.
    pub fn open_round(&mut self, tick: u64) -> u64 {
        self.round += 1;
        if self.round_ticks.len() >= MAX_TRACKED_ROUNDS {
            self.round_ticks.pop_front();
        }
        self.round_ticks.push_back((self.round, tick));
        self.round
    }

    /// A quorum acknowledged `round`: extends the lease from that round's send tick and returns
    /// the reads it releases.
    pub fn confirm(&mut self, round: u64, lease_ticks: u64) -> Vec<PendingRead> {
        while self.round_ticks.front().is_some_and(|&(r, _)| r < round) {
            self.round_ticks.pop_front();
        }
        if let Some(&(r, sent)) = self.round_ticks.front() {
            if r == round {
                self.lease_expiry_tick = self.lease_expiry_tick.max(sent + lease_ticks);
            }
        }
        let mut released = Vec::new();
        while self.pending.front().is_some_and(|p| p.round <= round) {
            if let Some(p) = self.pending.pop_front() {
                released.push(p);
            }
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_starts_at_the_send_tick_of_the_confirmed_round() {
        let mut q = ReadQueue::default();
        let r1 = q.open_round(100);
        let r2 = q.open_round(105);
        q.pending.push_back(PendingRead {
            context: Bytes::from_static(b"a"),
            from: 1,
            index: 7,
            round: r2,
        });
        assert!(
            q.confirm(r1, 8).is_empty(),
            "round 1 was sent before the read"
        );
        assert_eq!(q.lease_expiry_tick, 108);
        let released = q.confirm(r2, 8);
        assert_eq!(released.len(), 1);
        assert_eq!(q.lease_expiry_tick, 113);
    }
}
