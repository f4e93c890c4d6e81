//! A cluster of real `flotilla server` processes on loopback (the binary this package builds),
//! each with its own directory, config file, log and status port. Nodes can be killed (SIGKILL),
//! stopped (SIGTERM), paused (SIGSTOP) and restarted from the same directory. Dropping the
//! cluster kills what still runs. Every wait polls a condition against a deadline.

use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_client::{Client, ClientConfig};
use flotilla_transport::tls::TlsConfig;

/// The binary under test.
pub const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");
/// Long enough for elections and start-ups on a loaded CI machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `check` until it returns `Some`, or panics with `what` after `within`.
pub async fn eventually_within<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[path = "../common/ports.rs"]
mod ports;
pub use self::ports::free_port;

pub struct NodeProcess {
    pub id: u64,
    pub listen: SocketAddr,
    pub status: SocketAddr,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl NodeProcess {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("flotilla.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

pub struct ProcessCluster {
    pub dir: tempfile::TempDir,
    pub cluster_id: String,
    pub nodes: Vec<NodeProcess>,
    /// Whether the nodes run with fault injection on (`FLOTILLA_NEMESIS=1`).
    faults: bool,
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl ProcessCluster {
    /// Starts `n` nodes; `extra` goes into every node's config file before its `[tls]`
    /// section (top-level keys first, then sections such as `[raft]` or `[placement]`).
    pub fn start(n: u64, extra: &str) -> Self {
        Self::start_nodes(n, extra, true)
    }

    /// [`ProcessCluster::start`] with fault injection off, as a user runs the binary.
    pub fn start_without_faults(n: u64) -> Self {
        Self::start_nodes(n, "", false)
    }

    fn start_nodes(n: u64, extra: &str, faults: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster_id = "proc".to_string();
        let certs = dir.path().join("certs");
        let made = Command::new(FLOTILLA)
            .args(["certs", "create", "--cluster-id", &cluster_id])
            .args(["--nodes", &n.to_string(), "--dir"])
            .arg(&certs)
            .stdout(Stdio::null())
            .status()
            .expect("run flotilla certs");
        assert!(made.success(), "flotilla certs create failed");
        let nodes: Vec<NodeProcess> = (1..=n)
            .map(|id| {
                let node_dir = dir.path().join(format!("n{id}"));
                std::fs::create_dir_all(&node_dir).expect("node dir");
                NodeProcess {
                    id,
                    listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
                    status: SocketAddr::from(([127, 0, 0, 1], free_port())),
                    dir: node_dir,
                    child: None,
                }
            })
            .collect();
        let initial: Vec<String> = nodes
            .iter()
            .map(|p| format!("{}={}", p.id, p.listen))
            .collect();
        for p in &nodes {
            let config = format!(
                "cluster-id = \"{cluster_id}\"\nnode-id = {id}\ndata-dir = \"data\"\n\
                 listen = \"{listen}\"\ninitial-cluster = \"{initial}\"\n\
                 status-addr = \"{status}\"\nlog-filter = \"info\"\n{extra}\n\n\
                 [tls]\nca = \"{certs}/ca.pem\"\ncert = \"{certs}/n{id}.pem\"\n\
                 key = \"{certs}/n{id}-key.pem\"\n",
                id = p.id,
                listen = p.listen,
                status = p.status,
                initial = initial.join(","),
                certs = certs.display(),
            );
            std::fs::write(p.config_path(), config).expect("write config");
        }
        let mut cluster = Self {
            dir,
            cluster_id,
            nodes,
            faults,
        };
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster
    }

    pub fn node(&self, id: u64) -> &NodeProcess {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProcess {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Starts node `id` (again), its output appended to its log.
    pub fn spawn(&mut self, id: u64) {
        let faults = self.faults;
        let p = self.node_mut(id);
        assert!(!p.is_running(), "node {id} runs already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p.log_path())
            .expect("open log");
        let mut command = Command::new(FLOTILLA);
        if faults {
            command.env(flotilla_engine::node::NEMESIS_ENV, "1");
        } else {
            command.env_remove(flotilla_engine::node::NEMESIS_ENV);
        }
        let child = command
            .arg("server")
            .arg("--config")
            .arg(p.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn flotilla server");
        p.child = Some(child);
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            signal(child.id(), "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process freezes (its sockets stay open, nothing answers).
    pub fn pause(&mut self, id: u64) {
        if let Some(pid) = self.node(id).pid() {
            signal(pid, "STOP");
        }
    }

    pub fn resume(&mut self, id: u64) {
        if let Some(pid) = self.node(id).pid() {
            signal(pid, "CONT");
        }
    }

    /// What node `id` logged so far.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.node(id).log_path()).unwrap_or_default()
    }

    pub fn client_config(&self) -> ClientConfig {
        let certs = self.dir.path().join("certs");
        let read = |name: &str| std::fs::read(certs.join(name)).expect("read cert");
        let tls = TlsConfig::from_pem(
            &read("ca.pem"),
            &read("client.pem"),
            &read("client-key.pem"),
        )
        .expect("client tls");
        let mut config = ClientConfig::new(
            &self.cluster_id,
            self.nodes.iter().map(|p| p.listen).collect(),
            tls,
        );
        config.deadline = Duration::from_secs(10);
        config
    }

    /// A client, once the cluster serves a linearizable read.
    pub async fn client(&self) -> Client {
        let config = self.client_config();
        eventually_within("the cluster to serve", DEADLINE, || {
            let config = config.clone();
            async move {
                let client = Client::connect(config).await.ok()?;
                if client.get("probe").await.is_ok() {
                    Some(client)
                } else {
                    client.close().await;
                    None
                }
            }
        })
        .await
    }

    /// `GET path` on node `id`'s status port: the status code and body (`None`: no answer).
    pub fn http_get(&self, id: u64, path: &str) -> Option<(u16, String)> {
        http_get(self.node(id).status, path)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.iter().map(|p| p.id).collect();
        for id in ids {
            self.kill(id);
        }
        if std::thread::panicking() {
            for p in &self.nodes {
                let log = std::fs::read_to_string(p.log_path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- node {} log (last 30 lines) ---", p.id);
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// A plain HTTP/1.0 GET (so no server answers in chunks): the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}
