//! The Raft safety properties (paper Figure 3), checked as the simulation runs.
//!
//! Every replica's log is mirrored as a chain of hashes (`hash[i]` covers entries `1..=i`), so
//! comparing two logs up to an index is one comparison. What is checked, and when:
//! - Election safety (paper 5.2): at most one leader per term, across all time and restarts.
//! - Leader append-only (5.3): a leader's writes within its term only ever append.
//! - Log matching (5.3): two logs with an entry of the same index and term are identical up to
//!   it — every written entry's `(index, term)` maps to one chain hash, globally.
//! - Leader completeness (5.4): a new leader's log holds every committed entry.
//! - State machine safety (5.4.3): every replica applies, at each index, the committed entry.
//! - No committed entry lost: the highest committed entry is durable (synced) on a quorum, after
//!   every step. This is what an acknowledgement sent before the fsync breaks.
//! - The commit rule (5.4.2, Figure 8): a leader's commit index, when it moves while it leads,
//!   lands on an entry of its own term (older entries commit only indirectly).
//! - Per replica: terms never go down (even across a crash), applies are consecutive.

use std::collections::HashMap;

use flotilla_engine::raft::{ConfState, Entry};

/// `(term, chain hash)` of one log entry.
pub type LogSlot = (u64, u64);

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn data_hash(data: &[u8]) -> u64 {
    // FNV-1a: fast on the small payloads the simulator writes.
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The chain hash of `entry` following a log whose last chain hash is `prev`.
pub fn chain(prev: u64, entry: &Entry) -> u64 {
    mix(prev ^ mix(entry.term.wrapping_add(entry.index << 20)) ^ data_hash(&entry.data))
}

/// A replica's log as `(term, chain hash)` per index (slot 0 is index 1).
#[derive(Clone, Debug, Default)]
pub struct MirrorLog {
    pub slots: Vec<LogSlot>,
}

impl MirrorLog {
    pub fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    pub fn slot(&self, index: u64) -> Option<LogSlot> {
        if index == 0 {
            return Some((0, 0));
        }
        self.slots.get(index as usize - 1).copied()
    }

    /// Writes `entries` as the storage would: replace from the first one's index on.
    pub fn write(&mut self, entries: &[Entry]) -> Result<(), String> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index == 0 || first.index > self.len() + 1 {
            return Err(format!(
                "write at index {} leaves a gap after {}",
                first.index,
                self.len()
            ));
        }
        self.slots.truncate(first.index as usize - 1);
        let mut prev = self.slot(first.index - 1).map_or(0, |s| s.1);
        for e in entries {
            prev = chain(prev, e);
            self.slots.push((e.term, prev));
        }
        Ok(())
    }
}

#[derive(Default)]
pub struct Checker {
    /// term -> the node that led it.
    leaders: HashMap<u64, u64>,
    /// (index, term) -> chain hash, for every entry any replica ever wrote.
    written: HashMap<(u64, u64), u64>,
    /// The committed prefix as first learned.
    committed: MirrorLog,
    /// For each committed index, the earliest term in which a replica reported it committed
    /// (non-decreasing along the log: committing an entry commits all before it).
    commit_terms: Vec<u64>,
    /// Hash of the key-value state after applying each index, as first seen.
    states: Vec<Option<u64>>,
    pub quorum: usize,
}

pub type Check = Result<(), String>;

impl Checker {
    pub fn new(voters: usize) -> Self {
        Self {
            quorum: voters / 2 + 1,
            ..Self::default()
        }
    }

    pub fn committed_len(&self) -> u64 {
        self.committed.len()
    }

    /// The committed log up to `index`, as a replica that installs a snapshot there holds it.
    pub fn committed_prefix(&self, index: u64) -> Result<MirrorLog, String> {
        if index > self.committed.len() {
            return Err(format!(
                "snapshot at index {index} beyond the committed log ({} entries)",
                self.committed.len()
            ));
        }
        Ok(MirrorLog {
            slots: self.committed.slots[..index as usize].to_vec(),
        })
    }

    /// State machine safety at the level of the state: every replica's key-value state after
    /// applying (or installing a snapshot at) `index` is the same.
    pub fn on_state(&mut self, node: u64, index: u64, state_hash: u64) -> Check {
        let i = index as usize;
        if self.states.len() < i {
            self.states.resize(i, None);
        }
        match self.states[i - 1] {
            Some(h) if h != state_hash => Err(format!(
                "node {node}'s state after index {index} differs from the replay of the \
                 committed log"
            )),
            Some(_) => Ok(()),
            None => {
                self.states[i - 1] = Some(state_hash);
                Ok(())
            }
        }
    }

