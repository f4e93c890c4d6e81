//! Crash test with real processes (issue 4; TESTING.md bug classes 2 and 3): a
//! child process appends entries for many ranges in group-commit rounds, prints an ack for each
//! entry only after its round is synced, then applies them (unsynced) and now and then compacts
//! its logs. The parent kills it with SIGKILL at random moments, reopens the directory and
//! checks that every acknowledged entry is there, that each range's data is exactly the state
//! its apply state claims (never more, never less), and that replaying the rest of the log
//! reaches the state of the whole log. Fixed seed; each run does 50 kills.
//!
//! The child opens RocksDB with `manual_wal_flush`: unsynced writes (the applies) stay in
//! RocksDB's buffer until the next synced round flushes and syncs them in order, so a SIGKILL
//! loses them the way a power loss loses the page cache, and an acknowledgement given before
//! its sync (bug class 2) loses acknowledged entries here. What it cannot show is the disk
//! itself dropping synced data (LazyFS or a VM, issue 11).
//!
//! Replay a run: `FLOTILLA_CRASH_SEED=N cargo test -p flotilla-engine --test crash`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use flotilla_engine::kv::{self, KvConfig, RangeApplier};
use flotilla_engine::raft::LogStore;
use flotilla_engine::storage::{keys, Engine, EngineConfig, LogBatch, RangeLog};
use flotilla_transport::kv::{
    txn_op, write_request, CommandHeader, Compare, CompareOp, CompareTarget, PutRequest,
    RaftCommand, ScanRequest, TxnOp, TxnRequest, WriteRequest,
};
use flotilla_transport::meta::{RangeDescriptor, RangeEpoch};
use flotilla_transport::raft::{ConfState, Entry, EntryType, HardState, SnapshotMetadata};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const RANGES: u64 = 24;
const KILLS: usize = 50;
const SLOTS: u64 = 7;
const CHILD_DIR: &str = "FLOTILLA_CRASH_CHILD_DIR";
const CHILD_SEED: &str = "FLOTILLA_CRASH_CHILD_SEED";
const ACK: &str = "FLOTILLA-ACK";

fn open(dir: &Path) -> Arc<Engine> {
    Engine::open(&EngineConfig::new(dir, "crash", 1)).expect("open engine")
}

/// The child keeps unsynced writes in RocksDB's buffer, so a SIGKILL loses them as a power
/// loss would: an acknowledgement that did not wait for the sync is then caught.
fn open_child(dir: &Path) -> Arc<Engine> {
    let mut config = EngineConfig::new(dir, "crash", 1);
    config.manual_wal_flush = true;
    Engine::open(&config).expect("open engine")
}

fn prefix(range: u64) -> String {
    format!("r{range:02}/")
}

fn descriptor(range: u64) -> RangeDescriptor {
    RangeDescriptor {
        id: range,
        start_key: keys::data_key(prefix(range).as_bytes()).into(),
        end_key: keys::data_key(format!("r{range:02}0").as_bytes()).into(),
        epoch: Some(RangeEpoch {
            version: 1,
            conf_ver: 1,
        }),
        replicas: vec![],
    }
}

fn conf() -> Option<ConfState> {
    Some(ConfState {
        voters: vec![1],
        ..ConfState::default()
    })
}

/// Entry `index` of `range`: a Txn that bumps the range's counter from `index - 1` to `index`
/// (checked by version) and writes slot `index % SLOTS`; a failed check writes "broken".
fn payload(range: u64, index: u64) -> Bytes {
    let key = |k: &str| Bytes::from(format!("{}{k}", prefix(range)));
    let put = |k: &str, v: String| TxnOp {
        op: Some(txn_op::Op::Put(PutRequest {
            key: key(k),
            value: v.into(),
            prev_kv: false,
        })),
    };
    let request = TxnRequest {
        compares: vec![Compare {
            key: key("counter"),
            target: CompareTarget::Version as i32,
            op: CompareOp::Equal as i32,
            revision: index - 1,
            ..Compare::default()
        }],
        success: vec![
            put("counter", index.to_string()),
            put(&format!("slot{}", index % SLOTS), format!("v{index}")),
        ],
        failure: vec![put("broken", index.to_string())],
    };
    RaftCommand {
        header: Some(CommandHeader {
            range_id: range,
            epoch: descriptor(range).epoch,
            client_id: range,
            seq: index,
            first_unacked_seq: index,
            session_start_ms: 1,
            proposed_at_ms: 1 + index,
        }),
        request: Some(WriteRequest {
            request: Some(write_request::Request::Txn(request)),
        }),
        admin: None,
    }
    .encode_to_vec()
    .into()
}

