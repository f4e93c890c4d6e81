//! The twelve failure scenarios of the thesis seed's chapter 4, on three real nodes over QUIC
//! on loopback, plus bad client input. Each test starts its own cluster.

mod client;
mod placement;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_client::{Client, ClientError};
use flotilla_engine::kv::KvError;
use flotilla_engine::node::FIRST_USER_RANGE;
use flotilla_engine::store::RequestError;
use flotilla_transport::kv::{
    write_response, Compare, CompareOp, CompareTarget, ErrorCode, PutRequest, RaftCommand, TxnOp,
    TxnRequest, WriteRequest, WriteResponse,
};
use flotilla_transport::meta::RangeEpoch;
use flotilla_transport::service::{read_response, ReadConsistency, ReadRequest, ReadResponse};
use flotilla_transport::wire::RpcCode;
use flotilla_transport::TransportError;
use prost::Message as _;
use support::{eventually, put_command, Cluster};

async fn value(client: &Client, key: &str) -> Option<String> {
    client
        .get(key)
        .await
        .expect("get")
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

/// Scenario 1: after start-up the three nodes elect one leader and agree on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_is_elected_after_start_up() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(&[]).await;
    assert!((1..=3).contains(&leader));
    // Both ranges have a leader, and every node answers for both.
    eventually("a leader of the meta range", || cluster.leader(1, &[])).await;
    cluster.stop_all().await;
}

/// Scenario 6: simple put and get, and a scan, through the client library.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_put_and_get() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    let revision = client.put("a", "1").await.expect("put");
    assert!(revision > 0);
    assert_eq!(value(&client, "a").await.as_deref(), Some("1"));
    assert_eq!(value(&client, "missing").await, None);
    client.put("b", "2").await.expect("put");
    let kvs = client.scan::<&str>(..).collect().await.expect("scan");
    let keys: Vec<&[u8]> = kvs.iter().map(|kv| kv.key.as_ref()).collect();
    assert_eq!(keys, vec![&b"a"[..], &b"b"[..]]);
    assert_eq!(client.delete("a").await.expect("delete"), 1);
    assert_eq!(value(&client, "a").await, None);
    cluster.stop_all().await;
}

/// Scenario 2: a follower crashes; writes go on; it restarts and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_crashes_and_recovers() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(&[]).await;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .expect("follower");
    let client = cluster.client().await;
    client.put("before", "1").await.expect("put");
    cluster.crash(follower).await;
    for i in 0..20 {
        client
            .put(format!("during{i}"), "2")
            .await
            .expect("put with one follower down");
    }
    cluster.restart(follower).await;
    cluster.wait_value(follower, "during19", "2").await;
    cluster.wait_value(follower, "before", "1").await;
    cluster.stop_all().await;
}

/// Scenario 3: both followers crash: nothing commits without a quorum; when they return,
/// writes resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_followers_crash_and_nothing_commits_without_a_quorum() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(&[]).await;
    let client = cluster.client().await;
    client.put("k", "before").await.expect("put");
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&i| i != leader).collect();
    for &f in &followers {
        cluster.crash(f).await;
    }
    let lonely = cluster
        .propose_on(
            leader,
            put_command("k", "alone", 1, 1),
            Duration::from_millis(1500),
        )
        .await;
    assert!(
        matches!(
            lonely,
            Err(RequestError::Refused(
                KvError::Timeout | KvError::NotLeader { .. } | KvError::ProposalDropped { .. }
            ))
        ),
        "a write committed without a quorum: {lonely:?}"
    );
    // Nothing was applied on the lone node.
    assert_eq!(
        cluster.local_value(leader, "k").await.as_deref(),
        Some(&b"before"[..])
    );
    for &f in &followers {
        cluster.restart(f).await;
    }
    client
        .put("k", "after")
        .await
        .expect("writes resume with a quorum");
    assert_eq!(value(&client, "k").await.as_deref(), Some("after"));
    cluster.stop_all().await;
}

/// Scenario 4: the leader crashes; a new one is elected and serves; the old one rejoins as a
/// follower and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_crashes_and_rejoins_as_a_follower() {
    let mut cluster = Cluster::start(3).await;
    let old = cluster.wait_leader(&[]).await;
    let client = cluster.client().await;
    client.put("x", "1").await.expect("put");
    cluster.crash(old).await;
    let new = cluster.wait_leader(&[old]).await;
    assert_ne!(new, old);
    client.put("x", "2").await.expect("the new leader serves");
    cluster.restart(old).await;
    cluster.wait_value(old, "x", "2").await;
    // It rejoined as a follower of the new leader (pre-vote keeps it from disrupting it).
    let seen = cluster.leader_seen_by(old, FIRST_USER_RANGE).await;
    assert_eq!(
        seen,
        Some(new),
        "the old leader did not rejoin as a follower"
    );
    cluster.stop_all().await;
}

/// Scenario 5: the whole cluster stops and restarts: every acknowledged write is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_restarts_with_every_acknowledged_write() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    for i in 0..50 {
        client
            .put(format!("key{i:02}"), format!("v{i}"))
            .await
            .expect("put");
    }
    client.close().await;
    cluster.stop_all().await;
    for id in cluster.ids() {
        cluster.restart(id).await;
    }
    let client = cluster.client().await;
    let kvs = client.scan("key".."kez").collect().await.expect("scan");
    assert_eq!(kvs.len(), 50);
    for (i, kv) in kvs.iter().enumerate() {
        assert_eq!(kv.value, Bytes::from(format!("v{i}")));
    }
    cluster.stop_all().await;
}

