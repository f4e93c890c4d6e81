//! Replica changes (DESIGN section 7), by node: the leader turns a `ChangeReplicasRequest` into
//! a Raft `ConfChange` ([`plan_change`]), and every replica turns the committed change back into
//! a new descriptor ([`apply_change`]) with the same pure function of the log, so all replicas
//! agree on who hosts the range.
//!
//! The descriptor follows the Raft membership: a replica is a voter while it votes in either
//! half of a joint configuration, a learner while it is a learner now or after leaving it, and
//! leaves the descriptor when it leaves the membership. Every membership entry (the leave of a
//! joint configuration included) bumps `conf_ver`.
//!
//! New replica ids are derived from the range, its `conf_ver` and the node (SplitMix64, like
//! split ids), so a node removed and added again gets a new id and a stale message addressed to
//! its old replica never reaches the new one.

use std::collections::BTreeMap;

use bytes::Bytes;
use flotilla_transport::kv::{
    ChangeReplicasContext, ChangeReplicasRequest, ReplicaChange, ReplicaChangeKind,
};
use flotilla_transport::meta::{RangeDescriptor, RangeEpoch, Replica, ReplicaRole};
use flotilla_transport::raft::{ConfChange, ConfState, Entry};
use prost::Message as _;

use super::error::KvError;
use super::split::derived_id;
use crate::raft::{add_learner, add_voter, remove, Membership};

/// What the leader knows of the replicas, to judge a change.
pub struct LeaderView<'a> {
    /// The leader's own replica id (it never removes or demotes itself: transfer first).
    pub leader_replica: u64,
    /// The membership in force (applied).
    pub conf_state: &'a ConfState,
    /// Whether the replica with this id has caught up enough to vote.
    pub caught_up: &'a dyn Fn(u64) -> bool,
}

/// The id a replica added on `node_id` gets when the range is at `conf_ver`.
fn new_replica_id(range_id: u64, conf_ver: u64, node_id: u64) -> u64 {
    derived_id(
        derived_id(range_id, conf_ver) ^ 0x5245_504c_4943_4100,
        node_id,
    )
}

/// The membership change that carries out `request` on `descriptor`; `None` when every change
/// is already in effect (a retry after it applied).
///
/// # Errors
/// [`KvError::NotReady`] while a joint configuration is being left or a learner to promote
/// lags; [`KvError::InvalidChange`] for a change the range cannot take; [`KvError::Malformed`]
/// for an empty request or an unknown kind.
pub fn plan_change(
    descriptor: &RangeDescriptor,
    view: &LeaderView<'_>,
    request: &ChangeReplicasRequest,
) -> Result<Option<ConfChange>, KvError> {
    if request.changes.is_empty() {
        return Err(KvError::Malformed("a replica change names no node".into()));
    }
    let membership = Membership::from_conf_state(view.conf_state);
    if membership.is_joint() {
        return Err(KvError::NotReady(format!(
            "range {} is leaving a joint configuration",
            descriptor.id
        )));
    }
    let conf_ver = descriptor.epoch.map(|e| e.conf_ver).unwrap_or_default();
    let mut cc = ConfChange::default();
    let mut context = ChangeReplicasContext::default();
    for &ReplicaChange { kind, node_id } in &request.changes {
        let existing = descriptor.replicas.iter().find(|r| r.node_id == node_id);
        let is_voter = existing.is_some_and(|r| r.role == ReplicaRole::Voter as i32);
        let kind = ReplicaChangeKind::try_from(kind)
            .map_err(|_| KvError::Malformed(format!("unknown replica change kind {kind}")))?;
        let invalid = |what: &str| {
            Err(KvError::InvalidChange(format!(
                "range {}: {what} on node {node_id}",
                descriptor.id
            )))
        };
        match (kind, existing) {
            (ReplicaChangeKind::Unspecified, _) => {
                return Err(KvError::Malformed("replica change without a kind".into()))
            }
            (ReplicaChangeKind::AddLearner, None) => {
                let replica_id = new_replica_id(descriptor.id, conf_ver, node_id);
                cc.changes.push(add_learner(replica_id));
                context.added.push(Replica {
                    node_id,
                    replica_id,
                    role: ReplicaRole::Learner as i32,
                });
            }
            (ReplicaChangeKind::AddLearner, Some(_)) if is_voter => {
                return invalid("cannot add a learner: a voter exists")
            }
            (ReplicaChangeKind::Promote, None) => return invalid("no replica to promote"),
            (ReplicaChangeKind::Promote, Some(r)) if !is_voter => {
                if !(view.caught_up)(r.replica_id) {
                    return Err(KvError::NotReady(format!(
                        "range {}: the learner on node {node_id} has not caught up",
                        descriptor.id
                    )));
                }
                cc.changes.push(add_voter(r.replica_id));
            }
            (ReplicaChangeKind::Remove | ReplicaChangeKind::Demote, Some(r))
                if r.replica_id == view.leader_replica =>
            {
                return invalid("the leader's own replica cannot leave; transfer leadership first")
            }
            (ReplicaChangeKind::Remove, Some(r)) => cc.changes.push(remove(r.replica_id)),
            (ReplicaChangeKind::Demote, None) => return invalid("no replica to demote"),
            (ReplicaChangeKind::Demote, Some(r)) if is_voter => {
                cc.changes.push(add_learner(r.replica_id));
            }
            // In effect already: a learner to add, a voter to promote, a learner to demote,
            // nothing to remove.
            (ReplicaChangeKind::AddLearner | ReplicaChangeKind::Promote, Some(_))
            | (ReplicaChangeKind::Demote, Some(_))
            | (ReplicaChangeKind::Remove, None) => {}
        }
    }
    if cc.changes.is_empty() {
        return Ok(None);
    }
    membership
        .apply(&cc)
        .map_err(|e| KvError::InvalidChange(format!("range {}: {e}", descriptor.id)))?;
    cc.context = Bytes::from(context.encode_to_vec());
    Ok(Some(cc))
}

