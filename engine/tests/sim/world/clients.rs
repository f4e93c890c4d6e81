//! The clients: each runs one operation at a time (a put of a unique value or a read), against
//! the node it believes leads, and records call and return in the history.

use bytes::Bytes;
use rand::seq::IndexedRandom;
use rand::Rng;

use super::{encode, Done, Event, PendingOp, World, OP_TIMEOUT_US};
use crate::checker::Check;
use crate::network::{Micros, TICK_US};
use flotilla_engine::check::linearizability::{OpKind, Operation};

impl World {
    pub(super) fn serve_reads(&mut self, id: u64) {
        let node = self.node(id);
        let applied = node.applied;
        let ready: Vec<u64> = node
            .reads
            .iter()
            .filter(|r| r.index <= applied)
            .filter_map(|r| {
                r.context
                    .get(0..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
            })
            .collect();
        self.node_mut(id).reads.retain(|r| r.index > applied);
        for context in ready {
            for c in 0..self.clients.len() {
                let matches = self.clients[c]
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.node == id && p.proposal.is_none() && p.context == context);
                if matches {
                    let key = self.clients[c].pending.as_ref().map_or(0, |p| p.op.key);
                    let value = self.node(id).kv.get(&key).copied();
                    self.complete(c, Done::Read(value));
                }
            }
        }
    }

    pub(super) fn complete(&mut self, c: usize, done: Done) {
        let Some(mut p) = self.clients[c].pending.take() else {
            return;
        };
        match done {
            Done::Failed => {}
            Done::Written | Done::Read(_) => {
                if let Done::Read(observed) = done {
                    p.op.kind = OpKind::Get { observed };
                } else if self.calm {
                    self.clients[c].calm_write_done = true;
                }
                p.op.ret = Some(self.tick_clock());
                let node = p.node;
                self.say(|| match &p.op.kind {
                    OpKind::Put { value } => {
                        format!(
                            "client {c}: put key {} = {value} ok (via node {node})",
                            p.op.key
                        )
                    }
                    OpKind::Get { observed } => {
                        format!(
                            "client {c}: get key {} -> {observed:?} (at node {node})",
                            p.op.key
                        )
                    }
                });
                self.history.push(p.op);
            }
        }
        self.clients[c].target = p.node;
        let think = if self.churn {
            self.rng.random_range(0..TICK_US / 2)
        } else {
            self.rng.random_range(0..3 * TICK_US)
        };
        self.wake_client(c, think);
    }

    /// The client stops waiting: a write's outcome is unknown, a read is dropped.
    pub(super) fn give_up(&mut self, c: usize) {
        let Some(p) = self.clients[c].pending.take() else {
            return;
        };
        if p.proposal.is_some() {
            self.history.push(p.op);
        }
        self.clients[c].target = self.random_member();
        self.wake_client(c, TICK_US);
    }

    /// Where a client tries next after a failure: a member of the group as the latest leader
    /// sees it (a router refreshing its cache from placement), or any node when there is none.
    pub(super) fn random_member(&mut self) -> u64 {
        let members: Vec<u64> = self
            .leader()
            .and_then(|l| self.node(l).raw.as_ref().map(|r| r.conf_state()))
            .map(|cs| cs.voters.iter().chain(&cs.learners).copied().collect())
            .unwrap_or_else(|| self.ids.clone());
        *members.choose(&mut self.rng).expect("a group has members")
    }

    pub(super) fn wake_client(&mut self, c: usize, delay: Micros) {
        self.clients[c].wake += 1;
        let wake = self.clients[c].wake;
        self.schedule(delay, Event::Client { client: c, wake });
    }

    pub(super) fn client_step(&mut self, c: usize) -> Check {
        if let Some(p) = &self.clients[c].pending {
            if self.now >= p.deadline {
                self.give_up(c);
            } else {
                let wait = p.deadline - self.now;
                self.wake_client(c, wait);
            }
            return Ok(());
        }
        if self.clients[c].calm_write_done {
            return Ok(());
        }
        let target = self.clients[c].target;
        let key = self.rng.random_range(0..3u64);
        let is_write = self.rng.random_bool(0.6);
        let value = self.next_value;
        self.next_value += 1;
        let kind = if is_write {
            OpKind::Put { value }
        } else {
            OpKind::Get { observed: None }
        };
        let call = self.tick_clock();
        self.clients[c].pending = Some(PendingOp {
            op: Operation {
                client: c as u64,
                key,
                kind,
                call,
                ret: None,
            },
            node: target,
            proposal: None,
            context: value,
            deadline: self.now + OP_TIMEOUT_US,
        });
        self.wake_client(c, OP_TIMEOUT_US);
        let submit = Event::Submit { client: c, value };
        match self.paused.get_mut(&target) {
            // The request waits in the stalled process's socket.
            Some((_, backlog)) => {
                backlog.push(submit);
                Ok(())
            }
            None => self.handle(submit),
        }
    }

    /// The request of client `c` (operation `value`) reaches its node.
    pub(super) fn submit(&mut self, c: usize, value: u64) -> Check {
        let Some(p) = &self.clients[c].pending else {
            return Ok(());
        };
        if p.context != value {
            // The client gave up on it before it arrived: it is never executed.
            return Ok(());
        }
        let (target, key, is_write) = (p.node, p.op.key, matches!(p.op.kind, OpKind::Put { .. }));
        let Some(raw) = self.nodes.get_mut(&target).and_then(|n| n.raw.as_mut()) else {
            self.reject(c, None);
            return Ok(());
        };
        if is_write {
            match raw.propose(encode(key, value)) {
                Ok(proposal) => {
                    if let Some(p) = self.clients[c].pending.as_mut() {
                        p.proposal = Some(proposal);
                    }
                }
                Err(flotilla_engine::raft::ProposeError::NotLeader { leader }) => {
                    self.reject(c, leader);
                    return Ok(());
                }
                Err(_) => {
                    self.reject(c, None);
                    return Ok(());
                }
            }
        } else if raw
            .read_index(Bytes::copy_from_slice(&value.to_be_bytes()))
            .is_err()
        {
            self.reject(c, None);
            return Ok(());
        }
        self.drive(target)
    }

    /// The node refused the request: definitely not applied, not part of the history.
    pub(super) fn reject(&mut self, c: usize, leader_hint: Option<u64>) {
        self.clients[c].pending = None;
        self.clients[c].target = leader_hint.unwrap_or_else(|| self.random_member());
        self.wake_client(c, TICK_US / 2);
    }

    pub(super) fn finish_clients(&mut self) {
        for c in 0..self.clients.len() {
            self.give_up(c);
        }
    }
}
