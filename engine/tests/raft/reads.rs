//! ReadIndex and lease reads (thesis 6.4, 6.4.1), pre-vote and check-quorum (thesis 9.6).

use bytes::Bytes;
use flotilla_engine::raft::{Config, MessageType as T, Role};

use crate::harness::*;

fn lease(c: &mut Config) {
    c.lease_reads = true;
}

fn ctx(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// Thesis 6.4: the leader answers a read with its commit index only after a heartbeat round
/// confirms a quorum still follows it.
#[test]
fn read_index_waits_for_a_heartbeat_quorum() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.propose(1, "x");
    c.cut.insert((2, 1));
    c.cut.insert((3, 1));
    c.node(1).read_index(ctx("r1")).expect("read");
    c.settle();
    assert!(c.reads[&1].is_empty(), "no quorum answered: no read");
    c.heal();
    c.node(1).read_index(ctx("r2")).expect("read");
    c.settle();
    // The round that confirms r2 confirms r1 too: it was sent after both arrived.
    let got: Vec<(u64, &[u8])> = c.reads[&1]
        .iter()
        .map(|r| (r.index, &r.context[..]))
        .collect();
    assert_eq!(got, vec![(2, &b"r1"[..]), (2, &b"r2"[..])]);
}

/// Thesis 6.4 step 1: a new leader must commit an entry of its term before it knows the commit
/// index; reads wait for it.
#[test]
fn read_on_a_new_leader_waits_for_its_first_commit() {
    let mut c = Cluster::new(3, &|_| {});
    c.drop_types.insert(T::AppendResponse as i32);
    c.campaign(1);
    assert_eq!(c.leader(), Some(1));
    c.node(1).read_index(ctx("r")).expect("read");
    c.settle();
    assert!(c.reads[&1].is_empty());
    c.heal();
    c.tick_all(1);
    assert_eq!(c.reads[&1].len(), 1);
    assert_eq!(c.reads[&1][0].index, 1);
}

/// Follower reads: the follower asks the leader for the read index and serves it itself.
#[test]
fn follower_read_goes_through_the_leader() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.propose(1, "x");
    c.node(3).read_index(ctx("f")).expect("read");
    c.settle();
    let reads = &c.reads[&3];
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].index, 2);
    assert!(c.node(3).status().applied >= 2, "the follower can serve it");
}

/// Thesis 6.4.1: with a valid lease the leader answers at once, with no heartbeat round.
#[test]
fn lease_read_needs_no_round_trip() {
    let mut c = Cluster::new(3, &lease);
    c.tick_all(10);
    c.campaign(1);
    c.tick_all(1);
    assert!(c.node(1).status().lease_valid);
    c.node(1).read_index(ctx("l")).expect("read");
    let (msgs, _, reads) = drive(c.node(1));
    assert!(msgs.is_empty(), "no heartbeat needed: {:?}", types(&msgs));
    assert_eq!(reads.len(), 1);
}

/// TESTING "ReadIndex or lease read across a partition": a leader cut off from its quorum keeps
/// serving lease reads only until its lease ends, which is before the others can elect a new
/// leader and commit a write. Safe reads never complete at all.
#[test]
fn no_stale_read_from_a_deposed_leader() {
    for lease_reads in [false, true] {
        let mut c = Cluster::new(3, &|c| c.lease_reads = lease_reads);
        c.tick_all(10);
        c.campaign(1);
        c.propose(1, "x");
        c.tick_all(2);
        c.isolate(1);
        let mut new_leader_commit_tick = None;
        for tick in 0..100 {
            c.reads.get_mut(&1).map(Vec::clear);
            if c.node(1).status().role == Role::Leader {
                // Reads refused outright are fine; the point is which ones complete.
                let _ = c.node(1).read_index(ctx("stale?"));
            }
            c.tick_all(1);
            let served = !c.reads[&1].is_empty();
            if new_leader_commit_tick.is_none() {
                if let Some(l) = [2, 3]
                    .into_iter()
                    .find(|&id| c.node(id).status().role == Role::Leader)
                {
                    c.propose(l, "y");
                    if c.node(l).status().committed > c.node(1).status().committed {
                        new_leader_commit_tick = Some(tick);
                    }
                }
            }
            assert!(
                !(served && new_leader_commit_tick.is_some()),
                "lease_reads={lease_reads}: old leader served a read at tick {tick} after the new leader committed at {new_leader_commit_tick:?}"
            );
            if served {
                assert!(lease_reads, "a safe read completed without a quorum");
            }
        }
        assert!(
            new_leader_commit_tick.is_some(),
            "the majority elected a leader and wrote"
        );
        assert_ne!(
            c.node(1).status().role,
            Role::Leader,
            "check-quorum deposed the old leader"
        );
    }
}

