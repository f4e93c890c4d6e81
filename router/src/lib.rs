//! Flotilla's client library (DESIGN section 9): a `Client` that routes each request to the
//! leader of the range holding its key, keeps a range cache corrected by the servers' typed
//! errors, retries with backoff within a deadline, and keeps retried writes exactly-once by
//! reusing their `(client_id, seq)`.
//!
//! - [`Client::get`], [`Client::put`], [`Client::delete`], [`Client::delete_range`];
//! - [`Client::scan`]: a stream of the keys of any range of keys, across ranges;
//! - [`Client::batch_get`], [`Client::batch_put`];
//! - [`Client::txn`]: conditional transactions within one range (module [`txn`]);
//! - splits, replica changes and leader transfers for operators.
//!
//! Errors are one enum, [`ClientError`]: [`ClientError::is_retryable`] says whether trying
//! again later may help, and [`ClientError::Indeterminate`] is the one answer after which a
//! write may or may not have applied.

mod admin;
mod batch;
mod cache;
mod client;
mod config;
mod error;
mod kv;
mod routing;
mod scan;
pub mod txn;

pub use self::client::Client;
pub use self::config::{ClientConfig, Consistency};
pub use self::error::ClientError;
pub use self::scan::Scan;
pub use self::txn::{Txn, TxnOutcome};
pub use flotilla_transport::kv::{
    Compare, ErrorCode, KeyValue, ReplicaChangeKind, TxnOp, TxnOpResponse, TxnRequest, TxnResponse,
    WriteResponse,
};
pub use flotilla_transport::meta::NodeState;
pub use flotilla_transport::service::{PlacementStatus, ReadConsistency};
