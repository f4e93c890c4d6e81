//! One simulated cluster run: an event queue in simulated time, the replicas, the network, the
//! fault schedule and the clients. Everything random comes from one seeded generator, so a seed
//! replays exactly.
//!
//! A run has two phases. Chaos: faults (crashes with torn writes, partitions, one-way cuts,
//! leader isolation, clogged links, drops, duplicates, reordering, clock drift) while clients
//! write and read. Calm: every node restarted, the network healed; then liveness must follow
//! within a bound: a leader, every new proposal committed, every replica caught up.

use std::collections::BTreeMap;

use bytes::Bytes;
use flotilla_engine::raft::{
    ConfChange, Config, Entry, EntryType, Membership, Message, MessageType, Role,
};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checker::{Check, Checker};

mod clients;
mod faults;
use crate::network::{Fate, Micros, Network, NetworkConfig, TICK_US};
use crate::node::{Install, Kv, SimNode, Unsynced};
use flotilla_engine::check::linearizability::Operation;

/// Ticks of chaos, then at most this many ticks for the calm phase to converge.
const CHAOS_TICKS: u64 = 400;
const CALM_TICKS_MAX: u64 = 300;
/// A client gives up on an operation after this long (its outcome is then unknown).
const OP_TIMEOUT_US: Micros = 40 * TICK_US;

enum Event {
    Tick(u64),
    Deliver(Box<Message>),
    Sync {
        node: u64,
        incarnation: u64,
    },
    Restart(u64),
    Fault,
    /// Restores every network link (partitions are temporary).
    NetHeal,
    /// The process stalls (GC, VM pause): its timers, messages and disk completions queue up.
    Pause(u64),
    /// The stall ends: the driver first catches up the ticks it missed, then works through the
    /// backlog in arrival order (the contract a real driver must keep for leases to hold).
    Resume(u64),
    /// The chaos phase ends.
    Heal,
    /// A crash at a chosen point, and the restart a few ticks later.
    CrashRestart(u64),
    /// A replica compacts its log (log-compaction seeds only).
    Compact,
    /// The leader proposes a membership change (membership seeds only).
    Membership,
    /// A client's timer; only its latest one counts.
    Client {
        client: usize,
        wake: u64,
    },
    /// A client request arrives at its node.
    Submit {
        client: usize,
        value: u64,
    },
}

/// How a client operation ended.
enum Done {
    /// Definitely never took effect: left out of the history.
    Failed,
    Written,
    Read(Option<u64>),
}

struct PendingOp {
    op: Operation,
    node: u64,
    /// A write's `(term, index)`; a read's context.
    proposal: Option<(u64, u64)>,
    context: u64,
    deadline: Micros,
}

struct Client {
    pending: Option<PendingOp>,
    /// Where it believes the leader is.
    target: u64,
    /// Had a write acknowledged after healing (the liveness goal).
    calm_write_done: bool,
    /// Number of its latest timer: one timer per client, so work does not multiply.
    wake: u64,
}

pub struct Outcome {
    pub history: Vec<Operation>,
    pub events: u64,
    pub committed: u64,
}

pub struct World {
    rng: ChaCha8Rng,
    now: Micros,
    seq: u64,
    queue: BTreeMap<(Micros, u64), Event>,
    /// Every replica, voters then learners.
    ids: Vec<u64>,
    /// The initial voters (the configuration may change).
    voters: Vec<u64>,
    /// This seed proposes membership changes.
    membership_changes: bool,
    /// A membership change took effect somewhere: the per-step durable-quorum check (which
    /// assumes the initial voters) gives way to the check at each leader's commit.
    conf_changed: bool,
    nodes: BTreeMap<u64, SimNode>,
    net: Network,
    checker: Checker,
    clients: Vec<Client>,
    history: Vec<Operation>,
    next_value: u64,
    calm: bool,
    /// Leader churn (the Raft paper's Figure 8 schedule, as in MIT 6.5840's TestFigure8): the
    /// leader is crashed or cut off every few ticks, so leaders of many terms leave
    /// half-replicated entries behind.
    churn: bool,
    events: u64,
    /// Logical time of the history: strictly increasing, one value per call or return.
    clock: u64,
    /// Stalled nodes: ticks they missed, and the events waiting for them.
    paused: BTreeMap<u64, (u64, Vec<Event>)>,
    verbose: bool,
}