async fn read_increment_write(client: &Client, key: &str) {
    let current: u64 = value(client, key)
        .await
        .expect("initialized")
        .parse()
        .expect("number");
    client
        .put(key, (current + 1).to_string())
        .await
        .expect("every write commits");
}

async fn revision_checked_increment(client: &Client, key: &str) {
    loop {
        let kv = client.get(key).await.expect("get").expect("initialized");
        let current: u64 = String::from_utf8_lossy(&kv.value).parse().expect("number");
        let txn = TxnRequest {
            compares: vec![Compare {
                key: Bytes::copy_from_slice(key.as_bytes()),
                target: CompareTarget::ModRevision as i32,
                op: CompareOp::Equal as i32,
                revision: kv.mod_revision,
                ..Compare::default()
            }],
            success: vec![TxnOp {
                op: Some(flotilla_transport::kv::txn_op::Op::Put(PutRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    value: (current + 1).to_string().into(),
                    prev_kv: false,
                })),
            }],
            failure: vec![],
        };
        let (_, response) = client.txn_request(txn).await.expect("txn");
        if response.succeeded {
            return;
        }
    }
}

/// 100 workers, 10 per key, each reads a key and writes it back plus one. `txn` selects the
/// revision-checked transaction instead of a blind write. Returns the final values.
async fn hundred_workers(txn: bool) -> Vec<u64> {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    let keys: Vec<String> = (0..10).map(|k| format!("counter{k}")).collect();
    for key in &keys {
        client.put(key, "1").await.expect("init");
    }
    let client = Arc::new(client);
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = Vec::new();
    for w in 0..100 {
        let (client, barrier, key) = (client.clone(), barrier.clone(), keys[w % 10].clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            if txn {
                revision_checked_increment(&client, &key).await;
            } else {
                read_increment_write(&client, &key).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let mut finals = Vec::new();
    for key in &keys {
        finals.push(
            value(&client, key)
                .await
                .expect("set")
                .parse()
                .expect("number"),
        );
    }
    cluster.stop_all().await;
    finals
}

/// Scenario 7: without a Txn, concurrent read-increment-write loses updates: every write
/// commits, every key ends between 2 and 11 (the thesis saw 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_without_txn_lose_updates_but_every_write_commits() {
    let finals = hundred_workers(false).await;
    println!("final values without txn: {finals:?}");
    assert!(finals.iter().all(|v| (2..=11).contains(v)), "{finals:?}");
}

/// Scenario 8: with a revision-checked Txn, no increment is lost: every key reaches 11.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_with_revision_checked_txn_lose_nothing() {
    let finals = hundred_workers(true).await;
    assert_eq!(finals, vec![11; 10]);
}

/// Scenario 9: writes while a node is down, then it catches up on all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_while_a_node_is_down_then_it_catches_up() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    cluster.wait_leader(&[]).await;
    let down = 3;
    cluster.crash(down).await;
    for i in 0..200 {
        client
            .put(format!("w{i:03}"), format!("{i}"))
            .await
            .expect("put");
    }
    cluster.restart(down).await;
    for i in [0, 99, 199] {
        cluster
            .wait_value(down, &format!("w{i:03}"), &i.to_string())
            .await;
    }
    cluster.stop_all().await;
}

/// Scenario 10: the leader is partitioned away: the minority commits nothing, the majority
/// elects a leader that serves, and on heal the old leader steps down and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_commits_nothing_and_converges_on_heal() {
    let mut cluster = Cluster::start(3).await;
    let old = cluster.wait_leader(&[]).await;
    let client = cluster.client().await;
    client.put("p", "before").await.expect("put");
    cluster.partition(&[old]);
    let lonely = cluster
        .propose_on(
            old,
            put_command("p", "minority", 7, 1),
            Duration::from_millis(1500),
        )
        .await;
    assert!(
        lonely.is_err(),
        "the minority committed a write: {lonely:?}"
    );
    let new = cluster.wait_leader(&[old]).await;
    assert_ne!(new, old);
    client
        .put("p", "majority")
        .await
        .expect("the majority serves");
    assert_eq!(
        cluster.local_value(old, "p").await.as_deref(),
        Some(&b"before"[..]),
        "the cut-off leader applied something"
    );
    // Cut off from a quorum, the old leader steps down (check-quorum).
    eventually("the cut-off leader to step down", || async {
        (cluster.leader_seen_by(old, FIRST_USER_RANGE).await != Some(old)).then_some(())
    })
    .await;
    cluster.heal();
    cluster.wait_value(old, "p", "majority").await;
    cluster.wait_leader(&[]).await;
    assert_eq!(value(&client, "p").await.as_deref(), Some("majority"));
    cluster.stop_all().await;
}

/// Scenario 11: leader re-election with a populated log: every write is readable after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_election_with_a_populated_log_keeps_every_write() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    for i in 0..300 {
        client
            .put(format!("r{i:03}"), format!("{i}"))
            .await
            .expect("put");
    }
    let old = cluster.wait_leader(&[]).await;
    cluster.crash(old).await;
    cluster.wait_leader(&[old]).await;
    let kvs = client
        .scan("r".."s")
        .collect()
        .await
        .expect("scan on the new leader");
    assert_eq!(kvs.len(), 300);
    for (i, kv) in kvs.iter().enumerate() {
        assert_eq!(kv.value, Bytes::from(i.to_string()));
    }
    cluster.stop_all().await;
}

