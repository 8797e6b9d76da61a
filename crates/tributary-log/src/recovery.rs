//! Rebuilding the in-memory state of a log from its directory, and repairing what a crash can
//! leave behind.
//!
//! What a crash can leave, and what open does about it:
//! - unsynced bytes of the active segment partly written: an incomplete last frame, or a tail of
//!   zero bytes (pages allocated but never written). Cut off and reported.
//! - frames whose index does not follow the previous one (a stale tail): cut off and reported.
//! - a segment being created whose header never reached the disk: the file is removed.
//! - a missing, damaged or stale `.idx` of a sealed segment: rebuilt from frame headers.
//! - `*.tmp` files from an interrupted atomic replace: removed.
//! - sealed segments wholly below the purge point (deleted by a purge that did not finish):
//!   removed.
//!
//! What it refuses to repair: a *complete* frame of the active segment whose CRC does not match,
//! a bad segment header, or a gap between segments. Those are not what a crash does; dropping them
//! could silently lose acknowledged data, so open returns [`LogError::Corruption`] and an operator
//! decides.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::config::LogConfig;
use crate::error::LogError;
use crate::frame::{FrameError, FRAME_VERSION};
use crate::index::{IndexFile, SparseIndex};
use crate::purge_point;
use crate::scan::{is_zero_range, FrameReader, Peek};
use crate::segment::{
    index_path, open_segment_file, parse_file_name, segment_path, sync_dir, write_index_file,
    FileKind, Segment, SegmentHeader, SEGMENT_HEADER_LEN,
};

/// What `Log::open` found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files opened (sealed ones and the active one).
    pub segments_opened: usize,
    /// Tails cut from the active segment.
    pub truncated_tails: Vec<TailTruncation>,
    /// Sealed segments whose `.idx` was missing or unusable and was rebuilt.
    pub index_files_rebuilt: Vec<RebuiltIndex>,
    /// Files deleted: a torn new segment, wholly purged segments, stale `.idx` of the active
    /// segment, leftover `*.tmp` files.
    pub files_removed: Vec<PathBuf>,
    /// The persisted purge point.
    pub purge_point: Option<u64>,
    /// First readable index after recovery.
    pub first_index: Option<u64>,
    /// Last index after recovery.
    pub last_index: Option<u64>,
    /// Batches dropped because an earlier fsync had failed after they were written (see
    /// `unsynced_marker.rs`): only what was durable before that failure is kept.
    pub dropped_after_failed_sync: u64,
}

impl RecoveryReport {
    /// Total bytes cut from segment tails.
    pub fn truncated_bytes(&self) -> u64 {
        self.truncated_tails.iter().map(|t| t.bytes).sum()
    }

    /// Frames dropped because their index did not follow the previous frame.
    pub fn stale_frames_dropped(&self) -> u64 {
        self.truncated_tails
            .iter()
            .map(|t| match t.cause {
                TailCause::StaleFrames { frames, .. } => frames,
                _ => 0,
            })
            .sum()
    }
}

/// One cut made to the end of the active segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailTruncation {
    /// The segment file.
    pub segment: PathBuf,
    /// The new file length (where the cut was made).
    pub offset: u64,
    /// How many bytes were removed.
    pub bytes: u64,
    /// Why.
    pub cause: TailCause,
}

/// Why a tail was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailCause {
    /// The last frame (or its length field) extends past the end of the file: a torn write.
    IncompleteFrame,
    /// The rest of the file is zero bytes: pages allocated but never written before a crash.
    ZeroFilled,
    /// A CRC-valid frame whose index is not the previous index + 1, and what followed it.
    StaleFrames {
        /// Index carried by the first dropped frame.
        first_stale_index: u64,
        /// How many CRC-valid frames were dropped.
        frames: u64,
    },
}

/// An index file that was rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuiltIndex {
    /// The segment it belongs to.
    pub segment: PathBuf,
    /// Why the existing one was not used.
    pub reason: String,
}

/// The state recovered from a directory.
pub(crate) struct Recovered {
    pub segments: Vec<Segment>,
    pub purge_point: Option<u64>,
    pub report: RecoveryReport,
}

