//! Log compaction and snapshot install (Raft thesis chapter 5; paper section 7).

use flotilla_engine::raft::{
    add_learner, CompactError, ConfChange, MessageType as T, SnapshotMetadata,
};

use crate::harness::*;

/// Compacts `id`'s log up to what it applied.
fn compact(c: &mut Cluster, id: u64) -> u64 {
    let n = c.node(id);
    let applied = n.status().applied;
    let meta = SnapshotMetadata {
        index: applied,
        term: n.term_of(applied).expect("applied entry in the log"),
        conf_state: Some(n.conf_state()),
    };
    n.compact(&meta).expect("compact");
    applied
}

/// Thesis 5.3: a follower that needs entries the leader compacted away gets the snapshot, then
/// the entries after it, and ends with the leader's log.
#[test]
fn lagging_follower_catches_up_by_snapshot() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.isolate(3);
    for i in 0..10 {
        c.propose(1, &format!("x{i}"));
    }
    let index = compact(&mut c, 1);
    assert!(index >= 11);
    c.propose(1, "after");
    c.heal();
    c.tick_all(3);
    let snapshots: Vec<u64> = c
        .delivered
        .iter()
        .filter(|m| m.msg_type == T::Snapshot as i32 && m.to == 3)
        .filter_map(|m| m.snapshot.as_ref().map(|s| s.index))
        .collect();
    assert_eq!(
        snapshots,
        vec![index],
        "one snapshot, at the compacted index"
    );
    let (l, f) = (c.node(1).status(), c.node(3).status());
    assert_eq!((f.last_index, f.committed), (l.last_index, l.committed));
    assert_eq!(
        c.node(3).term_of(l.last_index),
        c.node(1).term_of(l.last_index)
    );
    assert!(
        c.node(3).term_of(1).is_err(),
        "the follower's log starts after the snapshot"
    );
    assert_eq!(
        c.applied_data(3),
        vec!["after"],
        "only entries after the snapshot are applied"
    );
    assert!(f.applied >= index);
}

/// A snapshot at or below the follower's commit index is stale: it is not installed and the
/// follower answers with its commit index (nothing committed ever goes back).
#[test]
fn stale_snapshot_is_rejected() {
    let mut n = node_with_log(2, &[1, 2, 3], &[1, 1, 1, 1, 1], 1, &|_| {});
    let mut m = msg(T::Append, 1, 2, 1);
    m.index = 5;
    m.log_term = 1;
    m.commit = 5;
    n.step(m).expect("append");
    drive(&mut n);
    let mut s = msg(T::Snapshot, 1, 2, 1);
    s.snapshot = Some(SnapshotMetadata {
        index: 3,
        term: 1,
        conf_state: Some(n.conf_state()),
    });
    n.step(s).expect("snapshot");
    let rd = persist(&mut n);
    assert!(rd.snapshot.is_none(), "stale snapshot installed");
    assert_eq!(rd.persisted_messages.len(), 1);
    assert_eq!(rd.persisted_messages[0].index, 5);
    n.advance(rd).expect("advance");
    assert_eq!(n.status().committed, 5);
    assert_eq!(n.status().last_index, 5);
}

/// A snapshot whose last entry the follower already holds only moves its commit index.
#[test]
fn snapshot_of_a_held_entry_only_commits() {
    let mut n = node_with_log(2, &[1, 2, 3], &[1, 1, 1, 1, 1], 1, &|_| {});
    let mut s = msg(T::Snapshot, 1, 2, 1);
    s.snapshot = Some(SnapshotMetadata {
        index: 4,
        term: 1,
        conf_state: Some(n.conf_state()),
    });
    n.step(s).expect("snapshot");
    let rd = persist(&mut n);
    assert!(rd.snapshot.is_none());
    n.advance(rd).expect("advance");
    assert_eq!(n.status().committed, 4);
    assert_eq!(n.status().last_index, 5, "entries after it are kept");
}

