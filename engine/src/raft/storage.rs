//! The `LogStore` trait: how the core reads the durable log, and `MemStorage`, the in-memory
//! implementation that tests, the simulator and the benchmark use (RocksDB's arrives with the
//! storage issue).
//!
//! The core never writes storage. The caller persists what `Ready` hands over, then calls
//! `advance`; from then on the core reads those entries back through this trait.

use flotilla_transport::raft::{ConfState, Entry, HardState, SnapshotMetadata};

use super::error::StorageError;

/// The state a replica restarts from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InitialState {
    pub hard_state: HardState,
    pub conf_state: ConfState,
}

/// Read access to a replica's durable log.
///
/// Indexes: the log holds entries `first_index()..=last_index()`. Below `first_index()` the log
/// was compacted into the snapshot described by [`LogStore::snapshot_metadata`], whose index is
/// `first_index() - 1` and whose term [`LogStore::term`] still answers for. An empty log has
/// `last_index() == first_index() - 1`.
///
/// Writing: persisting `Ready::entries` must replace every stored entry at or after the first
/// new entry's index (a follower's log is truncated where a new leader's log conflicts, paper
/// 5.3).
pub trait LogStore {
    /// The hard state and membership to restart from.
    ///
    /// # Errors
    /// [`StorageError::Io`] when the disk fails.
    fn initial_state(&self) -> Result<InitialState, StorageError>;

    /// Entries `low..high` (`high` exclusive), cut at `max_size_bytes` of total encoded size but
    /// always at least one entry when `low < high`.
    ///
    /// # Errors
    /// [`StorageError::Compacted`] if `low < first_index()`, [`StorageError::Unavailable`] if
    /// `high > last_index() + 1`, [`StorageError::Io`] when the disk fails.
    fn entries(&self, low: u64, high: u64, max_size_bytes: u64)
        -> Result<Vec<Entry>, StorageError>;

    /// The term of entry `index`, for `first_index() - 1 <= index <= last_index()`.
    ///
    /// # Errors
    /// [`StorageError::Compacted`] below that range, [`StorageError::Unavailable`] above it,
    /// [`StorageError::Io`] when the disk fails.
    fn term(&self, index: u64) -> Result<u64, StorageError>;

    /// The index of the first entry still in the log (the snapshot's index + 1).
    ///
    /// # Errors
    /// [`StorageError::Io`] when the disk fails.
    fn first_index(&self) -> Result<u64, StorageError>;

    /// The index of the last entry, or the snapshot's index if the log is empty.
    ///
    /// # Errors
    /// [`StorageError::Io`] when the disk fails.
    fn last_index(&self) -> Result<u64, StorageError>;

    /// Metadata of the latest snapshot (index 0 when there is none).
    ///
    /// # Errors
    /// [`StorageError::Io`] when the disk fails.
    fn snapshot_metadata(&self) -> Result<SnapshotMetadata, StorageError>;

    /// Releases the entries up to `snapshot.index`, which the caller's state machine holds
    /// (applied) and can send as a snapshot described by `snapshot`. Called by
    /// `RawNode::compact` after it checked `snapshot` against the log.
    ///
    /// # Errors
    /// [`StorageError::Io`] when the disk fails.
    fn compact(&mut self, snapshot: &SnapshotMetadata) -> Result<(), StorageError>;
}

/// The encoded size of an entry, as counted against message and batch size caps.
pub fn entry_size(entry: &Entry) -> u64 {
    // Term, index and type are a few varint bytes; the payload dominates.
    entry.data.len() as u64 + 24
}

/// Keeps `entries` to a prefix whose total size is within `max_size_bytes`, but never fewer than
/// one entry.
pub fn limit_size(entries: &mut Vec<Entry>, max_size_bytes: u64) {
    let mut total = 0u64;
    let keep = entries
        .iter()
        .position(|e| {
            total = total.saturating_add(entry_size(e));
            total > max_size_bytes
        })
        .unwrap_or(entries.len())
        .max(1);
    entries.truncate(keep);
}

/// An in-memory [`LogStore`]. Writes are visible at once; the simulator models durability
/// around it.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    /// The membership as of the applied index the caller restarts from.
    conf_state: ConfState,
    snapshot: SnapshotMetadata,
    /// `entries[i]` has index `snapshot.index + 1 + i`.
    entries: Vec<Entry>,
}