/// The descriptor and membership after the committed membership entry `entry`, or `None` when
/// the entry is not a valid change of `conf_state` (the Raft core skips it alike).
pub fn apply_change(
    descriptor: &RangeDescriptor,
    conf_state: &ConfState,
    entry: &Entry,
) -> Option<(RangeDescriptor, ConfState)> {
    let cc = ConfChange::decode(entry.data.as_ref()).ok()?;
    let next = Membership::from_conf_state(conf_state).apply(&cc).ok()?;
    let added = ChangeReplicasContext::decode(cc.context.as_ref()).unwrap_or_default();
    let mut nodes: BTreeMap<u64, u64> = descriptor
        .replicas
        .iter()
        .map(|r| (r.replica_id, r.node_id))
        .collect();
    for r in &added.added {
        nodes.entry(r.replica_id).or_insert(r.node_id);
    }
    let role = |id: u64| {
        if next.is_voter(id) {
            Some(ReplicaRole::Voter)
        } else if next.is_member(id) {
            Some(ReplicaRole::Learner)
        } else {
            None
        }
    };
    // Existing replicas keep their place; added ones follow in the order the change names them.
    let order = descriptor
        .replicas
        .iter()
        .map(|r| r.replica_id)
        .chain(added.added.iter().map(|r| r.replica_id));
    let mut replicas: Vec<Replica> = Vec::new();
    for replica_id in order {
        if replicas.iter().any(|r| r.replica_id == replica_id) {
            continue;
        }
        let (Some(role), Some(&node_id)) = (role(replica_id), nodes.get(&replica_id)) else {
            continue;
        };
        replicas.push(Replica {
            node_id,
            replica_id,
            role: role as i32,
        });
    }
    let epoch = descriptor.epoch.unwrap_or_default();
    let updated = RangeDescriptor {
        epoch: Some(RangeEpoch {
            version: epoch.version,
            conf_ver: epoch.conf_ver + 1,
        }),
        replicas,
        ..descriptor.clone()
    };
    Some((updated, next.to_conf_state()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_transport::raft::EntryType;

    fn descriptor(nodes: &[u64]) -> RangeDescriptor {
        RangeDescriptor {
            id: 7,
            start_key: Bytes::from_static(b"\x01a"),
            end_key: Bytes::new(),
            epoch: Some(RangeEpoch {
                version: 3,
                conf_ver: 1,
            }),
            replicas: nodes
                .iter()
                .map(|&n| Replica {
                    node_id: n,
                    replica_id: 100 + n,
                    role: ReplicaRole::Voter as i32,
                })
                .collect(),
        }
    }

    fn conf_of(d: &RangeDescriptor) -> ConfState {
        let ids = |role: ReplicaRole| {
            d.replicas
                .iter()
                .filter(|r| r.role == role as i32)
                .map(|r| r.replica_id)
                .collect()
        };
        ConfState {
            voters: ids(ReplicaRole::Voter),
            learners: ids(ReplicaRole::Learner),
            ..ConfState::default()
        }
    }

    fn request(changes: &[(ReplicaChangeKind, u64)]) -> ChangeReplicasRequest {
        ChangeReplicasRequest {
            changes: changes
                .iter()
                .map(|&(kind, node_id)| ReplicaChange {
                    kind: kind as i32,
                    node_id,
                })
                .collect(),
        }
    }

    fn entry(cc: &ConfChange, index: u64) -> Entry {
        Entry {
            term: 2,
            index,
            entry_type: EntryType::ConfChange as i32,
            data: Bytes::from(cc.encode_to_vec()),
        }
    }

    /// Plans `changes` as the leader on node 1 and applies the result; `None` if in effect.
    fn step(
        d: &RangeDescriptor,
        cs: &ConfState,
        changes: &[(ReplicaChangeKind, u64)],
        caught_up: bool,
    ) -> Result<Option<(RangeDescriptor, ConfState)>, KvError> {
        let yes = move |_: u64| caught_up;
        let view = LeaderView {
            leader_replica: 101,
            conf_state: cs,
            caught_up: &yes,
        };
        Ok(plan_change(d, &view, &request(changes))?
            .map(|cc| apply_change(d, cs, &entry(&cc, 10)).expect("valid change")))
    }

    fn roles(d: &RangeDescriptor) -> Vec<(u64, ReplicaRole)> {
        d.replicas
            .iter()
            .map(|r| {
                (
                    r.node_id,
                    ReplicaRole::try_from(r.role).expect("known role"),
                )
            })
            .collect()
    }

    #[test]
    fn moving_a_voter_adds_a_learner_then_goes_through_a_joint_configuration() {
        use ReplicaChangeKind::{AddLearner, Promote, Remove};
        let d = descriptor(&[1, 2, 3]);
        let cs = conf_of(&d);
        let (d, cs) = step(&d, &cs, &[(AddLearner, 4)], true)
            .expect("add")
            .expect("changed");
        assert_eq!(
            roles(&d),
            [
                (1, ReplicaRole::Voter),
                (2, ReplicaRole::Voter),
                (3, ReplicaRole::Voter),
                (4, ReplicaRole::Learner)
            ]
        );
        assert_eq!(d.epoch.map(|e| e.conf_ver), Some(2));
        assert_eq!(d.epoch.map(|e| e.version), Some(3), "splits bump version");
        // A retry of the add is in effect already.
        assert!(step(&d, &cs, &[(AddLearner, 4)], true)
            .expect("retry")
            .is_none());
        // Promote 4 and remove 3 together: joint.
        let (joint, joint_cs) = step(&d, &cs, &[(Promote, 4), (Remove, 3)], true)
            .expect("move")
            .expect("changed");
        assert!(
            !joint_cs.voters_outgoing.is_empty(),
            "a joint configuration"
        );
        assert_eq!(joint.replicas.len(), 4, "3 votes in the outgoing half");
        // Nothing else while joint.
        assert!(matches!(
            step(&joint, &joint_cs, &[(Remove, 2)], true),
            Err(KvError::NotReady(_))
        ));
        // The leave entry (no changes) drops 3.
        let (left, left_cs) =
            apply_change(&joint, &joint_cs, &entry(&ConfChange::default(), 11)).expect("leave");
        assert!(left_cs.voters_outgoing.is_empty());
        assert_eq!(
            roles(&left),
            [
                (1, ReplicaRole::Voter),
                (2, ReplicaRole::Voter),
                (4, ReplicaRole::Voter)
            ]
        );
        assert_eq!(left.epoch.map(|e| e.conf_ver), Some(4));
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        use ReplicaChangeKind::{AddLearner, Demote, Promote, Remove};
        let d = descriptor(&[1, 2, 3]);
        let cs = conf_of(&d);
        for (changes, caught_up, want) in [
            (vec![(Remove, 1)], true, "leader"),
            (vec![(Demote, 1)], true, "leader"),
            (vec![(AddLearner, 2)], true, "voter exists"),
            (vec![(Promote, 9)], true, "no replica"),
            (vec![(Demote, 9)], true, "no replica"),
        ] {
            match step(&d, &cs, &changes, caught_up) {
                Err(KvError::InvalidChange(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{changes:?}: {other:?}"),
            }
        }
        let (d, cs) = step(&d, &cs, &[(AddLearner, 4)], true)
            .expect("add")
            .expect("changed");
        assert!(matches!(
            step(&d, &cs, &[(Promote, 4)], false),
            Err(KvError::NotReady(_))
        ));
        assert!(matches!(
            step(&d, &cs, &[], true),
            Err(KvError::Malformed(_))
        ));
    }

    #[test]
    fn a_node_added_again_gets_a_new_replica_id() {
        use ReplicaChangeKind::{AddLearner, Remove};
        let d = descriptor(&[1, 2, 3]);
        let cs = conf_of(&d);
        let (d, cs) = step(&d, &cs, &[(AddLearner, 4)], true)
            .expect("add")
            .expect("changed");
        let first = d.replicas[3].replica_id;
        let (d, cs) = step(&d, &cs, &[(Remove, 4)], true)
            .expect("remove")
            .expect("changed");
        assert_eq!(d.replicas.len(), 3);
        let (d, _) = step(&d, &cs, &[(AddLearner, 4)], true)
            .expect("again")
            .expect("changed");
        assert_ne!(d.replicas[3].replica_id, first);
    }

    #[test]
    fn an_invalid_entry_changes_nothing() {
        let d = descriptor(&[1, 2, 3]);
        let cs = conf_of(&d);
        let removes_unknown = ConfChange {
            changes: vec![remove(999)],
            context: Bytes::new(),
        };
        assert!(apply_change(&d, &cs, &entry(&removes_unknown, 5)).is_none());
        let garbage = Entry {
            data: Bytes::from_static(b"\xff\xff"),
            ..entry(&ConfChange::default(), 5)
        };
        assert!(apply_change(&d, &cs, &garbage).is_none());
    }
}