async fn raw_write(cluster: &Cluster, command: &RaftCommand) -> WriteResponse {
    let raw = cluster.raw();
    eventually("the leader to answer a raw write", || async {
        for id in cluster.live() {
            let body = raw
                .call(
                    cluster.addr(id),
                    "kv.Write",
                    command.encode_to_vec().into(),
                    Duration::from_secs(5),
                )
                .await
                .ok()?;
            let response = WriteResponse::decode(body).ok()?;
            match &response.response {
                Some(write_response::Response::Error(e))
                    if e.code == ErrorCode::NotLeader as i32 => {}
                _ => return Some(response),
            }
        }
        None
    })
    .await
}

/// Scenario 12: a Txn on a stale revision fails and changes nothing; a duplicate
/// `(client_id, seq)` gets the first response and is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_revision_txn_and_duplicate_write_are_answered_correctly() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    let first = client.put("t", "1").await.expect("put");
    let second = client.put("t", "2").await.expect("put");
    let stale = TxnRequest {
        compares: vec![Compare {
            key: "t".into(),
            target: CompareTarget::ModRevision as i32,
            op: CompareOp::Equal as i32,
            revision: first,
            ..Compare::default()
        }],
        success: vec![TxnOp {
            op: Some(flotilla_transport::kv::txn_op::Op::Put(PutRequest {
                key: "t".into(),
                value: "stale".into(),
                prev_kv: false,
            })),
        }],
        failure: vec![],
    };
    let (_, response) = client.txn_request(stale).await.expect("txn");
    assert!(!response.succeeded);
    let kv = client.get("t").await.expect("get").expect("set");
    assert_eq!(kv.value, Bytes::from("2"));
    assert_eq!(kv.mod_revision, second);

    let command = put_command("dup", "once", 4242, 1);
    let a = raw_write(&cluster, &command).await;
    let b = raw_write(&cluster, &command).await;
    assert_eq!(a, b, "a retry must get the recorded response");
    let kv = client.get("dup").await.expect("get").expect("set");
    assert_eq!(kv.version, 1, "applied twice");
    assert_eq!(kv.mod_revision, a.revision);
    cluster.stop_all().await;
}

fn refusal_code(response: &WriteResponse) -> Option<ErrorCode> {
    match &response.response {
        Some(write_response::Response::Error(e)) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

/// Bad client input gets typed errors and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_input_gets_typed_errors() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    client.put("ok", "1").await.expect("put");

    let mut wrong_range = put_command("k", "v", 0, 0);
    wrong_range.header.as_mut().expect("header").range_id = 99;
    assert_eq!(
        refusal_code(&raw_write(&cluster, &wrong_range).await),
        Some(ErrorCode::RangeNotFound)
    );
    let mut stale_epoch = put_command("k", "v", 0, 0);
    stale_epoch.header.as_mut().expect("header").epoch = Some(RangeEpoch {
        version: 0,
        conf_ver: 1,
    });
    let response = raw_write(&cluster, &stale_epoch).await;
    assert_eq!(refusal_code(&response), Some(ErrorCode::EpochNotMatch));
    match &response.response {
        Some(write_response::Response::Error(e)) => {
            assert_eq!(e.current.as_ref().map(|d| d.id), Some(FIRST_USER_RANGE));
        }
        other => panic!("{other:?}"),
    }
    let big_key = "k".repeat(9 << 10);
    assert_eq!(
        refusal_code(&raw_write(&cluster, &put_command(&big_key, "v", 0, 0)).await),
        Some(ErrorCode::KeyTooLarge)
    );
    let big_value = "v".repeat(65 << 10);
    assert_eq!(
        refusal_code(&raw_write(&cluster, &put_command("k", &big_value, 0, 0)).await),
        Some(ErrorCode::ValueTooLarge)
    );
    let mut unknown_op = put_command("k", "v", 0, 0);
    unknown_op.request = Some(WriteRequest { request: None });
    assert_eq!(
        refusal_code(&raw_write(&cluster, &unknown_op).await),
        Some(ErrorCode::Malformed)
    );
    // Through the client library, limits are typed refusals, not retries.
    match client.put(big_key.clone(), "v").await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::KeyTooLarge),
        other => panic!("{other:?}"),
    }

    let raw = cluster.raw();
    let addr = cluster.addr(1);
    let garbage = raw
        .call(
            addr,
            "kv.Write",
            Bytes::from_static(&[0xff, 0xff, 0xff]),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        matches!(
            garbage,
            Err(TransportError::Rpc {
                code: RpcCode::BadRequest,
                ..
            })
        ),
        "{garbage:?}"
    );
    let unknown = raw
        .call(addr, "kv.Frobnicate", Bytes::new(), Duration::from_secs(5))
        .await;
    assert!(
        matches!(
            unknown,
            Err(TransportError::Rpc {
                code: RpcCode::UnknownMethod,
                ..
            })
        ),
        "{unknown:?}"
    );
    let read = ReadRequest {
        range_id: FIRST_USER_RANGE,
        epoch: Some(RangeEpoch {
            version: 1,
            conf_ver: 1,
        }),
        consistency: 0,
        request: None,
        max_staleness_ms: 0,
    };
    let body = raw
        .call(
            addr,
            "kv.Read",
            read.encode_to_vec().into(),
            Duration::from_secs(5),
        )
        .await
        .expect("answered");
    let response = ReadResponse::decode(body).expect("decodes");
    assert!(
        matches!(
            response.response,
            Some(read_response::Response::Error(ref e)) if e.code == ErrorCode::Malformed as i32
        ),
        "{response:?}"
    );

    // The node still serves.
    client.put("ok", "2").await.expect("put");
    assert_eq!(value(&client, "ok").await.as_deref(), Some("2"));
    cluster.stop_all().await;
}

