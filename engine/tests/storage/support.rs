//! Helpers shared by the storage tests: a node's engine in a temporary directory, ranges, and
//! entries carrying key-value commands.

use std::sync::Arc;

use bytes::Bytes;
use flotilla_engine::kv::{KvConfig, RangeApplier};
use flotilla_engine::storage::{keys, Engine, EngineConfig, LogBatch, RangeLog};
use flotilla_transport::kv::{
    write_request, CommandHeader, DeleteRangeRequest, DeleteRequest, PutRequest, RaftCommand,
    TxnRequest, WriteRequest,
};
use flotilla_transport::meta::{RangeDescriptor, RangeEpoch, Replica};
use flotilla_transport::raft::{ConfState, Entry, EntryType, SnapshotMetadata};
use prost::Message;

pub const CLUSTER: &str = "test-cluster";

pub fn open(dir: &std::path::Path) -> Arc<Engine> {
    Engine::open(&EngineConfig::new(dir, CLUSTER, 1)).expect("open engine")
}

/// Range `id` covering user keys `[start, end)` (empty end: +inf), one voter.
pub fn descriptor(id: u64, start: &[u8], end: &[u8]) -> RangeDescriptor {
    RangeDescriptor {
        id,
        start_key: keys::data_key(start).into(),
        end_key: if end.is_empty() {
            Bytes::new()
        } else {
            keys::data_key(end).into()
        },
        epoch: Some(RangeEpoch {
            version: 1,
            conf_ver: 1,
        }),
        replicas: vec![Replica {
            node_id: 1,
            replica_id: 1,
            role: 0,
        }],
    }
}

pub fn initial() -> SnapshotMetadata {
    SnapshotMetadata {
        index: 0,
        term: 0,
        conf_state: Some(ConfState {
            voters: vec![1],
            ..ConfState::default()
        }),
    }
}

/// Creates the ranges (synced) and returns their logs and appliers.
pub fn create_ranges(
    engine: &Arc<Engine>,
    descs: &[RangeDescriptor],
) -> Vec<(RangeLog, RangeApplier)> {
    let mut batch = LogBatch::new();
    for d in descs {
        RangeLog::create(engine, &mut batch, d, &initial()).expect("create range");
    }
    batch.commit(engine).expect("commit");
    descs.iter().map(|d| load_range(engine, d.id)).collect()
}

pub fn load_range(engine: &Arc<Engine>, id: u64) -> (RangeLog, RangeApplier) {
    (
        RangeLog::load(engine.clone(), id).expect("load log"),
        RangeApplier::load(engine.clone(), id, KvConfig::default()).expect("load applier"),
    )
}

/// A command header from client `client_id` (0: no session) at `seq`.
pub fn header(range_id: u64, client_id: u64, seq: u64) -> CommandHeader {
    CommandHeader {
        range_id,
        epoch: Some(RangeEpoch {
            version: 1,
            conf_ver: 1,
        }),
        client_id,
        seq,
        first_unacked_seq: if seq == 0 { 0 } else { 1 },
        session_start_ms: 1_000,
        proposed_at_ms: 1_000 + seq,
    }
}

pub fn command(header: CommandHeader, request: write_request::Request) -> Bytes {
    RaftCommand {
        header: Some(header),
        request: Some(WriteRequest {
            request: Some(request),
        }),
        admin: None,
    }
    .encode_to_vec()
    .into()
}

pub fn put(key: &str, value: &str) -> write_request::Request {
    write_request::Request::Put(PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        prev_kv: true,
    })
}

pub fn delete(key: &str) -> write_request::Request {
    write_request::Request::Delete(DeleteRequest {
        key: key.as_bytes().to_vec().into(),
        prev_kv: true,
    })
}

pub fn delete_range(start: &str, end: &str) -> write_request::Request {
    write_request::Request::DeleteRange(DeleteRangeRequest {
        start: start.as_bytes().to_vec().into(),
        end: end.as_bytes().to_vec().into(),
    })
}

pub fn txn(t: TxnRequest) -> write_request::Request {
    write_request::Request::Txn(t)
}

pub fn entry(index: u64, term: u64, data: Bytes) -> Entry {
    Entry {
        entry_type: EntryType::Normal as i32,
        term,
        index,
        data,
    }
}

/// One range driven by hand, as a single-voter store would: append, commit (synced), apply.
pub struct Single {
    pub engine: Arc<Engine>,
    pub log: RangeLog,
    pub applier: RangeApplier,
}

impl Single {
    pub fn new(engine: &Arc<Engine>, desc: RangeDescriptor) -> Self {
        let (log, applier) = create_ranges(engine, &[desc]).pop().expect("one range");
        Self {
            engine: engine.clone(),
            log,
            applier,
        }
    }

    pub fn last_index(&self) -> u64 {
        use flotilla_engine::raft::LogStore;
        self.log.last_index().expect("last index")
    }

    /// Appends one entry per payload, commits them in one synced batch, applies them.
    pub fn write_all(&mut self, payloads: Vec<Bytes>) -> Vec<flotilla_engine::kv::Applied> {
        let first = self.last_index() + 1;
        let entries: Vec<Entry> = payloads
            .into_iter()
            .enumerate()
            .map(|(i, d)| entry(first + i as u64, 1, d))
            .collect();
        let last = first + entries.len() as u64 - 1;
        let hs = flotilla_transport::raft::HardState {
            term: 1,
            vote: 1,
            commit: last,
        };
        let mut batch = LogBatch::new();
        self.log
            .stage(&mut batch, None, &entries, Some(&hs))
            .expect("stage");
        batch.commit(&self.engine).expect("commit");
        self.applier.apply(&entries, None).expect("apply")
    }

    pub fn write(&mut self, payload: Bytes) -> flotilla_engine::kv::Applied {
        self.write_all(vec![payload]).pop().expect("one command")
    }
}
