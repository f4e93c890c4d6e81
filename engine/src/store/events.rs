//! What a node does with the events that come from outside a round: a snapshot that arrived
//! whole, a peer node reported down, a confirmed read to serve. The poller threads call these,
//! and so does the whole-store simulator: the decisions live here once, with no clock, thread
//! or channel, so the simulator exercises exactly what a node runs.

use std::collections::BTreeSet;

use flotilla_transport::meta::ReplicaRole;
use flotilla_transport::raft::Message;
use flotilla_transport::service::{read_request, read_response, ReadRequest};

use super::peer::PeerError;
use super::replicas::Store;
use super::runtime::{ReadResult, RequestError};
use crate::kv::{self, check_range, KvError};
use crate::storage::ReceivedSnapshot;

/// What became of a snapshot handed to [`Store::receive_snapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotReceipt {
    /// Stepped into the range's replica (installed with the next round).
    Stepped,
    /// Stepped into a replica created for it just now (a range split off while this node was
    /// behind, or a replica added here): the caller starts ticking the range.
    Created,
    /// Not taken: it overlaps another range here (a split not caught up with yet), names no
    /// replica of this node, or is refused by the replica. The leader sends it again.
    Refused,
}

impl Store {
    /// A snapshot of `range_id` arrived whole and verified, with the leader's Snapshot
    /// `message`. A snapshot whose span overlaps another range here waits (refused now; the
    /// leader retries once this node applied the split that separates them).
    ///
    /// # Errors
    /// [`PeerError`] when the disk fails; a snapshot that does not fit is refused, not an error.
    pub fn receive_snapshot(
        &mut self,
        range_id: u64,
        message: Message,
        data: ReceivedSnapshot,
    ) -> Result<SnapshotReceipt, PeerError> {
        let node = self.node_id();
        if let Err(e) = data.check_no_overlap(self.engine()) {
            tracing::info!(node, range = range_id, error = %e, "snapshot deferred");
            return Ok(SnapshotReceipt::Refused);
        }
        let mut receipt = SnapshotReceipt::Stepped;
        if self.peer(range_id).is_none() {
            // A range split off while this replica was behind never reached it through the
            // split: it comes as a snapshot, and the replica is created from it.
            if !self.create_for_snapshot(&data)? {
                return Ok(SnapshotReceipt::Refused);
            }
            receipt = SnapshotReceipt::Created;
        }
        self.wake(range_id);
        self.heard_from_leader(range_id);
        let Some(peer) = self.peer_mut(range_id) else {
            return Ok(SnapshotReceipt::Refused);
        };
        match peer.step_snapshot(message, data) {
            Ok(()) => Ok(receipt),
            Err(e @ (PeerError::SnapshotMismatch { .. } | PeerError::Raft(_))) => {
                tracing::warn!(node, range = range_id, error = %e, "snapshot refused");
                Ok(if receipt == SnapshotReceipt::Created {
                    receipt
                } else {
                    SnapshotReceipt::Refused
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The quiet ranges that node `down` going down concerns: those it led, those this node
    /// leads with a replica there (their quorum may be at stake), and those with no known
    /// leader. The caller wakes them, a bounded number per tick.
    pub fn quiet_ranges_concerning(&mut self, down: u64) -> Vec<u64> {
        let me = self.node_id();
        let ids: Vec<u64> = self.range_ids().collect();
        let mut concerned = Vec::new();
        for range_id in ids {
            if !self.is_quiet(range_id) {
                continue;
            }
            let leader = self.leader_node(range_id);
            let hosts_down = self.peer(range_id).is_some_and(|p| {
                p.applier()
                    .descriptor()
                    .replicas
                    .iter()
                    .any(|r| r.node_id == down)
            });
            if leader == Some(down) || (leader == Some(me) && hosts_down) || leader.is_none() {
                concerned.push(range_id);
            }
        }
        concerned
    }

    /// Wakes `range_id` after node `dead` went down. If its leader was there, this replica
    /// forgets it (so it grants votes at once) and the voter on the lowest live node campaigns
    /// right away: one candidate per range, no split votes, no waiting out an election timeout.
    ///
    /// # Errors
    /// [`PeerError`] when the replica's storage failed.
    pub fn wake_after_node_down(
        &mut self,
        range_id: u64,
        dead: u64,
        down: &BTreeSet<u64>,
    ) -> Result<(), PeerError> {
        self.wake(range_id);
        if self.leader_node(range_id) != Some(dead) {
            return Ok(());
        }
        let me = self.node_id();
        let Some(peer) = self.peer_mut(range_id) else {
            return Ok(());
        };
        if !peer.raft().forget_leader() {
            return Ok(());
        }
        let first_live_voter = peer
            .applier()
            .descriptor()
            .replicas
            .iter()
            .filter(|r| r.role == ReplicaRole::Voter as i32 && r.node_id != dead)
            .filter(|r| !down.contains(&r.node_id))
            .map(|r| r.node_id)
            .min();
        if first_live_voter == Some(me) {
            peer.raft().campaign()?;
            self.recampaign_soon(range_id);
        }
        Ok(())
    }

    /// Serves a read from this replica's applied state, checked against its current range
    /// (a read confirmed before a split moved its key away is refused, not answered wrong).
    ///
    /// # Errors
    /// [`RequestError::Refused`] with the routing error, [`RequestError::Unavailable`] when the
    /// disk fails.
    pub fn serve_read(&self, request: &ReadRequest) -> ReadResult {
        let range_id = request.range_id;
        let peer = self
            .peer(range_id)
            .ok_or(KvError::RangeNotFound(range_id))?;
        let descriptor = peer.applier().descriptor();
        let config = peer.applier().config();
        check_range(descriptor, range_id, request.epoch.as_ref())?;
        let engine = self.engine();
        let result = match &request.request {
            Some(read_request::Request::Get(get)) => {
                kv::get(engine, descriptor, &get.key, config).map(read_response::Response::Get)
            }
            Some(read_request::Request::Scan(scan)) => {
                kv::scan(engine, descriptor, scan, config).map(read_response::Response::Scan)
            }
            None => return Err(KvError::Malformed("unknown read operation".into()).into()),
        };
        result.map_err(|e| match e {
            kv::ReadError::Refused(e) => RequestError::Refused(e),
            kv::ReadError::Storage(e) => RequestError::Unavailable(e.to_string()),
        })
    }
}