/// Follower reads: a follower asks the leader for the commit index and answers once it has
/// applied up to it, so it sees every write acknowledged before the read began. A default
/// (leader) read on a follower is redirected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_reads_see_every_acknowledged_write() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(&[]).await;
    let client = cluster.client().await;
    for i in 0..20 {
        client.put("f", i.to_string()).await.expect("put");
        for id in cluster.ids().into_iter().filter(|&id| id != leader) {
            let seen = cluster
                .read_on(id, "f", ReadConsistency::Follower)
                .await
                .expect("a follower read is served");
            assert_eq!(
                seen,
                Some(Bytes::from(i.to_string())),
                "node {id} read stale data"
            );
        }
    }
    let follower = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("follower");
    let redirected = cluster
        .read_on(follower, "f", ReadConsistency::Linearizable)
        .await;
    assert!(
        matches!(
            redirected,
            Err(RequestError::Refused(KvError::NotLeader { leader_node: Some(l), .. })) if l == leader
        ),
        "{redirected:?}"
    );
    cluster.stop_all().await;
}

/// A graceful shutdown of the leader hands its leaderships away and finishes what was in
/// flight: a client writing all along sees no failure.
/// Issue 8: a bounded-staleness read (`Stale(max_age)`) is served by a follower from what it
/// applied while it heard from its leader within `max_age` minus two election timeouts; cut
/// off from the leader past that, it stops answering from its own state (its ReadIndex
/// fallback cannot reach the leader) instead of serving data of any age. Healed, it serves
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_staleness_reads_are_local_only_while_provably_fresh() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(&[]).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let client = cluster.client().await;
    client.put("s", "1").await.expect("put");
    cluster.wait_value(follower, "s", "1").await;
    // Election timeout 10 ticks of 20 ms: 1,500 ms leaves 1,100 ms after the last contact.
    const MAX_MS: u64 = 1_500;
    const BUDGET: Duration = Duration::from_millis(1_100);
    let served = || async {
        cluster
            .read_stale_on(follower, "s", MAX_MS, Duration::from_millis(500))
            .await
            .ok()
            .flatten()
    };
    let fresh = eventually("a local stale read", served).await;
    assert_eq!(&fresh[..], b"1");
    cluster.partition(&[follower]);
    let cut = Instant::now();
    // Served locally at first, refused once the last contact is older than the budget.
    let mut served_after_cut = Duration::ZERO;
    let refused = loop {
        let answer = cluster
            .read_stale_on(follower, "s", MAX_MS, Duration::from_millis(100))
            .await;
        match answer {
            Ok(value) => {
                assert_eq!(value.as_deref(), Some(&b"1"[..]), "never torn or made up");
                served_after_cut = cut.elapsed();
            }
            Err(_) => break cut.elapsed(),
        }
        assert!(
            cut.elapsed() < Duration::from_secs(10),
            "still served after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        served_after_cut <= BUDGET + Duration::from_millis(100),
        "served {served_after_cut:?} after the cut (budget {BUDGET:?})"
    );
    // Served locally well after the leader became unreachable: not by a ReadIndex round.
    assert!(
        served_after_cut >= Duration::from_millis(500),
        "served only until {served_after_cut:?} (refused at {refused:?})"
    );
    eprintln!("cut off: served locally until {served_after_cut:?}, refused from {refused:?}");
    cluster.heal();
    eventually("stale reads again after the heal", served).await;
    client.close().await;
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_hands_leadership_away_without_failing_writes() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(&[]).await;
    let client = Arc::new(cluster.client().await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client
                    .put("g", n.to_string())
                    .await
                    .expect("no write fails");
                n += 1;
            }
            n
        })
    };
    // Let the writer get going on the old leader first.
    eventually("the writer's first writes", || async {
        (cluster.local_value(leader, "g").await.is_some()).then_some(())
    })
    .await;
    let report = cluster.shutdown(leader).await;
    assert_eq!(report.leaders_left, 0, "leaderships were not handed away");
    assert_eq!(report.requests_left, 0, "requests were cut off");
    let new = cluster.wait_leader(&[leader]).await;
    assert_ne!(new, leader);
    client
        .put("g", "after")
        .await
        .expect("the new leader serves");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.expect("writer");
    assert!(written > 0);
    cluster.stop_all().await;
}

