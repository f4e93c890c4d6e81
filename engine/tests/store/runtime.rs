//! The poller runtime on one single-replica node (no network): bounded queues answer
//! `ServerBusy` instead of growing, writes complete at apply, reads serve what was applied,
//! and a stopped runtime answers what was pending.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_engine::kv::KvError;
use flotilla_engine::node::{bootstrap, FIRST_USER_RANGE};
use flotilla_engine::raft::Message;
use flotilla_engine::storage::{Engine, EngineConfig};
use flotilla_engine::store::{
    Network, RequestError, Runtime, RuntimeConfig, RuntimeHandle, SnapshotBuild,
};
use flotilla_transport::kv::{
    write_request, CommandHeader, GetRequest, PutRequest, RaftCommand, WriteRequest,
};
use flotilla_transport::meta::RangeEpoch;
use flotilla_transport::service::{read_request, read_response, ReadConsistency, ReadRequest};

struct NoNetwork;

impl Network for NoNetwork {
    fn send(&self, _to_node: u64, _messages: Vec<(u64, Message)>) {}
    fn send_snapshot(
        &self,
        _to_node: u64,
        _range_id: u64,
        _build: SnapshotBuild,
        done: Box<dyn FnOnce(bool) + Send>,
    ) {
        done(false);
    }
}

fn epoch() -> Option<RangeEpoch> {
    Some(RangeEpoch {
        version: 1,
        conf_ver: 1,
    })
}

fn put(key: &str, value: &str) -> RaftCommand {
    RaftCommand {
        header: Some(CommandHeader {
            range_id: FIRST_USER_RANGE,
            epoch: epoch(),
            ..CommandHeader::default()
        }),
        request: Some(WriteRequest {
            request: Some(write_request::Request::Put(PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::copy_from_slice(value.as_bytes()),
                prev_kv: false,
            })),
        }),
        admin: None,
    }
}

fn get(key: &str) -> ReadRequest {
    ReadRequest {
        range_id: FIRST_USER_RANGE,
        epoch: epoch(),
        consistency: ReadConsistency::Linearizable as i32,
        request: Some(read_request::Request::Get(GetRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
        })),
        max_staleness_ms: 0,
    }
}

fn start(dir: &std::path::Path, configure: impl FnOnce(&mut RuntimeConfig)) -> Runtime {
    let engine = Engine::open(&EngineConfig::new(dir, "runtime-test", 1)).expect("engine");
    bootstrap(&engine, &[1], 1).expect("bootstrap");
    let mut config = RuntimeConfig::new(1);
    config.tick = Duration::from_millis(5);
    config.pollers = 1;
    configure(&mut config);
    Runtime::start(engine, config, Arc::new(NoNetwork)).expect("runtime")
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// Writes until the single replica has elected itself and one applies.
async fn wait_leader(handle: &RuntimeHandle) {
    let deadline = soon();
    loop {
        match handle
            .write(put("warm", "up"), soon())
            .await
            .expect("answered")
        {
            Ok(_) => return,
            Err(RequestError::Refused(KvError::NotLeader { .. })) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Holds the poller inside a command until the returned sender is dropped.
fn hold_poller(handle: &RuntimeHandle) -> mpsc::Sender<()> {
    let (release, held) = mpsc::channel::<()>();
    let held = parking_lot::Mutex::new(held);
    let (entered_tx, entered) = mpsc::channel();
    let entered_tx = parking_lot::Mutex::new(entered_tx);
    let _ = handle.on_every_store(move |_| {
        let _ = entered_tx.lock().send(());
        let _ = held.lock().recv();
    });
    entered.recv().expect("the poller took the command");
    release
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_apply_and_reads_see_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = start(dir.path(), |_| {});
    let handle = runtime.handle().clone();
    wait_leader(&handle).await;
    let response = handle
        .write(put("k", "v"), soon())
        .await
        .expect("answered")
        .expect("applied");
    assert!(response.revision > 0);
    let read = handle
        .read(get("k"), soon())
        .await
        .expect("answered")
        .expect("served");
    match read {
        read_response::Response::Get(g) => {
            let kv = g.kv.expect("found");
            assert_eq!(kv.value, Bytes::from("v"));
            assert_eq!(kv.mod_revision, response.revision);
        }
        other => panic!("{other:?}"),
    }
    runtime.stop();
}

/// Starts a one-node runtime configured by `configure`, holds its poller, queues ten writes,
/// releases it, and counts the answers: (applied, refused with `ServerBusy`).
async fn ten_writes_while_held(configure: impl FnOnce(&mut RuntimeConfig)) -> (usize, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = start(dir.path(), configure);
    let handle = runtime.handle().clone();
    wait_leader(&handle).await;
    let release = hold_poller(&handle);
    let answers: Vec<_> = (0..10)
        .map(|i| handle.write(put(&format!("k{i}"), "v"), soon()))
        .collect();
    drop(release);
    let (mut applied, mut busy) = (0, 0);
    for a in answers {
        match a.await.expect("answered") {
            Ok(_) => applied += 1,
            Err(RequestError::Refused(KvError::ServerBusy(_))) => busy += 1,
            Err(e) => panic!("{e}"),
        }
    }
    runtime.stop();
    (applied, busy)
}

/// The poller takes the ten queued writes in one round: two are proposed, eight are refused
/// before reaching the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_pending_requests_get_server_busy() {
    let counts = ten_writes_while_held(|c| c.max_pending_requests = 2).await;
    assert_eq!(counts, (2, 8));
}

/// A mailbox of four takes four commands; the other six writes are refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_refuses_at_once() {
    let counts = ten_writes_while_held(|c| c.mailbox_capacity = 4).await;
    assert_eq!(counts, (4, 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_runtime_answers_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = start(dir.path(), |_| {});
    let handle = runtime.handle().clone();
    wait_leader(&handle).await;
    runtime.stop();
    let after = handle
        .write(put("after", "v"), soon())
        .await
        .expect("answered");
    assert!(
        matches!(after, Err(RequestError::Unavailable(_))),
        "{after:?}"
    );
    let read = handle.read(get("warm"), soon()).await.expect("answered");
    assert!(
        matches!(read, Err(RequestError::Unavailable(_))),
        "{read:?}"
    );
}
