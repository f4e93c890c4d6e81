//! Storage (DESIGN section 5): one RocksDB per node with three column families shared by every
//! range, the Raft log of each range on top of it, group commit, and range snapshots.
//!
//! What runs where: the store's pollers stage the `Ready` of every range that has one into one
//! [`LogBatch`] and commit it with a single fsync ([`LogBatch::commit`]); the apply path writes
//! data and apply state with `Engine::write_unsynced`. This module never decides what to write,
//! only how it is laid out and that it is read back intact.

mod cache;
mod codec;
mod engine;
mod error;
pub mod keys;
mod log_store;
mod snapshot;

pub use self::cache::CacheBudget;
pub use self::codec::{decode, encode, CodecError};
pub use self::engine::{Cf, Engine, EngineConfig, MemoryDisk};
pub use self::error::EngineError;
pub use self::log_store::{LogBatch, RangeLog};
pub use self::snapshot::{
    build_snapshot, ReceivedSnapshot, SnapshotError, SnapshotParts, SnapshotReceiver, SnapshotSink,
};
