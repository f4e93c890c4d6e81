//! The QUIC endpoint on loopback: batches between three nodes, mutual TLS refusals, bad frames,
//! a full queue, reconnection, snapshot streams next to Raft traffic, RPCs. Every wait polls a
//! condition with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_transport::raft::{Message, MessageType};
use flotilla_transport::tls::{self, ClusterCa, TlsConfig};
use flotilla_transport::wire::{Hello, RaftBatch, RangeMessage, RpcCode, StreamKind};
use flotilla_transport::{
    frame, BoxFuture, RpcStatus, Sink, SnapshotChunks, Stats, Transport, TransportConfig,
    TransportError,
};
use parking_lot::Mutex;
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Collect {
    messages: Mutex<Vec<(u64, RangeMessage)>>,
    peer_events: Mutex<Vec<(u64, bool)>>,
    /// Snapshots handed over: kept unread until a test takes them.
    snapshots: Mutex<Vec<(u64, u64, Bytes, SnapshotChunks)>>,
}

impl Sink for Collect {
    fn raft_messages(&self, from_node: u64, messages: Vec<RangeMessage>) {
        self.messages
            .lock()
            .extend(messages.into_iter().map(|m| (from_node, m)));
    }

    fn peer_state(&self, node: u64, up: bool) {
        self.peer_events.lock().push((node, up));
    }

    fn snapshot(&self, from_node: u64, range_id: u64, header: Bytes, chunks: SnapshotChunks) {
        self.snapshots
            .lock()
            .push((from_node, range_id, header, chunks));
    }

    fn rpc(
        &self,
        from_node: Option<u64>,
        method: String,
        body: Bytes,
        _timeout: std::time::Duration,
    ) -> BoxFuture<Result<Bytes, RpcStatus>> {
        Box::pin(async move {
            match method.as_str() {
                "echo" => {
                    let mut out = format!("{from_node:?}:").into_bytes();
                    out.extend_from_slice(&body);
                    Ok(Bytes::from(out))
                }
                // Never answers: the server-side deadline ends the call.
                "slow" => std::future::pending().await,
                _ => Err(RpcStatus::new(RpcCode::UnknownMethod, method)),
            }
        })
    }
}

