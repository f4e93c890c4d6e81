//! The node runtime (DESIGN section 7): poller threads around [`Store`] shards.
//!
//! A node's ranges are split over a small fixed set of pollers (range id modulo their count).
//! Each poller owns its shard's `Store` outright (no locks) and a bounded mailbox (a crossbeam
//! channel) that the network side and the client service feed: Raft messages, received
//! snapshots, client writes and reads. One poller round:
//!
//! 1. take the mailbox's commands (up to a bound, so ticks and I/O are never starved), stepping
//!    messages into their range's peer, proposing writes, starting reads;
//! 2. tick the ranges that are due: each range ticks on its own phase within the tick interval,
//!    so the ranges of a node (and of a cluster) do not time out in lockstep;
//! 3. `Store::round`: every Ready of the shard in ONE synced write, then apply;
//! 4. send the outgoing messages grouped by node through the [`Network`], start snapshot
//!    streams, complete the writes whose entries applied and the reads whose index applied;
//! 5. time out requests past their deadline.
//!
//! Queues are bounded: a full mailbox drops Raft messages (Raft retries) and refuses client
//! requests with `ServerBusy`; pending requests per poller are capped the same way. Replies go
//! back on tokio oneshot channels, so the async service never blocks a poller nor the reverse.
//!
//! A storage failure stops the poller (fail-stop, DESIGN section 3): its pending requests are
//! answered with an internal error and the node reports itself halted.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender, TrySendError};
use flotilla_transport::kv::{
    admin_request, AdminRequest, CommandHeader, RaftCommand, SplitRequest, WriteResponse,
};
use flotilla_transport::raft::{Message, MessageType};
use flotilla_transport::service::{read_response, ReadConsistency, ReadRequest};
use tokio::sync::oneshot;

use super::events::SnapshotReceipt;
use super::load::{LoadCounter, RangeLoad};
use super::peer::{prepare_snapshot, PeerError};
use super::replicas::{
    Command as StoreCommand, Outcome, Proposal, ProposeRefused, Store, StoreRound,
};
use super::slow::{read_op, respond, write_op, Timing};
use crate::kv::{self, check_range, KvConfig, KvError};
use crate::raft::{Config, ReadError as RaftReadError, Role};
use crate::storage::{Engine, ReceivedSnapshot, SnapshotParts};
use flotilla_transport::meta::RangeEpoch;

/// Where the runtime's outgoing traffic goes: the QUIC transport on a node, an in-memory
/// network in tests.
pub trait Network: Send + Sync + 'static {
    /// Queues Raft messages (each with its range) for `to_node`. Must not block; may drop.
    fn send(&self, to_node: u64, messages: Vec<(u64, Message)>);
    /// Builds (`build`, off the poller: it reads the whole range) and streams a snapshot of
    /// `range_id` to `to_node`: the leader's Snapshot message and the snapshot. `done(success)`
    /// must be called once, from any thread, when it ends (`false` if `build` gave nothing).
    fn send_snapshot(
        &self,
        to_node: u64,
        range_id: u64,
        build: SnapshotBuild,
        done: Box<dyn FnOnce(bool) + Send>,
    );
    /// Hands range leaders' routing records to the meta range (`meta_epoch`: its epoch as
    /// this node has it). Best effort: the runtime reports again on the next change and every
    /// minute. Must not block.
    fn report_routes(
        &self,
        meta_epoch: RangeEpoch,
        records: Vec<flotilla_transport::meta::RangeRecord>,
    ) {
        let _ = (meta_epoch, records);
    }
}

/// Routing records go to the meta range in batches of at most this many.
const ROUTE_REPORT_BATCH: usize = 256;
/// Every leader reports its record again this often (a report may have been lost).
const ROUTE_REPORT_REFRESH: Duration = Duration::from_secs(60);

/// Builds a snapshot to send: the leader's Snapshot message (rewritten with the built
/// snapshot's metadata) and the snapshot; `None` if it could not be read.
pub type SnapshotBuild = Box<dyn FnOnce() -> Option<(Message, SnapshotParts)> + Send>;

/// Settings of the runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub node_id: u64,
    /// Template of every replica's Raft config.
    pub raft: Config,
    pub kv: KvConfig,
    /// The Raft tick (DESIGN section 12: 100 ms).
    pub tick: Duration,
    /// Poller threads.
    pub pollers: usize,
    /// Commands each poller's mailbox holds.
    pub mailbox_capacity: usize,
    /// Client requests in flight per poller before new ones get `ServerBusy`.
    pub max_pending_requests: usize,
    /// Commands a poller takes from its mailbox per round.
    pub max_commands_per_round: usize,
    /// Size of the chunks of outgoing snapshots.
    pub snapshot_chunk_bytes: usize,
    /// Snapshots this node builds and streams at once, to all peers together (each one reads
    /// a whole range into memory); the others wait their turn.
    pub max_snapshot_sends: usize,
    /// Log GC: a replica keeping more applied entries than this releases its log up to its
    /// applied index (checked every second); followers further behind get a snapshot.
    pub log_gc_threshold_entries: u64,
    /// Quiesce idle ranges: a leader with nothing pending and every follower caught up
    /// quiets its range, which is then not ticked until traffic returns (DESIGN section 7).
    pub quiesce: bool,
    /// Quiet ranges woken per tick after a node went down (a liveness blip must not wake
    /// every range at once).
    pub max_wakeups_per_tick: usize,
    /// A range led here splits at its middle key once its data passes this size (0: never).
    /// Checked (a read of the range, off the poller) after every quarter of it written.
    pub split_size_bytes: u64,
    /// Requests slower than this from arrival to answer are logged with their phase times
    /// (zero: none).
    pub slow_request: Duration,
}

