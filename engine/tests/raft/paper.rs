//! The rules of the Raft paper, sections 5.1 to 5.4.

use bytes::Bytes;
use flotilla_engine::raft::{MessageType as T, Role};

use crate::harness::*;

fn no_pre_vote(c: &mut flotilla_engine::raft::Config) {
    c.pre_vote = false;
    c.check_quorum = false;
}

// --- 5.1 Terms -------------------------------------------------------------------------------

/// 5.1: "If a server receives a request with a stale term number, it rejects the request";
/// "if one server's current term is smaller than the other's, it updates its term".
#[test]
fn paper_5_1_higher_term_converts_any_role_to_follower() {
    for start in [Role::Follower, Role::Candidate, Role::Leader] {
        let mut n = new_node(1, &[1, 2, 3], &[], &no_pre_vote);
        match start {
            Role::Follower => {}
            Role::Candidate => assert!(n.campaign().expect("campaign")),
            Role::Leader => {
                n.campaign().expect("campaign");
                drive(&mut n);
                let mut r = msg(T::RequestVoteResponse, 2, 1, 1);
                r.reject = false;
                n.step(r).expect("vote");
            }
            Role::PreCandidate => unreachable!(),
        }
        assert_eq!(n.status().role, start);
        drive(&mut n);
        let mut m = msg(T::Append, 3, 1, 5);
        m.index = 0;
        m.log_term = 0;
        n.step(m).expect("append");
        let s = n.status();
        assert_eq!(
            (s.role, s.term, s.leader_id),
            (Role::Follower, 5, 3),
            "from {start:?}"
        );
    }
}

/// 5.1: a stale-term request is rejected; with check-quorum the stale leader is told our term.
#[test]
fn paper_5_1_stale_term_is_rejected_and_the_sender_learns_the_term() {
    let mut n = node_with_log(1, &[1, 2, 3], &[1, 2], 3, &|_| {});
    let mut m = msg(T::Append, 2, 1, 2);
    m.index = 2;
    m.log_term = 2;
    m.entries = vec![entry(3, 2)];
    n.step(m).expect("stale append is not an error");
    let (msgs, _, _) = drive(&mut n);
    assert_eq!(types(&msgs), vec![T::AppendResponse]);
    assert_eq!(msgs[0].term, 3);
    assert_eq!(n.status().last_index, 2, "stale entries not appended");
}

// --- 5.2 Leader election ---------------------------------------------------------------------

/// 5.2: servers start as followers; after the election timeout a follower becomes a candidate,
/// votes for itself and asks every other server for its vote.
#[test]
fn paper_5_2_follower_times_out_and_requests_votes() {
    let mut n = new_node(1, &[1, 2, 3], &[], &no_pre_vote);
    assert_eq!(n.status().role, Role::Follower);
    for _ in 0..20 {
        n.tick().expect("tick");
    }
    let s = n.status();
    assert_eq!((s.role, s.term, s.vote), (Role::Candidate, 1, 1));
    let (msgs, _, _) = drive(&mut n);
    let mut to: Vec<u64> = msgs.iter().map(|m| m.to).collect();
    to.sort_unstable();
    assert_eq!(to, vec![2, 3]);
    assert!(msgs
        .iter()
        .all(|m| m.msg_type == T::RequestVote as i32 && m.term == 1));
}

/// 5.2: election timeouts are randomized in [et, 2et) so that split votes are rare.
#[test]
fn paper_5_2_election_timeouts_are_randomized() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..50 {
        let mut n = new_node(1, &[1, 2, 3], &[], &|c| {
            no_pre_vote(c);
            c.seed = seed;
        });
        let mut ticks = 0;
        while n.status().role == Role::Follower {
            n.tick().expect("tick");
            ticks += 1;
            assert!(
                ticks < 20,
                "timed out after {ticks} ticks, beyond 2 * election timeout"
            );
        }
        assert!(
            ticks >= 10,
            "timed out after {ticks} ticks, before the election timeout"
        );
        seen.insert(ticks);
    }
    assert!(seen.len() > 3, "timeouts not randomized: {seen:?}");
}

