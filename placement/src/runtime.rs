//! The placement task of a node. Every `interval` it checks whether its node leads the meta
//! range; while it does, it builds the [`ClusterView`] from the meta range's routing records
//! (range leaders report their descriptor and leader there), the node records (decommissions)
//! and its transport's liveness (how long each node has been unreachable, timed here), asks the
//! [`Scheduler`] what to start, and executes each operator as a task through the client library
//! (so operators are routed, retried and exactly-once like any write). When the leadership goes,
//! its operators are abandoned: the next leader's placement starts from the records.
//!
//! Execution talks to the cluster only through [`Client`]; what it needs from its own node is
//! the small [`Local`] trait (the node implements it; tests can fake it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_client::{Client, ClientConfig, ClientError, ReplicaChangeKind};
use flotilla_transport::meta::{RangeDescriptor, RangeRecord, ReplicaRole};
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::operator::{Operator, OperatorKind, Step};
use crate::scheduler::{Outcome, Scheduler, SchedulerConfig, Status};
use crate::view::{ClusterView, NodeState, NodeView, PolicyConfig, RangeView, ReplicaView};

/// What placement needs from the node it runs in.
pub trait Local: Send + Sync + 'static {
    /// Whether this node leads the meta range now (asked of the poller that runs it).
    fn leads_meta(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>;
    /// Every range's routing record, from this node's meta replica, in key order.
    ///
    /// # Errors
    /// A message when the records cannot be read.
    fn records(&self) -> Result<Vec<RangeRecord>, String>;
    /// The members this node knows and where they listen.
    fn members(&self) -> BTreeMap<u64, SocketAddr>;
    /// Whether this node's transport reaches `node` now (this node itself: true).
    fn is_up(&self, node: u64) -> bool;
    /// The node states recorded in the meta range (nodes not listed are active).
    ///
    /// # Errors
    /// A message when the records cannot be read.
    fn node_states(&self) -> Result<BTreeMap<u64, NodeState>, String>;
}

/// The `[placement]` section of a node's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacementConfig {
    /// Off: the node never schedules (a cluster balanced by hand).
    pub enabled: bool,
    /// How often the leader of the meta range looks at the cluster.
    pub interval: Duration,
    pub policy: PolicyConfig,
    pub scheduler: SchedulerConfig,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(1),
            policy: PolicyConfig::default(),
            scheduler: SchedulerConfig::default(),
        }
    }
}

impl PlacementConfig {
    /// # Errors
    /// A message naming the field that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval.is_zero() {
            return Err("placement.interval: must be positive".into());
        }
        if self.policy.replicas == 0 {
            return Err("placement.replicas: must be at least 1".into());
        }
        if self.scheduler.max_operators == 0 || self.scheduler.max_operators_per_node == 0 {
            return Err("placement.max-operators(-per-node): must be at least 1".into());
        }
        if self.scheduler.operator_timeout < self.interval {
            return Err("placement.operator-timeout: must be at least one interval".into());
        }
        Ok(())
    }
}

/// What a node's placement shows (`flotilla placement status`).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Whether this node leads the meta range and so runs placement.
    pub active: bool,
    pub status: Status,
    pub nodes: Vec<NodeView>,
    pub ranges: usize,
}

/// The last heartbeat of each node: when, and requests per second by range it leads.
type Heartbeats = Arc<Mutex<BTreeMap<u64, (Instant, BTreeMap<u64, f64>)>>>;

/// A heartbeat older than this many intervals is not trusted for load.
const HEARTBEAT_INTERVALS: u32 = 5;

/// The running placement task of a node.
pub struct Placement {
    snapshot: Arc<Mutex<Snapshot>>,
    heartbeats: Heartbeats,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement").finish_non_exhaustive()
    }
}

