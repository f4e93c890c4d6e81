use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flotilla_transport::kv::AdminRequest;
use flotilla_transport::kv::{
    write_response, CommandHeader, ErrorCode, KvError as WireError, RaftCommand, WriteRequest,
    WriteResponse,
};
use flotilla_transport::meta::RangeDescriptor;
use flotilla_transport::service::{
    read_request, read_response, ClusterInfo, NodeStatus, ReadConsistency, ReadRequest,
    ReadResponse,
};
use flotilla_transport::wire::RpcCode;
use flotilla_transport::{ClientEndpoint, TransportError};
use parking_lot::Mutex;
use prost::Message as _;
use rand::Rng;

pub(crate) use crate::cache::{RangeCache, Route};
use crate::config::ClientConfig;
use crate::config::Consistency;
use crate::error::ClientError;

pub(crate) const USER_KEY_PREFIX: u8 = 0x01;

pub(crate) fn internal(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(USER_KEY_PREFIX);
    k.extend_from_slice(key);
    k
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// What one attempt at one node ended with.
enum Step<T> {
    Done(T),
    /// Worth another attempt (the cache or the target was corrected); why, for the error
    /// after the deadline, and whether the node may have taken a write (no definite answer).
    Retry {
        why: String,
        maybe_taken: bool,
    },
    Fail(ClientError),
}

impl<T> Step<T> {
    /// Another attempt after a definite answer: nothing was taken.
    fn retry(why: impl Into<String>) -> Self {
        Step::Retry {
            why: why.into(),
            maybe_taken: false,
        }
    }

    /// Another attempt after no definite answer: a write may have been taken.
    fn unsure(why: impl Into<String>) -> Self {
        Step::Retry {
            why: why.into(),
            maybe_taken: true,
        }
    }
}

/// Whether range `d` holds the internal span `[start, end)` (an empty end: past every key).
fn holds(d: &RangeDescriptor, start: &[u8], end: &[u8]) -> bool {
    let starts_inside = start >= d.start_key.as_ref();
    let ends_inside = if d.end_key.is_empty() {
        true
    } else {
        !end.is_empty() && end <= d.end_key.as_ref()
    };
    starts_inside && ends_inside
}

/// Which range a call goes to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target<'a> {
    /// The range holding this internal key.
    Key(&'a [u8]),
    /// The range holding the keys just below this internal key (an empty key: the last
    /// range): where a reverse scan ending there starts.
    Before(&'a [u8]),
}

impl Target<'_> {
    fn in_cache(self, cache: &RangeCache) -> Option<Route> {
        match self {
            Target::Key(key) => cache.locate(key),
            Target::Before(key) => cache.locate_before(key),
        }
    }
}

/// What a call is, for routing and for the error at its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    /// A write: to the leader; unanswered, it may have applied.
    Write,
    /// A read at the leader (linearizable).
    Leader,
    /// A read any replica may serve (follower and stale reads).
    AnyReplica,
}

/// A connection to a cluster. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    endpoint: ClientEndpoint,
    pub(crate) cache: Mutex<RangeCache>,
    pub(crate) nodes: Mutex<BTreeMap<u64, SocketAddr>>,
    /// The session new writes use; replaced before the servers could expire it.
    session: Mutex<Arc<Session>>,
    /// Writes in flight: the servers keep a bounded number of responses per session.
    writes: tokio::sync::Semaphore,
    next_endpoint: AtomicUsize,
}

/// A client session in the servers' tables: its id, when it began, its sequence numbers.
struct Session {
    client_id: u64,
    start_ms: u64,
    started: Instant,
    /// The next sequence number, and those without a final answer yet.
    seqs: Mutex<(u64, BTreeSet<u64>)>,
    /// Signalled when a sequence number ends (a write waiting for the window may go).
    released: tokio::sync::Notify,
}

impl Session {
    fn new() -> Self {
        Self {
            client_id: rand::rng().random_range(1..u64::MAX),
            start_ms: now_ms(),
            started: Instant::now(),
            seqs: Mutex::new((1, BTreeSet::new())),
            released: tokio::sync::Notify::new(),
        }
    }

    /// A new sequence number, outstanding until its guard drops; waits while it would be
    /// `MAX_SEQ_WINDOW` or more past the oldest outstanding one.
    async fn begin(self: &Arc<Self>) -> SeqGuard {
        loop {
            let released = self.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            if let Some(guard) = self.try_begin() {
                return guard;
            }
            released.await;
        }
    }

