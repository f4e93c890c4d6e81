//! The slow-request log: a client request that took longer than the configured threshold from
//! its arrival at the runtime to its answer gets one log line with the time of each phase, and
//! counts in `flotilla_client_slow_requests_total{op}`.
//!
//! Phases: `queued` (the poller's mailbox, from the service handing the request over to the
//! poller taking it), then for a write `replicated` (proposed, replicated to a quorum, synced,
//! committed and applied here), for a read `confirmed` (the ReadIndex round: the leader checked
//! it still leads) and `applied` (waiting for this replica to apply up to the read index).

use std::time::{Duration, Instant};

use flotilla_transport::kv::{write_request, RaftCommand};
use flotilla_transport::service::{read_request, ReadRequest};
use tokio::sync::oneshot;

use super::runtime::RequestError;

/// The operation a write names, as metrics and logs label it.
pub fn write_op(command: &RaftCommand) -> &'static str {
    if command.admin.is_some() {
        return "admin";
    }
    match command.request.as_ref().and_then(|r| r.request.as_ref()) {
        Some(write_request::Request::Put(_)) => "put",
        Some(write_request::Request::Delete(_)) => "delete",
        Some(write_request::Request::DeleteRange(_)) => "delete_range",
        Some(write_request::Request::Txn(_)) => "txn",
        None => "unknown",
    }
}

/// The operation a read names.
pub fn read_op(request: &ReadRequest) -> &'static str {
    match request.request {
        Some(read_request::Request::Get(_)) => "get",
        Some(read_request::Request::Scan(_)) => "scan",
        None => "unknown",
    }
}

/// When a request reached each phase.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub op: &'static str,
    pub range_id: u64,
    /// Handed to the runtime (the mailbox send).
    pub submitted: Instant,
    /// Taken by the poller (proposed, or its ReadIndex round started).
    pub started: Instant,
    /// A read's ReadIndex round confirmed.
    pub confirmed: Option<Instant>,
}

impl Timing {
    pub fn new(op: &'static str, range_id: u64, submitted: Instant) -> Self {
        Self {
            op,
            range_id,
            submitted,
            started: Instant::now(),
            confirmed: None,
        }
    }

    /// Logs the request if it took longer than `threshold` (zero: never); `outcome` is what it
    /// was answered ("ok", "timeout", an error's name).
    pub fn finish(&self, threshold: Duration, outcome: &str) {
        if threshold.is_zero() {
            return;
        }
        let now = Instant::now();
        let total = now.saturating_duration_since(self.submitted);
        if total < threshold {
            return;
        }
        metrics::counter!("flotilla_client_slow_requests_total", "op" => self.op).increment(1);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let queued = ms(self.started.saturating_duration_since(self.submitted));
        match self.confirmed {
            Some(confirmed) => tracing::warn!(
                op = self.op,
                range_id = self.range_id,
                outcome,
                total_ms = ms(total),
                queued_ms = queued,
                confirm_ms = ms(confirmed.saturating_duration_since(self.started)),
                apply_wait_ms = ms(now.saturating_duration_since(confirmed)),
                "slow request"
            ),
            None => tracing::warn!(
                op = self.op,
                range_id = self.range_id,
                outcome,
                total_ms = ms(total),
                queued_ms = queued,
                replicate_apply_ms = ms(now.saturating_duration_since(self.started)),
                "slow request"
            ),
        }
    }
}

/// What a request was answered, as the slow-request log names it.
fn outcome_of<T>(result: &Result<T, RequestError>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(RequestError::Refused(e)) => format!("refused: {e}"),
        Err(RequestError::Unavailable(why)) => format!("unavailable: {why}"),
    }
}

/// Answers a request, logging it first when it took longer than `threshold`.
pub(crate) fn respond<T>(
    threshold: Duration,
    timing: &Timing,
    reply: oneshot::Sender<Result<T, RequestError>>,
    result: Result<T, RequestError>,
) {
    if !threshold.is_zero() {
        timing.finish(threshold, &outcome_of(&result));
    }
    let _ = reply.send(result);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_named_by_their_request() {
        let admin = RaftCommand {
            admin: Some(flotilla_transport::kv::AdminRequest::default()),
            ..RaftCommand::default()
        };
        assert_eq!(write_op(&admin), "admin");
        assert_eq!(write_op(&RaftCommand::default()), "unknown");
        let get = ReadRequest {
            request: Some(read_request::Request::Get(Default::default())),
            ..ReadRequest::default()
        };
        assert_eq!(read_op(&get), "get");
    }
}
