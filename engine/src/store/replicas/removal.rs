//! How a replica that a membership change removed goes away, and how its range tells it:
//! tombstones from the leader (and from any replica whose applied configuration is newer and
//! lacks it: a stale campaign, a membership query), the answer a node gives for a range it
//! does not host, and the deletion of a replica's data.

use flotilla_transport::meta::RangeDescriptor;
use flotilla_transport::raft::{Message, MessageType};

use super::{conf_ver_of, tombstone, Store};
use crate::raft::Role;
use crate::store::peer::{Peer, PeerError};

/// Whether `m` comes from a replica that this leader's settled membership no longer has (so a
/// change removed it), rather than from a newer configuration (whose term would be past ours).
pub(super) fn is_removed_sender(peer: &mut Peer, m: &Message) -> bool {
    if m.from == 0 || peer.raft().has_pending_conf_change() {
        return false;
    }
    let status = peer.raft().status();
    // A pre-vote carries the term its sender would campaign at.
    let term = if m.msg_type == MessageType::RequestPreVote as i32 {
        m.term.saturating_sub(1)
    } else {
        m.term
    };
    status.role == Role::Leader && term <= status.term && !has_replica(peer, m.from)
}

/// Whether the range's applied descriptor has replica `replica_id`.
fn has_replica(peer: &Peer, replica_id: u64) -> bool {
    peer.applier()
        .descriptor()
        .replicas
        .iter()
        .any(|r| r.replica_id == replica_id)
}

/// Whether `m` asks for a vote (or a pre-vote) from a replica that this replica's applied
/// configuration does not have, with no membership change pending here.
pub(super) fn is_stale_campaign(peer: &mut Peer, m: &Message) -> bool {
    let campaign = m.msg_type == MessageType::RequestVote as i32
        || m.msg_type == MessageType::RequestPreVote as i32;
    campaign && m.from != 0 && !peer.raft().has_pending_conf_change() && !has_replica(peer, m.from)
}

impl Store {
    /// The answer of a replica that has nothing yet, for a range this node does not host: a
    /// heartbeat is answered (the leader then probes), an append is rejected down to index 0
    /// (the leader's log starts later, so it sends a snapshot). Nothing for a replica this node
    /// removed, and nothing for other messages.
    pub(super) fn answer_for_missing(
        &mut self,
        range_id: u64,
        from_node: u64,
        m: &Message,
    ) -> Result<(), PeerError> {
        let kind = MessageType::try_from(m.msg_type).unwrap_or_default();
        if !matches!(kind, MessageType::Heartbeat | MessageType::Append) || m.to == 0 {
            return Ok(());
        }
        if self
            .engine
            .tombstone(range_id)?
            .is_some_and(|t| t.replica_id == m.to)
        {
            return Ok(());
        }
        let answer = Message {
            msg_type: if kind == MessageType::Heartbeat {
                MessageType::HeartbeatResponse as i32
            } else {
                MessageType::AppendResponse as i32
            },
            to: m.from,
            from: m.to,
            term: m.term,
            reject: kind == MessageType::Append,
            index: if kind == MessageType::Append {
                m.index
            } else {
                0
            },
            ..Message::default()
        };
        self.extra
            .entry(from_node)
            .or_default()
            .push((range_id, answer));
        Ok(())
    }

    /// A replica asks whether it is still a member: answered with a tombstone when this
    /// replica's applied configuration is newer than the asker's and lacks it.
    pub(super) fn on_membership_query(&mut self, range_id: u64, from_node: u64, m: &Message) {
        let Some(peer) = self.peers.get_mut(&range_id) else {
            return;
        };
        if m.from == 0 || peer.raft().has_pending_conf_change() {
            return;
        }
        let descriptor = peer.applier().descriptor();
        let conf_ver = conf_ver_of(descriptor);
        if conf_ver <= m.index || descriptor.replicas.iter().any(|r| r.replica_id == m.from) {
            return;
        }
        let status = peer.raft().status();
        self.extra.entry(from_node).or_default().push((
            range_id,
            tombstone(m.from, status.id, status.term, conf_ver, false),
        ));
    }