impl MemStorage {
    /// A fresh log for a group whose members are `voters` and `learners`.
    pub fn new_with_conf(voters: &[u64], learners: &[u64]) -> Self {
        let conf_state = ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        };
        Self {
            conf_state,
            snapshot: SnapshotMetadata {
                index: 0,
                term: 0,
                conf_state: Some(ConfState {
                    voters: voters.to_vec(),
                    learners: learners.to_vec(),
                    ..ConfState::default()
                }),
            },
            ..Self::default()
        }
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.hard_state = hard_state;
    }

    /// Records the membership that goes with the caller's applied index.
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    /// All entries still in the log.
    pub fn all_entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Appends `new`, replacing every entry at or after `new[0].index`.
    ///
    /// # Errors
    /// [`StorageError::Compacted`] if `new` starts at or below the snapshot, and
    /// [`StorageError::Unavailable`] if it would leave a gap after the last entry.
    pub fn append(&mut self, new: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = new.first() else {
            return Ok(());
        };
        if first.index <= self.snapshot.index {
            return Err(StorageError::Compacted);
        }
        let last = self.snapshot.index + self.entries.len() as u64;
        if first.index > last + 1 {
            return Err(StorageError::Unavailable);
        }
        let keep = (first.index - self.snapshot.index - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(new);
        Ok(())
    }

    fn offset(&self) -> u64 {
        self.snapshot.index + 1
    }

    /// Installs a snapshot received from the leader: the log restarts after it.
    pub fn apply_snapshot(&mut self, snapshot: SnapshotMetadata) {
        self.entries.clear();
        self.hard_state.commit = self.hard_state.commit.max(snapshot.index);
        if let Some(cs) = &snapshot.conf_state {
            self.conf_state = cs.clone();
        }
        self.snapshot = snapshot;
    }
}

impl LogStore for MemStorage {
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
        if low < self.offset() {
            return Err(StorageError::Compacted);
        }
        if high > self.offset() + self.entries.len() as u64 || low > high {
            return Err(StorageError::Unavailable);
        }
        let start = (low - self.offset()) as usize;
        let end = (high - self.offset()) as usize;
        let mut out = self.entries[start..end].to_vec();
        if !out.is_empty() {
            limit_size(&mut out, max_size_bytes);
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if index < self.offset() {
            return Err(StorageError::Compacted);
        }
        self.entries
            .get((index - self.offset()) as usize)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable)
    }

    fn first_index(&self) -> Result<u64, StorageError> {
        Ok(self.offset())
    }

    fn last_index(&self) -> Result<u64, StorageError> {
        Ok(self.snapshot.index + self.entries.len() as u64)
    }

    fn snapshot_metadata(&self) -> Result<SnapshotMetadata, StorageError> {
        Ok(self.snapshot.clone())
    }

    fn compact(&mut self, snapshot: &SnapshotMetadata) -> Result<(), StorageError> {
        if snapshot.index <= self.snapshot.index {
            return Ok(());
        }
        let last = self.snapshot.index + self.entries.len() as u64;
        if snapshot.index > last {
            return Err(StorageError::Unavailable);
        }
        self.entries
            .drain(..(snapshot.index - self.snapshot.index) as usize);
        self.snapshot = snapshot.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    #[test]
    fn append_replaces_the_conflicting_suffix() {
        let mut s = MemStorage::new_with_conf(&[1], &[]);
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .expect("append");
        s.append(&[entry(2, 2)]).expect("overwrite");
        assert_eq!(s.last_index(), Ok(2));
        assert_eq!(s.term(2), Ok(2));
        assert_eq!(s.term(3), Err(StorageError::Unavailable));
        assert_eq!(s.append(&[entry(5, 2)]), Err(StorageError::Unavailable));
        assert_eq!(s.term(0), Ok(0));
    }

    #[test]
    fn entries_are_size_capped_but_never_empty() {
        let mut s = MemStorage::new_with_conf(&[1], &[]);
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
            .expect("append");
        assert_eq!(s.entries(1, 4, 0).expect("entries").len(), 1);
        assert_eq!(s.entries(1, 4, 48).expect("entries").len(), 2);
        assert_eq!(s.entries(1, 4, u64::MAX).expect("entries").len(), 3);
        assert_eq!(s.entries(1, 5, u64::MAX), Err(StorageError::Unavailable));
        assert_eq!(s.entries(0, 2, u64::MAX), Err(StorageError::Compacted));
    }
}
