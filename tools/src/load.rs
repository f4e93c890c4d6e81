//! `flotilla demo` (a short narrated load) and `flotilla bench` (N concurrent writers, with
//! throughput, latency percentiles and each node's fsyncs per second).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use flotilla_client::{Client, ClientConfig};
use flotilla_transport::kv::{
    txn_op, Compare, CompareOp, CompareTarget, PutRequest, TxnOp, TxnRequest,
};
use hdrhistogram::Histogram;

/// A revision-checked increment: read, then write only if nobody wrote in between (the
/// thesis' optimistic transaction). Returns the new value.
///
/// # Errors
/// Client errors.
pub async fn increment(client: &Client, key: &[u8]) -> anyhow::Result<u64> {
    loop {
        let current = client.get(key).await?;
        let (value, revision) = match &current {
            Some(kv) => (
                std::str::from_utf8(&kv.value)?.parse::<u64>()?,
                kv.mod_revision,
            ),
            None => (0, 0),
        };
        let next = value + 1;
        let txn = TxnRequest {
            compares: vec![Compare {
                key: Bytes::copy_from_slice(key),
                target: CompareTarget::ModRevision as i32,
                op: CompareOp::Equal as i32,
                revision,
                ..Compare::default()
            }],
            success: vec![TxnOp {
                op: Some(txn_op::Op::Put(PutRequest {
                    key: Bytes::copy_from_slice(key),
                    value: next.to_string().into(),
                    prev_kv: false,
                })),
            }],
            failure: vec![],
        };
        let (_, response) = client.txn_request(txn).await?;
        if response.succeeded {
            return Ok(next);
        }
    }
}

pub async fn demo(config: ClientConfig, ops: usize) -> anyhow::Result<()> {
    let client = Client::connect(config)
        .await
        .context("cannot reach the cluster")?;
    let started = Instant::now();
    println!("demo: writing {ops} keys demo/user0000.. through the leader of their range");
    let mut last_revision = 0;
    for i in 0..ops {
        last_revision = client
            .put(format!("demo/user{i:04}"), format!("{{\"visits\": {i}}}"))
            .await?;
    }
    println!(
        "  {ops} puts acknowledged (each fsynced on a quorum) in {:.0} ms; last revision {last_revision}",
        started.elapsed().as_secs_f64() * 1e3
    );
    let kv = client.get("demo/user0007").await?;
    println!(
        "  get demo/user0007 -> {:?}",
        kv.as_ref()
            .map(|kv| String::from_utf8_lossy(&kv.value).to_string())
    );
    let scanned = client.scan("demo/".."demo0").limit(5).collect().await?;
    println!("  scan [demo/, demo0) limit 5 ->");
    for kv in &scanned {
        println!(
            "    {} = {} (mod revision {})",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value),
            kv.mod_revision
        );
    }
    let workers = 10;
    println!("  {workers} workers increment demo/counter 5 times each with revision-checked txns");
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                increment(&c, b"demo/counter").await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let counter = client.get("demo/counter").await?;
    println!(
        "  demo/counter = {} (no increment lost)",
        counter.map_or("-".into(), |kv| String::from_utf8_lossy(&kv.value)
            .to_string())
    );
    let deleted = client.delete("demo/user0000").await?;
    println!("  delete demo/user0000 -> {deleted} deleted");
    client.close().await;
    Ok(())
}

pub struct BenchOptions {
    pub writers: usize,
    pub value_size: usize,
    pub duration: Duration,
    pub keys: u64,
}

pub async fn bench(config: ClientConfig, o: BenchOptions) -> anyhow::Result<()> {
    let endpoints = config.endpoints.clone();
    let client = Client::connect(config)
        .await
        .context("cannot reach the cluster")?;
    let before = fsyncs(&client, &endpoints).await;
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'x'; o.value_size]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..o.writers {
        let (client, stop, errors, value) =
            (client.clone(), stop.clone(), errors.clone(), value.clone());
        let keys = o.keys;
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut i = w as u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("bench/{:012}", (i.wrapping_mul(0x9e37_79b9)) % keys);
                let t = Instant::now();
                match client.put(key, value.clone()).await {
                    Ok(_) => {
                        let _ = h.record(t.elapsed().as_micros() as u64);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += o.writers as u64;
            }
            anyhow::Ok(h)
        }));
    }
    tokio::time::sleep(o.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = fsyncs(&client, &endpoints).await;
    println!(
        "bench: {} writers, {} B values, {:.1} s: {} writes, {:.0} writes/s, {} errors",
        o.writers,
        o.value_size,
        elapsed,
        all.len(),
        all.len() as f64 / elapsed,
        errors.load(Ordering::Relaxed)
    );
    println!(
        "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        all.value_at_quantile(0.5) as f64 / 1e3,
        all.value_at_quantile(0.9) as f64 / 1e3,
        all.value_at_quantile(0.99) as f64 / 1e3,
        all.value_at_quantile(0.999) as f64 / 1e3,
        all.max() as f64 / 1e3
    );
    for ((node, b), (_, a)) in before.iter().zip(&after) {
        println!(
            "  node {node}: {:.0} group commits/s, {:.0} WAL fsyncs/s",
            (a.0.saturating_sub(b.0)) as f64 / elapsed,
            (a.1.saturating_sub(b.1)) as f64 / elapsed
        );
    }
    client.close().await;
    Ok(())
}

/// (node, (synced writes, WAL fsyncs)) of every endpoint that answers.
async fn fsyncs(client: &Client, endpoints: &[std::net::SocketAddr]) -> Vec<(u64, (u64, u64))> {
    let mut out = Vec::new();
    for addr in endpoints {
        if let Ok(s) = client.node_status(*addr).await {
            out.push((s.node_id, (s.synced_writes, s.wal_syncs)));
        }
    }
    out
}
