//! Refusals of the key-value layer that a client can act on, mapped to the wire in one place
//! (`From<KvError> for wire::KvError`) with stable codes.

use flotilla_transport::kv::{ErrorCode, KvError as WireError};
use flotilla_transport::meta::RangeDescriptor;

/// Why a write or read was refused. A refused write was not applied.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum KvError {
    #[error("key not in range {range_id}")]
    KeyNotInRange {
        range_id: u64,
        current: Box<RangeDescriptor>,
    },
    #[error(
        "range {range_id} epoch changed (request has version {requested}, range {current_version})"
    )]
    EpochNotMatch {
        range_id: u64,
        requested: u64,
        current_version: u64,
        current: Box<RangeDescriptor>,
    },
    #[error("range {0} not found")]
    RangeNotFound(u64),
    #[error("key of {size} bytes exceeds the limit of {limit}")]
    KeyTooLarge { size: usize, limit: usize },
    #[error("value of {size} bytes exceeds the limit of {limit}")]
    ValueTooLarge { size: usize, limit: usize },
    #[error("txn of {ops} operations exceeds the limit of {limit}")]
    TooManyOps { ops: usize, limit: usize },
    #[error("session of client {client_id} expired; its outstanding writes have unknown outcome")]
    SessionExpired { client_id: u64 },
    #[error("response of client {client_id} seq {seq} already discarded")]
    ResponseDiscarded { client_id: u64, seq: u64 },
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("range {range_id}: this replica is not the leader (leader on node {leader_node:?})")]
    NotLeader {
        range_id: u64,
        leader_node: Option<u64>,
        leader_addr: Option<String>,
    },
    #[error("server busy: {0}")]
    ServerBusy(String),
    #[error("no answer within the deadline; the write may or may not have applied")]
    Timeout,
    #[error("range {range_id}: leadership changed before the write committed; it did not apply")]
    ProposalDropped { range_id: u64 },
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("invalid change: {0}")]
    InvalidChange(String),
}

impl KvError {
    /// The stable wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            KvError::KeyNotInRange { .. } => ErrorCode::KeyNotInRange,
            KvError::EpochNotMatch { .. } => ErrorCode::EpochNotMatch,
            KvError::RangeNotFound(_) => ErrorCode::RangeNotFound,
            KvError::KeyTooLarge { .. } => ErrorCode::KeyTooLarge,
            KvError::ValueTooLarge { .. } => ErrorCode::ValueTooLarge,
            KvError::TooManyOps { .. } => ErrorCode::TooManyOps,
            KvError::SessionExpired { .. } => ErrorCode::SessionExpired,
            KvError::ResponseDiscarded { .. } => ErrorCode::ResponseDiscarded,
            KvError::Malformed(_) => ErrorCode::Malformed,
            KvError::NotLeader { .. } => ErrorCode::NotLeader,
            KvError::ServerBusy(_) => ErrorCode::ServerBusy,
            KvError::Timeout => ErrorCode::Timeout,
            KvError::ProposalDropped { .. } => ErrorCode::ProposalDropped,
            KvError::NotReady(_) => ErrorCode::NotReady,
            KvError::InvalidChange(_) => ErrorCode::InvalidChange,
        }
    }

    /// Whether the write was certainly not applied and may be retried elsewhere with the same
    /// sequence number (routing errors). Such refusals are not recorded in the session.
    pub fn is_routing(&self) -> bool {
        matches!(
            self,
            KvError::KeyNotInRange { .. }
                | KvError::EpochNotMatch { .. }
                | KvError::RangeNotFound(_)
                | KvError::NotLeader { .. }
        )
    }
}

impl From<&KvError> for WireError {
    fn from(e: &KvError) -> Self {
        let current = match e {
            KvError::KeyNotInRange { current, .. } | KvError::EpochNotMatch { current, .. } => {
                Some((**current).clone())
            }
            _ => None,
        };
        let (leader_node, leader_addr) = match e {
            KvError::NotLeader {
                leader_node,
                leader_addr,
                ..
            } => (
                leader_node.unwrap_or(0),
                leader_addr.clone().unwrap_or_default(),
            ),
            _ => (0, String::new()),
        };
        WireError {
            code: e.code() as i32,
            message: e.to_string(),
            current,
            leader_node,
            leader_addr,
        }
    }
}
