//! Range splits at apply (DESIGN section 7): a `Split` command cuts the range at a key; the
//! range keeps the left part and a new range on the same nodes takes the right part. No data
//! moves (the column families are shared); both epochs bump their version.
//!
//! The new range's id and its replicas' ids are derived from the range id and the split
//! entry's index with a fixed hash (SplitMix64), so every replica, on any version, creates the
//! same range without asking anyone. (Ids allocated by the meta range replace this with
//! placement; a 62-bit hash collision between two splits is the risk until then.)

use flotilla_transport::meta::{RangeDescriptor, RangeEpoch, Replica, ReplicaRole};
use flotilla_transport::raft::{ConfState, SnapshotMetadata};

use super::error::KvError;
use crate::storage::{keys, Cf, Engine, EngineError};

/// The meta range never splits (placement's state stays in one range).
const META_RANGE: u64 = 1;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A derived id: bit 62 set (above every bootstrap id), never 0.
pub(super) fn derived_id(a: u64, b: u64) -> u64 {
    (splitmix(splitmix(a) ^ b) >> 2) | (1 << 62)
}

/// The two halves of a split and the initial Raft state of the right one.
#[derive(Clone, Debug, PartialEq)]
pub struct SplitPlan {
    pub left: RangeDescriptor,
    pub right: RangeDescriptor,
    pub right_initial: SnapshotMetadata,
}

/// Plans the split of `descriptor` at user key `split_key` by the entry at `index`/`term`.
///
/// # Errors
/// [`KvError::Malformed`] for the meta range or a key not strictly inside the range.
pub fn plan(
    descriptor: &RangeDescriptor,
    split_key: &[u8],
    index: u64,
    term: u64,
) -> Result<SplitPlan, KvError> {
    if descriptor.id == META_RANGE {
        return Err(KvError::Malformed("the meta range does not split".into()));
    }
    let key = keys::data_key(split_key);
    let inside = key.as_slice() > descriptor.start_key.as_ref()
        && (descriptor.end_key.is_empty() || key.as_slice() < descriptor.end_key.as_ref());
    if !inside {
        return Err(KvError::Malformed(format!(
            "split key {:?} is not strictly inside range {}",
            String::from_utf8_lossy(split_key),
            descriptor.id
        )));
    }
    let epoch = descriptor.epoch.unwrap_or_default();
    let bumped = RangeEpoch {
        version: epoch.version + 1,
        conf_ver: epoch.conf_ver,
    };
    let right_id = derived_id(descriptor.id, index);
    let right_replicas: Vec<Replica> = descriptor
        .replicas
        .iter()
        .map(|r| Replica {
            node_id: r.node_id,
            replica_id: derived_id(right_id, r.node_id),
            role: r.role,
        })
        .collect();
    let ids_of = |role: ReplicaRole| -> Vec<u64> {
        right_replicas
            .iter()
            .filter(|r| r.role == role as i32)
            .map(|r| r.replica_id)
            .collect()
    };
    let right_initial = SnapshotMetadata {
        index,
        term,
        conf_state: Some(ConfState {
            voters: ids_of(ReplicaRole::Voter),
            learners: ids_of(ReplicaRole::Learner),
            ..ConfState::default()
        }),
    };
    let left = RangeDescriptor {
        end_key: key.clone().into(),
        epoch: Some(bumped),
        ..descriptor.clone()
    };
    let right = RangeDescriptor {
        id: right_id,
        start_key: key.into(),
        end_key: descriptor.end_key.clone(),
        epoch: Some(bumped),
        replicas: right_replicas,
    };
    Ok(SplitPlan {
        left,
        right,
        right_initial,
    })
}

/// The size of `descriptor`'s data (keys and stored values) and a user key near its middle by
/// size: where a range that grew too big splits. `None` for a range with fewer than two keys.
/// Reads the whole range: run it off the poller.
///
/// # Errors
/// [`EngineError`] when the data cannot be read.
pub fn size_and_middle(
    engine: &Engine,
    descriptor: &RangeDescriptor,
) -> Result<Option<(u64, Vec<u8>)>, EngineError> {
    const SAMPLE_BYTES: u64 = 16 * 1024;
    let (start, end) = keys::data_span(descriptor);
    let iter = engine.db().iterator_cf_opt(
        engine.cf(Cf::Data),
        engine.read_options_bounded(&end),
        rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
    );
    // (bytes before the key, key) every SAMPLE_BYTES: the middle is the sample nearest half.
    let mut samples: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut total = 0u64;
    let mut next_sample = 0u64;
    let mut count = 0u64;
    for item in iter {
        let (key, value) = item?;
        if total >= next_sample && count > 0 {
            samples.push((total, key.to_vec()));
            next_sample = total + SAMPLE_BYTES;
        }
        total += (key.len() + value.len()) as u64;
        count += 1;
    }
    if count < 2 {
        return Ok(None);
    }
    let half = total / 2;
    let middle = samples
        .into_iter()
        .min_by_key(|(before, _)| before.abs_diff(half))
        .and_then(|(_, key)| keys::user_key(&key).map(<[u8]>::to_vec));
    Ok(middle.map(|m| (total, m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(id: u64, start: &[u8], end: &[u8]) -> RangeDescriptor {
        RangeDescriptor {
            id,
            start_key: start.to_vec().into(),
            end_key: end.to_vec().into(),
            epoch: Some(RangeEpoch {
                version: 3,
                conf_ver: 2,
            }),
            replicas: (1..=3)
                .map(|n| Replica {
                    node_id: n,
                    replica_id: 10 + n,
                    role: ReplicaRole::Voter as i32,
                })
                .collect(),
        }
    }

    #[test]
    fn a_split_cuts_the_span_and_bumps_both_versions() {
        let d = range(2, &[1], &[]);
        let p = plan(&d, b"m", 40, 3).expect("plan");
        assert_eq!(p.left.end_key.as_ref(), &keys::data_key(b"m")[..]);
        assert_eq!(p.right.start_key, p.left.end_key);
        assert!(p.right.end_key.is_empty());
        assert_eq!(p.left.epoch.map(|e| e.version), Some(4));
        assert_eq!(p.right.epoch, p.left.epoch);
        assert_eq!(p.right_initial.index, 40);
        assert_eq!(
            p.right_initial.conf_state.as_ref().map(|c| c.voters.len()),
            Some(3)
        );
        // Same on every replica; different for another split.
        assert_eq!(plan(&d, b"m", 40, 3).expect("plan"), p);
        assert_ne!(plan(&d, b"m", 41, 3).expect("plan").right.id, p.right.id);
        let ids: std::collections::BTreeSet<u64> =
            p.right.replicas.iter().map(|r| r.replica_id).collect();
        assert_eq!(ids.len(), 3);
        assert!(p.right.id >= 1 << 62 && ids.iter().all(|i| *i >= 1 << 62));
    }

    #[test]
    fn keys_outside_or_at_the_edges_and_the_meta_range_are_refused() {
        let d = range(2, &keys::data_key(b"c"), &keys::data_key(b"k"));
        assert!(plan(&d, b"c", 5, 1).is_err(), "at the start");
        assert!(plan(&d, b"k", 5, 1).is_err(), "at the end");
        assert!(plan(&d, b"a", 5, 1).is_err(), "before");
        assert!(plan(&d, b"f", 5, 1).is_ok());
        assert!(plan(&range(1, b"", &[1]), b"", 5, 1).is_err(), "meta range");
    }
}
