//! `flotilla cluster up|down`: a local cluster of N processes on loopback, all its files under
//! one directory:
//!
//! ```text
//! DIR/certs/{ca,ca-key,n1,n1-key,...,client,client-key}.pem
//! DIR/n1/flotilla.toml, DIR/n1/data/, DIR/n1/server.log     (one per node)
//! DIR/pids                                                  (node pid, one per line)
//! DIR/env                                                   (what a client needs: `source` it)
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flotilla_client::{Client, ClientConfig};
use flotilla_transport::tls::{ClusterCa, TlsConfig};

use crate::config::ServerConfig;

pub struct UpOptions {
    pub nodes: u64,
    pub dir: PathBuf,
    pub detach: bool,
    pub cluster_id: String,
    pub base_port: u16,
    pub status_base_port: u16,
    pub ranges: u32,
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

fn write_identity(certs: &Path, name: &str, tls: &TlsConfig) -> anyhow::Result<()> {
    let (_, cert, key) = tls.to_pem();
    write(&certs.join(format!("{name}.pem")), &cert)?;
    write(&certs.join(format!("{name}-key.pem")), &key)
}

/// Creates the CA and every certificate under `certs` (kept when they exist).
///
/// # Errors
/// I/O and certificate errors.
pub fn make_certs(certs: &Path, cluster_id: &str, nodes: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(certs)?;
    let ca_path = certs.join("ca.pem");
    let ca = if ca_path.exists() {
        ClusterCa::from_pem(
            cluster_id,
            &std::fs::read_to_string(&ca_path)?,
            &std::fs::read_to_string(certs.join("ca-key.pem"))?,
        )?
    } else {
        let ca = ClusterCa::generate(cluster_id)?;
        write(&ca_path, &ca.cert_pem())?;
        write(&certs.join("ca-key.pem"), &ca.key_pem())?;
        ca
    };
    for id in 1..=nodes {
        if !certs.join(format!("n{id}.pem")).exists() {
            write_identity(certs, &format!("n{id}"), &ca.issue_node(id, &[])?)?;
        }
    }
    if !certs.join("client.pem").exists() {
        write_identity(certs, "client", &ca.issue_client()?)?;
    }
    Ok(())
}

fn endpoints(o: &UpOptions) -> Vec<String> {
    (1..=o.nodes)
        .map(|id| format!("127.0.0.1:{}", u64::from(o.base_port) + id - 1))
        .collect()
}

/// Whether `pid` is a running flotilla server (a zombie counts as gone; a pid reused by
/// another program is not ours).
fn pid_alive(pid: u32) -> bool {
    let running = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false);
    let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
        args.first().is_some_and(|a| a.ends_with(b"flotilla"))
            && args.get(1).is_some_and(|a| *a == b"server")
    });
    running && ours
}

fn read_pids(dir: &Path) -> Vec<(u64, u32)> {
    std::fs::read_to_string(dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (node, pid) = l.split_once(' ')?;
            Some((node.parse().ok()?, pid.parse().ok()?))
        })
        .collect()
}

/// The client settings of the cluster in `dir`.
///
/// # Errors
/// When its certificates cannot be read.
pub fn client_config(
    dir: &Path,
    cluster_id: &str,
    endpoints: &[String],
) -> anyhow::Result<ClientConfig> {
    let certs = dir.join("certs");
    let tls = TlsConfig::from_pem(
        &std::fs::read(certs.join("ca.pem"))?,
        &std::fs::read(certs.join("client.pem"))?,
        &std::fs::read(certs.join("client-key.pem"))?,
    )?;
    let endpoints = endpoints
        .iter()
        .map(|e| e.parse())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ClientConfig::new(cluster_id, endpoints, tls))
}

