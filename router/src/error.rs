use flotilla_transport::kv::ErrorCode;
use flotilla_transport::TransportError;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster refused the request for a reason retrying cannot fix (limits, malformed,
    /// expired session): the code is stable on the wire. Nothing was applied.
    #[error("refused ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    /// No answer within the deadline, and nothing was applied: a read, or a write that no
    /// node can have taken (every attempt was refused before the log).
    #[error("no answer within {deadline_ms} ms (last error: {last})")]
    Timeout { deadline_ms: u64, last: String },
    /// A write with no final answer by the deadline that some node may have taken: it may or
    /// may not have applied. Read the key to find out; a new write is a new operation.
    #[error("the write may or may not have applied: no final answer within {deadline_ms} ms (last error: {last})")]
    Indeterminate { deadline_ms: u64, last: String },
    /// A transaction whose keys lie in more than one range (cross-range transactions are not
    /// supported yet): nothing was sent.
    #[error("the transaction's keys span ranges {ranges:?}: a transaction runs within one range")]
    CrossRange { ranges: Vec<u64> },
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl ClientError {
    /// Whether the same call may succeed if made again later (the cluster was unavailable or
    /// slow). After [`ClientError::Indeterminate`] a retry is a second write: check first
    /// when applying twice matters, or use a revision-checked transaction.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Timeout { .. } | ClientError::Indeterminate { .. } => true,
            ClientError::Transport(_) => true,
            ClientError::Refused { code, .. } => matches!(
                code,
                ErrorCode::ServerBusy
                    | ErrorCode::Timeout
                    | ErrorCode::NotReady
                    | ErrorCode::NotLeader
                    | ErrorCode::ProposalDropped
            ),
            ClientError::CrossRange { .. } | ClientError::Config(_) => false,
        }
    }

    /// Whether a write that failed with this error may have applied.
    pub fn may_have_applied(&self) -> bool {
        matches!(
            self,
            ClientError::Indeterminate { .. }
                // The session already applied that sequence number; only its answer is gone.
                | ClientError::Refused {
                    code: ErrorCode::ResponseDiscarded,
                    ..
                }
        )
    }
}
