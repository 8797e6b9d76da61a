//! Appends, reads, syncs, truncation, purging, rolling and timestamp lookup.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use super::*;
use crate::LogError;

const PAYLOAD: usize = 100;

/// 20 batches of 100 bytes, appended one by one: segments hold 1..=7, 8..=14, 15..=20.
fn log_with_20(dir: &Path) -> Result<(Log, Vec<Batch>), LogError> {
    let (log, _) = open(dir, small_config())?;
    let all = batches(1, 20, PAYLOAD);
    for b in &all {
        log.append(std::slice::from_ref(b))?;
    }
    Ok((log, all))
}

fn disk_usage(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .chain(index_files(dir).iter())
        .map(|p| file_len(p))
        .sum()
}

#[test]
fn append_checks_indexes_and_sizes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, _) = open(dir.path(), small_config())?;
    log.append(&[])?;
    assert!(matches!(
        log.append(&[batch(1, 0, 1), batch(3, 0, 1)]),
        Err(LogError::NonConsecutive {
            expected: 2,
            got: 3
        })
    ));
    assert_eq!(log.last_index(), None, "a rejected append writes nothing");
    log.append(&batches(1, 3, 10))?;
    for wrong in [5, 3, 0] {
        assert!(matches!(
            log.append(&[batch(wrong, 0, 1)]),
            Err(LogError::NonConsecutive { expected: 4, got }) if got == wrong
        ));
    }
    let too_big = batch(4, 0, small_config().max_batch_bytes as usize + 1);
    assert!(matches!(
        log.append(&[too_big]),
        Err(LogError::TooLarge { index: 4, .. })
    ));
    assert_eq!(log.last_index(), Some(3));
    Ok(())
}

#[test]
fn an_empty_log_starts_at_any_index() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, _) = open(dir.path(), small_config())?;
    log.append(&batches(1000, 1002, 10))?;
    assert_eq!(
        (log.first_index(), log.last_index()),
        (Some(1000), Some(1002))
    );
    drop(log);
    let (log, _) = open(dir.path(), small_config())?;
    assert!(matches!(
        log.read(999, 10, usize::MAX),
        Err(LogError::Purged {
            index: 999,
            first: 1000
        })
    ));
    assert_eq!(log.read(1000, 10, usize::MAX)?, batches(1000, 1002, 10));
    Ok(())
}

#[test]
fn read_respects_limits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, all) = log_with_20(dir.path())?;
    assert_eq!(log.read(1, 5, usize::MAX)?, all[0..5]);
    assert_eq!(
        log.read(1, usize::MAX, 250)?,
        all[0..2],
        "stops before exceeding max_bytes"
    );
    assert_eq!(
        log.read(1, usize::MAX, 200)?,
        all[0..2],
        "max_bytes is inclusive"
    );
    assert_eq!(
        log.read(3, usize::MAX, 50)?,
        all[2..3],
        "the first batch always comes"
    );
    assert_eq!(log.read(3, usize::MAX, 0)?, all[2..3]);
    assert_eq!(log.read(5, 10, usize::MAX)?, all[4..14], "spans segments");
    assert_eq!(log.read(6, 100, usize::MAX)?, all[5..], "stops at the end");
    assert_eq!(log.read(1, usize::MAX, usize::MAX)?, all);
    assert!(log.read(21, 10, usize::MAX)?.is_empty());
    assert!(log.read(u64::MAX, 10, usize::MAX)?.is_empty());
    assert!(log.read(5, 0, usize::MAX)?.is_empty());
    // Every start position, through the sparse index.
    for from in 1..=20 {
        assert_eq!(
            log.read(from, 3, usize::MAX)?,
            all[(from as usize - 1)..(from as usize + 2).min(20)]
        );
    }
    Ok(())
}

#[test]
fn sync_reports_the_durable_index() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, _) = open(dir.path(), small_config())?;
    assert_eq!(log.sync()?, None);
    log.append(&batches(1, 3, 10))?;
    assert_eq!(log.durable_index(), None);
    assert_eq!(log.sync()?, Some(3));
    log.append(&batches(4, 5, 10))?;
    assert_eq!(log.durable_index(), Some(3));
    assert_eq!(log.sync()?, Some(5));
    assert_eq!(log.sync()?, Some(5));
    Ok(())
}