fn kv_hash(kv: &Kv) -> u64 {
    kv.iter().fold(0x9E37_79B9_7F4A_7C15u64, |h, (k, v)| {
        (h ^ k.wrapping_mul(0xff51_afd7_ed55_8ccd) ^ v.rotate_left(17))
            .wrapping_mul(0xc4ce_b9fe_1a85_ec53)
    })
}

/// Entry payload: key and a value unique across the run.
fn encode(key: u64, value: u64) -> Bytes {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&key.to_be_bytes());
    b.extend_from_slice(&value.to_be_bytes());
    Bytes::from(b)
}

fn decode(data: &[u8]) -> Option<(u64, u64)> {
    let key = u64::from_be_bytes(data.get(0..8)?.try_into().ok()?);
    let value = u64::from_be_bytes(data.get(8..16)?.try_into().ok()?);
    Some((key, value))
}

impl World {
    pub fn new(seed: u64, verbose: bool) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let churn = rng.random_bool(0.3);
        // Figure 8 needs five replicas; the other schedules run both sizes.
        let size = if churn || rng.random_bool(0.5) { 5 } else { 3 };
        let voters: Vec<u64> = (1..=size).collect();
        // Some groups carry a learner: it receives the log, serves follower reads, never votes.
        let learners: Vec<u64> = if rng.random_bool(0.3) {
            vec![size + 1]
        } else {
            Vec::new()
        };
        // Spare processes, members of nothing until a membership change adds them.
        let first_spare = size + 1 + learners.len() as u64;
        let spares: Vec<u64> = (first_spare..first_spare + 2).collect();
        let ids: Vec<u64> = voters
            .iter()
            .chain(&learners)
            .chain(&spares)
            .copied()
            .collect();
        let membership_changes = rng.random_bool(0.5);
        let lease_reads = rng.random_bool(0.5);
        let pre_vote = rng.random_bool(0.8);
        let base = Config {
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 1,
            pre_vote,
            check_quorum: lease_reads || rng.random_bool(0.8),
            lease_reads,
            // Drift below is at most 5% each way: et * 2d + 1 = 2 ticks of margin suffice.
            lease_drift_margin_ticks: 2,
            max_inflight_msgs: *[1usize, 4, 32, 256].choose(&mut rng).expect("non-empty"),
            // 1 byte: one entry per append, so acknowledgements split a leader's batch.
            max_size_per_msg_bytes: if churn && rng.random_bool(0.7) {
                1
            } else {
                *[1u64, 200, 4096, 1 << 20]
                    .choose(&mut rng)
                    .expect("non-empty")
            },
            seed,
            ..Config::default()
        };
        // A removed replica keeps campaigning with ever higher terms; only pre-vote or
        // check-quorum (thesis 4.2.3) keep it from deposing leader after leader, so groups
        // without both change no membership (the defaults have both).
        let membership_changes = membership_changes && (base.pre_vote || base.check_quorum);
        let drift = rng.random_range(0.0..0.05);
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let config = Config { id, ..base.clone() };
            let skew = rng.random_range(-drift..=drift);
            let tick_us = (TICK_US as f64 * (1.0 + skew)) as u64;
            nodes.insert(id, SimNode::new(id, config, &voters, &learners, tick_us));
        }
        let mut net_config = NetworkConfig::random(&mut rng);
        if churn {
            // Lose appends often enough that a new leader's own entry misses followers that
            // got the older entries before it (the window Figure 8 lives in).
            net_config.drop_rate = rng.random_range(0.1..0.35);
        }
        let net = Network::new(net_config);
        let clients = (0..3)
            .map(|_| Client {
                pending: None,
                target: *ids.choose(&mut rng).expect("non-empty"),
                calm_write_done: false,
                wake: 0,
            })
            .collect();
        let mut w = Self {
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            checker: Checker::new(voters.len()),
            voters,
            membership_changes,
            conf_changed: false,
            ids,
            nodes,
            net,
            clients,
            history: Vec::new(),
            next_value: 1,
            calm: false,
            churn,
            events: 0,
            clock: 0,
            paused: BTreeMap::new(),
            verbose,
        };
        if verbose {
            println!(
                "seed {seed}: {size} replicas, churn={churn} pre_vote={pre_vote} \
                 lease_reads={lease_reads} check_quorum={} network {:?} drift {:.1}%",
                w.node(1).config.check_quorum,
                w.net.config,
                drift * 100.0
            );
        }
        for id in w.ids.clone() {
            // Random phase so replicas do not tick in lockstep.
            let phase = w.rng.random_range(0..TICK_US);
            w.schedule(phase, Event::Tick(id));
        }
        for c in 0..w.clients.len() {
            let at = w.rng.random_range(0..5 * TICK_US);
            w.wake_client(c, at);
        }
        let first_fault = w.rng.random_range(10..40) * TICK_US;
        w.schedule(first_fault, Event::Fault);
        w.schedule(CHAOS_TICKS * TICK_US, Event::Heal);
        if w.rng.random_bool(0.5) {
            let first = w.rng.random_range(10..40) * TICK_US;
            w.schedule(first, Event::Compact);
        }
        if w.membership_changes {
            let first = w.rng.random_range(15..50) * TICK_US;
            w.schedule(first, Event::Membership);
        }
        w
    }

    fn node(&self, id: u64) -> &SimNode {
        &self.nodes[&id]
    }

    fn node_mut(&mut self, id: u64) -> &mut SimNode {
        self.nodes.get_mut(&id).expect("simulated node exists")
    }

    fn schedule(&mut self, delay: Micros, event: Event) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), event);
    }

    fn tick_clock(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn say(&self, what: impl FnOnce() -> String) {
        if self.verbose {
            crate::network::narrate(self.now, &what());
        }
    }

    /// Runs the whole schedule; returns the client history for the linearizability check.
    pub fn run(mut self) -> Result<Outcome, String> {
        let calm_deadline = (CHAOS_TICKS + CALM_TICKS_MAX) * TICK_US;
        while let Some(((at, _), event)) = self.queue.pop_first() {
            self.now = at;
            self.events += 1;
            self.handle(event)?;
            if !self.conf_changed {
                self.checker.check_durable_quorum(
                    self.voters.iter().map(|id| &self.nodes[id].durable_log),
                )?;
            }
            self.observe_leaders()?;
            if self.calm && self.converged() {
                break;
            }
            if self.now > calm_deadline {
                return Err(format!(
                    "liveness: not converged {CALM_TICKS_MAX} ticks after healing: {}",
                    self.describe()
                ));
            }
        }
        self.finish_clients();
        Ok(Outcome {
            history: self.history,
            events: self.events,
            committed: self.checker.committed_len(),
        })
    }

    fn describe(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .values()
            .map(|n| match &n.raw {
                Some(r) => {
                    let s = r.status();
                    format!(
                        "{}:{:?}/t{}/c{}/a{}/last{}{}{}",
                        n.id,
                        s.role,
                        s.term,
                        s.committed,
                        n.applied,
                        s.last_index,
                        if n.unsynced.is_some() {
                            "/unsynced"
                        } else {
                            ""
                        },
                        if self.paused.contains_key(&n.id) {
                            "/paused"
                        } else {
                            ""
                        },
                    )
                }
                None => format!("{}:down", n.id),
            })
            .collect();
        format!("[{}] cuts {}", nodes.join(" "), self.net.describe_cuts())
    }

    /// Calm phase done: one leader, every replica applied everything it committed, every
    /// client idle after at least one write committed in the calm phase.
    fn converged(&self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let Some(cs) = self.node(leader).raw.as_ref().map(|r| r.conf_state()) else {
            return false;
        };
        if !cs.voters_outgoing.is_empty() {
            return false;
        }
        let members: Vec<u64> = cs.voters.iter().chain(&cs.learners).copied().collect();
        let mut leaders = 0;
        let mut commit = None;
        for n in self.nodes.values().filter(|n| members.contains(&n.id)) {
            let Some(raw) = &n.raw else { return false };
            let s = raw.status();
            if s.role == Role::Leader {
                leaders += 1;
            }
            if n.applied != s.committed || s.committed != s.last_index {
                return false;
            }
            if *commit.get_or_insert(s.committed) != s.committed {
                return false;
            }
        }
        leaders == 1
            && self
                .clients
                .iter()
                .all(|c| c.pending.is_none() && c.calm_write_done)
    }

    /// The node an event must wait for while it is paused.
    fn target(&self, event: &Event) -> Option<u64> {
        match event {
            Event::Tick(id) => Some(*id),
            Event::Deliver(m) => Some(m.to),
            Event::Sync { node, .. } => Some(*node),
            Event::Submit { client, .. } => self.clients[*client].pending.as_ref().map(|p| p.node),
            _ => None,
        }
    }

    fn handle(&mut self, event: Event) -> Check {
        if let Some(id) = self.target(&event) {
            if let Some((missed, backlog)) = self.paused.get_mut(&id) {
                if let Event::Tick(id) = event {
                    *missed += 1;
                    let tick_us = self.node(id).tick_us;
                    self.schedule(tick_us, Event::Tick(id));
                } else {
                    backlog.push(event);
                }
                return Ok(());
            }
        }
        match event {
            Event::Tick(id) => {
                let tick_us = self.node(id).tick_us;
                self.schedule(tick_us, Event::Tick(id));
                if let Some(raw) = self.node_mut(id).raw.as_mut() {
                    raw.tick().map_err(|e| format!("node {id} tick: {e}"))?;
                    self.drive(id)?;
                }
            }
            Event::Deliver(m) if m.msg_type == MessageType::Snapshot as i32 => {
                self.deliver_snapshot(*m)?;
            }
            Event::Deliver(m) => {
                let to = m.to;
                if let Some(raw) = self.node_mut(to).raw.as_mut() {
                    // Refusals are legitimate (stale or duplicated traffic can look malformed
                    // to a replica that has moved on); they must only never corrupt state.
                    let _ = raw.step(*m);
                    self.drive(to)?;
                }
            }
            Event::Sync { node, incarnation } => {
                if self.node(node).incarnation == incarnation {
                    self.finish_round(node)?;
                }
            }
            Event::Restart(id) => {
                if !self.node(id).is_up() {
                    self.node_mut(id).restart();
                    self.say(|| format!("node {id} restarts"));
                    let term = self.node(id).raw.as_ref().map_or(0, |r| r.status().term);
                    if term < self.node(id).durable_term {
                        return Err(format!(
                            "node {id} restarted with term {term} below its synced term"
                        ));
                    }
                    self.drive(id)?;
                }
            }
            Event::Fault => {
                if !self.calm {
                    let next = if self.churn {
                        self.churn_leader();
                        self.rng.random_range(1..8) * TICK_US
                    } else {
                        self.inject_fault()?;
                        self.rng.random_range(4..25) * TICK_US
                    };
                    self.schedule(next, Event::Fault);
                }
            }
            Event::Pause(id) => {
                if self.node(id).is_up() && !self.paused.contains_key(&id) {
                    self.paused.insert(id, (0, Vec::new()));
                    let stall = self.rng.random_range(5..40) * TICK_US;
                    self.say(|| format!("node {id} pauses for {} ticks", stall / TICK_US));
                    self.schedule(stall, Event::Resume(id));
                }
            }
            Event::Resume(id) => {
                if let Some((missed, backlog)) = self.paused.remove(&id) {
                    self.say(|| format!("node {id} resumes: {missed} ticks to catch up"));
                    if let Some(raw) = self.node_mut(id).raw.as_mut() {
                        for _ in 0..missed {
                            raw.tick().map_err(|e| format!("node {id} tick: {e}"))?;
                        }
                        self.drive(id)?;
                    }
                    for e in backlog {
                        self.handle(e)?;
                    }
                }
            }
            Event::Membership => {
                if !self.calm {
                    self.change_membership()?;
                    let next = self.rng.random_range(10..50) * TICK_US;
                    self.schedule(next, Event::Membership);
                }
            }
            Event::CrashRestart(id) => {
                if !self.calm && self.node(id).is_up() {
                    self.crash(id);
                    let back = self.rng.random_range(2..20) * TICK_US;
                    self.schedule(back, Event::Restart(id));
                }
            }
            Event::Compact => {
                let id = *self.ids.choose(&mut self.rng).expect("non-empty");
                self.compact(id);
                let next = self.rng.random_range(5..40) * TICK_US;
                self.schedule(next, Event::Compact);
            }
            Event::NetHeal => {
                self.net.heal();
                self.say(|| "network healed".into());
            }
            Event::Heal => {
                self.calm = true;
                self.net.calm();
                self.say(|| "heal: every link restored, every node restarted".into());
                for id in self.paused.keys().copied().collect::<Vec<_>>() {
                    self.schedule(0, Event::Resume(id));
                }
                for id in self.ids.clone() {
                    if !self.node(id).is_up() {
                        self.schedule(0, Event::Restart(id));
                    }
                }
            }
            Event::Client { client, wake } => {
                if self.clients[client].wake == wake {
                    self.client_step(client)?;
                }
            }
            Event::Submit { client, value } => self.submit(client, value)?,
        }
        Ok(())
    }

    /// Election safety on every replica's current role, so that a leadership that began and
    /// ended between two of its Readies is checked too.
    fn observe_leaders(&mut self) -> Check {
        for n in self.nodes.values() {
            if let Some(raw) = &n.raw {
                let s = raw.status();
                if s.role == Role::Leader {
                    self.checker.on_leader_seen(n.id, s.term)?;
                }
            }
        }
        Ok(())
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .values()
            .filter(|n| {
                n.raw
                    .as_ref()
                    .is_some_and(|r| r.status().role == Role::Leader)
            })
            .map(|n| n.id)
            .max_by_key(|&id| self.node(id).raw.as_ref().map_or(0, |r| r.status().term))
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            match self.net.fate(&mut self.rng, m.from, m.to, m.msg_type) {
                Fate::Deliver(delays) => {
                    for d in delays {
                        self.schedule(d, Event::Deliver(Box::new(m.clone())));
                    }
                }
                Fate::Drop if m.msg_type == MessageType::Snapshot as i32 => {
                    // A snapshot travels on its own stream, whose failure the sender sees.
                    if let Some(raw) = self.node_mut(m.from).raw.as_mut() {
                        raw.report_snapshot(m.to, false);
                    }
                }
                Fate::Drop => {}
            }
        }
    }

    /// The driver loop of `RawNode`: take a Ready, send what may go at once, write, and
    /// schedule the sync that releases the rest.
    fn drive(&mut self, id: u64) -> Check {
        let node = self.nodes.get_mut(&id).expect("simulated node exists");
        let Some(raw) = node.raw.as_mut() else {
            return Ok(());
        };
        if node.unsynced.is_some() || !raw.has_ready() {
            return Ok(());
        }
        let conf_before = raw.conf_state();
        let mut commit_to_check = None;
        let mut rd = raw.ready().map_err(|e| format!("node {id} ready: {e}"))?;
        let status = raw.status();
        let install = match rd.snapshot.take() {
            Some(meta) => {
                let kv = node.fetched.remove(&meta.index).ok_or_else(|| {
                    format!(
                        "node {id} installs snapshot {} without its data",
                        meta.index
                    )
                })?;
                if meta.index > 0 {
                    self.checker.on_state(id, meta.index, kv_hash(&kv))?;
                }
                let prefix = self.checker.committed_prefix(meta.index)?;
                node.log = prefix.clone();
                Some(Install { meta, kv, prefix })
            }
            None => None,
        };
        let entries = std::mem::take(&mut rd.entries);
        let hard_state = rd.hard_state;
        // Leader append-only: a leader that led the same term at its previous Ready wrote only
        // appends since.
        if node.led_term == Some(status.term) && status.role == Role::Leader {
            if let Some(first) = entries.first() {
                if first.index != node.log.len() + 1 {
                    return Err(format!(
                        "leader append-only: leader {id} of term {} rewrote its log from index {} \
                         (had {})",
                        status.term,
                        first.index,
                        node.log.len()
                    ));
                }
            }
        }
        let led_before = node.led_term == Some(status.term);
        node.led_term = (status.role == Role::Leader).then_some(status.term);
        node.log
            .write(&entries)
            .map_err(|e| format!("node {id}: {e}"))?;
        let log = &node.log;
        self.checker.on_written(id, log, &entries)?;
        if let Some(hs) = &hard_state {
            if led_before && status.role == Role::Leader && hs.commit > node.reported_commit {
                self.checker.on_leader_commit(id, hs.term, hs.commit, log)?;
            }
            let leader_commit =
                led_before && status.role == Role::Leader && hs.commit > node.reported_commit;
            node.reported_commit = node.reported_commit.max(hs.commit);
            self.checker.on_commit(id, hs.term, hs.commit, log)?;
            if leader_commit {
                commit_to_check = Some(hs.commit);
            }
        }
        if rd.soft_state.is_some_and(|s| s.role == Role::Leader) {
            self.checker.on_leader(id, status.term, log)?;
            self.say(|| format!("node {id} leads term {}", status.term));
        }
        if let Some(commit) = commit_to_check {
            // No committed entry lost, under any membership: what this leader just committed
            // is durable on a quorum of the configuration it counted in.
            let durable = |voter: &u64| self.nodes.get(voter).map(|n| &n.durable_log);
            self.checker
                .check_commit_quorum(id, commit, &conf_before, durable)?;
        }
        if let Some(cs) = &rd.conf_state {
            self.conf_changed = true;
            // Replay each change of this Ready: every step must keep quorums intersecting, and
            // the replica must end where the replay does.
            let mut conf = conf_before.clone();
            for e in rd
                .committed_entries
                .iter()
                .filter(|e| e.entry_type == EntryType::ConfChange as i32)
            {
                let Ok(cc) = <ConfChange as prost::Message>::decode(e.data.as_ref()) else {
                    return Err(format!(
                        "node {id}: undecodable membership change at {}",
                        e.index
                    ));
                };
                if let Ok(next) = Membership::from_conf_state(&conf).apply(&cc) {
                    let next = next.to_conf_state();
                    self.checker.on_conf_change(id, &conf, &next)?;
                    conf = next;
                }
            }
            if &conf != cs {
                return Err(format!(
                    "node {id} reports membership {cs:?}, the log says {conf:?}"
                ));
            }
            self.say(|| {
                format!(
                    "node {id} membership now {:?} (outgoing {:?}, learners {:?})",
                    cs.voters, cs.voters_outgoing, cs.learners
                )
            });
        }
        let messages = std::mem::take(&mut rd.messages);
        let persisted_messages = std::mem::take(&mut rd.persisted_messages);
        let must_sync = rd.must_sync();
        let node = self.node_mut(id);
        node.unsynced = Some(Unsynced {
            ready: rd,
            snapshot: install,
            entries,
            hard_state,
            persisted_messages,
        });
        let incarnation = node.incarnation;
        self.send(messages);
        let latency = if must_sync {
            self.rng.random_range(20..400)
        } else {
            0
        };
        self.schedule(
            latency,
            Event::Sync {
                node: id,
                incarnation,
            },
        );
        Ok(())
    }

    /// The write is durable: send what waited for it, apply, advance, and drive again.
    fn finish_round(&mut self, id: u64) -> Check {
        let Some(mut w) = self.node_mut(id).sync() else {
            return Ok(());
        };
        self.send(std::mem::take(&mut w.persisted_messages));
        let committed = std::mem::take(&mut w.ready.committed_entries);
        let reads = std::mem::take(&mut w.ready.read_states);
        for e in &committed {
            self.apply(id, e)?;
        }
        let node = self.node_mut(id);
        node.reads.extend(reads);
        if let Some(raw) = node.raw.as_mut() {
            raw.advance(w.ready)
                .map_err(|e| format!("node {id} advance: {e}"))?;
        }
        self.serve_reads(id);
        self.drive(id)
    }

    fn apply(&mut self, id: u64, e: &Entry) -> Check {
        let node = self.node(id);
        if e.index != node.applied + 1 {
            return Err(format!(
                "node {id} applies entry {} after {}: not consecutive (applied twice or skipped)",
                e.index, node.applied
            ));
        }
        self.checker.on_apply(id, e, &node.log)?;
        let node = self.node_mut(id);
        node.applied = e.index;
        if e.entry_type == flotilla_engine::raft::EntryType::Normal as i32 {
            if let Some((key, value)) = decode(&e.data) {
                node.kv.insert(key, value);
            }
        }
        let state = kv_hash(&node.kv);
        self.checker.on_state(id, e.index, state)?;
        // A client whose write this is, proposed at this node, learns the outcome.
        for c in 0..self.clients.len() {
            let Some(p) = &self.clients[c].pending else {
                continue;
            };
            let Some((term, index)) = p.proposal else {
                continue;
            };
            if p.node != id || index != e.index {
                continue;
            }
            let done = if term == e.term {
                Done::Written
            } else {
                Done::Failed
            };
            self.complete(c, done);
        }
        Ok(())
    }
}
