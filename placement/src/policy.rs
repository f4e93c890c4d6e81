//! The policy: a pure function from a [`ClusterView`] to the operators that bring it closer to
//! its goals, in order of urgency (like PD's schedulers and CockroachDB's allocator):
//!
//! 1. repair: a replica on a node that must leave (down past `down-time`, or decommissioning)
//!    moves to a target node; a range with too few voters gets one, too many loses one; a stray
//!    learner (an operator that failed half-way) is promoted when the range lacks a voter, else
//!    removed; a decommissioning node hands its leaderships away first;
//! 2. replica balance (only when no repair is due): while the replica counts of two target
//!    nodes differ by 2 or more, a replica moves from the fuller to the emptier;
//! 3. leader balance: while the leader counts of two target nodes differ by 2 or more, a
//!    leadership moves between them (to a voter the range has there);
//! 4. load: a range serving more than `split-qps` splits.
//!
//! Termination (no oscillation): every balancing operator moves one unit from a node with `c`
//! to one with at most `c - 2`, so the sum of the squared counts drops by at least 2 each time;
//! repairs only reduce the replicas that must leave or the voters missing. The runtime adds a
//! cool-down on top, so a range just moved is not picked again for balance.
//!
//! Each call returns at most `max-operators`; operators in one call are planned against the
//! view as the earlier ones will leave it ([`project`]), so they do not all pick the same node.

use crate::operator::{Action, Operator, Reason};
use crate::view::{ClusterView, RangeView, ReplicaView};

/// What should happen next, most urgent first.
pub fn schedule(view: &ClusterView) -> Vec<Operator> {
    let mut work = view.clone();
    let mut ops = Vec::new();
    let max = view.config.max_operators;
    let push = |work: &mut ClusterView, ops: &mut Vec<Operator>, op: Operator| {
        project(work, &op);
        work.busy.insert(op.range_id);
        ops.push(op);
    };
    for i in 0..work.ranges.len() {
        if ops.len() >= max {
            return ops;
        }
        if let Some(op) = repair(&work, &work.ranges[i]) {
            push(&mut work, &mut ops, op);
        }
    }
    if ops.is_empty() {
        while ops.len() < max {
            let Some(op) = balance_replicas(&work) else {
                break;
            };
            push(&mut work, &mut ops, op);
        }
    }
    while ops.len() < max {
        let Some(op) = balance_leaders(&work) else {
            break;
        };
        push(&mut work, &mut ops, op);
    }
    if view.config.split_qps > 0.0 {
        for i in 0..work.ranges.len() {
            if ops.len() >= max {
                break;
            }
            let r = &work.ranges[i];
            if r.qps > view.config.split_qps && !work.busy.contains(&r.id) && r.leader.is_some() {
                let op = Operator {
                    range_id: r.id,
                    action: Action::Split,
                    reason: Reason::Load,
                };
                push(&mut work, &mut ops, op);
            }
        }
    }
    ops
}

/// The target node with the fewest replicas that `range` has no replica on.
fn best_target(view: &ClusterView, range: &RangeView) -> Option<u64> {
    let counts = view.replica_counts();
    counts
        .iter()
        .filter(|(n, _)| !range.has_replica_on(**n))
        .min_by_key(|(n, c)| (**c, **n))
        .map(|(n, _)| *n)
}

/// What a range needs to be healthy, if anything.
fn repair(view: &ClusterView, range: &RangeView) -> Option<Operator> {
    // A range with no leader cannot change (it may have lost its quorum): nothing to ask yet.
    if view.busy.contains(&range.id) || range.leader.is_none() {
        return None;
    }
    let op = |action, reason| {
        Some(Operator {
            range_id: range.id,
            action,
            reason,
        })
    };
    let wanted = view.config.replicas;
    let voters: Vec<u64> = range.voters().collect();
    if let Some(learner) = range.replicas.iter().find(|r| !r.voter) {
        if voters.len() < wanted && view.is_target(learner.node) {
            return op(
                Action::PromoteLearner { node: learner.node },
                Reason::ReplicaCount,
            );
        }
        return op(
            Action::RemoveReplica { node: learner.node },
            Reason::ReplicaCount,
        );
    }
    // A draining node's leadership goes first: cheap, and the moves after it need no transfer.
    if let Some(leader) = range.leader.filter(|l| view.is_draining(*l)) {
        let to = voters
            .iter()
            .copied()
            .filter(|n| view.is_target(*n))
            .min_by_key(|n| (view.leader_counts().get(n).copied().unwrap_or(0), *n));
        if let Some(to) = to {
            return op(
                Action::TransferLeader { from: leader, to },
                Reason::Decommission,
            );
        }
    }
    if let Some(from) = voters.iter().copied().find(|n| view.must_leave(*n)) {
        let reason = if view.is_draining(from) {
            Reason::Decommission
        } else {
            Reason::NodeDown
        };
        if let Some(to) = best_target(view, range) {
            return op(Action::MoveReplica { from, to }, reason);
        }
        if voters.len() > wanted {
            return op(Action::RemoveReplica { node: from }, reason);
        }
        // Nowhere to go: the replica stays until a node can take it.
        return None;
    }
    if voters.len() < wanted {
        return best_target(view, range)
            .and_then(|to| op(Action::AddReplica { to }, Reason::ReplicaCount));
    }
    if voters.len() > wanted {
        // A voter on a node that is down first, else from the fullest node; never the leader's
        // (its removal would need a transfer), and never one that leaves fewer live voters than
        // a quorum of what remains.
        let live = |n: &u64| view.nodes.get(n).is_some_and(|v| v.live);
        let counts = view.replica_counts();
        let node = voters
            .iter()
            .copied()
            .filter(|n| Some(*n) != range.leader)
            .max_by_key(|n| (!live(n), counts.get(n).copied().unwrap_or(0), *n))?;
        let live_after = voters.iter().filter(|v| **v != node && live(v)).count();
        if live_after < (voters.len() - 1) / 2 + 1 {
            return None;
        }
        return op(Action::RemoveReplica { node }, Reason::ReplicaCount);
    }
    None
}

