//! `Store`: the replicas of one node over its one engine, driven in rounds. This is the
//! deterministic heart the poller threads will run (issue 6): no threads, no clock, no network
//! here; the caller feeds messages and ticks and carries the output away.
//!
//! A round: every peer with work stages its `Ready` into ONE `LogBatch` (ranges in id order, so
//! RocksDB inserts along its sequential splice), the batch is written with one fsync, then every
//! peer finishes (messages that promised durability, apply, advance). Outgoing messages are
//! grouped by destination node for the transport's one-frame-per-node batches.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use flotilla_transport::kv::{
    admin_request, write_response, AdminRequest, ChangeReplicasResponse, CommandHeader,
    RaftCommand, TransferLeaderResponse, WriteRequest, WriteResponse,
};
use flotilla_transport::meta::RangeDescriptor;
use flotilla_transport::raft::{Message, MessageType, SnapshotMetadata};
use prost::Message as _;

use super::peer::{Peer, PeerError, RoundOutput};

mod removal;
use self::removal::{is_removed_sender, is_stale_campaign};
use crate::kv::{check_command, check_range, plan_change, Applied, KvConfig, KvError, LeaderView};
use crate::raft::{ConfChangeError, Config, ProposeError, ReadState, Role};
use crate::storage::{Engine, LogBatch, RangeLog, ReceivedSnapshot};

/// What one round produced.
#[derive(Debug, Default)]
pub struct StoreRound {
    /// Messages by destination replica id's node, each with its range id.
    pub outbox: BTreeMap<u64, Vec<(u64, Message)>>,
    /// Commands applied, by range.
    pub applied: Vec<(u64, Applied)>,
    /// Reads confirmed by a quorum, by range: serve each once that range applied up to it.
    pub reads: Vec<(u64, ReadState)>,
    /// Proposals of this node that ended in this round.
    pub completed: Vec<(Ticket, Outcome)>,
    /// Ranges that took part in the round's one synced write.
    pub ranges_persisted: usize,
    /// Some range has more work already (a Ready left after this round): run another round
    /// without waiting.
    pub more: bool,
    /// Ranges created by splits in this round (now hosted by this store).
    pub created: Vec<u64>,
    /// Ranges whose replica here was removed in this round (its data is deleted).
    pub removed: Vec<u64>,
}

/// How many election timeouts a leader keeps telling a removed replica it was removed.
const TOMBSTONE_RESENDS: u64 = 100;

/// A replica that heard from no leader for this many election timeouts asks the replicas it
/// knows whether it is still a member (and again as often while it stays so).
const MEMBERSHIP_CHECK_TIMEOUTS: u64 = 5;

/// How far behind the leader's commit index a learner may be and still be promoted.
const PROMOTE_MAX_LAG_ENTRIES: u64 = 64;

/// What became of a proposal.
#[derive(Clone, Debug, PartialEq)]
pub enum Proposal {
    /// Appended: it ends when its index applies.
    Pending(Ticket),
    /// Answered without an entry (a replica change already in effect, a leader transfer).
    Answered(Box<WriteResponse>),
}

/// Why a write was not proposed. Nothing was appended; the client may act on each.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProposeRefused {
    /// This replica does not lead: the hint names the node that does, if known.
    #[error("range {range_id}: not the leader (leader on node {leader_node:?})")]
    NotLeader {
        range_id: u64,
        leader_node: Option<u64>,
    },
    /// Routing, limits and malformed requests, checked against the current descriptor.
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("range {range_id}: busy ({reason})")]
    Busy { range_id: u64, reason: String },
}

/// What a client proposes to a range.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Write(WriteRequest),
    Admin(AdminRequest),
}

/// How a proposed write ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Applied; the state machine's response (which may be a typed refusal from apply).
    Applied(Box<flotilla_transport::kv::WriteResponse>),
    /// Certainly not applied: another entry was committed at its index (leadership changed).
    Dropped,
    /// Covered by a snapshot this replica installed: it may or may not have applied. A retry
    /// with the same `(client_id, seq)` gets the recorded response if it did.
    Unknown,
}

/// A proposed write: it succeeded if the entry applied at `index` has this `term`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub range_id: u64,
    pub term: u64,
    pub index: u64,
}

/// Whether the session of `header`'s client in `range_id` holds a response for its seq.
fn recorded(engine: &Engine, range_id: u64, header: &CommandHeader) -> Result<bool, KvError> {
    if header.client_id == 0 {
        return Ok(false);
    }
    let session: Option<flotilla_transport::meta::SessionRecord> = engine
        .read_record(
            crate::storage::Cf::Meta,
            &crate::storage::keys::session_key(range_id, header.client_id),
            range_id,
            "session",
        )
        .map_err(|e| KvError::ServerBusy(format!("session lookup failed: {e}")))?;
    Ok(session.is_some_and(|s| s.responses.iter().any(|c| c.seq == header.seq)))
}

