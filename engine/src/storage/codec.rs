//! Checksummed records: every row Flotilla writes (log entries, hard states, descriptors, apply
//! states, sessions) is `crc32c(body):le32 ++ body`, so damage is reported on read instead of
//! being loaded (RocksDB's block checksums do not cover a bug or a bad write above them).

use prost::Message;

/// Why a stored record could not be read.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("record of {0} bytes is shorter than its checksum")]
    TooShort(usize),
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("undecodable record: {0}")]
    Decode(String),
}

/// Encodes `message` with its checksum.
pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    let len = message.encoded_len();
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&[0; 4]);
    message
        .encode(&mut out)
        .expect("a Vec grows to hold any message");
    let crc = crc32c::crc32c(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Verifies the checksum and decodes.
///
/// # Errors
/// [`CodecError`] when the record is short, damaged or not a `M`.
pub fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, CodecError> {
    if bytes.len() < 4 {
        return Err(CodecError::TooShort(bytes.len()));
    }
    let (head, body) = bytes.split_at(4);
    let stored = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    M::decode(body).map_err(|e| CodecError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use flotilla_transport::raft::HardState;

    use super::*;

    #[test]
    fn any_flipped_bit_is_caught() {
        let hs = HardState {
            term: 5,
            vote: 2,
            commit: 9,
        };
        let bytes = encode(&hs);
        assert_eq!(decode::<HardState>(&bytes), Ok(hs));
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                decode::<HardState>(&bad).is_err(),
                "bit {i} flipped unnoticed"
            );
        }
        assert_eq!(
            decode::<HardState>(&bytes[..3]),
            Err(CodecError::TooShort(3))
        );
    }
}
