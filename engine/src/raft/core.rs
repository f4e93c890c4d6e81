//! `Raft`: one replica's protocol state and its transitions (roles, terms, timers, proposals,
//! replication). Message handling lives in `step.rs`, reads in `read_only.rs`, membership
//! changes and snapshots in `reconfig.rs`; this file owns the state and the rest.
//!
//! Pure: time is `tick()`, randomness a seeded generator, the log is read through `LogStore`,
//! and every effect (messages, entries to persist) is queued for `RawNode::ready`.

use bytes::Bytes;
use flotilla_transport::raft::{Entry, EntryType, HardState, Message, MessageType};
use tracing::debug;

use super::config::Config;
use super::error::{ProposeError, StorageError, TransferError};
use super::log::RaftLog;
use super::membership::Membership;
use super::progress::ProgressState;
use super::quorum::VoteResult;
use super::read_only::{ReadQueue, ReadState};
use super::rng::SplitMix64;
use super::storage::{entry_size, LogStore};
use super::tracker::ProgressTracker;

/// "No replica": no vote cast, no leader known.
pub const NONE: u64 = 0;

/// Terms at or past this are refused from peers, so `term + 1` never overflows.
pub(crate) const MAX_TERM: u64 = u64::MAX - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Why a replica campaigns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CampaignKind {
    /// Pre-vote first (thesis 9.6): do not bump the term unless a quorum would vote for us.
    PreElection,
    Election,
    /// The leader asked us to take over (TimeoutNow, thesis 3.10): voters bypass their lease.
    Transfer,
}

pub struct Raft<S> {
    pub(crate) id: u64,
    pub(crate) term: u64,
    pub(crate) vote: u64,
    pub(crate) role: Role,
    pub(crate) leader_id: u64,
    pub(crate) log: RaftLog<S>,
    pub(crate) tracker: ProgressTracker,
    pub(crate) config: Config,
    /// Outgoing messages, drained by `RawNode::ready`.
    pub(crate) msgs: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    pub(crate) reads: ReadQueue,

    /// Ticks since this replica last reset its election timer (a follower: heard from the
    /// leader or granted a vote; a leader: since the last check-quorum round).
    pub(crate) election_elapsed: u64,
    pub(crate) heartbeat_elapsed: u64,
    randomized_election_timeout: u64,
    /// Ticks since this replica last heard from a leader of its term (with lease reads, or since
    /// it started). While below the election timeout it refuses to vote (the follower's half of
    /// the lease): counting from start-up covers a follower that restarts within a lease.
    pub(crate) leader_contact_elapsed: u64,
    /// Local monotonic tick count; the lease is measured in it.
    pub(crate) tick_count: u64,

    /// The configuration in force: the last one whose entry was handed out for apply.
    pub(crate) membership: Membership,
    /// A leader proposes no membership change while one up to this index is not yet applied.
    pub(crate) pending_conf_index: u64,
    pub(crate) lead_transferee: Option<u64>,
    /// Ticks since the current leader transfer started (aborted at an election timeout).
    transfer_elapsed: u64,
    /// A TimeoutNow went out this term: some voter may bypass its lease promise, so this
    /// leader serves no more lease reads in this term.
    pub(crate) timeout_now_sent: bool,
    /// Payload bytes of entries this leader appended that are not yet applied.
    pub(crate) uncommitted_size: u64,
    rng: SplitMix64,
}

