//! `RangeLog`: one range's Raft log in the shared `raft` column family, implementing the core's
//! [`LogStore`], plus the staging of a `Ready` into a node-wide [`LogBatch`] (group commit).
//!
//! Writes go through [`RangeLog::stage_ready`], which puts them in the round's batch and updates
//! the in-memory view at once. The core reads those entries only after `advance`, which the
//! store calls after the batch is durable; if the batch fails the node stops (fail-stop), so the
//! in-memory view never outlives a lost write.

use std::sync::Arc;

use flotilla_transport::meta::RangeDescriptor;
use flotilla_transport::raft::{ConfState, Entry, HardState, SnapshotMetadata};
use rocksdb::WriteBatch;

use super::cache::EntryCache;
use super::codec;
use super::engine::{Cf, Engine};
use super::error::EngineError;
use super::keys;
use super::snapshot::ReceivedSnapshot;
use crate::raft::{entry_size, limit_size, InitialState, LogStore, Ready, StorageError};

/// A commit-only hard state change is written once the commit index moved this far.
const COMMIT_WRITE_INTERVAL: u64 = 1024;

/// The writes of one persistence round, for any number of ranges: written once, synced once.
#[derive(Default)]
pub struct LogBatch {
    batch: WriteBatch,
    ranges: usize,
    entries: usize,
}

impl LogBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ranges staged into this batch.
    pub fn ranges(&self) -> usize {
        self.ranges
    }

    /// Log entries staged into this batch.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Bytes of the batch's writes.
    pub fn size_bytes(&self) -> usize {
        self.batch.size_in_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Writes the whole round with one fsync. Only after this returns may the store call
    /// `advance` on the staged ranges and send their `persisted_messages`.
    ///
    /// # Errors
    /// [`EngineError::SyncFailed`] (the node must stop) or [`EngineError::Halted`].
    pub fn commit(self, engine: &Engine) -> Result<(), EngineError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        engine.write_synced(self.batch)
    }

    /// Writes the batch without an fsync (apply output: replayed from the log after a crash).
    ///
    /// # Errors
    /// [`EngineError`] from the write.
    pub(crate) fn write_unsynced(self, engine: &Engine) -> Result<(), EngineError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        engine.write_unsynced(self.batch)
    }

    pub(crate) fn raw(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }
}

/// One range's log on the node's engine.
#[derive(Debug)]
pub struct RangeLog {
    engine: Arc<Engine>,
    range_id: u64,
    hard_state: HardState,
    /// The commit index of the last hard state written (commit-only changes are written
    /// lazily, see `stage`).
    written_commit: u64,
    /// The membership as of the applied index (what a restart resumes from).
    conf_state: ConfState,
    applied_index: u64,
    truncated: SnapshotMetadata,
    last_index: u64,
    /// Compaction done in memory, written with the next staged round.
    pending_compaction: Option<SnapshotMetadata>,
    cache: EntryCache,
}

impl RangeLog {
    /// Stages the creation of a range whose log starts after `initial` (index 0 for a
    /// bootstrapped range, the split index for a range created by a split): its descriptor,
    /// truncation record, hard state and apply state.
    ///
    /// # Errors
    /// [`EngineError::RangeExists`] if the range is already on this node.
    pub fn create(
        engine: &Engine,
        batch: &mut LogBatch,
        descriptor: &RangeDescriptor,
        initial: &SnapshotMetadata,
    ) -> Result<(), EngineError> {
        let range_id = descriptor.id;
        if engine.descriptor(range_id)?.is_some() {
            return Err(EngineError::RangeExists(range_id));
        }
        let conf_state = initial.conf_state.clone().unwrap_or_default();
        let b = batch.raw();
        engine.put_record(b, Cf::Meta, &keys::descriptor_key(range_id), descriptor);
        engine.put_record(b, Cf::Raft, &keys::truncated_key(range_id), initial);
        let hard_state = HardState {
            term: initial.term,
            vote: 0,
            commit: initial.index,
        };
        engine.put_record(b, Cf::Raft, &keys::hard_state_key(range_id), &hard_state);
        let apply_state = flotilla_transport::meta::ApplyState {
            applied_index: initial.index,
            applied_term: initial.term,
            conf_state: Some(conf_state),
            clock_ms: 0,
        };
        engine.put_record(b, Cf::Meta, &keys::apply_state_key(range_id), &apply_state);
        batch.ranges += 1;
        Ok(())
    }

