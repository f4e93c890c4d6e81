//! A cluster of in-process nodes over real QUIC on loopback, for the thesis' failure scenarios:
//! crash (stop at once) and restart from the same directory, partition (drop the Raft traffic
//! between chosen nodes), and a client. Every wait polls a condition against a deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_client::{Client, ClientConfig};
use flotilla_engine::kv::KvConfig;
use flotilla_engine::node::{Node, NodeConfig, FIRST_USER_RANGE};
use flotilla_engine::raft::Config as RaftConfig;
use flotilla_engine::storage::EngineConfig;
use flotilla_engine::store::RuntimeConfig;
use flotilla_transport::kv::{
    write_request, CommandHeader, GetRequest, PutRequest, RaftCommand, WriteRequest, WriteResponse,
};
use flotilla_transport::meta::RangeEpoch;
use flotilla_transport::service::{read_request, read_response, ReadConsistency, ReadRequest};
use flotilla_transport::tls::{ClusterCa, TlsConfig};
use flotilla_transport::{ClientEndpoint, TransportConfig};

pub const CLUSTER: &str = "scenarios";
/// Long enough for elections under a loaded CI machine, short enough for quick tests.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Cluster {
    _dir: tempfile::TempDir,
    configs: Vec<NodeConfig>,
    nodes: Vec<Option<Node>>,
    client_tls: TlsConfig,
}

#[path = "../common/ports.rs"]
mod ports;
use self::ports::free_port;

