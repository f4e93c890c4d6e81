//! Checks of a write against the range and the limits, made before anything is applied (and
//! by the proposer, so most refusals never reach the log).

use flotilla_transport::kv::{
    txn_op, write_request, CommandHeader, CompareOp, CompareTarget, DeleteRangeRequest, TxnOp,
    WriteRequest,
};
use flotilla_transport::meta::{RangeDescriptor, RangeEpoch};

use super::config::KvConfig;
use super::error::KvError;
use crate::storage::keys;

/// Whether internal key `key` lies in `descriptor`'s span.
pub fn contains(descriptor: &RangeDescriptor, key: &[u8]) -> bool {
    key >= descriptor.start_key.as_ref()
        && (descriptor.end_key.is_empty() || key < descriptor.end_key.as_ref())
}

fn not_in_range(descriptor: &RangeDescriptor) -> KvError {
    KvError::KeyNotInRange {
        range_id: descriptor.id,
        current: Box::new(descriptor.clone()),
    }
}

/// Checks a user key's size and that it belongs to the range.
///
/// # Errors
/// [`KvError::KeyTooLarge`], [`KvError::KeyNotInRange`].
pub fn check_key(
    descriptor: &RangeDescriptor,
    key: &[u8],
    config: &KvConfig,
) -> Result<(), KvError> {
    if key.len() > config.max_key_bytes {
        return Err(KvError::KeyTooLarge {
            size: key.len(),
            limit: config.max_key_bytes,
        });
    }
    if !contains(descriptor, &keys::data_key(key)) {
        return Err(not_in_range(descriptor));
    }
    Ok(())
}

/// The internal span `[start, end)` of a user span whose empty end means the range's end.
///
/// # Errors
/// [`KvError::KeyNotInRange`] when the span leaves the range, [`KvError::KeyTooLarge`].
pub fn internal_span(
    descriptor: &RangeDescriptor,
    start: &[u8],
    end: &[u8],
    config: &KvConfig,
) -> Result<(Vec<u8>, Vec<u8>), KvError> {
    check_key(descriptor, start, config)?;
    let (_, range_end) = keys::data_span(descriptor);
    let end = if end.is_empty() {
        range_end
    } else {
        if end.len() > config.max_key_bytes {
            return Err(KvError::KeyTooLarge {
                size: end.len(),
                limit: config.max_key_bytes,
            });
        }
        let end = keys::data_key(end);
        if end > range_end {
            return Err(not_in_range(descriptor));
        }
        end
    };
    Ok((keys::data_key(start), end))
}

fn check_delete_range(
    descriptor: &RangeDescriptor,
    r: &DeleteRangeRequest,
    config: &KvConfig,
) -> Result<(), KvError> {
    internal_span(descriptor, &r.start, &r.end, config).map(|_| ())
}

fn check_value(value: &[u8], config: &KvConfig) -> Result<(), KvError> {
    if value.len() > config.max_value_bytes {
        return Err(KvError::ValueTooLarge {
            size: value.len(),
            limit: config.max_value_bytes,
        });
    }
    Ok(())
}

fn check_txn_op(
    descriptor: &RangeDescriptor,
    op: &TxnOp,
    config: &KvConfig,
) -> Result<(), KvError> {
    match &op.op {
        Some(txn_op::Op::Put(p)) => {
            check_key(descriptor, &p.key, config)?;
            check_value(&p.value, config)
        }
        Some(txn_op::Op::Delete(d)) => check_key(descriptor, &d.key, config),
        Some(txn_op::Op::DeleteRange(r)) => check_delete_range(descriptor, r, config),
        Some(txn_op::Op::Get(g)) => check_key(descriptor, &g.key, config),
        None => Err(KvError::Malformed("txn op without an operation".into())),
    }
}

/// Checks a whole command against the range it names: the range id, the epoch the client
/// believes in, then every key, value and operation ([`check_write`]). The proposer runs it so
/// refusals never reach the log; apply runs it again, as the range may have changed since.
///
/// # Errors
/// The first [`KvError`] found.
pub fn check_command(
    descriptor: &RangeDescriptor,
    header: &CommandHeader,
    request: &WriteRequest,
    config: &KvConfig,
) -> Result<(), KvError> {
    check_range(descriptor, header.range_id, header.epoch.as_ref())?;
    check_write(descriptor, request, config)
}

/// Checks that a request names this range and the epoch (version) it has now: a client with an
/// older picture of the keyspace must refresh it rather than be served by the wrong range.
///
/// # Errors
/// [`KvError::RangeNotFound`], [`KvError::EpochNotMatch`] with the current descriptor.
pub fn check_range(
    descriptor: &RangeDescriptor,
    range_id: u64,
    epoch: Option<&RangeEpoch>,
) -> Result<(), KvError> {
    if range_id != descriptor.id {
        return Err(KvError::RangeNotFound(range_id));
    }
    let current_version = descriptor.epoch.map(|e| e.version).unwrap_or_default();
    let requested = epoch.map(|e| e.version).unwrap_or_default();
    if requested != current_version {
        return Err(KvError::EpochNotMatch {
            range_id: descriptor.id,
            requested,
            current_version,
            current: Box::new(descriptor.clone()),
        });
    }
    Ok(())
}

/// Checks every key, value and operation of `request` against `descriptor` and the limits.
///
/// # Errors
/// The first [`KvError`] found.
pub fn check_write(
    descriptor: &RangeDescriptor,
    request: &WriteRequest,
    config: &KvConfig,
) -> Result<(), KvError> {
    match &request.request {
        Some(write_request::Request::Put(p)) => {
            check_key(descriptor, &p.key, config)?;
            check_value(&p.value, config)
        }
        Some(write_request::Request::Delete(d)) => check_key(descriptor, &d.key, config),
        Some(write_request::Request::DeleteRange(r)) => check_delete_range(descriptor, r, config),
        Some(write_request::Request::Txn(t)) => {
            for (what, n) in [
                ("compares", t.compares.len()),
                ("success", t.success.len()),
                ("failure", t.failure.len()),
            ] {
                if n > config.max_txn_ops {
                    let _ = what;
                    return Err(KvError::TooManyOps {
                        ops: n,
                        limit: config.max_txn_ops,
                    });
                }
            }
            for c in &t.compares {
                check_key(descriptor, &c.key, config)?;
                let target = CompareTarget::try_from(c.target)
                    .map_err(|_| KvError::Malformed(format!("compare target {}", c.target)))?;
                let op = CompareOp::try_from(c.op)
                    .map_err(|_| KvError::Malformed(format!("compare op {}", c.op)))?;
                if target == CompareTarget::Exists
                    && !matches!(op, CompareOp::Equal | CompareOp::NotEqual)
                {
                    return Err(KvError::Malformed(
                        "existence compares only with EQUAL or NOT_EQUAL".into(),
                    ));
                }
            }
            for op in t.success.iter().chain(&t.failure) {
                check_txn_op(descriptor, op, config)?;
            }
            Ok(())
        }
        None => Err(KvError::Malformed("write without a request".into())),
    }
}