/// 5.2: a candidate wins with a majority, loses when a majority refuses, waits otherwise.
#[test]
fn paper_5_2_election_outcome_by_vote_count() {
    type Case<'a> = (u64, &'a [(u64, bool)], Role);
    let cases: &[Case] = &[
        (3, &[(2, true)], Role::Leader),
        (3, &[(2, false), (3, false)], Role::Follower),
        (3, &[(2, false)], Role::Candidate),
        (5, &[(2, true)], Role::Candidate),
        (5, &[(2, true), (3, true)], Role::Leader),
        (5, &[(2, false), (3, false), (4, false)], Role::Follower),
    ];
    for (size, votes, want) in cases {
        let ids: Vec<u64> = (1..=*size).collect();
        let mut n = new_node(1, &ids, &[], &no_pre_vote);
        n.campaign().expect("campaign");
        drive(&mut n);
        for &(from, granted) in votes.iter() {
            let mut r = msg(T::RequestVoteResponse, from, 1, 1);
            r.reject = !granted;
            n.step(r).expect("vote response");
        }
        assert_eq!(n.status().role, *want, "size {size}, votes {votes:?}");
    }
}

/// 5.2: each server votes for at most one candidate in a term, first come first served.
#[test]
fn paper_5_2_one_vote_per_term() {
    let mut n = new_node(1, &[1, 2, 3], &[], &no_pre_vote);
    let ask = |from| {
        let mut m = msg(T::RequestVote, from, 1, 1);
        m.index = 0;
        m.log_term = 0;
        m
    };
    n.step(ask(2)).expect("vote");
    n.step(ask(3)).expect("vote");
    n.step(ask(2)).expect("repeat");
    let (msgs, _, _) = drive(&mut n);
    let answers: Vec<(u64, bool)> = msgs.iter().map(|m| (m.to, m.reject)).collect();
    assert_eq!(answers, vec![(2, false), (3, true), (2, false)]);
    assert_eq!(n.status().vote, 2);
}

/// 5.2: a candidate that hears from a leader of its term steps down.
#[test]
fn paper_5_2_candidate_steps_down_for_a_leader_of_its_term() {
    let mut n = new_node(1, &[1, 2, 3], &[], &no_pre_vote);
    n.campaign().expect("campaign");
    drive(&mut n);
    assert_eq!(n.status().role, Role::Candidate);
    n.step(msg(T::Heartbeat, 2, 1, 1)).expect("heartbeat");
    let s = n.status();
    assert_eq!((s.role, s.term, s.leader_id), (Role::Follower, 1, 2));
}

/// 5.2: a leader sends heartbeats every heartbeat interval to keep its authority.
#[test]
fn paper_5_2_leader_sends_heartbeats() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    assert_eq!(c.leader(), Some(1));
    c.node(1).tick().expect("tick");
    let (msgs, _, _) = drive(c.node(1));
    let hb: Vec<u64> = msgs
        .iter()
        .filter(|m| m.msg_type == T::Heartbeat as i32)
        .map(|m| m.to)
        .collect();
    assert_eq!(hb, vec![2, 3]);
}

/// 5.2 + TESTING "initial election; re-election after leader loss".
#[test]
fn paper_5_2_reelection_after_leader_loss_and_none_in_a_minority() {
    let mut c = Cluster::new(3, &|_| {});
    c.tick_all(30);
    let first = c.leader().expect("a leader after 30 ticks");
    c.isolate(first);
    c.tick_all(40);
    let leaders: Vec<u64> = c
        .nodes
        .iter()
        .filter(|(&id, n)| id != first && n.status().role == Role::Leader)
        .map(|(&id, _)| id)
        .collect();
    assert_eq!(leaders.len(), 1, "the majority side elects one leader");
    // check-quorum: the isolated leader steps down, and no node in a minority leads.
    assert_ne!(c.node(first).status().role, Role::Leader);
    for id in 1..=3 {
        c.isolate(id);
    }
    c.tick_all(60);
    assert_eq!(c.leader(), None, "nobody leads with every node cut apart");
}

