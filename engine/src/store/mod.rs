//! The node runtime (DESIGN section 7). For now one piece of it: [`Peer`], one range replica
//! driving its Raft group over the node's storage and state machine. The poller threads, the
//! routing of messages and the `Store` that hosts many peers arrive with the node issue.

mod peer;

pub use self::peer::{Peer, PeerError, RoundOutput};
