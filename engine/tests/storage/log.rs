//! The Raft log on RocksDB: group commit, conflicts, compaction, restart, and damage detection
//! on open (DESIGN section 5).

use std::sync::Arc;

use bytes::Bytes;
use flotilla_engine::raft::{LogStore, StorageError};
use flotilla_engine::storage::{keys, Engine, EngineConfig, EngineError, LogBatch, RangeLog};
use flotilla_transport::raft::{Entry, HardState, SnapshotMetadata};

use crate::support::*;

fn entries(first: u64, last: u64, term: u64) -> Vec<Entry> {
    (first..=last)
        .map(|i| entry(i, term, Bytes::from(format!("entry {i} term {term}"))))
        .collect()
}

/// One synced round for one range.
fn persist(engine: &Engine, log: &mut RangeLog, entries: &[Entry], hard_state: Option<&HardState>) {
    let mut batch = LogBatch::new();
    log.stage(&mut batch, None, entries, hard_state)
        .expect("stage");
    batch.commit(engine).expect("commit");
}

fn hs(term: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote: 1,
        commit,
    }
}

/// One round carrying a hundred ranges is one synced write and one WAL fsync.
#[test]
fn a_round_of_many_ranges_is_one_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let descs: Vec<_> = (10..110).map(|id| descriptor(id, b"", b"")).collect();
    let mut ranges = create_ranges(&engine, &descs);
    for round in 1..=3u64 {
        let (writes, syncs) = (engine.synced_writes(), engine.wal_syncs());
        let mut batch = LogBatch::new();
        for (log, _) in &mut ranges {
            log.stage(
                &mut batch,
                None,
                &entries(round, round, 1),
                Some(&hs(1, round)),
            )
            .expect("stage");
        }
        assert_eq!((batch.ranges(), batch.entries()), (100, 100));
        batch.commit(&engine).expect("commit");
        assert_eq!(engine.synced_writes() - writes, 1, "round {round}");
        assert_eq!(
            engine.wal_syncs() - syncs,
            1,
            "round {round}: RocksDB's own count"
        );
    }
    drop(ranges);
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(
        engine.range_ids().expect("ids"),
        (10..110).collect::<Vec<_>>()
    );
    for id in 10..110 {
        let log = RangeLog::load(engine.clone(), id).expect("load");
        assert_eq!(log.last_index(), Ok(3));
        assert_eq!(log.entries(1, 4, u64::MAX), Ok(entries(1, 3, 1)));
        // Commit-only changes are written lazily (commit is volatile in Raft): the reloaded
        // commit is the one written with the term, or the applied index if higher.
        assert_eq!(log.hard_state().commit, 1);
    }
}

#[test]
fn a_conflicting_append_replaces_the_suffix_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let (mut log, _) = create_ranges(&engine, &[descriptor(5, b"", b"")])
        .pop()
        .expect("range");
    persist(&engine, &mut log, &entries(1, 10, 1), Some(&hs(1, 2)));
    persist(&engine, &mut log, &entries(4, 6, 2), Some(&hs(2, 2)));
    let expected: Vec<Entry> = entries(1, 3, 1)
        .into_iter()
        .chain(entries(4, 6, 2))
        .collect();
    assert_eq!(log.last_index(), Ok(6));
    assert_eq!(log.entries(1, 7, u64::MAX), Ok(expected.clone()));
    assert_eq!(log.entries(1, 8, u64::MAX), Err(StorageError::Unavailable));
    drop(log);
    let log = RangeLog::load(engine.clone(), 5).expect("reload");
    assert_eq!(
        log.last_index(),
        Ok(6),
        "entries 7..10 are gone from disk too"
    );
    assert_eq!(log.entries(1, 7, u64::MAX), Ok(expected));
    // A gap is refused.
    let mut log = log;
    let mut batch = LogBatch::new();
    assert!(log
        .stage(&mut batch, None, &entries(9, 9, 2), None)
        .is_err());
}

/// Reads beyond the entry cache come from disk; the size cap holds either way.
#[test]
fn reads_past_the_cache_come_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = EngineConfig::new(dir.path(), CLUSTER, 1);
    config.entry_cache_bytes_per_range = 1024;
    let engine = Engine::open(&config).expect("open");
    let (mut log, _) = create_ranges(&engine, &[descriptor(5, b"", b"")])
        .pop()
        .expect("range");
    let all = entries(1, 200, 1);
    let mut batch = LogBatch::new();
    log.stage(&mut batch, None, &all, Some(&hs(1, 200)))
        .expect("stage");
    batch.commit(&engine).expect("commit");
    assert_eq!(log.entries(1, 201, u64::MAX), Ok(all.clone()));
    assert_eq!(log.entries(190, 201, u64::MAX), Ok(all[189..].to_vec()));
    assert_eq!(log.entries(1, 201, 100).map(|e| e.len()), Ok(2));
    assert_eq!(log.entries(1, 201, 0).map(|e| e.len()), Ok(1));
    assert_eq!(log.term(37), Ok(1));
}

