//! The per-range cache of recent log entries that serves replication reads (DESIGN section 5),
//! bounded per range and across all ranges of the node.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flotilla_transport::raft::Entry;

use crate::raft::entry_size;

/// The node-wide byte budget shared by all entry caches.
#[derive(Debug)]
pub struct CacheBudget {
    used: AtomicU64,
    limit: u64,
    per_range_limit: u64,
}

impl CacheBudget {
    pub fn new(limit: u64, per_range_limit: u64) -> Self {
        Self {
            used: AtomicU64::new(0),
            limit,
            per_range_limit,
        }
    }

    /// Bytes held by all caches.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// Recent entries of one range, contiguous by index.
#[derive(Debug)]
pub struct EntryCache {
    entries: VecDeque<Entry>,
    bytes: u64,
    budget: Arc<CacheBudget>,
}

impl EntryCache {
    pub fn new(budget: Arc<CacheBudget>) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    /// Appends `new` (contiguous), replacing cached entries at or after `new[0].index`. Entries
    /// that would not follow the cache's last one start a new cache.
    pub fn append(&mut self, new: &[Entry]) {
        let Some(first) = new.first() else { return };
        match (self.entries.front(), self.entries.back()) {
            (Some(front), Some(back))
                if first.index > front.index && first.index <= back.index + 1 =>
            {
                let keep = (first.index - front.index) as usize;
                while self.entries.len() > keep {
                    self.pop_back();
                }
            }
            _ => self.clear(),
        }
        for e in new {
            debug_assert!(self.entries.back().is_none_or(|b| b.index + 1 == e.index));
            let size = entry_size(e);
            self.bytes += size;
            self.budget.used.fetch_add(size, Ordering::Relaxed);
            self.entries.push_back(e.clone());
        }
        self.evict();
    }

    /// Drops the oldest entries while this cache or the node's budget is over its limit.
    fn evict(&mut self) {
        while !self.entries.is_empty()
            && (self.bytes > self.budget.per_range_limit || self.budget.used() > self.budget.limit)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.release(entry_size(&e));
        }
    }

    fn pop_back(&mut self) {
        if let Some(e) = self.entries.pop_back() {
            self.release(entry_size(&e));
        }
    }

    fn release(&mut self, size: u64) {
        self.bytes -= size;
        self.budget.used.fetch_sub(size, Ordering::Relaxed);
    }

    /// Forgets entries up to and including `index` (compacted).
    pub fn compact_to(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.index <= index) {
            self.pop_front();
        }
    }

    pub fn clear(&mut self) {
        while !self.entries.is_empty() {
            self.pop_back();
        }
    }

    /// The first cached index, if any.
    pub fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }

    /// The cached entry at `index`.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let first = self.first_index()?;
        let offset = usize::try_from(index.checked_sub(first)?).ok()?;
        self.entries.get(offset)
    }

    /// Entries `low..high` if all are cached.
    pub fn range(&self, low: u64, high: u64) -> Option<impl Iterator<Item = &Entry>> {
        let first = self.first_index()?;
        let last = first + self.entries.len() as u64 - 1;
        if low < first || high > last + 1 || low > high {
            return None;
        }
        Some(
            self.entries
                .range((low - first) as usize..(high - first) as usize),
        )
    }
}

impl Drop for EntryCache {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64, size: usize) -> Entry {
        Entry {
            index,
            term: 1,
            data: vec![0; size].into(),
            ..Entry::default()
        }
    }

    #[test]
    fn conflicts_replace_the_suffix_and_limits_evict_the_oldest() {
        let budget = Arc::new(CacheBudget::new(1000, 500));
        let mut a = EntryCache::new(budget.clone());
        a.append(&[e(1, 76), e(2, 76), e(3, 76)]);
        assert_eq!(a.range(1, 4).map(|i| i.count()), Some(3));
        a.append(&[e(2, 76)]);
        assert_eq!(a.range(1, 3).map(|i| i.count()), Some(2));
        assert!(a.range(1, 4).is_none());
        a.append(&[e(3, 76), e(4, 76), e(5, 76), e(6, 76), e(7, 76)]);
        // 100 bytes each, 500 per range: the oldest two went.
        assert_eq!(a.first_index(), Some(3));
        assert_eq!(budget.used(), 500);
        let mut b = EntryCache::new(budget.clone());
        b.append(&[e(1, 476), e(2, 476), e(3, 476)]);
        // The node-wide budget (1000) evicts from the range that appends.
        assert!(budget.used() <= 1000);
        a.compact_to(5);
        assert_eq!(a.first_index(), Some(6));
        a.append(&[e(20, 1)]);
        assert_eq!(a.first_index(), Some(20));
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