/// A replica far behind the leader's log GC catches up by a snapshot streamed over QUIC, and
/// then follows the log again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_far_behind_catches_up_by_snapshot() {
    let mut cluster = Cluster::start_with(3, |c| {
        c.runtime.log_gc_threshold_entries = 50;
        c.runtime.snapshot_chunk_bytes = 4096;
    })
    .await;
    let leader = cluster.wait_leader(&[]).await;
    let behind = cluster
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .expect("follower");
    let client = cluster.client().await;
    cluster.crash(behind).await;
    for i in 0..400 {
        client
            .put(format!("s{i:03}"), "x".repeat(100))
            .await
            .expect("put");
    }
    // The leader released its log past what the lagging replica has.
    eventually("the leader's log GC", || async {
        let truncated = cluster
            .node(leader)
            .engine()
            .log_truncated_index(FIRST_USER_RANGE)
            .ok()?;
        (truncated > 100).then_some(())
    })
    .await;
    cluster.restart(behind).await;
    cluster.wait_value(behind, "s399", &"x".repeat(100)).await;
    client.put("s-after", "y").await.expect("put");
    cluster.wait_value(behind, "s-after", "y").await;
    let kvs = client.scan("s".."t").collect().await.expect("scan");
    assert_eq!(kvs.len(), 401);
    cluster.stop_all().await;
}

/// Idle ranges go quiet on every replica (no ticks, no heartbeats); a write wakes them, and
/// they go quiet again once idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ranges_go_quiet_and_traffic_wakes_them() {
    let mut cluster = Cluster::start(3).await;
    cluster.wait_leader(&[]).await;
    cluster.wait_quiet(FIRST_USER_RANGE).await;
    cluster.wait_quiet(1).await;
    let client = cluster.client().await;
    client
        .put("q", "1")
        .await
        .expect("a quiet range serves a write");
    assert_eq!(value(&client, "q").await.as_deref(), Some("1"));
    for id in cluster.ids() {
        cluster.wait_value(id, "q", "1").await;
    }
    cluster.wait_quiet(FIRST_USER_RANGE).await;
    cluster.stop_all().await;
}

/// The leader's node dies while its ranges are quiet: node liveness wakes the followers,
/// which elect a new leader that serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_ranges_elect_a_new_leader_when_the_leaders_node_dies() {
    let mut cluster = Cluster::start(3).await;
    let old = cluster.wait_leader(&[]).await;
    let client = cluster.client().await;
    client.put("d", "1").await.expect("put");
    cluster.wait_quiet(FIRST_USER_RANGE).await;
    cluster.crash(old).await;
    let new = cluster.wait_leader(&[old]).await;
    assert_ne!(new, old);
    client.put("d", "2").await.expect("the new leader serves");
    cluster.stop_all().await;
}

/// Three nodes with 1,000 user ranges (a pre-split keyspace): every range elects a leader and
/// serves; the ranges go quiet; the node leading the most of them dies and every one of its
/// ranges gets a new leader (the time it took is printed: `--nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_ranges_elect_serve_go_quiet_and_fail_over() {
    let mut cluster = Cluster::start_with(3, |c| c.initial_ranges = 1000).await;
    let leaders = eventually("a leader for each of the 1,001 ranges", || {
        cluster.all_leaders(&[])
    })
    .await;
    assert_eq!(leaders.len(), 1001);
    let client = cluster.client().await;
    // Keys whose first two bytes spread them over the ranges.
    let keys: Vec<Vec<u8>> = (0..200u32)
        .map(|i| {
            let mut k = ((i * 65_536 / 200) as u16).to_be_bytes().to_vec();
            k.extend_from_slice(b"-key");
            k
        })
        .collect();
    for k in &keys {
        client.put(k, k.clone()).await.expect("put");
    }
    for k in &keys {
        let kv = client.get(k).await.expect("get").expect("found");
        assert_eq!(kv.value.as_ref(), k.as_slice());
    }
    // Idle: every range goes quiet on every node.
    eventually("every range to go quiet", || async {
        for id in cluster.live() {
            let handle = cluster.node(id).handle().expect("running").clone();
            for answer in handle.on_every_store(|s| {
                let ids: Vec<u64> = s.range_ids().collect();
                ids.iter().all(|r| s.is_quiet(*r))
            }) {
                if !answer.await.unwrap_or(false) {
                    return None;
                }
            }
        }
        Some(())
    })
    .await;
    let mut led: std::collections::BTreeMap<u64, usize> = std::collections::BTreeMap::new();
    for node in leaders.values() {
        *led.entry(*node).or_default() += 1;
    }
    let (&victim, &count) = led.iter().max_by_key(|(_, c)| **c).expect("some leader");
    let started = std::time::Instant::now();
    cluster.crash(victim).await;
    let gone = [victim];
    let after = eventually("new leaders for every range", || cluster.all_leaders(&gone)).await;
    println!(
        "failover: node {victim} led {count} of 1,001 quiet ranges; all had new leaders after {:?}",
        started.elapsed()
    );
    assert!(after.values().all(|l| *l != victim));
    for k in keys.iter().take(20) {
        client.put(k, "after").await.expect("the new leaders serve");
    }
    cluster.stop_all().await;
}

