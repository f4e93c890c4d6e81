//! The whole-store simulator (DESIGN section 4, second half): 4 or 5 nodes, each a real
//! `Store` over an in-memory RocksDB, hosting many ranges; the simulated network of the Raft
//! simulator between them; clients writing and reading through the ranges' leaders with
//! sessions, splits and replica moves while nodes crash, stall and get cut off; snapshots for
//! replicas far behind or new. One thread, one seed: a seed replays exactly.
//!
//! The node's decisions outside a round (a snapshot arriving, a peer node going down, a read to
//! serve) are the store's own (`store/events.rs`), so this drives what a node runs; only the
//! poller's threads and clock are replaced, by the event queue below.
//!
//! After every round: at most one leader per range and term, every entry applied with the same
//! outcome on every replica, each node's ranges disjoint. After healing, within a bound: one
//! leader per range, every replica caught up with equal data, the ranges tiling the keyspace
//! with no gap or overlap, and every client's final reads done. The client history (each key's
//! puts and linearizable gets, with calls and returns) is then checked for linearizability.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_engine::check::linearizability::Operation;
use flotilla_engine::kv::KvConfig;
use flotilla_engine::raft::Config;
use flotilla_engine::storage::{ReceivedSnapshot, SnapshotParts};
use flotilla_engine::store::{prepare_snapshot, SnapshotReceipt, StoreRound};
use flotilla_transport::raft::{Message, MessageType};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::network::{Fate, Micros, Network, NetworkConfig, TICK_US};

mod checks;
mod clients;
mod faults;
mod node;

use self::checks::StoreChecker;
use self::clients::SimClient;
use self::node::{StoreNode, MAX_WAKEUPS_PER_TICK};

/// Ticks of chaos, then at most this many for the calm phase to converge.
const CHAOS_TICKS: u64 = 300;
const CALM_TICKS_MAX: u64 = 600;
/// A peer not heard from for this long is reported down (the transport's `down_after`).
const DOWN_AFTER_US: Micros = 3 * TICK_US;
/// A round runs this soon after work arrives (messages of the same instant share it).
const ROUND_DELAY_US: Micros = 20;
/// Rounds a node runs back to back while a Ready is left over.
const MAX_ROUNDS_IN_A_ROW: usize = 8;
/// Snapshot chunks are small here, so snapshots have many.
const SNAPSHOT_CHUNK_BYTES: usize = 512;

enum Event {
    Tick {
        node: u64,
        incarnation: u64,
    },
    Round {
        node: u64,
        incarnation: u64,
    },
    Deliver {
        to: u64,
        from: u64,
        range: u64,
        message: Box<Message>,
    },
    /// A snapshot stream arrives whole (a lost stream reports failure to its sender).
    Snapshot {
        to: u64,
        from: u64,
        from_incarnation: u64,
        range: u64,
        message: Box<Message>,
        parts: Box<SnapshotParts>,
    },
    /// The sender learns how its snapshot stream ended.
    SnapshotDone {
        node: u64,
        incarnation: u64,
        range: u64,
        to_replica: u64,
        ok: bool,
    },
    Restart(u64),
    Fault,
    NetHeal,
    Admin,
    Client {
        client: usize,
        wake: u64,
    },
    /// The chaos phase ends.
    Heal,
}

pub struct Outcome {
    pub history: Vec<Operation>,
    pub events: u64,
    pub applied: u64,
    pub splits: u64,
    pub moves: u64,
    pub snapshots: u64,
}

pub struct StoreWorld {
    rng: ChaCha8Rng,
    now: Micros,
    seq: u64,
    queue: BTreeMap<(Micros, u64), Event>,
    nodes: BTreeMap<u64, StoreNode>,
    net: Network,
    checker: StoreChecker,
    clients: Vec<SimClient>,
    history: Vec<Operation>,
    /// Logical time of the history: one value per call or return.
    clock: u64,
    next_value: u64,
    next_read_id: u64,
    /// Rounds already queued, by node and incarnation.
    round_queued: BTreeSet<(u64, u64)>,
    calm: bool,
    log_gc_threshold: u64,
    events: u64,
    applied: u64,
    splits: u64,
    moves: u64,
    snapshots: u64,
    verbose: bool,
    /// `FLOTILLA_SIM_TRACE_RANGE`: narrate every message of this range (with verbose).
    trace_range: Option<u64>,
}

