//! Any bytes as a stored row (`crc32c ++ body`) of every kind the engine reads back from
//! RocksDB, and as the keys it parses: a damaged record is an error, never a panic, and a record
//! that passes its checksum re-encodes to the same bytes' meaning.
#![no_main]

use flotilla_engine::storage::{decode, encode, keys};
use flotilla_transport::{kv, meta, raft};
use libfuzzer_sys::fuzz_target;

fn check<M: prost::Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(m) = decode::<M>(data) {
        let again = encode(&m);
        assert_eq!(decode::<M>(&again).expect("re-encoded record"), m);
    }
}

fuzz_target!(|data: &[u8]| {
    check::<raft::Entry>(data);
    check::<raft::HardState>(data);
    check::<raft::SnapshotMetadata>(data);
    check::<meta::RangeDescriptor>(data);
    check::<meta::ApplyState>(data);
    check::<meta::SessionRecord>(data);
    check::<meta::RangeTombstone>(data);
    check::<meta::NodeIdentity>(data);
    check::<kv::StoredValue>(data);
    let _ = keys::parse_log_key(data);
    let _ = keys::parse_descriptor_key(data);
    let _ = keys::user_key(data);
    // A record whose checksum is made to match reaches the protobuf decoder.
    let mut forged = crc32c::crc32c(data).to_le_bytes().to_vec();
    forged.extend_from_slice(data);
    check::<raft::Entry>(&forged);
    check::<meta::RangeDescriptor>(&forged);
    check::<meta::ApplyState>(&forged);
    check::<kv::StoredValue>(&forged);
});
