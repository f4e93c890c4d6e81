//! Any bytes as Raft messages from peers (length-prefixed protobufs) stepped into a replica of
//! a 3-voter group, with its Ready persisted and advanced after each: never a panic, and term
//! and commit never go backwards (a refused message changes nothing durable).
#![no_main]

use flotilla_engine::raft::{Config, MemStorage, Message, RawNode};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fn drive(node: &mut RawNode<MemStorage>) {
    if !node.has_ready() {
        return;
    }
    let Ok(rd) = node.ready() else { return };
    if let Some(hs) = &rd.hard_state {
        node.store_mut().set_hard_state(*hs);
    }
    if let Some(s) = &rd.snapshot {
        node.store_mut().apply_snapshot(s.clone());
    }
    if let Some(cs) = &rd.conf_state {
        node.store_mut().set_conf_state(cs.clone());
    }
    if node.store_mut().append(&rd.entries).is_err() {
        return;
    }
    let _ = node.advance(rd);
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut node) = RawNode::new(Config::new(1), MemStorage::new_with_conf(&[1, 2, 3], &[]))
    else {
        return;
    };
    let (mut term, mut commit) = (0, 0);
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (bytes, tail) = rest[2..].split_at(len);
        rest = tail;
        if let Ok(m) = Message::decode(bytes) {
            let _ = node.step(m);
        }
        let _ = node.tick();
        drive(&mut node);
        let s = node.status();
        assert!(s.term >= term, "term went back");
        assert!(s.committed >= commit, "commit went back");
        assert!(s.committed <= s.last_index, "committed past the log");
        term = s.term;
        commit = s.committed;
    }
});