impl Placement {
    /// Starts the task (inside a tokio runtime). `client` is the template of the client it
    /// connects when it becomes active (its endpoints are replaced by the members known then).
    pub fn start(config: PlacementConfig, client: ClientConfig, local: Arc<dyn Local>) -> Self {
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let heartbeats: Heartbeats = Arc::default();
        let (stop, stopped) = watch::channel(false);
        let task = config.enabled.then(|| {
            let runner = Runner {
                config,
                client_config: client,
                local,
                snapshot: snapshot.clone(),
                heartbeats: heartbeats.clone(),
                epoch: Instant::now(),
                down_since: BTreeMap::new(),
                scheduler: None,
                client: None,
                tasks: BTreeMap::new(),
                next_generation: 0,
                known: BTreeMap::new(),
                active_since: Instant::now(),
            };
            tokio::spawn(runner.run(stopped))
        });
        Self {
            snapshot,
            heartbeats,
            stop,
            task: Mutex::new(task),
        }
    }

    /// Takes node `node_id`'s heartbeat (requests per second of each range it leads) while
    /// this placement is active; answers whether it was.
    pub fn heartbeat(&self, node_id: u64, loads: BTreeMap<u64, f64>) -> bool {
        if !self.snapshot.lock().active {
            return false;
        }
        self.heartbeats
            .lock()
            .insert(node_id, (Instant::now(), loads));
        true
    }

    /// What placement shows now.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.lock().clone()
    }

    /// Stops the task and abandons its operators.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

struct Runner {
    config: PlacementConfig,
    client_config: ClientConfig,
    local: Arc<dyn Local>,
    snapshot: Arc<Mutex<Snapshot>>,
    heartbeats: Heartbeats,
    epoch: Instant,
    /// When each member was first seen unreachable (since this node started watching).
    down_since: BTreeMap<u64, Instant>,
    /// Present while this node leads the meta range.
    scheduler: Option<Scheduler>,
    client: Option<Client>,
    /// The running operators' tasks by range, with a generation (unique per task).
    tasks: BTreeMap<u64, (u64, tokio::task::JoinHandle<()>)>,
    next_generation: u64,
    /// Each range as placement's last operator on it left it: a routing record older than
    /// that (its leader has not reported yet) is replaced by it in the view, so the counts
    /// include the change, and the range waits (planning on it would redo the change).
    known: BTreeMap<u64, RangeDescriptor>,
    /// When this node's placement last became active.
    active_since: Instant,
}

/// How long a newly active placement waits before its first plan.
const SETTLE: Duration = Duration::from_secs(1);

/// An operator's end: its range, its task's generation, how it ended, and the range as its
/// last step left it.
type Done = (u64, u64, Outcome, Option<RangeDescriptor>);

