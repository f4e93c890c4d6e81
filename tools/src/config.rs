//! `flotilla.toml`: the server's settings, every one with a default (DESIGN sections 11, 12).
//! `DEFAULT_CONFIG` is the documented file `flotilla config` prints, shipped as
//! `deploy/flotilla.toml`; a test keeps it equal to the defaults in code.

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
pub const DEFAULT_CONFIG: &str = include_str!("../../deploy/flotilla.toml");

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
    /// Formerly `metrics-addr`, still read under that name.
    #[serde(alias = "metrics-addr")]
    pub status_addr: String,
    pub log_filter: String,
    pub log_format: String,
    pub slow_request_ms: u64,
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
            status_addr: String::new(),
            log_filter: "info".into(),
            log_format: "text".into(),
            slow_request_ms: RuntimeConfig::new(1).slow_request.as_millis() as u64,
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

/// Resolves `host:port` (or an address), preferring an address of the family `like` has (a
/// node listening on IPv4 dials its peers over IPv4 even where a name also has IPv6).
pub fn resolve_addr(addr: &str, like: Option<SocketAddr>) -> Option<SocketAddr> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Some(a);
    }
    use std::net::ToSocketAddrs as _;
    let all: Vec<SocketAddr> = addr.to_socket_addrs().ok()?.collect();
    let same_family = |a: &SocketAddr| like.is_none_or(|l| l.is_ipv4() == a.is_ipv4());
    all.iter()
        .copied()
        .find(same_family)
        .or_else(|| all.first().copied())
}

/// `initial-cluster` split into `(id, host:port)` entries.
///
/// # Errors
/// A message naming the bad entry.
pub fn initial_entries(s: &str) -> Result<Vec<(u64, String)>, InitialClusterError> {
    let mut entries: Vec<(u64, String)> = Vec::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |why: String| InitialClusterError::Invalid(format!("initial-cluster: {why}"));
        let (id, addr) = entry
            .split_once('=')
            .ok_or_else(|| bad(format!("{entry:?} is not id=host:port")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|e| bad(format!("node id {id:?}: {e}")))?;
        let addr = addr.trim();
        if addr.parse::<SocketAddr>().is_err() {
            let port_ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(bad(format!("address {addr:?}: not host:port")));
            }
        }
        if entries.iter().any(|(other, _)| *other == id) {
            return Err(bad(format!("node {id} named twice")));
        }
        entries.push((id, addr.to_string()));
    }
    Ok(entries)
}

/// Parses `1=127.0.0.1:7001,2=flotilla-1.flotilla:7001`: addresses or host names, resolved now
/// (preferring `like`'s address family). With `skip_unresolved` (a restart: the members are
/// known from disk, only their addresses are needed) a name that does not resolve is left
/// out, to be found later; else it is an error.
///
/// # Errors
/// A message naming the bad entry; [`InitialClusterError::Unresolved`] for a host name that
/// does not resolve (yet: in a StatefulSet a peer's name appears once its pod starts).
pub fn parse_initial_cluster(
    s: &str,
    like: Option<SocketAddr>,
    skip_unresolved: bool,
) -> Result<BTreeMap<u64, SocketAddr>, InitialClusterError> {
    let mut members = BTreeMap::new();
    for (id, addr) in initial_entries(s)? {
        match resolve_addr(&addr, like) {
            Some(a) => {
                members.insert(id, a);
            }
            None if skip_unresolved => {
                tracing::warn!(node = id, host = %addr, "a member's name does not resolve yet");
            }
            None => return Err(InitialClusterError::Unresolved(addr)),
        }
    }
    Ok(members)
}

/// The members of `initial-cluster` named by host name rather than address: `(id, host:port)`.
pub fn named_members(s: &str) -> Vec<(u64, String)> {
    initial_entries(s)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, addr)| addr.parse::<SocketAddr>().is_err())
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum InitialClusterError {
    #[error("{0}")]
    Invalid(String),
    #[error("initial-cluster: host {0:?} does not resolve")]
    Unresolved(String),
}

