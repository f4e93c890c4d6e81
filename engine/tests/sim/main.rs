//! The deterministic simulator (DESIGN section 4): whole Raft groups of 3 or 5 replicas in one
//! thread, under a seeded schedule of network, disk, crash and clock faults, with the Raft
//! safety properties checked after every step and the client history checked for
//! linearizability at the end.
//!
//! - `cargo test -p flotilla-engine --test sim` runs `FLOTILLA_SIM_SEEDS` seeds (default 5,000).
//! - `FLOTILLA_SIM_SEED=N` replays seed N alone, exactly; `FLOTILLA_SIM_VERBOSE=1` narrates it.
//! - `FLOTILLA_SIM_FIRST_SEED=K` starts the range at K (a soak can cover new ground).
//!
//! The second test, `simulate_store_seeds`, drives whole stores (`stores.rs`): real `Store`s
//! over in-memory RocksDB, many ranges, splits, replica moves and snapshots under the same
//! faults, with `FLOTILLA_STORE_SIM_SEEDS`, `FLOTILLA_STORE_SIM_FIRST_SEED` and
//! `FLOTILLA_STORE_SIM_SEED` in the same roles.

mod checker;
use flotilla_engine::check::linearizability;
mod network;
mod node;
mod stores;
mod world;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// States the linearizability search may explore per key before giving up on a history.
const LINEARIZABILITY_BUDGET: u64 = 2_000_000;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs one seed: the simulation, then the history check.
fn run_seed(seed: u64, verbose: bool) -> Result<world::Outcome, String> {
    let outcome = caught(|| world::World::new(seed, verbose).run())?;
    linearizability::check(&outcome.history, LINEARIZABILITY_BUDGET).map_err(|e| e.to_string())?;
    Ok(outcome)
}

/// `run`'s result, with a panic turned into the error it printed.
fn caught<T>(run: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(run)).map_err(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        format!("panicked: {what}")
    })?
}

fn replay_hint(seed: u64) -> String {
    format!("replay: FLOTILLA_SIM_SEED={seed} FLOTILLA_SIM_VERBOSE=1 cargo test -p flotilla-engine --test sim -- --nocapture")
}

#[test]
fn simulate_seeds() {
    let verbose = std::env::var("FLOTILLA_SIM_VERBOSE").is_ok_and(|v| v != "0");
    if let Some(seed) = env_u64("FLOTILLA_SIM_SEED") {
        match run_seed(seed, verbose) {
            Ok(o) => println!(
                "seed {seed}: ok, {} events, {} entries committed, {} operations checked",
                o.events,
                o.committed,
                o.history.len()
            ),
            Err(e) => panic!("simulation failed: seed {seed}: {e}\n{}", replay_hint(seed)),
        }
        return;
    }
    let seeds = env_u64("FLOTILLA_SIM_SEEDS").unwrap_or(5_000);
    let first = env_u64("FLOTILLA_SIM_FIRST_SEED").unwrap_or(0);
    let started = Instant::now();
    let totals = many_seeds(seeds, first, run_seed, replay_hint, |o| {
        [o.events, o.committed, o.history.len() as u64, 0, 0, 0]
    });
    println!(
        "simulated {seeds} seeds from {first} in {:.1?}: {} events, {} entries committed, {} \
         client operations checked for linearizability",
        started.elapsed(),
        totals[0],
        totals[1],
        totals[2]
    );
}

/// Runs one seed of the whole-store simulator: the run, then the history check.
fn run_store_seed(seed: u64, verbose: bool) -> Result<stores::Outcome, String> {
    let outcome = caught(|| stores::StoreWorld::new(seed, verbose).run())?;
    linearizability::check(&outcome.history, LINEARIZABILITY_BUDGET).map_err(|e| e.to_string())?;
    Ok(outcome)
}

fn store_replay_hint(seed: u64) -> String {
    format!("replay: FLOTILLA_STORE_SIM_SEED={seed} FLOTILLA_SIM_VERBOSE=1 cargo test -p flotilla-engine --test sim simulate_store_seeds -- --nocapture")
}

/// Whole stores (many ranges, splits, replica moves, snapshots) under faults.
/// `FLOTILLA_STORE_SIM_SEEDS` (default 100), `FLOTILLA_STORE_SIM_FIRST_SEED`, and
/// `FLOTILLA_STORE_SIM_SEED=N` to replay one.
#[test]
fn simulate_store_seeds() {
    let verbose = std::env::var("FLOTILLA_SIM_VERBOSE").is_ok_and(|v| v != "0");
    if let Some(seed) = env_u64("FLOTILLA_STORE_SIM_SEED") {
        match run_store_seed(seed, verbose) {
            Ok(o) => println!(
                "store seed {seed}: ok, {} events, {} entries applied, {} splits, {} moves, {} \
                 snapshots, {} operations checked",
                o.events,
                o.applied,
                o.splits,
                o.moves,
                o.snapshots,
                o.history.len()
            ),
            Err(e) => panic!(
                "store simulation failed: seed {seed}: {e}\n{}",
                store_replay_hint(seed)
            ),
        }
        return;
    }
    let seeds = env_u64("FLOTILLA_STORE_SIM_SEEDS").unwrap_or(100);
    let first = env_u64("FLOTILLA_STORE_SIM_FIRST_SEED").unwrap_or(0);
    let started = Instant::now();
    let t = many_seeds(seeds, first, run_store_seed, store_replay_hint, |o| {
        [
            o.events,
            o.applied,
            o.history.len() as u64,
            o.splits,
            o.moves,
            o.snapshots,
        ]
    });
    println!(
        "simulated {seeds} store seeds from {first} in {:.1?}: {} events, {} entries applied, \
         {} splits, {} replica moves, {} snapshots, {} client operations checked for \
         linearizability",
        started.elapsed(),
        t[0],
        t[1],
        t[3],
        t[4],
        t[5],
        t[2]
    );
}

/// Runs `seeds` seeds from `first` on a few threads; sums what `count` reads off each
/// outcome, and fails with every failing seed (the first one's replay command last).
fn many_seeds<T>(
    seeds: u64,
    first: u64,
    run: impl Fn(u64, bool) -> Result<T, String> + Sync,
    hint: impl Fn(u64) -> String,
    count: impl Fn(&T) -> [u64; 6] + Sync,
) -> [u64; 6] {
    let next = AtomicU64::new(first);
    let failures: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    let totals = Mutex::new([0u64; 6]);
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + seeds {
                    return;
                }
                match run(seed, false) {
                    Ok(o) => {
                        let mut t = totals.lock().expect("no worker panics holding it");
                        for (sum, n) in t.iter_mut().zip(count(&o)) {
                            *sum += n;
                        }
                    }
                    Err(e) => failures
                        .lock()
                        .expect("no worker panics holding it")
                        .push((seed, e)),
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("workers done");
    failures.sort();
    if let Some((seed, e)) = failures.first() {
        for (s, e) in &failures {
            eprintln!("seed {s} failed: {e}");
        }
        panic!(
            "{} of {seeds} seeds failed; first: seed {seed}: {e}\n{}",
            failures.len(),
            hint(*seed)
        );
    }
    totals.into_inner().expect("workers done")
}
