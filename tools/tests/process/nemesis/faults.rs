//! The nemesis' faults: one at a time, on a seeded schedule, each held past an election
//! timeout, then healed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_client::Client;
use flotilla_transport::ClientEndpoint;
use prost::Message as _;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::{COUNTERS, REGISTERS};
use crate::support::{ProcessCluster, DEADLINE};

/// The faults, by kind, as counted in the summary.
pub(super) const FAULTS: &[&str] = &[
    "kill",
    "kill_meta_leader",
    "kill_majority",
    "pause",
    "partition",
    "partition_one_way",
    "isolate_leader",
    "split",
    "move",
    "crash_before_sync",
    "fsync_failure",
];

pub(super) struct Nemesis {
    pub(super) cluster: ProcessCluster,
    pub(super) rpc: ClientEndpoint,
    pub(super) admin: Client,
    pub(super) rng: ChaCha8Rng,
    pub(super) counts: BTreeMap<&'static str, u64>,
    pub(super) log: Vec<serde_json::Value>,
    pub(super) started: Instant,
    pub(super) violations: Vec<String>,
}

impl Nemesis {
    pub(super) fn note(&mut self, fault: &'static str, detail: serde_json::Value) {
        *self.counts.entry(fault).or_default() += 1;
        let at = self.started.elapsed().as_secs_f64();
        eprintln!("nemesis {at:7.1}s {fault} {detail}");
        self.log
            .push(json!({ "at_s": at, "fault": fault, "detail": detail }));
    }

    fn note_unmet(&mut self, fault: &'static str, id: u64) {
        let at = self.started.elapsed().as_secs_f64();
        eprintln!("nemesis {at:7.1}s {fault} on node {id} not met: it wrote nothing in 40 s");
        self.log
            .push(json!({ "at_s": at, "fault": fault, "detail": { "node": id, "met": false } }));
    }

    pub(super) fn ids(&self) -> Vec<u64> {
        self.cluster.nodes.iter().map(|p| p.id).collect()
    }

    pub(super) fn addr(&self, id: u64) -> SocketAddr {
        self.cluster.node(id).listen
    }