/// Polls `check` until it returns `Some`, or panics with `what` after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Cluster {
    pub async fn start(n: u64) -> Self {
        Self::start_with(n, |_| {}).await
    }

    /// A cluster whose node configs `configure` adjusts.
    ///
    /// `FLOTILLA_TEST_LOG=filter` (tracing's env-filter syntax) prints the nodes' logs.
    pub async fn start_with(n: u64, configure: impl Fn(&mut NodeConfig)) -> Self {
        Self::start_joining(n, 0, configure).await
    }

    /// `n` initial members and `joiners` more nodes (ids after theirs) that start with no
    /// range; the members know the joiners' addresses, so replicas can be added there.
    pub async fn start_joining(n: u64, joiners: u64, configure: impl Fn(&mut NodeConfig)) -> Self {
        Self::start_nodes(n, joiners, true, configure).await
    }

    /// [`Cluster::start_joining`] without telling the members where the joiners are: they
    /// register themselves (`placement.Join`) with the members their configuration names.
    pub async fn start_unannounced(
        n: u64,
        joiners: u64,
        configure: impl Fn(&mut NodeConfig),
    ) -> Self {
        Self::start_nodes(n, joiners, false, configure).await
    }

    async fn start_nodes(
        n: u64,
        joiners: u64,
        announce: bool,
        configure: impl Fn(&mut NodeConfig),
    ) -> Self {
        if let Ok(filter) = std::env::var("FLOTILLA_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate(CLUSTER).expect("ca");
        let everyone: BTreeMap<u64, SocketAddr> = (1..=n + joiners)
            .map(|id| (id, SocketAddr::from(([127, 0, 0, 1], free_port()))))
            .collect();
        let members: BTreeMap<u64, SocketAddr> = everyone
            .iter()
            .filter(|(id, _)| **id <= n)
            .map(|(k, v)| (*k, *v))
            .collect();
        let configs: Vec<NodeConfig> = everyone
            .iter()
            .map(|(&id, &addr)| {
                let mut runtime = RuntimeConfig::new(id);
                runtime.tick = Duration::from_millis(20);
                runtime.raft = RaftConfig {
                    seed: id,
                    ..RaftConfig::default()
                };
                runtime.kv = KvConfig {
                    max_value_bytes: 64 << 10,
                    ..KvConfig::default()
                };
                let mut transport = TransportConfig::new(CLUSTER, id, addr);
                transport.liveness_interval = Duration::from_millis(100);
                transport.down_after = Duration::from_millis(500);
                transport.reconnect_max = Duration::from_millis(200);
                transport.idle_timeout = Duration::from_secs(2);
                let mut config = NodeConfig {
                    engine: EngineConfig::new(dir.path().join(format!("n{id}")), CLUSTER, id),
                    transport,
                    runtime,
                    tls: ca.issue_node(id, &[]).expect("node cert"),
                    initial_cluster: if id <= n {
                        members.clone()
                    } else {
                        everyone.clone()
                    },
                    shutdown_timeout: Duration::from_secs(5),
                    initial_ranges: 1,
                    join: id > n,
                    // Tests that place replicas by hand must not have placement move them.
                    placement: flotilla_placement::PlacementConfig {
                        enabled: false,
                        ..flotilla_placement::PlacementConfig::default()
                    },
                };
                configure(&mut config);
                config
            })
            .collect();
        let mut cluster = Self {
            _dir: dir,
            nodes: configs.iter().map(|_| None).collect(),
            configs,
            client_tls: ca.issue_client().expect("client cert"),
        };
        for id in 1..=n + joiners {
            cluster.restart(id).await;
        }
        for joiner in (n + 1..=n + joiners).filter(|_| announce) {
            let addr = cluster.addr(joiner);
            for id in 1..=n {
                cluster.node(id).add_peer(joiner, addr);
            }
        }
        cluster
    }

    fn index(id: u64) -> usize {
        (id - 1) as usize
    }

    pub fn addr(&self, id: u64) -> SocketAddr {
        self.configs[Self::index(id)].transport.listen
    }

    pub fn ids(&self) -> Vec<u64> {
        (1..=self.configs.len() as u64).collect()
    }

    pub fn live(&self) -> Vec<u64> {
        self.ids()
            .into_iter()
            .filter(|id| self.nodes[Self::index(*id)].is_some())
            .collect()
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes[Self::index(id)]
            .as_ref()
            .expect("node is running")
    }

    /// Starts (or restarts) node `id` from its directory.
    pub async fn restart(&mut self, id: u64) {
        let config = self.configs[Self::index(id)].clone();
        // A stopped endpoint's socket lingers while its closed connections drain.
        let node = eventually(&format!("node {id} to start"), || async {
            match Node::start(config.clone()).await {
                Ok(node) => Some(node),
                Err(flotilla_engine::node::NodeError::Transport(
                    flotilla_transport::TransportError::Bind { .. },
                )) => None,
                // A crashed node's last background task (a snapshot being read for a peer)
                // may still hold its RocksDB for a moment.
                Err(e) if e.to_string().contains("lock hold by current process") => None,
                Err(e) => panic!("node {id} cannot start: {e}"),
            }
        })
        .await;
        self.nodes[Self::index(id)] = Some(node);
    }

    /// Stops node `id` at once, without handing anything over.
    pub async fn crash(&mut self, id: u64) {
        if let Some(mut node) = self.nodes[Self::index(id)].take() {
            node.stop_now().await;
        }
    }

    /// Stops node `id` gracefully (leaderships handed away, requests finished).
    pub async fn shutdown(&mut self, id: u64) -> flotilla_engine::node::ShutdownReport {
        let node = self.nodes[Self::index(id)].take().expect("node is running");
        node.shutdown().await
    }

    /// Reads `key` on node `id` at `consistency`, straight from its replica.
    pub async fn read_on(
        &self,
        id: u64,
        key: &str,
        consistency: ReadConsistency,
    ) -> Result<Option<Bytes>, flotilla_engine::store::RequestError> {
        let epoch = flotilla_transport::meta::RangeEpoch {
            version: 1,
            conf_ver: 1,
        };
        self.read_range_on(id, FIRST_USER_RANGE, epoch, key, consistency)
            .await
    }

    /// Reads `key` from node `id`'s replica of `range_id` at `epoch`.
    pub async fn read_range_on(
        &self,
        id: u64,
        range_id: u64,
        epoch: flotilla_transport::meta::RangeEpoch,
        key: &str,
        consistency: ReadConsistency,
    ) -> Result<Option<Bytes>, flotilla_engine::store::RequestError> {
        let request = ReadRequest {
            range_id,
            epoch: Some(epoch),
            consistency: consistency as i32,
            request: Some(read_request::Request::Get(GetRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
            })),
            max_staleness_ms: 0,
        };
        self.read_request_on(id, request, Duration::from_secs(5))
            .await
    }

    /// A bounded-staleness read of `key` (no older than `max_ms`) on node `id`'s replica of
    /// the first user range, answered within `timeout`.
    pub async fn read_stale_on(
        &self,
        id: u64,
        key: &str,
        max_ms: u64,
        timeout: Duration,
    ) -> Result<Option<Bytes>, flotilla_engine::store::RequestError> {
        let request = ReadRequest {
            range_id: FIRST_USER_RANGE,
            epoch: Some(RangeEpoch {
                version: 1,
                conf_ver: 1,
            }),
            consistency: ReadConsistency::Stale as i32,
            request: Some(read_request::Request::Get(GetRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
            })),
            max_staleness_ms: max_ms,
        };
        self.read_request_on(id, request, timeout).await
    }

    async fn read_request_on(
        &self,
        id: u64,
        request: ReadRequest,
        timeout: Duration,
    ) -> Result<Option<Bytes>, flotilla_engine::store::RequestError> {
        let handle = self.node(id).handle().expect("running").clone();
        let answer = handle
            .read(request, Instant::now() + timeout)
            .await
            .map_err(|_| flotilla_engine::store::RequestError::Unavailable("no answer".into()))?;
        let answer = answer?;
        match answer {
            read_response::Response::Get(g) => Ok(g.kv.map(|kv| kv.value)),
            other => panic!("a get answered {other:?}"),
        }
    }

    /// Cuts the Raft traffic between `side` and every other node, both ways.
    pub fn partition(&self, side: &[u64]) {
        for id in self.live() {
            let others: Vec<u64> = if side.contains(&id) {
                self.ids()
                    .into_iter()
                    .filter(|o| !side.contains(o))
                    .collect()
            } else {
                side.to_vec()
            };
            self.node(id).transport().partition(&others);
        }
    }

    pub fn heal(&self) {
        for id in self.live() {
            self.node(id).transport().partition(&[]);
        }
    }

    /// The leader of `range_id` that the live nodes other than `excluding` agree on.
    pub async fn leader(&self, range_id: u64, excluding: &[u64]) -> Option<u64> {
        let mut seen = None;
        for id in self.live().into_iter().filter(|i| !excluding.contains(i)) {
            let ranges = self.node(id).ranges().await;
            let leader = ranges
                .iter()
                .find(|r| r.descriptor.as_ref().is_some_and(|d| d.id == range_id))
                .map(|r| r.leader_node)?;
            if leader == 0 || excluding.contains(&leader) || seen.is_some_and(|s| s != leader) {
                return None;
            }
            seen = Some(leader);
        }
        seen
    }

    /// The leader of every range as the live nodes other than `excluding` agree on it, once
    /// they all agree; `None` while any range has no agreed leader.
    pub async fn all_leaders(
        &self,
        excluding: &[u64],
    ) -> Option<std::collections::BTreeMap<u64, u64>> {
        let mut agreed: Option<std::collections::BTreeMap<u64, u64>> = None;
        for id in self.live().into_iter().filter(|i| !excluding.contains(i)) {
            let view: std::collections::BTreeMap<u64, u64> = self
                .node(id)
                .ranges()
                .await
                .into_iter()
                .filter_map(|r| Some((r.descriptor?.id, r.leader_node)))
                .collect();
            if view.values().any(|l| *l == 0 || excluding.contains(l)) {
                return None;
            }
            match &agreed {
                Some(a) if *a != view => return None,
                _ => agreed = Some(view),
            }
        }
        agreed
    }

    /// Whether node `id`'s replica of `range_id` is quiet.
    pub async fn is_quiet(&self, id: u64, range_id: u64) -> bool {
        let handle = self.node(id).handle().expect("running").clone();
        for answer in handle.on_every_store(move |s| s.is_quiet(range_id)) {
            if answer.await.unwrap_or(false) {
                return true;
            }
        }
        false
    }

    /// Waits until every live node's replica of `range_id` is quiet.
    pub async fn wait_quiet(&self, range_id: u64) {
        eventually(
            &format!("range {range_id} to go quiet everywhere"),
            || async {
                for id in self.live() {
                    if !self.is_quiet(id, range_id).await {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
    }

    /// The leader of `range_id` as node `id` knows it.
    pub async fn leader_seen_by(&self, id: u64, range_id: u64) -> Option<u64> {
        self.node(id)
            .ranges()
            .await
            .iter()
            .find(|r| r.descriptor.as_ref().is_some_and(|d| d.id == range_id))
            .map(|r| r.leader_node)
            .filter(|l| *l != 0)
    }

    pub async fn wait_leader(&self, excluding: &[u64]) -> u64 {
        eventually("a leader of the user range", || {
            self.leader(FIRST_USER_RANGE, excluding)
        })
        .await
    }

    pub fn client_config(&self) -> ClientConfig {
        let endpoints = self.ids().into_iter().map(|id| self.addr(id)).collect();
        let mut config = ClientConfig::new(CLUSTER, endpoints, self.client_tls.clone());
        config.deadline = DEADLINE;
        config.attempt_timeout = Duration::from_millis(500);
        config
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.client_config())
            .await
            .expect("client connects")
    }

    /// A raw RPC endpoint, for requests the client library would never send.
    pub fn raw(&self) -> ClientEndpoint {
        ClientEndpoint::new(
            CLUSTER,
            &self.client_tls,
            "127.0.0.1:0".parse().expect("addr"),
        )
        .expect("endpoint")
    }

    /// What node `id` has applied for `key`, without asking anyone (a stale read).
    pub async fn local_value(&self, id: u64, key: &str) -> Option<Bytes> {
        self.read_on(id, key, ReadConsistency::Stale)
            .await
            .expect("a stale read is served")
    }

    /// Waits until node `id` has applied `key = value`.
    pub async fn wait_value(&self, id: u64, key: &str, value: &str) {
        eventually(&format!("node {id} to apply {key} = {value}"), || async {
            (self.local_value(id, key).await.as_deref() == Some(value.as_bytes())).then_some(())
        })
        .await;
    }

    /// Waits until node `id` deleted its replica of `range_id` and left a tombstone.
    pub async fn wait_replica_deleted(&self, id: u64, range_id: u64) {
        eventually(
            &format!("node {id} to delete its replica of range {range_id}"),
            || async {
                let engine = self.node(id).engine();
                let deleted = engine.descriptor(range_id).ok()?.is_none();
                (deleted && engine.tombstone(range_id).ok()?.is_some()).then_some(())
            },
        )
        .await;
    }

    /// Proposes a write straight to node `id`'s replica (no routing, no retry).
    pub async fn propose_on(
        &self,
        id: u64,
        command: RaftCommand,
        timeout: Duration,
    ) -> Result<WriteResponse, flotilla_engine::store::RequestError> {
        let handle = self.node(id).handle().expect("running").clone();
        handle
            .write(command, Instant::now() + timeout)
            .await
            .expect("answered")
    }

    pub async fn stop_all(&mut self) {
        for id in self.ids() {
            self.crash(id).await;
        }
    }
}

/// A put of `key` in the first user range at its bootstrap epoch, as a raw command with the
/// session `(client_id, seq)`.
pub fn put_command(key: &str, value: &str, client_id: u64, seq: u64) -> RaftCommand {
    RaftCommand {
        header: Some(CommandHeader {
            range_id: FIRST_USER_RANGE,
            epoch: Some(RangeEpoch {
                version: 1,
                conf_ver: 1,
            }),
            client_id,
            seq,
            first_unacked_seq: seq,
            session_start_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis() as u64,
            proposed_at_ms: 0,
        }),
        request: Some(WriteRequest {
            request: Some(write_request::Request::Put(PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::copy_from_slice(value.as_bytes()),
                prev_kv: false,
            })),
        }),
        admin: None,
    }
}

/// Client workers putting unique values and reading them back on a few keys, every operation
/// recorded for the linearizability checker (call and return on one logical clock).
pub struct Load {
    history:
        std::sync::Arc<parking_lot::Mutex<Vec<flotilla_engine::check::linearizability::Operation>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `workers` workers over keys `<prefix>0..<prefix>4`, alternating puts and gets.
    pub fn start(client: std::sync::Arc<Client>, prefix: &str, workers: u64) -> Self {
        use flotilla_engine::check::linearizability::{OpKind, Operation};
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let clock = Arc::new(AtomicU64::new(0));
        let history = Arc::new(parking_lot::Mutex::new(Vec::<Operation>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..workers)
            .map(|worker| {
                let (client, clock, history, stop) =
                    (client.clone(), clock.clone(), history.clone(), stop.clone());
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let key = (n * 7 + worker) % 5;
                        let name = format!("{prefix}{key}");
                        let call = clock.fetch_add(1, Ordering::SeqCst);
                        if n.is_multiple_of(2) {
                            let value = worker << 32 | n;
                            let result = client.put(name.as_str(), value.to_string()).await;
                            let ret = result.is_ok().then(|| clock.fetch_add(1, Ordering::SeqCst));
                            history.lock().push(Operation {
                                client: worker,
                                key,
                                kind: OpKind::Put { value },
                                call,
                                ret,
                            });
                        } else if let Ok(got) = client.get(name.as_str()).await {
                            let ret = clock.fetch_add(1, Ordering::SeqCst);
                            let observed = got.map(|v| {
                                std::str::from_utf8(&v.value)
                                    .ok()
                                    .and_then(|s| s.parse::<u64>().ok())
                                    .expect("values are numbers")
                            });
                            history.lock().push(Operation {
                                client: worker,
                                key,
                                kind: OpKind::Get { observed },
                                call,
                                ret: Some(ret),
                            });
                        }
                    }
                })
            })
            .collect();
        Self {
            history,
            stop,
            workers: handles,
        }
    }

    /// Operations recorded so far.
    pub fn len(&self) -> usize {
        self.history.lock().len()
    }

    /// Waits until `more` operations past the current count are recorded.
    pub async fn wait_for_more(&self, more: usize, what: &str) {
        let before = self.len();
        eventually(what, || async {
            (self.len() >= before + more).then_some(())
        })
        .await;
    }

    /// Stops the workers and checks the history: linearizable, with at least `min_ops`.
    pub async fn stop_and_check(self, min_ops: usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in self.workers {
            w.await.expect("worker");
        }
        let history = self.history.lock().clone();
        let stats = flotilla_engine::check::linearizability::check(&history, 1_000_000)
            .unwrap_or_else(|e| panic!("history of {} operations: {e:?}", history.len()));
        assert!(stats.ops >= min_ops, "{stats:?}");
    }
}
