//! `RawNode`: the API a Raft group's driver uses, and `Ready`, the batch of work it hands out.
//!
//! The driver loop, per group:
//! 1. feed inputs: `tick`, `step` (messages from peers), `propose`, `read_index`, ...;
//! 2. if `has_ready()`, take `ready()`;
//! 3. send `Ready::messages` at once: they are the leader's appends and heartbeats, which may
//!    go out while the leader's own write is in progress (Raft thesis 10.2.1);
//! 4. persist `Ready::entries` and `Ready::hard_state` (durably when `must_sync()`);
//! 5. only then send `Ready::persisted_messages`: votes and append acknowledgements promise
//!    that data is on disk, and sending them earlier loses acknowledged writes after a crash;
//! 6. apply `Ready::committed_entries`, serve `Ready::read_states` once applied up to their index;
//! 7. `advance(ready)`.
//!
//! Inputs may keep arriving between `ready()` and `advance()`; the next `Ready` waits for the
//! `advance`.

use bytes::Bytes;
use flotilla_transport::raft::{
    ConfChange, ConfState, Entry, EntryType, HardState, Message, MessageType, SnapshotMetadata,
};

use super::config::Config;
use super::core::{CampaignKind, Raft, Role, NONE};
use super::error::{
    CompactError, ConfChangeError, Error, ProposeError, ReadError, StorageError, TransferError,
};
use super::read_only::ReadState;
use super::step::StepError;
use super::storage::{entry_size, LogStore};

/// Volatile state the driver may want to react to (who leads, our role).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub leader_id: u64,
    pub role: Role,
}

/// Everything the driver must do for one round; see the module doc for the order.
#[derive(Debug, Default)]
pub struct Ready {
    /// Present when the leader or our role changed.
    pub soft_state: Option<SoftState>,
    /// Present when term, vote or commit changed; persist it with `entries`.
    pub hard_state: Option<HardState>,
    /// A snapshot from the leader to install before `entries`: fetch its data (out of band),
    /// replace the state machine and the log with it, durably, with the rest of this Ready.
    pub snapshot: Option<SnapshotMetadata>,
    /// Entries to append to the log, replacing any stored entry at or after the first one's index.
    pub entries: Vec<Entry>,
    /// Entries to apply, in order; all are committed and durable here.
    pub committed_entries: Vec<Entry>,
    /// Messages that may be sent immediately.
    pub messages: Vec<Message>,
    /// Messages to send only after `entries` and `hard_state` are durable.
    pub persisted_messages: Vec<Message>,
    /// Confirmed reads: serve each once applied up to its index.
    pub read_states: Vec<ReadState>,
    /// The membership after the changes among `committed_entries`, when there are any: persist
    /// it with the apply state, so that a restart from that applied index starts from it.
    pub conf_state: Option<ConfState>,
    must_sync: bool,
    /// The last entry handed out to persist, as `(index, term)`.
    persist_to: Option<(u64, u64)>,
    /// The last committed entry handed out to apply.
    apply_to: Option<u64>,
    /// The index of `snapshot`, kept apart so that taking `snapshot` out does not lose it.
    snapshot_index: Option<u64>,
}

impl Ready {
    /// Whether the write must be synced before `persisted_messages` go out: entries, or a term
    /// or vote change. A commit-only change need not be (it is re-learned from the leader).
    pub fn must_sync(&self) -> bool {
        self.must_sync
    }
}

/// Whether a message may leave before this round's writes are durable. Only the leader's own
/// traffic qualifies: it promises nothing about our disk (thesis 10.2.1). Everything else, votes
/// and acknowledgements above all, waits.
fn may_send_before_persist(m: &Message) -> bool {
    matches!(
        MessageType::try_from(m.msg_type),
        Ok(MessageType::Append
            | MessageType::Heartbeat
            | MessageType::Snapshot
            | MessageType::TimeoutNow
            | MessageType::ReadIndexResponse)
    )
}

/// A snapshot of the replica's state, for drivers, tests and the simulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub term: u64,
    pub vote: u64,
    pub role: Role,
    pub leader_id: u64,
    pub committed: u64,
    pub applied: u64,
    pub persisted: u64,
    pub last_index: u64,
    pub lease_valid: bool,
}

