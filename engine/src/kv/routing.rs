//! Routing records (DESIGN section 10, routing part): the meta range keeps one `RangeRecord` per
//! range, keyed by the range's end key, so "the range holding key k" is the first record whose
//! key is past k (as in Bigtable's and CockroachDB's meta ranges). Range leaders report their
//! descriptor and term; apply keeps a record only if it is newer than the one it replaces
//! ([`is_newer`]), so reports may arrive late, twice or out of order.
//!
//! Records live in the meta range's part of `data` (`0x00 'r' <end key>`), so they replicate,
//! snapshot and recover like any row of that range. Reads are local: any node with a meta
//! replica answers, and a router corrects what is stale through the ranges' typed errors.

use flotilla_transport::kv::{
    NodeUpdateResponse, RoutingUpdate, RoutingUpdateResponse, StoredValue,
};
use flotilla_transport::meta::{NodeRecord, RangeDescriptor, RangeRecord};
use prost::Message as _;

use super::overlay::{next_value, Overlay};
use crate::storage::{keys, Cf, Engine, EngineError};

/// The meta range: the only one that holds routing records.
pub const META_RANGE: u64 = 1;

const PREFIX: [u8; 2] = [0x00, b'r'];
/// Stands for an end key of +inf (every internal key starts with 0x01 or below).
const INFINITY: u8 = 0xff;

/// The row key of the record of a range ending at `end_key` (internal; empty: +inf).
pub fn record_key(end_key: &[u8]) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    if end_key.is_empty() {
        k.push(INFINITY);
    } else {
        k.extend_from_slice(end_key);
    }
    k
}

fn records_end() -> Vec<u8> {
    vec![PREFIX[0], PREFIX[1] + 1]
}

fn order(d: &RangeDescriptor) -> (u64, u64) {
    let e = d.epoch.unwrap_or_default();
    (e.version, e.conf_ver)
}

/// Whether `new` may replace `old` under the same key: a later report of the same range, or
/// the range that took the key over in a split (a later version in the same lineage).
pub fn is_newer(new: &RangeRecord, old: &RangeRecord) -> bool {
    let (Some(n), Some(o)) = (&new.descriptor, &old.descriptor) else {
        return new.descriptor.is_some();
    };
    if n.id == o.id {
        (order(n), new.leader_term) > (order(o), old.leader_term)
    } else {
        order(n).0 > order(o).0
    }
}

/// Applies a routing update to the meta range's rows at `revision`. Returns how many records
/// it wrote.
///
/// # Errors
/// [`EngineError`] when a stored row cannot be read.
pub(crate) fn apply_update(
    overlay: &mut Overlay<'_>,
    update: &RoutingUpdate,
    revision: u64,
) -> Result<RoutingUpdateResponse, EngineError> {
    let mut written = 0;
    for record in &update.records {
        let Some(descriptor) = &record.descriptor else {
            continue;
        };
        let key = record_key(&descriptor.end_key);
        let old = overlay.get(&key)?;
        if let Some(old) = &old {
            match RangeRecord::decode(old.value.as_ref()) {
                Ok(previous) if !is_newer(record, &previous) => continue,
                _ => {}
            }
        }
        overlay.put(
            key,
            next_value(old.as_ref(), record.encode_to_vec().into(), revision),
        );
        written += 1;
    }
    Ok(RoutingUpdateResponse { written })
}

const NODE_PREFIX: [u8; 2] = [0x00, b'n'];

/// The row key of node `node_id`'s record.
pub fn node_record_key(node_id: u64) -> Vec<u8> {
    let mut k = NODE_PREFIX.to_vec();
    k.extend_from_slice(&node_id.to_be_bytes());
    k
}

/// Writes a node's record (placement's memory of decommissions); answers the one it replaced.
///
/// # Errors
/// [`EngineError`] when the stored row cannot be read.
pub(crate) fn apply_node_update(
    overlay: &mut Overlay<'_>,
    mut record: NodeRecord,
    address_only: bool,
    revision: u64,
) -> Result<NodeUpdateResponse, EngineError> {
    let key = node_record_key(record.node_id);
    let old = overlay.get(&key)?;
    let previous = old
        .as_ref()
        .and_then(|o| NodeRecord::decode(o.value.as_ref()).ok());
    match (&previous, address_only) {
        (Some(p), true) => record.state = p.state,
        // A state change keeps the address the node registered.
        (Some(p), false) if record.addr.is_empty() => record.addr.clone_from(&p.addr),
        _ => {}
    }
    overlay.put(
        key,
        next_value(old.as_ref(), record.encode_to_vec().into(), revision),
    );
    Ok(NodeUpdateResponse { previous })
}