/// Whether a range may be moved for balance: nothing running, not moved lately, healthy.
fn movable(view: &ClusterView, range: &RangeView) -> bool {
    !view.busy.contains(&range.id)
        && !view.cooling.contains(&range.id)
        && range.leader.is_some()
        && range.replicas.iter().all(|r| r.voter)
}

/// The (from, to) node pairs whose counts differ by 2 or more, fullest `from` and emptiest `to`
/// first: the moves that lower the sum of squared counts.
fn unbalanced_pairs(counts: &std::collections::BTreeMap<u64, usize>) -> Vec<(u64, u64)> {
    let mut by_count: Vec<(usize, u64)> = counts.iter().map(|(n, c)| (*c, *n)).collect();
    by_count.sort_unstable();
    let mut pairs = Vec::new();
    for &(high, from) in by_count.iter().rev() {
        for &(low, to) in &by_count {
            if high < low + 2 {
                break;
            }
            pairs.push((from, to));
        }
    }
    pairs
}

fn balance_replicas(view: &ClusterView) -> Option<Operator> {
    unbalanced_pairs(&view.replica_counts())
        .into_iter()
        .find_map(|(from, to)| {
            // Prefer a range `from` does not lead: no leader transfer needed.
            let r = view
                .ranges
                .iter()
                .filter(|r| movable(view, r) && r.has_replica_on(from) && !r.has_replica_on(to))
                .min_by_key(|r| (r.leader == Some(from), r.id))?;
            Some(Operator {
                range_id: r.id,
                action: Action::MoveReplica { from, to },
                reason: Reason::ReplicaBalance,
            })
        })
}

fn balance_leaders(view: &ClusterView) -> Option<Operator> {
    unbalanced_pairs(&view.leader_counts())
        .into_iter()
        .find_map(|(from, to)| {
            let r = view.ranges.iter().find(|r| {
                movable(view, r)
                    && r.leader == Some(from)
                    && r.replicas.iter().any(|x| x.node == to && x.voter)
            })?;
            Some(Operator {
                range_id: r.id,
                action: Action::TransferLeader { from, to },
                reason: Reason::LeaderBalance,
            })
        })
}

/// The view as it will be once `op` is done (how the runtime counts operators in flight, and
/// how the tests play a schedule out). A leadership on a replica that leaves goes to the first
/// other voter, as the runtime hands it.
pub fn project(view: &mut ClusterView, op: &Operator) {
    let Some(range) = view.ranges.iter_mut().find(|r| r.id == op.range_id) else {
        return;
    };
    let hand_over = |range: &mut RangeView, leaving: u64| {
        if range.leader == Some(leaving) {
            let next = range.voters().find(|n| *n != leaving);
            range.leader = next;
        }
    };
    match op.action {
        Action::TransferLeader { to, .. } => range.leader = Some(to),
        Action::AddReplica { to } => {
            if !range.has_replica_on(to) {
                range.replicas.push(ReplicaView {
                    node: to,
                    voter: true,
                });
            }
        }
        Action::MoveReplica { from, to } => {
            range.replicas.retain(|r| r.node != to);
            range.replicas.push(ReplicaView {
                node: to,
                voter: true,
            });
            hand_over(range, from);
            range.replicas.retain(|r| r.node != from);
        }
        Action::RemoveReplica { node } => {
            let voter = range.replicas.iter().any(|r| r.node == node && r.voter);
            if voter {
                hand_over(range, node);
            }
            range.replicas.retain(|r| r.node != node);
        }
        Action::PromoteLearner { node } => {
            for r in range.replicas.iter_mut().filter(|r| r.node == node) {
                r.voter = true;
            }
        }
        // The new range's id and keys are the leader's to choose: seen in the next view.
        Action::Split => {}
    }
}
