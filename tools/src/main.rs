//! `flotilla`: the server, a local cluster in one command, and the data and admin commands.

mod cluster;
mod config;
mod load;
mod server;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flotilla_client::Client;

use crate::config::ServerConfig;

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Flotilla: a sharded Multi-Raft key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum ReplicaCmd {
    /// Adds a learner on NODE (it catches up by snapshot).
    Add { key: String, node: u64 },
    /// Promotes the learner on NODE to a voter (waits until it caught up).
    Promote { key: String, node: u64 },
    /// Removes the replica on NODE (it deletes its data).
    Remove { key: String, node: u64 },
    /// Moves the replica on FROM to TO: learner, catch-up, one joint promotion and removal.
    Move { key: String, from: u64, to: u64 },
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one node.
    Server(ServerArgs),
    /// Prints the documented default configuration (every option with its default).
    Config,
    /// A local cluster on loopback.
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// Writes a cluster CA and certificates for its nodes and clients.
    Certs {
        #[arg(long, default_value = "flotilla")]
        cluster_id: String,
        #[arg(long, default_value = "3")]
        nodes: u64,
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
    },
    /// Sets KEY to VALUE.
    Put { key: String, value: String },
    /// Prints the value of KEY.
    Get { key: String },
    /// Deletes KEY.
    Delete { key: String },
    /// Prints the keys of [START, END) (an empty END: to the end).
    Scan {
        start: String,
        #[arg(default_value = "")]
        end: String,
        #[arg(long, default_value = "100")]
        limit: usize,
    },
    /// Splits the range holding KEY at KEY (no data moves).
    Split { key: String },
    /// Changes the replicas of the range holding KEY.
    Replica {
        #[command(subcommand)]
        change: ReplicaCmd,
    },
    /// Hands the leadership of the range holding KEY to its voter on NODE.
    TransferLeader { key: String, node: u64 },
    /// Prints every node's ranges, leaders and counters.
    Status,
    /// A short narrated load against the cluster.
    Demo {
        #[arg(long, default_value = "100")]
        ops: usize,
    },
    /// Concurrent writers: throughput, latency percentiles, fsyncs per node.
    Bench {
        #[arg(long, default_value = "64")]
        writers: usize,
        #[arg(long, default_value = "256")]
        value_size: usize,
        #[arg(long, default_value = "10")]
        seconds: u64,
        #[arg(long, default_value = "100000")]
        keys: u64,
    },
}

#[derive(clap::Args)]
struct ServerArgs {
    /// The configuration file (see `flotilla config`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides `node-id`.
    #[arg(long)]
    node_id: Option<u64>,
    /// Overrides `data-dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides `listen`.
    #[arg(long)]
    listen: Option<String>,
    /// Overrides `initial-cluster`.
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Overrides `metrics-addr`.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Overrides `log-format` ("text" or "json").
    #[arg(long)]
    log_format: Option<String>,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Starts a local cluster and waits until it serves.
    Up {
        #[arg(long, default_value = "3")]
        nodes: u64,
        #[arg(long, default_value = "./data/local")]
        dir: PathBuf,
        /// Return once it serves and leave it running (stop: `flotilla cluster down`).
        #[arg(long)]
        detach: bool,
        #[arg(long, default_value = "local")]
        cluster_id: String,
        #[arg(long, default_value = "7001")]
        base_port: u16,
        #[arg(long, default_value = "9101")]
        metrics_base_port: u16,
        /// User ranges a new cluster starts with (a pre-split keyspace).
        #[arg(long, default_value = "1")]
        ranges: u32,
    },
    /// Stops a detached local cluster (its data stays).
    Down {
        #[arg(long, default_value = "./data/local")]
        dir: PathBuf,
    },
}

