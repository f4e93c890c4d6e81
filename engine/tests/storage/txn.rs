//! The thesis seed's optimistic transaction (its chapter on transactions): concurrent
//! read-modify-write increments are only safe when the write is conditional on the revision
//! that was read. 10 keys, 10 concurrent incrementers each, interleaved by a seeded scheduler:
//! with a revision-checked Txn every key ends at 11; with blind puts updates are lost.

use std::collections::VecDeque;

use bytes::Bytes;
use flotilla_engine::kv::{self, KvConfig};
use flotilla_transport::kv::{
    txn_op, write_response, Compare, CompareOp, CompareTarget, PutRequest, TxnOp, TxnRequest,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::support::*;

const KEYS: usize = 10;
const PER_KEY: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Step {
    Read,
    /// Read `value` at `revision`; the write is not proposed yet.
    Propose {
        value: u64,
        revision: u64,
    },
    Waiting,
    Done,
}

/// Runs the scenario; returns every key's final value.
fn run(seed: u64, checked: bool) -> Vec<u64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let mut s = Single::new(&engine, descriptor(2, b"", b""));
    let init = (0..KEYS)
        .map(|k| command(header(2, 0, 0), put(&format!("key{k}"), "1")))
        .collect();
    s.write_all(init);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let clients = KEYS * PER_KEY;
    let mut steps = vec![Step::Read; clients];
    let mut seqs = vec![0u64; clients];
    // Proposed but not yet applied: (client, payload).
    let mut pending: VecDeque<(usize, Bytes)> = VecDeque::new();
    let config = KvConfig::default();
    let key_of = |c: usize| format!("key{}", c % KEYS);
    let mut rounds = 0;
    while steps.iter().any(|s| *s != Step::Done) {
        rounds += 1;
        assert!(rounds < 1_000_000, "the scenario must finish");
        let c = rng.random_range(0..clients);
        // Now and then the log commits and applies what was proposed so far (a prefix).
        if !pending.is_empty() && rng.random_ratio(1, 8) {
            let n = rng.random_range(1..=pending.len());
            let batch: Vec<(usize, Bytes)> = pending.drain(..n).collect();
            let applied = s.write_all(batch.iter().map(|(_, p)| p.clone()).collect());
            for ((client, _), a) in batch.iter().zip(applied) {
                let ok = match a.response.response {
                    Some(write_response::Response::Txn(t)) => t.succeeded,
                    Some(write_response::Response::Put(_)) => true,
                    other => panic!("unexpected response {other:?}"),
                };
                steps[*client] = if ok { Step::Done } else { Step::Read };
            }
            continue;
        }
        match steps[c] {
            Step::Read => {
                let kv = kv::get(
                    &engine,
                    s.applier.descriptor(),
                    key_of(c).as_bytes(),
                    &config,
                )
                .expect("get")
                .kv
                .expect("initialized");
                let value = std::str::from_utf8(&kv.value)
                    .expect("utf8")
                    .parse()
                    .expect("a number");
                steps[c] = Step::Propose {
                    value,
                    revision: kv.mod_revision,
                };
            }
            Step::Propose { value, revision } => {
                seqs[c] += 1;
                let key = key_of(c);
                let new = (value + 1).to_string();
                let request = if checked {
                    txn(TxnRequest {
                        compares: vec![Compare {
                            key: key.clone().into_bytes().into(),
                            target: CompareTarget::ModRevision as i32,
                            op: CompareOp::Equal as i32,
                            revision,
                            ..Compare::default()
                        }],
                        success: vec![TxnOp {
                            op: Some(txn_op::Op::Put(PutRequest {
                                key: key.into_bytes().into(),
                                value: new.into_bytes().into(),
                                prev_kv: false,
                            })),
                        }],
                        failure: vec![],
                    })
                } else {
                    put(&key, &new)
                };
                pending.push_back((c, command(header(2, c as u64 + 1, seqs[c]), request)));
                steps[c] = Step::Waiting;
            }
            Step::Waiting | Step::Done => {}
        }
        if !pending.is_empty()
            && steps
                .iter()
                .all(|s| matches!(s, Step::Waiting | Step::Done))
        {
            let batch: Vec<(usize, Bytes)> = pending.drain(..).collect();
            let applied = s.write_all(batch.iter().map(|(_, p)| p.clone()).collect());
            for ((client, _), a) in batch.iter().zip(applied) {
                let ok = match a.response.response {
                    Some(write_response::Response::Txn(t)) => t.succeeded,
                    _ => true,
                };
                steps[*client] = if ok { Step::Done } else { Step::Read };
            }
        }
    }
    (0..KEYS)
        .map(|k| {
            let kv = kv::get(
                &engine,
                s.applier.descriptor(),
                format!("key{k}").as_bytes(),
                &config,
            )
            .expect("get")
            .kv
            .expect("present");
            std::str::from_utf8(&kv.value)
                .expect("utf8")
                .parse()
                .expect("number")
        })
        .collect()
}

#[test]
fn revision_checked_increments_are_never_lost() {
    for seed in 0..3 {
        assert_eq!(run(seed, true), vec![11; KEYS], "seed {seed}");
    }
}

/// The same interleavings without the revision check lose updates: the test above can fail.
#[test]
fn blind_increments_lose_updates() {
    for seed in 0..3 {
        let finals = run(seed, false);
        assert!(
            finals.iter().any(|&v| v < 11),
            "seed {seed}: blind read-modify-write lost nothing: {finals:?}"
        );
    }
}
