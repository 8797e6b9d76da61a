//! The `log_recovery` input: the files of a log directory, packed into one byte string.
//!
//! ```text
//! options u8 | file* ; file = kind u8 | [base u64 for .seg/.idx] | len u16 | bytes[len]
//! ```
//! All integers little-endian; a file cut short by the end of the input keeps what is there.
//! `options`: bits 0-1 pick a [`LogConfig`], bit 2 recomputes the CRCs, bit 3 writes the file
//! name's base into the segment and index headers, bit 4 renumbers frames `base, base + 1, ...`.
//!
//! Every file is CRC-protected, so random bytes almost never get past the first check; the
//! options let the fuzzer produce well-formed files whose *contents* are wrong (bad lengths,
//! gaps, stale frames, indexes that disagree with segments), which is what recovery must judge.
//! The layouts repaired here are the ones documented in `crates/tributary-log/src/segment.rs`.

use std::time::Duration;

use tributary_log::LogConfig;

use crate::{crc32, Cursor};

const SEGMENT_HEADER_LEN: usize = 32;
const FRAME_PREFIX_LEN: usize = 8;
const FRAME_HEADER_LEN: usize = 22;
const PURGE_POINT_LEN: usize = 24;

/// Recompute segment header, frame, index and purge-point CRCs.
pub const FIX_CRCS: u8 = 1 << 2;
/// Write each file's base (from its name) into its header.
pub const FIX_BASES: u8 = 1 << 3;
/// Give the frames of each segment the indexes `base, base + 1, ...`.
pub const RENUMBER_FRAMES: u8 = 1 << 4;

/// A file of a log directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `{base:020}.seg`
    Segment(u64),
    /// `{base:020}.idx`
    Index(u64),
    /// `purge_point`
    PurgePoint,
    /// `unsynced_after` (the marker a failed fsync leaves)
    UnsyncedMarker,
    /// `purge_point.tmp` (a replacement interrupted by a crash)
    Tmp,
}

impl FileKind {
    const TAGS: u8 = 5;

    /// The file's name in the log directory.
    pub fn file_name(&self) -> String {
        match self {
            FileKind::Segment(base) => format!("{base:020}.seg"),
            FileKind::Index(base) => format!("{base:020}.idx"),
            FileKind::PurgePoint => "purge_point".to_owned(),
            FileKind::UnsyncedMarker => "unsynced_after".to_owned(),
            FileKind::Tmp => "purge_point.tmp".to_owned(),
        }
    }

    /// The kind of a file name written by the log engine, if the format knows it.
    pub fn from_file_name(name: &str) -> Option<FileKind> {
        match name {
            "purge_point" => return Some(FileKind::PurgePoint),
            "unsynced_after" => return Some(FileKind::UnsyncedMarker),
            _ => {}
        }
        if name.ends_with(".tmp") {
            return Some(FileKind::Tmp);
        }
        let (stem, ext) = name.split_once('.')?;
        let base = stem.parse().ok().filter(|_| stem.len() == 20)?;
        match ext {
            "seg" => Some(FileKind::Segment(base)),
            "idx" => Some(FileKind::Index(base)),
            _ => None,
        }
    }

    fn tag(&self) -> u8 {
        match self {
            FileKind::Segment(_) => 0,
            FileKind::Index(_) => 1,
            FileKind::PurgePoint => 2,
            FileKind::UnsyncedMarker => 3,
            FileKind::Tmp => 4,
        }
    }
}

/// A decoded `log_recovery` input.
#[derive(Debug)]
pub struct LogDirInput {
    /// The configuration to open the log with.
    pub config: LogConfig,
    /// The files, in input order (a later file of the same name replaces an earlier one).
    pub files: Vec<(FileKind, Vec<u8>)>,
}

