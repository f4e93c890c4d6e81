//! The nemesis (issue 11): a cluster of real `flotilla` processes, concurrent clients through
//! `flotilla-client`, and faults on a seeded schedule, one at a time: kill -9 and restart (a
//! random node, the meta range's leader, a majority), SIGSTOP/SIGCONT past the election
//! timeout, partitions (symmetric, one-way, an isolated leader; the transport's fault hook of
//! test builds, driven by the `nemesis.Faults` RPC), splits and replica moves, a crash between
//! writing and syncing a round, and a failing fsync (the node must exit, not continue).
//!
//! Every operation is recorded with its call and return (an event counter: real-time order)
//! and its outcome (ok, failed: certainly not applied, unknown: may have applied) as JSON lines.
//! After the run the faults are healed and the cluster must converge; then:
//! - the history of the registers (unique-value puts, linearizable gets, and each key a scan
//!   returned, within the scan's interval) and of the counters is linearizable;
//! - every acknowledged insert is present, no failed one is, nothing else is;
//! - every counter equals its acknowledged increments plus at most its unknown ones (each
//!   increment is a revision-checked Txn: applied once or not at all);
//! - the ranges cover the keyspace with no gap and no overlap.
//!
//! `FLOTILLA_NEMESIS_SEED`, `_SECONDS`, `_NODES`, `_CLIENTS` and `_OUT` (where the history,
//! the fault log and, after a failure, the nodes' logs go) configure a run; `make nemesis`
//! runs a long one. `FLOTILLA_NEMESIS_CHECK=DIR` re-checks a saved history
//! (`nemesis::check_saved_history`, ignored otherwise).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_client::txn::{self, CompareOp};
use flotilla_client::{Client, ClientError};
use flotilla_engine::check::linearizability::{check, CheckError, OpKind, Operation};
use flotilla_transport::ClientEndpoint;
use parking_lot::Mutex;
use prost::Message as _;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::support::{eventually_within, ProcessCluster, DEADLINE};

/// Register keys `r0..`: unique-value puts, gets, scans.
const REGISTERS: u64 = 6;
/// Counter keys `c0..`: revision-checked increments. Checker keys after the registers.
const COUNTERS: u64 = 2;
/// States the linearizability search may explore per key.
const CHECK_BUDGET: u64 = 5_000_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a run records, shared by the workers.
struct Shared {
    started: Instant,
    events: AtomicU64,
    ops: Mutex<Vec<Operation>>,
    /// Every operation as a JSON line, written as it completes.
    history: Mutex<std::io::BufWriter<std::fs::File>>,
    recorded: AtomicU64,
    inserts: Mutex<Outcomes<String>>,
    /// Per counter: (acknowledged, unknown) increments.
    counters: Mutex<BTreeMap<u64, (u64, u64)>>,
    /// Violations seen while running (a value from nowhere, a scan out of order).
    violations: Mutex<Vec<String>>,
}

#[derive(Default)]
struct Outcomes<T: Ord> {
    ok: BTreeSet<T>,
    unknown: BTreeSet<T>,
    failed: BTreeSet<T>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Unknown,
}

impl Outcome {
    fn of_write<T>(r: &Result<T, ClientError>) -> Self {
        match r {
            Ok(_) => Outcome::Ok,
            Err(e) if e.may_have_applied() => Outcome::Unknown,
            Err(_) => Outcome::Failed,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        }
    }
}

