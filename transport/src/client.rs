//! The client side of the QUIC endpoint: what the client library and the CLI use to call a
//! node's RPC service. A client presents its client certificate, trusts only the cluster CA,
//! and dials nodes by address, checking that the certificate names a node of its cluster
//! (`tls::any_node_name`). One connection per address, reused and redialed when lost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use quinn::Connection;

use crate::endpoint::rpc_on_stream;
use crate::error::TransportError;
use crate::tls::{self, TlsConfig};
use crate::wire::{Hello, StreamKind};

/// Frames a client accepts: responses carry at most a scan's byte limit plus framing.
const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// A client's endpoint. Cheap to clone; must be created inside a tokio runtime.
#[derive(Clone)]
pub struct ClientEndpoint {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    cluster_id: String,
    endpoint: quinn::Endpoint,
    connections: Mutex<HashMap<SocketAddr, Connection>>,
    dialing: tokio::sync::Mutex<()>,
    max_frame_bytes: usize,
}

impl std::fmt::Debug for ClientEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientEndpoint")
            .field("cluster_id", &self.inner.cluster_id)
            .finish_non_exhaustive()
    }
}

impl ClientEndpoint {
    /// A client endpoint of `cluster_id` with the client identity of `tls`, bound to an
    /// ephemeral port of `bind` (`0.0.0.0:0` or `[::]:0`).
    ///
    /// # Errors
    /// [`TransportError::Tls`] for unusable certificates, [`TransportError::Bind`].
    pub fn new(
        cluster_id: &str,
        tls: &TlsConfig,
        bind: SocketAddr,
    ) -> Result<Self, TransportError> {
        tls::check_cluster_id(cluster_id)?;
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| TransportError::Bind {
            addr: bind,
            reason: e.to_string(),
        })?;
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(1)));
        let mut client = tls::client_config(tls)?;
        client.transport_config(Arc::new(transport));
        endpoint.set_default_client_config(client);
        Ok(Self {
            inner: Arc::new(ClientInner {
                cluster_id: cluster_id.to_string(),
                endpoint,
                connections: Mutex::new(HashMap::new()),
                dialing: tokio::sync::Mutex::new(()),
                max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            }),
        })
    }

    async fn connection(&self, addr: SocketAddr) -> Result<Connection, TransportError> {
        let live = |inner: &ClientInner| {
            inner
                .connections
                .lock()
                .get(&addr)
                .filter(|c| c.close_reason().is_none())
                .cloned()
        };
        if let Some(conn) = live(&self.inner) {
            return Ok(conn);
        }
        let _dialing = self.inner.dialing.lock().await;
        if let Some(conn) = live(&self.inner) {
            return Ok(conn);
        }
        let name = tls::any_node_name(&self.inner.cluster_id);
        let conn = self
            .inner
            .endpoint
            .connect(addr, &name)
            .map_err(|e| TransportError::Connect {
                node: 0,
                reason: format!("{addr}: {e}"),
            })?
            .await
            .map_err(|e| TransportError::Connect {
                node: 0,
                reason: format!("{addr}: {e}"),
            })?;
        self.inner.connections.lock().insert(addr, conn.clone());
        Ok(conn)
    }

    /// Calls `method` on the node at `addr`, waiting at most `timeout` in all.
    ///
    /// # Errors
    /// [`TransportError::Rpc`] with the server's code, [`TransportError::DeadlineExceeded`],
    /// or a connection error (the connection is dropped and redialed next time).
    pub async fn call(
        &self,
        addr: SocketAddr,
        method: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        let hello = Hello {
            cluster_id: self.inner.cluster_id.clone(),
            node_id: 0,
            kind: StreamKind::Rpc as i32,
            incarnation: 0,
        };
        let result = tokio::time::timeout(timeout, async {
            let conn = self.connection(addr).await?;
            let r = rpc_on_stream(
                &conn,
                &hello,
                self.inner.max_frame_bytes,
                method,
                body,
                timeout,
            )
            .await;
            if matches!(r, Err(TransportError::ConnectionLost(_))) {
                self.inner.connections.lock().remove(&addr);
            }
            r
        })
        .await
        .map_err(|_| TransportError::DeadlineExceeded)?;
        result
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.inner
            .endpoint
            .close(quinn::VarInt::from_u32(0), b"bye");
        self.inner.endpoint.wait_idle().await;
    }
}
