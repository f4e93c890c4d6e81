//! What the policy sees: the nodes (up or down, for how long, active or draining) and the
//! ranges (replicas by node, leader, load), as the meta range's leader knows them. Built by the
//! runtime from the routing records and the transport's liveness; built by hand in tests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A node's place in the cluster, as recorded in the meta range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NodeState {
    /// Takes replicas and leaders.
    #[default]
    Active,
    /// Being drained by `flotilla node decommission`: its replicas and leaderships move away,
    /// none arrive.
    Decommissioning,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: u64,
    /// Whether the transport of the meta range's leader reaches it now.
    pub live: bool,
    /// How long it has been unreachable (zero while live).
    pub down_for: Duration,
    pub state: NodeState,
}

impl NodeView {
    pub fn live(id: u64) -> Self {
        Self {
            id,
            live: true,
            down_for: Duration::ZERO,
            state: NodeState::Active,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaView {
    pub node: u64,
    /// A voter (else a learner).
    pub voter: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RangeView {
    pub id: u64,
    pub replicas: Vec<ReplicaView>,
    /// The node of its leader, as last reported (None: unknown, or on a node that is down).
    pub leader: Option<u64>,
    /// Reads and writes per second at its leader (0 when unknown).
    pub qps: f64,
}

impl RangeView {
    pub fn has_replica_on(&self, node: u64) -> bool {
        self.replicas.iter().any(|r| r.node == node)
    }

    pub fn voters(&self) -> impl Iterator<Item = u64> + '_ {
        self.replicas.iter().filter(|r| r.voter).map(|r| r.node)
    }
}

/// The policy's knobs (the `[placement]` section of the node's configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    /// Voters every range should have.
    pub replicas: usize,
    /// How long a node must be unreachable before its replicas are re-created elsewhere: a
    /// restart or a short partition does not move data.
    pub down_time: Duration,
    /// A range whose leader serves more than this many requests per second is split (0: no
    /// load splits).
    pub split_qps: f64,
    /// The most operators one call of `schedule` returns (it bounds the work of one call:
    /// each pick looks at every range).
    pub max_operators: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            replicas: 3,
            down_time: Duration::from_secs(30),
            split_qps: 0.0,
            max_operators: 64,
        }
    }
}

/// The cluster as the policy sees it. `busy` ranges (an operator running) are counted but not
/// touched; `cooling` ranges (an operator finished within the cool-down) are repaired but not
/// moved for balance, which damps oscillation.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub nodes: BTreeMap<u64, NodeView>,
    pub ranges: Vec<RangeView>,
    pub busy: BTreeSet<u64>,
    pub cooling: BTreeSet<u64>,
    pub config: PolicyConfig,
}

impl ClusterView {
    /// A node that can take replicas and leaders: live and active.
    pub fn is_target(&self, node: u64) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|n| n.live && n.state == NodeState::Active)
    }

    /// A node whose replicas must go: draining, or down past `down_time`, or unknown to
    /// placement (removed from the cluster).
    pub fn must_leave(&self, node: u64) -> bool {
        match self.nodes.get(&node) {
            None => true,
            Some(n) => {
                n.state == NodeState::Decommissioning
                    || (!n.live && n.down_for >= self.config.down_time)
            }
        }
    }

    pub fn is_draining(&self, node: u64) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|n| n.state == NodeState::Decommissioning)
    }

    /// Zero for every target node.
    fn zero_per_target(&self) -> BTreeMap<u64, usize> {
        self.nodes
            .keys()
            .filter(|n| self.is_target(**n))
            .map(|n| (*n, 0))
            .collect()
    }

    /// Replicas hosted per target node (every target listed, with 0 if it hosts none).
    pub fn replica_counts(&self) -> BTreeMap<u64, usize> {
        let mut counts = self.zero_per_target();
        for rep in self.ranges.iter().flat_map(|r| &r.replicas) {
            if let Some(c) = counts.get_mut(&rep.node) {
                *c += 1;
            }
        }
        counts
    }

    /// Leaderships per target node (every target listed).
    pub fn leader_counts(&self) -> BTreeMap<u64, usize> {
        let mut counts = self.zero_per_target();
        for leader in self.ranges.iter().filter_map(|r| r.leader) {
            if let Some(c) = counts.get_mut(&leader) {
                *c += 1;
            }
        }
        counts
    }
}

/// How far from balanced a set of counts is: the largest minus the smallest (0 or 1 is as
/// balanced as integers allow).
pub fn spread(counts: &BTreeMap<u64, usize>) -> usize {
    let max = counts.values().copied().max().unwrap_or(0);
    let min = counts.values().copied().min().unwrap_or(0);
    max - min
}
