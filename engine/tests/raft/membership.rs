//! Membership changes (Raft thesis chapter 4): one-step changes of one voter, joint consensus
//! for more, learners, a removed leader stepping down, one change at a time.

use bytes::Bytes;
use flotilla_engine::raft::{
    add_learner, add_voter, remove, ConfChange, ConfChangeError, ConfState, Role,
};

use crate::harness::*;

fn change(changes: Vec<flotilla_engine::raft::ConfChangeSingle>) -> ConfChange {
    ConfChange {
        changes,
        ..ConfChange::default()
    }
}

fn voters(cs: &ConfState) -> Vec<u64> {
    cs.voters.clone()
}

/// Thesis 4.2.1 and 4.2: a new node joins as a learner, catches up without voting, and is then
/// promoted in one step; from then on it counts toward the quorum.
#[test]
fn add_a_learner_then_promote_it() {
    let mut c = Cluster::new(3, &|_| {});
    // Node 4 starts knowing the old membership; it learns the new one from the log.
    c.add_blank(4, &[1, 2, 3], &|_| {});
    c.campaign(1);
    c.propose(1, "before");
    c.node(1)
        .propose_conf_change(&change(vec![add_learner(4)]))
        .expect("add learner");
    c.settle();
    assert_eq!(c.node(1).conf_state().learners, vec![4]);
    c.propose(1, "x");
    assert_eq!(
        c.applied_data(4),
        vec!["before", "x"],
        "the learner received the log"
    );
    assert_eq!(c.node(4).conf_state().learners, vec![4]);
    c.node(1)
        .propose_conf_change(&change(vec![add_voter(4)]))
        .expect("promote");
    c.settle();
    for id in 1..=4 {
        assert_eq!(
            voters(&c.node(id).conf_state()),
            vec![1, 2, 3, 4],
            "node {id}"
        );
    }
    // Four voters: a quorum is three. With 2 and 3 cut off nothing commits.
    c.isolate(2);
    c.isolate(3);
    let before = c.node(1).status().committed;
    c.node(1)
        .propose(Bytes::from_static(b"y"))
        .expect("propose");
    c.settle();
    assert_eq!(c.node(1).status().committed, before);
}

/// Thesis 4.3: replacing a voter changes two voters at once, so the group passes through the
/// joint configuration, where both majorities must agree, and the leader leaves it on its own.
#[test]
fn replace_a_voter_through_joint_consensus() {
    let mut c = three_voters_two_spares();
    c.node(1)
        .propose_conf_change(&change(vec![add_voter(4), remove(3)]))
        .expect("replace 3 by 4");
    // The entering entry commits, takes effect, and the leader's leave entry follows.
    c.settle();
    for id in [1, 2, 4] {
        let cs = c.node(id).conf_state();
        assert_eq!(
            voters(&cs),
            vec![1, 2, 4],
            "node {id} left the joint configuration"
        );
        assert!(cs.voters_outgoing.is_empty(), "node {id}");
    }
    c.isolate(3);
    c.propose(1, "after");
    assert_eq!(c.applied_data(4), vec!["after"]);
}

/// Voters 1-3 led by 1, and processes 4 and 5 that no configuration names yet.
fn three_voters_two_spares() -> Cluster {
    let mut c = Cluster::new(3, &|_| {});
    for id in [4, 5] {
        c.add_blank(id, &[1, 2, 3], &|_| {});
    }
    c.campaign(1);
    c
}

/// Thesis 4.3: while the joint configuration is in force, a decision needs a majority of the old
/// voters and of the new ones. (The entry that enters it commits under the old configuration:
/// a change takes effect when committed, like etcd's, see `Raft::apply_conf_change`.)
#[test]
fn joint_configuration_needs_both_majorities() {
    let joint_change = change(vec![add_voter(4), add_voter(5), remove(2), remove(3)]);
    // Only the new voters reachable: the old configuration cannot commit the change.
    let mut c = three_voters_two_spares();
    c.isolate(2);
    c.isolate(3);
    let (_, index) = c
        .node(1)
        .propose_conf_change(&joint_change)
        .expect("joint change");
    c.settle();
    assert!(c.node(1).status().committed < index);
    assert_eq!(
        voters(&c.node(1).conf_state()),
        vec![1, 2, 3],
        "not in force"
    );

    // Only the old voters reachable: the change commits and the group is joint, but nothing
    // after it commits (leaving included) without a majority of the new voters.
    let mut c = three_voters_two_spares();
    c.isolate(4);
    c.isolate(5);
    let (_, index) = c
        .node(1)
        .propose_conf_change(&joint_change)
        .expect("joint change");
    c.settle();
    assert_eq!(c.node(1).status().committed, index);
    let cs = c.node(1).conf_state();
    assert_eq!(
        (voters(&cs), cs.voters_outgoing.clone()),
        (vec![1, 4, 5], vec![1, 2, 3])
    );
    c.node(1)
        .propose(Bytes::from_static(b"blocked"))
        .expect("propose");
    c.settle();
    assert_eq!(
        c.node(1).status().committed,
        index,
        "no majority of the new voters"
    );
    c.heal();
    c.tick_all(3);
    let cs = c.node(1).conf_state();
    assert_eq!(voters(&cs), vec![1, 4, 5]);
    assert!(
        cs.voters_outgoing.is_empty(),
        "the joint configuration was left"
    );
    assert_eq!(c.applied_data(4), vec!["blocked"]);
}

