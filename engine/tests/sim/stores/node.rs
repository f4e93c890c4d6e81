//! One simulated node of the whole-store simulator: a real `Store` (every range replica of the
//! node, the group-commit round, splits, membership, tombstones, snapshots) over a real RocksDB
//! whose files live in memory. A crash drops the store and its engine; a restart reopens the
//! same memory disk, as a process restart on a machine that kept its page cache would.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use flotilla_engine::kv::KvConfig;
use flotilla_engine::raft::Config;
use flotilla_engine::storage::{Engine, EngineConfig, MemoryDisk};
use flotilla_engine::store::Store;
use flotilla_transport::service::ReadRequest;

use crate::network::Micros;

/// Quiet ranges woken per tick after a node went down (the runtime's `max-wakeups-per-tick`).
pub const MAX_WAKEUPS_PER_TICK: usize = 4;

/// A client request waiting at a node.
#[derive(Clone, Debug)]
pub struct Waiting {
    pub client: usize,
    /// The client's operation it answers (an answer to an earlier one is ignored).
    pub op_no: u64,
}

pub struct StoreNode {
    pub id: u64,
    disk: MemoryDisk,
    raft: Config,
    kv: KvConfig,
    /// `None` while crashed.
    pub store: Option<Store>,
    /// Bumped at every start, so events of an earlier life are recognized.
    pub incarnation: u64,
    /// Its tick length (clock drift: nodes tick at slightly different rates).
    pub tick_us: Micros,
    /// A stalled process (GC, VM pause): nothing runs until then.
    pub paused_until: Option<Micros>,
    /// When it last ticked (a resumed node catches up what it missed, bounded).
    pub last_tick: Micros,
    /// Node liveness as this node's transport sees it: when it last heard each peer, and the
    /// peers it reported down.
    pub last_heard: BTreeMap<u64, Micros>,
    pub down: BTreeSet<u64>,
    /// Quiet ranges to wake, with the down node that concerns them (bounded per tick).
    pub to_wake: VecDeque<(u64, u64)>,
    /// Client writes proposed here: `(range, index)` -> `(term, who waits)`.
    pub writes: BTreeMap<(u64, u64), (u64, Waiting)>,
    /// Client reads started here, by read id.
    pub reads: BTreeMap<u64, (ReadRequest, Waiting)>,
    /// Reads a quorum confirmed: `(range, index, read id)`, served once the range applied.
    pub confirmed: Vec<(u64, u64, u64)>,
    /// Ticks since the last log GC pass.
    pub ticks_since_gc: u64,
}

impl StoreNode {
    /// A node with an empty memory disk; `members` bootstraps the initial ranges on it (a
    /// joining node gets none).
    pub fn new(
        id: u64,
        raft: Config,
        kv: KvConfig,
        members: &[u64],
        user_ranges: u32,
        tick_us: Micros,
    ) -> Self {
        let disk = MemoryDisk::new().expect("a memory disk");
        let node = Self {
            id,
            disk,
            raft,
            kv,
            store: None,
            incarnation: 0,
            tick_us,
            paused_until: None,
            last_tick: 0,
            last_heard: BTreeMap::new(),
            down: BTreeSet::new(),
            to_wake: VecDeque::new(),
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            confirmed: Vec::new(),
            ticks_since_gc: 0,
        };
        let engine = node.open_engine();
        if members.contains(&id) {
            flotilla_engine::node::bootstrap(&engine, members, user_ranges).expect("bootstrap");
        }
        drop(engine);
        node
    }

    fn open_engine(&self) -> std::sync::Arc<Engine> {
        let mut config = EngineConfig::new(format!("/sim/node-{}", self.id), "store-sim", self.id);
        config.memory = Some(self.disk.clone());
        config.entry_cache_bytes = 8 << 20;
        config.entry_cache_bytes_per_range = 1 << 20;
        Engine::open(&config).expect("the memory disk opens")
    }

    /// Starts (or restarts) the node: every range on its disk is opened, nothing in memory
    /// survives from an earlier life.
    pub fn start(&mut self, now: Micros) {
        assert!(self.store.is_none(), "node {} is already running", self.id);
        let engine = self.open_engine();
        let store = Store::open(engine, self.id, self.raft.clone(), self.kv.clone())
            .unwrap_or_else(|e| panic!("node {} cannot reopen its ranges: {e}", self.id));
        self.store = Some(store);
        self.incarnation += 1;
        self.last_tick = now;
        self.paused_until = None;
        self.last_heard.clear();
        self.down.clear();
        self.to_wake.clear();
        self.writes.clear();
        self.reads.clear();
        self.confirmed.clear();
    }

    /// Kills the process: the store and its engine are dropped with everything in memory.
    pub fn crash(&mut self) {
        self.store = None;
        self.writes.clear();
        self.reads.clear();
        self.confirmed.clear();
        self.to_wake.clear();
    }

    pub fn is_up(&self) -> bool {
        self.store.is_some()
    }

    /// Up and not stalled at `now`.
    pub fn runs(&self, now: Micros) -> bool {
        self.is_up() && self.paused_until.is_none_or(|t| t <= now)
    }

    pub fn store(&mut self) -> &mut Store {
        self.store.as_mut().expect("only a running node is driven")
    }
}
