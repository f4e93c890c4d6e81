//! `flotilla server`: runs one node until SIGTERM or Ctrl-C, then shuts it down gracefully.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{anyhow, Context};
use flotilla_engine::node::Node;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing_subscriber::EnvFilter;

use crate::config::ServerConfig;

/// Buckets of every `_seconds` histogram: 50 µs .. 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];
/// Buckets of counts (ranges per group commit, messages per batch).
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0,
];
/// Buckets of sizes in bytes: 256 B .. 64 MiB.
const BYTES_BUCKETS: &[f64] = &[
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

pub fn init_logging(filter: &str, format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Serves Prometheus metrics on `addr`, with explicit histogram buckets.
///
/// # Errors
/// When the listener cannot start.
pub fn install_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_ranges".into()), COUNT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_messages".into()), COUNT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS)?
        .install()
        .map_err(|e| anyhow!("metrics-addr {addr}: {e}"))?;
    Ok(())
}

/// Runs a node from `config` (file paths relative to `config_path`'s directory).
///
/// # Errors
/// A configuration or start-up error, naming what is wrong.
pub async fn run(
    mut config: ServerConfig,
    config_path: &Path,
    join: &[String],
) -> anyhow::Result<()> {
    init_logging(&config.log_filter, &config.log_format);
    let base = config_path.parent().unwrap_or(Path::new("."));
    if !join.is_empty() {
        let tls = config.tls_config(base)?;
        let members = members_at(&config.cluster_id, &tls, join).await?;
        tracing::info!(node = config.node_id, ?members, "joining the cluster");
        config.join = true;
        config.initial_cluster = members
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
    }
    let node_config = config.node_config(base)?;
    if !config.metrics_addr.is_empty() {
        let addr: SocketAddr = config
            .metrics_addr
            .parse()
            .map_err(|e| anyhow!("metrics-addr: {:?}: {e}", config.metrics_addr))?;
        install_metrics(addr)?;
        tracing::info!(node = config.node_id, %addr, "metrics at http://{addr}/metrics");
    }
    let node = Node::start(node_config)
        .await
        .with_context(|| format!("node {} cannot start", config.node_id))?;
    let halted = async {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(200));
        while !node.is_halted() {
            every.tick().await;
        }
    };
    let halt = tokio::select! {
        r = wait_for_signal() => { r?; false }
        () = halted => true,
    };
    if halt {
        let mut node = node;
        node.stop_now().await;
        anyhow::bail!(
            "node {} halted (storage failure or internal error): see the log above; restart it \
             once the cause is fixed",
            config.node_id
        );
    }
    tracing::info!(
        node = config.node_id,
        "shutting down: moving leaderships away"
    );
    let report = node.shutdown().await;
    tracing::info!(
        node = config.node_id,
        leaders_left = report.leaders_left,
        requests_left = report.requests_left,
        "stopped"
    );
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("cannot watch Ctrl-C")?,
    }
    Ok(())
}

/// The members a running cluster lists (`cluster.Info` of the first of `addrs` that answers),
/// asked with this node's certificate (node certificates also name the cluster's client).
async fn members_at(
    cluster_id: &str,
    tls: &flotilla_transport::tls::TlsConfig,
    addrs: &[String],
) -> anyhow::Result<std::collections::BTreeMap<u64, SocketAddr>> {
    use prost::Message as _;
    let bind: SocketAddr = "0.0.0.0:0".parse()?;
    let endpoint = flotilla_transport::ClientEndpoint::new(cluster_id, tls, bind)
        .map_err(|e| anyhow!("join: {e}"))?;
    let mut last = anyhow!("join: no address given");
    for a in addrs {
        let addr: SocketAddr = match a.parse() {
            Ok(addr) => addr,
            Err(e) => {
                last = anyhow!("join: {a:?}: {e}");
                continue;
            }
        };
        let answer = endpoint
            .call(
                addr,
                "cluster.Info",
                bytes::Bytes::new(),
                std::time::Duration::from_secs(5),
            )
            .await;
        match answer.map(flotilla_transport::service::ClusterInfo::decode) {
            Ok(Ok(info)) if !info.nodes.is_empty() => {
                endpoint.close().await;
                return info
                    .nodes
                    .iter()
                    .map(|n| {
                        let addr = n
                            .addr
                            .parse()
                            .map_err(|e| anyhow!("join: node {}: {:?}: {e}", n.node_id, n.addr))?;
                        Ok((n.node_id, addr))
                    })
                    .collect();
            }
            Ok(Ok(_)) => last = anyhow!("join: {addr} lists no member"),
            Ok(Err(e)) => last = anyhow!("join: {addr}: undecodable answer: {e}"),
            Err(e) => last = anyhow!("join: {addr}: {e}"),
        }
    }
    endpoint.close().await;
    Err(last)
}
