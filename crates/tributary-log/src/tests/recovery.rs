//! Recovery at open: torn tails, zero-filled tails, stale frames, corruption, versions, indexes.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;

use super::*;
use crate::frame::encode_frame;
use crate::{LogError, TailCause, SEGMENT_HEADER_LEN};

/// 100-byte payloads make 130-byte frames: 7 per 1024-byte segment.
const PAYLOAD: usize = 100;
const FRAME: u64 = 130;

fn frame_offset(nth_in_segment: u64) -> u64 {
    SEGMENT_HEADER_LEN + nth_in_segment * FRAME
}

fn write_log(dir: &Path, last: u64) -> Result<Vec<Batch>, LogError> {
    let (log, _) = open(dir, small_config())?;
    let all = batches(1, last, PAYLOAD);
    for batch in &all {
        log.append(std::slice::from_ref(batch))?;
    }
    log.sync()?;
    Ok(all)
}

fn flip_byte(path: &Path, offset: u64) -> std::io::Result<()> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, offset)?;
    b[0] ^= 0x20;
    file.write_all_at(&b, offset)
}

fn append_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    OpenOptions::new().append(true).open(path)?.write_all(bytes)
}

#[test]
fn clean_reopen_keeps_everything() -> TestResult {
    let dir = tempfile::tempdir()?;
    let written = write_log(dir.path(), 20)?;
    let (log, report) = open(dir.path(), small_config())?;
    assert_eq!(report.segments_opened, 3);
    assert!(report.truncated_tails.is_empty(), "{report:?}");
    assert!(report.index_files_rebuilt.is_empty(), "{report:?}");
    assert_eq!((report.first_index, report.last_index), (Some(1), Some(20)));
    assert_eq!(read_all(&log)?, written);
    assert_eq!(log.durable_index(), Some(20));
    assert_eq!(log.last_timestamp_ms(), Some(20_000));
    assert_eq!(
        index_files(dir.path()).len(),
        2,
        "one .idx per sealed segment"
    );
    Ok(())
}

#[test]
fn torn_final_frame_is_truncated_and_reported() -> TestResult {
    // Cut inside the payload, inside the frame header, and inside the length/CRC prefix.
    for cut_into_frame in [FRAME - 50, 20, 5] {
        let dir = tempfile::tempdir()?;
        let written = write_log(dir.path(), 5)?;
        let seg = active_segment(dir.path()).ok_or("no segment")?;
        let torn_at = frame_offset(4);
        OpenOptions::new()
            .write(true)
            .open(&seg)?
            .set_len(torn_at + cut_into_frame)?;

        let (log, report) = open(dir.path(), small_config())?;
        assert_eq!(report.truncated_tails.len(), 1, "{report:?}");
        let tail = &report.truncated_tails[0];
        assert_eq!(tail.segment, seg);
        assert_eq!(tail.offset, torn_at);
        assert_eq!(tail.bytes, cut_into_frame);
        assert_eq!(tail.cause, TailCause::IncompleteFrame);
        assert_eq!(log.last_index(), Some(4));
        assert_eq!(read_all(&log)?, written[..4]);
        assert_eq!(file_len(&seg), torn_at);
        // The log continues where the torn frame was.
        log.append(&[batch(5, 5, 10)])?;
        assert_eq!(log.read(5, 1, usize::MAX)?, vec![batch(5, 5, 10)]);
    }
    Ok(())
}

#[test]
fn zero_filled_tail_is_truncated_and_reported() -> TestResult {
    let dir = tempfile::tempdir()?;
    let written = write_log(dir.path(), 3)?;
    let seg = active_segment(dir.path()).ok_or("no segment")?;
    append_bytes(&seg, &[0u8; 4096])?;

    let (log, report) = open(dir.path(), small_config())?;
    assert_eq!(report.truncated_tails.len(), 1, "{report:?}");
    let tail = &report.truncated_tails[0];
    assert_eq!(
        (tail.offset, tail.bytes, &tail.cause),
        (frame_offset(3), 4096, &TailCause::ZeroFilled)
    );
    assert_eq!(read_all(&log)?, written);
    assert_eq!(report.truncated_bytes(), 4096);
    Ok(())
}

#[test]
fn short_zero_tail_is_zero_filled_not_corruption() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_log(dir.path(), 3)?;
    let seg = active_segment(dir.path()).ok_or("no segment")?;
    append_bytes(&seg, &[0u8; 6])?;
    let (log, report) = open(dir.path(), small_config())?;
    assert_eq!(report.truncated_tails[0].cause, TailCause::ZeroFilled);
    assert_eq!(log.last_index(), Some(3));
    Ok(())
}