impl<S: LogStore> Raft<S> {
    /// # Errors
    /// What the store fails with when read.
    pub fn new(config: Config, store: S) -> Result<Self, StorageError> {
        let initial = store.initial_state()?;
        let log = RaftLog::new(store, initial.hard_state.commit, config.applied)?;
        let membership = Membership::from_conf_state(&initial.conf_state);
        let tracker = ProgressTracker::new(&membership, config.max_inflight_msgs);
        let mut raft = Self {
            id: config.id,
            term: initial.hard_state.term,
            vote: initial.hard_state.vote,
            role: Role::Follower,
            leader_id: NONE,
            log,
            tracker,
            msgs: Vec::new(),
            read_states: Vec::new(),
            reads: ReadQueue::default(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_timeout_ticks,
            // With lease reads, a replica that (re)starts honours the lease of a leader it may
            // have acknowledged just before: it waits an election timeout before voting.
            leader_contact_elapsed: if config.lease_reads {
                0
            } else {
                config.election_timeout_ticks
            },
            tick_count: 0,
            membership,
            pending_conf_index: 0,
            lead_transferee: None,
            transfer_elapsed: 0,
            timeout_now_sent: false,
            uncommitted_size: 0,
            rng: SplitMix64::new(config.seed ^ config.id.rotate_left(32)),
            config,
        };
        raft.reset_election_timer();
        Ok(raft)
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    /// Checks the replica's state invariants (STYLE 7); debug builds run it after every call
    /// that steps the state.
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    pub(crate) fn validate(&self) -> Result<(), String> {
        self.log.validate()?;
        let Ok(last) = self.log.last_index() else {
            return Ok(());
        };
        if self.log.committed > last {
            return Err(format!(
                "commit {} past last index {last}",
                self.log.committed
            ));
        }
        match self.role {
            Role::Leader => {
                if self.vote != self.id || self.leader_id != self.id {
                    return Err(format!(
                        "leader of term {} with vote {} and leader {}",
                        self.term, self.vote, self.leader_id
                    ));
                }
                if self.tracker.get(self.id).is_none() {
                    return Err("leader without its own progress".into());
                }
            }
            Role::Candidate => {
                if self.vote != self.id {
                    return Err(format!("candidate voted for {}", self.vote));
                }
            }
            Role::PreCandidate | Role::Follower => {}
        }
        if self.role != Role::Leader && (self.lead_transferee.is_some() || self.reads.len() > 0) {
            return Err("a non-leader holds leader-only state".into());
        }
        Ok(())
    }

    /// The leader this replica knows of, for a `NotLeader` answer.
    pub(crate) fn leader_hint(&self) -> Option<u64> {
        (self.leader_id != NONE).then_some(self.leader_id)
    }

    /// Voters may campaign; learners and replicas removed from the group may not, nor a
    /// replica with a snapshot still to install.
    pub(crate) fn promotable(&self) -> bool {
        self.tracker.is_voter(self.id) && !self.log.has_pending_snapshot()
    }

    /// A committed membership change not yet handed out for apply: until it is, this replica
    /// counts votes in an outdated configuration and must not campaign (etcd's
    /// hasUnappliedConfChanges; a TLA+ counterexample shows two leaders otherwise).
    fn has_unapplied_conf_changes(&self) -> Result<bool, StorageError> {
        let (low, high) = (self.log.applying + 1, self.log.committed + 1);
        if low >= high {
            return Ok(false);
        }
        let mut next = low;
        while next < high {
            let batch = match self.log.entries(next, high, 1024 * 1024) {
                Ok(b) => b,
                // Unknown: stay on the safe side.
                Err(StorageError::Compacted | StorageError::Unavailable) => return Ok(true),
                Err(e) => return Err(e),
            };
            let Some(last) = batch.last() else {
                return Ok(false);
            };
            if batch
                .iter()
                .any(|e| e.entry_type == EntryType::ConfChange as i32)
            {
                return Ok(true);
            }
            next = last.index + 1;
        }
        Ok(false)
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let et = self.config.election_timeout_ticks;
        self.randomized_election_timeout = self.rng.in_range(et, 2 * et);
    }

    /// Whether this replica honours a leader lease right now and must ignore vote requests
    /// (thesis 6.2 and 9.6: a server that heard from a current leader within the minimum
    /// election timeout does not grant votes).
    pub(crate) fn in_lease(&self) -> bool {
        self.config.check_quorum
            && (self.role == Role::Leader
                || self.leader_contact_elapsed < self.config.election_timeout_ticks)
    }

    // --- Role transitions -----------------------------------------------------------------

    pub(crate) fn become_follower(&mut self, term: u64, leader_id: u64) {
        assert!(
            term >= self.term,
            "term must never decrease: {} -> {term}",
            self.term
        );
        if term > self.term {
            self.term = term;
            self.vote = NONE;
        }
        if self.role == Role::Leader && leader_id == NONE {
            // Stepping down without a successor: no lease promise binds us any more.
            self.leader_contact_elapsed = self.config.election_timeout_ticks;
        }
        self.role = Role::Follower;
        self.leader_id = leader_id;
        if leader_id != NONE {
            self.leader_contact_elapsed = 0;
        }
        self.reset_election_timer();
        self.lead_transferee = None;
        self.reads.reset();
        self.tracker.reset_votes();
        self.uncommitted_size = 0;
        debug!(
            id = self.id,
            term = self.term,
            leader = leader_id,
            "became follower"
        );
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(
            self.role,
            Role::Leader,
            "a leader cannot become a pre-candidate"
        );
        self.role = Role::PreCandidate;
        self.leader_id = NONE;
        self.tracker.reset_votes();
        self.reads.reset();
        self.reset_election_timer();
        debug!(id = self.id, term = self.term, "became pre-candidate");
    }

    fn become_candidate(&mut self) {
        assert_ne!(
            self.role,
            Role::Leader,
            "a leader cannot become a candidate"
        );
        self.term += 1;
        self.vote = self.id;
        self.role = Role::Candidate;
        self.leader_id = NONE;
        self.tracker.reset_votes();
        self.reads.reset();
        self.reset_election_timer();
        debug!(id = self.id, term = self.term, "became candidate");
    }

    pub(crate) fn become_leader(&mut self) -> Result<(), StorageError> {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate can become leader"
        );
        self.role = Role::Leader;
        self.leader_id = self.id;
        self.lead_transferee = None;
        self.timeout_now_sent = false;
        self.uncommitted_size = 0;
        self.reads.reset();
        self.reset_election_timer();
        let last = self.log.last_index()?;
        self.tracker
            .reset_progress(last + 1, self.id, self.log.persisted());
        for (_, pr) in self.tracker.iter_mut() {
            // Give every follower a full check-quorum round before it counts as inactive.
            pr.recent_active = true;
        }
        // An entry of the new term, so that the leader commits (and may serve reads) without
        // waiting for a client write (paper 5.4.2, thesis 6.4).
        let noop = Entry {
            term: self.term,
            index: last + 1,
            entry_type: EntryType::Normal as i32,
            data: Bytes::new(),
        };
        self.log.append(&[noop])?;
        // The log may hold a membership change of an earlier leader that is not applied yet:
        // no new change until everything up to here is (thesis 4.1, one change at a time).
        self.pending_conf_index = last + 1;
        debug!(id = self.id, term = self.term, "became leader");
        self.broadcast_append(true)
    }

    // --- Ticks ----------------------------------------------------------------------------

    pub fn tick(&mut self) -> Result<(), StorageError> {
        self.tick_count += 1;
        self.leader_contact_elapsed = self.leader_contact_elapsed.saturating_add(1);
        if self.role == Role::Leader {
            self.tick_leader()
        } else {
            self.election_elapsed += 1;
            if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
                let kind = if self.config.pre_vote {
                    CampaignKind::PreElection
                } else {
                    CampaignKind::Election
                };
                self.campaign(kind)?;
            }
            Ok(())
        }
    }

