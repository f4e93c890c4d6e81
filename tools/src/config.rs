//! `flotilla.toml`: the server's settings, every one with a default (DESIGN sections 11, 12).
//! `DEFAULT_CONFIG` is the documented file `flotilla config` prints; a test keeps it equal to
//! the defaults in code.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use flotilla_engine::kv::KvConfig;
use flotilla_engine::node::NodeConfig;
use flotilla_engine::raft::Config as RaftConfig;
use flotilla_engine::storage::EngineConfig;
use flotilla_engine::store::RuntimeConfig;
use flotilla_transport::tls::TlsConfig;
use flotilla_transport::TransportConfig;
use serde::{Deserialize, Serialize};

/// The documented default configuration.
pub const DEFAULT_CONFIG: &str = r#"# flotilla.toml: the settings of one node. Every value shown is the default.
# Flags of `flotilla server` override the file (see `flotilla server --help`).

# The cluster's name: part of every certificate name; a node or client of another cluster is
# refused. 1-63 lowercase letters, digits and '-'.
cluster-id = "flotilla"
# This node's id (>= 1), unique in the cluster. Required.
node-id = 0
# Where this node keeps its data (one RocksDB instance for all its ranges).
data-dir = "./data"
# The address peers and clients reach this node at (QUIC, UDP).
listen = "127.0.0.1:7001"
# Every initial member as `id=host:port`, comma-separated (like etcd's --initial-cluster). A
# node with an empty data directory that is named here creates ranges 1 and 2 with all of them.
initial-cluster = ""
# User ranges a new cluster starts with: the keyspace pre-split at evenly spaced key prefixes
# (two bytes up to 65536 ranges, three beyond; at most 1048576). Must be the same on every
# initial member; ignored after bootstrap.
initial-ranges = 1
# Not an initial member: start with no range, register this node's address with the members
# `initial-cluster` names (any of them suffices), and receive replicas from placement (or an
# operator's `replica add`). The node id must be new to the cluster and named by this node's
# certificate (`flotilla certs create --nodes N` adds the certificates up to node N).
join = false
# Where Prometheus scrapes this node's metrics (HTTP); empty: no metrics endpoint.
metrics-addr = ""
# Log filter (tracing's env-filter syntax; RUST_LOG overrides) and format: "text" or "json".
log-filter = "info"
log-format = "text"

[tls]
# The cluster CA certificate, this node's certificate and its private key (PEM files), as
# written by `flotilla certs` or `flotilla cluster up`. Required.
ca = ""
cert = ""
key = ""

[raft]
# The Raft tick. Elections, heartbeats and leases are counted in ticks.
tick-ms = 100
# A follower campaigns after a random timeout in [t, 2t) ticks without a leader.
election-timeout-ticks = 10
heartbeat-interval-ticks = 1
pre-vote = true
check-quorum = true
# Serve linearizable reads from the leader's lease without a heartbeat round.
lease-reads = false
max-inflight-msgs = 32
max-size-per-msg-bytes = 1048576
max-uncommitted-size-bytes = 67108864

[store]
# Poller threads: each runs a share of the ranges, with one synced write per round.
pollers = 2
# Commands a poller's mailbox holds; beyond, Raft messages are dropped and requests refused
# with SERVER_BUSY.
mailbox-capacity = 65536
max-pending-requests = 65536
snapshot-chunk-bytes = 1048576
# Snapshots this node builds and streams at once (each holds a whole range in memory).
max-snapshot-sends = 4
# Log GC: a range keeping more applied log entries than this releases them; a follower that
# falls further behind catches up by snapshot.
log-gc-threshold-entries = 10000
# Quiesce idle ranges: no ticks and no heartbeats until traffic returns; node liveness wakes
# the followers of a leader whose node went down, at most max-wakeups-per-tick ranges a tick.
quiesce = true
max-wakeups-per-tick = 1000
# A range splits at its middle key once its data passes this size (0: never).
split-size-bytes = 67108864
entry-cache-bytes = 268435456
entry-cache-bytes-per-range = 4194304
# How long a graceful shutdown (SIGTERM) waits for leaderships to move away.
shutdown-timeout-ms = 5000

[kv]
# Must be the same on every node.
max-key-bytes = 8192
max-value-bytes = 8388608
max-txn-ops = 128
session-ttl-ms = 3600000
max-clock-skew-ms = 60000