/// The configurations an input can pick: the test suite's small segments, the defaults, one
/// index entry per frame with tiny batches, and extreme values at the edges of `validate()`.
pub fn config(choice: u8) -> LogConfig {
    match choice % 4 {
        0 => LogConfig {
            segment_max_bytes: 1024,
            segment_max_age: Duration::from_secs(3600),
            index_interval_bytes: 200,
            max_batch_bytes: 64 * 1024,
            page_cache_keep_bytes: 0,
        },
        1 => LogConfig::default(),
        2 => LogConfig {
            segment_max_bytes: 4096,
            segment_max_age: Duration::from_secs(3600),
            index_interval_bytes: 1,
            max_batch_bytes: 256,
            page_cache_keep_bytes: 0,
        },
        _ => LogConfig {
            segment_max_bytes: u64::MAX,
            segment_max_age: Duration::MAX,
            index_interval_bytes: u64::MAX,
            max_batch_bytes: 1,
            page_cache_keep_bytes: u64::MAX,
        },
    }
}

/// At most this many files per input (more only slows the target down).
pub const MAX_FILES: usize = 8;

/// Decodes an input; never fails.
pub fn parse(data: &[u8]) -> LogDirInput {
    let mut input = Cursor::new(data);
    let options = input.u8();
    let mut files: Vec<(FileKind, Vec<u8>)> = Vec::new();
    while !input.is_empty() && files.len() < MAX_FILES {
        let kind = match input.u8() % FileKind::TAGS {
            0 => FileKind::Segment(input.u64()),
            1 => FileKind::Index(input.u64()),
            2 => FileKind::PurgePoint,
            3 => FileKind::UnsyncedMarker,
            _ => FileKind::Tmp,
        };
        let len = usize::from(input.u16());
        let mut bytes = input.bytes(len).to_vec();
        repair(kind, &mut bytes, options);
        files.push((kind, bytes));
    }
    LogDirInput {
        config: config(options),
        files,
    }
}

/// Encodes files as an input (the inverse of [`parse`] for inputs without repairs).
pub fn pack(options: u8, files: &[(FileKind, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![options];
    for (kind, bytes) in files {
        out.push(kind.tag());
        match kind {
            FileKind::Segment(base) | FileKind::Index(base) => {
                out.extend_from_slice(&base.to_le_bytes())
            }
            _ => {}
        }
        let len = u16::try_from(bytes.len()).expect("seed files are smaller than 64 KiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

fn put_crc(bytes: &mut [u8], covered: std::ops::Range<usize>, at: usize) {
    let crc = crc32(&bytes[covered]);
    bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

fn repair(kind: FileKind, bytes: &mut [u8], options: u8) {
    let fix_crcs = options & FIX_CRCS != 0;
    match kind {
        FileKind::Segment(base) => {
            if bytes.len() < SEGMENT_HEADER_LEN {
                return;
            }
            if options & FIX_BASES != 0 {
                bytes[12..20].copy_from_slice(&base.to_le_bytes());
            }
            if fix_crcs {
                put_crc(bytes, 0..28, 28);
            }
            let mut pos = SEGMENT_HEADER_LEN;
            let mut index = base;
            while pos + FRAME_PREFIX_LEN + FRAME_HEADER_LEN <= bytes.len() {
                let mut len = [0u8; 4];
                len.copy_from_slice(&bytes[pos..pos + 4]);
                let len = u32::from_le_bytes(len) as usize;
                let end = pos + FRAME_PREFIX_LEN + len;
                if len < FRAME_HEADER_LEN || end > bytes.len() {
                    break;
                }
                if options & RENUMBER_FRAMES != 0 {
                    bytes[pos + 10..pos + 18].copy_from_slice(&index.to_le_bytes());
                    index = index.wrapping_add(1);
                }
                if fix_crcs {
                    put_crc(bytes, pos + FRAME_PREFIX_LEN..end, pos + 4);
                }
                pos = end;
            }
        }
        FileKind::Index(base) => {
            if options & FIX_BASES != 0 && bytes.len() >= 24 {
                bytes[12..20].copy_from_slice(&base.to_le_bytes());
            }
            if fix_crcs && bytes.len() >= 4 {
                let body = bytes.len() - 4;
                put_crc(bytes, 0..body, body);
            }
        }
        FileKind::PurgePoint => {
            if fix_crcs && bytes.len() == PURGE_POINT_LEN {
                put_crc(bytes, 0..20, 20);
            }
        }
        FileKind::UnsyncedMarker | FileKind::Tmp => {}
    }
}
