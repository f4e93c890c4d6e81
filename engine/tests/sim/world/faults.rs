//! The fault schedule: crashes, partitions, clogged links, pauses, dropped message types,
//! leader churn, transfers and wake-ups, membership changes, log compaction and snapshots.

use flotilla_engine::raft::{Message, MessageType};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{Event, World};
use crate::checker::Check;
use crate::network::TICK_US;

impl World {
    /// Crashes or isolates the current leader for a short while.
    pub(super) fn churn_leader(&mut self) {
        let Some(l) = self.leader() else { return };
        if self.rng.random_bool(0.7) {
            self.crash(l);
            let back = self.rng.random_range(1..12) * TICK_US;
            self.schedule(back, Event::Restart(l));
        } else {
            self.net.partition(&[l], &self.ids.clone());
            self.say(|| format!("leader {l} isolated"));
            let after = self.rng.random_range(1..12) * TICK_US;
            self.schedule(after, Event::NetHeal);
        }
    }

    pub(super) fn inject_fault(&mut self) -> Check {
        let up: Vec<u64> = self
            .ids
            .iter()
            .copied()
            .filter(|&id| self.node(id).is_up())
            .collect();
        let n = self.ids.len();
        match self.rng.random_range(0..13) {
            11 => {
                // An operator or the placement service moves leadership.
                let to = *self.voters.choose(&mut self.rng).expect("non-empty");
                if let Some(l) = self.leader() {
                    if let Some(raw) = self.node_mut(l).raw.as_mut() {
                        let _ = raw.transfer_leader(to);
                    }
                    self.say(|| format!("leader {l} asked to transfer to {to}"));
                    self.drive(l)?;
                }
            }
            12 => {
                // A node-liveness wake-up: a follower campaigns at once (refused within a
                // lease promise).
                let id = *self.voters.choose(&mut self.rng).expect("non-empty");
                if let Some(raw) = self.node_mut(id).raw.as_mut() {
                    let started = raw.campaign().unwrap_or(false);
                    self.say(|| format!("node {id} told to campaign: started={started}"));
                    self.drive(id)?;
                }
            }
            0..=2 => {
                // Crash one node, sometimes the leader; at most a minority stays down... usually.
                let victim = if self.rng.random_bool(0.5) {
                    self.leader()
                } else {
                    None
                }
                .or_else(|| up.choose(&mut self.rng).copied());
                let down = n - up.len();
                let allow_majority = self.rng.random_bool(0.1);
                if let Some(v) = victim {
                    if down < n / 2 || allow_majority {
                        self.crash(v);
                        let back = self.rng.random_range(3..40) * TICK_US;
                        self.schedule(back, Event::Restart(v));
                    }
                }
            }
            3 => {
                let mut side: Vec<u64> = self.ids.clone();
                let k = self.rng.random_range(1..=n / 2);
                side.sort_by_key(|_| self.rng.random::<u32>());
                side.truncate(k);
                self.net.partition(&side, &self.ids.clone());
                self.say(|| format!("partition: {side:?} cut from the rest"));
                self.heal_later();
            }
            4 => {
                if let Some(l) = self.leader() {
                    self.net.partition(&[l], &self.ids.clone());
                    self.say(|| format!("leader {l} isolated"));
                    self.heal_later();
                }
            }
            5 => {
                let from = *self.ids.choose(&mut self.rng).expect("non-empty");
                let to = *self.ids.choose(&mut self.rng).expect("non-empty");
                if from != to {
                    self.net.cut_one_way(from, to);
                    self.say(|| format!("one-way cut {from} -> {to}"));
                    self.heal_later();
                }
            }
            7 => {
                let id = *self.ids.choose(&mut self.rng).expect("non-empty");
                let id = if self.rng.random_bool(0.5) {
                    self.leader().unwrap_or(id)
                } else {
                    id
                };
                self.schedule(0, Event::Pause(id));
            }
            8 => {
                let kinds = [
                    MessageType::AppendResponse,
                    MessageType::HeartbeatResponse,
                    MessageType::Heartbeat,
                    MessageType::RequestVoteResponse,
                    MessageType::RequestPreVote,
                    MessageType::ReadIndexResponse,
                ];
                let kind = *kinds.choose(&mut self.rng).expect("non-empty");
                self.net.drop_type(kind as i32);
                self.say(|| format!("every {kind:?} dropped for a while"));
                self.heal_later();
            }
            6 => {
                let from = *self.ids.choose(&mut self.rng).expect("non-empty");
                for &to in &self.ids.clone() {
                    if to != from {
                        self.net.clog(from, to);
                    }
                }
                self.say(|| format!("links from {from} clogged"));
                self.heal_later();
            }
            _ => {
                // Quiet period: let the cluster make progress.
            }
        }
        Ok(())
    }

    pub(super) fn heal_later(&mut self) {
        let after = self.rng.random_range(5..60) * TICK_US;
        self.schedule(after, Event::NetHeal);
    }

    pub(super) fn crash(&mut self, id: u64) {
        if !self.node(id).is_up() {
            return;
        }
        let unsynced_entries = self
            .node(id)
            .unsynced
            .as_ref()
            .map_or(0, |w| w.entries.len());
        let torn = if unsynced_entries > 0 && self.rng.random_bool(0.5) {
            Some(self.rng.random_range(0..=unsynced_entries))
        } else {
            None
        };
        self.node_mut(id).crash(torn);
        // A crash ends a stall; what it had queued is lost with the process, and the senders
        // of snapshots among it see their streams fail.
        if let Some((_, backlog)) = self.paused.remove(&id) {
            for e in backlog {
                if let Event::Deliver(m) = e {
                    if m.msg_type == MessageType::Snapshot as i32 {
                        if let Some(raw) = self.node_mut(m.from).raw.as_mut() {
                            raw.report_snapshot(m.to, false);
                        }
                    }
                }
            }
        }
        self.say(|| format!("node {id} crashes (torn write keeps {torn:?} entries)"));
        // Its clients' operations have unknown outcomes now.
        for c in 0..self.clients.len() {
            if self.clients[c]
                .pending
                .as_ref()
                .is_some_and(|p| p.node == id)
            {
                self.give_up(c);
            }
        }
    }

