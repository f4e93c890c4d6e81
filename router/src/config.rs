use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use flotilla_transport::service::ReadConsistency;
use flotilla_transport::tls::TlsConfig;

use crate::error::ClientError;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Linearizable, at the range's leader (the default).
    #[default]
    Linearizable,
    /// Linearizable, at any replica: it asks the leader for the commit index (ReadIndex)
    /// and answers once it applied that far.
    Follower,
    /// At any replica, no older than `max_age`: answered from what the replica applied when
    /// it can show that is fresh enough (it heard from its leader within `max_age` minus two
    /// election timeouts and applied what that leader had committed), else after a ReadIndex
    /// round. `Duration::MAX`: any age (whatever the replica applied; never torn).
    Stale(Duration),
}

impl Consistency {
    /// The wire's consistency and `max_staleness_ms` (0: any age).
    pub(crate) fn to_wire(self) -> (ReadConsistency, u64) {
        match self {
            Self::Linearizable => (ReadConsistency::Linearizable, 0),
            Self::Follower => (ReadConsistency::Follower, 0),
            Self::Stale(age) if age == Duration::MAX => (ReadConsistency::Stale, 0),
            // At least 1 ms: 0 means "any age" on the wire.
            Self::Stale(age) => (
                ReadConsistency::Stale,
                u64::try_from(age.as_millis()).unwrap_or(u64::MAX).max(1),
            ),
        }
    }
}

impl From<ReadConsistency> for Consistency {
    fn from(c: ReadConsistency) -> Self {
        match c {
            ReadConsistency::Linearizable => Self::Linearizable,
            ReadConsistency::Follower => Self::Follower,
            ReadConsistency::Stale => Self::Stale(Duration::MAX),
        }
    }
}

/// How to reach a cluster.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub cluster_id: String,
    /// Any nodes of the cluster: the client learns the rest from them.
    pub endpoints: Vec<SocketAddr>,
    /// The client's identity for mutual TLS (the cluster refuses connections without one):
    /// `None` only in a default config not completed yet; `Client::connect` says so.
    pub tls: Option<TlsConfig>,
    /// The longest one call (with its retries) may take.
    pub deadline: Duration,
    /// The longest one attempt at one node may take.
    pub attempt_timeout: Duration,
    pub read_consistency: Consistency,
    /// New writes start a new session after this long, well within the servers' session TTL
    /// (`kv.session-ttl-ms`, 1 h by default), so the servers never see a session they expired.
    pub session_renew_after: Duration,
    /// The pause after a first failed attempt; it doubles (with up to 50% jitter) per attempt
    /// up to `backoff_max`, all within `deadline`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
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

impl Default for ClientConfig {
    /// Cluster `flotilla` at 127.0.0.1:7001, no TLS identity yet (add one with
    /// [`ClientConfig::with_tls_files`]), 10 s deadline per call, 2 s per attempt, linearizable
    /// reads, backoff 10 ms doubling to 500 ms.
    fn default() -> Self {
        Self {
            cluster_id: "flotilla".into(),
            endpoints: vec![SocketAddr::from(([127, 0, 0, 1], 7001))],
            tls: None,
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            read_consistency: Consistency::Linearizable,
            session_renew_after: Duration::from_secs(20 * 60),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
        }
    }
}