[placement]
# Runs on the node that leads the meta range: balances leaders and replicas, re-creates the
# replicas of a node down longer than down-time-ms, drains decommissioned nodes.
enabled = true
interval-ms = 1000
# Voters per range.
replicas = 3
down-time-ms = 30000
# Split a range whose leader serves more requests per second than this (0: never).
split-qps = 0.0
# Operators at once in the cluster, and touching one node.
max-operators = 16
max-operators-per-node = 4
operator-timeout-ms = 60000
# A range is not moved for balance again within this time after an operator on it.
cooldown-ms = 10000
"#;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ServerConfig {
    pub cluster_id: String,
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub listen: String,
    pub initial_cluster: String,
    pub initial_ranges: u32,
    pub join: bool,
    pub metrics_addr: String,
    pub log_filter: String,
    pub log_format: String,
    pub tls: TlsFiles,
    pub raft: RaftSection,
    pub store: StoreSection,
    pub kv: KvSection,
    pub placement: PlacementSection,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct PlacementSection {
    pub enabled: bool,
    pub interval_ms: u64,
    pub replicas: usize,
    pub down_time_ms: u64,
    pub split_qps: f64,
    pub max_operators: usize,
    pub max_operators_per_node: usize,
    pub operator_timeout_ms: u64,
    pub cooldown_ms: u64,
}

impl Default for PlacementSection {
    fn default() -> Self {
        let d = flotilla_placement::PlacementConfig::default();
        let ms = |t: Duration| t.as_millis() as u64;
        Self {
            enabled: d.enabled,
            interval_ms: ms(d.interval),
            replicas: d.policy.replicas,
            down_time_ms: ms(d.policy.down_time),
            split_qps: d.policy.split_qps,
            max_operators: d.scheduler.max_operators,
            max_operators_per_node: d.scheduler.max_operators_per_node,
            operator_timeout_ms: ms(d.scheduler.operator_timeout),
            cooldown_ms: ms(d.scheduler.cooldown),
        }
    }
}

