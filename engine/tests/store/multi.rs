//! Many ranges per node through `Store`: one synced write per node per round, however many
//! ranges have work.

use std::collections::BTreeMap;

use flotilla_engine::store::{Outcome, Store, Ticket};
use flotilla_transport::meta::Replica;

use super::*;

const RANGES: u64 = 50;

fn descriptor_of(range: u64) -> RangeDescriptor {
    let start = format!("r{range:03}");
    let end = format!("r{:03}", range + 1);
    RangeDescriptor {
        id: range,
        start_key: keys::data_key(start.as_bytes()).into(),
        end_key: keys::data_key(end.as_bytes()).into(),
        epoch: Some(RangeEpoch {
            version: 1,
            conf_ver: 1,
        }),
        replicas: (1..=3)
            .map(|node| Replica {
                node_id: node,
                replica_id: range * 10 + node,
                role: 0,
            })
            .collect(),
    }
}

/// Creates `range` (bootstrapped, all three replicas voters) on every store.
fn create_everywhere(stores: &mut [Store], range: u64) {
    let d = descriptor_of(range);
    let initial = SnapshotMetadata {
        index: 0,
        term: 0,
        conf_state: Some(ConfState {
            voters: d.replicas.iter().map(|r| r.replica_id).collect(),
            ..ConfState::default()
        }),
    };
    for s in stores.iter_mut() {
        s.create_range(&d, &initial).expect("create");
    }
}

fn open_store(dir: &std::path::Path, node: u64) -> Store {
    let engine = Engine::open(&EngineConfig::new(dir, "store-test", node)).expect("engine");
    Store::open(engine, node, Config::default(), KvConfig::default()).expect("store")
}

/// A round on every store; messages delivered for the next round. Returns applied
/// (node, range, index) and checks one synced write per store per round.
fn rounds(
    stores: &mut [Store],
    wire: &mut Vec<(u64, u64, Message)>,
    tick: bool,
    widest: &mut usize,
) -> Vec<(u64, u64, u64)> {
    rounds_with(stores, wire, tick, widest, None, &mut Vec::new())
}

/// Like `rounds`, with `isolated`'s traffic lost and the proposals that ended collected.
fn rounds_with(
    stores: &mut [Store],
    wire: &mut Vec<(u64, u64, Message)>,
    tick: bool,
    widest: &mut usize,
    isolated: Option<u64>,
    completed: &mut Vec<(u64, Ticket, Outcome)>,
) -> Vec<(u64, u64, u64)> {
    for (node, range, m) in wire.drain(..) {
        let from_node = stores
            .iter()
            .position(|s| s.node_id() == m.from % 10)
            .map_or(0, |i| i as u64 + 1);
        if isolated.is_some_and(|n| n == node || n == from_node) {
            continue;
        }
        stores[node as usize - 1]
            .step(range, from_node, m)
            .expect("step");
    }
    let mut applied = Vec::new();
    for s in stores.iter_mut() {
        if tick {
            s.tick().expect("tick");
        }
        let before = s.engine().synced_writes();
        let out = s.round().expect("round");
        assert!(
            s.engine().synced_writes() - before <= 1,
            "one synced write per round"
        );
        *widest = (*widest).max(out.ranges_persisted);
        for (node, messages) in out.outbox {
            wire.extend(messages.into_iter().map(|(range, m)| (node, range, m)));
        }
        applied.extend(
            out.applied
                .iter()
                .map(|(range, a)| (s.node_id(), *range, a.index)),
        );
        completed.extend(out.completed.into_iter().map(|(t, o)| (s.node_id(), t, o)));
    }
    applied
}

fn put_in(range: u64, seq: u64) -> Bytes {
    RaftCommand {
        header: Some(CommandHeader {
            range_id: range,
            epoch: descriptor_of(range).epoch,
            client_id: 0,
            seq: 0,
            first_unacked_seq: 0,
            session_start_ms: 1,
            proposed_at_ms: 1 + seq,
        }),
        request: Some(WriteRequest {
            request: Some(write_request::Request::Put(PutRequest {
                key: format!("r{range:03}/key").into_bytes().into(),
                value: format!("value {seq}").into_bytes().into(),
                prev_kv: false,
            })),
        }),
        admin: None,
    }
    .encode_to_vec()
    .into()
}

