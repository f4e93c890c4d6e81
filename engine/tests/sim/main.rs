//! The deterministic simulator (DESIGN section 4): whole Raft groups of 3 or 5 replicas in one
//! thread, under a seeded schedule of network, disk, crash and clock faults, with the Raft
//! safety properties checked after every step and the client history checked for
//! linearizability at the end.
//!
//! - `cargo test -p flotilla-engine --test sim` runs `FLOTILLA_SIM_SEEDS` seeds (default 5,000).
//! - `FLOTILLA_SIM_SEED=N` replays seed N alone, exactly; `FLOTILLA_SIM_VERBOSE=1` narrates it.
//! - `FLOTILLA_SIM_FIRST_SEED=K` starts the range at K (a soak can cover new ground).

mod checker;
use flotilla_engine::check::linearizability;
mod network;
mod node;
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
    let outcome = catch_unwind(AssertUnwindSafe(|| world::World::new(seed, verbose).run()))
        .map_err(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            format!("panicked: {what}")
        })??;
    linearizability::check(&outcome.history, LINEARIZABILITY_BUDGET).map_err(|e| e.to_string())?;
    Ok(outcome)
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
    let next = AtomicU64::new(first);
    let failures: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    let totals = Mutex::new((0u64, 0u64, 0u64));
    let started = Instant::now();
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
                match run_seed(seed, false) {
                    Ok(o) => {
                        let mut t = totals.lock().expect("no worker panics holding it");
                        t.0 += o.events;
                        t.1 += o.committed;
                        t.2 += o.history.len() as u64;
                    }
                    Err(e) => failures
                        .lock()
                        .expect("no worker panics holding it")
                        .push((seed, e)),
                }
            });
        }
    });
    let (events, committed, ops) = *totals.lock().expect("workers done");
    println!(
        "simulated {seeds} seeds from {first} in {:.1?}: {events} events, {committed} entries \
         committed, {ops} client operations checked for linearizability",
        started.elapsed()
    );
    let mut failures = failures.into_inner().expect("workers done");
    failures.sort();
    if let Some((seed, e)) = failures.first() {
        for (s, e) in &failures {
            eprintln!("seed {s} failed: {e}");
        }
        panic!(
            "{} of {seeds} seeds failed; first: seed {seed}: {e}\n{}",
            failures.len(),
            replay_hint(*seed)
        );
    }
}