    /// Loads `range_id`'s log, verifying every entry's checksum and the log's invariants.
    ///
    /// # Errors
    /// [`EngineError::RangeNotFound`] without a truncation record, [`EngineError::Corruption`]
    /// for damage (a bad checksum, a gap, a hard state whose commit is past the last entry).
    pub fn load(engine: Arc<Engine>, range_id: u64) -> Result<Self, EngineError> {
        let truncated: SnapshotMetadata = engine
            .read_record(
                Cf::Raft,
                &keys::truncated_key(range_id),
                range_id,
                "truncation record",
            )?
            .ok_or(EngineError::RangeNotFound(range_id))?;
        let hard_state: HardState = engine
            .read_record(
                Cf::Raft,
                &keys::hard_state_key(range_id),
                range_id,
                "hard state",
            )?
            .ok_or_else(|| EngineError::corruption(range_id, "hard state", "missing"))?;
        let apply_state = engine.apply_state(range_id)?;
        let (applied_index, conf_state) = match apply_state {
            Some(a) => (a.applied_index, a.conf_state.unwrap_or_default()),
            None => (
                truncated.index,
                truncated.conf_state.clone().unwrap_or_default(),
            ),
        };
        let mut cache = EntryCache::new(engine.cache_budget.clone());
        let mut last_index = truncated.index;
        let mut last_term = truncated.term;
        {
            let start = keys::log_key(range_id, truncated.index + 1);
            let end = keys::log_end_key(range_id);
            let opts = engine.read_options_bounded(&end);
            let iter = engine.db().iterator_cf_opt(
                engine.cf(Cf::Raft),
                opts,
                rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
            );
            let mut tail = Vec::new();
            for item in iter {
                let (key, value) = item?;
                let Some((_, index)) = keys::parse_log_key(&key) else {
                    return Err(EngineError::corruption(
                        range_id,
                        "log key",
                        format!("{key:?}"),
                    ));
                };
                if index != last_index + 1 {
                    return Err(EngineError::corruption(
                        range_id,
                        "log",
                        format!("gap: entry {index} follows {last_index}"),
                    ));
                }
                let entry: Entry = codec::decode(&value).map_err(|e| {
                    EngineError::corruption(range_id, "log entry", format!("index {index}: {e}"))
                })?;
                if entry.index != index || entry.term < last_term || entry.term > hard_state.term {
                    return Err(EngineError::corruption(
                        range_id,
                        "log entry",
                        format!(
                            "key index {index} holds entry {}/{} (previous term {last_term}, \
                             hard state term {})",
                            entry.index, entry.term, hard_state.term
                        ),
                    ));
                }
                last_index = index;
                last_term = entry.term;
                tail.push(entry);
            }
            cache.append(&tail);
        }
        if hard_state.commit > last_index {
            return Err(EngineError::corruption(
                range_id,
                "hard state",
                format!(
                    "commit {} past the last entry {last_index}",
                    hard_state.commit
                ),
            ));
        }
        // The commit index is written lazily (see `stage`); entries applied or compacted away
        // were committed.
        let mut hard_state = hard_state;
        hard_state.commit = hard_state
            .commit
            .max(truncated.index)
            .max(applied_index.min(last_index));
        if applied_index > last_index {
            return Err(EngineError::corruption(
                range_id,
                "apply state",
                format!("applied {applied_index} past the last entry {last_index}"),
            ));
        }
        Ok(Self {
            engine,
            range_id,
            hard_state,
            written_commit: hard_state.commit,
            conf_state,
            applied_index,
            truncated,
            last_index,
            pending_compaction: None,
            cache,
        })
    }

    pub fn range_id(&self) -> u64 {
        self.range_id
    }

    /// The applied index this replica restarts from (pass it as `Config::applied`).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Stages everything `ready` asks to persist: a snapshot (with its data, `snapshot`, which
    /// must match `ready.snapshot`), new entries (replacing a conflicting suffix), the hard
    /// state, and any compaction done since the last round.
    ///
    /// # Errors
    /// [`EngineError::Snapshot`] when `ready` carries a snapshot without matching data, or
    /// entries that do not follow the log.
    pub fn stage_ready(
        &mut self,
        batch: &mut LogBatch,
        ready: &Ready,
        snapshot: Option<&ReceivedSnapshot>,
    ) -> Result<(), EngineError> {
        let snapshot = match (&ready.snapshot, snapshot) {
            (None, _) => None,
            (Some(meta), Some(data))
                if data.metadata().index == meta.index && data.metadata().term == meta.term =>
            {
                Some(data)
            }
            (Some(meta), _) => {
                return Err(EngineError::Snapshot(format!(
                    "range {}: ready carries snapshot {}/{} without its data",
                    self.range_id, meta.index, meta.term
                )))
            }
        };
        self.stage(batch, snapshot, &ready.entries, ready.hard_state.as_ref())
    }

