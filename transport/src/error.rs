//! Errors of the transport, mapped in one place to the RPC codes on the wire.

use crate::frame::FrameError;
use crate::tls::TlsError;
use crate::wire::RpcCode;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid transport config: {0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot bind {addr}: {reason}")]
    Bind {
        addr: std::net::SocketAddr,
        reason: String,
    },
    #[error("no address known for node {0}")]
    UnknownPeer(u64),
    #[error("connecting to node {node}: {reason}")]
    Connect { node: u64, reason: String },
    #[error("peer refused: {0}")]
    PeerRefused(String),
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("rpc {method} failed ({code:?}): {message}")]
    Rpc {
        method: String,
        code: RpcCode,
        message: String,
    },
    #[error("deadline exceeded")]
    DeadlineExceeded,
    #[error("snapshot stream: {0}")]
    Snapshot(String),
    #[error("transport shut down")]
    Shutdown,
}

impl TransportError {
    /// The wire code of this error when it ends an RPC.
    pub fn rpc_code(&self) -> RpcCode {
        match self {
            TransportError::Rpc { code, .. } => *code,
            TransportError::DeadlineExceeded => RpcCode::DeadlineExceeded,
            TransportError::Frame(_) => RpcCode::BadRequest,
            TransportError::UnknownPeer(_)
            | TransportError::Connect { .. }
            | TransportError::ConnectionLost(_)
            | TransportError::Shutdown => RpcCode::Unavailable,
            _ => RpcCode::Internal,
        }
    }
}

/// What a server-side RPC handler answers with when it fails.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{code:?}: {message}")]
pub struct RpcStatus {
    pub code: RpcCode,
    pub message: String,
}

impl RpcStatus {
    pub fn new(code: RpcCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
