//! The client service (DESIGN sections 2 and 9) over the transport's RPC streams:
//!
//! - `kv.Write`: a `kv::RaftCommand` (the client's header, naming range, epoch and its
//!   `(client_id, seq)`, and the write) -> `kv::WriteResponse`;
//! - `kv.Read`: a `service::ReadRequest` -> `service::ReadResponse`;
//! - `cluster.Info`: the members and the ranges this node hosts, with their leaders;
//! - `node.Status`: counters of this node.
//!
//! Refusals a client acts on (routing, limits, busy, timeout) are typed `KvError`s inside the
//! response; the RPC code says only whether the call itself worked (bad body, unknown method,
//! node unavailable).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_transport::kv::{ErrorCode, KvError as WireError, RaftCommand, WriteResponse};
use flotilla_transport::service::{
    read_response, ClusterInfo, NodeInfo, NodeStatus, RangeInfo, ReadRequest, ReadResponse,
};
use flotilla_transport::wire::RpcCode;
use flotilla_transport::RpcStatus;
use prost::Message as _;

use crate::kv::KvError;
use crate::storage::Engine;
use crate::store::{RequestError, RuntimeHandle};

/// The part of the caller's timeout kept back so our typed `Timeout` answer arrives before
/// the transport cuts the call.
const ANSWER_MARGIN: Duration = Duration::from_millis(50);

pub(crate) struct Service {
    pub(crate) cluster_id: String,
    pub(crate) node_id: u64,
    /// Shared with the network (routing reports of a node without a meta replica go to one
    /// of these).
    pub(crate) addresses: Arc<parking_lot::RwLock<BTreeMap<u64, SocketAddr>>>,
    pub(crate) handle: RuntimeHandle,
    pub(crate) engine: Arc<Engine>,
    pub(crate) accepting: AtomicBool,
    pub(crate) started: Instant,
    /// Set once the node's placement task runs.
    pub(crate) placement: std::sync::OnceLock<Arc<flotilla_placement::Placement>>,
    /// The node's transport while it runs (the transport holds the service through its
    /// sink: cleared when the node stops, so neither keeps the other alive).
    pub(crate) transport: parking_lot::RwLock<Option<flotilla_transport::Transport>>,
}

/// A build with the `nemesis` feature takes `nemesis.Faults` only from a process started with
/// this variable set (so a test-built binary run by hand injects no faults).
pub const NEMESIS_ENV: &str = "FLOTILLA_NEMESIS";

fn bad_request(what: &str, e: impl std::fmt::Display) -> RpcStatus {
    RpcStatus::new(RpcCode::BadRequest, format!("undecodable {what}: {e}"))
}

fn error_kind(code: i32) -> &'static str {
    match ErrorCode::try_from(code) {
        Ok(c) => c.as_str_name(),
        Err(_) => "UNKNOWN",
    }
}

