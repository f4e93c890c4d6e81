//! Flotilla's wire protocol and its QUIC endpoint (DESIGN section 8): every message that
//! crosses the network, generated from `proto/*.proto` by prost, the framing, mutual TLS
//! against a cluster CA, and the endpoint that batches Raft traffic per node pair. No server
//! logic and no storage: the client library depends on it without compiling RocksDB.
//!
//! ```
//! use flotilla_transport::raft::{Entry, Message, MessageType};
//! use prost::Message as _;
//!
//! let m = Message {
//!     msg_type: MessageType::Append as i32,
//!     from: 1,
//!     to: 2,
//!     term: 3,
//!     entries: vec![Entry { index: 7, term: 3, data: "x".into(), ..Entry::default() }],
//!     ..Message::default()
//! };
//! let bytes = m.encode_to_vec();
//! assert_eq!(Message::decode(bytes.as_slice()).unwrap(), m);
//! ```

/// Raft messages, log entries, hard state, membership and snapshot metadata.
pub mod raft {
    include!(concat!(env!("OUT_DIR"), "/flotilla.raft.rs"));
}

/// Range descriptors, apply state, client sessions, node identity and snapshot framing.
pub mod meta {
    include!(concat!(env!("OUT_DIR"), "/flotilla.meta.rs"));
}

/// Key-value commands, reads, their responses and errors, and the Raft entry payload.
pub mod kv {
    include!(concat!(env!("OUT_DIR"), "/flotilla.kv.rs"));
}

/// The client service: reads, cluster info, node status (writes are `kv::RaftCommand`s).
pub mod service {
    include!(concat!(env!("OUT_DIR"), "/flotilla.service.rs"));
}

/// Node-to-node framing: hello, Raft batches, coalesced heartbeats, snapshot and RPC frames.
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/flotilla.transport.rs"));
}

mod client;
mod coalesce;
mod config;
mod endpoint;
mod error;
pub mod frame;
mod stats;
pub mod tls;

pub use self::client::ClientEndpoint;
pub use self::config::TransportConfig;
pub use self::endpoint::{BoxFuture, Sink, SnapshotChunks, Transport};
pub use self::error::{RpcStatus, TransportError};
pub use self::stats::{describe_metrics, Stats};

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::raft::{ConfChange, ConfChangeType, Message, MessageType, SnapshotMetadata};

    /// Every message survives the wire unchanged, unknown enum values included (a newer peer),
    /// and garbage is a decode error, not a panic.
    #[test]
    fn messages_roundtrip_and_garbage_is_an_error() {
        let m = Message {
            msg_type: MessageType::Snapshot as i32,
            from: 1,
            to: 2,
            term: 9,
            snapshot: Some(SnapshotMetadata {
                index: 100,
                term: 8,
                conf_state: None,
            }),
            ..Message::default()
        };
        let decoded = Message::decode(m.encode_to_vec().as_slice()).expect("roundtrip");
        assert_eq!(decoded, m);
        let future = Message {
            msg_type: 999,
            ..Message::default()
        };
        let decoded = Message::decode(future.encode_to_vec().as_slice()).expect("roundtrip");
        assert!(MessageType::try_from(decoded.msg_type).is_err());
        let cc = ConfChange::default();
        assert_eq!(ConfChange::decode(cc.encode_to_vec().as_slice()), Ok(cc));
        assert!(ConfChangeType::try_from(7).is_err());
        assert!(Message::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }
}
