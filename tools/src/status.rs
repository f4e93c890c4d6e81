//! The node's status port (`status-addr`, HTTP/1.1):
//!
//! - `/metrics`: Prometheus text format (every `_seconds`, `_bytes`, `_ranges` and `_messages`
//!   histogram with explicit buckets);
//! - `/health`: 200 while the process runs (a liveness probe);
//! - `/ready`: 200 once the node serves and every range it hosts knows its leader, else 503 with
//!   what is missing (a readiness probe: a load balancer or a rolling restart waits on it);
//! - `/status`: JSON, the node id, version, uptime, its ranges with their leaders, and its peers
//!   with their liveness.
//!
//! The port comes up before the node has opened its storage, so `/health` answers during a
//! long start and `/ready` says that it is starting.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use flotilla_engine::node::NodeProbe;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::RwLock;
use serde_json::json;

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

/// Ranges `/ready` names when some have no leader (the count is always complete).
const READY_LIST_LIMIT: usize = 20;
/// Connections served at once; more wait in the listener's backlog.
const MAX_CONNECTIONS: usize = 64;
/// A request's headers must arrive within this; a handler must answer within
/// [`ANSWER_TIMEOUT`] (a stuck poller gets a 503, not a hung probe).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Ranges `/status` lists by default (`?limit=N` for more, up to [`MAX_STATUS_RANGES`]).
const STATUS_RANGES: usize = 1_000;
const MAX_STATUS_RANGES: usize = 100_000;

/// What the handlers share: the recorder's handle and, once it started, the node.
#[derive(Clone)]
pub struct StatusState {
    metrics: PrometheusHandle,
    node: Arc<RwLock<Option<NodeProbe>>>,
}

impl StatusState {
    /// The node the port reports on (none while it starts, and again while it stops).
    pub fn set_node(&self, node: Option<NodeProbe>) {
        *self.node.write() = node;
    }
}

/// Installs the process's metrics recorder (explicit buckets) and describes every metric.
///
/// # Errors
/// When a recorder is installed already.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_ranges".into()), COUNT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_messages".into()), COUNT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS)?
        .install_recorder()
        .map_err(|e| anyhow!("cannot install the metrics recorder: {e}"))?;
    flotilla_engine::metrics::describe_metrics();
    flotilla_transport::describe_metrics();
    flotilla_placement::describe_metrics();
    Ok(handle)
}

/// Binds `addr` and serves the status port until the process exits.
///
/// # Errors
/// When `addr` cannot be bound (named in the message).
pub async fn serve(addr: SocketAddr, metrics: PrometheusHandle) -> anyhow::Result<StatusState> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("status-addr {addr}: cannot listen"))?;
    let state = StatusState {
        metrics,
        node: Arc::new(RwLock::new(None)),
    };
    // Histograms are folded into their buckets by the upkeep (and by every render).
    let upkeep = state.metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let serving = state.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment, keep serving.
                    tracing::warn!(error = %e, "status port: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = serving.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |request| {
                    let state = state.clone();
                    async move {
                        let answer = tokio::time::timeout(ANSWER_TIMEOUT, route(&state, &request));
                        Ok::<_, Infallible>(answer.await.unwrap_or_else(|_| {
                            reply(
                                StatusCode::SERVICE_UNAVAILABLE,
                                TEXT,
                                "the node did not answer in time (overloaded or stuck)\n",
                            )
                        }))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(state)
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn route(state: &StatusState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n");
    }
    let node = state.node.read().clone();
    match request.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        "/health" => match node {
            Some(node) if node.is_halted() => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "halted: a storage failure stopped the node (see its log); it exits shortly\n",
            ),
            _ => reply(StatusCode::OK, TEXT, "ok\n"),
        },
        "/ready" => {
            let (ready, why) = readiness(node.as_ref()).await;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, TEXT, why + "\n")
        }
        "/status" => match node {
            Some(node) => {
                let limit = request
                    .uri()
                    .query()
                    .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("limit=")))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(STATUS_RANGES)
                    .min(MAX_STATUS_RANGES);
                reply(
                    StatusCode::OK,
                    "application/json",
                    status_json(&node, limit).await.to_string(),
                )
            }
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                json!({ "starting": true, "version": env!("CARGO_PKG_VERSION") }).to_string(),
            ),
        },
        "/" => reply(
            StatusCode::OK,
            TEXT,
            "flotilla status port: /metrics /health /ready /status\n",
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics /health /ready /status\n",
        ),
    }
}

/// Whether the node is ready, and a line saying why (not).
async fn readiness(node: Option<&NodeProbe>) -> (bool, String) {
    let Some(node) = node else {
        return (false, "not ready: the node is starting".into());
    };
    if node.is_halted() {
        return (false, "not ready: the node halted".into());
    }
    if !node.is_serving() {
        return (false, "not ready: the node is stopping".into());
    }
    let Some((hosted, missing)) = node.leaderless().await else {
        return (
            false,
            "not ready: a poller did not answer (overloaded or stopping)".into(),
        );
    };
    if missing.is_empty() {
        return (true, format!("ready: {hosted} ranges, each with a leader"));
    }
    let listed: Vec<String> = missing
        .iter()
        .take(READY_LIST_LIMIT)
        .map(u64::to_string)
        .collect();
    let more = if missing.len() > READY_LIST_LIMIT {
        format!(" and {} more", missing.len() - READY_LIST_LIMIT)
    } else {
        String::new()
    };
    (
        false,
        format!(
            "not ready: {} of {hosted} ranges have no known leader: {}{more}",
            missing.len(),
            listed.join(", ")
        ),
    )
}

async fn status_json(node: &NodeProbe, limit: usize) -> serde_json::Value {
    let ranges = node.ranges().await;
    let me = node.node_id();
    let list: Vec<serde_json::Value> = ranges
        .iter()
        .take(limit)
        .filter_map(|r| {
            let d = r.descriptor.as_ref()?;
            let epoch = d.epoch.unwrap_or_default();
            Some(json!({
                "id": d.id,
                "start": d.start_key.escape_ascii().to_string(),
                "end": d.end_key.escape_ascii().to_string(),
                "epoch": { "version": epoch.version, "conf_ver": epoch.conf_ver },
                "replicas": d.replicas.iter().map(|p| json!({
                    "node_id": p.node_id,
                    "replica_id": p.replica_id,
                    "role": flotilla_transport::meta::ReplicaRole::try_from(p.role)
                        .map_or("unknown", |r| r.as_str_name()),
                })).collect::<Vec<_>>(),
                "leader_node": r.leader_node,
                "reads_per_second": r.reads_per_second,
                "writes_per_second": r.writes_per_second,
                "size_bytes": r.size_bytes,
            }))
        })
        .collect();
    let leaders = ranges.iter().filter(|r| r.leader_node == me).count();
    let leaderless = node.leaderless().await.map(|(_, missing)| missing);
    let peers: Vec<serde_json::Value> = node
        .peers()
        .into_iter()
        .map(|p| json!({ "node_id": p.node_id, "addr": p.addr, "up": p.up }))
        .collect();
    json!({
        "node_id": me,
        "cluster_id": node.cluster_id(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": node.uptime().as_secs_f64(),
        "serving": node.is_serving(),
        "ranges": ranges.len(),
        "leaders": leaders,
        "leaderless": leaderless,
        "peers": peers,
        "range_list_truncated": ranges.len() > limit,
        "range_list": list,
    })
}
