//! The key-value state machine: commands, revisions, Txn, limits, sessions, reads (DESIGN 6).

use bytes::Bytes;
use flotilla_engine::kv::{self, KvConfig, KvError, RangeApplier};
use flotilla_transport::kv::{
    txn_op, txn_op_response, write_response, Compare, CompareOp, CompareTarget, ErrorCode,
    GetRequest, PutRequest, ScanRequest, TxnOp, TxnRequest, WriteResponse,
};

use crate::support::*;

fn error_code(r: &WriteResponse) -> Option<ErrorCode> {
    match &r.response {
        Some(write_response::Response::Error(e)) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

fn get(s: &Single, key: &str) -> Option<flotilla_transport::kv::KeyValue> {
    kv::get(
        &s.engine,
        s.applier.descriptor(),
        key.as_bytes(),
        &KvConfig::default(),
    )
    .expect("get")
    .kv
}

fn value(s: &Single, key: &str) -> Option<String> {
    get(s, key).map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

fn cmp(key: &str, target: CompareTarget, op: CompareOp) -> Compare {
    Compare {
        key: key.as_bytes().to_vec().into(),
        target: target as i32,
        op: op as i32,
        ..Compare::default()
    }
}

fn put_op(key: &str, value: &str) -> TxnOp {
    TxnOp {
        op: Some(txn_op::Op::Put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            prev_kv: false,
        })),
    }
}

fn get_op(key: &str) -> TxnOp {
    TxnOp {
        op: Some(txn_op::Op::Get(GetRequest {
            key: key.as_bytes().to_vec().into(),
        })),
    }
}

fn setup() -> (tempfile::TempDir, Single) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let s = Single::new(&engine, descriptor(2, b"", b""));
    (dir, s)
}

/// Revisions are Raft indexes: create stays until a delete, mod and version move per write.
#[test]
fn revisions_follow_the_log() {
    let (_dir, mut s) = setup();
    s.write(command(header(2, 0, 0), put("a", "1")));
    let r = s.write(command(header(2, 0, 0), put("a", "2")));
    assert_eq!(r.response.revision, 2);
    match &r.response.response {
        Some(write_response::Response::Put(p)) => {
            assert_eq!(
                p.prev_kv.as_ref().map(|kv| kv.value.as_ref()),
                Some(&b"1"[..])
            );
        }
        other => panic!("expected a put response, got {other:?}"),
    }
    let kv = get(&s, "a").expect("a exists");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (1, 2, 2));
    let r = s.write(command(header(2, 0, 0), delete("a")));
    assert!(matches!(
        r.response.response,
        Some(write_response::Response::Delete(ref d)) if d.deleted == 1
    ));
    assert_eq!(get(&s, "a"), None);
    s.write(command(header(2, 0, 0), put("a", "3")));
    let kv = get(&s, "a").expect("a exists again");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (4, 4, 1));
}

#[test]
fn delete_range_deletes_its_span_only() {
    let (_dir, mut s) = setup();
    let puts = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|k| command(header(2, 0, 0), put(k, "v")))
        .collect();
    s.write_all(puts);
    let r = s.write(command(header(2, 0, 0), delete_range("b", "d")));
    assert!(matches!(
        r.response.response,
        Some(write_response::Response::DeleteRange(ref d)) if d.deleted == 2
    ));
    assert_eq!(
        ["a", "b", "c", "d", "e"].map(|k| value(&s, k).is_some()),
        [true, false, false, true, true]
    );
    let r = s.write(command(header(2, 0, 0), delete_range("d", "")));
    assert!(matches!(
        r.response.response,
        Some(write_response::Response::DeleteRange(ref d)) if d.deleted == 2
    ));
    assert_eq!(value(&s, "a").as_deref(), Some("v"));
}

