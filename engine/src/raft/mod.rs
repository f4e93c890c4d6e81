//! The Raft core: one replica of one consensus group as a pure, deterministic state machine.
//!
//! Modelled on etcd raft and raft-rs, written anew. No clock (time is [`RawNode::tick`]), no
//! I/O (the caller persists and sends what [`Ready`] hands over, reading back through
//! [`LogStore`]), no threads, and randomness only from [`Config::seed`]. That is what lets the
//! simulator in `engine/tests/sim` replay any fault schedule exactly from its seed.
//!
//! What it implements, with the sections of the Raft paper (Ongaro & Ousterhout 2014) and the
//! dissertation (Ongaro 2014, "thesis") the code cites:
//! - leader election with randomized timeouts (paper 5.2), pre-vote and check-quorum (thesis 9.6);
//! - log replication with per-follower flow control: probe / replicate, a bounded in-flight
//!   window, size-capped appends and fast backtracking on rejection (paper 5.3);
//! - the commit rule: only entries of the leader's term commit by counting (paper 5.4.2, Fig. 8);
//! - the persistence contract: votes and append acknowledgements only after the data is durable,
//!   the leader's own appends in parallel with its write (thesis 10.2.1);
//! - ReadIndex reads confirmed by a heartbeat round, and lease reads (thesis 6.4, 6.4.1);
//! - leader transfer with TimeoutNow (thesis 3.10); learners (non-voting members, thesis 4.2.1).
//!
//! Membership changes (joint consensus) and log compaction with snapshots arrive with their
//! issue; the quorum code (`quorum.rs`) already counts joint configurations.
//!
//! A group of one, driven by hand (a real driver batches many groups per round):
//!
//! ```
//! use bytes::Bytes;
//! use flotilla_engine::raft::{Config, MemStorage, RawNode, Role};
//!
//! let mut node = RawNode::new(Config::new(1), MemStorage::new_with_conf(&[1], &[]))?;
//! node.campaign()?;
//! node.propose(Bytes::from_static(b"hello")).expect("a group of one leads at once");
//! let mut applied = Vec::new();
//! while node.has_ready() {
//!     let mut ready = node.ready()?;
//!     // Send `ready.messages` now; install `ready.snapshot`; persist entries and hard state:
//!     if let Some(hs) = ready.hard_state {
//!         node.store_mut().set_hard_state(hs);
//!     }
//!     node.store_mut().append(&ready.entries)?;
//!     // ... then send `ready.persisted_messages`, and apply:
//!     applied.extend(ready.committed_entries.drain(..).filter(|e| !e.data.is_empty()));
//!     node.advance(ready)?;
//! }
//! assert_eq!(node.status().role, Role::Leader);
//! assert_eq!(applied[0].data, Bytes::from_static(b"hello"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Deliberate choice: terms and indexes are plain `u64`, as on the wire (`flotilla.raft`
//! protobuf types are used directly, like raft-rs' eraftpb), to keep the hot paths free of
//! conversions. Range, node and replica ids get newtypes where they meet the store.

mod config;
mod core;
mod error;
mod log;
mod membership;
mod progress;
mod quorum;
mod raw_node;
mod read_only;
mod reconfig;
mod rng;
mod step;
mod storage;
mod tracker;

pub use self::config::Config;
pub use self::core::{Role, NONE};
pub use self::error::{
    CompactError, ConfChangeError, ConfigError, Error, ProposeError, ReadError, StorageError,
    TransferError,
};
pub use self::membership::{add_learner, add_voter, remove, Membership};
pub use self::raw_node::{RawNode, Ready, SoftState, Status};
pub use self::read_only::ReadState;
pub use self::storage::{entry_size, limit_size, InitialState, LogStore, MemStorage};
pub use flotilla_transport::raft::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfState, Entry, EntryType, HardState, Message,
    MessageType, SnapshotMetadata,
};
