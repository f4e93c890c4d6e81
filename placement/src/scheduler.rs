//! The scheduler: which of the policy's operators start now, and what became of those that ran.
//! Pure like the policy (time is passed in): it keeps the operators in flight, the limits per
//! node and per cluster, the cool-down after each range's operator, and the counts reported by
//! `flotilla placement status` and the metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::operator::{Operator, OperatorKind};
use crate::policy::{project, schedule};
use crate::view::{spread, ClusterView};

/// Limits and pacing of the runtime (the `[placement]` section).
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// Operators running at once in the cluster.
    pub max_operators: usize,
    /// Replica operators running at once that touch one node (a snapshot to send or receive
    /// each). Leader transfers move no data: only `max_operators` bounds them.
    pub max_operators_per_node: usize,
    /// An operator not finished by then is abandoned (its range may be left with a learner,
    /// which the next round cleans up).
    pub operator_timeout: Duration,
    /// A range is not moved for balance again within this time after an operator on it.
    pub cooldown: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_operators: 16,
            max_operators_per_node: 4,
            operator_timeout: Duration::from_secs(60),
            cooldown: Duration::from_secs(10),
        }
    }
}

/// How an operator ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed(String),
    TimedOut,
}

#[derive(Clone, Debug)]
struct Running {
    op: Operator,
    started: Duration,
}

/// Counts since this scheduler started (one per placement leadership).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub started: BTreeMap<OperatorKind, u64>,
    pub finished: BTreeMap<OperatorKind, u64>,
    pub failed: BTreeMap<OperatorKind, u64>,
}

/// What `flotilla placement status` shows.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub running: Vec<(Operator, Duration)>,
    pub counts: Counts,
    /// Largest minus smallest replica and leader counts over the target nodes.
    pub replica_spread: usize,
    pub leader_spread: usize,
    pub replicas_per_node: BTreeMap<u64, usize>,
    pub leaders_per_node: BTreeMap<u64, usize>,
    /// The last failures, newest last (at most 16).
    pub recent_failures: Vec<(Operator, String)>,
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    running: BTreeMap<u64, Running>,
    /// When each range's last operator ended.
    ended: BTreeMap<u64, Duration>,
    counts: Counts,
    recent_failures: Vec<(Operator, String)>,
    last_view: Option<(BTreeMap<u64, usize>, BTreeMap<u64, usize>)>,
}

const RECENT_FAILURES: usize = 16;

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            running: BTreeMap::new(),
            ended: BTreeMap::new(),
            counts: Counts::default(),
            recent_failures: Vec::new(),
            last_view: None,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Operators to start now, at time `now`: the policy's, planned against the view with the
    /// running operators' effects counted in, cut to the limits. They count as running until
    /// [`Scheduler::finish`].
    pub fn plan(&mut self, mut view: ClusterView, now: Duration) -> Vec<Operator> {
        self.ended
            .retain(|_, at| now.saturating_sub(*at) < self.config.cooldown);
        for running in self.running.values() {
            project(&mut view, &running.op);
            view.busy.insert(running.op.range_id);
        }
        view.cooling.extend(self.ended.keys().copied());
        self.last_view = Some((view.replica_counts(), view.leader_counts()));
        let mut per_node: BTreeMap<u64, usize> = BTreeMap::new();
        for running in self.running.values() {
            for n in running.op.data_nodes() {
                *per_node.entry(n).or_default() += 1;
            }
        }
        let mut started = Vec::new();
        for op in schedule(&view) {
            if self.running.len() >= self.config.max_operators {
                break;
            }
            let nodes = op.data_nodes();
            let full = nodes.iter().any(|n| {
                per_node.get(n).copied().unwrap_or(0) >= self.config.max_operators_per_node
            });
            if full || self.running.contains_key(&op.range_id) {
                continue;
            }
            for n in nodes {
                *per_node.entry(n).or_default() += 1;
            }
            *self.counts.started.entry(op.kind()).or_default() += 1;
            self.running.insert(
                op.range_id,
                Running {
                    op: op.clone(),
                    started: now,
                },
            );
            started.push(op);
        }
        started
    }

    /// Records how the operator on `range_id` ended.
    pub fn finish(&mut self, range_id: u64, outcome: Outcome, now: Duration) {
        let Some(running) = self.running.remove(&range_id) else {
            return;
        };
        self.ended.insert(range_id, now);
        let kind = running.op.kind();
        match outcome {
            Outcome::Done => *self.counts.finished.entry(kind).or_default() += 1,
            Outcome::Failed(why) => {
                *self.counts.failed.entry(kind).or_default() += 1;
                self.remember_failure(running.op, why);
            }
            Outcome::TimedOut => {
                *self.counts.failed.entry(kind).or_default() += 1;
                self.remember_failure(running.op, "timed out".into());
            }
        }
    }

    fn remember_failure(&mut self, op: Operator, why: String) {
        if self.recent_failures.len() >= RECENT_FAILURES {
            self.recent_failures.remove(0);
        }
        self.recent_failures.push((op, why));
    }

    /// The ranges whose operators ran past the timeout, at `now` (the caller abandons them
    /// and reports them with [`Outcome::TimedOut`]).
    pub fn overdue(&self, now: Duration) -> Vec<u64> {
        self.running
            .iter()
            .filter(|(_, r)| now.saturating_sub(r.started) >= self.config.operator_timeout)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    pub fn status(&self, now: Duration) -> Status {
        let (replicas, leaders) = self.last_view.clone().unwrap_or_default();
        Status {
            running: self
                .running
                .values()
                .map(|r| (r.op.clone(), now.saturating_sub(r.started)))
                .collect(),
            counts: self.counts.clone(),
            replica_spread: spread(&replicas),
            leader_spread: spread(&leaders),
            replicas_per_node: replicas,
            leaders_per_node: leaders,
            recent_failures: self.recent_failures.clone(),
        }
    }
}
