//! The seam between the async network and the sync pollers (DESIGN section 7): the
//! [`Network`] the pollers send through, over the QUIC [`Transport`], and the transport's
//! [`Sink`], which hands incoming traffic to the pollers' mailboxes and RPCs to the service.
//! Only channels cross it; no lock is held across an await.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_transport::kv::{
    admin_request, write_response, AdminRequest, CommandHeader, ErrorCode, RaftCommand,
    RoutingUpdate, WriteResponse,
};
use flotilla_transport::meta::{RangeEpoch, RangeRecord, SnapshotChunk, SnapshotTransfer};
use flotilla_transport::raft::Message;
use flotilla_transport::wire::RangeMessage;
use flotilla_transport::{BoxFuture, RpcStatus, Sink, SnapshotChunks, Transport};
use prost::Message as _;
use tokio::sync::mpsc;

use super::service::Service;
use crate::kv::routing::META_RANGE;
use crate::storage::{SnapshotParts, SnapshotReceiver};
use crate::store::{Network, RequestError, RuntimeHandle, SnapshotBuild};

/// The pollers' [`Network`] over the node's QUIC transport.
pub(crate) struct TransportNetwork {
    pub(crate) transport: Transport,
    /// The members this node knows (shared with the service).
    pub(crate) members:
        Arc<parking_lot::RwLock<std::collections::BTreeMap<u64, std::net::SocketAddr>>>,
    pub(crate) runtime: tokio::runtime::Handle,
    /// Set once the runtime runs: routing reports go through it.
    pub(crate) handle: std::sync::OnceLock<RuntimeHandle>,
    /// Outgoing snapshots at once, build and stream together (`max-snapshot-sends`).
    pub(crate) snapshot_sends: Arc<tokio::sync::Semaphore>,
}

impl Network for TransportNetwork {
    fn send(&self, to_node: u64, messages: Vec<(u64, Message)>) {
        for (range_id, message) in messages {
            self.transport.send(
                to_node,
                RangeMessage {
                    range_id,
                    message: Some(message),
                },
            );
        }
    }

    fn send_snapshot(
        &self,
        to_node: u64,
        range_id: u64,
        build: SnapshotBuild,
        done: Box<dyn FnOnce(bool) + Send>,
    ) {
        let transport = self.transport.clone();
        let slots = self.snapshot_sends.clone();
        self.runtime.spawn(async move {
            // Held until the stream ends: at most `max-snapshot-sends` ranges are read into
            // memory and on the wire at once, however many followers need one.
            let ok = match slots.acquire_owned().await {
                Ok(_slot) => {
                    let built = tokio::task::spawn_blocking(build).await.ok().flatten();
                    match built {
                        Some((message, parts)) => {
                            stream_snapshot(&transport, to_node, range_id, message, parts).await
                        }
                        None => false,
                    }
                }
                Err(_) => false,
            };
            // `done` reports to a poller's bounded mailbox and may block while it is full:
            // never on a runtime worker. The report must not be lost (the leader holds the
            // follower in snapshot state until it comes).
            let _ = tokio::task::spawn_blocking(move || done(ok)).await;
        });
    }

    fn report_routes(&self, meta_epoch: RangeEpoch, records: Vec<RangeRecord>) {
        let Some(handle) = self.handle.get().cloned() else {
            return;
        };
        let transport = self.transport.clone();
        let members: Vec<u64> = self.members.read().keys().copied().collect();
        self.runtime.spawn(async move {
            send_routes(&handle, &transport, &members, meta_epoch, records).await;
        });
    }
}

/// Proposes a routing update to the meta range (see [`propose_to_meta`]); the runtime reports
/// again later if it does not land.
async fn send_routes(
    handle: &RuntimeHandle,
    transport: &Transport,
    members: &[u64],
    meta_epoch: RangeEpoch,
    records: Vec<RangeRecord>,
) {
    let count = records.len();
    let admin = admin_request::Request::RoutingUpdate(RoutingUpdate { records });
    if propose_to_meta(handle, transport, members, meta_epoch, admin)
        .await
        .is_none()
    {
        tracing::debug!(
            node = transport.node_id(),
            records = count,
            "routing report not delivered; reported again later"
        );
    }
}

