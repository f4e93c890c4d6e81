//! A replica removed while it was away, whose leader is gone too, must still learn it was
//! removed: any replica of the range answers a stale member's campaign or membership query
//! with a tombstone, and a tombstone not newer than a replica's own configuration is refused
//! (so a member that is merely behind, or newer than the answerer, never deletes itself).

use flotilla_engine::store::Store;
use flotilla_transport::meta::Replica;

use super::*;

const REMOVED: u64 = 99;

/// Range 7 at conf_ver 3 on node 1, with replicas 71, 72, 73 on nodes 1-3.
fn store_with_range(dir: &std::path::Path) -> Store {
    let engine = Engine::open(&EngineConfig::new(dir, "store-test", 1)).expect("engine");
    let mut store = Store::open(engine, 1, Config::default(), KvConfig::default()).expect("store");
    let descriptor = RangeDescriptor {
        id: 7,
        start_key: keys::data_key(b"").into(),
        end_key: Bytes::new(),
        epoch: Some(RangeEpoch {
            version: 1,
            conf_ver: 3,
        }),
        replicas: (1..=3)
            .map(|node| Replica {
                node_id: node,
                replica_id: 70 + node,
                role: 0,
            })
            .collect(),
    };
    let initial = SnapshotMetadata {
        index: 5,
        term: 5,
        conf_state: Some(ConfState {
            voters: vec![71, 72, 73],
            ..ConfState::default()
        }),
    };
    store.create_range(&descriptor, &initial).expect("create");
    store
}

fn message(kind: MessageType, from: u64, to: u64, index: u64) -> Message {
    Message {
        msg_type: kind as i32,
        from,
        to,
        term: 6,
        index,
        ..Message::default()
    }
}

/// The tombstones node 1 sends to `node` in its next round: `(to, conf_ver)`.
fn tombstones_to(store: &mut Store, node: u64) -> Vec<(u64, u64)> {
    let round = store.round().expect("round");
    round
        .outbox
        .get(&node)
        .into_iter()
        .flatten()
        .filter(|(_, m)| m.msg_type == MessageType::Tombstone as i32 && !m.reject)
        .map(|(_, m)| (m.to, m.index))
        .collect()
}

#[test]
fn a_replica_outside_the_configuration_that_asks_or_campaigns_is_told_it_was_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = store_with_range(dir.path());
    // Removed at a configuration after its own (2): told, with this replica's conf_ver.
    let query = message(MessageType::MembershipQuery, REMOVED, 71, 2);
    assert!(!store.step(7, 4, query).expect("step"));
    assert_eq!(tombstones_to(&mut store, 4), vec![(REMOVED, 3)]);
    // A campaign from outside the configuration gets the same answer.
    let campaign = message(MessageType::RequestPreVote, REMOVED, 71, 10);
    store.step(7, 4, campaign).expect("step");
    assert_eq!(tombstones_to(&mut store, 4), vec![(REMOVED, 3)]);
    // A member asking is not told anything, nor is one whose configuration is not older
    // (it may have been added after what this replica applied).
    let member = message(MessageType::MembershipQuery, 72, 71, 2);
    store.step(7, 2, member).expect("step");
    assert!(tombstones_to(&mut store, 2).is_empty());
    let newer = message(MessageType::MembershipQuery, REMOVED, 71, 3);
    store.step(7, 4, newer).expect("step");
    assert!(tombstones_to(&mut store, 4).is_empty());
}

#[test]
fn a_tombstone_not_newer_than_the_replicas_configuration_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = store_with_range(dir.path());
    // From a replica that applied no more than this one: this one is still a member.
    let stale = message(MessageType::Tombstone, 72, 71, 3);
    assert!(!store.step(7, 2, stale).expect("step"));
    assert!(store.peer(7).is_some(), "a member deleted itself");
    // A removal it never applied: the replica deletes its data and acknowledges.
    let removal = message(MessageType::Tombstone, 72, 71, 4);
    assert!(store.step(7, 2, removal).expect("step"));
    assert!(store.peer(7).is_none());
    let ack = store.round().expect("round");
    assert!(ack.outbox[&2]
        .iter()
        .any(|(_, m)| m.msg_type == MessageType::Tombstone as i32 && m.reject && m.to == 72));
}
