//! Scans across ranges: `client.scan(a..b)` pages through every range the span touches, in key
//! order (or descending with `.reverse()`), each page routed and retried like any read. Nothing caps a scan but the caller's own
//! `limit`: it is a stream, so a scan of the whole keyspace holds one page in memory.

use std::ops::{Bound, RangeBounds};

use bytes::Bytes;
use flotilla_transport::kv::{KeyValue, ScanRequest};
use flotilla_transport::service::{read_request, read_response};

use crate::config::Consistency;
use futures_util::stream::{self, Stream, TryStreamExt};

use crate::client::{internal, Client, Target};
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
    reverse: bool,
    consistency: Consistency,
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
            reverse: false,
            consistency: self.inner.config.read_consistency,
        }
    }
}

/// Where the next page of a scan begins.
#[derive(Clone, Debug)]
enum Next {
    /// Forward: its first key (inclusive).
    Start(Bytes),
    /// Reverse: its end (exclusive); `None`: past every key.
    End(Option<Bytes>),
}

/// Where a scan is between pages.
struct Cursor {
    scan: Scan,
    next: Option<Next>,
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

    /// In descending key order (from the end of the span back to its start).
    pub fn reverse(mut self) -> Self {
        self.reverse = true;
        self
    }

    /// Reads at `consistency` instead of the client's default.
    pub fn consistency(mut self, consistency: impl Into<Consistency>) -> Self {
        self.consistency = consistency.into();
        self
    }

    fn is_empty_span(&self) -> bool {
        self.end.as_ref().is_some_and(|end| *end <= self.start)
    }

    /// The keys, one page at a time.
    pub fn stream(self) -> impl Stream<Item = Result<KeyValue, ClientError>> + Send {
        let first = if self.reverse {
            Next::End(self.end.clone())
        } else {
            Next::Start(self.start.clone())
        };
        let next = (!self.is_empty_span()).then_some(first);
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
    /// The next page: its request, the range to send it to, and where the one after begins.
    async fn page(&mut self, at: Next) -> Result<Vec<KeyValue>, ClientError> {
        let remaining = self.scan.limit.map(|l| l - self.returned.min(l));
        if remaining == Some(0) {
            return Ok(Vec::new());
        }
        let want = remaining.map_or(PAGE_KEYS, |r| {
            u32::try_from(r).unwrap_or(PAGE_KEYS).min(PAGE_KEYS)
        });
        let (start, end, route) = match &at {
            Next::Start(from) => (
                from.clone(),
                self.scan.end.clone().unwrap_or_default(),
                internal(from),
            ),
            // An empty end on the wire and in the route: past every key (the last range).
            Next::End(end) => (
                self.scan.start.clone(),
                end.clone().unwrap_or_default(),
                end.as_ref().map(|e| internal(e)).unwrap_or_default(),
            ),
        };
        let request = read_request::Request::Scan(ScanRequest {
            start,
            end,
            limit: want,
            limit_bytes: 0,
            keys_only: self.scan.keys_only,
            reverse: self.scan.reverse,
        });
        let target = match at {
            Next::Start(_) => Target::Key(&route),
            Next::End(_) => Target::Before(&route),
        };
        let response = self
            .scan
            .client
            .read_at(target, self.scan.consistency, request)
            .await?;
        let read_response::Response::Scan(page) = response else {
            return Err(ClientError::Config(
                "a scan answered with another response".into(),
            ));
        };
        self.returned += page.kvs.len();
        let done = self.scan.limit.is_some_and(|l| self.returned >= l);
        if page.more && !done {
            // This range has more, or the span goes on in the next range (the one before, in
            // reverse): either way the next page must begin past this one's beginning.
            let advanced = match &at {
                Next::Start(from) => page.next_key > *from,
                Next::End(None) => true,
                Next::End(Some(end)) => page.next_key < *end,
            };
            if !advanced {
                return Err(ClientError::Config(format!(
                    "a scan page at {at:?} continues at {:?}: no progress",
                    page.next_key
                )));
            }
            self.next = Some(if self.scan.reverse {
                Next::End(Some(page.next_key))
            } else {
                Next::Start(page.next_key)
            });
        }
        Ok(page.kvs)
    }
}
