//! Message handling: the term rules every message obeys (paper 5.1), then what each role does
//! with each message type.
//!
//! Input from peers is never trusted: a message that names an unknown peer, carries entries
//! that are not contiguous, or claims an index past the log is dropped with a reason
//! ([`StepError::Invalid`]), never a panic.

use flotilla_transport::raft::{Message, MessageType};
use tracing::{debug, warn};

use super::core::{CampaignKind, Raft, Role, MAX_TERM, NONE};
use super::error::StorageError;
use super::log::AppendOutcome;
use super::membership::Membership;
use super::progress::ProgressState;
use super::quorum::VoteResult;
use super::read_only::ReadState;
use super::storage::LogStore;

/// Why a step failed.
#[derive(Debug)]
pub(crate) enum StepError {
    /// The message was dropped; the reason says why.
    Invalid(String),
    /// The log store failed: fatal.
    Storage(StorageError),
}

impl From<StorageError> for StepError {
    fn from(e: StorageError) -> Self {
        StepError::Storage(e)
    }
}

fn invalid<T>(reason: impl Into<String>) -> Result<T, StepError> {
    Err(StepError::Invalid(reason.into()))
}

impl<S: LogStore> Raft<S> {
    pub(crate) fn step(&mut self, m: Message) -> Result<(), StepError> {
        let msg_type = match MessageType::try_from(m.msg_type) {
            Ok(MessageType::Unspecified) | Err(_) => {
                return invalid(format!("unknown message type {}", m.msg_type))
            }
            Ok(t) => t,
        };
        if m.to != self.id {
            return invalid(format!("addressed to {}, this is {}", m.to, self.id));
        }
        if m.from == NONE || m.from == self.id {
            return invalid(format!("bad sender {}", m.from));
        }
        if m.term == 0 {
            return invalid("term 0 from a peer");
        }
        if m.term >= MAX_TERM {
            // No honest group gets there; accepting it would leave us unable to campaign.
            return invalid(format!("term {} beyond the last usable term", m.term));
        }
        let is_vote_request = matches!(
            msg_type,
            MessageType::RequestVote | MessageType::RequestPreVote
        );
        if m.term > self.term {
            if is_vote_request && !m.leader_transfer && self.in_lease() {
                // Thesis 9.6: we heard from a leader within the election timeout, so this
                // candidate is disruptive (or the leader's lease still runs). Not even the term
                // moves.
                debug!(
                    id = self.id,
                    from = m.from,
                    term = m.term,
                    "vote request ignored: in lease"
                );
                return Ok(());
            }
            match msg_type {
                // A pre-vote never changes terms; a granted pre-vote answer carries the
                // future term we asked for.
                MessageType::RequestPreVote => {}
                MessageType::RequestPreVoteResponse if !m.reject => {}
                _ => {
                    let leader = if matches!(
                        msg_type,
                        MessageType::Append | MessageType::Heartbeat | MessageType::Snapshot
                    ) {
                        m.from
                    } else {
                        NONE
                    };
                    self.become_follower(m.term, leader);
                }
            }
        } else if m.term < self.term {
            if matches!(msg_type, MessageType::Append | MessageType::Heartbeat)
                && (self.config.check_quorum || self.config.pre_vote)
            {
                // A deposed leader that no longer hears higher terms (pre-vote keeps them from
                // reaching it) would never step down: tell it our term.
                let m = self.new_message(m.from, MessageType::AppendResponse);
                self.msgs.push(m);
            } else if msg_type == MessageType::RequestPreVote {
                let mut r = self.new_message(m.from, MessageType::RequestPreVoteResponse);
                r.reject = true;
                self.msgs.push(r);
            }
            return Ok(());
        }

        if is_vote_request {
            return self.handle_vote_request(m, msg_type == MessageType::RequestPreVote);
        }
        match self.role {
            Role::Leader => self.step_leader(m, msg_type),
            Role::Candidate | Role::PreCandidate => self.step_candidate(m, msg_type),
            Role::Follower => self.step_follower(m, msg_type),
        }
    }

