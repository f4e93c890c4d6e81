//! Range snapshots: built from a consistent view, verified chunk by chunk, installed atomically
//! with the Raft state; corrupt snapshots are refused whole (DESIGN section 5).

use flotilla_engine::kv::{self, KvConfig};
use flotilla_engine::raft::LogStore;
use flotilla_engine::storage::{
    build_snapshot, LogBatch, ReceivedSnapshot, SnapshotError, SnapshotParts,
};
use flotilla_transport::kv::ScanRequest;

use crate::support::*;

fn everything(s: &Single) -> Vec<flotilla_transport::kv::KeyValue> {
    kv::scan(
        &s.engine,
        s.applier.descriptor(),
        &ScanRequest {
            start: "".into(),
            limit: 10_000,
            ..ScanRequest::default()
        },
        &KvConfig::default(),
    )
    .expect("scan")
    .kvs
}

fn source() -> (tempfile::TempDir, Single, SnapshotParts) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let mut s = Single::new(&engine, descriptor(2, b"", b""));
    let puts = (0..500)
        .map(|i| {
            command(
                header(2, 1 + i % 7, 1 + i / 7),
                put(&format!("key{i:04}"), &"x".repeat(100)),
            )
        })
        .collect();
    s.write_all(puts);
    s.write(command(header(2, 0, 0), delete_range("key0100", "key0200")));
    let mut parts = SnapshotParts::default();
    let meta = build_snapshot(&engine, 2, 4096, &mut parts).expect("build");
    assert_eq!(meta.index, 501);
    assert!(parts.chunks.len() > 5, "chunked: {}", parts.chunks.len());
    (dir, s, parts)
}

#[test]
fn a_snapshot_installs_the_same_state_elsewhere() {
    let (_dir, source, parts) = source();
    let received = ReceivedSnapshot::from_parts(2, parts).expect("verified");
    assert_eq!(received.row_count(), 400 + 7, "400 keys and 7 sessions");

    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    // The receiver holds an older, diverging replica of the same range.
    let mut target = Single::new(&engine, descriptor(2, b"", b""));
    target.write(command(header(2, 0, 0), put("stale", "gone after install")));
    let mut batch = LogBatch::new();
    target
        .log
        .stage(&mut batch, Some(&received), &[], None)
        .expect("stage");
    batch.commit(&engine).expect("commit");
    drop(target);

    let (log, applier) = load_range(&engine, 2);
    assert_eq!(applier.applied_index(), 501);
    assert_eq!((log.first_index(), log.last_index()), (Ok(502), Ok(501)));
    assert_eq!(log.hard_state().commit, 501);
    let target = Single {
        engine: engine.clone(),
        log,
        applier,
    };
    assert_eq!(everything(&target), everything(&source));
    // Sessions came along: a retry of an applied write is answered, not applied again.
    let mut target = target;
    let retry = target.write(command(header(2, 1, 1), put("key0000", "again")));
    assert_eq!(
        kv::get(
            &engine,
            target.applier.descriptor(),
            b"key0000",
            &KvConfig::default()
        )
        .expect("get")
        .kv
        .map(|kv| kv.mod_revision),
        Some(1)
    );
    assert_eq!(retry.response.revision, 1, "the recorded response of seq 1");
}

#[test]
fn a_corrupt_snapshot_is_refused_whole() {
    let (_dir, _source, parts) = source();
    // A flipped byte in one row.
    let mut bad = parts.clone();
    let row = &mut bad.chunks[2].rows[0];
    let mut v = row.value.to_vec();
    v[5] ^= 1;
    row.value = v.into();
    assert_eq!(
        ReceivedSnapshot::from_parts(2, bad).err(),
        Some(SnapshotError::Checksum { chunk: 2 })
    );
    // A lost chunk, a reordered chunk, a missing tail.
    let mut bad = parts.clone();
    bad.chunks.remove(1);
    assert_eq!(
        ReceivedSnapshot::from_parts(2, bad).err(),
        Some(SnapshotError::OutOfOrder {
            expected: 1,
            got: 2
        })
    );
    let mut bad = parts.clone();
    bad.chunks.swap(0, 1);
    assert!(matches!(
        ReceivedSnapshot::from_parts(2, bad),
        Err(SnapshotError::OutOfOrder { .. })
    ));
    let mut bad = parts.clone();
    bad.chunks.pop();
    assert!(matches!(
        ReceivedSnapshot::from_parts(2, bad),
        Err(SnapshotError::Truncated { .. })
    ));
    // Another range's snapshot, and a header whose apply state contradicts its metadata.
    assert!(matches!(
        ReceivedSnapshot::from_parts(3, parts.clone()),
        Err(SnapshotError::Header(_))
    ));
    let mut bad = parts.clone();
    if let Some(h) = bad.header.as_mut() {
        if let Some(a) = h.apply_state.as_mut() {
            a.applied_index += 1;
        }
    }
    assert!(matches!(
        ReceivedSnapshot::from_parts(2, bad),
        Err(SnapshotError::Header(_))
    ));
    // A row outside the range's span: the header claims a narrower range than the rows cover
    // (checksums intact, so only the span check can catch it).
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let mut wide = Single::new(&engine, descriptor(4, b"a", b"z"));
    wide.write(command(header(4, 0, 0), put("b", "1")));
    wide.write(command(header(4, 0, 0), put("x", "1")));
    let mut parts = SnapshotParts::default();
    build_snapshot(&engine, 4, 4096, &mut parts).expect("build");
    assert!(ReceivedSnapshot::from_parts(4, parts.clone()).is_ok());
    if let Some(d) = parts.header.as_mut().and_then(|h| h.descriptor.as_mut()) {
        d.end_key = flotilla_engine::storage::keys::data_key(b"m").into();
    }
    assert!(matches!(
        ReceivedSnapshot::from_parts(4, parts),
        Err(SnapshotError::RowOutOfSpan { chunk: 0, .. })
    ));
}

/// A snapshot whose span covers another range on the receiving node (a late snapshot from
/// before a split) is refused: installing it would clear that range's rows.
#[test]
fn a_snapshot_overlapping_another_local_range_is_refused() {
    let (_dir, _source, parts) = source();
    let received = ReceivedSnapshot::from_parts(2, parts).expect("verified");
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let mut target = Single::new(&engine, descriptor(2, b"", b"m"));
    let mut other = Single::new(&engine, descriptor(3, b"m", b""));
    other.write(command(header(3, 0, 0), put("x", "kept")));
    let mut batch = LogBatch::new();
    let e = target
        .log
        .stage(&mut batch, Some(&received), &[], None)
        .expect_err("overlaps range 3");
    assert!(e.to_string().contains("overlaps range 3"), "{e}");
    assert!(batch.is_empty(), "nothing staged");
    assert!(kv::get(
        &engine,
        other.applier.descriptor(),
        b"x",
        &KvConfig::default()
    )
    .expect("get")
    .kv
    .is_some());
}
