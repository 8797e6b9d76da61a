//! Drop-behind: once appended data is fsynced, the log tells the kernel it may drop that data
//! from its page cache, keeping only the newest `page_cache_keep_bytes` of the log cached.
//!
//! Why: a log writes every byte once and, apart from readers near the tip and followers
//! catching up, rarely reads it again soon. Left alone, the page cache grows by every byte
//! written until memory runs out, and each new cache page is memory the kernel must find
//! first; on a virtual machine whose host backs guest memory lazily, that first touch costs
//! a host page fault inside the copy of every `write`. Dropping synced data behind the tip
//! keeps the log's cache small and its pages recycled (see docs/benchmarks.md for the
//! measured effect). Readers further behind than the kept tail read from disk.

use std::fs::File;
use std::num::NonZeroU64;
use std::sync::Arc;

use crate::segment::Segment;

/// Offsets handed to the kernel are rounded down to this, so that no page straddles two
/// advice ranges (the kernel only drops whole pages inside a range).
const PAGE: u64 = 4096;

/// The active segment's cache is dropped in steps of at least this many bytes, so a busy log
/// makes one advice call per step rather than one per fsync.
const STEP: u64 = 1024 * 1024;

/// A byte range of one segment file to drop from the page cache.
#[derive(Debug)]
pub(crate) struct CacheDrop {
    file: Arc<File>,
    from: u64,
    /// `None`: to the end of the file, which lets the kernel drop a last partial page too.
    to: Option<u64>,
}

/// Marks segments a log was opened with as already handled: their cache (whatever reads or
/// an earlier process left) is the kernel's to manage.
pub(crate) fn adopt(segments: &mut [Segment]) {
    for segment in segments {
        segment.cache_dropped_to = segment.size;
    }
}

/// Picks what to drop after an fsync that made segment `synced.0` durable up to byte
/// `synced.1`: everything older than the newest `keep` bytes, counted back across segments.
/// Records what it picked in each segment's `cache_dropped_to`, so a range is advised once.
pub(crate) fn plan(segments: &mut [Segment], synced: (u64, u64), keep: u64) -> Vec<CacheDrop> {
    let mut drops = Vec::new();
    if keep == u64::MAX {
        return drops;
    }
    let (synced_base, synced_end) = synced;
    let mut remaining = keep;
    let last = segments.len().saturating_sub(1);
    for (position, segment) in segments.iter_mut().enumerate().rev() {
        let sealed_and_dropped = position < last && segment.cache_dropped_to >= segment.size;
        if remaining == 0 && sealed_and_dropped {
            // Dropped whole by an earlier plan (or adopted), and so was everything before it.
            break;
        }
        let end = if position < last {
            // Segments before the last were fsynced when sealed.
            segment.size
        } else if segment.base == synced_base {
            synced_end.min(segment.size)
        } else {
            // A roll while the fsync ran: nothing of the new segment is known to be synced.
            0
        };
        let kept = remaining.min(end);
        remaining -= kept;
        if kept == 0 && position < last {
            // Wholly behind the kept tail: drop the rest of it, its last partial page too.
            if !sealed_and_dropped {
                drops.push(CacheDrop {
                    file: segment.file.clone(),
                    from: segment.cache_dropped_to / PAGE * PAGE,
                    to: None,
                });
                segment.cache_dropped_to = segment.size;
            }
            continue;
        }
        let to = (end - kept) / PAGE * PAGE;
        let step = if position == last { STEP } else { 1 };
        if to >= segment.cache_dropped_to.saturating_add(step) {
            drops.push(CacheDrop {
                file: segment.file.clone(),
                from: segment.cache_dropped_to / PAGE * PAGE,
                to: Some(to),
            });
            segment.cache_dropped_to = to;
        }
    }
    drops
}

/// Advises the kernel to drop each range. Done without the log's lock, and a failure only
/// leaves pages cached, so it is logged and otherwise ignored.
pub(crate) fn apply(drops: Vec<CacheDrop>) {
    for range in drops {
        let len = match range.to {
            // `None` as the length means "to the end of the file".
            None => None,
            Some(to) => match NonZeroU64::new(to.saturating_sub(range.from)) {
                Some(len) => Some(len),
                None => continue,
            },
        };
        advise_dont_need(&range.file, range.from, len);
    }
}

#[cfg(not(target_vendor = "apple"))]
fn advise_dont_need(file: &File, from: u64, len: Option<NonZeroU64>) {
    if let Err(error) = rustix::fs::fadvise(file, from, len, rustix::fs::Advice::DontNeed) {
        tracing::debug!(%error, from, "page cache drop-behind failed");
    }
}

