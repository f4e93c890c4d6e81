//! Operators' commands through the client: splits, replica changes, leader transfers and
//! whole replica moves, each routed and retried like a write (and exactly once).

use bytes::Bytes;
use flotilla_transport::kv::{
    admin_request, write_response, AdminRequest, ChangeReplicasRequest, ChangeReplicasResponse,
    ErrorCode, ReplicaChange, ReplicaChangeKind, SplitRequest, SplitResponse,
    TransferLeaderRequest, WriteResponse,
};
use flotilla_transport::kv::{NodeUpdate, NodeUpdateResponse};
use flotilla_transport::meta::{NodeRecord, NodeState, RangeDescriptor};
use flotilla_transport::service::{MiddleKeyRequest, MiddleKeyResponse, PlacementStatus};
use prost::Message as _;

use crate::client::Client;
use crate::error::ClientError;

impl Client {
    /// Splits the range holding `key` at `key` (an admin command through Raft): returns the
    /// two ranges. The new one is on the same nodes; no data moves.
    ///
    /// # Errors
    /// [`ClientError`]; `Refused(Malformed)` when `key` is the range's start.
    pub async fn split(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<(RangeDescriptor, RangeDescriptor), ClientError> {
        let key = key.as_ref();
        self.split_at(&At::key(key), key).await
    }

    /// Splits the range `range` near the middle of its data (by size), as one of its replicas
    /// finds it: how placement splits a range by load.
    ///
    /// # Errors
    /// [`ClientError`]; `Refused(NotReady)` when no replica answers with a key (the range
    /// holds too little to cut, or its replicas are down).
    pub async fn split_in_middle_of(
        &self,
        range: &RangeDescriptor,
    ) -> Result<(RangeDescriptor, RangeDescriptor), ClientError> {
        let request = MiddleKeyRequest { range_id: range.id }.encode_to_vec();
        let addresses: Vec<std::net::SocketAddr> = {
            let nodes = self.inner.nodes.lock();
            range
                .replicas
                .iter()
                .filter_map(|r| nodes.get(&r.node_id).copied())
                .collect()
        };
        let mut last = String::from("no replica's address is known");
        for addr in addresses {
            match self
                .call_within(addr, "range.MiddleKey", request.clone(), None)
                .await
            {
                Ok(body) => match MiddleKeyResponse::decode(body) {
                    Ok(MiddleKeyResponse { key: Some(key), .. }) => {
                        return self.split_at(&At::range(range), &key).await;
                    }
                    Ok(_) => last = format!("range {} holds too little to split", range.id),
                    Err(e) => last = format!("undecodable middle key: {e}"),
                },
                Err(e) => last = e.to_string(),
            }
        }
        Err(ClientError::Refused {
            code: ErrorCode::NotReady,
            message: last,
        })
    }

    async fn split_at(
        &self,
        at: &At,
        key: &[u8],
    ) -> Result<(RangeDescriptor, RangeDescriptor), ClientError> {
        let admin = AdminRequest {
            request: Some(admin_request::Request::Split(SplitRequest {
                split_key: Bytes::copy_from_slice(key),
            })),
        };
        let response = self.admin_at(at, admin).await?;
        match response.response {
            Some(write_response::Response::Split(SplitResponse {
                left: Some(left),
                right: Some(right),
            })) => {
                let mut cache = self.inner.cache.lock();
                cache.insert(left.clone(), 0);
                cache.insert(right.clone(), 0);
                Ok((left, right))
            }
            _ => Err(ClientError::Config(
                "a split answered with another response".into(),
            )),
        }
    }

    /// Changes the replicas of the range holding `key`, by node (see `ChangeReplicasRequest`):
    /// returns the range as it is after the change. Retried while the range is not ready (a
    /// learner catching up, another change in progress); a change already in effect answers
    /// at once.
    ///
    /// # Errors
    /// [`ClientError`]; `Refused(InvalidChange)` for a change the range cannot take.
    pub async fn change_replicas(
        &self,
        key: impl AsRef<[u8]>,
        changes: &[(ReplicaChangeKind, u64)],
    ) -> Result<RangeDescriptor, ClientError> {
        self.change_replicas_at(&At::key(key.as_ref()), changes)
            .await
    }

    /// [`Client::change_replicas`] of the range `range` (by its id and start key; any range,
    /// the meta range included): placement's way to address a range.
    ///
    /// # Errors
    /// [`ClientError`]; `Config` when another range now holds `range`'s start key.
    pub async fn change_replicas_of(
        &self,
        range: &RangeDescriptor,
        changes: &[(ReplicaChangeKind, u64)],
    ) -> Result<RangeDescriptor, ClientError> {
        self.change_replicas_at(&At::range(range), changes).await
    }

    async fn change_replicas_at(
        &self,
        at: &At,
        changes: &[(ReplicaChangeKind, u64)],
    ) -> Result<RangeDescriptor, ClientError> {
        let admin = AdminRequest {
            request: Some(admin_request::Request::ChangeReplicas(
                ChangeReplicasRequest {
                    changes: changes
                        .iter()
                        .map(|&(kind, node_id)| ReplicaChange {
                            kind: kind as i32,
                            node_id,
                        })
                        .collect(),
                },
            )),
        };
        let response = self.admin_at(at, admin).await?;
        match response.response {
            Some(write_response::Response::ChangeReplicas(ChangeReplicasResponse {
                descriptor: Some(descriptor),
            })) => {
                self.inner.cache.lock().insert(descriptor.clone(), 0);
                Ok(descriptor)
            }
            _ => Err(ClientError::Config(
                "a replica change answered with another response".into(),
            )),
        }
    }

    /// Starts handing the leadership of the range holding `key` to its voter on `node_id`.
    ///
    /// # Errors
    /// [`ClientError`]; `Refused(InvalidChange)` when that node has no voter of the range.
    pub async fn transfer_leader(
        &self,
        key: impl AsRef<[u8]>,
        node_id: u64,
    ) -> Result<(), ClientError> {
        self.transfer_leader_at(&At::key(key.as_ref()), node_id)
            .await
    }

    /// [`Client::transfer_leader`] of the range `range` (by its id and start key).
    ///
    /// # Errors
    /// [`ClientError`]; `Config` when another range now holds `range`'s start key.
    pub async fn transfer_leader_of(
        &self,
        range: &RangeDescriptor,
        node_id: u64,
    ) -> Result<(), ClientError> {
        self.transfer_leader_at(&At::range(range), node_id).await
    }

    async fn transfer_leader_at(&self, at: &At, node_id: u64) -> Result<(), ClientError> {
        let admin = AdminRequest {
            request: Some(admin_request::Request::TransferLeader(
                TransferLeaderRequest { node_id },
            )),
        };
        self.admin_at(at, admin).await?;
        Ok(())
    }

    async fn admin_at(&self, at: &At, admin: AdminRequest) -> Result<WriteResponse, ClientError> {
        self.command_at(&at.key, at.range_id, None, Some(admin), None)
            .await
    }

    /// Moves the replica of the range holding `key` from node `from` to node `to` while it
    /// serves: a learner on `to` catches up, then one joint change promotes it and removes
    /// `from` (leadership leaves `from` first when it leads). Returns the range after the move.
    ///
    /// # Errors
    /// [`ClientError`] from the steps; a step that failed leaves the range as it was after
    /// the last one that succeeded (each is safe to run again).
    pub async fn move_replica(
        &self,
        key: impl AsRef<[u8]>,
        from: u64,
        to: u64,
    ) -> Result<RangeDescriptor, ClientError> {
        let at = At::key(key.as_ref());
        if from == to {
            return Err(ClientError::Config(format!(
                "a replica moves between two nodes; both are node {from}"
            )));
        }
        self.change_replicas_at(&at, &[(ReplicaChangeKind::AddLearner, to)])
            .await?;
        self.replace_replica_at(&at, from, to).await
    }

    /// The second half of [`Client::move_replica`] on the range `range`: its learner on `to`
    /// (added before) becomes a voter and the replica on `from` leaves, in one joint change.
    ///
    /// # Errors
    /// [`ClientError`] from the steps (each is safe to run again).
    pub async fn replace_replica_of(
        &self,
        range: &RangeDescriptor,
        from: u64,
        to: u64,
    ) -> Result<RangeDescriptor, ClientError> {
        self.replace_replica_at(&At::range(range), from, to).await
    }

    /// Removes the replica on `node` from the range `range`, handing its leadership to another
    /// voter first when it leads.
    ///
    /// # Errors
    /// [`ClientError`]; `Refused(InvalidChange)` when no other voter can lead.
    pub async fn remove_replica_of(
        &self,
        range: &RangeDescriptor,
        node: u64,
    ) -> Result<RangeDescriptor, ClientError> {
        let at = At::range(range);
        self.leaving(&at, node, &[(ReplicaChangeKind::Remove, node)], None)
            .await
    }

    async fn replace_replica_at(
        &self,
        at: &At,
        from: u64,
        to: u64,
    ) -> Result<RangeDescriptor, ClientError> {
        let joint = [
            (ReplicaChangeKind::Promote, to),
            (ReplicaChangeKind::Remove, from),
        ];
        self.leaving(at, from, &joint, Some(to)).await?;
        // The range is joint until its leader leaves the configuration by itself: the
        // removal, asked again, waits that out (NOT_READY) and is then in effect.
        self.change_replicas_at(at, &[(ReplicaChangeKind::Remove, from)])
            .await
    }

    /// Runs `changes`, which take the replica on `leaving` out; when that replica leads, its
    /// leadership goes first to another voter (not `arriving`, which may not have caught up).
    async fn leaving(
        &self,
        at: &At,
        leaving: u64,
        changes: &[(ReplicaChangeKind, u64)],
        arriving: Option<u64>,
    ) -> Result<RangeDescriptor, ClientError> {
        let mut attempts = 0;
        loop {
            match self.change_replicas_at(at, changes).await {
                Err(ClientError::Refused {
                    code: ErrorCode::InvalidChange,
                    message,
                }) if attempts < 5 && message.contains("transfer leadership first") => {
                    attempts += 1;
                    let current = self.cached_descriptor(at).await?;
                    let other = current.replicas.iter().find(|r| {
                        r.node_id != leaving
                            && Some(r.node_id) != arriving
                            && r.role == flotilla_transport::meta::ReplicaRole::Voter as i32
                    });
                    let Some(other) = other else {
                        return Err(ClientError::Refused {
                            code: ErrorCode::InvalidChange,
                            message: format!("no voter besides node {leaving} to lead the range"),
                        });
                    };
                    // The next attempt waits out the transfer (NOT_READY, then NOT_LEADER).
                    self.transfer_leader_at(at, other.node_id).await?;
                }
                other => return other,
            }
        }
    }

    /// The range at `at` as the cache knows it (looked up when it does not).
    async fn cached_descriptor(&self, at: &At) -> Result<RangeDescriptor, ClientError> {
        let deadline = std::time::Instant::now() + self.inner.config.deadline;
        if self.inner.cache.lock().locate(&at.key).is_none() {
            self.locate(&at.key, deadline).await?;
        }
        self.inner
            .cache
            .lock()
            .locate(&at.key)
            .map(|r| r.descriptor)
            .ok_or_else(|| ClientError::Config("the range is not in the routing cache".into()))
    }
}

impl Client {
    /// Writes node `node_id`'s state in the meta range: `Decommissioning` drains it (placement
    /// moves its replicas and leaderships away), `Active` returns it to service. Returns the
    /// state it had.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn set_node_state(
        &self,
        node_id: u64,
        state: NodeState,
    ) -> Result<NodeState, ClientError> {
        let admin = AdminRequest {
            request: Some(admin_request::Request::NodeUpdate(NodeUpdate {
                record: Some(NodeRecord {
                    node_id,
                    state: state as i32,
                    addr: String::new(),
                }),
                address_only: false,
            })),
        };
        let at = At {
            key: Vec::new(),
            range_id: Some(META_RANGE),
        };
        let response = self.admin_at(&at, admin).await?;
        match response.response {
            Some(write_response::Response::NodeUpdate(NodeUpdateResponse { previous })) => {
                Ok(previous
                    .and_then(|p| NodeState::try_from(p.state).ok())
                    .unwrap_or(NodeState::Active))
            }
            _ => Err(ClientError::Config(
                "a node update answered with another response".into(),
            )),
        }
    }

    /// What placement is doing, from the node at `addr` (only the meta range's leader has it
    /// `active`; the others name that leader).
    ///
    /// # Errors
    /// [`ClientError::Transport`], or `Config` for an undecodable answer.
    pub async fn placement_status(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<PlacementStatus, ClientError> {
        let body = self
            .call_within(addr, "placement.Status", Vec::new(), None)
            .await?;
        PlacementStatus::decode(body)
            .map_err(|e| ClientError::Config(format!("undecodable placement status: {e}")))
    }
}

/// The meta range's id (its start key is the empty key).
const META_RANGE: u64 = 1;

/// Where an admin command goes: the range holding an internal key, optionally checked to be a
/// given range.
struct At {
    key: Vec<u8>,
    range_id: Option<u64>,
}

impl At {
    fn key(user_key: &[u8]) -> Self {
        Self {
            key: crate::client::internal(user_key),
            range_id: None,
        }
    }

    fn range(range: &RangeDescriptor) -> Self {
        Self {
            key: range.start_key.to_vec(),
            range_id: Some(range.id),
        }
    }
}
