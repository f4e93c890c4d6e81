//! `flotilla`: the server, a local cluster in one command, and the data and admin commands.

mod cluster;
mod config;
mod load;
mod placement;
mod server;
mod status;

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
    /// Output: a table for people, JSON for scripts (status, ranges, get, scan, put, delete).
    #[arg(long, short = 'o', global = true, env = "FLOTILLA_OUTPUT", value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

/// Prints `value` as one line of JSON.
fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// A range key as people read it: the user key (internal keys carry a 0x01 prefix), "" for the
/// start of the user keyspace, and the system keyspace marked.
fn span_key(internal: &[u8]) -> String {
    match internal.split_first() {
        None => String::new(),
        Some((0x01, user)) => show(user),
        Some(_) => format!("(system) {}", show(internal)),
    }
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
    /// Prints the documented default configuration (every option with its default);
    /// `config check FILE` checks a file without starting a node.
    Config {
        #[command(subcommand)]
        action: Option<ConfigCmd>,
    },
    /// A local cluster on loopback.
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// Writes a cluster CA and certificates for its nodes and clients (`certs create` too).
    Certs {
        #[command(subcommand)]
        action: Option<CertsCmd>,
        #[command(flatten)]
        args: CertsArgs,
    },
    /// Sets KEY to VALUE.
    Put { key: String, value: String },
    /// Prints the value of KEY.
    Get { key: String },
    /// Deletes KEY.
    #[command(alias = "del")]
    Delete { key: String },
    /// Prints the keys of [START, END) (an empty END: to the end).
    Scan {
        start: String,
        #[arg(default_value = "")]
        end: String,
        #[arg(long, env = "FLOTILLA_LIMIT", default_value = "100")]
        limit: usize,
    },
    /// Lists the ranges: span, epoch, replicas, leader (from the meta range's records).
    Ranges,
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
    /// What placement is doing (from the node that leads the meta range).
    Placement {
        #[command(subcommand)]
        cmd: PlacementCmd,
    },
    /// Drains a node (decommission) or returns it to service (recommission).
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// A short narrated load against the cluster.
    Demo {
        #[arg(long, default_value = "100", env = "FLOTILLA_OPS")]
        ops: usize,
    },
    /// Concurrent writers: throughput, latency percentiles, fsyncs per node.
    Bench {
        #[arg(long, default_value = "64", env = "FLOTILLA_WRITERS")]
        writers: usize,
        #[arg(long, default_value = "256", env = "FLOTILLA_VALUE_SIZE")]
        value_size: usize,
        #[arg(long, default_value = "10", env = "FLOTILLA_SECONDS")]
        seconds: u64,
        #[arg(long, default_value = "100000", env = "FLOTILLA_KEYS")]
        keys: u64,
    },
}

