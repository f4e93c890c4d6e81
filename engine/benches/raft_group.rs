//! Throughput of one 3-replica Raft group in memory: propose on the leader, replicate, commit
//! and apply on the leader, with the driver loop of `RawNode`'s docs and no I/O. This is the
//! core's own cost; the goal is that it never limits a node (>= 1M entries/s with batching on
//! one core).
//!
//! `cargo bench -p flotilla-engine --bench raft_group`

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flotilla_engine::raft::{Config, MemStorage, Message, RawNode, Role};

struct Group {
    nodes: Vec<RawNode<MemStorage>>,
    queue: VecDeque<Message>,
    applied_on_leader: u64,
}

impl Group {
    fn new() -> Self {
        let voters = [1, 2, 3];
        let nodes = voters
            .iter()
            .map(|&id| {
                let config = Config {
                    pre_vote: false,
                    max_inflight_msgs: 256,
                    ..Config::new(id)
                };
                RawNode::new(config, MemStorage::new_with_conf(&voters, &[])).expect("valid config")
            })
            .collect();
        let mut g = Self {
            nodes,
            queue: VecDeque::new(),
            applied_on_leader: 0,
        };
        g.nodes[0].campaign().expect("campaign");
        g.settle();
        assert_eq!(g.nodes[0].status().role, Role::Leader);
        g
    }

    /// One driver round on every replica, then deliver everything; repeat until quiet.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for (i, node) in self.nodes.iter_mut().enumerate() {
                if !node.has_ready() {
                    continue;
                }
                moved = true;
                let mut rd = node.ready().expect("ready");
                self.queue.extend(rd.messages.drain(..));
                if let Some(hs) = rd.hard_state {
                    node.store_mut().set_hard_state(hs);
                }
                node.store_mut().append(&rd.entries).expect("append");
                self.queue.extend(rd.persisted_messages.drain(..));
                if i == 0 {
                    for e in &rd.committed_entries {
                        black_box(&e.data);
                        self.applied_on_leader = e.index;
                    }
                }
                node.advance(rd).expect("advance");
            }
            while let Some(m) = self.queue.pop_front() {
                moved = true;
                let to = m.to as usize - 1;
                self.nodes[to].step(m).expect("well-formed traffic");
            }
            if !moved {
                return;
            }
        }
    }

    fn propose_and_commit(&mut self, batch: &[Bytes]) {
        let (_, first) = self.nodes[0]
            .propose_batch(batch.to_vec())
            .expect("leader accepts");
        self.settle();
        assert!(self.applied_on_leader >= first + batch.len() as u64 - 1);
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("raft_3_replicas_propose_commit_apply");
    for batch_size in [1usize, 64] {
        let batch: Vec<Bytes> = (0..batch_size)
            .map(|_| Bytes::from(vec![7u8; 64]))
            .collect();
        group.throughput(Throughput::Elements(batch_size as u64));
        group.bench_with_input(BenchmarkId::new("batch", batch_size), &batch, |b, batch| {
            b.iter_custom(|iters| {
                // A fresh group per sample keeps the in-memory log from growing without bound.
                let mut g = Group::new();
                let start = Instant::now();
                for _ in 0..iters {
                    g.propose_and_commit(batch);
                }
                start.elapsed()
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