impl Runner {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Bounded by the operators in flight: each task sends one outcome.
        let (done_tx, mut done_rx) = mpsc::channel::<Done>(1024);
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                Some((range_id, generation, outcome, epoch)) = done_rx.recv() => {
                    // A task abandoned (timed out) may still report: not the range's current
                    // operator, so it changes nothing.
                    if self.tasks.get(&range_id).map(|(g, _)| *g) != Some(generation) {
                        continue;
                    }
                    self.tasks.remove(&range_id);
                    if let Some(descriptor) = epoch {
                        self.known.insert(range_id, descriptor);
                    }
                    let now = self.now();
                    if let Some(s) = self.scheduler.as_mut() {
                        if let Outcome::Failed(why) = &outcome {
                            tracing::info!(range = range_id, reason = %why, "placement operator failed");
                        }
                        s.finish(range_id, outcome, now);
                    }
                }
                _ = tick.tick() => self.round(&done_tx).await,
            }
        }
        self.step_down();
        if let Some(client) = self.client.take() {
            client.close().await;
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn step_down(&mut self) {
        for (_, (_, task)) in std::mem::take(&mut self.tasks) {
            task.abort();
        }
        if self.scheduler.take().is_some() {
            tracing::info!("placement stopped here: this node no longer leads the meta range");
        }
        metrics::gauge!("flotilla_placement_active").set(0.0);
        metrics::gauge!("flotilla_placement_operators_running").set(0.0);
        self.heartbeats.lock().clear();
        let mut snapshot = self.snapshot.lock();
        snapshot.active = false;
        snapshot.status.running.clear();
    }

    async fn round(&mut self, done: &mpsc::Sender<Done>) {
        let members = self.local.members();
        let now_instant = Instant::now();
        for id in members.keys() {
            if self.local.is_up(*id) {
                self.down_since.remove(id);
            } else {
                self.down_since.entry(*id).or_insert(now_instant);
            }
        }
        if !self.local.leads_meta().await {
            if self.scheduler.is_some() {
                self.step_down();
            }
            return;
        }
        if self.scheduler.is_none() {
            tracing::info!("placement active: this node leads the meta range");
            self.scheduler = Some(Scheduler::new(self.config.scheduler.clone()));
            self.active_since = Instant::now();
            self.snapshot.lock().active = true;
            metrics::gauge!("flotilla_placement_active").set(1.0);
        }
        // A new leader's meta replica may still be applying the last records (and the old
        // leader's operators may still be landing): plan once that has settled.
        if self.active_since.elapsed() < SETTLE {
            return;
        }
        let Some(client) = self.connect(&members).await else {
            return;
        };
        let now = self.now();
        let overdue = self
            .scheduler
            .as_ref()
            .map(|s| s.overdue(now))
            .unwrap_or_default();
        for range_id in overdue {
            if let Some((_, task)) = self.tasks.remove(&range_id) {
                task.abort();
            }
            if let Some(s) = self.scheduler.as_mut() {
                s.finish(range_id, Outcome::TimedOut, now);
            }
        }
        let (view, descriptors) = match self.view(&members) {
            Ok(v) => v,
            Err(why) => {
                tracing::warn!(reason = %why, "placement cannot read the meta range");
                return;
            }
        };
        let nodes: Vec<NodeView> = view.nodes.values().cloned().collect();
        let ranges = view.ranges.len();
        let Some(scheduler) = self.scheduler.as_mut() else {
            return;
        };
        let started = scheduler.plan(view, now);
        if !started.is_empty() {
            let status = scheduler.status(now);
            tracing::debug!(replicas = ?status.replicas_per_node, leaders = ?status.leaders_per_node,
                started = ?started.iter().map(ToString::to_string).collect::<Vec<_>>(),
                running = scheduler.running(), "placement round");
        }
        for op in started {
            let Some(descriptor) = descriptors.get(&op.range_id).cloned() else {
                scheduler.finish(op.range_id, Outcome::Failed("range vanished".into()), now);
                continue;
            };
            tracing::info!(operator = %op, "placement operator started");
            metrics::counter!("flotilla_placement_operators_started_total",
                "kind" => op.kind().as_str())
            .increment(1);
            let (client, local, done) = (client.clone(), self.local.clone(), done.clone());
            let range_id = op.range_id;
            self.next_generation += 1;
            let generation = self.next_generation;
            let task = tokio::spawn(async move {
                let kind = op.kind();
                let mut last = None;
                let outcome =
                    match execute(&client, local.as_ref(), &op, &descriptor, &mut last).await {
                        Ok(()) => Outcome::Done,
                        Err(why) => Outcome::Failed(why),
                    };
                record_outcome(kind, &outcome);
                let _ = done.send((op.range_id, generation, outcome, last)).await;
            });
            self.tasks.insert(range_id, (generation, task));
        }
        let status = scheduler.status(now);
        metrics::gauge!("flotilla_placement_operators_running").set(scheduler.running() as f64);
        metrics::gauge!("flotilla_placement_replica_spread").set(status.replica_spread as f64);
        metrics::gauge!("flotilla_placement_leader_spread").set(status.leader_spread as f64);
        *self.snapshot.lock() = Snapshot {
            active: true,
            status,
            nodes,
            ranges,
        };
    }

    /// The client, connected on first use to the members known then.
    async fn connect(&mut self, members: &BTreeMap<u64, SocketAddr>) -> Option<Client> {
        if let Some(c) = &self.client {
            return Some(c.clone());
        }
        let mut config = self.client_config.clone();
        config.endpoints = members.values().copied().collect();
        match Client::connect(config).await {
            Ok(c) => {
                self.client = Some(c.clone());
                Some(c)
            }
            Err(e) => {
                tracing::warn!(error = %e, "placement cannot reach the cluster");
                None
            }
        }
    }

    fn view(
        &mut self,
        members: &BTreeMap<u64, SocketAddr>,
    ) -> Result<(ClusterView, BTreeMap<u64, RangeDescriptor>), String> {
        let states = self.local.node_states()?;
        let records = self.local.records()?;
        let now = Instant::now();
        let nodes: BTreeMap<u64, NodeView> = members
            .keys()
            .map(|id| {
                let down_for = self
                    .down_since
                    .get(id)
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(*t));
                let view = NodeView {
                    id: *id,
                    live: self.local.is_up(*id),
                    down_for,
                    state: states.get(id).copied().unwrap_or_default(),
                };
                (*id, view)
            })
            .collect();
        let mut ranges = Vec::with_capacity(records.len());
        let mut descriptors = BTreeMap::new();
        let mut busy = std::collections::BTreeSet::new();
        let fresh = self.config.interval * HEARTBEAT_INTERVALS;
        let heartbeats = self.heartbeats.lock().clone();
        let qps_of = |range_id: u64, leader: u64| {
            heartbeats
                .get(&leader)
                .filter(|(at, _)| at.elapsed() < fresh)
                .and_then(|(_, loads)| loads.get(&range_id).copied())
                .unwrap_or(0.0)
        };
        for record in records {
            let Some(mut d) = record.descriptor else {
                continue;
            };
            if descriptors.contains_key(&d.id) {
                // Two records of one range (a split's old key not yet replaced): the first,
                // in key order, is the one its start key routes to.
                continue;
            }
            let epoch_of =
                |d: &RangeDescriptor| d.epoch.map_or((0, 0), |e| (e.version, e.conf_ver));
            let mut leader_node = record.leader_node;
            let stand_in = self
                .known
                .get(&d.id)
                .filter(|known| epoch_of(&d) < epoch_of(known))
                .cloned();
            match stand_in {
                Some(known) => {
                    d = known;
                    busy.insert(d.id);
                    if !d.replicas.iter().any(|r| r.node_id == leader_node) {
                        leader_node = 0;
                    }
                }
                // The record caught up: it needs no stand-in any more.
                None => {
                    self.known.remove(&d.id);
                }
            }
            // A leader on a node that is down is no leader: the range is re-electing.
            let leader =
                Some(leader_node).filter(|n| *n != 0 && nodes.get(n).is_some_and(|v| v.live));
            ranges.push(RangeView {
                id: d.id,
                replicas: d
                    .replicas
                    .iter()
                    .map(|r| ReplicaView {
                        node: r.node_id,
                        voter: r.role == ReplicaRole::Voter as i32,
                    })
                    .collect(),
                leader,
                // The meta range never splits.
                qps: leader
                    .filter(|_| d.id != META_RANGE)
                    .map_or(0.0, |l| qps_of(d.id, l)),
            });
            descriptors.insert(d.id, d);
        }
        // The meta range is repaired but never moved for balance: moving its leadership moves
        // placement itself, and the new leader starts without this one's memory.
        let cooling = [META_RANGE].into_iter().collect();
        let view = ClusterView {
            nodes,
            ranges,
            busy,
            cooling,
            config: self.config.policy.clone(),
        };
        Ok((view, descriptors))
    }
}

