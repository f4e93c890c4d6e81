//! Three replicas of one range, each on its own engine (RocksDB in a temporary directory),
//! driven through `Peer` with messages routed in memory: Raft, group commit and the state
//! machine together. Writes commit and apply on every replica; after all three restart from
//! disk, the data is there, nothing is applied twice, and the group goes on.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use flotilla_engine::kv::{self, KvConfig};
use flotilla_engine::raft::{Config, LogStore, Message, MessageType, Role};
use flotilla_engine::storage::{keys, Engine, EngineConfig, LogBatch, ReceivedSnapshot};
use flotilla_engine::store::Peer;
use flotilla_transport::kv::{
    write_request, write_response, CommandHeader, PutRequest, RaftCommand, WriteRequest,
};
use flotilla_transport::meta::{RangeDescriptor, RangeEpoch};
use flotilla_transport::raft::{ConfState, SnapshotMetadata};
use prost::Message as _;

const RANGE: u64 = 2;

fn descriptor() -> RangeDescriptor {
    RangeDescriptor {
        id: RANGE,
        start_key: keys::data_key(b"").into(),
        end_key: Bytes::new(),
        epoch: Some(RangeEpoch {
            version: 1,
            conf_ver: 1,
        }),
        replicas: vec![],
    }
}

/// Three new replicas of the range, each on its own engine in a temporary directory.
fn new_cluster() -> (Vec<tempfile::TempDir>, Vec<Node>) {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let nodes = (1..=3)
        .map(|id| open_node(dirs[id as usize - 1].path(), id, true))
        .collect();
    (dirs, nodes)
}

fn raft_config(id: u64) -> Config {
    Config {
        id,
        seed: id,
        ..Config::default()
    }
}

struct Node {
    engine: Arc<Engine>,
    peer: Peer,
}

fn open_node(dir: &std::path::Path, id: u64, create: bool) -> Node {
    let engine = Engine::open(&EngineConfig::new(dir, "store-test", id)).expect("engine");
    let peer = if create {
        let initial = SnapshotMetadata {
            index: 0,
            term: 0,
            conf_state: Some(ConfState {
                voters: vec![1, 2, 3],
                ..ConfState::default()
            }),
        };
        Peer::create(
            &engine,
            &descriptor(),
            &initial,
            raft_config(id),
            KvConfig::default(),
        )
    } else {
        Peer::open(&engine, RANGE, raft_config(id), KvConfig::default())
    }
    .expect("peer");
    Node { engine, peer }
}

/// One round on every node: stage, commit (one fsync per node), finish; deliver messages.
fn round(
    nodes: &mut [Node],
    wire: &mut VecDeque<Message>,
) -> Vec<(u64, flotilla_engine::kv::Applied)> {
    round_isolating(nodes, wire, None)
}

/// A round in which messages to and from `isolated` are lost. Snapshot messages carry their
/// data as the transport would: built by the sender, verified and stepped by the receiver,
/// reported back to the sender.
fn round_isolating(
    nodes: &mut [Node],
    wire: &mut VecDeque<Message>,
    isolated: Option<u64>,
) -> Vec<(u64, flotilla_engine::kv::Applied)> {
    round_collect(nodes, wire, isolated, &mut Vec::new())
}

