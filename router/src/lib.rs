//! Flotilla's client library (DESIGN section 9): a `Client` that routes each request to the
//! leader of the range holding its key, keeps a range cache corrected by the servers' typed
//! errors, retries with backoff within a deadline, and keeps retried writes exactly-once by
//! reusing their `(client_id, seq)`.
//!
//! This is the part the CLI and the tests need now; the full API (streams across ranges,
//! batches, placement lookups) arrives with the client library issue.

mod cache;
mod client;
mod config;
mod error;

pub use self::client::Client;
pub use self::config::ClientConfig;
pub use self::error::ClientError;
pub use flotilla_transport::kv::{
    Compare, ErrorCode, KeyValue, ReplicaChangeKind, TxnOp, TxnOpResponse, TxnRequest, TxnResponse,
    WriteResponse,
};
pub use flotilla_transport::service::ReadConsistency;
