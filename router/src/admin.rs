//! Operators' commands through the client: splits, replica changes, leader transfers and
//! whole replica moves, each routed and retried like a write (and exactly once).

use bytes::Bytes;
use flotilla_transport::kv::{
    admin_request, write_response, AdminRequest, ChangeReplicasRequest, ChangeReplicasResponse,
    ErrorCode, ReplicaChange, ReplicaChangeKind, SplitRequest, SplitResponse,
    TransferLeaderRequest,
};
use flotilla_transport::meta::RangeDescriptor;

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
        let admin = AdminRequest {
            request: Some(admin_request::Request::Split(SplitRequest {
                split_key: Bytes::copy_from_slice(key),
            })),
        };
        let response = self.command(key, None, Some(admin)).await?;
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
        let key = key.as_ref();
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
        let response = self.command(key, None, Some(admin)).await?;
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
        let admin = AdminRequest {
            request: Some(admin_request::Request::TransferLeader(
                TransferLeaderRequest { node_id },
            )),
        };
        self.command(key.as_ref(), None, Some(admin)).await?;
        Ok(())
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
        let key = key.as_ref();
        if from == to {
            return Err(ClientError::Config(format!(
                "a replica moves between two nodes; both are node {from}"
            )));
        }
        let added = self
            .change_replicas(key, &[(ReplicaChangeKind::AddLearner, to)])
            .await?;
        let mut attempts = 0;
        loop {
            match self
                .change_replicas(
                    key,
                    &[
                        (ReplicaChangeKind::Promote, to),
                        (ReplicaChangeKind::Remove, from),
                    ],
                )
                .await
            {
                Err(ClientError::Refused {
                    code: ErrorCode::InvalidChange,
                    message,
                }) if attempts < 5 && message.contains("transfer leadership first") => {
                    // `from` leads: hand its leadership to another voter first.
                    attempts += 1;
                    let other = added.replicas.iter().find(|r| {
                        r.node_id != from
                            && r.node_id != to
                            && r.role == flotilla_transport::meta::ReplicaRole::Voter as i32
                    });
                    let Some(other) = other else {
                        return Err(ClientError::Refused {
                            code: ErrorCode::InvalidChange,
                            message: format!("no voter besides node {from} to lead the range"),
                        });
                    };
                    // The next attempt waits out the transfer (NOT_READY, then NOT_LEADER).
                    self.transfer_leader(key, other.node_id).await?;
                }
                Err(e) => return Err(e),
                // The range is joint until its leader leaves the configuration by itself: the
                // removal, asked again, waits that out (NOT_READY) and is then in effect.
                Ok(_) => {
                    return self
                        .change_replicas(key, &[(ReplicaChangeKind::Remove, from)])
                        .await
                }
            }
        }
    }
}
