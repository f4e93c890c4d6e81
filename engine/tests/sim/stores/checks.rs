//! The whole-store simulator's invariants.
//!
//! - Election safety, per range (Raft paper 5.2, Figure 3): at most one leader per term.
//! - State machine safety, per range (Figure 3): every replica that applies index `i` applies
//!   the same command with the same outcome (its response, byte for byte), and a replica's
//!   applied index only moves forward.
//! - A node's ranges are disjoint (a replica that missed a split never overlaps the range the
//!   split created: that one's snapshot waits until they separate).
//! - At the end (converged): each range has one leader, every replica its leader names exists
//!   with the same descriptor, applied index and data, no other node keeps one, and the ranges
//!   tile the keyspace from "" to +inf with no gap or overlap (TiKV test_split_region's check).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use flotilla_engine::kv::Applied;
use flotilla_engine::raft::Role;
use flotilla_engine::storage::keys;
use flotilla_engine::store::Store;
use flotilla_transport::kv::{KeyValue, ScanRequest};
use flotilla_transport::meta::RangeDescriptor;
use flotilla_transport::service::{read_request, read_response, ReadConsistency, ReadRequest};
use prost::Message as _;

use super::node::StoreNode;

/// The meta range keeps no user data; its rows are not compared.
const META_RANGE: u64 = 1;

/// One replica as the convergence check sees it.
struct ReplicaView {
    node: u64,
    replica: u64,
    role: Role,
    term: u64,
    committed: u64,
    applied: u64,
    descriptor: RangeDescriptor,
}

#[derive(Default)]
pub struct StoreChecker {
    /// `(range, term)` -> `(node, replica)` of its leader.
    leaders: BTreeMap<(u64, u64), (u64, u64)>,
    /// `(range, index)` -> what applying it did: (term, client, seq, response digest).
    applied: BTreeMap<(u64, u64), (u64, u64, u64, u64)>,
    /// `(node, range)` -> the last index that replica applied.
    last_applied: BTreeMap<(u64, u64), u64>,
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn span(d: &RangeDescriptor) -> String {
    format!(
        "range {} [{:?}, {:?})",
        d.id,
        String::from_utf8_lossy(&d.start_key),
        String::from_utf8_lossy(&d.end_key)
    )
}

impl StoreChecker {
    /// An entry applied on `node`.
    pub fn applied(&mut self, node: u64, range: u64, a: &Applied) -> Result<(), String> {
        let outcome = (
            a.term,
            a.client_id,
            a.seq,
            digest(&a.response.encode_to_vec()),
        );
        if let Some(seen) = self.applied.insert((range, a.index), outcome) {
            if seen != outcome {
                return Err(format!(
                    "state machine safety: range {range} index {} applied as {outcome:?} here, \
                     as {seen:?} elsewhere",
                    a.index
                ));
            }
        }
        let last = self.last_applied.entry((node, range)).or_default();
        if a.index <= *last {
            return Err(format!(
                "range {range}: applied index {} after {} (applied twice or backwards)",
                a.index, *last
            ));
        }
        *last = a.index;
        Ok(())
    }

    /// After a round of `node`: election safety, the node's ranges disjoint.
    pub fn node_round(&mut self, node: u64, store: &mut Store) -> Result<(), String> {
        let ranges: BTreeSet<u64> = store.range_ids().collect();
        // A replica removed from here forgets its applied index (a new one may come later).
        self.last_applied
            .retain(|&(n, r), _| n != node || ranges.contains(&r));
        let mut spans = Vec::new();
        for &range in &ranges {
            let Some(peer) = store.peer_mut(range) else {
                continue;
            };
            let status = peer.raft().status();
            if status.role == Role::Leader {
                let me = (node, status.id);
                let first = *self.leaders.entry((range, status.term)).or_insert(me);
                if first != me {
                    return Err(format!(
                        "election safety: range {range} term {} has leaders {first:?} and {me:?}",
                        status.term
                    ));
                }
            }
            if let Some(&last) = self.last_applied.get(&(node, range)) {
                let applied = peer.applier().applied_index();
                if applied < last {
                    return Err(format!(
                        "range {range}: applied index went back from {last} to {applied}"
                    ));
                }
            }
            spans.push(peer.applier().descriptor().clone());
        }
        spans.sort_by(|a, b| a.start_key.cmp(&b.start_key));
        for pair in spans.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.end_key.is_empty() || a.end_key > b.start_key {
                return Err(format!("{} overlaps {}", span(a), span(b)));
            }
        }
        Ok(())
    }

