//! Segment files and the on-disk format of a shard log.
//!
//! # Files in a log directory
//!
//! | name | what |
//! | --- | --- |
//! | `{base:020}.seg` | a segment: header, then frames of batches `base`, `base + 1`, ... |
//! | `{base:020}.idx` | sparse index of a *sealed* segment (derived data, rebuilt when bad) |
//! | `purge_point` | the highest purged index (see `purge_point.rs`), replaced atomically |
//! | `*.tmp` | a replacement being written; deleted at open |
//!
//! The segment with the highest base is the *active* one: appends go there, and at open it is
//! scanned and verified frame by frame. All others are *sealed*: fsynced, never written again,
//! verified on read. Segments are contiguous: a segment's base is the previous segment's last
//! index + 1, except after segments that are wholly purged (which are deleted at open).
//!
//! All integers are little-endian. CRCs are CRC-32 (IEEE, `crc32fast`).
//!
//! # Segment header (32 bytes)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `b"TRIBSEG\0"` |
//! | 8 | 2 | format version, `u16`, currently 1; anything else is refused (`UnsupportedVersion`) |
//! | 10 | 2 | flags, `u16`, 0 |
//! | 12 | 8 | base index, `u64` (must match the file name) |
//! | 20 | 8 | creation time, ms since the Unix epoch, `i64` (drives age-based rolling) |
//! | 28 | 4 | CRC of bytes 0..28 |
//!
//! # Frame (one per batch, 30 bytes + payload)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | `len`, `u32`: bytes after the CRC field (22 + payload length) |
//! | 4 | 4 | `crc32` of bytes 8..8+len (frame header + payload) |
//! | 8 | 1 | frame format version, `u8`, currently 1 |
//! | 9 | 1 | flags, `u8`, 0 (none defined; a set flag is refused) |
//! | 10 | 8 | index, `u64` |
//! | 18 | 8 | timestamp, ms since the Unix epoch, `i64` |
//! | 26 | 4 | record count, `u32` |
//! | 30 | len-22 | payload |
//!
//! A `len` outside `22 ..= 22 + max_batch_bytes` is corruption, never an allocation size.
//!
//! # Index file (`.idx`, 60 + 24 * n bytes)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `b"TRIBIDX\0"` |
//! | 8 | 2 | format version, `u16`, 1 (another version is rebuilt, not refused: it is derived data) |
//! | 10 | 2 | reserved, 0 |
//! | 12 | 8 | segment base index |
//! | 20 | 8 | length of the segment file it describes (a mismatch means stale: rebuild) |
//! | 28 | 8 | last index in the segment |
//! | 36 | 8 | largest timestamp in the segment |
//! | 44 | 8 | timestamp of the last batch |
//! | 52 | 4 | entry count n |
//! | 56 | 24n | entries: index `u64`, byte offset `u64`, running max timestamp `i64` |
//! | 56+24n | 4 | CRC of everything before |
//!
//! # Purge point file (`purge_point`, 24 bytes)
//!
//! magic `b"TRIBPRG\0"` (8), version `u16` = 1, reserved `u16`, purge index `u64`, CRC of bytes
//! 0..20. Written as `purge_point.tmp`, fsynced, renamed over `purge_point`, then the directory
//! is fsynced, so a crash leaves either the old or the new value.
//!
//! # Durability rules
//!
//! - Appends are plain `pwrite`s; `Log::sync` fdatasyncs the active segment. Sealed segments were
//!   fdatasynced when sealed, so the active segment is the only one with unsynced data.
//! - A new segment's header is fdatasynced and the directory fsynced when it is created.
//! - Truncation deletes later segments newest first, fsyncing the directory after each (a crash
//!   leaves a prefix, never a gap), then `ftruncate`s and fdatasyncs the containing segment, so
//!   removed frames cannot reappear after a crash.
//! - Purging deletes wholly purged sealed segments oldest first, after the purge point is durable;
//!   leftovers of an interrupted purge are deleted at the next open.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::LogError;
use crate::frame::{read_u16, read_u32, read_u64};
use crate::index::{IndexFile, SparseIndex};

/// Magic bytes at the start of a segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"TRIBSEG\0";
/// Segment format version written (and the only one read) by this build.
pub const SEGMENT_VERSION: u16 = 1;
/// Bytes of the segment header; the first frame starts here.
pub const SEGMENT_HEADER_LEN: u64 = 32;

