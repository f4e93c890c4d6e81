//! The replica's view of its log: durable entries read through [`LogStore`] plus the `unstable`
//! suffix that was appended in memory and not yet reported persisted (etcd raft's raftLog and
//! unstable, written anew).
//!
//! Index invariants (checked by `validate` in debug builds):
//! `first_index - 1 <= applied <= min(committed, persisted)` and
//! `persisted = unstable_offset - 1 <= last_index`.

use flotilla_transport::raft::{Entry, SnapshotMetadata};

use super::error::StorageError;
use super::storage::{limit_size, LogStore};

/// What an append from the leader did to the follower's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The log matches the leader's up to `last_index`.
    Matched { last_index: u64 },
    /// The consistency check failed: no entry at the previous index with the previous term.
    Rejected,
    /// The message would overwrite a committed entry; it is dropped (a broken peer).
    ConflictsWithCommitted { index: u64 },
}

pub struct RaftLog<S> {
    pub(crate) store: S,
    /// Entries at and after `unstable_offset`, not yet persisted.
    unstable: Vec<Entry>,
    unstable_offset: u64,
    /// Entries up to here have been handed to the caller to persist (in a Ready not yet advanced).
    pub(crate) in_progress: u64,
    pub(crate) committed: u64,
    /// Highest index handed to the caller for apply.
    pub(crate) applying: u64,
    pub(crate) applied: u64,
    /// A snapshot received from the leader and not yet installed by the caller: the log starts
    /// after it, whatever the store still holds below.
    snapshot: Option<SnapshotMetadata>,
    snapshot_in_progress: bool,
}

impl<S: LogStore> RaftLog<S> {
    /// # Errors
    /// What the store fails with when read.
    pub fn new(store: S, committed: u64, applied: u64) -> Result<Self, StorageError> {
        let first = store.first_index()?;
        let last = store.last_index()?;
        // A restart may find the commit index behind the snapshot (the snapshot was installed
        // after the last hard state write); the snapshot itself is committed.
        let snapshot_index = first.saturating_sub(1);
        // What the caller applied was committed, even if the commit index it last wrote (not
        // synced on its own) is older: never hand those entries out twice.
        let committed = committed.max(snapshot_index).max(applied.min(last));
        let applied = applied.max(snapshot_index).min(committed);
        Ok(Self {
            store,
            unstable: Vec::new(),
            unstable_offset: last + 1,
            in_progress: last,
            committed,
            applying: applied,
            applied,
            snapshot: None,
            snapshot_in_progress: false,
        })
    }

    pub fn last_index(&self) -> Result<u64, StorageError> {
        if self.unstable.is_empty() && self.snapshot.is_none() {
            self.store.last_index()
        } else {
            Ok(self.unstable_offset + self.unstable.len() as u64 - 1)
        }
    }

    /// Replaces the log with a snapshot from the leader (thesis 5.3): everything up to its index
    /// is committed and will be installed by the caller; entries after it come from the leader.
    pub fn restore(&mut self, snapshot: SnapshotMetadata) {
        assert!(
            snapshot.index > self.committed,
            "restoring snapshot {} at or below commit {}",
            snapshot.index,
            self.committed
        );
        self.unstable.clear();
        self.unstable_offset = snapshot.index + 1;
        self.in_progress = snapshot.index;
        self.committed = snapshot.index;
        self.applying = snapshot.index;
        self.snapshot = Some(snapshot);
        self.snapshot_in_progress = false;
    }

    /// The snapshot to hand to the caller for installing, once.
    pub fn snapshot_to_install(&mut self) -> Option<SnapshotMetadata> {
        if self.snapshot_in_progress {
            return None;
        }
        let s = self.snapshot.clone()?;
        self.snapshot_in_progress = true;
        Some(s)
    }

    /// The snapshot restored from the leader and not installed yet.
    pub fn pending_snapshot(&self) -> Option<&SnapshotMetadata> {
        self.snapshot.as_ref()
    }

    pub fn has_pending_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    pub fn has_snapshot_to_install(&self) -> bool {
        self.snapshot.is_some() && !self.snapshot_in_progress
    }

