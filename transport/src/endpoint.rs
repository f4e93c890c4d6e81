//! The node's QUIC endpoint (DESIGN section 8).
//!
//! Sending: `Transport::send` puts a Raft message on the destination node's bounded queue and
//! returns at once; a full queue drops the message and counts it (Raft tolerates loss, the
//! pollers never block). One flusher task per peer drains its queue into `RaftBatch` frames,
//! heartbeats in compact form, on one stream of the one connection to that peer, and sends a
//! liveness ping when it had nothing to send for an interval.
//!
//! Connections: the lower node id dials first; the higher one dials only when no connection
//! came within two liveness intervals (the lower node may not know its address, or be down).
//! Every stream opens with a `Hello` naming cluster and node, and the peer's certificate must
//! name the same node of the same cluster. When both sides dialed anyway, the connection dialed
//! by the lower node id wins on both sides and the other is closed. A lost connection is
//! redialed with exponential backoff and jitter.
//!
//! Receiving: Raft batches are fanned out and handed to the [`Sink`]; snapshot streams hand the
//! sink a channel of verified chunks (QUIC flow control holds the sender back while the receiver
//! is slow, and Raft batches keep flowing on their own stream); RPC streams get one request and
//! one response each. A malformed or oversize frame closes its stream, is counted, and the
//! connection goes on serving.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use quinn::{Connection, VarInt};
use rand::Rng;
use tokio::sync::{mpsc, Notify};

use self::inbound::{accept_loop, liveness_monitor, serve_connection};
use crate::coalesce;
use crate::config::TransportConfig;
use crate::error::{RpcStatus, TransportError};
use crate::frame;
use crate::stats::{self, Stats};
use crate::tls::{self, TlsConfig};
use crate::wire::{
    snapshot_frame, Hello, RaftBatch, RangeMessage, RpcCode, RpcRequest, RpcResponse,
    SnapshotFrame, StreamKind,
};

/// Application error codes on streams and connections.
const CODE_DUPLICATE: u32 = 1;
const CODE_REFUSED: u32 = 2;
const CODE_FRAME: u32 = 3;
const CODE_SHUTDOWN: u32 = 4;

/// A `Hello` is a few dozen bytes; anything near this is not one.
const MAX_HELLO_BYTES: usize = 4096;

/// The longest an RPC handler may run, whatever timeout the caller asked for.
const MAX_RPC_TIMEOUT: Duration = Duration::from_secs(300);

mod inbound;

/// A boxed future, for the RPC handler of [`Sink`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The chunks of an incoming snapshot, verified; an `Err` ends a damaged or cut stream.
pub type SnapshotChunks = mpsc::Receiver<Result<Bytes, TransportError>>;

/// What receives a node's traffic: the store implements it.
pub trait Sink: Send + Sync + 'static {
    /// Raft messages from `from_node`, heartbeats already fanned out. Must not block.
    fn raft_messages(&self, from_node: u64, messages: Vec<RangeMessage>);
    /// `node` became reachable (`up`) or was not heard from for `down_after`.
    fn peer_state(&self, node: u64, up: bool);
    /// A snapshot of `range_id` arrives from `from_node`: its header, then its chunks.
    fn snapshot(&self, from_node: u64, range_id: u64, header: Bytes, chunks: SnapshotChunks);
    /// An RPC from a node (`Some(id)`) or a client (`None`). The call is cut off after
    /// `timeout` (the caller's, capped): a handler that answers a typed timeout itself should
    /// do so a little earlier.
    fn rpc(
        &self,
        from_node: Option<u64>,
        method: String,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<Result<Bytes, RpcStatus>>;
}

struct Link {
    conn: Connection,
    /// The node that dialed it.
    dialer: u64,
}

struct Peer {
    node_id: u64,
    tx: mpsc::Sender<RangeMessage>,
    link: Mutex<Option<Link>>,
    link_changed: Notify,
    dialing: tokio::sync::Mutex<()>,
    up: Mutex<(bool, Instant)>,
    /// The peer's incarnation, from its last `Hello`.
    incarnation: Mutex<Option<u64>>,
    /// Bytes in `tx`'s queue (bounded by `queue_bytes`).
    queued_bytes: AtomicUsize,
    /// Snapshot streams to this peer (bounded by `max_snapshot_streams_per_peer`).
    snapshot_streams: tokio::sync::Semaphore,
}

/// Traffic an injected fault drops.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub drop_to: std::collections::HashSet<u64>,
    pub drop_from: std::collections::HashSet<u64>,
}

