//! The receiving side of the endpoint: accepting connections, checking each stream's `Hello`
//! against the peer's certificate, and serving Raft batches (fanned out to the sink), snapshot
//! streams (verified chunks, flow-controlled by the sink's pace) and RPCs; plus the liveness
//! monitor that reports silent peers down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use quinn::{Connection, VarInt};
use tokio::sync::mpsc;

use super::{
    peer, register, Inner, Peer, CODE_FRAME, CODE_REFUSED, CODE_SHUTDOWN, MAX_HELLO_BYTES,
    MAX_RPC_TIMEOUT,
};
use crate::coalesce;
use crate::error::TransportError;
use crate::frame;
use crate::stats;
use crate::tls;
use crate::wire::{
    snapshot_frame, Hello, RaftBatch, RpcCode, RpcRequest, RpcResponse, SnapshotFrame, StreamKind,
};

pub(super) async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => {
                    stats::connected(&inner.stats);
                    serve_connection(inner, conn, false).await;
                }
                Err(e) => {
                    stats::handshake_failed(&inner.stats);
                    tracing::warn!(node = inner.config.node_id, error = %e,
                        "incoming connection refused (wrong CA?)");
                }
            }
        });
    }
}

/// Serves the streams a peer opens on `conn` until it closes. `dialed` says whether this node
/// dialed it (which decides which duplicate connection survives).
pub(super) async fn serve_connection(inner: Arc<Inner>, conn: Connection, dialed: bool) {
    let error = loop {
        tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(recv) => { tokio::spawn(serve_uni(inner.clone(), conn.clone(), recv, dialed)); }
                Err(e) => break e,
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => { tokio::spawn(serve_rpc(inner.clone(), conn.clone(), send, recv)); }
                Err(e) => break e,
            },
        }
    };
    // A peer that shut down cleanly said so: it is down now, not after `down_after` (its
    // ranges' followers elsewhere can act at once).
    if let quinn::ConnectionError::ApplicationClosed(close) = &error {
        if close.error_code == VarInt::from_u32(CODE_SHUTDOWN) {
            peer_shut_down(&inner, &conn);
        }
    }
}

fn peer_shut_down(inner: &Inner, conn: &Connection) {
    let peers: Vec<Arc<Peer>> = inner.peers.lock().values().cloned().collect();
    for p in peers {
        let ours = p
            .link
            .lock()
            .as_ref()
            .is_some_and(|l| l.conn.stable_id() == conn.stable_id());
        if !ours {
            continue;
        }
        let mut up = p.up.lock();
        if up.0 {
            up.0 = false;
            drop(up);
            tracing::info!(
                node = inner.config.node_id,
                peer = p.node_id,
                "peer shut down"
            );
            crate::stats::peer_up(p.node_id, false);
            inner.sink.peer_state(p.node_id, false);
        }
    }
}

fn frame_failure(
    inner: &Inner,
    recv: &mut quinn::RecvStream,
    e: &frame::FrameError,
    from: Option<u64>,
) {
    stats::frame_error(e.kind(), &inner.stats);
    tracing::warn!(node = inner.config.node_id, peer = ?from, error = %e, "bad frame: stream closed");
    let _ = recv.stop(VarInt::from_u32(CODE_FRAME));
}

/// Reads and checks the `Hello` of a stream: the cluster must be ours and the certificate must
/// name the claimed node (or a client, for RPC streams). Returns the peer node (`None`: client).
async fn read_hello(
    inner: &Inner,
    conn: &Connection,
    recv: &mut quinn::RecvStream,
) -> Option<(Option<u64>, StreamKind, u64)> {
    // A hello is small and comes first: a stream that stalls before it is dropped.
    let read = frame::read::<Hello, _>(recv, MAX_HELLO_BYTES);
    let hello = match tokio::time::timeout(inner.config.idle_timeout, read).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            frame_failure(inner, recv, &e, None);
            return None;
        }
        Err(_) => {
            let e = frame::FrameError::Truncated;
            frame_failure(inner, recv, &e, None);
            return None;
        }
    };
    let kind = StreamKind::try_from(hello.kind).ok();
    let refuse = |why: String| {
        stats::handshake_failed(&inner.stats);
        tracing::warn!(node = inner.config.node_id, peer = hello.node_id, reason = %why,
            "peer refused");
        conn.close(VarInt::from_u32(CODE_REFUSED), why.as_bytes());
        None
    };
    if hello.cluster_id != inner.config.cluster_id {
        return refuse(format!(
            "cluster {:?} is not {:?}",
            hello.cluster_id, inner.config.cluster_id
        ));
    }
    let Some(kind) = kind else {
        return refuse(format!("unknown stream kind {}", hello.kind));
    };
    if hello.node_id == 0 {
        if kind == StreamKind::Rpc
            && tls::peer_has_name(conn, &tls::client_name(&inner.config.cluster_id))
        {
            return Some((None, kind, hello.incarnation));
        }
        return refuse("a client may only open rpc streams with a client certificate".into());
    }
    if !tls::peer_has_name(
        conn,
        &tls::node_name(&inner.config.cluster_id, hello.node_id),
    ) {
        return refuse(format!("certificate does not name node {}", hello.node_id));
    }
    Some((Some(hello.node_id), kind, hello.incarnation))
}