    fn tick_leader(&mut self) -> Result<(), StorageError> {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_timeout_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.tracker.quorum_active_and_reset(self.id) {
                debug!(
                    id = self.id,
                    term = self.term,
                    "no quorum heard from: stepping down"
                );
                self.become_follower(self.term, NONE);
                return Ok(());
            }
        }
        if self.lead_transferee.is_some() {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.config.election_timeout_ticks {
                let to = self.lead_transferee.take();
                debug!(id = self.id, ?to, "leader transfer timed out: aborted");
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
        Ok(())
    }

    // --- Elections ------------------------------------------------------------------------

    pub(crate) fn campaign(&mut self, kind: CampaignKind) -> Result<(), StorageError> {
        if !self.promotable() {
            debug!(id = self.id, "not a voter: not campaigning");
            return Ok(());
        }
        if self.term >= MAX_TERM - 1 {
            debug!(
                id = self.id,
                term = self.term,
                "terms exhausted: not campaigning"
            );
            return Ok(());
        }
        if self.has_unapplied_conf_changes()? {
            debug!(
                id = self.id,
                "committed membership changes not applied yet: not campaigning"
            );
            return Ok(());
        }
        let (msg_type, vote_term) = if kind == CampaignKind::PreElection {
            self.become_pre_candidate();
            (MessageType::RequestPreVote, self.term + 1)
        } else {
            self.become_candidate();
            (MessageType::RequestVote, self.term)
        };
        if self.tracker.record_vote(self.id, true) == VoteResult::Won {
            // A group of one.
            return if kind == CampaignKind::PreElection {
                self.campaign(CampaignKind::Election)
            } else {
                self.become_leader()
            };
        }
        let last_index = self.log.last_index()?;
        let last_term = self.log.last_term()?;
        for to in self.tracker.config.ids() {
            if to == self.id {
                continue;
            }
            let mut m = self.new_message(to, msg_type);
            m.term = vote_term;
            m.index = last_index;
            m.log_term = last_term;
            m.leader_transfer = kind == CampaignKind::Transfer;
            self.msgs.push(m);
        }
        Ok(())
    }

    // --- Replication ----------------------------------------------------------------------

    /// The commit index as `leader_commit` reports it: 0 (unknown) until this leader has
    /// committed an entry of its own term. Before that its commit index may be below what an
    /// earlier leader committed and acknowledged (Raft thesis 6.4), so it proves no freshness.
    pub(crate) fn known_commit(&self) -> u64 {
        let committed = self.log.committed;
        match self.log.term(committed) {
            Ok(term) if term == self.term => committed,
            _ => 0,
        }
    }

    pub(crate) fn new_message(&self, to: u64, msg_type: MessageType) -> Message {
        Message {
            msg_type: msg_type as i32,
            to,
            from: self.id,
            term: self.term,
            ..Message::default()
        }
    }

    /// Sends `to` the entries it lacks (or an empty append if `send_if_empty`, which carries
    /// the commit index). Returns whether a message went out.
    pub(crate) fn send_append(
        &mut self,
        to: u64,
        send_if_empty: bool,
    ) -> Result<bool, StorageError> {
        let Some(pr) = self.tracker.get(to) else {
            return Ok(false);
        };
        if pr.is_paused() {
            return Ok(false);
        }
        let next = pr.next;
        let probing = pr.state == ProgressState::Probe;
        let prev_index = next - 1;
        let last = self.log.last_index()?;
        let prev_term = match self.log.term(prev_index) {
            Ok(t) => t,
            Err(StorageError::Compacted) => return self.send_snapshot(to),
            Err(e) => return Err(e),
        };
        let entries = if next <= last {
            match self
                .log
                .entries(next, last + 1, self.config.max_size_per_msg_bytes)
            {
                Ok(entries) => entries,
                Err(StorageError::Compacted) => return self.send_snapshot(to),
                Err(e) => return Err(e),
            }
        } else {
            Vec::new()
        };
        // In probe state an empty append is the probe itself (a new member, say, whose
        // `next` starts past the leader's log): it must go out.
        if entries.is_empty() && !send_if_empty && !probing {
            return Ok(false);
        }
        let mut m = self.new_message(to, MessageType::Append);
        m.index = prev_index;
        m.log_term = prev_term;
        m.commit = self.log.committed;
        m.leader_commit = self.known_commit();
        let last_sent = entries.last().map(|e| e.index);
        m.entries = entries;
        let Some(pr) = self.tracker.get_mut(to) else {
            return Ok(false);
        };
        match last_sent {
            Some(last_sent) => pr.sent_entries(last_sent),
            None => {
                if pr.state == ProgressState::Probe {
                    pr.probe_sent = true;
                }
            }
        }
        self.msgs.push(m);
        Ok(true)
    }

    /// Sends every follower what it lacks, as much as its window allows.
    pub(crate) fn broadcast_append(&mut self, send_if_empty: bool) -> Result<(), StorageError> {
        for to in self.tracker.member_ids() {
            if to == self.id {
                continue;
            }
            let mut sent_any = false;
            while self.send_append(to, send_if_empty && !sent_any)? {
                sent_any = true;
            }
        }
        Ok(())
    }

    /// Commits the largest index a quorum holds, if it is from this term (paper 5.4.2: an
    /// entry from an earlier term is committed only indirectly, by committing one of ours).
    pub(crate) fn maybe_commit(&mut self) -> Result<bool, StorageError> {
        let quorum_index = self.tracker.committed_index();
        if quorum_index <= self.log.committed {
            return Ok(false);
        }
        if self.log.term(quorum_index)? != self.term {
            return Ok(false);
        }
        let first_in_term = !self.committed_in_term()?;
        self.log.commit_to(quorum_index);
        if first_in_term {
            self.release_reads_waiting_commit()?;
        }
        Ok(true)
    }

    pub(crate) fn committed_in_term(&self) -> Result<bool, StorageError> {
        match self.log.term(self.log.committed) {
            Ok(t) => Ok(t == self.term),
            Err(StorageError::Compacted) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The caller persisted the log up to `(index, term)`.
    pub(crate) fn on_persisted(&mut self, index: u64, term: u64) -> Result<(), StorageError> {
        self.log.stable_to(index, term);
        if self.role != Role::Leader {
            return Ok(());
        }
        let persisted = self.log.persisted();
        let id = self.id;
        let moved = self
            .tracker
            .get_mut(id)
            .is_some_and(|pr| pr.maybe_update(persisted));
        if moved && self.maybe_commit()? {
            self.broadcast_append(true)?;
        }
        Ok(())
    }

    // --- Local requests -------------------------------------------------------------------

    /// Appends `data` as new entries of this leader's term; returns the term and first index.
    pub(crate) fn propose(
        &mut self,
        data: Vec<Bytes>,
    ) -> Result<Result<(u64, u64), ProposeError>, StorageError> {
        if self.role != Role::Leader {
            return Ok(Err(ProposeError::NotLeader {
                leader: self.leader_hint(),
            }));
        }
        if let Some(to) = self.lead_transferee {
            return Ok(Err(ProposeError::TransferInProgress { to }));
        }
        if data.is_empty() {
            return Ok(Err(ProposeError::Empty));
        }
        let last = self.log.last_index()?;
        let entries: Vec<Entry> = data
            .into_iter()
            .enumerate()
            .map(|(i, data)| Entry {
                term: self.term,
                index: last + 1 + i as u64,
                entry_type: EntryType::Normal as i32,
                data,
            })
            .collect();
        let size: u64 = entries.iter().map(entry_size).sum();
        let limit = self.config.max_uncommitted_size_bytes;
        if self.uncommitted_size > 0 && self.uncommitted_size.saturating_add(size) > limit {
            return Ok(Err(ProposeError::UncommittedSizeExceeded {
                uncommitted: self.uncommitted_size,
                limit,
            }));
        }
        self.uncommitted_size += size;
        self.log.append(&entries)?;
        self.broadcast_append(false)?;
        Ok(Ok((self.term, last + 1)))
    }

    pub(crate) fn transfer_leader(
        &mut self,
        to: u64,
    ) -> Result<Result<(), TransferError>, StorageError> {
        if self.role != Role::Leader {
            return Ok(Err(TransferError::NotLeader {
                leader: self.leader_hint(),
            }));
        }
        if !self.tracker.is_voter(to) {
            return Ok(Err(TransferError::NotAVoter(to)));
        }
        if to == self.id || self.lead_transferee == Some(to) {
            return Ok(Ok(()));
        }
        self.lead_transferee = Some(to);
        // The transfer must finish within an election timeout or it is aborted.
        self.transfer_elapsed = 0;
        let last = self.log.last_index()?;
        if self.tracker.get(to).is_some_and(|pr| pr.matched == last) {
            self.send_timeout_now(to);
        } else {
            self.send_append(to, false)?;
        }
        Ok(Ok(()))
    }

    pub(crate) fn send_timeout_now(&mut self, to: u64) {
        self.timeout_now_sent = true;
        let m = self.new_message(to, MessageType::TimeoutNow);
        self.msgs.push(m);
    }
}