/// One replica of one Raft group.
pub struct RawNode<S> {
    raft: Raft<S>,
    prev_soft_state: SoftState,
    prev_hard_state: HardState,
    /// A `Ready` was handed out and not yet advanced.
    ready_outstanding: bool,
    /// A storage failure stops the replica for good (fail-stop).
    fatal: Option<StorageError>,
}

impl<S: LogStore> RawNode<S> {
    /// Starts (or restarts) a replica over `store`.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid config, [`Error::Storage`] if the store fails.
    pub fn new(config: Config, store: S) -> Result<Self, Error> {
        config.validate().map_err(Error::Config)?;
        let raft = Raft::new(config, store).map_err(Error::Storage)?;
        let prev_soft_state = SoftState {
            leader_id: NONE,
            role: Role::Follower,
        };
        let prev_hard_state = raft.hard_state();
        Ok(Self {
            raft,
            prev_soft_state,
            prev_hard_state,
            ready_outstanding: false,
            fatal: None,
        })
    }

    fn check_fatal(&self) -> Result<(), Error> {
        match &self.fatal {
            Some(e) => Err(Error::Storage(e.clone())),
            None => Ok(()),
        }
    }

    /// Debug builds check every invariant after each call that changes state.
    fn debug_validate(&self) {
        #[cfg(debug_assertions)]
        if let Err(e) = self.raft.validate() {
            panic!("raft invariant broken on replica {}: {e}", self.raft.id);
        }
    }

    fn latch<T>(&mut self, r: Result<T, StorageError>) -> Result<T, Error> {
        r.map_err(|e| {
            tracing::error!(id = self.raft.id, error = %e, "raft storage failure: halting");
            self.fatal = Some(e.clone());
            Error::Storage(e)
        })
    }

    /// Advances logical time by one tick.
    ///
    /// # Errors
    /// [`Error::Storage`] if the store failed (now or before).
    pub fn tick(&mut self) -> Result<(), Error> {
        self.check_fatal()?;
        let r = self.raft.tick();
        self.debug_validate();
        self.latch(r)
    }

    /// Feeds a message from a peer.
    ///
    /// # Errors
    /// [`Error::InvalidMessage`] if the message breaks the protocol (it was ignored), or
    /// [`Error::Storage`] if the store failed.
    pub fn step(&mut self, m: Message) -> Result<(), Error> {
        self.check_fatal()?;
        let r = self.raft.step(m);
        self.debug_validate();
        match r {
            Ok(()) => Ok(()),
            Err(StepError::Invalid(reason)) => Err(Error::InvalidMessage(reason)),
            Err(StepError::Storage(e)) => self.latch(Err(e)),
        }
    }

    /// Proposes one entry; returns its `(term, index)` (the entry is committed with that term
    /// or not at all).
    ///
    /// # Errors
    /// [`ProposeError`] when this replica cannot take proposals; nothing was appended.
    pub fn propose(&mut self, data: Bytes) -> Result<(u64, u64), ProposeError> {
        self.propose_batch(vec![data])
    }

    /// Proposes several entries at once; returns the term and the first entry's index (the
    /// others follow it one by one).
    ///
    /// # Errors
    /// [`ProposeError`] when this replica cannot take proposals; nothing was appended.
    pub fn propose_batch(&mut self, data: Vec<Bytes>) -> Result<(u64, u64), ProposeError> {
        self.local_request(|raft| raft.propose(data), ProposeError::Halted)
    }

    /// Runs a local request whose refusal is the caller's business (`E`) but whose storage
    /// failure halts the replica (reported as `halted`).
    fn local_request<T, E>(
        &mut self,
        request: impl FnOnce(&mut Raft<S>) -> Result<Result<T, E>, StorageError>,
        halted: impl FnOnce(String) -> E,
    ) -> Result<T, E> {
        if let Some(e) = &self.fatal {
            return Err(halted(e.to_string()));
        }
        let r = request(&mut self.raft);
        self.debug_validate();
        match r {
            Ok(r) => r,
            Err(e) => {
                let message = e.to_string();
                let _ = self.latch::<()>(Err(e));
                Err(halted(message))
            }
        }
    }

    /// Proposes a membership change; returns its entry's `(term, index)`. It takes effect on
    /// each replica when the entry commits and is handed out for apply; a change of more than
    /// one voter goes through a joint configuration that the leader leaves on its own.
    ///
    /// # Errors
    /// [`ConfChangeError`] when this replica is not the leader, a change is still pending, or
    /// the change does not apply to the current membership; nothing was proposed.
    pub fn propose_conf_change(&mut self, cc: &ConfChange) -> Result<(u64, u64), ConfChangeError> {
        self.local_request(|raft| raft.propose_conf_change(cc), ConfChangeError::Halted)
    }

