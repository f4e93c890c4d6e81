//! The range cache: ranges by start key, each with the leader last seen, corrected by the
//! servers' typed errors.

use std::collections::BTreeMap;

use flotilla_transport::meta::RangeDescriptor;

#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub(crate) descriptor: RangeDescriptor,
    /// 0: unknown.
    pub(crate) leader_node: u64,
}

#[derive(Debug, Default)]
pub(crate) struct RangeCache {
    by_start: BTreeMap<Vec<u8>, Route>,
}

fn contains(d: &RangeDescriptor, key: &[u8]) -> bool {
    key >= d.start_key.as_ref() && (d.end_key.is_empty() || key < d.end_key.as_ref())
}

impl RangeCache {
    /// The range holding internal key `key`.
    pub(crate) fn locate(&self, key: &[u8]) -> Option<Route> {
        let (_, route) = self.by_start.range(..=key.to_vec()).next_back()?;
        contains(&route.descriptor, key).then(|| route.clone())
    }

    /// The range holding the internal keys just below `key` (an empty `key`: the last range).
    pub(crate) fn locate_before(&self, key: &[u8]) -> Option<Route> {
        let route = if key.is_empty() {
            self.by_start.values().next_back()?
        } else {
            self.by_start.range(..key.to_vec()).next_back()?.1
        };
        let end = &route.descriptor.end_key;
        let holds = if key.is_empty() {
            end.is_empty()
        } else {
            end.is_empty() || end.as_ref() >= key
        };
        holds.then(|| route.clone())
    }

    /// Puts `descriptor` in, evicting the ranges it overlaps that are older.
    pub(crate) fn insert(&mut self, descriptor: RangeDescriptor, leader_node: u64) {
        let version = |d: &RangeDescriptor| d.epoch.map_or((0, 0), |e| (e.version, e.conf_ver));
        let overlapping: Vec<Vec<u8>> = self
            .by_start
            .iter()
            .filter(|(_, r)| {
                let d = &r.descriptor;
                let starts_before_end =
                    descriptor.end_key.is_empty() || d.start_key < descriptor.end_key;
                let ends_after_start = d.end_key.is_empty() || d.end_key > descriptor.start_key;
                starts_before_end && ends_after_start
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in overlapping {
            if let Some(old) = self.by_start.get(&key) {
                if old.descriptor.id == descriptor.id
                    && version(&old.descriptor) > version(&descriptor)
                {
                    return;
                }
            }
            self.by_start.remove(&key);
        }
        self.by_start.insert(
            descriptor.start_key.to_vec(),
            Route {
                descriptor,
                leader_node,
            },
        );
    }

    pub(crate) fn set_leader(&mut self, range_id: u64, leader_node: u64) {
        if let Some(route) = self
            .by_start
            .values_mut()
            .find(|r| r.descriptor.id == range_id)
        {
            route.leader_node = leader_node;
        }
    }

    pub(crate) fn remove(&mut self, range_id: u64) {
        self.by_start.retain(|_, r| r.descriptor.id != range_id);
    }
}