impl Collect {
    fn count(&self) -> usize {
        self.messages.lock().len()
    }
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn config(cluster: &str, node: u64) -> TransportConfig {
    let mut c = TransportConfig::new(cluster, node, "127.0.0.1:0".parse().expect("addr"));
    c.liveness_interval = Duration::from_millis(50);
    c.down_after = Duration::from_millis(300);
    c.reconnect_min = Duration::from_millis(10);
    c.reconnect_max = Duration::from_millis(200);
    c
}

struct Node {
    transport: Transport,
    sink: Arc<Collect>,
}

fn start(cluster: &str, node: u64, tls: &TlsConfig) -> Node {
    start_with(config(cluster, node), tls)
}

fn start_with(config: TransportConfig, tls: &TlsConfig) -> Node {
    let sink = Arc::new(Collect::default());
    let transport = Transport::start(config, tls, sink.clone()).expect("start");
    Node { transport, sink }
}

fn addr(n: &Node) -> SocketAddr {
    n.transport.local_addr().expect("bound")
}

fn append(range_id: u64, from: u64, to: u64, index: u64) -> RangeMessage {
    RangeMessage {
        range_id,
        message: Some(Message {
            msg_type: MessageType::Append as i32,
            from,
            to,
            term: 1,
            index,
            ..Message::default()
        }),
    }
}

fn heartbeat(range_id: u64, from: u64, to: u64) -> RangeMessage {
    RangeMessage {
        range_id,
        message: Some(Message {
            msg_type: MessageType::Heartbeat as i32,
            from,
            to,
            term: 1,
            commit: 5,
            ..Message::default()
        }),
    }
}

/// A bare QUIC connection to node 2 (`b`) with `tls`, for sending hand-made frames.
async fn raw_connect(tls: &TlsConfig, b: &Node) -> (quinn::Endpoint, quinn::Connection) {
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    endpoint.set_default_client_config(tls::client_config(tls).expect("client config"));
    let conn = endpoint
        .connect(addr(b), &tls::node_name("c1", 2))
        .expect("connect")
        .await
        .expect("handshake");
    (endpoint, conn)
}

fn mesh(nodes: &[&Node]) {
    for a in nodes {
        for b in nodes {
            if a.transport.node_id() != b.transport.node_id() {
                a.transport.add_peer(b.transport.node_id(), addr(b));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_batches() {
    let ca = ClusterCa::generate("c1").expect("ca");
    let nodes: Vec<Node> = (1..=3)
        .map(|id| start("c1", id, &ca.issue_node(id, &[]).expect("cert")))
        .collect();
    mesh(&nodes.iter().collect::<Vec<_>>());
    // Messages sent while two nodes' simultaneous dials are sorted out may be lost (as Raft
    // allows): send every message again until each has arrived at least once.
    let distinct = |n: &Node| {
        n.sink
            .messages
            .lock()
            .iter()
            .map(|(from, m)| (*from, m.range_id, m.message.as_ref().map(|m| m.msg_type)))
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let start = Instant::now();
    while nodes.iter().any(|n| distinct(n) < 400) {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for every message"
        );
        for a in &nodes {
            for b in &nodes {
                let (from, to) = (a.transport.node_id(), b.transport.node_id());
                if from == to {
                    continue;
                }
                for range in 0..100u64 {
                    assert!(a.transport.send(to, append(range, from, to, range)));
                    assert!(a.transport.send(to, heartbeat(range, from, to)));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in &nodes {
        let got = n.sink.messages.lock();
        // Heartbeats travel compact and come back as the same Raft messages.
        let hb = got
            .iter()
            .find(|(_, m)| {
                m.message.as_ref().map(|m| m.msg_type) == Some(MessageType::Heartbeat as i32)
            })
            .map(|(from, m)| (*from, m.clone()))
            .expect("a heartbeat");
        assert_eq!(hb.1, heartbeat(hb.1.range_id, hb.0, n.transport.node_id()));
    }
    let stats = nodes[0].transport.stats();
    assert!(
        Stats::get(&stats.batches_sent) * 10 < Stats::get(&stats.messages_sent),
        "messages are batched: {} batches (pings included) for {} messages",
        Stats::get(&stats.batches_sent),
        Stats::get(&stats.messages_sent)
    );
    for n in &nodes {
        until("peers up", || {
            n.sink
                .peer_events
                .lock()
                .iter()
                .filter(|(_, up)| *up)
                .count()
                == 2
        })
        .await;
    }
    for n in &nodes {
        n.transport.shutdown().await;
    }
}

async fn refused(a: &Node, b: &Node, b_as: u64) {
    let failures = |n: &Node| Stats::get(&n.transport.stats().handshake_failures);
    let before = failures(a) + failures(b);
    a.transport.add_peer(b_as, addr(b));
    for i in 0..10 {
        a.transport.send(b_as, append(1, 1, b_as, i));
    }
    // Two refusals: the dialer came back after the first (with its queued messages) and was
    // refused again, so a wrongly accepted connection would have delivered by now.
    until("two refused attempts", || {
        failures(a) + failures(b) >= before + 2
    })
    .await;
    assert_eq!(b.sink.count(), 0, "nothing crosses a refused connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_cluster_or_node_is_refused() {
    let ca = ClusterCa::generate("c1").expect("ca");
    let a = start("c1", 1, &ca.issue_node(1, &[]).expect("cert"));
    // Another CA.
    let other_ca = ClusterCa::generate("c1").expect("other ca");
    let b = start("c1", 2, &other_ca.issue_node(2, &[]).expect("cert"));
    refused(&a, &b, 2).await;
    // A node configured for another cluster (with a certificate of this CA): its Hello check
    // refuses our cluster id.
    let c = start("c2", 3, &ca.issue_node(3, &[]).expect("cert"));
    refused(&a, &c, 3).await;
    // A CA loaded for another cluster id is refused, and so are names that would cover other
    // nodes.
    assert!(ClusterCa::from_pem("c2", &ca.cert_pem(), &ca.key_pem()).is_err());
    assert!(ca.issue_node(9, &["*.c1.flotilla".into()]).is_err());
    assert!(ca.issue_node(9, &["n1.c1.flotilla".into()]).is_err());
    // The right cluster and CA, but not the node the dialer wanted.
    let d = start("c1", 4, &ca.issue_node(4, &[]).expect("cert"));
    refused(&a, &d, 5).await;
    for n in [a, b, c, d] {
        n.transport.shutdown().await;
    }
}

/// A raw peer with a valid certificate sends bad frames: each closes its own stream and is
/// counted; the connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_their_stream_only() {
    let ca = ClusterCa::generate("c1").expect("ca");
    let b = start_with(
        TransportConfig {
            max_frame_bytes: 4096,
            max_batch_bytes: 4096,
            ..config("c1", 2)
        },
        &ca.issue_node(2, &[]).expect("cert"),
    );
    let (_endpoint, conn) = raw_connect(&ca.issue_node(1, &[]).expect("cert"), &b).await;
    let hello = frame::encode(
        &Hello {
            cluster_id: "c1".into(),
            node_id: 1,
            kind: StreamKind::Raft as i32,
            incarnation: 1,
        },
        4096,
    )
    .expect("hello");
    // Oversize: a length prefix past the limit.
    let mut s = conn.open_uni().await.expect("stream");
    s.write_all(&hello).await.expect("write");
    s.write_all(&[0, 1, 0, 0]).await.expect("write");
    until("an oversize frame counted", || {
        Stats::get(&b.transport.stats().frame_errors) == 1
    })
    .await;
    // Malformed: a body that is not a RaftBatch.
    let mut s = conn.open_uni().await.expect("stream");
    s.write_all(&hello).await.expect("write");
    s.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    until("a malformed frame counted", || {
        Stats::get(&b.transport.stats().frame_errors) == 2
    })
    .await;
    // The same connection still delivers a good batch.
    let mut s = conn.open_uni().await.expect("stream");
    s.write_all(&hello).await.expect("write");
    let batch = RaftBatch {
        messages: vec![append(7, 1, 2, 1)],
        ..RaftBatch::default()
    };
    s.write_all(&frame::encode(&batch, 4096).expect("batch"))
        .await
        .expect("write");
    until("the good batch", || b.sink.count() == 1).await;
    assert!(conn.close_reason().is_none(), "the connection stayed open");
    b.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_without_blocking() {
    let ca = ClusterCa::generate("c1").expect("ca");
    let a = start_with(
        TransportConfig {
            queue_capacity: 8,
            ..config("c1", 1)
        },
        &ca.issue_node(1, &[]).expect("cert"),
    );
    // Nobody listens there: the flusher keeps redialing while the queue fills.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    a.transport.add_peer(2, silent.local_addr().expect("addr"));
    let sent = Instant::now();
    let queued = (0..1000)
        .filter(|i| a.transport.send(2, append(1, 1, 2, *i)))
        .count();
    assert!(sent.elapsed() < Duration::from_secs(1), "send never blocks");
    assert!(queued <= 9, "queued {queued}");
    assert_eq!(
        Stats::get(&a.transport.stats().queue_dropped),
        1000 - queued as u64
    );
    a.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_reconnected() {
    let ca = ClusterCa::generate("c1").expect("ca");
    let a = start("c1", 1, &ca.issue_node(1, &[]).expect("cert"));
    let b_tls = ca.issue_node(2, &[]).expect("cert");
    let b = start("c1", 2, &b_tls);
    let b_addr = addr(&b);
    a.transport.add_peer(2, b_addr);
    a.transport.send(2, append(1, 1, 2, 1));
    until("first delivery", || b.sink.count() == 1).await;
    b.transport.add_peer(1, addr(&a));
    until("b up at a", || a.transport.is_up(2)).await;
    b.transport.shutdown().await;
    drop(b);
    until("b reported down", || !a.transport.is_up(2)).await;
    // The old endpoint's tasks let go of the port as they wind down.
    let mut restarted = None;
    until("the port is free again", || {
        let sink = Arc::new(Collect::default());
        let config = TransportConfig {
            listen: b_addr,
            ..config("c1", 2)
        };
        if let Ok(transport) = Transport::start(config, &b_tls, sink.clone()) {
            restarted = Some(Node { transport, sink });
        }
        restarted.is_some()
    })
    .await;
    let b = restarted.expect("restarted");
    // Keep sending until the new incarnation hears us (messages sent into the dead connection
    // are lost, as Raft allows).
    let mut i = 2;
    until("delivery after the restart", || {
        a.transport.send(2, append(1, 1, 2, i));
        i += 1;
        b.sink.count() > 0
    })
    .await;
    assert!(Stats::get(&a.transport.stats().connects) >= 2);
    a.transport.shutdown().await;
    b.transport.shutdown().await;
}

/// A 64 MiB snapshot stream that the receiver reads slowly does not hold Raft batches back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_does_not_stall_raft_batches() {
    let ca = ClusterCa::generate("c1").expect("ca");
    let a = start("c1", 1, &ca.issue_node(1, &[]).expect("cert"));
    let b = start("c1", 2, &ca.issue_node(2, &[]).expect("cert"));
    mesh(&[&a, &b]);
    let (tx, rx) = mpsc::channel(4);
    let sender = a.transport.clone();
    let send = tokio::spawn(async move {
        sender
            .send_snapshot(2, 9, Bytes::from_static(b"header"), rx)
            .await
    });
    let producer = tokio::spawn(async move {
        for i in 0..64u8 {
            if tx.send(Bytes::from(vec![i; 1 << 20])).await.is_err() {
                return;
            }
        }
    });
    until("the snapshot header", || b.sink.snapshots.lock().len() == 1).await;
    // Nobody reads the chunks yet: the stream is held back by flow control. Raft goes on.
    for i in 0..50 {
        a.transport.send(2, append(1, 1, 2, i));
    }
    until("raft messages during the snapshot", || b.sink.count() == 50).await;
    if send.is_finished() {
        panic!("the snapshot stream ended early: {:?}", send.await);
    }
    let (from, range, header, mut chunks) = b.sink.snapshots.lock().pop().expect("snapshot");
    assert_eq!((from, range, header.as_ref()), (1, 9, &b"header"[..]));
    let mut received = 0usize;
    let mut n = 0u8;
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.expect("a verified chunk");
        assert!(chunk.iter().all(|&b| b == n));
        received += chunk.len();
        n += 1;
    }
    assert_eq!(received, 64 << 20);
    producer.await.expect("producer");
    send.await.expect("join").expect("sent");
    a.transport.shutdown().await;
    b.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_answer_or_fail_typed() {
    let ca = ClusterCa::generate("c1").expect("ca");
    let a = start("c1", 1, &ca.issue_node(1, &[]).expect("cert"));
    let b = start("c1", 2, &ca.issue_node(2, &[]).expect("cert"));
    mesh(&[&a, &b]);
    let t = Duration::from_secs(5);
    let r = a
        .transport
        .call(2, "echo", Bytes::from_static(b"hi"), t)
        .await
        .expect("echo");
    assert_eq!(r.as_ref(), b"Some(1):hi");
    match a.transport.call(2, "nope", Bytes::new(), t).await {
        Err(TransportError::Rpc {
            code: RpcCode::UnknownMethod,
            ..
        }) => {}
        other => panic!("expected unknown method, got {other:?}"),
    }
    match a
        .transport
        .call(2, "slow", Bytes::new(), Duration::from_millis(200))
        .await
    {
        Err(e) => assert_eq!(e.rpc_code(), RpcCode::DeadlineExceeded, "{e}"),
        Ok(_) => panic!("the slow call cannot answer in time"),
    }
    a.transport.shutdown().await;
    b.transport.shutdown().await;
}

/// Raw peers whose certificate does not back their `Hello` are refused on the acceptor's side:
/// a node claiming to be another node, and a client opening a Raft stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostors_are_refused() {
    let ca = ClusterCa::generate("c1").expect("ca");
    let b = start("c1", 2, &ca.issue_node(2, &[]).expect("cert"));
    let cases = [
        (ca.issue_node(1, &[]).expect("cert"), 3u64),
        (ca.issue_client().expect("client cert"), 0u64),
    ];
    for (i, (tls, claimed)) in cases.into_iter().enumerate() {
        let before = Stats::get(&b.transport.stats().handshake_failures);
        // The TLS handshake itself succeeds: the certificate is the cluster's.
        let (_endpoint, conn) = raw_connect(&tls, &b).await;
        let hello = Hello {
            cluster_id: "c1".into(),
            node_id: claimed,
            kind: StreamKind::Raft as i32,
            incarnation: 1,
        };
        let mut s = conn.open_uni().await.expect("stream");
        s.write_all(&frame::encode(&hello, 4096).expect("hello"))
            .await
            .expect("write");
        let batch = RaftBatch {
            messages: vec![append(7, claimed, 2, 1)],
            ..RaftBatch::default()
        };
        let _ = s
            .write_all(&frame::encode(&batch, 4096).expect("batch"))
            .await;
        until("the impostor refused", || {
            Stats::get(&b.transport.stats().handshake_failures) > before
                && conn.close_reason().is_some()
        })
        .await;
        assert_eq!(b.sink.count(), 0, "case {i}: nothing delivered");
    }
    b.transport.shutdown().await;
}