/// A split under concurrent writes loses nothing: every acknowledged write is readable after,
/// both halves serve and have leaders, a request with the old epoch gets a typed error naming
/// the current range, and the split survives a restart of the whole cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_under_concurrent_writes_loses_nothing_and_routes_after() {
    let mut cluster = Cluster::start(3).await;
    let client = Arc::new(cluster.client().await);
    let acked = Arc::new(parking_lot::Mutex::new(Vec::<(String, String)>::new()));
    let mut writers = Vec::new();
    for w in 0..4u32 {
        let (client, acked) = (client.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..60u32 {
                let key = format!("{}{w}-{i:03}", (b'a' + ((i * 7 + w) % 26) as u8) as char);
                let value = format!("v{w}-{i}");
                client
                    .put(&key, value.clone())
                    .await
                    .expect("every write succeeds");
                acked.lock().push((key, value));
            }
        }));
    }
    eventually("some writes before the split", || async {
        (acked.lock().len() >= 40).then_some(())
    })
    .await;
    let (left, right) = client.split("m").await.expect("split");
    assert_eq!(left.id, FIRST_USER_RANGE);
    assert_eq!(left.end_key, right.start_key);
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().clone();
    assert_eq!(acked.len(), 240);
    for (key, expected) in &acked {
        assert_eq!(
            value(&client, key).await.as_deref(),
            Some(expected.as_str()),
            "{key}"
        );
    }
    // The new range has a leader everywhere, and every node hosts it.
    eventually("a leader of the new range", || {
        cluster.leader(right.id, &[])
    })
    .await;
    // A request naming the range with its old epoch is refused with the current descriptor.
    let mut stale = put_command("z-stale", "v", 0, 0);
    stale.header.as_mut().expect("header").epoch = Some(RangeEpoch {
        version: 1,
        conf_ver: 1,
    });
    match &raw_write(&cluster, &stale).await.response {
        Some(write_response::Response::Error(e)) => {
            assert_eq!(e.code, ErrorCode::EpochNotMatch as i32);
            assert_eq!(
                e.current.as_ref().map(|d| d.end_key.clone()),
                Some(left.end_key.clone())
            );
        }
        other => panic!("{other:?}"),
    }
    client.close().await;
    cluster.stop_all().await;
    for id in cluster.ids() {
        cluster.restart(id).await;
    }
    let client = cluster.client().await;
    let all = client
        .scan::<&str>(..)
        .collect()
        .await
        .expect("scan across both ranges");
    assert_eq!(all.len(), 240);
    client
        .put("zz-after", "1")
        .await
        .expect("the right range serves after a restart");
    client
        .put("aa-after", "1")
        .await
        .expect("the left range serves after a restart");
    cluster.stop_all().await;
}

/// A range that grows past the split size splits by itself at its middle key; every write
/// stays readable and the client follows the new ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_past_the_split_size_splits_by_itself() {
    let mut cluster = Cluster::start_with(3, |c| c.runtime.split_size_bytes = 32 << 10).await;
    let client = cluster.client().await;
    let value = "x".repeat(1024);
    for i in 0..120 {
        client
            .put(format!("grow{i:03}"), value.clone())
            .await
            .expect("put");
    }
    let ranges = eventually("an automatic split", || async {
        let n = cluster.node(1).ranges().await.len();
        (n >= 3).then_some(n)
    })
    .await;
    assert!(ranges >= 3);
    for i in (0..120).step_by(7) {
        let kv = client
            .get(format!("grow{i:03}"))
            .await
            .expect("get")
            .expect("found");
        assert_eq!(kv.value.len(), 1024);
    }
    let all = client
        .scan("grow".."grox")
        .collect()
        .await
        .expect("scan across the ranges");
    assert_eq!(all.len(), 120);
    cluster.stop_all().await;
}

/// A split retried with the same `(client_id, seq)` (its answer was lost) gets the recorded
/// answer, although the range's epoch moved on and the split key is now a range's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_split_gets_its_recorded_answer() {
    let mut cluster = Cluster::start(3).await;
    let mut split = put_command("unused", "", 77, 1);
    split.request = None;
    split.admin = Some(flotilla_transport::kv::AdminRequest {
        request: Some(flotilla_transport::kv::admin_request::Request::Split(
            flotilla_transport::kv::SplitRequest {
                split_key: "m".into(),
            },
        )),
    });
    let first = raw_write(&cluster, &split).await;
    assert!(
        matches!(first.response, Some(write_response::Response::Split(_))),
        "{first:?}"
    );
    let again = raw_write(&cluster, &split).await;
    assert_eq!(again, first, "a retry must get the recorded answer");
    for id in cluster.ids() {
        eventually("the split applied everywhere", || async {
            (cluster.node(id).ranges().await.len() == 3).then_some(())
        })
        .await;
    }
    cluster.stop_all().await;
}

