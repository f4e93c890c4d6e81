//! What a run prints and writes: the final table (latencies in microseconds, as YCSB), a JSON
//! summary, a CSV time series and an SVG chart of throughput and p99 per second.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{OpStats, Second, Summary};

const QUANTILES: [(&str, f64); 5] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p99.9", 0.999),
];

fn quantile(stats: &OpStats, q: f64) -> u64 {
    if stats.latency_us.is_empty() {
        0
    } else {
        stats.latency_us.value_at_quantile(q)
    }
}

/// The final table: one row per operation, then the total.
pub fn table(s: &Summary) -> String {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "workload {} ({}), {} threads{}, {:.1} s: {} operations, {:.0} ops/s, {} errors",
        s.workload,
        s.phase.name(),
        s.threads,
        if s.target_ops_s > 0.0 {
            format!(", target {:.0} ops/s", s.target_ops_s)
        } else {
            String::new()
        },
        secs,
        s.operations(),
        s.throughput(),
        s.errors()
    );
    let _ = writeln!(
        out,
        "{:<18} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7}",
        "op (µs)", "count", "ops/s", "p50", "p90", "p95", "p99", "p99.9", "max", "errors"
    );
    for (op, stats) in &s.ops {
        let count = stats.latency_us.len();
        let _ = write!(
            out,
            "{:<18} {:>9} {:>9.0}",
            op.name(),
            count,
            count as f64 / secs
        );
        for (_, q) in QUANTILES {
            let _ = write!(out, " {:>8}", quantile(stats, q));
        }
        let max = if count == 0 {
            0
        } else {
            stats.latency_us.max()
        };
        let _ = writeln!(out, " {:>9} {:>7}", max, stats.errors);
    }
    for (op, stats) in &s.ops {
        for e in &stats.sample_errors {
            let _ = writeln!(out, "  {op} error: {e}");
        }
    }
    out
}

/// The summary as JSON (latencies in microseconds).
pub fn json(s: &Summary, machine: &str) -> Value {
    let ops: serde_json::Map<String, Value> = s
        .ops
        .iter()
        .map(|(op, stats)| {
            let mut o = serde_json::Map::new();
            let count = stats.latency_us.len();
            o.insert("count".into(), json!(count));
            o.insert("errors".into(), json!(stats.errors));
            o.insert(
                "ops_per_s".into(),
                json!(count as f64 / s.elapsed.as_secs_f64().max(1e-9)),
            );
            for (name, q) in QUANTILES {
                o.insert(format!("{name}_us"), json!(quantile(stats, q)));
            }
            o.insert(
                "max_us".into(),
                json!(if count == 0 {
                    0
                } else {
                    stats.latency_us.max()
                }),
            );
            let failed = &stats.failed_latency_us;
            if !failed.is_empty() {
                o.insert(
                    "failed_p99_us".into(),
                    json!(failed.value_at_quantile(0.99)),
                );
                o.insert("failed_max_us".into(), json!(failed.max()));
            }
            (op.name().to_ascii_lowercase(), Value::Object(o))
        })
        .collect();
    json!({
        "workload": s.workload,
        "phase": s.phase.name(),
        "threads": s.threads,
        "target_ops_per_s": s.target_ops_s,
        "elapsed_s": s.elapsed.as_secs_f64(),
        "operations": s.operations(),
        "errors": s.errors(),
        "throughput_ops_per_s": s.throughput(),
        "machine": machine,
        "ops": ops,
        "series": s.series.iter().map(|p| json!({"at_s": p.at_s, "ops": p.ops, "p99_us": p.p99_us})).collect::<Vec<_>>(),
    })
}

/// One line per second: `second,ops_per_s,p99_us`.
pub fn csv(series: &[Second]) -> String {
    let mut out = String::from("second,ops_per_s,p99_us\n");
    for p in series {
        let _ = writeln!(out, "{},{},{}", p.at_s, p.ops, p.p99_us);
    }
    out
}

/// A chart of throughput (left axis, blue) and p99 latency (right axis, red) per second.
pub fn svg(series: &[Second], title: &str) -> String {
    let (w, h, pad) = (800.0, 360.0, 60.0);
    let max_t = series.iter().map(|p| p.at_s).max().unwrap_or(1).max(1) as f64;
    let max_ops = series.iter().map(|p| p.ops).max().unwrap_or(1).max(1) as f64;
    let max_p99 = series.iter().map(|p| p.p99_us).max().unwrap_or(1).max(1) as f64;
    let x = |t: u64| pad + (t as f64 / max_t) * (w - 2.0 * pad);
    let y = |v: f64, max: f64| h - pad - (v / max) * (h - 2.0 * pad);
    let line = |f: &dyn Fn(&Second) -> (f64, f64)| {
        series
            .iter()
            .map(|p| {
                let (px, py) = f(p);
                format!("{px:.1},{py:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let ops = line(&|p| (x(p.at_s), y(p.ops as f64, max_ops)));
    let p99 = line(&|p| (x(p.at_s), y(p.p99_us as f64, max_p99)));
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{cx}" y="20" text-anchor="middle" font-size="14">{title}</text>
<line x1="{pad}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>
<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{bottom}" stroke="black"/>
<line x1="{right}" y1="{pad}" x2="{right}" y2="{bottom}" stroke="black"/>
<text x="{pad}" y="{top_label}" fill="#1f5fbf" text-anchor="middle">{max_ops:.0} ops/s</text>
<text x="{right}" y="{top_label}" fill="#bf1f1f" text-anchor="middle">p99 {p99_ms:.2} ms</text>
<text x="{cx}" y="{x_label}" text-anchor="middle">seconds (0 - {max_t:.0})</text>
<polyline fill="none" stroke="#1f5fbf" stroke-width="2" points="{ops}"/>
<polyline fill="none" stroke="#bf1f1f" stroke-width="2" points="{p99}"/>
</svg>
"##,
        cx = w / 2.0,
        bottom = h - pad,
        right = w - pad,
        top_label = pad - 8.0,
        x_label = h - pad + 30.0,
        p99_ms = max_p99 / 1000.0,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ycsb::workload::Op;
    use crate::ycsb::{Phase, Summary};
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[test]
    fn the_reports_carry_the_counts_and_percentiles() {
        let mut stats = OpStats::new();
        for us in 1..=1000 {
            stats.latency_us.record(us).expect("in bounds");
        }
        stats.errors = 2;
        let s = Summary {
            workload: "a".into(),
            phase: Phase::Run,
            threads: 4,
            target_ops_s: 0.0,
            elapsed: Duration::from_secs(2),
            ops: BTreeMap::from([(Op::Read, stats)]),
            series: vec![
                Second {
                    at_s: 1,
                    ops: 600,
                    p99_us: 990,
                },
                Second {
                    at_s: 2,
                    ops: 400,
                    p99_us: 995,
                },
            ],
        };
        let t = table(&s);
        assert!(
            t.contains("READ") && t.contains("1000") && t.contains("500 ops/s"),
            "{t}"
        );
        let j = json(&s, "test");
        assert_eq!(j["ops"]["read"]["count"], 1000);
        assert_eq!(j["ops"]["read"]["errors"], 2);
        let p99 = j["ops"]["read"]["p99_us"].as_u64().expect("a number");
        assert!((985..=995).contains(&p99), "{p99}");
        assert_eq!(
            csv(&s.series),
            "second,ops_per_s,p99_us\n1,600,990\n2,400,995\n"
        );
        let chart = svg(&s.series, "workload a");
        assert!(chart.starts_with("<svg") && chart.matches("<polyline").count() == 2);
    }
}
