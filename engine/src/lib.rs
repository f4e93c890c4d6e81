//! flotilla-engine: everything a Flotilla node does with its data. For now the Raft core;
//! storage, the KV state machine and the store runtime arrive with their issues (DESIGN.md 1).
#![forbid(unsafe_code)]

pub mod raft;
