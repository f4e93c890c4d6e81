//! The core's side of membership changes (Raft thesis chapter 4) and of log compaction with
//! snapshots (thesis chapter 5): proposing a change, applying it when it commits, leaving a
//! joint configuration, and sending a follower the snapshot it needs.

use bytes::Bytes;
use flotilla_transport::raft::{ConfChange, ConfState, Entry, EntryType, MessageType};
use prost::Message as _;
use tracing::{debug, warn};

use super::core::{Raft, Role, NONE};
use super::error::{ConfChangeError, StorageError};
use super::progress::ProgressState;
use super::storage::{entry_size, LogStore};

impl<S: LogStore> Raft<S> {
    /// Whether this leader should propose leaving its joint configuration now. (Proposals of
    /// changes check `applied`; this checks `applying`: the leave entry may be appended as soon
    /// as the entering one is handed out, which is when it took effect.)
    pub(crate) fn wants_to_leave_joint(&self) -> bool {
        self.role == Role::Leader
            && self.membership.is_joint()
            && self.lead_transferee.is_none()
            && self.log.applying >= self.pending_conf_index
    }

    /// The entries `to` needs were compacted: send the latest snapshot's metadata (the data goes
    /// out of band) and wait for it to be installed or reported.
    pub(crate) fn send_snapshot(&mut self, to: u64) -> Result<bool, StorageError> {
        let snapshot = self.log.store.snapshot_metadata()?;
        if snapshot.index == 0 {
            return Ok(false);
        }
        debug!(
            id = self.id,
            to,
            index = snapshot.index,
            "follower behind the compacted log: sending a snapshot"
        );
        let Some(pr) = self.tracker.get_mut(to) else {
            return Ok(false);
        };
        pr.become_snapshot(snapshot.index);
        let mut m = self.new_message(to, MessageType::Snapshot);
        m.snapshot = Some(snapshot);
        self.msgs.push(m);
        Ok(true)
    }

    /// The caller reports how sending the snapshot to `to` went. Either way the leader probes
    /// again (after the snapshot if it got there); a failure simply retries later.
    pub(crate) fn report_snapshot(&mut self, to: u64, success: bool) {
        if self.role != Role::Leader {
            return;
        }
        let Some(pr) = self.tracker.get_mut(to) else {
            return;
        };
        if pr.state == ProgressState::Snapshot {
            if !success {
                pr.pending_snapshot = 0;
            }
            pr.become_probe();
            // Wait for the next heartbeat answer before probing, as after any lost append.
            pr.probe_sent = true;
        }
    }

    /// Proposes a membership change (thesis chapter 4); returns the entry's term and index.
    ///
    /// It is checked against the configuration in force, which is also the one it will apply
    /// to: only one change is pending at a time.
    pub(crate) fn propose_conf_change(
        &mut self,
        cc: &ConfChange,
    ) -> Result<Result<(u64, u64), ConfChangeError>, StorageError> {
        if self.role != Role::Leader {
            return Ok(Err(ConfChangeError::NotLeader {
                leader: self.leader_hint(),
            }));
        }
        if let Some(to) = self.lead_transferee {
            return Ok(Err(ConfChangeError::TransferInProgress { to }));
        }
        if self.pending_conf_index > self.log.applied {
            return Ok(Err(ConfChangeError::Pending {
                index: self.pending_conf_index,
            }));
        }
        if let Err(e) = self.membership.apply(cc) {
            return Ok(Err(e));
        }
        let index = self.append_conf_change(cc)?;
        Ok(Ok((self.term, index)))
    }

    fn append_conf_change(&mut self, cc: &ConfChange) -> Result<u64, StorageError> {
        let index = self.log.last_index()? + 1;
        let entry = Entry {
            term: self.term,
            index,
            entry_type: EntryType::ConfChange as i32,
            data: Bytes::from(cc.encode_to_vec()),
        };
        self.uncommitted_size += entry_size(&entry);
        self.log.append(&[entry])?;
        self.pending_conf_index = index;
        self.broadcast_append(false)?;
        Ok(index)
    }

    /// A membership change entry was committed and is handed out for apply: it takes effect
    /// now, on every replica alike. (The dissertation, 4.1, switches on append; like etcd we
    /// switch on commit, which is as safe with one change pending at a time and joint
    /// consensus for the rest, and never has to roll a configuration back on truncation.)
    /// Returns the new configuration, or `None` if the entry is not a valid change of the
    /// current one (only a broken leader writes such an entry; every replica skips it alike).
    pub(crate) fn apply_conf_change(
        &mut self,
        entry: &Entry,
    ) -> Result<Option<ConfState>, StorageError> {
        let cc = match ConfChange::decode(entry.data.as_ref()) {
            Ok(cc) => cc,
            Err(e) => {
                warn!(id = self.id, index = entry.index, error = %e, "undecodable membership change skipped");
                return Ok(None);
            }
        };
        let next = match self.membership.apply(&cc) {
            Ok(m) => m,
            Err(e) => {
                warn!(id = self.id, index = entry.index, error = %e, "invalid membership change skipped");
                return Ok(None);
            }
        };
        let last = self.log.last_index()?;
        self.membership = next;
        self.tracker.set_membership(&self.membership, last + 1);
        debug!(id = self.id, index = entry.index, membership = ?self.membership, "membership changed");
        if self
            .lead_transferee
            .is_some_and(|to| !self.membership.is_voter(to))
        {
            self.lead_transferee = None;
        }
        if self.role == Role::Leader {
            if !self.membership.is_voter(self.id) {
                // Thesis 4.2.2: a leader that is no longer part of the configuration steps
                // down once the change committed.
                debug!(
                    id = self.id,
                    "removed from the configuration: stepping down"
                );
                self.become_follower(self.term, NONE);
            } else if self.maybe_commit()? {
                // A smaller quorum may already hold more.
                self.broadcast_append(true)?;
            }
        }
        Ok(Some(self.membership.to_conf_state()))
    }

    /// A leader leaves a joint configuration as soon as everything up to its last membership
    /// entry is handed out for apply (thesis 4.3) — including a joint configuration it
    /// inherited from its predecessor, once its own first entry is applied.
    pub(crate) fn maybe_leave_joint(&mut self) -> Result<(), StorageError> {
        if self.wants_to_leave_joint() {
            debug!(id = self.id, "leaving the joint configuration");
            self.append_conf_change(&ConfChange::default())?;
        }
        Ok(())
    }
}
