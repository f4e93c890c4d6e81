//! The key layout of the three column families (DESIGN section 5). Every range-scoped key starts
//! with the range id in big-endian, so one range's rows are contiguous and ordered.

/// Raft logs, hard states and log truncation records.
pub const RAFT_CF: &str = "raft";
/// User data, shared by all ranges: internal key -> stored value.
pub const DATA_CF: &str = "data";
/// Range descriptors, apply states, client sessions, the node identity.
pub const META_CF: &str = "meta";

const LOG_TAG: u8 = b'l';
const HARD_STATE_TAG: u8 = b'h';
const TRUNCATED_TAG: u8 = b't';
const DESCRIPTOR_TAG: u8 = b'd';
const APPLY_STATE_TAG: u8 = b'a';
const SESSION_TAG: u8 = b's';
const TOMBSTONE_TAG: u8 = b'x';

/// The node identity row in `meta` (shorter than every range key, and never 9 bytes long).
pub const IDENTITY_KEY: &[u8] = b"n";

/// Internal keys of user data start with this byte; keys below it are the system keyspace
/// (DESIGN section 2).
pub const USER_KEY_PREFIX: u8 = 0x01;

/// One past every internal key (they all start with 0x01 or below), the end of spans that
/// reach +inf.
pub const DATA_END: &[u8] = &[USER_KEY_PREFIX + 1];

/// The span `[start, end)` of a range's rows in `data` (an empty descriptor end is +inf).
pub fn data_span(descriptor: &flotilla_transport::meta::RangeDescriptor) -> (Vec<u8>, Vec<u8>) {
    let end = if descriptor.end_key.is_empty() {
        DATA_END.to_vec()
    } else {
        descriptor.end_key.to_vec()
    };
    (descriptor.start_key.to_vec(), end)
}

fn range_key(range_id: u64, tag: u8) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&range_id.to_be_bytes());
    k[8] = tag;
    k
}

fn range_key_u64(range_id: u64, tag: u8, suffix: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..9].copy_from_slice(&range_key(range_id, tag));
    k[9..].copy_from_slice(&suffix.to_be_bytes());
    k
}

/// `raft`: the log entry at `index` of `range_id`.
pub fn log_key(range_id: u64, index: u64) -> [u8; 17] {
    range_key_u64(range_id, LOG_TAG, index)
}

/// Parses a key made by [`log_key`] back into `(range_id, index)`.
pub fn parse_log_key(key: &[u8]) -> Option<(u64, u64)> {
    if key.len() != 17 || key[8] != LOG_TAG {
        return None;
    }
    let range_id = u64::from_be_bytes(key[..8].try_into().ok()?);
    let index = u64::from_be_bytes(key[9..].try_into().ok()?);
    Some((range_id, index))
}

/// The end (exclusive) of `range_id`'s log keys.
pub fn log_end_key(range_id: u64) -> [u8; 9] {
    range_key(range_id, LOG_TAG + 1)
}

/// `raft`: the hard state (term, vote, commit) of `range_id`.
pub fn hard_state_key(range_id: u64) -> [u8; 9] {
    range_key(range_id, HARD_STATE_TAG)
}

/// `raft`: where the log of `range_id` was truncated (snapshot metadata).
pub fn truncated_key(range_id: u64) -> [u8; 9] {
    range_key(range_id, TRUNCATED_TAG)
}

/// `meta`: the descriptor of `range_id`.
pub fn descriptor_key(range_id: u64) -> [u8; 9] {
    range_key(range_id, DESCRIPTOR_TAG)
}

/// Parses a key made by [`descriptor_key`].
pub fn parse_descriptor_key(key: &[u8]) -> Option<u64> {
    if key.len() != 9 || key[8] != DESCRIPTOR_TAG {
        return None;
    }
    Some(u64::from_be_bytes(key[..8].try_into().ok()?))
}

/// `meta`: the apply state of `range_id`.
pub fn apply_state_key(range_id: u64) -> [u8; 9] {
    range_key(range_id, APPLY_STATE_TAG)
}

/// `meta`: the tombstone of a replica of `range_id` removed from this node.
pub fn tombstone_key(range_id: u64) -> [u8; 9] {
    range_key(range_id, TOMBSTONE_TAG)
}

/// `meta`: the session of `client_id` in `range_id`.
pub fn session_key(range_id: u64, client_id: u64) -> [u8; 17] {
    range_key_u64(range_id, SESSION_TAG, client_id)
}

/// `meta`: the span `[start, end)` of all session rows of `range_id`.
pub fn session_span(range_id: u64) -> ([u8; 9], [u8; 9]) {
    (
        range_key(range_id, SESSION_TAG),
        range_key(range_id, SESSION_TAG + 1),
    )
}

/// `meta`: every row of `range_id` (`[start, end)`).
pub fn meta_span(range_id: u64) -> ([u8; 8], Option<[u8; 8]>) {
    (
        range_id.to_be_bytes(),
        range_id.checked_add(1).map(u64::to_be_bytes),
    )
}

/// The internal key of a user key.
pub fn data_key(user_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_key.len() + 1);
    k.push(USER_KEY_PREFIX);
    k.extend_from_slice(user_key);
    k
}

/// The user key of an internal key, or `None` for a system key.
pub fn user_key(internal_key: &[u8]) -> Option<&[u8]> {
    match internal_key.split_first() {
        Some((&USER_KEY_PREFIX, rest)) => Some(rest),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_rows_are_contiguous_and_ordered() {
        assert!(log_key(7, u64::MAX).as_slice() < log_end_key(7).as_slice());
        assert!(log_end_key(7).as_slice() <= truncated_key(7).as_slice());
        assert!(hard_state_key(7).as_slice() < log_key(7, 0).as_slice());
        assert!(log_key(7, 1) < log_key(7, 2) && log_key(7, 2) < log_key(7, 256));
        assert!(log_end_key(7).as_slice() < log_key(8, 0).as_slice());
        assert_eq!(parse_log_key(&log_key(3, 99)), Some((3, 99)));
        assert_eq!(parse_log_key(&hard_state_key(3)), None);
        let (start, end) = meta_span(5);
        for k in [descriptor_key(5).to_vec(), session_key(5, 1).to_vec()] {
            assert!(k.as_slice() >= start.as_slice());
            assert!(k.as_slice() < end.expect("end").as_slice());
        }
        assert_eq!(parse_descriptor_key(&descriptor_key(5)), Some(5));
        assert_eq!(user_key(&data_key(b"k")), Some(&b"k"[..]));
        assert_eq!(user_key(b"\x00sys"), None);
    }
}