#[test]
fn stale_frames_after_the_valid_log_are_dropped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let written = write_log(dir.path(), 3)?;
    let seg = active_segment(dir.path()).ok_or("no segment")?;
    // CRC-valid frames whose indexes do not follow 3 (as if left over from before a truncation).
    let mut stale = Vec::new();
    encode_frame(&batch(7, 0, 10), &mut stale);
    encode_frame(&batch(8, 0, 10), &mut stale);
    append_bytes(&seg, &stale)?;

    let (log, report) = open(dir.path(), small_config())?;
    assert_eq!(
        report.truncated_tails[0].cause,
        TailCause::StaleFrames {
            first_stale_index: 7,
            frames: 2
        }
    );
    assert_eq!(report.truncated_tails[0].bytes, stale.len() as u64);
    assert_eq!(report.stale_frames_dropped(), 2);
    assert_eq!(read_all(&log)?, written);
    Ok(())
}

#[test]
fn crc_mismatch_in_the_active_segment_fails_open() -> TestResult {
    // A complete frame with a bad CRC is not a torn write: open must refuse, wherever it is.
    for nth in [2, 4] {
        let dir = tempfile::tempdir()?;
        write_log(dir.path(), 5)?;
        let seg = active_segment(dir.path()).ok_or("no segment")?;
        flip_byte(&seg, frame_offset(nth) + 40)?;
        match open(dir.path(), small_config()) {
            Err(LogError::Corruption {
                segment,
                offset,
                detail,
            }) => {
                assert_eq!(segment, seg);
                assert_eq!(offset, frame_offset(nth));
                assert!(detail.contains("crc mismatch"), "{detail}");
            }
            Err(other) => return Err(format!("expected corruption, got {other}").into()),
            Ok(_) => return Err("open accepted a corrupt active segment".into()),
        }
        // Nothing was truncated: the operator still has the data.
        assert_eq!(file_len(&seg), frame_offset(5));
    }
    Ok(())
}

#[test]
fn non_zero_garbage_with_a_bad_length_fails_open() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_log(dir.path(), 3)?;
    let seg = active_segment(dir.path()).ok_or("no segment")?;
    append_bytes(&seg, &[0xff; 64])?;
    assert!(matches!(
        open(dir.path(), small_config()),
        Err(LogError::Corruption { offset, .. }) if offset == frame_offset(3)
    ));
    Ok(())
}

#[test]
fn crc_mismatch_in_a_sealed_segment_is_reported_on_read() -> TestResult {
    let dir = tempfile::tempdir()?;
    let written = write_log(dir.path(), 20)?;
    let first_segment = segment_files(dir.path())[0].clone();
    flip_byte(&first_segment, frame_offset(1) + 77)?;

    let (log, report) = open(dir.path(), small_config())?;
    assert!(report.truncated_tails.is_empty());
    assert_eq!(log.read(1, 1, usize::MAX)?, written[..1]);
    for (from, max) in [(2, 1), (1, 100)] {
        match log.read(from, max, usize::MAX) {
            Err(LogError::Corruption {
                segment,
                offset,
                detail,
            }) => {
                assert_eq!(segment, first_segment);
                assert_eq!(offset, frame_offset(1));
                assert!(detail.contains("crc mismatch"), "{detail}");
            }
            other => return Err(format!("expected corruption, got {other:?}").into()),
        }
    }
    assert_eq!(log.read(8, 100, usize::MAX)?, written[7..]);
    Ok(())
}

#[test]
fn unsupported_segment_version_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_log(dir.path(), 3)?;
    let seg = active_segment(dir.path()).ok_or("no segment")?;
    OpenOptions::new()
        .write(true)
        .open(&seg)?
        .write_all_at(&2u16.to_le_bytes(), 8)?;
    match open(dir.path(), small_config()) {
        Err(LogError::UnsupportedVersion {
            path,
            found,
            supported,
        }) => assert_eq!((path, found, supported), (seg, 2, 1)),
        other => return Err(format!("expected UnsupportedVersion, got {:?}", other.err()).into()),
    }
    Ok(())
}