    /// The caller reports how sending a snapshot to `to` went (it streams the data itself).
    /// Every `Snapshot` message sent must be reported once, success or failure: until then
    /// the leader sends that follower nothing else.
    pub fn report_snapshot(&mut self, to: u64, success: bool) {
        self.raft.report_snapshot(to, success);
    }

    /// Compacts the log up to `snapshot.index`, an index the caller has applied and can serve
    /// as a snapshot described by `snapshot` (its term and the membership in force there).
    /// Followers that need the released entries are sent that snapshot instead.
    ///
    /// # Errors
    /// [`CompactError`] if the snapshot is not applied yet, does not match the log, or is not
    /// ahead of the current one; the store's failure halts the replica.
    pub fn compact(&mut self, snapshot: &SnapshotMetadata) -> Result<(), CompactError> {
        if let Some(e) = &self.fatal {
            return Err(CompactError::Halted(e.to_string()));
        }
        let log = &self.raft.log;
        if snapshot.index > log.applied {
            return Err(CompactError::NotApplied {
                index: snapshot.index,
                applied: log.applied,
            });
        }
        match log.term(snapshot.index) {
            Ok(t) if t == snapshot.term => {}
            Err(StorageError::Compacted) => {
                return Err(CompactError::AlreadyCompacted {
                    index: snapshot.index,
                })
            }
            Ok(_) | Err(StorageError::Unavailable) => {
                return Err(CompactError::TermMismatch {
                    index: snapshot.index,
                    term: snapshot.term,
                })
            }
            Err(e) => {
                let message = e.to_string();
                let _ = self.latch::<()>(Err(e));
                return Err(CompactError::Halted(message));
            }
        }
        if snapshot.conf_state.is_none() {
            return Err(CompactError::NoConfiguration);
        }
        let r = self.raft.log.store.compact(snapshot);
        self.latch(r)
            .map_err(|e| CompactError::Halted(e.to_string()))
    }

    /// The membership in force (the last change handed out for apply).
    pub fn conf_state(&self) -> ConfState {
        self.raft.membership.to_conf_state()
    }

    /// Asks for a linearizable read; the answer comes as a `ReadState` carrying `context`.
    ///
    /// # Errors
    /// [`ReadError`] when no leader is known or too many reads are pending.
    pub fn read_index(&mut self, context: Bytes) -> Result<(), ReadError> {
        self.local_request(|raft| raft.read_index(context), ReadError::Halted)
    }

    /// Hands leadership to `to` (thesis 3.10). Proposals are refused until it completes or
    /// aborts after an election timeout.
    ///
    /// # Errors
    /// [`TransferError`] if this replica is not the leader or `to` is not a voter.
    pub fn transfer_leader(&mut self, to: u64) -> Result<(), TransferError> {
        self.local_request(|raft| raft.transfer_leader(to), TransferError::Halted)
    }

    /// A follower forgets its leader (etcd's `ForgetLeader`): the caller learned from outside
    /// Raft (node liveness) that the leader's node is down. It stays a follower in the same
    /// term, and it no longer refuses (pre-)votes for having heard from that leader recently,
    /// so a quiet group elects at once instead of after a full election timeout. Refused
    /// (returns false) with lease reads, whose safety rests on exactly that refusal.
    pub fn forget_leader(&mut self) -> bool {
        let r = &mut self.raft;
        if r.role != Role::Follower || r.config.lease_reads {
            return false;
        }
        r.leader_id = NONE;
        r.leader_contact_elapsed = r.config.election_timeout_ticks;
        true
    }