#[test]
fn compaction_is_persisted_with_the_next_round() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let (mut log, _) = create_ranges(&engine, &[descriptor(5, b"", b"")])
        .pop()
        .expect("range");
    persist(&engine, &mut log, &entries(1, 10, 1), Some(&hs(1, 10)));
    let meta = SnapshotMetadata {
        index: 6,
        term: 1,
        conf_state: initial().conf_state,
    };
    log.compact(&meta).expect("compact");
    assert_eq!(log.first_index(), Ok(7));
    assert_eq!(log.entries(5, 8, u64::MAX), Err(StorageError::Compacted));
    assert_eq!(log.term(6), Ok(1));
    let mut batch = LogBatch::new();
    log.stage_compaction(&mut batch);
    batch.commit(&engine).expect("commit");
    drop(log);
    let log = RangeLog::load(engine.clone(), 5).expect("reload");
    assert_eq!((log.first_index(), log.last_index()), (Ok(7), Ok(10)));
    assert_eq!(log.snapshot_metadata(), Ok(meta));
}

fn raw_db(dir: &std::path::Path) -> rocksdb::DB {
    let opts = rocksdb::Options::default();
    rocksdb::DB::open_cf(&opts, dir, [keys::RAFT_CF, keys::DATA_CF, keys::META_CF])
        .expect("raw open")
}

fn damaged(dir: &std::path::Path, damage: impl FnOnce(&rocksdb::DB)) -> EngineError {
    {
        let engine = open(dir);
        let (mut log, _) = create_ranges(&engine, &[descriptor(5, b"", b"")])
            .pop()
            .expect("range");
        let mut batch = LogBatch::new();
        log.stage(&mut batch, None, &entries(1, 5, 1), Some(&hs(1, 5)))
            .expect("stage");
        batch.commit(&engine).expect("commit");
    }
    damage(&raw_db(dir));
    let engine = open(dir);
    RangeLog::load(engine, 5).expect_err("damage must be reported")
}

/// Damage is reported on open with what and where, never loaded.
#[test]
fn damage_is_reported_on_open() {
    // A flipped bit in a log entry.
    let dir = tempfile::tempdir().expect("tempdir");
    let e = damaged(dir.path(), |db| {
        let cf = db.cf_handle(keys::RAFT_CF).expect("cf");
        let key = keys::log_key(5, 3);
        let mut v = db.get_cf(cf, key).expect("get").expect("entry 3");
        let last = v.len() - 1;
        v[last] ^= 0x10;
        db.put_cf(cf, key, v).expect("put");
    });
    assert!(
        matches!(&e, EngineError::Corruption { range_id: 5, what: "log entry", detail } if detail.contains("index 3")),
        "{e}"
    );
    // A hard state whose commit is past the last entry.
    let dir = tempfile::tempdir().expect("tempdir");
    let e = damaged(dir.path(), |db| {
        let cf = db.cf_handle(keys::RAFT_CF).expect("cf");
        db.put_cf(
            cf,
            keys::hard_state_key(5),
            flotilla_engine::storage::encode(&hs(1, 9)),
        )
        .expect("put");
    });
    assert!(
        matches!(
            e,
            EngineError::Corruption {
                what: "hard state",
                ..
            }
        ),
        "{e}"
    );
    // A missing entry in the middle.
    let dir = tempfile::tempdir().expect("tempdir");
    let e = damaged(dir.path(), |db| {
        let cf = db.cf_handle(keys::RAFT_CF).expect("cf");
        db.delete_cf(cf, keys::log_key(5, 2)).expect("delete");
    });
    assert!(
        matches!(e, EngineError::Corruption { what: "log", .. }),
        "{e}"
    );
}

#[test]
fn another_clusters_or_nodes_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(dir.path()));
    let other = |cluster: &str, node: u64, create: bool| {
        let mut c = EngineConfig::new(dir.path(), cluster, node);
        c.create = create;
        Engine::open(&c).map(|_: Arc<Engine>| ())
    };
    assert!(matches!(
        other("another", 1, true),
        Err(EngineError::ClusterMismatch { ref found, .. }) if found == CLUSTER
    ));
    assert!(matches!(
        other(CLUSTER, 2, true),
        Err(EngineError::NodeMismatch {
            expected: 2,
            found: 1
        })
    ));
    assert!(other(CLUSTER, 1, false).is_ok());
    let empty = tempfile::tempdir().expect("tempdir");
    let mut c = EngineConfig::new(empty.path(), CLUSTER, 1);
    c.create = false;
    assert!(
        Engine::open(&c).is_err(),
        "an empty directory without create"
    );
}