/// Maps a frame decoding failure at `offset` of `path` to the error the caller sees.
pub(crate) fn frame_error(path: &Path, offset: u64, error: FrameError) -> LogError {
    match error {
        FrameError::UnsupportedVersion { version } => LogError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: u16::from(version),
            supported: u16::from(FRAME_VERSION),
        },
        other => LogError::corruption(path, offset, other.to_string()),
    }
}

fn remove_file_if_exists(path: &Path) -> Result<bool, LogError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(LogError::io("remove file", path, e)),
    }
}

pub(crate) fn recover(dir: &Path, config: &LogConfig) -> Result<Recovered, LogError> {
    let mut report = RecoveryReport::default();
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| LogError::io("create log directory", dir, e))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }

    let mut segment_bases = BTreeSet::new();
    let mut index_bases = BTreeSet::new();
    let entries = fs::read_dir(dir).map_err(|e| LogError::io("list log directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io("list log directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        match parse_file_name(name) {
            Some(FileKind::Segment(base)) => {
                segment_bases.insert(base);
            }
            Some(FileKind::Index(base)) => {
                index_bases.insert(base);
            }
            None if name.ends_with(".tmp") => {
                let path = entry.path();
                remove_file_if_exists(&path)?;
                report.files_removed.push(path);
            }
            None => {}
        }
    }
    let purge_point = purge_point::load(dir)?;
    report.purge_point = purge_point;

    // A segment is created by writing its header and fdatasyncing it before anything is appended,
    // so a newest segment with a short or all-zero file was interrupted while being created.
    if let Some(&base) = segment_bases.last() {
        let path = segment_path(dir, base);
        if is_torn_new_segment(&path)? {
            warn!(segment = %path.display(), "removing a segment whose creation was interrupted");
            fs::remove_file(&path).map_err(|e| LogError::io("remove torn segment", &path, e))?;
            report.files_removed.push(path);
            segment_bases.remove(&base);
        }
    }

    let mut segments = Vec::with_capacity(segment_bases.len());
    let last_base = segment_bases.last().copied();
    for &base in &segment_bases {
        let segment = if Some(base) == last_base {
            let idx = index_path(dir, base);
            if index_bases.contains(&base) && remove_file_if_exists(&idx)? {
                // The active segment changes; an index of an earlier sealed state is stale.
                report.files_removed.push(idx);
            }
            open_active(dir, base, config, &mut report)?
        } else {
            open_sealed(dir, base, index_bases.contains(&base), config, &mut report)?
        };
        report.segments_opened += 1;
        segments.push(segment);
    }

    // Sealed segments wholly at or below the purge point are leftovers of an unfinished purge.
    if let Some(purged) = purge_point {
        let leftovers = segments
            .iter()
            .take(segments.len().saturating_sub(1))
            .take_while(|s| s.last_index.is_some_and(|l| l <= purged))
            .count();
        for segment in segments.drain(..leftovers) {
            fs::remove_file(&segment.path)
                .map_err(|e| LogError::io("remove purged segment", &segment.path, e))?;
            report.files_removed.push(segment.path.to_path_buf());
            let idx = index_path(dir, segment.base);
            if remove_file_if_exists(&idx)? {
                report.files_removed.push(idx);
            }
        }
    }

    for pair in segments.windows(2) {
        let expected = pair[0].next_index();
        if Some(pair[1].base) != expected {
            let expected = expected.map_or("none".to_owned(), |e| e.to_string());
            return Err(LogError::corruption(
                &pair[1].path,
                0,
                format!(
                    "segment base {} does not follow the previous segment, whose next index is \
                     {expected}",
                    pair[1].base
                ),
            ));
        }
    }

    // Make what open reports durable: the active segment (possibly just truncated) and the
    // directory (removed or rebuilt files).
    if let Some(active) = segments.last() {
        crate::fault::sync_data(&active.file)
            .map_err(|e| LogError::io("fdatasync active segment", &active.path, e))?;
    }
    sync_dir(dir)?;

    if !report.truncated_tails.is_empty() || !report.index_files_rebuilt.is_empty() {
        warn!(dir = %dir.display(), ?report, "log recovered with repairs");
    } else {
        info!(dir = %dir.display(), segments = report.segments_opened, "log opened");
    }
    Ok(Recovered {
        segments,
        purge_point,
        report,
    })
}

