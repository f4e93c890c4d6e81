//! The node's one RocksDB: opening it with its column families, the node identity check, and the
//! two kinds of writes (synced group commits, unsynced applies) with the fail-stop rule.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flotilla_transport::meta::{ApplyState, NodeIdentity, RangeDescriptor};
use parking_lot::Mutex;
use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};

use super::cache::CacheBudget;
use super::codec;
use super::error::EngineError;
use super::keys::{self, DATA_CF, META_CF, RAFT_CF};

/// How to open a node's storage.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub path: PathBuf,
    /// The cluster this node belongs to; a data directory of another cluster is refused.
    pub cluster_id: String,
    pub node_id: u64,
    /// Create the directory and write the identity when there is none (first start).
    pub create: bool,
    /// All ranges' entry caches together stay within this many bytes.
    pub entry_cache_bytes: u64,
    /// One range's entry cache stays within this many bytes.
    pub entry_cache_bytes_per_range: u64,
    /// Keep unsynced writes in RocksDB's own WAL buffer until the next synced write (which
    /// flushes and syncs them in order) instead of handing each to the OS. A killed process
    /// then loses its unsynced writes the way a power loss would, which the crash test uses.
    pub manual_wal_flush: bool,
    /// Keep the files in memory instead of under `path` (which then only names them): the
    /// whole-store simulator's disk. A node reopened on the same `MemoryDisk` finds what it
    /// wrote, as after a process crash (RocksDB writes unsynced data to its files at once).
    pub memory: Option<MemoryDisk>,
}

/// An in-memory file system for engines (RocksDB's memory `Env`), shared by every engine
/// opened on it and kept across reopens as long as one clone lives.
#[derive(Clone)]
pub struct MemoryDisk(rocksdb::Env);

impl MemoryDisk {
    /// A new, empty in-memory file system.
    ///
    /// # Errors
    /// [`EngineError::Rocks`] if RocksDB cannot create it.
    pub fn new() -> Result<Self, EngineError> {
        Ok(Self(rocksdb::Env::mem_env()?))
    }
}

impl std::fmt::Debug for MemoryDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryDisk")
    }
}

impl EngineConfig {
    /// Defaults for a node of `cluster_id` at `path`.
    pub fn new(path: impl Into<PathBuf>, cluster_id: impl Into<String>, node_id: u64) -> Self {
        Self {
            path: path.into(),
            cluster_id: cluster_id.into(),
            node_id,
            create: true,
            entry_cache_bytes: 256 << 20,
            entry_cache_bytes_per_range: 4 << 20,
            manual_wal_flush: false,
            memory: None,
        }
    }
}

/// The column families, as a value instead of a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cf {
    Raft,
    Data,
    Meta,
}

impl Cf {
    fn name(self) -> &'static str {
        match self {
            Cf::Raft => RAFT_CF,
            Cf::Data => DATA_CF,
            Cf::Meta => META_CF,
        }
    }
}

/// One node's storage. Shared by every range replica on the node (`Arc<Engine>`).
pub struct Engine {
    db: DB,
    /// Kept to read RocksDB's statistics (the same statistics object as the open DB's).
    options: Options,
    path: PathBuf,
    identity: NodeIdentity,
    halted: Mutex<Option<String>>,
    synced_writes: AtomicU64,
    pub(crate) cache_budget: Arc<CacheBudget>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.path)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn cf_options(cf: Cf) -> Options {
    let mut o = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_size(16 << 10);
    match cf {
        // Log entries live briefly (compaction deletes them); cheap LZ4 is enough.
        Cf::Raft => {
            o.set_compression_type(DBCompressionType::Lz4);
            o.set_write_buffer_size(64 << 20);
        }
        // Data stays: LZ4 while hot, ZSTD at the bottom level.
        Cf::Data => {
            o.set_compression_type(DBCompressionType::Lz4);
            o.set_bottommost_compression_type(DBCompressionType::Zstd);
            table.set_bloom_filter(10.0, false);
            o.set_write_buffer_size(64 << 20);
        }
        Cf::Meta => {
            o.set_compression_type(DBCompressionType::Lz4);
            table.set_bloom_filter(10.0, false);
        }
    }
    o.set_block_based_table_factory(&table);
    o
}

