//! Range snapshots (DESIGN section 5): built from one consistent RocksDB snapshot of the range's
//! span in `data` plus its `meta` rows, cut into checksummed chunks, and installed on the
//! receiver in the same write batch as the Raft state that goes with it.
//!
//! Install is one atomic WriteBatch (clear the span, put every row, the new apply state, the log
//! truncation) rather than an ingested SST file: a batch is atomic through the WAL, so a crash
//! mid-install leaves the old replica or the new one, never a mix, with no recovery step. A
//! range is at most the split size (64 MiB by default), which a batch holds comfortably.

use flotilla_transport::kv::StoredValue;
use flotilla_transport::meta::{
    ApplyState, RangeDescriptor, SessionRecord, SnapshotChunk, SnapshotColumn, SnapshotHeader,
    SnapshotRow,
};
use flotilla_transport::raft::SnapshotMetadata;
use prost::Message;
use rocksdb::WriteBatch;

use super::codec;
use super::engine::{Cf, Engine};
use super::error::EngineError;
use super::keys;

/// Why a received snapshot was refused. Nothing of it was written.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("bad snapshot header: {0}")]
    Header(String),
    #[error("snapshot chunk {got} arrived, expected chunk {expected}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("snapshot chunk {chunk} failed its checksum")]
    Checksum { chunk: u64 },
    #[error("snapshot chunk {chunk} holds a row outside the range: {detail}")]
    RowOutOfSpan { chunk: u64, detail: String },
    #[error("snapshot ended after {chunks} chunks without its last chunk")]
    Truncated { chunks: u64 },
    #[error("snapshot carries {got} rows, its last chunk says {expected}")]
    RowCount { expected: u64, got: u64 },
    #[error("snapshot chunk {chunk} after the last one")]
    AfterLast { chunk: u64 },
}

/// Where a snapshot goes as it is built: a network stream, or a Vec in tests.
pub trait SnapshotSink {
    /// # Errors
    /// Whatever the sink fails with; building stops.
    fn header(&mut self, header: SnapshotHeader) -> Result<(), EngineError>;
    /// # Errors
    /// Whatever the sink fails with; building stops.
    fn chunk(&mut self, chunk: SnapshotChunk) -> Result<(), EngineError>;
}

/// A snapshot held whole in memory.
#[derive(Clone, Debug, Default)]
pub struct SnapshotParts {
    pub header: Option<SnapshotHeader>,
    pub chunks: Vec<SnapshotChunk>,
}

impl SnapshotSink for SnapshotParts {
    fn header(&mut self, header: SnapshotHeader) -> Result<(), EngineError> {
        self.header = Some(header);
        Ok(())
    }

    fn chunk(&mut self, chunk: SnapshotChunk) -> Result<(), EngineError> {
        self.chunks.push(chunk);
        Ok(())
    }
}

fn chunk_checksum(previous: u32, rows: &[SnapshotRow]) -> u32 {
    let mut crc = crc32c::crc32c(&previous.to_le_bytes());
    for row in rows {
        crc = crc32c::crc32c_append(crc, &row.encode_to_vec());
    }
    crc
}

