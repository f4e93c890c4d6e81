//! Batches: many keys in one call. `batch_get` reads every key concurrently (each one
//! linearizable); `batch_put` groups the pairs by range and writes each group as one
//! transaction, so each range's share is atomic (the batch as a whole is not: ranges commit
//! independently).

use std::collections::BTreeMap;

use bytes::Bytes;
use flotilla_transport::kv::KeyValue;
use futures_util::future::try_join_all;

use crate::client::{internal, Client};
use crate::error::ClientError;

impl Client {
    /// The value of every key, in the order given (`None`: absent).
    ///
    /// # Errors
    /// The first [`ClientError`] of any key.
    pub async fn batch_get<K: AsRef<[u8]>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<KeyValue>>, ClientError> {
        let keys: Vec<Vec<u8>> = keys.into_iter().map(|k| k.as_ref().to_vec()).collect();
        try_join_all(keys.iter().map(|k| self.get(k))).await
    }

    /// Sets every pair: one transaction per range the keys fall in, all ranges concurrently.
    /// A group whose range split meanwhile is written key by key.
    ///
    /// # Errors
    /// The first [`ClientError`] of any group; other groups may have applied.
    pub async fn batch_put<K: AsRef<[u8]>, V: Into<Bytes>>(
        &self,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), ClientError> {
        let mut groups: BTreeMap<u64, Vec<(Vec<u8>, Bytes)>> = BTreeMap::new();
        for (k, v) in pairs {
            let key = k.as_ref().to_vec();
            // Unknown ranges group under 0 first: the first write of that group fills the
            // cache, and the rest follow as one transaction per range they turn out to be in.
            let range = self
                .inner
                .cache
                .lock()
                .locate(&internal(&key))
                .map_or(0, |r| r.descriptor.id);
            groups.entry(range).or_default().push((key, v.into()));
        }
        try_join_all(groups.into_values().map(|group| self.put_group(group))).await?;
        Ok(())
    }

    async fn put_group(&self, group: Vec<(Vec<u8>, Bytes)>) -> Result<(), ClientError> {
        let ops: Vec<_> = group
            .iter()
            .map(|(k, v)| crate::txn::put(k, v.clone()))
            .collect();
        match self.txn().and_then(ops).commit().await {
            Ok(_) => Ok(()),
            Err(ClientError::CrossRange { .. }) => {
                try_join_all(group.into_iter().map(|(k, v)| self.put(k, v))).await?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