impl Engine {
    /// Opens (or with `config.create`, creates) the node's storage and checks that it belongs to
    /// `config.cluster_id` and `config.node_id`.
    ///
    /// # Errors
    /// [`EngineError::ClusterMismatch`] / [`EngineError::NodeMismatch`] for another node's
    /// directory, [`EngineError::NotInitialized`] for an empty one without `create`,
    /// [`EngineError::Corruption`] for a damaged identity, [`EngineError::Rocks`] otherwise.
    pub fn open(config: &EngineConfig) -> Result<Arc<Self>, EngineError> {
        let mut options = Options::default();
        options.create_if_missing(config.create);
        options.create_missing_column_families(config.create);
        options.enable_statistics();
        options.set_max_background_jobs(2);
        options.set_bytes_per_sync(1 << 20);
        options.set_max_total_wal_size(512 << 20);
        options.set_manual_wal_flush(config.manual_wal_flush);
        if let Some(memory) = &config.memory {
            options.set_env(&memory.0);
        }
        let cfs = [Cf::Raft, Cf::Data, Cf::Meta]
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(cf)));
        let db = DB::open_cf_descriptors(&options, &config.path, cfs)?;
        let engine = Self {
            db,
            options,
            path: config.path.clone(),
            identity: NodeIdentity::default(),
            halted: Mutex::new(None),
            synced_writes: AtomicU64::new(0),
            cache_budget: Arc::new(CacheBudget::new(
                config.entry_cache_bytes,
                config.entry_cache_bytes_per_range,
            )),
        };
        let identity = engine.check_identity(config)?;
        Ok(Arc::new(Self { identity, ..engine }))
    }

    fn check_identity(&self, config: &EngineConfig) -> Result<NodeIdentity, EngineError> {
        let stored = self
            .db
            .get_pinned_cf(self.cf(Cf::Meta), keys::IDENTITY_KEY)?;
        match stored {
            Some(bytes) => {
                let found: NodeIdentity =
                    codec::decode(&bytes).map_err(|e| EngineError::codec(0, "node identity", e))?;
                if found.cluster_id != config.cluster_id {
                    return Err(EngineError::ClusterMismatch {
                        expected: config.cluster_id.clone(),
                        found: found.cluster_id,
                    });
                }
                if found.node_id != config.node_id {
                    return Err(EngineError::NodeMismatch {
                        expected: config.node_id,
                        found: found.node_id,
                    });
                }
                Ok(found)
            }
            None if config.create => {
                let identity = NodeIdentity {
                    cluster_id: config.cluster_id.clone(),
                    node_id: config.node_id,
                };
                let mut batch = WriteBatch::default();
                batch.put_cf(
                    self.cf(Cf::Meta),
                    keys::IDENTITY_KEY,
                    codec::encode(&identity),
                );
                self.write_synced(batch)?;
                Ok(identity)
            }
            None => Err(EngineError::NotInitialized(
                config.path.display().to_string(),
            )),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn cf(&self, cf: Cf) -> &ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .expect("every column family is opened (or the open failed)")
    }

    fn check_halted(&self) -> Result<(), EngineError> {
        match &*self.halted.lock() {
            Some(reason) => Err(EngineError::Halted(reason.clone())),
            None => Ok(()),
        }
    }

    /// Writes `batch` durably (one fsync of the WAL, however many ranges it carries). A failure
    /// halts the engine for good: every later write fails too (fail-stop, never retry an fsync).
    ///
    /// # Errors
    /// [`EngineError::SyncFailed`] now, [`EngineError::Halted`] after an earlier failure.
    pub fn write_synced(&self, batch: WriteBatch) -> Result<(), EngineError> {
        self.check_halted()?;
        let mut opts = WriteOptions::default();
        if crate::fail_point_set("storage::crash_before_sync") {
            // Fault tests: the round reaches the OS, and the process dies before the sync
            // (nothing of it was acknowledged or sent). A process crash, not a power loss:
            // what reached the OS survives it.
            opts.set_sync(false);
            let _ = self.db.write_opt(batch, &opts);
            tracing::error!("failpoint storage::crash_before_sync: aborting the process");
            std::process::abort();
        }
        opts.set_sync(true);
        let result = crate::fail_point_io("storage::write_synced")
            .and_then(|()| self.db.write_opt(batch, &opts).map_err(|e| e.to_string()));
        match result {
            Ok(()) => {
                self.synced_writes.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(reason) => {
                tracing::error!(path = %self.path.display(), error = %reason,
                    "synced write failed: storage halts, the node must stop");
                *self.halted.lock() = Some(reason.clone());
                Err(EngineError::SyncFailed(reason))
            }
        }
    }

    /// Writes `batch` without waiting for the disk: the apply path, whose state is rebuilt from
    /// the durable log after a crash. A failure halts the engine like a synced one.
    ///
    /// # Errors
    /// [`EngineError::SyncFailed`] when the write fails, [`EngineError::Halted`] after an
    /// earlier failure.
    pub fn write_unsynced(&self, batch: WriteBatch) -> Result<(), EngineError> {
        self.check_halted()?;
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        if let Err(e) = self.db.write_opt(batch, &opts) {
            let reason = e.to_string();
            tracing::error!(error = %reason, "write failed: storage halts, the node must stop");
            *self.halted.lock() = Some(reason.clone());
            return Err(EngineError::SyncFailed(reason));
        }
        Ok(())
    }

    /// Synced writes done by this engine since it was opened.
    pub fn synced_writes(&self) -> u64 {
        self.synced_writes.load(Ordering::Relaxed)
    }

    /// WAL fsyncs done by RocksDB since the engine was opened (its own statistics).
    pub fn wal_syncs(&self) -> u64 {
        self.options
            .get_ticker_count(rocksdb::statistics::Ticker::WalFileSynced)
    }

    /// The ids of every range with a descriptor on this node, in order.
    ///
    /// # Errors
    /// [`EngineError::Rocks`] when the read fails.
    pub fn range_ids(&self) -> Result<Vec<u64>, EngineError> {
        let mut ids = Vec::new();
        let iter = self
            .db
            .iterator_cf(self.cf(Cf::Meta), rocksdb::IteratorMode::Start);
        for item in iter {
            let (key, _) = item?;
            if let Some(id) = keys::parse_descriptor_key(&key) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// A checksummed record of `cf`, if present.
    pub(crate) fn read_record<M: prost::Message + Default>(
        &self,
        cf: Cf,
        key: &[u8],
        range_id: u64,
        what: &'static str,
    ) -> Result<Option<M>, EngineError> {
        match self.db.get_pinned_cf(self.cf(cf), key)? {
            Some(bytes) => codec::decode(&bytes)
                .map(Some)
                .map_err(|e| EngineError::codec(range_id, what, e)),
            None => Ok(None),
        }
    }

    /// The descriptor of `range_id`, if the range is on this node.
    ///
    /// # Errors
    /// [`EngineError::Corruption`] if it fails its checksum, [`EngineError::Rocks`].
    pub fn descriptor(&self, range_id: u64) -> Result<Option<RangeDescriptor>, EngineError> {
        self.read_record(
            Cf::Meta,
            &keys::descriptor_key(range_id),
            range_id,
            "descriptor",
        )
    }

    /// The index up to which the log of `range_id` was released (compaction or snapshot), as
    /// durable on disk.
    ///
    /// # Errors
    /// [`EngineError::RangeNotFound`], [`EngineError::Corruption`], [`EngineError::Rocks`].
    pub fn log_truncated_index(&self, range_id: u64) -> Result<u64, EngineError> {
        let meta: Option<flotilla_transport::raft::SnapshotMetadata> = self.read_record(
            Cf::Raft,
            &keys::truncated_key(range_id),
            range_id,
            "truncation record",
        )?;
        meta.map(|m| m.index)
            .ok_or(EngineError::RangeNotFound(range_id))
    }

    /// The apply state of `range_id`, if it applied anything yet.
    ///
    /// # Errors
    /// [`EngineError::Corruption`] if it fails its checksum, [`EngineError::Rocks`].
    pub fn apply_state(&self, range_id: u64) -> Result<Option<ApplyState>, EngineError> {
        self.read_record(
            Cf::Meta,
            &keys::apply_state_key(range_id),
            range_id,
            "apply state",
        )
    }

    /// The replica of `range_id` this node removed, if any (its tombstone).
    ///
    /// # Errors
    /// [`EngineError::Corruption`] if it fails its checksum, [`EngineError::Rocks`].
    pub fn tombstone(
        &self,
        range_id: u64,
    ) -> Result<Option<flotilla_transport::meta::RangeTombstone>, EngineError> {
        self.read_record(
            Cf::Meta,
            &keys::tombstone_key(range_id),
            range_id,
            "tombstone",
        )
    }

    /// Records that the replica `replica_id` of `range_id`, which this node does not host, was
    /// removed at `conf_ver` (a tombstone that arrived before any snapshot did). Synced.
    ///
    /// # Errors
    /// [`EngineError`] when the write fails.
    pub fn put_tombstone(
        &self,
        range_id: u64,
        replica_id: u64,
        conf_ver: u64,
    ) -> Result<(), EngineError> {
        let mut batch = WriteBatch::default();
        self.stage_tombstone(&mut batch, range_id, replica_id, conf_ver);
        self.write_synced(batch)
    }

    fn stage_tombstone(
        &self,
        batch: &mut WriteBatch,
        range_id: u64,
        replica_id: u64,
        conf_ver: u64,
    ) {
        self.put_record(
            batch,
            Cf::Meta,
            &keys::tombstone_key(range_id),
            &flotilla_transport::meta::RangeTombstone {
                replica_id,
                conf_ver,
            },
        );
    }

    /// Deletes every row of the replica `replica_id` of `descriptor` on this node (its log,
    /// Raft state, descriptor, apply state, sessions and data) and leaves a tombstone, in one
    /// synced write. The caller has made sure no other local range owns rows in its span.
    ///
    /// # Errors
    /// [`EngineError`] when the write fails.
    pub fn destroy_range(
        &self,
        descriptor: &RangeDescriptor,
        replica_id: u64,
        conf_ver: u64,
    ) -> Result<(), EngineError> {
        let range_id = descriptor.id;
        let mut batch = WriteBatch::default();
        let (start, end) = keys::meta_span(range_id);
        let end = end.map_or_else(|| vec![0xff; 9], |e| e.to_vec());
        batch.delete_range_cf(self.cf(Cf::Raft), start.as_slice(), end.as_slice());
        batch.delete_range_cf(self.cf(Cf::Meta), start.as_slice(), end.as_slice());
        let (data_start, data_end) = keys::data_span(descriptor);
        batch.delete_range_cf(self.cf(Cf::Data), data_start, data_end);
        self.stage_tombstone(&mut batch, range_id, replica_id, conf_ver);
        self.write_synced(batch)
    }

    pub(crate) fn put_record<M: prost::Message>(
        &self,
        batch: &mut WriteBatch,
        cf: Cf,
        key: &[u8],
        message: &M,
    ) {
        batch.put_cf(self.cf(cf), key, codec::encode(message));
    }

    pub(crate) fn read_options_bounded(&self, upper: &[u8]) -> ReadOptions {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(upper.to_vec());
        opts
    }
}
