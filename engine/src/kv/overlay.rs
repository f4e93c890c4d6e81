//! The writes of one apply batch, held in memory until the batch is written, so that each
//! command sees the effects of the commands before it in the same batch (a Txn's compare must
//! see the put of the entry just before it).

use std::collections::BTreeMap;
use std::ops::Bound;

use flotilla_transport::kv::StoredValue;
use flotilla_transport::meta::SessionRecord;
use rocksdb::WriteBatch;

use crate::storage::{keys, Cf, Engine, EngineError};

pub(crate) struct Overlay<'a> {
    engine: &'a Engine,
    range_id: u64,
    /// Internal key -> new value, `None` for a delete.
    data: BTreeMap<Vec<u8>, Option<StoredValue>>,
    /// Client id -> session, `None` for a dropped one.
    sessions: BTreeMap<u64, Option<SessionRecord>>,
}

impl<'a> Overlay<'a> {
    pub(crate) fn new(engine: &'a Engine, range_id: u64) -> Self {
        Self {
            engine,
            range_id,
            data: BTreeMap::new(),
            sessions: BTreeMap::new(),
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, EngineError> {
        if let Some(v) = self.data.get(key) {
            return Ok(v.clone());
        }
        self.engine
            .read_record(Cf::Data, key, self.range_id, "value")
    }

    pub(crate) fn put(&mut self, key: Vec<u8>, value: StoredValue) {
        self.data.insert(key, Some(value));
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.data.insert(key, None);
    }

    /// The live keys in `[start, end)`, in order.
    pub(crate) fn keys_in(&self, start: &[u8], end: &[u8]) -> Result<Vec<Vec<u8>>, EngineError> {
        let mut keys = BTreeMap::new();
        if start < end {
            let opts = self.engine.read_options_bounded(end);
            let iter = self.engine.db().iterator_cf_opt(
                self.engine.cf(Cf::Data),
                opts,
                rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward),
            );
            for item in iter {
                let (key, _) = item?;
                keys.insert(key.to_vec(), true);
            }
            let span = (
                Bound::Included(start.to_vec()),
                Bound::Excluded(end.to_vec()),
            );
            for (k, v) in self.data.range::<Vec<u8>, _>(span) {
                keys.insert(k.clone(), v.is_some());
            }
        }
        Ok(keys
            .into_iter()
            .filter(|(_, live)| *live)
            .map(|(k, _)| k)
            .collect())
    }

    pub(crate) fn session(&self, client_id: u64) -> Result<Option<SessionRecord>, EngineError> {
        if let Some(s) = self.sessions.get(&client_id) {
            return Ok(s.clone());
        }
        self.engine.read_record(
            Cf::Meta,
            &keys::session_key(self.range_id, client_id),
            self.range_id,
            "session",
        )
    }

    pub(crate) fn put_session(&mut self, session: SessionRecord) {
        self.sessions.insert(session.client_id, Some(session));
    }

    /// Every session of the range as of now (stored ones overlaid by this batch's changes).
    pub(crate) fn all_sessions(&self) -> Result<Vec<SessionRecord>, EngineError> {
        let (start, end) = keys::session_span(self.range_id);
        let opts = self.engine.read_options_bounded(&end);
        let iter = self.engine.db().iterator_cf_opt(
            self.engine.cf(Cf::Meta),
            opts,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let mut all = BTreeMap::new();
        for item in iter {
            let (_, value) = item?;
            let s: SessionRecord = crate::storage::decode(&value)
                .map_err(|e| EngineError::corruption(self.range_id, "session", e))?;
            all.insert(s.client_id, Some(s));
        }
        for (id, s) in &self.sessions {
            all.insert(*id, s.clone());
        }
        Ok(all.into_values().flatten().collect())
    }

    pub(crate) fn drop_session(&mut self, client_id: u64) {
        self.sessions.insert(client_id, None);
    }

    /// Moves every write into `batch`.
    pub(crate) fn flush(self, batch: &mut WriteBatch) {
        let data_cf = self.engine.cf(Cf::Data);
        for (key, value) in self.data {
            match value {
                Some(v) => batch.put_cf(data_cf, key, crate::storage::encode(&v)),
                None => batch.delete_cf(data_cf, key),
            }
        }
        let meta_cf = self.engine.cf(Cf::Meta);
        for (client_id, session) in self.sessions {
            let key = keys::session_key(self.range_id, client_id);
            match session {
                Some(s) => batch.put_cf(meta_cf, key, crate::storage::encode(&s)),
                None => batch.delete_cf(meta_cf, key),
            }
        }
    }
}

/// The row that replaces `prev` (or is new) with `value` at `revision`: the creation revision
/// kept, the version one past the previous one (etcd's `create_revision` / `version`).
pub(crate) fn next_value(
    prev: Option<&StoredValue>,
    value: bytes::Bytes,
    revision: u64,
) -> StoredValue {
    let (create_revision, version) = match prev {
        Some(p) => (p.create_revision, p.version + 1),
        None => (revision, 1),
    };
    StoredValue {
        value,
        create_revision,
        mod_revision: revision,
        version,
    }
}
