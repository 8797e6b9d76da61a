//! One batch on disk: a CRC-protected frame. The exact layout is documented in `segment.rs`.
//!
//! Decoding checks, in this order: the length field is within bounds (so a flipped length cannot
//! make us allocate gigabytes), the frame is complete, the CRC matches, and only then the version
//! and flags (a flipped version byte is reported as a CRC mismatch, not as a "newer format").

use bytes::{BufMut, Bytes};

/// Frame format version written by this build.
pub(crate) const FRAME_VERSION: u8 = 1;
/// `len: u32` + `crc32: u32`.
pub(crate) const FRAME_PREFIX_LEN: usize = 8;
/// `version: u8` + `flags: u8` + `index: u64` + `timestamp_ms: i64` + `record_count: u32`.
pub(crate) const FRAME_HEADER_LEN: usize = 22;
/// Bytes a frame adds on top of its payload.
pub(crate) const FRAME_OVERHEAD: usize = FRAME_PREFIX_LEN + FRAME_HEADER_LEN;

/// One unit of the log: an opaque payload stored under a consecutive index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Position in the log; consecutive batches have consecutive indexes.
    pub index: u64,
    /// Producer-side or arrival time in milliseconds since the Unix epoch. Not required to be
    /// monotonic; [`crate::Log::find_by_timestamp`] copes with clocks that step back.
    pub timestamp_ms: i64,
    /// How many records the payload holds (informational; the engine does not parse payloads).
    pub record_count: u32,
    /// The opaque bytes.
    pub payload: Bytes,
}

impl Batch {
    /// Bytes this batch takes on disk.
    pub fn encoded_len(&self) -> usize {
        FRAME_OVERHEAD + self.payload.len()
    }
}

/// The fixed part of a frame, parsed without checking the CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// Value of the length field: frame header + payload bytes.
    pub len: u32,
    pub crc: u32,
    pub version: u8,
    pub flags: u8,
    pub index: u64,
    pub timestamp_ms: i64,
    pub record_count: u32,
}

impl FrameHeader {
    /// Total bytes of the frame including the length and CRC fields.
    pub fn total_len(&self) -> u64 {
        FRAME_PREFIX_LEN as u64 + u64::from(self.len)
    }
}

/// Why a byte range is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The buffer ends before the frame does.
    Incomplete { needed: usize, available: usize },
    /// The length field is outside `FRAME_HEADER_LEN ..= FRAME_HEADER_LEN + max_batch_bytes`.
    BadLength { len: u32, max: u64 },
    /// Stored and computed CRC differ.
    CrcMismatch { stored: u32, computed: u32 },
    /// CRC-valid frame of a format this build does not know.
    UnsupportedVersion { version: u8 },
    /// CRC-valid frame with flags this build does not know.
    UnknownFlags { flags: u8 },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Incomplete { needed, available } => write!(
                f,
                "incomplete frame: needs {needed} bytes, {available} available"
            ),
            FrameError::BadLength { len, max } => write!(
                f,
                "frame length {len} is outside {FRAME_HEADER_LEN}..={max}"
            ),
            FrameError::CrcMismatch { stored, computed } => {
                write!(
                    f,
                    "crc mismatch: stored {stored:#010x} computed {computed:#010x}"
                )
            }
            FrameError::UnsupportedVersion { version } => write!(
                f,
                "frame format version {version}; this build reads version {FRAME_VERSION}"
            ),
            FrameError::UnknownFlags { flags } => {
                write!(f, "unknown frame flags {flags:#04x}; this build knows none")
            }
        }
    }
}

/// Largest valid value of the length field.
pub(crate) fn max_frame_len(max_batch_bytes: u32) -> u64 {
    FRAME_HEADER_LEN as u64 + u64::from(max_batch_bytes)
}