// --- 5.3 Log replication ---------------------------------------------------------------------

/// 5.3: the leader appends the command, replicates it, commits it once a majority has it, and
/// followers learn the commit index from later appends.
#[test]
fn paper_5_3_replicate_commit_and_apply_everywhere() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    let (term, index) = c.propose(1, "x");
    assert_eq!((term, index), (1, 2), "after the leader's empty entry");
    for id in 1..=3 {
        assert_eq!(c.applied_data(id), vec!["x"], "node {id}");
        assert_eq!(c.node(id).status().committed, 2);
    }
}

/// 5.3: a follower missing the previous entry rejects, with a hint that lets the leader skip
/// a whole term of mismatches at once (fast backtracking).
#[test]
fn paper_5_3_consistency_check_rejects_with_a_hint() {
    let mut n = node_with_log(2, &[1, 2, 3], &[1, 1, 2, 2, 2], 2, &|_| {});
    let mut m = msg(T::Append, 1, 2, 4);
    m.index = 7;
    m.log_term = 4;
    n.step(m).expect("append");
    let (msgs, _, _) = drive(&mut n);
    assert_eq!(types(&msgs), vec![T::AppendResponse]);
    let r = &msgs[0];
    assert!(r.reject);
    assert_eq!((r.index, r.reject_hint, r.reject_hint_term), (7, 5, 2));
}

/// 5.3: entries that conflict with the leader's are deleted with everything after them.
#[test]
fn paper_5_3_conflicting_suffix_is_replaced() {
    let mut n = node_with_log(2, &[1, 2, 3], &[1, 1, 2, 2], 2, &|_| {});
    let mut m = msg(T::Append, 1, 2, 3);
    m.index = 2;
    m.log_term = 1;
    m.entries = vec![entry(3, 3)];
    m.commit = 3;
    n.step(m).expect("append");
    let (msgs, mut committed, _) = drive(&mut n);
    assert!(!msgs[0].reject);
    assert_eq!(msgs[0].index, 3);
    assert_eq!(n.status().last_index, 3);
    assert_eq!(n.term_of(3), Ok(3));
    // Entry 3 is applied only once it is durable here, in the next round.
    assert_eq!(
        committed.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![1, 2]
    );
    committed = drive(&mut n).1;
    assert_eq!(
        committed
            .iter()
            .map(|e| (e.index, e.term))
            .collect::<Vec<_>>(),
        vec![(3, 3)]
    );
}

/// 5.3, Figure 7: whatever the followers' logs (missing entries, extra uncommitted entries,
/// both), the leader of term 8 brings each in line with its own.
#[test]
fn paper_5_3_figure_7_leader_repairs_every_follower_log() {
    let leader_log: &[u64] = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [&[u64]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],
        &[1, 1, 1, 4],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        &[1, 1, 1, 4, 4, 4, 4],
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    ];
    for f in followers {
        let voters = [1, 2, 3];
        let mut c = Cluster::new(3, &|_| {});
        c.nodes
            .insert(1, node_with_log(1, &voters, leader_log, 7, &|_| {}));
        c.nodes.insert(2, node_with_log(2, &voters, f, 7, &|_| {}));
        c.nodes
            .insert(3, node_with_log(3, &voters, leader_log, 7, &|_| {}));
        c.campaign(1);
        assert_eq!(c.leader(), Some(1), "follower log {f:?}");
        c.propose(1, "x");
        let last = c.node(1).status().last_index;
        assert_eq!(c.node(2).status().last_index, last, "follower log {f:?}");
        for i in 1..=last {
            assert_eq!(
                c.node(2).term_of(i),
                c.node(1).term_of(i),
                "index {i} of {f:?}"
            );
        }
        assert_eq!(c.node(2).status().committed, last);
    }
}

// --- 5.4 Safety ------------------------------------------------------------------------------

