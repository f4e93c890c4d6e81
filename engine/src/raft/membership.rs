//! Membership and how a change moves it (Raft thesis chapter 4), as a pure function:
//! `Membership::apply(&ConfChange) -> Result<Membership, ConfChangeError>`.
//!
//! - A change that touches at most one voter (add, remove, promote or demote one; learners
//!   freely) is applied in one step: every majority of the old voters intersects every majority
//!   of the new ones, so two leaders cannot be elected by disjoint quorums (thesis 4.2).
//! - Anything else enters a joint configuration: decisions need a majority of the old voters
//!   *and* of the new ones (thesis 4.3), and an entry with no changes leaves it. A voter demoted
//!   to learner stays a voter of the outgoing half until then (`learners_next`).
//!
//! Which configuration is in force is the caller's business; the core applies a change when
//! its entry commits (see `Raft::apply_conf_change`).

use std::collections::BTreeSet;

use flotilla_transport::raft::{ConfChange, ConfChangeType, ConfState};

use super::error::ConfChangeError;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// The incoming (or only) voters.
    pub voters: BTreeSet<u64>,
    /// The outgoing voters; non-empty only in a joint configuration.
    pub voters_outgoing: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    /// Voters of the outgoing half that become learners when the joint configuration is left.
    pub learners_next: BTreeSet<u64>,
}

impl Membership {
    pub fn from_conf_state(cs: &ConfState) -> Self {
        Self {
            voters: cs.voters.iter().copied().collect(),
            voters_outgoing: cs.voters_outgoing.iter().copied().collect(),
            learners: cs.learners.iter().copied().collect(),
            learners_next: cs.learners_next.iter().copied().collect(),
        }
    }

