//! The node runtime (DESIGN section 7). For now its deterministic core: [`Peer`], one range
//! replica driving its Raft group over the node's storage and state machine, and [`Store`], the
//! replicas of one node run in rounds with one group-commit write each. The poller threads, the
//! transport sink, the client service and the binary arrive with the node issue.

mod events;
mod load;
mod peer;
mod replicas;
mod runtime;
mod slow;

pub use self::events::SnapshotReceipt;
pub use self::load::RangeLoad;
pub use self::peer::{prepare_snapshot, Peer, PeerError, RoundOutput};
pub use self::replicas::{Command, Outcome, Proposal, ProposeRefused, Store, StoreRound, Ticket};
pub use self::runtime::{
    Network, ReadResult, RequestError, Runtime, RuntimeConfig, RuntimeError, RuntimeHandle,
    SnapshotBuild, WriteResult,
};
pub use self::slow::{read_op, write_op};
