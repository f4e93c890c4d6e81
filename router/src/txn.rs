//! Conditional transactions (etcd's Txn) within one range, built fluently:
//!
//! ```no_run
//! # async fn demo(client: flotilla_client::Client) -> Result<(), flotilla_client::ClientError> {
//! use flotilla_client::txn::{self, CompareOp};
//! // Increment `counter` only if nobody wrote it since we read it at revision 7.
//! let outcome = client
//!     .txn()
//!     .when([txn::mod_revision("counter", CompareOp::Equal, 7)])
//!     .and_then([txn::put("counter", "42")])
//!     .or_else([txn::get("counter")])
//!     .commit()
//!     .await?;
//! println!("applied: {} at revision {}", outcome.succeeded, outcome.revision);
//! # Ok(()) }
//! ```
//!
//! Every key a transaction touches must lie in one range: one that spans ranges fails with
//! [`ClientError::CrossRange`] before anything is sent (cross-range transactions are a later
//! issue's).

use bytes::Bytes;
pub use flotilla_transport::kv::CompareOp;
use flotilla_transport::kv::{
    txn_op, txn_op_response, Compare, CompareTarget, DeleteRangeRequest, DeleteRequest, GetRequest,
    KeyValue, PutRequest, TxnOp, TxnOpResponse, TxnRequest,
};

use crate::client::{internal, Client};
use crate::error::ClientError;

/// A transaction being built: `client.txn()`, then `when`, `and_then`, `or_else`, `commit`.
#[must_use = "a transaction does nothing until committed"]
#[derive(Clone, Debug)]
pub struct Txn {
    client: Client,
    request: TxnRequest,
}

/// What a committed transaction did.
#[derive(Clone, Debug, PartialEq)]
pub struct TxnOutcome {
    /// Whether every compare held (the `and_then` branch ran; else `or_else`).
    pub succeeded: bool,
    /// The transaction's revision (the Raft index of its entry in its range).
    pub revision: u64,
    /// One response per operation of the branch that ran, in order.
    pub responses: Vec<TxnOpResponse>,
}