/// The exact rows of `range` after applying entries `1..=applied`: (user key, value, mod rev).
fn model(range: u64, applied: u64) -> Vec<(String, String, u64)> {
    let mut rows = Vec::new();
    if applied > 0 {
        rows.push((
            format!("{}counter", prefix(range)),
            applied.to_string(),
            applied,
        ));
    }
    for slot in 0..SLOTS {
        if let Some(i) = (1..=applied).rev().find(|i| i % SLOTS == slot) {
            rows.push((format!("{}slot{slot}", prefix(range)), format!("v{i}"), i));
        }
    }
    rows.sort();
    rows
}

fn rows(engine: &Engine, applier: &RangeApplier) -> Vec<(String, String, u64)> {
    let page = kv::scan(
        engine,
        applier.descriptor(),
        &ScanRequest {
            start: Bytes::from(prefix(applier.descriptor().id)),
            limit: 1000,
            ..ScanRequest::default()
        },
        &KvConfig::default(),
    )
    .expect("scan");
    page.kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.mod_revision,
            )
        })
        .collect()
}

fn load_or_create(engine: &Arc<Engine>) -> Vec<(RangeLog, RangeApplier)> {
    let mut batch = LogBatch::new();
    for r in 1..=RANGES {
        if engine.descriptor(r).expect("descriptor").is_none() {
            let initial = SnapshotMetadata {
                index: 0,
                term: 0,
                conf_state: conf(),
            };
            RangeLog::create(engine, &mut batch, &descriptor(r), &initial).expect("create");
        }
    }
    batch.commit(engine).expect("commit");
    (1..=RANGES)
        .map(|r| {
            (
                RangeLog::load(engine.clone(), r).expect("load log"),
                RangeApplier::load(engine.clone(), r, KvConfig::default()).expect("load applier"),
            )
        })
        .collect()
}

/// The child: rounds of appends to random ranges, acked after the sync, then applied.
fn child(dir: &Path, seed: u64) -> ! {
    let engine = open_child(dir);
    let mut ranges = load_or_create(&engine);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let stdout = std::io::stdout();
    loop {
        let mut batch = LogBatch::new();
        let mut staged: Vec<(usize, Vec<Entry>)> = Vec::new();
        for (i, (log, _)) in ranges.iter_mut().enumerate() {
            if !rng.random_ratio(1, 3) {
                continue;
            }
            let first = log.last_index().expect("last") + 1;
            let n = rng.random_range(1..=3);
            let entries: Vec<Entry> = (first..first + n)
                .map(|index| Entry {
                    entry_type: EntryType::Normal as i32,
                    term: 1,
                    index,
                    data: payload(log.range_id(), index),
                })
                .collect();
            let hs = HardState {
                term: 1,
                vote: 1,
                commit: first + n - 1,
            };
            log.stage(&mut batch, None, &entries, Some(&hs))
                .expect("stage");
            staged.push((i, entries));
        }
        batch.commit(&engine).expect("commit");
        {
            let mut out = stdout.lock();
            for (i, entries) in &staged {
                let last = entries.last().map(|e| e.index).unwrap_or_default();
                writeln!(out, "{ACK} {} {last}", ranges[*i].0.range_id()).expect("stdout");
            }
            out.flush().expect("flush");
        }
        for (i, entries) in &staged {
            let (log, applier) = &mut ranges[*i];
            applier.apply(entries, None).expect("apply");
            let applied = applier.applied_index();
            let first = log.first_index().expect("first");
            if applied >= first + 20 && rng.random_ratio(1, 4) {
                let meta = SnapshotMetadata {
                    index: applied - 5,
                    term: 1,
                    conf_state: conf(),
                };
                log.compact(&meta).expect("compact");
            }
        }
    }
}

