//! What Flotilla's binaries share: the client settings from the environment, and the YCSB
//! load generator behind `flotilla-bench`.

pub mod client_env;
pub mod ycsb;
