//! Two endpoints on loopback (issue 5): small Raft messages per second through the batching
//! path (queue -> flusher -> one frame per batch -> fan-out), and snapshot stream throughput.
//!
//! `cargo bench -p flotilla-transport --bench transport`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flotilla_transport::raft::{Message, MessageType};
use flotilla_transport::tls::ClusterCa;
use flotilla_transport::wire::{RangeMessage, RpcCode};
use flotilla_transport::{BoxFuture, RpcStatus, Sink, SnapshotChunks, Transport, TransportConfig};
use parking_lot::Mutex;
use tokio::sync::mpsc;

#[derive(Default)]
struct Counting {
    messages: AtomicUsize,
    snapshots: Mutex<Vec<SnapshotChunks>>,
}

impl Sink for Counting {
    fn raft_messages(&self, _from: u64, messages: Vec<RangeMessage>) {
        self.messages.fetch_add(messages.len(), Ordering::Relaxed);
    }
    fn peer_state(&self, _node: u64, _up: bool) {}
    fn snapshot(&self, _from: u64, _range: u64, _header: Bytes, chunks: SnapshotChunks) {
        self.snapshots.lock().push(chunks);
    }
    fn rpc(
        &self,
        _from: Option<u64>,
        method: String,
        _body: Bytes,
        _timeout: std::time::Duration,
    ) -> BoxFuture<Result<Bytes, RpcStatus>> {
        Box::pin(async move { Err(RpcStatus::new(RpcCode::UnknownMethod, method)) })
    }
}

struct Pair {
    rt: tokio::runtime::Runtime,
    a: Transport,
    sink_b: Arc<Counting>,
}

fn pair() -> Pair {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ca = ClusterCa::generate("bench").expect("ca");
    let (a, sink_b) = rt.block_on(async {
        let config = |id| TransportConfig::new("bench", id, "127.0.0.1:0".parse().expect("addr"));
        let a = Transport::start(
            config(1),
            &ca.issue_node(1, &[]).expect("cert"),
            Arc::new(Counting::default()),
        )
        .expect("a");
        let sink_b = Arc::new(Counting::default());
        let b = Transport::start(
            config(2),
            &ca.issue_node(2, &[]).expect("cert"),
            sink_b.clone(),
        )
        .expect("b");
        a.add_peer(2, b.local_addr().expect("addr"));
        b.add_peer(1, a.local_addr().expect("addr"));
        std::mem::forget(b);
        (a, sink_b)
    });
    Pair { rt, a, sink_b }
}

fn raft_messages(c: &mut Criterion) {
    let p = pair();
    let msg = |i: u64| RangeMessage {
        range_id: i % 1000,
        message: Some(Message {
            msg_type: MessageType::AppendResponse as i32,
            from: 1,
            to: 2,
            term: 7,
            index: i,
            commit: i,
            ..Message::default()
        }),
    };
    const BURST: u64 = 10_000;
    let mut group = c.benchmark_group("transport");
    group.throughput(Throughput::Elements(BURST));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("raft_messages_10k", |b| {
        b.iter_custom(|iters| {
            p.rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let before = p.sink_b.messages.load(Ordering::Relaxed);
                    let start = Instant::now();
                    let mut sent = 0;
                    for i in 0..BURST {
                        // The queue is bounded: a sender that outruns the network yields.
                        while !p.a.send(2, msg(i)) {
                            tokio::task::yield_now().await;
                        }
                        sent += 1;
                    }
                    while p.sink_b.messages.load(Ordering::Relaxed) < before + sent {
                        tokio::task::yield_now().await;
                    }
                    total += start.elapsed();
                }
                total
            })
        });
    });
    group.finish();
}

fn snapshot_stream(c: &mut Criterion) {
    let p = pair();
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 64;
    let mut group = c.benchmark_group("transport");
    group.throughput(Throughput::Bytes((CHUNK * CHUNKS) as u64));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    let chunk = Bytes::from(vec![7u8; CHUNK]);
    group.bench_function("snapshot_64MiB", |b| {
        b.iter_custom(|iters| {
            p.rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let (tx, rx) = mpsc::channel(4);
                    let a = p.a.clone();
                    let send = tokio::spawn(async move {
                        a.send_snapshot(2, 1, Bytes::from_static(b"h"), rx).await
                    });
                    let feed = chunk.clone();
                    tokio::spawn(async move {
                        for _ in 0..CHUNKS {
                            if tx.send(feed.clone()).await.is_err() {
                                return;
                            }
                        }
                    });
                    let mut chunks = loop {
                        if let Some(c) = p.sink_b.snapshots.lock().pop() {
                            break c;
                        }
                        tokio::task::yield_now().await;
                    };
                    while let Some(c) = chunks.recv().await {
                        c.expect("verified chunk");
                    }
                    send.await.expect("join").expect("sent");
                    total += start.elapsed();
                }
                total
            })
        });
    });
    group.finish();
}

criterion_group!(benches, raft_messages, snapshot_stream);
criterion_main!(benches);