struct Inner {
    config: TransportConfig,
    endpoint: quinn::Endpoint,
    peers: Mutex<HashMap<u64, Arc<Peer>>>,
    addresses: Mutex<HashMap<u64, SocketAddr>>,
    sink: Arc<dyn Sink>,
    stats: Arc<Stats>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Tasks are spawned here, so `send` works from any thread (the store's pollers are not
    /// tokio threads).
    runtime: tokio::runtime::Handle,
    /// Random per start, sent in every `Hello`.
    incarnation: u64,
    /// Nodes whose Raft traffic is dropped both ways (fault injection: `partition`).
    /// Injected faults (tests, the nemesis): Raft traffic to and from these nodes is dropped.
    faults: Mutex<Faults>,
}

/// A node's endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node_id", &self.inner.config.node_id)
            .field("addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds the endpoint and starts accepting. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`TransportError::Config`], [`TransportError::Tls`], [`TransportError::Bind`].
    pub fn start(
        config: TransportConfig,
        tls: &TlsConfig,
        sink: Arc<dyn Sink>,
    ) -> Result<Self, TransportError> {
        config.validate().map_err(TransportError::Config)?;
        let mut server = tls::server_config(tls)?;
        let mut transport_config = quinn::TransportConfig::default();
        transport_config.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(config.idle_timeout)
                .map_err(|e| TransportError::Config(format!("idle-timeout: {e}")))?,
        ));
        transport_config.keep_alive_interval(Some(config.liveness_interval));
        transport_config.max_concurrent_uni_streams(VarInt::from_u32(256));
        transport_config.max_concurrent_bidi_streams(VarInt::from_u32(1024));
        let transport_config = Arc::new(transport_config);
        server.transport_config(transport_config.clone());
        let mut endpoint =
            quinn::Endpoint::server(server, config.listen).map_err(|e| TransportError::Bind {
                addr: config.listen,
                reason: e.to_string(),
            })?;
        let mut client = tls::client_config(tls)?;
        client.transport_config(transport_config);
        endpoint.set_default_client_config(client);
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let inner = Arc::new(Inner {
            config,
            endpoint,
            peers: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
            sink,
            stats: Arc::new(Stats::default()),
            shutdown,
            runtime: tokio::runtime::Handle::current(),
            incarnation: rand::rng().random(),
            faults: Mutex::new(Faults::default()),
        });
        inner.runtime.spawn(accept_loop(inner.clone()));
        inner.runtime.spawn(liveness_monitor(inner.clone()));
        Ok(Self { inner })
    }

    pub fn node_id(&self) -> u64 {
        self.inner.config.node_id
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.endpoint.local_addr().ok()
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// Where node `node_id` listens. Starts its flusher.
    pub fn add_peer(&self, node_id: u64, addr: SocketAddr) {
        self.inner.addresses.lock().insert(node_id, addr);
        peer(&self.inner, node_id);
    }

    /// Fault injection (tests, the nemesis; only with the `faults` feature): drop the Raft
    /// traffic to and from `nodes` (and stop counting them as heard from), as a network
    /// partition would; an empty set heals. Snapshot streams to them fail; RPCs are not
    /// affected.
    #[cfg(feature = "faults")]
    pub fn partition(&self, nodes: &[u64]) {
        self.set_faults(nodes, nodes);
    }

    /// Fault injection (only with the `faults` feature): drop the Raft traffic (and snapshot
    /// streams) this node sends to `drop_to`, and what it receives from `drop_from`: a one-way
    /// partition when they differ. Empty sets heal.
    #[cfg(feature = "faults")]
    pub fn set_faults(&self, drop_to: &[u64], drop_from: &[u64]) {
        *self.inner.faults.lock() = Faults {
            drop_to: drop_to.iter().copied().collect(),
            drop_from: drop_from.iter().copied().collect(),
        };
    }

    /// Queues a Raft message for `to_node`. Never blocks: a full queue drops the message and
    /// counts it. Returns whether it was queued.
    pub fn send(&self, to_node: u64, message: RangeMessage) -> bool {
        if self.inner.faults.lock().drop_to.contains(&to_node) {
            stats::dropped(to_node, &self.inner.stats);
            return false;
        }
        let p = peer(&self.inner, to_node);
        let size = message.encoded_len();
        let queued = p.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if queued + size > self.inner.config.queue_bytes {
            p.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            stats::dropped(to_node, &self.inner.stats);
            return false;
        }
        match p.tx.try_send(message) {
            Ok(()) => true,
            Err(_) => {
                p.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                stats::dropped(to_node, &self.inner.stats);
                false
            }
        }
    }

    /// Whether `node` is currently considered up.
    pub fn is_up(&self, node: u64) -> bool {
        self.inner
            .peers
            .lock()
            .get(&node)
            .is_some_and(|p| p.up.lock().0)
    }

    /// Streams a snapshot of `range_id` to `to_node` on its own QUIC stream: `header`, then each
    /// chunk of `chunks` until it closes. Returns once the receiver has everything.
    ///
    /// # Errors
    /// [`TransportError`] when the connection or stream fails.
    pub async fn send_snapshot(
        &self,
        to_node: u64,
        range_id: u64,
        header: Bytes,
        mut chunks: mpsc::Receiver<Bytes>,
    ) -> Result<(), TransportError> {
        let inner = &self.inner;
        if inner.faults.lock().drop_to.contains(&to_node) {
            return Err(TransportError::ConnectionLost(format!(
                "node {to_node} is partitioned away"
            )));
        }
        let p = peer(inner, to_node);
        let _permit = p
            .snapshot_streams
            .acquire()
            .await
            .map_err(|_| TransportError::Shutdown)?;
        let conn = connection(inner, to_node).await?;
        let mut send = conn
            .open_uni()
            .await
            .map_err(|e| TransportError::ConnectionLost(e.to_string()))?;
        let max = inner.config.max_frame_bytes;
        let hello = hello(inner, StreamKind::Snapshot);
        frame::write(&mut send, &frame::encode(&hello, max)?).await?;
        let head = SnapshotFrame {
            range_id,
            checksum: crc32c::crc32c(&header),
            body: Some(snapshot_frame::Body::Header(header)),
        };
        frame::write(&mut send, &frame::encode(&head, max)?).await?;
        let mut count = 0u64;
        while let Some(chunk) = chunks.recv().await {
            let f = SnapshotFrame {
                range_id,
                checksum: crc32c::crc32c(&chunk),
                body: Some(snapshot_frame::Body::Chunk(chunk)),
            };
            frame::write(&mut send, &frame::encode(&f, max)?).await?;
            count += 1;
        }
        let end = SnapshotFrame {
            range_id,
            checksum: 0,
            body: Some(snapshot_frame::Body::End(count)),
        };
        frame::write(&mut send, &frame::encode(&end, max)?).await?;
        send.finish()
            .map_err(|e| TransportError::Snapshot(e.to_string()))?;
        match send.stopped().await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(TransportError::Snapshot(format!(
                "the receiver stopped the stream (code {code})"
            ))),
            Err(e) => Err(TransportError::Snapshot(e.to_string())),
        }
    }

    /// Calls `method` on `to_node` with `body`, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`TransportError::Rpc`] with the server's code, [`TransportError::DeadlineExceeded`],
    /// or a connection error.
    pub async fn call(
        &self,
        to_node: u64,
        method: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        let inner = self.inner.clone();
        let method = method.to_string();
        tokio::time::timeout(timeout, async move {
            let conn = connection(&inner, to_node).await?;
            call_on(&inner, &conn, &method, body, timeout).await
        })
        .await
        .map_err(|_| TransportError::DeadlineExceeded)?
    }

    /// Closes every connection and stops the endpoint.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        self.inner
            .endpoint
            .close(VarInt::from_u32(CODE_SHUTDOWN), b"shutdown");
        // Peers that are gone never acknowledge the close: do not wait for them for long.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