/// Each command of an apply batch sees the writes of the ones before it.
#[test]
fn commands_in_one_batch_see_each_other() {
    let (_dir, mut s) = setup();
    let t = TxnRequest {
        compares: vec![Compare {
            value: Bytes::from_static(b"1"),
            ..cmp("a", CompareTarget::Value, CompareOp::Equal)
        }],
        success: vec![put_op("b", "seen"), get_op("b")],
        failure: vec![put_op("b", "missed")],
    };
    let out = s.write_all(vec![
        command(header(2, 0, 0), put("a", "1")),
        command(header(2, 0, 0), txn(t)),
    ]);
    match &out[1].response.response {
        Some(write_response::Response::Txn(t)) => {
            assert!(t.succeeded);
            // The get inside the txn sees the put before it.
            match &t.responses[1].response {
                Some(txn_op_response::Response::Get(g)) => {
                    assert_eq!(
                        g.kv.as_ref().map(|kv| kv.value.as_ref()),
                        Some(&b"seen"[..])
                    );
                }
                other => panic!("expected a get response, got {other:?}"),
            }
        }
        other => panic!("expected a txn response, got {other:?}"),
    }
    assert_eq!(value(&s, "b").as_deref(), Some("seen"));
}

#[test]
fn txn_compares_every_target() {
    let (_dir, mut s) = setup();
    s.write(command(header(2, 0, 0), put("k", "5")));
    s.write(command(header(2, 0, 0), put("k", "6")));
    // k: create 1, mod 2, version 2, value "6".
    let cases: Vec<(Compare, bool)> = vec![
        (
            Compare {
                value: "6".into(),
                ..cmp("k", CompareTarget::Value, CompareOp::Equal)
            },
            true,
        ),
        (
            Compare {
                value: "5".into(),
                ..cmp("k", CompareTarget::Value, CompareOp::Greater)
            },
            true,
        ),
        (
            Compare {
                value: "7".into(),
                ..cmp("k", CompareTarget::Value, CompareOp::Less)
            },
            true,
        ),
        (
            Compare {
                value: "6".into(),
                ..cmp("k", CompareTarget::Value, CompareOp::NotEqual)
            },
            false,
        ),
        (
            Compare {
                revision: 2,
                ..cmp("k", CompareTarget::ModRevision, CompareOp::Equal)
            },
            true,
        ),
        (
            Compare {
                revision: 1,
                ..cmp("k", CompareTarget::CreateRevision, CompareOp::Equal)
            },
            true,
        ),
        (
            Compare {
                revision: 3,
                ..cmp("k", CompareTarget::Version, CompareOp::Less)
            },
            true,
        ),
        (
            Compare {
                exists: true,
                ..cmp("k", CompareTarget::Exists, CompareOp::Equal)
            },
            true,
        ),
        (
            Compare {
                exists: true,
                ..cmp("nope", CompareTarget::Exists, CompareOp::Equal)
            },
            false,
        ),
        (
            Compare {
                exists: true,
                ..cmp("nope", CompareTarget::Exists, CompareOp::NotEqual)
            },
            true,
        ),
        (
            Compare {
                revision: 0,
                ..cmp("nope", CompareTarget::ModRevision, CompareOp::Equal)
            },
            true,
        ),
        (
            Compare {
                value: "".into(),
                ..cmp("nope", CompareTarget::Value, CompareOp::Equal)
            },
            false,
        ),
    ];
    for (i, (c, expected)) in cases.into_iter().enumerate() {
        let r = s.write(command(
            header(2, 0, 0),
            txn(TxnRequest {
                compares: vec![c.clone()],
                ..TxnRequest::default()
            }),
        ));
        match r.response.response {
            Some(write_response::Response::Txn(t)) => {
                assert_eq!(t.succeeded, expected, "case {i}: {c:?}");
            }
            other => panic!("case {i}: expected a txn response, got {other:?}"),
        }
    }
}

