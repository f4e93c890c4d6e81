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
        // The meta leader also reports the meta range's record (keyed by its end key): that
        // one is older than the descriptor here.
        let users = routing::scan_records(&self.engine, &[0x00], &[], usize::MAX)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|r| r.descriptor.as_ref().is_some_and(|d| d.id != META_RANGE));
        Ok(meta.into_iter().chain(users).collect())
    }

    fn members(&self) -> BTreeMap<u64, SocketAddr> {
        // Nodes that registered (joined) are members too: their addresses are in their records.
        if let Ok(records) = routing::node_records(&self.engine) {
            for r in records {
                if let Ok(addr) = r.addr.parse() {
                    self.service.learn_peer(r.node_id, addr);
                }
            }
        }
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

/// Sends this node's heartbeat to placement every `interval` until `stop`: the ranges and
/// leaderships it holds and the load of the ranges it leads. It goes to the meta range's
/// leader (this node's meta replica names it; else the members are asked in turn and their
/// answers name it).
pub(crate) async fn send_heartbeats(
    service: Arc<Service>,
    transport: Transport,
    interval: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use flotilla_transport::service::{
        PlacementHeartbeat, PlacementHeartbeatResponse, RangeLoadReport,
    };
    use prost::Message as _;
    let me = service.node_id;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut target = 0u64;
    let mut turn = 0usize;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let loads = service.handle.range_loads();
        let counts = service
            .handle
            .on_every_store(|store| store.range_ids().count() as u64);
        let mut ranges = 0;
        for c in counts {
            ranges += c.await.unwrap_or(0);
        }
        let beat = PlacementHeartbeat {
            node_id: me,
            ranges,
            leaders: loads.len() as u64,
            loads: loads
                .iter()
                .map(|(id, l)| RangeLoadReport {
                    range_id: *id,
                    reads_per_second: l.reads_per_second,
                    writes_per_second: l.writes_per_second,
                    size_bytes: l.size_bytes,
                })
                .collect(),
        };
        if target == 0 {
            target = service.meta_leader().await;
        }
        if target == 0 {
            let members: Vec<u64> = service.addresses.read().keys().copied().collect();
            turn = turn.wrapping_add(1);
            target = members
                .get(turn % members.len().max(1))
                .copied()
                .unwrap_or(me);
        }
        let answer = if target == me {
            Some(service.heartbeat_here(beat).await)
        } else {
            transport
                .call(
                    target,
                    "placement.Heartbeat",
                    beat.encode_to_vec().into(),
                    interval,
                )
                .await
                .ok()
                .and_then(|b| PlacementHeartbeatResponse::decode(b).ok())
        };
        target = match answer {
            Some(a) if a.accepted => {
                for n in &a.nodes {
                    if let Ok(addr) = n.addr.parse() {
                        service.learn_peer(n.node_id, addr);
                    }
                }
                target
            }
            Some(a) => a.leader_node,
            None => 0,
        };
    }
}

/// A node started with `join = true` registers its address with the members it was given
/// (`placement.Join`), retrying until one takes it or `stop`; then learns the members they know.
pub(crate) async fn register(
    service: Arc<Service>,
    transport: Transport,
    addr: SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use flotilla_transport::service::{JoinRequest, JoinResponse};
    use prost::Message as _;
    let me = service.node_id;
    let request = JoinRequest {
        node_id: me,
        addr: addr.to_string(),
    }
    .encode_to_vec();
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        let members: Vec<u64> = service
            .addresses
            .read()
            .keys()
            .copied()
            .filter(|id| *id != me)
            .collect();
        for member in members {
            let call = transport.call(
                member,
                "placement.Join",
                request.clone().into(),
                std::time::Duration::from_secs(10),
            );
            // A stopping node does not wait out a call (it holds the service and transport).
            let answer = tokio::select! {
                _ = stop.changed() => return,
                answer = call => answer,
            };
            match answer.map(JoinResponse::decode) {
                Ok(Ok(joined)) => {
                    for n in &joined.nodes {
                        if let Ok(a) = n.addr.parse() {
                            service.learn_peer(n.node_id, a);
                        }
                    }
                    tracing::info!(node = me, via = member, "registered with the cluster");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(node = me, error = %e, "undecodable join answer"),
                Err(e) => {
                    tracing::debug!(node = me, via = member, error = %e, "join not taken yet")
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}
