//! `flotilla-bench`: YCSB's load and run phases against a Flotilla cluster.
//!
//! ```text
//! flotilla cluster up --detach && source ./data/local/env
//! flotilla-bench load --workload a --records 100000
//! flotilla-bench run --workload a --threads 64 --duration 30s --json out.json
//! ```
//!
//! YCSB property names work as in YCSB (`-p recordcount=N -p operationcount=N -p
//! fieldlength=N -p threads=N -p target=N -p requestdistribution=uniform ...`); the flags
//! override them and read `FLOTILLA_<FLAG>` from the environment too.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use flotilla_tools::client_env::connect;
use flotilla_tools::ycsb::{self, report, workload::Workload, Phase};

#[derive(Parser)]
#[command(
    name = "flotilla-bench",
    version,
    about = "YCSB-style load generator for Flotilla"
)]
struct Cli {
    #[command(subcommand)]
    phase: PhaseCmd,
}

#[derive(Subcommand)]
enum PhaseCmd {
    /// Inserts the workload's records (YCSB's load phase).
    Load(Opts),
    /// Runs the workload's operation mix against them (YCSB's run phase).
    Run(Opts),
}

#[derive(Args, Clone)]
struct Opts {
    /// Core workload: a (50/50 read/update), b (95/5), c (read only), d (read latest), e
    /// (short scans), f (read-modify-write).
    #[arg(long, short = 'w', env = "FLOTILLA_WORKLOAD", default_value = "a")]
    workload: String,
    /// Records to load, and to choose from (`recordcount`).
    #[arg(long, env = "FLOTILLA_RECORDS")]
    records: Option<u64>,
    /// Operations of the run phase (`operationcount`); with --duration, whichever ends first.
    #[arg(long, env = "FLOTILLA_OPERATIONS")]
    operations: Option<u64>,
    /// Concurrent clients (`threads`), each with one operation in flight.
    #[arg(long, short = 't', env = "FLOTILLA_THREADS")]
    threads: Option<usize>,
    /// Stop after this long: `30s`, `2m`, `500ms` (`maxexecutiontime`, in seconds).
    #[arg(long, short = 'd', env = "FLOTILLA_DURATION")]
    duration: Option<String>,
    /// Operations per second for all threads together (`target`; 0: unlimited). Latencies
    /// then count from each operation's scheduled start.
    #[arg(long, env = "FLOTILLA_TARGET")]
    target: Option<f64>,
    /// Bytes per record value (one field of this length; YCSB: fieldcount x fieldlength).
    #[arg(long, env = "FLOTILLA_VALUE_SIZE")]
    value_size: Option<u64>,
    /// A YCSB property, `name=value`; repeatable.
    #[arg(short = 'p', value_name = "NAME=VALUE")]
    property: Vec<String>,
    /// Write the summary as JSON here.
    #[arg(long, env = "FLOTILLA_JSON")]
    json: Option<PathBuf>,
    /// Write the per-second time series (throughput, p99) as CSV here.
    #[arg(long, env = "FLOTILLA_CSV")]
    csv: Option<PathBuf>,
    /// Write a chart of throughput and p99 over time as SVG here.
    #[arg(long, env = "FLOTILLA_SVG")]
    svg: Option<PathBuf>,
    /// Seeds the key choice (a run can be repeated).
    #[arg(long, env = "FLOTILLA_SEED", default_value_t = 1)]
    seed: u64,
    /// No progress line.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// `30s`, `2m`, `500ms`, `1h`, or plain seconds.
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((t, "s"), |i| t.split_at(i));
    let n: f64 = number
        .parse()
        .with_context(|| format!("duration {text:?}: a number and a unit (30s, 2m, 500ms)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => bail!("duration {text:?}: unknown unit {other:?} (ms, s, m, h)"),
    };
    if !secs.is_finite() || secs <= 0.0 {
        bail!("duration {text:?}: must be positive");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn options(opts: &Opts, phase: Phase) -> anyhow::Result<ycsb::Options> {
    let mut props = BTreeMap::new();
    for p in &opts.property {
        let Some((k, v)) = p.split_once('=') else {
            bail!("property {p:?}: NAME=VALUE");
        };
        props.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let mut set = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            props.insert(name.to_string(), v);
        }
    };
    set("recordcount", opts.records.map(|n| n.to_string()));
    set("operationcount", opts.operations.map(|n| n.to_string()));
    if let Some(size) = opts.value_size {
        set("fieldcount", Some("1".into()));
        set("fieldlength", Some(size.to_string()));
    }
    let threads = match opts.threads {
        Some(t) => t,
        None => match props.get("threads").or(props.get("threadcount")) {
            Some(v) => v.parse().with_context(|| format!("threads {v:?}"))?,
            None => 1,
        },
    };
    if threads == 0 {
        bail!("threads: at least 1");
    }
    let target = match opts.target {
        Some(t) => t,
        None => match props.get("target") {
            Some(v) => v.parse().with_context(|| format!("target {v:?}"))?,
            None => 0.0,
        },
    };
    let duration = match &opts.duration {
        Some(d) => Some(parse_duration(d)?),
        None => match props.get("maxexecutiontime") {
            Some(v) => Some(parse_duration(v)?),
            None => None,
        },
    };
    // A run with only a duration runs until it ends.
    if phase == Phase::Run && duration.is_some() && !props.contains_key("operationcount") {
        props.insert("operationcount".into(), u64::MAX.to_string());
    }
    let workload = Workload::core(&opts.workload, &props).map_err(anyhow::Error::msg)?;
    Ok(ycsb::Options {
        workload,
        phase,
        threads,
        target_ops_s: target.max(0.0),
        duration,
        seed: opts.seed,
        progress: !opts.quiet,
    })
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or_else(String::new, |kib| format!(", {} GiB", kib / (1 << 20)));
    format!("{cores} cores{memory}, {}", std::env::consts::ARCH)
}

async fn bench(opts: Opts, phase: Phase) -> anyhow::Result<()> {
    let mut options = options(&opts, phase)?;
    options.progress &= std::io::stderr().is_terminal() || std::env::var_os("CI").is_none();
    let client = connect().await?;
    let summary = ycsb::run(client, options).await;
    print!("{}", report::table(&summary));
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report::json(&summary, &machine()))?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &opts.csv {
        std::fs::write(path, report::csv(&summary.series))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &opts.svg {
        let title = format!(
            "workload {} ({}), {} threads: ops/s and p99",
            summary.workload,
            phase.name(),
            summary.threads
        );
        std::fs::write(path, report::svg(&summary.series, &title))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if summary.operations() == 0 {
        bail!("no operation succeeded ({} errors)", summary.errors());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.phase {
        PhaseCmd::Load(o) => bench(o, Phase::Load).await,
        PhaseCmd::Run(o) => bench(o, Phase::Run).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_their_units() {
        assert_eq!(parse_duration("30s").expect("30s"), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").expect("2m"), Duration::from_secs(120));
        assert_eq!(
            parse_duration("500ms").expect("ms"),
            Duration::from_millis(500)
        );
        assert_eq!(parse_duration("7").expect("7"), Duration::from_secs(7));
        assert!(parse_duration("soon").is_err() && parse_duration("3y").is_err());
    }
}
