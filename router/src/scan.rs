//! Scans across ranges: `client.scan(a..b)` pages through every range the span touches, in key
//! order, each page routed and retried like any read. Nothing caps a scan but the caller's own
//! `limit`: it is a stream, so a scan of the whole keyspace holds one page in memory.

use std::ops::{Bound, RangeBounds};

use bytes::Bytes;
use flotilla_transport::kv::{KeyValue, ScanRequest};
use flotilla_transport::service::{read_request, read_response, ReadConsistency};
use futures_util::stream::{self, Stream, TryStreamExt};

use crate::client::{internal, Client};
use crate::error::ClientError;

/// Keys per page asked of a range (the server caps pages by bytes too).
const PAGE_KEYS: u32 = 1_000;

/// A scan being set up: `client.scan(range)`, options, then [`Scan::stream`] or
/// [`Scan::collect`].
#[must_use = "a scan does nothing until streamed or collected"]
#[derive(Clone, Debug)]
pub struct Scan {
    client: Client,
    /// First user key (inclusive).
    start: Bytes,
    /// End user key (exclusive); `None`: to the end of the keyspace.
    end: Option<Bytes>,
    limit: Option<usize>,
    keys_only: bool,
    consistency: ReadConsistency,
}

/// The smallest key after `key`.
fn successor(key: &[u8]) -> Bytes {
    let mut k = key.to_vec();
    k.push(0);
    k.into()
}

impl Client {
    /// The keys of `range` in key order, across ranges: `"a".."c"`, `"a"..="c"`, `"a"..`, `..`
    /// or a `(Bound, Bound)` pair. Configure it, then [`Scan::stream`] or [`Scan::collect`].
    ///
    /// ```no_run
    /// # async fn demo(client: flotilla_client::Client) -> Result<(), flotilla_client::ClientError> {
    /// use futures_util::TryStreamExt;
    /// let first_ten = client.scan("user/".."user0").limit(10).collect().await?;
    /// let mut all = std::pin::pin!(client.scan::<&str>(..).keys_only().stream());
    /// while let Some(kv) = all.try_next().await? {
    ///     println!("{:?}", kv.key);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn scan<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Scan {
        let start = match range.start_bound() {
            Bound::Included(k) => Bytes::copy_from_slice(k.as_ref()),
            Bound::Excluded(k) => successor(k.as_ref()),
            Bound::Unbounded => Bytes::new(),
        };
        let end = match range.end_bound() {
            Bound::Included(k) => Some(successor(k.as_ref())),
            Bound::Excluded(k) => Some(Bytes::copy_from_slice(k.as_ref())),
            Bound::Unbounded => None,
        };
        Scan {
            client: self.clone(),
            start,
            end,
            limit: None,
            keys_only: false,
            consistency: self.inner.config.read_consistency,
        }
    }
}

/// Where a scan is between pages.
struct Cursor {
    scan: Scan,
    next: Option<Bytes>,
    returned: usize,
}

impl Scan {
    /// At most `n` keys.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Keys and revisions without values.
    pub fn keys_only(mut self) -> Self {
        self.keys_only = true;
        self
    }

    /// Reads at `consistency` instead of the client's default.
    pub fn consistency(mut self, consistency: ReadConsistency) -> Self {
        self.consistency = consistency;
        self
    }

    fn is_empty_span(&self) -> bool {
        self.end.as_ref().is_some_and(|end| *end <= self.start)
    }

    /// The keys, one page at a time.
    pub fn stream(self) -> impl Stream<Item = Result<KeyValue, ClientError>> + Send {
        let next = (!self.is_empty_span()).then(|| self.start.clone());
        let cursor = Cursor {
            scan: self,
            next,
            returned: 0,
        };
        stream::try_unfold(cursor, |mut cursor| async move {
            let Some(from) = cursor.next.take() else {
                return Ok::<_, ClientError>(None);
            };
            let page = cursor.page(from).await?;
            Ok(Some((stream::iter(page.into_iter().map(Ok)), cursor)))
        })
        .try_flatten()
    }

    /// Every key, in one vector.
    ///
    /// # Errors
    /// [`ClientError`] from any page.
    pub async fn collect(self) -> Result<Vec<KeyValue>, ClientError> {
        self.stream().try_collect().await
    }
}

impl Cursor {
    /// The page of keys from `from` in the range holding it; sets where the next one starts.
    async fn page(&mut self, from: Bytes) -> Result<Vec<KeyValue>, ClientError> {
        let remaining = self.scan.limit.map(|l| l - self.returned.min(l));
        if remaining == Some(0) {
            return Ok(Vec::new());
        }
        let want = remaining.map_or(PAGE_KEYS, |r| {
            u32::try_from(r).unwrap_or(PAGE_KEYS).min(PAGE_KEYS)
        });
        let request = read_request::Request::Scan(ScanRequest {
            start: from.clone(),
            end: self.scan.end.clone().unwrap_or_default(),
            limit: want,
            limit_bytes: 0,
            keys_only: self.scan.keys_only,
        });
        let response = self
            .scan
            .client
            .read(&internal(&from), self.scan.consistency, request)
            .await?;
        let read_response::Response::Scan(page) = response else {
            return Err(ClientError::Config(
                "a scan answered with another response".into(),
            ));
        };
        self.returned += page.kvs.len();
        let done = self.scan.limit.is_some_and(|l| self.returned >= l);
        if page.more && !done {
            // Either this range has more, or the span goes on in the next range; either way
            // the next page starts past this one's first key.
            if page.next_key <= from {
                return Err(ClientError::Config(format!(
                    "a scan page from {from:?} continues at {:?}: no progress",
                    page.next_key
                )));
            }
            self.next = Some(page.next_key);
        }
        Ok(page.kvs)
    }
}
