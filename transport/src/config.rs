//! Settings of a node's QUIC endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use crate::frame::DEFAULT_MAX_FRAME_BYTES;

/// How a node's endpoint runs. Every queue, frame and batch is bounded here.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub cluster_id: String,
    pub node_id: u64,
    /// Where to listen (UDP).
    pub listen: SocketAddr,
    /// Frames larger than this are refused (and close their stream).
    pub max_frame_bytes: usize,
    /// A Raft batch frame is cut at about this size; the rest goes in the next frame.
    pub max_batch_bytes: usize,
    /// Raft messages queued per destination node; beyond it they are dropped (and counted).
    pub queue_capacity: usize,
    /// Bytes of Raft messages queued per destination node (a slow peer holds at most this).
    pub queue_bytes: usize,
    /// Snapshot streams in flight to one node at a time; more wait their turn.
    pub max_snapshot_streams_per_peer: usize,
    /// One liveness ping per node pair per interval (when nothing else was sent).
    pub liveness_interval: Duration,
    /// A peer not heard from for this long is reported down.
    pub down_after: Duration,
    /// Reconnection backoff: from `reconnect_min`, doubling to `reconnect_max`, with jitter.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Chunks of a snapshot stream buffered ahead of a slow receiver.
    pub snapshot_buffer_chunks: usize,
    /// QUIC idle timeout of a connection.
    pub idle_timeout: Duration,
}

impl TransportConfig {
    /// Defaults (DESIGN section 12) for node `node_id` of `cluster_id` listening on `listen`.
    pub fn new(cluster_id: impl Into<String>, node_id: u64, listen: SocketAddr) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            node_id,
            listen,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_batch_bytes: 4 << 20,
            queue_capacity: 16 * 1024,
            queue_bytes: 64 << 20,
            max_snapshot_streams_per_peer: 2,
            // Four missed pings make a peer down after 1 s: quiet ranges, which hear nothing
            // else, elect a new leader about as fast as active ones (election timeout 1-2 s).
            liveness_interval: Duration::from_millis(250),
            down_after: Duration::from_millis(1_000),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(5),
            snapshot_buffer_chunks: 8,
            idle_timeout: Duration::from_secs(10),
        }
    }

    /// Checks the settings together.
    ///
    /// # Errors
    /// A message naming the field that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        crate::tls::check_cluster_id(&self.cluster_id).map_err(|e| format!("cluster-id: {e}"))?;
        if self.node_id == 0 {
            return Err("node-id: must be positive".into());
        }
        if self.max_batch_bytes == 0 || self.max_batch_bytes > self.max_frame_bytes {
            return Err("max-batch-bytes: must be in 1..=max-frame-bytes".into());
        }
        if self.queue_capacity == 0 {
            return Err("queue-capacity: must be positive".into());
        }
        if self.queue_bytes < self.max_batch_bytes {
            return Err("queue-bytes: must hold at least one batch (max-batch-bytes)".into());
        }
        if self.max_snapshot_streams_per_peer == 0 {
            return Err("max-snapshot-streams-per-peer: must be positive".into());
        }
        if self.down_after <= self.liveness_interval {
            return Err("down-after: must exceed liveness-interval".into());
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return Err("reconnect-min/max: need 0 < min <= max".into());
        }
        Ok(())
    }
}
