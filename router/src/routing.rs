//! Where the range cache comes from: the meta range's routing records (`routing.LocateKey`,
//! answered by any node with a meta replica), and the members' addresses from `cluster.Info`.
//! Records are hints: a stale one is corrected by the range's own typed refusal.

use std::time::Instant;

use flotilla_transport::service::{LocateKeyRequest, LocateKeyResponse};
use prost::Message as _;

use crate::client::Client;
use crate::error::ClientError;

impl Client {
    /// Fills the cache for internal key `key` from the routing record of its range, at the
    /// next node that has one; learns the members first when none is known. Falls back to a
    /// node's own view (`cluster.Info`) when no node answers from the records.
    pub(crate) async fn locate(&self, key: &[u8], deadline: Instant) -> Result<(), ClientError> {
        if self.inner.nodes.lock().is_empty() {
            self.refresh(Some(deadline)).await?;
            if self.inner.cache.lock().locate(key).is_some() {
                return Ok(());
            }
        }
        let user = key.get(1..).unwrap_or_default();
        let body = LocateKeyRequest {
            key: bytes::Bytes::copy_from_slice(user),
        }
        .encode_to_vec();
        for _ in 0..self.addresses().len() {
            let addr = self.next_address();
            let Ok(answer) = self
                .call_within(addr, "routing.LocateKey", body.clone(), Some(deadline))
                .await
            else {
                continue;
            };
            let record = LocateKeyResponse::decode(answer)
                .ok()
                .and_then(|r| r.record);
            if let Some(descriptor) = record.as_ref().and_then(|r| r.descriptor.clone()) {
                let leader = record.map_or(0, |r| r.leader_node);
                if !self.inner.nodes.lock().contains_key(&leader) {
                    // A member this client has not heard of (a joiner): learn its address.
                    let _ = self.refresh(Some(deadline)).await;
                }
                self.inner.cache.lock().insert(descriptor, leader);
                return Ok(());
            }
        }
        self.refresh(Some(deadline)).await
    }
}

impl Client {
    /// Every range's routing record (descriptor, leader, leader's term), in key order, from
    /// the meta range as the next node that has a replica of it knows them.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when no node answers from the records.
    pub async fn ranges(&self) -> Result<Vec<flotilla_transport::meta::RangeRecord>, ClientError> {
        use flotilla_transport::service::{ScanRangesRequest, ScanRangesResponse};
        const PAGE: u32 = 1_000;
        let deadline = Instant::now() + self.inner.config.deadline;
        if self.inner.nodes.lock().is_empty() {
            self.refresh(Some(deadline)).await?;
        }
        let mut records = Vec::new();
        let mut start = bytes::Bytes::new();
        let mut last_error = String::from("no node answered");
        let mut tries = 0;
        while Instant::now() < deadline {
            let addr = self.next_address();
            let body = ScanRangesRequest {
                start: start.clone(),
                end: bytes::Bytes::new(),
                limit: PAGE,
            }
            .encode_to_vec();
            let page = match self
                .call_within(addr, "routing.ScanRanges", body, Some(deadline))
                .await
                .map_err(|e| e.to_string())
                .and_then(|b| ScanRangesResponse::decode(b).map_err(|e| e.to_string()))
            {
                Ok(page) => page.records,
                Err(e) => {
                    last_error = format!("{addr}: {e}");
                    tries += 1;
                    if tries > 3 * self.addresses().len() {
                        break;
                    }
                    continue;
                }
            };
            let full = page.len() as u32 >= PAGE;
            let next = page
                .last()
                .and_then(|r| r.descriptor.as_ref())
                .map(|d| d.end_key.clone());
            records.extend(page);
            match next {
                // Ranges are keyed by internal keys; the request takes user keys.
                Some(end) if full && !end.is_empty() => {
                    start = bytes::Bytes::copy_from_slice(end.get(1..).unwrap_or_default());
                }
                _ => return Ok(records),
            }
        }
        Err(ClientError::Timeout {
            deadline_ms: self.inner.config.deadline.as_millis() as u64,
            last: last_error,
        })
    }
}

impl Client {
    /// Fills the cache with the range holding the internal keys just below `key` (an empty
    /// `key`: the last range), from the routing records of the ranges overlapping a short span
    /// below it: the last of them is that range.
    pub(crate) async fn locate_before(
        &self,
        key: &[u8],
        deadline: Instant,
    ) -> Result<(), ClientError> {
        use flotilla_transport::service::{ScanRangesRequest, ScanRangesResponse};
        if self.inner.nodes.lock().is_empty() {
            self.refresh(Some(deadline)).await?;
        }
        let user_end = key.get(1..).unwrap_or_default();
        // A key below `key` close enough that at most a few ranges lie in between.
        let below: Vec<u8> = match user_end.split_last() {
            None => vec![0xff; 16],
            Some((0, head)) => head.to_vec(),
            Some((last, head)) => [head, &[last - 1], &[0xff; 16][..]].concat(),
        };
        let body = ScanRangesRequest {
            start: bytes::Bytes::from(below),
            end: bytes::Bytes::copy_from_slice(user_end),
            limit: 0,
        }
        .encode_to_vec();
        for _ in 0..self.addresses().len() {
            let addr = self.next_address();
            let Ok(answer) = self
                .call_within(addr, "routing.ScanRanges", body.clone(), Some(deadline))
                .await
            else {
                continue;
            };
            let Ok(page) = ScanRangesResponse::decode(answer) else {
                continue;
            };
            if page.records.is_empty() {
                continue;
            }
            let mut cache = self.inner.cache.lock();
            for r in page.records {
                if let Some(d) = r.descriptor {
                    cache.insert(d, r.leader_node);
                }
            }
            return Ok(());
        }
        self.refresh(Some(deadline)).await
    }
}