/// A round that also collects the confirmed reads, as `(node, read)`.
fn round_collect(
    nodes: &mut [Node],
    wire: &mut VecDeque<Message>,
    isolated: Option<u64>,
    reads: &mut Vec<(u64, flotilla_engine::raft::ReadState)>,
) -> Vec<(u64, flotilla_engine::kv::Applied)> {
    let mut applied = Vec::new();
    while let Some(mut m) = wire.pop_front() {
        if isolated.is_some_and(|n| n == m.to || n == m.from) {
            continue;
        }
        let (from, to) = (m.from as usize - 1, m.to as usize - 1);
        if m.msg_type == MessageType::Snapshot as i32 {
            let parts = nodes[from]
                .peer
                .prepare_snapshot(&mut m, 4096)
                .expect("build");
            let data = ReceivedSnapshot::from_parts(RANGE, parts).expect("verified");
            nodes[to]
                .peer
                .step_snapshot(m.clone(), data)
                .expect("step snapshot");
            nodes[from].peer.raft().report_snapshot(m.to, true);
            continue;
        }
        nodes[to].peer.raft().step(m).expect("step");
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        let mut batch = LogBatch::new();
        let Some((ready, now)) = n.peer.stage(&mut batch).expect("stage") else {
            continue;
        };
        wire.extend(now);
        batch.commit(&n.engine).expect("commit");
        let out = n.peer.finish(ready).expect("finish");
        wire.extend(out.messages);
        applied.extend(out.applied.into_iter().map(|a| (i as u64 + 1, a)));
        reads.extend(out.reads.into_iter().map(|r| (i as u64 + 1, r)));
    }
    applied
}

fn leader(nodes: &mut [Node]) -> Option<usize> {
    nodes
        .iter_mut()
        .position(|n| n.peer.raft().status().role == Role::Leader)
}

fn elect(nodes: &mut [Node], wire: &mut VecDeque<Message>) -> usize {
    for _ in 0..500 {
        for n in nodes.iter_mut() {
            n.peer.raft().tick().expect("tick");
        }
        round(nodes, wire);
        if let Some(l) = leader(nodes) {
            return l;
        }
    }
    panic!("no leader within 500 ticks");
}

fn put(key: &str, value: &str, seq: u64) -> Bytes {
    RaftCommand {
        header: Some(CommandHeader {
            range_id: RANGE,
            epoch: descriptor().epoch,
            client_id: 77,
            seq,
            first_unacked_seq: seq,
            session_start_ms: 1,
            proposed_at_ms: 1 + seq,
        }),
        request: Some(WriteRequest {
            request: Some(write_request::Request::Put(PutRequest {
                key: key.as_bytes().to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                prev_kv: false,
            })),
        }),
        admin: None,
    }
    .encode_to_vec()
    .into()
}

fn value(n: &Node, key: &str) -> Option<(String, u64)> {
    kv::get(
        &n.engine,
        n.peer.applier().descriptor(),
        key.as_bytes(),
        &KvConfig::default(),
    )
    .expect("get")
    .kv
    .map(|kv| {
        (
            String::from_utf8_lossy(&kv.value).into_owned(),
            kv.mod_revision,
        )
    })
}

/// Proposes on the leader and runs rounds until every replica applied it.
fn write(nodes: &mut [Node], wire: &mut VecDeque<Message>, data: Bytes) -> u64 {
    let l = elect(nodes, wire);
    let (_, index) = nodes[l].peer.raft().propose(data).expect("propose");
    let mut seen = [false; 3];
    for _ in 0..100 {
        // Time goes on as in a running store (a probing leader retries on heartbeats).
        for n in nodes.iter_mut() {
            n.peer.raft().tick().expect("tick");
        }
        for (node, a) in round(nodes, wire) {
            if a.index == index {
                assert!(
                    !matches!(
                        a.response.response,
                        Some(write_response::Response::Error(_))
                    ),
                    "{:?}",
                    a.response
                );
                seen[node as usize - 1] = true;
            }
        }
        if seen.iter().all(|s| *s) {
            return index;
        }
    }
    panic!("write at {index} not applied everywhere: {seen:?}");
}

