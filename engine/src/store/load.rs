//! Load per range at its leader (DESIGN section 10: "range leaders heartbeat their ranges"):
//! each poller counts the reads and writes that reach it per range, and once a second (its
//! survey) turns the counts into rates for the ranges it leads, with the size its last size
//! check measured. The node's placement heartbeat and `cluster.Info` read the result.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// What a leader reports of one range.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RangeLoad {
    pub reads_per_second: f64,
    pub writes_per_second: f64,
    /// Keys and values, as the last size check measured them (None: not measured since the
    /// node started; a check runs once a quarter of `split-size-bytes` was written).
    pub size_bytes: Option<u64>,
}

impl RangeLoad {
    pub fn requests_per_second(&self) -> f64 {
        self.reads_per_second + self.writes_per_second
    }
}

/// One poller's request counts since its last survey.
#[derive(Debug)]
pub(crate) struct LoadCounter {
    counts: HashMap<u64, (u64, u64)>,
    since: Instant,
    /// Sizes measured by the size checks, by range.
    sizes: HashMap<u64, u64>,
}

impl LoadCounter {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            counts: HashMap::new(),
            since: now,
            sizes: HashMap::new(),
        }
    }

    pub(crate) fn read(&mut self, range_id: u64) {
        self.counts.entry(range_id).or_default().0 += 1;
    }

    pub(crate) fn write(&mut self, range_id: u64) {
        self.counts.entry(range_id).or_default().1 += 1;
    }

    pub(crate) fn measured(&mut self, range_id: u64, size_bytes: u64) {
        self.sizes.insert(range_id, size_bytes);
    }

    /// The loads of `led` since the last call (counts start again from zero); sizes of ranges
    /// no longer `hosted` are forgotten.
    pub(crate) fn survey(
        &mut self,
        now: Instant,
        led: &[u64],
        hosted: impl Fn(u64) -> bool,
    ) -> BTreeMap<u64, RangeLoad> {
        let seconds = now
            .saturating_duration_since(self.since)
            .as_secs_f64()
            .max(1e-3);
        self.since = now;
        let counts = std::mem::take(&mut self.counts);
        self.sizes.retain(|id, _| hosted(*id));
        led.iter()
            .map(|id| {
                let (reads, writes) = counts.get(id).copied().unwrap_or_default();
                let load = RangeLoad {
                    reads_per_second: reads as f64 / seconds,
                    writes_per_second: writes as f64 / seconds,
                    size_bytes: self.sizes.get(id).copied(),
                };
                (*id, load)
            })
            .collect()
    }
}
