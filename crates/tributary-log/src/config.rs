//! Tuning knobs of one shard log.
//!
//! The server maps its own flags / env / TOML onto this struct; the engine only needs `validate()`
//! to refuse values that would make it misbehave (for example a segment size smaller than a segment
//! header, which would roll on every append).

use std::time::Duration;

use crate::error::LogError;
use crate::frame::FRAME_OVERHEAD;
use crate::segment::SEGMENT_HEADER_LEN;

/// The largest `max_batch_bytes` accepted: 1 GiB. A frame is read into memory whole, so this is
/// also the largest allocation a (valid or bit-flipped) frame length can ever cause.
pub const MAX_BATCH_BYTES_LIMIT: u32 = 1 << 30;

/// Configuration of one shard log. Every field has a default; see [`LogConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll (seal and start a new segment file) before an append would take the active segment
    /// past this many bytes. Default 64 MiB.
    ///
    /// Trade-off: retention deletes whole segments only, so larger segments keep more purged data
    /// on disk for longer and make the recovery scan of the active segment at startup longer;
    /// smaller segments mean more files, more open descriptors and an extra fsync per roll. An
    /// append of a single batch larger than this still goes into one segment, which then exceeds
    /// the limit.
    pub segment_max_bytes: u64,

    /// Roll an active segment that holds data and was created longer ago than this, checked on
    /// every append and by [`crate::Log::roll_if_aged`]. Default 1 hour.
    ///
    /// Trade-off: on a quiet shard the active segment is never full, and the active segment is
    /// never deleted by purging, so without an age limit its old data would be kept forever. A
    /// short age makes many small segment files on quiet shards.
    pub segment_max_age: Duration,

    /// Add one sparse-index entry (index -> byte offset, and running-max timestamp -> index) per
    /// this many bytes of frames. Default 4096.
    ///
    /// Trade-off: a lookup reads at most about this many bytes of frame headers past the entry it
    /// lands on; smaller values make lookups cheaper but the index (24 bytes per entry, kept in
    /// memory for every segment and written to each `.idx` file) larger.
    pub index_interval_bytes: u64,

    /// The largest batch payload accepted by `append`, and the largest frame length trusted when
    /// reading. Default 64 MiB, at most [`MAX_BATCH_BYTES_LIMIT`].
    ///
    /// Trade-off: a frame length field above this is treated as corruption, so a bit-flipped
    /// length cannot cause a multi-GiB allocation. Lowering it below the size of batches already
    /// on disk makes those batches unreadable (they are reported as corruption), so only raise it.
    pub max_batch_bytes: u32,

    /// After each fsync, the newest this many bytes of the log stay in the OS page cache and
    /// older synced data is advised out of it (`POSIX_FADV_DONTNEED`; see `drop_behind.rs`).
    /// Default 16 MiB. `u64::MAX` leaves caching entirely to the kernel.
    ///
    /// Trade-off: readers within this many bytes of the tip (enhanced fan-out, polling
    /// consumers keeping up, followers a little behind) read from memory; readers further
    /// behind read from disk. Larger values keep more of each busy log in memory, and on a
    /// machine whose page cache keeps growing, every write pays for fresh pages.
    pub page_cache_keep_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age: Duration::from_secs(60 * 60),
            index_interval_bytes: 4096,
            max_batch_bytes: 64 * 1024 * 1024,
            page_cache_keep_bytes: 16 * 1024 * 1024,
        }
    }
}

impl LogConfig {
    /// Checks that the values can work together; `Log::open` calls this.
    pub fn validate(&self) -> Result<(), LogError> {
        let min_segment = SEGMENT_HEADER_LEN + FRAME_OVERHEAD as u64;
        if self.segment_max_bytes < min_segment {
            return Err(LogError::InvalidConfig(format!(
                "segment_max_bytes is {}; it must be at least {min_segment} (a segment header and \
                 one empty frame)",
                self.segment_max_bytes
            )));
        }
        if self.segment_max_age.is_zero() {
            return Err(LogError::InvalidConfig(
                "segment_max_age is 0; it must be positive (use a very large value to disable \
                 age-based rolling)"
                    .to_owned(),
            ));
        }
        if self.index_interval_bytes == 0 {
            return Err(LogError::InvalidConfig(
                "index_interval_bytes is 0; it must be at least 1".to_owned(),
            ));
        }
        if self.max_batch_bytes == 0 || self.max_batch_bytes > MAX_BATCH_BYTES_LIMIT {
            return Err(LogError::InvalidConfig(format!(
                "max_batch_bytes is {}; it must be between 1 and {MAX_BATCH_BYTES_LIMIT}",
                self.max_batch_bytes
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert!(LogConfig::default().validate().is_ok());
    }

    #[test]
    fn invalid_values_are_named() {
        let cases: Vec<(LogConfig, &str)> = vec![
            (
                LogConfig {
                    segment_max_bytes: 10,
                    ..LogConfig::default()
                },
                "segment_max_bytes",
            ),
            (
                LogConfig {
                    segment_max_age: Duration::ZERO,
                    ..LogConfig::default()
                },
                "segment_max_age",
            ),
            (
                LogConfig {
                    index_interval_bytes: 0,
                    ..LogConfig::default()
                },
                "index_interval_bytes",
            ),
            (
                LogConfig {
                    max_batch_bytes: 0,
                    ..LogConfig::default()
                },
                "max_batch_bytes",
            ),
            (
                LogConfig {
                    max_batch_bytes: MAX_BATCH_BYTES_LIMIT + 1,
                    ..LogConfig::default()
                },
                "max_batch_bytes",
            ),
        ];
        for (config, field) in cases {
            match config.validate() {
                Err(LogError::InvalidConfig(msg)) => {
                    assert!(msg.contains(field), "{msg:?} should name {field}")
                }
                other => panic!("{config:?}: expected InvalidConfig, got {other:?}"),
            }
        }
    }
}
