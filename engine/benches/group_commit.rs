//! Group commit (issue 4): N active ranges each append one 256-byte entry (plus their hard
//! state) per round; a round is one WriteBatch written with one fsync. Reports rounds/s (and
//! entries/s through criterion's throughput) and checks the fsyncs per round with RocksDB's
//! own statistics. `fsync_floor` is the raw cost of a 256-byte write + fdatasync on the same
//! disk, the floor under any synced round; `one_fsync_per_range` shows what group commit saves.
//! (RocksDB adds a WAL sync of its own when it switches WAL files, a handful per thousand
//! rounds.)
//!
//! Run: `cargo bench -p flotilla-engine --bench group_commit` (or `make bench`).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flotilla_engine::raft::LogStore;
use flotilla_engine::storage::{keys, Engine, EngineConfig, LogBatch, RangeLog};
use flotilla_transport::meta::RangeDescriptor;
use flotilla_transport::raft::{ConfState, Entry, EntryType, HardState, SnapshotMetadata};

const ENTRY_BYTES: usize = 256;

fn setup(n: u64) -> (tempfile::TempDir, Arc<Engine>, Vec<RangeLog>) {
    let dir =
        tempfile::tempdir_in(std::env::var("FLOTILLA_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .expect("tempdir");
    let engine = Engine::open(&EngineConfig::new(dir.path(), "bench", 1)).expect("open");
    let mut batch = LogBatch::new();
    let initial = SnapshotMetadata {
        index: 0,
        term: 0,
        conf_state: Some(ConfState {
            voters: vec![1],
            ..ConfState::default()
        }),
    };
    for id in 1..=n {
        let desc = RangeDescriptor {
            id,
            start_key: keys::data_key(format!("{id:08}").as_bytes()).into(),
            end_key: keys::data_key(format!("{:08}", id + 1).as_bytes()).into(),
            ..RangeDescriptor::default()
        };
        RangeLog::create(&engine, &mut batch, &desc, &initial).expect("create");
    }
    batch.commit(&engine).expect("commit");
    let logs = (1..=n)
        .map(|id| RangeLog::load(engine.clone(), id).expect("load"))
        .collect();
    (dir, engine, logs)
}

/// One round: every range appends one entry; one synced write.
fn round(engine: &Engine, logs: &mut [RangeLog], payload: &Bytes) {
    let mut batch = LogBatch::new();
    for log in logs.iter_mut() {
        let index = log.last_index().expect("last") + 1;
        let entry = Entry {
            entry_type: EntryType::Normal as i32,
            term: 1,
            index,
            data: payload.clone(),
        };
        let hs = HardState {
            term: 1,
            vote: 1,
            commit: index,
        };
        log.stage(&mut batch, None, &[entry], Some(&hs))
            .expect("stage");
    }
    batch.commit(engine).expect("commit");
}

fn group_commit(c: &mut Criterion) {
    let payload = Bytes::from(vec![7u8; ENTRY_BYTES]);
    let mut group = c.benchmark_group("group_commit");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    for n in [1u64, 100, 1_000, 10_000] {
        let (_dir, engine, mut logs) = setup(n);
        group.throughput(Throughput::Elements(n));
        let (syncs, writes) = (engine.wal_syncs(), engine.synced_writes());
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| round(&engine, &mut logs, &payload));
        });
        let rounds = engine.synced_writes() - writes;
        let fsyncs = engine.wal_syncs() - syncs;
        println!(
            "group_commit/{n}: {rounds} rounds, {fsyncs} WAL fsyncs: {:.3} fsyncs per round",
            fsyncs as f64 / rounds.max(1) as f64
        );
        // RocksDB also syncs a WAL file when it switches to a new one (a memtable flush, every
        // few dozen rounds of 10,000 ranges). Anything near two per round is a regression.
        assert!(
            fsyncs as f64 <= rounds as f64 * 1.1 + 2.0,
            "one fsync per round, however many ranges: {fsyncs} fsyncs in {rounds} rounds"
        );
    }
    group.finish();
}

/// What group commit saves: the same 100 ranges, one synced write each.
fn one_fsync_per_range(c: &mut Criterion) {
    let payload = Bytes::from(vec![7u8; ENTRY_BYTES]);
    let mut group = c.benchmark_group("one_fsync_per_range");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    let n = 100u64;
    let (_dir, engine, mut logs) = setup(n);
    group.throughput(Throughput::Elements(n));
    group.bench_function(BenchmarkId::from_parameter(n), |b| {
        b.iter(|| {
            for log in logs.iter_mut() {
                round(&engine, std::slice::from_mut(log), &payload);
            }
        });
    });
    group.finish();
}

/// The disk's floor: append 256 bytes to a file and fdatasync it.
fn fsync_floor(c: &mut Criterion) {
    let dir =
        tempfile::tempdir_in(std::env::var("FLOTILLA_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .expect("tempdir");
    let mut file = std::fs::File::create(dir.path().join("floor")).expect("create");
    let buf = [7u8; ENTRY_BYTES];
    c.bench_function("fsync_floor", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                file.write_all(&buf).expect("write");
                file.sync_data().expect("fdatasync");
            }
            start.elapsed()
        });
    });
}

criterion_group!(benches, fsync_floor, group_commit, one_fsync_per_range);
criterion_main!(benches);