#[test]
fn sync_runs_alongside_appends_and_reads() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, _) = open(dir.path(), small_config())?;
    let log = Arc::new(log);
    let done = Arc::new(AtomicBool::new(false));
    let syncer = {
        let (log, done) = (log.clone(), done.clone());
        thread::spawn(move || -> Result<(), LogError> {
            let mut seen = None;
            while !done.load(Ordering::Acquire) {
                let durable = log.sync()?;
                assert!(
                    durable >= seen,
                    "durable index went back: {seen:?} -> {durable:?}"
                );
                seen = durable;
            }
            Ok(())
        })
    };
    let reader = {
        let (log, done) = (log.clone(), done.clone());
        thread::spawn(move || -> Result<(), LogError> {
            while !done.load(Ordering::Acquire) {
                let got = read_all(&log)?;
                for (i, b) in got.iter().enumerate() {
                    assert_eq!(*b, batch(i as u64 + 1, 0, 50));
                }
            }
            Ok(())
        })
    };
    for i in 1..=150 {
        log.append(&[batch(i, 0, 50)])?;
    }
    done.store(true, Ordering::Release);
    syncer.join().map_err(|_| "syncer panicked")??;
    reader.join().map_err(|_| "reader panicked")??;
    assert_eq!(log.sync()?, Some(150));
    Ok(())
}

#[test]
fn truncate_after_across_segment_boundaries() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, all) = log_with_20(dir.path())?;
    assert_eq!(log.segment_count(), 3);

    log.truncate_after(Some(5))?;
    assert_eq!(log.segment_count(), 1);
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "later segment files are deleted"
    );
    assert!(
        index_files(dir.path()).is_empty(),
        "the cut segment is writable again"
    );
    assert_eq!(log.last_index(), Some(5));
    assert_eq!(log.durable_index(), Some(5));
    assert_eq!(log.last_timestamp_ms(), Some(5_000));
    assert_eq!(read_all(&log)?, all[..5]);
    assert!(log.read(6, 10, usize::MAX)?.is_empty());

    // New data replaces the removed batches.
    let replacement: Vec<Batch> = (6..=12).map(|i| batch(i, 7, 33)).collect();
    log.append(&replacement)?;
    assert_eq!(log.read(6, 100, usize::MAX)?, replacement);
    log.sync()?;
    drop(log);
    let (log, report) = open(dir.path(), small_config())?;
    assert!(report.truncated_tails.is_empty(), "{report:?}");
    let mut expected = all[..5].to_vec();
    expected.extend(replacement);
    assert_eq!(read_all(&log)?, expected);
    Ok(())
}

#[test]
fn truncate_inside_a_sealed_segment_makes_it_active() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, all) = log_with_20(dir.path())?;
    log.truncate_after(Some(10))?;
    assert_eq!(log.segment_count(), 2);
    assert_eq!(index_files(dir.path()).len(), 1);
    log.append(&all[10..])?;
    assert_eq!(read_all(&log)?, all);
    drop(log);
    let (log, report) = open(dir.path(), small_config())?;
    assert!(report.truncated_tails.is_empty() && report.index_files_rebuilt.is_empty());
    assert_eq!(read_all(&log)?, all);
    Ok(())
}

#[test]
fn truncate_at_a_segment_end_keeps_it_sealed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, all) = log_with_20(dir.path())?;
    log.truncate_after(Some(14))?;
    assert_eq!((log.segment_count(), log.last_index()), (2, Some(14)));
    assert_eq!(index_files(dir.path()).len(), 2);
    log.append(&all[14..15])?;
    assert_eq!(
        log.segment_count(),
        3,
        "appending after a sealed segment starts a new one"
    );
    assert_eq!(read_all(&log)?, all[..15]);
    // No-op truncations.
    log.truncate_after(Some(15))?;
    log.truncate_after(Some(99))?;
    assert_eq!(log.last_index(), Some(15));
    Ok(())
}

#[test]
fn truncate_everything_keeps_the_purge_point() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, _) = log_with_20(dir.path())?;
    log.purge_upto(3)?;
    log.truncate_after(None)?;
    assert_eq!(log.segment_count(), 0);
    assert!(segment_files(dir.path()).is_empty());
    assert_eq!((log.first_index(), log.last_index()), (None, None));
    assert_eq!(log.durable_index(), None);
    assert!(matches!(
        log.append(&[batch(2, 0, 1)]),
        Err(LogError::NonConsecutive {
            expected: 4,
            got: 2
        })
    ));
    log.append(&[batch(4, 0, 1)])?;
    assert_eq!((log.first_index(), log.last_index()), (Some(4), Some(4)));
    Ok(())
}