    /// Sets node `id`'s partition (`Some((drop_to, drop_from))`) and/or a failpoint, asking
    /// again for up to 10 s (a node that just restarted takes a moment to answer, and the
    /// endpoint's connection to its previous process is gone). Whether the node took it.
    pub(super) async fn faults(
        &mut self,
        id: u64,
        partition: Option<(&[u64], &[u64])>,
        failpoint: (&str, &str),
    ) -> bool {
        let (drop_to, drop_from) = partition.unwrap_or((&[], &[]));
        let body = Bytes::from(
            flotilla_transport::service::NemesisFaults {
                partition: partition.is_some(),
                drop_to: drop_to.to_vec(),
                drop_from: drop_from.to_vec(),
                failpoint: failpoint.0.into(),
                action: failpoint.1.into(),
            }
            .encode_to_vec(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self
                .rpc
                .call(
                    self.addr(id),
                    "nemesis.Faults",
                    body.clone(),
                    Duration::from_secs(2),
                )
                .await;
            match r {
                Ok(_) => return true,
                // A node that is not running has no faults to set (a restart clears them).
                Err(_) if !self.cluster.nodes[(id - 1) as usize].is_running() => return false,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("nemesis: node {id} did not take its faults: {e}");
                    return false;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The synced writes node `id` has done since it started (`None`: no answer).
    async fn synced_writes(&self, id: u64) -> Option<u64> {
        let status = self.admin.node_status(self.addr(id));
        match tokio::time::timeout(Duration::from_secs(3), status).await {
            Ok(Ok(s)) => Some(s.synced_writes),
            _ => None,
        }
    }

    /// Holds a fault for 2-5 s: past an election timeout (1-2 s).
    pub(super) async fn hold(&mut self) {
        let ms = self.rng.random_range(2_000..5_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    pub(super) fn pick(&mut self, from: &[u64]) -> u64 {
        from[self.rng.random_range(0..from.len())]
    }

    /// The leader of `range` as the first live node's status port tells (0: unknown).
    pub(super) async fn leader_of(&self, range: u64) -> u64 {
        for p in &self.cluster.nodes {
            let addr = p.status;
            let status = tokio::task::spawn_blocking(move || {
                crate::support::http_get(addr, "/status")
                    .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            })
            .await
            .ok()
            .flatten();
            let Some(status) = status else { continue };
            let leader = status["range_list"]
                .as_array()
                .and_then(|l| l.iter().find(|r| r["id"] == range))
                .and_then(|r| r["leader_node"].as_u64())
                .unwrap_or(0);
            if leader != 0 {
                return leader;
            }
        }
        0
    }

    pub(super) async fn restart(&mut self, ids: &[u64]) {
        for id in ids {
            if !self.cluster.nodes[(*id - 1) as usize].is_running() {
                self.cluster.spawn(*id);
            }
        }
    }

    /// Clears every node's partition; a node that does not take it is restarted (a new
    /// process starts with none).
    pub(super) async fn heal_network(&mut self) {
        for id in self.ids() {
            if !self.faults(id, Some((&[], &[])), ("", "")).await
                && self.cluster.nodes[(id - 1) as usize].is_running()
            {
                eprintln!("nemesis: node {id} did not take its heal: restarting it");
                self.cluster.kill(id);
                self.cluster.spawn(id);
            }
        }
    }

    /// Nodes that are not running though no fault stopped them (the nemesis restarts every
    /// node it stopped before its next fault): each a finding, with the end of its log; they
    /// are started again.
    pub(super) fn unexpected_exits(&mut self) -> Vec<String> {
        let mut found = Vec::new();
        for id in self.ids() {
            if !self.cluster.nodes[(id - 1) as usize].is_running() {
                let log = self.cluster.log(id);
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                found.push(format!(
                    "node {id} exited by itself; its log ends: {:?}",
                    tail.into_iter().rev().collect::<Vec<_>>()
                ));
                self.cluster.spawn(id);
            }
        }
        found
    }

    /// Isolates `side` from the rest, both ways.
    pub(super) async fn partition(&mut self, side: &[u64]) {
        let rest: Vec<u64> = self
            .ids()
            .into_iter()
            .filter(|i| !side.contains(i))
            .collect();
        for id in self.ids() {
            let others: &[u64] = if side.contains(&id) { &rest } else { side };
            self.faults(id, Some((others, others)), ("", "")).await;
        }
    }

    pub(super) async fn step(&mut self) {
        let ids = self.ids();
        let n = ids.len();
        let fault = FAULTS[self.rng.random_range(0..FAULTS.len())];
        match fault {
            "kill" => {
                let id = self.pick(&ids);
                self.note(fault, json!({ "node": id }));
                self.cluster.kill(id);
                self.hold().await;
                self.restart(&[id]).await;
            }
            "kill_meta_leader" => {
                let id = match self.leader_of(1).await {
                    0 => self.pick(&ids),
                    l => l,
                };
                self.note(fault, json!({ "node": id }));
                self.cluster.kill(id);
                self.hold().await;
                self.restart(&[id]).await;
            }
            "kill_majority" => {
                let mut victims = ids.clone();
                while victims.len() > n / 2 + 1 {
                    let i = self.rng.random_range(0..victims.len());
                    victims.remove(i);
                }
                self.note(fault, json!({ "nodes": victims }));
                for id in &victims {
                    self.cluster.kill(*id);
                }
                self.hold().await;
                self.restart(&victims).await;
            }
            "pause" => {
                let id = self.pick(&ids);
                self.note(fault, json!({ "node": id }));
                self.cluster.pause(id);
                self.hold().await;
                self.cluster.resume(id);
            }
            "partition" => {
                let size = self.rng.random_range(1..=(n.saturating_sub(1) / 2).max(1));
                let mut side = ids.clone();
                while side.len() > size {
                    let i = self.rng.random_range(0..side.len());
                    side.remove(i);
                }
                self.note(fault, json!({ "side": side }));
                self.partition(&side).await;
                self.hold().await;
                self.heal_network().await;
            }
            "partition_one_way" => {
                let from = self.pick(&ids);
                let others: Vec<u64> = ids.iter().copied().filter(|i| *i != from).collect();
                let to = self.pick(&others);
                self.note(fault, json!({ "drops_to": to, "at": from }));
                self.faults(from, Some((&[to], &[])), ("", "")).await;
                self.hold().await;
                self.heal_network().await;
            }
            "isolate_leader" => {
                let range = if self.rng.random_bool(0.5) { 1 } else { 2 };
                let id = match self.leader_of(range).await {
                    0 => self.pick(&ids),
                    l => l,
                };
                self.note(fault, json!({ "range": range, "leader": id }));
                self.partition(&[id]).await;
                self.hold().await;
                self.heal_network().await;
            }
            "split" => {
                let key = match self.rng.random_range(0..4) {
                    0 => format!("r{}", self.rng.random_range(1..REGISTERS)),
                    1 => format!("c{}", self.rng.random_range(1..COUNTERS)),
                    2 => format!("w/{:02}", self.rng.random_range(0..8)),
                    _ => format!("s{}", self.rng.random_range(0..10)),
                };
                let r = tokio::time::timeout(DEADLINE, self.admin.split(&key)).await;
                let outcome = match r {
                    Ok(Ok(_)) => "ok".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".into(),
                };
                self.note(fault, json!({ "at": key, "outcome": outcome }));
            }
            "move" => {
                let ranges = self.admin.ranges().await.unwrap_or_default();
                let candidates: Vec<_> = ranges
                    .iter()
                    .filter_map(|r| r.descriptor.clone())
                    .filter(|d| d.id != 1)
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let d = candidates[self.rng.random_range(0..candidates.len())].clone();
                let on: Vec<u64> = d.replicas.iter().map(|r| r.node_id).collect();
                let off: Vec<u64> = ids.iter().copied().filter(|i| !on.contains(i)).collect();
                if off.is_empty() {
                    return;
                }
                let (from, to) = (self.pick(&on), self.pick(&off));
                let key = d.start_key.get(1..).unwrap_or_default().to_vec();
                let r =
                    tokio::time::timeout(DEADLINE, self.admin.move_replica(&key, from, to)).await;
                let outcome = match r {
                    Ok(Ok(_)) => "ok".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".into(),
                };
                self.note(
                    fault,
                    json!({ "range": d.id, "from": from, "to": to, "outcome": outcome }),
                );
            }
            "crash_before_sync" | "fsync_failure" => {
                let id = self.pick(&ids);
                let (failpoint, action) = if fault == "crash_before_sync" {
                    ("storage::crash_before_sync", "return")
                } else {
                    ("storage::write_synced", "return(nemesis: fsync failed)")
                };
                let before = self.synced_writes(id).await;
                if before.is_none() || !self.faults(id, None, (failpoint, action)).await {
                    eprintln!("nemesis: {fault} on node {id} not injected (no answer)");
                    return;
                }
                self.note(fault, json!({ "node": id }));
                // The node's next synced write hits it (client writes and elections make
                // them): it must exit, not go on. A node with nothing to write meanwhile has
                // not met the fault; one that synced a write after it has gone on.
                let deadline = Instant::now() + Duration::from_secs(40);
                let mut exited = false;
                while Instant::now() < deadline {
                    if !self.cluster.nodes[(id - 1) as usize].is_running() {
                        exited = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if !exited {
                    // Met (halted, or wrote on) but still running, or not answering at all:
                    // the node went on instead of stopping.
                    let after = self.synced_writes(id).await;
                    let status = self.cluster.node(id).status;
                    let health = tokio::task::spawn_blocking(move || {
                        crate::support::http_get(status, "/health").map(|(code, _)| code)
                    })
                    .await
                    .ok()
                    .flatten();
                    if after.is_none() || after > before || health != Some(200) {
                        self.violations.push(format!(
                            "{fault} on node {id}: still running 40 s after it (synced writes \
                             {before:?} -> {after:?}, /health {health:?})"
                        ));
                    } else {
                        // Not counted: the node never met the fault.
                        *self.counts.entry(fault).or_default() -= 1;
                        self.note_unmet(fault, id);
                        self.faults(id, None, (failpoint, "off")).await;
                    }
                    self.cluster.kill(id);
                }
                self.hold().await;
                self.restart(&[id]).await;
            }
            _ => unreachable!("every fault is handled"),
        }
    }
}
