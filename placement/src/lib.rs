//! Placement (DESIGN section 10): where replicas and leaderships of the ranges should be, and
//! the moves that get them there. It runs inside every node and is active only on the node
//! that leads the meta range, so it needs no service of its own and moves with that
//! leadership.
//!
//! - [`view`]: what the policy sees (nodes, their liveness and state; ranges, replicas,
//!   leaders, load);
//! - [`policy`]: the pure policy, [`schedule`]`(&ClusterView) -> Vec<Operator>`;
//! - [`operator`]: operators and their steps (admin commands);
//! - [`scheduler`]: which operators start now (limits per node and cluster, cool-down,
//!   timeouts), pure too;
//! - [`runtime`]: the task that builds the view, runs the scheduler and executes the
//!   operators through the client library.
//!
//! It must not hold data of its own: its inputs are the meta range's records and the
//! transport's liveness, so a new meta leader resumes where the last one stopped (operators in
//! flight are abandoned; each step is safe to run again, and a learner left half-way is cleaned
//! up by the next round).
#![forbid(unsafe_code)]

pub mod operator;
pub mod policy;
pub mod runtime;
pub mod scheduler;
pub mod view;

pub use self::operator::{Action, Operator, OperatorKind, Reason, Step};
pub use self::policy::{project, schedule};
pub use self::runtime::{describe_metrics, Local, Placement, PlacementConfig};
pub use self::scheduler::{Outcome, Scheduler, SchedulerConfig, Status};
pub use self::view::{ClusterView, NodeState, NodeView, PolicyConfig, RangeView, ReplicaView};
