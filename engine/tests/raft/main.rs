//! Step-level tests of the Raft core, each citing the rule of the Raft paper (Ongaro &
//! Ousterhout 2014) or dissertation ("thesis") it checks. They drive `RawNode`s through the
//! public API and assert the exact messages and state they produce.

mod harness;
mod membership;
mod paper;
mod reads;
mod robustness;
mod snapshot;
mod transfer;
