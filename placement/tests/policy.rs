//! The policy and the scheduler on their own: hand-made views for each goal, and property tests
//! that play schedules out to the end (every operator done at once, as the runtime would see
//! it) and check where they end: repaired, balanced within +-1, and stopped (no operator
//! returned for a converged view, so nothing oscillates).

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_placement::view::spread;
use flotilla_placement::{
    project, schedule, Action, ClusterView, NodeState, NodeView, Outcome, PolicyConfig, RangeView,
    Reason, ReplicaView, Scheduler, SchedulerConfig,
};
use proptest::prelude::*;

fn range(id: u64, nodes: &[u64], leader: u64) -> RangeView {
    RangeView {
        id,
        replicas: nodes
            .iter()
            .map(|&node| ReplicaView { node, voter: true })
            .collect(),
        leader: Some(leader),
        qps: 0.0,
    }
}

fn view(nodes: &[u64], ranges: Vec<RangeView>) -> ClusterView {
    ClusterView {
        nodes: nodes.iter().map(|&n| (n, NodeView::live(n))).collect(),
        ranges,
        config: PolicyConfig {
            down_time: Duration::from_secs(30),
            ..PolicyConfig::default()
        },
        ..ClusterView::default()
    }
}

/// Plays the schedule out: every operator of a round done before the next. Returns the
/// operators issued, or panics if it does not stop within `rounds`.
fn converge(view: &mut ClusterView, rounds: usize) -> Vec<flotilla_placement::Operator> {
    let mut all = Vec::new();
    for _ in 0..rounds {
        let ops = schedule(view);
        if ops.is_empty() {
            return all;
        }
        for op in &ops {
            project(view, op);
        }
        all.extend(ops);
    }
    panic!("the schedule did not stop within {rounds} rounds");
}

#[test]
fn all_leaders_on_one_node_are_spread_within_one() {
    let ranges = (1..=300).map(|id| range(id, &[1, 2, 3], 1)).collect();
    let mut v = view(&[1, 2, 3], ranges);
    let ops = converge(&mut v, 100);
    assert!(ops.iter().all(|o| o.reason == Reason::LeaderBalance));
    assert_eq!(
        ops.len(),
        200,
        "100 leaderships each to nodes 2 and 3, no more"
    );
    assert_eq!(
        v.leader_counts().values().copied().collect::<Vec<_>>(),
        vec![100; 3]
    );
}

#[test]
fn a_node_down_within_down_time_moves_nothing() {
    let ranges = (1..=30).map(|id| range(id, &[1, 2, 3], 2)).collect();
    let mut v = view(&[1, 2, 3, 4], ranges);
    v.nodes.insert(
        3,
        NodeView {
            live: false,
            down_for: Duration::from_secs(29),
            ..NodeView::live(3)
        },
    );
    let ops = schedule(&v);
    // Node 4 is empty, so replicas balance onto it, but none is taken from node 3 for being
    // down: balance moves come from the fullest target nodes only.
    assert!(ops
        .iter()
        .all(|o| o.reason == Reason::ReplicaBalance || o.reason == Reason::LeaderBalance));
    assert!(ops
        .iter()
        .all(|o| !matches!(o.action, Action::MoveReplica { from: 3, .. })));
}

#[test]
fn a_node_down_past_down_time_has_every_replica_recreated() {
    let ranges = (1..=40)
        .map(|id| range(id, &[1, 2, 3], 1 + id % 2))
        .collect();
    let mut v = view(&[1, 2, 3, 4, 5], ranges);
    v.nodes.insert(
        3,
        NodeView {
            live: false,
            down_for: Duration::from_secs(31),
            ..NodeView::live(3)
        },
    );
    let first = schedule(&v);
    assert_eq!(first.len(), 40, "every range repairs in the first round");
    assert!(first.iter().all(|o| o.reason == Reason::NodeDown
        && matches!(o.action, Action::MoveReplica { from: 3, to } if to == 4 || to == 5)));
    converge(&mut v, 100);
    assert!(v.ranges.iter().all(|r| !r.has_replica_on(3)));
    assert!(spread(&v.replica_counts()) <= 1);
}

