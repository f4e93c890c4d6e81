//! The status port, the metrics the dashboards and alerts use, a real Prometheus, and the
//! shipped deployment files (issue 10).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::{eventually_within, free_port, http_get, ProcessCluster, DEADLINE};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The metric names (samples, so `_bucket`, `_sum`, `_count` of histograms) in an exposition.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every `flotilla_*` identifier in a PromQL expression.
fn referenced_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("flotilla_") {
        let start = i + at;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b'"' || c == b'\'')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.insert(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

/// Every `expr` string anywhere in a JSON document (Grafana panels and their targets).
fn json_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::Object(q)) => {
                        if let Some(serde_json::Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => json_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_exprs(v, out)),
        _ => {}
    }
}

fn dashboards() -> Vec<(PathBuf, serde_json::Value)> {
    let dir = deploy().join("grafana/dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/grafana/dashboards") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            out.push((path, json));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn yaml(path: &Path) -> Vec<yaml_rust2::Yaml> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    yaml_rust2::YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()))
}

/// The alert rules: (name, expr, has summary and description).
fn alert_rules() -> Vec<(String, String, bool)> {
    let docs = yaml(&deploy().join("prometheus/alerts.yml"));
    let mut rules = Vec::new();
    for group in docs[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"].as_str().unwrap_or("").to_string();
            let expr = rule["expr"].as_str().expect("expr").to_string();
            let documented = rule["annotations"]["summary"].as_str().is_some()
                && rule["annotations"]["description"].as_str().is_some();
            rules.push((name, expr, documented));
        }
    }
    rules
}

/// Puts, gets, a scan and a txn, so every request series has samples.
async fn some_load(cluster: &ProcessCluster) {
    let client = cluster.client().await;
    for i in 0..20 {
        let key = format!("k{i}");
        client.put(&key, b"v".to_vec()).await.expect("put");
        client.get(&key).await.expect("get");
    }
    client
        .scan("k".."l")
        .limit(100)
        .collect()
        .await
        .expect("scan");
    client.close().await;
}

