//! flotilla-engine: everything a Flotilla node does with its data (DESIGN.md 1): the Raft core,
//! storage on RocksDB, the key-value state machine, and the first piece of the store runtime.
#![forbid(unsafe_code)]

pub mod check;
pub mod kv;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod storage;
pub mod store;

/// A failpoint on an I/O path: with the `fail` crate's `failpoints` feature (tests), an action
/// set on `name` makes the operation fail with that message.
pub(crate) fn fail_point_io(name: &str) -> Result<(), String> {
    // Without the `failpoints` feature the macro below expands to nothing.
    let _ = name;
    fail::fail_point!(name, |arg: Option<String>| Err(
        arg.unwrap_or_else(|| format!("failpoint {name}"))
    ));
    Ok(())
}

/// Whether a failpoint on `name` is set to `return` (or `panic`s there): for faults that are
/// not an error return, such as a crash. Other actions (`sleep`, `print`, `pause`) act and
/// then answer false.
pub(crate) fn fail_point_set(name: &str) -> bool {
    let _ = name;
    fail::fail_point!(name, |_| true);
    false
}
