//! Errors of the storage layer. All of them are fatal for the replica or the node that meets
//! them: the store stops instead of serving from damaged or unsynced state.

use super::codec::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A row failed its checksum or its invariants: reported, never loaded.
    #[error("corrupt {what} of range {range_id}: {detail}")]
    Corruption {
        range_id: u64,
        what: &'static str,
        detail: String,
    },
    #[error("data directory belongs to cluster {found:?}, not {expected:?}")]
    ClusterMismatch { expected: String, found: String },
    #[error("data directory belongs to node {found}, not {expected}")]
    NodeMismatch { expected: u64, found: u64 },
    #[error("data directory {0} has no node identity (not initialized)")]
    NotInitialized(String),
    #[error("range {0} not found on this node")]
    RangeNotFound(u64),
    #[error("range {0} already exists on this node")]
    RangeExists(u64),
    /// A synced write failed. The node must stop: after a failed fsync the page cache may have
    /// dropped the dirty pages, so retrying could report success for data that is gone
    /// (PostgreSQL's fsyncgate).
    #[error("synced write failed, the node must stop: {0}")]
    SyncFailed(String),
    /// An earlier synced write failed; nothing more is written.
    #[error("storage halted after a failed synced write: {0}")]
    Halted(String),
    #[error("invalid snapshot: {0}")]
    Snapshot(String),
}

impl EngineError {
    pub(crate) fn corruption(range_id: u64, what: &'static str, detail: impl ToString) -> Self {
        Self::Corruption {
            range_id,
            what,
            detail: detail.to_string(),
        }
    }

    pub(crate) fn codec(range_id: u64, what: &'static str, e: CodecError) -> Self {
        Self::corruption(range_id, what, e)
    }
}

impl From<EngineError> for crate::raft::StorageError {
    fn from(e: EngineError) -> Self {
        crate::raft::StorageError::Io(e.to_string())
    }
}