    /// A leader says a membership change removed this replica: it deletes its data.
    pub(super) fn on_tombstone(
        &mut self,
        range_id: u64,
        from_node: u64,
        m: &Message,
    ) -> Result<bool, PeerError> {
        if m.reject {
            // An acknowledgement: that replica is gone.
            if let Some(pending) = self.tombstones.get_mut(&range_id) {
                pending.replicas.retain(|(id, _)| *id != m.from);
                if pending.replicas.is_empty() {
                    self.tombstones.remove(&range_id);
                }
            }
            return Ok(false);
        }
        let destroyed = match self.peers.get_mut(&range_id) {
            Some(peer) => {
                let status = peer.raft().status();
                let descriptor = peer.applier().descriptor().clone();
                // A removal is a configuration this replica never applied (had it, it would
                // have deleted itself): a tombstone not newer than what it has is stale, or
                // from a replica that is behind it. Safe from any sender because (a) a range's
                // conf_ver only grows along its committed history (a split's new range has
                // its own id), (b) replica ids are never reused (a node added again gets a
                // new one), and (c) a replica's own descriptor is never older than the change
                // that added it: so a descriptor without this replica and newer than this
                // replica's own can only come after its removal.
                // That holds for a replica that still believes it leads too: a quiet leader
                // cut off one way keeps its role (nothing ticks it), and only a tombstone
                // tells it that the range moved on without it.
                if status.id != m.to || m.index <= conf_ver_of(&descriptor) {
                    return Ok(false);
                }
                let conf_ver = m.index;
                self.destroy(&descriptor, status.id, conf_ver)?;
                true
            }
            None => {
                // Removed before its snapshot arrived: remember, so that snapshot is refused.
                let known = self.engine.tombstone(range_id)?;
                if known.as_ref().is_none_or(|t| t.conf_ver < m.index) {
                    self.engine.put_tombstone(range_id, m.to, m.index)?;
                }
                false
            }
        };
        self.extra
            .entry(from_node)
            .or_default()
            .push((range_id, tombstone(m.from, m.to, m.term, m.index, true)));
        Ok(destroyed)
    }

    /// Deletes a range on disk that does not name this node (no replica runs for it).
    pub(super) fn discard(&mut self, descriptor: &RangeDescriptor) -> Result<(), PeerError> {
        tracing::warn!(
            node = self.node_id,
            range = descriptor.id,
            "a range on disk does not name this node: deleting it"
        );
        self.destroy(descriptor, 0, conf_ver_of(descriptor))
    }

    /// Deletes the replica of `descriptor` on this node, with a tombstone for `replica_id`
    /// removed at `conf_ver`.
    pub(super) fn destroy(
        &mut self,
        descriptor: &RangeDescriptor,
        replica_id: u64,
        conf_ver: u64,
    ) -> Result<(), PeerError> {
        self.peers.remove(&descriptor.id);
        self.leaderless_ticks.remove(&descriptor.id);
        self.recampaigns.remove(&descriptor.id);
        // Replica ids are never reused: the range's are of no use here any more (answers to a
        // removed replica's late messages go by the node the transport names).
        for r in &descriptor.replicas {
            self.nodes_of_replicas.remove(&r.replica_id);
        }
        let gone: Vec<(u64, u64)> = self
            .pending
            .range((descriptor.id, 0)..=(descriptor.id, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            self.pending.remove(&key);
        }
        self.engine
            .destroy_range(descriptor, replica_id, conf_ver)?;
        metrics::counter!("flotilla_store_replicas_removed_total").increment(1);
        tracing::info!(
            node = self.node_id,
            range = descriptor.id,
            replica = replica_id,
            "replica removed from its range: data deleted"
        );
        Ok(())
    }
}
