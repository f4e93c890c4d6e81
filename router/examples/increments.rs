//! The thesis seed's `concurrent_read_writes`, against a running cluster:
//!
//! ```text
//! flotilla cluster up --detach && source ./data/local/env
//! cargo run -p flotilla-client --example increments -- notx 10 10
//! cargo run -p flotilla-client --example increments -- tx 10 10
//! ```
//!
//! Keys `key1..keyN` start at 1; WORKERS workers per key each add 1 once. `notx` reads,
//! increments and writes back (concurrent workers overwrite each other: lost updates, values
//! end well below WORKERS + 1); `tx` writes only if the key's revision is still the one read
//! (etcd's compare on `mod_revision`), retrying on a conflict, so every key ends at WORKERS + 1.

use flotilla_client::txn::{self, CompareOp};
use flotilla_client::{Client, ClientConfig, ClientError};

async fn read(client: &Client, key: &str) -> Result<(u64, u64), ClientError> {
    let kv = client.get(key).await?;
    let value = kv
        .as_ref()
        .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
        .unwrap_or(0);
    Ok((value, kv.map_or(0, |kv| kv.mod_revision)))
}

async fn increment(client: Client, key: String, with_txn: bool) -> Result<(), ClientError> {
    loop {
        let (value, revision) = read(&client, &key).await?;
        let next = (value + 1).to_string();
        if !with_txn {
            client.put(&key, next).await?;
            return Ok(());
        }
        let outcome = client
            .txn()
            .when([txn::mod_revision(&key, CompareOp::Equal, revision)])
            .and_then([txn::put(&key, next)])
            .commit()
            .await?;
        if outcome.succeeded {
            return Ok(());
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: increments tx|notx KEYS WORKERS";
    let mode = args.first().ok_or(usage)?;
    let with_txn = match mode.as_str() {
        "tx" => true,
        "notx" => false,
        _ => return Err(usage.into()),
    };
    let keys: usize = args.get(1).ok_or(usage)?.parse()?;
    let workers: usize = args.get(2).ok_or(usage)?.parse()?;
    let client = Client::connect(ClientConfig::from_env()?).await?;
    let names: Vec<String> = (1..=keys).map(|i| format!("key{i}")).collect();
    for key in &names {
        client.put(key, "1").await?;
    }
    println!("Initialized keys with value 1");
    println!("Running {} workers", keys * workers);
    let mut tasks = Vec::new();
    for key in &names {
        for _ in 0..workers {
            tasks.push(tokio::spawn(increment(
                client.clone(),
                key.clone(),
                with_txn,
            )));
        }
    }
    for task in tasks {
        task.await??;
    }
    println!("Final values:");
    for key in &names {
        let (value, _) = read(&client, key).await?;
        println!("  {key}: {value}");
    }
    Ok(())
}
