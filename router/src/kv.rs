//! The key-value operations on single keys and spans within one range: get, put, delete,
//! delete_range, and the wire form of a transaction (the builder is in `txn.rs`).

use bytes::Bytes;
use flotilla_transport::kv::{
    write_request, write_response, DeleteRangeRequest, DeleteRequest, GetRequest, KeyValue,
    PutRequest, TxnRequest, TxnResponse, WriteRequest, WriteResponse,
};
use flotilla_transport::service::{read_request, read_response};

use crate::config::Consistency;

use crate::client::{internal, Client};
use crate::error::ClientError;

impl Client {
    async fn write_op(
        &self,
        routing_key: &[u8],
        request: write_request::Request,
    ) -> Result<WriteResponse, ClientError> {
        self.write(
            routing_key,
            WriteRequest {
                request: Some(request),
            },
        )
        .await
    }

    /// The value of `key` (linearizable unless configured otherwise).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<KeyValue>, ClientError> {
        self.get_with(key, self.inner.config.read_consistency).await
    }

    /// The value of `key` at the given consistency.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn get_with(
        &self,
        key: impl AsRef<[u8]>,
        consistency: impl Into<Consistency>,
    ) -> Result<Option<KeyValue>, ClientError> {
        let key = key.as_ref();
        let request = read_request::Request::Get(GetRequest {
            key: Bytes::copy_from_slice(key),
        });
        match self
            .read(&internal(key), consistency.into(), request)
            .await?
        {
            read_response::Response::Get(g) => Ok(g.kv),
            _ => Err(ClientError::Config(
                "a get answered with another response".into(),
            )),
        }
    }

    /// Sets `key` to `value`; returns the write's revision.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        let key = key.as_ref();
        let request = write_request::Request::Put(PutRequest {
            key: Bytes::copy_from_slice(key),
            value: value.into(),
            prev_kv: false,
        });
        let response = self.write_op(key, request).await?;
        Ok(response.revision)
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1).
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<u64, ClientError> {
        let key = key.as_ref();
        let request = write_request::Request::Delete(DeleteRequest {
            key: Bytes::copy_from_slice(key),
            prev_kv: false,
        });
        let response = self.write_op(key, request).await?;
        match response.response {
            Some(write_response::Response::Delete(d)) => Ok(d.deleted),
            _ => Ok(0),
        }
    }

    /// Deletes the keys of `[start, end)` within one range.
    ///
    /// # Errors
    /// [`ClientError`] (`KeyNotInRange` when the span crosses ranges).
    pub async fn delete_range(
        &self,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
    ) -> Result<u64, ClientError> {
        let start = start.as_ref();
        let request = write_request::Request::DeleteRange(DeleteRangeRequest {
            start: Bytes::copy_from_slice(start),
            end: Bytes::copy_from_slice(end.as_ref()),
        });
        let response = self.write_op(start, request).await?;
        match response.response {
            Some(write_response::Response::DeleteRange(d)) => Ok(d.deleted),
            _ => Ok(0),
        }
    }

    /// A conditional transaction (etcd's Txn) as the wire has it, within one range: returns
    /// its revision and response. [`Client::txn`] builds one.
    ///
    /// # Errors
    /// [`ClientError::CrossRange`] when its keys span ranges (nothing is sent), else
    /// [`ClientError`].
    pub async fn txn_request(&self, txn: TxnRequest) -> Result<(u64, TxnResponse), ClientError> {
        let span = crate::txn::span(&txn);
        let key = span
            .as_ref()
            .map(|(start, _)| start.get(1..).unwrap_or_default().to_vec())
            .unwrap_or_default();
        let response = self
            .command_within(
                &key,
                Some(WriteRequest {
                    request: Some(write_request::Request::Txn(txn)),
                }),
                None,
                span,
            )
            .await?;
        match response.response {
            Some(write_response::Response::Txn(t)) => Ok((response.revision, t)),
            _ => Err(ClientError::Config(
                "a txn answered with another response".into(),
            )),
        }
    }
}