/// Builds a snapshot of `range_id` as it is applied now, from one consistent RocksDB snapshot,
/// in chunks of about `chunk_bytes`. Returns the snapshot's metadata (the applied index, its
/// term and the membership there): the leader's Snapshot message must carry this metadata.
///
/// # Errors
/// [`EngineError::RangeNotFound`], [`EngineError::Corruption`] for damaged rows, or what the
/// sink fails with.
pub fn build_snapshot(
    engine: &Engine,
    range_id: u64,
    chunk_bytes: usize,
    sink: &mut dyn SnapshotSink,
) -> Result<SnapshotMetadata, EngineError> {
    let db = engine.db();
    let snap = db.snapshot();
    let read_meta = |key: &[u8]| -> Result<Option<Vec<u8>>, EngineError> {
        Ok(snap.get_cf(engine.cf(Cf::Meta), key)?)
    };
    let descriptor: RangeDescriptor = match read_meta(&keys::descriptor_key(range_id))? {
        Some(b) => codec::decode(&b).map_err(|e| EngineError::codec(range_id, "descriptor", e))?,
        None => return Err(EngineError::RangeNotFound(range_id)),
    };
    let apply_state: ApplyState = match read_meta(&keys::apply_state_key(range_id))? {
        Some(b) => codec::decode(&b).map_err(|e| EngineError::codec(range_id, "apply state", e))?,
        None => return Err(EngineError::corruption(range_id, "apply state", "missing")),
    };
    let metadata = SnapshotMetadata {
        index: apply_state.applied_index,
        term: apply_state.applied_term,
        conf_state: apply_state.conf_state.clone(),
    };
    sink.header(SnapshotHeader {
        metadata: Some(metadata.clone()),
        descriptor: Some(descriptor.clone()),
        apply_state: Some(apply_state),
    })?;

    let mut seq = 0u64;
    let mut previous = 0u32;
    let mut rows: Vec<SnapshotRow> = Vec::new();
    let mut size = 0usize;
    let mut total = 0u64;
    let mut flush =
        |rows: &mut Vec<SnapshotRow>, last: bool, total: u64| -> Result<(), EngineError> {
            let checksum = chunk_checksum(previous, rows);
            previous = checksum;
            let chunk = SnapshotChunk {
                seq,
                rows: std::mem::take(rows),
                checksum,
                last,
                total_rows: if last { total } else { 0 },
            };
            seq += 1;
            sink.chunk(chunk)
        };

    let spans = {
        let (start, end) = keys::data_span(&descriptor);
        let (s_start, s_end) = keys::session_span(range_id);
        [
            (Cf::Data, SnapshotColumn::Data, start, end),
            (
                Cf::Meta,
                SnapshotColumn::Meta,
                s_start.to_vec(),
                s_end.to_vec(),
            ),
        ]
    };
    for (cf, column, start, end) in spans {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(end);
        let iter = snap.iterator_cf_opt(
            engine.cf(cf),
            opts,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            if column == SnapshotColumn::Meta {
                codec::decode::<SessionRecord>(&value)
                    .map_err(|e| EngineError::codec(range_id, "session", e))?;
            } else {
                codec::decode::<StoredValue>(&value)
                    .map_err(|e| EngineError::codec(range_id, "value", e))?;
            }
            size += key.len() + value.len() + 8;
            rows.push(SnapshotRow {
                column: column as i32,
                key: key.to_vec().into(),
                value: value.to_vec().into(),
            });
            total += 1;
            if size >= chunk_bytes {
                flush(&mut rows, false, total)?;
                size = 0;
            }
        }
    }
    flush(&mut rows, true, total)?;
    Ok(metadata)
}

/// Checks a snapshot chunk by chunk as it arrives.
#[derive(Debug)]
pub struct SnapshotReceiver {
    range_id: u64,
    header: SnapshotHeader,
    data_span: (Vec<u8>, Vec<u8>),
    session_span: ([u8; 9], [u8; 9]),
    next_seq: u64,
    previous: u32,
    rows: Vec<SnapshotRow>,
    done: bool,
}

/// A whole, verified snapshot, ready to install.
#[derive(Clone, Debug)]
pub struct ReceivedSnapshot {
    header: SnapshotHeader,
    rows: Vec<SnapshotRow>,
}

impl SnapshotReceiver {
    /// Starts receiving a snapshot of `range_id`.
    ///
    /// # Errors
    /// [`SnapshotError::Header`] when the header is incomplete or inconsistent.
    pub fn new(range_id: u64, header: SnapshotHeader) -> Result<Self, SnapshotError> {
        let bad = |s: String| Err(SnapshotError::Header(s));
        let (Some(meta), Some(desc), Some(apply)) =
            (&header.metadata, &header.descriptor, &header.apply_state)
        else {
            return bad("missing metadata, descriptor or apply state".into());
        };
        if desc.id != range_id {
            return bad(format!(
                "descriptor of range {}, expected {range_id}",
                desc.id
            ));
        }
        if apply.applied_index != meta.index || apply.applied_term != meta.term {
            return bad(format!(
                "apply state {}/{} does not match metadata {}/{}",
                apply.applied_index, apply.applied_term, meta.index, meta.term
            ));
        }
        if meta.conf_state.as_ref().is_none_or(|c| c.voters.is_empty()) {
            return bad("membership without voters".into());
        }
        if !desc.end_key.is_empty() && desc.end_key <= desc.start_key {
            return bad("empty key span".into());
        }
        let data_span = keys::data_span(desc);
        Ok(Self {
            range_id,
            header,
            data_span,
            session_span: keys::session_span(range_id),
            next_seq: 0,
            previous: 0,
            rows: Vec::new(),
            done: false,
        })
    }

    /// Takes the next chunk.
    ///
    /// # Errors
    /// [`SnapshotError`] for a chunk out of order, after the last one, failing its checksum or
    /// holding a row outside the range. The whole snapshot must then be dropped.
    pub fn push(&mut self, chunk: SnapshotChunk) -> Result<(), SnapshotError> {
        if self.done {
            return Err(SnapshotError::AfterLast { chunk: chunk.seq });
        }
        if chunk.seq != self.next_seq {
            return Err(SnapshotError::OutOfOrder {
                expected: self.next_seq,
                got: chunk.seq,
            });
        }
        let checksum = chunk_checksum(self.previous, &chunk.rows);
        if checksum != chunk.checksum {
            return Err(SnapshotError::Checksum { chunk: chunk.seq });
        }
        for row in &chunk.rows {
            let key = row.key.as_ref();
            let ok = match SnapshotColumn::try_from(row.column) {
                Ok(SnapshotColumn::Data) => {
                    key >= self.data_span.0.as_slice()
                        && key < self.data_span.1.as_slice()
                        && codec::decode::<StoredValue>(&row.value).is_ok()
                }
                Ok(SnapshotColumn::Meta) => {
                    key >= self.session_span.0.as_slice()
                        && key < self.session_span.1.as_slice()
                        && codec::decode::<SessionRecord>(&row.value).is_ok()
                }
                Err(_) => false,
            };
            if !ok {
                return Err(SnapshotError::RowOutOfSpan {
                    chunk: chunk.seq,
                    detail: format!("column {} key {:?}", row.column, key),
                });
            }
        }
        self.previous = checksum;
        self.next_seq += 1;
        self.rows.extend(chunk.rows);
        if chunk.last {
            if chunk.total_rows != self.rows.len() as u64 {
                return Err(SnapshotError::RowCount {
                    expected: chunk.total_rows,
                    got: self.rows.len() as u64,
                });
            }
            self.done = true;
        }
        Ok(())
    }