    /// Whether the cluster has converged (see the module doc): `Ok(Err(what is missing))`
    /// while not yet; `Err` for what can never be right however long it runs (replicas at
    /// the same index with different data, a gap in the keyspace).
    pub fn converged(
        &mut self,
        nodes: &mut BTreeMap<u64, StoreNode>,
    ) -> Result<Result<(), String>, String> {
        let mut replicas: BTreeMap<u64, Vec<ReplicaView>> = BTreeMap::new();
        for (&id, node) in nodes.iter_mut() {
            let Some(store) = node.store.as_mut() else {
                return Ok(Err(format!("node {id} is down")));
            };
            let ranges: Vec<u64> = store.range_ids().collect();
            for range in ranges {
                let Some(peer) = store.peer_mut(range) else {
                    continue;
                };
                let s = peer.raft().status();
                let applied = peer.applier().applied_index();
                let descriptor = peer.applier().descriptor().clone();
                replicas.entry(range).or_default().push(ReplicaView {
                    node: id,
                    replica: s.id,
                    role: s.role,
                    term: s.term,
                    committed: s.committed,
                    applied,
                    descriptor,
                });
            }
        }
        let mut tiling = Vec::new();
        for (range, all) in &replicas {
            let leaders: Vec<_> = all.iter().filter(|r| r.role == Role::Leader).collect();
            let [leader] = leaders.as_slice() else {
                return Ok(Err(format!("range {range} has {} leaders", leaders.len())));
            };
            let descriptor = &leader.descriptor;
            let named: BTreeSet<(u64, u64)> = descriptor
                .replicas
                .iter()
                .map(|r| (r.node_id, r.replica_id))
                .collect();
            let hosted: BTreeSet<(u64, u64)> = all.iter().map(|r| (r.node, r.replica)).collect();
            if named != hosted {
                return Ok(Err(format!(
                    "range {range}: its leader names {named:?}, replicas are on {hosted:?}"
                )));
            }
            if let Some(r) = all.iter().find(|r| {
                r.applied != leader.committed
                    || r.descriptor != *descriptor
                    || r.term != leader.term
            }) {
                return Ok(Err(format!(
                    "range {range}: the replica on node {} (term {}, applied {}, {:?}) is not \
                     where its leader is (term {}, committed {}, {:?})",
                    r.node,
                    r.term,
                    r.applied,
                    r.descriptor.epoch,
                    leader.term,
                    leader.committed,
                    descriptor.epoch
                )));
            }
            tiling.push(descriptor.clone());
        }
        tiling.sort_by(|a, b| a.start_key.cmp(&b.start_key));
        let mut expected_start: &[u8] = b"";
        for (i, d) in tiling.iter().enumerate() {
            if d.start_key.as_ref() != expected_start {
                return Err(format!(
                    "the ranges do not tile the keyspace: {} after {:?}",
                    span(d),
                    String::from_utf8_lossy(expected_start)
                ));
            }
            if d.end_key.is_empty() && i + 1 != tiling.len() {
                return Err(format!("{} ends at +inf but is not the last", span(d)));
            }
            expected_start = d.end_key.as_ref();
        }
        if !expected_start.is_empty() {
            return Err(format!(
                "the keyspace past {:?} has no range",
                String::from_utf8_lossy(expected_start)
            ));
        }
        for d in tiling.iter().filter(|d| d.id != META_RANGE) {
            let mut first: Option<(u64, Vec<KeyValue>)> = None;
            for r in &d.replicas {
                let store = nodes
                    .get_mut(&r.node_id)
                    .and_then(|n| n.store.as_mut())
                    .expect("every node runs");
                let rows = scan_all(store, d)?;
                match &first {
                    None => first = Some((r.node_id, rows)),
                    Some((node, seen)) if *seen != rows => {
                        return Err(format!(
                            "{} differs between node {node} ({} rows) and node {} ({} rows) \
                             at the same applied index",
                            span(d),
                            seen.len(),
                            r.node_id,
                            rows.len()
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(Ok(()))
    }
}

/// Every row of range `d` on this replica, read from its applied state.
fn scan_all(store: &Store, d: &RangeDescriptor) -> Result<Vec<KeyValue>, String> {
    let mut rows = Vec::new();
    let mut start = keys::user_key(&d.start_key).unwrap_or_default().to_vec();
    loop {
        let request = ReadRequest {
            range_id: d.id,
            epoch: d.epoch,
            consistency: ReadConsistency::Stale as i32,
            request: Some(read_request::Request::Scan(ScanRequest {
                start: start.clone().into(),
                end: Default::default(),
                limit: 1_000,
                limit_bytes: 0,
                keys_only: false,
                reverse: false,
            })),
            max_staleness_ms: 0,
        };
        match store.serve_read(&request) {
            Ok(read_response::Response::Scan(page)) => {
                rows.extend(page.kvs);
                // A scan reaching the range's end says where the next range continues.
                let past_end = !d.end_key.is_empty()
                    && keys::data_key(&page.next_key).as_slice() >= d.end_key.as_ref();
                if !page.more || past_end {
                    return Ok(rows);
                }
                start = page.next_key.to_vec();
            }
            other => return Err(format!("scan of range {} failed: {other:?}", d.id)),
        }
    }
}
