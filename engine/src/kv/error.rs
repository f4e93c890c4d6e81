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
        WireError {
            code: e.code() as i32,
            message: e.to_string(),
            current,
        }
    }
}