impl StoreWorld {
    pub fn new(seed: u64, verbose: bool) -> Self {
        // Another stream than the Raft simulator's for the same seed.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5707_e5ee_d000_0000);
        let node_count = *[4u64, 5].choose(&mut rng).expect("non-empty");
        let members: Vec<u64> = (1..=3).collect();
        let user_ranges = rng.random_range(1..=4);
        let raft = Config {
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 1,
            max_inflight_msgs: *[1usize, 4, 32].choose(&mut rng).expect("non-empty"),
            max_size_per_msg_bytes: *[200u64, 4096, 1 << 20].choose(&mut rng).expect("non-empty"),
            seed,
            ..Config::default()
        };
        let kv = KvConfig::default();
        let drift = rng.random_range(0.0..0.05);
        let mut nodes = BTreeMap::new();
        for id in 1..=node_count {
            let skew = rng.random_range(-drift..=drift);
            let tick_us = (TICK_US as f64 * (1.0 + skew)) as u64;
            let node = StoreNode::new(id, raft.clone(), kv.clone(), &members, user_ranges, tick_us);
            nodes.insert(id, node);
        }
        let net = Network::new(NetworkConfig::random(&mut rng));
        let log_gc_threshold = *[8u64, 32, 200].choose(&mut rng).expect("non-empty");
        let mut clients: Vec<SimClient> = (0..4).map(|i| SimClient::new(1_000 + i)).collect();
        clients.push(SimClient::operator(2_000));
        let mut w = Self {
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            net,
            checker: StoreChecker::default(),
            clients,
            history: Vec::new(),
            clock: 0,
            next_value: 1,
            next_read_id: 1,
            round_queued: BTreeSet::new(),
            calm: false,
            log_gc_threshold,
            events: 0,
            applied: 0,
            splits: 0,
            moves: 0,
            snapshots: 0,
            verbose,
            trace_range: std::env::var("FLOTILLA_SIM_TRACE_RANGE")
                .ok()
                .and_then(|v| v.parse().ok()),
        };
        w.say(|| {
            format!(
                "seed {seed}: {node_count} nodes (members 1-3), {user_ranges} user ranges, \
                 log GC past {log_gc_threshold} entries, network {:?}",
                w.net.config
            )
        });
        for id in 1..=node_count {
            w.start_node(id);
        }
        for c in 0..w.clients.len() {
            let at = w.rng.random_range(0..5 * TICK_US);
            w.wake_client(c, at);
        }
        let first_fault = w.rng.random_range(10..30) * TICK_US;
        w.schedule(first_fault, Event::Fault);
        let first_admin = w.rng.random_range(5..20) * TICK_US;
        w.schedule(first_admin, Event::Admin);
        w.schedule(CHAOS_TICKS * TICK_US, Event::Heal);
        w
    }

