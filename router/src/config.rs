use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use flotilla_transport::service::ReadConsistency;
use flotilla_transport::tls::TlsConfig;

use crate::error::ClientError;

/// How to reach a cluster.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub cluster_id: String,
    /// Any nodes of the cluster: the client learns the rest from them.
    pub endpoints: Vec<SocketAddr>,
    pub tls: TlsConfig,
    /// The longest one call (with its retries) may take.
    pub deadline: Duration,
    /// The longest one attempt at one node may take.
    pub attempt_timeout: Duration,
    pub read_consistency: ReadConsistency,
    /// New writes start a new session after this long, well within the servers' session TTL
    /// (`kv.session-ttl-ms`, 1 h by default), so the servers never see a session they expired.
    pub session_renew_after: Duration,
}

fn env(name: &str) -> Result<String, ClientError> {
    std::env::var(name).map_err(|_| {
        ClientError::Config(format!(
            "{name} is not set (source the env file `flotilla cluster up` wrote)"
        ))
    })
}

fn read(path: &str, what: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(Path::new(path)).map_err(|e| ClientError::Config(format!("{what} {path}: {e}")))
}

impl ClientConfig {
    pub fn new(cluster_id: impl Into<String>, endpoints: Vec<SocketAddr>, tls: TlsConfig) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            endpoints,
            tls,
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            read_consistency: ReadConsistency::Linearizable,
            session_renew_after: Duration::from_secs(20 * 60),
        }
    }

    /// From `FLOTILLA_CLUSTER_ID`, `FLOTILLA_ENDPOINTS` (comma-separated `host:port`),
    /// `FLOTILLA_CA`, `FLOTILLA_CERT` and `FLOTILLA_KEY` (PEM files): what
    /// `flotilla cluster up` writes to `DIR/env`.
    ///
    /// # Errors
    /// [`ClientError::Config`] naming the variable or file at fault.
    pub fn from_env() -> Result<Self, ClientError> {
        let cluster_id = env("FLOTILLA_CLUSTER_ID")?;
        let endpoints = parse_endpoints(&env("FLOTILLA_ENDPOINTS")?)?;
        let tls = TlsConfig::from_pem(
            &read(&env("FLOTILLA_CA")?, "CA certificate")?,
            &read(&env("FLOTILLA_CERT")?, "client certificate")?,
            &read(&env("FLOTILLA_KEY")?, "client key")?,
        )
        .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Self::new(cluster_id, endpoints, tls))
    }
}

/// Parses `host:port,host:port`.
///
/// # Errors
/// [`ClientError::Config`] naming the bad entry.
pub fn parse_endpoints(list: &str) -> Result<Vec<SocketAddr>, ClientError> {
    let endpoints: Vec<SocketAddr> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|e| ClientError::Config(format!("FLOTILLA_ENDPOINTS: {s:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    if endpoints.is_empty() {
        return Err(ClientError::Config(
            "FLOTILLA_ENDPOINTS names no node".into(),
        ));
    }
    Ok(endpoints)
}
