//! Fault injection in real code paths (the `fail` crate; TESTING.md "fsync error (fail-stop,
//! never retry)"). Failpoints are process-global: the tests of this binary take a lock.

use std::sync::Arc;

use bytes::Bytes;
use flotilla_engine::raft::LogStore;
use flotilla_engine::storage::{keys, Engine, EngineConfig, EngineError, LogBatch, RangeLog};
use flotilla_transport::meta::RangeDescriptor;
use flotilla_transport::raft::{ConfState, Entry, HardState, SnapshotMetadata};
use parking_lot::Mutex;

static SERIAL: Mutex<()> = Mutex::new(());

fn setup(dir: &std::path::Path) -> (Arc<Engine>, RangeLog) {
    let engine = Engine::open(&EngineConfig::new(dir, "fp", 1)).expect("open");
    let mut batch = LogBatch::new();
    let desc = RangeDescriptor {
        id: 1,
        start_key: keys::data_key(b"").into(),
        ..RangeDescriptor::default()
    };
    let initial = SnapshotMetadata {
        index: 0,
        term: 0,
        conf_state: Some(ConfState {
            voters: vec![1],
            ..ConfState::default()
        }),
    };
    RangeLog::create(&engine, &mut batch, &desc, &initial).expect("create");
    batch.commit(&engine).expect("commit");
    let log = RangeLog::load(engine.clone(), 1).expect("load");
    (engine, log)
}

fn append(engine: &Engine, log: &mut RangeLog, index: u64) -> Result<(), EngineError> {
    let e = Entry {
        term: 1,
        index,
        data: Bytes::from_static(b"x"),
        ..Entry::default()
    };
    let hs = HardState {
        term: 1,
        vote: 1,
        commit: index,
    };
    let mut batch = LogBatch::new();
    log.stage(&mut batch, None, &[e], Some(&hs))?;
    batch.commit(engine)
}

/// A failed fsync halts storage for good: the write is reported, and no later write (synced
/// or not) succeeds, even once the disk "recovers" (never retry an fsync).
#[test]
fn a_failed_fsync_halts_storage() {
    let _serial = SERIAL.lock();
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, mut log) = setup(dir.path());
    append(&engine, &mut log, 1).expect("a healthy write");
    fail::cfg("storage::write_synced", "return(EIO: injected)").expect("failpoint");
    let e = append(&engine, &mut log, 2).expect_err("the fsync fails");
    assert!(
        matches!(&e, EngineError::SyncFailed(m) if m.contains("EIO")),
        "{e}"
    );
    fail::remove("storage::write_synced");
    let e = append(&engine, &mut log, 3).expect_err("halted");
    assert!(matches!(e, EngineError::Halted(_)), "{e}");
    let e = engine
        .write_unsynced(rocksdb::WriteBatch::default())
        .expect_err("halted");
    assert!(matches!(e, EngineError::Halted(_)), "{e}");
    scenario.teardown();
    drop(log);
    drop(engine);
    // After a restart, what was acknowledged is there and the failed write is not.
    let engine = Engine::open(&EngineConfig::new(dir.path(), "fp", 1)).expect("reopen");
    let log = RangeLog::load(engine, 1).expect("load");
    assert_eq!(log.last_index(), Ok(1));
}
