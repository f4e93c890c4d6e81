//! The node's side of placement: what the placement task asks of its node ([`Local`]), and
//! the `placement.Status` answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use flotilla_placement::runtime::Snapshot;
use flotilla_placement::{Local, NodeState, OperatorKind};
use flotilla_transport::meta::{NodeState as WireNodeState, RangeRecord};
use flotilla_transport::service::{NodePlacement, OperatorCounts, PlacementStatus};
use flotilla_transport::Transport;

use super::service::Service;
use crate::kv::routing::{self, META_RANGE};
use crate::raft::Role;
use crate::storage::Engine;
use crate::store::RuntimeHandle;

pub(crate) struct NodeLocal {
    pub(crate) node_id: u64,
    pub(crate) engine: Arc<Engine>,
    pub(crate) handle: RuntimeHandle,
    pub(crate) transport: Transport,
    pub(crate) service: Arc<Service>,
}

impl Local for NodeLocal {
    fn leads_meta(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            let answers = self.handle.on_every_store(|store| {
                store
                    .peer_mut(META_RANGE)
                    .is_some_and(|p| p.raft().status().role == Role::Leader)
            });
            for answer in answers {
                if answer.await.unwrap_or(false) {
                    return true;
                }
            }
            false
        })
    }

    fn records(&self) -> Result<Vec<RangeRecord>, String> {
        // The meta range has no record of its own: it is placed by its descriptor here, led
        // by this node (placement runs only on its leader).
        let meta = self
            .engine
            .descriptor(META_RANGE)
            .map_err(|e| e.to_string())?
            .map(|descriptor| RangeRecord {
                descriptor: Some(descriptor),
                leader_node: self.node_id,
                leader_term: 0,
            });
        let users = routing::scan_records(&self.engine, &[0x00], &[], usize::MAX)
            .map_err(|e| e.to_string())?;
        Ok(meta.into_iter().chain(users).collect())
    }

    fn members(&self) -> BTreeMap<u64, SocketAddr> {
        self.service.addresses.read().clone()
    }

    fn is_up(&self, node: u64) -> bool {
        node == self.node_id || self.transport.is_up(node)
    }

    fn node_states(&self) -> Result<BTreeMap<u64, NodeState>, String> {
        let records = routing::node_records(&self.engine).map_err(|e| e.to_string())?;
        Ok(records
            .into_iter()
            .map(|r| {
                let state = match WireNodeState::try_from(r.state) {
                    Ok(WireNodeState::Decommissioning) => NodeState::Decommissioning,
                    _ => NodeState::Active,
                };
                (r.node_id, state)
            })
            .collect())
    }
}

/// `placement.Status` from this node's placement (`leader_node`: the meta range's leader as
/// this node knows it, for a caller that asked another node).
pub(crate) fn status(node_id: u64, leader_node: u64, snapshot: &Snapshot) -> PlacementStatus {
    let s = &snapshot.status;
    let operators = OperatorKind::ALL
        .iter()
        .map(|kind| OperatorCounts {
            kind: kind.as_str().into(),
            started: s.counts.started.get(kind).copied().unwrap_or(0),
            finished: s.counts.finished.get(kind).copied().unwrap_or(0),
            failed: s.counts.failed.get(kind).copied().unwrap_or(0),
        })
        .collect();
    let nodes = snapshot
        .nodes
        .iter()
        .map(|n| NodePlacement {
            node_id: n.id,
            live: n.live,
            state: match n.state {
                NodeState::Active => WireNodeState::Active,
                NodeState::Decommissioning => WireNodeState::Decommissioning,
            } as i32,
            down_for_ms: n.down_for.as_millis().try_into().unwrap_or(u64::MAX),
            replicas: s.replicas_per_node.get(&n.id).copied().unwrap_or(0) as u64,
            leaders: s.leaders_per_node.get(&n.id).copied().unwrap_or(0) as u64,
        })
        .collect();
    PlacementStatus {
        active: snapshot.active,
        node_id,
        leader_node,
        ranges: snapshot.ranges as u64,
        nodes,
        running: s
            .running
            .iter()
            .map(|(op, age)| format!("{op}, {} ms", age.as_millis()))
            .collect(),
        operators,
        replica_spread: s.replica_spread as u64,
        leader_spread: s.leader_spread as u64,
        recent_failures: s
            .recent_failures
            .iter()
            .map(|(op, why)| format!("{op}: {why}"))
            .collect(),
    }
}