    /// The caller installed the snapshot at `index`: the store now answers for it.
    pub fn snapshot_installed(&mut self, index: u64) {
        if self.snapshot.as_ref().is_some_and(|s| s.index == index) {
            self.snapshot = None;
            self.snapshot_in_progress = false;
            self.applied = self.applied.max(index);
            self.applying = self.applying.max(index);
        }
    }

    /// The last index known durable.
    pub fn persisted(&self) -> u64 {
        self.unstable_offset - 1
    }

    /// The term of entry `index`.
    ///
    /// # Errors
    /// `Compacted` / `Unavailable` outside the log, `Io` when the store fails.
    pub fn term(&self, index: u64) -> Result<u64, StorageError> {
        if index >= self.unstable_offset {
            let i = (index - self.unstable_offset) as usize;
            return self
                .unstable
                .get(i)
                .map(|e| e.term)
                .ok_or(StorageError::Unavailable);
        }
        if let Some(s) = &self.snapshot {
            return if index == s.index {
                Ok(s.term)
            } else {
                Err(StorageError::Compacted)
            };
        }
        self.store.term(index)
    }

    pub fn last_term(&self) -> Result<u64, StorageError> {
        self.term(self.last_index()?)
    }

    /// Whether the log contains an entry at `index` with `term`.
    pub fn match_term(&self, index: u64, term: u64) -> Result<bool, StorageError> {
        match self.term(index) {
            Ok(t) => Ok(t == term),
            Err(StorageError::Compacted | StorageError::Unavailable) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Raft paper 5.4.1: a candidate's log is at least as up to date as ours.
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> Result<bool, StorageError> {
        let our_term = self.last_term()?;
        Ok(last_term > our_term || (last_term == our_term && last_index >= self.last_index()?))
    }

    /// Appends entries the leader created; returns the new last index.
    pub fn append(&mut self, entries: &[Entry]) -> Result<u64, StorageError> {
        let Some(first) = entries.first() else {
            return self.last_index();
        };
        debug_assert_eq!(
            first.index,
            self.last_index()? + 1,
            "leader appends at the end"
        );
        self.truncate_and_append(entries)?;
        self.last_index()
    }

    /// Replaces everything at and after `entries[0].index` with `entries`.
    fn truncate_and_append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let after = first.index;
        assert!(
            after > self.committed,
            "truncating committed entries: appending at {after}, committed {}",
            self.committed
        );
        let end = self.unstable_offset + self.unstable.len() as u64;
        if after == end {
            self.unstable.extend_from_slice(entries);
        } else if after <= self.unstable_offset {
            // The conflict is in (or right at the start of) the persisted part: the caller
            // overwrites the stored suffix when it persists these.
            self.unstable_offset = after;
            self.unstable.clear();
            self.unstable.extend_from_slice(entries);
            self.in_progress = self.in_progress.min(after - 1);
        } else {
            self.unstable
                .truncate((after - self.unstable_offset) as usize);
            self.unstable.extend_from_slice(entries);
            self.in_progress = self.in_progress.min(after - 1);
        }
        Ok(())
    }

    /// The follower side of AppendEntries (paper 5.3).
    ///
    /// Entries already present with the same term are skipped (a duplicated or reordered append
    /// must not truncate entries that a later append added).
    pub fn maybe_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        leader_commit: u64,
        entries: &[Entry],
    ) -> Result<AppendOutcome, StorageError> {
        if !self.match_term(prev_index, prev_term)? {
            return Ok(AppendOutcome::Rejected);
        }
        let last_new = prev_index + entries.len() as u64;
        let mut conflict = None;
        for (i, entry) in entries.iter().enumerate() {
            if !self.match_term(entry.index, entry.term)? {
                conflict = Some(i);
                break;
            }
        }
        if let Some(i) = conflict {
            let at = entries[i].index;
            if at <= self.committed {
                // Only a leader that broke Raft could send this; the caller logs and drops it.
                return Ok(AppendOutcome::ConflictsWithCommitted { index: at });
            }
            self.truncate_and_append(&entries[i..])?;
        }
        self.commit_to(leader_commit.min(last_new));
        Ok(AppendOutcome::Matched {
            last_index: last_new,
        })
    }

    /// Moves the commit index forward (never back).
    pub fn commit_to(&mut self, index: u64) {
        if index > self.committed {
            self.committed = index;
        }
    }