/// macOS has no `posix_fadvise`: the page cache is left to the kernel there.
#[cfg(target_vendor = "apple")]
fn advise_dont_need(_file: &File, _from: u64, _len: Option<NonZeroU64>) {}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn segment(dir: &tempfile::TempDir, base: u64, size: u64) -> Segment {
        let path = dir.path().join(format!("{base}.seg"));
        let file = File::create(&path).expect("create a segment file");
        let mut segment = Segment::empty(path, file, base, 0);
        segment.size = size;
        segment
    }

    fn ranges(drops: &[CacheDrop]) -> Vec<(u64, Option<u64>)> {
        drops.iter().map(|d| (d.from, d.to)).collect()
    }

    #[test]
    fn keeps_the_newest_bytes_and_drops_in_steps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = vec![segment(&dir, 0, 40 * MIB)];
        // Less than `keep` synced: nothing to drop.
        assert!(plan(&mut segments, (0, 10 * MIB), 16 * MIB).is_empty());
        // 3 MiB beyond `keep`; the unsynced rest of the segment is never dropped.
        let drops = plan(&mut segments, (0, 19 * MIB), 16 * MIB);
        assert_eq!(ranges(&drops), vec![(0, Some(3 * MIB))]);
        assert_eq!(segments[0].cache_dropped_to, 3 * MIB);
        // Less than a step more: wait.
        assert!(plan(&mut segments, (0, 19 * MIB + MIB / 2), 16 * MIB).is_empty());
        // A step more: only the new part.
        let drops = plan(&mut segments, (0, 20 * MIB + 100), 16 * MIB);
        assert_eq!(ranges(&drops), vec![(3 * MIB, Some(4 * MIB))]);
    }

    #[test]
    fn ranges_end_on_page_boundaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = vec![segment(&dir, 0, 40 * MIB)];
        let drops = plan(&mut segments, (0, 2 * MIB + 5000), 0);
        assert_eq!(ranges(&drops), vec![(0, Some(2 * MIB + PAGE))]);
    }

    #[test]
    fn the_kept_bytes_count_back_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = vec![
            segment(&dir, 0, 10 * MIB),
            segment(&dir, 100, 10 * MIB),
            segment(&dir, 200, 2 * MIB),
        ];
        // 2 MiB of the active segment and 2 MiB of the one before it are kept; the oldest
        // goes whole, to the end of its file.
        let drops = plan(&mut segments, (200, 2 * MIB), 4 * MIB);
        assert_eq!(ranges(&drops), vec![(0, Some(8 * MIB)), (0, None)]);
        assert_eq!(segments[0].cache_dropped_to, 10 * MIB);
        // Each range is advised once: the next plan drops only what became old since.
        segments[2].size = 20 * MIB;
        let drops = plan(&mut segments, (200, 20 * MIB), 4 * MIB);
        assert_eq!(ranges(&drops), vec![(0, Some(16 * MIB)), (8 * MIB, None)]);
    }

    #[test]
    fn a_segment_made_writable_again_by_a_truncation_is_dropped_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = vec![segment(&dir, 0, 10 * MIB), segment(&dir, 100, 20 * MIB)];
        plan(&mut segments, (100, 20 * MIB), MIB);
        assert_eq!(segments[0].cache_dropped_to, 10 * MIB);
        // A truncation removed segment 100 and cut segment 0 (as `Log::truncate_after`
        // does); appends then grew it again and it rolled.
        segments.pop();
        segments[0].cache_dropped_to = segments[0].cache_dropped_to.min(6 * MIB);
        segments[0].size = 12 * MIB;
        segments.push(segment(&dir, 200, 2 * MIB));
        let drops = plan(&mut segments, (200, 2 * MIB), MIB);
        assert_eq!(ranges(&drops), vec![(0, Some(MIB)), (6 * MIB, None)]);
    }

    #[test]
    fn a_tiny_sealed_segment_does_not_hide_the_ones_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = vec![
            segment(&dir, 0, 10 * MIB),
            segment(&dir, 100, 100),
            segment(&dir, 101, 20 * MIB),
        ];
        let drops = plan(&mut segments, (101, 20 * MIB), 4 * MIB);
        assert_eq!(
            ranges(&drops),
            vec![(0, Some(16 * MIB)), (0, None), (0, None)]
        );
    }

    #[test]
    fn a_roll_during_the_fsync_drops_nothing_of_the_new_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The fsync covered segment 0 up to 10 MiB; segment 100 started meanwhile.
        let mut segments = vec![segment(&dir, 0, 10 * MIB), segment(&dir, 100, 4 * MIB)];
        let drops = plan(&mut segments, (0, 10 * MIB), 0);
        assert_eq!(ranges(&drops), vec![(0, None)]);
        assert_eq!(segments[1].cache_dropped_to, 0);
    }

    #[test]
    fn segments_a_log_was_opened_with_are_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = vec![segment(&dir, 0, 10 * MIB), segment(&dir, 100, 10 * MIB)];
        segments[0].sealed = true;
        adopt(&mut segments);
        // Only what this process appends after opening is dropped.
        segments[1].size = 13 * MIB;
        let drops = plan(&mut segments, (100, 13 * MIB), MIB);
        assert_eq!(ranges(&drops), vec![(10 * MIB, Some(12 * MIB))]);
    }

    #[test]
    fn keeping_everything_drops_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = vec![segment(&dir, 0, 64 * MIB), segment(&dir, 100, 64 * MIB)];
        assert!(plan(&mut segments, (100, 64 * MIB), u64::MAX).is_empty());
    }
}