/// A replica that was down while its range split, and then fell behind the log GC, ends up
/// with both ranges and their data. (How it learns of the new range here still needs a look:
/// with replica creation from snapshots disabled this test passes too, see the notes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_a_split_gets_the_new_range_by_snapshot() {
    let mut cluster = Cluster::start_with(3, |c| {
        c.runtime.log_gc_threshold_entries = 30;
        c.runtime.snapshot_chunk_bytes = 4096;
    })
    .await;
    let leader = cluster.wait_leader(&[]).await;
    let behind = cluster
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .expect("follower");
    let client = cluster.client().await;
    client.put("a-before", "1").await.expect("put");
    cluster.crash(behind).await;
    let (left, right) = client.split("m").await.expect("split");
    // The new range's log starts at the split entry (read before its own log GC moves it).
    let split_index = cluster
        .node(leader)
        .engine()
        .log_truncated_index(right.id)
        .expect("the new range exists on the leader's node");
    for i in 0..120 {
        client
            .put(format!("a{i:03}"), "left")
            .await
            .expect("put left");
        client
            .put(format!("z{i:03}"), "right")
            .await
            .expect("put right");
    }
    // The log GC has passed the split entry everywhere it ran: the node that was down can
    // only learn of the split from snapshots.
    for id in cluster.live() {
        eventually("the log GC past the split", || async {
            let truncated = cluster
                .node(id)
                .engine()
                .log_truncated_index(left.id)
                .ok()?;
            (truncated > split_index).then_some(())
        })
        .await;
    }
    cluster.restart(behind).await;
    let epoch = right.epoch.expect("epoch");
    eventually(
        "the new range on the node that missed the split",
        || async {
            let seen = cluster
                .read_range_on(behind, right.id, epoch, "z119", ReadConsistency::Stale)
                .await
                .ok()?;
            (seen.as_deref() == Some(&b"right"[..])).then_some(())
        },
    )
    .await;
    let left_epoch = left.epoch.expect("epoch");
    eventually(
        "the narrowed range on the node that missed the split",
        || async {
            let seen = cluster
                .read_range_on(behind, left.id, left_epoch, "a119", ReadConsistency::Stale)
                .await
                .ok()?;
            (seen.as_deref() == Some(&b"left"[..])).then_some(())
        },
    )
    .await;
    cluster.stop_all().await;
}

/// Issue 7: a replica moves to a fourth node (learner, catch-up by snapshot, joint promotion
/// and removal, leadership handed away from the node that leaves) while clients write and read
/// a few keys; the recorded history is linearizable, the new node serves the data, and the
/// node that left deleted its replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_replica_to_a_fourth_node_under_writes_keeps_the_history_linearizable() {
    use flotilla_client::ReplicaChangeKind;
    let mut cluster = Cluster::start_joining(3, 1, |_| {}).await;
    // The node that leads leaves: the move must hand its leadership away first.
    let from = cluster.wait_leader(&[4]).await;
    let client = Arc::new(cluster.client().await);
    let load = support::Load::start(client.clone(), "m", 4);
    load.wait_for_more(50, "writes before the move").await;
    let moved = client
        .move_replica("m0", from, 4)
        .await
        .expect("the replica moves");
    let nodes: Vec<u64> = moved.replicas.iter().map(|r| r.node_id).collect();
    assert!(nodes.contains(&4) && !nodes.contains(&from), "{nodes:?}");
    assert!(moved
        .replicas
        .iter()
        .all(|r| r.role == flotilla_transport::meta::ReplicaRole::Voter as i32));
    // A retried step is in effect already: answered, nothing changes.
    let again = client
        .change_replicas("m0", &[(ReplicaChangeKind::Remove, from)])
        .await
        .expect("in effect");
    assert_eq!(again.epoch, moved.epoch);
    load.wait_for_more(50, "writes after the move").await;
    load.stop_and_check(100).await;
    // The new node serves what was written; the node that left deleted its replica.
    client.put("m-final", "1").await.expect("put");
    cluster.wait_value(4, "m-final", "1").await;
    cluster.wait_replica_deleted(from, FIRST_USER_RANGE).await;
    cluster.stop_all().await;
}

/// Issue 7: a replica removed while its node was cut off never applies its removal; when the
/// node is back, the leader answers its campaign with a tombstone and it deletes its data. A
/// snapshot or message for the removed replica does not bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_removed_while_cut_off_deletes_its_data_when_it_returns() {
    use flotilla_client::ReplicaChangeKind;
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(&[]).await;
    let gone = cluster
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .expect("a follower");
    let client = cluster.client().await;
    client.put("r", "1").await.expect("put");
    cluster.wait_value(gone, "r", "1").await;
    cluster.partition(&[gone]);
    let after = client
        .change_replicas("r", &[(ReplicaChangeKind::Remove, gone)])
        .await
        .expect("removed");
    assert!(after.replicas.iter().all(|r| r.node_id != gone));
    client.put("r", "2").await.expect("two voters serve");
    // Cut off, the replica still holds its range.
    assert!(cluster
        .node(gone)
        .engine()
        .descriptor(FIRST_USER_RANGE)
        .expect("read")
        .is_some());
    cluster.heal();
    cluster.wait_replica_deleted(gone, FIRST_USER_RANGE).await;
    // The leader keeps serving with the two voters left, and the removed node stays out.
    client.put("r", "3").await.expect("put after");
    let ranges = cluster.node(gone).ranges().await;
    assert!(
        ranges.iter().all(|r| r
            .descriptor
            .as_ref()
            .is_none_or(|d| d.id != FIRST_USER_RANGE)),
        "the removed replica came back"
    );
    cluster.stop_all().await;
}

/// The meta range's routing records of the ranges overlapping `[start, end)` as node `id`
/// has them.
async fn scan_routes(
    cluster: &Cluster,
    raw: &flotilla_transport::ClientEndpoint,
    id: u64,
    start: &str,
) -> Vec<flotilla_transport::meta::RangeRecord> {
    use flotilla_transport::service::{ScanRangesRequest, ScanRangesResponse};
    let request = ScanRangesRequest {
        start: Bytes::copy_from_slice(start.as_bytes()),
        end: Bytes::new(),
        limit: 0,
    };
    let body = raw
        .call(
            cluster.addr(id),
            "routing.ScanRanges",
            request.encode_to_vec().into(),
            Duration::from_secs(5),
        )
        .await
        .expect("scan ranges answers");
    ScanRangesResponse::decode(body).expect("decodes").records
}