#[test]
fn missing_or_damaged_index_files_are_rebuilt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let written = write_log(dir.path(), 20)?;
    let idx = index_files(dir.path());
    assert_eq!(idx.len(), 2);
    fs::remove_file(&idx[0])?;
    flip_byte(&idx[1], 30)?;

    let (log, report) = open(dir.path(), small_config())?;
    let rebuilt = &report.index_files_rebuilt;
    assert_eq!(rebuilt.len(), 2, "{report:?}");
    assert_eq!(rebuilt[0].reason, "missing");
    assert!(rebuilt[1].reason.contains("crc mismatch"), "{rebuilt:?}");
    assert_eq!(read_all(&log)?, written);
    assert_eq!(log.find_by_timestamp(9_500), Some(10));
    drop(log);

    let (_, report) = open(dir.path(), small_config())?;
    assert!(report.index_files_rebuilt.is_empty(), "{report:?}");
    Ok(())
}

#[test]
fn stale_index_file_is_rebuilt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let written = write_log(dir.path(), 20)?;
    let idx = index_files(dir.path());
    // Swap the two index files: both valid, both describing the wrong segment.
    let (a, b) = (fs::read(&idx[0])?, fs::read(&idx[1])?);
    fs::write(&idx[0], b)?;
    fs::write(&idx[1], a)?;
    let (log, report) = open(dir.path(), small_config())?;
    assert_eq!(report.index_files_rebuilt.len(), 2, "{report:?}");
    assert_eq!(read_all(&log)?, written);
    Ok(())
}

#[test]
fn interrupted_segment_creation_is_removed() -> TestResult {
    for contents in [vec![7u8; 10], vec![0u8; SEGMENT_HEADER_LEN as usize]] {
        let dir = tempfile::tempdir()?;
        let written = write_log(dir.path(), 5)?;
        let torn = dir.path().join(format!("{:020}.seg", 6));
        fs::write(&torn, contents)?;
        let (log, report) = open(dir.path(), small_config())?;
        assert_eq!(report.files_removed, vec![torn.clone()]);
        assert!(!torn.exists());
        assert_eq!(read_all(&log)?, written);
        log.append(&[batch(6, 0, 1)])?;
    }
    Ok(())
}

#[test]
fn a_gap_between_segments_is_corruption() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_log(dir.path(), 20)?;
    let segments = segment_files(dir.path());
    fs::remove_file(&segments[1])?;
    match open(dir.path(), small_config()) {
        Err(LogError::Corruption {
            segment, detail, ..
        }) => {
            assert_eq!(segment, segments[2]);
            assert!(detail.contains("does not follow"), "{detail}");
        }
        other => return Err(format!("expected corruption, got {:?}", other.err()).into()),
    }
    Ok(())
}

#[test]
fn leftover_tmp_files_are_removed() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_log(dir.path(), 2)?;
    let tmp = dir.path().join("purge_point.tmp");
    fs::write(&tmp, b"half")?;
    let (_, report) = open(dir.path(), small_config())?;
    assert_eq!(report.files_removed, vec![tmp.clone()]);
    assert!(!tmp.exists());
    Ok(())
}

#[test]
fn open_creates_missing_directories_and_refuses_bad_config() -> TestResult {
    let dir = tempfile::tempdir()?;
    let nested = dir.path().join("a/b/shard-7");
    let (log, report) = open(&nested, small_config())?;
    assert!(nested.is_dir());
    assert_eq!(report.segments_opened, 0);
    assert_eq!((log.first_index(), log.last_index()), (None, None));
    let bad = LogConfig {
        index_interval_bytes: 0,
        ..small_config()
    };
    assert!(matches!(
        Log::open(&nested, bad),
        Err(LogError::InvalidConfig(_))
    ));
    Ok(())
}

#[test]
fn a_frame_after_the_largest_index_is_a_stale_tail() -> TestResult {
    // Regression (fuzz target `log_recovery`): a frame following one at index u64::MAX made
    // recovery compute the next index as u64::MAX + 1 (a panic in debug builds).
    let dir = tempfile::tempdir()?;
    let written = vec![batch(u64::MAX - 1, 1, 10), batch(u64::MAX, 2, 10)];
    let (log, _) = open(dir.path(), small_config())?;
    log.append(&written)?;
    log.sync()?;
    drop(log);
    let mut stale = Vec::new();
    encode_frame(&batch(0, 3, 10), &mut stale);
    let seg = active_segment(dir.path()).ok_or("no segment")?;
    append_bytes(&seg, &stale)?;

    let (log, report) = open(dir.path(), small_config())?;
    assert_eq!(
        report.truncated_tails[0].cause,
        TailCause::StaleFrames {
            first_stale_index: 0,
            frames: 1
        }
    );
    assert_eq!(read_all(&log)?, written);
    Ok(())
}