    /// A snapshot message: the receiver first fetches the data from the sender (its own
    /// stream in the real store), then steps the message; the sender learns how it went.
    pub(super) fn deliver_snapshot(&mut self, m: Message) -> Check {
        let (from, to) = (m.from, m.to);
        let index = m.snapshot.as_ref().map_or(0, |s| s.index);
        let data = self
            .node(from)
            .snapshot_kv
            .as_ref()
            .filter(|(i, _)| *i == index)
            .map(|(_, kv)| kv.clone());
        let receiver_up = self.node(to).is_up();
        let ok = data.is_some() && receiver_up;
        if let Some(raw) = self.node_mut(from).raw.as_mut() {
            raw.report_snapshot(to, ok);
        }
        let (Some(kv), true) = (data, receiver_up) else {
            self.say(|| format!("snapshot {index} from {from} to {to} failed"));
            return self.drive(from);
        };
        self.say(|| format!("snapshot {index} from {from} to {to} transferred"));
        if !self.calm && self.rng.random_bool(0.2) {
            // Crash the receiver in the middle of installing it.
            let at = self.rng.random_range(0..TICK_US / 2);
            self.schedule(at, Event::CrashRestart(to));
        }
        let node = self.node_mut(to);
        node.fetched.insert(index, kv);
        if let Some(raw) = node.raw.as_mut() {
            let _ = raw.step(m);
        }
        self.drive(to)?;
        self.drive(from)
    }

    /// The leader proposes a random membership change: add or remove a learner, promote or
    /// demote, grow, shrink (never below three voters), replace a voter (the leader too)
    /// through joint consensus, or shrink five voters to three in one joint step.
    pub(super) fn change_membership(&mut self) -> Check {
        use flotilla_engine::raft::{add_learner, add_voter, remove, ConfChange};
        let Some(leader) = self.leader() else {
            return Ok(());
        };
        let Some(cs) = self.node(leader).raw.as_ref().map(|r| r.conf_state()) else {
            return Ok(());
        };
        if !cs.voters_outgoing.is_empty() {
            return Ok(());
        }
        let voters = cs.voters.clone();
        let learners = cs.learners.clone();
        let outsiders: Vec<u64> = self
            .ids
            .iter()
            .copied()
            .filter(|id| !voters.contains(id) && !learners.contains(id))
            .collect();
        let pick = |rng: &mut ChaCha8Rng, v: &[u64]| v.choose(rng).copied();
        let changes = match self.rng.random_range(0..8) {
            0 => pick(&mut self.rng, &outsiders).map(|x| vec![add_learner(x)]),
            1 => pick(&mut self.rng, &learners).map(|x| vec![add_voter(x)]),
            2 => pick(&mut self.rng, &outsiders).map(|x| vec![add_voter(x)]),
            3 if voters.len() > 3 => pick(&mut self.rng, &voters).map(|x| vec![remove(x)]),
            4 if voters.len() > 3 => pick(&mut self.rng, &voters).map(|x| vec![add_learner(x)]),
            5 => {
                let out = if self.rng.random_bool(0.5) {
                    Some(leader)
                } else {
                    pick(&mut self.rng, &voters)
                };
                let pool: Vec<u64> = outsiders.iter().chain(&learners).copied().collect();
                match (out, pick(&mut self.rng, &pool)) {
                    (Some(o), Some(n)) => Some(vec![add_voter(n), remove(o)]),
                    _ => None,
                }
            }
            6 => pick(&mut self.rng, &learners).map(|x| vec![remove(x)]),
            _ if voters.len() == 5 => {
                let mut gone = voters.clone();
                gone.shuffle(&mut self.rng);
                Some(gone[..2].iter().map(|&x| remove(x)).collect())
            }
            _ => None,
        };
        let Some(changes) = changes else {
            return Ok(());
        };
        let cc = ConfChange {
            changes,
            ..ConfChange::default()
        };
        if let Some(raw) = self.node_mut(leader).raw.as_mut() {
            let outcome = raw.propose_conf_change(&cc);
            self.say(|| format!("leader {leader} proposes {cc:?}: {outcome:?}"));
        }
        if self.rng.random_bool(0.2) {
            // Crash the leader in the middle of the change (before or after it commits, inside
            // or on the way out of the joint configuration).
            let at = self.rng.random_range(0..3 * TICK_US);
            self.schedule(at, Event::CrashRestart(leader));
        }
        self.drive(leader)
    }

    /// Compacts a replica's log up to what it applied, keeping its state as the snapshot.
    pub(super) fn compact(&mut self, id: u64) {
        let node = self.node_mut(id);
        if node.unsynced.is_some() {
            return;
        }
        let applied = node.applied;
        let Some(raw) = node.raw.as_mut() else { return };
        let Ok(term) = raw.term_of(applied) else {
            return;
        };
        let meta = flotilla_engine::raft::SnapshotMetadata {
            index: applied,
            term,
            conf_state: Some(raw.conf_state()),
        };
        if applied > 0 && raw.compact(&meta).is_ok() {
            node.snapshot_kv = Some((applied, node.kv.clone()));
            self.say(|| format!("node {id} compacts its log up to {applied}"));
        }
    }
}