/// Thesis 4.2.2: a leader removed from the configuration steps down once the change commits,
/// and the remaining voters elect a leader among themselves.
#[test]
fn removed_leader_steps_down() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.node(1)
        .propose_conf_change(&change(vec![remove(1)]))
        .expect("remove the leader");
    c.settle();
    assert_ne!(c.node(1).status().role, Role::Leader);
    assert_eq!(voters(&c.node(2).conf_state()), vec![2, 3]);
    c.tick_all(40);
    let leader = c.leader().expect("a leader among 2 and 3");
    assert_ne!(leader, 1);
    c.propose(leader, "after");
    assert!(!c.applied_data(2).is_empty());
    assert_ne!(
        c.node(1).status().role,
        Role::Leader,
        "a removed node never campaigns"
    );
}

/// One change at a time, and bad changes are refused with a typed error, never a panic.
#[test]
fn bad_or_concurrent_changes_are_refused() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.cut.insert((1, 2));
    c.cut.insert((1, 3));
    let (_, index) = c
        .node(1)
        .propose_conf_change(&change(vec![add_learner(4)]))
        .expect("first change");
    assert_eq!(
        c.node(1).propose_conf_change(&change(vec![add_learner(5)])),
        Err(ConfChangeError::Pending { index })
    );
    c.heal();
    c.settle();
    let n = c.node(1);
    assert_eq!(
        n.propose_conf_change(&change(vec![remove(9)])),
        Err(ConfChangeError::UnknownNode(9))
    );
    assert_eq!(
        n.propose_conf_change(&change(vec![remove(1), remove(2), remove(3)])),
        Err(ConfChangeError::RemovesLastVoter)
    );
    assert_eq!(
        n.propose_conf_change(&change(vec![])),
        Err(ConfChangeError::NotJoint)
    );
    assert_eq!(
        c.node(2).propose_conf_change(&change(vec![add_learner(5)])),
        Err(ConfChangeError::NotLeader { leader: Some(1) })
    );
}

/// A new leader may hold a change of its predecessor that is not applied yet: it proposes no
/// change of its own until that one is applied (thesis 4.1, one at a time).
#[test]
fn new_leader_waits_for_a_predecessors_change() {
    let mut c = Cluster::new(3, &|_| {});
    c.campaign(1);
    c.drop_types
        .insert(flotilla_engine::raft::MessageType::AppendResponse as i32);
    c.node(1)
        .propose_conf_change(&change(vec![add_learner(4)]))
        .expect("change");
    c.settle();
    c.heal();
    c.isolate(1);
    c.tick_all(40);
    let leader = c.leader().expect("a new leader");
    // The new leader committed the change with its own entry; once applied, changes resume.
    assert_eq!(c.node(leader).conf_state().learners, vec![4]);
    c.node(leader)
        .propose_conf_change(&change(vec![remove(4)]))
        .expect("the predecessor's change is applied");
}

/// A leader that inherits a joint configuration (its predecessor died before leaving it)
/// leaves it itself once its own first entry is applied.
#[test]
fn new_leader_leaves_an_inherited_joint_configuration() {
    let mut c = three_voters_two_spares();
    c.node(1)
        .propose_conf_change(&change(vec![add_voter(4), remove(3)]))
        .expect("replace 3 by 4");
    // Leader 1 commits and applies the joint entry, but its leave entry never gets out.
    let (msgs, _, _) = drive(c.node(1));
    for m in msgs {
        let to = m.to;
        c.node(to).step(m).expect("append");
        let (answers, _, _) = drive(c.node(to));
        for a in answers {
            c.node(1).step(a).expect("ack");
        }
    }
    c.isolate(1);
    c.settle();
    assert!(
        !c.node(1).conf_state().voters_outgoing.is_empty(),
        "leader 1 is joint"
    );
    c.tick_all(60);
    let leader = c.leader().expect("a new leader");
    assert_ne!(leader, 1);
    let cs = c.node(leader).conf_state();
    assert_eq!(voters(&cs), vec![1, 2, 4]);
    assert!(
        cs.voters_outgoing.is_empty(),
        "the new leader left the joint configuration"
    );
}

/// A replica that holds a committed membership change it has not applied yet counts votes in
/// an outdated configuration, so it does not campaign until it has (etcd's
/// hasUnappliedConfChanges; without it a TLA+ model finds two leaders in one term).
#[test]
fn no_campaign_with_unapplied_membership_changes() {
    use flotilla_engine::raft::{Entry, EntryType, MessageType as T};
    use prost::Message as _;
    // No check-quorum: the leader's lease must not be what stops the campaign here.
    let mut n = new_node(2, &[1, 2, 3], &[], &|c| {
        c.pre_vote = false;
        c.check_quorum = false;
    });
    let cc = change(vec![add_voter(4)]);
    let mut m = msg(T::Append, 1, 2, 1);
    m.entries = vec![Entry {
        index: 1,
        term: 1,
        entry_type: EntryType::ConfChange as i32,
        data: Bytes::from(cc.encode_to_vec()),
    }];
    m.commit = 1;
    n.step(m).expect("append");
    assert!(
        !n.campaign().expect("no error"),
        "campaigned with a committed, unapplied change"
    );
    drive(&mut n);
    drive(&mut n);
    assert_eq!(voters(&n.conf_state()), vec![1, 2, 3, 4]);
    assert!(n.campaign().expect("no error"), "applied now: may campaign");
}