#[test]
fn a_decommissioning_node_hands_its_leaderships_away_then_empties() {
    let ranges = (1..=20).map(|id| range(id, &[1, 2, 3], 3)).collect();
    let mut v = view(&[1, 2, 3, 4], ranges);
    v.nodes.get_mut(&3).expect("node 3").state = NodeState::Decommissioning;
    let first = schedule(&v);
    assert!(first
        .iter()
        .all(|o| matches!(o.action, Action::TransferLeader { from: 3, .. })));
    converge(&mut v, 100);
    assert!(v.ranges.iter().all(|r| !r.has_replica_on(3)));
    assert_eq!(v.replica_counts().get(&3), None, "not a target");
}

#[test]
fn stray_learners_are_promoted_when_needed_else_removed() {
    let mut short = range(1, &[1, 2], 1);
    short.replicas.push(ReplicaView {
        node: 3,
        voter: false,
    });
    let mut full = range(2, &[1, 2, 3], 1);
    full.replicas.push(ReplicaView {
        node: 4,
        voter: false,
    });
    let v = view(&[1, 2, 3, 4], vec![short, full]);
    let ops = schedule(&v);
    assert!(ops.contains(&flotilla_placement::Operator {
        range_id: 1,
        action: Action::PromoteLearner { node: 3 },
        reason: Reason::ReplicaCount
    }));
    assert!(ops.contains(&flotilla_placement::Operator {
        range_id: 2,
        action: Action::RemoveReplica { node: 4 },
        reason: Reason::ReplicaCount
    }));
}

#[test]
fn busy_ranges_are_left_alone_and_cooling_ranges_only_repaired() {
    let ranges = (1..=4).map(|id| range(id, &[1, 2, 3], 1)).collect();
    let mut v = view(&[1, 2, 3], ranges);
    v.busy.extend([1, 2]);
    v.cooling.extend([3, 4]);
    assert!(schedule(&v).is_empty());
}

#[test]
fn load_splits_ranges_past_the_threshold() {
    let mut hot = range(1, &[1, 2, 3], 1);
    hot.qps = 5_000.0;
    let mut v = view(&[1, 2, 3], vec![hot, range(2, &[1, 2, 3], 2)]);
    v.config.split_qps = 1_000.0;
    let ops = schedule(&v);
    assert!(ops
        .iter()
        .any(|o| o.range_id == 1 && o.action == Action::Split));
    assert!(!ops
        .iter()
        .any(|o| o.range_id == 2 && o.action == Action::Split));
}

#[test]
fn the_scheduler_keeps_its_limits_cools_down_and_times_out() {
    let ranges = (1..=300).map(|id| range(id, &[1, 2, 3], 1)).collect();
    let v = view(&[1, 2, 3], ranges);
    let mut s = Scheduler::new(SchedulerConfig {
        max_operators: 16,
        max_operators_per_node: 6,
        operator_timeout: Duration::from_secs(5),
        cooldown: Duration::from_secs(10),
    });
    let t0 = Duration::from_secs(1);
    // Leader transfers move no data: only the cluster's limit binds them.
    let first = s.plan(v.clone(), t0);
    assert_eq!(first.len(), 16);
    assert!(
        s.plan(v.clone(), t0).is_empty(),
        "the cluster is at its limit"
    );
    for op in &first[..3] {
        s.finish(op.range_id, Outcome::Done, t0);
    }
    let second = s.plan(v.clone(), t0);
    assert_eq!(second.len(), 3);
    // Finished ranges cool down: not picked again for balance until the cool-down passes.
    assert!(second
        .iter()
        .all(|o| first[..3].iter().all(|f| f.range_id != o.range_id)));
    assert_eq!(s.overdue(t0 + Duration::from_secs(4)), Vec::<u64>::new());
    assert_eq!(s.overdue(t0 + Duration::from_secs(5)).len(), 16);
    assert_eq!(s.counts().started.values().sum::<u64>(), 19);
}