#[test]
fn purge_deletes_only_whole_sealed_segments() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, all) = log_with_20(dir.path())?;
    log.purge_upto(10)?;
    assert_eq!(log.first_index(), Some(11));
    assert_eq!(
        log.segment_count(),
        2,
        "1..=7 deleted, 8..=14 still holds 11..=14"
    );
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert!(matches!(
        log.read(10, 1, usize::MAX),
        Err(LogError::Purged {
            index: 10,
            first: 11
        })
    ));
    assert!(matches!(
        log.read(1, 1, usize::MAX),
        Err(LogError::Purged { .. })
    ));
    assert_eq!(log.read(11, 100, usize::MAX)?, all[10..]);
    assert_eq!(
        log.find_by_timestamp(0),
        Some(11),
        "purged batches are not found"
    );

    // Purging everything keeps the active segment.
    log.purge_upto(20)?;
    assert_eq!(log.segment_count(), 1);
    assert_eq!((log.first_index(), log.last_index()), (None, None));
    assert_eq!(log.last_timestamp_ms(), None);
    assert!(matches!(
        log.read(20, 1, usize::MAX),
        Err(LogError::Purged {
            index: 20,
            first: 21
        })
    ));
    assert!(log.read(21, 1, usize::MAX)?.is_empty());
    log.append(&[batch(21, 0, 5)])?;
    assert_eq!((log.first_index(), log.last_index()), (Some(21), Some(21)));
    // A purge point going back is ignored.
    log.purge_upto(2)?;
    assert_eq!(log.first_index(), Some(21));
    Ok(())
}

#[test]
fn purge_survives_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, all) = log_with_20(dir.path())?;
    log.purge_upto(10)?;
    log.sync()?;
    drop(log);
    let (log, report) = open(dir.path(), small_config())?;
    assert_eq!(report.purge_point, Some(10));
    assert_eq!(
        (report.first_index, report.last_index),
        (Some(11), Some(20))
    );
    assert_eq!(read_all(&log)?, all[10..]);
    Ok(())
}

#[test]
fn purge_past_the_end_then_append_above_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, _) = log_with_20(dir.path())?;
    log.sync()?;
    log.purge_upto(30)?;
    assert_eq!(log.last_index(), None);
    assert!(matches!(
        log.append(&[batch(21, 0, 1)]),
        Err(LogError::NonConsecutive {
            expected: 31,
            got: 21
        })
    ));
    log.append(&batches(31, 33, 10))?;
    assert_eq!(
        log.segment_count(),
        1,
        "the purged old active segment is deleted"
    );
    assert_eq!(segment_files(dir.path()).len(), 1);
    log.sync()?;
    drop(log);
    let (log, _) = open(dir.path(), small_config())?;
    assert_eq!((log.first_index(), log.last_index()), (Some(31), Some(33)));
    assert_eq!(read_all(&log)?, batches(31, 33, 10));
    Ok(())
}

#[test]
fn segments_roll_by_size() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, _) = open(dir.path(), small_config())?;
    for i in 1..=7 {
        log.append(&[batch(i, 0, PAYLOAD)])?;
    }
    assert_eq!(log.segment_count(), 1);
    log.append(&[batch(8, 0, PAYLOAD)])?;
    assert_eq!(log.segment_count(), 2);
    // A batch larger than a segment gets a segment of its own.
    log.append(&[batch(9, 0, 3000)])?;
    log.append(&[batch(10, 0, 1)])?;
    assert_eq!(log.segment_count(), 4);
    let sizes: Vec<u64> = segment_files(dir.path())
        .iter()
        .map(|p| file_len(p))
        .collect();
    assert!(
        sizes[0] <= 1024 && sizes[1] <= 1024 && sizes[2] > 3000,
        "{sizes:?}"
    );
    assert_eq!(log.disk_bytes(), disk_usage(dir.path()));
    assert_eq!(log.read(9, 1, 10)?[0].payload.len(), 3000);
    Ok(())
}