/// Appends the frame of `batch` to `out`. The caller has checked the payload size against
/// `max_batch_bytes` (which is at most 1 GiB, so the length always fits in a u32).
pub(crate) fn encode_frame(batch: &Batch, out: &mut Vec<u8>) {
    let len = u32::try_from(FRAME_HEADER_LEN + batch.payload.len())
        .expect("invariant: payload size was checked against max_batch_bytes (<= 1 GiB)");
    out.reserve(batch.encoded_len());
    let start = out.len();
    out.put_u32_le(len);
    out.put_u32_le(0); // CRC placeholder, filled in below.
    out.put_u8(FRAME_VERSION);
    out.put_u8(0); // flags: none defined in version 1.
    out.put_u64_le(batch.index);
    out.put_i64_le(batch.timestamp_ms);
    out.put_u32_le(batch.record_count);
    out.extend_from_slice(&batch.payload);
    let crc = crc32fast::hash(&out[start + FRAME_PREFIX_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Parses the length, CRC and frame header at the start of `buf` without verifying the CRC.
/// Needs `FRAME_OVERHEAD` bytes; checks the length bounds.
pub(crate) fn peek_header(buf: &[u8], max_batch_bytes: u32) -> Result<FrameHeader, FrameError> {
    if buf.len() < FRAME_PREFIX_LEN {
        return Err(FrameError::Incomplete {
            needed: FRAME_PREFIX_LEN,
            available: buf.len(),
        });
    }
    let len = read_u32(buf, 0);
    let max = max_frame_len(max_batch_bytes);
    if (len as usize) < FRAME_HEADER_LEN || u64::from(len) > max {
        return Err(FrameError::BadLength { len, max });
    }
    if buf.len() < FRAME_OVERHEAD {
        return Err(FrameError::Incomplete {
            needed: FRAME_OVERHEAD,
            available: buf.len(),
        });
    }
    Ok(FrameHeader {
        len,
        crc: read_u32(buf, 4),
        version: buf[8],
        flags: buf[9],
        index: read_u64(buf, 10),
        timestamp_ms: read_u64(buf, 18) as i64,
        record_count: read_u32(buf, 26),
    })
}

/// Decodes and verifies the frame at the start of `buf`; returns the batch (its payload shares
/// `buf`'s memory) and the number of bytes the frame took.
pub(crate) fn decode_frame(
    buf: &Bytes,
    max_batch_bytes: u32,
) -> Result<(Batch, usize), FrameError> {
    let header = peek_header(buf, max_batch_bytes)?;
    let total = header.total_len() as usize;
    if buf.len() < total {
        return Err(FrameError::Incomplete {
            needed: total,
            available: buf.len(),
        });
    }
    let computed = crc32fast::hash(&buf[FRAME_PREFIX_LEN..total]);
    if computed != header.crc {
        return Err(FrameError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    if header.version != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion {
            version: header.version,
        });
    }
    if header.flags != 0 {
        return Err(FrameError::UnknownFlags {
            flags: header.flags,
        });
    }
    let batch = Batch {
        index: header.index,
        timestamp_ms: header.timestamp_ms,
        record_count: header.record_count,
        payload: buf.slice(FRAME_OVERHEAD..total),
    };
    Ok((batch, total))
}

pub(crate) fn read_u16(buf: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    b.copy_from_slice(&buf[at..at + 2]);
    u16::from_le_bytes(b)
}

pub(crate) fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

pub(crate) fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u32 = 1 << 20;

    fn batch_strategy() -> impl Strategy<Value = Batch> {
        (
            any::<u64>(),
            any::<i64>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..512),
        )
            .prop_map(|(index, timestamp_ms, record_count, payload)| Batch {
                index,
                timestamp_ms,
                record_count,
                payload: Bytes::from(payload),
            })
    }

    fn encode(batch: &Batch) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(batch, &mut out);
        out
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(batch in batch_strategy(), trailing in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = encode(&batch);
            prop_assert_eq!(buf.len(), batch.encoded_len());
            let frame_len = buf.len();
            buf.extend_from_slice(&trailing);
            let (decoded, used) = decode_frame(&Bytes::from(buf), MAX).expect("valid frame");
            prop_assert_eq!(used, frame_len);
            prop_assert_eq!(decoded, batch);
        }

        #[test]
        fn any_single_bit_flip_is_detected(batch in batch_strategy(), bit in any::<proptest::sample::Index>()) {
            let mut buf = encode(&batch);
            let bit = bit.index(buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            let result = decode_frame(&Bytes::from(buf), MAX);
            prop_assert!(result.is_err(), "flip of bit {} decoded as {:?}", bit, result);
        }

        #[test]
        fn every_truncation_is_incomplete(batch in batch_strategy(), cut in any::<proptest::sample::Index>()) {
            let buf = encode(&batch);
            let cut = cut.index(buf.len());
            let result = decode_frame(&Bytes::copy_from_slice(&buf[..cut]), MAX);
            prop_assert!(matches!(result, Err(FrameError::Incomplete { .. })), "{:?}", result);
        }
    }

    #[test]
    fn oversized_length_is_rejected_before_allocating() {
        let mut buf = encode(&Batch {
            index: 1,
            timestamp_ms: 0,
            record_count: 1,
            payload: Bytes::from_static(b"abc"),
        });
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_frame(&Bytes::from(buf), MAX),
            Err(FrameError::BadLength { len: u32::MAX, .. })
        ));
    }

    #[test]
    fn unknown_version_with_valid_crc_is_unsupported() {
        let mut buf = encode(&Batch {
            index: 7,
            timestamp_ms: 0,
            record_count: 1,
            payload: Bytes::from_static(b"abc"),
        });
        buf[8] = 2;
        let crc = crc32fast::hash(&buf[FRAME_PREFIX_LEN..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_frame(&Bytes::from(buf), MAX),
            Err(FrameError::UnsupportedVersion { version: 2 })
        );
    }
}