    /// The largest index `<= index` whose term is `<= term`, with that term; the follower's
    /// rejection hint and the leader's next probe (etcd raft's findConflictByTerm).
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> Result<(u64, u64), StorageError> {
        let mut i = index;
        loop {
            match self.term(i) {
                Ok(t) if t > term => {
                    if i == 0 {
                        return Ok((0, 0));
                    }
                    i -= 1;
                }
                Ok(t) => return Ok((i, t)),
                Err(StorageError::Compacted | StorageError::Unavailable) => return Ok((i, 0)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Entries `low..high` cut at `max_size_bytes` (at least one).
    ///
    /// # Errors
    /// `Compacted` below the first index, `Unavailable` past the last, `Io` from the store.
    pub fn entries(
        &self,
        low: u64,
        high: u64,
        max_size_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if low >= high {
            return Ok(Vec::new());
        }
        if self.snapshot.is_some() && low < self.unstable_offset {
            return Err(StorageError::Compacted);
        }
        let mut out = if low < self.unstable_offset {
            self.store
                .entries(low, high.min(self.unstable_offset), max_size_bytes)?
        } else {
            Vec::new()
        };
        if high > self.unstable_offset
            && (out.is_empty() || out.last().map(|e| e.index + 1) == Some(self.unstable_offset))
        {
            let from = low.max(self.unstable_offset);
            let start = (from - self.unstable_offset) as usize;
            let end = (high - self.unstable_offset) as usize;
            let slice = self
                .unstable
                .get(start..end)
                .ok_or(StorageError::Unavailable)?;
            out.extend_from_slice(slice);
        }
        limit_size(&mut out, max_size_bytes);
        Ok(out)
    }

    /// Unstable entries not yet handed out for persisting.
    pub fn entries_to_persist(&self) -> &[Entry] {
        let from = (self.in_progress + 1).max(self.unstable_offset);
        let start = (from - self.unstable_offset) as usize;
        self.unstable.get(start..).unwrap_or(&[])
    }

    pub fn has_entries_to_persist(&self) -> bool {
        !self.entries_to_persist().is_empty()
    }

    /// Marks everything up to the last entry to persist as handed out.
    pub fn mark_in_progress(&mut self, index: u64) {
        self.in_progress = self.in_progress.max(index);
    }

    /// The caller reports entries up to `(index, term)` durable. Ignored if the log changed at
    /// that index since (a newer leader's entries replaced them before the write finished).
    pub fn stable_to(&mut self, index: u64, term: u64) {
        if index < self.unstable_offset {
            return;
        }
        let i = (index - self.unstable_offset) as usize;
        if self.unstable.get(i).map(|e| e.term) != Some(term) {
            return;
        }
        self.unstable.drain(..=i);
        self.unstable_offset = index + 1;
    }

    /// The last index that may be handed out for apply: committed and durable here.
    pub fn apply_limit(&self) -> u64 {
        self.committed.min(self.persisted())
    }

    pub fn has_next_committed_entries(&self) -> bool {
        self.apply_limit() > self.applying
    }

    /// Committed entries not yet handed out for apply, up to `max_size_bytes` (at least one).
    pub fn next_committed_entries(&self, max_size_bytes: u64) -> Result<Vec<Entry>, StorageError> {
        let high = self.apply_limit() + 1;
        let low = self.applying + 1;
        self.entries(low, high, max_size_bytes)
    }

    pub fn applied_to(&mut self, index: u64) {
        debug_assert!(
            index <= self.committed,
            "applied {index} past commit {}",
            self.committed
        );
        if index > self.applied {
            self.applied = index;
        }
        self.applying = self.applying.max(index);
    }

    /// Checks the index invariants; debug builds call it after every step.
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    pub fn validate(&self) -> Result<(), String> {
        // A failing store is reported by the call that read it, not as a broken invariant.
        let Ok(last) = self.last_index() else {
            return Ok(());
        };
        if self.persisted() > last {
            return Err(format!("persisted {} past last {last}", self.persisted()));
        }
        if self.applied > self.committed {
            return Err(format!(
                "applied {} past committed {}",
                self.applied, self.committed
            ));
        }
        if self.applying < self.applied {
            return Err(format!(
                "applying {} behind applied {}",
                self.applying, self.applied
            ));
        }
        Ok(())
    }
}