#[test]
fn replica_moves_keep_the_per_node_limit() {
    // Node 4 is empty: every move goes to it, so its limit binds.
    let ranges = (1..=60)
        .map(|id| range(id, &[1, 2, 3], 1 + id % 3))
        .collect();
    let v = view(&[1, 2, 3, 4], ranges);
    let mut s = Scheduler::new(SchedulerConfig {
        max_operators: 32,
        max_operators_per_node: 4,
        operator_timeout: Duration::from_secs(5),
        cooldown: Duration::from_secs(10),
    });
    let started = s.plan(v, Duration::ZERO);
    let moves = started
        .iter()
        .filter(|o| matches!(o.action, Action::MoveReplica { to: 4, .. }))
        .count();
    assert_eq!(moves, 4, "{started:?}");
}

/// A random cluster: 3-7 nodes, each range on 3 distinct nodes led by one of them; up to one
/// node down past down-time and up to `nodes - 4` decommissioning (so 3 targets remain).
fn arb_view() -> impl Strategy<Value = ClusterView> {
    (3u64..=7, 1usize..=60, any::<u64>()).prop_map(|(n, count, seed)| {
        let mut rng = seed;
        let mut next = move |m: u64| {
            rng = rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (rng >> 33) % m
        };
        let nodes: Vec<u64> = (1..=n).collect();
        let mut ranges = Vec::new();
        for id in 1..=count as u64 {
            let mut chosen = Vec::new();
            while chosen.len() < 3 {
                let c = 1 + next(n);
                if !chosen.contains(&c) {
                    chosen.push(c);
                }
            }
            let leader = chosen[next(3) as usize];
            ranges.push(range(id, &chosen, leader));
        }
        let mut v = view(&nodes, ranges);
        if n >= 4 && next(2) == 0 {
            let dead = 1 + next(n);
            v.nodes.insert(
                dead,
                NodeView {
                    live: false,
                    down_for: Duration::from_secs(60),
                    ..NodeView::live(dead)
                },
            );
            for r in &mut v.ranges {
                if r.leader == Some(dead) {
                    let next = r.voters().find(|x| *x != dead);
                    r.leader = next;
                }
            }
        }
        let targets = v.nodes.values().filter(|x| x.live).count() as u64;
        for _ in 0..next(targets.saturating_sub(2)) {
            let d = 1 + next(n);
            if let Some(node) = v.nodes.get_mut(&d).filter(|x| x.live) {
                node.state = NodeState::Decommissioning;
            }
        }
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn schedules_end_repaired_and_balanced(mut v in arb_view()) {
        let targets: Vec<u64> = v.nodes.keys().copied().filter(|n| v.is_target(*n)).collect();
        prop_assume!(targets.len() >= 3);
        let ranges = v.ranges.len();
        converge(&mut v, 20 * ranges + 20);
        for r in &v.ranges {
            let voters: Vec<u64> = r.voters().collect();
            prop_assert_eq!(voters.len(), 3, "range {} has voters {:?}", r.id, voters);
            prop_assert!(voters.iter().all(|n| v.is_target(*n)), "range {} on {:?}", r.id, voters);
            prop_assert!(r.replicas.iter().all(|x| x.voter));
            prop_assert!(r.leader.is_some_and(|l| voters.contains(&l)));
        }
        prop_assert!(spread(&v.replica_counts()) <= 1, "replicas {:?}", v.replica_counts());
        if targets.len() == 3 {
            prop_assert!(spread(&v.leader_counts()) <= 1, "leaders {:?}", v.leader_counts());
        }
    }

    #[test]
    fn every_balancing_operator_lowers_the_sum_of_squares(mut v in arb_view()) {
        // Only balance: nothing to repair.
        for node in v.nodes.values_mut() {
            node.live = true;
            node.down_for = Duration::ZERO;
            node.state = NodeState::Active;
        }
        let squares = |c: &BTreeMap<u64, usize>| c.values().map(|x| x * x).sum::<usize>();
        for op in schedule(&v) {
            let before = (squares(&v.replica_counts()), squares(&v.leader_counts()));
            project(&mut v, &op);
            let after = (squares(&v.replica_counts()), squares(&v.leader_counts()));
            match op.reason {
                Reason::ReplicaBalance => prop_assert!(after.0 + 2 <= before.0, "{}", op),
                Reason::LeaderBalance => prop_assert!(after.1 + 2 <= before.1, "{}", op),
                _ => prop_assert!(false, "a repair in a healthy cluster: {}", op),
            }
        }
    }
}
