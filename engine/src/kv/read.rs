//! Reads of a range's applied state: `Get` and `Scan`. The store serves them once the range has
//! applied up to the read's index (ReadIndex or lease); they read RocksDB's latest state and are
//! confined to the range's span.

use flotilla_transport::kv::{GetResponse, KeyValue, ScanRequest, ScanResponse, StoredValue};
use flotilla_transport::meta::RangeDescriptor;

use super::config::KvConfig;
use super::error::KvError;
use super::validate::{check_key, internal_span};
use crate::storage::{decode, keys, Cf, Engine, EngineError};

/// Why a read failed: refused (the client can act on it) or the disk failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Refused(#[from] KvError),
    #[error(transparent)]
    Storage(#[from] EngineError),
}

fn decode_value(range_id: u64, bytes: &[u8]) -> Result<StoredValue, EngineError> {
    decode(bytes).map_err(|e| EngineError::corruption(range_id, "value", e))
}

/// The value of `key` in `descriptor`'s range.
///
/// # Errors
/// [`ReadError::Refused`] for a key outside the range or too large, [`ReadError::Storage`].
pub fn get(
    engine: &Engine,
    descriptor: &RangeDescriptor,
    key: &[u8],
    config: &KvConfig,
) -> Result<GetResponse, ReadError> {
    check_key(descriptor, key, config)?;
    let kv = engine
        .read_record::<StoredValue>(Cf::Data, &keys::data_key(key), descriptor.id, "value")?
        .map(|v| KeyValue {
            key: key.to_vec().into(),
            value: v.value,
            create_revision: v.create_revision,
            mod_revision: v.mod_revision,
            version: v.version,
        });
    Ok(GetResponse { kv })
}

/// Keys of `[start, end)` within `descriptor`'s range, in order, bounded by the request's (or
/// the configured) key and byte limits; at least one key when any is in the span. When the
/// scan stops early, or the requested span goes on past the range, `more` is set and
/// `next_key` says where to continue (possibly in the next range).
///
/// # Errors
/// [`ReadError::Refused`] when `start` is outside the range, [`ReadError::Storage`].
pub fn scan(
    engine: &Engine,
    descriptor: &RangeDescriptor,
    request: &ScanRequest,
    config: &KvConfig,
) -> Result<ScanResponse, ReadError> {
    if request.reverse {
        return scan_reverse(engine, descriptor, request, config);
    }
    let (_, range_end) = keys::data_span(descriptor);
    // A span reaching past the range is cut at the range's end, and the caller continues there.
    let requested_end = if request.end.is_empty() {
        keys::DATA_END.to_vec()
    } else {
        keys::data_key(&request.end)
    };
    let past_range = requested_end > range_end;
    let end_user: &[u8] = if past_range { &[] } else { &request.end };
    let (start, end) = internal_span(descriptor, &request.start, end_user, config)?;
    let (limit, limit_bytes) = limits(request, config);
    let opts = engine.read_options_bounded(&end);
    let iter = engine.db().iterator_cf_opt(
        engine.cf(Cf::Data),
        opts,
        rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
    );
    let (kvs, stopped) = read_rows(descriptor, iter, limit, limit_bytes, request.keys_only)?;
    if let Some(next) = stopped {
        return Ok(ScanResponse {
            kvs,
            next_key: next.into(),
            more: true,
        });
    }
    if past_range && !descriptor.end_key.is_empty() {
        let next = keys::user_key(&descriptor.end_key).unwrap_or_default();
        return Ok(ScanResponse {
            kvs,
            next_key: next.to_vec().into(),
            more: true,
        });
    }
    Ok(ScanResponse {
        kvs,
        next_key: Default::default(),
        more: false,
    })
}

/// The limits of a scan request, the server's defaults and caps applied.
fn limits(request: &ScanRequest, config: &KvConfig) -> (usize, u64) {
    let limit = match request.limit {
        0 => config.scan_default_limit,
        n => n.min(config.scan_max_limit),
    } as usize;
    let limit_bytes = match request.limit_bytes {
        0 => config.scan_default_bytes,
        n => n.min(config.scan_max_bytes),
    };
    (limit, limit_bytes)
}

/// Rows from `iter` up to the limits (at least one); `Some(key)` of the first row not taken
/// when a limit stopped it.
fn read_rows(
    descriptor: &RangeDescriptor,
    iter: rocksdb::DBIteratorWithThreadMode<'_, rocksdb::DB>,
    limit: usize,
    limit_bytes: u64,
    keys_only: bool,
) -> Result<(Vec<KeyValue>, Option<Vec<u8>>), ReadError> {
    let mut kvs = Vec::new();
    let mut bytes = 0u64;
    for item in iter {
        let (ikey, value) = item.map_err(EngineError::from)?;
        let Some(user) = keys::user_key(&ikey) else {
            continue;
        };
        if kvs.len() >= limit || (bytes >= limit_bytes && !kvs.is_empty()) {
            return Ok((kvs, Some(user.to_vec())));
        }
        let v = decode_value(descriptor.id, &value)?;
        bytes += (user.len() + if keys_only { 0 } else { v.value.len() }) as u64;
        kvs.push(KeyValue {
            key: user.to_vec().into(),
            value: if keys_only {
                Default::default()
            } else {
                v.value
            },
            create_revision: v.create_revision,
            mod_revision: v.mod_revision,
            version: v.version,
        });
    }
    Ok((kvs, None))
}

/// A reverse scan (see `ScanRequest.reverse`): this range must hold the keys just below the
/// requested end.
fn scan_reverse(
    engine: &Engine,
    descriptor: &RangeDescriptor,
    request: &ScanRequest,
    config: &KvConfig,
) -> Result<ScanResponse, ReadError> {
    let (range_start, range_end) = keys::data_span(descriptor);
    let end = if request.end.is_empty() {
        keys::DATA_END.to_vec()
    } else {
        if request.end.len() > config.max_key_bytes {
            return Err(ReadError::Refused(KvError::KeyTooLarge {
                size: request.end.len(),
                limit: config.max_key_bytes,
            }));
        }
        keys::data_key(&request.end)
    };
    if end <= range_start || end > range_end {
        return Err(ReadError::Refused(KvError::KeyNotInRange {
            range_id: descriptor.id,
            current: Box::new(descriptor.clone()),
        }));
    }
    let wanted_start = keys::data_key(&request.start);
    let start = wanted_start.clone().max(range_start.clone());
    let (limit, limit_bytes) = limits(request, config);
    let mut opts = engine.read_options_bounded(&end);
    opts.set_iterate_lower_bound(start);
    let iter = engine
        .db()
        .iterator_cf_opt(engine.cf(Cf::Data), opts, rocksdb::IteratorMode::End);
    let (kvs, stopped) = read_rows(descriptor, iter, limit, limit_bytes, request.keys_only)?;
    // The next page ends (exclusive) at the last key returned, or at this range's start when
    // the span goes on in the range before it.
    let next = if stopped.is_some() {
        kvs.last().map(|kv| kv.key.to_vec())
    } else if wanted_start < range_start {
        Some(keys::user_key(&range_start).unwrap_or_default().to_vec())
    } else {
        None
    };
    Ok(match next {
        Some(next) => ScanResponse {
            kvs,
            next_key: next.into(),
            more: true,
        },
        None => ScanResponse {
            kvs,
            next_key: Default::default(),
            more: false,
        },
    })
}