    /// The last index known committed in a term before `term`.
    fn committed_before(&self, term: u64) -> u64 {
        self.commit_terms.partition_point(|&t| t < term) as u64
    }

    /// Election safety alone, on a replica seen leading `term` between its Readies.
    pub fn on_leader_seen(&mut self, node: u64, term: u64) -> Check {
        match self.leaders.insert(term, node) {
            Some(other) if other != node => Err(format!(
                "election safety: nodes {other} and {node} both led term {term}"
            )),
            _ => Ok(()),
        }
    }

    /// Election safety, on a replica reporting itself leader of `term`.
    pub fn on_leader(&mut self, node: u64, term: u64, log: &MirrorLog) -> Check {
        if let Some(&other) = self.leaders.get(&term) {
            if other != node {
                return Err(format!(
                    "election safety: nodes {other} and {node} both led term {term}"
                ));
            }
        }
        self.leaders.insert(term, node);
        // Leader completeness (paper 5.4): the leader of `term` holds every entry committed
        // in earlier terms. (A Ready can reach the simulator late, after a later term's leader
        // committed more: those entries are not this leader's business.)
        let c = self.committed_before(term);
        if c > 0 && log.slot(c) != self.committed.slot(c) {
            return Err(format!(
                "leader completeness: node {node}, leader of term {term}, lacks committed entry {c} \
                 (has {:?}, committed {:?}, its log has {} entries)",
                log.slot(c),
                self.committed.slot(c),
                log.len()
            ));
        }
        Ok(())
    }

    /// Log matching, on `entries` just written to a replica's log (already in `log`).
    pub fn on_written(&mut self, node: u64, log: &MirrorLog, entries: &[Entry]) -> Check {
        for e in entries {
            let Some((term, hash)) = log.slot(e.index) else {
                return Err(format!("node {node}: written entry {} missing", e.index));
            };
            debug_assert_eq!(term, e.term);
            match self.written.get(&(e.index, term)) {
                Some(&h) if h != hash => {
                    return Err(format!(
                        "log matching: node {node} has entry {} of term {term} with a different \
                         log prefix than another replica",
                        e.index
                    ))
                }
                Some(_) => {}
                None => {
                    self.written.insert((e.index, term), hash);
                }
            }
        }
        Ok(())
    }

    /// The commit rule, on a replica that led `term` since its previous report and now reports
    /// a higher `commit`.
    pub fn on_leader_commit(&self, node: u64, term: u64, commit: u64, log: &MirrorLog) -> Check {
        match log.slot(commit) {
            Some((t, _)) if t == term => Ok(()),
            other => Err(format!(
                "commit rule (Figure 8): leader {node} of term {term} committed index {commit} \
                 of term {:?} by counting replicas",
                other.map(|s| s.0)
            )),
        }
    }

    /// A replica in `term` reports `commit` (its hard state): its log up to there is committed.
    pub fn on_commit(&mut self, node: u64, term: u64, commit: u64, log: &MirrorLog) -> Check {
        if commit == 0 {
            return Ok(());
        }
        let Some(slot) = log.slot(commit) else {
            return Err(format!(
                "node {node} reports commit {commit} beyond its log of {} entries",
                log.len()
            ));
        };
        let known = self.committed.len();
        if commit <= known {
            if self.committed.slot(commit) != Some(slot) {
                return Err(format!(
                    "state machine safety: node {node} committed a different entry at {commit} \
                     (term {}) than was committed before (term {:?})",
                    slot.0,
                    self.committed.slot(commit).map(|s| s.0)
                ));
            }
            return Ok(());
        }
        // The new committed prefix must extend the known one.
        if known > 0 && log.slot(known) != self.committed.slot(known) {
            return Err(format!(
                "state machine safety: node {node} commits up to {commit} over a log that \
                 differs from the committed prefix at {known}"
            ));
        }
        for i in known + 1..=commit {
            if let Some(s) = log.slot(i) {
                self.committed.slots.push(s);
                self.commit_terms.push(term);
            }
        }
        Ok(())
    }

    /// State machine safety, on a replica applying `entry`.
    pub fn on_apply(&self, node: u64, entry: &Entry, log: &MirrorLog) -> Check {
        let mine = log.slot(entry.index);
        let committed = self.committed.slot(entry.index);
        if committed.is_none() {
            return Err(format!(
                "node {node} applies entry {} which nobody reported committed",
                entry.index
            ));
        }
        if mine != committed {
            return Err(format!(
                "state machine safety: node {node} applies entry {} (term {}) but the committed \
                 entry there is {:?}",
                entry.index, entry.term, committed
            ));
        }
        Ok(())
    }

