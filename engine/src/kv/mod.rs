//! The key-value state machine of a range (DESIGN section 6): commands `Put`, `Delete`,
//! `DeleteRange` and `Txn` applied from the Raft log with revisions and client sessions, and the
//! reads `Get` and `Scan`.
//!
//! Everything apply decides depends only on the log and the stored state (the clock is the
//! leaders' proposal times carried in the entries), so every replica reaches the same state.

mod apply;
mod config;
mod error;
mod overlay;
mod read;
mod replicas;
pub mod routing;
mod session;
mod split;
mod validate;

pub use self::apply::{Applied, RangeApplier};
pub use self::config::KvConfig;
pub use self::error::KvError;
pub use self::read::{get, scan, ReadError};
pub use self::replicas::{apply_change, plan_change, LeaderView};
pub use self::split::{plan as plan_split, size_and_middle, SplitPlan};
pub use self::validate::{check_command, check_key, check_range, check_write, contains};