#[test]
fn segments_roll_by_age() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, _) = open(dir.path(), small_config())?;
    let now = SystemTime::now();
    assert!(
        !log.roll_if_aged(now + Duration::from_secs(7200))?,
        "nothing to roll"
    );
    log.append(&batches(1, 2, 10))?;
    assert!(!log.roll_if_aged(now)?);
    assert!(log.roll_if_aged(now + Duration::from_secs(7200))?);
    assert_eq!(log.segment_count(), 2);
    assert!(
        !log.roll_if_aged(now + Duration::from_secs(7200))?,
        "the new segment is empty"
    );
    // The sealed segment can now be purged away.
    log.purge_upto(2)?;
    assert_eq!(log.segment_count(), 1);
    log.append(&batches(3, 3, 10))?;
    assert_eq!(read_all(&log)?, batches(3, 3, 10));

    // Age is also checked on append.
    let dir = tempfile::tempdir()?;
    let config = LogConfig {
        segment_max_age: Duration::from_millis(1),
        ..small_config()
    };
    let (log, _) = open(dir.path(), config)?;
    log.append(&batches(1, 1, 10))?;
    thread::sleep(Duration::from_millis(5));
    log.append(&batches(2, 2, 10))?;
    assert_eq!(log.segment_count(), 2);
    Ok(())
}

/// Timestamps that step back (by small jitter, and once by a large clock step).
fn jittery_timestamp(i: u64) -> i64 {
    let jitter = ((i * 7919) % 50) as i64 - 25;
    let step_back = if i >= 25 { -400 } else { 0 };
    i as i64 * 10 + jitter + step_back
}

#[test]
fn find_by_timestamp_survives_clock_steps_back() -> TestResult {
    let dir = tempfile::tempdir()?;
    let config = LogConfig {
        index_interval_bytes: 300,
        ..small_config()
    };
    let (log, _) = open(dir.path(), config.clone())?;
    let all: Vec<Batch> = (1..=60)
        .map(|i| batch(i, jittery_timestamp(i), 80))
        .collect();
    for chunk in all.chunks(2) {
        log.append(chunk)?;
    }
    assert!(log.segment_count() > 3);
    let oracle = |ts: i64, first: u64| {
        all.iter()
            .find(|b| b.index >= first && b.timestamp_ms >= ts)
            .map(|b| b.index)
    };
    for round in 0..3 {
        let first = log.first_index().ok_or("empty log")?;
        for ts in (-500..800).step_by(3) {
            assert_eq!(
                log.find_by_timestamp(ts),
                oracle(ts, first),
                "ts {ts}, round {round}"
            );
            assert_eq!(log.try_find_by_timestamp(ts)?, oracle(ts, first));
        }
        assert_eq!(log.find_by_timestamp(i64::MIN), Some(first));
        assert_eq!(log.find_by_timestamp(i64::MAX), None);
        match round {
            0 => log.purge_upto(12)?,
            _ => {
                drop(log);
                let (reopened, _) = open(dir.path(), config.clone())?;
                return check_reopened(&reopened, &oracle);
            }
        }
    }
    Ok(())
}

fn check_reopened(log: &Log, oracle: &dyn Fn(i64, u64) -> Option<u64>) -> TestResult {
    let first = log.first_index().ok_or("empty log")?;
    for ts in (-500..800).step_by(7) {
        assert_eq!(
            log.find_by_timestamp(ts),
            oracle(ts, first),
            "after reopen, ts {ts}"
        );
    }
    Ok(())
}

#[test]
fn reads_racing_truncation_never_see_corruption() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, _) = open(dir.path(), small_config())?;
    let log = Arc::new(log);
    log.append(&batches(1, 30, 60))?;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (log, done) = (log.clone(), done.clone());
        thread::spawn(move || -> Result<usize, LogError> {
            let mut reads = 0;
            while !done.load(Ordering::Acquire) {
                let got = log.read(1, usize::MAX, usize::MAX)?;
                for (i, b) in got.iter().enumerate() {
                    assert_eq!(b.index, i as u64 + 1, "reads are consecutive");
                }
                reads += 1;
            }
            Ok(reads)
        })
    };
    for round in 0..40u64 {
        let keep = 5 + round % 20;
        log.truncate_after(Some(keep))?;
        let fresh: Vec<Batch> = (keep + 1..=30)
            .map(|i| batch(i, round as i64, 60))
            .collect();
        log.append(&fresh)?;
    }
    done.store(true, Ordering::Release);
    let reads = reader.join().map_err(|_| "reader panicked")??;
    assert!(reads > 0);
    Ok(())
}

