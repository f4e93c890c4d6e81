//! `Peer`: one replica of one range. It owns the range's `RawNode` over its `RangeLog`, and its
//! `RangeApplier`, and runs the Ready cycle of `raft::raw_node` in two halves around the
//! node's group commit:
//!
//! 1. [`Peer::stage`]: take the `Ready`, hand out the messages that may go at once (the
//!    leader's appends, thesis 10.2.1), and stage the entries and hard state into the round's
//!    `LogBatch`;
//! 2. the store commits the batch for all its peers with one fsync;
//! 3. [`Peer::finish`]: hand out the messages that promised durability (votes, acks), apply
//!    the committed entries, `advance`.

use std::sync::Arc;

use flotilla_transport::kv::WriteResponse;
use flotilla_transport::meta::RangeDescriptor;
use flotilla_transport::raft::{Message, SnapshotMetadata};

use crate::kv::{Applied, KvConfig, RangeApplier};
use crate::raft::{CompactError, Config, RawNode, ReadState, Ready};
use crate::storage::{
    build_snapshot, Engine, EngineError, LogBatch, RangeLog, ReceivedSnapshot, SnapshotParts,
};

/// Why a peer cannot go on. All of these stop the replica.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Storage(#[from] EngineError),
    #[error(transparent)]
    Raft(#[from] crate::raft::Error),
    #[error("range {0}: the Ready carries a snapshot whose data never arrived")]
    SnapshotMissing(u64),
    #[error("range {range_id}: snapshot data {data_index} does not match message {message_index}")]
    SnapshotMismatch {
        range_id: u64,
        data_index: u64,
        message_index: u64,
    },
    #[error(transparent)]
    Compact(#[from] CompactError),
    #[error("halted: {0}")]
    Halted(String),
}

/// What a finished round hands back to the store.
#[derive(Debug, Default)]
pub struct RoundOutput {
    /// Messages to send now that the round is durable.
    pub messages: Vec<Message>,
    /// Commands applied in this round, with their responses.
    pub applied: Vec<Applied>,
    /// Reads confirmed by a quorum (ReadIndex): serve each once the applied index reaches it.
    pub reads: Vec<ReadState>,
    /// `(index, term)` of every entry handed to apply in this round (commands, no-ops and
    /// membership changes alike), for matching proposals.
    pub committed: Vec<(u64, u64)>,
    /// Ranges split off this one in this round: their replicas exist on disk, to be opened.
    pub created: Vec<RangeDescriptor>,
}

/// Leader side, on any thread: builds the snapshot of `range_id` as applied now (one
/// consistent RocksDB snapshot) and rewrites the core's Snapshot `message` to carry its
/// metadata. Reading a whole range takes a while: the runtime runs it off the poller.
///
/// # Errors
/// [`PeerError::Storage`] when the snapshot cannot be read.
pub fn prepare_snapshot(
    engine: &Engine,
    range_id: u64,
    message: &mut Message,
    chunk_bytes: usize,
) -> Result<SnapshotParts, PeerError> {
    let mut parts = SnapshotParts::default();
    let meta = build_snapshot(engine, range_id, chunk_bytes, &mut parts)?;
    message.snapshot = Some(meta);
    Ok(parts)
}

/// One range replica on this node.
pub struct Peer {
    range_id: u64,
    raw: RawNode<RangeLog>,
    applier: RangeApplier,
    kv: KvConfig,
    /// Data of a snapshot stepped in, waiting for the Ready that installs it.
    pending_snapshot: Option<ReceivedSnapshot>,
    /// Quiesced: not ticked until traffic returns (DESIGN section 7).
    quiet: bool,
    /// The leader of the last soft state (0: none), for `flotilla_raft_leader_changes_seen_total`.
    leader_seen: u64,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("range_id", &self.range_id)
            .field("status", &self.raw.status())
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// Writes a new range (bootstrap: its log starts after `initial`) and opens it.
    ///
    /// # Errors
    /// [`PeerError`] when the range exists or the disk fails.
    pub fn create(
        engine: &Arc<Engine>,
        descriptor: &RangeDescriptor,
        initial: &SnapshotMetadata,
        raft: Config,
        kv: KvConfig,
    ) -> Result<Self, PeerError> {
        let mut batch = LogBatch::new();
        RangeLog::create(engine, &mut batch, descriptor, initial)?;
        batch.commit(engine)?;
        Self::open(engine, descriptor.id, raft, kv)
    }

    /// Opens the replica of `range_id` from disk, resuming at its applied index.
    ///
    /// # Errors
    /// [`PeerError`] for a damaged or missing range, or a bad config.
    pub fn open(
        engine: &Arc<Engine>,
        range_id: u64,
        raft: Config,
        kv: KvConfig,
    ) -> Result<Self, PeerError> {
        let log = RangeLog::load(engine.clone(), range_id)?;
        let applier = RangeApplier::load(engine.clone(), range_id, kv.clone())?;
        let config = Config {
            applied: applier.applied_index(),
            ..raft
        };
        let raw = RawNode::new(config, log)?;
        Ok(Self {
            range_id,
            raw,
            applier,
            kv,
            pending_snapshot: None,
            quiet: false,
            leader_seen: 0,
        })
    }

    fn engine(&self) -> Arc<Engine> {
        self.raw.store().engine().clone()
    }

    /// Leader side: the data for a Snapshot message the core emitted. The snapshot is built at
    /// the range's applied index (at or past the log's truncation point, which the core put in
    /// the message), so the message is rewritten to carry the built snapshot's metadata.
    ///
    /// # Errors
    /// [`PeerError::Storage`] when the snapshot cannot be read.
    pub fn prepare_snapshot(
        &self,
        message: &mut Message,
        chunk_bytes: usize,
    ) -> Result<SnapshotParts, PeerError> {
        prepare_snapshot(&self.engine(), self.range_id, message, chunk_bytes)
    }

    /// Follower side: steps a Snapshot message whose data arrived whole and verified. The data
    /// is installed with the Ready that restores the log (or dropped if the log already holds
    /// the snapshot's last entry).
    ///
    /// # Errors
    /// [`PeerError::SnapshotMismatch`] when the data is not the message's snapshot.
    pub fn step_snapshot(
        &mut self,
        message: Message,
        data: ReceivedSnapshot,
    ) -> Result<(), PeerError> {
        let message_index = message.snapshot.as_ref().map_or(0, |s| s.index);
        if data.metadata().index != message_index {
            return Err(PeerError::SnapshotMismatch {
                range_id: self.range_id,
                data_index: data.metadata().index,
                message_index,
            });
        }
        self.raw.step(message)?;
        // Keep the data only if the core restored from this very snapshot: a stale or
        // duplicate one (a resend, a second stream) is ignored by the core and must not
        // replace the data of the snapshot it did take.
        let restored = self
            .raw
            .pending_snapshot()
            .is_some_and(|s| s.index == data.metadata().index && s.term == data.metadata().term);
        if restored {
            self.pending_snapshot = Some(data);
        }
        Ok(())
    }

    /// Releases the log up to the applied index (its state is in the state machine and goes
    /// out as a snapshot); written with the next round.
    ///
    /// # Errors
    /// [`PeerError::Compact`] when there is nothing to release.
    pub fn compact_to_applied(&mut self) -> Result<(), PeerError> {
        let state = self.applier.apply_state();
        let meta = SnapshotMetadata {
            index: state.applied_index,
            term: state.applied_term,
            conf_state: state.conf_state.clone(),
        };
        self.raw.compact(&meta)?;
        Ok(())
    }

    /// Log GC: releases the log up to the applied index once more than `threshold` applied
    /// entries are kept. A follower that falls further behind catches up by snapshot. Returns
    /// whether it compacted.
    ///
    /// # Errors
    /// [`PeerError::Storage`] when the log cannot be read.
    pub fn maybe_compact(&mut self, threshold: u64) -> Result<bool, PeerError> {
        use crate::raft::LogStore as _;
        let first = self
            .raw
            .store()
            .first_index()
            .map_err(|e| EngineError::corruption(self.range_id, "log", e))?;
        let applied = self.applier.applied_index();
        if applied.saturating_sub(first.saturating_sub(1)) <= threshold {
            return Ok(false);
        }
        match self.compact_to_applied() {
            Ok(()) => Ok(true),
            // Another compaction is staged, or the applied entry is no longer in the log.
            Err(PeerError::Compact(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the range is quiet (its replica is not ticked).
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    pub(crate) fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    pub fn range_id(&self) -> u64 {
        self.range_id
    }

    /// The Raft group, for ticks, steps, proposals and reads.
    pub fn raft(&mut self) -> &mut RawNode<RangeLog> {
        &mut self.raw
    }

    /// Knows no leader of its range and is not the leader: the range cannot serve through this
    /// replica now (the `flotilla_store_leaderless_ranges` gauge and the status port's
    /// readiness count the same thing).
    pub fn knows_no_leader(&self) -> bool {
        let status = self.raw.status();
        status.leader_id == 0 && status.role != crate::raft::Role::Leader
    }

    pub fn applier(&self) -> &RangeApplier {
        &self.applier
    }

    /// First half of a round: when there is work, takes the `Ready`, returns it with the
    /// messages to send at once, and stages its writes into `batch`.
    ///
    /// # Errors
    /// [`PeerError`]; the replica must stop.
    pub fn stage(
        &mut self,
        batch: &mut LogBatch,
    ) -> Result<Option<(Ready, Vec<Message>)>, PeerError> {
        if !self.raw.has_ready() {
            // A log GC on an idle range has no Ready to ride with: it goes out on its own.
            self.raw.store_mut().stage_compaction(batch);
            return Ok(None);
        }
        let mut ready = self.raw.ready()?;
        if let Some(soft) = ready.soft_state {
            // As etcd counts them: a leader that is known and not the one seen last.
            if soft.leader_id != 0 && soft.leader_id != self.leader_seen {
                metrics::counter!("flotilla_raft_leader_changes_seen_total").increment(1);
            }
            self.leader_seen = soft.leader_id;
        }
        let snapshot = match &ready.snapshot {
            Some(_) => Some(
                self.pending_snapshot
                    .take()
                    .ok_or(PeerError::SnapshotMissing(self.range_id))?,
            ),
            None => None,
        };
        let now = std::mem::take(&mut ready.messages);
        self.raw
            .store_mut()
            .stage_ready(batch, &ready, snapshot.as_ref())?;
        Ok(Some((ready, now)))
    }

    /// Second half, after the round's batch is durable: the messages that promised it, the
    /// applied commands, and `advance`.
    ///
    /// # Errors
    /// [`PeerError`]; the replica must stop.
    pub fn finish(&mut self, mut ready: Ready) -> Result<RoundOutput, PeerError> {
        let messages = std::mem::take(&mut ready.persisted_messages);
        let reads = std::mem::take(&mut ready.read_states);
        let committed = ready
            .committed_entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect();
        if ready.snapshot.is_some() {
            // The install replaced the state machine's rows and apply state on disk.
            self.applier = RangeApplier::load(self.engine(), self.range_id, self.kv.clone())?;
        }
        let applied = self
            .applier
            .apply(&ready.committed_entries, ready.conf_state.as_ref())?;
        self.raw.advance(ready)?;
        Ok(RoundOutput {
            messages,
            applied,
            reads,
            committed,
            created: self.applier.take_created(),
        })
    }

    /// The response recorded for the command applied at `index` in this round, if any.
    pub fn response_at(output: &RoundOutput, index: u64) -> Option<&WriteResponse> {
        output
            .applied
            .iter()
            .find(|a| a.index == index)
            .map(|a| &a.response)
    }
}
