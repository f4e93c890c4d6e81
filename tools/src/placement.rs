//! `flotilla placement status` and `flotilla node decommission|recommission`: what placement is
//! doing, and draining a node through it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use flotilla_client::{Client, NodeState, PlacementStatus};

/// The status from the node running placement (the meta range's leader), found through any
/// endpoint.
pub async fn status(client: &Client, endpoints: &[SocketAddr]) -> anyhow::Result<PlacementStatus> {
    let mut last = anyhow!("no endpoint answered");
    for &addr in endpoints {
        let status = match client.placement_status(addr).await {
            Ok(s) => s,
            Err(e) => {
                last = e.into();
                continue;
            }
        };
        if status.active {
            return Ok(status);
        }
        if status.leader_node == 0 {
            last = anyhow!("node {} knows no leader of the meta range", status.node_id);
            continue;
        }
        let info = client.cluster_info(addr).await?;
        let Some(leader) = info.nodes.iter().find(|n| n.node_id == status.leader_node) else {
            last = anyhow!("no address for node {}", status.leader_node);
            continue;
        };
        let leader_addr: SocketAddr = leader.addr.parse()?;
        let there = client.placement_status(leader_addr).await?;
        if there.active {
            return Ok(there);
        }
        last = anyhow!(
            "node {} leads the meta range but runs no placement (placement.enabled = false?)",
            status.leader_node
        );
    }
    Err(last)
}

fn state_name(state: i32) -> &'static str {
    match NodeState::try_from(state) {
        Ok(NodeState::Decommissioning) => "decommissioning",
        _ => "active",
    }
}

pub fn print(status: &PlacementStatus, json: bool) {
    if json {
        let value = serde_json::json!({
            "node": status.node_id,
            "ranges": status.ranges,
            "replica_spread": status.replica_spread,
            "leader_spread": status.leader_spread,
            "nodes": status.nodes.iter().map(|n| serde_json::json!({
                "node": n.node_id, "live": n.live, "state": state_name(n.state),
                "down_for_ms": n.down_for_ms, "replicas": n.replicas, "leaders": n.leaders,
            })).collect::<Vec<_>>(),
            "operators": status.operators.iter().map(|o| serde_json::json!({
                "kind": o.kind, "started": o.started, "finished": o.finished, "failed": o.failed,
            })).collect::<Vec<_>>(),
            "running": status.running,
            "recent_failures": status.recent_failures,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return;
    }
    if status.nodes.is_empty() {
        println!(
            "placement on node {} (it leads the meta range) is starting: its first round runs \
             within a second",
            status.node_id
        );
        return;
    }
    println!(
        "placement on node {} (it leads the meta range): {} ranges; spread of replicas {}, of leaders {}",
        status.node_id, status.ranges, status.replica_spread, status.leader_spread
    );
    println!(
        "{:>6} {:>5} {:>16} {:>9} {:>8} {:>10}",
        "node", "live", "state", "replicas", "leaders", "down for"
    );
    for n in &status.nodes {
        let down = if n.live {
            "-".to_string()
        } else {
            format!("{:.1} s", n.down_for_ms as f64 / 1000.0)
        };
        println!(
            "{:>6} {:>5} {:>16} {:>9} {:>8} {:>10}",
            n.node_id,
            if n.live { "yes" } else { "no" },
            state_name(n.state),
            n.replicas,
            n.leaders,
            down
        );
    }
    println!(
        "{:>16} {:>8} {:>8} {:>8}",
        "operator", "started", "finished", "failed"
    );
    for o in &status.operators {
        println!(
            "{:>16} {:>8} {:>8} {:>8}",
            o.kind, o.started, o.finished, o.failed
        );
    }
    for r in &status.running {
        println!("running: {r}");
    }
    for f in &status.recent_failures {
        println!("failed: {f}");
    }
}

/// Marks `node` decommissioning; with `wait`, polls until it hosts no replica (its own
/// `node.Status` says so) or `timeout` passes.
pub async fn decommission(
    client: &Client,
    node: u64,
    wait: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let previous = client
        .set_node_state(node, NodeState::Decommissioning)
        .await?;
    if previous == NodeState::Decommissioning {
        println!("node {node} was already decommissioning");
    } else {
        println!(
            "node {node} is decommissioning: placement moves its replicas and leaderships away"
        );
    }
    if !wait {
        return Ok(());
    }
    let addr = node_addr(client, node).await?;
    let deadline = Instant::now() + timeout;
    let mut last_count = u64::MAX;
    loop {
        match client.node_status(addr).await {
            Ok(s) if s.ranges == 0 => {
                println!("node {node} is empty: it can be stopped and removed");
                return Ok(());
            }
            Ok(s) => {
                if s.ranges != last_count {
                    println!("node {node}: {} replicas, {} leaderships left", s.ranges, s.leaders);
                    last_count = s.ranges;
                }
            }
            Err(e) => println!("node {node}: unreachable ({e}); its replicas are re-created elsewhere after down-time"),
        }
        if Instant::now() >= deadline {
            bail!("node {node} still hosts replicas after {timeout:?}; `flotilla placement status` shows why");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Returns `node` to service.
pub async fn recommission(client: &Client, node: u64) -> anyhow::Result<()> {
    client.set_node_state(node, NodeState::Active).await?;
    println!("node {node} is active again: placement may move replicas to it");
    Ok(())
}

async fn node_addr(client: &Client, node: u64) -> anyhow::Result<SocketAddr> {
    let config = flotilla_tools::client_env::client_config()?;
    for addr in config.endpoints {
        if let Ok(info) = client.cluster_info(addr).await {
            if let Some(n) = info.nodes.iter().find(|n| n.node_id == node) {
                return Ok(n.addr.parse()?);
            }
        }
    }
    bail!("no node knows the address of node {node}")
}

/// The load every leader reports for its ranges (`cluster.Info` of each member, the ranges it
/// leads), by range id.
pub async fn leader_loads(
    client: &Client,
    endpoints: &[SocketAddr],
) -> std::collections::BTreeMap<u64, flotilla_transport::service::RangeInfo> {
    let mut members: Vec<(u64, SocketAddr)> = Vec::new();
    for &addr in endpoints {
        if let Ok(info) = client.cluster_info(addr).await {
            members = info
                .nodes
                .iter()
                .filter_map(|n| Some((n.node_id, n.addr.parse().ok()?)))
                .collect();
            break;
        }
    }
    let mut loads = std::collections::BTreeMap::new();
    for (id, addr) in members {
        let Ok(info) = client.cluster_info(addr).await else {
            continue;
        };
        for r in info.ranges.into_iter().filter(|r| r.leader_node == id) {
            if let Some(range_id) = r.descriptor.as_ref().map(|d| d.id) {
                loads.insert(range_id, r);
            }
        }
    }
    loads
}
