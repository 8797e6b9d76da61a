//! Sequential, buffered reading of frames from a segment file with `pread`.
//!
//! Reads go through `pread` on a shared `File`, so many readers (and the appender) can use one
//! descriptor without a seek position or a lock. Each `pread` fetches at least `READ_AHEAD`
//! bytes into a buffer that is not zeroed first, and returned payloads are slices of that
//! buffer (no copy).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use bytes::Bytes;

use crate::frame::{decode_frame, peek_header, Batch, FrameError, FrameHeader, FRAME_OVERHEAD};

/// Bytes fetched per `pread` when the wanted frame is smaller.
pub(crate) const READ_AHEAD: usize = 128 * 1024;

/// What starts at the reader's position.
#[derive(Debug)]
pub(crate) enum Peek {
    /// The position is the end of the range.
    End,
    /// The bytes up to the end of the range are not a whole frame (a length field that fits but
    /// points past the end, or fewer bytes than a frame header).
    Incomplete,
    /// The length field is out of bounds.
    BadLength(FrameError),
    /// A frame header whose frame lies within the range (CRC not yet checked).
    Frame(FrameHeader),
}

pub(crate) struct FrameReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
    buf: Bytes,
    buf_start: u64,
    max_batch_bytes: u32,
    readahead: u64,
}

impl<'a> FrameReader<'a> {
    /// Reads frames of `file` in `start..end`.
    pub fn new(file: &'a File, start: u64, end: u64, max_batch_bytes: u32) -> Self {
        Self {
            file,
            pos: start,
            end,
            buf: Bytes::new(),
            buf_start: start,
            max_batch_bytes,
            readahead: READ_AHEAD as u64,
        }
    }

    /// Sets the minimum bytes per `pread` (default `READ_AHEAD`). Returned payloads share the
    /// buffer they were read into, so a small read should not pin a large buffer, and a header
    /// scan over large frames should not read their payloads.
    pub fn with_readahead(mut self, bytes: usize) -> Self {
        self.readahead = (bytes as u64).clamp(FRAME_OVERHEAD as u64, READ_AHEAD as u64);
        self
    }

    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Makes the buffer hold `[pos, pos + want)` clipped to the end; returns those bytes.
    fn fill(&mut self, want: u64) -> io::Result<Bytes> {
        let want = want.min(self.end.saturating_sub(self.pos));
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.pos < self.buf_start || self.pos + want > buf_end {
            let len = want.max(self.readahead).min(self.end - self.pos);
            self.buf = Bytes::from(read_exact_at_uninit(self.file, self.pos, len as usize)?);
            self.buf_start = self.pos;
        }
        let from = (self.pos - self.buf_start) as usize;
        Ok(self.buf.slice(from..from + want as usize))
    }

    pub fn peek(&mut self) -> io::Result<Peek> {
        if self.pos >= self.end {
            return Ok(Peek::End);
        }
        let head = self.fill(FRAME_OVERHEAD as u64)?;
        match peek_header(&head, self.max_batch_bytes) {
            Ok(header) if self.pos + header.total_len() <= self.end => Ok(Peek::Frame(header)),
            Ok(_) | Err(FrameError::Incomplete { .. }) => Ok(Peek::Incomplete),
            Err(e) => Ok(Peek::BadLength(e)),
        }
    }

    /// Reads and verifies the frame `header` (from `peek`) describes; advances past it on success.
    pub fn read_frame(&mut self, header: &FrameHeader) -> io::Result<Result<Batch, FrameError>> {
        let bytes = self.fill(header.total_len())?;
        Ok(
            decode_frame(&bytes, self.max_batch_bytes).map(|(batch, used)| {
                self.pos += used as u64;
                batch
            }),
        )
    }

    /// Steps over the frame `header` describes without reading its payload.
    pub fn skip(&mut self, header: &FrameHeader) {
        self.pos += header.total_len();
    }
}

/// Reads `len` bytes of `file` at `offset` into a new buffer without zeroing it first: a
/// catch-up read spent about 5% of its CPU zeroing buffers that `pread` then overwrote.
fn read_exact_at_uninit(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        let at = offset + data.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut data), at) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file ends before {len} bytes at offset {offset}"),
                ))
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    // The spare capacity may have been larger than asked for.
    data.truncate(len);
    Ok(data)
}

/// Whether `file[from..end]` is all zero bytes (what a torn write leaves in preallocated or
/// unwritten pages).
pub(crate) fn is_zero_range(file: &File, from: u64, end: u64) -> io::Result<bool> {
    let mut pos = from;
    let mut chunk = vec![0u8; READ_AHEAD];
    while pos < end {
        let n = ((end - pos) as usize).min(chunk.len());
        file.read_exact_at(&mut chunk[..n], pos)?;
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}
