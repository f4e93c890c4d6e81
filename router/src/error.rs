use flotilla_transport::kv::ErrorCode;
use flotilla_transport::TransportError;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster refused the request for a reason retrying cannot fix (limits, malformed,
    /// expired session): the code is stable on the wire.
    #[error("refused ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    /// No answer within the deadline. For a write: it may or may not have applied.
    #[error("no answer within {deadline_ms} ms (last error: {last})")]
    Timeout { deadline_ms: u64, last: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
}
