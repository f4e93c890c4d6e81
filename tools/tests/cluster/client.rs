//! The client library against three nodes: scans across ranges, batches, transactions that
//! span ranges, routing after a leader transfer.

use flotilla_client::txn::{self, CompareOp};
use flotilla_client::ClientError;
use futures_util::TryStreamExt;

use super::support::{eventually, Cluster};

/// Keys whose first two bytes spread them evenly over the keyspace (and so over pre-split
/// ranges), in key order.
fn spread_keys(n: u32) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut k = ((i * 65_536 / n) as u16).to_be_bytes().to_vec();
            k.extend_from_slice(format!("-key{i:04}").as_bytes());
            k
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_across_ten_ranges_returns_every_key_once_in_order() {
    let mut cluster = Cluster::start_with(3, |c| c.initial_ranges = 10).await;
    let client = cluster.client().await;
    let keys = spread_keys(300);
    client
        .batch_put(keys.iter().map(|k| (k.clone(), k.clone())))
        .await
        .expect("batch put");
    let all = client.scan::<&[u8]>(..).collect().await.expect("scan");
    let got: Vec<Vec<u8>> = all.iter().map(|kv| kv.key.to_vec()).collect();
    assert_eq!(got, keys, "every key once, in order, across the ten ranges");
    assert!(all.iter().all(|kv| kv.value == kv.key));

    // A limit stops across ranges; keys-only leaves the values out.
    let first = client
        .scan::<&[u8]>(..)
        .limit(45)
        .keys_only()
        .collect()
        .await
        .expect("scan");
    assert_eq!(first.len(), 45);
    assert!(first.iter().all(|kv| kv.value.is_empty()));
    assert_eq!(first[44].key.as_ref(), keys[44].as_slice());

    // Inclusive and exclusive bounds, streamed page by page.
    let (a, b) = (keys[20].as_slice(), keys[260].as_slice());
    let mut stream = std::pin::pin!(client.scan(a..=b).stream());
    let mut streamed = Vec::new();
    while let Some(kv) = stream.try_next().await.expect("a page") {
        streamed.push(kv.key.to_vec());
    }
    assert_eq!(streamed, keys[20..=260].to_vec());
    let half_open = client.scan(a..b).collect().await.expect("scan");
    assert_eq!(half_open.len(), 240);

    // In reverse: every key once, descending, across the ten ranges; a limit; bounds.
    let descending: Vec<Vec<u8>> = keys.iter().rev().cloned().collect();
    let back = client
        .scan::<&[u8]>(..)
        .reverse()
        .collect()
        .await
        .expect("reverse scan");
    let got: Vec<Vec<u8>> = back.iter().map(|kv| kv.key.to_vec()).collect();
    assert_eq!(
        got, descending,
        "every key once, in reverse, across the ranges"
    );
    let last = client
        .scan::<&[u8]>(..)
        .reverse()
        .limit(45)
        .collect()
        .await
        .expect("reverse scan");
    let got: Vec<Vec<u8>> = last.iter().map(|kv| kv.key.to_vec()).collect();
    assert_eq!(got, descending[..45].to_vec());
    let middle = client
        .scan(a..=b)
        .reverse()
        .collect()
        .await
        .expect("reverse scan");
    let got: Vec<Vec<u8>> = middle.iter().map(|kv| kv.key.to_vec()).collect();
    let want: Vec<Vec<u8>> = keys[20..=260].iter().rev().cloned().collect();
    assert_eq!(got, want);

    // Batch reads keep the order asked, absent keys as None.
    let mut asked: Vec<Vec<u8>> = keys.iter().rev().take(30).cloned().collect();
    asked.push(b"\xff\xffmissing".to_vec());
    let values = client.batch_get(&asked).await.expect("batch get");
    assert_eq!(values.len(), 31);
    for (k, v) in asked.iter().zip(&values).take(30) {
        assert_eq!(v.as_ref().map(|kv| kv.value.to_vec()), Some(k.clone()));
    }
    assert!(values[30].is_none());
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_across_ranges_gets_its_typed_error_and_applies_nothing() {
    let mut cluster = Cluster::start_with(3, |c| c.initial_ranges = 10).await;
    let client = cluster.client().await;
    let keys = spread_keys(10);
    client.put(&keys[0], "0").await.expect("put");
    // keys[0] and keys[5] are in different pre-split ranges.
    let outcome = client
        .txn()
        .when([txn::value(&keys[0], CompareOp::Equal, "0")])
        .and_then([txn::put(&keys[0], "1"), txn::put(&keys[5], "1")])
        .commit()
        .await;
    match outcome {
        Err(ClientError::CrossRange { ranges }) => {
            assert_eq!(ranges.len(), 2, "names both ranges: {ranges:?}")
        }
        other => panic!("a cross-range txn answered {other:?}"),
    }
    let e = ClientError::CrossRange { ranges: vec![] };
    assert!(!e.is_retryable() && !e.may_have_applied());
    assert_eq!(
        client
            .get(&keys[0])
            .await
            .expect("get")
            .map(|kv| kv.value.to_vec()),
        Some(b"0".to_vec())
    );
    assert!(client.get(&keys[5]).await.expect("get").is_none());

    // Within one range it runs, and a failed compare takes the other branch.
    let mut neighbour = keys[0].clone();
    neighbour.push(b'+');
    let done = client
        .txn()
        .when([txn::value(&keys[0], CompareOp::Equal, "0")])
        .and_then([txn::put(&keys[0], "1"), txn::put(&neighbour, "1")])
        .commit()
        .await
        .expect("txn");
    assert!(done.succeeded);
    let again = client
        .txn()
        .when([txn::value(&keys[0], CompareOp::Equal, "0")])
        .and_then([txn::put(&keys[0], "2")])
        .or_else([txn::get(&keys[0])])
        .commit()
        .await
        .expect("txn");
    assert!(!again.succeeded);
    assert_eq!(
        again.gets()[0].as_ref().map(|kv| kv.value.to_vec()),
        Some(b"1".to_vec())
    );
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_follows_a_leader_transfer() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    client.put("moving", "1").await.expect("put");
    let user_range = flotilla_engine::node::FIRST_USER_RANGE;
    let leader = cluster.leader(user_range, &[]).await.expect("a leader");
    let target = cluster
        .ids()
        .into_iter()
        .find(|n| *n != leader)
        .expect("a peer");
    client
        .transfer_leader("moving", target)
        .await
        .expect("transfer");
    eventually("the leadership to move", || async {
        (cluster.leader(user_range, &[]).await == Some(target)).then_some(())
    })
    .await;
    // The client's cache still names the old leader: NOT_LEADER corrects it.
    client
        .put("moving", "2")
        .await
        .expect("put after the transfer");
    assert_eq!(
        client
            .get("moving")
            .await
            .expect("get")
            .map(|kv| kv.value.to_vec()),
        Some(b"2".to_vec())
    );
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_loads_and_runs_workloads_a_and_e() {
    use flotilla_tools::ycsb::{self, report, workload::Workload, Phase};
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    let props = [
        ("recordcount", "300"),
        ("operationcount", "600"),
        ("fieldlength", "32"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let options = |letter: &str, phase| ycsb::Options {
        workload: Workload::core(letter, &props).expect("workload"),
        phase,
        threads: 8,
        target_ops_s: 0.0,
        duration: None,
        seed: 3,
        progress: false,
    };
    let load = ycsb::run(client.clone(), options("a", Phase::Load)).await;
    assert_eq!(
        (load.operations(), load.errors()),
        (300, 0),
        "{}",
        report::table(&load)
    );
    let keys = client
        .scan::<&str>(..)
        .keys_only()
        .collect()
        .await
        .expect("scan");
    assert_eq!(keys.len(), 300, "every record loaded once");
    let a = ycsb::run(client.clone(), options("a", Phase::Run)).await;
    assert_eq!(
        (a.operations(), a.errors()),
        (600, 0),
        "{}",
        report::table(&a)
    );
    let j = report::json(&a, "test");
    let reads = j["ops"]["read"]["count"].as_u64().expect("reads");
    let updates = j["ops"]["update"]["count"].as_u64().expect("updates");
    assert_eq!(reads + updates, 600);
    assert!((200..400).contains(&reads), "about half reads: {reads}");
    assert!(report::table(&a).contains("UPDATE"));
    // Workload E: short scans and inserts of new records.
    let e = ycsb::run(client.clone(), options("e", Phase::Run)).await;
    assert_eq!(e.errors(), 0, "{}", report::table(&e));
    assert!(e
        .ops
        .contains_key(&flotilla_tools::ycsb::workload::Op::Scan));
    let after = client
        .scan::<&str>(..)
        .keys_only()
        .collect()
        .await
        .expect("scan");
    assert!(after.len() > 300, "inserts added records");
    cluster.stop_all().await;
}