/// `p` as given when absolute, else under `base` (the config file's directory).
fn relative_to(base: &Path, p: &Path) -> PathBuf {
    if p.is_relative() {
        base.join(p)
    } else {
        p.to_path_buf()
    }
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

    /// The node's TLS identity from the `[tls]` files (relative to `base`).
    ///
    /// # Errors
    /// A file that cannot be read or parsed, named.
    pub fn tls_config(&self, base: &Path) -> anyhow::Result<TlsConfig> {
        let resolve = |p: &Path| relative_to(base, p);
        TlsConfig::from_pem(
            &read_file(&resolve(&self.tls.ca), "tls.ca")?,
            &read_file(&resolve(&self.tls.cert), "tls.cert")?,
            &read_file(&resolve(&self.tls.key), "tls.key")?,
        )
        .map_err(|e| anyhow!("tls: {e}"))
    }

    /// The checks that need neither the files it names nor name resolution.
    ///
    /// # Errors
    /// A message naming the field that cannot work.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.node_id == 0 {
            bail!("node-id: required (>= 1)");
        }
        self.listen
            .parse::<SocketAddr>()
            .map_err(|e| anyhow!("listen: {:?}: {e}", self.listen))?;
        if !self.status_addr.is_empty() {
            self.status_addr
                .parse::<SocketAddr>()
                .map_err(|e| anyhow!("status-addr: {:?}: {e}", self.status_addr))?;
        }
        initial_entries(&self.initial_cluster)?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!(
                "log-format: {:?} is neither \"text\" nor \"json\"",
                self.log_format
            );
        }
        if self.raft.tick_ms == 0 {
            bail!("raft.tick-ms: must be positive");
        }
        Ok(())
    }

    /// Whether the data directory holds a node already (a restart, not a first start).
    pub fn has_data(&self, base: &Path) -> bool {
        relative_to(base, &self.data_dir).join("CURRENT").exists()
    }

    /// The node's settings, validated; file paths relative to `base` (the config file's
    /// directory).
    ///
    /// # Errors
    /// A message naming the field that cannot work.
    pub fn node_config(&self, base: &Path) -> anyhow::Result<NodeConfig> {
        self.check()?;
        let listen: SocketAddr = self
            .listen
            .parse()
            .map_err(|e| anyhow!("listen: {:?}: {e}", self.listen))?;
        // A restart knows its members from disk: a peer whose name does not resolve now (its
        // pod is being replaced) is found later; a first start needs every member.
        let resolve = |p: &Path| relative_to(base, p);
        let initial_cluster =
            parse_initial_cluster(&self.initial_cluster, Some(listen), self.has_data(base))?;
        let tls = self.tls_config(base)?;
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
        runtime.slow_request = Duration::from_millis(self.slow_request_ms);
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
        let e = parse_initial_cluster("1=127.0.0.1:7001,2=nowhere", None, false).expect_err("bad");
        assert!(e.to_string().contains("nowhere"), "{e}");
        assert!(parse_initial_cluster("1=127.0.0.1:1,1=127.0.0.1:2", None, false).is_err());
        let ok =
            parse_initial_cluster("1=127.0.0.1:7001, 2=127.0.0.1:7002", None, false).expect("ok");
        assert_eq!(ok.len(), 2);
    }

    #[test]
    fn host_names_resolve_and_are_listed() {
        let v4: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let members = parse_initial_cluster("1=localhost:7001,2=127.0.0.1:7002", Some(v4), false)
            .expect("ok");
        assert_eq!(members[&1].port(), 7001);
        assert!(members[&1].ip().is_loopback());
        assert!(
            members[&1].is_ipv4(),
            "the family of the listen address is preferred"
        );
        assert_eq!(
            named_members("1=localhost:7001, 2=127.0.0.1:7002"),
            vec![(1, "localhost:7001".to_string())]
        );
        let e = parse_initial_cluster("1=localhost", None, false).expect_err("no port");
        assert!(e.to_string().contains("host:port"), "{e}");
    }

    #[test]
    fn a_missing_node_id_is_named() {
        let e = ServerConfig::default()
            .node_config(Path::new("."))
            .expect_err("no node id");
        assert!(e.to_string().contains("node-id"), "{e}");
    }
}
