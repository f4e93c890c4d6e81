//! Storage and state machine tests on a real RocksDB in temporary directories.

mod kv;
mod log;
mod snapshot;
mod support;
mod txn;
