//! Leader transfer (thesis 3.10).

use bytes::Bytes;
use flotilla_engine::raft::{ProposeError, Role, TransferError};

use crate::harness::*;

#[test]
fn transfer_to_an_up_to_date_follower() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.propose(1, "x");
    let term = c.node(1).status().term;
    c.node(1).transfer_leader(2).expect("transfer");
    c.settle();
    assert_eq!(c.leader(), Some(2));
    assert_eq!(c.node(2).status().term, term + 1);
    c.propose(2, "y");
    assert_eq!(c.applied_data(1), vec!["x", "y"]);
}

#[test]
fn transfer_waits_for_a_lagging_follower_to_catch_up() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.cut.insert((1, 3));
    c.propose(1, "x");
    c.propose(1, "y");
    assert!(c.node(3).status().last_index < c.node(1).status().last_index);
    c.node(1).transfer_leader(3).expect("transfer");
    c.settle();
    assert_eq!(c.leader(), Some(1), "not caught up yet");
    assert_eq!(
        c.node(1).propose(Bytes::from_static(b"z")),
        Err(ProposeError::TransferInProgress { to: 3 })
    );
    c.heal();
    // The appends to 3 were lost in replicate state: two heartbeats without progress send the
    // leader back to probing, then 3 catches up and gets TimeoutNow.
    c.tick_all(3);
    assert_eq!(c.leader(), Some(3));
    assert_eq!(c.applied_data(3), vec!["x", "y"]);
}

#[test]
fn transfer_aborts_after_an_election_timeout() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.cut.insert((1, 3));
    c.propose(1, "x");
    c.node(1).transfer_leader(3).expect("transfer");
    c.settle();
    c.tick_all(10);
    assert_eq!(c.leader(), Some(1));
    c.node(1)
        .propose(Bytes::from_static(b"after"))
        .expect("proposals accepted again after the abort");
}

#[test]
fn transfer_refuses_non_voters_and_followers() {
    let mut c = Cluster::with_learners(&[1, 2, 3], &[4], &|_| {});
    c.campaign(1);
    assert_eq!(
        c.node(1).transfer_leader(4),
        Err(TransferError::NotAVoter(4))
    );
    assert_eq!(
        c.node(1).transfer_leader(9),
        Err(TransferError::NotAVoter(9))
    );
    assert_eq!(
        c.node(2).transfer_leader(3),
        Err(TransferError::NotLeader { leader: Some(1) })
    );
    assert_eq!(c.node(1).status().role, Role::Leader);
}

/// After a TimeoutNow went out, the old leader serves no lease read in that term: the target
/// campaigns past every voter's lease promise.
#[test]
fn no_lease_reads_after_timeout_now() {
    let mut c = Cluster::new(3, &|c| c.lease_reads = true);
    c.tick_all(10);
    c.campaign(1);
    c.tick_all(1);
    assert!(c.node(1).status().lease_valid);
    c.drop_types
        .insert(flotilla_engine::raft::MessageType::TimeoutNow as i32);
    c.node(1).transfer_leader(2).expect("transfer");
    c.settle();
    assert!(!c.node(1).status().lease_valid);
    c.tick_all(12);
    assert_eq!(c.leader(), Some(1), "transfer aborted");
    assert!(
        !c.node(1).status().lease_valid,
        "still no lease in this term"
    );
}

/// Transfers do not postpone check-quorum: a leader cut off from everyone steps down even if
/// transfers keep being requested.
#[test]
fn repeated_transfers_do_not_keep_a_cut_off_leader_in_place() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.isolate(1);
    for i in 0..30 {
        let _ = c.node(1).transfer_leader(2 + i % 2);
        c.tick_all(1);
    }
    assert_ne!(c.node(1).status().role, Role::Leader);
}