/// 5.4.1: a voter refuses a candidate whose log is less up to date than its own: compare the
/// last terms, then the lengths.
#[test]
fn paper_5_4_1_vote_only_for_an_up_to_date_log() {
    // Voter's log: terms [1, 2, 2] (last term 2, last index 3).
    let cases: &[(u64, u64, bool)] = &[
        (1, 3, false), // older last term, longer log: refused
        (1, 9, false),
        (2, 2, false), // same term, shorter
        (2, 3, true),  // same term, same length
        (2, 4, true),
        (3, 1, true), // newer last term wins even when shorter
    ];
    for &(log_term, index, granted) in cases {
        let mut n = node_with_log(1, &[1, 2, 3], &[1, 2, 2], 2, &no_pre_vote);
        let mut m = msg(T::RequestVote, 2, 1, 3);
        m.log_term = log_term;
        m.index = index;
        n.step(m).expect("vote request");
        let (msgs, _, _) = drive(&mut n);
        assert_eq!(types(&msgs), vec![T::RequestVoteResponse]);
        assert_eq!(
            !msgs[0].reject, granted,
            "candidate last (term {log_term}, index {index})"
        );
    }
}

/// 5.4.2, Figure 8: a leader never commits an entry of an earlier term by counting replicas,
/// only by committing an entry of its own term after it.
#[test]
fn paper_5_4_2_figure_8_no_commit_of_previous_term_by_counting() {
    // Node 1 becomes leader of term 3 holding an entry of term 2 at index 2 that the others lack.
    let voters = [1, 2, 3, 4, 5];
    let mut leader = node_with_log(1, &voters, &[1, 2], 2, &no_pre_vote);
    leader.campaign().expect("campaign");
    drive(&mut leader);
    for from in [2, 3] {
        let mut r = msg(T::RequestVoteResponse, from, 1, 3);
        r.reject = false;
        leader.step(r).expect("vote");
    }
    assert_eq!(leader.status().role, Role::Leader);
    drive(&mut leader); // persists the term-3 empty entry at index 3
                        // Followers 2 and 3 acknowledge up to index 2 only (the term-2 entry): with the leader that
                        // is a majority of 5 holding index 2, but index 2 is from term 2.
    for from in [2, 3] {
        let mut r = msg(T::AppendResponse, from, 1, 3);
        r.index = 2;
        leader.step(r).expect("ack");
    }
    assert_eq!(
        leader.status().committed,
        0,
        "a term-2 entry must not commit by counting"
    );
    // Once a majority holds the term-3 entry, everything up to it commits.
    for from in [2, 3] {
        let mut r = msg(T::AppendResponse, from, 1, 3);
        r.index = 3;
        leader.step(r).expect("ack");
    }
    assert_eq!(leader.status().committed, 3);
}

/// 5.4.2: the leader counts itself only once its own write is durable; the followers may be
/// faster (thesis 10.2.1).
#[test]
fn paper_5_4_leader_counts_itself_only_when_durable() {
    let mut n = new_node(1, &[1, 2, 3], &[], &no_pre_vote);
    n.campaign().expect("campaign");
    drive(&mut n);
    let mut r = msg(T::RequestVoteResponse, 2, 1, 1);
    r.reject = false;
    n.step(r).expect("vote");
    // Take the Ready holding the empty entry but do not report it persisted yet.
    let rd = persist(&mut n);
    assert_eq!(rd.entries.len(), 1);
    assert!(
        rd.messages.iter().any(|m| m.msg_type == T::Append as i32),
        "appends go out at once"
    );
    let mut ack = msg(T::AppendResponse, 2, 1, 1);
    ack.index = 1;
    n.step(ack).expect("ack");
    assert_eq!(
        n.status().committed,
        0,
        "only follower 2 holds index 1 durably"
    );
    n.advance(rd).expect("advance");
    assert_eq!(
        n.status().committed,
        1,
        "leader and follower 2 now make a quorum"
    );
}