fn header_for(range: u64) -> CommandHeader {
    CommandHeader {
        range_id: range,
        epoch: descriptor_of(range).epoch,
        ..CommandHeader::default()
    }
}

fn put_request(key: &str, value_bytes: usize) -> WriteRequest {
    WriteRequest {
        request: Some(write_request::Request::Put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: vec![b'v'; value_bytes].into(),
            prev_kv: false,
        })),
    }
}

/// Bad writes are refused before the log with typed errors; a follower names the leader.
fn refusals(stores: &mut [Store], leaders: &BTreeMap<u64, u64>) {
    use flotilla_engine::kv::KvError;
    use flotilla_engine::store::ProposeRefused;
    let leader = leaders[&7];
    let follower = if leader == 1 { 2 } else { 1 };
    let l = &mut stores[leader as usize - 1];
    let ticket = l
        .propose_write(header_for(7), put_request("r007/ok", 10), 5)
        .expect("a good write");
    assert_eq!(ticket.range_id, 7);
    let cases: Vec<(CommandHeader, WriteRequest, &str)> = vec![
        (header_for(999), put_request("r999/x", 1), "range not found"),
        (header_for(7), put_request("r008/x", 1), "key not in range"),
        (
            CommandHeader {
                epoch: Some(RangeEpoch {
                    version: 0,
                    conf_ver: 1,
                }),
                ..header_for(7)
            },
            put_request("r007/x", 1),
            "epoch",
        ),
        (
            header_for(7),
            put_request("r007/x", (8 << 20) + 1),
            "value too large",
        ),
        (header_for(7), WriteRequest::default(), "malformed"),
    ];
    for (header, request, what) in cases {
        let e = l.propose_write(header, request, 5).expect_err(what);
        let ok = matches!(
            (&e, what),
            (
                ProposeRefused::Kv(KvError::RangeNotFound(999)),
                "range not found"
            ) | (
                ProposeRefused::Kv(KvError::KeyNotInRange { range_id: 7, .. }),
                "key not in range"
            ) | (
                ProposeRefused::Kv(KvError::EpochNotMatch { range_id: 7, .. }),
                "epoch"
            ) | (
                ProposeRefused::Kv(KvError::ValueTooLarge { .. }),
                "value too large"
            ) | (ProposeRefused::Kv(KvError::Malformed(_)), "malformed")
        );
        assert!(ok, "{what}: {e:?}");
    }
    let f = &mut stores[follower as usize - 1];
    assert_eq!(
        f.propose_write(header_for(7), put_request("r007/x", 1), 5),
        Err(ProposeRefused::NotLeader {
            range_id: 7,
            leader_node: Some(leader)
        })
    );
}

#[test]
fn fifty_ranges_on_three_stores_share_one_fsync_per_round() {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut stores: Vec<Store> = (1..=3)
        .map(|n| open_store(dirs[n as usize - 1].path(), n))
        .collect();
    for range in 1..=RANGES {
        create_everywhere(&mut stores, range);
    }
    let mut wire = Vec::new();
    // Elections everywhere.
    let mut leaders: BTreeMap<u64, u64> = BTreeMap::new();
    let mut widest = 0;
    for _ in 0..300 {
        rounds(&mut stores, &mut wire, true, &mut widest);
        leaders.clear();
        for s in stores.iter_mut() {
            let ids: Vec<u64> = s.range_ids().collect();
            for range in ids {
                if s.peer_mut(range).expect("peer").raft().status().role == Role::Leader {
                    leaders.insert(range, s.node_id());
                }
            }
        }
        if leaders.len() == RANGES as usize {
            break;
        }
    }
    assert_eq!(leaders.len(), RANGES as usize, "a leader for every range");
    // One write to every range at once: they commit together, in shared rounds.
    let mut wanted = BTreeMap::new();
    for (&range, &node) in &leaders {
        let peer = stores[node as usize - 1].peer_mut(range).expect("peer");
        let (_, index) = peer.raft().propose(put_in(range, 1)).expect("propose");
        wanted.insert(range, index);
    }
    let mut done = std::collections::BTreeSet::new();
    widest = 0;
    for _ in 0..50 {
        // Followers learn the commit index from the next heartbeat: time goes on.
        for (node, range, index) in rounds(&mut stores, &mut wire, true, &mut widest) {
            if wanted.get(&range) == Some(&index) {
                done.insert((node, range));
            }
        }
        if done.len() == 3 * RANGES as usize {
            break;
        }
    }
    assert_eq!(
        done.len(),
        3 * RANGES as usize,
        "every write applied on every node"
    );
    refusals(&mut stores, &leaders);
    assert!(
        widest >= RANGES as usize / 3,
        "ranges share rounds: at most {widest} in one"
    );
    // Restart every store from disk: all ranges come back with their data.
    drop(stores);
    let stores: Vec<Store> = (1..=3)
        .map(|n| open_store(dirs[n as usize - 1].path(), n))
        .collect();
    for s in &stores {
        assert_eq!(s.range_ids().count(), RANGES as usize);
        for range in 1..=RANGES {
            let got = kv::get(
                s.engine(),
                &descriptor_of(range),
                format!("r{range:03}/key").as_bytes(),
                &KvConfig::default(),
            )
            .expect("get")
            .kv
            .map(|kv| kv.value);
            assert_eq!(
                got.as_deref(),
                Some(&b"value 1"[..]),
                "node {} range {range}",
                s.node_id()
            );
        }
    }
}