impl Service {
    /// Handles one RPC.
    pub(crate) async fn call(
        &self,
        from_node: Option<u64>,
        method: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RpcStatus> {
        if !self.accepting.load(Ordering::Relaxed) {
            return Err(RpcStatus::new(
                RpcCode::Unavailable,
                format!("node {} is shutting down", self.node_id),
            ));
        }
        if self.handle.is_halted() {
            return Err(RpcStatus::new(
                RpcCode::Unavailable,
                format!("node {} halted after a storage failure", self.node_id),
            ));
        }
        let deadline = Instant::now() + timeout.saturating_sub(ANSWER_MARGIN);
        match method {
            "kv.Write" => {
                let command = RaftCommand::decode(body).map_err(|e| bad_request("write", e))?;
                let registers_address = matches!(
                    command.admin.as_ref().and_then(|a| a.request.as_ref()),
                    Some(flotilla_transport::kv::admin_request::Request::NodeUpdate(u))
                        if u.address_only || u.record.as_ref().is_some_and(|r| !r.addr.is_empty())
                );
                if registers_address && from_node.is_none() {
                    return Err(RpcStatus::new(
                        RpcCode::BadRequest,
                        "node addresses are registered by the nodes themselves (placement.Join)",
                    ));
                }
                let from_a_client = command.header.as_ref().is_some_and(|h| h.client_id != 0);
                let response = self.write(command, deadline).await?;
                if from_a_client {
                    // Fault tests: the write applied, its answer is lost on the way back.
                    crate::fail_point_io("service::drop_write_response").map_err(|why| {
                        RpcStatus::new(RpcCode::Unavailable, format!("answer dropped: {why}"))
                    })?;
                }
                Ok(response.encode_to_vec().into())
            }
            "kv.Read" => {
                let request = ReadRequest::decode(body).map_err(|e| bad_request("read", e))?;
                let response = self.read(request, deadline).await?;
                Ok(response.encode_to_vec().into())
            }
            "routing.LocateKey" => {
                let request = flotilla_transport::service::LocateKeyRequest::decode(body)
                    .map_err(|e| bad_request("locate", e))?;
                let record =
                    self.read_routing(|engine| crate::kv::routing::locate(engine, &request.key))?;
                Ok(flotilla_transport::service::LocateKeyResponse { record }
                    .encode_to_vec()
                    .into())
            }
            "routing.ScanRanges" => {
                let request = flotilla_transport::service::ScanRangesRequest::decode(body)
                    .map_err(|e| bad_request("scan ranges", e))?;
                let start = crate::storage::keys::data_key(&request.start);
                let end = if request.end.is_empty() {
                    Vec::new()
                } else {
                    crate::storage::keys::data_key(&request.end)
                };
                let limit = match request.limit {
                    0 => 1_000,
                    n => n.min(10_000) as usize,
                };
                let records = self.read_routing(|engine| {
                    crate::kv::routing::scan_records(engine, &start, &end, limit)
                })?;
                Ok(flotilla_transport::service::ScanRangesResponse { records }
                    .encode_to_vec()
                    .into())
            }
            "range.MiddleKey" => {
                let request = flotilla_transport::service::MiddleKeyRequest::decode(body)
                    .map_err(|e| bad_request("middle key", e))?;
                Ok(self
                    .middle_key(request.range_id)
                    .await?
                    .encode_to_vec()
                    .into())
            }
            "placement.Status" => Ok(self.placement_status().await.encode_to_vec().into()),
            "placement.Join" => {
                let join = flotilla_transport::service::JoinRequest::decode(body)
                    .map_err(|e| bad_request("join", e))?;
                Ok(self.join(from_node, join).await?.encode_to_vec().into())
            }
            "placement.Heartbeat" => {
                let beat = flotilla_transport::service::PlacementHeartbeat::decode(body)
                    .map_err(|e| bad_request("heartbeat", e))?;
                if from_node != Some(beat.node_id) {
                    return Err(RpcStatus::new(
                        RpcCode::BadRequest,
                        format!(
                            "a node reports for itself only: the caller is {from_node:?}, the \
                             heartbeat names node {}",
                            beat.node_id
                        ),
                    ));
                }
                Ok(self.heartbeat_here(beat).await.encode_to_vec().into())
            }
            "cluster.Info" => Ok(self.cluster_info().await.encode_to_vec().into()),
            "node.Status" => Ok(self.status().await.encode_to_vec().into()),
            #[cfg(feature = "nemesis")]
            "nemesis.Faults" => {
                let faults = flotilla_transport::service::NemesisFaults::decode(body)
                    .map_err(|e| bad_request("nemesis faults", e))?;
                self.inject(&faults)?;
                Ok(flotilla_transport::service::NemesisFaultsResponse {}
                    .encode_to_vec()
                    .into())
            }
            other => Err(RpcStatus::new(
                RpcCode::UnknownMethod,
                format!("unknown method {other:?}"),
            )),
        }
    }

    /// Fault tests (the `nemesis` feature, and [`NEMESIS_ENV`] set in the process): sets the
    /// Raft traffic this node drops and configures a failpoint.
    #[cfg(feature = "nemesis")]
    fn inject(&self, faults: &flotilla_transport::service::NemesisFaults) -> Result<(), RpcStatus> {
        if std::env::var_os(NEMESIS_ENV).is_none() {
            return Err(RpcStatus::new(
                RpcCode::UnknownMethod,
                format!("fault injection is off: this process runs without {NEMESIS_ENV}=1"),
            ));
        }
        if faults.partition {
            let transport = self.transport.read().clone().ok_or_else(|| {
                RpcStatus::new(RpcCode::Unavailable, "the node's transport is not running")
            })?;
            transport.set_faults(&faults.drop_to, &faults.drop_from);
        }
        if !faults.failpoint.is_empty() {
            if faults.action == "off" {
                fail::remove(&faults.failpoint);
            } else {
                fail::cfg(&faults.failpoint, &faults.action)
                    .map_err(|e| RpcStatus::new(RpcCode::BadRequest, e))?;
            }
        }
        tracing::warn!(
            node = self.node_id,
            drop_to = ?faults.drop_to,
            drop_from = ?faults.drop_from,
            failpoint = %faults.failpoint,
            action = %faults.action,
            "nemesis: faults set"
        );
        Ok(())
    }

    /// A key near the middle of this node's replica of `range_id` (read off the runtime's
    /// threads: it walks the range's data).
    async fn middle_key(
        &self,
        range_id: u64,
    ) -> Result<flotilla_transport::service::MiddleKeyResponse, RpcStatus> {
        let internal = |e: String| RpcStatus::new(RpcCode::Internal, e);
        let Some(descriptor) = self
            .engine
            .descriptor(range_id)
            .map_err(|e| internal(e.to_string()))?
        else {
            return Ok(flotilla_transport::service::MiddleKeyResponse::default());
        };
        let engine = self.engine.clone();
        let found =
            tokio::task::spawn_blocking(move || crate::kv::size_and_middle(&engine, &descriptor))
                .await
                .map_err(|e| internal(e.to_string()))?
                .map_err(|e| internal(e.to_string()))?;
        Ok(match found {
            Some((size_bytes, key)) => flotilla_transport::service::MiddleKeyResponse {
                key: Some(key.into()),
                size_bytes,
            },
            None => flotilla_transport::service::MiddleKeyResponse::default(),
        })
    }

    /// Learns where node `node_id` listens (no-op for this node and known addresses).
    pub(crate) fn learn_peer(&self, node_id: u64, addr: SocketAddr) {
        if self.addresses.read().get(&node_id) == Some(&addr) {
            return;
        }
        if node_id != self.node_id {
            if let Some(t) = self.transport.read().as_ref() {
                t.add_peer(node_id, addr);
            }
        }
        self.addresses.write().insert(node_id, addr);
        tracing::info!(node = self.node_id, peer = node_id, %addr, "learned a member's address");
    }

    fn members(&self) -> Vec<NodeInfo> {
        self.addresses
            .read()
            .iter()
            .map(|(id, addr)| NodeInfo {
                node_id: *id,
                addr: addr.to_string(),
            })
            .collect()
    }

    /// A node registering its address: only the node itself may (its certificate names it),
    /// and it lands in its record in the meta range.
    async fn join(
        &self,
        from_node: Option<u64>,
        join: flotilla_transport::service::JoinRequest,
    ) -> Result<flotilla_transport::service::JoinResponse, RpcStatus> {
        if join.node_id == 0 || from_node != Some(join.node_id) {
            return Err(RpcStatus::new(
                RpcCode::BadRequest,
                format!(
                    "a node registers itself only: the caller is {from_node:?}, the request \
                     names node {}",
                    join.node_id
                ),
            ));
        }
        let addr: SocketAddr = join
            .addr
            .parse()
            .map_err(|e| bad_request("join address", e))?;
        let members: Vec<u64> = self.addresses.read().keys().copied().collect();
        let update = flotilla_transport::kv::admin_request::Request::NodeUpdate(
            flotilla_transport::kv::NodeUpdate {
                record: Some(flotilla_transport::meta::NodeRecord {
                    node_id: join.node_id,
                    state: 0,
                    addr: addr.to_string(),
                }),
                address_only: true,
            },
        );
        let epoch = flotilla_transport::meta::RangeEpoch {
            version: 1,
            conf_ver: 0,
        };
        let transport = self
            .transport
            .read()
            .clone()
            .ok_or_else(|| RpcStatus::new(RpcCode::Unavailable, "the node is stopping"))?;
        let written =
            super::net::propose_to_meta(&self.handle, &transport, &members, epoch, update).await;
        match written.and_then(|w| w.response) {
            Some(flotilla_transport::kv::write_response::Response::NodeUpdate(_)) => {}
            other => {
                return Err(RpcStatus::new(
                    RpcCode::Unavailable,
                    format!("the meta range did not take the registration: {other:?}"),
                ))
            }
        }
        self.learn_peer(join.node_id, addr);
        Ok(flotilla_transport::service::JoinResponse {
            nodes: self.members(),
        })
    }

    /// The meta range's leader as this node's replica knows it (0: unknown or no replica).
    pub(crate) async fn meta_leader(&self) -> u64 {
        let answers = self.handle.on_every_store(|store| {
            store
                .leader_node(crate::kv::routing::META_RANGE)
                .unwrap_or(0)
        });
        for answer in answers {
            if let Ok(leader) = answer.await {
                if leader != 0 {
                    return leader;
                }
            }
        }
        0
    }

    pub(crate) async fn heartbeat_here(
        &self,
        beat: flotilla_transport::service::PlacementHeartbeat,
    ) -> flotilla_transport::service::PlacementHeartbeatResponse {
        let taken = self.placement.get().is_some_and(|p| {
            let loads = beat
                .loads
                .iter()
                .map(|l| (l.range_id, l.reads_per_second + l.writes_per_second))
                .collect();
            p.heartbeat(beat.node_id, loads)
        });
        flotilla_transport::service::PlacementHeartbeatResponse {
            accepted: taken,
            leader_node: if taken {
                self.node_id
            } else {
                self.meta_leader().await
            },
            nodes: if taken { self.members() } else { Vec::new() },
        }
    }

    async fn placement_status(&self) -> flotilla_transport::service::PlacementStatus {
        let leader_node = self.meta_leader().await;
        let snapshot = self
            .placement
            .get()
            .map(|p| p.snapshot())
            .unwrap_or_default();
        super::placement::status(self.node_id, leader_node, &snapshot)
    }

    /// Reads this node's meta replica (routing records are hints: a local read serves).
    fn read_routing<T>(
        &self,
        read: impl FnOnce(&Engine) -> Result<T, crate::storage::EngineError>,
    ) -> Result<T, RpcStatus> {
        let hosts_meta = self
            .engine
            .descriptor(crate::kv::routing::META_RANGE)
            .map_err(|e| RpcStatus::new(RpcCode::Internal, e.to_string()))?
            .is_some();
        if !hosts_meta {
            return Err(RpcStatus::new(
                RpcCode::Unavailable,
                format!("node {} hosts no replica of the meta range", self.node_id),
            ));
        }
        read(&self.engine).map_err(|e| RpcStatus::new(RpcCode::Internal, e.to_string()))
    }

    /// The typed error on the wire, with the leader's address filled in for `NotLeader`.
    fn wire_error(&self, error: &KvError) -> WireError {
        let mut wire = WireError::from(error);
        if let KvError::NotLeader {
            leader_node: Some(node),
            ..
        } = error
        {
            if let Some(addr) = self.addresses.read().get(node) {
                wire.leader_addr = addr.to_string();
            }
        }
        wire
    }

    fn record(&self, op: &'static str, started: Instant, error: Option<&WireError>) {
        metrics::histogram!("flotilla_client_request_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("flotilla_client_requests_total", "op" => op).increment(1);
        if let Some(e) = error {
            metrics::counter!("flotilla_client_errors_total", "op" => op,
                "kind" => error_kind(e.code))
            .increment(1);
        }
    }

    async fn answer<T>(
        receiver: tokio::sync::oneshot::Receiver<Result<T, RequestError>>,
        deadline: Instant,
    ) -> Result<Result<T, KvError>, RpcStatus> {
        let waited = tokio::time::timeout_at(deadline.into(), receiver).await;
        match waited {
            Err(_) => Ok(Err(KvError::Timeout)),
            Ok(Err(_)) => Err(RpcStatus::new(
                RpcCode::Unavailable,
                "the node stopped before answering",
            )),
            Ok(Ok(Ok(v))) => Ok(Ok(v)),
            Ok(Ok(Err(RequestError::Refused(e)))) => Ok(Err(e)),
            Ok(Ok(Err(RequestError::Unavailable(why)))) => {
                Err(RpcStatus::new(RpcCode::Unavailable, why))
            }
        }
    }

    async fn write(
        &self,
        command: RaftCommand,
        deadline: Instant,
    ) -> Result<WriteResponse, RpcStatus> {
        let started = Instant::now();
        let op = crate::store::write_op(&command);
        let result = Self::answer(self.handle.write(command, deadline), deadline).await?;
        let response = match result {
            Ok(response) => response,
            Err(e) => WriteResponse {
                revision: 0,
                response: Some(flotilla_transport::kv::write_response::Response::Error(
                    self.wire_error(&e),
                )),
            },
        };
        let error = match &response.response {
            Some(flotilla_transport::kv::write_response::Response::Error(e)) => Some(e),
            _ => None,
        };
        self.record(op, started, error);
        Ok(response)
    }

    async fn read(
        &self,
        request: ReadRequest,
        deadline: Instant,
    ) -> Result<ReadResponse, RpcStatus> {
        let started = Instant::now();
        let op = crate::store::read_op(&request);
        let result = Self::answer(self.handle.read(request, deadline), deadline).await?;
        let response = match result {
            Ok(response) => response,
            Err(e) => read_response::Response::Error(self.wire_error(&e)),
        };
        let error = match &response {
            read_response::Response::Error(e) => Some(e),
            _ => None,
        };
        self.record(op, started, error);
        Ok(ReadResponse {
            response: Some(response),
        })
    }

    /// The ranges of every poller with their leaders.
    pub(crate) async fn ranges(&self) -> Vec<RangeInfo> {
        let answers = self.handle.on_every_store(|store| {
            let ids: Vec<u64> = store.range_ids().collect();
            ids.into_iter()
                .filter_map(|range_id| {
                    let descriptor = store.peer(range_id)?.applier().descriptor().clone();
                    let leader_node = store.leader_node(range_id).unwrap_or(0);
                    Some(RangeInfo {
                        descriptor: Some(descriptor),
                        leader_node,
                        ..RangeInfo::default()
                    })
                })
                .collect::<Vec<_>>()
        });
        let mut ranges = Vec::new();
        for answer in answers {
            if let Ok(list) = answer.await {
                ranges.extend(list);
            }
        }
        ranges.sort_by_key(|r| r.descriptor.as_ref().map_or(0, |d| d.id));
        let loads = self.handle.range_loads();
        for r in &mut ranges {
            let Some(load) = r.descriptor.as_ref().and_then(|d| loads.get(&d.id)) else {
                continue;
            };
            r.reads_per_second = load.reads_per_second;
            r.writes_per_second = load.writes_per_second;
            r.size_bytes = load.size_bytes;
        }
        ranges
    }

    /// How many replicas this node hosts and which of them know no leader; `None` when a poller
    /// did not answer (its mailbox is full, or it stopped): the node cannot vouch for itself.
    pub(crate) async fn leaderless(&self) -> Option<(usize, Vec<u64>)> {
        let answers = self.handle.on_every_store(|store| {
            let ids: Vec<u64> = store.range_ids().collect();
            let missing: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|id| store.peer(*id).is_some_and(|p| p.knows_no_leader()))
                .collect();
            (ids.len(), missing)
        });
        let (mut hosted, mut missing) = (0, Vec::new());
        for answer in answers {
            let (n, m) = answer.await.ok()?;
            hosted += n;
            missing.extend(m);
        }
        missing.sort_unstable();
        Some((hosted, missing))
    }

    async fn cluster_info(&self) -> ClusterInfo {
        let nodes = self.members();
        ClusterInfo {
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
            nodes,
            ranges: self.ranges().await,
        }
    }

    pub(crate) async fn status(&self) -> NodeStatus {
        let ranges = self.ranges().await;
        NodeStatus {
            node_id: self.node_id,
            ranges: ranges.len() as u64,
            leaders: ranges
                .iter()
                .filter(|r| r.leader_node == self.node_id)
                .count() as u64,
            synced_writes: self.engine.synced_writes(),
            wal_syncs: self.engine.wal_syncs(),
            uptime_ms: self
                .started
                .elapsed()
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
        }
    }
}
