//! Clients of the whole-store simulator, and the operator that splits ranges and moves
//! replicas. Each client runs one operation at a time against the node it believes leads the
//! key's range, routes by what that node hosts (as a router's cache would, corrected by the
//! typed refusals) and retries with the same `(client_id, seq)` until its deadline, so its
//! writes stay exactly-once; a write given up on has an unknown outcome in the history.
//!
//! The operator's moves follow the client library's `move_replica`: a learner on the target,
//! then its promotion with the source's removal in one joint change (leadership leaves the
//! source first if it leads), then the removal asked again until it is in effect.

use std::collections::BTreeSet;

use bytes::Bytes;
use flotilla_engine::check::linearizability::{OpKind, Operation};
use flotilla_engine::kv::{contains, KvError};
use flotilla_engine::raft::Role;
use flotilla_engine::storage::keys;
use flotilla_engine::store::{
    Command, Outcome, Proposal, ProposeRefused, ReadResult, RequestError,
};
use flotilla_transport::kv::{
    admin_request, write_request, write_response, AdminRequest, ChangeReplicasRequest,
    CommandHeader, ErrorCode, GetRequest, PutRequest, ReplicaChange, ReplicaChangeKind,
    SplitRequest, TransferLeaderRequest, WriteRequest, WriteResponse,
};
use flotilla_transport::meta::ReplicaRole;
use flotilla_transport::service::{read_request, read_response, ReadConsistency, ReadRequest};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;

use super::node::Waiting;
use super::StoreWorld;
use crate::network::{Micros, TICK_US};

/// Keys the clients use (`k00`..), spread over the ranges as they split.
pub const KEYS: u64 = 8;
/// A client gives up on an operation after this long (a write's outcome is then unknown).
const OP_TIMEOUT_US: Micros = 60 * TICK_US;
/// The operator gives up on a split or a move after this long.
const ADMIN_TIMEOUT_US: Micros = 200 * TICK_US;
/// An attempt unanswered for this long is retried (the node may have crashed).
const ATTEMPT_TIMEOUT_US: Micros = 15 * TICK_US;

fn user_key(key: u64) -> Vec<u8> {
    format!("k{key:02}").into_bytes()
}

/// One step of a replica move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MoveStep {
    AddLearner,
    PromoteAndRemove,
    Remove,
    /// The source leads: hand its leadership to another voter, then promote and remove again.
    TransferAway,
}

#[derive(Clone, Debug)]
enum Kind {
    Put {
        value: u64,
        seq: u64,
    },
    Get,
    Split {
        seq: u64,
    },
    Move {
        from: u64,
        to: u64,
        step: MoveStep,
        seq: u64,
    },
}

#[derive(Clone, Debug)]
struct ClientOp {
    kind: Kind,
    key: u64,
    /// History time of the call.
    call: u64,
    deadline: Micros,
}

pub struct SimClient {
    pub client_id: u64,
    /// The operator: splits and moves, no history.
    admin: bool,
    next_seq: u64,
    /// Sequence numbers of writes not ended yet (the session's `first_unacked_seq`).
    unacked: BTreeSet<u64>,
    op: Option<ClientOp>,
    /// Operations started, so an answer to an earlier one is recognized.
    op_no: u64,
    /// The node it believes leads the key's range.
    target: Option<u64>,
    /// Number of its latest timer: only the latest one acts.
    pub wake: u64,
    /// Keys still to read once the chaos is over.
    finals: Vec<u64>,
    ops_done: u64,
}

impl SimClient {
    pub fn new(client_id: u64) -> Self {
        Self {
            client_id,
            admin: false,
            next_seq: 1,
            unacked: BTreeSet::new(),
            op: None,
            op_no: 0,
            target: None,
            wake: 0,
            finals: Vec::new(),
            ops_done: 0,
        }
    }

    pub fn operator(client_id: u64) -> Self {
        Self {
            admin: true,
            ..Self::new(client_id)
        }
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unacked.insert(seq);
        seq
    }

    pub fn describe(&self) -> String {
        format!(
            "{}{}: {} done, {:?}",
            if self.admin { "operator " } else { "client " },
            self.client_id,
            self.ops_done,
            self.op.as_ref().map(|o| &o.kind)
        )
    }
}

/// What one attempt led to.
enum Attempt {
    /// Sent; an answer (or the attempt timeout) follows.
    Sent,
    /// Try again after a short backoff.
    Retry,
}