/// Starts the cluster and waits until it serves a linearizable read.
///
/// # Errors
/// When a node cannot start or the cluster does not serve within a minute.
pub async fn up(o: UpOptions) -> anyhow::Result<()> {
    if o.nodes == 0 {
        bail!("--nodes: at least 1");
    }
    std::fs::create_dir_all(&o.dir)
        .with_context(|| format!("cannot create {}", o.dir.display()))?;
    let dir = o.dir.canonicalize()?;
    if read_pids(&dir).iter().any(|(_, pid)| pid_alive(*pid)) {
        bail!(
            "a cluster already runs in {0}: stop it with `flotilla cluster down --dir {0}`",
            dir.display()
        );
    }
    make_certs(&dir.join("certs"), &o.cluster_id, o.nodes)?;
    let endpoints = endpoints(&o);
    let initial_cluster = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{}={e}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe().context("cannot find the flotilla binary")?;
    let mut children: Vec<(u64, Child)> = Vec::new();
    let mut pids = String::new();
    for id in 1..=o.nodes {
        let node_dir = dir.join(format!("n{id}"));
        std::fs::create_dir_all(&node_dir)?;
        let config = ServerConfig {
            cluster_id: o.cluster_id.clone(),
            node_id: id,
            data_dir: "data".into(),
            listen: endpoints[(id - 1) as usize].clone(),
            initial_cluster: initial_cluster.clone(),
            initial_ranges: o.ranges,
            join: false,
            status_addr: format!("127.0.0.1:{}", u64::from(o.status_base_port) + id - 1),
            tls: crate::config::TlsFiles {
                ca: "../certs/ca.pem".into(),
                cert: format!("../certs/n{id}.pem").into(),
                key: format!("../certs/n{id}-key.pem").into(),
            },
            ..ServerConfig::default()
        };
        let config_path = node_dir.join("flotilla.toml");
        write(&config_path, &toml::to_string(&config)?)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node_dir.join("server.log"))?;
        let mut command = Command::new(&exe);
        command
            .arg("server")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if o.detach {
            // Its own process group: a Ctrl-C in this terminal does not reach it.
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop(&dir, Duration::from_secs(10));
                return Err(e).with_context(|| format!("cannot start node {id}"));
            }
        };
        // Written as each node starts, so a failure later still finds every node to stop.
        let _ = writeln!(pids, "{id} {}", child.id());
        write(&dir.join("pids"), &pids)?;
        children.push((id, child));
    }
    let certs = dir.join("certs");
    let env = format!(
        "export FLOTILLA_CLUSTER_ID={}\nexport FLOTILLA_ENDPOINTS={}\nexport FLOTILLA_CA={}\n\
         export FLOTILLA_CERT={}\nexport FLOTILLA_KEY={}\n",
        o.cluster_id,
        endpoints.join(","),
        certs.join("ca.pem").display(),
        certs.join("client.pem").display(),
        certs.join("client-key.pem").display(),
    );
    write(&dir.join("env"), &env)?;

    let serving = wait_serving(&dir, &o.cluster_id, &endpoints, &mut children).await;
    if let Err(e) = serving {
        stop(&dir, Duration::from_secs(10));
        bail!(
            "the cluster did not come up: {e:#} (logs: {}/n*/server.log)",
            dir.display()
        );
    }
    println!(
        "flotilla: {} nodes of cluster {:?} serve at {}",
        o.nodes,
        o.cluster_id,
        endpoints.join(", ")
    );
    for id in 1..=o.nodes {
        println!(
            "  node {id}: status http://127.0.0.1:{}/ (metrics, health, ready, status), log {}/n{id}/server.log",
            u64::from(o.status_base_port) + id - 1,
            dir.display()
        );
    }
    println!(
        "client settings: source {}/env   (then: flotilla put k v; flotilla get k)",
        dir.display()
    );
    if o.detach {
        println!(
            "stop it with:    flotilla cluster down --dir {}",
            dir.display()
        );
        return Ok(());
    }
    println!("Ctrl-C stops the cluster");
    tokio::signal::ctrl_c().await?;
    stop(&dir, Duration::from_secs(15));
    Ok(())
}

async fn wait_serving(
    dir: &Path,
    cluster_id: &str,
    endpoints: &[String],
    children: &mut [(u64, Child)],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut config = client_config(dir, cluster_id, endpoints)?;
    config.deadline = Duration::from_secs(5);
    let mut last = String::new();
    while Instant::now() < deadline {
        for (id, child) in children.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("node {id} exited ({status})");
            }
        }
        match Client::connect(config.clone()).await {
            Ok(client) => match client.get("flotilla/probe").await {
                Ok(_) => {
                    client.close().await;
                    return Ok(());
                }
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("no linearizable read within a minute: {last}")
}

/// Stops the nodes of the cluster in `dir` one after another: SIGTERM (the node hands its
/// leaderships to the nodes still running), then SIGKILL after `grace`. Returns how many
/// were running.
pub fn stop(dir: &Path, grace: Duration) -> usize {
    let running: Vec<(u64, u32)> = read_pids(dir)
        .into_iter()
        .filter(|(_, p)| pid_alive(*p))
        .collect();
    for (node, pid) in &running {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + grace;
        while pid_alive(*pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if pid_alive(*pid) {
            eprintln!("node {node} (pid {pid}) did not stop in time: killing it");
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
    let _ = std::fs::remove_file(dir.join("pids"));
    running.len()
}

/// `flotilla cluster down`.
///
/// # Errors
/// When `dir` holds no cluster.
pub fn down(dir: &Path) -> anyhow::Result<()> {
    if !dir.join("pids").exists() {
        bail!("no running cluster in {} (no pids file)", dir.display());
    }
    let n = stop(dir, Duration::from_secs(15));
    println!("stopped {n} nodes; data kept in {}", dir.display());
    Ok(())
}
