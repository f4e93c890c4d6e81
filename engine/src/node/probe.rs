//! A cheap handle on the running node for the binary around it: what its status port shows
//! (`/ready`, `/status`), and peers' addresses as their names resolve.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use flotilla_transport::service::RangeInfo;

use super::service::Service;

/// A peer as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerState {
    pub node_id: u64,
    pub addr: String,
    /// Heard from within the transport's down-after window.
    pub up: bool,
}

/// A handle on a running node for its status port. Cloning is cheap.
#[derive(Clone)]
pub struct NodeProbe {
    pub(super) service: Arc<Service>,
}

impl NodeProbe {
    pub fn node_id(&self) -> u64 {
        self.service.node_id
    }

    pub fn cluster_id(&self) -> &str {
        &self.service.cluster_id
    }

    pub fn uptime(&self) -> Duration {
        self.service.started.elapsed()
    }

    /// Takes requests: not shutting down, not halted.
    pub fn is_serving(&self) -> bool {
        self.service.accepting.load(Ordering::Relaxed) && !self.service.handle.is_halted()
    }

    /// The ranges hosted here with their leaders as this node knows them (0: none known).
    pub async fn ranges(&self) -> Vec<RangeInfo> {
        self.service.ranges().await
    }

    /// How many replicas this node hosts and which of them know no leader (range ids, sorted);
    /// `None` when a poller did not answer (overloaded or stopped).
    pub async fn leaderless(&self) -> Option<(usize, Vec<u64>)> {
        self.service.leaderless().await
    }

    /// Whether the node halted (a storage failure): it serves nothing and must restart.
    pub fn is_halted(&self) -> bool {
        self.service.handle.is_halted()
    }

    /// Where member `node_id` listens now (its name resolved to a new address, say).
    pub fn learn_peer(&self, node_id: u64, addr: std::net::SocketAddr) {
        self.service.learn_peer(node_id, addr);
    }

    /// Every other member this node knows, and whether it hears from it.
    pub fn peers(&self) -> Vec<PeerState> {
        let transport = self.service.transport.read().clone();
        self.service
            .addresses
            .read()
            .iter()
            .filter(|(id, _)| **id != self.service.node_id)
            .map(|(id, addr)| PeerState {
                node_id: *id,
                addr: addr.to_string(),
                up: transport.as_ref().is_some_and(|t| t.is_up(*id)),
            })
            .collect()
    }
}