async fn scrape_all(cluster: &ProcessCluster) -> Vec<(u64, BTreeSet<String>)> {
    let mut out = Vec::new();
    for p in &cluster.nodes {
        let (code, body) = cluster.http_get(p.id, "/metrics").expect("scrape");
        assert_eq!(code, 200, "node {} /metrics", p.id);
        out.push((p.id, exported_names(&body)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_metric_is_exported_by_every_node() {
    let cluster = ProcessCluster::start(3, "");
    some_load(&cluster).await;
    let exports = scrape_all(&cluster).await;

    let mut used: Vec<(String, String)> = Vec::new(); // (where, name)
    let boards = dashboards();
    assert!(boards.len() >= 4, "overview, raft, transport, placement");
    for (path, board) in &boards {
        let vars = board["templating"]["list"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no templating", path.display()));
        assert!(
            vars.iter().any(|v| v["name"] == "instance"),
            "{}: no instance variable",
            path.display()
        );
        let mut exprs = Vec::new();
        json_exprs(board, &mut exprs);
        assert!(!exprs.is_empty(), "{}: no queries", path.display());
        let file = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        for e in exprs {
            used.extend(referenced_names(&e).into_iter().map(|n| (file.clone(), n)));
        }
    }
    let rules = alert_rules();
    assert!(rules.len() >= 6, "the issue names six alerts at least");
    for (name, expr, documented) in &rules {
        assert!(
            documented,
            "alert {name}: needs a summary and a description"
        );
        used.extend(
            referenced_names(expr)
                .into_iter()
                .map(|n| (format!("alert {name}"), n)),
        );
    }
    assert!(used.len() > 30, "the dashboards use few metrics: {used:?}");

    let mut missing = Vec::new();
    for (node, names) in &exports {
        for (place, name) in &used {
            if !names.contains(name) {
                missing.push(format!("{place}: {name} (node {node})"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "used but not exported:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_name_check_finds_a_misspelled_metric() {
    // The check above is only as good as these two functions: a misspelling must show.
    let exported = exported_names(
        "# TYPE flotilla_store_leaders gauge\nflotilla_store_leaders{poller=\"0\"} 1\n",
    );
    let used = referenced_names(
        "sum by (instance) (flotilla_store_leader{instance=~\"$instance\"}) + \
         rate(flotilla_store_leaders[1m])",
    );
    let missing: Vec<_> = used.difference(&exported).collect();
    assert_eq!(missing, vec!["flotilla_store_leader"]);
    // Label values and strings naming a metric are not metric references.
    assert!(
        referenced_names("label_values(flotilla_build_info, instance)")
            .contains("flotilla_build_info")
    );
    assert!(referenced_names("up{job=\"flotilla_x\"}").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_port_reports_health_readiness_and_the_node() {
    let mut cluster = ProcessCluster::start(3, "");
    let _ = cluster.client().await;
    for id in 1..=3 {
        eventually_within(&format!("node {id} ready"), DEADLINE, || async {
            match cluster.http_get(id, "/ready") {
                Some((200, body)) if body.starts_with("ready") => Some(()),
                _ => None,
            }
        })
        .await;
        let (code, _) = cluster.http_get(id, "/health").expect("health");
        assert_eq!(code, 200);
        let status = eventually_within(&format!("node {id} sees its peers"), DEADLINE, || async {
            let (code, body) = cluster.http_get(id, "/status")?;
            let status: serde_json::Value = serde_json::from_str(&body).ok()?;
            let peers_up = status["peers"]
                .as_array()?
                .iter()
                .filter(|p| p["up"] == true)
                .count();
            (code == 200 && peers_up == 2).then_some(status)
        })
        .await;
        assert_eq!(status["node_id"], id);
        assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(status["ranges"], 2, "{status}");
        let list = status["range_list"].as_array().expect("range_list");
        assert_eq!(list.len(), 2);
        assert!(list.iter().all(|r| r["leader_node"].as_u64() > Some(0)));
    }
    assert_eq!(cluster.http_get(1, "/nope").map(|r| r.0), Some(404));

    // A majority gone: node 1's ranges lose their leader, and /ready says which (range 1 may
    // go first: until liveness counts a killed leader down, its followers still know it).
    cluster.kill(2);
    cluster.kill(3);
    let why = eventually_within("node 1 not ready for both ranges", DEADLINE, || async {
        match cluster.http_get(1, "/ready") {
            Some((503, body)) if body.trim_end().ends_with("no known leader: 1, 2") => Some(body),
            _ => None,
        }
    })
    .await;
    assert!(why.starts_with("not ready: 2 of 2 ranges"), "{why}");
    let (code, _) = cluster.http_get(1, "/health").expect("health");
    assert_eq!(code, 200, "the process is up, only not ready");
    let status = eventually_within("node 1 to count its peers down", DEADLINE, || async {
        let (_, body) = cluster.http_get(1, "/status")?;
        let status: serde_json::Value = serde_json::from_str(&body).ok()?;
        let all_down = status["peers"].as_array()?.iter().all(|p| p["up"] == false);
        all_down.then_some(status)
    })
    .await;
    assert_eq!(status["leaderless"], serde_json::json!([1, 2]), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_are_logged_with_their_phases_in_json() {
    // Every request is "slow" at a 0 ms threshold... which means off; 1 ms catches most.
    let cluster = ProcessCluster::start(3, "log-format = \"json\"\nslow-request-ms = 1\n");
    some_load(&cluster).await;
    let found = eventually_within("a slow-request line", DEADLINE, || async {
        for id in 1..=3 {
            for line in cluster.log(id).lines() {
                let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let fields = &json["fields"];
                if fields["message"] == "slow request" && fields["op"] == "put" {
                    return Some(json);
                }
            }
        }
        None
    })
    .await;
    let fields = &found["fields"];
    for field in [
        "range_id",
        "total_ms",
        "queued_ms",
        "replicate_apply_ms",
        "outcome",
    ] {
        assert!(!fields[field].is_null(), "{field} missing: {found}");
    }
    // Every line of the log is JSON (the format applies to all of it).
    for id in 1..=3 {
        for line in cluster.log(id).lines().filter(|l| !l.is_empty()) {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                "node {id}: not JSON: {line}"
            );
        }
    }
    let (_, metrics) = cluster.http_get(1, "/metrics").expect("scrape");
    assert!(metrics.contains("flotilla_client_slow_requests_total{op=\"put\"}"));
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!(
        "{name} is not installed: `make setup` (as root) installs Debian's prometheus package, \
         or: apt-get install -y prometheus"
    );
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_shipped_config_rules_and_rule_tests() {
    let promtool = tool("promtool");
    let dir = deploy().join("prometheus");
    run(Command::new(&promtool)
        .args(["check", "config"])
        .arg(dir.join("prometheus.yml")));
    run(Command::new(&promtool)
        .args(["check", "config", "--syntax-only"])
        .arg(dir.join("prometheus-compose.yml")));
    run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(dir.join("alerts.yml")));
    run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(dir.join("alerts_test.yml")));
}

/// Percent-encodes a PromQL query for a URL.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The instances a Prometheus query answers for.
fn instances(prometheus: std::net::SocketAddr, query: &str) -> BTreeSet<String> {
    let Some((200, body)) = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", encode(query)),
    ) else {
        return BTreeSet::new();
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
        return BTreeSet::new();
    };
    json["data"]["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|s| s["metric"]["instance"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_request_rates_and_leaders_of_every_node() {
    let prometheus_bin = tool("prometheus");
    let cluster = ProcessCluster::start(3, "");
    let targets: Vec<String> = cluster
        .nodes
        .iter()
        .map(|p| format!("\"{}\"", p.status))
        .collect();
    let prom_dir = cluster.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).expect("dir");
    let config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: flotilla\n    static_configs:\n      - targets: [{}]\n",
            deploy().join("prometheus/alerts.yml").display(),
            targets.join(", ")
        ),
    )
    .expect("write config");
    let web = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = std::fs::File::create(prom_dir.join("prometheus.log")).expect("log");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Kill(
        Command::new(prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );

    let want: BTreeSet<String> = cluster.nodes.iter().map(|p| p.status.to_string()).collect();
    let client = cluster.client().await;
    let mut i = 0u64;
    let queries = [
        "sum by (instance) (rate(flotilla_client_requests_total[5s]))",
        "sum by (instance) (flotilla_store_leaders)",
        "up{job=\"flotilla\"} == 1",
    ];
    for query in queries {
        eventually_within(&format!("{query} for every node"), DEADLINE, || {
            // Keep requests flowing to every node (reads on the leaders, the routing asks of
            // the meta range), so rates are defined.
            i += 1;
            let client = &client;
            let want = &want;
            let key = format!("p{}", i % 10);
            async move {
                let _ = client.put(&key, b"x".to_vec()).await;
                let _ = client.get(&key).await;
                let got = instances(web, query);
                (got == *want).then_some(())
            }
        })
        .await;
    }
    // The rules loaded: Prometheus evaluates every alert of the shipped file.
    let (_, rules) = http_get(web, "/api/v1/rules").expect("rules");
    let rules: serde_json::Value = serde_json::from_str(&rules).expect("json");
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, alert_rules().len(), "{rules}");
    client.close().await;
}

fn names_of(docs: &[yaml_rust2::Yaml], kind: &str) -> Vec<String> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_compose_k8s_and_systemd_files_name_what_they_must() {
    let compose = yaml(&deploy().join("compose/docker-compose.yml"));
    let services = compose[0]["services"].as_hash().expect("services");
    for s in ["n1", "n2", "n3", "prometheus", "grafana"] {
        assert!(
            services.contains_key(&yaml_rust2::Yaml::String(s.into())),
            "compose: no service {s}"
        );
    }
    let dockerfile =
        std::fs::read_to_string(deploy().join("compose/Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.matches("FROM ").count() >= 2,
        "a multi-stage Dockerfile"
    );
    // The binary embeds deploy/flotilla.toml: the build needs it (and each crate).
    for copied in [
        "COPY deploy/flotilla.toml",
        "COPY transport",
        "COPY engine",
        "COPY router",
        "COPY placement",
        "COPY tools",
    ] {
        assert!(dockerfile.contains(copied), "the Dockerfile lacks {copied}");
    }

    let k8s = yaml(&deploy().join("k8s/flotilla.yaml"));
    let sets: Vec<&yaml_rust2::Yaml> = k8s
        .iter()
        .filter(|d| d["kind"].as_str() == Some("StatefulSet"))
        .collect();
    assert_eq!(sets.len(), 1, "one StatefulSet");
    let set = sets[0];
    let spec = &set["spec"];
    let service_name = spec["serviceName"].as_str().expect("serviceName");
    assert!(
        k8s.iter().any(|d| d["kind"].as_str() == Some("Service")
            && d["metadata"]["name"].as_str() == Some(service_name)
            && d["spec"]["clusterIP"].as_str() == Some("None")),
        "a headless Service named by the StatefulSet"
    );
    assert!(
        !spec["volumeClaimTemplates"].is_badvalue(),
        "data on volume claims"
    );
    let container = &spec["template"]["spec"]["containers"][0];
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/ready")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/health")
    );
    assert!(!names_of(&k8s, "PodDisruptionBudget").is_empty());
    assert!(!names_of(&k8s, "ConfigMap").is_empty());
    let env = container["env"].as_vec().expect("env");
    let initial = env
        .iter()
        .find(|e| e["name"].as_str() == Some("FLOTILLA_INITIAL_CLUSTER"))
        .and_then(|e| e["value"].as_str())
        .expect("FLOTILLA_INITIAL_CLUSTER");
    assert!(
        initial.contains(&format!(".{service_name}")),
        "peers by stable DNS names: {initial}"
    );

    let unit = std::fs::read_to_string(deploy().join("systemd/flotilla.service")).expect("unit");
    for line in [
        "Restart=on-failure",
        "LimitNOFILE=",
        "User=flotilla",
        "--config /etc/flotilla/flotilla.toml",
    ] {
        assert!(unit.contains(line), "flotilla.service lacks {line}");
    }
}

#[test]
fn the_shipped_node_configs_pass_flotilla_config_check() {
    let check = |path: &Path| {
        run(Command::new(crate::support::FLOTILLA)
            .args(["config", "check"])
            .arg(path))
    };
    for n in 1..=3 {
        check(&deploy().join(format!("compose/n{n}.toml")));
    }
    // The StatefulSet's container writes its config from the ConfigMap and its ordinal: run
    // that script, then check what it wrote (with the node id and peers it passes as flags).
    let k8s = yaml(&deploy().join("k8s/flotilla.yaml"));
    let map = k8s
        .iter()
        .find(|d| d["kind"].as_str() == Some("ConfigMap"))
        .expect("ConfigMap");
    let base = map["data"]["flotilla.toml"]
        .as_str()
        .expect("flotilla.toml");
    let set = k8s
        .iter()
        .find(|d| d["kind"].as_str() == Some("StatefulSet"))
        .expect("StatefulSet");
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let script = container["args"][0]
        .as_str()
        .expect("the container's script");
    let initial = container["env"]
        .as_vec()
        .expect("env")
        .iter()
        .find(|e| e["name"].as_str() == Some("FLOTILLA_INITIAL_CLUSTER"))
        .and_then(|e| e["value"].as_str())
        .expect("FLOTILLA_INITIAL_CLUSTER");
    let dir = tempfile::tempdir().expect("tempdir");
    let map_file = dir.path().join("map.toml");
    std::fs::write(&map_file, base).expect("write");
    let written = dir.path().join("flotilla.toml");
    let exec_line = script
        .lines()
        .find(|l| l.trim_start().starts_with("exec flotilla server"))
        .expect("the script execs the server");
    let script = script
        .replace(exec_line, "echo \"$ID\"")
        .replace(
            "/etc/flotilla/config/flotilla.toml",
            &map_file.display().to_string(),
        )
        .replace("/tmp/flotilla.toml", &written.display().to_string());
    let out = Command::new("sh")
        .args(["-c", &script])
        .env("HOSTNAME", "flotilla-2")
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "3",
        "ordinal 2 is node 3"
    );
    let full = dir.path().join("full.toml");
    std::fs::write(
        &full,
        format!(
            "node-id = 3\ninitial-cluster = \"{initial}\"\n{}",
            std::fs::read_to_string(&written).expect("written")
        ),
    )
    .expect("write");
    assert!(exec_line.contains("--node-id"), "{exec_line}");
    check(&full);
    // And the check refuses what the server would.
    std::fs::write(&full, "node-id = 1\nlisten = \"nowhere\"\n").expect("write");
    let refused = Command::new(crate::support::FLOTILLA)
        .args(["config", "check"])
        .arg(&full)
        .output()
        .expect("run");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("listen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_fault_switch_refuses_fault_injection() {
    let cluster = ProcessCluster::start_without_faults(1);
    let _ = cluster.client().await;
    let config = cluster.client_config();
    let endpoint = flotilla_transport::ClientEndpoint::new(
        &cluster.cluster_id,
        config.tls.as_ref().expect("tls"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("endpoint");
    let body = prost::Message::encode_to_vec(&flotilla_transport::service::NemesisFaults {
        partition: true,
        drop_to: vec![2],
        ..Default::default()
    });
    let answer = endpoint
        .call(
            cluster.node(1).listen,
            "nemesis.Faults",
            body.into(),
            std::time::Duration::from_secs(5),
        )
        .await;
    let error = answer.expect_err("refused").to_string();
    assert!(error.contains("fault injection is off"), "{error}");
    endpoint.close().await;
}

#[test]
fn kubernetes_validate_accepts_the_manifest_when_installed() {
    // A schema check of every object (unknown fields refused) when the PyPI package
    // `kubernetes-validate` is installed; the fields above are asserted either way.
    let Ok(out) = Command::new("kubernetes-validate")
        .args(["-k", "1.30.0", "--strict"])
        .arg(deploy().join("k8s/flotilla.yaml"))
        .output()
    else {
        eprintln!("kubernetes-validate is not installed (pip install kubernetes-validate)");
        return;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate:\n{text}");
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed here: only the unit's fields are checked");
        return;
    };
    assert!(out.status.success());
    // The unit names /usr/local/bin/flotilla; a copy pointing at the binary under test makes
    // `verify` check the rest (it refuses a unit whose binary is missing).
    let unit = std::fs::read_to_string(deploy().join("systemd/flotilla.service")).expect("unit");
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("flotilla.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/flotilla", crate::support::FLOTILLA),
    )
    .expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze");
    let text = String::from_utf8_lossy(&out.stderr);
    // Only complaints about this unit count (the host's own units may have theirs).
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("flotilla.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{text}");
}