    /// Paper 5.2 and 5.4.1: one vote per term, only for a log at least as up to date as ours.
    fn handle_vote_request(&mut self, m: Message, pre_vote: bool) -> Result<(), StepError> {
        // The lease promise binds in our own term too: another message may have moved us to
        // the candidate's term without a leader while a leader's lease still counts on us.
        let promised = !m.leader_transfer && self.in_lease() && self.vote != m.from;
        let can_vote = !promised
            && (self.vote == m.from
                || (self.vote == NONE && self.leader_id == NONE)
                || (pre_vote && m.term > self.term));
        let up_to_date = self.log.is_up_to_date(m.index, m.log_term)?;
        let response_type = if pre_vote {
            MessageType::RequestPreVoteResponse
        } else {
            MessageType::RequestVoteResponse
        };
        let mut r = self.new_message(m.from, response_type);
        if can_vote && up_to_date {
            // A granted pre-vote answers in the term it was asked for; a real vote is in our
            // (equal) term.
            r.term = m.term;
            if !pre_vote {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
            debug!(
                id = self.id,
                to = m.from,
                term = m.term,
                pre_vote,
                "vote granted"
            );
        } else {
            r.reject = true;
            debug!(
                id = self.id,
                to = m.from,
                term = m.term,
                pre_vote,
                can_vote,
                up_to_date,
                "vote rejected"
            );
        }
        self.msgs.push(r);
        Ok(())
    }

    fn step_follower(&mut self, m: Message, msg_type: MessageType) -> Result<(), StepError> {
        match msg_type {
            MessageType::Append | MessageType::Heartbeat => {
                self.election_elapsed = 0;
                self.leader_contact_elapsed = 0;
                self.leader_id = m.from;
                if msg_type == MessageType::Append {
                    self.handle_append(m)
                } else {
                    self.handle_heartbeat(m)
                }
            }
            MessageType::TimeoutNow => {
                if m.from != self.leader_id {
                    return invalid(format!("TimeoutNow from {} who is not the leader", m.from));
                }
                debug!(
                    id = self.id,
                    term = self.term,
                    "leader asked us to take over"
                );
                Ok(self.campaign(CampaignKind::Transfer)?)
            }
            MessageType::ReadIndexResponse => {
                if m.from != self.leader_id {
                    return invalid("read index response from a non-leader");
                }
                self.read_states.push(ReadState {
                    index: m.index,
                    context: m.context,
                });
                Ok(())
            }
            MessageType::Snapshot => {
                self.election_elapsed = 0;
                self.leader_contact_elapsed = 0;
                self.leader_id = m.from;
                self.handle_snapshot(m)
            }
            _ => Ok(()),
        }
    }

    fn step_candidate(&mut self, m: Message, msg_type: MessageType) -> Result<(), StepError> {
        match msg_type {
            MessageType::Append | MessageType::Heartbeat | MessageType::Snapshot => {
                // Paper 5.2: a leader of our term exists; yield to it.
                self.become_follower(m.term, m.from);
                self.step_follower(m, msg_type)
            }
            MessageType::RequestVoteResponse | MessageType::RequestPreVoteResponse => {
                let expected = if self.role == Role::PreCandidate {
                    MessageType::RequestPreVoteResponse
                } else {
                    MessageType::RequestVoteResponse
                };
                if msg_type != expected {
                    return Ok(());
                }
                match self.tracker.record_vote(m.from, !m.reject) {
                    VoteResult::Won => {
                        if self.role == Role::PreCandidate {
                            self.campaign(CampaignKind::Election)?;
                        } else {
                            self.become_leader()?;
                        }
                    }
                    VoteResult::Lost => self.become_follower(self.term, NONE),
                    VoteResult::Pending => {}
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn step_leader(&mut self, m: Message, msg_type: MessageType) -> Result<(), StepError> {
        if !self.tracker.is_member(m.from) {
            return invalid(format!("message from {} which is not a member", m.from));
        }
        match msg_type {
            MessageType::AppendResponse => self.handle_append_response(m),
            MessageType::HeartbeatResponse => self.handle_heartbeat_response(m),
            MessageType::ReadIndex => match self.leader_read(m.context, m.from)? {
                Ok(()) => Ok(()),
                Err(e) => invalid(format!("read index from {}: {e}", m.from)),
            },
            MessageType::Append | MessageType::Heartbeat | MessageType::Snapshot => {
                // Election safety says this cannot happen; a peer that sends it is broken.
                warn!(
                    id = self.id,
                    from = m.from,
                    term = m.term,
                    "another leader in our term"
                );
                invalid("append from another leader of the same term")
            }
            _ => Ok(()),
        }
    }

    /// The follower side of AppendEntries (paper 5.3).
    fn handle_append(&mut self, m: Message) -> Result<(), StepError> {
        validate_append(&m)?;
        let mut r = self.new_message(m.from, MessageType::AppendResponse);
        if m.index < self.log.committed {
            // Everything up to our commit index matches the leader already.
            r.index = self.log.committed;
            self.msgs.push(r);
            return Ok(());
        }
        match self
            .log
            .maybe_append(m.index, m.log_term, m.commit, &m.entries)?
        {
            AppendOutcome::Matched { last_index } => {
                r.index = last_index;
            }
            AppendOutcome::Rejected => {
                // Fast backtracking: point the leader at the last entry that could match.
                let probe = m.index.min(self.log.last_index()?);
                let (hint_index, hint_term) = self.log.find_conflict_by_term(probe, m.log_term)?;
                r.reject = true;
                r.index = m.index;
                r.reject_hint = hint_index;
                r.reject_hint_term = hint_term;
            }
            AppendOutcome::ConflictsWithCommitted { index } => {
                return invalid(format!(
                    "append from {} would overwrite committed entry {index}",
                    m.from
                ));
            }
        }
        self.msgs.push(r);
        Ok(())
    }

    /// A leader sent a snapshot because our log is behind its compacted prefix (thesis 5.3).
    /// Only its metadata travels here; the caller fetches the data and installs both from
    /// `Ready::snapshot`. The acknowledgement waits for that (it is a persisted message).
    fn handle_snapshot(&mut self, m: Message) -> Result<(), StepError> {
        let Some(snapshot) = m.snapshot else {
            return invalid("snapshot message without metadata");
        };
        let Some(conf_state) = snapshot.conf_state.clone() else {
            return invalid("snapshot without a configuration");
        };
        if conf_state.voters.is_empty() {
            return invalid("snapshot whose configuration has no voter");
        }
        if snapshot.term > m.term || snapshot.index == 0 || snapshot.index >= MAX_TERM {
            return invalid(format!(
                "snapshot at index {} term {} from a leader of term {}",
                snapshot.index, snapshot.term, m.term
            ));
        }
        let mut r = self.new_message(m.from, MessageType::AppendResponse);
        if snapshot.index <= self.log.committed {
            // Stale: we hold everything it covers already (never go back below the commit).
            debug!(
                id = self.id,
                index = snapshot.index,
                committed = self.log.committed,
                "stale snapshot ignored"
            );
            r.index = self.log.committed;
        } else if self.log.match_term(snapshot.index, snapshot.term)? {
            // Our log holds the snapshot's last entry: everything up to it is committed.
            self.log.commit_to(snapshot.index);
            r.index = snapshot.index;
        } else {
            debug!(
                id = self.id,
                index = snapshot.index,
                term = snapshot.term,
                "restoring snapshot"
            );
            let index = snapshot.index;
            self.log.restore(snapshot);
            self.membership = Membership::from_conf_state(&conf_state);
            let last = self.log.last_index()?;
            self.tracker.set_membership(&self.membership, last + 1);
            r.index = index;
        }
        self.msgs.push(r);
        Ok(())
    }

    fn handle_heartbeat(&mut self, m: Message) -> Result<(), StepError> {
        let last = self.log.last_index()?;
        self.log.commit_to(m.commit.min(last));
        let mut r = self.new_message(m.from, MessageType::HeartbeatResponse);
        r.read_round = m.read_round;
        self.msgs.push(r);
        Ok(())
    }

    fn handle_append_response(&mut self, m: Message) -> Result<(), StepError> {
        let last = self.log.last_index()?;
        let Some(pr) = self.tracker.get_mut(m.from) else {
            return Ok(());
        };
        pr.recent_active = true;
        if m.reject {
            let mut next_probe = m.reject_hint.min(last);
            if m.reject_hint_term > 0 {
                next_probe = self
                    .log
                    .find_conflict_by_term(next_probe, m.reject_hint_term)?
                    .0;
            }
            let Some(pr) = self.tracker.get_mut(m.from) else {
                return Ok(());
            };
            if pr.maybe_decr_to(m.index, next_probe) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.send_append(m.from, true)?;
            }
            return Ok(());
        }
        if m.index > last {
            return invalid(format!(
                "{} acknowledged index {} past our last {last}",
                m.from, m.index
            ));
        }
        let was_paused = pr.is_paused();
        if !pr.maybe_update(m.index) {
            return Ok(());
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Replicate => pr.inflights.free_le(m.index),
            // The follower installed the snapshot (or caught up otherwise): probe after it.
            ProgressState::Snapshot if pr.matched >= pr.pending_snapshot => pr.become_probe(),
            ProgressState::Snapshot => {}
        }
        if self.maybe_commit()? {
            self.broadcast_append(true)?;
        } else if was_paused {
            self.send_append(m.from, false)?;
        }
        while self.send_append(m.from, false)? {}
        if self.lead_transferee == Some(m.from)
            && self.tracker.get(m.from).is_some_and(|p| p.matched == last)
        {
            debug!(
                id = self.id,
                to = m.from,
                "transferee caught up: sending TimeoutNow"
            );
            self.send_timeout_now(m.from);
        }
        Ok(())
    }

    fn handle_heartbeat_response(&mut self, m: Message) -> Result<(), StepError> {
        let last = self.log.last_index()?;
        let Some(pr) = self.tracker.get_mut(m.from) else {
            return Ok(());
        };
        pr.recent_active = true;
        if m.read_round <= self.reads.round {
            pr.read_round_acked = pr.read_round_acked.max(m.read_round);
        }
        let lagging = pr.matched < last;
        if pr.heartbeat_answered(lagging) {
            debug!(
                id = self.id,
                to = m.from,
                "appends to follower look lost: probing"
            );
        }
        self.confirm_reads();
        if lagging {
            self.send_append(m.from, false)?;
        }
        Ok(())
    }
}

/// An append's entries must follow its previous index one by one, in non-decreasing terms no
/// newer than the message's term.
fn validate_append(m: &Message) -> Result<(), StepError> {
    let mut expected_index = m.index;
    let mut prev_term = m.log_term;
    if m.log_term > m.term {
        return invalid(format!(
            "previous term {} above message term {}",
            m.log_term, m.term
        ));
    }
    for e in &m.entries {
        expected_index = match expected_index.checked_add(1) {
            Some(i) => i,
            None => return invalid("entry index overflows"),
        };
        if e.index != expected_index {
            return invalid(format!(
                "entry {} where {expected_index} was expected",
                e.index
            ));
        }
        if e.term < prev_term || e.term > m.term {
            return invalid(format!(
                "entry {} has term {} out of order",
                e.index, e.term
            ));
        }
        prev_term = e.term;
    }
    Ok(())
}
