//! Operators: what the policy asks for, one range each, and the steps that carry one out. Each
//! step is one admin command (a leader transfer, a replica change, a split), safe to run
//! again: a change already in effect answers at once.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OperatorKind {
    TransferLeader,
    AddReplica,
    MoveReplica,
    RemoveReplica,
    PromoteLearner,
    Split,
}

impl OperatorKind {
    pub const ALL: [OperatorKind; 6] = [
        Self::TransferLeader,
        Self::AddReplica,
        Self::MoveReplica,
        Self::RemoveReplica,
        Self::PromoteLearner,
        Self::Split,
    ];

    /// The `kind` label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TransferLeader => "transfer_leader",
            Self::AddReplica => "add_replica",
            Self::MoveReplica => "move_replica",
            Self::RemoveReplica => "remove_replica",
            Self::PromoteLearner => "promote_learner",
            Self::Split => "split",
        }
    }
}

/// Why the policy asked for an operator (shown by `flotilla placement status` and the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// A replica on a node down past `down-time` is re-created elsewhere.
    NodeDown,
    /// A node being decommissioned is drained.
    Decommission,
    /// The range has fewer or more voters than configured, or a stray learner.
    ReplicaCount,
    /// Replicas per node out of balance.
    ReplicaBalance,
    /// Leaders per node out of balance.
    LeaderBalance,
    /// The range serves more than `split-qps`.
    Load,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NodeDown => "node_down",
            Self::Decommission => "decommission",
            Self::ReplicaCount => "replica_count",
            Self::ReplicaBalance => "replica_balance",
            Self::LeaderBalance => "leader_balance",
            Self::Load => "load",
        }
    }
}

/// One change to one range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub range_id: u64,
    pub action: Action,
    pub reason: Reason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Hand the leadership from node `from` to the voter on node `to`.
    TransferLeader { from: u64, to: u64 },
    /// A new voter on `to`: a learner catches up, then is promoted.
    AddReplica { to: u64 },
    /// The replica on `from` moves to `to`: a learner on `to` catches up, then one joint change
    /// promotes it and removes `from` (the leadership leaves `from` first when it leads).
    MoveReplica { from: u64, to: u64 },
    /// The replica on `node` leaves (the leadership first, when it leads).
    RemoveReplica { node: u64 },
    /// The learner on `node` becomes a voter.
    PromoteLearner { node: u64 },
    /// The range splits at its middle key.
    Split,
}

/// One admin command of an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    TransferLeader {
        to: u64,
    },
    AddLearner {
        node: u64,
    },
    Promote {
        node: u64,
    },
    /// Promote `add` and remove `remove` in one joint change, then leave the joint state.
    Replace {
        add: u64,
        remove: u64,
    },
    Remove {
        node: u64,
    },
    Split,
}

impl Operator {
    pub fn kind(&self) -> OperatorKind {
        match self.action {
            Action::TransferLeader { .. } => OperatorKind::TransferLeader,
            Action::AddReplica { .. } => OperatorKind::AddReplica,
            Action::MoveReplica { .. } => OperatorKind::MoveReplica,
            Action::RemoveReplica { .. } => OperatorKind::RemoveReplica,
            Action::PromoteLearner { .. } => OperatorKind::PromoteLearner,
            Action::Split => OperatorKind::Split,
        }
    }

    /// The steps, in order.
    pub fn steps(&self) -> Vec<Step> {
        match self.action {
            Action::TransferLeader { to, .. } => vec![Step::TransferLeader { to }],
            Action::AddReplica { to } => {
                vec![Step::AddLearner { node: to }, Step::Promote { node: to }]
            }
            Action::MoveReplica { from, to } => vec![
                Step::AddLearner { node: to },
                Step::Replace {
                    add: to,
                    remove: from,
                },
            ],
            Action::RemoveReplica { node } => vec![Step::Remove { node }],
            Action::PromoteLearner { node } => vec![Step::Promote { node }],
            Action::Split => vec![Step::Split],
        }
    }

    /// The nodes that receive data for the operator (a snapshot: the per-node limit). The
    /// sending side is the range's leader, whose node bounds its own sends
    /// (`max-snapshot-sends`); the node a replica leaves receives nothing (it may be down). A
    /// leader transfer, a removal, a promotion and a split move no data.
    pub fn data_nodes(&self) -> Vec<u64> {
        match self.action {
            Action::MoveReplica { to, .. } | Action::AddReplica { to } => vec![to],
            Action::TransferLeader { .. }
            | Action::RemoveReplica { .. }
            | Action::PromoteLearner { .. }
            | Action::Split => Vec::new(),
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = self.range_id;
        match self.action {
            Action::TransferLeader { from, to } => {
                write!(f, "range {range}: leader {from} -> {to}")?;
            }
            Action::AddReplica { to } => write!(f, "range {range}: add a replica on {to}")?,
            Action::MoveReplica { from, to } => {
                write!(f, "range {range}: move a replica {from} -> {to}")?;
            }
            Action::RemoveReplica { node } => {
                write!(f, "range {range}: remove the replica on {node}")?;
            }
            Action::PromoteLearner { node } => {
                write!(f, "range {range}: promote the learner on {node}")?;
            }
            Action::Split => write!(f, "range {range}: split")?,
        }
        write!(f, " ({})", self.reason.as_str())
    }
}
