//! Client sessions: exactly-once application of writes (Raft dissertation 6.3).
//!
//! A write carries `(client_id, seq, first_unacked_seq)`. The range keeps, per client, the
//! responses of the applied writes the client may still retry (those at or above its
//! `first_unacked_seq`), so a retry gets the recorded response instead of being applied twice.
//! Sequence numbers are per client, not per range, so a range sees gaps and reordering: only
//! the responses it holds say what was applied, never "the highest seq so far".
//!
//! Expiry uses the state machine's clock (the leaders' proposal times carried in the entries),
//! so every replica expires the same session at the same index. A session that has expired must
//! not be silently re-created for a retry (that retry might be applied twice), so a write
//! without a session is refused when its session could be old enough to have expired: a session
//! is dropped only when `clock > last_active + ttl + skew`, and the client's claimed session
//! start may run at most `skew` ahead of the clock, hence any dropped session had
//! `start + ttl < clock`, and such writes get `SessionExpired`.

use flotilla_transport::kv::{CommandHeader, WriteResponse};
use flotilla_transport::meta::{CachedResponse, SessionRecord};
use prost::Message;

use super::config::KvConfig;
use super::error::KvError;

/// What to do with a write after its session was consulted.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Apply it, then record its response in this session.
    Apply(SessionRecord),
    /// Already applied: answer with the recorded response.
    Duplicate(WriteResponse),
    Refuse(KvError),
}

pub(crate) fn check(
    session: Option<SessionRecord>,
    header: &CommandHeader,
    clock_ms: u64,
    config: &KvConfig,
) -> Verdict {
    let client_id = header.client_id;
    let seq = header.seq;
    if seq == 0 || header.first_unacked_seq > seq {
        return Verdict::Refuse(KvError::Malformed(format!(
            "client {client_id}: seq {seq} with first unacked {}",
            header.first_unacked_seq
        )));
    }
    match session {
        Some(mut s) => {
            if seq < s.first_unacked_seq {
                return Verdict::Refuse(KvError::ResponseDiscarded { client_id, seq });
            }
            if let Some(c) = s.responses.iter().find(|c| c.seq == seq) {
                return match WriteResponse::decode(c.response.as_ref()) {
                    Ok(r) => Verdict::Duplicate(r),
                    Err(e) => Verdict::Refuse(KvError::Malformed(format!(
                        "recorded response of client {client_id} seq {seq}: {e}"
                    ))),
                };
            }
            s.last_active_ms = clock_ms;
            Verdict::Apply(s)
        }
        None => {
            if header.session_start_ms > clock_ms.saturating_add(config.max_clock_skew_ms) {
                return Verdict::Refuse(KvError::Malformed(format!(
                    "client {client_id}: session start {} is ahead of the range's clock {clock_ms} \
                     by more than {} ms",
                    header.session_start_ms, config.max_clock_skew_ms
                )));
            }
            if clock_ms
                > header
                    .session_start_ms
                    .saturating_add(config.session_ttl_ms)
            {
                return Verdict::Refuse(KvError::SessionExpired { client_id });
            }
            Verdict::Apply(SessionRecord {
                client_id,
                last_active_ms: clock_ms,
                responses: Vec::new(),
                first_unacked_seq: header.first_unacked_seq,
                max_seq: 0,
            })
        }
    }
}

/// Records the response of an applied write and drops what the client no longer needs.
pub(crate) fn record(
    session: &mut SessionRecord,
    header: &CommandHeader,
    response: &WriteResponse,
    config: &KvConfig,
) {
    session.max_seq = session.max_seq.max(header.seq);
    session.first_unacked_seq = session.first_unacked_seq.max(header.first_unacked_seq);
    session.responses.push(CachedResponse {
        seq: header.seq,
        response: response.encode_to_vec().into(),
    });
    let first = session.first_unacked_seq;
    session.responses.retain(|c| c.seq >= first);
    session.responses.sort_by_key(|c| c.seq);
    // Too many outstanding writes: forget the oldest, and refuse its retries from now on
    // (ResponseDiscarded) rather than applying them again.
    while session.responses.len() > config.max_cached_responses {
        let dropped = session.responses.remove(0);
        session.first_unacked_seq = session.first_unacked_seq.max(dropped.seq + 1);
    }
}