    /// Starts an election now (pre-vote first when enabled), as a node-liveness wake-up does.
    /// Does nothing on a leader, and nothing while this replica still honours a leader's lease
    /// (with check-quorum, for an election timeout after it last heard from the leader): a vote
    /// for itself would break the promise the leader's lease reads rely on. Returns whether an
    /// election started.
    ///
    /// # Errors
    /// [`Error::Storage`] if the store failed.
    pub fn campaign(&mut self) -> Result<bool, Error> {
        self.check_fatal()?;
        if self.raft.role == Role::Leader || self.raft.in_lease() {
            return Ok(false);
        }
        let kind = if self.raft.config.pre_vote {
            CampaignKind::PreElection
        } else {
            CampaignKind::Election
        };
        let r = self.raft.campaign(kind);
        self.debug_validate();
        self.latch(r)?;
        // The core may still decline (not a voter, unapplied membership changes, ...).
        Ok(self.raft.role != Role::Follower)
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            leader_id: self.raft.leader_id,
            role: self.raft.role,
        }
    }

    /// Whether `ready()` has anything to hand out.
    pub fn has_ready(&self) -> bool {
        if self.fatal.is_some() || self.ready_outstanding {
            return false;
        }
        let r = &self.raft;
        self.soft_state() != self.prev_soft_state
            || r.hard_state() != self.prev_hard_state
            || r.log.has_entries_to_persist()
            || r.log.has_snapshot_to_install()
            || !r.msgs.is_empty()
            || !r.read_states.is_empty()
            || r.reads.round_wanted
            || r.wants_to_leave_joint()
            || r.log.has_next_committed_entries()
    }

    /// Collects this round's work. Call `advance` with it before the next `ready`.
    ///
    /// # Errors
    /// [`Error::Storage`] if the store failed reading committed entries.
    pub fn ready(&mut self) -> Result<Ready, Error> {
        self.check_fatal()?;
        debug_assert!(
            !self.ready_outstanding,
            "ready() before advance() of the previous one"
        );
        self.raft.flush_read_round();
        // A joint configuration whose leave was held back (a transfer, say) is left now.
        let r = self.raft.maybe_leave_joint();
        self.latch(r)?;
        let mut rd = Ready::default();
        let soft = self.soft_state();
        if soft != self.prev_soft_state {
            rd.soft_state = Some(soft);
            self.prev_soft_state = soft;
        }
        let hard = self.raft.hard_state();
        if hard != self.prev_hard_state {
            rd.must_sync =
                hard.term != self.prev_hard_state.term || hard.vote != self.prev_hard_state.vote;
            rd.hard_state = Some(hard);
        }
        if let Some(snapshot) = self.raft.log.snapshot_to_install() {
            rd.must_sync = true;
            rd.snapshot_index = Some(snapshot.index);
            rd.snapshot = Some(snapshot);
        }
        rd.entries = self.raft.log.entries_to_persist().to_vec();
        if let Some(last) = rd.entries.last() {
            rd.must_sync = true;
            rd.persist_to = Some((last.index, last.term));
            self.raft.log.mark_in_progress(last.index);
        }
        if self.raft.log.has_next_committed_entries() {
            let max = self.raft.config.max_committed_size_per_ready_bytes;
            let entries = self.raft.log.next_committed_entries(max);
            rd.committed_entries = self.latch(entries)?;
            if self.raft.role == Role::Leader {
                // This leader's entries stop counting against the uncommitted limit.
                let term = self.raft.term;
                let done: u64 = rd
                    .committed_entries
                    .iter()
                    .filter(|e| e.term == term)
                    .map(entry_size)
                    .sum();
                self.raft.uncommitted_size = self.raft.uncommitted_size.saturating_sub(done);
            }
            if let Some(last) = rd.committed_entries.last() {
                rd.apply_to = Some(last.index);
                self.raft.log.applying = last.index;
            }
            for e in &rd.committed_entries {
                if e.entry_type == EntryType::ConfChange as i32 {
                    let r = self.raft.apply_conf_change(e);
                    if let Some(cs) = self.latch(r)? {
                        rd.conf_state = Some(cs);
                    }
                }
            }
            let r = self.raft.maybe_leave_joint();
            self.latch(r)?;
        }
        // A new term or vote must be durable before anything of that term leaves: a group of
        // one becomes leader within one call, and its appends to learners would otherwise
        // carry a term that a crash could still take back.
        let term_or_vote_changed = rd.hard_state.is_some_and(|h| {
            h.term != self.prev_hard_state.term || h.vote != self.prev_hard_state.vote
        });
        for m in self.raft.msgs.drain(..) {
            if !term_or_vote_changed && may_send_before_persist(&m) {
                rd.messages.push(m);
            } else {
                rd.persisted_messages.push(m);
            }
        }
        rd.read_states = std::mem::take(&mut self.raft.read_states);
        self.ready_outstanding = true;
        Ok(rd)
    }

    /// The driver persisted `ready`'s entries and hard state and applied its committed entries.
    ///
    /// # Errors
    /// [`Error::Storage`] if the store failed.
    pub fn advance(&mut self, ready: Ready) -> Result<(), Error> {
        self.advance_append(&ready)?;
        if let Some(index) = ready.apply_to {
            self.advance_apply_to(index);
        }
        Ok(())
    }

    /// The driver persisted `ready`'s entries and hard state; apply is reported separately with
    /// `advance_apply_to` (for drivers that apply on other threads).
    ///
    /// # Errors
    /// [`Error::Storage`] if the store failed.
    pub fn advance_append(&mut self, ready: &Ready) -> Result<(), Error> {
        self.check_fatal()?;
        self.ready_outstanding = false;
        if let Some(hs) = &ready.hard_state {
            self.prev_hard_state = *hs;
        }
        if let Some(index) = ready.snapshot_index {
            self.raft.log.snapshot_installed(index);
        }
        if let Some((index, term)) = ready.persist_to {
            let r = self.raft.on_persisted(index, term);
            self.latch(r)?;
        }
        self.debug_validate();
        Ok(())
    }

    /// The driver applied every committed entry up to `index`.
    pub fn advance_apply_to(&mut self, index: u64) {
        let index = index.min(self.raft.log.committed);
        self.raft.log.applied_to(index);
    }

    pub fn status(&self) -> Status {
        let r = &self.raft;
        Status {
            id: r.id,
            term: r.term,
            vote: r.vote,
            role: r.role,
            leader_id: r.leader_id,
            committed: r.log.committed,
            applied: r.log.applied,
            persisted: r.log.persisted(),
            last_index: r.log.last_index().unwrap_or(0),
            lease_valid: r.lease_valid(),
        }
    }

    /// The term of entry `index` in this replica's log (including entries not yet persisted).
    ///
    /// # Errors
    /// What the store answers for indexes outside the log.
    pub fn term_of(&self, index: u64) -> Result<u64, StorageError> {
        self.raft.log.term(index)
    }

    /// Whether this replica leads an idle group that may go quiet: nothing uncommitted or
    /// unapplied, no read, transfer or membership change in progress, and every member
    /// recently active with the whole log. (The store quiesces; the core only answers.)
    ///
    /// # Errors
    /// [`StorageError`] when the log cannot be read.
    pub fn quiescable(&self) -> Result<bool, StorageError> {
        let r = &self.raft;
        if r.role != super::core::Role::Leader
            || r.lead_transferee.is_some()
            || r.reads.len() > 0
            || r.pending_conf_index > r.log.committed
            || self.ready_outstanding
        {
            return Ok(false);
        }
        let last = r.log.last_index()?;
        if r.log.committed != last || r.log.applied != last {
            return Ok(false);
        }
        Ok(r.tracker.member_ids().into_iter().all(|id| {
            id == r.id
                || r.tracker
                    .get(id)
                    .is_some_and(|pr| pr.matched == last && pr.recent_active)
        }))
    }

    /// The replica this leader is handing its leadership to, while a transfer is under way.
    pub fn transferring_to(&self) -> Option<u64> {
        self.raft.lead_transferee
    }

    /// The snapshot this replica restored from its leader and has not installed yet (its
    /// caller must hold that snapshot's data).
    pub fn pending_snapshot(&self) -> Option<&SnapshotMetadata> {
        self.raft.log.pending_snapshot()
    }

    /// Whether a membership change is proposed (or inherited by this leader) and not applied:
    /// until it is, a replica outside the membership may be one the change adds.
    pub fn has_pending_conf_change(&self) -> bool {
        self.raft.pending_conf_index > self.raft.log.applied
    }

    /// On a leader: `(replica id, matched index, recently active)` of every other member,
    /// what a leadership transfer picks its target by. Empty on followers.
    pub fn follower_progress(&self) -> Vec<(u64, u64, bool)> {
        if self.raft.role != super::core::Role::Leader {
            return Vec::new();
        }
        self.raft
            .tracker
            .member_ids()
            .into_iter()
            .filter(|&id| id != self.raft.id)
            .filter_map(|id| {
                let pr = self.raft.tracker.get(id)?;
                Some((id, pr.matched, pr.recent_active))
            })
            .collect()
    }

    pub fn store(&self) -> &S {
        &self.raft.log.store
    }

    /// The store, for the driver to persist a `Ready` into.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.raft.log.store
    }
}