/// Oversize keys and values, keys outside the range, a stale epoch and a malformed payload
/// each get a typed error, apply nothing, and the applied index still moves.
#[test]
fn bad_commands_get_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let mut s = Single::new(&engine, descriptor(2, b"m", b"t"));
    let big_key = "k".repeat(8 * 1024 + 1);
    let big_value = "v".repeat(8 * 1024 * 1024 + 1);
    let mut stale = header(2, 0, 0);
    stale.epoch = Some(flotilla_transport::meta::RangeEpoch {
        version: 0,
        conf_ver: 1,
    });
    let cases = vec![
        (
            command(header(2, 0, 0), put(&format!("m{big_key}"), "v")),
            ErrorCode::KeyTooLarge,
        ),
        (
            command(header(2, 0, 0), put("n", &big_value)),
            ErrorCode::ValueTooLarge,
        ),
        (
            command(header(2, 0, 0), put("a", "v")),
            ErrorCode::KeyNotInRange,
        ),
        (
            command(header(2, 0, 0), put("t", "v")),
            ErrorCode::KeyNotInRange,
        ),
        (
            command(header(2, 0, 0), delete_range("n", "z")),
            ErrorCode::KeyNotInRange,
        ),
        (command(stale, put("n", "v")), ErrorCode::EpochNotMatch),
        (
            command(header(3, 0, 0), put("n", "v")),
            ErrorCode::RangeNotFound,
        ),
        (
            Bytes::from_static(b"\xff\xff\xff garbage"),
            ErrorCode::Malformed,
        ),
    ];
    for (i, (payload, code)) in cases.into_iter().enumerate() {
        let r = s.write(payload);
        assert_eq!(error_code(&r.response), Some(code), "case {i}");
    }
    assert_eq!(s.applier.applied_index(), 8);
    let all = kv::scan(
        &engine,
        s.applier.descriptor(),
        &ScanRequest {
            start: "m".into(),
            ..ScanRequest::default()
        },
        &KvConfig::default(),
    )
    .expect("scan");
    assert!(all.kvs.is_empty(), "nothing was applied: {all:?}");
    // The wire error carries the range's descriptor so a router can correct its cache.
    let r = s.write(command(header(2, 0, 0), put("a", "v")));
    match r.response.response {
        Some(write_response::Response::Error(e)) => assert_eq!(e.current.map(|d| d.id), Some(2)),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(matches!(
        kv::get(&engine, s.applier.descriptor(), b"a", &KvConfig::default()),
        Err(kv::ReadError::Refused(KvError::KeyNotInRange { .. }))
    ));
}

/// A retried write (same client and seq) gets the recorded response and is not applied again;
/// a refused write is not recorded, so its retry applies.
#[test]
fn retries_apply_once() {
    let (_dir, mut s) = setup();
    let first = s.write(command(header(2, 9, 1), put("x", "1")));
    s.write(command(header(2, 0, 0), put("x", "other")));
    let retry = s.write(command(header(2, 9, 1), put("x", "1")));
    assert_eq!(retry.response, first.response, "the recorded response");
    assert_eq!(
        value(&s, "x").as_deref(),
        Some("other"),
        "not applied twice"
    );
    let mut stale = header(2, 9, 2);
    stale.epoch = None;
    let refused = s.write(command(stale, put("y", "1")));
    assert_eq!(
        error_code(&refused.response),
        Some(ErrorCode::EpochNotMatch)
    );
    s.write(command(header(2, 9, 2), put("y", "1")));
    assert_eq!(value(&s, "y").as_deref(), Some("1"));
}

