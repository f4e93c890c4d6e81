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
use flotilla_transport::raft::MessageType;

use super::core::{Raft, Role, NONE};
use super::error::{ReadError, StorageError};
use super::storage::LogStore;

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

impl<S: LogStore> Raft<S> {
    /// Starts a linearizable read (thesis 6.4). On a follower the request goes to the leader.
    pub(crate) fn read_index(
        &mut self,
        context: Bytes,
    ) -> Result<Result<(), ReadError>, StorageError> {
        if self.role != Role::Leader {
            if self.leader_id == NONE {
                return Ok(Err(ReadError::NoLeader));
            }
            let mut m = self.new_message(self.leader_id, MessageType::ReadIndex);
            m.context = context;
            self.msgs.push(m);
            return Ok(Ok(()));
        }
        self.leader_read(context, self.id)
    }

    /// The leader's side of a read from `from` (itself or a follower).
    pub(crate) fn leader_read(
        &mut self,
        context: Bytes,
        from: u64,
    ) -> Result<Result<(), ReadError>, StorageError> {
        if self.reads.len() >= self.config.max_pending_reads {
            return Ok(Err(ReadError::TooManyPending {
                limit: self.config.max_pending_reads,
            }));
        }
        if !self.committed_in_term()? {
            self.reads.waiting_commit.push((context, from));
            return Ok(Ok(()));
        }
        let index = self.log.committed;
        if self.lease_valid() {
            self.respond_read(context, from, index);
            return Ok(Ok(()));
        }
        // Every read that arrives before the next Ready shares one heartbeat round.
        let round = self.reads.round + 1;
        self.reads.pending.push_back(PendingRead {
            context,
            from,
            index,
            round,
        });
        self.reads.round_wanted = true;
        Ok(Ok(()))
    }

    /// Opens the heartbeat round that reads queued since the last one wait for.
    pub(crate) fn flush_read_round(&mut self) {
        if self.reads.round_wanted && self.role == Role::Leader {
            self.broadcast_heartbeat();
        }
        self.reads.round_wanted = false;
    }

    pub(crate) fn release_reads_waiting_commit(&mut self) -> Result<(), StorageError> {
        for (context, from) in std::mem::take(&mut self.reads.waiting_commit) {
            // The queue had room when they were accepted.
            let _ = self.leader_read(context, from)?;
        }
        Ok(())
    }

    pub(crate) fn respond_read(&mut self, context: Bytes, from: u64, index: u64) {
        if from == self.id {
            self.read_states.push(ReadState { index, context });
        } else {
            let mut m = self.new_message(from, MessageType::ReadIndexResponse);
            m.index = index;
            m.context = context;
            self.msgs.push(m);
        }
    }

    /// The leader lease (thesis 6.4.1) holds: a quorum acknowledged a heartbeat sent less than
    /// `election_timeout - drift margin` ticks ago, and no TimeoutNow went out this term.
    pub(crate) fn lease_valid(&self) -> bool {
        self.config.lease_reads
            && self.config.check_quorum
            && self.role == Role::Leader
            && !self.timeout_now_sent
            && self.lead_transferee.is_none()
            && self.tick_count < self.reads.lease_expiry_tick
    }

    /// Sends a heartbeat carrying a new read round to every member.
    pub(crate) fn broadcast_heartbeat(&mut self) {
        // Any round opened from now on confirms the reads queued so far.
        self.reads.round_wanted = false;
        let round = self.reads.open_round(self.tick_count);
        let id = self.id;
        if let Some(pr) = self.tracker.get_mut(id) {
            pr.read_round_acked = round;
        }
        for to in self.tracker.member_ids() {
            if to == id {
                continue;
            }
            let matched = self.tracker.get(to).map_or(0, |p| p.matched);
            let mut m = self.new_message(to, MessageType::Heartbeat);
            // A follower may not hold entries past its match index yet.
            m.commit = matched.min(self.log.committed);
            m.leader_commit = self.known_commit();
            m.read_round = round;
            self.msgs.push(m);
        }
        self.confirm_reads();
    }

    /// Releases the reads (and extends the lease) for the latest round a quorum acknowledged.
    pub(crate) fn confirm_reads(&mut self) {
        let round = self.tracker.quorum_read_round();
        for read in self.reads.confirm(round, self.config.lease_ticks()) {
            self.respond_read(read.context, read.from, read.index);
        }
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