#[test]
fn disk_accounting_matches_the_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, _) = log_with_20(dir.path())?;
    assert_eq!(log.disk_bytes(), disk_usage(dir.path()));
    log.purge_upto(9)?;
    assert_eq!(log.disk_bytes(), disk_usage(dir.path()));
    log.truncate_after(Some(12))?;
    assert_eq!(log.disk_bytes(), disk_usage(dir.path()));
    Ok(())
}

#[test]
fn a_batch_at_the_largest_index_reads_back() -> TestResult {
    // Regression (fuzz target `log_recovery`): reading a log whose last batch has index
    // u64::MAX overflowed `last + 1` (a panic in debug builds).
    let dir = tempfile::tempdir()?;
    let last = vec![batch(u64::MAX - 1, 1, 10), batch(u64::MAX, 2, 10)];
    let check = |log: &Log| -> TestResult {
        assert_eq!(log.first_index(), Some(u64::MAX - 1));
        assert_eq!(log.last_index(), Some(u64::MAX));
        assert_eq!(log.read(u64::MAX - 1, 10, usize::MAX)?, last);
        assert_eq!(log.read(u64::MAX, 1, usize::MAX)?, last[1..]);
        assert_eq!(log.find_by_timestamp(2), Some(u64::MAX));
        Ok(())
    };
    let (log, _) = open(dir.path(), small_config())?;
    log.append(&last)?;
    log.sync()?;
    check(&log)?;
    drop(log);
    let (log, _) = open(dir.path(), small_config())?;
    check(&log)
}

#[test]
fn a_timestamp_lookup_can_pass_the_largest_index() -> TestResult {
    // A lookup that steps over the frame at index u64::MAX (older than the timestamp asked for)
    // must not compute u64::MAX + 1.
    let dir = tempfile::tempdir()?;
    let (log, _) = open(dir.path(), small_config())?;
    log.append(&[batch(u64::MAX - 1, 5, 10), batch(u64::MAX, 1, 10)])?;
    log.purge_upto(u64::MAX - 1)?;
    assert_eq!(log.try_find_by_timestamp(3)?, None);
    assert_eq!(log.try_find_by_timestamp(1)?, Some(u64::MAX));
    Ok(())
}

/// Bytes of `path` in the page cache, from util-linux's `fincore`; `None` where it is missing
/// or where the file lives on tmpfs (whose pages are the file: advice cannot drop them).
fn cached_bytes(path: &Path) -> Option<u64> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    // `f_type` is i64 on 64-bit Linux but narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    let on_tmpfs = rustix::fs::statfs(path).is_ok_and(|fs| i64::from(fs.f_type) == TMPFS_MAGIC);
    if on_tmpfs {
        return None;
    }
    let output = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8(output.stdout).ok()?.trim().parse().ok()
}

#[test]
fn synced_data_behind_the_kept_tail_leaves_the_page_cache() -> TestResult {
    const MIB: u64 = 1024 * 1024;
    let dir = tempfile::tempdir()?;
    let config = LogConfig {
        segment_max_bytes: 8 * MIB,
        page_cache_keep_bytes: MIB,
        ..LogConfig::default()
    };
    let (log, _) = open(dir.path(), config)?;
    let all = batches(1, 192, 64 * 1024);
    for batch in &all {
        log.append(std::slice::from_ref(batch))?;
        log.sync()?;
    }
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2, "12 MiB in 8 MiB segments: one roll");
    match (cached_bytes(&files[0]), cached_bytes(&files[1])) {
        (Some(sealed), Some(active)) => {
            // The sealed segment is dropped whole (all but a last partial page); the active
            // one keeps the newest 1 MiB plus at most one 1 MiB drop step.
            assert!(
                sealed <= 4096,
                "sealed segment: {sealed} bytes still cached"
            );
            assert!(
                active <= 2 * MIB + 4096,
                "active segment: {active} of {} bytes cached",
                file_len(&files[1])
            );
            assert!(
                active >= MIB / 2,
                "the newest data stays cached: {active} bytes"
            );
        }
        _ => eprintln!(
            "skipping the page cache check: util-linux `fincore` is missing or the temp dir is tmpfs"
        ),
    }
    // Everything reads back, from memory or from disk.
    assert_eq!(read_all(&log)?, all);
    Ok(())
}
