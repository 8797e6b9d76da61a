//! Failing fsyncs (injected through `crate::fault`), and scrubbing and repairing flipped bits.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use super::*;
use crate::{LogError, SEGMENT_HEADER_LEN};

/// 100-byte payloads make 130-byte frames: 7 per 1024-byte segment.
const PAYLOAD: usize = 100;
const FRAME: u64 = 130;

fn write_log(dir: &Path, last: u64) -> Result<(Log, Vec<Batch>), LogError> {
    write_log_with(dir, last, small_config())
}

fn write_log_with(dir: &Path, last: u64, config: LogConfig) -> Result<(Log, Vec<Batch>), LogError> {
    let (log, _) = open(dir, config)?;
    let all = batches(1, last, PAYLOAD);
    for batch in &all {
        log.append(std::slice::from_ref(batch))?;
    }
    log.sync()?;
    Ok((log, all))
}

fn flip_byte(path: &Path, offset: u64) -> std::io::Result<()> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, offset)?;
    b[0] ^= 0x10;
    file.write_all_at(&b, offset)
}

fn read_all(log: &Log) -> Result<Vec<Batch>, LogError> {
    log.read(1, usize::MAX, usize::MAX)
}

#[test]
fn a_failed_fsync_poisons_the_log_and_reopen_drops_what_it_did_not_persist() -> TestResult {
    let dir = tempfile::tempdir()?;
    let trigger = dir.path().join("fail-fsync");
    crate::fault::fail_fsync_while_exists(trigger.clone());
    let log_dir = dir.path().join("log");
    // One segment: the appends below must not roll (sealing fsyncs too).
    let one_segment = LogConfig {
        segment_max_bytes: 1 << 20,
        ..small_config()
    };
    let (log, written) = write_log_with(&log_dir, 10, one_segment.clone())?;
    assert_eq!(log.durable_index(), Some(10));

    fs::write(&trigger, b"")?;
    log.append(&batches(11, 15, PAYLOAD))?;
    match log.sync() {
        Err(LogError::Io { source, .. }) => {
            assert!(source.to_string().contains("injected"), "{source}")
        }
        other => return Err(format!("expected an fsync error, got {other:?}").into()),
    }
    // Fail-stop: nothing more is accepted, and the durable index did not move.
    assert!(matches!(
        log.append(&batches(16, 16, PAYLOAD)),
        Err(LogError::Poisoned(_))
    ));
    assert!(matches!(log.sync(), Err(LogError::Poisoned(_))));
    assert_eq!(log.durable_index(), Some(10));
    assert!(log_dir.join("unsynced_after").exists());

    // The disk heals; a reopen keeps only what was durable before the failure, even though
    // batches 11..=15 are still readable in the page cache.
    fs::remove_file(&trigger)?;
    drop(log);
    let (log, report) = open(&log_dir, one_segment.clone())?;
    assert_eq!(report.dropped_after_failed_sync, 5);
    assert_eq!(log.last_index(), Some(10));
    assert_eq!(read_all(&log)?, written);
    assert!(!log_dir.join("unsynced_after").exists());
    log.append(&batches(11, 12, PAYLOAD))?;
    assert_eq!(log.sync()?, Some(12));

    // A later clean reopen drops nothing.
    drop(log);
    let (log, report) = open(&log_dir, one_segment)?;
    assert_eq!(report.dropped_after_failed_sync, 0);
    assert_eq!(log.last_index(), Some(12));
    Ok(())
}

#[test]
fn a_scrub_finds_a_flipped_payload_bit_and_a_replica_copy_repairs_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, written) = write_log(dir.path(), 20)?;
    assert_eq!(log.first_corrupt_index(1)?, None);
    // Batch 10 is the third frame of the second (sealed) segment.
    let second = segment_files(dir.path())[1].clone();
    flip_byte(&second, SEGMENT_HEADER_LEN + 2 * FRAME + 60)?;

    assert!(matches!(read_all(&log), Err(LogError::Corruption { .. })));
    assert_eq!(log.first_corrupt_index(1)?, Some(10));
    assert_eq!(log.first_corrupt_index(11)?, None);

    // A copy of another size cannot fill the hole.
    let mut wrong = written[9].clone();
    wrong.payload = Bytes::from(vec![7u8; PAYLOAD + 1]);
    assert!(matches!(
        log.repair(&wrong),
        Err(LogError::RepairRefused { index: 10, .. })
    ));
    assert!(log.repair(&written[9])?);
    assert_eq!(log.first_corrupt_index(1)?, None);
    assert_eq!(read_all(&log)?, written);
    // Repairing a good frame is a no-op; a valid frame is never overwritten by another one.
    assert!(!log.repair(&written[9])?);
    let mut other = written[9].clone();
    other.timestamp_ms += 1;
    assert!(matches!(
        log.repair(&other),
        Err(LogError::RepairRefused { .. })
    ));

    // The repair is on disk.
    drop(log);
    let (log, _) = open(dir.path(), small_config())?;
    assert_eq!(read_all(&log)?, written);
    assert_eq!(log.first_corrupt_index(1)?, None);
    Ok(())
}

#[test]
fn a_flipped_length_field_is_repaired_and_frames_are_repaired_lowest_first() -> TestResult {
    let dir = tempfile::tempdir()?;
    // Only each segment's first frame is indexed, so batch 5 is found by walking over 3.
    let sparse = LogConfig {
        index_interval_bytes: 1 << 20,
        ..small_config()
    };
    let (log, written) = write_log_with(dir.path(), 20, sparse)?;
    let first = segment_files(dir.path())[0].clone();
    // Batch 3's length field (a frame that can no longer be stepped over) and batch 5's payload.
    flip_byte(&first, SEGMENT_HEADER_LEN + 2 * FRAME)?;
    flip_byte(&first, SEGMENT_HEADER_LEN + 4 * FRAME + 40)?;

    assert_eq!(log.first_corrupt_index(1)?, Some(3));
    assert!(matches!(
        log.repair(&written[4]),
        Err(LogError::RepairRefused { index: 5, .. })
    ));
    assert!(log.repair(&written[2])?);
    assert_eq!(log.first_corrupt_index(1)?, Some(5));
    assert!(log.repair(&written[4])?);
    assert_eq!(log.first_corrupt_index(1)?, None);
    assert_eq!(read_all(&log)?, written);
    Ok(())
}

#[test]
fn the_last_frame_of_the_active_segment_is_repaired_in_place() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (log, written) = write_log(dir.path(), 10)?;
    let active = active_segment(dir.path()).ok_or("no segment")?;
    // 10 = 7 in the first segment + the third of the active one.
    flip_byte(&active, SEGMENT_HEADER_LEN + 2 * FRAME + 50)?;
    assert_eq!(log.first_corrupt_index(1)?, Some(10));
    assert!(log.repair(&written[9])?);
    assert_eq!(read_all(&log)?, written);
    // Appends continue after the repaired frame.
    log.append(&batches(11, 11, PAYLOAD))?;
    assert_eq!(log.sync()?, Some(11));
    Ok(())
}
