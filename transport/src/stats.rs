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