impl ClientConfig {
    pub fn new(cluster_id: impl Into<String>, endpoints: Vec<SocketAddr>, tls: TlsConfig) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            endpoints,
            tls: Some(tls),
            ..Self::default()
        }
    }

    /// The cluster's id (part of every certificate name).
    pub fn with_cluster_id(mut self, cluster_id: impl Into<String>) -> Self {
        self.cluster_id = cluster_id.into();
        self
    }

    /// Any nodes of the cluster (the client learns the rest from them).
    pub fn with_endpoints(mut self, endpoints: Vec<SocketAddr>) -> Self {
        self.endpoints = endpoints;
        self
    }

    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The TLS identity from PEM files: the cluster CA's certificate, this client's
    /// certificate chain and its key.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), flotilla_client::ClientError> {
    /// use flotilla_client::ClientConfig;
    /// let config = ClientConfig::default()
    ///     .with_cluster_id("local")
    ///     .with_endpoints(vec!["127.0.0.1:7001".parse().expect("an address")])
    ///     .with_tls_files(
    ///         "data/local/certs/ca.pem",
    ///         "data/local/certs/client.pem",
    ///         "data/local/certs/client-key.pem",
    ///     )?;
    /// # let _ = config; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Config`] naming the file at fault.
    pub fn with_tls_files(
        self,
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, ClientError> {
        let loaded = Self::from_files(
            self.cluster_id.clone(),
            self.endpoints.clone(),
            ca,
            cert,
            key,
        )?;
        Ok(Self {
            tls: loaded.tls,
            ..self
        })
    }

    /// With mutual TLS from PEM files: the cluster CA's certificate, this client's
    /// certificate chain and its key (what `flotilla certs` and `flotilla cluster up` write).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), flotilla_client::ClientError> {
    /// use std::time::Duration;
    /// use flotilla_client::{Client, ClientConfig};
    /// let config = ClientConfig::from_files(
    ///     "local",
    ///     vec!["127.0.0.1:7001".parse().expect("an address")],
    ///     "data/local/certs/ca.pem",
    ///     "data/local/certs/client.pem",
    ///     "data/local/certs/client-key.pem",
    /// )?
    /// .with_deadline(Duration::from_secs(5))
    /// .with_backoff(Duration::from_millis(20), Duration::from_secs(1));
    /// let client = Client::connect(config).await?;
    /// client.put("hello", "world").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Config`] naming the file at fault.
    pub fn from_files(
        cluster_id: impl Into<String>,
        endpoints: Vec<SocketAddr>,
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, ClientError> {
        let load = |p: &Path, what: &str| read(&p.display().to_string(), what);
        let tls = TlsConfig::from_pem(
            &load(ca.as_ref(), "CA certificate")?,
            &load(cert.as_ref(), "client certificate")?,
            &load(key.as_ref(), "client key")?,
        )
        .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Self::new(cluster_id, endpoints, tls))
    }

    /// The longest one call, retries included, may take (10 s by default).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The longest one attempt at one node may take (2 s by default).
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// How reads are served unless a call says otherwise (linearizable by default).
    pub fn with_read_consistency(mut self, consistency: impl Into<Consistency>) -> Self {
        self.read_consistency = consistency.into();
        self
    }

    /// Retry pauses: `initial` after the first failed attempt, doubling up to `max`.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_default_config_without_tls_is_refused_with_a_clear_error() {
        let config = ClientConfig::default();
        assert_eq!(
            config.endpoints,
            vec![SocketAddr::from(([127, 0, 0, 1], 7001))]
        );
        assert_eq!(config.read_consistency, Consistency::Linearizable);
        let e = crate::Client::connect(config)
            .await
            .expect_err("no identity");
        assert!(
            matches!(&e, ClientError::Config(m) if m.contains("no TLS identity")),
            "{e}"
        );
    }

    #[test]
    fn consistencies_map_to_the_wire() {
        assert_eq!(
            Consistency::Stale(Duration::from_secs(5)).to_wire(),
            (ReadConsistency::Stale, 5_000)
        );
        assert_eq!(
            Consistency::Stale(Duration::MAX).to_wire(),
            (ReadConsistency::Stale, 0)
        );
        // A sub-millisecond bound stays a bound, never "any age".
        assert_eq!(
            Consistency::Stale(Duration::from_micros(10)).to_wire(),
            (ReadConsistency::Stale, 1)
        );
        assert_eq!(
            Consistency::from(ReadConsistency::Follower).to_wire(),
            (ReadConsistency::Follower, 0)
        );
    }
}