    /// The verified snapshot, once its last chunk arrived.
    ///
    /// # Errors
    /// [`SnapshotError::Truncated`] if the last chunk is missing.
    pub fn finish(self) -> Result<ReceivedSnapshot, SnapshotError> {
        if !self.done {
            return Err(SnapshotError::Truncated {
                chunks: self.next_seq,
            });
        }
        let _ = self.range_id;
        Ok(ReceivedSnapshot {
            header: self.header,
            rows: self.rows,
        })
    }
}

impl ReceivedSnapshot {
    /// Receives a whole snapshot held in memory.
    ///
    /// # Errors
    /// As [`SnapshotReceiver::new`], [`SnapshotReceiver::push`] and [`SnapshotReceiver::finish`].
    pub fn from_parts(range_id: u64, parts: SnapshotParts) -> Result<Self, SnapshotError> {
        let header = parts
            .header
            .ok_or_else(|| SnapshotError::Header("missing".into()))?;
        let mut receiver = SnapshotReceiver::new(range_id, header)?;
        for chunk in parts.chunks {
            receiver.push(chunk)?;
        }
        receiver.finish()
    }

    pub fn metadata(&self) -> &SnapshotMetadata {
        self.header
            .metadata
            .as_ref()
            .expect("checked by SnapshotReceiver::new")
    }

    pub fn descriptor(&self) -> &RangeDescriptor {
        self.header
            .descriptor
            .as_ref()
            .expect("checked by SnapshotReceiver::new")
    }

    /// Rows of user data and sessions.
    pub fn row_count(&self) -> usize {
        self.rows.len()
    }

    /// Refuses the install when another range on this node overlaps the snapshot's span: the
    /// span is cleared in the shared `data` column family, which would delete that range's rows
    /// (a late snapshot from before a split). The store must first remove or shrink the other
    /// replica.
    ///
    /// # Errors
    /// [`EngineError::Snapshot`] naming the overlapping range.
    pub fn check_no_overlap(&self, engine: &Engine) -> Result<(), EngineError> {
        let desc = self.descriptor();
        let (start, end) = keys::data_span(desc);
        for id in engine.range_ids()? {
            if id == desc.id {
                continue;
            }
            let Some(other) = engine.descriptor(id)? else {
                continue;
            };
            let (o_start, o_end) = keys::data_span(&other);
            if o_start < end && start < o_end {
                return Err(EngineError::Snapshot(format!(
                    "snapshot of range {} overlaps range {id} on this node",
                    desc.id
                )));
            }
        }
        Ok(())
    }

    /// Stages the state machine's part of the install: clear the range's data span and
    /// sessions, put every row, the descriptor and the apply state. The Raft part (log
    /// truncation, hard state) is staged next to it by `RangeLog::stage_ready`.
    pub(crate) fn stage_install(
        &self,
        engine: &Engine,
        batch: &mut WriteBatch,
    ) -> Result<(), EngineError> {
        let desc = self.descriptor();
        let range_id = desc.id;
        let (start, end) = keys::data_span(desc);
        batch.delete_range_cf(engine.cf(Cf::Data), start, end);
        let (s_start, s_end) = keys::session_span(range_id);
        batch.delete_range_cf(engine.cf(Cf::Meta), s_start, s_end);
        for row in &self.rows {
            let cf = match SnapshotColumn::try_from(row.column) {
                Ok(SnapshotColumn::Data) => Cf::Data,
                Ok(SnapshotColumn::Meta) => Cf::Meta,
                Err(_) => return Err(EngineError::Snapshot("unknown column".into())),
            };
            batch.put_cf(engine.cf(cf), &row.key, &row.value);
        }
        engine.put_record(batch, Cf::Meta, &keys::descriptor_key(range_id), desc);
        let apply = self
            .header
            .apply_state
            .as_ref()
            .expect("checked by SnapshotReceiver::new");
        engine.put_record(batch, Cf::Meta, &keys::apply_state_key(range_id), apply);
        Ok(())
    }
}