/// Issue 7: the meta range keeps a routing record per range (descriptor, last leader), updated
/// by splits, replica changes and elections; every node answers `ScanRanges` and `LocateKey`
/// from its meta replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_records_follow_splits_replica_changes_and_elections() {
    use flotilla_client::ReplicaChangeKind;
    use flotilla_transport::service::{LocateKeyRequest, LocateKeyResponse};
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(&[]).await;
    let client = cluster.client().await;
    let raw = cluster.raw();
    // The user keyspace is one range, led by `leader`, on every node's meta replica.
    for id in cluster.ids() {
        eventually(&format!("node {id}'s record of the user range"), || async {
            let records = scan_routes(&cluster, &raw, id, "").await;
            (records.len() == 1
                && records[0].descriptor.as_ref().map(|d| d.id) == Some(FIRST_USER_RANGE)
                && records[0].leader_node == leader)
                .then_some(())
        })
        .await;
    }
    // A split: two records that tile the keyspace, each with its range's new epoch.
    let (left, right) = client.split("m").await.expect("split");
    for id in cluster.ids() {
        eventually(&format!("node {id}'s records after the split"), || async {
            let records = scan_routes(&cluster, &raw, id, "").await;
            let descriptors: Vec<_> = records
                .iter()
                .filter_map(|r| r.descriptor.clone())
                .collect();
            (descriptors == [left.clone(), right.clone()]).then_some(())
        })
        .await;
    }
    let located = raw
        .call(
            cluster.addr(2),
            "routing.LocateKey",
            LocateKeyRequest {
                key: Bytes::from_static(b"zebra"),
            }
            .encode_to_vec()
            .into(),
            Duration::from_secs(5),
        )
        .await
        .expect("locate answers");
    let record = LocateKeyResponse::decode(located)
        .expect("decodes")
        .record
        .expect("a record");
    assert_eq!(record.descriptor.map(|d| d.id), Some(right.id));
    // A replica change: the record's replicas follow.
    let voter = cluster
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .expect("a follower");
    let shrunk = client
        .change_replicas("a", &[(ReplicaChangeKind::Remove, voter)])
        .await
        .expect("removed");
    eventually("the record after the replica change", || async {
        let records = scan_routes(&cluster, &raw, leader, "").await;
        (records.first()?.descriptor.as_ref() == Some(&shrunk)).then_some(())
    })
    .await;
    // An election: the crashed leader's range that still has a quorum (the right one; the
    // left kept two voters) gets a record naming its new leader.
    cluster.crash(leader).await;
    let survivor = cluster.live()[0];
    eventually("a record naming the new leader", || async {
        let records = scan_routes(&cluster, &raw, survivor, "").await;
        let record = records
            .iter()
            .find(|r| r.descriptor.as_ref().map(|d| d.id) == Some(right.id))?;
        (record.leader_node != leader && record.leader_node != 0).then_some(())
    })
    .await;
    cluster.stop_all().await;
}

/// Review finding: a node removed from a range while cut off, whose leader then changed (so no
/// one keeps telling it), still hosts its stale replica when it is added again; the leader,
/// addressing the new replica, hears from the old one, tells it it is gone, and the new one
/// is created by snapshot and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_again_replaces_a_stale_replica_that_missed_its_removal() {
    use flotilla_client::ReplicaChangeKind;
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(&[]).await;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&i| i != leader).collect();
    let (gone, stays) = (others[0], others[1]);
    let client = cluster.client().await;
    client.put("q", "1").await.expect("put");
    cluster.wait_value(gone, "q", "1").await;
    cluster.partition(&[gone]);
    client
        .change_replicas("q", &[(ReplicaChangeKind::Remove, gone)])
        .await
        .expect("removed");
    // A new leader: nobody keeps telling the cut-off replica it was removed.
    client.transfer_leader("q", stays).await.expect("transfer");
    eventually("the new leader", || async {
        (cluster.leader(FIRST_USER_RANGE, &[gone]).await == Some(stays)).then_some(())
    })
    .await;
    client.put("q", "2").await.expect("two voters serve");
    cluster.heal();
    let added = client
        .change_replicas("q", &[(ReplicaChangeKind::AddLearner, gone)])
        .await
        .expect("added again");
    let new_id = added
        .replicas
        .iter()
        .find(|r| r.node_id == gone)
        .expect("a replica on the node")
        .replica_id;
    client
        .change_replicas("q", &[(ReplicaChangeKind::Promote, gone)])
        .await
        .expect("promoted once it caught up");
    client.put("q", "3").await.expect("put");
    cluster.wait_value(gone, "q", "3").await;
    let descriptor = cluster
        .node(gone)
        .engine()
        .descriptor(FIRST_USER_RANGE)
        .expect("read")
        .expect("the range is back");
    let mine = descriptor
        .replicas
        .iter()
        .find(|r| r.node_id == gone)
        .expect("names the node");
    assert_eq!(
        mine.replica_id, new_id,
        "the new replica, not the stale one"
    );
    cluster.stop_all().await;
}