/// The client settings: the `FLOTILLA_*` variables, else the env file of the default local
/// cluster (`./data/local/env`) when there is one.
use flotilla_tools::client_env::{client_config, connect};

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Server(args) => {
            let (mut config, path) = match &args.config {
                Some(p) => (ServerConfig::load(p)?, p.clone()),
                None => (ServerConfig::default(), PathBuf::from("./flotilla.toml")),
            };
            if let Some(v) = args.node_id {
                config.node_id = v;
            }
            if let Some(v) = args.data_dir {
                config.data_dir = v;
            }
            if let Some(v) = args.listen {
                config.listen = v;
            }
            if let Some(v) = args.initial_cluster {
                config.initial_cluster = v;
            }
            if let Some(v) = args.metrics_addr {
                config.metrics_addr = v;
            }
            if let Some(v) = args.log_format {
                config.log_format = v;
            }
            server::run(config, &path).await
        }
        Cmd::Config => {
            print!("{}", config::DEFAULT_CONFIG);
            Ok(())
        }
        Cmd::Cluster { command } => match command {
            ClusterCmd::Up {
                nodes,
                dir,
                detach,
                cluster_id,
                base_port,
                metrics_base_port,
                ranges,
            } => {
                cluster::up(cluster::UpOptions {
                    nodes,
                    dir,
                    detach,
                    cluster_id,
                    base_port,
                    metrics_base_port,
                    ranges,
                })
                .await
            }
            ClusterCmd::Down { dir } => cluster::down(&dir),
        },
        Cmd::Certs {
            cluster_id,
            nodes,
            dir,
        } => {
            cluster::make_certs(&dir, &cluster_id, nodes)?;
            println!(
                "certificates of cluster {cluster_id:?} in {}",
                dir.display()
            );
            Ok(())
        }
        Cmd::Put { key, value } => {
            let client = connect().await?;
            let revision = client.put(&key, value).await?;
            println!("OK (revision {revision})");
            Ok(())
        }
        Cmd::Get { key } => {
            let client = connect().await?;
            match client.get(&key).await? {
                Some(kv) => println!("{}", show(&kv.value)),
                None => {
                    eprintln!("{key}: not found");
                    std::process::exit(1);
                }
            }
            Ok(())
        }
        Cmd::Delete { key } => {
            let client = connect().await?;
            let n = client.delete(&key).await?;
            println!("deleted {n}");
            Ok(())
        }
        Cmd::Scan { start, end, limit } => {
            let client = connect().await?;
            // An empty END scans to the end of the keyspace; LIMIT 0: no limit.
            let upper = if end.is_empty() {
                std::ops::Bound::Unbounded
            } else {
                std::ops::Bound::Excluded(end.as_str())
            };
            let mut scan = client.scan::<&str>((std::ops::Bound::Included(start.as_str()), upper));
            if limit > 0 {
                scan = scan.limit(limit);
            }
            let mut rows = std::pin::pin!(scan.stream());
            while let Some(kv) = futures_util::TryStreamExt::try_next(&mut rows).await? {
                println!("{} = {}", show(&kv.key), show(&kv.value));
            }
            Ok(())
        }
        Cmd::Split { key } => {
            let client = connect().await?;
            let (left, right) = client.split(&key).await?;
            println!(
                "range {} now ends at {:?}; range {} starts there",
                left.id,
                show(&right.start_key[1..]),
                right.id
            );
            Ok(())
        }
        Cmd::Replica { change } => {
            use flotilla_client::ReplicaChangeKind as Kind;
            let client = connect().await?;
            let range = match change {
                ReplicaCmd::Add { key, node } => {
                    client
                        .change_replicas(&key, &[(Kind::AddLearner, node)])
                        .await?
                }
                ReplicaCmd::Promote { key, node } => {
                    client
                        .change_replicas(&key, &[(Kind::Promote, node)])
                        .await?
                }
                ReplicaCmd::Remove { key, node } => {
                    client
                        .change_replicas(&key, &[(Kind::Remove, node)])
                        .await?
                }
                ReplicaCmd::Move { key, from, to } => client.move_replica(&key, from, to).await?,
            };
            let replicas: Vec<String> = range
                .replicas
                .iter()
                .map(|r| {
                    let role = if r.role == flotilla_transport::meta::ReplicaRole::Learner as i32 {
                        " (learner)"
                    } else {
                        ""
                    };
                    format!("node {}{role}", r.node_id)
                })
                .collect();
            println!("range {}: {}", range.id, replicas.join(", "));
            Ok(())
        }
        Cmd::TransferLeader { key, node } => {
            let client = connect().await?;
            client.transfer_leader(&key, node).await?;
            println!("leadership is moving to node {node}");
            Ok(())
        }
        Cmd::Status => {
            let config = client_config()?;
            let endpoints = config.endpoints.clone();
            let client = Client::connect(config).await?;
            for addr in endpoints {
                match client.node_status(addr).await {
                    Ok(s) => println!(
                        "node {} at {addr}: {} ranges, {} leaders, {} group commits, {} WAL fsyncs, up {} s",
                        s.node_id,
                        s.ranges,
                        s.leaders,
                        s.synced_writes,
                        s.wal_syncs,
                        s.uptime_ms / 1000
                    ),
                    Err(e) => println!("{addr}: unreachable ({e})"),
                }
            }
            if let Some(addr) = client_config()?.endpoints.first() {
                let info = client.cluster_info(*addr).await?;
                let mut by_leader: std::collections::BTreeMap<u64, usize> = Default::default();
                for r in &info.ranges {
                    *by_leader.entry(r.leader_node).or_default() += 1;
                }
                println!(
                    "{} ranges; leaders by node (0: none known): {by_leader:?}",
                    info.ranges.len()
                );
                for r in info.ranges.iter().take(10) {
                    if let Some(d) = &r.descriptor {
                        println!(
                            "range {} [{:?}, {:?}) leader node {} replicas {:?}",
                            d.id,
                            show(&d.start_key),
                            show(&d.end_key),
                            r.leader_node,
                            d.replicas.iter().map(|r| r.node_id).collect::<Vec<_>>()
                        );
                    }
                }
                if info.ranges.len() > 10 {
                    println!("... and {} more", info.ranges.len() - 10);
                }
            }
            Ok(())
        }
        Cmd::Demo { ops } => load::demo(client_config()?, ops).await,
        Cmd::Bench {
            writers,
            value_size,
            seconds,
            keys,
        } => {
            load::bench(
                client_config()?,
                load::BenchOptions {
                    writers,
                    value_size,
                    duration: Duration::from_secs(seconds),
                    keys,
                },
            )
            .await
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The cause chain on one line, on stderr; no backtrace for an operator's mistake.
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