/// A learner added after the log was compacted catches up the same way.
#[test]
fn learner_catches_up_by_snapshot() {
    let mut c = Cluster::new(3, &|_| {});
    c.add_blank(4, &[1, 2, 3], &|_| {});
    c.campaign(1);
    for i in 0..5 {
        c.propose(1, &format!("x{i}"));
    }
    let index = compact(&mut c, 1);
    c.node(1)
        .propose_conf_change(&ConfChange {
            changes: vec![add_learner(4)],
            ..ConfChange::default()
        })
        .expect("add learner");
    c.settle();
    c.tick_all(3);
    let s = c.node(4).status();
    assert_eq!(s.last_index, c.node(1).status().last_index);
    assert!(s.applied > index);
    assert_eq!(c.node(4).conf_state().learners, vec![4]);
}

/// A failed snapshot transfer is retried: the leader probes again and sends it anew.
#[test]
fn failed_snapshot_is_sent_again() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.isolate(3);
    for i in 0..5 {
        c.propose(1, &format!("x{i}"));
    }
    compact(&mut c, 1);
    c.heal();
    c.drop_types.insert(T::Snapshot as i32);
    c.node(1).tick().expect("tick");
    c.settle();
    c.node(1).report_snapshot(3, false);
    c.heal();
    c.tick_all(3);
    assert_eq!(c.node(3).status().last_index, c.node(1).status().last_index);
}

#[test]
fn bad_compactions_are_refused() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.propose(1, "x");
    let n = c.node(1);
    let applied = n.status().applied;
    let conf_state = Some(n.conf_state());
    let meta = |index, term| SnapshotMetadata {
        index,
        term,
        conf_state: conf_state.clone(),
    };
    assert_eq!(
        n.compact(&meta(applied + 1, 1)),
        Err(CompactError::NotApplied {
            index: applied + 1,
            applied
        })
    );
    assert_eq!(
        n.compact(&meta(applied, 9)),
        Err(CompactError::TermMismatch {
            index: applied,
            term: 9
        })
    );
    n.compact(&meta(applied, 1)).expect("compact");
    assert_eq!(
        n.compact(&meta(1, 1)),
        Err(CompactError::AlreadyCompacted { index: 1 })
    );
    assert_eq!(
        n.compact(&SnapshotMetadata {
            index: applied,
            term: 1,
            conf_state: None
        }),
        Err(CompactError::NoConfiguration)
    );
}

/// Snapshot metadata from a peer is checked like any message: an index at the end of the
/// number space or a configuration without voters is refused, not installed.
#[test]
fn malformed_snapshots_are_refused() {
    use flotilla_engine::raft::{ConfState, Error};
    for (what, index, voters) in [
        ("index overflow", u64::MAX, vec![1, 2, 3]),
        ("no voter", 9, vec![]),
    ] {
        let mut n = new_node(2, &[1, 2, 3], &[], &|_| {});
        let mut s = msg(T::Snapshot, 1, 2, 1);
        s.snapshot = Some(SnapshotMetadata {
            index,
            term: 1,
            conf_state: Some(ConfState {
                voters,
                ..ConfState::default()
            }),
        });
        assert!(matches!(n.step(s), Err(Error::InvalidMessage(_))), "{what}");
        assert_eq!(n.status().committed, 0, "{what}");
    }
}

/// On restart, entries the caller already applied count as committed even if the commit index
/// it last wrote is older (commit-only writes are not synced): they are not handed out twice.
#[test]
fn restart_never_hands_applied_entries_out_again() {
    use flotilla_engine::raft::{Config, HardState, MemStorage, RawNode};
    let mut store = MemStorage::new_with_conf(&[1, 2, 3], &[]);
    store
        .append(&[entry(1, 1), entry(2, 1), entry(3, 1)])
        .expect("fresh log");
    store.set_hard_state(HardState {
        term: 1,
        vote: 0,
        commit: 1,
    });
    let config = Config {
        applied: 3,
        ..config(2)
    };
    let mut n = RawNode::new(config, store).expect("restart");
    let s = n.status();
    assert_eq!((s.committed, s.applied), (3, 3));
    let (_, committed, _) = drive(&mut n);
    assert!(
        committed.is_empty(),
        "applied entries handed out again: {committed:?}"
    );
}