fn is_torn_new_segment(path: &Path) -> Result<bool, LogError> {
    let file = File::open(path).map_err(|e| LogError::io("open segment", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| LogError::io("stat segment", path, e))?
        .len();
    if len < SEGMENT_HEADER_LEN {
        return Ok(true);
    }
    is_zero_range(&file, 0, len).map_err(|e| LogError::io("read segment", path, e))
}

/// Opens a segment file and checks its header; returns the file and its length.
fn open_checked(path: &Path, base: u64) -> Result<(File, u64, SegmentHeader), LogError> {
    let file = open_segment_file(path)?;
    let len = file
        .metadata()
        .map_err(|e| LogError::io("stat segment", path, e))?
        .len();
    let mut buf = [0u8; SEGMENT_HEADER_LEN as usize];
    let available = len.min(SEGMENT_HEADER_LEN) as usize;
    file.read_exact_at(&mut buf[..available], 0)
        .map_err(|e| LogError::io("read segment header", path, e))?;
    let header = SegmentHeader::decode(&buf[..available], path)?;
    if header.base != base {
        return Err(LogError::corruption(
            path,
            0,
            format!(
                "header says base index {} but the file name says {base}",
                header.base
            ),
        ));
    }
    Ok((file, len, header))
}

/// A sealed segment: header check, then its `.idx` if usable, else a header scan to rebuild it.
/// Frame CRCs are not checked here (that would read every byte at startup); reads check them.
fn open_sealed(
    dir: &Path,
    base: u64,
    has_index: bool,
    config: &LogConfig,
    report: &mut RecoveryReport,
) -> Result<Segment, LogError> {
    let path = segment_path(dir, base);
    let (file, len, header) = open_checked(&path, base)?;
    let idx = index_path(dir, base);
    let problem = if has_index {
        match fs::read(&idx) {
            Ok(bytes) => match IndexFile::decode(&bytes) {
                Ok(index) if index.base == base && index.segment_len == len => {
                    let mut segment = Segment::empty(path, file, base, header.created_ms);
                    segment.size = len;
                    segment.last_index = Some(index.last_index);
                    segment.max_ts = Some(index.max_ts);
                    segment.last_ts = Some(index.last_ts);
                    segment.index = SparseIndex::from_entries(index.entries);
                    segment.sealed = true;
                    segment.idx_bytes = bytes.len() as u64;
                    return Ok(segment);
                }
                Ok(index) => format!(
                    "index describes base {} length {}, segment is base {base} length {len}",
                    index.base, index.segment_len
                ),
                Err(reason) => reason,
            },
            Err(e) => format!("unreadable: {e}"),
        }
    } else {
        "missing".to_owned()
    };

    let mut segment = Segment::empty(path, file, base, header.created_ms);
    let file = segment.file.clone();
    let mut reader = FrameReader::new(&file, SEGMENT_HEADER_LEN, len, config.max_batch_bytes);
    loop {
        let pos = reader.pos();
        match reader
            .peek()
            .map_err(|e| LogError::io("read segment", &segment.path, e))?
        {
            Peek::End => break,
            Peek::Incomplete => {
                return Err(LogError::corruption(
                    &segment.path,
                    pos,
                    "sealed segment ends inside a frame",
                ))
            }
            Peek::BadLength(e) => return Err(frame_error(&segment.path, pos, e)),
            Peek::Frame(h) => {
                let expected = segment.next_index();
                if Some(h.index) != expected {
                    let expected = expected.map_or("none".to_owned(), |e| e.to_string());
                    return Err(LogError::corruption(
                        &segment.path,
                        pos,
                        format!(
                            "sealed segment frame has index {}, expected {expected}",
                            h.index
                        ),
                    ));
                }
                segment.record_frame(
                    h.index,
                    pos,
                    h.total_len(),
                    h.timestamp_ms,
                    config.index_interval_bytes,
                );
                reader.skip(&h);
            }
        }
    }
    let Some(index) = segment.index_file() else {
        return Err(LogError::corruption(
            &segment.path,
            SEGMENT_HEADER_LEN,
            "sealed segment holds no batches",
        ));
    };
    segment.idx_bytes = write_index_file(dir, &index)?;
    segment.sealed = true;
    warn!(segment = %segment.path.display(), reason = %problem, "rebuilt segment index");
    report.index_files_rebuilt.push(RebuiltIndex {
        segment: segment.path.to_path_buf(),
        reason: problem,
    });
    Ok(segment)
}

/// The active segment: every frame is read and CRC-checked; a torn or stale tail is cut.
fn open_active(
    dir: &Path,
    base: u64,
    config: &LogConfig,
    report: &mut RecoveryReport,
) -> Result<Segment, LogError> {
    let path = segment_path(dir, base);
    let (file, len, header) = open_checked(&path, base)?;
    let mut segment = Segment::empty(path, file, base, header.created_ms);
    let file = segment.file.clone();
    let path = segment.path.clone();
    let io = |e| LogError::io("read segment", &path, e);
    let mut reader = FrameReader::new(&file, SEGMENT_HEADER_LEN, len, config.max_batch_bytes);
    let cut = loop {
        let pos = reader.pos();
        match reader.peek().map_err(io)? {
            Peek::End => break None,
            Peek::Incomplete => {
                let cause = if is_zero_range(&file, pos, len).map_err(io)? {
                    TailCause::ZeroFilled
                } else {
                    TailCause::IncompleteFrame
                };
                break Some((pos, cause));
            }
            Peek::BadLength(e) => {
                if is_zero_range(&file, pos, len).map_err(io)? {
                    break Some((pos, TailCause::ZeroFilled));
                }
                return Err(frame_error(&path, pos, e));
            }
            Peek::Frame(h) => {
                let batch = reader
                    .read_frame(&h)
                    .map_err(io)?
                    .map_err(|e| frame_error(&path, pos, e))?;
                // A frame after index u64::MAX is stale too: nothing can follow that index.
                if Some(batch.index) != segment.next_index() {
                    let mut frames = 1;
                    while let Ok(Peek::Frame(h)) = reader.peek() {
                        match reader.read_frame(&h) {
                            Ok(Ok(_)) => frames += 1,
                            _ => break,
                        }
                    }
                    break Some((
                        pos,
                        TailCause::StaleFrames {
                            first_stale_index: batch.index,
                            frames,
                        },
                    ));
                }
                segment.record_frame(
                    batch.index,
                    pos,
                    h.total_len(),
                    batch.timestamp_ms,
                    config.index_interval_bytes,
                );
            }
        }
    };
    if let Some((offset, cause)) = cut {
        warn!(
            segment = %path.display(),
            offset,
            bytes = len - offset,
            ?cause,
            "truncating the tail of the active segment"
        );
        file.set_len(offset)
            .map_err(|e| LogError::io("truncate torn tail", &path, e))?;
        report.truncated_tails.push(TailTruncation {
            segment: path.to_path_buf(),
            offset,
            bytes: len - offset,
            cause,
        });
    }
    Ok(segment)
}

/// Paths of files for a segment base, for callers that delete segments.
pub(crate) fn segment_files(dir: &Path, base: u64) -> [PathBuf; 2] {
    [segment_path(dir, base), index_path(dir, base)]
}

/// Deletes a segment file and its `.idx` (if any).
pub(crate) fn delete_segment_files(dir: &Path, base: u64) -> Result<(), LogError> {
    for path in segment_files(dir, base) {
        remove_file_if_exists(&path)?;
    }
    Ok(())
}

/// Removes an `.idx` (when a sealed segment becomes writable again).
pub(crate) fn delete_index_file(dir: &Path, base: u64) -> Result<(), LogError> {
    remove_file_if_exists(&index_path(dir, base)).map(|_| ())
}