/// The replicas hosted by one node.
pub struct Store {
    engine: Arc<Engine>,
    node_id: u64,
    raft: Config,
    kv: KvConfig,
    peers: BTreeMap<u64, Peer>,
    /// Replica id -> node id, from the descriptors (ids of replicas are unique cluster-wide).
    nodes_of_replicas: BTreeMap<u64, u64>,
    /// Proposals waiting for their index to apply: (range, index) -> term.
    pending: BTreeMap<(u64, u64), u64>,
    /// Quiet ranges woken since the caller last asked (it ticks them again).
    woken: Vec<u64>,
    /// Messages made outside a round (answers for replicas this node does not host,
    /// tombstones), sent with the next round's.
    extra: BTreeMap<u64, Vec<(u64, Message)>>,
    /// Replicas this node's leaders removed and that have not acknowledged their tombstone
    /// yet, by range: sent again every election timeout (the range stays awake meanwhile).
    tombstones: BTreeMap<u64, PendingTombstones>,
    /// Ticks since each ticking non-leader replica last heard from a leader.
    leaderless_ticks: BTreeMap<u64, u64>,
    /// Ranges this node campaigned for after their leader's node went down: `(ticks until the
    /// next try, tries left)`. The other survivors may not have noticed the death yet and
    /// refuse the first pre-vote; trying again soon beats waiting out an election timeout.
    recampaigns: BTreeMap<u64, (u64, u32)>,
}

/// Ticks between campaigns after a leader's node went down, and how many more tries.
const RECAMPAIGN_TICKS: u64 = 3;
const RECAMPAIGN_TRIES: u32 = 3;

/// Removed replicas a leader still has to tell.
#[derive(Debug, Default)]
struct PendingTombstones {
    /// `(replica id, node id)`.
    replicas: Vec<(u64, u64)>,
    ticks: u64,
}

/// A tombstone (or, `ack`, its acknowledgement); `conf_ver` (in `index`) is the sender's
/// configuration, which the removed replica's tombstone record keeps.
fn tombstone(to: u64, from: u64, term: u64, conf_ver: u64, ack: bool) -> Message {
    Message {
        msg_type: MessageType::Tombstone as i32,
        to,
        from,
        term,
        index: conf_ver,
        reject: ack,
        ..Message::default()
    }
}