    /// Stages, in this order: a snapshot install, `hard_state`, `entries` (replacing a
    /// conflicting suffix), and any compaction done since the last round.
    ///
    /// # Errors
    /// [`EngineError::Snapshot`] for entries that do not follow the log, or a snapshot that
    /// does not belong to this range.
    pub fn stage(
        &mut self,
        batch: &mut LogBatch,
        snapshot: Option<&ReceivedSnapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), EngineError> {
        // Check everything before staging anything: a refused round leaves no half of this
        // range in the batch.
        if let Some(data) = snapshot {
            if data.descriptor().id != self.range_id {
                return Err(EngineError::Snapshot(format!(
                    "snapshot of range {} staged on range {}",
                    data.descriptor().id,
                    self.range_id
                )));
            }
            data.check_no_overlap(&self.engine)?;
        }
        if let Some(first) = entries.first() {
            let (low, last) = match snapshot {
                Some(data) => (data.metadata().index, data.metadata().index),
                None => (self.truncated.index, self.last_index),
            };
            if first.index <= low || first.index > last + 1 {
                return Err(EngineError::Snapshot(format!(
                    "range {}: entries from {} do not follow the log ({low}, {last}]",
                    self.range_id, first.index
                )));
            }
        }
        batch.ranges += 1;
        if let Some(data) = snapshot {
            self.stage_snapshot(batch, data)?;
        }
        // Keys go into the batch in increasing order (hard state `h` < entries `l` < truncation
        // `t`; the store stages ranges by increasing id): RocksDB's memtable then inserts along
        // its sequential splice instead of searching the skiplist for every key.
        if let Some(hs) = hard_state {
            // Term and vote are written at once (a vote must be durable before it is sent). A
            // change of the commit index alone is written only every `COMMIT_WRITE_INTERVAL`
            // entries: commit is volatile state in Raft (paper Figure 2), a restart resumes
            // from max(written commit, applied) and learns the rest from the leader. This halves
            // the keys a busy round writes.
            let commit_only = hs.term == self.hard_state.term && hs.vote == self.hard_state.vote;
            self.hard_state = *hs;
            if !commit_only || hs.commit >= self.written_commit + COMMIT_WRITE_INTERVAL {
                self.written_commit = hs.commit;
                self.engine.put_record(
                    batch.raw(),
                    Cf::Raft,
                    &keys::hard_state_key(self.range_id),
                    hs,
                );
            }
        }
        if !entries.is_empty() {
            self.stage_entries(batch, entries)?;
        }
        self.stage_compaction(batch);
        Ok(())
    }

    fn stage_entries(
        &mut self,
        batch: &mut LogBatch,
        entries: &[Entry],
    ) -> Result<(), EngineError> {
        debug_assert!(
            entries[0].index > self.truncated.index && entries[0].index <= self.last_index + 1,
            "stage() checks that entries follow the log"
        );
        let cf = self.engine.cf(Cf::Raft);
        let new_last = entries[entries.len() - 1].index;
        if new_last < self.last_index {
            // A conflict shortened the log: drop the stale tail beyond the new last entry.
            batch.raw().delete_range_cf(
                cf,
                keys::log_key(self.range_id, new_last + 1).as_slice(),
                keys::log_end_key(self.range_id).as_slice(),
            );
        }
        for e in entries {
            batch
                .raw()
                .put_cf(cf, keys::log_key(self.range_id, e.index), codec::encode(e));
        }
        batch.entries += entries.len();
        self.last_index = new_last;
        self.cache.append(entries);
        Ok(())
    }

    fn stage_snapshot(
        &mut self,
        batch: &mut LogBatch,
        data: &ReceivedSnapshot,
    ) -> Result<(), EngineError> {
        if data.descriptor().id != self.range_id {
            return Err(EngineError::Snapshot(format!(
                "snapshot of range {} staged on range {}",
                data.descriptor().id,
                self.range_id
            )));
        }
        let meta = data.metadata();
        data.stage_install(&self.engine, batch.raw())?;
        let cf = self.engine.cf(Cf::Raft);
        batch.raw().delete_range_cf(
            cf,
            keys::log_key(self.range_id, 0).as_slice(),
            keys::log_end_key(self.range_id).as_slice(),
        );
        self.engine.put_record(
            batch.raw(),
            Cf::Raft,
            &keys::truncated_key(self.range_id),
            meta,
        );
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.written_commit = self.hard_state.commit;
        self.engine.put_record(
            batch.raw(),
            Cf::Raft,
            &keys::hard_state_key(self.range_id),
            &self.hard_state,
        );
        self.truncated = meta.clone();
        self.last_index = meta.index;
        self.applied_index = meta.index;
        self.conf_state = meta.conf_state.clone().unwrap_or_default();
        self.pending_compaction = None;
        self.cache.clear();
        Ok(())
    }