/// Whether a session is old enough to drop at `clock_ms`.
pub(crate) fn expired(session: &SessionRecord, clock_ms: u64, config: &KvConfig) -> bool {
    clock_ms
        > session
            .last_active_ms
            .saturating_add(config.session_ttl_ms)
            .saturating_add(config.max_clock_skew_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64, first_unacked: u64, start: u64) -> CommandHeader {
        CommandHeader {
            client_id: 7,
            seq,
            first_unacked_seq: first_unacked,
            session_start_ms: start,
            ..CommandHeader::default()
        }
    }

    fn response(revision: u64) -> WriteResponse {
        WriteResponse {
            revision,
            response: None,
        }
    }

    #[test]
    fn retries_get_the_recorded_response_and_old_ones_are_refused() {
        let config = KvConfig::default();
        let h3 = header(3, 1, 1000);
        let Verdict::Apply(mut s) = check(None, &h3, 1000, &config) else {
            panic!("a new session applies")
        };
        record(&mut s, &h3, &response(10), &config);
        // A reordered lower seq was never applied: apply it.
        let h2 = header(2, 1, 1000);
        let Verdict::Apply(mut s) = check(Some(s), &h2, 1001, &config) else {
            panic!("seq 2 was not applied yet")
        };
        record(&mut s, &h2, &response(11), &config);
        match check(Some(s.clone()), &h3, 1002, &config) {
            Verdict::Duplicate(r) => assert_eq!(r.revision, 10),
            v => panic!("retry of seq 3 must be a duplicate, got {v:?}"),
        }
        // The client got both answers: it acknowledges up to 4.
        let h4 = header(4, 4, 1000);
        let Verdict::Apply(mut s) = check(Some(s), &h4, 1003, &config) else {
            panic!("seq 4 applies")
        };
        record(&mut s, &h4, &response(12), &config);
        assert!(matches!(
            check(Some(s.clone()), &h3, 1004, &config),
            Verdict::Refuse(KvError::ResponseDiscarded { seq: 3, .. })
        ));
        assert_eq!(s.responses.len(), 1);
    }

    #[test]
    fn a_session_that_may_have_expired_is_not_recreated() {
        let config = KvConfig::default();
        let ttl = config.session_ttl_ms;
        let skew = config.max_clock_skew_ms;
        let h = header(5, 5, 1000);
        assert!(matches!(
            check(None, &h, 1000 + ttl, &config),
            Verdict::Apply(_)
        ));
        assert!(matches!(
            check(None, &h, 1001 + ttl, &config),
            Verdict::Refuse(KvError::SessionExpired { client_id: 7 })
        ));
        // A client clock far ahead is refused, so the expiry bound holds.
        assert!(matches!(
            check(None, &header(1, 1, 1000 + skew + 1), 1000, &config),
            Verdict::Refuse(KvError::Malformed(_))
        ));
        let s = SessionRecord {
            last_active_ms: 1000,
            ..SessionRecord::default()
        };
        assert!(!expired(&s, 1000 + ttl + skew, &config));
        assert!(expired(&s, 1001 + ttl + skew, &config));
    }

    #[test]
    fn too_many_outstanding_writes_refuse_the_forgotten_ones() {
        let config = KvConfig {
            max_cached_responses: 2,
            ..KvConfig::default()
        };
        let mut s = SessionRecord::default();
        for seq in 1..=3 {
            record(&mut s, &header(seq, 1, 0), &response(seq), &config);
        }
        assert_eq!(s.first_unacked_seq, 2);
        assert!(matches!(
            check(Some(s), &header(1, 1, 0), 0, &config),
            Verdict::Refuse(KvError::ResponseDiscarded { seq: 1, .. })
        ));
    }
}
