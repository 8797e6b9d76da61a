//! Entry points for the fuzz targets in `fuzz/` (see docs/reliability.md, "Fuzzing").
//!
//! The frame codec is crate-private; the fuzz targets reach it only through these wrappers,
//! so the engine's public API stays `Log`, `LogConfig` and `Batch`. Not a stable API.

use bytes::Bytes;

use crate::frame::{self, Batch};

/// Decodes and verifies the frame at the start of `buf`, as a read or the recovery scan does:
/// the batch and the bytes the frame took, or why the bytes are not a valid frame.
pub fn decode_frame(buf: &Bytes, max_batch_bytes: u32) -> Result<(Batch, usize), String> {
    frame::decode_frame(buf, max_batch_bytes).map_err(|e| e.to_string())
}

/// Parses the length field and frame header at the start of `buf` without checking the CRC;
/// returns the batch index and the frame's total length.
pub fn peek_frame_header(buf: &[u8], max_batch_bytes: u32) -> Result<(u64, u64), String> {
    frame::peek_header(buf, max_batch_bytes)
        .map(|h| (h.index, h.total_len()))
        .map_err(|e| e.to_string())
}

/// The frame of `batch`, as `Log::append` writes it.
pub fn encode_frame(batch: &Batch) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.encoded_len());
    frame::encode_frame(batch, &mut out);
    out
}