#[test]
fn three_replicas_commit_apply_and_restart() {
    let (dirs, mut nodes) = new_cluster();
    let mut wire = VecDeque::new();
    let mut revisions = Vec::new();
    for i in 1..=20u64 {
        revisions.push(write(
            &mut nodes,
            &mut wire,
            put(&format!("k{}", i % 5), &format!("v{i}"), i),
        ));
    }
    for n in &nodes {
        assert_eq!(value(n, "k0"), Some(("v20".into(), revisions[19])));
        assert_eq!(value(n, "k1"), Some(("v16".into(), revisions[15])));
    }
    // Everyone restarts from disk (in-flight messages are lost).
    drop(nodes);
    wire.clear();
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| open_node(dirs[id as usize - 1].path(), id, false))
        .collect();
    for n in &nodes {
        assert_eq!(
            value(n, "k0"),
            Some(("v20".into(), revisions[19])),
            "nothing lost, nothing reapplied"
        );
    }
    // A retry of an applied write is answered from the session, not applied again.
    let retry = write(&mut nodes, &mut wire, put("k0", "v20-retried", 20));
    for n in &nodes {
        assert_eq!(value(n, "k0"), Some(("v20".into(), revisions[19])));
    }
    assert!(retry > revisions[19]);
    let index = write(&mut nodes, &mut wire, put("k9", "after restart", 21));
    for n in &nodes {
        assert_eq!(value(n, "k9"), Some(("after restart".into(), index)));
    }
}

/// A replica cut off while the leader compacts its log catches up by a snapshot of the state
/// machine, built from RocksDB, installed atomically with its Raft state.
#[test]
fn a_lagging_replica_catches_up_by_snapshot() {
    let (dirs, mut nodes) = new_cluster();
    let mut wire = VecDeque::new();
    write(&mut nodes, &mut wire, put("before", "1", 1));
    let l = elect(&mut nodes, &mut wire);
    let lagging = if l == 2 { 1 } else { 3 };
    // The lagging node misses 30 writes.
    for i in 2..=31u64 {
        let (_, index) = nodes[l]
            .peer
            .raft()
            .propose(put(&format!("k{}", i % 4), &format!("v{i}"), i))
            .expect("propose");
        for _ in 0..20 {
            round_isolating(&mut nodes, &mut wire, Some(lagging));
            if nodes[l].peer.applier().applied_index() >= index {
                break;
            }
        }
    }
    let applied = nodes[l].peer.applier().applied_index();
    assert!(value(&nodes[l], "k3").is_some());
    assert!(value(&nodes[lagging as usize - 1], "k3").is_none());
    // The leader releases its log: the lagging node can only catch up by snapshot.
    nodes[l].peer.compact_to_applied().expect("compact");
    assert_eq!(nodes[l].peer.raft().store().first_index(), Ok(applied + 1));
    let mut caught_up = false;
    for _ in 0..200 {
        for n in nodes.iter_mut() {
            n.peer.raft().tick().expect("tick");
        }
        round(&mut nodes, &mut wire);
        if nodes[lagging as usize - 1].peer.applier().applied_index() >= applied {
            caught_up = true;
            break;
        }
    }
    assert!(caught_up, "the lagging replica caught up");
    let lagging_node = &nodes[lagging as usize - 1];
    for k in ["before", "k0", "k1", "k2", "k3"] {
        assert_eq!(value(lagging_node, k), value(&nodes[l], k), "{k}");
    }
    // It goes on replicating normally after the install, and restarts from it.
    let index = write(&mut nodes, &mut wire, put("after", "snapshot", 40));
    drop(nodes);
    let nodes: Vec<Node> = (1..=3)
        .map(|id| open_node(dirs[id as usize - 1].path(), id, false))
        .collect();
    for n in &nodes {
        assert_eq!(value(n, "after"), Some(("snapshot".into(), index)));
        assert_eq!(value(n, "k3"), value(&nodes[0], "k3"));
    }
}