#[derive(Subcommand)]
enum PlacementCmd {
    /// Nodes (liveness, state, replicas, leaders), operators by kind, running and failed.
    Status,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Moves every replica and leadership off NODE; with --wait, until it is empty.
    Decommission {
        node: u64,
        #[arg(long, env = "FLOTILLA_WAIT")]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value = "3600", env = "FLOTILLA_TIMEOUT")]
        timeout: u64,
    },
    /// Makes NODE a target for replicas and leaderships again.
    Recommission { node: u64 },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Checks FILE: every field known and well-formed (names are not resolved and files not
    /// read: those wait for the node's start).
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Writes a development CA and certificates (the same as plain `certs`).
    Create(CertsArgs),
}

#[derive(clap::Args, Clone)]
struct CertsArgs {
    #[arg(long, env = "FLOTILLA_CLUSTER_ID", default_value = "flotilla")]
    cluster_id: String,
    #[arg(long, env = "FLOTILLA_NODES", default_value = "3")]
    nodes: u64,
    #[arg(long, env = "FLOTILLA_CERTS_DIR", default_value = "./certs")]
    dir: PathBuf,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// The configuration file (see `flotilla config`).
    #[arg(long, short, env = "FLOTILLA_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `node-id`.
    #[arg(long, env = "FLOTILLA_NODE_ID")]
    node_id: Option<u64>,
    /// Overrides `data-dir`.
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Overrides `listen`.
    #[arg(long, env = "FLOTILLA_LISTEN")]
    listen: Option<String>,
    /// Overrides `initial-cluster`.
    #[arg(long, env = "FLOTILLA_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// Overrides `status-addr` (the HTTP port of /metrics, /health, /ready, /status).
    #[arg(long, alias = "metrics-addr", env = "FLOTILLA_STATUS_ADDR")]
    status_addr: Option<String>,
    /// Overrides `log-format` ("text" or "json").
    #[arg(long, env = "FLOTILLA_LOG_FORMAT")]
    log_format: Option<String>,
    /// Joins a running cluster through any of its nodes (host:port, repeatable): the members
    /// are learned from it, `initial-cluster` and `join` are set from them. The node id must be
    /// new and named by this node's certificate.
    #[arg(long, env = "FLOTILLA_JOIN", value_delimiter = ',')]
    join: Vec<String>,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Starts a local cluster and waits until it serves.
    Up {
        #[arg(long, default_value = "3", env = "FLOTILLA_NODES")]
        nodes: u64,
        #[arg(long, default_value = "./data/local", env = "FLOTILLA_DIR")]
        dir: PathBuf,
        /// Return once it serves and leave it running (stop: `flotilla cluster down`).
        #[arg(long, env = "FLOTILLA_DETACH")]
        detach: bool,
        #[arg(long, default_value = "local", env = "FLOTILLA_CLUSTER_ID")]
        cluster_id: String,
        #[arg(long, default_value = "7001", env = "FLOTILLA_BASE_PORT")]
        base_port: u16,
        /// Node N serves /metrics, /health, /ready and /status at this port + N - 1.
        #[arg(
            long,
            alias = "metrics-base-port",
            default_value = "9101",
            env = "FLOTILLA_STATUS_BASE_PORT"
        )]
        status_base_port: u16,
        /// User ranges a new cluster starts with (a pre-split keyspace).
        #[arg(long, default_value = "1", env = "FLOTILLA_RANGES")]
        ranges: u32,
    },
    /// Stops a detached local cluster (its data stays).
    Down {
        #[arg(long, default_value = "./data/local", env = "FLOTILLA_DIR")]
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
            if let Some(v) = args.status_addr {
                config.status_addr = v;
            } else if let Ok(v) = std::env::var("FLOTILLA_METRICS_ADDR") {
                eprintln!(
                    "warning: FLOTILLA_METRICS_ADDR is deprecated: use FLOTILLA_STATUS_ADDR \
                     (the port now also serves /health, /ready and /status)"
                );
                config.status_addr = v;
            }
            if let Some(v) = args.log_format {
                config.log_format = v;
            }
            server::run(config, &path, &args.join).await
        }
        Cmd::Config { action: None } => {
            print!("{}", config::DEFAULT_CONFIG);
            Ok(())
        }
        Cmd::Config {
            action: Some(ConfigCmd::Check { file }),
        } => {
            ServerConfig::load(&file)?.check()?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Cmd::Cluster { command } => match command {
            ClusterCmd::Up {
                nodes,
                dir,
                detach,
                cluster_id,
                base_port,
                status_base_port,
                ranges,
            } => {
                cluster::up(cluster::UpOptions {
                    nodes,
                    dir,
                    detach,
                    cluster_id,
                    base_port,
                    status_base_port,
                    ranges,
                })
                .await
            }
            ClusterCmd::Down { dir } => cluster::down(&dir),
        },
        Cmd::Certs { action, args } => {
            let CertsArgs {
                cluster_id,
                nodes,
                dir,
            } = match action {
                Some(CertsCmd::Create(a)) => a,
                None => args,
            };
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
            match cli.output {
                Output::Json => print_json(&serde_json::json!({ "revision": revision })),
                Output::Table => println!("OK (revision {revision})"),
            }
            Ok(())
        }
        Cmd::Get { key } => {
            let client = connect().await?;
            match client.get(&key).await? {
                Some(kv) if cli.output == Output::Json => print_json(&serde_json::json!({
                    "key": show(&kv.key),
                    "value": show(&kv.value),
                    "create_revision": kv.create_revision,
                    "mod_revision": kv.mod_revision,
                    "version": kv.version,
                })),
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
            match cli.output {
                Output::Json => print_json(&serde_json::json!({ "deleted": n })),
                Output::Table => println!("deleted {n}"),
            }
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
                match cli.output {
                    Output::Json => print_json(&serde_json::json!({
                        "key": show(&kv.key),
                        "value": show(&kv.value),
                        "mod_revision": kv.mod_revision,
                    })),
                    Output::Table => println!("{} = {}", show(&kv.key), show(&kv.value)),
                }
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
        Cmd::Ranges => {
            let client = connect().await?;
            let mut records = client.ranges().await?;
            if records.is_empty() {
                // A cluster seconds old: its leaders have not reported their ranges to the
                // meta range yet; a node's own view answers meanwhile.
                if let Some(addr) = client_config()?.endpoints.first() {
                    records = client
                        .cluster_info(*addr)
                        .await?
                        .ranges
                        .into_iter()
                        .map(|r| flotilla_transport::meta::RangeRecord {
                            descriptor: r.descriptor,
                            leader_node: r.leader_node,
                            leader_term: 0,
                        })
                        .collect();
                }
            }
            let loads = placement::leader_loads(&client, &client_config()?.endpoints).await;
            for r in &records {
                let Some(d) = &r.descriptor else { continue };
                let epoch = d.epoch.unwrap_or_default();
                let load = loads.get(&d.id);
                let qps = load.map(|l| (l.reads_per_second, l.writes_per_second));
                let size = load.and_then(|l| l.size_bytes);
                let replicas: Vec<String> = d
                    .replicas
                    .iter()
                    .map(|x| {
                        let learner =
                            x.role == flotilla_transport::meta::ReplicaRole::Learner as i32;
                        format!("{}{}", x.node_id, if learner { " (learner)" } else { "" })
                    })
                    .collect();
                match cli.output {
                    Output::Json => print_json(&serde_json::json!({
                        "range": d.id,
                        "start": span_key(&d.start_key),
                        "end": if d.end_key.is_empty() { None } else { Some(span_key(&d.end_key)) },
                        "epoch": { "version": epoch.version, "conf_ver": epoch.conf_ver },
                        "replicas": d.replicas.iter().map(|x| serde_json::json!({
                            "node": x.node_id, "replica": x.replica_id, "role": x.role,
                        })).collect::<Vec<_>>(),
                        "leader_node": r.leader_node,
                        "leader_term": r.leader_term,
                        "reads_per_second": qps.map(|q| q.0),
                        "writes_per_second": qps.map(|q| q.1),
                        "size_bytes": size,
                    })),
                    Output::Table => println!(
                        "range {:<20} [{:?}, {}) v{}/c{} replicas [{}] leader node {} (term {}) {} {}",
                        d.id,
                        span_key(&d.start_key),
                        if d.end_key.is_empty() {
                            "+inf".to_string()
                        } else {
                            format!("{:?}", span_key(&d.end_key))
                        },
                        epoch.version,
                        epoch.conf_ver,
                        replicas.join(", "),
                        r.leader_node,
                        r.leader_term,
                        qps.map_or("qps -".to_string(), |q| format!(
                            "qps {:.0} r / {:.0} w",
                            q.0, q.1
                        )),
                        size.map_or("size -".to_string(), |b| format!("size {b} B")),
                    ),
                }
            }
            if cli.output == Output::Table {
                println!(
                    "{} ranges (qps: requests per second at the leader over the last second; \
                     size: as the leader's size check last measured it, - until one ran)",
                    records.len()
                );
            }
            Ok(())
        }
        Cmd::Status if cli.output == Output::Json => {
            let config = client_config()?;
            let endpoints = config.endpoints.clone();
            let client = Client::connect(config).await?;
            let mut nodes = Vec::new();
            for addr in endpoints {
                nodes.push(match client.node_status(addr).await {
                    Ok(s) => serde_json::json!({
                        "addr": addr.to_string(), "node": s.node_id, "up": true,
                        "ranges": s.ranges, "leaders": s.leaders,
                        "group_commits": s.synced_writes, "wal_fsyncs": s.wal_syncs,
                        "uptime_ms": s.uptime_ms,
                    }),
                    Err(e) => serde_json::json!({ "addr": addr.to_string(), "up": false, "error": e.to_string() }),
                });
            }
            print_json(&serde_json::json!({ "nodes": nodes }));
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
        Cmd::Placement {
            cmd: PlacementCmd::Status,
        } => {
            let config = client_config()?;
            let endpoints = config.endpoints.clone();
            let client = Client::connect(config).await?;
            let status = placement::status(&client, &endpoints).await?;
            placement::print(&status, cli.output == Output::Json);
            Ok(())
        }
        Cmd::Node {
            cmd:
                NodeCmd::Decommission {
                    node,
                    wait,
                    timeout,
                },
        } => {
            let client = connect().await?;
            placement::decommission(&client, node, wait, Duration::from_secs(timeout)).await
        }
        Cmd::Node {
            cmd: NodeCmd::Recommission { node },
        } => placement::recommission(&connect().await?, node).await,
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
