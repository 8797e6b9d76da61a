//! Shard iterators: self-contained, authenticated tokens, so any node holding the cluster's
//! iterator key can serve them and no server-side iterator state exists.
//!
//! Layout before base64url: `version u8 | stream_id u64 | shard_index u32 | log_index u64 |
//! slot u16 | issued_at_ms i64 | mac [u8; 16]`, little-endian; the MAC is the first 16 bytes
//! of HMAC-SHA256 over everything before it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::ApiError;

const VERSION: u8 = 1;
const BODY_LEN: usize = 1 + 8 + 4 + 8 + 2 + 8;
const MAC_LEN: usize = 16;

/// Where an iterator points: the next record to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IteratorPosition {
    /// The stream incarnation (a recreated stream has a new id, so old tokens fail).
    pub stream_id: u64,
    /// The shard within the stream.
    pub shard_index: u32,
    /// Raft log index of the next batch to read.
    pub log_index: u64,
    /// First record within that batch to return.
    pub slot: u16,
    /// When the token was issued (ms since the Unix epoch).
    pub issued_at_ms: i64,
}

/// Signs and verifies iterator tokens with the cluster's shared key.
#[derive(Clone)]
pub struct IteratorCodec {
    key: Vec<u8>,
    ttl_ms: i64,
}

impl IteratorCodec {
    /// A codec with the cluster key and the iterator lifetime.
    pub fn new(key: Vec<u8>, ttl: std::time::Duration) -> Self {
        Self {
            key,
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
        }
    }

    fn mac(&self, body: &[u8]) -> [u8; MAC_LEN] {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// Encodes a position as a token.
    pub fn encode(&self, position: &IteratorPosition) -> String {
        let mut buf = Vec::with_capacity(BODY_LEN + MAC_LEN);
        buf.push(VERSION);
        buf.extend_from_slice(&position.stream_id.to_le_bytes());
        buf.extend_from_slice(&position.shard_index.to_le_bytes());
        buf.extend_from_slice(&position.log_index.to_le_bytes());
        buf.extend_from_slice(&position.slot.to_le_bytes());
        buf.extend_from_slice(&position.issued_at_ms.to_le_bytes());
        let mac = self.mac(&buf);
        buf.extend_from_slice(&mac);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Decodes and authenticates a token, and checks its age against `now_ms`.
    pub fn decode(&self, token: &str, now_ms: i64) -> Result<IteratorPosition, ApiError> {
        let invalid = || {
            ApiError::invalid("shard iterator is malformed or was not issued by this cluster; get a new one with GetShardIterator")
        };
        let raw = URL_SAFE_NO_PAD
            .decode(token.as_bytes())
            .map_err(|_| invalid())?;
        if raw.len() != BODY_LEN + MAC_LEN || raw[0] != VERSION {
            return Err(invalid());
        }
        let (body, mac) = raw.split_at(BODY_LEN);
        // Constant-time comparison through the hmac crate.
        let mut check =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        check.update(body);
        check.verify_truncated_left(mac).map_err(|_| invalid())?;
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let position = IteratorPosition {
            stream_id: u64_at(1),
            shard_index: u32::from_le_bytes(body[9..13].try_into().expect("4 bytes")),
            log_index: u64_at(13),
            slot: u16::from_le_bytes(body[21..23].try_into().expect("2 bytes")),
            issued_at_ms: u64_at(23) as i64,
        };
        let age = now_ms.saturating_sub(position.issued_at_ms);
        if age > self.ttl_ms {
            return Err(ApiError::expired(format!(
                "shard iterator expired {} ms ago (iterators live {} ms); get a new one with GetShardIterator or use the last next_shard_iterator sooner",
                age - self.ttl_ms,
                self.ttl_ms
            )));
        }
        Ok(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample() -> IteratorPosition {
        IteratorPosition {
            stream_id: 7,
            shard_index: 3,
            log_index: 42,
            slot: 9,
            issued_at_ms: 1_000_000,
        }
    }

    #[test]
    fn round_trip() {
        let codec = IteratorCodec::new(b"key".to_vec(), Duration::from_secs(300));
        let token = codec.encode(&sample());
        assert_eq!(codec.decode(&token, 1_000_001).ok(), Some(sample()));
    }

    #[test]
    fn expired_after_ttl() {
        let codec = IteratorCodec::new(b"key".to_vec(), Duration::from_secs(1));
        let token = codec.encode(&sample());
        let err = codec
            .decode(&token, 1_000_000 + 1_001)
            .expect_err("expired");
        assert_eq!(err.code, tributary_proto::v1::ErrorCode::ExpiredIterator);
    }

    #[test]
    fn forged_or_foreign_tokens_are_invalid() {
        let codec = IteratorCodec::new(b"key".to_vec(), Duration::from_secs(300));
        let other = IteratorCodec::new(b"other".to_vec(), Duration::from_secs(300));
        let token = other.encode(&sample());
        assert_eq!(
            codec.decode(&token, 1_000_000).expect_err("foreign").code,
            tributary_proto::v1::ErrorCode::InvalidArgument
        );
        let mut raw = URL_SAFE_NO_PAD
            .decode(codec.encode(&sample()))
            .expect("base64");
        raw[10] ^= 1;
        assert!(codec
            .decode(&URL_SAFE_NO_PAD.encode(raw), 1_000_000)
            .is_err());
        assert!(codec.decode("not-a-token", 1_000_000).is_err());
    }
}