/// Thesis 9.6 pre-vote: a node cut off for a long time does not bump its term, so when it comes
/// back the leader is not disrupted.
#[test]
fn pre_vote_keeps_a_returning_node_from_disrupting_the_leader() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.propose(1, "x");
    let term = c.node(1).status().term;
    c.isolate(3);
    c.tick_all(100);
    assert_eq!(
        c.node(3).status().term,
        term,
        "pre-vote failed without bumping the term"
    );
    c.heal();
    c.tick_all(5);
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.node(1).status().term, term);
    c.propose(1, "y");
    assert_eq!(c.applied_data(3), vec!["x", "y"]);
}

/// Thesis 9.6: without pre-vote but with check-quorum, followers that hear from the leader
/// ignore a disruptive candidate's vote requests entirely (their term does not move).
#[test]
fn check_quorum_followers_in_lease_ignore_vote_requests() {
    let mut c = Cluster::new(3, &|c| c.pre_vote = false);
    c.campaign(1);
    c.tick_all(1);
    let term = c.node(2).status().term;
    let mut m = msg(T::RequestVote, 3, 2, term + 5);
    m.index = 100;
    m.log_term = 100;
    c.node(2).step(m).expect("vote request");
    let (msgs, _, _) = drive(c.node(2));
    assert!(
        msgs.is_empty(),
        "ignored, not even rejected: {:?}",
        types(&msgs)
    );
    assert_eq!(c.node(2).status().term, term);
}

/// Thesis 6.2 check-quorum: a leader that hears from no quorum for an election timeout steps
/// down, so a partitioned leader stops taking writes it could never commit.
#[test]
fn check_quorum_leader_steps_down_without_a_quorum() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.isolate(1);
    // The first check-quorum round after the election passes (everyone starts active); the
    // second finds nobody.
    c.tick_all(20);
    assert_ne!(c.node(1).status().role, Role::Leader);
}

/// The follower's lease promise holds in its own term too: a follower that another message
/// moved to a candidate's term (here a stale answer carrying a higher term) still refuses that
/// candidate's vote while the leader's lease may count on it.
#[test]
fn lease_promise_holds_after_a_term_bump_without_a_leader() {
    let mut c = Cluster::new(3, &|c| {
        c.lease_reads = true;
        c.pre_vote = false;
    });
    c.tick_all(10);
    c.campaign(1);
    c.tick_all(1);
    assert!(c.node(1).status().lease_valid);
    let term = c.node(2).status().term;
    c.node(2)
        .step(msg(T::AppendResponse, 3, 2, term + 1))
        .expect("a higher term moves the follower");
    assert_eq!(c.node(2).status().term, term + 1);
    let mut vote = msg(T::RequestVote, 3, 2, term + 1);
    vote.index = 100;
    vote.log_term = term + 1;
    c.node(2).step(vote).expect("vote request");
    let (msgs, _, _) = drive(c.node(2));
    assert_eq!(types(&msgs), vec![T::RequestVoteResponse]);
    assert!(
        msgs[0].reject,
        "vote granted while node 1's lease counts on node 2"
    );
}

/// `campaign()` does nothing on a leader, nor on a follower bound by a lease promise.
#[test]
fn campaign_respects_leadership_and_the_lease_promise() {
    let mut c = Cluster::new(3, &lease);
    c.tick_all(10);
    c.campaign(1);
    c.tick_all(1);
    assert!(
        !c.node(1).campaign().expect("no error"),
        "a leader does not campaign"
    );
    assert!(
        !c.node(2).campaign().expect("no error"),
        "node 2 promised node 1 its lease"
    );
    assert_eq!(c.leader(), Some(1));
    c.isolate(1);
    c.tick_all(10);
    let term = c.node(2).status().term;
    c.node(2).campaign().expect("no error");
    c.settle();
    assert!(c.node(2).status().term > term || c.node(3).status().role == Role::Leader);
}

/// Reads that arrive between two Readies share one heartbeat round (one message per follower,
/// not one per read).
#[test]
fn reads_between_two_readies_share_one_heartbeat_round() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.propose(1, "x");
    for i in 0..10u8 {
        c.node(1).read_index(Bytes::from(vec![i])).expect("read");
    }
    let (msgs, _, _) = drive(c.node(1));
    assert_eq!(types(&msgs), vec![T::Heartbeat, T::Heartbeat]);
    for m in msgs {
        c.node(m.to).step(m).expect("heartbeat");
    }
    c.settle();
    assert_eq!(c.reads[&1].len(), 10);
}
