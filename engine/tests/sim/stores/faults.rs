//! The whole-store simulator's fault menu, and the state it prints when a run fails.

use std::collections::BTreeMap;

use flotilla_engine::raft::Role;
use rand::seq::IndexedRandom;
use rand::Rng;

use super::clients::SimClient;
use super::{Event, StoreWorld};
use crate::network::TICK_US;

impl StoreWorld {
    /// One fault from the menu: crash and restart, a stall longer than an election timeout,
    /// partitions (symmetric, one-way, a range's leader isolated), a clogged link.
    pub(super) fn fault(&mut self) {
        let ids = self.node_ids();
        let down = ids.iter().filter(|&&i| !self.nodes[&i].is_up()).count();
        let target = *ids.choose(&mut self.rng).expect("nodes");
        match self.rng.random_range(0..6) {
            0 | 1 if down < 2 && self.nodes[&target].is_up() => {
                self.node(target).crash();
                let back = self.rng.random_range(3..40) * TICK_US;
                self.schedule(back, Event::Restart(target));
                self.say(|| format!("node {target} crashes"));
            }
            2 if self.nodes[&target].is_up() => {
                let until = self.now + self.rng.random_range(12..40) * TICK_US;
                self.node(target).paused_until = Some(until);
                self.say(|| format!("node {target} stalls"));
            }
            3 => {
                let mut side = ids.clone();
                side.retain(|_| self.rng.random_bool(0.5));
                self.net.partition(&side, &ids);
                let heal = self.rng.random_range(5..40) * TICK_US;
                self.schedule(heal, Event::NetHeal);
                self.say(|| format!("partition {side:?} from the rest"));
            }
            4 => {
                // Isolate the node leading the most ranges.
                let mut leads: BTreeMap<u64, usize> = BTreeMap::new();
                for (&id, node) in &mut self.nodes {
                    if let Some(store) = node.store.as_mut() {
                        let ranges: Vec<u64> = store.range_ids().collect();
                        for r in ranges {
                            if store
                                .peer_mut(r)
                                .is_some_and(|p| p.raft().status().role == Role::Leader)
                            {
                                *leads.entry(id).or_default() += 1;
                            }
                        }
                    }
                }
                let leader = leads
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map_or(target, |(id, _)| *id);
                self.net.partition(&[leader], &ids);
                let heal = self.rng.random_range(5..40) * TICK_US;
                self.schedule(heal, Event::NetHeal);
                self.say(|| format!("node {leader} (leading the most ranges) isolated"));
            }
            _ => {
                let other = *ids.choose(&mut self.rng).expect("nodes");
                if other != target {
                    if self.rng.random_bool(0.5) {
                        self.net.cut_one_way(target, other);
                        self.say(|| format!("link {target} -> {other} cut"));
                    } else {
                        self.net.clog(target, other);
                        self.say(|| format!("link {target} -> {other} clogged"));
                    }
                    let heal = self.rng.random_range(5..40) * TICK_US;
                    self.schedule(heal, Event::NetHeal);
                }
            }
        }
    }

    pub(super) fn describe(&mut self) -> String {
        let mut parts = Vec::new();
        for (id, node) in &mut self.nodes {
            let Some(store) = node.store.as_mut() else {
                parts.push(format!("node {id} down"));
                continue;
            };
            let ranges: Vec<u64> = store.range_ids().collect();
            let mut each = Vec::new();
            for r in ranges {
                let quiet = store.is_quiet(r);
                if let Some(p) = store.peer_mut(r) {
                    let s = p.raft().status();
                    let progress = p.raft().follower_progress();
                    each.push(format!(
                        "{r}:{:?} t{} c{} a{} last{}{}{}",
                        s.role,
                        s.term,
                        s.committed,
                        p.applier().applied_index(),
                        s.last_index,
                        if quiet { " quiet" } else { "" },
                        if progress.is_empty() {
                            String::new()
                        } else {
                            format!(" {progress:?}")
                        }
                    ));
                }
            }
            parts.push(format!("node {id} [{}]", each.join(", ")));
        }
        let clients: Vec<String> = self.clients.iter().map(SimClient::describe).collect();
        let missing = match self.checker.converged(&mut self.nodes) {
            Ok(Err(why)) | Err(why) => why,
            Ok(Ok(())) => "nothing".into(),
        };
        format!(
            "{missing}; {}; clients: {}",
            parts.join("; "),
            clients.join(", ")
        )
    }
}
