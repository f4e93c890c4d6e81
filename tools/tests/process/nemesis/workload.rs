//! The nemesis' clients: what they do and how each operation is recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use flotilla_client::txn::{self, CompareOp};
use flotilla_client::{Client, ClientError};
use flotilla_engine::check::linearizability::{OpKind, Operation};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::{COUNTERS, REGISTERS};

/// What a run records, shared by the workers.
pub(super) struct Shared {
    pub(super) started: Instant,
    pub(super) events: AtomicU64,
    pub(super) ops: Mutex<Vec<Operation>>,
    /// Every operation as a JSON line, written as it completes.
    pub(super) history: Mutex<std::io::BufWriter<std::fs::File>>,
    pub(super) recorded: AtomicU64,
    pub(super) inserts: Mutex<Outcomes<String>>,
    /// Per counter: (acknowledged, unknown) increments.
    pub(super) counters: Mutex<BTreeMap<u64, (u64, u64)>>,
    /// Violations seen while running (a value from nowhere, a scan out of order).
    pub(super) violations: Mutex<Vec<String>>,
}

#[derive(Default)]
pub(super) struct Outcomes<T: Ord> {
    pub(super) ok: BTreeSet<T>,
    pub(super) unknown: BTreeSet<T>,
    pub(super) failed: BTreeSet<T>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Ok,
    Failed,
    Unknown,
}

impl Outcome {
    pub(super) fn of_write<T>(r: &Result<T, ClientError>) -> Self {
        match r {
            Ok(_) => Outcome::Ok,
            Err(e) if e.may_have_applied() => Outcome::Unknown,
            Err(_) => Outcome::Failed,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        }
    }
}

