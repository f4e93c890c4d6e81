//! Errors of the Raft core. Storage failures (fatal: the node must stop) are kept apart from
//! the refusals a caller can act on (not leader, busy).

use thiserror::Error;

/// A setting of [`super::Config`] that cannot work.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("invalid raft config: {field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

/// What a [`super::LogStore`] can fail with.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum StorageError {
    /// The entry was compacted away into a snapshot.
    #[error("log entry compacted")]
    Compacted,
    /// The entry is past the end of the log.
    #[error("log entry unavailable")]
    Unavailable,
    /// The disk failed; the node must stop (fail-stop).
    #[error("storage failure: {0}")]
    Io(String),
}

/// Why a proposal was refused. Nothing was appended.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("leadership is being transferred to replica {to}")]
    TransferInProgress { to: u64 },
    #[error("too many uncommitted bytes ({uncommitted} pending, limit {limit})")]
    UncommittedSizeExceeded { uncommitted: u64, limit: u64 },
    #[error("empty proposal batch")]
    Empty,
    #[error("raft halted after a storage failure: {0}")]
    Halted(String),
}

/// Why a ReadIndex request was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("no known leader to confirm the read")]
    NoLeader,
    #[error("too many pending reads (limit {limit})")]
    TooManyPending { limit: usize },
    #[error("raft halted after a storage failure: {0}")]
    Halted(String),
}

/// Why a leader transfer was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum TransferError {
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("replica {0} is not a voter of this group")]
    NotAVoter(u64),
    #[error("raft halted after a storage failure: {0}")]
    Halted(String),
}

/// Any error the core returns from a call that steps its state.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Error {
    #[error(transparent)]
    Config(ConfigError),
    /// The log store failed earlier; the node must stop. Every later call returns this too.
    #[error("raft halted after a storage failure: {0}")]
    Storage(StorageError),
    /// A peer sent a message that breaks the protocol; it was ignored.
    #[error("message rejected: {0}")]
    InvalidMessage(String),
}

/// Why a membership change was refused. Nothing was proposed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConfChangeError {
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("a membership change is pending at index {index}; wait until it is applied")]
    Pending { index: u64 },
    #[error("leadership is being transferred to replica {to}")]
    TransferInProgress { to: u64 },
    #[error("node {0} is not a member of this group")]
    UnknownNode(u64),
    #[error("node id {0} is reserved")]
    InvalidNode(u64),
    #[error("node {0} appears twice in one change")]
    DuplicateNode(u64),
    #[error("unknown change type {0}")]
    UnknownChangeType(i32),
    #[error("the change would leave the group without a voter")]
    RemovesLastVoter,
    #[error("the group is in a joint configuration; it must leave it first")]
    AlreadyJoint,
    #[error("the group is not in a joint configuration")]
    NotJoint,
    #[error("raft halted after a storage failure: {0}")]
    Halted(String),
}

/// Why a compaction was refused. Nothing was released.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CompactError {
    #[error("index {index} is not applied yet (applied {applied})")]
    NotApplied { index: u64, applied: u64 },
    #[error("the log has no entry {index} of term {term}")]
    TermMismatch { index: u64, term: u64 },
    #[error("index {index} is compacted already")]
    AlreadyCompacted { index: u64 },
    #[error("snapshot metadata without a configuration")]
    NoConfiguration,
    #[error("raft halted after a storage failure: {0}")]
    Halted(String),
}
