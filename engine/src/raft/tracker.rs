//! All of a leader's (or candidate's) per-peer state: progress, votes, and the configuration
//! they are counted in.

use std::collections::{BTreeMap, BTreeSet};

use super::membership::Membership;
use super::progress::Progress;
use super::quorum::{JointConfig, MajorityConfig, VoteResult};

#[derive(Clone, Debug, Default)]
pub struct ProgressTracker {
    pub config: JointConfig,
    pub learners: BTreeSet<u64>,
    progress: BTreeMap<u64, Progress>,
    votes: BTreeMap<u64, bool>,
    max_inflight: usize,
}

impl ProgressTracker {
    pub fn new(membership: &Membership, max_inflight: usize) -> Self {
        let mut tracker = Self {
            max_inflight,
            ..Self::default()
        };
        tracker.set_membership(membership, 1);
        tracker
    }

    /// Counts in `membership` from now on: new members start probing at `next`, members that
    /// stay keep their progress, removed ones are forgotten.
    pub fn set_membership(&mut self, membership: &Membership, next: u64) {
        self.config = JointConfig {
            incoming: MajorityConfig::new(membership.voters.iter().copied()),
            outgoing: MajorityConfig::new(membership.voters_outgoing.iter().copied()),
        };
        // Demoted voters keep voting in the outgoing half until the joint config is left.
        self.learners = membership
            .learners
            .union(&membership.learners_next)
            .copied()
            .collect();
        let members: BTreeSet<u64> = self.config.ids().union(&self.learners).copied().collect();
        self.progress.retain(|id, _| members.contains(id));
        for id in members {
            // New members count as active until the next check-quorum round has heard them.
            self.progress.entry(id).or_insert_with(|| {
                let mut pr = Progress::new(next, self.max_inflight);
                pr.recent_active = true;
                pr
            });
        }
        self.votes.retain(|id, _| self.config.contains(*id));
    }

    /// Fresh progress for every member: next = `next`, matched 0 except `self_id`'s.
    pub fn reset_progress(&mut self, next: u64, self_id: u64, self_matched: u64) {
        self.progress.clear();
        for id in self.config.ids() {
            self.progress
                .insert(id, Progress::new(next, self.max_inflight));
        }
        for &id in &self.learners {
            self.progress
                .insert(id, Progress::new(next, self.max_inflight));
        }
        if let Some(pr) = self.progress.get_mut(&self_id) {
            pr.matched = self_matched;
            pr.recent_active = true;
        }
    }

    pub fn is_voter(&self, id: u64) -> bool {
        self.config.contains(id)
    }

    pub fn is_member(&self, id: u64) -> bool {
        self.progress.contains_key(&id)
    }

    pub fn get(&self, id: u64) -> Option<&Progress> {
        self.progress.get(&id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Progress> {
        self.progress.get_mut(&id)
    }

    /// Ids of every member (voters and learners).
    pub fn member_ids(&self) -> Vec<u64> {
        self.progress.keys().copied().collect()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&u64, &mut Progress)> {
        self.progress.iter_mut()
    }

    /// The largest index replicated on a quorum of voters.
    pub fn committed_index(&self) -> u64 {
        self.config
            .committed_index(|id| self.progress.get(&id).map_or(0, |p| p.matched))
    }

    /// The latest heartbeat round a quorum of voters acknowledged.
    pub fn quorum_read_round(&self) -> u64 {
        self.config
            .committed_index(|id| self.progress.get(&id).map_or(0, |p| p.read_round_acked))
    }

    /// Whether a quorum was heard from since the last reset; resets the flags except `self_id`'s.
    pub fn quorum_active_and_reset(&mut self, self_id: u64) -> bool {
        let active = self.config.vote_result(|id| {
            Some(id == self_id || self.progress.get(&id).is_some_and(|p| p.recent_active))
        }) == VoteResult::Won;
        for (&id, pr) in self.progress.iter_mut() {
            pr.recent_active = id == self_id;
        }
        active
    }

    pub fn reset_votes(&mut self) {
        self.votes.clear();
    }

    /// Records `id`'s answer (the first answer of a term counts) and returns the tally.
    pub fn record_vote(&mut self, id: u64, granted: bool) -> VoteResult {
        if self.config.contains(id) {
            self.votes.entry(id).or_insert(granted);
        }
        self.tally_votes()
    }

    pub fn tally_votes(&self) -> VoteResult {
        self.config.vote_result(|id| self.votes.get(&id).copied())
    }
}