/// The decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub base: u64,
    pub created_ms: i64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut out = [0u8; SEGMENT_HEADER_LEN as usize];
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        out[10..12].copy_from_slice(&0u16.to_le_bytes());
        out[12..20].copy_from_slice(&self.base.to_le_bytes());
        out[20..28].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32fast::hash(&out[0..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Checks magic, then version (a newer version may lay the rest out differently), then CRC.
    pub fn decode(buf: &[u8], path: &Path) -> Result<SegmentHeader, LogError> {
        if buf.len() < SEGMENT_HEADER_LEN as usize {
            return Err(LogError::corruption(
                path,
                0,
                format!(
                    "segment header is {} bytes, expected {SEGMENT_HEADER_LEN}",
                    buf.len()
                ),
            ));
        }
        if buf[0..8] != SEGMENT_MAGIC {
            return Err(LogError::corruption(
                path,
                0,
                format!("bad segment magic {:02x?}", &buf[0..8]),
            ));
        }
        let version = read_u16(buf, 8);
        if version != SEGMENT_VERSION {
            return Err(LogError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: SEGMENT_VERSION,
            });
        }
        let stored = read_u32(buf, 28);
        let computed = crc32fast::hash(&buf[0..28]);
        if stored != computed {
            return Err(LogError::corruption(
                path,
                0,
                format!(
                    "segment header crc mismatch: stored {stored:#010x} computed {computed:#010x}"
                ),
            ));
        }
        let flags = read_u16(buf, 10);
        if flags != 0 {
            return Err(LogError::corruption(
                path,
                0,
                format!("unknown segment flags {flags:#06x}"),
            ));
        }
        Ok(SegmentHeader {
            base: read_u64(buf, 12),
            created_ms: read_u64(buf, 20) as i64,
        })
    }
}

/// What kind of file a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Segment(u64),
    Index(u64),
}

pub(crate) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

pub(crate) fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

/// Recognises `{base:020}.seg` and `{base:020}.idx`.
pub(crate) fn parse_file_name(name: &str) -> Option<FileKind> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let base = stem.parse().ok()?;
    match ext {
        "seg" => Some(FileKind::Segment(base)),
        "idx" => Some(FileKind::Index(base)),
        _ => None,
    }
}

/// fsyncs a directory so that file creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| crate::fault::sync_dir(&d))
        .map_err(|e| LogError::io("fsync directory", dir, e))
}

pub(crate) fn open_segment_file(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| LogError::io("open segment", path, e))
}

/// One segment file and what the engine knows about it.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base: u64,
    pub path: Arc<Path>,
    pub file: Arc<File>,
    pub created_ms: i64,
    /// Bytes of the header and of complete, accepted frames; appends write here.
    pub size: u64,
    pub last_index: Option<u64>,
    /// Running max of timestamps within this segment.
    pub max_ts: Option<i64>,
    pub last_ts: Option<i64>,
    pub index: SparseIndex,
    /// Sealed segments are fsynced, have an `.idx` file and are never written again.
    pub sealed: bool,
    /// Size of the `.idx` file, for `disk_bytes`.
    pub idx_bytes: u64,
    /// Bytes below this offset were handed to the kernel to drop from the page cache
    /// (`crate::drop_behind`).
    pub cache_dropped_to: u64,
}

impl Segment {
    /// Creates `{base}.seg` with its header and fdatasyncs it. The caller fsyncs the directory.
    pub fn create(dir: &Path, base: u64, created_ms: i64) -> Result<Segment, LogError> {
        let path = segment_path(dir, base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LogError::io("create segment", &path, e))?;
        let header = SegmentHeader { base, created_ms }.encode();
        file.write_all_at(&header, 0)
            .map_err(|e| LogError::io("write segment header", &path, e))?;
        crate::fault::sync_data(&file)
            .map_err(|e| LogError::io("fdatasync new segment", &path, e))?;
        Ok(Segment::empty(path, file, base, created_ms))
    }

    /// A segment holding only its header.
    pub fn empty(path: PathBuf, file: File, base: u64, created_ms: i64) -> Segment {
        Segment {
            base,
            path: Arc::from(path),
            file: Arc::new(file),
            created_ms,
            size: SEGMENT_HEADER_LEN,
            last_index: None,
            max_ts: None,
            last_ts: None,
            index: SparseIndex::default(),
            sealed: false,
            idx_bytes: 0,
            cache_dropped_to: 0,
        }
    }

