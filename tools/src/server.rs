//! `flotilla server`: runs one node until SIGTERM or Ctrl-C, then shuts it down gracefully.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{anyhow, Context};
use flotilla_engine::node::Node;
use tracing_subscriber::EnvFilter;

use crate::config::ServerConfig;

pub fn init_logging(filter: &str, format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// How long a halted node keeps its status port up before it exits.
const HALT_LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a node from `config` (file paths relative to `config_path`'s directory).
///
/// # Errors
/// A configuration or start-up error, naming what is wrong.
pub async fn run(
    mut config: ServerConfig,
    config_path: &Path,
    join: &[String],
) -> anyhow::Result<()> {
    init_logging(&config.log_filter, &config.log_format);
    let base = config_path.parent().unwrap_or(Path::new("."));
    if !join.is_empty() {
        let tls = config.tls_config(base)?;
        let members = members_at(&config.cluster_id, &tls, join).await?;
        tracing::info!(node = config.node_id, ?members, "joining the cluster");
        config.join = true;
        config.initial_cluster = members
            .iter()
            .map(|(id, addr)| format!("{id}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
    }
    // The status port first: /health answers while the node waits for names and opens its
    // storage.
    let status = if config.status_addr.is_empty() {
        None
    } else {
        let addr: SocketAddr = config
            .status_addr
            .parse()
            .map_err(|e| anyhow!("status-addr: {:?}: {e}", config.status_addr))?;
        let state = crate::status::serve(addr, crate::status::install_recorder()?).await?;
        tracing::info!(
            node = config.node_id,
            %addr,
            "status port: http://{addr}/metrics, /health, /ready, /status"
        );
        Some(state)
    };
    if !config.has_data(base) {
        // A first start must know every member's address to bootstrap with them.
        wait_resolvable(&config.initial_cluster).await;
    }
    let node_config = tokio::task::spawn_blocking({
        let config = config.clone();
        let base = base.to_path_buf();
        move || config.node_config(&base)
    })
    .await
    .context("the config check stopped")??;
    let node = Node::start(node_config)
        .await
        .with_context(|| format!("node {} cannot start", config.node_id))?;
    if let Some(status) = &status {
        status.set_node(Some(node.probe()));
    }
    let names = watch_peer_names(
        config.node_id,
        &config.initial_cluster,
        config.listen.parse().ok(),
        node.probe(),
    );
    let halted = async {
        let mut every = tokio::time::interval(std::time::Duration::from_millis(200));
        while !node.is_halted() {
            every.tick().await;
        }
    };
    let halt = tokio::select! {
        r = wait_for_signal() => { r?; false }
        () = halted => true,
    };
    // The status port keeps reporting while the node stops (`/ready` says it is stopping),
    // then lets go of it so its storage closes.
    let release = |status: &Option<crate::status::StatusState>| {
        if let Some(status) = status {
            status.set_node(None);
        }
    };
    if let Some(task) = names {
        task.abort();
    }
    if halt {
        let mut node = node;
        if status.is_some() {
            // Long enough for two scrapes to see the halt (and /health to say it) before the
            // process exits and its supervisor restarts it.
            tracing::error!(node = config.node_id, "halted: exiting in 10 s");
            tokio::time::sleep(HALT_LINGER).await;
        }
        node.stop_now().await;
        release(&status);
        anyhow::bail!(
            "node {} halted (storage failure or internal error): see the log above; restart it \
             once the cause is fixed",
            config.node_id
        );
    }
    tracing::info!(
        node = config.node_id,
        "shutting down: moving leaderships away"
    );
    let report = node.shutdown().await;
    release(&status);
    tracing::info!(
        node = config.node_id,
        leaders_left = report.leaders_left,
        requests_left = report.requests_left,
        "stopped"
    );
    Ok(())
}

/// Waits up to a minute for the host names of `initial-cluster` to resolve (in a StatefulSet a
/// peer's name appears once its pod starts); a name that never resolves is reported by
/// `node_config`. Only a first start waits: a restart finds late names as it runs.
async fn wait_resolvable(initial_cluster: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut told = false;
    loop {
        let members = initial_cluster.to_string();
        let parsed = tokio::task::spawn_blocking(move || {
            crate::config::parse_initial_cluster(&members, None, false).map(|_| ())
        })
        .await;
        match parsed {
            Ok(Err(crate::config::InitialClusterError::Unresolved(host)))
                if std::time::Instant::now() < deadline =>
            {
                if !told {
                    tracing::info!(%host, "waiting for the initial members' names to resolve");
                    told = true;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            _ => return,
        }
    }
}

/// While the node runs, resolves the host names of `initial-cluster` again every 10 s: a peer
/// whose pod was recreated under a new IP (a StatefulSet keeps its name, not its address) is
/// dialed at its new address. `None` when every member is named by address.
fn watch_peer_names(
    me: u64,
    initial_cluster: &str,
    listen: Option<SocketAddr>,
    node: flotilla_engine::node::NodeProbe,
) -> Option<tokio::task::JoinHandle<()>> {
    let names: Vec<(u64, String)> = crate::config::named_members(initial_cluster)
        .into_iter()
        .filter(|(id, _)| *id != me)
        .collect();
    if names.is_empty() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        every.tick().await;
        loop {
            every.tick().await;
            for (id, name) in &names {
                let lookup = name.clone();
                let resolved = tokio::task::spawn_blocking(move || {
                    crate::config::resolve_addr(&lookup, listen)
                })
                .await;
                if let Ok(Some(addr)) = resolved {
                    // A no-op when it did not change.
                    node.learn_peer(*id, addr);
                }
            }
        }
    }))
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("cannot watch Ctrl-C")?,
    }
    Ok(())
}

/// The members a running cluster lists (`cluster.Info` of the first of `addrs` that answers),
/// asked with this node's certificate (node certificates also name the cluster's client).
async fn members_at(
    cluster_id: &str,
    tls: &flotilla_transport::tls::TlsConfig,
    addrs: &[String],
) -> anyhow::Result<std::collections::BTreeMap<u64, SocketAddr>> {
    use prost::Message as _;
    let bind: SocketAddr = "0.0.0.0:0".parse()?;
    let endpoint = flotilla_transport::ClientEndpoint::new(cluster_id, tls, bind)
        .map_err(|e| anyhow!("join: {e}"))?;
    let mut last = anyhow!("join: no address given");
    for a in addrs {
        let addr: SocketAddr = match a.parse() {
            Ok(addr) => addr,
            Err(e) => {
                last = anyhow!("join: {a:?}: {e}");
                continue;
            }
        };
        let answer = endpoint
            .call(
                addr,
                "cluster.Info",
                bytes::Bytes::new(),
                std::time::Duration::from_secs(5),
            )
            .await;
        match answer.map(flotilla_transport::service::ClusterInfo::decode) {
            Ok(Ok(info)) if !info.nodes.is_empty() => {
                endpoint.close().await;
                return info
                    .nodes
                    .iter()
                    .map(|n| {
                        let addr = n
                            .addr
                            .parse()
                            .map_err(|e| anyhow!("join: node {}: {:?}: {e}", n.node_id, n.addr))?;
                        Ok((n.node_id, addr))
                    })
                    .collect();
            }
            Ok(Ok(_)) => last = anyhow!("join: {addr} lists no member"),
            Ok(Err(e)) => last = anyhow!("join: {addr}: undecodable answer: {e}"),
            Err(e) => last = anyhow!("join: {addr}: {e}"),
        }
    }
    endpoint.close().await;
    Err(last)
}
