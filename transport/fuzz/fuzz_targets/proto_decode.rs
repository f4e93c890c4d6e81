//! Any bytes, decoded as every message a node takes from a client or a peer in an RPC body,
//! or a client takes from a node: never a panic, and an accepted message re-encodes to bytes
//! that decode the same.
#![no_main]

use flotilla_transport::{kv, meta, raft, service};
use libfuzzer_sys::fuzz_target;

fn check<M: prost::Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(m) = M::decode(data) {
        let again = m.encode_to_vec();
        let m2 = M::decode(again.as_slice()).expect("a re-encoded message decodes");
        assert_eq!(m, m2);
    }
}

fuzz_target!(|data: &[u8]| {
    // Node side: RPC bodies from clients and peers.
    check::<kv::RaftCommand>(data);
    check::<service::ReadRequest>(data);
    check::<service::LocateKeyRequest>(data);
    check::<service::ScanRangesRequest>(data);
    check::<service::MiddleKeyRequest>(data);
    check::<service::PlacementHeartbeat>(data);
    check::<service::JoinRequest>(data);
    check::<service::NemesisFaults>(data);
    // Raft messages and the entries' payloads applied from the log.
    check::<raft::Message>(data);
    check::<raft::ConfChange>(data);
    check::<kv::ChangeReplicasContext>(data);
    check::<meta::SnapshotTransfer>(data);
    // Client side: answers from nodes.
    check::<kv::WriteResponse>(data);
    check::<service::ReadResponse>(data);
    check::<service::ClusterInfo>(data);
    check::<service::NodeStatus>(data);
    check::<service::LocateKeyResponse>(data);
    check::<service::ScanRangesResponse>(data);
    check::<service::PlacementStatus>(data);
    check::<service::JoinResponse>(data);
});