    fn schedule(&mut self, delay: Micros, event: Event) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), event);
    }

    fn say(&self, what: impl FnOnce() -> String) {
        if self.verbose {
            crate::network::narrate(self.now, &what());
        }
    }

    fn node(&mut self, id: u64) -> &mut StoreNode {
        self.nodes.get_mut(&id).expect("simulated node exists")
    }

    fn node_ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Runs the schedule; returns the client history for the linearizability check.
    pub fn run(mut self) -> Result<Outcome, String> {
        let deadline = (CHAOS_TICKS + CALM_TICKS_MAX) * TICK_US;
        while let Some(((at, _), event)) = self.queue.pop_first() {
            self.now = at;
            self.events += 1;
            self.handle(event)?;
            if self.calm && self.clients_done() && self.converged()? {
                self.say(|| "converged".into());
                return Ok(Outcome {
                    history: self.history,
                    events: self.events,
                    applied: self.applied,
                    splits: self.splits,
                    moves: self.moves,
                    snapshots: self.snapshots,
                });
            }
            if self.now > deadline {
                return Err(format!(
                    "liveness: not converged {CALM_TICKS_MAX} ticks after healing: {}",
                    self.describe()
                ));
            }
        }
        Err("the event queue ran dry".into())
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        // What arrives at a stalled process waits until it resumes (in arrival order).
        if let Event::Deliver { to, .. } | Event::Snapshot { to, .. } = &event {
            if let Some(until) = self.stalled(*to) {
                let delay = until - self.now + self.rng.random_range(0..50);
                self.schedule(delay, event);
                return Ok(());
            }
        }
        match event {
            Event::Tick { node, incarnation } => self.on_tick(node, incarnation)?,
            Event::Round { node, incarnation } => {
                self.round_queued.remove(&(node, incarnation));
                if self.nodes[&node].incarnation == incarnation {
                    self.rounds(node)?;
                }
            }
            Event::Deliver {
                to,
                from,
                range,
                message,
            } => {
                let Some(store) = self.node(to).store.as_mut() else {
                    return Ok(());
                };
                store
                    .step(range, from, *message)
                    .map_err(|e| format!("node {to}: step failed: {e}"))?;
                self.queue_round(to);
            }
            Event::Snapshot {
                to,
                from,
                from_incarnation,
                range,
                message,
                parts,
            } => self.on_snapshot(to, from, from_incarnation, range, message, parts)?,
            Event::SnapshotDone {
                node,
                incarnation,
                range,
                to_replica,
                ok,
            } => {
                if self.nodes[&node].incarnation == incarnation {
                    if let Some(store) = self.node(node).store.as_mut() {
                        store.wake(range);
                        if let Some(peer) = store.peer_mut(range) {
                            peer.raft().report_snapshot(to_replica, ok);
                        }
                        self.queue_round(node);
                    }
                }
            }
            Event::Restart(id) => {
                if !self.nodes[&id].is_up() {
                    self.start_node(id);
                }
            }
            Event::Fault => {
                if !self.calm {
                    self.fault();
                    let next = self.rng.random_range(5..25) * TICK_US;
                    self.schedule(next, Event::Fault);
                }
            }
            Event::NetHeal => self.net.heal(),
            Event::Admin => {
                if !self.calm {
                    self.start_admin();
                    let next = self.rng.random_range(10..30) * TICK_US;
                    self.schedule(next, Event::Admin);
                }
            }
            Event::Client { client, wake } => {
                if self.clients[client].wake == wake {
                    self.client_act(client)?;
                }
            }
            Event::Heal => self.heal(),
        }
        Ok(())
    }

    /// `Some(until)` while node `id` is up but stalled.
    fn stalled(&self, id: u64) -> Option<Micros> {
        let n = &self.nodes[&id];
        n.paused_until.filter(|&t| n.is_up() && t > self.now)
    }

    fn start_node(&mut self, id: u64) {
        let now = self.now;
        let others = self.node_ids();
        let node = self.node(id);
        node.start(now);
        for other in others.into_iter().filter(|&o| o != id) {
            node.last_heard.insert(other, now);
        }
        let incarnation = node.incarnation;
        let phase = self.rng.random_range(0..TICK_US);
        self.schedule(
            phase,
            Event::Tick {
                node: id,
                incarnation,
            },
        );
        self.say(|| format!("node {id} starts (incarnation {incarnation})"));
    }

    fn queue_round(&mut self, id: u64) {
        let incarnation = self.nodes[&id].incarnation;
        if self.round_queued.insert((id, incarnation)) {
            self.schedule(
                ROUND_DELAY_US,
                Event::Round {
                    node: id,
                    incarnation,
                },
            );
        }
    }

    /// A node's tick: liveness, woken ranges, every ticking range ticked (and offered
    /// quiescence), log GC now and then, then a round.
    fn on_tick(&mut self, id: u64, incarnation: u64) -> Result<(), String> {
        if self.nodes[&id].incarnation != incarnation || !self.nodes[&id].is_up() {
            return Ok(());
        }
        if let Some(until) = self.stalled(id) {
            let delay = until - self.now;
            self.schedule(
                delay,
                Event::Tick {
                    node: id,
                    incarnation,
                },
            );
            return Ok(());
        }
        self.liveness(id);
        let now = self.now;
        let threshold = self.log_gc_threshold;
        let node = self.node(id);
        let tick_us = node.tick_us;
        // A stalled node replays the ticks it missed, up to twice the election timeout (the
        // runtime's rule: leases and check-quorum count ticks).
        let missed = (now.saturating_sub(node.last_tick) / tick_us).clamp(1, 20);
        node.last_tick = now;
        node.ticks_since_gc += 1;
        let gc = node.ticks_since_gc >= 10;
        if gc {
            node.ticks_since_gc = 0;
        }
        let mut outgoing = Vec::new();
        {
            let to_wake: Vec<(u64, u64)> = (0..MAX_WAKEUPS_PER_TICK)
                .map_while(|_| node.to_wake.pop_front())
                .collect();
            let down = node.down.clone();
            let store = node.store.as_mut().expect("checked up");
            for (range, dead) in to_wake {
                store
                    .wake_after_node_down(range, dead, &down)
                    .map_err(|e| format!("node {id}: wake failed: {e}"))?;
            }
            let ranges: Vec<u64> = store.range_ids().collect();
            for range in ranges {
                if store.is_quiet(range) {
                    continue;
                }
                for _ in 0..missed {
                    store
                        .tick_range(range)
                        .map_err(|e| format!("node {id}: tick failed: {e}"))?;
                }
                let quiesce = store
                    .try_quiesce(range)
                    .map_err(|e| format!("node {id}: quiesce failed: {e}"))?;
                outgoing.extend(quiesce.into_iter().map(|(to, m)| (to, range, m)));
                if gc {
                    if let Some(peer) = store.peer_mut(range) {
                        peer.maybe_compact(threshold)
                            .map_err(|e| format!("node {id}: log GC failed: {e}"))?;
                    }
                }
            }
        }
        for (to, range, m) in outgoing {
            self.send(id, to, range, m);
        }
        self.schedule(
            tick_us,
            Event::Tick {
                node: id,
                incarnation,
            },
        );
        self.rounds(id)
    }

    /// Node liveness as `id`'s transport sees it: a peer that runs and whose link to `id` is
    /// not cut is heard from; one silent for `DOWN_AFTER_US` is reported down, which queues the
    /// quiet ranges it concerns for waking.
    fn liveness(&mut self, id: u64) {
        let now = self.now;
        let heard: Vec<(u64, bool)> = self
            .nodes
            .keys()
            .filter(|&&p| p != id)
            .map(|&p| (p, self.nodes[&p].runs(now) && !self.net.is_cut(p, id)))
            .collect();
        let node = self.node(id);
        let mut newly_down = Vec::new();
        for (peer, reachable) in heard {
            if reachable {
                node.last_heard.insert(peer, now);
                node.down.remove(&peer);
            } else if now.saturating_sub(node.last_heard.get(&peer).copied().unwrap_or(now))
                > DOWN_AFTER_US
                && node.down.insert(peer)
            {
                newly_down.push(peer);
            }
        }
        for peer in newly_down {
            let concerned = node.store().quiet_ranges_concerning(peer);
            node.to_wake
                .extend(concerned.into_iter().map(|range| (range, peer)));
        }
    }

    /// Rounds on node `id` until no Ready is left (bounded), each dispatched and checked.
    fn rounds(&mut self, id: u64) -> Result<(), String> {
        for _ in 0..MAX_ROUNDS_IN_A_ROW {
            if !self.nodes[&id].runs(self.now) {
                return Ok(());
            }
            let store = self.node(id).store();
            let before = store.engine().synced_writes();
            let round = store
                .round()
                .map_err(|e| format!("node {id}: round failed: {e}"))?;
            // One for the whole round, plus one per replica deleted in it (its removal).
            let synced = store.engine().synced_writes() - before;
            if synced > 1 + round.removed.len() as u64 {
                return Err(format!("node {id}: {synced} synced writes in one round"));
            }
            let more = round.more;
            self.dispatch(id, round)?;
            self.check_node(id)?;
            if !more {
                break;
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, id: u64, round: StoreRound) -> Result<(), String> {
        let StoreRound {
            outbox,
            applied,
            reads,
            completed,
            ..
        } = round;
        self.applied += applied.len() as u64;
        for (range, a) in &applied {
            self.checker
                .applied(id, *range, a)
                .map_err(|e| format!("node {id}: {e}"))?;
        }
        for (to, messages) in outbox {
            if to == 0 || to == id {
                continue;
            }
            for (range, m) in messages {
                if m.msg_type == MessageType::Snapshot as i32 {
                    self.send_snapshot(id, to, range, m);
                } else {
                    self.send(id, to, range, m);
                }
            }
        }
        for (ticket, outcome) in completed {
            let waiting = self
                .node(id)
                .writes
                .remove(&(ticket.range_id, ticket.index));
            if let Some((term, waiting)) = waiting {
                self.write_answered(waiting, term == ticket.term, outcome)?;
            }
        }
        let node = self.node(id);
        for (range, state) in reads {
            let Ok(raw) = <[u8; 8]>::try_from(state.context.as_ref()) else {
                continue;
            };
            let read_id = u64::from_be_bytes(raw);
            if node
                .reads
                .get(&read_id)
                .is_some_and(|(r, _)| r.range_id == range)
            {
                node.confirmed.push((range, state.index, read_id));
            }
        }
        self.serve_confirmed(id)
    }

    /// Serves the confirmed reads whose range has applied up to their index.
    fn serve_confirmed(&mut self, id: u64) -> Result<(), String> {
        let node = self.node(id);
        let store = node
            .store
            .as_ref()
            .expect("dispatch runs on a running node");
        let mut ready = Vec::new();
        node.confirmed.retain(|&(range, index, read_id)| {
            let applied = store
                .peer(range)
                .map_or(u64::MAX, |p| p.applier().applied_index());
            if index <= applied {
                ready.push(read_id);
                false
            } else {
                true
            }
        });
        let mut answers = Vec::new();
        for read_id in ready {
            if let Some((request, waiting)) = node.reads.remove(&read_id) {
                answers.push((waiting, store.serve_read(&request)));
            }
        }
        for (waiting, answer) in answers {
            self.read_answered(waiting, answer)?;
        }
        Ok(())
    }

    /// Puts a Raft message on the wire.
    fn send(&mut self, from: u64, to: u64, range: u64, message: Message) {
        if self.trace_range == Some(range) {
            self.say(|| {
                format!(
                    "range {range}: {from} -> {to} {:?} to {} from {} term {} index {} commit {} \
                     reject {} entries {}",
                    MessageType::try_from(message.msg_type),
                    message.to,
                    message.from,
                    message.term,
                    message.index,
                    message.commit,
                    message.reject,
                    message.entries.len()
                )
            });
        }
        match self.net.fate(&mut self.rng, from, to, message.msg_type) {
            Fate::Drop => {}
            Fate::Deliver(delays) => {
                for delay in delays {
                    self.schedule(
                        delay,
                        Event::Deliver {
                            to,
                            from,
                            range,
                            message: Box::new(message.clone()),
                        },
                    );
                }
            }
        }
    }

    /// Builds the snapshot the leader asked for (as the runtime does, from the range as
    /// applied now) and streams it: it arrives whole or not at all, later than a message.
    fn send_snapshot(&mut self, from: u64, to: u64, range: u64, mut message: Message) {
        let to_replica = message.to;
        let incarnation = self.nodes[&from].incarnation;
        let engine = self.node(from).store().engine().clone();
        let built = prepare_snapshot(&engine, range, &mut message, SNAPSHOT_CHUNK_BYTES);
        let fate = self
            .net
            .fate(&mut self.rng, from, to, MessageType::Snapshot as i32);
        let (parts, delay) = match (built, fate) {
            (Ok(parts), Fate::Deliver(delays)) => (parts, delays[0] + 2 * TICK_US),
            _ => {
                let delay = self.rng.random_range(1..5) * TICK_US;
                self.schedule(
                    delay,
                    Event::SnapshotDone {
                        node: from,
                        incarnation,
                        range,
                        to_replica,
                        ok: false,
                    },
                );
                return;
            }
        };
        self.snapshots += 1;
        self.schedule(
            delay,
            Event::Snapshot {
                to,
                from,
                from_incarnation: incarnation,
                range,
                message: Box::new(message),
                parts: Box::new(parts),
            },
        );
    }

    fn on_snapshot(
        &mut self,
        to: u64,
        from: u64,
        from_incarnation: u64,
        range: u64,
        message: Box<Message>,
        parts: Box<SnapshotParts>,
    ) -> Result<(), String> {
        let to_replica = message.to;
        let mut ok = false;
        if let Some(store) = self.node(to).store.as_mut() {
            let data = ReceivedSnapshot::from_parts(range, *parts)
                .map_err(|e| format!("node {to}: a snapshot of range {range} is damaged: {e}"))?;
            let receipt = store
                .receive_snapshot(range, *message, data)
                .map_err(|e| format!("node {to}: snapshot install failed: {e}"))?;
            ok = receipt != SnapshotReceipt::Refused;
            self.queue_round(to);
        }
        let delay = self.rng.random_range(100..1_000);
        self.schedule(
            delay,
            Event::SnapshotDone {
                node: from,
                incarnation: from_incarnation,
                range,
                to_replica,
                ok,
            },
        );
        Ok(())
    }

    /// The chaos ends: every node restarted and resumed, the network healed and reliable;
    /// clients read every key once more.
    fn heal(&mut self) {
        self.calm = true;
        self.net.calm();
        for id in self.node_ids() {
            if !self.nodes[&id].is_up() {
                self.start_node(id);
            } else {
                self.node(id).paused_until = None;
            }
        }
        self.start_final_reads();
        self.say(|| "healed".into());
    }

    /// After every round of node `id`: election safety per range and term, and the node's
    /// ranges disjoint.
    fn check_node(&mut self, id: u64) -> Result<(), String> {
        let store = self.nodes.get_mut(&id).and_then(|n| n.store.as_mut());
        let Some(store) = store else {
            return Ok(());
        };
        self.checker
            .node_round(id, store)
            .map_err(|e| format!("node {id}: {e}"))
    }

    /// Every range led, every replica caught up with the same data, the ranges tiling the
    /// keyspace; only checked once the network is calm.
    fn converged(&mut self) -> Result<bool, String> {
        if self.nodes.values().any(|n| !n.runs(self.now)) {
            return Ok(false);
        }
        Ok(self.checker.converged(&mut self.nodes)?.is_ok())
    }
}