fn conf_ver_of(d: &RangeDescriptor) -> u64 {
    d.epoch.map(|e| e.conf_ver).unwrap_or_default()
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("node_id", &self.node_id)
            .field("ranges", &self.peers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens every range on `engine`. `raft` is the template of each replica's config (its
    /// `id` and `seed` are set per replica).
    ///
    /// # Errors
    /// [`PeerError`] for a damaged range.
    pub fn open(
        engine: Arc<Engine>,
        node_id: u64,
        raft: Config,
        kv: KvConfig,
    ) -> Result<Self, PeerError> {
        Self::open_shard(engine, node_id, raft, kv, |_| true)
    }

    /// Opens the ranges on `engine` that `hosts` accepts: one shard of the node's ranges, for
    /// one poller thread.
    ///
    /// # Errors
    /// [`PeerError`] for a damaged range.
    pub fn open_shard(
        engine: Arc<Engine>,
        node_id: u64,
        raft: Config,
        kv: KvConfig,
        hosts: impl Fn(u64) -> bool,
    ) -> Result<Self, PeerError> {
        let mut store = Self {
            engine: engine.clone(),
            node_id,
            raft,
            kv,
            peers: BTreeMap::new(),
            nodes_of_replicas: BTreeMap::new(),
            pending: BTreeMap::new(),
            woken: Vec::new(),
            extra: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            leaderless_ticks: BTreeMap::new(),
            recampaigns: BTreeMap::new(),
        };
        for range_id in engine.range_ids()?.into_iter().filter(|r| hosts(*r)) {
            let descriptor = engine
                .descriptor(range_id)?
                .ok_or(crate::storage::EngineError::RangeNotFound(range_id))?;
            if descriptor.replicas.iter().any(|r| r.node_id == node_id) {
                store.add_peer(&descriptor, None)?;
            } else {
                // Removed, and the crash came before its data was deleted (or a split applied
                // with the removal created a range without this node): finish the job.
                store.discard(&descriptor)?;
            }
        }
        Ok(store)
    }

    /// Creates a range on this node (bootstrap, or a new replica) and starts its peer.
    ///
    /// # Errors
    /// [`PeerError`] when the range exists or the descriptor does not name this node.
    pub fn create_range(
        &mut self,
        descriptor: &RangeDescriptor,
        initial: &SnapshotMetadata,
    ) -> Result<(), PeerError> {
        self.add_peer(descriptor, Some(initial))
    }

    fn add_peer(
        &mut self,
        descriptor: &RangeDescriptor,
        create: Option<&SnapshotMetadata>,
    ) -> Result<(), PeerError> {
        let replica = descriptor
            .replicas
            .iter()
            .find(|r| r.node_id == self.node_id)
            .ok_or_else(|| {
                crate::storage::EngineError::corruption(
                    descriptor.id,
                    "descriptor",
                    format!("no replica on node {}", self.node_id),
                )
            })?;
        for r in &descriptor.replicas {
            self.nodes_of_replicas.insert(r.replica_id, r.node_id);
        }
        let config = Config {
            id: replica.replica_id,
            seed: self.raft.seed
                ^ descriptor.id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ replica.replica_id,
            ..self.raft.clone()
        };
        let peer = match create {
            Some(initial) => {
                Peer::create(&self.engine, descriptor, initial, config, self.kv.clone())?
            }
            None => Peer::open(&self.engine, descriptor.id, config, self.kv.clone())?,
        };
        self.peers.insert(descriptor.id, peer);
        Ok(())
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn peer_mut(&mut self, range_id: u64) -> Option<&mut Peer> {
        self.peers.get_mut(&range_id)
    }

    pub fn peer(&self, range_id: u64) -> Option<&Peer> {
        self.peers.get(&range_id)
    }

    pub fn range_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.peers.keys().copied()
    }

    /// The node hosting replica `replica_id`, if any descriptor names it.
    pub fn node_of_replica(&self, replica_id: u64) -> Option<u64> {
        self.nodes_of_replicas.get(&replica_id).copied()
    }

    /// The node of the leader of `range_id` as this replica knows it.
    pub fn leader_node(&mut self, range_id: u64) -> Option<u64> {
        let leader = self.peers.get_mut(&range_id)?.raft().status().leader_id;
        self.node_of_replica(leader)
    }

    /// Ticks one replica.
    ///
    /// # Errors
    /// [`PeerError`] if the replica's storage failed.
    pub fn tick_range(&mut self, range_id: u64) -> Result<(), PeerError> {
        if let Some(peer) = self.peers.get_mut(&range_id) {
            peer.raft().tick()?;
            if let Some((ticks, tries)) = self.recampaigns.get_mut(&range_id) {
                *ticks = ticks.saturating_sub(1);
                if *ticks == 0 {
                    let status = peer.raft().status();
                    let tries_left = tries.saturating_sub(1);
                    if status.leader_id == 0 && status.role != Role::Leader {
                        peer.raft().campaign()?;
                    }
                    if tries_left == 0 || status.leader_id != 0 || status.role == Role::Leader {
                        self.recampaigns.remove(&range_id);
                    } else {
                        *ticks = RECAMPAIGN_TICKS;
                        *tries = tries_left;
                    }
                }
            }
            let timeout = self.raft.election_timeout_ticks.max(1);
            if peer.raft().status().role == Role::Leader {
                self.leaderless_ticks.remove(&range_id);
            } else {
                let silent = self.leaderless_ticks.entry(range_id).or_default();
                *silent += 1;
                if silent.is_multiple_of(MEMBERSHIP_CHECK_TIMEOUTS * timeout) {
                    // Removed while away, with the leader that would have said so gone: a
                    // learner never campaigns, so nobody else would tell it.
                    let status = peer.raft().status();
                    let descriptor = peer.applier().descriptor();
                    let query = Message {
                        msg_type: MessageType::MembershipQuery as i32,
                        from: status.id,
                        term: status.term,
                        index: conf_ver_of(descriptor),
                        ..Message::default()
                    };
                    for r in descriptor
                        .replicas
                        .iter()
                        .filter(|r| r.replica_id != status.id)
                    {
                        self.extra.entry(r.node_id).or_default().push((
                            range_id,
                            Message {
                                to: r.replica_id,
                                ..query.clone()
                            },
                        ));
                    }
                }
            }
            if let Some(pending) = self.tombstones.get_mut(&range_id) {
                let status = peer.raft().status();
                pending.ticks += 1;
                let timeout = self.raft.election_timeout_ticks.max(1);
                if status.role != Role::Leader || pending.ticks > TOMBSTONE_RESENDS * timeout {
                    // A new leader, or a node away for long: the removed replica learns when
                    // it campaigns (the leader answers a non-member with a tombstone).
                    self.tombstones.remove(&range_id);
                } else if pending.ticks.is_multiple_of(timeout) {
                    let conf_ver = conf_ver_of(peer.applier().descriptor());
                    for &(replica, node) in &pending.replicas {
                        self.extra.entry(node).or_default().push((
                            range_id,
                            tombstone(replica, status.id, status.term, conf_ver, false),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Ticks every replica.
    ///
    /// # Errors
    /// [`PeerError`] if a replica's storage failed.
    pub fn tick(&mut self) -> Result<(), PeerError> {
        for peer in self.peers.values_mut() {
            peer.raft().tick()?;
        }
        Ok(())
    }

    /// Hands a message from `from_node` to the replica of `range_id`.
    ///
    /// A message for a range this node does not host gets the answer a replica with an empty
    /// log would give (so a leader that just added a replica here sends it a snapshot, which
    /// creates it), unless this node removed that replica. A leader hearing from a replica its
    /// settled membership no longer has answers with a tombstone.
    ///
    /// # Errors
    /// [`PeerError`] if the replica's storage failed.
    pub fn step(
        &mut self,
        range_id: u64,
        from_node: u64,
        message: Message,
    ) -> Result<bool, PeerError> {
        if message.msg_type == MessageType::Quiesce as i32 {
            return self.quiesce_follower(range_id, &message);
        }
        if message.msg_type == MessageType::Tombstone as i32 {
            return self.on_tombstone(range_id, from_node, &message);
        }
        if message.msg_type == MessageType::MembershipQuery as i32 {
            self.on_membership_query(range_id, from_node, &message);
            return Ok(false);
        }
        if matches!(
            MessageType::try_from(message.msg_type),
            Ok(MessageType::Heartbeat | MessageType::Append | MessageType::Snapshot)
        ) {
            self.heard_from_leader(range_id);
        }
        if self.wakes(range_id, &message) {
            self.wake(range_id);
        }
        // The transport names the sending node: a replica this node's descriptors do not know
        // yet (one added while this replica was behind, now its leader) gets its answers.
        if message.from != 0 && from_node != 0 {
            self.nodes_of_replicas.insert(message.from, from_node);
        }
        let Some(peer) = self.peers.get_mut(&range_id) else {
            self.answer_for_missing(range_id, from_node, &message)?;
            return Ok(false);
        };
        if is_removed_sender(peer, &message) {
            let status = peer.raft().status();
            let conf_ver = conf_ver_of(peer.applier().descriptor());
            self.extra.entry(from_node).or_default().push((
                range_id,
                tombstone(message.from, status.id, status.term, conf_ver, false),
            ));
            return Ok(false);
        }
        let status = peer.raft().status();
        if is_stale_campaign(peer, &message) {
            // A replica outside this range's applied configuration campaigns: one removed
            // while it was away (its leader, which would tell it, may be gone). Telling it
            // is safe from any replica: it deletes itself only if this configuration is newer
            // than its own, which a replica added after it is not.
            let conf_ver = conf_ver_of(peer.applier().descriptor());
            self.extra.entry(from_node).or_default().push((
                range_id,
                tombstone(message.from, status.id, status.term, conf_ver, false),
            ));
        }
        let from_leader = matches!(
            MessageType::try_from(message.msg_type),
            Ok(MessageType::Heartbeat | MessageType::Append)
        );
        if from_leader && message.to != 0 && message.to != status.id {
            // A leader addresses another replica of this range here: this node was added
            // again while this replica, removed, never heard of it. Answering from this
            // replica lets the leader tell it that it is gone; then the new one is created.
            let answer = Message {
                msg_type: MessageType::HeartbeatResponse as i32,
                to: message.from,
                from: status.id,
                term: status.term,
                ..Message::default()
            };
            self.extra
                .entry(from_node)
                .or_default()
                .push((range_id, answer));
            return Ok(false);
        }
        match peer.raft().step(message) {
            Ok(()) => {}
            // A malformed message from a peer is refused, not fatal.
            Err(crate::raft::Error::InvalidMessage(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        Ok(true)
    }

    /// This node campaigned for `range_id` after its leader's node went down: try again a few
    /// times while no leader is known.
    pub(crate) fn recampaign_soon(&mut self, range_id: u64) {
        self.recampaigns
            .insert(range_id, (RECAMPAIGN_TICKS, RECAMPAIGN_TRIES));
    }

    /// A leader reached this replica (an append, a heartbeat, a snapshot): it is not
    /// leaderless, whatever its ticks said.
    pub(crate) fn heard_from_leader(&mut self, range_id: u64) {
        self.leaderless_ticks.remove(&range_id);
    }

    /// Creates an empty replica of the range a snapshot carries (its log at index 0, the
    /// snapshot's membership), so the snapshot can be stepped into it: how a replica that
    /// missed a split learns of the range the split created. Refused (false) unless the
    /// snapshot's descriptor names this node and the range is unknown here.
    ///
    /// # Errors
    /// [`PeerError`] when the disk fails.
    pub fn create_for_snapshot(&mut self, data: &ReceivedSnapshot) -> Result<bool, PeerError> {
        let descriptor = data.descriptor();
        let Some(mine) = descriptor
            .replicas
            .iter()
            .find(|r| r.node_id == self.node_id)
        else {
            return Ok(false);
        };
        if self.peers.contains_key(&descriptor.id)
            || self.engine.descriptor(descriptor.id)?.is_some()
            || self.engine.tombstone(descriptor.id)?.is_some_and(|t| {
                // A configuration older than the removal cannot hold this node's new
                // replica (adding it again bumps conf_ver past it).
                t.replica_id == mine.replica_id || conf_ver_of(descriptor) < t.conf_ver
            })
        {
            return Ok(false);
        }
        let initial = SnapshotMetadata {
            index: 0,
            term: 0,
            conf_state: data.metadata().conf_state.clone(),
        };
        let mut batch = LogBatch::new();
        RangeLog::create(&self.engine, &mut batch, descriptor, &initial)?;
        batch.commit(&self.engine)?;
        self.add_peer(descriptor, None)?;
        tracing::info!(
            node = self.node_id,
            range = descriptor.id,
            "replica created for an incoming snapshot"
        );
        Ok(true)
    }

    /// Opens the replicas of ranges a split of `parent` created. Where `parent` is led from
    /// here, the new range campaigns at once (its other replicas may not have applied the
    /// split yet; they vote once they have), so it serves without an election timeout.
    fn open_split_ranges(
        &mut self,
        parent: u64,
        created: &[RangeDescriptor],
        out: &mut StoreRound,
    ) -> Result<(), PeerError> {
        let parent_leads = self
            .peers
            .get_mut(&parent)
            .is_some_and(|p| p.raft().status().role == Role::Leader);
        for right in created {
            if self.peers.contains_key(&right.id) {
                continue;
            }
            if !right.replicas.iter().any(|r| r.node_id == self.node_id) {
                // The split applied after this replica's own removal (in one batch).
                self.discard(right)?;
                continue;
            }
            self.add_peer(right, None)?;
            if parent_leads {
                if let Some(peer) = self.peers.get_mut(&right.id) {
                    peer.raft().campaign()?;
                }
            }
            tracing::info!(node = self.node_id, parent, range = right.id, "range split");
            out.created.push(right.id);
            out.more = true;
        }
        Ok(())
    }

    /// Wakes a quiet range (traffic returned): it is ticked again.
    pub fn wake(&mut self, range_id: u64) {
        if let Some(peer) = self.peers.get_mut(&range_id) {
            if peer.is_quiet() {
                peer.set_quiet(false);
                self.woken.push(range_id);
            }
        }
    }

    /// The quiet ranges woken since the last call.
    pub fn take_woken(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.woken)
    }

    pub fn is_quiet(&self, range_id: u64) -> bool {
        self.peers.get(&range_id).is_some_and(Peer::is_quiet)
    }

    /// Leader side: when the range is idle and every follower has the whole log, quiets it
    /// and returns the `Quiesce` messages for its followers, by node.
    ///
    /// # Errors
    /// [`PeerError`] when the log cannot be read.
    pub fn try_quiesce(&mut self, range_id: u64) -> Result<Vec<(u64, Message)>, PeerError> {
        let Some(peer) = self.peers.get_mut(&range_id) else {
            return Ok(Vec::new());
        };
        let quiescable = peer
            .raft()
            .quiescable()
            .map_err(|e| crate::storage::EngineError::corruption(range_id, "log", e))?;
        if peer.is_quiet() || !quiescable || self.tombstones.contains_key(&range_id) {
            return Ok(Vec::new());
        }
        let status = peer.raft().status();
        let followers = peer.raft().follower_progress();
        peer.set_quiet(true);
        Ok(followers
            .into_iter()
            .filter_map(|(to, _, _)| {
                let node = self.nodes_of_replicas.get(&to).copied()?;
                Some((
                    node,
                    Message {
                        msg_type: MessageType::Quiesce as i32,
                        to,
                        from: status.id,
                        term: status.term,
                        commit: status.committed,
                        index: status.last_index,
                        ..Message::default()
                    },
                ))
            })
            .collect())
    }

    /// Whether `m` brings a quiet replica back to ticking. Heartbeats of the leader it
    /// quiesced under (one may cross the `Quiesce` on the wire) and heartbeat responses carry
    /// nothing new; anything else does (entries, votes, another leader, a higher term).
    fn wakes(&mut self, range_id: u64, m: &Message) -> bool {
        let Some(peer) = self.peers.get_mut(&range_id) else {
            return false;
        };
        if !peer.is_quiet() {
            return false;
        }
        let status = peer.raft().status();
        if m.msg_type == MessageType::HeartbeatResponse as i32 {
            return m.term > status.term;
        }
        if m.msg_type == MessageType::Heartbeat as i32 {
            return !(m.term == status.term
                && m.from == status.leader_id
                && m.commit <= status.committed);
        }
        true
    }

    /// Follower side of `Quiesce`: takes the leader's commit (as a heartbeat would) and goes
    /// quiet if it then has exactly the leader's log, under the same leader and term.
    fn quiesce_follower(&mut self, range_id: u64, m: &Message) -> Result<bool, PeerError> {
        let Some(peer) = self.peers.get_mut(&range_id) else {
            return Ok(false);
        };
        let heartbeat = Message {
            msg_type: MessageType::Heartbeat as i32,
            to: m.to,
            from: m.from,
            term: m.term,
            commit: m.commit,
            ..Message::default()
        };
        match peer.raft().step(heartbeat) {
            Ok(()) => {}
            Err(crate::raft::Error::InvalidMessage(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let status = peer.raft().status();
        if status.role == Role::Follower
            && status.term == m.term
            && status.leader_id == m.from
            && status.committed == m.commit
            && status.last_index == m.index
        {
            peer.set_quiet(true);
        }
        Ok(true)
    }

    /// Proposes a client write to the replica of `header.range_id`: checked against the range's
    /// current descriptor first (routing errors and limits never reach the log), stamped with
    /// `now_ms` (the leader's clock, the only one the state machine sees).
    ///
    /// # Errors
    /// [`ProposeRefused`] with what the client should do; nothing was appended.
    pub fn propose_write(
        &mut self,
        header: CommandHeader,
        request: WriteRequest,
        now_ms: u64,
    ) -> Result<Ticket, ProposeRefused> {
        match self.propose(header, Command::Write(request), now_ms)? {
            Proposal::Pending(ticket) => Ok(ticket),
            Proposal::Answered(_) => unreachable!("a write is always appended"),
        }
    }

    /// Proposes a client command (a write, or an admin command such as a split) to the
    /// replica of `header.range_id`, checked like [`Store::propose_write`]. Replica changes
    /// are proposed as membership entries; a leader transfer starts at once.
    ///
    /// # Errors
    /// [`ProposeRefused`] with what the client should do; nothing was appended.
    pub fn propose(
        &mut self,
        mut header: CommandHeader,
        command: Command,
        now_ms: u64,
    ) -> Result<Proposal, ProposeRefused> {
        let range_id = header.range_id;
        self.wake(range_id);
        let Some(peer) = self.peers.get_mut(&range_id) else {
            return Err(KvError::RangeNotFound(range_id).into());
        };
        let descriptor = peer.applier().descriptor();
        let (request, admin) = match command {
            Command::Write(request) => {
                if let Err(e) =
                    check_command(descriptor, &header, &request, peer.applier().config())
                {
                    // A retry of a write this range applied before a split moved some of its
                    // keys away: the recorded response is the answer, whatever the range is
                    // now (apply looks the session up before any other check).
                    if !(e.is_routing() && recorded(&self.engine, range_id, &header)?) {
                        return Err(e.into());
                    }
                }
                (Some(request), None)
            }
            Command::Admin(AdminRequest {
                request: Some(admin_request::Request::ChangeReplicas(change)),
            }) => {
                check_range(descriptor, range_id, header.epoch.as_ref())?;
                return self.propose_replica_change(range_id, &change);
            }
            Command::Admin(AdminRequest {
                request: Some(admin_request::Request::TransferLeader(transfer)),
            }) => {
                check_range(descriptor, range_id, header.epoch.as_ref())?;
                return self.transfer_leader(range_id, transfer.node_id);
            }
            Command::Admin(admin) => {
                if let Err(e) = check_range(descriptor, header.range_id, header.epoch.as_ref()) {
                    if !recorded(&self.engine, range_id, &header)? {
                        return Err(e.into());
                    }
                }
                (None, Some(admin))
            }
        };
        header.proposed_at_ms = now_ms;
        let data: Bytes = RaftCommand {
            header: Some(header),
            request,
            admin,
        }
        .encode_to_vec()
        .into();
        match peer.raft().propose(data) {
            Ok((term, index)) => Ok(self.track(range_id, term, index)),
            Err(ProposeError::NotLeader { leader }) => Err(self.not_leader(range_id, leader)),
            Err(e) => Err(ProposeRefused::Busy {
                range_id,
                reason: e.to_string(),
            }),
        }
    }

    fn track(&mut self, range_id: u64, term: u64, index: u64) -> Proposal {
        self.pending.insert((range_id, index), term);
        Proposal::Pending(Ticket {
            range_id,
            term,
            index,
        })
    }

    fn not_leader(&self, range_id: u64, leader: Option<u64>) -> ProposeRefused {
        ProposeRefused::NotLeader {
            range_id,
            leader_node: leader.and_then(|r| self.nodes_of_replicas.get(&r).copied()),
        }
    }

    /// A replica change: planned against the leader's applied descriptor and membership (no
    /// other change can come between: one is pending at a time), proposed as one membership
    /// entry. A change in effect already is answered with the descriptor as it is.
    fn propose_replica_change(
        &mut self,
        range_id: u64,
        change: &flotilla_transport::kv::ChangeReplicasRequest,
    ) -> Result<Proposal, ProposeRefused> {
        let Some(peer) = self.peers.get_mut(&range_id) else {
            return Err(KvError::RangeNotFound(range_id).into());
        };
        let status = peer.raft().status();
        if status.role != Role::Leader {
            return Err(self.not_leader(range_id, Some(status.leader_id)));
        }
        if let Some(to) = peer.raft().transferring_to() {
            return Err(KvError::NotReady(format!(
                "range {range_id}: leadership is moving to replica {to}"
            ))
            .into());
        }
        let progress = peer.raft().follower_progress();
        let caught_up = |replica: u64| {
            progress.iter().any(|&(id, matched, active)| {
                // A new learner's progress starts active at 0: it has caught up once it
                // acknowledged something (its snapshot) close to the commit index.
                id == replica
                    && active
                    && matched > 0
                    && matched + PROMOTE_MAX_LAG_ENTRIES >= status.committed
            })
        };
        let conf_state = peer
            .applier()
            .apply_state()
            .conf_state
            .clone()
            .unwrap_or_default();
        let view = LeaderView {
            leader_replica: status.id,
            conf_state: &conf_state,
            caught_up: &caught_up,
        };
        let descriptor = peer.applier().descriptor();
        let Some(cc) = plan_change(descriptor, &view, change)? else {
            return Ok(Proposal::Answered(Box::new(WriteResponse {
                revision: peer.applier().applied_index(),
                response: Some(write_response::Response::ChangeReplicas(
                    ChangeReplicasResponse {
                        descriptor: Some(descriptor.clone()),
                    },
                )),
            })));
        };
        match peer.raft().propose_conf_change(&cc) {
            Ok((term, index)) => {
                tracing::info!(
                    node = self.node_id,
                    range = range_id,
                    ?change,
                    index,
                    "replica change proposed"
                );
                Ok(self.track(range_id, term, index))
            }
            Err(ConfChangeError::NotLeader { leader }) => Err(self.not_leader(range_id, leader)),
            Err(
                e @ (ConfChangeError::Pending { .. } | ConfChangeError::TransferInProgress { .. }),
            ) => Err(KvError::NotReady(format!("range {range_id}: {e}")).into()),
            Err(e) => Err(KvError::InvalidChange(format!("range {range_id}: {e}")).into()),
        }
    }

    /// Starts handing the leadership of `range_id` to its voter on `node_id`.
    fn transfer_leader(&mut self, range_id: u64, node_id: u64) -> Result<Proposal, ProposeRefused> {
        let Some(peer) = self.peers.get_mut(&range_id) else {
            return Err(KvError::RangeNotFound(range_id).into());
        };
        let status = peer.raft().status();
        if status.role != Role::Leader {
            return Err(self.not_leader(range_id, Some(status.leader_id)));
        }
        let answered = Proposal::Answered(Box::new(WriteResponse {
            revision: status.committed,
            response: Some(write_response::Response::TransferLeader(
                TransferLeaderResponse {},
            )),
        }));
        if node_id == self.node_id {
            return Ok(answered);
        }
        let target = peer
            .applier()
            .descriptor()
            .replicas
            .iter()
            .find(|r| {
                r.node_id == node_id
                    && r.role == flotilla_transport::meta::ReplicaRole::Voter as i32
            })
            .map(|r| r.replica_id);
        let Some(to) = target else {
            return Err(KvError::InvalidChange(format!(
                "range {range_id} has no voter on node {node_id}"
            ))
            .into());
        };
        match peer.raft().transfer_leader(to) {
            Ok(()) => Ok(answered),
            Err(e) => Err(KvError::NotReady(format!("range {range_id}: {e}")).into()),
        }
    }

    /// Ends the proposals whose index was handed to apply (or passed by a snapshot).
    fn complete(
        &mut self,
        out: &mut StoreRound,
        range_id: u64,
        finished: &RoundOutput,
        applied_index: u64,
    ) {
        for &(index, term) in &finished.committed {
            let Some(proposed_term) = self.pending.remove(&(range_id, index)) else {
                continue;
            };
            let ticket = Ticket {
                range_id,
                term: proposed_term,
                index,
            };
            let outcome = if term != proposed_term {
                Outcome::Dropped
            } else {
                match finished.applied.iter().find(|a| a.index == index) {
                    Some(a) => Outcome::Applied(Box::new(a.response.clone())),
                    // Our own proposals are commands and answer when applied; an entry of ours
                    // without a response is not known to have failed, so say nothing certain.
                    None => Outcome::Unknown,
                }
            };
            out.completed.push((ticket, outcome));
        }
        let passed: Vec<(u64, u64)> = self
            .pending
            .range((range_id, 0)..=(range_id, applied_index))
            .map(|(k, _)| *k)
            .collect();
        for key in passed {
            if let Some(term) = self.pending.remove(&key) {
                let ticket = Ticket {
                    range_id,
                    term,
                    index: key.1,
                };
                out.completed.push((ticket, Outcome::Unknown));
            }
        }
    }

    fn route(&self, out: &mut StoreRound, range_id: u64, messages: Vec<Message>) {
        for m in messages {
            let node = self.nodes_of_replicas.get(&m.to).copied().unwrap_or(0);
            out.outbox.entry(node).or_default().push((range_id, m));
        }
    }

    /// One round over every replica with work: one synced write for all of them.
    ///
    /// # Errors
    /// [`PeerError`]; the node must stop (its storage may be halted).
    pub fn round(&mut self) -> Result<StoreRound, PeerError> {
        let mut out = StoreRound::default();
        let mut batch = LogBatch::new();
        let mut readies = Vec::new();
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for range_id in &ids {
            let peer = self.peers.get_mut(range_id).expect("ids come from the map");
            if let Some((ready, now)) = peer.stage(&mut batch)? {
                readies.push((*range_id, ready));
                self.route(&mut out, *range_id, now);
            }
        }
        out.ranges_persisted = batch.ranges();
        if !batch.is_empty() {
            metrics::histogram!("flotilla_storage_batch_bytes").record(batch.size_bytes() as f64);
            let started = std::time::Instant::now();
            batch.commit(&self.engine)?;
            metrics::histogram!("flotilla_storage_fsync_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("flotilla_storage_batch_ranges")
                .record(out.ranges_persisted as f64);
        }
        for (range_id, ready) in readies {
            let peer = self.peers.get_mut(&range_id).expect("staged above");
            let applying = (!ready.committed_entries.is_empty()).then(std::time::Instant::now);
            let before = peer.applier().descriptor().clone();
            let finished = peer.finish(ready)?;
            if let Some(started) = applying {
                metrics::histogram!("flotilla_raft_commit_apply_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            let applied_index = peer.applier().applied_index();
            out.more |= peer.raft().has_ready();
            self.complete(&mut out, range_id, &finished, applied_index);
            self.route(&mut out, range_id, finished.messages);
            out.applied
                .extend(finished.applied.into_iter().map(|a| (range_id, a)));
            out.reads
                .extend(finished.reads.into_iter().map(|r| (range_id, r)));
            if !finished.created.is_empty() {
                self.open_split_ranges(range_id, &finished.created, &mut out)?;
            }
            self.after_membership(range_id, &before, &mut out)?;
        }
        for (node, messages) in std::mem::take(&mut self.extra) {
            out.outbox.entry(node).or_default().extend(messages);
        }
        Ok(out)
    }

    /// After a round changed a range's replicas (a membership entry applied, a snapshot
    /// installed): learn the new replicas' nodes; as the leader, tell the removed replicas; as
    /// a removed replica, delete this one.
    fn after_membership(
        &mut self,
        range_id: u64,
        before: &RangeDescriptor,
        out: &mut StoreRound,
    ) -> Result<(), PeerError> {
        let Some(peer) = self.peers.get_mut(&range_id) else {
            return Ok(());
        };
        let after = peer.applier().descriptor();
        if after.epoch.map(|e| e.conf_ver) == before.epoch.map(|e| e.conf_ver) {
            return Ok(());
        }
        let after = after.clone();
        let status = peer.raft().status();
        for r in &after.replicas {
            self.nodes_of_replicas.insert(r.replica_id, r.node_id);
        }
        if !after.replicas.iter().any(|r| r.node_id == self.node_id) {
            self.destroy(&after, status.id, conf_ver_of(&after))?;
            out.removed.push(range_id);
            return Ok(());
        }
        if status.role == Role::Leader {
            for gone in before
                .replicas
                .iter()
                .filter(|r| !after.replicas.iter().any(|a| a.replica_id == r.replica_id))
            {
                out.outbox.entry(gone.node_id).or_default().push((
                    range_id,
                    tombstone(
                        gone.replica_id,
                        status.id,
                        status.term,
                        conf_ver_of(&after),
                        false,
                    ),
                ));
                self.tombstones
                    .entry(range_id)
                    .or_default()
                    .replicas
                    .push((gone.replica_id, gone.node_id));
            }
        }
        Ok(())
    }
}
