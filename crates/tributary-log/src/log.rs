//! The shard log: appends, group-committable syncs, lock-free reads, truncation and purging over
//! a directory of segment files.
//!
//! Concurrency: one `RwLock` guards the in-memory view (segments, sizes, sparse indexes, purge
//! point, durable index). Appends write under the write lock (they must be ordered anyway). Reads
//! and `sync` only take the lock to snapshot what they need (an `Arc<File>`, offsets, the target
//! index) and do their I/O without it, so a long fsync never stalls appends or reads.
//!
//! Lock-free reads race with truncation: bytes being read can be cut or overwritten. Every
//! truncation bumps `truncations` before touching a file; a reader compares it before and after
//! its preads and retries if it moved, so it never reports a concurrent truncation as corruption
//! and never returns a mix of old and new batches.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{error, warn};

use crate::config::LogConfig;
use crate::drop_behind;
use crate::error::LogError;
use crate::frame::{encode_frame, Batch, FRAME_HEADER_LEN, FRAME_OVERHEAD};
use crate::purge_point;
use crate::recovery::{
    delete_index_file, delete_segment_files, frame_error, recover, RecoveryReport,
};
use crate::scan::{FrameReader, Peek};
use crate::segment::{sync_dir, Segment, SEGMENT_HEADER_LEN};
use crate::unsynced_marker;

/// Bytes a scrub reads per step.
const SCRUB_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Smallest `pread` of a read or header scan.
const SMALL_READ_AHEAD: usize = 4096;

/// The log of one shard: opaque batches under consecutive `u64` indexes, stored in segment files.
///
/// `Send + Sync`; every method takes `&self`, so share it as `Arc<Log>`.
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    state: RwLock<State>,
    /// Bumped under the write lock, before any file is changed, by every truncation.
    truncations: AtomicU64,
    /// Serialises `purge_upto` and holds the purge point last persisted.
    purge: Mutex<Option<u64>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.read_state();
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("segments", &st.segments.len())
            .field("first_index", &st.first_index())
            .field("last_index", &st.last_index())
            .field("durable_index", &st.durable)
            .field("purge_point", &st.purge_point)
            .field("poisoned", &st.poisoned)
            .finish()
    }
}

struct State {
    /// Ordered by base index. The last one is the active segment, unless a truncation at a
    /// segment boundary left a sealed one last; the next append then starts a new segment.
    segments: Vec<Segment>,
    /// Batches up to here are logically gone.
    purge_point: Option<u64>,
    /// Every batch up to here is on stable storage.
    durable: Option<u64>,
    /// Set when a failure left memory and disk possibly out of step; writes are refused.
    poisoned: Option<String>,
}

/// The part of a segment a lock-free reader needs.
struct SegmentView {
    file: Arc<File>,
    path: Arc<Path>,
    /// Offset of the first frame to look at, and its index.
    start: u64,
    start_index: u64,
    /// End of the accepted frames when the view was taken.
    end: u64,
    last_index: u64,
}

