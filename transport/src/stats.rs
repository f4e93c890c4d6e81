//! Counters of an endpoint, kept both as Prometheus metrics (the `metrics` crate, names per
//! DESIGN section 11) and as atomics a test or the admin API can read directly.

use std::sync::atomic::{AtomicU64, Ordering};

/// Totals since the endpoint started.
#[derive(Debug, Default)]
pub struct Stats {
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub batches_sent: AtomicU64,
    pub batches_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub queue_dropped: AtomicU64,
    pub connects: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub frame_errors: AtomicU64,
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

pub(crate) fn sent(peer: u64, messages: usize, bytes: usize, stats: &Stats) {
    let peer = peer.to_string();
    metrics::counter!("flotilla_transport_sent_messages_total", "peer" => peer.clone())
        .increment(messages as u64);
    metrics::counter!("flotilla_transport_sent_bytes_total", "peer" => peer)
        .increment(bytes as u64);
    metrics::histogram!("flotilla_transport_batch_messages").record(messages as f64);
    Stats::add(&stats.messages_sent, messages as u64);
    Stats::add(&stats.bytes_sent, bytes as u64);
    Stats::add(&stats.batches_sent, 1);
}

pub(crate) fn received(peer: u64, messages: usize, bytes: usize, stats: &Stats) {
    let peer = peer.to_string();
    metrics::counter!("flotilla_transport_received_messages_total", "peer" => peer.clone())
        .increment(messages as u64);
    metrics::counter!("flotilla_transport_received_bytes_total", "peer" => peer)
        .increment(bytes as u64);
    Stats::add(&stats.messages_received, messages as u64);
    Stats::add(&stats.bytes_received, bytes as u64);
    Stats::add(&stats.batches_received, 1);
}

pub(crate) fn dropped(peer: u64, stats: &Stats) {
    metrics::counter!("flotilla_transport_queue_dropped_total", "peer" => peer.to_string())
        .increment(1);
    Stats::add(&stats.queue_dropped, 1);
}

/// Whether this node counts `peer` as up (`flotilla_transport_peer_up`).
pub(crate) fn peer_up(peer: u64, up: bool) {
    metrics::gauge!("flotilla_transport_peer_up", "peer" => peer.to_string()).set(if up {
        1.0
    } else {
        0.0
    });
}

/// A new peer's series start at 0.
pub(crate) fn peer_added(peer: u64) {
    peer_up(peer, false);
    let peer = peer.to_string();
    for counter in [
        "flotilla_transport_sent_messages_total",
        "flotilla_transport_sent_bytes_total",
        "flotilla_transport_received_messages_total",
        "flotilla_transport_received_bytes_total",
        "flotilla_transport_queue_dropped_total",
    ] {
        metrics::counter!(counter, "peer" => peer.clone()).absolute(0);
    }
}

/// Describes the transport's metrics (help text and unit) for the exporter. Call once when a
/// process installs its recorder.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "flotilla_transport_sent_messages_total",
        "Raft messages sent, by peer node"
    );
    describe_counter!(
        "flotilla_transport_sent_bytes_total",
        Unit::Bytes,
        "Bytes of Raft frames sent, by peer node"
    );
    describe_counter!(
        "flotilla_transport_received_messages_total",
        "Raft messages received, by peer node"
    );
    describe_counter!(
        "flotilla_transport_received_bytes_total",
        Unit::Bytes,
        "Bytes of Raft frames received, by peer node"
    );
    describe_histogram!(
        "flotilla_transport_batch_messages",
        "Raft messages per frame sent to one node (all ranges together)"
    );
    describe_counter!(
        "flotilla_transport_queue_dropped_total",
        "Raft messages dropped because a peer's send queue was full, by peer node"
    );
    describe_counter!(
        "flotilla_transport_connects_total",
        "QUIC connections established with peers"
    );
    describe_counter!(
        "flotilla_transport_handshake_failures_total",
        "QUIC or TLS handshakes that failed (wrong cluster, bad certificate, unreachable)"
    );
    describe_counter!(
        "flotilla_transport_frame_errors_total",
        "Frames refused as malformed or oversize, by kind"
    );
    describe_gauge!(
        "flotilla_transport_peer_up",
        "1 while this node hears from the peer node, 0 once it counts it down"
    );
    for counter in [
        "flotilla_transport_connects_total",
        "flotilla_transport_handshake_failures_total",
    ] {
        metrics::counter!(counter).absolute(0);
    }
    for kind in ["oversize", "malformed", "truncated", "io", "snapshot"] {
        metrics::counter!("flotilla_transport_frame_errors_total", "kind" => kind).absolute(0);
    }
    let _ = metrics::histogram!("flotilla_transport_batch_messages");
}

pub(crate) fn connected(stats: &Stats) {
    metrics::counter!("flotilla_transport_connects_total").increment(1);
    Stats::add(&stats.connects, 1);
}

pub(crate) fn handshake_failed(stats: &Stats) {
    metrics::counter!("flotilla_transport_handshake_failures_total").increment(1);
    Stats::add(&stats.handshake_failures, 1);
}

pub(crate) fn frame_error(kind: &'static str, stats: &Stats) {
    metrics::counter!("flotilla_transport_frame_errors_total", "kind" => kind).increment(1);
    Stats::add(&stats.frame_errors, 1);
}
