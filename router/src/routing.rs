//! Where the range cache comes from: the meta range's routing records (`routing.LocateKey` and
//! `routing.ScanRanges`, answered by any node with a meta replica), and the members' addresses
//! from `cluster.Info`. Records are hints: a stale one is corrected by the range's own typed
//! refusal.

use std::time::Instant;

use bytes::Bytes;
use flotilla_transport::meta::RangeRecord;
use flotilla_transport::service::{
    LocateKeyRequest, LocateKeyResponse, ScanRangesRequest, ScanRangesResponse,
};
use prost::Message;

use crate::client::{Client, USER_KEY_PREFIX};
use crate::error::ClientError;

/// Records per `routing.ScanRanges` page.
const RECORDS_PAGE: u32 = 1_000;

impl Client {
    /// Learns the members' addresses when none is known yet.
    async fn ensure_members(&self, deadline: Instant) -> Result<(), ClientError> {
        if self.inner.nodes.lock().is_empty() {
            self.refresh(Some(deadline)).await?;
        }
        Ok(())
    }

    /// Asks the known nodes in turn, once each, until one answers `method` with a response
    /// that `accept` takes.
    async fn ask_routing<T: Message + Default>(
        &self,
        method: &str,
        request: impl Message,
        deadline: Instant,
        accept: impl Fn(&T) -> bool,
    ) -> Result<T, String> {
        let body = request.encode_to_vec();
        let mut last = String::from("no node answered");
        for _ in 0..self.addresses().len() {
            let addr = self.next_address();
            match self
                .call_within(addr, method, body.clone(), Some(deadline))
                .await
                .map_err(|e| e.to_string())
                .and_then(|answer| T::decode(answer).map_err(|e| e.to_string()))
            {
                Ok(answer) if accept(&answer) => return Ok(answer),
                Ok(_) => last = format!("{addr}: no record"),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    }

    /// Puts records into the cache, learning the address of a leader not heard of yet (a
    /// joiner).
    async fn cache_records(&self, records: Vec<RangeRecord>, deadline: Instant) {
        let unknown_leader = {
            let nodes = self.inner.nodes.lock();
            records
                .iter()
                .any(|r| r.leader_node != 0 && !nodes.contains_key(&r.leader_node))
        };
        if unknown_leader {
            let _ = self.refresh(Some(deadline)).await;
        }
        let mut cache = self.inner.cache.lock();
        for r in records {
            if let Some(d) = r.descriptor {
                cache.insert(d, r.leader_node);
            }
        }
    }

    /// Fills the cache for internal key `key` from the routing record of its range, at the
    /// next node that has one; learns the members first when none is known. Falls back to a
    /// node's own view (`cluster.Info`) when no node answers from the records.
    pub(crate) async fn locate(&self, key: &[u8], deadline: Instant) -> Result<(), ClientError> {
        self.ensure_members(deadline).await?;
        if self.inner.cache.lock().locate(key).is_some() {
            return Ok(());
        }
        if key.first().is_none_or(|b| *b < USER_KEY_PREFIX) {
            // The meta range has no routing record of its own: the nodes that host it list it
            // in their `cluster.Info`.
            return self.refresh(Some(deadline)).await;
        }
        let request = LocateKeyRequest {
            key: Bytes::copy_from_slice(key.get(1..).unwrap_or_default()),
        };
        let answer = self
            .ask_routing(
                "routing.LocateKey",
                request,
                deadline,
                |r: &LocateKeyResponse| r.record.as_ref().is_some_and(|r| r.descriptor.is_some()),
            )
            .await;
        match answer {
            Ok(LocateKeyResponse {
                record: Some(record),
            }) => {
                self.cache_records(vec![record], deadline).await;
                Ok(())
            }
            _ => self.refresh(Some(deadline)).await,
        }
    }

    /// Fills the cache with the range holding the internal keys just below `key` (an empty
    /// `key`: the last range), from the routing records of the ranges overlapping a short span
    /// below it: the last of them is that range.
    pub(crate) async fn locate_before(
        &self,
        key: &[u8],
        deadline: Instant,
    ) -> Result<(), ClientError> {
        self.ensure_members(deadline).await?;
        let user_end = key.get(1..).unwrap_or_default();
        // A key below `key` close enough that at most a few ranges lie in between.
        let below: Vec<u8> = match user_end.split_last() {
            None => vec![0xff; 16],
            Some((0, head)) => head.to_vec(),
            Some((last, head)) => [head, &[last - 1], &[0xff; 16][..]].concat(),
        };
        let request = ScanRangesRequest {
            start: Bytes::from(below),
            end: Bytes::copy_from_slice(user_end),
            limit: 0,
        };
        let answer = self
            .ask_routing(
                "routing.ScanRanges",
                request,
                deadline,
                |r: &ScanRangesResponse| !r.records.is_empty(),
            )
            .await;
        match answer {
            Ok(page) => {
                self.cache_records(page.records, deadline).await;
                Ok(())
            }
            Err(_) => self.refresh(Some(deadline)).await,
        }
    }

    /// Every range's routing record (descriptor, leader, leader's term), in key order, from
    /// the meta range as the next node that has a replica of it knows them.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when no node answers from the records.
    pub async fn ranges(&self) -> Result<Vec<RangeRecord>, ClientError> {
        let deadline = Instant::now() + self.inner.config.deadline;
        self.ensure_members(deadline).await?;
        let mut records = Vec::new();
        let mut start = Bytes::new();
        loop {
            let request = ScanRangesRequest {
                start: start.clone(),
                end: Bytes::new(),
                limit: RECORDS_PAGE,
            };
            let page = self
                .ask_routing(
                    "routing.ScanRanges",
                    request,
                    deadline,
                    |_: &ScanRangesResponse| true,
                )
                .await
                .map_err(|last| ClientError::Timeout {
                    deadline_ms: self.inner.config.deadline.as_millis() as u64,
                    last,
                })?
                .records;
            let full = page.len() as u32 >= RECORDS_PAGE;
            let next = page
                .last()
                .and_then(|r| r.descriptor.as_ref())
                .map(|d| d.end_key.clone());
            records.extend(page);
            match next {
                // Ranges are keyed by internal keys; the request takes user keys.
                Some(end) if full && !end.is_empty() => {
                    start = Bytes::copy_from_slice(end.get(1..).unwrap_or_default());
                }
                _ => return Ok(records),
            }
        }
    }
}
