//! A write whose answer is lost after it applied (the `service::drop_write_response`
//! failpoint: the node applies the write, then the answer never leaves it) is applied exactly
//! once: its retry, with the same `(client_id, seq)`, gets the recorded answer. Failpoints are
//! process-global, so this binary holds only this test.

// The cluster scenarios' helpers; this binary uses a few of them.
#[allow(dead_code)]
#[path = "cluster/support.rs"]
mod support;

use std::time::Duration;

use flotilla_engine::node::FIRST_USER_RANGE;
use flotilla_transport::kv::{write_response, WriteResponse};
use prost::Message as _;
use support::{put_command, Cluster};

const DROP: &str = "service::drop_write_response";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_is_lost_after_apply_is_applied_exactly_once() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    client.put("warm", "up").await.expect("a first write");
    // Every node agrees on the leader once the last one has heard from it.
    let leader = support::eventually("a leader all nodes agree on", || {
        cluster.leader(FIRST_USER_RANGE, &[])
    })
    .await;

    // By hand: the first answer is lost, the retry is answered from the session.
    let raw = cluster.raw();
    let command = put_command("raw", "v", 77, 1).encode_to_vec();
    fail::cfg(DROP, "1*return(lost on the way back)").expect("failpoint");
    let first = raw
        .call(
            cluster.addr(leader),
            "kv.Write",
            command.clone().into(),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        first
            .as_ref()
            .is_err_and(|e| e.to_string().contains("answer dropped")),
        "the first answer is dropped: {first:?}"
    );
    let again = raw
        .call(
            cluster.addr(leader),
            "kv.Write",
            command.into(),
            Duration::from_secs(5),
        )
        .await
        .expect("the retry is answered");
    let again = WriteResponse::decode(again).expect("a write response");
    assert!(
        matches!(again.response, Some(write_response::Response::Put(_))),
        "{again:?}"
    );
    let kv = client.get("raw").await.expect("get").expect("written");
    assert_eq!(kv.version, 1, "applied once, not twice");
    assert_eq!(
        kv.mod_revision, again.revision,
        "the retry got the first write's answer"
    );

    // Through the client library: it retries with the same sequence number by itself.
    fail::cfg(DROP, "1*return(lost on the way back)").expect("failpoint");
    let revision = client
        .put("once", "1")
        .await
        .expect("the client's retry gets the recorded answer");
    fail::remove(DROP);
    let kv = client.get("once").await.expect("get").expect("written");
    assert_eq!((kv.version, kv.mod_revision), (1, revision));
    client.put("once", "2").await.expect("a second write");
    let kv = client.get("once").await.expect("get").expect("written");
    assert_eq!(kv.version, 2);
    cluster.stop_all().await;
}
