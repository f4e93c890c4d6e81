//! Input from peers is untrusted: malformed or out-of-range messages are refused with a reason,
//! never a panic, and never change the replica's durable state.

use bytes::Bytes;
use flotilla_engine::raft::{Error, Message, MessageType as T, Role};
use proptest::prelude::*;

use crate::harness::*;

fn leader_of_three() -> flotilla_engine::raft::RawNode<flotilla_engine::raft::MemStorage> {
    let mut n = new_node(1, &[1, 2, 3], &[], &|c| c.pre_vote = false);
    n.campaign().expect("campaign");
    drive(&mut n);
    let mut r = msg(T::RequestVoteResponse, 2, 1, 1);
    r.reject = false;
    n.step(r).expect("vote");
    drive(&mut n);
    assert_eq!(n.status().role, Role::Leader);
    n
}

#[test]
fn malformed_messages_are_refused_with_a_reason() {
    let mut bad: Vec<(&str, Message)> = Vec::new();
    let mut m = msg(T::Append, 2, 1, 1);
    m.msg_type = 99;
    bad.push(("unknown type", m));
    bad.push(("wrong recipient", msg(T::Heartbeat, 2, 7, 1)));
    bad.push(("sender 0", msg(T::Heartbeat, 0, 1, 1)));
    bad.push(("term 0", msg(T::Heartbeat, 2, 1, 0)));
    for (what, m) in bad {
        let mut n = new_node(1, &[1, 2, 3], &[], &|_| {});
        match n.step(m) {
            Err(Error::InvalidMessage(reason)) => assert!(!reason.is_empty(), "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn appends_with_broken_entries_are_refused() {
    let cases: Vec<(&str, Vec<flotilla_engine::raft::Entry>, u64)> = vec![
        ("gap", vec![entry(1, 1), entry(3, 1)], 0),
        ("entry term above message term", vec![entry(1, 9)], 0),
        ("terms going backwards", vec![entry(1, 2), entry(2, 1)], 0),
        ("index overflow", vec![entry(u64::MAX, 1)], u64::MAX),
    ];
    for (what, entries, prev) in cases {
        let mut n = new_node(1, &[1, 2, 3], &[], &|_| {});
        let mut m = msg(T::Append, 2, 1, 2);
        m.index = prev;
        m.entries = entries;
        assert!(matches!(n.step(m), Err(Error::InvalidMessage(_))), "{what}");
        assert_eq!(n.status().last_index, 0, "{what}: nothing appended");
    }
}

#[test]
fn leader_refuses_acks_past_its_log_and_strangers() {
    let mut n = leader_of_three();
    let mut ack = msg(T::AppendResponse, 2, 1, 1);
    ack.index = 1_000;
    assert!(matches!(n.step(ack), Err(Error::InvalidMessage(_))));
    let mut stranger = msg(T::AppendResponse, 9, 1, 1);
    stranger.index = 1;
    assert!(matches!(n.step(stranger), Err(Error::InvalidMessage(_))));
    assert_eq!(n.status().committed, 0);
    // A huge rejection hint is clamped, not followed off the end of the log.
    let mut reject = msg(T::AppendResponse, 2, 1, 1);
    reject.reject = true;
    reject.index = 0;
    reject.reject_hint = u64::MAX;
    reject.reject_hint_term = u64::MAX;
    n.step(reject).expect("a rejection is ordinary traffic");
}

#[test]
fn follower_refuses_timeout_now_and_read_answers_from_non_leaders() {
    let mut n = new_node(1, &[1, 2, 3], &[], &|_| {});
    n.step(msg(T::Heartbeat, 2, 1, 1)).expect("heartbeat");
    assert!(matches!(
        n.step(msg(T::TimeoutNow, 3, 1, 1)),
        Err(Error::InvalidMessage(_))
    ));
    let mut r = msg(T::ReadIndexResponse, 3, 1, 1);
    r.context = Bytes::from_static(b"x");
    assert!(matches!(n.step(r), Err(Error::InvalidMessage(_))));
    assert_eq!(n.status().role, Role::Follower);
}

fn any_message() -> impl Strategy<Value = Message> {
    (
        0i32..14,
        0u64..5,
        0u64..5,
        0u64..6,
        0u64..8,
        0u64..8,
        proptest::collection::vec((0u64..10, 0u64..6), 0..4),
        0u64..10,
        any::<bool>(),
        0u64..10,
        0u64..6,
    )
        .prop_map(
            |(t, from, to, term, log_term, index, entries, commit, reject, hint, hint_term)| {
                Message {
                    msg_type: t,
                    from,
                    to,
                    term,
                    log_term,
                    index,
                    entries: entries.into_iter().map(|(i, t)| entry(i, t)).collect(),
                    commit,
                    reject,
                    reject_hint: hint,
                    reject_hint_term: hint_term,
                    ..Message::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary message sequences never panic, and term and commit never go backwards.
    #[test]
    fn random_messages_never_panic_or_move_state_backwards(
        msgs in proptest::collection::vec(any_message(), 1..40),
        leader in any::<bool>(),
    ) {
        let mut n = if leader { leader_of_three() } else { new_node(1, &[1, 2, 3], &[], &|_| {}) };
        let (mut term, mut commit) = (n.status().term, n.status().committed);
        for m in msgs {
            let _ = n.step(m);
            n.tick().expect("tick");
            drive(&mut n);
            let s = n.status();
            prop_assert!(s.term >= term);
            prop_assert!(s.committed >= commit);
            prop_assert!(s.committed <= s.last_index);
            term = s.term;
            commit = s.committed;
        }
    }
}

/// A store that starts failing on demand, like a disk that dies.
struct FailingStore {
    inner: flotilla_engine::raft::MemStorage,
    failing: std::rc::Rc<std::cell::Cell<bool>>,
}

impl FailingStore {
    fn check(&self) -> Result<(), flotilla_engine::raft::StorageError> {
        if self.failing.get() {
            Err(flotilla_engine::raft::StorageError::Io(
                "injected disk failure".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl flotilla_engine::raft::LogStore for FailingStore {
    fn initial_state(
        &self,
    ) -> Result<flotilla_engine::raft::InitialState, flotilla_engine::raft::StorageError> {
        self.check()?;
        self.inner.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max: u64,
    ) -> Result<Vec<flotilla_engine::raft::Entry>, flotilla_engine::raft::StorageError> {
        self.check()?;
        self.inner.entries(low, high, max)
    }
    fn term(&self, index: u64) -> Result<u64, flotilla_engine::raft::StorageError> {
        self.check()?;
        self.inner.term(index)
    }
    fn first_index(&self) -> Result<u64, flotilla_engine::raft::StorageError> {
        self.check()?;
        self.inner.first_index()
    }
    fn last_index(&self) -> Result<u64, flotilla_engine::raft::StorageError> {
        self.check()?;
        self.inner.last_index()
    }
    fn snapshot_metadata(
        &self,
    ) -> Result<flotilla_engine::raft::SnapshotMetadata, flotilla_engine::raft::StorageError> {
        self.check()?;
        self.inner.snapshot_metadata()
    }
    fn compact(
        &mut self,
        snapshot: &flotilla_engine::raft::SnapshotMetadata,
    ) -> Result<(), flotilla_engine::raft::StorageError> {
        self.check()?;
        self.inner.compact(snapshot)
    }
}

/// A failing disk halts the replica for good (fail-stop): every later call reports it, none
/// panics, and nothing more leaves in a Ready.
#[test]
fn storage_failure_halts_the_replica() {
    use flotilla_engine::raft::{ProposeError, RawNode};
    let failing = std::rc::Rc::new(std::cell::Cell::new(false));
    let mut store = flotilla_engine::raft::MemStorage::new_with_conf(&[1, 2, 3], &[]);
    store
        .append(&[entry(1, 1), entry(2, 1)])
        .expect("fresh log");
    let store = FailingStore {
        inner: store,
        failing: failing.clone(),
    };
    let mut n = RawNode::new(config(1), store).expect("healthy at start");
    failing.set(true);
    let mut m = msg(T::Append, 2, 1, 1);
    m.index = 2;
    m.log_term = 1;
    assert!(matches!(n.step(m), Err(Error::Storage(_))));
    assert!(matches!(n.tick(), Err(Error::Storage(_))));
    assert!(matches!(
        n.propose(Bytes::from_static(b"x")),
        Err(ProposeError::Halted(_))
    ));
    assert!(!n.has_ready());
    failing.set(false);
    assert!(
        matches!(n.tick(), Err(Error::Storage(_))),
        "halted for good"
    );
}

/// A peer claiming the last possible term is refused: accepting it would leave the replica
/// unable to ever campaign again (and `term + 1` would overflow).
#[test]
fn exhausted_terms_are_refused() {
    let mut n = new_node(1, &[1, 2, 3], &[], &|_| {});
    assert!(matches!(
        n.step(msg(T::Heartbeat, 2, 1, u64::MAX)),
        Err(Error::InvalidMessage(_))
    ));
    assert!(matches!(
        n.step(msg(T::RequestVote, 2, 1, u64::MAX - 1)),
        Err(Error::InvalidMessage(_))
    ));
    assert_eq!(n.status().term, 0);
    assert!(n.campaign().expect("campaign"));
}

/// `forget_leader` (node liveness says the leader's node is down): a follower that heard from
/// the leader a moment ago refuses to campaign and refuses pre-votes; once both followers
/// forget the leader, one campaign elects at once, with no election timeout waited out.
/// Refused with lease reads, whose safety rests on that refusal.
#[test]
fn forgetting_a_dead_leader_lets_the_group_elect_at_once() {
    let mut c = Cluster::new(3, &|cfg| {
        cfg.pre_vote = true;
        cfg.check_quorum = true;
    });
    c.tick_all(40);
    let leader = c.leader().expect("a leader");
    let (a, b) = match leader {
        1 => (2, 3),
        2 => (1, 3),
        _ => (1, 2),
    };
    c.isolate(leader);
    // Fresh contact with the leader: no campaign.
    assert!(
        !c.node(a).campaign().expect("campaign"),
        "in the leader's lease"
    );
    assert!(c.node(a).forget_leader());
    assert!(c.node(a).campaign().expect("campaign"), "forgot the leader");
    c.settle();
    // The other follower still honours the old leader: the pre-vote fails.
    assert_ne!(c.node(a).status().role, Role::Leader);
    assert!(c.node(b).forget_leader());
    c.campaign(a);
    assert_eq!(c.node(a).status().role, Role::Leader);
    assert_eq!(c.node(b).status().leader_id, a);

    let mut leased = Cluster::new(3, &|cfg| {
        cfg.check_quorum = true;
        cfg.lease_reads = true;
    });
    leased.tick_all(40);
    let leader = leased.leader().expect("a leader");
    let follower = if leader == 1 { 2 } else { 1 };
    assert!(
        !leased.node(follower).forget_leader(),
        "lease reads forbid it"
    );
    assert!(
        !leased.node(leader).forget_leader(),
        "a leader has nothing to forget"
    );
}
