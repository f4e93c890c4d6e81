//! A whole node (DESIGN sections 2 and 7): its storage, its ranges run by the pollers, its
//! QUIC endpoint and its client service, assembled, bootstrapped and shut down.
//!
//! Bootstrap (like etcd's `initial-cluster`): a node whose data directory holds no range and
//! which is one of the initial members creates range 1 (the meta range, `["", 0x01)`) and range
//! 2 (every user key, `[0x01, +inf)`) with all initial members as voters, in one synced write.
//! Every initial member does the same, so the groups start identical and elect a leader. A
//! restart reloads every range from disk and ignores `initial-cluster`.

mod net;
mod placement;
mod probe;
mod service;

pub use self::probe::{NodeProbe, PeerState};
pub use self::service::NEMESIS_ENV;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_transport::meta::{RangeDescriptor, RangeEpoch, Replica, ReplicaRole};
use flotilla_transport::raft::{ConfState, SnapshotMetadata};
use flotilla_transport::service::{NodeStatus, RangeInfo};
use flotilla_transport::tls::TlsConfig;
use flotilla_transport::{Transport, TransportConfig, TransportError};

use self::net::{NodeSink, TransportNetwork};
use self::service::Service;
use crate::raft::Role;
use crate::storage::{keys, Engine, EngineConfig, EngineError, LogBatch, RangeLog};
use crate::store::{Runtime, RuntimeConfig, RuntimeError, RuntimeHandle};

/// The meta range: placement's state.
pub const META_RANGE: u64 = 1;
/// The range holding every user key after bootstrap.
pub const FIRST_USER_RANGE: u64 = 2;

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub engine: EngineConfig,
    pub transport: TransportConfig,
    pub runtime: RuntimeConfig,
    pub tls: TlsConfig,
    /// Every member of the cluster and where it listens (peers and clients alike).
    pub initial_cluster: BTreeMap<u64, SocketAddr>,
    /// How long a graceful shutdown waits for leaderships to move and requests to finish.
    pub shutdown_timeout: Duration,
    /// User ranges a new cluster starts with (a pre-split of the keyspace); 1 by default.
    pub initial_ranges: u32,
    /// Not an initial member: no bootstrap; the node receives its replicas from the cluster
    /// (replica changes) and the members learn its address by [`Node::add_peer`].
    pub join: bool,
    /// The placement task (active while this node leads the meta range).
    pub placement: flotilla_placement::PlacementConfig,
}

impl NodeConfig {
    /// Checks the settings together.
    ///
    /// # Errors
    /// A message naming the field that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        let node_id = self.transport.node_id;
        if node_id == 0 {
            return Err("node-id: must be at least 1".into());
        }
        if self.engine.node_id != node_id || self.runtime.node_id != node_id {
            return Err("node-id: storage, transport and runtime disagree".into());
        }
        if self.initial_cluster.is_empty() {
            return Err("initial-cluster: names no member".into());
        }
        if self.initial_cluster.contains_key(&0) {
            return Err("initial-cluster: node ids start at 1".into());
        }
        if !self.join && !self.initial_cluster.contains_key(&node_id) {
            return Err(format!(
                "initial-cluster: does not name this node ({node_id}); a node joining a \
                 running cluster sets join = true and lists members to reach"
            ));
        }
        if self.runtime.quiesce && self.runtime.raft.lease_reads {
            return Err(
                "raft.lease-reads: a quiet leader does not tick, so its lease cannot be \
                        trusted; turn off store.quiesce to use lease reads"
                    .into(),
            );
        }
        if self.initial_ranges == 0 || self.initial_ranges > MAX_INITIAL_RANGES {
            return Err(format!(
                "initial-ranges: between 1 and {MAX_INITIAL_RANGES}"
            ));
        }
        if self.runtime.max_snapshot_sends == 0 {
            return Err("max-snapshot-sends: must be at least 1".into());
        }
        if self.runtime.pollers == 0 {
            return Err("pollers: must be at least 1".into());
        }
        if self.runtime.tick.is_zero() {
            return Err("tick: must be positive".into());
        }
        // The template's id is set per replica.
        let raft = crate::raft::Config {
            id: 1,
            ..self.runtime.raft.clone()
        };
        raft.validate().map_err(|e| format!("raft: {e}"))?;
        self.runtime.kv.validate().map_err(|e| format!("kv: {e}"))?;
        self.placement.validate()?;
        self.transport.validate()
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Storage(#[from] EngineError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// What a graceful shutdown left behind when it stopped (both 0 unless it timed out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    pub leaders_left: u64,
    pub requests_left: u64,
}

/// A running node.
pub struct Node {
    node_id: u64,
    engine: Arc<Engine>,
    runtime: Option<Runtime>,
    transport: Transport,
    service: Arc<Service>,
    shutdown_timeout: Duration,
    /// Stops the placement heartbeats.
    heartbeats: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.node_id)
            .field("addr", &self.transport.local_addr())
            .finish_non_exhaustive()
    }
}

