//! Checkers for histories that tests record against the store: the simulator's, the process
//! tests', and (later) the nemesis runs'. Pure code: no I/O, no clock.

pub mod linearizability;