impl PlacementSection {
    fn to_config(&self) -> flotilla_placement::PlacementConfig {
        let d = flotilla_placement::PlacementConfig::default();
        flotilla_placement::PlacementConfig {
            enabled: self.enabled,
            interval: Duration::from_millis(self.interval_ms),
            policy: flotilla_placement::PolicyConfig {
                replicas: self.replicas,
                down_time: Duration::from_millis(self.down_time_ms),
                split_qps: self.split_qps,
                ..d.policy
            },
            scheduler: flotilla_placement::SchedulerConfig {
                max_operators: self.max_operators,
                max_operators_per_node: self.max_operators_per_node,
                operator_timeout: Duration::from_millis(self.operator_timeout_ms),
                cooldown: Duration::from_millis(self.cooldown_ms),
            },
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RaftSection {
    pub tick_ms: u64,
    pub election_timeout_ticks: u64,
    pub heartbeat_interval_ticks: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub lease_reads: bool,
    pub max_inflight_msgs: usize,
    pub max_size_per_msg_bytes: u64,
    pub max_uncommitted_size_bytes: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct StoreSection {
    pub pollers: usize,
    pub mailbox_capacity: usize,
    pub max_pending_requests: usize,
    pub snapshot_chunk_bytes: usize,
    pub max_snapshot_sends: usize,
    pub log_gc_threshold_entries: u64,
    pub quiesce: bool,
    pub max_wakeups_per_tick: usize,
    pub split_size_bytes: u64,
    pub entry_cache_bytes: u64,
    pub entry_cache_bytes_per_range: u64,
    pub shutdown_timeout_ms: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct KvSection {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_txn_ops: usize,
    pub session_ttl_ms: u64,
    pub max_clock_skew_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            cluster_id: "flotilla".into(),
            node_id: 0,
            data_dir: "./data".into(),
            listen: "127.0.0.1:7001".into(),
            initial_cluster: String::new(),
            initial_ranges: 1,
            join: false,
            metrics_addr: String::new(),
            log_filter: "info".into(),
            log_format: "text".into(),
            tls: TlsFiles::default(),
            raft: RaftSection::default(),
            store: StoreSection::default(),
            kv: KvSection::default(),
            placement: PlacementSection::default(),
        }
    }
}

impl Default for RaftSection {
    fn default() -> Self {
        let d = RaftConfig::default();
        Self {
            tick_ms: 100,
            election_timeout_ticks: d.election_timeout_ticks,
            heartbeat_interval_ticks: d.heartbeat_interval_ticks,
            pre_vote: d.pre_vote,
            check_quorum: d.check_quorum,
            lease_reads: d.lease_reads,
            max_inflight_msgs: d.max_inflight_msgs,
            max_size_per_msg_bytes: d.max_size_per_msg_bytes,
            max_uncommitted_size_bytes: d.max_uncommitted_size_bytes,
        }
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        let r = RuntimeConfig::new(1);
        let e = EngineConfig::new("", "", 1);
        Self {
            pollers: r.pollers,
            mailbox_capacity: r.mailbox_capacity,
            max_pending_requests: r.max_pending_requests,
            snapshot_chunk_bytes: r.snapshot_chunk_bytes,
            max_snapshot_sends: r.max_snapshot_sends,
            log_gc_threshold_entries: r.log_gc_threshold_entries,
            quiesce: r.quiesce,
            max_wakeups_per_tick: r.max_wakeups_per_tick,
            split_size_bytes: r.split_size_bytes,
            entry_cache_bytes: e.entry_cache_bytes,
            entry_cache_bytes_per_range: e.entry_cache_bytes_per_range,
            shutdown_timeout_ms: 5000,
        }
    }
}

impl Default for KvSection {
    fn default() -> Self {
        let k = KvConfig::default();
        Self {
            max_key_bytes: k.max_key_bytes,
            max_value_bytes: k.max_value_bytes,
            max_txn_ops: k.max_txn_ops,
            session_ttl_ms: k.session_ttl_ms,
            max_clock_skew_ms: k.max_clock_skew_ms,
        }
    }
}

/// Parses `1=127.0.0.1:7001,2=127.0.0.1:7002`.
///
/// # Errors
/// A message naming the bad entry.
pub fn parse_initial_cluster(s: &str) -> anyhow::Result<BTreeMap<u64, SocketAddr>> {
    let mut members = BTreeMap::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry
            .split_once('=')
            .ok_or_else(|| anyhow!("initial-cluster: {entry:?} is not id=host:port"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|e| anyhow!("initial-cluster: node id {id:?}: {e}"))?;
        let addr: SocketAddr = addr
            .trim()
            .parse()
            .map_err(|e| anyhow!("initial-cluster: address {addr:?}: {e}"))?;
        if members.insert(id, addr).is_some() {
            bail!("initial-cluster: node {id} named twice");
        }
    }
    Ok(members)
}

fn read_file(path: &Path, field: &str) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str().is_empty() {
        bail!("{field}: required (a PEM file)");
    }
    std::fs::read(path).with_context(|| format!("{field}: cannot read {}", path.display()))
}

impl ServerConfig {
    /// Reads a config file; unknown fields are errors.
    ///
    /// # Errors
    /// A message naming the file and the bad field.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    /// The node's settings, validated; file paths relative to `base` (the config file's
    /// directory).
    ///
    /// # Errors
    /// A message naming the field that cannot work.
    /// The node's TLS identity from the `[tls]` files (relative to `base`).
    ///
    /// # Errors
    /// A file that cannot be read or parsed, named.
    pub fn tls_config(&self, base: &Path) -> anyhow::Result<TlsConfig> {
        let resolve = |p: &Path| {
            if p.is_relative() {
                base.join(p)
            } else {
                p.to_path_buf()
            }
        };
        TlsConfig::from_pem(
            &read_file(&resolve(&self.tls.ca), "tls.ca")?,
            &read_file(&resolve(&self.tls.cert), "tls.cert")?,
            &read_file(&resolve(&self.tls.key), "tls.key")?,
        )
        .map_err(|e| anyhow!("tls: {e}"))
    }

    pub fn node_config(&self, base: &Path) -> anyhow::Result<NodeConfig> {
        if self.node_id == 0 {
            bail!("node-id: required (>= 1)");
        }
        let listen: SocketAddr = self
            .listen
            .parse()
            .map_err(|e| anyhow!("listen: {:?}: {e}", self.listen))?;
        let initial_cluster = parse_initial_cluster(&self.initial_cluster)?;
        let resolve = |p: &Path| {
            if p.is_relative() {
                base.join(p)
            } else {
                p.to_path_buf()
            }
        };
        let tls = self.tls_config(base)?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!(
                "log-format: {:?} is neither \"text\" nor \"json\"",
                self.log_format
            );
        }
        if self.raft.tick_ms == 0 {
            bail!("raft.tick-ms: must be positive");
        }
        let raft = RaftConfig {
            election_timeout_ticks: self.raft.election_timeout_ticks,
            heartbeat_interval_ticks: self.raft.heartbeat_interval_ticks,
            pre_vote: self.raft.pre_vote,
            check_quorum: self.raft.check_quorum,
            lease_reads: self.raft.lease_reads,
            max_inflight_msgs: self.raft.max_inflight_msgs,
            max_size_per_msg_bytes: self.raft.max_size_per_msg_bytes,
            max_uncommitted_size_bytes: self.raft.max_uncommitted_size_bytes,
            seed: self.node_id,
            ..RaftConfig::default()
        };
        let kv = KvConfig {
            max_key_bytes: self.kv.max_key_bytes,
            max_value_bytes: self.kv.max_value_bytes,
            max_txn_ops: self.kv.max_txn_ops,
            session_ttl_ms: self.kv.session_ttl_ms,
            max_clock_skew_ms: self.kv.max_clock_skew_ms,
            ..KvConfig::default()
        };
        let mut runtime = RuntimeConfig::new(self.node_id);
        runtime.raft = raft;
        runtime.kv = kv;
        runtime.tick = Duration::from_millis(self.raft.tick_ms);
        runtime.pollers = self.store.pollers;
        runtime.mailbox_capacity = self.store.mailbox_capacity;
        runtime.max_pending_requests = self.store.max_pending_requests;
        runtime.snapshot_chunk_bytes = self.store.snapshot_chunk_bytes;
        runtime.max_snapshot_sends = self.store.max_snapshot_sends;
        runtime.log_gc_threshold_entries = self.store.log_gc_threshold_entries;
        runtime.quiesce = self.store.quiesce;
        runtime.max_wakeups_per_tick = self.store.max_wakeups_per_tick;
        runtime.split_size_bytes = self.store.split_size_bytes;
        let mut engine = EngineConfig::new(
            resolve(&self.data_dir),
            self.cluster_id.clone(),
            self.node_id,
        );
        engine.entry_cache_bytes = self.store.entry_cache_bytes;
        engine.entry_cache_bytes_per_range = self.store.entry_cache_bytes_per_range;
        let config = NodeConfig {
            engine,
            transport: TransportConfig::new(self.cluster_id.clone(), self.node_id, listen),
            runtime,
            tls,
            initial_cluster,
            shutdown_timeout: Duration::from_millis(self.store.shutdown_timeout_ms),
            initial_ranges: self.initial_ranges,
            join: self.join,
            placement: self.placement.to_config(),
        };
        config.validate().map_err(|e| anyhow!("{e}"))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let parsed: ServerConfig = toml::from_str(DEFAULT_CONFIG).expect("parses");
        assert_eq!(parsed, ServerConfig::default());
    }

    #[test]
    fn an_unknown_field_is_named() {
        let e = toml::from_str::<ServerConfig>("node-id = 1\n[raft]\ntick = 5\n")
            .expect_err("unknown field");
        assert!(e.to_string().contains("tick"), "{e}");
    }

    #[test]
    fn a_bad_member_is_named() {
        let e = parse_initial_cluster("1=127.0.0.1:7001,2=nowhere").expect_err("bad");
        assert!(e.to_string().contains("nowhere"), "{e}");
        assert!(parse_initial_cluster("1=127.0.0.1:1,1=127.0.0.1:2").is_err());
        let ok = parse_initial_cluster("1=127.0.0.1:7001, 2=127.0.0.1:7002").expect("ok");
        assert_eq!(ok.len(), 2);
    }

    #[test]
    fn a_missing_node_id_is_named() {
        let e = ServerConfig::default()
            .node_config(Path::new("."))
            .expect_err("no node id");
        assert!(e.to_string().contains("node-id"), "{e}");
    }
}