/// A bootstrapped range's log starts after this index (its state up to here is the empty
/// range, as if from a snapshot, like TiKV's initial index 5): a replica added later, whose
/// log is empty, cannot be sent entries from index 1 and gets a snapshot that creates it.
pub const BOOTSTRAP_LOG_INDEX: u64 = 5;
/// The term of [`BOOTSTRAP_LOG_INDEX`].
pub const BOOTSTRAP_LOG_TERM: u64 = 5;

/// Replica ids are unique cluster-wide; bootstrap derives them from range and node.
pub fn bootstrap_replica_id(range_id: u64, node_id: u64) -> u64 {
    (range_id << 32) | node_id
}

fn bootstrap_descriptor(
    range_id: u64,
    start: &[u8],
    end: &[u8],
    members: &[u64],
) -> RangeDescriptor {
    RangeDescriptor {
        id: range_id,
        start_key: start.to_vec().into(),
        end_key: end.to_vec().into(),
        epoch: Some(RangeEpoch {
            version: 1,
            conf_ver: 1,
        }),
        replicas: members
            .iter()
            .map(|&node_id| Replica {
                node_id,
                replica_id: bootstrap_replica_id(range_id, node_id),
                role: ReplicaRole::Voter as i32,
            })
            .collect(),
    }
}

/// The most user ranges a bootstrap creates.
pub const MAX_INITIAL_RANGES: u32 = 1 << 20;

/// The user ranges a bootstrap creates: `[0x01, +inf)` cut into `count` ranges at evenly
/// spaced key prefixes, two bytes up to 65,536 ranges and three beyond (a pre-split, for
/// clusters that know they will hold many ranges, and for measuring many ranges per node).
fn bootstrap_user_spans(count: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    let count = u64::from(count.clamp(1, MAX_INITIAL_RANGES));
    let width: u32 = if count <= 1 << 16 { 2 } else { 3 };
    let space = 1u64 << (8 * width);
    let boundary = |i: u64| -> Vec<u8> {
        if i == 0 {
            return vec![keys::USER_KEY_PREFIX];
        }
        let v = i * space / count;
        let mut k = vec![keys::USER_KEY_PREFIX];
        k.extend_from_slice(&v.to_be_bytes()[8 - width as usize..]);
        k
    };
    (0..count)
        .map(|i| {
            let end = if i + 1 == count {
                Vec::new()
            } else {
                boundary(i + 1)
            };
            (boundary(i), end)
        })
        .collect()
}

/// Creates range 1 and the user ranges (`user_ranges` of them, ids from 2) on a new member,
/// in one synced write. Returns whether it did.
///
/// # Errors
/// [`EngineError`] from the write.
pub fn bootstrap(engine: &Engine, members: &[u64], user_ranges: u32) -> Result<bool, EngineError> {
    if !engine.range_ids()?.is_empty() {
        return Ok(false);
    }
    let mut batch = LogBatch::new();
    let mut ranges = vec![(META_RANGE, Vec::new(), vec![keys::USER_KEY_PREFIX])];
    for (i, (start, end)) in bootstrap_user_spans(user_ranges).into_iter().enumerate() {
        ranges.push((FIRST_USER_RANGE + i as u64, start, end));
    }
    for (range_id, start, end) in ranges {
        let descriptor = bootstrap_descriptor(range_id, &start, &end, members);
        let initial = SnapshotMetadata {
            index: BOOTSTRAP_LOG_INDEX,
            term: BOOTSTRAP_LOG_TERM,
            conf_state: Some(ConfState {
                voters: descriptor.replicas.iter().map(|r| r.replica_id).collect(),
                ..ConfState::default()
            }),
        };
        RangeLog::create(engine, &mut batch, &descriptor, &initial)?;
    }
    batch.commit(engine)?;
    Ok(true)
}

