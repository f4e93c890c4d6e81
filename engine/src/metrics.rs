//! The engine's metrics (DESIGN section 11): their help texts and units, and the series that
//! exist from the start (a counter that has not counted yet is exported as 0, so dashboards and
//! alerts see the series and `rate()` starts from the first scrape, as Prometheus advises).
//!
//! The metrics themselves are recorded where things happen (`metrics::counter!` and friends);
//! this module only describes them. A process installing a recorder calls
//! [`describe_metrics`] once, after installing it.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// The operations `flotilla_client_*{op}` label.
pub const CLIENT_OPS: &[&str] = &[
    "get",
    "scan",
    "put",
    "delete",
    "delete_range",
    "txn",
    "admin",
];

/// Error kinds every operation can meet; their series start at 0 (the others appear with their
/// first occurrence).
const COMMON_ERRORS: &[&str] = &[
    "ERROR_CODE_NOT_LEADER",
    "ERROR_CODE_TIMEOUT",
    "ERROR_CODE_SERVER_BUSY",
    "ERROR_CODE_EPOCH_NOT_MATCH",
    "ERROR_CODE_KEY_NOT_IN_RANGE",
];

/// Describes every engine metric and registers the series that start at 0.
pub fn describe_metrics() {
    describe_counter!(
        "flotilla_client_requests_total",
        "Client requests served by this node, by operation"
    );
    describe_counter!(
        "flotilla_client_errors_total",
        "Client requests answered with an error, by operation and error kind"
    );
    describe_counter!(
        "flotilla_client_slow_requests_total",
        "Client requests slower than slow-request-ms (each also logged with its phase times)"
    );
    describe_histogram!(
        "flotilla_client_request_seconds",
        Unit::Seconds,
        "Time to answer a client request at this node, by operation"
    );
    describe_counter!(
        "flotilla_raft_proposals_total",
        "Client writes proposed to a Raft group led here"
    );
    describe_histogram!(
        "flotilla_raft_propose_apply_seconds",
        Unit::Seconds,
        "A write from its proposal to its application here (replication, sync, commit, apply)"
    );
    describe_histogram!(
        "flotilla_raft_commit_apply_seconds",
        Unit::Seconds,
        "Applying the committed entries of one range in one round"
    );
    describe_counter!(
        "flotilla_raft_leader_changes_seen_total",
        "Times a replica here learned of a new leader of its range"
    );
    describe_counter!(
        "flotilla_raft_log_compactions_total",
        "Raft logs released up to their applied index (log GC)"
    );
    describe_histogram!(
        "flotilla_storage_fsync_seconds",
        Unit::Seconds,
        "One group-commit write of a poller: every range's entries and state, synced once"
    );
    describe_histogram!(
        "flotilla_storage_batch_ranges",
        "Ranges persisted by one group-commit write"
    );
    describe_histogram!(
        "flotilla_storage_batch_bytes",
        Unit::Bytes,
        "Size of one group-commit write"
    );
    describe_gauge!(
        "flotilla_store_ranges",
        "Replicas this node hosts, by poller"
    );
    describe_gauge!(
        "flotilla_store_leaders",
        "Ranges this node leads, by poller"
    );
    describe_gauge!(
        "flotilla_store_quiet_ranges",
        "Quiesced replicas (no ticks, no heartbeats), by poller"
    );
    describe_gauge!(
        "flotilla_store_leaderless_ranges",
        "Replicas that know no leader of their range, by poller"
    );
    describe_gauge!(
        "flotilla_store_apply_lag_entries",
        "Committed entries not applied yet, summed over the replicas of a poller"
    );
    describe_gauge!(
        "flotilla_store_pending_requests",
        "Client requests waiting for their range (writes and reads), by poller"
    );
    describe_counter!(
        "flotilla_store_mailbox_dropped_total",
        "Raft messages dropped because a poller's mailbox was full"
    );
    describe_counter!(
        "flotilla_store_halts_total",
        "Pollers halted by a storage failure or an internal error (the node must restart)"
    );
    describe_counter!(
        "flotilla_store_liveness_wakeups_total",
        "Quiet replicas woken because node liveness saw a node go down"
    );
    describe_counter!(
        "flotilla_store_stale_reads_total",
        "Bounded-staleness reads, by how they were served (local or read_index)"
    );
    describe_counter!(
        "flotilla_store_snapshots_sent_total",
        "Snapshots streamed to followers"
    );
    describe_counter!(
        "flotilla_store_snapshots_received_total",
        "Snapshots received and installed"
    );
    describe_counter!(
        "flotilla_store_snapshots_refused_total",
        "Snapshots refused (malformed, or no longer wanted)"
    );
    describe_counter!(
        "flotilla_store_auto_splits_total",
        "Ranges split because their data passed split-size-bytes"
    );
    describe_counter!(
        "flotilla_store_route_reports_total",
        "Routing records sent to the meta range by the leaders here"
    );
    describe_counter!(
        "flotilla_store_replicas_removed_total",
        "Replicas removed from this node (moved away or the range merged)"
    );
    describe_gauge!(
        "flotilla_build_info",
        "Always 1; the labels name the build (version; fault_injection: none, or nemesis in a test build)"
    );
    let faults = if cfg!(feature = "nemesis") {
        "nemesis"
    } else {
        "none"
    };
    metrics::gauge!("flotilla_build_info", "version" => env!("CARGO_PKG_VERSION"),
        "fault_injection" => faults)
    .set(1.0);
    for counter in [
        "flotilla_raft_proposals_total",
        "flotilla_raft_leader_changes_seen_total",
        "flotilla_raft_log_compactions_total",
        "flotilla_store_mailbox_dropped_total",
        "flotilla_store_halts_total",
        "flotilla_store_liveness_wakeups_total",
        "flotilla_store_snapshots_sent_total",
        "flotilla_store_snapshots_received_total",
        "flotilla_store_snapshots_refused_total",
        "flotilla_store_auto_splits_total",
        "flotilla_store_route_reports_total",
        "flotilla_store_replicas_removed_total",
    ] {
        metrics::counter!(counter).absolute(0);
    }
    for histogram in [
        "flotilla_raft_propose_apply_seconds",
        "flotilla_raft_commit_apply_seconds",
        "flotilla_storage_fsync_seconds",
        "flotilla_storage_batch_ranges",
        "flotilla_storage_batch_bytes",
    ] {
        // Registered: exported with empty buckets until the first sample.
        let _ = metrics::histogram!(histogram);
    }
    for served in ["local", "read_index"] {
        metrics::counter!("flotilla_store_stale_reads_total", "served" => served).absolute(0);
    }
    for op in CLIENT_OPS {
        metrics::counter!("flotilla_client_requests_total", "op" => *op).absolute(0);
        let _ = metrics::histogram!("flotilla_client_request_seconds", "op" => *op);
        metrics::counter!("flotilla_client_slow_requests_total", "op" => *op).absolute(0);
        for kind in COMMON_ERRORS {
            metrics::counter!("flotilla_client_errors_total", "op" => *op, "kind" => *kind)
                .absolute(0);
        }
    }
}