async fn serve_uni(inner: Arc<Inner>, conn: Connection, mut recv: quinn::RecvStream, dialed: bool) {
    let Some((Some(from), kind, incarnation)) = read_hello(&inner, &conn, &mut recv).await else {
        return;
    };
    match kind {
        StreamKind::Raft => {
            let p = peer(&inner, from);
            let restarted = {
                let mut known = p.incarnation.lock();
                let restarted = known.is_some_and(|k| k != incarnation);
                *known = Some(incarnation);
                restarted
            };
            if restarted {
                tracing::info!(node = inner.config.node_id, peer = from, "peer restarted");
            }
            let dialer = if dialed { inner.config.node_id } else { from };
            register(&inner, &p, conn.clone(), dialer, restarted);
            serve_raft(&inner, &p, &mut recv).await;
        }
        StreamKind::Snapshot => serve_snapshot(&inner, from, &mut recv).await,
        StreamKind::Rpc => {
            let e = frame::FrameError::Malformed("rpc on a unidirectional stream".into());
            frame_failure(&inner, &mut recv, &e, Some(from));
        }
    }
}

fn heard_from(inner: &Inner, p: &Peer) {
    let mut up = p.up.lock();
    up.1 = Instant::now();
    if !up.0 {
        up.0 = true;
        drop(up);
        tracing::info!(node = inner.config.node_id, peer = p.node_id, "peer up");
        crate::stats::peer_up(p.node_id, true);
        inner.sink.peer_state(p.node_id, true);
    }
}

async fn serve_raft(inner: &Inner, p: &Peer, recv: &mut quinn::RecvStream) {
    loop {
        match frame::read::<RaftBatch, _>(recv, inner.config.max_frame_bytes).await {
            Ok(Some(batch)) => {
                if inner.faults.lock().drop_from.contains(&p.node_id) {
                    stats::dropped(p.node_id, &inner.stats);
                    continue;
                }
                heard_from(inner, p);
                let n = batch.messages.len() + batch.heartbeats.len();
                if n == 0 {
                    continue;
                }
                stats::received(p.node_id, n, batch.encoded_len(), &inner.stats);
                let mut messages = batch.messages;
                messages.extend(batch.heartbeats.iter().map(coalesce::expand));
                inner.sink.raft_messages(p.node_id, messages);
            }
            Ok(None) => return,
            Err(frame::FrameError::Io(_)) => return,
            Err(e) => {
                frame_failure(inner, recv, &e, Some(p.node_id));
                return;
            }
        }
    }
}

