//! Batches: many keys in one call. `batch_get` reads the keys concurrently, 64 at a time (each
//! one linearizable); `batch_put` groups the pairs by range and writes each group as one
//! transaction, so each range's share is atomic (the batch as a whole is not: ranges commit
//! independently).

use std::collections::BTreeMap;

use bytes::Bytes;
use flotilla_transport::kv::KeyValue;
use futures_util::future::try_join_all;
use futures_util::{StreamExt, TryStreamExt};

/// Gets of one `batch_get` in flight at once (the answers keep the keys' order).
const BATCH_GETS_IN_FLIGHT: usize = 64;

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
        futures_util::stream::iter(keys.iter().map(|k| self.get(k)))
            .buffered(BATCH_GETS_IN_FLIGHT)
            .try_collect()
            .await
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
            // Keys of ranges not cached yet group under 0: `put_group` finds their ranges.
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
        match self.put_txn(&group).await {
            Err(ClientError::CrossRange { .. }) => {}
            done => return done,
        }
        // The keys turned out to span ranges (a cold cache, or a split): find each key's
        // range, then one transaction per range; key by key only where that still fails.
        let deadline = std::time::Instant::now() + self.inner.config.deadline;
        let mut regrouped: BTreeMap<u64, Vec<(Vec<u8>, Bytes)>> = BTreeMap::new();
        for (key, value) in group {
            let internal_key = internal(&key);
            if self.inner.cache.lock().locate(&internal_key).is_none() {
                self.locate(&internal_key, deadline).await?;
            }
            let range = self
                .inner
                .cache
                .lock()
                .locate(&internal_key)
                .map_or(0, |r| r.descriptor.id);
            regrouped.entry(range).or_default().push((key, value));
        }
        try_join_all(regrouped.into_values().map(|g| async move {
            match self.put_txn(&g).await {
                Err(ClientError::CrossRange { .. }) => {
                    try_join_all(g.iter().map(|(k, v)| self.put(k, v.clone()))).await?;
                    Ok(())
                }
                done => done,
            }
        }))
        .await?;
        Ok(())
    }

    /// The group's puts as one transaction.
    async fn put_txn(&self, group: &[(Vec<u8>, Bytes)]) -> Result<(), ClientError> {
        let ops: Vec<_> = group
            .iter()
            .map(|(k, v)| crate::txn::put(k, v.clone()))
            .collect();
        self.txn().and_then(ops).commit().await.map(drop)
    }
}