impl Shared {
    fn new(history: &Path) -> Self {
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

    fn tick(&self) -> u64 {
        self.events.fetch_add(1, Ordering::SeqCst)
    }

    fn ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1e3
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
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

    fn violation(&self, what: String) {
        self.violations.lock().push(what);
    }
}

fn parse_value(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// A register put with a value never written before: (worker << 32) | seq.
async fn put_register(shared: &Shared, client: &Client, worker: u64, seq: u64, k: u64) {
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

async fn get_register(shared: &Shared, client: &Client, worker: u64, k: u64) {
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
                        return;
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
        }
        Err(e) => shared.record(
            worker,
            "get",
            &key,
            call,
            ret,
            call_ms,
            Outcome::Failed,
            json!({ "error": e.to_string() }),
        ),
    }
}

/// A scan of the registers: each key it returns (or not) is a read within the scan's interval.
async fn scan_registers(shared: &Shared, client: &Client, worker: u64) {
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
async fn increment(shared: &Shared, client: &Client, worker: u64, j: u64) {
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
async fn insert(shared: &Shared, client: &Client, worker: u64, seq: u64) {
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

async fn worker(id: u64, seed: u64, client: Client, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
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
                get_register(&shared, &client, id, k).await;
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

/// The faults, by kind, as counted in the summary.
const FAULTS: &[&str] = &[
    "kill",
    "kill_meta_leader",
    "kill_majority",
    "pause",
    "partition",
    "partition_one_way",
    "isolate_leader",
    "split",
    "move",
    "crash_before_sync",
    "fsync_failure",
];

struct Nemesis {
    cluster: ProcessCluster,
    rpc: ClientEndpoint,
    admin: Client,
    rng: ChaCha8Rng,
    counts: BTreeMap<&'static str, u64>,
    log: Vec<serde_json::Value>,
    started: Instant,
    violations: Vec<String>,
}

impl Nemesis {
    fn note(&mut self, fault: &'static str, detail: serde_json::Value) {
        *self.counts.entry(fault).or_default() += 1;
        let at = self.started.elapsed().as_secs_f64();
        eprintln!("nemesis {at:7.1}s {fault} {detail}");
        self.log
            .push(json!({ "at_s": at, "fault": fault, "detail": detail }));
    }

    fn ids(&self) -> Vec<u64> {
        self.cluster.nodes.iter().map(|p| p.id).collect()
    }

    fn addr(&self, id: u64) -> SocketAddr {
        self.cluster.node(id).listen
    }

    /// Sets node `id`'s partition (`Some((drop_to, drop_from))`) and/or a failpoint.
    async fn faults(&self, id: u64, partition: Option<(&[u64], &[u64])>, failpoint: (&str, &str)) {
        let (drop_to, drop_from) = partition.unwrap_or((&[], &[]));
        let body = flotilla_transport::service::NemesisFaults {
            partition: partition.is_some(),
            drop_to: drop_to.to_vec(),
            drop_from: drop_from.to_vec(),
            failpoint: failpoint.0.into(),
            action: failpoint.1.into(),
        }
        .encode_to_vec();
        let r = self
            .rpc
            .call(
                self.addr(id),
                "nemesis.Faults",
                Bytes::from(body),
                Duration::from_secs(3),
            )
            .await;
        if let Err(e) = r {
            eprintln!("nemesis: node {id} did not take its faults: {e}");
        }
    }

    /// Holds a fault for 1-4 s: long past an election timeout (1-2 s).
    async fn hold(&mut self) {
        let ms = self.rng.random_range(1_000..4_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    fn pick(&mut self, from: &[u64]) -> u64 {
        from[self.rng.random_range(0..from.len())]
    }

    /// The leader of `range` as the first live node's status port tells (0: unknown).
    async fn leader_of(&self, range: u64) -> u64 {
        for p in &self.cluster.nodes {
            let addr = p.status;
            let status = tokio::task::spawn_blocking(move || {
                crate::support::http_get(addr, "/status")
                    .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            })
            .await
            .ok()
            .flatten();
            let Some(status) = status else { continue };
            let leader = status["range_list"]
                .as_array()
                .and_then(|l| l.iter().find(|r| r["id"] == range))
                .and_then(|r| r["leader_node"].as_u64())
                .unwrap_or(0);
            if leader != 0 {
                return leader;
            }
        }
        0
    }

    async fn restart(&mut self, ids: &[u64]) {
        for id in ids {
            if !self.cluster.nodes[(*id - 1) as usize].is_running() {
                self.cluster.spawn(*id);
            }
        }
    }

    async fn heal_network(&self) {
        for id in self.ids() {
            self.faults(id, Some((&[], &[])), ("", "")).await;
        }
    }

    /// Isolates `side` from the rest, both ways.
    async fn partition(&self, side: &[u64]) {
        let rest: Vec<u64> = self
            .ids()
            .into_iter()
            .filter(|i| !side.contains(i))
            .collect();
        for id in self.ids() {
            let others: &[u64] = if side.contains(&id) { &rest } else { side };
            self.faults(id, Some((others, others)), ("", "")).await;
        }
    }

    async fn step(&mut self) {
        let ids = self.ids();
        let n = ids.len();
        let fault = FAULTS[self.rng.random_range(0..FAULTS.len())];
        match fault {
            "kill" => {
                let id = self.pick(&ids);
                self.note(fault, json!({ "node": id }));
                self.cluster.kill(id);
                self.hold().await;
                self.restart(&[id]).await;
            }
            "kill_meta_leader" => {
                let id = match self.leader_of(1).await {
                    0 => self.pick(&ids),
                    l => l,
                };
                self.note(fault, json!({ "node": id }));
                self.cluster.kill(id);
                self.hold().await;
                self.restart(&[id]).await;
            }
            "kill_majority" => {
                let mut victims = ids.clone();
                while victims.len() > n / 2 + 1 {
                    let i = self.rng.random_range(0..victims.len());
                    victims.remove(i);
                }
                self.note(fault, json!({ "nodes": victims }));
                for id in &victims {
                    self.cluster.kill(*id);
                }
                self.hold().await;
                self.restart(&victims).await;
            }
            "pause" => {
                let id = self.pick(&ids);
                self.note(fault, json!({ "node": id }));
                self.cluster.pause(id);
                self.hold().await;
                self.cluster.resume(id);
            }
            "partition" => {
                let size = self.rng.random_range(1..=n.saturating_sub(1) / 2).max(1);
                let mut side = ids.clone();
                while side.len() > size {
                    let i = self.rng.random_range(0..side.len());
                    side.remove(i);
                }
                self.note(fault, json!({ "side": side }));
                self.partition(&side).await;
                self.hold().await;
                self.heal_network().await;
            }
            "partition_one_way" => {
                let from = self.pick(&ids);
                let others: Vec<u64> = ids.iter().copied().filter(|i| *i != from).collect();
                let to = self.pick(&others);
                self.note(fault, json!({ "drops_to": to, "at": from }));
                self.faults(from, Some((&[to], &[])), ("", "")).await;
                self.hold().await;
                self.heal_network().await;
            }
            "isolate_leader" => {
                let range = if self.rng.random_bool(0.5) { 1 } else { 2 };
                let id = match self.leader_of(range).await {
                    0 => self.pick(&ids),
                    l => l,
                };
                self.note(fault, json!({ "range": range, "leader": id }));
                self.partition(&[id]).await;
                self.hold().await;
                self.heal_network().await;
            }
            "split" => {
                let key = match self.rng.random_range(0..4) {
                    0 => format!("r{}", self.rng.random_range(1..REGISTERS)),
                    1 => format!("c{}", self.rng.random_range(1..COUNTERS)),
                    2 => format!("w/{:02}", self.rng.random_range(0..8)),
                    _ => format!("s{}", self.rng.random_range(0..10)),
                };
                let r = tokio::time::timeout(DEADLINE, self.admin.split(&key)).await;
                let outcome = match r {
                    Ok(Ok(_)) => "ok".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".into(),
                };
                self.note(fault, json!({ "at": key, "outcome": outcome }));
            }
            "move" => {
                let ranges = self.admin.ranges().await.unwrap_or_default();
                let candidates: Vec<_> = ranges
                    .iter()
                    .filter_map(|r| r.descriptor.clone())
                    .filter(|d| d.id != 1)
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let d = candidates[self.rng.random_range(0..candidates.len())].clone();
                let on: Vec<u64> = d.replicas.iter().map(|r| r.node_id).collect();
                let off: Vec<u64> = ids.iter().copied().filter(|i| !on.contains(i)).collect();
                if off.is_empty() {
                    return;
                }
                let (from, to) = (self.pick(&on), self.pick(&off));
                let key = d.start_key.get(1..).unwrap_or_default().to_vec();
                let r =
                    tokio::time::timeout(DEADLINE, self.admin.move_replica(&key, from, to)).await;
                let outcome = match r {
                    Ok(Ok(_)) => "ok".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".into(),
                };
                self.note(
                    fault,
                    json!({ "range": d.id, "from": from, "to": to, "outcome": outcome }),
                );
            }
            "crash_before_sync" | "fsync_failure" => {
                let id = self.pick(&ids);
                let (failpoint, action) = if fault == "crash_before_sync" {
                    ("storage::crash_before_sync", "return")
                } else {
                    ("storage::write_synced", "return(nemesis: fsync failed)")
                };
                self.note(fault, json!({ "node": id }));
                self.faults(id, None, (failpoint, action)).await;
                // The node's next round hits it (heartbeats and client writes make rounds):
                // it must exit, not go on.
                let deadline = Instant::now() + Duration::from_secs(40);
                let mut exited = false;
                while Instant::now() < deadline {
                    if !self.cluster.nodes[(id - 1) as usize].is_running() {
                        exited = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if !exited {
                    self.violations.push(format!(
                        "{fault} on node {id}: the node did not exit within 40 s"
                    ));
                    self.cluster.kill(id);
                }
                self.hold().await;
                self.restart(&[id]).await;
            }
            _ => unreachable!("every fault is handled"),
        }
    }
}

/// Where a run's files go.
fn out_dir(seed: u64) -> PathBuf {
    match std::env::var("FLOTILLA_NEMESIS_OUT") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("nemesis-{seed}")),
    }
}

fn write_lines(path: &Path, lines: &[serde_json::Value]) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for line in lines {
        writeln!(file, "{line}").expect("write");
    }
}

/// The key a checker key stands for.
fn key_name(key: u64) -> String {
    if key < REGISTERS {
        format!("r{key}")
    } else {
        format!("c{}", key - REGISTERS)
    }
}

/// The checks that need only the history: linearizability of registers and counters.
fn check_history(ops: &[Operation]) -> Result<String, String> {
    match check(ops, CHECK_BUDGET) {
        Ok(stats) => Ok(format!(
            "{} keys, {} operations, {} states explored",
            stats.keys, stats.ops, stats.explored
        )),
        Err(CheckError::Violation(v)) => Err(format!(
            "not linearizable: key {} ({} operations of it, in checker.jsonl as key {}): {}",
            key_name(v.key),
            v.history.len(),
            v.key,
            v.explanation
        )),
        Err(e) => Err(format!("the history could not be checked: {e:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run() {
    let seed = env_u64(
        "FLOTILLA_NEMESIS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
    );
    let seconds = env_u64("FLOTILLA_NEMESIS_SECONDS", 60);
    let nodes = env_u64("FLOTILLA_NEMESIS_NODES", 4);
    let clients = env_u64("FLOTILLA_NEMESIS_CLIENTS", 4);
    let out = out_dir(seed);
    std::fs::create_dir_all(&out).expect("out dir");
    eprintln!(
        "nemesis: seed {seed}, {seconds} s, {nodes} nodes, {clients} clients; files in {}",
        out.display()
    );

    let cluster = ProcessCluster::start(
        nodes,
        "[placement]\ninterval-ms = 500\ndown-time-ms = 5000\ncooldown-ms = 2000\n",
    );
    let admin = cluster.client().await;
    let rpc = ClientEndpoint::new(
        &cluster.cluster_id,
        &cluster.client_config().tls.expect("tls"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("rpc endpoint");
    let shared = Arc::new(Shared::new(&out.join("history.jsonl")));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for id in 1..=clients {
        let mut config = cluster.client_config();
        config.deadline = Duration::from_secs(5);
        let client = Client::connect(config).await.expect("client");
        workers.push(tokio::spawn(worker(
            id,
            seed,
            client,
            shared.clone(),
            stop.clone(),
        )));
    }

    let mut nemesis = Nemesis {
        cluster,
        rpc,
        admin,
        rng: ChaCha8Rng::seed_from_u64(seed),
        counts: BTreeMap::new(),
        log: Vec::new(),
        started: Instant::now(),
        violations: Vec::new(),
    };
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        // A quiet spell, then the next fault.
        let ms = nemesis.rng.random_range(500..2_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        nemesis.step().await;
    }

    // Heal everything, then let the workers run on a healthy cluster for a moment.
    nemesis.heal_network().await;
    let all = nemesis.ids();
    for id in &all {
        nemesis.cluster.resume(*id);
    }
    nemesis.restart(&all).await;
    eventually_within("the healed cluster to serve", DEADLINE * 2, || {
        let admin = &nemesis.admin;
        async move { admin.get("r0").await.ok().map(|_| ()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }

    // Final reads, after every worker finished: the registers, the counters, the inserts.
    let mut problems: Vec<String> = std::mem::take(&mut nemesis.violations);
    problems.extend(shared.violations.lock().drain(..));
    for k in 0..REGISTERS {
        get_register(&shared, &nemesis.admin, 0, k).await;
    }
    let mut finals = BTreeMap::new();
    for j in 0..COUNTERS {
        let key = format!("c{j}");
        let (call, ret_value) = (shared.tick(), nemesis.admin.get(&key).await);
        let ret = shared.tick();
        match ret_value {
            Ok(kv) => {
                let value = kv.as_ref().and_then(|kv| parse_value(&kv.value));
                shared.ops.lock().push(Operation {
                    client: 0,
                    key: REGISTERS + j,
                    kind: OpKind::Get { observed: value },
                    call,
                    ret: Some(ret),
                });
                finals.insert(j, value.unwrap_or(0));
            }
            Err(e) => problems.push(format!("final read of {key} failed: {e}")),
        }
    }
    let present: BTreeSet<String> = match nemesis.admin.scan("w/".."w0").collect().await {
        Ok(kvs) => kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect(),
        Err(e) => {
            problems.push(format!("final scan of the inserts failed: {e}"));
            BTreeSet::new()
        }
    };

    // The checks.
    let ops = shared.ops.lock().clone();
    let linearizable = check_history(&ops);
    if let Err(e) = &linearizable {
        problems.push(e.clone());
    }
    let inserts = std::mem::take(&mut *shared.inserts.lock());
    let lost: Vec<&String> = inserts.ok.difference(&present).collect();
    if !lost.is_empty() {
        problems.push(format!("acknowledged inserts lost: {lost:?}"));
    }
    let applied_failed: Vec<&String> = inserts.failed.intersection(&present).collect();
    if !applied_failed.is_empty() {
        problems.push(format!(
            "inserts that failed (certainly not applied) are present: {applied_failed:?}"
        ));
    }
    let from_nowhere: Vec<&String> = present
        .iter()
        .filter(|k| {
            !inserts.ok.contains(*k)
                && !inserts.unknown.contains(*k)
                && !inserts.failed.contains(*k)
        })
        .collect();
    if !from_nowhere.is_empty() {
        problems.push(format!("keys nobody inserted: {from_nowhere:?}"));
    }
    let counters = shared.counters.lock().clone();
    for (j, (acked, unknown)) in &counters {
        let value = finals.get(j).copied().unwrap_or(0);
        if value < *acked || value > acked + unknown {
            problems.push(format!(
                "counter c{j} = {value}: {acked} acknowledged increments, {unknown} unknown"
            ));
        }
    }
    let ranges = nemesis.admin.ranges().await;
    match &ranges {
        Ok(records) => {
            let mut spans: Vec<(Vec<u8>, Vec<u8>, u64)> = records
                .iter()
                .filter_map(|r| r.descriptor.as_ref())
                .map(|d| (d.start_key.to_vec(), d.end_key.to_vec(), d.id))
                .collect();
            spans.sort();
            let covered = spans.first().is_some_and(|f| f.0.len() <= 1)
                && spans.last().is_some_and(|l| l.1.is_empty())
                && spans.windows(2).all(|w| w[0].1 == w[1].0);
            if !covered {
                problems.push(format!("ranges leave a gap or overlap: {spans:?}"));
            }
        }
        Err(e) => problems.push(format!("cannot list the ranges: {e}")),
    }

    // The record.
    let range_count = ranges.as_ref().map_or(0, Vec::len);
    let summary = json!({
        "seed": seed, "seconds": seconds, "nodes": nodes, "clients": clients,
        "faults": nemesis.counts, "operations": shared.recorded.load(Ordering::Relaxed),
        "by_outcome": {
            "inserts": { "ok": inserts.ok.len(), "unknown": inserts.unknown.len(),
                         "failed": inserts.failed.len() },
            "counters": counters.iter().map(|(j, (a, u))|
                (format!("c{j}"), json!({ "acknowledged": a, "unknown": u,
                    "final": finals.get(j) }))).collect::<BTreeMap<_, _>>(),
        },
        "ranges_at_end": range_count,
        "linearizability": match &linearizable { Ok(s) => s.clone(), Err(e) => e.clone() },
        "violations": problems,
    });
    let _ = shared.history.lock().flush();
    write_lines(&out.join("faults.jsonl"), &nemesis.log);
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary).expect("json"),
    )
    .expect("summary");
    let checker_ops: Vec<serde_json::Value> = ops
        .iter()
        .map(|o| {
            let (kind, value) = match o.kind {
                OpKind::Put { value } => ("put", Some(value)),
                OpKind::Get { observed } => ("get", observed),
            };
            json!({ "client": o.client, "key": o.key, "kind": kind, "value": value,
                    "call": o.call, "ret": o.ret })
        })
        .collect();
    write_lines(&out.join("checker.jsonl"), &checker_ops);
    eprintln!("nemesis summary: {summary}");
    if !problems.is_empty() {
        for p in &nemesis.cluster.nodes {
            let _ = std::fs::copy(p.log_path(), out.join(format!("n{}.log", p.id)));
        }
        panic!(
            "nemesis seed {seed} found {} problems (history, faults and node logs in {}): {:#?}",
            problems.len(),
            out.display(),
            problems
        );
    }
    nemesis.admin.close().await;
    nemesis.rpc.close().await;
}

/// Re-checks a saved run: `FLOTILLA_NEMESIS_CHECK=DIR cargo test -p flotilla-tools --test
/// process nemesis::check_saved_history -- --ignored` (DIR holds `checker.jsonl`).
#[test]
#[ignore = "reads a saved history named by FLOTILLA_NEMESIS_CHECK"]
fn check_saved_history() {
    let dir = std::env::var("FLOTILLA_NEMESIS_CHECK").expect("FLOTILLA_NEMESIS_CHECK=DIR");
    let text =
        std::fs::read_to_string(Path::new(&dir).join("checker.jsonl")).expect("checker.jsonl");
    let ops: Vec<Operation> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            let value = v["value"].as_u64();
            Operation {
                client: v["client"].as_u64().unwrap_or(0),
                key: v["key"].as_u64().expect("key"),
                kind: if v["kind"] == "put" {
                    OpKind::Put {
                        value: value.expect("a put has a value"),
                    }
                } else {
                    OpKind::Get { observed: value }
                },
                call: v["call"].as_u64().expect("call"),
                ret: v["ret"].as_u64(),
            }
        })
        .collect();
    match check_history(&ops) {
        Ok(stats) => eprintln!("linearizable: {stats}"),
        Err(e) => panic!("{e}"),
    }
}
