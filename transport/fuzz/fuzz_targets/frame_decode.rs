//! Any bytes, fed to the frame decoder as every message kind a peer can send: never a panic,
//! and an accepted frame re-encodes to one that decodes the same.
#![no_main]

use flotilla_transport::frame;
use flotilla_transport::wire::{Hello, RaftBatch, RpcRequest, RpcResponse, SnapshotFrame};
use libfuzzer_sys::fuzz_target;

fn check<M: prost::Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(Some((m, used))) = frame::decode::<M>(data, 1 << 20) {
        assert!(used <= data.len());
        let again = frame::encode(&m, usize::MAX).expect("re-encode");
        let (m2, _) = frame::decode::<M>(&again, usize::MAX)
            .expect("decode")
            .expect("whole frame");
        assert_eq!(m, m2);
    }
}

fuzz_target!(|data: &[u8]| {
    check::<RaftBatch>(data);
    check::<Hello>(data);
    check::<SnapshotFrame>(data);
    check::<RpcRequest>(data);
    check::<RpcResponse>(data);
});