/// After a kill: everything acknowledged is there, apply state and data agree, replay
/// converges. Returns the entries applied by the replay.
fn check(dir: &Path, acked: &BTreeMap<u64, u64>, kill: usize) -> u64 {
    let engine = open(dir);
    let mut replayed = 0;
    for r in 1..=RANGES {
        let log = RangeLog::load(engine.clone(), r)
            .unwrap_or_else(|e| panic!("kill {kill}: range {r} does not load: {e}"));
        let mut applier = RangeApplier::load(engine.clone(), r, KvConfig::default())
            .unwrap_or_else(|e| panic!("kill {kill}: range {r} applier: {e}"));
        let last = log.last_index().expect("last");
        let acked = acked.get(&r).copied().unwrap_or(0);
        assert!(
            last >= acked,
            "kill {kill}: range {r} lost acknowledged entries: last {last} < acked {acked}"
        );
        let applied = applier.applied_index();
        let first = log.first_index().expect("first");
        assert!(
            first <= applied + 1,
            "kill {kill}: range {r} compacted past applied {applied}"
        );
        assert_eq!(
            rows(&engine, &applier),
            model(r, applied),
            "kill {kill}: range {r}: data differs from its apply state ({applied})"
        );
        let rest = log
            .entries(applied + 1, last + 1, u64::MAX)
            .expect("entries");
        applier.apply(&rest, None).expect("replay");
        replayed += rest.len() as u64;
        assert_eq!(
            rows(&engine, &applier),
            model(r, last),
            "kill {kill}: range {r}: replay to {last} diverged"
        );
    }
    replayed
}

#[test]
fn kill_at_random_moments() {
    let seed: u64 = std::env::var("FLOTILLA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut total_replayed = 0;
    for kill in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_process",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_SEED, (seed * 1000 + kill as u64).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let wait_for = rng.random_range(1..=300);
        let mut seen = 0;
        while seen < wait_for {
            let Some(line) = lines.next() else {
                panic!("kill {kill}: the child exited early")
            };
            let line = line.expect("read");
            if let Some(rest) = line.strip_prefix(ACK) {
                let mut it = rest
                    .split_whitespace()
                    .map(|s| s.parse::<u64>().expect("number"));
                let (r, index) = (it.next().expect("range"), it.next().expect("index"));
                let a = acked.entry(r).or_default();
                *a = (*a).max(index);
                seen += 1;
            }
        }
        child.kill().expect("SIGKILL");
        // Acks printed before the kill landed count too: they were synced first.
        for line in lines.map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(ACK) {
                let mut it = rest
                    .split_whitespace()
                    .filter_map(|s| s.parse::<u64>().ok());
                if let (Some(r), Some(index)) = (it.next(), it.next()) {
                    let a = acked.entry(r).or_default();
                    *a = (*a).max(index);
                }
            }
        }
        child.wait().expect("reap");
        total_replayed += check(dir.path(), &acked, kill);
    }
    let entries: u64 = acked.values().sum();
    eprintln!(
        "{KILLS} kills, {entries} entries acknowledged, {total_replayed} replayed after kills"
    );
    assert!(entries > 1000, "the child did real work");
}

/// The child process of `kill_at_random_moments` (runs only when that test starts it).
#[test]
#[ignore = "the child process of kill_at_random_moments"]
fn child_process() {
    if let (Ok(dir), Ok(seed)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_SEED)) {
        child(Path::new(&dir), seed.parse().expect("seed"));
    }
}