/// Learners receive the log but neither vote nor count toward commit (thesis 4.2.1).
#[test]
fn learners_replicate_but_do_not_count() {
    let mut c = Cluster::with_learners(&[1, 2, 3], &[4], &|_| {});
    c.tick_all(40);
    let leader = c.leader().expect("leader");
    assert_ne!(leader, 4);
    c.propose(leader, "x");
    assert_eq!(c.applied_data(4), vec!["x"]);
    // Cut two voters: the learner's acknowledgement must not make a quorum.
    let others: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    for &o in &others {
        c.isolate(o);
    }
    let before = c.node(leader).status().committed;
    c.node(leader)
        .propose(Bytes::from_static(b"y"))
        .expect("propose");
    c.settle();
    assert_eq!(c.node(leader).status().committed, before);
    // A learner never campaigns, however long it waits.
    c.isolate(4);
    c.tick_all(100);
    assert_ne!(c.node(4).status().role, Role::Candidate);
    assert_ne!(c.node(4).status().role, Role::PreCandidate);
    assert_ne!(c.node(4).status().role, Role::Leader);
}

// --- Persistence contract (thesis 10.2.1) ------------------------------------------------------

/// Acknowledgements and votes promise durable data: they wait in `persisted_messages` until the
/// driver has persisted the Ready. Only the leader's own traffic may leave at once.
#[test]
fn acknowledgements_and_votes_wait_for_durability() {
    let mut n = new_node(2, &[1, 2, 3], &[], &no_pre_vote);
    let mut m = msg(T::Append, 1, 2, 1);
    m.entries = vec![entry(1, 1)];
    n.step(m).expect("append");
    let rd = persist(&mut n);
    assert_eq!(rd.entries.len(), 1);
    assert!(
        rd.messages.is_empty(),
        "nothing may leave before the entry is durable"
    );
    assert_eq!(types(&rd.persisted_messages), vec![T::AppendResponse]);
    assert!(rd.must_sync());
    n.advance(rd).expect("advance");

    let mut n = new_node(2, &[1, 2, 3], &[], &no_pre_vote);
    let mut v = msg(T::RequestVote, 3, 2, 1);
    v.index = 0;
    n.step(v).expect("vote");
    let rd = persist(&mut n);
    assert!(rd.messages.is_empty());
    assert_eq!(types(&rd.persisted_messages), vec![T::RequestVoteResponse]);
    assert_eq!(rd.hard_state.map(|h| (h.term, h.vote)), Some((1, 3)));
    assert!(rd.must_sync(), "a vote must be synced before it is sent");
}

/// A follower's ack covers only what it holds: a write racing a term change (the new leader
/// truncates entries whose write is still in flight) must not report the old entries durable
/// (etcd's async_storage_writes_append_aba_race).
#[test]
fn write_racing_a_truncation_does_not_mark_replaced_entries_durable() {
    let mut n = new_node(2, &[1, 2, 3], &[], &no_pre_vote);
    let mut m = msg(T::Append, 1, 2, 1);
    m.entries = vec![entry(1, 1), entry(2, 1)];
    n.step(m).expect("append");
    let rd1 = persist(&mut n);
    // Before rd1 is advanced, a leader of term 2 replaces entry 2.
    let mut m = msg(T::Append, 3, 2, 2);
    m.index = 1;
    m.log_term = 1;
    m.entries = vec![entry(2, 2)];
    n.step(m).expect("append");
    n.advance(rd1).expect("advance");
    assert!(
        n.status().persisted < 2,
        "entry 2 of term 1 was replaced: not durable as is"
    );
    let (msgs, _, _) = drive(&mut n);
    assert_eq!(n.status().persisted, 2);
    assert_eq!(n.term_of(2), Ok(2));
    assert!(msgs.iter().any(|m| m.to == 3 && m.index == 2 && !m.reject));
}

/// TESTING "basic agreement; message counts": each command reaches each follower about once,
/// and an idle group sends a bounded number of messages per tick.
#[test]
fn message_counts_per_command_and_when_idle() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.delivered.clear();
    for i in 0..20 {
        c.propose(1, &format!("cmd{i}"));
    }
    let appends_with_entries = c
        .delivered
        .iter()
        .filter(|m| m.msg_type == T::Append as i32 && !m.entries.is_empty())
        .count();
    assert_eq!(
        appends_with_entries, 40,
        "one append per command per follower"
    );
    c.delivered.clear();
    c.tick_all(10);
    // One heartbeat and one answer per follower per tick.
    assert_eq!(c.delivered.len(), 40, "{:?}", types(&c.delivered));
}

