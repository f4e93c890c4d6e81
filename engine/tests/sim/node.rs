//! One simulated replica: a `RawNode` over a simulated disk, driven exactly as `RawNode`'s docs
//! say a driver must, with the fsync as a separate event so that crashes land between a write
//! and its sync.
//!
//! The disk: the `MemStorage` inside the `RawNode` is what is durable. A `Ready`'s writes sit in
//! `unsynced` until its sync event; a crash loses them, or keeps a prefix of their entries (a
//! torn write: the tail of the batch failed its checksum and was discarded at recovery).

use std::collections::BTreeMap;

use flotilla_engine::raft::{
    Config, Entry, HardState, LogStore, MemStorage, Message, RawNode, ReadState, Ready,
    SnapshotMetadata,
};

use crate::checker::MirrorLog;

/// The key-value state a replica applied.
pub type Kv = BTreeMap<u64, u64>;

/// A snapshot to install: its metadata, its data (fetched from the leader) and the committed
/// log it stands for (for the checkers' mirror).
pub struct Install {
    pub meta: SnapshotMetadata,
    pub kv: Kv,
    pub prefix: MirrorLog,
}

/// A write handed to the disk and not yet synced.
pub struct Unsynced {
    pub ready: Ready,
    /// Installed first, atomically (an ingested SST in the real store).
    pub snapshot: Option<Install>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// Messages that may leave only once this write is durable.
    pub persisted_messages: Vec<Message>,
}

pub struct SimNode {
    pub id: u64,
    pub config: Config,
    /// `None` while crashed.
    pub raw: Option<RawNode<MemStorage>>,
    /// Survives crashes: what the disk holds.
    pub disk: MemStorage,
    pub incarnation: u64,
    pub unsynced: Option<Unsynced>,
    /// The log including unsynced writes, and the durable part only.
    pub log: MirrorLog,
    pub durable_log: MirrorLog,
    /// The replica's key-value state, rebuilt from its snapshot and log after a restart.
    pub kv: Kv,
    /// Durable: the state at the index the log was compacted to (what a snapshot sends).
    pub snapshot_kv: Option<(u64, Kv)>,
    /// Snapshot data fetched from a leader, waiting for the core to ask for its install.
    pub fetched: BTreeMap<u64, Kv>,
    pub applied: u64,
    /// Confirmed reads waiting for apply to catch up: (index, context).
    pub reads: Vec<ReadState>,
    /// The term this replica had durably reached, to check terms never go back.
    pub durable_term: u64,
    /// Led `term` at its last Ready (for the append-only and commit-rule checks).
    pub led_term: Option<u64>,
    /// The highest commit index its Readies reported in this incarnation.
    pub reported_commit: u64,
    /// Tick period in microseconds; differs per node (clock drift).
    pub tick_us: u64,
}

impl SimNode {
    pub fn new(id: u64, config: Config, voters: &[u64], learners: &[u64], tick_us: u64) -> Self {
        let disk = MemStorage::new_with_conf(voters, learners);
        let raw = RawNode::new(config.clone(), disk.clone()).expect("simulator config is valid");
        Self {
            id,
            config,
            raw: Some(raw),
            disk,
            incarnation: 0,
            unsynced: None,
            log: MirrorLog::default(),
            durable_log: MirrorLog::default(),
            kv: BTreeMap::new(),
            snapshot_kv: None,
            fetched: BTreeMap::new(),
            applied: 0,
            reads: Vec::new(),
            durable_term: 0,
            led_term: None,
            reported_commit: 0,
            tick_us,
        }
    }

    pub fn is_up(&self) -> bool {
        self.raw.is_some()
    }

    /// Power loss: everything unsynced is gone, except possibly a prefix of the last write's
    /// entries (`keep_entries`); the hard state survives only with the whole batch.
    pub fn crash(&mut self, keep_entries: Option<usize>) {
        if let Some(raw) = self.raw.take() {
            self.disk = raw.store().clone();
        }
        // A batch that installs a snapshot is all or nothing.
        let keep_entries =
            keep_entries.filter(|_| self.unsynced.as_ref().is_some_and(|w| w.snapshot.is_none()));
        if let (Some(w), Some(keep)) = (self.unsynced.take(), keep_entries) {
            let keep = keep.min(w.entries.len());
            let torn = &w.entries[..keep];
            if self.disk.append(torn).is_ok() {
                let _ = self.durable_log.write(torn);
                if keep == w.entries.len() {
                    if let Some(hs) = w.hard_state {
                        self.disk.set_hard_state(hs);
                    }
                }
            }
        }
        self.unsynced = None;
        self.fetched.clear();
        self.incarnation += 1;
        self.log = self.durable_log.clone();
        self.reads.clear();
        self.led_term = None;
        self.reported_commit = 0;
    }

    /// Starts again from the disk: the state machine from its snapshot (or empty), the
    /// membership that goes with that applied index, the rest replayed from the log.
    pub fn restart(&mut self) {
        let mut config = self.config.clone();
        config.seed = config
            .seed
            .wrapping_add(self.incarnation.wrapping_mul(0x9E37));
        let (applied, kv) = self.snapshot_kv.clone().unwrap_or_default();
        if applied > 0 {
            if let Some(cs) = self
                .disk
                .snapshot_metadata()
                .ok()
                .and_then(|m| m.conf_state)
            {
                self.disk.set_conf_state(cs);
            }
        }
        config.applied = applied;
        self.raw =
            Some(RawNode::new(config, self.disk.clone()).expect("restart from a valid disk"));
        self.kv = kv;
        self.applied = applied;
    }

    /// Makes the pending write durable; returns it for the caller to finish the round.
    pub fn sync(&mut self) -> Option<Unsynced> {
        let mut w = self.unsynced.take()?;
        let raw = self.raw.as_mut()?;
        if let Some(install) = w.snapshot.take() {
            raw.store_mut().apply_snapshot(install.meta.clone());
            self.applied = install.meta.index;
            self.kv = install.kv.clone();
            self.snapshot_kv = Some((install.meta.index, install.kv));
            self.durable_log = install.prefix;
        }
        if let Some(hs) = &w.hard_state {
            raw.store_mut().set_hard_state(*hs);
            self.durable_term = self.durable_term.max(hs.term);
        }
        raw.store_mut()
            .append(&w.entries)
            .expect("the simulator writes entries contiguously");
        let _ = self.durable_log.write(&w.entries);
        Some(w)
    }
}