fn hello(inner: &Inner, kind: StreamKind) -> Hello {
    Hello {
        cluster_id: inner.config.cluster_id.clone(),
        node_id: inner.config.node_id,
        kind: kind as i32,
        incarnation: inner.incarnation,
    }
}

/// The peer record of `node_id`, created (with its flusher) on first use.
fn peer(inner: &Arc<Inner>, node_id: u64) -> Arc<Peer> {
    let mut peers = inner.peers.lock();
    if let Some(p) = peers.get(&node_id) {
        return p.clone();
    }
    let (tx, rx) = mpsc::channel(inner.config.queue_capacity);
    let p = Arc::new(Peer {
        node_id,
        tx,
        link: Mutex::new(None),
        link_changed: Notify::new(),
        dialing: tokio::sync::Mutex::new(()),
        up: Mutex::new((false, Instant::now())),
        incarnation: Mutex::new(None),
        queued_bytes: AtomicUsize::new(0),
        snapshot_streams: tokio::sync::Semaphore::new(inner.config.max_snapshot_streams_per_peer),
    });
    peers.insert(node_id, p.clone());
    crate::stats::peer_added(node_id);
    inner.runtime.spawn(flusher(inner.clone(), p.clone(), rx));
    p
}

/// Installs `conn` as the link to `peer` unless a better one is in place, closing the loser.
/// With a live link in place: between connections dialed by different nodes, the one dialed by
/// the lower node id wins (both sides decide alike); a second connection dialed by the peer
/// means the peer gave the first one up (it restarted), so the new one wins; a second one
/// dialed by us loses; a connection from a restarted peer (new incarnation) always wins.
fn register(
    inner: &Inner,
    peer: &Peer,
    conn: Connection,
    dialer: u64,
    restarted: bool,
) -> Connection {
    let me = inner.config.node_id;
    let preferred = me.min(peer.node_id);
    let mut link = peer.link.lock();
    let replace = match &*link {
        Some(current) if current.conn.close_reason().is_none() => {
            if current.conn.stable_id() == conn.stable_id() {
                return conn;
            }
            if restarted {
                true
            } else if current.dialer == dialer {
                dialer != me
            } else {
                dialer == preferred
            }
        }
        _ => true,
    };
    if !replace {
        let current = link.as_ref().map(|l| l.conn.clone()).expect("a live link");
        conn.close(VarInt::from_u32(CODE_DUPLICATE), b"duplicate connection");
        return current;
    }
    if let Some(old) = link.replace(Link {
        conn: conn.clone(),
        dialer,
    }) {
        old.conn
            .close(VarInt::from_u32(CODE_DUPLICATE), b"duplicate connection");
    }
    drop(link);
    peer.link_changed.notify_waiters();
    conn
}

