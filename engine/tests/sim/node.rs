//! One simulated replica: a `RawNode` over a simulated disk, driven exactly as `RawNode`'s docs
//! say a driver must, with the fsync as a separate event so that crashes land between a write
//! and its sync.
//!
//! The disk: the `MemStorage` inside the `RawNode` is what is durable. A `Ready`'s writes sit in
//! `unsynced` until its sync event; a crash loses them, or keeps a prefix of their entries (a
//! torn write: the tail of the batch failed its checksum and was discarded at recovery).

use std::collections::BTreeMap;

use flotilla_engine::raft::{
    Config, Entry, HardState, MemStorage, Message, RawNode, ReadState, Ready,
};

use crate::checker::MirrorLog;

/// A write handed to the disk and not yet synced.
pub struct Unsynced {
    pub ready: Ready,
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
    /// The replica's key-value state, rebuilt from the log after a restart.
    pub kv: BTreeMap<u64, u64>,
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
        self.incarnation += 1;
        self.log = self.durable_log.clone();
        self.reads.clear();
        self.led_term = None;
        self.reported_commit = 0;
    }

    pub fn restart(&mut self) {
        let mut config = self.config.clone();
        config.seed = config
            .seed
            .wrapping_add(self.incarnation.wrapping_mul(0x9E37));
        self.raw =
            Some(RawNode::new(config, self.disk.clone()).expect("restart from a valid disk"));
        self.kv.clear();
        self.applied = 0;
    }

    /// Makes the pending write durable; returns it for the caller to finish the round.
    pub fn sync(&mut self) -> Option<Unsynced> {
        let w = self.unsynced.take()?;
        let raw = self.raw.as_mut()?;
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