impl RuntimeConfig {
    pub fn new(node_id: u64) -> Self {
        Self {
            node_id,
            raft: Config::default(),
            kv: KvConfig::default(),
            tick: Duration::from_millis(100),
            pollers: 2,
            mailbox_capacity: 65_536,
            max_pending_requests: 65_536,
            max_commands_per_round: 4096,
            snapshot_chunk_bytes: 1024 * 1024,
            max_snapshot_sends: 4,
            log_gc_threshold_entries: 10_000,
            quiesce: true,
            max_wakeups_per_tick: 1000,
            split_size_bytes: 64 << 20,
            slow_request: Duration::from_millis(500),
        }
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("cannot start a poller thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Why a request failed inside the node.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Refused with a typed error the client acts on.
    #[error(transparent)]
    Refused(#[from] KvError),
    /// The node cannot serve (storage failure, shutting down).
    #[error("node unavailable: {0}")]
    Unavailable(String),
}

pub type WriteResult = Result<WriteResponse, RequestError>;
pub type ReadResult = Result<read_response::Response, RequestError>;

enum Command {
    /// A size check measured a range.
    Measured {
        range_id: u64,
        size: u64,
    },
    Raft(u64, u64, Message),
    Snapshot(u64, Message, Box<ReceivedSnapshot>),
    SnapshotDone {
        range_id: u64,
        to: u64,
        ok: bool,
    },
    Write {
        command: RaftCommand,
        reply: oneshot::Sender<WriteResult>,
        deadline: Instant,
        submitted: Instant,
    },
    Read {
        request: ReadRequest,
        reply: oneshot::Sender<ReadResult>,
        deadline: Instant,
        submitted: Instant,
    },
    With(Box<dyn FnOnce(&mut Store) + Send>),
    /// Node liveness: this node is down; wake the quiet ranges it led or served.
    NodeDown(u64),
    /// Node liveness: this node is reachable again.
    NodeUp(u64),
    /// A size check of the range at `epoch` found it too big: split it at `key`.
    AutoSplit {
        range_id: u64,
        epoch: Option<RangeEpoch>,
        key: Bytes,
    },
    Stop,
}

/// A cheap handle for feeding the runtime from any thread or task.
#[derive(Clone)]
pub struct RuntimeHandle {
    mailboxes: Arc<Vec<Sender<Command>>>,
    halted: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    /// Client requests each poller holds (proposed writes, reads waiting).
    pending: Arc<Vec<AtomicU64>>,
    /// Ranges created while running (splits) stay on their parent's poller.
    routes: Arc<parking_lot::RwLock<HashMap<u64, usize>>>,
    /// The load of the ranges each poller leads, as of its last survey.
    loads: Arc<Vec<parking_lot::Mutex<BTreeMap<u64, RangeLoad>>>>,
}

impl std::fmt::Debug for RuntimeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeHandle")
            .field("pollers", &self.mailboxes.len())
            .field("halted", &self.is_halted())
            .finish()
    }
}

fn poller_of(range_id: u64, pollers: usize) -> usize {
    (range_id % pollers as u64) as usize
}

impl RuntimeHandle {
    /// The poller of `range_id`: where a split put it, else by id (how a restart shares the
    /// ranges out).
    fn mailbox(&self, range_id: u64) -> &Sender<Command> {
        let poller = self
            .routes
            .read()
            .get(&range_id)
            .copied()
            .unwrap_or_else(|| poller_of(range_id, self.mailboxes.len()));
        &self.mailboxes[poller.min(self.mailboxes.len() - 1)]
    }

    /// Whether a poller stopped on a storage failure.
    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Relaxed)
    }

    /// Client requests in flight in the pollers (as of their last round).
    pub fn pending_requests(&self) -> u64 {
        self.pending.iter().map(|p| p.load(Ordering::Relaxed)).sum()
    }

    /// Raft messages dropped because a mailbox was full.
    pub fn dropped_messages(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Hands a Raft message to its range. Never blocks: a full mailbox drops it.
    pub fn deliver(&self, range_id: u64, from_node: u64, message: Message) {
        if self
            .mailbox(range_id)
            .try_send(Command::Raft(range_id, from_node, message))
            .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("flotilla_store_mailbox_dropped_total").increment(1);
        }
    }

    /// Hands a received, verified snapshot (with the leader's message) to its range.
    pub fn deliver_snapshot(&self, range_id: u64, message: Message, data: ReceivedSnapshot) {
        if self
            .mailbox(range_id)
            .try_send(Command::Snapshot(range_id, message, Box::new(data)))
            .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("flotilla_store_mailbox_dropped_total").increment(1);
        }
    }

    fn submit<T>(
        &self,
        range_id: u64,
        make: impl FnOnce(oneshot::Sender<Result<T, RequestError>>) -> Command,
    ) -> oneshot::Receiver<Result<T, RequestError>> {
        let (tx, rx) = oneshot::channel();
        match self.mailbox(range_id).try_send(make(tx)) {
            Ok(()) => {}
            Err(TrySendError::Full(c)) => reply_command(
                c,
                KvError::ServerBusy("the range's mailbox is full".into()).into(),
            ),
            Err(TrySendError::Disconnected(c)) => {
                reply_command(c, RequestError::Unavailable("the node is stopping".into()))
            }
        }
        rx
    }

    /// Proposes a client write; the answer comes when it applied, failed, or the deadline
    /// passed (`Timeout`: it may still apply; a retry with the same sequence number learns
    /// the outcome).
    pub fn write(&self, command: RaftCommand, deadline: Instant) -> oneshot::Receiver<WriteResult> {
        let range_id = command.header.as_ref().map_or(0, |h| h.range_id);
        self.submit(range_id, |reply| Command::Write {
            command,
            reply,
            deadline,
            submitted: Instant::now(),
        })
    }

    /// Serves a client read at the consistency it asks for.
    pub fn read(&self, request: ReadRequest, deadline: Instant) -> oneshot::Receiver<ReadResult> {
        let range_id = request.range_id;
        self.submit(range_id, |reply| Command::Read {
            request,
            reply,
            deadline,
            submitted: Instant::now(),
        })
    }

    /// Node liveness reports `node` down: the quiet ranges whose leader is there wake (and
    /// elect a new one), as do quiet leaders with a replica there. Blocks while a mailbox is
    /// full: call it off the async runtime's workers.
    pub fn node_down(&self, node: u64) {
        for mailbox in self.mailboxes.iter() {
            let _ = mailbox.send(Command::NodeDown(node));
        }
    }

    /// Node liveness reports `node` reachable again.
    pub fn node_up(&self, node: u64) {
        for mailbox in self.mailboxes.iter() {
            let _ = mailbox.send(Command::NodeUp(node));
        }
    }

    /// The load of every range led here, as of each poller's last survey (once a second).
    pub fn range_loads(&self) -> BTreeMap<u64, RangeLoad> {
        let mut all = BTreeMap::new();
        for loads in self.loads.iter() {
            all.extend(loads.lock().iter().map(|(k, v)| (*k, *v)));
        }
        all
    }

    /// Runs `f` on every poller's store (status, leadership transfer): one answer per poller.
    pub fn on_every_store<R: Send + 'static>(
        &self,
        f: impl Fn(&mut Store) -> R + Send + Sync + 'static,
    ) -> Vec<oneshot::Receiver<R>> {
        let f = Arc::new(f);
        self.mailboxes
            .iter()
            .map(|mailbox| {
                let (tx, rx) = oneshot::channel();
                let f = f.clone();
                let _ = mailbox.try_send(Command::With(Box::new(move |store| {
                    let _ = tx.send(f(store));
                })));
                rx
            })
            .collect()
    }
}

