//! Quorum arithmetic: majority configurations and joint configurations (Raft thesis 4.3), so
//! that membership changes slot in without touching the callers.

use std::collections::BTreeSet;

/// The outcome of an election tally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Won,
    Lost,
    Pending,
}

/// A simple majority over a set of voters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MajorityConfig {
    voters: BTreeSet<u64>,
}

impl MajorityConfig {
    pub fn new(voters: impl IntoIterator<Item = u64>) -> Self {
        Self {
            voters: voters.into_iter().collect(),
        }
    }

    pub fn voters(&self) -> &BTreeSet<u64> {
        &self.voters
    }

    pub fn contains(&self, id: u64) -> bool {
        self.voters.contains(&id)
    }

    /// The largest index that a majority has acknowledged, given each voter's acknowledged index.
    /// An empty configuration returns `u64::MAX` so that it never limits a joint configuration.
    pub fn committed_index(&self, acked: impl Fn(u64) -> u64) -> u64 {
        if self.voters.is_empty() {
            return u64::MAX;
        }
        // Few voters (3-7): a small sort beats anything clever.
        let mut indexes: Vec<u64> = self.voters.iter().map(|&id| acked(id)).collect();
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        indexes[self.voters.len() / 2]
    }

    pub fn vote_result(&self, vote: impl Fn(u64) -> Option<bool>) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Won;
        }
        let (mut granted, mut missing) = (0, 0);
        for &id in &self.voters {
            match vote(id) {
                Some(true) => granted += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        let quorum = self.voters.len() / 2 + 1;
        if granted >= quorum {
            VoteResult::Won
        } else if granted + missing >= quorum {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }
}

/// The configuration decisions are made in: the incoming majority and, during a membership
/// change, the outgoing one too (both must agree; Raft thesis 4.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JointConfig {
    pub incoming: MajorityConfig,
    pub outgoing: MajorityConfig,
}

impl JointConfig {
    pub fn contains(&self, id: u64) -> bool {
        self.incoming.contains(id) || self.outgoing.contains(id)
    }

    /// Every voter of either half, each once.
    pub fn ids(&self) -> BTreeSet<u64> {
        self.incoming
            .voters()
            .union(self.outgoing.voters())
            .copied()
            .collect()
    }

    pub fn committed_index(&self, acked: impl Fn(u64) -> u64) -> u64 {
        self.incoming
            .committed_index(&acked)
            .min(self.outgoing.committed_index(&acked))
    }

    pub fn vote_result(&self, vote: impl Fn(u64) -> Option<bool>) -> VoteResult {
        match (
            self.incoming.vote_result(&vote),
            self.outgoing.vote_result(&vote),
        ) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_commit_index_is_the_median_from_the_top() {
        let c = MajorityConfig::new([1, 2, 3]);
        let acked = |id| [0, 5, 3, 9][id as usize];
        assert_eq!(c.committed_index(acked), 5);
        let c = MajorityConfig::new([1, 2, 3, 4]);
        let acked = |id| [0, 5, 3, 9, 1][id as usize];
        assert_eq!(c.committed_index(acked), 3);
        assert_eq!(MajorityConfig::new([7]).committed_index(|_| 4), 4);
    }

    #[test]
    fn votes_need_a_majority_and_lose_when_it_is_out_of_reach() {
        let c = MajorityConfig::new([1, 2, 3, 4, 5]);
        assert_eq!(
            c.vote_result(|id| (id <= 3).then_some(true)),
            VoteResult::Won
        );
        assert_eq!(
            c.vote_result(|id| (id <= 2).then_some(true)),
            VoteResult::Pending
        );
        assert_eq!(c.vote_result(|id| Some(id <= 2)), VoteResult::Lost);
    }

    #[test]
    fn joint_config_needs_both_majorities() {
        let j = JointConfig {
            incoming: MajorityConfig::new([1, 2, 3]),
            outgoing: MajorityConfig::new([3, 4, 5]),
        };
        let acked = |id| [0, 9, 9, 1, 1, 1][id as usize];
        assert_eq!(j.committed_index(acked), 1);
        assert_eq!(j.vote_result(|id| Some(id <= 2)), VoteResult::Lost);
        assert_eq!(
            j.vote_result(|id| Some((2..=4).contains(&id))),
            VoteResult::Won
        );
        assert_eq!(j.ids().len(), 5);
    }
}