/// Proposes an admin command to the meta range: here if this node leads it, else at the leader
/// its NOT_LEADER answers name, else at the members in turn (a node without a meta replica). A
/// few attempts; `None` when none answered with a response. Holds only the runtime's handle
/// (no storage), so a command in flight never keeps a stopped node's engine open.
pub(crate) async fn propose_to_meta(
    handle: &RuntimeHandle,
    transport: &Transport,
    members: &[u64],
    meta_epoch: RangeEpoch,
    admin: admin_request::Request,
) -> Option<WriteResponse> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let command = RaftCommand {
        header: Some(CommandHeader {
            range_id: META_RANGE,
            epoch: Some(meta_epoch),
            ..CommandHeader::default()
        }),
        request: None,
        admin: Some(AdminRequest {
            request: Some(admin),
        }),
    };
    let me = transport.node_id();
    let mut target = me;
    let mut others = members.iter().filter(|m| **m != me).cycle();
    for attempt in 0..8u32 {
        let answer: Option<WriteResponse> = if target == me {
            match handle
                .write(command.clone(), Instant::now() + TIMEOUT)
                .await
            {
                Ok(Ok(response)) => Some(response),
                Ok(Err(RequestError::Refused(e))) => Some(WriteResponse {
                    revision: 0,
                    response: Some(write_response::Response::Error((&e).into())),
                }),
                Ok(Err(RequestError::Unavailable(_))) | Err(_) => return None,
            }
        } else {
            transport
                .call(target, "kv.Write", command.encode_to_vec().into(), TIMEOUT)
                .await
                .ok()
                .and_then(|b| WriteResponse::decode(b).ok())
        };
        match answer {
            Some(WriteResponse {
                response: Some(write_response::Response::Error(e)),
                ..
            }) if e.code == ErrorCode::NotLeader as i32 && e.leader_node != 0 => {
                target = e.leader_node;
                continue;
            }
            Some(WriteResponse {
                response: Some(write_response::Response::Error(e)),
                ..
            }) if e.code == ErrorCode::RangeNotFound as i32 => {
                // No meta replica there (a node that joined): ask the members in turn.
                target = others.next().copied().unwrap_or(me);
                continue;
            }
            Some(WriteResponse {
                response: Some(write_response::Response::Error(_)),
                ..
            })
            | None => target = others.next().copied().unwrap_or(me),
            Some(response) => return Some(response),
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
    }
    None
}

/// Streams a built snapshot: the `SnapshotTransfer` header, then every chunk.
async fn stream_snapshot(
    transport: &Transport,
    to_node: u64,
    range_id: u64,
    message: Message,
    parts: SnapshotParts,
) -> bool {
    let header = SnapshotTransfer {
        message: Some(message),
        header: parts.header,
    }
    .encode_to_vec();
    let (tx, rx) = mpsc::channel(8);
    let feed = async move {
        for chunk in parts.chunks {
            if tx.send(Bytes::from(chunk.encode_to_vec())).await.is_err() {
                break;
            }
        }
    };
    let send = transport.send_snapshot(to_node, range_id, header.into(), rx);
    let ((), result) = tokio::join!(feed, send);
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(node = transport.node_id(), peer = to_node, range = range_id,
                error = %e, "snapshot stream failed");
            false
        }
    }
}

/// What the transport hands incoming traffic to.
pub(crate) struct NodeSink {
    pub(crate) node_id: u64,
    pub(crate) handle: RuntimeHandle,
    pub(crate) service: Arc<Service>,
}

impl Sink for NodeSink {
    fn raft_messages(&self, from_node: u64, messages: Vec<RangeMessage>) {
        for m in messages {
            if let Some(message) = m.message {
                self.handle.deliver(m.range_id, from_node, message);
            }
        }
    }

    fn peer_state(&self, node: u64, up: bool) {
        tracing::info!(
            node = self.node_id,
            peer = node,
            up,
            "peer liveness changed"
        );
        let handle = self.handle.clone();
        // Reaching every poller may wait on a full mailbox: not on an async worker.
        tokio::task::spawn_blocking(move || {
            if up {
                handle.node_up(node);
            } else {
                handle.node_down(node);
            }
        });
    }

    fn snapshot(&self, from_node: u64, range_id: u64, header: Bytes, chunks: SnapshotChunks) {
        let handle = self.handle.clone();
        let node_id = self.node_id;
        tokio::spawn(async move {
            match receive_snapshot(range_id, header, chunks).await {
                Ok((message, data)) => {
                    metrics::counter!("flotilla_store_snapshots_received_total").increment(1);
                    handle.deliver_snapshot(range_id, message, data);
                }
                Err(why) => {
                    metrics::counter!("flotilla_store_snapshots_refused_total").increment(1);
                    tracing::warn!(node = node_id, peer = from_node, range = range_id,
                        reason = %why, "snapshot refused");
                }
            }
        });
    }

    fn rpc(
        &self,
        from_node: Option<u64>,
        method: String,
        body: Bytes,
        timeout: Duration,
    ) -> BoxFuture<Result<Bytes, RpcStatus>> {
        let service = self.service.clone();
        Box::pin(async move { service.call(from_node, &method, body, timeout).await })
    }
}

/// Reads a snapshot stream whole, checking every chunk as it comes.
async fn receive_snapshot(
    range_id: u64,
    header: Bytes,
    mut chunks: SnapshotChunks,
) -> Result<(Message, crate::storage::ReceivedSnapshot), String> {
    let transfer =
        SnapshotTransfer::decode(header).map_err(|e| format!("undecodable header: {e}"))?;
    let message = transfer
        .message
        .ok_or_else(|| "header without the leader's message".to_string())?;
    let snapshot_header = transfer
        .header
        .ok_or_else(|| "header without the snapshot header".to_string())?;
    let mut receiver =
        SnapshotReceiver::new(range_id, snapshot_header).map_err(|e| e.to_string())?;
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let chunk = SnapshotChunk::decode(chunk).map_err(|e| format!("undecodable chunk: {e}"))?;
        receiver.push(chunk).map_err(|e| e.to_string())?;
    }
    let data = receiver.finish().map_err(|e| e.to_string())?;
    Ok((message, data))
}