    /// Stages a compaction done by `RawNode::compact` since the last round (`delete_range` of
    /// the released entries plus the new truncation record). The apply batch that covers the
    /// compacted entries must have been written before this batch: the WAL is one sequence, so
    /// syncing this batch makes that apply durable too.
    pub fn stage_compaction(&mut self, batch: &mut LogBatch) {
        if let Some(meta) = self.pending_compaction.take() {
            let cf = self.engine.cf(Cf::Raft);
            batch.raw().delete_range_cf(
                cf,
                keys::log_key(self.range_id, 0),
                keys::log_key(self.range_id, meta.index + 1),
            );
            self.engine.put_record(
                batch.raw(),
                Cf::Raft,
                &keys::truncated_key(self.range_id),
                &meta,
            );
        }
    }

    fn read_entries(
        &self,
        low: u64,
        high: u64,
        max_size_bytes: u64,
    ) -> Result<Vec<Entry>, EngineError> {
        let end = keys::log_key(self.range_id, high);
        let opts = self.engine.read_options_bounded(&end);
        let start = keys::log_key(self.range_id, low);
        let iter = self.engine.db().iterator_cf_opt(
            self.engine.cf(Cf::Raft),
            opts,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        let mut size = 0u64;
        let mut capped = false;
        for (expected, item) in (low..).zip(iter) {
            let (key, value) = item?;
            let entry: Entry = codec::decode(&value).map_err(|e| {
                EngineError::corruption(self.range_id, "log entry", format!("{key:?}: {e}"))
            })?;
            if entry.index != expected {
                return Err(EngineError::corruption(
                    self.range_id,
                    "log",
                    format!("expected entry {expected}, found {}", entry.index),
                ));
            }
            size += entry_size(&entry);
            if size > max_size_bytes && !out.is_empty() {
                capped = true;
                break;
            }
            out.push(entry);
        }
        if !capped && (out.len() as u64) < high - low {
            return Err(EngineError::corruption(
                self.range_id,
                "log",
                format!("entries {low}..{high} asked, {} found", out.len()),
            ));
        }
        if out.is_empty() && low < high {
            return Err(EngineError::corruption(
                self.range_id,
                "log",
                format!("entries {low}..{high} missing"),
            ));
        }
        Ok(out)
    }
}

impl LogStore for RangeLog {
    fn initial_state(&self) -> Result<InitialState, StorageError> {
        Ok(InitialState {
            hard_state: self.hard_state,
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low <= self.truncated.index {
            return Err(StorageError::Compacted);
        }
        if high > self.last_index + 1 || low > high {
            return Err(StorageError::Unavailable);
        }
        if low == high {
            return Ok(Vec::new());
        }
        if let Some(iter) = self.cache.range(low, high) {
            let mut out: Vec<Entry> = iter.cloned().collect();
            limit_size(&mut out, max_size_bytes);
            return Ok(out);
        }
        Ok(self.read_entries(low, high, max_size_bytes)?)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index == self.truncated.index {
            return Ok(self.truncated.term);
        }
        if index < self.truncated.index {
            return Err(StorageError::Compacted);
        }
        if index > self.last_index {
            return Err(StorageError::Unavailable);
        }
        if let Some(e) = self.cache.entry(index) {
            return Ok(e.term);
        }
        let entries = self.read_entries(index, index + 1, u64::MAX)?;
        Ok(entries[0].term)
    }

    fn first_index(&self) -> Result<u64, StorageError> {
        Ok(self.truncated.index + 1)
    }

    fn last_index(&self) -> Result<u64, StorageError> {
        Ok(self.last_index)
    }

    fn snapshot_metadata(&self) -> Result<SnapshotMetadata, StorageError> {
        Ok(self.truncated.clone())
    }

    fn compact(&mut self, snapshot: &SnapshotMetadata) -> Result<(), StorageError> {
        if snapshot.index <= self.truncated.index {
            return Ok(());
        }
        if snapshot.index > self.last_index {
            return Err(StorageError::Unavailable);
        }
        self.truncated = snapshot.clone();
        self.cache.compact_to(snapshot.index);
        self.pending_compaction = Some(snapshot.clone());
        Ok(())
    }
}