impl Node {
    /// Opens (or bootstraps) the node's storage, starts its pollers, its endpoint and its
    /// service. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`NodeError`]; nothing keeps running then.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        config.validate().map_err(NodeError::Config)?;
        let node_id = config.transport.node_id;
        let engine = Engine::open(&config.engine)?;
        let members: Vec<u64> = config.initial_cluster.keys().copied().collect();
        if !config.join && bootstrap(&engine, &members, config.initial_ranges)? {
            tracing::info!(
                node = node_id,
                ?members,
                user_ranges = config.initial_ranges,
                "bootstrapped the meta range and the user ranges"
            );
        }
        // The transport needs the sink, the sink needs the runtime, the runtime needs the
        // network over the transport: the sink's half is filled in once the runtime runs.
        let late = Arc::new(LateSink::default());
        let transport = Transport::start(config.transport.clone(), &config.tls, late.clone())?;
        for (&id, &addr) in &config.initial_cluster {
            if id != node_id {
                transport.add_peer(id, addr);
            }
        }
        let members = Arc::new(parking_lot::RwLock::new(config.initial_cluster.clone()));
        let network = Arc::new(TransportNetwork {
            members: members.clone(),
            transport: transport.clone(),
            runtime: tokio::runtime::Handle::current(),
            handle: std::sync::OnceLock::new(),
            snapshot_sends: Arc::new(tokio::sync::Semaphore::new(
                config.runtime.max_snapshot_sends,
            )),
        });
        let runtime = match Runtime::start(engine.clone(), config.runtime.clone(), network.clone())
        {
            Ok(r) => r,
            Err(e) => {
                transport.shutdown().await;
                return Err(e.into());
            }
        };
        let service = Arc::new(Service {
            cluster_id: config.transport.cluster_id.clone(),
            node_id,
            addresses: members.clone(),
            handle: runtime.handle().clone(),
            engine: engine.clone(),
            accepting: AtomicBool::new(true),
            started: Instant::now(),
            placement: std::sync::OnceLock::new(),
            transport: parking_lot::RwLock::new(Some(transport.clone())),
        });
        let _ = network.handle.set(runtime.handle().clone());
        let _ = late.cell.set(Arc::new(NodeSink {
            node_id,
            handle: runtime.handle().clone(),
            service: service.clone(),
        }));
        // Placement acts through the client library, with this node's certificate (node
        // certificates also carry the client name).
        let local = Arc::new(placement::NodeLocal {
            node_id,
            engine: engine.clone(),
            handle: runtime.handle().clone(),
            transport: transport.clone(),
            service: service.clone(),
        });
        let client = flotilla_client::ClientConfig::new(
            config.transport.cluster_id.clone(),
            Vec::new(),
            config.tls.clone(),
        );
        let _ = service
            .placement
            .set(Arc::new(flotilla_placement::Placement::start(
                config.placement.clone(),
                client,
                local,
            )));
        let (heartbeats, stop_heartbeats) = tokio::sync::watch::channel(false);
        if config.join {
            // Where the others reach this node: its bound address (an unspecified listen
            // address has no use for them; name a reachable one in `listen`).
            let addr = transport.local_addr().unwrap_or(config.transport.listen);
            tokio::spawn(placement::register(
                service.clone(),
                transport.clone(),
                addr,
                stop_heartbeats.clone(),
            ));
        }
        if config.placement.enabled {
            tokio::spawn(placement::send_heartbeats(
                service.clone(),
                transport.clone(),
                config.placement.interval,
                stop_heartbeats,
            ));
        }
        tracing::info!(node = node_id, addr = ?transport.local_addr(), "node started");
        if cfg!(feature = "nemesis") && std::env::var_os(NEMESIS_ENV).is_some() {
            tracing::warn!(
                node = node_id,
                "FAULT INJECTION IS ON (a test build run with {NEMESIS_ENV}=1): any client \
                 can partition this node or crash it. Never run this in production."
            );
        }
        Ok(Self {
            node_id,
            engine,
            runtime: Some(runtime),
            transport,
            service,
            shutdown_timeout: config.shutdown_timeout,
            heartbeats,
        })
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.transport.local_addr()
    }

    /// Learns where node `node_id` listens (a node that joined after the initial members).
    pub fn add_peer(&self, node_id: u64, addr: SocketAddr) {
        self.service.learn_peer(node_id, addr);
    }

    /// A handle for the node's status port (what it hosts, which peers it hears).
    pub fn probe(&self) -> NodeProbe {
        NodeProbe {
            service: self.service.clone(),
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The runtime's handle (for tests and tools in the same process).
    pub fn handle(&self) -> Option<&RuntimeHandle> {
        self.runtime.as_ref().map(Runtime::handle)
    }

    /// The ranges this node hosts with their leaders as it knows them.
    pub async fn ranges(&self) -> Vec<RangeInfo> {
        self.service.ranges().await
    }

    pub async fn status(&self) -> NodeStatus {
        self.service.status().await
    }

    /// Whether the node halted (a storage failure or a panic in a poller): the process
    /// should exit and be restarted by its supervisor.
    pub fn is_halted(&self) -> bool {
        self.handle().is_none_or(RuntimeHandle::is_halted)
    }

    /// Hands every leadership of this node to another voter whose node is up. Returns how
    /// many leaderships the node holds and how many of them had somewhere to go, counted in
    /// the same pass (so a transfer that completes meanwhile is not miscounted); `None` when
    /// a poller did not answer by `deadline`.
    async fn transfer_leaderships(&self, deadline: Instant) -> Option<Leaderships> {
        let handle = self.handle()?;
        let transport = self.transport.clone();
        let me = self.node_id;
        let answers = handle.on_every_store(move |store| {
            let ids: Vec<u64> = store.range_ids().collect();
            let mut counts = Leaderships::default();
            for range_id in ids {
                store.wake(range_id);
                let Some(peer) = store.peer_mut(range_id) else {
                    continue;
                };
                if peer.raft().status().role != Role::Leader {
                    continue;
                }
                counts.leading += 1;
                // The most caught-up voter that is recently active and whose node is up.
                let voters: Vec<(u64, u64)> = peer
                    .applier()
                    .descriptor()
                    .replicas
                    .iter()
                    .filter(|r| {
                        r.node_id != me
                            && r.role == ReplicaRole::Voter as i32
                            && transport.is_up(r.node_id)
                    })
                    .map(|r| (r.replica_id, r.node_id))
                    .collect();
                // Recently active first (a follower that answered lately takes over fastest);
                // when check-quorum has just reset the flags, any voter on a node that is up.
                let target = peer
                    .raft()
                    .follower_progress()
                    .into_iter()
                    .filter(|(id, _, _)| voters.iter().any(|(v, _)| v == id))
                    .max_by_key(|(_, matched, active)| (*active, *matched))
                    .map(|(id, _, _)| id);
                if let Some(to) = target {
                    counts.movable += 1;
                    let _ = peer.raft().transfer_leader(to);
                }
            }
            counts
        });
        let mut total = Leaderships::default();
        for answer in answers {
            let counts = tokio::time::timeout_at(deadline.into(), answer)
                .await
                .ok()?
                .ok()?;
            total.leading += counts.leading;
            total.movable += counts.movable;
        }
        Some(total)
    }

    /// Stops gracefully: refuses new requests, hands leaderships away, lets requests in
    /// flight finish (within the shutdown timeout), stops the pollers and closes the endpoint.
    pub async fn shutdown(mut self) -> ShutdownReport {
        let deadline = Instant::now() + self.shutdown_timeout;
        // No new operators from a node on its way out (the next meta leader takes over).
        if let Some(placement) = self.service.placement.get() {
            placement.stop().await;
        }
        self.service.accepting.store(false, Ordering::Relaxed);
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        let report = loop {
            // A poller that does not answer counts as still leading, with nowhere to go.
            let counts = self
                .transfer_leaderships(deadline)
                .await
                .unwrap_or(Leaderships {
                    leading: u64::MAX,
                    movable: 0,
                });
            let pending = self.handle().map_or(0, RuntimeHandle::pending_requests);
            let done = counts.leading == 0 && pending == 0;
            // The last node up has nowhere to hand its leaderships: it only waits for requests.
            let stuck = counts.movable == 0 && pending == 0;
            let late = Instant::now() >= deadline;
            if done || stuck || late {
                if !done {
                    tracing::warn!(
                        node = self.node_id,
                        leaders = counts.leading,
                        pending,
                        "stopping with leaderships or requests left"
                    );
                }
                break ShutdownReport {
                    leaders_left: counts.leading,
                    requests_left: pending,
                };
            }
            poll.tick().await;
        };
        self.stop_now().await;
        report
    }

    /// Stops at once, as a crash would look to the rest of the cluster (what was not synced
    /// is the disk's business, not ours).
    pub async fn stop_now(&mut self) {
        self.service.accepting.store(false, Ordering::Relaxed);
        self.heartbeats.send_replace(true);
        if let Some(placement) = self.service.placement.get() {
            placement.stop().await;
        }
        if let Some(runtime) = self.runtime.take() {
            // Joining the pollers blocks: not on a runtime worker.
            let _ = tokio::task::spawn_blocking(move || runtime.stop()).await;
        }
        self.transport.shutdown().await;
        // Breaks the cycle transport -> sink -> service -> transport.
        *self.service.transport.write() = None;
        tracing::info!(node = self.node_id, "node stopped");
    }
}

/// Leaderships a node holds while it shuts down.
#[derive(Debug, Default, Clone, Copy)]
struct Leaderships {
    leading: u64,
    movable: u64,
}

/// A [`flotilla_transport::Sink`] whose target is set once the runtime is up; traffic that
/// comes before is dropped (Raft retries) or refused (`Unavailable`).
#[derive(Default)]
struct LateSink {
    cell: std::sync::OnceLock<Arc<NodeSink>>,
}

impl LateSink {
    fn get(&self) -> Option<&Arc<NodeSink>> {
        self.cell.get()
    }
}

impl flotilla_transport::Sink for LateSink {
    fn raft_messages(&self, from_node: u64, messages: Vec<flotilla_transport::wire::RangeMessage>) {
        if let Some(s) = self.get() {
            s.raft_messages(from_node, messages);
        }
    }

    fn peer_state(&self, node: u64, up: bool) {
        if let Some(s) = self.get() {
            s.peer_state(node, up);
        }
    }

    fn snapshot(
        &self,
        from_node: u64,
        range_id: u64,
        header: bytes::Bytes,
        chunks: flotilla_transport::SnapshotChunks,
    ) {
        if let Some(s) = self.get() {
            s.snapshot(from_node, range_id, header, chunks);
        }
    }

    fn rpc(
        &self,
        from_node: Option<u64>,
        method: String,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> flotilla_transport::BoxFuture<Result<bytes::Bytes, flotilla_transport::RpcStatus>> {
        match self.get() {
            Some(s) => s.rpc(from_node, method, body, timeout),
            None => Box::pin(async {
                Err(flotilla_transport::RpcStatus::new(
                    flotilla_transport::wire::RpcCode::Unavailable,
                    "the node is starting",
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_spans_cover_the_user_keyspace_without_gaps() {
        for count in [1u32, 2, 3, 7, 1000, 65_536, 65_537, 100_000] {
            let spans = bootstrap_user_spans(count);
            assert_eq!(spans.len(), count as usize);
            assert_eq!(spans[0].0, vec![keys::USER_KEY_PREFIX]);
            assert!(spans[spans.len() - 1].1.is_empty());
            for pair in spans.windows(2) {
                assert_eq!(pair[0].1, pair[1].0, "gap or overlap at {count}");
                assert!(pair[0].0 < pair[0].1, "empty range at {count}");
            }
        }
    }
}