impl StoreWorld {
    pub(super) fn wake_client(&mut self, client: usize, delay: Micros) {
        let c = &mut self.clients[client];
        c.wake += 1;
        let wake = c.wake;
        self.schedule(delay, super::Event::Client { client, wake });
    }

    fn tick_clock(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn backoff(&mut self, client: usize) {
        let delay = self.rng.random_range(TICK_US / 2..3 * TICK_US);
        self.wake_client(client, delay);
    }

    /// Every data client reads every key once more (in its own order) and stops.
    pub(super) fn start_final_reads(&mut self) {
        for c in 0..self.clients.len() {
            if self.clients[c].admin {
                continue;
            }
            let mut keys: Vec<u64> = (0..KEYS).collect();
            keys.shuffle(&mut self.rng);
            self.clients[c].finals = keys;
            if self.clients[c].op.is_none() {
                self.wake_client(c, 0);
            }
        }
    }

    /// Every client idle with its final reads done.
    pub(super) fn clients_done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.op.is_none() && c.finals.is_empty())
    }

    /// The operator's next operation, if it is idle: a split at a key, or a replica move.
    pub(super) fn start_admin(&mut self) {
        let Some(admin) = self.clients.iter().position(|c| c.admin) else {
            return;
        };
        if self.clients[admin].op.is_some() {
            return;
        }
        let key = self.rng.random_range(1..KEYS);
        let kind = if self.rng.random_bool(0.5) {
            Kind::Split {
                seq: self.clients[admin].take_seq(),
            }
        } else {
            let Some((from, to)) = self.plan_move(key) else {
                return;
            };
            Kind::Move {
                from,
                to,
                step: MoveStep::AddLearner,
                seq: self.clients[admin].take_seq(),
            }
        };
        self.say(|| format!("operator: {kind:?} at key {key}"));
        self.clients[admin].op_no += 1;
        self.clients[admin].op = Some(ClientOp {
            kind,
            key,
            call: 0,
            deadline: self.now + ADMIN_TIMEOUT_US,
        });
        self.wake_client(admin, 0);
    }

    /// A voter of `key`'s range to move, and a node without a replica of it, as some running
    /// node sees the range.
    fn plan_move(&mut self, key: u64) -> Option<(u64, u64)> {
        let internal = keys::data_key(&user_key(key));
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let descriptor = self.nodes.values().find_map(|n| {
            let store = n.store.as_ref()?;
            store
                .range_ids()
                .filter_map(|r| store.peer(r))
                .map(|p| p.applier().descriptor())
                .find(|d| contains(d, &internal))
                .cloned()
        })?;
        let voters: Vec<u64> = descriptor
            .replicas
            .iter()
            .filter(|r| r.role == ReplicaRole::Voter as i32)
            .map(|r| r.node_id)
            .collect();
        let free: Vec<u64> = ids
            .into_iter()
            .filter(|n| !descriptor.replicas.iter().any(|r| r.node_id == *n))
            .collect();
        Some((*voters.choose(&mut self.rng)?, *free.choose(&mut self.rng)?))
    }

    /// A client's timer: start its next operation, retry the current one, or give it up.
    pub(super) fn client_act(&mut self, client: usize) -> Result<(), String> {
        let Some(op) = self.clients[client].op.clone() else {
            self.start_op(client);
            return Ok(());
        };
        if self.now >= op.deadline {
            self.say(|| format!("client {client} gives up {:?}", op.kind));
            self.end_op(client, None);
            return Ok(());
        }
        match self.attempt(client, &op)? {
            Attempt::Sent => self.wake_client(client, ATTEMPT_TIMEOUT_US),
            Attempt::Retry => self.backoff(client),
        }
        Ok(())
    }

    fn start_op(&mut self, client: usize) {
        if self.clients[client].admin {
            return;
        }
        let (key, kind) = if self.calm {
            let Some(key) = self.clients[client].finals.pop() else {
                return;
            };
            (key, Kind::Get)
        } else if self.rng.random_bool(0.5) {
            let value = self.next_value;
            self.next_value += 1;
            let seq = self.clients[client].take_seq();
            (self.rng.random_range(0..KEYS), Kind::Put { value, seq })
        } else {
            (self.rng.random_range(0..KEYS), Kind::Get)
        };
        // Final reads retry until the calm phase's own bound judges liveness.
        let timeout = if self.calm {
            u64::MAX / 4
        } else {
            OP_TIMEOUT_US
        };
        let call = self.tick_clock();
        let c = &mut self.clients[client];
        c.op_no += 1;
        c.op = Some(ClientOp {
            kind,
            key,
            call,
            deadline: self.now.saturating_add(timeout),
        });
        self.wake_client(client, 0);
    }

    /// Ends the current operation: `Some(answer)` with what it returned, `None` given up.
    fn end_op(&mut self, client: usize, answer: Option<Option<u64>>) {
        let Some(op) = self.clients[client].op.take() else {
            return;
        };
        let ret = answer.map(|_| self.tick_clock());
        let c = &mut self.clients[client];
        c.ops_done += u64::from(answer.is_some());
        match op.kind {
            Kind::Put { value, seq } => {
                c.unacked.remove(&seq);
                self.history.push(Operation {
                    client: client as u64,
                    key: op.key,
                    kind: OpKind::Put { value },
                    call: op.call,
                    ret,
                });
            }
            Kind::Get => {
                if let Some(observed) = answer {
                    self.history.push(Operation {
                        client: client as u64,
                        key: op.key,
                        kind: OpKind::Get { observed },
                        call: op.call,
                        ret,
                    });
                }
            }
            Kind::Split { seq } | Kind::Move { seq, .. } => {
                c.unacked.remove(&seq);
            }
        }
        let think = self.rng.random_range(0..2 * TICK_US);
        self.wake_client(client, think);
    }

    /// The node to try and the range there that holds the key, if it hosts one.
    fn route(&mut self, client: usize, key: &[u8]) -> Option<(u64, u64)> {
        let node = match self.clients[client].target {
            Some(n) => n,
            None => *self.node_ids().choose(&mut self.rng).expect("nodes"),
        };
        if !self.nodes[&node].runs(self.now) {
            return None;
        }
        let store = self.nodes[&node].store.as_ref()?;
        let range = store.range_ids().find(|&r| {
            store
                .peer(r)
                .is_some_and(|p| contains(p.applier().descriptor(), key))
        });
        Some((node, range?))
    }

    fn attempt(&mut self, client: usize, op: &ClientOp) -> Result<Attempt, String> {
        let user = user_key(op.key);
        let Some((node, range)) = self.route(client, &keys::data_key(&user)) else {
            self.clients[client].target = None;
            return Ok(Attempt::Retry);
        };
        let waiting = Waiting {
            client,
            op_no: self.clients[client].op_no,
        };
        if matches!(op.kind, Kind::Get) {
            return Ok(self.start_read(node, range, user, waiting));
        }
        let (client_id, first_unacked) = {
            let c = &self.clients[client];
            (c.client_id, c.unacked.first().copied())
        };
        let store = self.node(node).store();
        let descriptor = store
            .peer(range)
            .expect("routed to a hosted range")
            .applier()
            .descriptor()
            .clone();
        let (seq, command) = match op.kind {
            Kind::Put { value, seq } => (
                seq,
                Command::Write(WriteRequest {
                    request: Some(write_request::Request::Put(PutRequest {
                        key: user.into(),
                        value: value.to_string().into_bytes().into(),
                        prev_kv: false,
                    })),
                }),
            ),
            Kind::Split { seq } => (
                seq,
                admin(admin_request::Request::Split(SplitRequest {
                    split_key: user.into(),
                })),
            ),
            Kind::Move {
                from,
                to,
                step: MoveStep::TransferAway,
                seq,
            } => {
                let other = descriptor
                    .replicas
                    .iter()
                    .find(|r| {
                        r.role == ReplicaRole::Voter as i32 && r.node_id != from && r.node_id != to
                    })
                    .map(|r| r.node_id);
                let Some(other) = other else {
                    self.end_op(client, None);
                    return Ok(Attempt::Sent);
                };
                (
                    seq,
                    admin(admin_request::Request::TransferLeader(
                        TransferLeaderRequest { node_id: other },
                    )),
                )
            }
            Kind::Move {
                from,
                to,
                step,
                seq,
            } => (seq, move_command(from, to, step)),
            Kind::Get => unreachable!("reads return above"),
        };
        let header = CommandHeader {
            range_id: range,
            epoch: descriptor.epoch,
            client_id,
            seq,
            first_unacked_seq: first_unacked.unwrap_or(seq),
            session_start_ms: 1,
            proposed_at_ms: 0,
        };
        let now_ms = 1 + self.now / TICK_US * 100;
        let store = self.node(node).store();
        match store.propose(header, command, now_ms) {
            Ok(Proposal::Pending(ticket)) => {
                self.node(node)
                    .writes
                    .insert((ticket.range_id, ticket.index), (ticket.term, waiting));
                self.queue_round(node);
                Ok(Attempt::Sent)
            }
            Ok(Proposal::Answered(response)) => {
                self.queue_round(node);
                self.response(client, *response)?;
                Ok(Attempt::Sent)
            }
            Err(ProposeRefused::NotLeader { leader_node, .. }) => {
                self.clients[client].target = leader_node.filter(|&n| n != node);
                Ok(Attempt::Retry)
            }
            Err(ProposeRefused::Busy { .. }) => Ok(Attempt::Retry),
            Err(ProposeRefused::Kv(e)) => self.refused(client, &e),
        }
    }

    fn start_read(&mut self, node: u64, range: u64, user: Vec<u8>, waiting: Waiting) -> Attempt {
        let read_id = self.next_read_id;
        self.next_read_id += 1;
        let client = waiting.client;
        let store = self.node(node).store();
        let leader = store.leader_node(range);
        store.wake(range);
        let Some(peer) = store.peer_mut(range) else {
            return Attempt::Retry;
        };
        if peer.raft().status().role != Role::Leader {
            self.clients[client].target = leader.filter(|&n| n != node);
            return Attempt::Retry;
        }
        let request = ReadRequest {
            range_id: range,
            epoch: peer.applier().descriptor().epoch,
            consistency: ReadConsistency::Linearizable as i32,
            request: Some(read_request::Request::Get(GetRequest { key: user.into() })),
            max_staleness_ms: 0,
        };
        if peer
            .raft()
            .read_index(Bytes::copy_from_slice(&read_id.to_be_bytes()))
            .is_err()
        {
            return Attempt::Retry;
        }
        self.node(node).reads.insert(read_id, (request, waiting));
        self.queue_round(node);
        Attempt::Sent
    }

    /// A refusal before anything was appended.
    fn refused(&mut self, client: usize, e: &KvError) -> Result<Attempt, String> {
        match e {
            e if e.is_routing() => {
                self.clients[client].target = None;
                Ok(Attempt::Retry)
            }
            KvError::ServerBusy(_) | KvError::NotReady(_) | KvError::ProposalDropped { .. } => {
                Ok(Attempt::Retry)
            }
            KvError::InvalidChange(message) if self.clients[client].admin => {
                self.invalid_change(client, message);
                Ok(Attempt::Retry)
            }
            // A split at a key that already starts a range.
            KvError::Malformed(_) if self.clients[client].admin => {
                self.end_op(client, None);
                Ok(Attempt::Sent)
            }
            e => Err(format!("client {client}: unexpected refusal: {e}")),
        }
    }

    /// A change the range cannot take: the source leads (hand its leadership away first), or
    /// the move no longer fits the range (given up).
    fn invalid_change(&mut self, client: usize, message: &str) {
        let Some(ClientOp {
            kind:
                Kind::Move {
                    from,
                    to,
                    step,
                    seq,
                },
            ..
        }) = self.clients[client].op.clone()
        else {
            self.end_op(client, None);
            return;
        };
        if step == MoveStep::PromoteAndRemove && message.contains("transfer leadership first") {
            self.set_move_step(client, from, to, MoveStep::TransferAway, seq);
        } else {
            self.say(|| format!("operator: move {from} -> {to} given up: {message}"));
            self.end_op(client, None);
        }
    }

    fn set_move_step(&mut self, client: usize, from: u64, to: u64, step: MoveStep, seq: u64) {
        if let Some(op) = self.clients[client].op.as_mut() {
            op.kind = Kind::Move {
                from,
                to,
                step,
                seq,
            };
        }
    }

    /// Whether `waiting` is for the operation its client runs now (not an earlier one).
    fn is_current(&self, waiting: &Waiting) -> bool {
        let c = &self.clients[waiting.client];
        c.op_no == waiting.op_no && c.op.is_some()
    }

    /// A proposed write ended at `waiting`'s node.
    pub(super) fn write_answered(
        &mut self,
        waiting: Waiting,
        same_term: bool,
        outcome: Outcome,
    ) -> Result<(), String> {
        let client = waiting.client;
        if !self.is_current(&waiting) {
            return Ok(());
        }
        match outcome {
            Outcome::Applied(response) if same_term => self.response(client, *response),
            // Dropped, or covered by a snapshot: retried with the same sequence number, the
            // session answers if it applied.
            _ => {
                self.backoff(client);
                Ok(())
            }
        }
    }

    /// The state machine's answer to the current operation.
    fn response(&mut self, client: usize, response: WriteResponse) -> Result<(), String> {
        let Some(op) = self.clients[client].op.clone() else {
            return Ok(());
        };
        match (response.response, op.kind) {
            (Some(write_response::Response::Error(e)), kind) => {
                let code = ErrorCode::try_from(e.code).unwrap_or_default();
                match code {
                    ErrorCode::KeyNotInRange
                    | ErrorCode::EpochNotMatch
                    | ErrorCode::RangeNotFound
                    | ErrorCode::NotLeader
                    | ErrorCode::NotReady
                    | ErrorCode::ServerBusy => {
                        self.clients[client].target = None;
                        self.backoff(client);
                    }
                    _ if matches!(kind, Kind::Split { .. }) => self.end_op(client, None),
                    _ => {
                        return Err(format!(
                            "client {client}: {kind:?} refused at apply: {code:?} {}",
                            e.message
                        ))
                    }
                }
            }
            (Some(write_response::Response::Put(_)), Kind::Put { .. }) => {
                self.end_op(client, Some(None));
            }
            (Some(write_response::Response::Split(_)), Kind::Split { .. }) => {
                self.splits += 1;
                self.say(|| format!("operator: split at key {} done", op.key));
                self.end_op(client, Some(None));
            }
            (
                Some(write_response::Response::ChangeReplicas(_)),
                Kind::Move { from, to, step, .. },
            ) => {
                let next = match step {
                    MoveStep::AddLearner => Some(MoveStep::PromoteAndRemove),
                    MoveStep::PromoteAndRemove => Some(MoveStep::Remove),
                    MoveStep::Remove | MoveStep::TransferAway => None,
                };
                match next {
                    Some(step) => {
                        let seq = self.clients[client].take_seq();
                        if let Some(ClientOp {
                            kind: Kind::Move { seq: old, .. },
                            ..
                        }) = &self.clients[client].op
                        {
                            let old = *old;
                            self.clients[client].unacked.remove(&old);
                        }
                        self.set_move_step(client, from, to, step, seq);
                        self.wake_client(client, 0);
                    }
                    None => {
                        self.moves += 1;
                        self.say(|| format!("operator: replica moved {from} -> {to}"));
                        self.end_op(client, Some(None));
                    }
                }
            }
            (
                Some(write_response::Response::TransferLeader(_)),
                Kind::Move { from, to, seq, .. },
            ) => {
                // Promote and remove again once the leadership moved (NOT_LEADER until then).
                self.set_move_step(client, from, to, MoveStep::PromoteAndRemove, seq);
                self.backoff(client);
            }
            (other, kind) => {
                return Err(format!("client {client}: {kind:?} answered with {other:?}"))
            }
        }
        Ok(())
    }

    /// A confirmed read was served at `waiting`'s node.
    pub(super) fn read_answered(
        &mut self,
        waiting: Waiting,
        answer: ReadResult,
    ) -> Result<(), String> {
        let client = waiting.client;
        if !self.is_current(&waiting) {
            return Ok(());
        }
        match answer {
            Ok(read_response::Response::Get(get)) => {
                let observed = match get.kv {
                    None => None,
                    Some(kv) => Some(
                        std::str::from_utf8(&kv.value)
                            .ok()
                            .and_then(|v| v.parse::<u64>().ok())
                            .ok_or_else(|| {
                                format!("client {client}: a value not written: {kv:?}")
                            })?,
                    ),
                };
                self.end_op(client, Some(observed));
            }
            Ok(other) => return Err(format!("client {client}: a get answered {other:?}")),
            Err(RequestError::Refused(e)) if e.is_routing() => {
                self.clients[client].target = None;
                self.backoff(client);
            }
            Err(e) => return Err(format!("client {client}: a read failed: {e}")),
        }
        Ok(())
    }
}

fn admin(request: admin_request::Request) -> Command {
    Command::Admin(AdminRequest {
        request: Some(request),
    })
}

fn move_command(from: u64, to: u64, step: MoveStep) -> Command {
    let change = |kind: ReplicaChangeKind, node_id: u64| ReplicaChange {
        kind: kind as i32,
        node_id,
    };
    let changes = match step {
        MoveStep::AddLearner => vec![change(ReplicaChangeKind::AddLearner, to)],
        MoveStep::PromoteAndRemove => vec![
            change(ReplicaChangeKind::Promote, to),
            change(ReplicaChangeKind::Remove, from),
        ],
        MoveStep::Remove => vec![change(ReplicaChangeKind::Remove, from)],
        MoveStep::TransferAway => unreachable!("a transfer is built where the voters are known"),
    };
    admin(admin_request::Request::ChangeReplicas(
        ChangeReplicasRequest { changes },
    ))
}