    pub fn has_frames(&self) -> bool {
        self.last_index.is_some()
    }

    /// The index the next appended frame must carry; `None` after a frame at index u64::MAX,
    /// which nothing can follow.
    pub fn next_index(&self) -> Option<u64> {
        match self.last_index {
            None => Some(self.base),
            Some(last) => last.checked_add(1),
        }
    }

    /// Updates the bookkeeping for a frame of `len` bytes written at `offset`.
    pub fn record_frame(&mut self, index: u64, offset: u64, len: u64, ts: i64, interval: u64) {
        let max_ts = self.max_ts.map_or(ts, |m| m.max(ts));
        self.max_ts = Some(max_ts);
        self.last_ts = Some(ts);
        self.last_index = Some(index);
        self.index.observe(index, offset, max_ts, interval);
        self.size = offset + len;
    }

    /// The `.idx` contents of this segment, if it holds frames.
    pub fn index_file(&self) -> Option<IndexFile> {
        Some(IndexFile {
            base: self.base,
            segment_len: self.size,
            last_index: self.last_index?,
            max_ts: self.max_ts?,
            last_ts: self.last_ts?,
            entries: self.index.entries().to_vec(),
        })
    }

    /// Makes the segment immutable: fdatasync its data, then write and fdatasync its `.idx`.
    /// The `.idx` needs no directory fsync: if its entry is lost in a crash it is rebuilt.
    pub fn seal(&mut self, dir: &Path) -> Result<(), LogError> {
        crate::fault::sync_data(&self.file)
            .map_err(|e| LogError::io("fdatasync segment being sealed", &self.path, e))?;
        if let Some(index) = self.index_file() {
            self.idx_bytes = write_index_file(dir, &index)?;
        }
        self.sealed = true;
        Ok(())
    }
}

/// Writes and fdatasyncs `{base}.idx`; returns its size.
pub(crate) fn write_index_file(dir: &Path, index: &IndexFile) -> Result<u64, LogError> {
    let path = index_path(dir, index.base);
    let bytes = index.encode();
    let mut file = File::create(&path).map_err(|e| LogError::io("create index", &path, e))?;
    file.write_all(&bytes)
        .map_err(|e| LogError::io("write index", &path, e))?;
    crate::fault::sync_data(&file).map_err(|e| LogError::io("fdatasync index", &path, e))?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let header = SegmentHeader {
            base: 42,
            created_ms: 1_700_000_000_000,
        };
        let path = Path::new("x.seg");
        assert_eq!(
            SegmentHeader::decode(&header.encode(), path).ok(),
            Some(header)
        );
    }

    #[test]
    fn header_checks_magic_version_and_crc() {
        let path = Path::new("x.seg");
        let good = SegmentHeader {
            base: 1,
            created_ms: 2,
        }
        .encode();

        let mut bad_magic = good;
        bad_magic[0] = b'X';
        assert!(matches!(
            SegmentHeader::decode(&bad_magic, path),
            Err(LogError::Corruption { .. })
        ));

        let mut newer = good;
        newer[8..10].copy_from_slice(&2u16.to_le_bytes());
        assert!(matches!(
            SegmentHeader::decode(&newer, path),
            Err(LogError::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            })
        ));

        let mut flipped = good;
        flipped[15] ^= 1;
        match SegmentHeader::decode(&flipped, path) {
            Err(LogError::Corruption { detail, .. }) => assert!(detail.contains("crc mismatch")),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn file_names_parse() {
        assert_eq!(
            parse_file_name("00000000000000000042.seg"),
            Some(FileKind::Segment(42))
        );
        assert_eq!(
            parse_file_name("00000000000000000042.idx"),
            Some(FileKind::Index(42))
        );
        assert_eq!(parse_file_name("42.seg"), None);
        assert_eq!(parse_file_name("00000000000000000042.seg.tmp"), None);
        assert_eq!(parse_file_name("purge_point"), None);
        assert_eq!(
            segment_path(Path::new("/d"), 7),
            PathBuf::from("/d/00000000000000000007.seg")
        );
    }
}
