//! `flotilla-bench`: a YCSB-compatible load generator. The `load` phase inserts the records;
//! `run` runs a core workload's mix (A-F) against them for an operation count or a duration,
//! optionally at a target rate. Latencies are measured from each operation's *intended* start
//! when a target rate is set (so a stall delays the schedule's operations and they count as
//! slow: no coordinated omission), into one HDR histogram per operation.

pub mod generator;
pub mod report;
pub mod workload;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_client::Client;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};

use self::generator::{Chooser, Zipfian};
use self::workload::{key_of, Op, Workload};

/// Which YCSB phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Insert the workload's records.
    Load,
    /// Run its operation mix.
    Run,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Load => "load",
            Phase::Run => "run",
        }
    }
}

/// How to drive the cluster.
#[derive(Clone, Debug)]
pub struct Options {
    pub workload: Workload,
    pub phase: Phase,
    /// Concurrent clients (YCSB's threads), each with one operation in flight.
    pub threads: usize,
    /// Operations per second for all threads together (0: as fast as possible).
    pub target_ops_s: f64,
    /// Stop after this long even if operations remain (YCSB's `maxexecutiontime`).
    pub duration: Option<Duration>,
    /// Seeds the key choosers and values.
    pub seed: u64,
    /// Print a progress line every second (to stderr).
    pub progress: bool,
}

/// One operation kind's results.
#[derive(Clone, Debug)]
pub struct OpStats {
    /// Latencies of the successful operations, in microseconds.
    pub latency_us: Histogram<u64>,
    /// How long the failed ones took to fail (a failover's timeouts show here, not hidden).
    pub failed_latency_us: Histogram<u64>,
    pub errors: u64,
    /// The first few error messages, for the report.
    pub sample_errors: Vec<String>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

impl OpStats {
    fn new() -> Self {
        Self {
            latency_us: histogram(),
            failed_latency_us: histogram(),
            errors: 0,
            sample_errors: Vec::new(),
        }
    }
}

/// One second of the run, for the time series and the chart.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Second {
    /// Seconds since the start (the end of this second).
    pub at_s: u64,
    pub ops: u64,
    /// p99 of the operations that finished in this second (0 if none).
    pub p99_us: u64,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    pub workload: String,
    pub phase: Phase,
    pub threads: usize,
    pub target_ops_s: f64,
    pub elapsed: Duration,
    pub ops: BTreeMap<Op, OpStats>,
    pub series: Vec<Second>,
}

impl Summary {
    /// Successful operations.
    pub fn operations(&self) -> u64 {
        self.ops.values().map(|s| s.latency_us.len()).sum()
    }

    pub fn errors(&self) -> u64 {
        self.ops.values().map(|s| s.errors).sum()
    }

    pub fn throughput(&self) -> f64 {
        self.operations() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What the workers record into, and the once-a-second snapshot reads.
struct Recorder {
    ops: BTreeMap<Op, OpStats>,
    second: Histogram<u64>,
}

impl Recorder {
    fn record(&mut self, op: Op, latency: Duration, result: Result<(), String>) {
        let stats = self.ops.entry(op).or_insert_with(OpStats::new);
        let us = (latency.as_micros() as u64).max(1);
        match result {
            Ok(()) => {
                stats.latency_us.saturating_record(us);
                self.second.saturating_record(us);
            }
            Err(e) => {
                stats.failed_latency_us.saturating_record(us);
                stats.errors += 1;
                if stats.sample_errors.len() < 3 {
                    stats.sample_errors.push(e);
                }
            }
        }
    }
}

/// Shared by the workers of one run.
struct Shared {
    client: Client,
    options: Options,
    recorder: Mutex<Recorder>,
    /// Operations claimed so far (the run ends at the operation count).
    claimed: AtomicU64,
    /// Record numbers handed to inserts of the run phase.
    next_insert: AtomicU64,
    /// Records known inserted, YCSB's acknowledged counter: the first `limit` record numbers
    /// (from `insert_start`) all acknowledged, and those acknowledged past a gap. Reads and
    /// updates choose below the limit, so they never pick a record still being inserted.
    inserted: Mutex<(u64, std::collections::BTreeSet<u64>)>,
    /// Built once: its constant costs O(records) to compute.
    zipfian: Zipfian,
    stop: AtomicBool,
}

/// Runs one phase against `client`.
pub async fn run(client: Client, options: Options) -> Summary {
    let w = &options.workload;
    let total = match options.phase {
        Phase::Load => w.record_count,
        Phase::Run => w.operation_count,
    };
    let threads = options.threads.max(1);
    let shared = Arc::new(Shared {
        next_insert: AtomicU64::new(w.insert_start + w.record_count),
        inserted: Mutex::new((w.record_count, std::collections::BTreeSet::new())),
        zipfian: Zipfian::new(w.record_count),
        client,
        recorder: Mutex::new(Recorder {
            ops: BTreeMap::new(),
            second: OpStats::new().latency_us,
        }),
        claimed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        options,
    });
    let started = Instant::now();
    let deadline = shared.options.duration.map(|d| started + d);
    let workers: Vec<_> = (0..threads)
        .map(|i| tokio::spawn(worker(shared.clone(), i, total, started, deadline)))
        .collect();
    let ticker = tokio::spawn(seconds(shared.clone(), started, total));
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    let mut series = ticker.await.unwrap_or_default();
    // The last, partial second.
    let mut recorder = shared.recorder.lock();
    if !recorder.second.is_empty() {
        series.push(Second {
            at_s: elapsed.as_secs() + 1,
            ops: recorder.second.len(),
            p99_us: recorder.second.value_at_quantile(0.99),
        });
    }
    Summary {
        workload: shared.options.workload.name.clone(),
        phase: shared.options.phase,
        threads,
        target_ops_s: shared.options.target_ops_s,
        elapsed,
        ops: std::mem::take(&mut recorder.ops),
        series,
    }
}

/// Once a second: the second's throughput and p99, and the progress line.
async fn seconds(shared: Arc<Shared>, started: Instant, total: u64) -> Vec<Second> {
    let mut series = Vec::new();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(started + Duration::from_secs(1)),
        Duration::from_secs(1),
    );
    while !shared.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let mut r = shared.recorder.lock();
        let second = Second {
            at_s: started.elapsed().as_secs(),
            ops: r.second.len(),
            p99_us: if !r.second.is_empty() {
                r.second.value_at_quantile(0.99)
            } else {
                0
            },
        };
        r.second.reset();
        let done: u64 = r.ops.values().map(|s| s.latency_us.len()).sum();
        let errors: u64 = r.ops.values().map(|s| s.errors).sum();
        drop(r);
        series.push(second);
        if shared.options.progress {
            let of = if total == u64::MAX {
                String::new()
            } else {
                format!(" of {total}")
            };
            eprintln!(
                "[{:>4} s] {done}{of} ops, {} ops/s, p99 {:.2} ms, {errors} errors",
                second.at_s,
                second.ops,
                second.p99_us as f64 / 1000.0
            );
        }
    }
    series
}

