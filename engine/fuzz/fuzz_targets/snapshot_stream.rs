//! Any bytes as a snapshot stream from a peer: a header, then chunks (each a length-prefixed
//! protobuf, as the transport delivers them). Whatever arrives is refused with an error or
//! assembled into a snapshot whose rows all lie in the range; never a panic.
#![no_main]

use flotilla_engine::storage::SnapshotReceiver;
use flotilla_transport::meta::{SnapshotChunk, SnapshotHeader};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

/// Splits `data` into messages: a 2-byte length, then that many bytes.
fn pieces(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
        out.push(&data[2..2 + len]);
        data = &data[2 + len..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let parts = pieces(data);
    let Some((first, chunks)) = parts.split_first() else {
        return;
    };
    let Ok(header) = SnapshotHeader::decode(*first) else {
        return;
    };
    let range_id = header.descriptor.as_ref().map_or(1, |d| d.id);
    let Ok(mut receiver) = SnapshotReceiver::new(range_id, header) else {
        return;
    };
    for chunk in chunks {
        let Ok(chunk) = SnapshotChunk::decode(*chunk) else {
            return;
        };
        if receiver.push(chunk).is_err() {
            return;
        }
    }
    if let Ok(snapshot) = receiver.finish() {
        assert_eq!(snapshot.descriptor().id, range_id);
    }
});
