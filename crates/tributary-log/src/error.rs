//! Errors of the log engine.
//!
//! The variants are narrow where the caller acts on them: `Purged` means "serve from a snapshot",
//! `NonConsecutive` is a caller bug, `Corruption` / `UnsupportedVersion` stop the shard and need an
//! operator, `Poisoned` means "reopen the log" (after a failed fsync the page cache can no longer be
//! trusted to match what the engine thinks it wrote).

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in the log engine.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An operating-system I/O call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What the engine was doing, e.g. "fdatasync segment".
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Data on disk fails a check (CRC, magic, length, index sequence). Never returned as data.
    #[error("corrupt log data in {} at byte {offset}: {detail}", segment.display())]
    Corruption {
        /// The file holding the bad bytes.
        segment: PathBuf,
        /// Byte offset of the bad frame or header inside that file.
        offset: u64,
        /// What check failed, e.g. "crc mismatch: stored 0x1234abcd computed 0x0badf00d".
        detail: String,
    },

    /// An appended batch does not carry the next index.
    #[error("batch index {got} is not the next index; expected {expected}")]
    NonConsecutive {
        /// The index the log expected (for an empty log: the smallest allowed).
        expected: u64,
        /// The index the batch carried.
        got: u64,
    },

    /// The requested index was purged.
    #[error("index {index} was purged; the first readable index is {first}")]
    Purged {
        /// The index asked for.
        index: u64,
        /// The first index still readable (or the next to be appended, if the log is empty).
        first: u64,
    },

    /// [`crate::LogConfig::validate`] refused the configuration.
    #[error("invalid log config: {0}")]
    InvalidConfig(String),

    /// A batch payload is larger than `max_batch_bytes`.
    #[error("batch {index} has a {bytes}-byte payload; the limit (max_batch_bytes) is {limit}")]
    TooLarge {
        /// Index of the offending batch.
        index: u64,
        /// Its payload size.
        bytes: usize,
        /// The configured limit.
        limit: u32,
    },

    /// A file was written by a format version this build cannot read.
    #[error("{} has format version {found}; this build reads version {supported}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u16,
        /// The version this build understands.
        supported: u16,
    },

    /// [`crate::Log::repair`] would not put the offered copy in place.
    #[error("cannot repair index {index}: {why}")]
    RepairRefused {
        /// The index to repair.
        index: u64,
        /// Why not.
        why: String,
    },

    /// An earlier fsync or partial mutation failed, so the in-memory view may no longer match the
    /// disk; the log refuses writes until it is reopened (which re-derives state from the files).
    #[error("the log refuses writes after an earlier failure ({0}); reopen it to recover")]
    Poisoned(String),
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        LogError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corruption(segment: &Path, offset: u64, detail: impl Into<String>) -> Self {
        LogError::Corruption {
            segment: segment.to_path_buf(),
            offset,
            detail: detail.into(),
        }
    }
}