/// A group of one becomes leader within one call. Its appends to a learner carry the new term,
/// so they wait until that term is durable: a crash before the sync must not leave the learner
/// with entries of a term the leader can reuse after restarting.
#[test]
fn new_term_is_durable_before_any_message_of_it_leaves() {
    let mut n = new_node(1, &[1], &[2], &|c| c.pre_vote = false);
    assert!(n.campaign().expect("campaign"));
    assert_eq!(n.status().role, Role::Leader);
    n.propose(Bytes::from_static(b"x")).expect("propose");
    let rd = persist(&mut n);
    assert_eq!(rd.hard_state.map(|h| h.term), Some(1));
    assert!(
        rd.messages.is_empty(),
        "sent before the term was durable: {:?}",
        types(&rd.messages)
    );
    assert!(rd
        .persisted_messages
        .iter()
        .any(|m| m.to == 2 && m.msg_type == T::Append as i32));
    n.advance(rd).expect("advance");
}

/// TESTING "7-node churn" (MIT 6.5840 TestManyElections): random groups of nodes are cut off
/// again and again. After each change, at most one leader per term; whenever a majority is
/// connected, a leader among them within a bounded number of ticks.
#[test]
fn seven_node_churn_elects_one_leader_per_term() {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut c = Cluster::new(7, &|_| {});
    let mut leaders_by_term = std::collections::BTreeMap::new();
    for round in 0..30 {
        c.heal();
        let mut ids: Vec<u64> = (1..=7).collect();
        ids.shuffle(&mut rng);
        let cut = &ids[..3];
        for &id in cut {
            c.isolate(id);
        }
        let mut elected = false;
        for _ in 0..60 {
            c.tick_all(1);
            for (&id, n) in &c.nodes {
                let s = n.status();
                if s.role == Role::Leader {
                    let first = *leaders_by_term.entry(s.term).or_insert(id);
                    assert_eq!(first, id, "round {round}: two leaders in term {}", s.term);
                    elected |= !cut.contains(&id);
                }
            }
            if elected {
                break;
            }
        }
        assert!(
            elected,
            "round {round}: the connected majority {:?} elected nobody",
            &ids[3..]
        );
    }
}

// --- Flow control ----------------------------------------------------------------------------

/// Appends are cut at `max_size_per_msg_bytes` (at least one entry each), and at most
/// `max_inflight_msgs` of them are outstanding to a follower that has not answered.
#[test]
fn appends_are_size_capped_and_the_window_is_bounded() {
    let mut c = Cluster::new(3, &|c| {
        c.max_size_per_msg_bytes = 100;
        c.max_inflight_msgs = 2;
    });
    c.campaign(1);
    c.propose(1, "warm-up"); // both followers now in replicate state
    c.cut.insert((1, 3));
    c.delivered.clear();
    let batch: Vec<Bytes> = (0..10).map(|i| Bytes::from(vec![i as u8; 60])).collect();
    c.node(1).propose_batch(batch).expect("propose");
    let (msgs, _, _) = drive(c.node(1));
    let to_3: Vec<usize> = msgs
        .iter()
        .filter(|m| m.to == 3 && m.msg_type == T::Append as i32)
        .map(|m| m.entries.len())
        .collect();
    // 84 bytes per entry against a 100-byte cap: one entry per message, two in flight.
    assert_eq!(to_3, vec![1, 1], "appends to the silent follower");
    for m in msgs {
        if m.to == 2 {
            c.node(2).step(m).expect("append");
        }
    }
    c.settle();
    assert_eq!(c.node(2).status().last_index, c.node(1).status().last_index);
    assert_eq!(c.node(1).status().committed, c.node(1).status().last_index);
}