impl Shared {
    pub(super) fn new(history: &Path) -> Self {
        let file = std::fs::File::create(history).expect("create the history file");
        Self {
            started: Instant::now(),
            events: AtomicU64::new(1),
            ops: Mutex::new(Vec::new()),
            history: Mutex::new(std::io::BufWriter::new(file)),
            recorded: AtomicU64::new(0),
            inserts: Mutex::new(Outcomes::default()),
            counters: Mutex::new(BTreeMap::new()),
            violations: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn tick(&self) -> u64 {
        self.events.fetch_add(1, Ordering::SeqCst)
    }

    pub(super) fn ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1e3
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn record(
        &self,
        client: u64,
        op: &str,
        key: &str,
        call: u64,
        ret: u64,
        call_ms: f64,
        outcome: Outcome,
        detail: serde_json::Value,
    ) {
        let line = json!({
            "client": client, "op": op, "key": key, "call": call, "ret": ret,
            "call_ms": call_ms, "ret_ms": self.ms(), "outcome": outcome.as_str(),
            "detail": detail,
        });
        let _ = writeln!(self.history.lock(), "{line}");
        self.recorded.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn violation(&self, what: String) {
        self.violations.lock().push(what);
    }
}

pub(super) fn parse_value(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// A register put with a value never written before: (worker << 32) | seq.
pub(super) async fn put_register(shared: &Shared, client: &Client, worker: u64, seq: u64, k: u64) {
    let value = (worker << 32) | seq;
    let key = format!("r{k}");
    let (call, call_ms) = (shared.tick(), shared.ms());
    let r = client.put(&key, value.to_string().into_bytes()).await;
    let ret = shared.tick();
    let outcome = Outcome::of_write(&r);
    let error = r.err().map(|e| e.to_string());
    shared.record(
        worker,
        "put",
        &key,
        call,
        ret,
        call_ms,
        outcome,
        json!({ "value": value, "error": error }),
    );
    // A failed put certainly did not apply: it is not in the history, so a read of its value
    // is a violation.
    if outcome != Outcome::Failed {
        shared.ops.lock().push(Operation {
            client: worker,
            key: k,
            kind: OpKind::Put { value },
            call,
            ret: (outcome == Outcome::Ok).then_some(ret),
        });
    }
}

/// A linearizable read of register `k`; whether it was answered.
pub(super) async fn get_register(shared: &Shared, client: &Client, worker: u64, k: u64) -> bool {
    let key = format!("r{k}");
    let (call, call_ms) = (shared.tick(), shared.ms());
    let r = client.get(&key).await;
    let ret = shared.tick();
    match r {
        Ok(kv) => {
            let observed = match kv {
                None => None,
                Some(kv) => match parse_value(&kv.value) {
                    Some(v) => Some(v),
                    None => {
                        shared.violation(format!("{key} holds {:?}, not a value", kv.value));
                        return true;
                    }
                },
            };
            shared.record(
                worker,
                "get",
                &key,
                call,
                ret,
                call_ms,
                Outcome::Ok,
                json!({ "observed": observed }),
            );
            shared.ops.lock().push(Operation {
                client: worker,
                key: k,
                kind: OpKind::Get { observed },
                call,
                ret: Some(ret),
            });
            true
        }
        Err(e) => {
            shared.record(
                worker,
                "get",
                &key,
                call,
                ret,
                call_ms,
                Outcome::Failed,
                json!({ "error": e.to_string() }),
            );
            false
        }
    }
}

/// A scan of the registers: each key it returns (or not) is a read within the scan's interval.
pub(super) async fn scan_registers(shared: &Shared, client: &Client, worker: u64) {
    let (call, call_ms) = (shared.tick(), shared.ms());
    let r = client.scan("r".."s").limit(100).collect().await;
    let ret = shared.tick();
    let kvs = match r {
        Ok(kvs) => kvs,
        Err(e) => {
            shared.record(
                worker,
                "scan",
                "r..s",
                call,
                ret,
                call_ms,
                Outcome::Failed,
                json!({ "error": e.to_string() }),
            );
            return;
        }
    };
    if kvs.windows(2).any(|w| w[0].key >= w[1].key) {
        shared.violation(format!("scan out of order or repeated: {kvs:?}"));
    }
    let mut seen: BTreeMap<u64, Option<u64>> = (0..REGISTERS).map(|k| (k, None)).collect();
    for kv in &kvs {
        let k = std::str::from_utf8(&kv.key)
            .ok()
            .and_then(|s| s.strip_prefix('r'))
            .and_then(|s| s.parse::<u64>().ok());
        match (k, parse_value(&kv.value)) {
            (Some(k), Some(v)) if k < REGISTERS => {
                seen.insert(k, Some(v));
            }
            _ => shared.violation(format!("scan returned {kv:?}, which nobody wrote")),
        }
    }
    shared.record(
        worker,
        "scan",
        "r..s",
        call,
        ret,
        call_ms,
        Outcome::Ok,
        json!({ "observed": seen }),
    );
    let mut ops = shared.ops.lock();
    for (k, observed) in seen {
        ops.push(Operation {
            client: worker,
            key: k,
            kind: OpKind::Get { observed },
            call,
            ret: Some(ret),
        });
    }
}

/// Reads counter `j`, then increments it with a Txn that applies only if nobody wrote it since.
pub(super) async fn increment(shared: &Shared, client: &Client, worker: u64, j: u64) {
    let key = format!("c{j}");
    let checker_key = REGISTERS + j;
    let (call, call_ms) = (shared.tick(), shared.ms());
    let current = match client.get(&key).await {
        Ok(kv) => kv,
        Err(_) => return,
    };
    let read_at = shared.tick();
    let (value, revision) = match &current {
        None => (0, 0),
        Some(kv) => match parse_value(&kv.value) {
            Some(v) => (v, kv.mod_revision),
            None => {
                shared.violation(format!("{key} holds {:?}", kv.value));
                return;
            }
        },
    };
    shared.ops.lock().push(Operation {
        client: worker,
        key: checker_key,
        kind: OpKind::Get {
            observed: current.as_ref().map(|_| value),
        },
        call,
        ret: Some(read_at),
    });
    let compare = if revision == 0 {
        txn::missing(&key)
    } else {
        txn::mod_revision(&key, CompareOp::Equal, revision)
    };
    let txn_call = shared.tick();
    let r = client
        .txn()
        .when([compare])
        .and_then([txn::put(&key, (value + 1).to_string())])
        .commit()
        .await;
    let ret = shared.tick();
    let outcome = match &r {
        Ok(o) if o.succeeded => Outcome::Ok,
        // The compare failed: nothing was written (a definite outcome of its own).
        Ok(_) => Outcome::Failed,
        Err(e) if e.may_have_applied() => Outcome::Unknown,
        Err(_) => Outcome::Failed,
    };
    {
        let mut counters = shared.counters.lock();
        let entry = counters.entry(j).or_default();
        match outcome {
            Outcome::Ok => entry.0 += 1,
            Outcome::Unknown => entry.1 += 1,
            Outcome::Failed => {}
        }
    }
    if outcome != Outcome::Failed {
        shared.ops.lock().push(Operation {
            client: worker,
            key: checker_key,
            kind: OpKind::Put { value: value + 1 },
            call: txn_call,
            ret: (outcome == Outcome::Ok).then_some(ret),
        });
    }
    shared.record(
        worker,
        "incr",
        &key,
        txn_call,
        ret,
        call_ms,
        outcome,
        json!({ "from": value, "revision": revision,
                "error": r.err().map(|e| e.to_string()) }),
    );
}

/// A put of a key nobody else writes: it must be present at the end iff it may have applied.
pub(super) async fn insert(shared: &Shared, client: &Client, worker: u64, seq: u64) {
    let key = format!("w/{worker:02}/{seq:08}");
    let (call, call_ms) = (shared.tick(), shared.ms());
    let r = client.put(&key, b"1".to_vec()).await;
    let ret = shared.tick();
    let outcome = Outcome::of_write(&r);
    {
        let mut inserts = shared.inserts.lock();
        match outcome {
            Outcome::Ok => inserts.ok.insert(key.clone()),
            Outcome::Unknown => inserts.unknown.insert(key.clone()),
            Outcome::Failed => inserts.failed.insert(key.clone()),
        };
    }
    shared.record(
        worker,
        "insert",
        &key,
        call,
        ret,
        call_ms,
        outcome,
        json!({ "error": r.err().map(|e| e.to_string()) }),
    );
}

pub(super) async fn worker(
    id: u64,
    seed: u64,
    client: Client,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (id << 40) ^ 0x5eed);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        match rng.random_range(0..100) {
            0..40 => {
                let k = rng.random_range(0..REGISTERS);
                put_register(&shared, &client, id, seq, k).await;
            }
            40..72 => {
                let k = rng.random_range(0..REGISTERS);
                let _ = get_register(&shared, &client, id, k).await;
            }
            72..84 => {
                let j = rng.random_range(0..COUNTERS);
                increment(&shared, &client, id, j).await;
            }
            84..95 => insert(&shared, &client, id, seq).await,
            _ => scan_registers(&shared, &client, id).await,
        }
    }
    client.close().await;
}
