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
    to: u64,
}

/// Picks what to drop after an fsync that made the last segment durable up to `synced_end`:
/// everything older than the newest `keep` bytes, counted back across segments. Records what
/// it picked in each segment's `cache_dropped_to`, so a range is advised once.
pub(crate) fn plan(segments: &mut [Segment], synced_end: u64, keep: u64) -> Vec<CacheDrop> {
    let mut drops = Vec::new();
    let mut remaining = keep;
    let last = segments.len().saturating_sub(1);
    for (position, segment) in segments.iter_mut().enumerate().rev() {
        // Segments before the last were fsynced when sealed.
        let end = if position == last {
            synced_end.min(segment.size)
        } else {
            segment.size
        };
        let kept = remaining.min(end);
        remaining -= kept;
        let to = (end - kept) / PAGE * PAGE;
        let step = if position == last { STEP } else { 1 };
        if to >= segment.cache_dropped_to.saturating_add(step) {
            drops.push(CacheDrop {
                file: segment.file.clone(),
                from: segment.cache_dropped_to,
                to,
            });
            segment.cache_dropped_to = to;
        }
        // Older segments were dropped whole once this far back; nothing left to do there.
        if remaining == 0 && segment.cache_dropped_to + PAGE > segment.size {
            break;
        }
    }
    drops
}

/// Advises the kernel to drop each range. Done without the log's lock: the advice can take a
/// while on a large range, and a failure only leaves pages cached, so it is logged and
/// otherwise ignored.
pub(crate) fn apply(drops: Vec<CacheDrop>) {
    for range in drops {
        let Some(len) = NonZeroU64::new(range.to - range.from) else {
            continue;
        };
        if let Err(error) = rustix::fs::fadvise(
            &*range.file,
            range.from,
            Some(len),
            rustix::fs::Advice::DontNeed,
        ) {
            tracing::debug!(%error, from = range.from, to = range.to, "page cache drop-behind failed");
        }
    }
}

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

    fn ranges(drops: &[CacheDrop]) -> Vec<(u64, u64)> {
        drops.iter().map(|d| (d.from, d.to)).collect()
    }

    #[test]
    fn keeps_the_newest_bytes_and_drops_in_steps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = vec![segment(&dir, 0, 40 * MIB)];
        // Less than `keep` synced: nothing to drop.
        assert!(plan(&mut segments, 10 * MIB, 16 * MIB).is_empty());
        // 3 MiB beyond `keep`; the unsynced rest of the segment is never dropped.
        let drops = plan(&mut segments, 19 * MIB, 16 * MIB);
        assert_eq!(ranges(&drops), vec![(0, 3 * MIB)]);
        assert_eq!(segments[0].cache_dropped_to, 3 * MIB);
        // Less than a step more: wait.
        assert!(plan(&mut segments, 19 * MIB + MIB / 2, 16 * MIB).is_empty());
        // A step more: only the new part.
        let drops = plan(&mut segments, 20 * MIB + 100, 16 * MIB);
        assert_eq!(ranges(&drops), vec![(3 * MIB, 4 * MIB)]);
    }

    #[test]
    fn ranges_end_on_page_boundaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = vec![segment(&dir, 0, 40 * MIB)];
        let drops = plan(&mut segments, 2 * MIB + 5000, 0);
        assert_eq!(ranges(&drops), vec![(0, 2 * MIB + PAGE)]);
    }

    #[test]
    fn the_kept_bytes_count_back_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = vec![
            segment(&dir, 0, 10 * MIB),
            segment(&dir, 100, 10 * MIB),
            segment(&dir, 200, 2 * MIB),
        ];
        // 2 MiB of the active segment and 2 MiB of the one before it are kept.
        let drops = plan(&mut segments, 2 * MIB, 4 * MIB);
        assert_eq!(ranges(&drops), vec![(0, 8 * MIB), (0, 10 * MIB)]);
        // The oldest segment was dropped whole: the next plan stops there.
        segments[0].cache_dropped_to = 0;
        segments[2].size = 20 * MIB;
        let drops = plan(&mut segments, 20 * MIB, 4 * MIB);
        assert_eq!(ranges(&drops), vec![(0, 16 * MIB), (8 * MIB, 10 * MIB)]);
        assert_eq!(
            segments[0].cache_dropped_to, 0,
            "walked past a fully dropped segment"
        );
    }

    #[test]
    fn keeping_everything_drops_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut segments = vec![segment(&dir, 0, 64 * MIB), segment(&dir, 100, 64 * MIB)];
        assert!(plan(&mut segments, 64 * MIB, u64::MAX).is_empty());
    }
}