    fn try_begin(self: &Arc<Self>) -> Option<SeqGuard> {
        let mut seqs = self.seqs.lock();
        let seq = seqs.0;
        let oldest = seqs.1.first().copied().unwrap_or(seq);
        if seq >= oldest + MAX_SEQ_WINDOW {
            return None;
        }
        seqs.0 += 1;
        seqs.1.insert(seq);
        Some(SeqGuard {
            session: self.clone(),
            seq,
        })
    }

    fn first_unacked(&self, seq: u64) -> u64 {
        self.seqs.lock().1.first().copied().unwrap_or(seq)
    }
}

/// Ends a write's sequence number however the write ends (answered, failed, cancelled).
struct SeqGuard {
    session: Arc<Session>,
    seq: u64,
}

impl Drop for SeqGuard {
    fn drop(&mut self) {
        self.session.seqs.lock().1.remove(&self.seq);
        self.session.released.notify_waiters();
    }
}

/// Writes in flight per client: below the responses a server keeps per session (256), so a
/// retry always finds its recorded response.
const MAX_WRITES_IN_FLIGHT: usize = 128;

/// How far past its oldest unanswered write a session's newest may be. The servers keep 256
/// responses per session and refuse (RESPONSE_DISCARDED) a retry older than those: a write
/// stuck in retries while others complete must not fall out of that window, or its retry
/// would be refused although it never applied.
const MAX_SEQ_WINDOW: u64 = 192;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("cluster_id", &self.inner.config.cluster_id)
            .field("client_id", &self.client_id())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the cluster through any of the configured endpoints and loads its routes.
    /// Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`ClientError::Config`], or [`ClientError::Timeout`] when no endpoint answered.
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::Config("no endpoints".into()));
        }
        let bind: SocketAddr = if config.endpoints[0].is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .map_err(|e| ClientError::Config(format!("bind address: {e}")))?;
        let Some(tls) = &config.tls else {
            return Err(ClientError::Config(
                "no TLS identity: the cluster takes mutual TLS only; set one with \
                 ClientConfig::with_tls_files(ca, cert, key)"
                    .into(),
            ));
        };
        let endpoint = ClientEndpoint::new(&config.cluster_id, tls, bind)?;
        let client = Self {
            inner: Arc::new(Inner {
                config,
                endpoint,
                cache: Mutex::new(RangeCache::default()),
                nodes: Mutex::new(BTreeMap::new()),
                session: Mutex::new(Arc::new(Session::new())),
                writes: tokio::sync::Semaphore::new(MAX_WRITES_IN_FLIGHT),
                next_endpoint: AtomicUsize::new(0),
            }),
        };
        let deadline = Instant::now() + client.inner.config.deadline;
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            match client.refresh(Some(deadline)).await {
                Ok(()) => return Ok(client),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ClientError::Timeout {
            deadline_ms: client.inner.config.deadline.as_millis() as u64,
            last,
        })
    }

    /// This client's id in the servers' session tables (it changes when the session is
    /// renewed).
    pub fn client_id(&self) -> u64 {
        self.inner.session.lock().client_id
    }

    /// The session for a new write: renewed after half the servers' session TTL, so a
    /// long-lived client never writes with a session the servers may have expired. Writes in
    /// flight keep the session they began with.
    fn session(&self) -> Arc<Session> {
        let mut session = self.inner.session.lock();
        if session.started.elapsed() >= self.inner.config.session_renew_after {
            *session = Arc::new(Session::new());
        }
        session.clone()
    }

    /// Every address the client knows: the configured endpoints and the members learned.
    pub(crate) fn addresses(&self) -> Vec<SocketAddr> {
        let mut all: Vec<SocketAddr> = self.inner.nodes.lock().values().copied().collect();
        for e in &self.inner.config.endpoints {
            if !all.contains(e) {
                all.push(*e);
            }
        }
        all
    }

    pub(crate) fn next_address(&self) -> SocketAddr {
        let all = self.addresses();
        let i = self.inner.next_endpoint.fetch_add(1, Ordering::Relaxed);
        all[i % all.len()]
    }

    async fn call(
        &self,
        addr: SocketAddr,
        method: &str,
        body: Vec<u8>,
    ) -> Result<Bytes, TransportError> {
        self.call_within(addr, method, body, None).await
    }

    /// One attempt, cut at the attempt timeout or at `deadline`, whichever comes first.
    pub(crate) async fn call_within(
        &self,
        addr: SocketAddr,
        method: &str,
        body: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<Bytes, TransportError> {
        let mut timeout = self.inner.config.attempt_timeout;
        if let Some(d) = deadline {
            timeout = timeout.min(d.saturating_duration_since(Instant::now()));
        }
        if timeout.is_zero() {
            return Err(TransportError::DeadlineExceeded);
        }
        self.inner
            .endpoint
            .call(addr, method, body.into(), timeout)
            .await
    }

    /// What the node at `addr` knows of the cluster.
    ///
    /// # Errors
    /// [`ClientError::Transport`].
    pub async fn cluster_info(&self, addr: SocketAddr) -> Result<ClusterInfo, ClientError> {
        let body = self.call(addr, "cluster.Info", Vec::new()).await?;
        ClusterInfo::decode(body)
            .map_err(|e| ClientError::Config(format!("undecodable cluster info: {e}")))
    }

    /// The status of the node at `addr`.
    ///
    /// # Errors
    /// [`ClientError::Transport`].
    pub async fn node_status(&self, addr: SocketAddr) -> Result<NodeStatus, ClientError> {
        let body = self.call(addr, "node.Status", Vec::new()).await?;
        NodeStatus::decode(body)
            .map_err(|e| ClientError::Config(format!("undecodable node status: {e}")))
    }

    /// Reloads members and routes from the next node that answers, by `deadline`.
    pub(crate) async fn refresh(&self, deadline: Option<Instant>) -> Result<(), ClientError> {
        let mut last = None;
        for _ in 0..self.addresses().len() {
            let addr = self.next_address();
            let info = match self
                .call_within(addr, "cluster.Info", Vec::new(), deadline)
                .await
            {
                Ok(body) => ClusterInfo::decode(body)
                    .map_err(|e| ClientError::Config(format!("undecodable cluster info: {e}"))),
                Err(e) => Err(e.into()),
            };
            match info {
                Ok(info) => {
                    let mut nodes = self.inner.nodes.lock();
                    for n in &info.nodes {
                        if let Ok(a) = n.addr.parse() {
                            nodes.insert(n.node_id, a);
                        }
                    }
                    drop(nodes);
                    let mut cache = self.inner.cache.lock();
                    for r in info.ranges {
                        if let Some(d) = r.descriptor {
                            cache.insert(d, r.leader_node);
                        }
                    }
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Config("no endpoints".into())))
    }

    /// The node to try for `route`: its leader when known (unless `any_replica`), else its
    /// replicas in turn.
    fn target(&self, route: &Route, any_replica: bool) -> SocketAddr {
        let nodes = self.inner.nodes.lock();
        if !any_replica {
            if let Some(addr) = nodes.get(&route.leader_node) {
                return *addr;
            }
        }
        let candidates: Vec<SocketAddr> = route
            .descriptor
            .replicas
            .iter()
            .filter_map(|r| nodes.get(&r.node_id).copied())
            .collect();
        drop(nodes);
        if candidates.is_empty() {
            return self.next_address();
        }
        let i = self.inner.next_endpoint.fetch_add(1, Ordering::Relaxed);
        candidates[i % candidates.len()]
    }

    /// Acts on a typed refusal: corrects the cache and says whether to retry.
    fn on_refusal<T>(&self, route: &Route, e: &WireError) -> Step<T> {
        let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
        let range_id = route.descriptor.id;
        match code {
            ErrorCode::NotLeader => {
                if let Ok(addr) = e.leader_addr.parse::<SocketAddr>() {
                    self.inner.nodes.lock().insert(e.leader_node, addr);
                }
                self.inner.cache.lock().set_leader(range_id, e.leader_node);
                Step::retry(e.message.clone())
            }
            ErrorCode::EpochNotMatch | ErrorCode::KeyNotInRange => {
                let mut cache = self.inner.cache.lock();
                match &e.current {
                    Some(current) => cache.insert(current.clone(), route.leader_node),
                    None => cache.remove(range_id),
                }
                Step::retry(e.message.clone())
            }
            ErrorCode::RangeNotFound => {
                self.inner.cache.lock().remove(range_id);
                Step::retry(e.message.clone())
            }
            ErrorCode::ServerBusy | ErrorCode::ProposalDropped | ErrorCode::NotReady => {
                Step::retry(e.message.clone())
            }
            // Proposed, then no answer: the write may yet apply.
            ErrorCode::Timeout => Step::unsure(e.message.clone()),
            _ => Step::Fail(ClientError::Refused {
                code,
                message: e.message.clone(),
            }),
        }
    }

    fn on_transport_error<T>(&self, route: &Route, e: &TransportError) -> Step<T> {
        if let TransportError::Rpc {
            code: RpcCode::BadRequest | RpcCode::UnknownMethod,
            ..
        } = e
        {
            return Step::Fail(ClientError::Refused {
                code: ErrorCode::Malformed,
                message: e.to_string(),
            });
        }
        // The node may be down or partitioned: forget it as leader, try another.
        self.inner.cache.lock().set_leader(route.descriptor.id, 0);
        Step::unsure(e.to_string())
    }

    /// Runs `attempt` against the range of internal key `key` until it is done, fails for
    /// good, or the deadline passes; backs off with jitter between attempts. `any_replica`:
    /// the request may go to any replica (follower and stale reads), not only the leader.
    async fn with_retries<T, F, Fut>(
        &self,
        target: Target<'_>,
        kind: Call,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Route, SocketAddr, Instant) -> Fut,
        Fut: Future<Output = Step<T>>,
    {
        let deadline = Instant::now() + self.inner.config.deadline;
        let mut backoff = self.inner.config.backoff_initial;
        let backoff_max = self.inner.config.backoff_max;
        let mut last = String::from("no attempt");
        let mut maybe_taken = false;
        let pause = |backoff: Duration| {
            let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
            let wait = backoff + Duration::from_millis(jitter);
            tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now())))
        };
        while Instant::now() < deadline {
            let located = target.in_cache(&self.inner.cache.lock());
            let route = match located {
                Some(r) => r,
                None => {
                    let found = match target {
                        Target::Key(key) => self.locate(key, deadline).await,
                        Target::Before(key) => self.locate_before(key, deadline).await,
                    };
                    if let Err(e) = found {
                        last = e.to_string();
                    }
                    let located = target.in_cache(&self.inner.cache.lock());
                    match located {
                        Some(r) => r,
                        None => {
                            pause(backoff).await;
                            backoff = (backoff * 2).min(backoff_max);
                            continue;
                        }
                    }
                }
            };
            let addr = self.target(&route, kind == Call::AnyReplica);
            match attempt(route, addr, deadline).await {
                Step::Done(v) => return Ok(v),
                // After an attempt that may have been taken, a later refusal does not undo
                // it (a retry after a split may find the keys spread over two ranges).
                Step::Fail(e) if kind == Call::Write && maybe_taken && !e.may_have_applied() => {
                    return Err(ClientError::Indeterminate {
                        deadline_ms: self.inner.config.deadline.as_millis() as u64,
                        last: format!("{last}; then: {e}"),
                    });
                }
                Step::Fail(e) => return Err(e),
                Step::Retry {
                    why,
                    maybe_taken: unsure,
                } => {
                    tracing::debug!(%addr, reason = %why, "retrying");
                    last = why;
                    maybe_taken |= unsure;
                }
            }
            pause(backoff).await;
            backoff = (backoff * 2).min(backoff_max);
        }
        let deadline_ms = self.inner.config.deadline.as_millis() as u64;
        if kind == Call::Write && maybe_taken {
            return Err(ClientError::Indeterminate { deadline_ms, last });
        }
        Err(ClientError::Timeout { deadline_ms, last })
    }

    /// Applies one write to the range holding `routing_key` (a user key), exactly once.
    ///
    /// # Errors
    /// [`ClientError`]; after a `Timeout` the write may or may not have applied.
    pub async fn write(
        &self,
        routing_key: &[u8],
        request: WriteRequest,
    ) -> Result<WriteResponse, ClientError> {
        self.command(routing_key, Some(request), None).await
    }

    /// One command (a write or an admin command) to the range of `routing_key`, exactly once.
    pub(crate) async fn command(
        &self,
        routing_key: &[u8],
        request: Option<WriteRequest>,
        admin: Option<AdminRequest>,
    ) -> Result<WriteResponse, ClientError> {
        self.command_within(routing_key, request, admin, None).await
    }

    /// [`Client::command`] for a write that must lie within one range: `span` (internal keys,
    /// `[start, end)`, an empty end past every key) is checked against the range each attempt
    /// routes to, and a span the range does not hold fails with `CrossRange`, unsent.
    pub(crate) async fn command_within(
        &self,
        routing_key: &[u8],
        request: Option<WriteRequest>,
        admin: Option<AdminRequest>,
        span: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<WriteResponse, ClientError> {
        self.command_at(&internal(routing_key), None, request, admin, span)
            .await
    }

    /// [`Client::command_within`] routed by an internal key (`at`); with `range_id`, an
    /// attempt that routes to another range fails with `Config` unsent (an operator's command
    /// aimed at one range by its start key).
    pub(crate) async fn command_at(
        &self,
        at: &[u8],
        range_id: Option<u64>,
        request: Option<WriteRequest>,
        admin: Option<AdminRequest>,
        span: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<WriteResponse, ClientError> {
        // Admission waits too (the writes in flight, the session's window), but not past the
        // deadline; nothing has been sent until it ends.
        let deadline = self.inner.config.deadline;
        let admitted = tokio::time::timeout(deadline, async {
            let permit = self.inner.writes.acquire().await;
            let session = self.session();
            let guard = session.begin().await;
            (permit, session, guard)
        })
        .await;
        let Ok((permit, session, guard)) = admitted else {
            return Err(ClientError::Timeout {
                deadline_ms: deadline.as_millis() as u64,
                last: "too many writes of this client in flight".into(),
            });
        };
        let _permit = permit.map_err(|_| ClientError::Config("the client is closed".into()))?;
        let seq = guard.seq;
        self.with_retries(Target::Key(at), Call::Write, |route, addr, deadline| {
            let elsewhere = range_id.filter(|id| *id != route.descriptor.id);
            let outside = span
                .as_ref()
                .filter(|(start, end)| !holds(&route.descriptor, start, end))
                .map(|(_, end)| {
                    let last = if end.is_empty() {
                        vec![u8::MAX]
                    } else {
                        end.clone()
                    };
                    let other = self.inner.cache.lock().locate(&last);
                    let mut ranges = vec![route.descriptor.id];
                    ranges.extend(other.map(|r| r.descriptor.id).filter(|id| *id != ranges[0]));
                    ranges
                });
            let command = RaftCommand {
                header: Some(CommandHeader {
                    range_id: route.descriptor.id,
                    epoch: route.descriptor.epoch,
                    client_id: session.client_id,
                    seq,
                    first_unacked_seq: session.first_unacked(seq),
                    session_start_ms: session.start_ms,
                    proposed_at_ms: 0,
                }),
                request: request.clone(),
                admin: admin.clone(),
            };
            async move {
                if let Some(wanted) = elsewhere {
                    return Step::Fail(ClientError::Config(format!(
                        "range {wanted} no longer holds its start key (range {} does)",
                        route.descriptor.id
                    )));
                }
                if let Some(ranges) = outside {
                    return Step::Fail(ClientError::CrossRange { ranges });
                }
                match self
                    .call_within(addr, "kv.Write", command.encode_to_vec(), Some(deadline))
                    .await
                {
                    Ok(body) => match WriteResponse::decode(body) {
                        Ok(response) => match &response.response {
                            Some(write_response::Response::Error(e)) => self.on_refusal(&route, e),
                            _ => Step::Done(response),
                        },
                        Err(e) => Step::unsure(format!("undecodable response: {e}")),
                    },
                    Err(e) => self.on_transport_error(&route, &e),
                }
            }
        })
        .await
    }

    pub(crate) async fn read(
        &self,
        key: &[u8],
        consistency: Consistency,
        request: read_request::Request,
    ) -> Result<read_response::Response, ClientError> {
        self.read_at(Target::Key(key), consistency, request).await
    }

    /// A read sent to `target`'s range.
    pub(crate) async fn read_at(
        &self,
        target: Target<'_>,
        consistency: Consistency,
        request: read_request::Request,
    ) -> Result<read_response::Response, ClientError> {
        let (consistency, max_staleness_ms) = consistency.to_wire();
        let kind = if consistency == ReadConsistency::Linearizable {
            Call::Leader
        } else {
            Call::AnyReplica
        };
        self.with_retries(target, kind, |route, addr, deadline| {
            let body = ReadRequest {
                range_id: route.descriptor.id,
                epoch: route.descriptor.epoch,
                consistency: consistency as i32,
                request: Some(request.clone()),
                max_staleness_ms,
            }
            .encode_to_vec();
            async move {
                match self
                    .call_within(addr, "kv.Read", body, Some(deadline))
                    .await
                {
                    Ok(body) => match ReadResponse::decode(body) {
                        Ok(ReadResponse {
                            response: Some(read_response::Response::Error(e)),
                        }) => self.on_refusal(&route, &e),
                        Ok(ReadResponse { response: Some(r) }) => Step::Done(r),
                        Ok(ReadResponse { response: None }) => Step::retry("empty read response"),
                        Err(e) => Step::retry(format!("undecodable response: {e}")),
                    },
                    Err(e) => self.on_transport_error(&route, &e),
                }
            }
        })
        .await
    }

    /// Closes the client's connections.
    pub async fn close(&self) {
        self.inner.endpoint.close().await;
    }
}