impl TxnOutcome {
    /// The key-value pairs the branch's `get`s read, in order (`None`: absent).
    pub fn gets(&self) -> Vec<Option<KeyValue>> {
        self.responses
            .iter()
            .filter_map(|r| match &r.response {
                Some(txn_op_response::Response::Get(g)) => Some(g.kv.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Client {
    /// A transaction within one range (see the [`txn`](crate::txn) module).
    pub fn txn(&self) -> Txn {
        Txn {
            client: self.clone(),
            request: TxnRequest::default(),
        }
    }
}

impl Txn {
    /// Conditions that must all hold for `and_then` to run.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.request.compares.extend(compares);
        self
    }

    /// What runs when every condition holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.request.success.extend(ops);
        self
    }

    /// What runs otherwise.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.request.failure.extend(ops);
        self
    }

    /// Runs the transaction, exactly once.
    ///
    /// # Errors
    /// [`ClientError::CrossRange`] when its keys span ranges, else as any write.
    pub async fn commit(self) -> Result<TxnOutcome, ClientError> {
        let (revision, response) = self.client.txn_request(self.request).await?;
        Ok(TxnOutcome {
            succeeded: response.succeeded,
            revision,
            responses: response.responses,
        })
    }
}

fn compare(key: impl AsRef<[u8]>, target: CompareTarget, op: CompareOp) -> Compare {
    Compare {
        key: Bytes::copy_from_slice(key.as_ref()),
        target: target as i32,
        op: op as i32,
        ..Compare::default()
    }
}

/// The key's value compared with `value`.
pub fn value(key: impl AsRef<[u8]>, op: CompareOp, value: impl Into<Bytes>) -> Compare {
    Compare {
        value: value.into(),
        ..compare(key, CompareTarget::Value, op)
    }
}

/// The revision of the key's last write compared with `revision` (0: absent).
pub fn mod_revision(key: impl AsRef<[u8]>, op: CompareOp, revision: u64) -> Compare {
    Compare {
        revision,
        ..compare(key, CompareTarget::ModRevision, op)
    }
}

/// The revision that created the key compared with `revision` (0: absent).
pub fn create_revision(key: impl AsRef<[u8]>, op: CompareOp, revision: u64) -> Compare {
    Compare {
        revision,
        ..compare(key, CompareTarget::CreateRevision, op)
    }
}

/// The number of writes since the key's creation compared with `version`.
pub fn version(key: impl AsRef<[u8]>, op: CompareOp, version: u64) -> Compare {
    Compare {
        revision: version,
        ..compare(key, CompareTarget::Version, op)
    }
}

/// The key exists.
pub fn exists(key: impl AsRef<[u8]>) -> Compare {
    Compare {
        exists: true,
        ..compare(key, CompareTarget::Exists, CompareOp::Equal)
    }
}

/// The key does not exist.
pub fn missing(key: impl AsRef<[u8]>) -> Compare {
    compare(key, CompareTarget::Exists, CompareOp::Equal)
}

fn op(op: txn_op::Op) -> TxnOp {
    TxnOp { op: Some(op) }
}

/// Sets `key` to `value`.
pub fn put(key: impl AsRef<[u8]>, value: impl Into<Bytes>) -> TxnOp {
    op(txn_op::Op::Put(PutRequest {
        key: Bytes::copy_from_slice(key.as_ref()),
        value: value.into(),
        prev_kv: false,
    }))
}

/// Reads `key` (seeing the writes of earlier operations in the branch).
pub fn get(key: impl AsRef<[u8]>) -> TxnOp {
    op(txn_op::Op::Get(GetRequest {
        key: Bytes::copy_from_slice(key.as_ref()),
    }))
}

/// Deletes `key`.
pub fn delete(key: impl AsRef<[u8]>) -> TxnOp {
    op(txn_op::Op::Delete(DeleteRequest {
        key: Bytes::copy_from_slice(key.as_ref()),
        prev_kv: false,
    }))
}

/// Deletes the keys of `[start, end)` (an empty end: to the end of the range).
pub fn delete_range(start: impl AsRef<[u8]>, end: impl AsRef<[u8]>) -> TxnOp {
    op(txn_op::Op::DeleteRange(DeleteRangeRequest {
        start: Bytes::copy_from_slice(start.as_ref()),
        end: Bytes::copy_from_slice(end.as_ref()),
    }))
}

/// The internal span `[start, end)` every key of `txn` lies in, or `None` for a transaction
/// that touches no key. A `delete_range` with an empty end reaches the end of the range that
/// holds its start, so only its start counts.
pub(crate) fn span(txn: &TxnRequest) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut span: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut cover = |from: &[u8], to: Option<&[u8]>| {
        let first = internal(from);
        let past = match to {
            Some(t) if !t.is_empty() => internal(t),
            _ => [first.as_slice(), &[0]].concat(),
        };
        span = Some(match span.take() {
            None => (first, past),
            Some((s, e)) => (s.min(first), e.max(past)),
        });
    };
    for c in &txn.compares {
        cover(&c.key, None);
    }
    for o in txn.success.iter().chain(&txn.failure) {
        match &o.op {
            Some(txn_op::Op::Put(p)) => cover(&p.key, None),
            Some(txn_op::Op::Delete(d)) => cover(&d.key, None),
            Some(txn_op::Op::Get(g)) => cover(&g.key, None),
            Some(txn_op::Op::DeleteRange(d)) => cover(&d.start, Some(&d.end)),
            None => {}
        }
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_span_covers_every_key_and_range() {
        let t = TxnRequest {
            compares: vec![exists("m")],
            success: vec![put("b", "1"), delete_range("c", "d")],
            failure: vec![get("z")],
        };
        let (start, end) = span(&t).expect("keys");
        assert_eq!(start, internal(b"b"));
        assert_eq!(end, [internal(b"z"), vec![0]].concat());
        let to_range_end = TxnRequest {
            success: vec![delete_range("c", "")],
            ..TxnRequest::default()
        };
        assert_eq!(
            span(&to_range_end),
            Some((internal(b"c"), [internal(b"c"), vec![0]].concat()))
        );
        assert_eq!(span(&TxnRequest::default()), None);
    }
}