    pub fn to_conf_state(&self) -> ConfState {
        ConfState {
            voters: self.voters.iter().copied().collect(),
            learners: self.learners.iter().copied().collect(),
            voters_outgoing: self.voters_outgoing.iter().copied().collect(),
            learners_next: self.learners_next.iter().copied().collect(),
            auto_leave: self.is_joint(),
        }
    }

    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Voters of either half.
    pub fn is_voter(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    pub fn is_member(&self, id: u64) -> bool {
        self.is_voter(id) || self.learners.contains(&id) || self.learners_next.contains(&id)
    }

    /// The membership after `cc`, or why `cc` cannot apply to this one.
    ///
    /// # Errors
    /// [`ConfChangeError`] for a change that names node 0 or a node twice, removes a node that
    /// is not a member, leaves no voter, enters a joint configuration from a joint one, or
    /// leaves a joint configuration that is not.
    pub fn apply(&self, cc: &ConfChange) -> Result<Membership, ConfChangeError> {
        if cc.changes.is_empty() {
            return self.leave_joint();
        }
        if self.is_joint() {
            return Err(ConfChangeError::AlreadyJoint);
        }
        let mut seen = BTreeSet::new();
        let mut voters = self.voters.clone();
        let mut learners = self.learners.clone();
        for change in &cc.changes {
            let id = change.node_id;
            if id == 0 {
                return Err(ConfChangeError::InvalidNode(0));
            }
            if !seen.insert(id) {
                return Err(ConfChangeError::DuplicateNode(id));
            }
            let change_type = ConfChangeType::try_from(change.change_type)
                .map_err(|_| ConfChangeError::UnknownChangeType(change.change_type))?;
            match change_type {
                ConfChangeType::AddVoter => {
                    learners.remove(&id);
                    voters.insert(id);
                }
                ConfChangeType::AddLearner => {
                    voters.remove(&id);
                    learners.insert(id);
                }
                ConfChangeType::Remove => {
                    if !voters.remove(&id) && !learners.remove(&id) {
                        return Err(ConfChangeError::UnknownNode(id));
                    }
                }
            }
        }
        if voters.is_empty() {
            return Err(ConfChangeError::RemovesLastVoter);
        }
        let changed_voters = voters.symmetric_difference(&self.voters).count();
        if changed_voters <= 1 {
            return Ok(Membership {
                voters,
                learners,
                ..Membership::default()
            });
        }
        // Joint: the old voters decide too until the configuration is left. A demoted voter
        // keeps voting in the outgoing half and becomes a learner on leaving.
        let learners_next: BTreeSet<u64> = learners.intersection(&self.voters).copied().collect();
        let learners = learners.difference(&learners_next).copied().collect();
        Ok(Membership {
            voters,
            voters_outgoing: self.voters.clone(),
            learners,
            learners_next,
        })
    }

    fn leave_joint(&self) -> Result<Membership, ConfChangeError> {
        if !self.is_joint() {
            return Err(ConfChangeError::NotJoint);
        }
        let mut learners = self.learners.clone();
        learners.extend(self.learners_next.iter().copied());
        Ok(Membership {
            voters: self.voters.clone(),
            learners,
            ..Membership::default()
        })
    }
}

/// Shorthands for building changes.
pub fn add_voter(node_id: u64) -> flotilla_transport::raft::ConfChangeSingle {
    single(ConfChangeType::AddVoter, node_id)
}

pub fn add_learner(node_id: u64) -> flotilla_transport::raft::ConfChangeSingle {
    single(ConfChangeType::AddLearner, node_id)
}

pub fn remove(node_id: u64) -> flotilla_transport::raft::ConfChangeSingle {
    single(ConfChangeType::Remove, node_id)
}

fn single(change_type: ConfChangeType, node_id: u64) -> flotilla_transport::raft::ConfChangeSingle {
    flotilla_transport::raft::ConfChangeSingle {
        change_type: change_type as i32,
        node_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(voters: &[u64], learners: &[u64]) -> Membership {
        Membership {
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            ..Membership::default()
        }
    }

    fn cc(changes: Vec<flotilla_transport::raft::ConfChangeSingle>) -> ConfChange {
        ConfChange {
            changes,
            ..ConfChange::default()
        }
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    /// Thesis 4.2: one voter at a time is a single step.
    #[test]
    fn one_voter_changes_apply_in_one_step() {
        let base = m(&[1, 2, 3], &[4]);
        let cases = [
            (cc(vec![add_voter(5)]), m(&[1, 2, 3, 5], &[4])),
            (cc(vec![add_voter(4)]), m(&[1, 2, 3, 4], &[])),
            (cc(vec![remove(3)]), m(&[1, 2], &[4])),
            (cc(vec![add_learner(3)]), m(&[1, 2], &[3, 4])),
            (cc(vec![add_learner(6), remove(4)]), m(&[1, 2, 3], &[6])),
        ];
        for (change, want) in cases {
            let got = base.apply(&change).expect("valid change");
            assert_eq!(got, want, "{change:?}");
            assert!(!got.is_joint());
        }
    }

    /// Thesis 4.3: more than one voter enters a joint configuration; an empty change leaves it.
    #[test]
    fn several_voters_go_through_a_joint_configuration() {
        let base = m(&[1, 2, 3], &[]);
        let joint = base
            .apply(&cc(vec![add_voter(4), remove(1)]))
            .expect("replace 1 by 4");
        assert!(joint.is_joint());
        assert_eq!(joint.voters, set(&[2, 3, 4]));
        assert_eq!(joint.voters_outgoing, set(&[1, 2, 3]));
        assert!(joint.to_conf_state().auto_leave);
        assert_eq!(
            joint.apply(&cc(vec![add_voter(5)])),
            Err(ConfChangeError::AlreadyJoint)
        );
        let left = joint.apply(&cc(vec![])).expect("leave");
        assert_eq!(left, m(&[2, 3, 4], &[]));
        assert_eq!(left.apply(&cc(vec![])), Err(ConfChangeError::NotJoint));
    }

    /// A demoted voter keeps voting in the outgoing half, then becomes a learner.
    #[test]
    fn demoted_voters_wait_in_learners_next() {
        let base = m(&[1, 2, 3], &[]);
        let joint = base
            .apply(&cc(vec![add_learner(1), add_learner(2), add_voter(4)]))
            .expect("demote two");
        assert_eq!(joint.voters, set(&[3, 4]));
        assert_eq!(joint.learners_next, set(&[1, 2]));
        assert!(joint.learners.is_empty());
        assert!(joint.is_voter(1), "still a voter of the outgoing half");
        let left = joint.apply(&cc(vec![])).expect("leave");
        assert_eq!(left, m(&[3, 4], &[1, 2]));
    }

    #[test]
    fn bad_changes_get_typed_errors() {
        let base = m(&[1], &[2]);
        assert_eq!(
            base.apply(&cc(vec![remove(9)])),
            Err(ConfChangeError::UnknownNode(9))
        );
        assert_eq!(
            base.apply(&cc(vec![remove(1)])),
            Err(ConfChangeError::RemovesLastVoter)
        );
        assert_eq!(
            base.apply(&cc(vec![add_learner(1)])),
            Err(ConfChangeError::RemovesLastVoter)
        );
        assert_eq!(
            base.apply(&cc(vec![add_voter(0)])),
            Err(ConfChangeError::InvalidNode(0))
        );
        assert_eq!(
            base.apply(&cc(vec![add_voter(3), remove(3)])),
            Err(ConfChangeError::DuplicateNode(3))
        );
        let mut bad = add_voter(3);
        bad.change_type = 42;
        assert_eq!(
            base.apply(&cc(vec![bad])),
            Err(ConfChangeError::UnknownChangeType(42))
        );
    }

    /// Every majority of a configuration and of the one a change leads to intersect (for a
    /// joint configuration: a decision needs majorities of both halves), checked by brute force
    /// over random change sequences. This is the property that keeps two leaders of one term
    /// from being elected by disjoint quorums.
    #[test]
    fn consecutive_configurations_never_have_disjoint_quorums() {
        fn quorums(m: &Membership) -> Vec<BTreeSet<u64>> {
            let ids: Vec<u64> = m.voters.union(&m.voters_outgoing).copied().collect();
            let mut out = Vec::new();
            for mask in 0u32..(1 << ids.len()) {
                let s: BTreeSet<u64> = ids
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, &id)| id)
                    .collect();
                let maj = |half: &BTreeSet<u64>| {
                    half.is_empty() || s.intersection(half).count() * 2 > half.len()
                };
                if maj(&m.voters) && maj(&m.voters_outgoing) {
                    out.push(s);
                }
            }
            out
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut current = m(&[1, 2, 3], &[]);
        for _ in 0..400 {
            let proposal = if current.is_joint() {
                cc(vec![])
            } else {
                let k = 1 + next(3);
                cc((0..k)
                    .map(|_| {
                        let id = 1 + next(7);
                        match next(3) {
                            0 => add_voter(id),
                            1 => add_learner(id),
                            _ => remove(id),
                        }
                    })
                    .collect())
            };
            let Ok(after) = current.apply(&proposal) else {
                continue;
            };
            for a in quorums(&current) {
                for b in quorums(&after) {
                    assert!(
                        !a.is_disjoint(&b),
                        "{current:?} -> {after:?}: quorums {a:?} and {b:?} are disjoint"
                    );
                }
            }
            current = after;
        }
    }
}
