//! The segment frame decoder (`tributary-log` `frame.rs`) on arbitrary bytes.
//!
//! Input: `options u8 | bytes`. Options bits 0-2 pick `max_batch_bytes`; bit 3 recomputes the
//! CRC of the frame at the start (so the checks after the CRC are reached too).
//!
//! Asserts: decoding never panics and never reads past the buffer; an accepted frame is exactly
//! the encoding of the batch it decodes to (one valid encoding per batch, nothing ignored) and
//! `peek_frame_header` agrees with it; frames decoded back to back from a buffer stay inside it.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tributary_fuzz::crc32;
use tributary_log::fuzzing::{decode_frame, encode_frame, peek_frame_header};
use tributary_log::MAX_BATCH_BYTES_LIMIT;

const MAX_BATCH_BYTES: [u32; 8] = [
    1,
    22,
    64,
    256,
    4096,
    1 << 20,
    64 << 20,
    MAX_BATCH_BYTES_LIMIT,
];

fuzz_target!(|data: &[u8]| {
    let Some((&options, rest)) = data.split_first() else {
        return;
    };
    let max = MAX_BATCH_BYTES[usize::from(options & 7)];
    let mut buf = rest.to_vec();
    if options & 8 != 0 && buf.len() >= 8 {
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if let Some(end) = len.checked_add(8).filter(|&end| end <= buf.len()) {
            let crc = crc32(&buf[8..end]);
            buf[4..8].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let buf = Bytes::from(buf);

    // Frames back to back, as the recovery scan reads them.
    let mut at = 0;
    while at < buf.len() {
        let rest = buf.slice(at..);
        let peeked = peek_frame_header(&rest, max);
        match decode_frame(&rest, max) {
            Ok((batch, used)) => {
                assert!(
                    used <= rest.len(),
                    "frame of {used} bytes in {}",
                    rest.len()
                );
                assert_eq!(used, batch.encoded_len());
                assert!(batch.payload.len() <= max as usize);
                assert_eq!(
                    encode_frame(&batch),
                    &rest[..used],
                    "an accepted frame is not the encoding of what it decoded to"
                );
                assert_eq!(peeked, Ok((batch.index, used as u64)));
                at += used;
            }
            Err(_) => break,
        }
    }
});