    /// No committed entry lost, under a changing membership: `commit`, just committed by
    /// leader `node` counting in `conf`, is durable on a majority of its voters (of both halves
    /// when joint).
    pub fn check_commit_quorum<'a>(
        &self,
        node: u64,
        commit: u64,
        conf: &ConfState,
        durable: impl Fn(&u64) -> Option<&'a MirrorLog>,
    ) -> Check {
        let want = self.committed.slot(commit);
        for half in [&conf.voters, &conf.voters_outgoing] {
            if half.is_empty() {
                continue;
            }
            let holders = half
                .iter()
                .filter(|id| durable(id).is_some_and(|l| l.slot(commit) == want))
                .count();
            if holders * 2 <= half.len() {
                return Err(format!(
                    "leader {node} committed {commit} durable on only {holders} of voters {half:?}"
                ));
            }
        }
        Ok(())
    }

    /// Two consecutive configurations of a replica never have disjoint quorums (thesis 4.1):
    /// brute force over every subset of their voters.
    pub fn on_conf_change(&self, node: u64, before: &ConfState, after: &ConfState) -> Check {
        let ids: Vec<u64> = before
            .voters
            .iter()
            .chain(&before.voters_outgoing)
            .chain(&after.voters)
            .chain(&after.voters_outgoing)
            .copied()
            .collect::<std::collections::BTreeSet<u64>>()
            .into_iter()
            .collect();
        let is_quorum = |set: &[u64], cs: &ConfState| {
            [&cs.voters, &cs.voters_outgoing].iter().all(|half| {
                half.is_empty() || half.iter().filter(|v| set.contains(v)).count() * 2 > half.len()
            })
        };
        let subsets: Vec<Vec<u64>> = (0u32..1 << ids.len())
            .map(|mask| {
                ids.iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, &id)| id)
                    .collect()
            })
            .collect();
        for a in subsets.iter().filter(|s| is_quorum(s, before)) {
            let rest: Vec<u64> = ids.iter().copied().filter(|id| !a.contains(id)).collect();
            if is_quorum(&rest, after) {
                return Err(format!(
                    "node {node}: membership {before:?} -> {after:?} allows disjoint quorums \
                     {a:?} and {rest:?}"
                ));
            }
        }
        Ok(())
    }

    /// No committed entry lost: the committed prefix is durable on a quorum of replicas.
    pub fn check_durable_quorum<'a>(
        &self,
        durable_logs: impl Iterator<Item = &'a MirrorLog>,
    ) -> Check {
        let c = self.committed.len();
        if c == 0 {
            return Ok(());
        }
        let want = self.committed.slot(c);
        let holders = durable_logs.filter(|l| l.slot(c) == want).count();
        if holders < self.quorum {
            return Err(format!(
                "committed entry {c} is durable on only {holders} replicas (quorum {}): an \
                 acknowledgement went out before the data was synced",
                self.quorum
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn e(index: u64, term: u64, data: &'static str) -> Entry {
        Entry {
            index,
            term,
            data: Bytes::from_static(data.as_bytes()),
            ..Entry::default()
        }
    }

    /// The checkers catch what they claim to: each violation, planted by hand.
    #[test]
    fn checkers_catch_planted_violations() {
        let mut c = Checker::new(3);
        let mut a = MirrorLog::default();
        a.write(&[e(1, 1, "x"), e(2, 1, "y")]).expect("write");
        let mut b = MirrorLog::default();
        b.write(&[e(1, 1, "x"), e(2, 1, "DIFFERENT")])
            .expect("write");
        c.on_written(1, &a, &[e(1, 1, "x"), e(2, 1, "y")])
            .expect("first writer");
        assert!(
            c.on_written(2, &b, &[e(2, 1, "DIFFERENT")]).is_err(),
            "log matching"
        );

        c.on_leader(1, 1, &a).expect("first leader of term 1");
        assert!(c.on_leader(2, 1, &b).is_err(), "election safety");

        c.on_commit(1, 1, 2, &a).expect("commit");
        c.on_leader_commit(1, 1, 2, &a)
            .expect("entry 2 is of term 1");
        assert!(c.on_leader_commit(1, 2, 2, &a).is_err(), "commit rule");
        assert!(c.on_commit(2, 1, 2, &b).is_err(), "state machine safety");
        assert!(
            c.on_apply(2, &e(2, 1, "DIFFERENT"), &b).is_err(),
            "apply of a different entry"
        );
        let short = MirrorLog::default();
        assert!(c.on_leader(3, 2, &short).is_err(), "leader completeness");
        assert!(
            c.check_durable_quorum([&a, &short, &short].into_iter())
                .is_err(),
            "durable quorum"
        );
        c.check_durable_quorum([&a, &a, &short].into_iter())
            .expect("quorum holds");
    }
}