/// Replaying entries already applied (after a restart from the applied index) changes nothing.
#[test]
fn replay_is_idempotent() {
    let (dir, mut s) = setup();
    let payloads: Vec<Bytes> = (0..10)
        .map(|i| {
            command(
                header(2, 0, 0),
                put(&format!("k{}", i % 3), &format!("v{i}")),
            )
        })
        .collect();
    s.write_all(payloads.clone());
    let before: Vec<_> = (0..3).map(|i| get(&s, &format!("k{i}"))).collect();
    let engine = s.engine.clone();
    let mut again = RangeApplier::load(engine.clone(), 2, KvConfig::default()).expect("load");
    let entries: Vec<_> = payloads
        .into_iter()
        .enumerate()
        .map(|(i, d)| entry(i as u64 + 1, 1, d))
        .collect();
    assert!(again.apply(&entries, None).expect("replay").is_empty());
    let after: Vec<_> = (0..3).map(|i| get(&s, &format!("k{i}"))).collect();
    assert_eq!(before, after);
    drop(dir);
}

#[test]
fn scans_page_and_stop_at_the_range_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let mut s = Single::new(&engine, descriptor(2, b"b", b"y"));
    let puts = (0..26u8)
        .map(|i| (b'a' + i) as char)
        .filter(|c| ('b'..'y').contains(c))
        .map(|c| command(header(2, 0, 0), put(&c.to_string(), &"v".repeat(10))))
        .collect();
    s.write_all(puts);
    let config = KvConfig::default();
    let desc = s.applier.descriptor().clone();
    let mut keys = Vec::new();
    let mut start = Bytes::from_static(b"b");
    loop {
        let page = kv::scan(
            &engine,
            &desc,
            &ScanRequest {
                start: start.clone(),
                end: Bytes::from_static(b"zz"),
                limit: 5,
                ..ScanRequest::default()
            },
            &config,
        )
        .expect("scan");
        assert!(page.kvs.len() <= 5);
        keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        assert!(page.more, "the span goes past the range end");
        if page.next_key.as_ref() == b"y" {
            break;
        }
        start = page.next_key;
    }
    assert_eq!(keys.len(), 23);
    // The byte limit stops early but always returns one key.
    let page = kv::scan(
        &engine,
        &desc,
        &ScanRequest {
            start: "c".into(),
            end: "f".into(),
            limit_bytes: 1,
            ..ScanRequest::default()
        },
        &config,
    )
    .expect("scan");
    assert_eq!(page.kvs.len(), 1);
    assert_eq!((page.more, page.next_key.as_ref()), (true, &b"d"[..]));
    let page = kv::scan(
        &engine,
        &desc,
        &ScanRequest {
            start: "c".into(),
            end: "f".into(),
            keys_only: true,
            reverse: false,
            ..ScanRequest::default()
        },
        &config,
    )
    .expect("scan");
    assert_eq!(page.kvs.len(), 3);
    assert!(!page.more && page.kvs.iter().all(|kv| kv.value.is_empty()));

    // In reverse: descending from the end; a limit continues at the last key returned; a
    // span starting before the range continues at the range's start; an end past the range
    // is refused (the caller routed to the wrong range).
    let reverse = |start: &'static str, end: &'static str, limit: u32| {
        kv::scan(
            &engine,
            &desc,
            &ScanRequest {
                start: start.into(),
                end: end.into(),
                limit,
                reverse: true,
                ..ScanRequest::default()
            },
            &config,
        )
    };
    let page = reverse("c", "g", 0).expect("scan");
    let got: Vec<&[u8]> = page.kvs.iter().map(|kv| kv.key.as_ref()).collect();
    assert_eq!(got, [&b"f"[..], b"e", b"d", b"c"]);
    assert!(!page.more);
    let page = reverse("c", "g", 2).expect("scan");
    assert_eq!(page.kvs.len(), 2);
    assert_eq!((page.more, page.next_key.as_ref()), (true, &b"e"[..]));
    let page = reverse("a", "d", 0).expect("scan");
    assert_eq!(page.kvs.len(), 2, "b and c");
    assert_eq!((page.more, page.next_key.as_ref()), (true, &b"b"[..]));
    assert!(reverse("c", "z", 0).is_err(), "an end past the range");
    assert!(reverse("a", "b", 0).is_err(), "an end at the range's start");
}