fn reply_command(command: Command, error: RequestError) {
    match command {
        Command::Write { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        Command::Read { reply, .. } => {
            let _ = reply.send(Err(error));
        }
        _ => {}
    }
}

/// The pollers of one node.
pub struct Runtime {
    handle: RuntimeHandle,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Opens every range of `engine` and starts the pollers.
    ///
    /// # Errors
    /// [`RuntimeError`] for a damaged range; nothing is started then.
    pub fn start(
        engine: Arc<Engine>,
        config: RuntimeConfig,
        network: Arc<dyn Network>,
    ) -> Result<Self, RuntimeError> {
        let pollers = config.pollers.max(1);
        let config = Arc::new(config);
        let mut stores = Vec::with_capacity(pollers);
        for index in 0..pollers {
            stores.push(Store::open_shard(
                engine.clone(),
                config.node_id,
                config.raft.clone(),
                config.kv.clone(),
                |range_id| poller_of(range_id, pollers) == index,
            )?);
        }
        let mut senders = Vec::with_capacity(pollers);
        let mut receivers = Vec::with_capacity(pollers);
        for _ in 0..pollers {
            let (tx, rx) = channel::bounded(config.mailbox_capacity);
            senders.push(tx);
            receivers.push(rx);
        }
        let handle = RuntimeHandle {
            mailboxes: Arc::new(senders.clone()),
            halted: Arc::new(AtomicBool::new(false)),
            dropped: Arc::new(AtomicU64::new(0)),
            pending: Arc::new((0..pollers).map(|_| AtomicU64::new(0)).collect()),
            routes: Arc::new(parking_lot::RwLock::new(HashMap::new())),
            loads: Arc::new(
                (0..pollers)
                    .map(|_| parking_lot::Mutex::new(BTreeMap::new()))
                    .collect(),
            ),
        };
        let mut threads = Vec::with_capacity(pollers);
        for (index, (store, rx)) in stores.into_iter().zip(receivers).enumerate() {
            let mut poller = Poller::new(
                index,
                store,
                config.clone(),
                network.clone(),
                rx,
                senders[index].clone(),
                handle.clone(),
            );
            let thread = std::thread::Builder::new()
                .name(format!("flotilla-poller-{index}"))
                .spawn(move || poller.run())?;
            threads.push(thread);
        }
        Ok(Self { handle, threads })
    }

    pub fn handle(&self) -> &RuntimeHandle {
        &self.handle
    }

    /// Stops the pollers after their current round; requests still pending are answered
    /// `Unavailable`. Returns when every poller has exited.
    pub fn stop(mut self) {
        for mailbox in self.handle.mailboxes.iter() {
            // A blocking send: the stop must arrive even behind a full mailbox.
            let _ = mailbox.send(Command::Stop);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Runtime {
    /// A runtime dropped without `stop` still stops its pollers (without waiting for them).
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            for mailbox in self.handle.mailboxes.iter() {
                let _ = mailbox.try_send(Command::Stop);
            }
        }
    }
}

struct PendingWrite {
    term: u64,
    reply: oneshot::Sender<WriteResult>,
    deadline: Instant,
    timing: Timing,
}

struct PendingRead {
    range_id: u64,
    request: ReadRequest,
    reply: oneshot::Sender<ReadResult>,
    deadline: Instant,
    timing: Timing,
}

struct Poller {
    index: usize,
    store: Store,
    config: Arc<RuntimeConfig>,
    network: Arc<dyn Network>,
    rx: Receiver<Command>,
    /// Our own mailbox, for snapshot streams to report back.
    tx: Sender<Command>,
    shared: RuntimeHandle,
    /// When each range ticks next.
    ticks: BinaryHeap<Reverse<(Instant, u64)>>,
    writes: HashMap<(u64, u64), PendingWrite>,
    reads: HashMap<u64, PendingRead>,
    /// Reads confirmed at an index, waiting for their range to apply up to it.
    confirmed: BTreeMap<u64, Vec<(u64, u64)>>,
    next_read_id: u64,
    /// Quiet ranges to wake, a bounded number per tick, with the down node that woke them.
    to_wake: std::collections::VecDeque<(u64, u64)>,
    /// Nodes the transport reports down.
    down: std::collections::BTreeSet<u64>,
    /// Bytes proposed per range since its last size check.
    written: HashMap<u64, u64>,
    /// A round is due at once (a Ready left over, a compaction staged).
    more: bool,
    next_expiry: Instant,
    next_gauges: Instant,
    /// What each led range last reported to the meta range: (version, conf_ver, term).
    reported: HashMap<u64, (u64, u64, u64)>,
    next_route_refresh: Instant,
    load: LoadCounter,
    /// The last message from each range's leader: for bounded-staleness reads.
    contacts: HashMap<u64, LeaderContact>,
}

/// When a follower last heard from its leader, and what that leader had committed then.
#[derive(Clone, Copy, Debug)]
struct LeaderContact {
    at: Instant,
    term: u64,
    commit: u64,
}

/// A random number per call, from the standard library's per-process hasher keys: read ids
/// must not repeat across restarts (a leader's answer to a read sent before a restart must not
/// confirm a new one).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.finish()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// A range's tick phase within the interval: spread by a hash of node and range.
fn phase(node_id: u64, range_id: u64, tick: Duration) -> Duration {
    let mut x = node_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ range_id;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    let nanos = tick.as_nanos().max(1) as u64;
    Duration::from_nanos(x % nanos)
}

impl Poller {
    fn new(
        index: usize,
        store: Store,
        config: Arc<RuntimeConfig>,
        network: Arc<dyn Network>,
        rx: Receiver<Command>,
        tx: Sender<Command>,
        shared: RuntimeHandle,
    ) -> Self {
        let now = Instant::now();
        let ticks = store
            .range_ids()
            .map(|r| Reverse((now + phase(config.node_id, r, config.tick), r)))
            .collect();
        Self {
            index,
            store,
            config,
            network,
            rx,
            tx,
            shared,
            ticks,
            writes: HashMap::new(),
            reads: HashMap::new(),
            confirmed: BTreeMap::new(),
            next_read_id: random_u64(),
            to_wake: std::collections::VecDeque::new(),
            down: std::collections::BTreeSet::new(),
            written: HashMap::new(),
            more: false,
            next_expiry: now,
            next_gauges: now,
            reported: HashMap::new(),
            next_route_refresh: now + ROUTE_REPORT_REFRESH,
            load: LoadCounter::new(now),
            contacts: HashMap::new(),
        }
    }

    fn run(&mut self) {
        let node = self.config.node_id;
        tracing::info!(
            node,
            poller = self.index,
            ranges = self.ticks.len(),
            "poller started"
        );
        // A panic in this thread halts the node like a storage failure would.
        struct HaltOnPanic(RuntimeHandle);
        impl Drop for HaltOnPanic {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.halted.store(true, Ordering::Relaxed);
                }
            }
        }
        let _guard = HaltOnPanic(self.shared.clone());
        match self.run_rounds() {
            Ok(()) => {
                self.fail_pending("the node is stopping");
                tracing::info!(node, poller = self.index, "poller stopped");
            }
            Err(e) => {
                self.shared.halted.store(true, Ordering::Relaxed);
                metrics::counter!("flotilla_store_halts_total").increment(1);
                tracing::error!(node, poller = self.index, error = %e,
                    "storage failure: this node's replicas stop (fail-stop)");
                self.fail_pending(&format!("storage failure: {e}"));
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let tick = self.ticks.peek().map(|Reverse((t, _))| *t);
        let house = self.next_expiry.min(self.next_gauges);
        tick.map_or(house, |t| t.min(house))
    }

    fn run_rounds(&mut self) -> Result<(), PeerError> {
        let mut commands = Vec::new();
        loop {
            let wait = if self.more {
                Duration::ZERO
            } else {
                self.next_wake().saturating_duration_since(Instant::now())
            };
            match self.rx.recv_timeout(wait) {
                Ok(command) => commands.push(command),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            while commands.len() < self.config.max_commands_per_round {
                match self.rx.try_recv() {
                    Ok(command) => commands.push(command),
                    Err(_) => break,
                }
            }
            // A halt elsewhere in the node stops this poller too (fail-stop for the node: its
            // other ranges must not keep leading while it refuses every request).
            if self.shared.is_halted() {
                return Err(PeerError::Halted(
                    "another poller of this node halted".into(),
                ));
            }
            // Time first: reads and leases are judged against a clock that has caught up.
            let now = Instant::now();
            // Work for a round: a command, a tick, a wake, a compaction. An idle wake-up (a
            // timer with nothing due) does not scan every range for a Ready: that scan is
            // what idle ranges would otherwise cost.
            let mut work = !commands.is_empty();
            work |= self.tick_due(now)?;
            let mut stop = false;
            for command in commands.drain(..) {
                if stop {
                    reply_command(
                        command,
                        RequestError::Unavailable("the node is stopping".into()),
                    );
                } else if !self.handle(command)? {
                    stop = true;
                }
            }
            if stop {
                return Ok(());
            }
            if work || self.more {
                let round = self.store.round()?;
                self.more = round.more;
                for range_id in &round.removed {
                    self.shared.routes.write().remove(range_id);
                }
                for range_id in &round.created {
                    self.shared.routes.write().insert(*range_id, self.index);
                    let due = now + phase(self.config.node_id, *range_id, self.config.tick);
                    self.ticks.push(Reverse((due, *range_id)));
                }
                self.dispatch(round);
                self.schedule_woken(now);
            }
            self.shared.pending[self.index].store(
                (self.writes.len() + self.reads.len()) as u64,
                Ordering::Relaxed,
            );
            if now >= self.next_expiry {
                self.expire(now);
                self.next_expiry = now + self.config.tick;
            }
            if now >= self.next_gauges {
                self.survey(now);
                self.collect_logs()?;
                self.next_gauges = now + Duration::from_secs(1);
            }
        }
    }

    /// Ticks the ranges that are due; returns whether it ticked or woke any.
    fn tick_due(&mut self, now: Instant) -> Result<bool, PeerError> {
        // A poller that stalled (a long fsync, a big snapshot) replays the ticks it missed, up
        // to twice the election timeout: a leader's lease and check-quorum are counted in
        // ticks, so dropping them would let a deposed leader believe in its lease for longer
        // than the followers waited. More than that cannot change any outcome.
        let max_catch_up = 2 * self.config.raft.election_timeout_ticks.max(1);
        let mut worked = false;
        for _ in 0..self.config.max_wakeups_per_tick {
            let Some((range_id, dead)) = self.to_wake.pop_front() else {
                break;
            };
            self.store
                .wake_after_node_down(range_id, dead, &self.down)?;
            worked = true;
        }
        self.schedule_woken(now);
        let mut quiesce: BTreeMap<u64, Vec<(u64, Message)>> = BTreeMap::new();
        while let Some(Reverse((due, range_id))) = self.ticks.peek().copied() {
            if due > now {
                break;
            }
            self.ticks.pop();
            // A quiet range leaves the schedule until it wakes.
            if self.store.peer(range_id).is_none() || self.store.is_quiet(range_id) {
                continue;
            }
            let tick = self.config.tick;
            let missed =
                (now.saturating_duration_since(due).as_nanos() / tick.as_nanos().max(1)) as u64;
            for _ in 0..=missed.min(max_catch_up) {
                self.store.tick_range(range_id)?;
            }
            worked = true;
            if self.config.quiesce {
                for (node, m) in self.store.try_quiesce(range_id)? {
                    quiesce.entry(node).or_default().push((range_id, m));
                }
                if self.store.is_quiet(range_id) {
                    continue;
                }
            }
            let next = due + tick * u32::try_from(missed + 1).unwrap_or(u32::MAX);
            self.ticks.push(Reverse((next, range_id)));
        }
        for (node, messages) in quiesce {
            self.network.send(node, messages);
        }
        Ok(worked)
    }

    /// Puts the ranges woken since the last call back on the tick schedule.
    fn schedule_woken(&mut self, now: Instant) {
        for range_id in self.store.take_woken() {
            let due = now + phase(self.config.node_id, range_id, self.config.tick);
            self.ticks.push(Reverse((due, range_id)));
        }
    }

    /// Queues the quiet ranges that `node` going down concerns for waking.
    fn node_down(&mut self, node: u64) {
        self.down.insert(node);
        let concerned = self.store.quiet_ranges_concerning(node);
        metrics::counter!("flotilla_store_liveness_wakeups_total")
            .increment(concerned.len() as u64);
        self.to_wake
            .extend(concerned.into_iter().map(|range_id| (range_id, node)));
    }

    /// Handles one command; `false` to stop.
    fn handle(&mut self, command: Command) -> Result<bool, PeerError> {
        match command {
            Command::Raft(range_id, from_node, message) => {
                let contact = matches!(
                    MessageType::try_from(message.msg_type),
                    Ok(MessageType::Append | MessageType::Heartbeat)
                )
                .then_some((message.from, message.term, message.leader_commit));
                self.store.step(range_id, from_node, message)?;
                if let Some((from, term, commit)) = contact {
                    self.note_leader_contact(range_id, from, term, commit);
                }
            }
            Command::Snapshot(range_id, message, data) => {
                if self.store.receive_snapshot(range_id, message, *data)?
                    == SnapshotReceipt::Created
                {
                    self.shared.routes.write().insert(range_id, self.index);
                    let due =
                        Instant::now() + phase(self.config.node_id, range_id, self.config.tick);
                    self.ticks.push(Reverse((due, range_id)));
                }
            }
            Command::SnapshotDone { range_id, to, ok } => {
                self.store.wake(range_id);
                if let Some(peer) = self.store.peer_mut(range_id) {
                    peer.raft().report_snapshot(to, ok);
                }
            }
            Command::Write {
                command,
                reply,
                deadline,
                submitted,
            } => self.propose(command, reply, deadline, submitted),
            Command::Read {
                request,
                reply,
                deadline,
                submitted,
            } => self.start_read(request, reply, deadline, submitted),
            Command::With(f) => f(&mut self.store),
            Command::NodeDown(node) => self.node_down(node),
            Command::NodeUp(node) => {
                self.down.remove(&node);
            }
            Command::AutoSplit {
                range_id,
                epoch,
                key,
            } => self.auto_split(range_id, epoch, key),
            Command::Measured { range_id, size } => self.load.measured(range_id, size),
            Command::Stop => return Ok(false),
        }
        Ok(true)
    }

    /// What every request is refused before it reaches its range: a poller with too many
    /// requests in flight, or no operation the node knows.
    fn precheck(&self, has_operation: bool, kind: &str) -> Result<(), KvError> {
        if self.writes.len() + self.reads.len() >= self.config.max_pending_requests {
            return Err(KvError::ServerBusy("too many requests in flight".into()));
        }
        if !has_operation {
            return Err(KvError::Malformed(format!("unknown {kind} operation")));
        }
        Ok(())
    }

    fn not_leader(&mut self, range_id: u64) -> KvError {
        KvError::NotLeader {
            range_id,
            leader_node: self
                .store
                .leader_node(range_id)
                .filter(|n| *n != self.config.node_id),
            leader_addr: None,
        }
    }

    fn propose(
        &mut self,
        command: RaftCommand,
        reply: oneshot::Sender<WriteResult>,
        deadline: Instant,
        submitted: Instant,
    ) {
        if let Some(header) = &command.header {
            self.load.write(header.range_id);
        }
        let timing = Timing::new(
            write_op(&command),
            command.header.as_ref().map_or(0, |h| h.range_id),
            submitted,
        );
        let operation = match (command.request, command.admin) {
            (Some(r), None) if r.request.is_some() => Some(StoreCommand::Write(r)),
            (None, Some(a)) if a.request.is_some() => Some(StoreCommand::Admin(a)),
            _ => None,
        };
        if let Err(e) = self.precheck(operation.is_some(), "write") {
            respond(self.config.slow_request, &timing, reply, Err(e.into()));
            return;
        }
        let (Some(header), Some(operation)) = (command.header, operation) else {
            respond(
                self.config.slow_request,
                &timing,
                reply,
                Err(KvError::Malformed("a write needs a header".into()).into()),
            );
            return;
        };
        let range_id = header.range_id;
        if let StoreCommand::Write(request) = &operation {
            self.count_written(range_id, prost::Message::encoded_len(request) as u64);
        }
        match self.store.propose(header, operation, now_ms()) {
            Ok(Proposal::Answered(response)) => {
                respond(self.config.slow_request, &timing, reply, Ok(*response));
            }
            Ok(Proposal::Pending(ticket)) => {
                metrics::counter!("flotilla_raft_proposals_total").increment(1);
                let displaced = self.writes.insert(
                    (ticket.range_id, ticket.index),
                    PendingWrite {
                        term: ticket.term,
                        reply,
                        deadline,
                        timing,
                    },
                );
                // The index was proposed again in a later term: the earlier entry there was
                // truncated, so that write certainly did not apply.
                if let Some(old) = displaced {
                    let _ = old
                        .reply
                        .send(Err(KvError::ProposalDropped { range_id }.into()));
                }
            }
            Err(ProposeRefused::NotLeader { .. }) => {
                let e = self.not_leader(range_id);
                respond(self.config.slow_request, &timing, reply, Err(e.into()));
            }
            Err(ProposeRefused::Kv(e)) => {
                respond(self.config.slow_request, &timing, reply, Err(e.into()));
            }
            Err(ProposeRefused::Busy { reason, .. }) => {
                respond(
                    self.config.slow_request,
                    &timing,
                    reply,
                    Err(KvError::ServerBusy(reason).into()),
                );
            }
        }
    }

    fn start_read(
        &mut self,
        request: ReadRequest,
        reply: oneshot::Sender<ReadResult>,
        deadline: Instant,
        submitted: Instant,
    ) {
        let timing = Timing::new(read_op(&request), request.range_id, submitted);
        if let Err(e) = self.precheck(request.request.is_some(), "read") {
            respond(self.config.slow_request, &timing, reply, Err(e.into()));
            return;
        }
        let range_id = request.range_id;
        self.load.read(range_id);
        let Some(peer) = self.store.peer_mut(range_id) else {
            respond(
                self.config.slow_request,
                &timing,
                reply,
                Err(KvError::RangeNotFound(range_id).into()),
            );
            return;
        };
        if let Err(e) = check_range(
            peer.applier().descriptor(),
            range_id,
            request.epoch.as_ref(),
        ) {
            respond(self.config.slow_request, &timing, reply, Err(e.into()));
            return;
        }
        let consistency =
            ReadConsistency::try_from(request.consistency).unwrap_or(ReadConsistency::Linearizable);
        let is_leader = peer.raft().status().role == Role::Leader;
        match consistency {
            ReadConsistency::Stale
                if request.max_staleness_ms == 0
                    || self.fresh_enough(range_id, request.max_staleness_ms) =>
            {
                metrics::counter!("flotilla_store_stale_reads_total", "served" => "local")
                    .increment(1);
                respond(
                    self.config.slow_request,
                    &timing,
                    reply,
                    self.store.serve_read(&request),
                );
                return;
            }
            // Not provably fresh enough: a ReadIndex round (never staler, maybe slower).
            ReadConsistency::Stale => {
                metrics::counter!("flotilla_store_stale_reads_total", "served" => "read_index")
                    .increment(1);
            }
            ReadConsistency::Linearizable if !is_leader => {
                let e = self.not_leader(range_id);
                respond(self.config.slow_request, &timing, reply, Err(e.into()));
                return;
            }
            _ => {}
        }
        self.store.wake(range_id);
        let id = self.next_read_id;
        self.next_read_id = self.next_read_id.wrapping_add(1);
        let context = Bytes::copy_from_slice(&id.to_be_bytes());
        let Some(peer) = self.store.peer_mut(range_id) else {
            return;
        };
        match peer.raft().read_index(context) {
            Ok(()) => {
                self.reads.insert(
                    id,
                    PendingRead {
                        range_id,
                        request,
                        reply,
                        deadline,
                        timing,
                    },
                );
            }
            Err(RaftReadError::NoLeader) => {
                let e = self.not_leader(range_id);
                respond(self.config.slow_request, &timing, reply, Err(e.into()));
            }
            Err(RaftReadError::TooManyPending { limit }) => {
                respond(
                    self.config.slow_request,
                    &timing,
                    reply,
                    Err(
                        KvError::ServerBusy(format!("{limit} reads already wait for the leader"))
                            .into(),
                    ),
                );
            }
            Err(RaftReadError::Halted(why)) => {
                respond(
                    self.config.slow_request,
                    &timing,
                    reply,
                    Err(RequestError::Unavailable(why)),
                );
            }
        }
    }

    /// Remembers that the leader of `range_id` (replica `from`, term `term`) had committed
    /// `commit` when it sent a message that arrived now (only messages from the leader this
    /// replica follows in that term count).
    fn note_leader_contact(&mut self, range_id: u64, from: u64, term: u64, commit: u64) {
        let Some(peer) = self.store.peer_mut(range_id) else {
            return;
        };
        let status = peer.raft().status();
        if status.role == Role::Leader || status.leader_id != from || status.term != term {
            return;
        }
        let contact = self.contacts.entry(range_id).or_insert(LeaderContact {
            at: Instant::now(),
            term,
            commit,
        });
        // Messages may arrive out of order: keep the highest commit seen in the term.
        if contact.term != term || commit >= contact.commit {
            *contact = LeaderContact {
                at: Instant::now(),
                term,
                commit,
            };
        }
    }

    /// Whether this follower's state of `range_id` is no older than `max_ms`: it heard from
    /// its current leader at most `max_ms` minus two election timeouts ago (a deposed leader
    /// stops within an election timeout of losing its quorum, check-quorum; two allow for the
    /// randomized timeout and message delay) and applied what that leader had committed.
    fn fresh_enough(&mut self, range_id: u64, max_ms: u64) -> bool {
        // Without check-quorum a deposed leader may go on sending for ever: no bound holds,
        // every such read takes a ReadIndex round.
        if !self.config.raft.check_quorum {
            return false;
        }
        let election = self.config.tick * self.config.raft.election_timeout_ticks as u32;
        let budget = Duration::from_millis(max_ms).saturating_sub(election * 2);
        let Some(peer) = self.store.peer_mut(range_id) else {
            return false;
        };
        let status = peer.raft().status();
        if status.role == Role::Leader {
            // A leader confirms with a ReadIndex round (or its lease): a quiet leader does not
            // tick, so check-quorum bounds nothing for it, and a new one may not know the
            // commit index yet.
            return false;
        }
        let Some(contact) = self.contacts.get(&range_id).copied() else {
            return false;
        };
        let applied = peer.applier().applied_index();
        // 0: the leader did not know its commit index yet (nothing of its term committed).
        contact.commit > 0
            && status.term == contact.term
            && applied >= contact.commit
            && contact.at.elapsed() <= budget
    }

    fn dispatch(&mut self, round: StoreRound) {
        let StoreRound {
            outbox,
            reads,
            completed,
            ..
        } = round;
        for (node, messages) in outbox {
            if node == 0 || node == self.config.node_id {
                continue;
            }
            let (snapshots, messages): (Vec<_>, Vec<_>) = messages
                .into_iter()
                .partition(|(_, m)| m.msg_type == MessageType::Snapshot as i32);
            if !messages.is_empty() {
                self.network.send(node, messages);
            }
            for (range_id, message) in snapshots {
                self.start_snapshot(node, range_id, message);
            }
        }
        for (ticket, outcome) in completed {
            let Some(pending) = self.writes.remove(&(ticket.range_id, ticket.index)) else {
                continue;
            };
            metrics::histogram!("flotilla_raft_propose_apply_seconds")
                .record(pending.timing.started.elapsed().as_secs_f64());
            let (result, outcome) = match outcome {
                Outcome::Applied(response) if ticket.term == pending.term => (Ok(*response), "ok"),
                Outcome::Applied(_) | Outcome::Dropped => (
                    Err(KvError::ProposalDropped {
                        range_id: ticket.range_id,
                    }
                    .into()),
                    "dropped",
                ),
                Outcome::Unknown => (Err(KvError::Timeout.into()), "unknown"),
            };
            pending.timing.finish(self.config.slow_request, outcome);
            let _ = pending.reply.send(result);
        }
        for (range_id, state) in reads {
            let Ok(raw) = <[u8; 8]>::try_from(state.context.as_ref()) else {
                continue;
            };
            let id = u64::from_be_bytes(raw);
            if let Some(read) = self.reads.get_mut(&id).filter(|r| r.range_id == range_id) {
                read.timing.confirmed = Some(Instant::now());
                self.confirmed
                    .entry(range_id)
                    .or_default()
                    .push((state.index, id));
            }
        }
        self.serve_confirmed();
    }

    /// Serves the confirmed reads whose range has applied up to their index.
    fn serve_confirmed(&mut self) {
        let mut done = Vec::new();
        for (range_id, waiting) in &mut self.confirmed {
            let applied = self
                .store
                .peer(*range_id)
                .map_or(u64::MAX, |p| p.applier().applied_index());
            waiting.retain(|(index, id)| {
                if *index <= applied {
                    done.push(*id);
                    false
                } else {
                    true
                }
            });
        }
        self.confirmed.retain(|_, w| !w.is_empty());
        for id in done {
            if let Some(read) = self.reads.remove(&id) {
                let result = self.store.serve_read(&read.request);
                respond(self.config.slow_request, &read.timing, read.reply, result);
            }
        }
    }

    fn start_snapshot(&mut self, node: u64, range_id: u64, mut message: Message) {
        let to = message.to;
        let engine = self.store.engine().clone();
        let chunk_bytes = self.config.snapshot_chunk_bytes;
        let node_id = self.config.node_id;
        // Built where the network runs it, not here: reading a whole range would stall every
        // range of this poller.
        let build: SnapshotBuild = Box::new(move || {
            let parts = prepare_snapshot(&engine, range_id, &mut message, chunk_bytes)
                .inspect_err(|e| {
                    tracing::warn!(node = node_id, range = range_id, error = %e,
                        "cannot build a snapshot");
                })
                .ok()?;
            metrics::counter!("flotilla_store_snapshots_sent_total").increment(1);
            Some((message, parts))
        });
        let tx = self.tx.clone();
        let done = Box::new(move |ok: bool| {
            let _ = tx.send(Command::SnapshotDone { range_id, to, ok });
        });
        self.network.send_snapshot(node, range_id, build, done);
    }

    /// Counts bytes proposed to a range; after a quarter of the split size, checks its size
    /// off the poller (the check sends `AutoSplit` back if the range is too big).
    fn count_written(&mut self, range_id: u64, bytes: u64) {
        let limit = self.config.split_size_bytes;
        if limit == 0 {
            return;
        }
        let written = self.written.entry(range_id).or_default();
        *written += bytes;
        if *written < (limit / 4).max(1) {
            return;
        }
        *written = 0;
        let Some(peer) = self.store.peer(range_id) else {
            return;
        };
        let descriptor = peer.applier().descriptor().clone();
        let engine = self.store.engine().clone();
        let tx = self.tx.clone();
        let node = self.config.node_id;
        let spawned = std::thread::Builder::new()
            .name("flotilla-split-check".into())
            .spawn(move || match kv::size_and_middle(&engine, &descriptor) {
                Ok(Some((size, _))) if size <= limit => {
                    let _ = tx.send(Command::Measured { range_id, size });
                }
                Ok(Some((size, key))) => {
                    let _ = tx.send(Command::Measured { range_id, size });
                    tracing::info!(node, range = range_id, size, "range too big: splitting");
                    let _ = tx.send(Command::AutoSplit {
                        range_id,
                        epoch: descriptor.epoch,
                        key: key.into(),
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(node, range = range_id, error = %e, "size check failed");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(node, range = range_id, error = %e, "cannot start a size check");
        }
    }

    /// Proposes the split a size check asked for, if this replica still leads the range.
    fn auto_split(&mut self, range_id: u64, epoch: Option<RangeEpoch>, key: Bytes) {
        // The epoch measured: if the range changed since, the split is refused (EpochNotMatch)
        // rather than cut at a point chosen for another range.
        let header = CommandHeader {
            range_id,
            epoch,
            ..CommandHeader::default()
        };
        let admin = AdminRequest {
            request: Some(admin_request::Request::Split(SplitRequest {
                split_key: key,
            })),
        };
        match self
            .store
            .propose(header, StoreCommand::Admin(admin), now_ms())
        {
            Ok(_) => metrics::counter!("flotilla_store_auto_splits_total").increment(1),
            Err(e) => {
                tracing::debug!(node = self.config.node_id, range = range_id, error = %e,
                    "automatic split not proposed");
            }
        }
    }

    /// Answers requests past their deadline with `Timeout`.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<(u64, u64)> = self
            .writes
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some(w) = self.writes.remove(&key) {
                w.timing.finish(self.config.slow_request, "timeout");
                let _ = w.reply.send(Err(KvError::Timeout.into()));
            }
        }
        let expired: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for id in expired {
            if let Some(r) = self.reads.remove(&id) {
                r.timing.finish(self.config.slow_request, "timeout");
                let _ = r.reply.send(Err(KvError::Timeout.into()));
            }
        }
    }

    /// Once a second, one pass over the ranges: the gauges, and the routing record of every
    /// range led here whose descriptor or term changed since its last report (of all of them
    /// every [`ROUTE_REPORT_REFRESH`]).
    fn survey(&mut self, now: Instant) {
        let refresh = now >= self.next_route_refresh;
        if refresh {
            self.next_route_refresh = now + ROUTE_REPORT_REFRESH;
            let store = &self.store;
            self.reported
                .retain(|range_id, _| store.peer(*range_id).is_some());
        }
        // A node without a meta replica (one that joined) addresses it by the version it
        // always has: the meta range never splits (`kv::split`), and only the version is
        // checked.
        let meta_epoch = self
            .store
            .engine()
            .descriptor(kv::routing::META_RANGE)
            .ok()
            .flatten()
            .and_then(|d| d.epoch)
            .unwrap_or(flotilla_transport::meta::RangeEpoch {
                version: 1,
                conf_ver: 0,
            });
        let node_id = self.config.node_id;
        let ids: Vec<u64> = self.store.range_ids().collect();
        let (mut leaders, mut lag, mut quiet, mut leaderless) = (0u64, 0u64, 0u64, 0u64);
        let mut records = Vec::new();
        let mut led = Vec::new();
        for range_id in &ids {
            let Some(peer) = self.store.peer_mut(*range_id) else {
                continue;
            };
            quiet += u64::from(peer.is_quiet());
            let status = peer.raft().status();
            lag += status
                .committed
                .saturating_sub(peer.applier().applied_index());
            leaderless += u64::from(peer.knows_no_leader());
            if status.role != Role::Leader {
                self.reported.remove(range_id);
                continue;
            }
            leaders += 1;
            led.push(*range_id);
            let descriptor = peer.applier().descriptor();
            let epoch = descriptor.epoch.unwrap_or_default();
            let key = (epoch.version, epoch.conf_ver, status.term);
            if !refresh && self.reported.get(range_id) == Some(&key) {
                continue;
            }
            self.reported.insert(*range_id, key);
            records.push(flotilla_transport::meta::RangeRecord {
                descriptor: Some(descriptor.clone()),
                leader_node: node_id,
                leader_term: status.term,
            });
        }
        let poller = self.index.to_string();
        metrics::gauge!("flotilla_store_ranges", "poller" => poller.clone()).set(ids.len() as f64);
        metrics::gauge!("flotilla_store_leaders", "poller" => poller.clone()).set(leaders as f64);
        metrics::gauge!("flotilla_store_quiet_ranges", "poller" => poller.clone())
            .set(quiet as f64);
        metrics::gauge!("flotilla_store_apply_lag_entries", "poller" => poller.clone())
            .set(lag as f64);
        metrics::gauge!("flotilla_store_leaderless_ranges", "poller" => poller.clone())
            .set(leaderless as f64);
        metrics::gauge!("flotilla_store_pending_requests", "poller" => poller)
            .set((self.writes.len() + self.reads.len()) as f64);
        let store = &self.store;
        let loads = self.load.survey(now, &led, |id| store.peer(id).is_some());
        self.contacts.retain(|id, _| store.peer(*id).is_some());
        if let Some(mine) = self.shared.loads.get(self.index) {
            *mine.lock() = loads;
        }
        while !records.is_empty() {
            let rest = records.split_off(records.len().min(ROUTE_REPORT_BATCH));
            metrics::counter!("flotilla_store_route_reports_total").increment(records.len() as u64);
            self.network
                .report_routes(meta_epoch, std::mem::replace(&mut records, rest));
        }
    }

    /// Releases the logs that grew past the GC threshold (written with the next round).
    fn collect_logs(&mut self) -> Result<(), PeerError> {
        let ids: Vec<u64> = self.store.range_ids().collect();
        for range_id in ids {
            if let Some(peer) = self.store.peer_mut(range_id) {
                if peer.maybe_compact(self.config.log_gc_threshold_entries)? {
                    metrics::counter!("flotilla_raft_log_compactions_total").increment(1);
                    self.more = true;
                }
            }
        }
        Ok(())
    }

    fn fail_pending(&mut self, why: &str) {
        self.shared.pending[self.index].store(0, Ordering::Relaxed);
        for (_, w) in self.writes.drain() {
            let _ = w
                .reply
                .send(Err(RequestError::Unavailable(why.to_string())));
        }
        for (_, r) in self.reads.drain() {
            let _ = r
                .reply
                .send(Err(RequestError::Unavailable(why.to_string())));
        }
        while let Ok(command) = self.rx.try_recv() {
            reply_command(command, RequestError::Unavailable(why.to_string()));
        }
    }
}
