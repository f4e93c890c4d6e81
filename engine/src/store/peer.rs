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
use crate::raft::{Config, RawNode, Ready};
use crate::storage::{Engine, EngineError, LogBatch, RangeLog};

/// Why a peer cannot go on. All of these stop the replica.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Storage(#[from] EngineError),
    #[error(transparent)]
    Raft(#[from] crate::raft::Error),
    #[error("range {0}: snapshot install needs its data from the transport (not wired yet)")]
    SnapshotUnsupported(u64),
}

/// What a finished round hands back to the store.
#[derive(Debug, Default)]
pub struct RoundOutput {
    /// Messages to send now that the round is durable.
    pub messages: Vec<Message>,
    /// Commands applied in this round, with their responses.
    pub applied: Vec<Applied>,
}

/// One range replica on this node.
pub struct Peer {
    range_id: u64,
    raw: RawNode<RangeLog>,
    applier: RangeApplier,
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
        let applier = RangeApplier::load(engine.clone(), range_id, kv)?;
        let config = Config {
            applied: applier.applied_index(),
            ..raft
        };
        let raw = RawNode::new(config, log)?;
        Ok(Self {
            range_id,
            raw,
            applier,
        })
    }

    pub fn range_id(&self) -> u64 {
        self.range_id
    }

    /// The Raft group, for ticks, steps, proposals and reads.
    pub fn raft(&mut self) -> &mut RawNode<RangeLog> {
        &mut self.raw
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
            return Ok(None);
        }
        let mut ready = self.raw.ready()?;
        if ready.snapshot.is_some() {
            return Err(PeerError::SnapshotUnsupported(self.range_id));
        }
        let now = std::mem::take(&mut ready.messages);
        self.raw.store_mut().stage_ready(batch, &ready, None)?;
        Ok(Some((ready, now)))
    }

    /// Second half, after the round's batch is durable: the messages that promised it, the
    /// applied commands, and `advance`.
    ///
    /// # Errors
    /// [`PeerError`]; the replica must stop.
    pub fn finish(&mut self, mut ready: Ready) -> Result<RoundOutput, PeerError> {
        let messages = std::mem::take(&mut ready.persisted_messages);
        let applied = self
            .applier
            .apply(&ready.committed_entries, ready.conf_state.as_ref())?;
        self.raw.advance(ready)?;
        Ok(RoundOutput { messages, applied })
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
