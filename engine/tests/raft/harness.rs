//! A small deterministic harness for step-level tests: replicas over `MemStorage`, a network
//! that delivers in order unless a link is cut, and the driver loop of `RawNode`'s docs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use flotilla_engine::raft::{
    Config, Entry, EntryType, HardState, MemStorage, Message, MessageType, RawNode, ReadState,
    Ready, Role,
};

pub fn config(id: u64) -> Config {
    Config {
        seed: 7,
        ..Config::new(id)
    }
}

pub fn new_node(
    id: u64,
    voters: &[u64],
    learners: &[u64],
    tweak: &dyn Fn(&mut Config),
) -> RawNode<MemStorage> {
    let mut c = config(id);
    tweak(&mut c);
    RawNode::new(c, MemStorage::new_with_conf(voters, learners)).expect("valid test config")
}

pub fn msg(msg_type: MessageType, from: u64, to: u64, term: u64) -> Message {
    Message {
        msg_type: msg_type as i32,
        from,
        to,
        term,
        ..Message::default()
    }
}

pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: Bytes::from(format!("{index}/{term}")),
        ..Entry::default()
    }
}

/// A replica whose durable log already holds `terms[i]` at index `i + 1`, at `term`.
pub fn node_with_log(
    id: u64,
    voters: &[u64],
    terms: &[u64],
    term: u64,
    tweak: &dyn Fn(&mut Config),
) -> RawNode<MemStorage> {
    let mut store = MemStorage::new_with_conf(voters, &[]);
    let entries: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| entry(i as u64 + 1, t))
        .collect();
    store.append(&entries).expect("fresh log");
    store.set_hard_state(HardState {
        term,
        vote: 0,
        commit: 0,
    });
    let mut c = config(id);
    tweak(&mut c);
    RawNode::new(c, store).expect("valid test config")
}

/// Takes the node's Ready, persists it into its own store, and returns it unadvanced.
pub fn persist(node: &mut RawNode<MemStorage>) -> Ready {
    let rd = node.ready().expect("ready");
    if let Some(hs) = &rd.hard_state {
        node.store_mut().set_hard_state(*hs);
    }
    // The snapshot's data would be fetched from the leader here; the log restarts after it.
    if let Some(s) = &rd.snapshot {
        node.store_mut().apply_snapshot(s.clone());
    }
    // The harness applies within the same round, so the membership goes with it.
    if let Some(cs) = &rd.conf_state {
        node.store_mut().set_conf_state(cs.clone());
    }
    node.store_mut().append(&rd.entries).expect("append");
    rd
}

/// Runs one full driver round; returns every message (both lists) and the committed entries.
pub fn drive(node: &mut RawNode<MemStorage>) -> (Vec<Message>, Vec<Entry>, Vec<ReadState>) {
    if !node.has_ready() {
        return (Vec::new(), Vec::new(), Vec::new());
    }
    let mut rd = persist(node);
    let mut msgs = std::mem::take(&mut rd.messages);
    msgs.append(&mut rd.persisted_messages);
    let committed = std::mem::take(&mut rd.committed_entries);
    let reads = std::mem::take(&mut rd.read_states);
    node.advance(rd).expect("advance");
    (msgs, committed, reads)
}

pub fn types(msgs: &[Message]) -> Vec<MessageType> {
    msgs.iter()
        .map(|m| MessageType::try_from(m.msg_type).expect("known type"))
        .collect()
}

pub struct Cluster {
    pub nodes: BTreeMap<u64, RawNode<MemStorage>>,
    pub applied: BTreeMap<u64, Vec<Entry>>,
    pub reads: BTreeMap<u64, Vec<ReadState>>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(u64, u64)>,
    /// Message types dropped everywhere.
    pub drop_types: BTreeSet<i32>,
    /// Every message delivered, in order (for counting).
    pub delivered: Vec<Message>,
}

impl Cluster {
    pub fn new(n: u64, tweak: &dyn Fn(&mut Config)) -> Self {
        let ids: Vec<u64> = (1..=n).collect();
        Self::with_learners(&ids, &[], tweak)
    }

    /// Adds a replica that is not in any configuration yet (it will be added by a change).
    pub fn add_blank(&mut self, id: u64, voters: &[u64], tweak: &dyn Fn(&mut Config)) {
        self.nodes.insert(id, new_node(id, voters, &[], tweak));
    }

    pub fn with_learners(voters: &[u64], learners: &[u64], tweak: &dyn Fn(&mut Config)) -> Self {
        let mut nodes = BTreeMap::new();
        for &id in voters.iter().chain(learners) {
            nodes.insert(id, new_node(id, voters, learners, tweak));
        }
        Self {
            nodes,
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            cut: BTreeSet::new(),
            drop_types: BTreeSet::new(),
            delivered: Vec::new(),
        }
    }

    pub fn node(&mut self, id: u64) -> &mut RawNode<MemStorage> {
        self.nodes.get_mut(&id).expect("node exists")
    }

    pub fn isolate(&mut self, id: u64) {
        for &other in self.nodes.keys() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
        self.drop_types.clear();
    }

    /// Drives every node and delivers messages until nothing moves.
    pub fn settle(&mut self) {
        let mut queue: VecDeque<Message> = VecDeque::new();
        for _round in 0..10_000 {
            let mut moved = false;
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                let node = self.nodes.get_mut(&id).expect("node exists");
                let (msgs, committed, reads) = drive(node);
                moved |= !msgs.is_empty() || !committed.is_empty() || !reads.is_empty();
                queue.extend(msgs);
                self.applied.entry(id).or_default().extend(committed);
                self.reads.entry(id).or_default().extend(reads);
            }
            while let Some(m) = queue.pop_front() {
                moved = true;
                if self.cut.contains(&(m.from, m.to)) || self.drop_types.contains(&m.msg_type) {
                    continue;
                }
                self.delivered.push(m.clone());
                let (from, to) = (m.from, m.to);
                let is_snapshot = m.msg_type == MessageType::Snapshot as i32;
                if let Some(node) = self.nodes.get_mut(&to) {
                    // Tests feed well-formed traffic; a refusal here is a failure of the test.
                    let _ = node.step(m);
                }
                if is_snapshot {
                    // The data stream of a snapshot on loopback: it always arrives.
                    if let Some(leader) = self.nodes.get_mut(&from) {
                        leader.report_snapshot(to, true);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("cluster did not settle within 10,000 rounds");
    }

    pub fn tick_all(&mut self, ticks: u64) {
        for _ in 0..ticks {
            for node in self.nodes.values_mut() {
                node.tick().expect("tick");
            }
            self.settle();
        }
    }

    pub fn campaign(&mut self, id: u64) {
        assert!(
            self.node(id).campaign().expect("campaign"),
            "node {id} may campaign"
        );
        self.settle();
    }

    pub fn leader(&self) -> Option<u64> {
        let leaders: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.status().role == Role::Leader)
            .map(|(&id, _)| id)
            .collect();
        match leaders.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    pub fn propose(&mut self, id: u64, data: &str) -> (u64, u64) {
        let r = self
            .node(id)
            .propose(Bytes::from(data.to_owned()))
            .expect("proposal accepted");
        self.settle();
        r
    }

    /// Payloads applied on `id`, skipping the leaders' empty entries and membership changes.
    pub fn applied_data(&self, id: u64) -> Vec<String> {
        self.applied
            .get(&id)
            .map(|es| {
                es.iter()
                    .filter(|e| !e.data.is_empty() && e.entry_type == EntryType::Normal as i32)
                    .map(|e| String::from_utf8_lossy(&e.data).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}