/// A leader cut off from its followers takes a write it cannot commit; the others elect a
/// new leader whose entries take that index; on healing, the old leader's proposal ends as
/// `Dropped` (never applied), and a write through the new leader ends `Applied`.
#[test]
fn a_cut_off_leaders_proposal_is_dropped() {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let mut stores: Vec<Store> = (1..=3)
        .map(|n| open_store(dirs[n as usize - 1].path(), n))
        .collect();
    create_everywhere(&mut stores, 1);
    let mut wire = Vec::new();
    let mut widest = 0;
    let mut completed = Vec::new();
    let leader_of = |stores: &mut [Store]| {
        stores.iter_mut().find_map(|s| {
            let node = s.node_id();
            (s.peer_mut(1).expect("peer").raft().status().role == Role::Leader).then_some(node)
        })
    };
    let mut old = None;
    for _ in 0..300 {
        rounds_with(
            &mut stores,
            &mut wire,
            true,
            &mut widest,
            None,
            &mut completed,
        );
        old = leader_of(&mut stores);
        if old.is_some() {
            break;
        }
    }
    let old = old.expect("a leader");
    let lost = stores[old as usize - 1]
        .propose_write(header_for(1), put_request("r001/lost", 1), 10)
        .expect("the old leader takes it");
    let mut new = None;
    for _ in 0..500 {
        rounds_with(
            &mut stores,
            &mut wire,
            true,
            &mut widest,
            Some(old),
            &mut completed,
        );
        new = stores
            .iter_mut()
            .filter(|s| s.node_id() != old)
            .find_map(|s| {
                let node = s.node_id();
                (s.peer_mut(1).expect("peer").raft().status().role == Role::Leader).then_some(node)
            });
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("the majority elects a new leader");
    let kept = stores[new as usize - 1]
        .propose_write(header_for(1), put_request("r001/kept", 1), 20)
        .expect("the new leader takes it");
    let mut outcomes = std::collections::BTreeMap::new();
    for _ in 0..500 {
        rounds_with(
            &mut stores,
            &mut wire,
            true,
            &mut widest,
            None,
            &mut completed,
        );
        for (_, t, o) in completed.drain(..) {
            outcomes.insert((t.index, t.term), o);
        }
        if outcomes.contains_key(&(lost.index, lost.term))
            && outcomes.contains_key(&(kept.index, kept.term))
        {
            break;
        }
    }
    assert_eq!(
        outcomes.get(&(lost.index, lost.term)),
        Some(&Outcome::Dropped)
    );
    assert!(matches!(
        outcomes.get(&(kept.index, kept.term)),
        Some(Outcome::Applied(_))
    ));
    for s in &stores {
        let get = |k: &str| {
            kv::get(
                s.engine(),
                &descriptor_of(1),
                k.as_bytes(),
                &KvConfig::default(),
            )
            .expect("get")
            .kv
        };
        assert!(get("r001/lost").is_none(), "never applied anywhere");
    }
}