/// Every node record of this node's meta replica, by node id.
///
/// # Errors
/// [`EngineError`] when the rows cannot be read or decoded.
pub fn node_records(engine: &Engine) -> Result<Vec<NodeRecord>, EngineError> {
    let end = [NODE_PREFIX[0], NODE_PREFIX[1] + 1];
    let iter = engine.db().iterator_cf_opt(
        engine.cf(Cf::Data),
        engine.read_options_bounded(&end),
        rocksdb::IteratorMode::From(&NODE_PREFIX, rocksdb::Direction::Forward),
    );
    let mut out = Vec::new();
    for item in iter {
        let (_, value) = item?;
        let stored: StoredValue = crate::storage::decode(&value)
            .map_err(|e| EngineError::corruption(META_RANGE, "node record", e))?;
        let record = NodeRecord::decode(stored.value.as_ref())
            .map_err(|e| EngineError::corruption(META_RANGE, "node record", e))?;
        out.push(record);
    }
    Ok(out)
}

/// The records of this node's meta replica whose ranges overlap the internal span
/// `[start, end)` (`end` empty: +inf), in key order, at most `limit`.
///
/// # Errors
/// [`EngineError`] when the rows cannot be read.
pub fn scan_records(
    engine: &Engine,
    start: &[u8],
    end: &[u8],
    limit: usize,
) -> Result<Vec<RangeRecord>, EngineError> {
    // The first range overlapping `start` is the first whose end key is past it.
    let mut from = record_key(start);
    from.push(0);
    let iter = engine.db().iterator_cf_opt(
        engine.cf(Cf::Data),
        engine.read_options_bounded(&records_end()),
        rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
    );
    let mut out = Vec::new();
    for item in iter {
        let (_, value) = item?;
        let stored: StoredValue = crate::storage::decode(&value)
            .map_err(|e| EngineError::corruption(META_RANGE, "routing record", e))?;
        let record = RangeRecord::decode(stored.value.as_ref())
            .map_err(|e| EngineError::corruption(META_RANGE, "routing record", e))?;
        let starts_past_end = record
            .descriptor
            .as_ref()
            .is_some_and(|d| !end.is_empty() && d.start_key.as_ref() >= end);
        if starts_past_end || out.len() >= limit {
            break;
        }
        out.push(record);
    }
    Ok(out)
}

/// The record of the range holding user key `key`, from this node's meta replica.
///
/// # Errors
/// [`EngineError`] when the rows cannot be read.
pub fn locate(engine: &Engine, key: &[u8]) -> Result<Option<RangeRecord>, EngineError> {
    let internal = keys::data_key(key);
    let found = scan_records(engine, &internal, &[], 1)?;
    Ok(found.into_iter().next().filter(|r| {
        r.descriptor
            .as_ref()
            .is_some_and(|d| d.start_key.as_ref() <= internal.as_slice())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_transport::meta::RangeEpoch;

    fn record(id: u64, version: u64, conf_ver: u64, term: u64) -> RangeRecord {
        RangeRecord {
            descriptor: Some(RangeDescriptor {
                id,
                epoch: Some(RangeEpoch { version, conf_ver }),
                ..RangeDescriptor::default()
            }),
            leader_node: 1,
            leader_term: term,
        }
    }

    #[test]
    fn newer_records_replace_older_ones_and_never_the_reverse() {
        let old = record(2, 3, 1, 5);
        for newer in [
            record(2, 3, 1, 6),
            record(2, 3, 2, 1),
            record(2, 4, 1, 1),
            record(9, 4, 1, 1),
        ] {
            assert!(is_newer(&newer, &old), "{newer:?}");
            assert!(!is_newer(&old, &newer), "{newer:?}");
        }
        assert!(!is_newer(&old, &old), "a repeat writes nothing");
        // The parent's late report does not take the key back from the range that split off.
        assert!(!is_newer(&record(2, 3, 9, 9), &record(9, 4, 1, 1)));
    }

    #[test]
    fn record_keys_order_like_end_keys_with_infinity_last() {
        let a = record_key(&[0x01, b'a']);
        let b = record_key(&[0x01, b'b']);
        let inf = record_key(&[]);
        let meta_end = record_key(&[0x01]);
        assert!(meta_end < a && a < b && b < inf);
        assert!(inf < records_end());
    }
}
