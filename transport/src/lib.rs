//! Flotilla's wire protocol: every message that crosses the network, generated from
//! `proto/*.proto` by prost. This crate owns the bytes on the wire and nothing else: no server
//! logic, no storage, so that the client library can depend on it without compiling RocksDB.
//! The QUIC endpoint joins it with the transport issue.

/// Raft messages, log entries, hard state, membership and snapshot metadata.
pub mod raft {
    include!(concat!(env!("OUT_DIR"), "/flotilla.raft.rs"));
}
