//! Log recovery (`tributary-log` `Log::open`) on a directory of arbitrary files: segments,
//! index files, a purge point, a failed-fsync marker, leftover `.tmp` files. The input format
//! is in `fuzz/src/log_dir.rs`.
//!
//! Asserts: `open` returns `Ok` or a `LogError`, never panics, hangs or allocates more than the
//! files hold (libFuzzer's -timeout and -malloc_limit_mb enforce the last two). When it opens:
//! - every index from first to last reads as that batch or as an error, never a panic, and a
//!   read never returns a batch other than the one asked for;
//! - reads outside first..=last behave as documented (below first: `Purged`; past last: empty);
//! - timestamp lookups (fixed ones, and those of the batches read) answer within first..=last;
//! - the log accepts the next append, and after a sync and a reopen that batch reads back.
#![no_main]

use std::path::Path;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tributary_fuzz::log_dir;
use tributary_log::{Batch, Log, LogConfig, LogError};

/// Reads per input at each end of the readable range (an index file can claim billions).
const READS: u64 = 64;

fuzz_target!(|data: &[u8]| {
    let input = log_dir::parse(data);
    // tmpfs when there is one: open fsyncs the directory and the active segment.
    let dir = match tempfile::tempdir_in("/dev/shm") {
        Ok(dir) => dir,
        Err(_) => tempfile::tempdir().expect("a temporary directory"),
    };
    for (kind, bytes) in &input.files {
        std::fs::write(dir.path().join(kind.file_name()), bytes).expect("write input file");
    }
    let Ok((log, report)) = Log::open(dir.path(), input.config.clone()) else {
        return;
    };
    assert_eq!(report.first_index, log.first_index());
    assert_eq!(report.last_index, log.last_index());
    check_reads(&log);
    check_append_and_reopen(log, dir.path(), &input.config, report.purge_point);
});

fn check_reads(log: &Log) {
    let (first, last) = match (log.first_index(), log.last_index()) {
        (Some(first), Some(last)) => (first, last),
        (None, None) => return,
        other => panic!("first and last index disagree: {other:?}"),
    };
    assert!(first <= last, "first index {first} > last index {last}");
    let head = first..=last.min(first.saturating_add(READS));
    let tail = last.saturating_sub(READS).max(first)..=last;
    // Lookups of the fixed timestamps below and of those (and one past those) of batches read.
    let mut timestamps = vec![i64::MIN, -1, 0, 1, 1_700_000_000_000, i64::MAX];
    for index in head.chain(tail) {
        if let Ok(batches) = log.read(index, 1, usize::MAX) {
            assert!(batches.len() <= 1);
            if let Some(batch) = batches.first() {
                assert_eq!(batch.index, index, "read({index}) returned another batch");
                if timestamps.len() < 32 {
                    timestamps.push(batch.timestamp_ms);
                    timestamps.push(batch.timestamp_ms.saturating_add(1));
                }
            }
        }
    }
    if let Ok(batches) = log.read(first, 256, 1 << 20) {
        for (i, batch) in batches.iter().enumerate() {
            let expected = first.checked_add(i as u64);
            assert_eq!(
                Some(batch.index),
                expected,
                "a read skipped or repeated a batch"
            );
        }
    }
    if first > 0 {
        assert!(
            matches!(
                log.read(first - 1, 1, usize::MAX),
                Err(LogError::Purged { .. })
            ),
            "read below the first index {first} did not say Purged"
        );
    }
    if let Some(past) = last.checked_add(1) {
        assert!(matches!(log.read(past, 1, usize::MAX), Ok(b) if b.is_empty()));
    }
    for ts in timestamps {
        if let Ok(Some(found)) = log.try_find_by_timestamp(ts) {
            assert!(
                (first..=last).contains(&found),
                "timestamp {ts} found at {found}"
            );
        }
        if let Some(found) = log.find_by_timestamp(ts) {
            assert!(
                (first..=last).contains(&found),
                "timestamp {ts} found at {found}"
            );
        }
    }
}

fn check_append_and_reopen(log: Log, dir: &Path, config: &LogConfig, purge_point: Option<u64>) {
    let next = match log.last_index() {
        Some(last) => last.checked_add(1),
        None => purge_point.map_or(Some(1), |p| p.checked_add(1)),
    };
    let Some(next) = next else {
        return;
    };
    let batch = Batch {
        index: next,
        timestamp_ms: 1_700_000_000_000,
        record_count: 1,
        payload: Bytes::from_static(b"after recovery"),
    };
    if log.append(std::slice::from_ref(&batch)).is_err() || log.sync().is_err() {
        return;
    }
    drop(log);
    let (log, _) = match Log::open(dir, config.clone()) {
        Ok(opened) => opened,
        Err(e) => panic!("a log that opened and took an append does not reopen: {e}"),
    };
    match log.read(next, 1, usize::MAX) {
        Ok(batches) => assert_eq!(batches, vec![batch], "the appended batch did not read back"),
        Err(e) => panic!("the batch appended after recovery does not read back: {e}"),
    }
}