fn live_link(p: &Peer) -> Option<Connection> {
    p.link
        .lock()
        .as_ref()
        .filter(|l| l.conn.close_reason().is_none())
        .map(|l| l.conn.clone())
}

/// A live connection to `node_id`: the current link, or a new dial with backoff and jitter.
async fn connection(inner: &Arc<Inner>, node_id: u64) -> Result<Connection, TransportError> {
    let p = peer(inner, node_id);
    let mut backoff = inner.config.reconnect_min;
    let mut waited = false;
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        if *shutdown.borrow() {
            return Err(TransportError::Shutdown);
        }
        if let Some(conn) = live_link(&p) {
            return Ok(conn);
        }
        // The lower node id dials; the higher one first gives it a moment to, so that two
        // nodes starting together rarely make two connections.
        if inner.config.node_id > node_id && !waited {
            waited = true;
            tokio::select! {
                _ = tokio::time::sleep(inner.config.liveness_interval * 2) => {}
                _ = p.link_changed.notified() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        // One dial at a time per peer: the flusher, snapshots and RPCs share the connection.
        let dialing = p.dialing.lock().await;
        if let Some(conn) = live_link(&p) {
            return Ok(conn);
        }
        let dialed = dial(inner, node_id).await;
        drop(dialing);
        match dialed {
            Ok(conn) => return Ok(register(inner, &p, conn, inner.config.node_id, false)),
            Err(e) => {
                tracing::debug!(node = inner.config.node_id, peer = node_id, error = %e, "dial failed");
                let jitter = rand::rng().random_range(0.5..1.5);
                let wait = backoff.mul_f64(jitter);
                backoff = (backoff * 2).min(inner.config.reconnect_max);
                // The peer may dial us meanwhile.
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = p.link_changed.notified() => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

async fn dial(inner: &Arc<Inner>, node_id: u64) -> Result<Connection, TransportError> {
    if *inner.shutdown.borrow() {
        return Err(TransportError::Shutdown);
    }
    let addr = inner
        .addresses
        .lock()
        .get(&node_id)
        .copied()
        .ok_or(TransportError::UnknownPeer(node_id))?;
    let name = tls::node_name(&inner.config.cluster_id, node_id);
    let connecting = inner
        .endpoint
        .connect(addr, &name)
        .map_err(|e| TransportError::Connect {
            node: node_id,
            reason: e.to_string(),
        })?;
    match connecting.await {
        Ok(conn) => {
            stats::connected(&inner.stats);
            // The peer opens its streams on this connection too (it may be the one kept).
            inner
                .runtime
                .spawn(serve_connection(inner.clone(), conn.clone(), true));
            Ok(conn)
        }
        Err(e) => {
            stats::handshake_failed(&inner.stats);
            tracing::warn!(node = inner.config.node_id, peer = node_id, %addr, error = %e,
                "connection refused (wrong CA, cluster or node?)");
            Err(TransportError::Connect {
                node: node_id,
                reason: e.to_string(),
            })
        }
    }
}

/// Drains `peer`'s queue into batch frames on a raft stream of the current connection.
async fn flusher(inner: Arc<Inner>, peer: Arc<Peer>, mut rx: mpsc::Receiver<RangeMessage>) {
    let max_frame = inner.config.max_frame_bytes;
    let max_batch = inner.config.max_batch_bytes;
    let mut ping_seq = 0u64;
    let mut pending: Option<RangeMessage> = None;
    let mut shutdown = inner.shutdown.subscribe();
    'connect: loop {
        if *shutdown.borrow() {
            return;
        }
        let conn = match connection(&inner, peer.node_id).await {
            Ok(c) => c,
            Err(_) => return,
        };
        let mut send = match conn.open_uni().await {
            Ok(s) => s,
            Err(_) => continue 'connect,
        };
        // Raft traffic goes ahead of snapshot streams on a constrained link.
        let _ = send.set_priority(1);
        let hello = hello(&inner, StreamKind::Raft);
        let Ok(hello) = frame::encode(&hello, max_frame) else {
            return;
        };
        if frame::write(&mut send, &hello).await.is_err() {
            continue 'connect;
        }
        loop {
            let first = match pending.take() {
                Some(m) => Some(m),
                None => tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => Some(m),
                        None => return,
                    },
                    _ = tokio::time::sleep(inner.config.liveness_interval) => None,
                    _ = shutdown.changed() => return,
                },
            };
            let mut batch = RaftBatch::default();
            let mut size = 0usize;
            let mut count = 0usize;
            let mut next = first;
            while let Some(m) = next.take() {
                let encoded = m.encoded_len();
                let m_size = encoded + 8;
                if count > 0 && size + m_size > max_batch {
                    pending = Some(m);
                    break;
                }
                size += m_size;
                count += 1;
                peer.queued_bytes.fetch_sub(encoded, Ordering::Relaxed);
                match m
                    .message
                    .as_ref()
                    .and_then(|msg| coalesce::compact(m.range_id, msg))
                {
                    Some(hb) => batch.heartbeats.push(hb),
                    None => batch.messages.push(m),
                }
                next = rx.try_recv().ok();
            }
            if count == 0 {
                ping_seq += 1;
                batch.ping_seq = ping_seq;
            }
            let bytes = match frame::encode(&batch, max_frame) {
                Ok(b) => b,
                Err(e) => {
                    // One message larger than a frame: drop it, count it, go on.
                    tracing::warn!(peer = peer.node_id, error = %e, "raft batch too large, dropped");
                    stats::dropped(peer.node_id, &inner.stats);
                    continue;
                }
            };
            if frame::write(&mut send, &bytes).await.is_err() {
                // The messages of this batch are lost; Raft retransmits.
                continue 'connect;
            }
            stats::sent(peer.node_id, count, bytes.len(), &inner.stats);
        }
    }
}

async fn call_on(
    inner: &Inner,
    conn: &Connection,
    method: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<Bytes, TransportError> {
    let hello = hello(inner, StreamKind::Rpc);
    rpc_on_stream(
        conn,
        &hello,
        inner.config.max_frame_bytes,
        method,
        body,
        timeout,
    )
    .await
}

/// One RPC on a new stream of `conn`: the `Hello`, the request, its response.
pub(crate) async fn rpc_on_stream(
    conn: &Connection,
    hello: &Hello,
    max: usize,
    method: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<Bytes, TransportError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| TransportError::ConnectionLost(e.to_string()))?;
    let request_id = rand::rng().random();
    frame::write(&mut send, &frame::encode(hello, max)?).await?;
    let request = RpcRequest {
        request_id,
        method: method.to_string(),
        timeout_ms: timeout.as_millis().try_into().unwrap_or(u64::MAX),
        body,
    };
    frame::write(&mut send, &frame::encode(&request, max)?).await?;
    let _ = send.finish();
    let response = frame::read::<RpcResponse, _>(&mut recv, max)
        .await?
        .ok_or_else(|| {
            TransportError::ConnectionLost("rpc stream ended without a response".into())
        })?;
    let code = RpcCode::try_from(response.code).unwrap_or(RpcCode::Internal);
    if code == RpcCode::Ok && response.request_id == request_id {
        return Ok(response.body);
    }
    Err(TransportError::Rpc {
        method: method.to_string(),
        code,
        message: response.message,
    })
}