fn record_outcome(kind: OperatorKind, outcome: &Outcome) {
    let name = match outcome {
        Outcome::Done => "flotilla_placement_operators_finished_total",
        Outcome::Failed(_) | Outcome::TimedOut => "flotilla_placement_operators_failed_total",
    };
    metrics::counter!(name, "kind" => kind.as_str()).increment(1);
}

/// The meta range's id.
const META_RANGE: u64 = 1;

/// How long a step waits for the routing records to show a leader transfer done.
const TRANSFER_WAIT: Duration = Duration::from_secs(5);

/// Runs the steps of `op` on `range`; each is retried while the error says it may pass
/// (a learner still catching up, an election); the scheduler's timeout bounds the whole.
async fn execute(
    client: &Client,
    local: &dyn Local,
    op: &Operator,
    range: &RangeDescriptor,
    last: &mut Option<RangeDescriptor>,
) -> Result<(), String> {
    for step in op.steps() {
        let mut backoff = Duration::from_millis(50);
        loop {
            match run_step(client, local, range, step).await {
                Ok(d) => {
                    if d.is_some() {
                        *last = d;
                    }
                    break;
                }
                Err(e) if e.is_retryable() => {
                    tracing::debug!(range = range.id, ?step, error = %e, "placement step retried");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(format!("{step:?}: {e}")),
            }
        }
    }
    Ok(())
}

/// One step; answers the range's descriptor after it when the step changed replicas.
async fn run_step(
    client: &Client,
    local: &dyn Local,
    range: &RangeDescriptor,
    step: Step,
) -> Result<Option<RangeDescriptor>, ClientError> {
    let changed = |r: Result<RangeDescriptor, ClientError>| r.map(Some);
    match step {
        Step::TransferLeader { to } => {
            client.transfer_leader_of(range, to).await?;
            // The transfer is started, not done: done when the range's leader reports in.
            let deadline = Instant::now() + TRANSFER_WAIT;
            while Instant::now() < deadline {
                let moved = local.records().ok().is_some_and(|records| {
                    records.iter().any(|r| {
                        r.leader_node == to
                            && r.descriptor.as_ref().is_some_and(|d| d.id == range.id)
                    })
                });
                if moved {
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(ClientError::Refused {
                code: flotilla_client::ErrorCode::NotReady,
                message: format!("the leadership did not reach node {to}"),
            })
        }
        Step::AddLearner { node } => {
            match client
                .change_replicas_of(range, &[(ReplicaChangeKind::AddLearner, node)])
                .await
            {
                // Further along already (an earlier attempt's answer was lost): the next step
                // finds its own change in effect.
                Err(ClientError::Refused { message, .. })
                    if message.contains("cannot add a learner: a voter exists") =>
                {
                    Ok(None)
                }
                other => changed(other),
            }
        }
        Step::Promote { node } => changed(
            client
                .change_replicas_of(range, &[(ReplicaChangeKind::Promote, node)])
                .await,
        ),
        Step::Replace { add, remove } => {
            changed(client.replace_replica_of(range, remove, add).await)
        }
        Step::Remove { node } => changed(client.remove_replica_of(range, node).await),
        Step::Split => client
            .split_in_middle_of(range)
            .await
            .map(|(left, _)| Some(left)),
    }
}

/// Describes placement's metrics and starts their series at 0 (every node exports them;
/// `flotilla_placement_active` says which one runs placement).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "flotilla_placement_active",
        "1 on the node running placement (the meta range's leader), else 0"
    );
    describe_gauge!(
        "flotilla_placement_operators_running",
        "Placement operators in flight"
    );
    describe_counter!(
        "flotilla_placement_operators_started_total",
        "Placement operators started, by kind"
    );
    describe_counter!(
        "flotilla_placement_operators_finished_total",
        "Placement operators that completed, by kind"
    );
    describe_counter!(
        "flotilla_placement_operators_failed_total",
        "Placement operators that failed or timed out, by kind"
    );
    describe_gauge!(
        "flotilla_placement_replica_spread",
        "Replicas on the fullest target node minus on the emptiest (placement's node only)"
    );
    describe_gauge!(
        "flotilla_placement_leader_spread",
        "Leaders on the busiest target node minus on the least busy (placement's node only)"
    );
    metrics::gauge!("flotilla_placement_active").set(0.0);
    metrics::gauge!("flotilla_placement_operators_running").set(0.0);
    metrics::gauge!("flotilla_placement_replica_spread").set(0.0);
    metrics::gauge!("flotilla_placement_leader_spread").set(0.0);
    for kind in crate::OperatorKind::ALL {
        for name in [
            "flotilla_placement_operators_started_total",
            "flotilla_placement_operators_finished_total",
            "flotilla_placement_operators_failed_total",
        ] {
            metrics::counter!(name, "kind" => kind.as_str()).absolute(0);
        }
    }
}