impl State {
    fn check_poisoned(&self) -> Result<(), LogError> {
        match &self.poisoned {
            Some(reason) => Err(LogError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    fn poison(&mut self, error: &LogError) {
        error!(%error, "log poisoned: refusing writes until it is reopened");
        if self.poisoned.is_none() {
            self.poisoned = Some(error.to_string());
        }
    }

    /// Last index on disk, purged or not.
    fn physical_last(&self) -> Option<u64> {
        self.segments.iter().rev().find_map(|s| s.last_index)
    }

    fn first_index(&self) -> Option<u64> {
        let last = self.physical_last()?;
        let physical_first = self.segments.iter().find(|s| s.has_frames())?.base;
        let first = match self.purge_point {
            Some(p) => physical_first.max(p.saturating_add(1)),
            None => physical_first,
        };
        (first <= last).then_some(first)
    }

    fn last_index(&self) -> Option<u64> {
        self.first_index()?;
        self.physical_last()
    }

    /// Position in `segments` of the segment holding `index`.
    fn segment_for(&self, index: u64) -> Option<usize> {
        let i = self
            .segments
            .partition_point(|s| s.base <= index)
            .checked_sub(1)?;
        self.segments[i]
            .last_index
            .is_some_and(|l| index <= l)
            .then_some(i)
    }

    /// Removes (from memory) the sealed segments wholly at or below the purge point. Never the
    /// active segment. The caller deletes the files.
    fn take_purgeable(&mut self) -> Vec<Segment> {
        let Some(purged) = self.purge_point else {
            return Vec::new();
        };
        let n = self
            .segments
            .iter()
            .take(self.segments.len().saturating_sub(1))
            .take_while(|s| s.sealed && s.last_index.is_some_and(|l| l <= purged))
            .count();
        let removed = self.segments.drain(..n).collect();
        // `durable` never points past what is on disk.
        self.durable = self.durable.min(self.physical_last());
        removed
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

impl Log {
    /// Opens (creating if missing) the log in `dir`, recovering from whatever a crash left; see
    /// the `recovery` module for what is repaired and what is refused.
    pub fn open(dir: &Path, config: LogConfig) -> Result<(Log, RecoveryReport), LogError> {
        config.validate()?;
        let recovered = recover(dir, &config)?;
        let mut state = State {
            segments: recovered.segments,
            purge_point: recovered.purge_point,
            durable: None,
            poisoned: None,
        };
        // recover() fsynced the active segment, so everything on disk is durable now.
        state.durable = state.physical_last();
        // What an earlier process wrote is left to the kernel: advising a whole log away on
        // the first sync would stall that flush window (and every acknowledgement in it).
        drop_behind::adopt(&mut state.segments);
        let mut report = recovered.report;
        let log = Log {
            dir: dir.to_path_buf(),
            config,
            state: RwLock::new(state),
            truncations: AtomicU64::new(0),
            purge: Mutex::new(recovered.purge_point),
        };
        if let Some(durable) = unsynced_marker::read(dir)? {
            // An earlier fsync failed: only what was durable before it can be trusted.
            let before = log.batch_count();
            log.truncate_after(durable)?;
            unsynced_marker::remove(dir)?;
            report.dropped_after_failed_sync = before - log.batch_count();
            warn!(
                dir = %dir.display(),
                ?durable,
                dropped = report.dropped_after_failed_sync,
                "an earlier fsync failed: dropped the batches written after the last good sync"
            );
        }
        report.first_index = log.first_index();
        report.last_index = log.last_index();
        Ok((log, report))
    }

    /// Refuses writes from now on and leaves a marker naming the last index known durable, so
    /// the next open drops everything after it. After a failed fsync the kernel may have marked
    /// the dirty pages clean without writing them: the page cache (which outlives this process)
    /// would show those frames, and a later fsync would succeed, so without the marker a reopen
    /// would count never-persisted frames as durable.
    fn poison(&self, st: &mut State, error: &LogError) {
        st.poison(error);
        if let Err(marker_error) = unsynced_marker::write(&self.dir, st.durable) {
            error!(%marker_error, "cannot leave the unsynced-tail marker; a reopen in this boot may keep frames that never reached the disk");
        }
    }

    /// How many batches are readable.
    fn batch_count(&self) -> u64 {
        match (self.first_index(), self.last_index()) {
            (Some(first), Some(last)) => last - first + 1,
            _ => 0,
        }
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .expect("log state lock poisoned: a thread panicked while changing the log")
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .expect("log state lock poisoned: a thread panicked while changing the log")
    }

    fn purge_guard(&self) -> MutexGuard<'_, Option<u64>> {
        self.purge
            .lock()
            .expect("purge lock poisoned: a thread panicked while purging")
    }

    /// Appends `batches`, whose indexes must be consecutive and start at `last_index() + 1` (for
    /// an empty log: at any index above the purge point). All frames go to the OS in one write;
    /// nothing is fsynced (call [`Log::sync`]). May roll to a new segment first (by size or age).
    pub fn append(&self, batches: &[Batch]) -> Result<(), LogError> {
        let Some(first) = batches.first() else {
            return Ok(());
        };
        let limit = self.config.max_batch_bytes;
        let mut total = 0usize;
        for (i, batch) in batches.iter().enumerate() {
            let expected = first.index.checked_add(i as u64);
            if expected != Some(batch.index) {
                return Err(LogError::NonConsecutive {
                    expected: expected.unwrap_or(u64::MAX),
                    got: batch.index,
                });
            }
            if batch.payload.len() > limit as usize {
                return Err(LogError::TooLarge {
                    index: batch.index,
                    bytes: batch.payload.len(),
                    limit,
                });
            }
            total += batch.encoded_len();
        }
        // Encode (copy + CRC) before taking the lock.
        let mut buf = Vec::with_capacity(total);
        for batch in batches {
            encode_frame(batch, &mut buf);
        }
        let now_ms = unix_ms(SystemTime::now());

        let mut guard = self.write_state();
        let st = &mut *guard;
        st.check_poisoned()?;
        match st.last_index() {
            Some(last) if last.checked_add(1) != Some(first.index) => {
                return Err(LogError::NonConsecutive {
                    expected: last.saturating_add(1),
                    got: first.index,
                });
            }
            Some(_) => {}
            None => {
                let min = st.purge_point.map_or(0, |p| p.saturating_add(1));
                if first.index < min {
                    return Err(LogError::NonConsecutive {
                        expected: min,
                        got: first.index,
                    });
                }
            }
        }
        self.prepare_active(st, first.index, buf.len() as u64, now_ms)?;
        let active = st
            .segments
            .last_mut()
            .expect("invariant: prepare_active leaves an active segment");
        let offset = active.size;
        if let Err(e) = active.file.write_all_at(&buf, offset) {
            let error = LogError::io("write frames", &active.path, e);
            // Cut the partial write so a later append (or recovery) does not meet garbage.
            if let Err(e) = active.file.set_len(offset) {
                let rollback = LogError::io("truncate partial write", &active.path, e);
                self.poison(st, &rollback);
            }
            warn!(%error, "append failed");
            return Err(error);
        }
        let mut pos = offset;
        for batch in batches {
            let len = batch.encoded_len() as u64;
            active.record_frame(
                batch.index,
                pos,
                len,
                batch.timestamp_ms,
                self.config.index_interval_bytes,
            );
            pos += len;
        }
        Ok(())
    }

    /// Makes sure the last segment can take `incoming` bytes starting with batch `first`, rolling
    /// if it is sealed, full, too old, or does not end just before `first`.
    fn prepare_active(
        &self,
        st: &mut State,
        first: u64,
        incoming: u64,
        now_ms: i64,
    ) -> Result<(), LogError> {
        let roll = match st.segments.last() {
            None => true,
            Some(active) if active.sealed => true,
            Some(active) if !active.has_frames() => active.base != first,
            Some(active) => {
                active.next_index() != Some(first)
                    || active.size + incoming > self.config.segment_max_bytes
                    || self.is_aged(active, now_ms)
            }
        };
        if roll {
            self.roll(st, first, now_ms)?;
        }
        Ok(())
    }

    /// Header scans step over about one index interval of frames; reading a little more than
    /// that per `pread` avoids fetching large payloads they skip.
    fn header_scan_read_ahead(&self) -> usize {
        usize::try_from(self.config.index_interval_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(SMALL_READ_AHEAD)
    }

    fn is_aged(&self, segment: &Segment, now_ms: i64) -> bool {
        let max_age = i64::try_from(self.config.segment_max_age.as_millis()).unwrap_or(i64::MAX);
        now_ms.saturating_sub(segment.created_ms) >= max_age
    }

    /// Seals the active segment (or drops it if it holds nothing) and starts a new one at `base`.
    /// A failure part way leaves memory and disk out of step, so it poisons the log.
    fn roll(&self, st: &mut State, base: u64, now_ms: i64) -> Result<(), LogError> {
        if let Err(e) = self.roll_files(st, base, now_ms) {
            self.poison(st, &e);
            return Err(e);
        }
        // The old active segment may be wholly purged (the log was emptied by a purge).
        for segment in st.take_purgeable() {
            if let Err(error) = delete_segment_files(&self.dir, segment.base) {
                warn!(%error, "could not delete a purged segment; it is removed at the next open");
            }
        }
        Ok(())
    }

    fn roll_files(&self, st: &mut State, base: u64, now_ms: i64) -> Result<(), LogError> {
        // The new segment does not continue the old data when a purge emptied the log; the old
        // data is then all purged and about to be deleted, so nothing of it counts as durable.
        let continues = st
            .physical_last()
            .is_none_or(|last| last.checked_add(1) == Some(base));
        if let Some(active) = st.segments.last_mut() {
            if active.has_frames() {
                if !active.sealed {
                    active.seal(&self.dir)?;
                }
                // Every earlier segment was sealed (fsynced) too.
                st.durable = st.durable.max(active.last_index);
            } else if let Some(empty) = st.segments.pop() {
                delete_segment_files(&self.dir, empty.base)?;
            }
        }
        if !continues {
            st.durable = None;
        }
        let segment = Segment::create(&self.dir, base, now_ms)?;
        st.segments.push(segment);
        sync_dir(&self.dir)
    }

    /// fdatasyncs everything appended so far and returns the durable last index.
    ///
    /// The lock is held only to pick the file and the target index; the fsync runs without it,
    /// so appends (and reads) continue meanwhile, and concurrent callers form a group commit.
    pub fn sync(&self) -> Result<Option<u64>, LogError> {
        let (file, path, target, epoch, synced) = {
            let st = self.read_state();
            st.check_poisoned()?;
            let Some(target) = st.physical_last() else {
                return Ok(st.durable);
            };
            if st.durable.is_some_and(|d| d >= target) {
                return Ok(st.durable);
            }
            let active = st
                .segments
                .last()
                .expect("invariant: a log with a last index has segments");
            (
                active.file.clone(),
                active.path.clone(),
                target,
                self.truncations.load(Ordering::Acquire),
                (active.base, active.size),
            )
        };
        // Only the active segment can hold unsynced data: segments are fsynced when sealed.
        if let Err(e) = crate::fault::sync_data(&file) {
            // After a failed fsync the kernel may have dropped the dirty pages: nothing written
            // since the last good sync can be trusted, so stop accepting writes.
            let error = LogError::io("fdatasync active segment", &path, e);
            self.poison(&mut self.write_state(), &error);
            return Err(error);
        }
        let mut st = self.write_state();
        let mut drops = Vec::new();
        // A truncation meanwhile fsynced what remains and set `durable` itself.
        if self.truncations.load(Ordering::Acquire) == epoch {
            if st.durable.is_none_or(|d| d < target) {
                st.durable = Some(target);
            }
            drops = drop_behind::plan(&mut st.segments, synced, self.config.page_cache_keep_bytes);
        }
        let durable = st.durable;
        drop(st);
        drop_behind::apply(drops);
        Ok(durable)
    }

    /// The highest index known to be on stable storage (never above the last index on disk).
    pub fn durable_index(&self) -> Option<u64> {
        self.read_state().durable
    }

    /// Reads consecutive batches starting at `from`: at most `max_batches`, and no more payload
    /// bytes than `max_bytes` except that the first batch is always returned whole.
    ///
    /// Empty if `from` is past the last index; [`LogError::Purged`] if below the first. Every
    /// frame's CRC is checked; a mismatch is [`LogError::Corruption`], never data.
    pub fn read(
        &self,
        from: u64,
        max_batches: usize,
        max_bytes: usize,
    ) -> Result<Vec<Batch>, LogError> {
        loop {
            let (epoch, views) = {
                let st = self.read_state();
                match st.first_index() {
                    Some(first) if from < first => {
                        return Err(LogError::Purged { index: from, first })
                    }
                    None => {
                        return match st.purge_point {
                            Some(p) if from <= p => Err(LogError::Purged {
                                index: from,
                                first: p.saturating_add(1),
                            }),
                            _ => Ok(Vec::new()),
                        }
                    }
                    Some(_) => {}
                }
                if st.physical_last().is_none_or(|last| from > last) || max_batches == 0 {
                    return Ok(Vec::new());
                }
                (
                    self.truncations.load(Ordering::Acquire),
                    read_views(&st, from, max_batches, max_bytes),
                )
            };
            let result = self.read_from_views(&views, from, max_batches, max_bytes);
            if self.truncations.load(Ordering::Acquire) == epoch {
                if let Err(error) = &result {
                    error!(%error, from, "log read failed");
                }
                return result;
            }
            // A truncation ran while we read without the lock: what we read may be cut or mixed.
        }
    }

    fn read_from_views(
        &self,
        views: &[SegmentView],
        from: u64,
        max_batches: usize,
        max_bytes: usize,
    ) -> Result<Vec<Batch>, LogError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for view in views {
            let io = |e| LogError::io("read segment", &view.path, e);
            let mut reader = FrameReader::new(
                &view.file,
                view.start,
                view.end,
                self.config.max_batch_bytes,
            )
            .with_readahead(max_bytes.saturating_add(SMALL_READ_AHEAD));
            // `None` after a frame at index u64::MAX: no frame may follow it.
            let mut expected = Some(view.start_index);
            loop {
                if out.len() >= max_batches {
                    return Ok(out);
                }
                let pos = reader.pos();
                let header = match reader.peek().map_err(io)? {
                    Peek::End => break,
                    Peek::Frame(h) if Some(h.index) == expected => h,
                    Peek::Frame(h) => {
                        let expected = expected.map_or("none".to_owned(), |e| e.to_string());
                        return Err(LogError::corruption(
                            &view.path,
                            pos,
                            format!("frame has index {}, expected {expected}", h.index),
                        ));
                    }
                    Peek::Incomplete => {
                        return Err(LogError::corruption(
                            &view.path,
                            pos,
                            "frame extends past the end of the written data",
                        ))
                    }
                    Peek::BadLength(e) => return Err(frame_error(&view.path, pos, e)),
                };
                expected = header.index.checked_add(1);
                if header.index < from {
                    reader.skip(&header);
                    continue;
                }
                let payload = header.len as usize - FRAME_HEADER_LEN;
                if !out.is_empty() && bytes + payload > max_bytes {
                    return Ok(out);
                }
                let batch = reader
                    .read_frame(&header)
                    .map_err(io)?
                    .map_err(|e| frame_error(&view.path, pos, e))?;
                if batch.index != header.index {
                    // The header was read before the CRC check; the checked one must agree.
                    return Err(LogError::corruption(
                        &view.path,
                        pos,
                        "frame index changed between header and frame read",
                    ));
                }
                bytes += payload;
                out.push(batch);
            }
            if expected != view.last_index.checked_add(1) {
                return Err(LogError::corruption(
                    &view.path,
                    view.end,
                    format!("segment data does not end at index {}", view.last_index),
                ));
            }
        }
        Ok(out)
    }

    /// First readable index (`None` when the log holds no readable batch).
    pub fn first_index(&self) -> Option<u64> {
        self.read_state().first_index()
    }

    /// When the oldest segment file was created (ms since the epoch, this node's clock):
    /// no batch in the log was appended before it. `None` when there is no segment.
    pub fn oldest_segment_created_ms(&self) -> Option<i64> {
        self.read_state().segments.first().map(|s| s.created_ms)
    }

    /// Last index (`None` when the log holds no readable batch).
    pub fn last_index(&self) -> Option<u64> {
        self.read_state().last_index()
    }

    /// Timestamp of the last batch (`None` when the log holds no readable batch).
    pub fn last_timestamp_ms(&self) -> Option<i64> {
        let st = self.read_state();
        st.last_index()?;
        st.segments.iter().rev().find_map(|s| s.last_ts)
    }

    /// The first readable index whose batch timestamp is >= `ts_ms`; `None` if there is none.
    ///
    /// Exact: it uses the running maximum of timestamps, so a producer clock that steps back does
    /// not break the search. If reading frame headers fails, it logs the error and returns a
    /// conservative answer (an index at or before the exact one, so no batch is skipped); use
    /// [`Log::try_find_by_timestamp`] to see the error instead.
    pub fn find_by_timestamp(&self, ts_ms: i64) -> Option<u64> {
        loop {
            let (epoch, first, views) = self.timestamp_views(ts_ms)?;
            let result = self.scan_for_timestamp(&views, first, ts_ms);
            if self.truncations.load(Ordering::Acquire) != epoch {
                continue;
            }
            return match result {
                Ok(found) => found,
                Err(error) => {
                    warn!(%error, ts_ms, "timestamp lookup failed; answering conservatively");
                    views.first().map(|v| v.start_index.max(first))
                }
            };
        }
    }

    /// Like [`Log::find_by_timestamp`], but returns read errors.
    pub fn try_find_by_timestamp(&self, ts_ms: i64) -> Result<Option<u64>, LogError> {
        loop {
            let Some((epoch, first, views)) = self.timestamp_views(ts_ms) else {
                return Ok(None);
            };
            let result = self.scan_for_timestamp(&views, first, ts_ms);
            if self.truncations.load(Ordering::Acquire) == epoch {
                return result;
            }
        }
    }

    /// The (at most two) segment ranges that can hold the answer: the first segment whose max
    /// timestamp reaches `ts` holds it unless all its matching frames are purged, in which case
    /// the next such segment (wholly readable) does.
    fn timestamp_views(&self, ts: i64) -> Option<(u64, u64, Vec<SegmentView>)> {
        let st = self.read_state();
        let first = st.first_index()?;
        let epoch = self.truncations.load(Ordering::Acquire);
        let mut views = Vec::with_capacity(2);
        for segment in &st.segments {
            let (Some(last), Some(max_ts)) = (segment.last_index, segment.max_ts) else {
                continue;
            };
            if last < first || max_ts < ts {
                continue;
            }
            let by_ts = segment.index.floor_by_timestamp(ts);
            let by_first = (segment.base <= first)
                .then(|| segment.index.floor_by_index(first))
                .flatten();
            let start = match (by_ts, by_first) {
                (Some(a), Some(b)) => Some(if a.offset >= b.offset { a } else { b }),
                (a, b) => a.or(b),
            };
            views.push(SegmentView {
                file: segment.file.clone(),
                path: segment.path.clone(),
                start: start.map_or(SEGMENT_HEADER_LEN, |e| e.offset),
                start_index: start.map_or(segment.base, |e| e.index),
                end: segment.size,
                last_index: last,
            });
            if views.len() == 2 {
                break;
            }
        }
        Some((epoch, first, views))
    }

    fn scan_for_timestamp(
        &self,
        views: &[SegmentView],
        first: u64,
        ts: i64,
    ) -> Result<Option<u64>, LogError> {
        for view in views {
            let mut reader = FrameReader::new(
                &view.file,
                view.start,
                view.end,
                self.config.max_batch_bytes,
            )
            .with_readahead(self.header_scan_read_ahead());
            // `None` after a frame at index u64::MAX: no frame may follow it.
            let mut expected = Some(view.start_index);
            loop {
                let pos = reader.pos();
                match reader
                    .peek()
                    .map_err(|e| LogError::io("read segment", &view.path, e))?
                {
                    Peek::End => break,
                    Peek::Frame(h) if Some(h.index) == expected => {
                        if h.index >= first && h.timestamp_ms >= ts {
                            return Ok(Some(h.index));
                        }
                        reader.skip(&h);
                        expected = h.index.checked_add(1);
                    }
                    Peek::Frame(h) => {
                        let expected = expected.map_or("none".to_owned(), |e| e.to_string());
                        return Err(LogError::corruption(
                            &view.path,
                            pos,
                            format!("frame has index {}, expected {expected}", h.index),
                        ));
                    }
                    Peek::Incomplete => {
                        return Err(LogError::corruption(
                            &view.path,
                            pos,
                            "frame extends past the end of the written data",
                        ))
                    }
                    Peek::BadLength(e) => return Err(frame_error(&view.path, pos, e)),
                }
            }
        }
        Ok(None)
    }

    /// The lowest index at or after `from` whose stored frame fails its checks (a scrub), or
    /// `None` when every frame up to the last index verifies. Reads the log like a consumer
    /// would, `SCRUB_CHUNK_BYTES` at a time, so it can run beside appends.
    pub fn first_corrupt_index(&self, from: u64) -> Result<Option<u64>, LogError> {
        let Some(last) = self.last_index() else {
            return Ok(None);
        };
        let mut next = from.max(self.first_index().unwrap_or(from));
        while next <= last {
            match self.read(next, usize::MAX, SCRUB_CHUNK_BYTES) {
                Ok(batches) => match batches.last().and_then(|b| b.index.checked_add(1)) {
                    Some(after) => next = after,
                    None => return Ok(None),
                },
                Err(LogError::Corruption { .. }) => {
                    // A chunk failed: find the first frame that does, one at a time.
                    loop {
                        match self.read(next, 1, usize::MAX) {
                            Ok(batches) if !batches.is_empty() => match next.checked_add(1) {
                                Some(after) => next = after,
                                None => return Ok(None),
                            },
                            Ok(_) => return Ok(None),
                            Err(LogError::Corruption { .. }) => return Ok(Some(next)),
                            Err(other) => return Err(other),
                        }
                    }
                }
                Err(LogError::Purged { first, .. }) => next = first,
                Err(other) => return Err(other),
            }
        }
        Ok(None)
    }

    /// Rewrites the stored frame of `batch.index` with `batch` (a copy of the same entry from
    /// another replica) when the stored frame fails its checks. Returns `false` when the stored
    /// frame verifies and equals `batch` (nothing to repair).
    ///
    /// Refused ([`LogError::RepairRefused`]) when an earlier frame of the segment is corrupt too
    /// (repair the lowest first), when the index is not durable yet, when the stored frame is
    /// valid but different, or when `batch` would not end exactly where the next stored frame
    /// begins: a replacement must fit the hole it fills, byte for byte.
    pub fn repair(&self, batch: &Batch) -> Result<bool, LogError> {
        let mut guard = self.write_state();
        let st = &mut *guard;
        st.check_poisoned()?;
        let index = batch.index;
        let refuse = |why: String| Err(LogError::RepairRefused { index, why });
        if st.durable.is_none_or(|d| index > d) {
            return refuse("the index is not durable on this replica".into());
        }
        let Some(position) = st.segment_for(index) else {
            return refuse("no segment holds this index".into());
        };
        let max_batch_bytes = self.config.max_batch_bytes;
        let segment = &st.segments[position];
        let entry = segment
            .index
            .floor_by_index(index)
            .expect("invariant: a segment's sparse index has an entry for its first batch");
        // Walk to the frame, verifying every frame on the way.
        let mut reader =
            FrameReader::new(&segment.file, entry.offset, segment.size, max_batch_bytes);
        let io = |e| LogError::io("read segment for repair", &segment.path, e);
        let mut expected = entry.index;
        while expected < index {
            let pos = reader.pos();
            let verified = match reader.peek().map_err(io)? {
                Peek::Frame(h) if h.index == expected => reader.read_frame(&h).map_err(io)?.is_ok(),
                _ => false,
            };
            if !verified {
                return refuse(format!(
                    "frame {expected} (byte {pos} of {}) is corrupt too; repair it first",
                    segment.path.display()
                ));
            }
            expected += 1;
        }
        let offset = reader.pos();
        if let Peek::Frame(h) = reader.peek().map_err(io)? {
            if h.index == index {
                if let Ok(stored) = reader.read_frame(&h).map_err(io)? {
                    if stored == *batch {
                        return Ok(false);
                    }
                    return refuse("the stored frame verifies but differs from the copy".into());
                }
            }
        }
        let mut frame = Vec::new();
        encode_frame(batch, &mut frame);
        let end = offset + frame.len() as u64;
        let fits = if segment.last_index == Some(index) {
            end == segment.size
        } else {
            let mut next = FrameReader::new(&segment.file, end, segment.size, max_batch_bytes);
            match next.peek().map_err(io)? {
                Peek::Frame(h) if h.index == index + 1 => next.read_frame(&h).map_err(io)?.is_ok(),
                _ => false,
            }
        };
        if !fits {
            return refuse(format!(
                "a {}-byte frame at byte {offset} would not end where frame {} begins",
                frame.len(),
                index + 1
            ));
        }
        let path = segment.path.clone();
        let file = segment.file.clone();
        if let Err(e) = file
            .write_all_at(&frame, offset)
            .and_then(|()| crate::fault::sync_data(&file))
        {
            let error = LogError::io("rewrite repaired frame", &path, e);
            self.poison(st, &error);
            return Err(error);
        }
        // Read it back: the frame on disk must now verify and be the copy.
        let mut check = FrameReader::new(&file, offset, end, max_batch_bytes);
        let verified = match check.peek() {
            Ok(Peek::Frame(h)) => matches!(check.read_frame(&h), Ok(Ok(b)) if b == *batch),
            _ => false,
        };
        if !verified {
            let error = LogError::corruption(&path, offset, "a repaired frame does not read back");
            self.poison(st, &error);
            return Err(error);
        }
        warn!(index, offset, segment = %path.display(), "repaired a corrupt frame from a replica's copy");
        Ok(true)
    }

    /// Removes every batch after `index` (`None`: every batch), durably: later segments are
    /// deleted newest first, the containing one is cut and fdatasynced, then the directory is
    /// fsynced, so removed frames cannot come back after a crash. The purge point is unchanged.
    pub fn truncate_after(&self, index: Option<u64>) -> Result<(), LogError> {
        let mut guard = self.write_state();
        let st = &mut *guard;
        st.check_poisoned()?;
        let Some(last) = st.physical_last() else {
            return Ok(());
        };
        if index.is_some_and(|i| i >= last) {
            return Ok(());
        }
        self.truncations.fetch_add(1, Ordering::AcqRel);
        let result = self.truncate_locked(st, index);
        if let Err(e) = &result {
            self.poison(st, e);
        }
        result
    }

    fn truncate_locked(&self, st: &mut State, index: Option<u64>) -> Result<(), LogError> {
        let mut removed_files = false;
        while let Some(segment) = st.segments.last() {
            if index.is_some_and(|i| segment.base <= i) {
                break;
            }
            let base = segment.base;
            st.segments.pop();
            delete_segment_files(&self.dir, base)?;
            // One directory fsync per deletion: the deletions must reach the disk newest first,
            // or a crash could bring back a later segment after an earlier one is gone (a gap).
            sync_dir(&self.dir)?;
        }
        if let (Some(index), Some(segment)) = (index, st.segments.last_mut()) {
            if segment.last_index.is_some_and(|l| l > index) {
                let (cut, last_ts, max_ts) = locate_end(
                    segment,
                    index,
                    self.config.max_batch_bytes,
                    self.header_scan_read_ahead(),
                )?;
                if segment.sealed {
                    // It becomes writable again; its index would describe the old length.
                    delete_index_file(&self.dir, segment.base)?;
                    segment.sealed = false;
                    segment.idx_bytes = 0;
                    removed_files = true;
                }
                segment
                    .file
                    .set_len(cut)
                    .map_err(|e| LogError::io("truncate segment", &segment.path, e))?;
                crate::fault::sync_data(&segment.file)
                    .map_err(|e| LogError::io("fdatasync truncated segment", &segment.path, e))?;
                segment.size = cut;
                segment.cache_dropped_to = segment.cache_dropped_to.min(cut);
                segment.last_index = Some(index);
                segment.last_ts = Some(last_ts);
                segment.max_ts = Some(max_ts);
                segment.index.truncate_after(index);
            }
        }
        if removed_files {
            sync_dir(&self.dir)?;
        }
        // Sealed segments are fsynced and the containing one was just fsynced (or untouched and
        // sealed), so everything that remains is durable.
        st.durable = st.physical_last();
        Ok(())
    }

    /// Purges every batch at or below `index`: they become unreadable at once
    /// ([`LogError::Purged`]), the purge point is persisted atomically, and sealed segments wholly
    /// at or below it are deleted (the active segment never is). `index` may be past the last
    /// index (e.g. after installing a snapshot); the next append must then be above it.
    pub fn purge_upto(&self, index: u64) -> Result<(), LogError> {
        let mut persisted = self.purge_guard();
        {
            let mut st = self.write_state();
            if st.purge_point.is_none_or(|p| p < index) {
                st.purge_point = Some(index);
            }
        }
        let target = self.read_state().purge_point;
        if *persisted < target {
            if let Some(point) = target {
                purge_point::store(&self.dir, point)?;
            }
            *persisted = target;
        }
        let victims = self.write_state().take_purgeable();
        if victims.is_empty() {
            return Ok(());
        }
        // Oldest first: a crash part way leaves a log that is merely less purged.
        for segment in &victims {
            delete_segment_files(&self.dir, segment.base)?;
        }
        sync_dir(&self.dir)
    }

    /// Seals the active segment if it holds batches and is older than `segment_max_age`, and
    /// starts a new one, so that purging can delete it later (purging never deletes the last
    /// segment). Also starts a new segment after a last segment that is already sealed (as a
    /// truncation at a segment boundary leaves it). Returns whether it rolled.
    pub fn roll_if_aged(&self, now: SystemTime) -> Result<bool, LogError> {
        self.roll_if_older(now, self.config.segment_max_age)
    }

    /// Like [`Log::roll_if_aged`] with a maximum age other than the configured one (a
    /// stream whose retention is shorter than `segment_max_age` rolls sooner, so its
    /// expired records can leave the disk).
    pub fn roll_if_older(&self, now: SystemTime, max_age: Duration) -> Result<bool, LogError> {
        let mut guard = self.write_state();
        let st = &mut *guard;
        st.check_poisoned()?;
        let now_ms = unix_ms(now);
        let max_age = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
        let next = match st.segments.last() {
            Some(last)
                if last.has_frames()
                    && (last.sealed || now_ms.saturating_sub(last.created_ms) >= max_age) =>
            {
                match last.next_index() {
                    Some(next) => next,
                    None => return Ok(false), // nothing can follow index u64::MAX
                }
            }
            _ => return Ok(false),
        };
        self.roll(st, next, now_ms)?;
        Ok(true)
    }

    /// Last index on disk, purged or not (tests compare it with a model).
    #[cfg(test)]
    pub(crate) fn physical_last_index(&self) -> Option<u64> {
        self.read_state().physical_last()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.read_state().segments.len()
    }

    /// Bytes of segment and index files.
    pub fn disk_bytes(&self) -> u64 {
        self.read_state()
            .segments
            .iter()
            .map(|s| s.size + s.idx_bytes)
            .sum()
    }
}

/// Views of the segments a read starting at `from` may need: the one holding `from` (starting at
/// its sparse-index entry) and following ones until they hold enough batches or bytes.
fn read_views(st: &State, from: u64, max_batches: usize, max_bytes: usize) -> Vec<SegmentView> {
    let Some(start) = st.segment_for(from) else {
        return Vec::new();
    };
    let mut views = Vec::new();
    let mut batches = 0u64;
    let mut bytes = 0u64;
    for segment in &st.segments[start..] {
        let Some(last) = segment.last_index else {
            break;
        };
        let entry = if views.is_empty() {
            segment.index.floor_by_index(from)
        } else {
            None
        };
        let view = SegmentView {
            file: segment.file.clone(),
            path: segment.path.clone(),
            start: entry.map_or(SEGMENT_HEADER_LEN, |e| e.offset),
            start_index: entry.map_or(segment.base, |e| e.index),
            end: segment.size,
            last_index: last,
        };
        // Not `last + 1 - ..`: a batch may carry index u64::MAX. Saturating, because a damaged
        // `.idx` can claim more frames than the segment holds (the read then reports it).
        let frames = (last - from.max(segment.base)).saturating_add(1);
        batches = batches.saturating_add(frames);
        if !views.is_empty() {
            // Payload bytes of a whole segment (the first view also holds skipped frames).
            let overhead = frames.saturating_mul(FRAME_OVERHEAD as u64);
            bytes = bytes.saturating_add((view.end - view.start).saturating_sub(overhead));
        }
        views.push(view);
        if batches >= max_batches as u64 || bytes > max_bytes as u64 {
            break;
        }
    }
    views
}

/// Finds where batch `index` of `segment` ends; returns that offset, its timestamp and the
/// segment's running max timestamp through it.
fn locate_end(
    segment: &Segment,
    index: u64,
    max_batch_bytes: u32,
    read_ahead: usize,
) -> Result<(u64, i64, i64), LogError> {
    let entry = segment
        .index
        .floor_by_index(index)
        .expect("invariant: a segment's sparse index has an entry for its first batch");
    let mut reader = FrameReader::new(&segment.file, entry.offset, segment.size, max_batch_bytes)
        .with_readahead(read_ahead);
    let mut expected = entry.index;
    let mut max_ts = entry.max_ts;
    loop {
        let pos = reader.pos();
        match reader
            .peek()
            .map_err(|e| LogError::io("read segment", &segment.path, e))?
        {
            Peek::Frame(h) if h.index == expected => {
                max_ts = max_ts.max(h.timestamp_ms);
                reader.skip(&h);
                if h.index == index {
                    return Ok((reader.pos(), h.timestamp_ms, max_ts));
                }
                expected += 1;
            }
            Peek::Frame(h) => {
                return Err(LogError::corruption(
                    &segment.path,
                    pos,
                    format!("frame has index {}, expected {expected}", h.index),
                ))
            }
            Peek::End | Peek::Incomplete => {
                return Err(LogError::corruption(
                    &segment.path,
                    pos,
                    format!("segment ends before index {index}"),
                ))
            }
            Peek::BadLength(e) => return Err(frame_error(&segment.path, pos, e)),
        }
    }
}
