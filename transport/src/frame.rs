//! Frames: `length:be32 ++ body`, the body one protobuf message, capped in size. A frame that
//! is too large or does not decode is an error for its stream, never a panic; the length is
//! checked before anything is allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frames larger than this are refused unless configured otherwise.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// Why a frame was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversize { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("stream failed: {0}")]
    Io(String),
}

impl FrameError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::Oversize { .. } => "oversize",
            FrameError::Malformed(_) => "malformed",
            FrameError::Truncated => "truncated",
            FrameError::Io(_) => "io",
        }
    }
}

/// Encodes `message` as one frame.
///
/// # Errors
/// [`FrameError::Oversize`] if the message is larger than `max_bytes`.
pub fn encode<M: Message>(message: &M, max_bytes: usize) -> Result<Bytes, FrameError> {
    let len = message.encoded_len();
    if len > max_bytes || len > u32::MAX as usize {
        return Err(FrameError::Oversize {
            len,
            max: max_bytes,
        });
    }
    let mut out = BytesMut::with_capacity(4 + len);
    out.put_u32(len as u32);
    message
        .encode(&mut out)
        .expect("the buffer was sized for the message");
    Ok(out.freeze())
}

/// Decodes the frame at the front of `buf`: `Ok(None)` while it is incomplete, otherwise the
/// message and the number of bytes it took.
///
/// # Errors
/// [`FrameError::Oversize`] as soon as the length prefix exceeds `max_bytes`,
/// [`FrameError::Malformed`] when the body is not a `M`.
pub fn decode<M: Message + Default>(
    buf: &[u8],
    max_bytes: usize,
) -> Result<Option<(M, usize)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = (&buf[..4]).get_u32() as usize;
    if len > max_bytes {
        return Err(FrameError::Oversize {
            len,
            max: max_bytes,
        });
    }
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let message = M::decode(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(Some((message, 4 + len)))
}

/// Reads one frame from `stream`: `Ok(None)` at a clean end of stream (between frames).
///
/// # Errors
/// [`FrameError`] for an oversize, malformed or cut-off frame, or a failed stream.
pub async fn read<M, R>(stream: &mut R, max_bytes: usize) -> Result<Option<M>, FrameError>
where
    M: Message + Default,
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = stream
            .read(&mut header[got..])
            .await
            .map_err(|e| FrameError::Io(e.to_string()))?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max_bytes {
        return Err(FrameError::Oversize {
            len,
            max: max_bytes,
        });
    }
    // The buffer grows as bytes arrive: a peer announcing a large frame and stalling costs
    // nothing until it sends.
    let mut body = Vec::with_capacity(len.min(64 << 10));
    (&mut *stream)
        .take(len as u64)
        .read_to_end(&mut body)
        .await
        .map_err(|e| FrameError::Io(e.to_string()))?;
    if body.len() < len {
        return Err(FrameError::Truncated);
    }
    M::decode(body.as_slice())
        .map(Some)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Writes one frame (already encoded) to `stream`.
///
/// # Errors
/// [`FrameError::Io`] when the stream fails.
pub async fn write<W: AsyncWrite + Unpin>(stream: &mut W, frame: &Bytes) -> Result<(), FrameError> {
    stream
        .write_all(frame)
        .await
        .map_err(|e| FrameError::Io(e.to_string()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::wire::{Heartbeat, RaftBatch};

    #[test]
    fn roundtrip_and_limits() {
        let batch = RaftBatch {
            heartbeats: vec![Heartbeat {
                range_id: 7,
                term: 3,
                ..Heartbeat::default()
            }],
            ..RaftBatch::default()
        };
        let frame = encode(&batch, 1024).expect("encode");
        assert_eq!(decode::<RaftBatch>(&frame[..3], 1024), Ok(None));
        assert_eq!(
            decode::<RaftBatch>(&frame[..frame.len() - 1], 1024),
            Ok(None)
        );
        assert_eq!(
            decode::<RaftBatch>(&frame, 1024),
            Ok(Some((batch.clone(), frame.len())))
        );
        assert!(matches!(
            decode::<RaftBatch>(&frame, 2),
            Err(FrameError::Oversize { .. })
        ));
        assert!(matches!(
            encode(&batch, 2),
            Err(FrameError::Oversize { .. })
        ));
        let garbage = [0, 0, 0, 3, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode::<RaftBatch>(&garbage, 1024),
            Err(FrameError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn streams_end_cleanly_or_report_a_cut() {
        let frame = encode(
            &RaftBatch {
                ping_seq: 9,
                ..RaftBatch::default()
            },
            64,
        )
        .expect("encode");
        let mut whole: &[u8] = &frame;
        assert_eq!(
            read::<RaftBatch, _>(&mut whole, 64)
                .await
                .map(|b| b.map(|b| b.ping_seq)),
            Ok(Some(9))
        );
        assert_eq!(read::<RaftBatch, _>(&mut whole, 64).await, Ok(None));
        let mut cut: &[u8] = &frame[..frame.len() - 1];
        assert_eq!(
            read::<RaftBatch, _>(&mut cut, 64).await,
            Err(FrameError::Truncated)
        );
        let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read::<RaftBatch, _>(&mut huge, 64).await,
            Err(FrameError::Oversize { .. })
        ));
    }

    proptest! {
        /// No input panics the decoder, and whatever it accepts re-encodes to a frame that
        /// decodes to the same message.
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Some((m, used))) = decode::<RaftBatch>(&bytes, 256) {
                prop_assert!(used <= bytes.len());
                let again = encode(&m, usize::MAX).expect("encode");
                let (m2, _) = decode::<RaftBatch>(&again, usize::MAX).expect("decode").expect("whole");
                prop_assert_eq!(m, m2);
            }
        }

        #[test]
        fn every_prefix_of_a_frame_is_incomplete(ping in any::<u64>(), range_id in any::<u64>(), cut in 0usize..64) {
            let batch = RaftBatch {
                ping_seq: ping,
                heartbeats: vec![Heartbeat { range_id, ..Heartbeat::default() }],
                ..RaftBatch::default()
            };
            let frame = encode(&batch, 1024).expect("encode");
            let cut = cut.min(frame.len() - 1);
            prop_assert_eq!(decode::<RaftBatch>(&frame[..cut], 1024), Ok(None));
        }
    }
}
