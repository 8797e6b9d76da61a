//! Tests of the log engine through its public API, plus file surgery for crash scenarios.

mod faults;
mod model;
mod operations;
mod recovery;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use crate::segment::parse_file_name;
use crate::segment::FileKind;
use crate::{Batch, Log, LogConfig, RecoveryReport};

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A batch whose payload is derived from its index, so any mix-up shows.
pub(crate) fn batch(index: u64, timestamp_ms: i64, payload_len: usize) -> Batch {
    let payload: Vec<u8> = (0..payload_len)
        .map(|i| (index as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect();
    Batch {
        index,
        timestamp_ms,
        record_count: (index % 7) as u32 + 1,
        payload: Bytes::from(payload),
    }
}

/// Batches `from..=to`, timestamp = 1000 * index.
pub(crate) fn batches(from: u64, to: u64, payload_len: usize) -> Vec<Batch> {
    (from..=to)
        .map(|i| batch(i, i as i64 * 1000, payload_len))
        .collect()
}

/// Small segments (a few 100-byte batches each) so rolls happen quickly. Synced data is
/// dropped from the page cache as soon as the log allows (`page_cache_keep_bytes: 0`: sealed
/// segments whole, the active one in 1 MiB steps), so most reads come from disk.
pub(crate) fn small_config() -> LogConfig {
    LogConfig {
        segment_max_bytes: 1024,
        segment_max_age: Duration::from_secs(3600),
        index_interval_bytes: 200,
        max_batch_bytes: 64 * 1024,
        page_cache_keep_bytes: 0,
    }
}

pub(crate) fn open(
    dir: &Path,
    config: LogConfig,
) -> Result<(Log, RecoveryReport), crate::LogError> {
    Log::open(dir, config)
}

/// Segment files in `dir`, oldest first.
pub(crate) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_str()?.to_owned();
                    match parse_file_name(&name)? {
                        FileKind::Segment(base) => Some((base, e.path())),
                        FileKind::Index(_) => None,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

pub(crate) fn index_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "idx"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The newest segment file.
pub(crate) fn active_segment(dir: &Path) -> Option<PathBuf> {
    segment_files(dir).pop()
}

pub(crate) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Reads everything readable.
pub(crate) fn read_all(log: &Log) -> Result<Vec<Batch>, crate::LogError> {
    match log.first_index() {
        Some(first) => log.read(first, usize::MAX, usize::MAX),
        None => Ok(Vec::new()),
    }
}

#[test]
fn log_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Log>();
}