async fn serve_snapshot(inner: &Inner, from: u64, recv: &mut quinn::RecvStream) {
    let max = inner.config.max_frame_bytes;
    let (range_id, header) = match frame::read::<SnapshotFrame, _>(recv, max).await {
        Ok(Some(SnapshotFrame {
            range_id,
            checksum,
            body: Some(snapshot_frame::Body::Header(h)),
        })) if crc32c::crc32c(&h) == checksum => (range_id, h),
        Ok(_) => {
            let e = frame::FrameError::Malformed("snapshot stream without a valid header".into());
            frame_failure(inner, recv, &e, Some(from));
            return;
        }
        Err(e) => {
            frame_failure(inner, recv, &e, Some(from));
            return;
        }
    };
    let (tx, rx) = mpsc::channel(inner.config.snapshot_buffer_chunks.max(1));
    inner.sink.snapshot(from, range_id, header, rx);
    let mut count = 0u64;
    loop {
        let failure = match frame::read::<SnapshotFrame, _>(recv, max).await {
            Ok(Some(f)) if f.range_id == range_id => match f.body {
                Some(snapshot_frame::Body::Chunk(c)) if crc32c::crc32c(&c) == f.checksum => {
                    count += 1;
                    // Waiting here is the flow control: QUIC stops the sender while we wait.
                    let mut shutdown = inner.shutdown.subscribe();
                    let delivered = tokio::select! {
                        r = tx.send(Ok(c)) => r.is_ok(),
                        _ = shutdown.wait_for(|s| *s) => false,
                    };
                    if !delivered {
                        let _ = recv.stop(VarInt::from_u32(CODE_SHUTDOWN));
                        return;
                    }
                    continue;
                }
                Some(snapshot_frame::Body::End(n)) if n == count => {
                    // Read to the end so the sender's `stopped()` reports a clean finish.
                    let _ = frame::read::<SnapshotFrame, _>(recv, max).await;
                    return;
                }
                Some(snapshot_frame::Body::End(n)) => {
                    format!("snapshot ended after {count} chunks, sender says {n}")
                }
                _ => "snapshot chunk failed its checksum".to_string(),
            },
            Ok(Some(_)) => "snapshot frame of another range".to_string(),
            Ok(None) => "snapshot stream ended before its end frame".to_string(),
            Err(e) => {
                frame_failure(inner, recv, &e, Some(from));
                e.to_string()
            }
        };
        stats::frame_error("snapshot", &inner.stats);
        let _ = tx.send(Err(TransportError::Snapshot(failure))).await;
        let _ = recv.stop(VarInt::from_u32(CODE_FRAME));
        return;
    }
}

async fn serve_rpc(
    inner: Arc<Inner>,
    conn: Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let Some((from, kind, _)) = read_hello(&inner, &conn, &mut recv).await else {
        return;
    };
    let max = inner.config.max_frame_bytes;
    if kind != StreamKind::Rpc {
        let e = frame::FrameError::Malformed("a bidirectional stream must carry rpc".into());
        frame_failure(&inner, &mut recv, &e, from);
        return;
    }
    let request = match frame::read::<RpcRequest, _>(&mut recv, max).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            frame_failure(&inner, &mut recv, &e, from);
            let response = RpcResponse {
                request_id: 0,
                code: RpcCode::BadRequest as i32,
                message: e.to_string(),
                body: Bytes::new(),
            };
            if let Ok(f) = frame::encode(&response, max) {
                let _ = frame::write(&mut send, &f).await;
                let _ = send.finish();
            }
            return;
        }
    };
    let timeout = Duration::from_millis(request.timeout_ms.max(1)).min(MAX_RPC_TIMEOUT);
    let handler = inner
        .sink
        .rpc(from, request.method.clone(), request.body, timeout);
    let response = match tokio::time::timeout(timeout, handler).await {
        Ok(Ok(body)) => RpcResponse {
            request_id: request.request_id,
            code: RpcCode::Ok as i32,
            message: String::new(),
            body,
        },
        Ok(Err(status)) => RpcResponse {
            request_id: request.request_id,
            code: status.code as i32,
            message: status.message,
            body: Bytes::new(),
        },
        Err(_) => RpcResponse {
            request_id: request.request_id,
            code: RpcCode::DeadlineExceeded as i32,
            message: format!("no answer within {timeout:?}"),
            body: Bytes::new(),
        },
    };
    let f = match frame::encode(&response, max) {
        Ok(f) => f,
        Err(e) => match frame::encode(
            &RpcResponse {
                request_id: request.request_id,
                code: RpcCode::Internal as i32,
                message: e.to_string(),
                body: Bytes::new(),
            },
            max,
        ) {
            Ok(f) => f,
            Err(_) => return,
        },
    };
    let _ = frame::write(&mut send, &f).await;
    let _ = send.finish();
}

/// Reports peers not heard from for `down_after` as down.
pub(super) async fn liveness_monitor(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(inner.config.liveness_interval) => {}
            _ = shutdown.changed() => return,
        }
        let peers: Vec<Arc<Peer>> = inner.peers.lock().values().cloned().collect();
        for p in peers {
            let mut up = p.up.lock();
            if up.0 && up.1.elapsed() > inner.config.down_after {
                up.0 = false;
                drop(up);
                tracing::warn!(node = inner.config.node_id, peer = p.node_id, "peer down");
                crate::stats::peer_up(p.node_id, false);
                inner.sink.peer_state(p.node_id, false);
            }
        }
    }
}