async fn worker(
    shared: Arc<Shared>,
    index: usize,
    total: u64,
    started: Instant,
    deadline: Option<Instant>,
) {
    let options = &shared.options;
    let w = &options.workload;
    let seed = options.seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut chooser = Chooser::with_zipfian(w.distribution, shared.zipfian.clone(), seed);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 1);
    // Random bytes to cut values from (a fresh offset per write, so values differ).
    let pool: Bytes = (0..w.value_bytes().max(1) * 2)
        .map(|_| rng.random_range(b'a'..=b'z'))
        .collect::<Vec<u8>>()
        .into();
    let threads = options.threads.max(1) as f64;
    let interval = (options.target_ops_s > 0.0)
        .then(|| Duration::from_secs_f64(threads / options.target_ops_s));
    // Threads start spread over one interval, not all at once.
    let mut intended =
        started + interval.map_or(Duration::ZERO, |i| i.mul_f64(index as f64 / threads));
    loop {
        let n = shared.claimed.fetch_add(1, Ordering::Relaxed);
        if n >= total || deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        let begin = match interval {
            Some(i) => {
                tokio::time::sleep_until(tokio::time::Instant::from_std(intended)).await;
                let at = intended;
                intended += i;
                at
            }
            None => Instant::now(),
        };
        let op = match options.phase {
            Phase::Load => Op::Insert,
            Phase::Run => w.pick(chooser.fraction()),
        };
        let offset = rng.random_range(0..=w.value_bytes());
        let value = pool.slice(offset..offset + w.value_bytes());
        let result = match (options.phase, op) {
            (Phase::Load, _) => insert(&shared, w.insert_start + n, value).await,
            (Phase::Run, Op::Insert) => {
                let keynum = shared.next_insert.fetch_add(1, Ordering::Relaxed);
                insert(&shared, keynum, value).await
            }
            (Phase::Run, op) => {
                let known = shared.inserted.lock().0;
                let keynum = w.insert_start + chooser.next(known);
                let scan_len = chooser.uniform(1, w.max_scan_length);
                one(&shared.client, op, &key_of(keynum), value, scan_len).await
            }
        };
        shared.recorder.lock().record(op, begin.elapsed(), result);
    }
}

async fn insert(shared: &Shared, keynum: u64, value: Bytes) -> Result<(), String> {
    shared
        .client
        .put(key_of(keynum), value)
        .await
        .map_err(|e| e.to_string())?;
    let relative = keynum - shared.options.workload.insert_start;
    let mut known = shared.inserted.lock();
    let (limit, ahead) = &mut *known;
    if relative >= *limit {
        ahead.insert(relative);
        while ahead.remove(limit) {
            *limit += 1;
        }
    }
    Ok(())
}

async fn one(
    client: &Client,
    op: Op,
    key: &str,
    value: Bytes,
    scan_len: u64,
) -> Result<(), String> {
    let e = |e: flotilla_client::ClientError| e.to_string();
    match op {
        Op::Read => client.get(key).await.map(drop).map_err(e),
        Op::Update | Op::Insert => client.put(key, value).await.map(drop).map_err(e),
        Op::Scan => client
            .scan(key..)
            .limit(scan_len as usize)
            .collect()
            .await
            .map(drop)
            .map_err(e),
        Op::ReadModifyWrite => {
            client.get(key).await.map_err(e)?;
            client.put(key, value).await.map(drop).map_err(e)
        }
    }
}