/// A stale snapshot arriving after a newer one (a resend, a second stream) is ignored by the
/// core and must not take the place of the newer one's data: the install goes on (it halted
/// the replica: "ready carries snapshot without its data", found by the store simulator).
#[test]
fn a_stale_snapshot_after_a_newer_one_does_not_replace_its_data() {
    let (_dirs, mut nodes) = new_cluster();
    let mut wire = VecDeque::new();
    let l = elect(&mut nodes, &mut wire);
    let lagging = if l == 2 { 1 } else { 3 };
    let leader_id = l as u64 + 1;
    let write_isolated = |nodes: &mut Vec<Node>, wire: &mut VecDeque<Message>, from: u64| {
        for i in from..from + 10 {
            let (_, index) = nodes[l]
                .peer
                .raft()
                .propose(put(&format!("k{i}"), "v", i))
                .expect("propose");
            for _ in 0..20 {
                round_isolating(nodes, wire, Some(lagging));
                if nodes[l].peer.applier().applied_index() >= index {
                    break;
                }
            }
        }
    };
    let snapshot_now = |nodes: &mut Vec<Node>| {
        let term = nodes[l].peer.raft().status().term;
        let mut m = Message {
            msg_type: MessageType::Snapshot as i32,
            to: lagging,
            from: leader_id,
            term,
            ..Message::default()
        };
        let parts = nodes[l].peer.prepare_snapshot(&mut m, 4096).expect("build");
        (
            m,
            ReceivedSnapshot::from_parts(RANGE, parts).expect("verified"),
        )
    };
    write_isolated(&mut nodes, &mut wire, 1);
    let (old_message, old_data) = snapshot_now(&mut nodes);
    write_isolated(&mut nodes, &mut wire, 11);
    let (new_message, new_data) = snapshot_now(&mut nodes);
    let new_index = new_data.metadata().index;
    assert!(new_index > old_data.metadata().index);
    let follower = &mut nodes[lagging as usize - 1];
    follower
        .peer
        .step_snapshot(new_message, new_data)
        .expect("the newer snapshot");
    follower
        .peer
        .step_snapshot(old_message, old_data)
        .expect("the stale one is ignored");
    let mut batch = LogBatch::new();
    let (ready, _) = follower
        .peer
        .stage(&mut batch)
        .expect("the newer snapshot's data is still there")
        .expect("a ready");
    batch.commit(&follower.engine).expect("commit");
    follower.peer.finish(ready).expect("finish");
    assert_eq!(follower.peer.applier().applied_index(), new_index);
    assert_eq!(value(follower, "k20"), value(&nodes[l], "k20"));
}

mod membership;
mod multi;
mod runtime;

/// A follower read (ReadIndex confirmed through the leader, served by the follower once it
/// applied up to the read index) sees the latest acknowledged write (TESTING.md bug class 1).
#[test]
fn a_follower_read_sees_the_latest_write() {
    let (_dirs, mut nodes) = new_cluster();
    let mut wire = VecDeque::new();
    write(&mut nodes, &mut wire, put("x", "1", 1));
    let l = elect(&mut nodes, &mut wire);
    let follower = (l + 1) % 3;
    // The write is acknowledged once the leader applied it; the follower may lag.
    let (_, index) = nodes[l]
        .peer
        .raft()
        .propose(put("x", "2", 2))
        .expect("propose");
    for _ in 0..20 {
        round(&mut nodes, &mut wire);
        if nodes[l].peer.applier().applied_index() >= index {
            break;
        }
    }
    assert_eq!(value(&nodes[l], "x").map(|v| v.0), Some("2".into()));
    nodes[follower]
        .peer
        .raft()
        .read_index(Bytes::from_static(b"read-1"))
        .expect("read index");
    let mut reads = Vec::new();
    let mut served = None;
    for _ in 0..100 {
        for n in nodes.iter_mut() {
            n.peer.raft().tick().expect("tick");
        }
        round_collect(&mut nodes, &mut wire, None, &mut reads);
        if let Some((_, r)) = reads
            .iter()
            .find(|(n, r)| *n == follower as u64 + 1 && r.context.as_ref() == b"read-1")
        {
            assert!(
                r.index >= index,
                "the read index covers the acknowledged write"
            );
            if nodes[follower].peer.applier().applied_index() >= r.index {
                served = value(&nodes[follower], "x").map(|v| v.0);
                break;
            }
        }
    }
    assert_eq!(
        served,
        Some("2".into()),
        "the follower read sees the latest write"
    );
}
