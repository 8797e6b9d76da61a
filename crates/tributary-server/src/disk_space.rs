//! Admission control on free disk space: a node keeps `min_free_disk_bytes` free on the
//! filesystem of its data directory, so a disk never fills up under a raft group or the
//! metadata store (RocksDB turns read-only on ENOSPC, and a half-written segment is a
//! recovery case nobody wants to exercise in production).
//!
//! Below the floor: a shard leader refuses client writes with `StorageFull` (nothing is
//! written) and hands its leaderships to a peer with room. Below half the floor (the hard
//! floor, reached only when other leaders keep replicating to this node, or writes admitted
//! just above the floor land), a replica refuses appends from its leader, which stops that
//! group here (the other two replicas carry on) until a restart finds room again. Reads,
//! deletes and retention keep working, so space can come back.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// How long a free-space reading is reused (one `statvfs` per window, not per write).
const READING_TTL: Duration = Duration::from_millis(250);

/// The free-space floor of one data directory.
pub struct DiskSpace {
    dir: PathBuf,
    floor: u64,
    /// Free bytes at the last reading (`u64::MAX` before the first or after a failed one).
    free: AtomicU64,
    /// When the last reading was taken; whoever finds it stale and gets the lock reads
    /// again, everyone else uses the figure at hand (no write waits on `statvfs`).
    read_at: Mutex<Option<Instant>>,
}

impl DiskSpace {
    /// Watches the filesystem holding `dir`; `floor` 0 turns the check off.
    pub fn new(dir: &Path, floor: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            floor,
            free: AtomicU64::new(u64::MAX),
            read_at: Mutex::new(None),
        }
    }

    /// Bytes available to this process on the data directory's filesystem (a reading at
    /// most `READING_TTL` old; `None` when it cannot be read).
    pub fn free_bytes(&self) -> Option<u64> {
        if let Ok(mut read_at) = self.read_at.try_lock() {
            if read_at.is_none_or(|at| at.elapsed() >= READING_TTL) {
                let free = match statvfs_available(&self.dir) {
                    Ok(free) => free,
                    Err(err) => {
                        tracing::warn!(dir = %self.dir.display(), %err, "cannot read free disk space");
                        u64::MAX
                    }
                };
                self.free.store(free, Ordering::Relaxed);
                crate::metrics::METRICS
                    .disk_free_bytes
                    .store(free, Ordering::Relaxed);
                *read_at = Some(Instant::now());
            }
        }
        Some(self.free.load(Ordering::Relaxed)).filter(|free| *free != u64::MAX)
    }

    /// Whether free space is below the floor (an unreadable figure is not below).
    pub fn below_floor(&self) -> bool {
        self.floor > 0 && self.free_bytes().is_some_and(|free| free < self.floor)
    }

    /// Whether free space is below half the floor: replicas stop taking appends.
    pub fn below_hard_floor(&self) -> bool {
        self.floor > 0 && self.free_bytes().is_some_and(|free| free < self.floor / 2)
    }

    /// `StorageFull` naming the figures, for a write refused below the floor.
    pub fn refuse_write(&self, shard: &str) -> ApiError {
        crate::metrics::METRICS
            .writes_refused_disk_floor
            .fetch_add(1, Ordering::Relaxed);
        ApiError::storage_full(format!(
            "write to shard {shard} refused: the leader's data directory {} has {} bytes free, below the floor min_free_disk_bytes = {}; nothing was written; retry later",
            self.dir.display(),
            self.free_bytes().unwrap_or(0),
            self.floor
        ))
    }

    /// An I/O error for a replica append refused below the hard floor.
    pub fn refuse_append(&self) -> std::io::Error {
        std::io::Error::other(format!(
            "{} has {} bytes free, below half the floor min_free_disk_bytes = {}: this replica takes no more appends",
            self.dir.display(),
            self.free_bytes().unwrap_or(0),
            self.floor
        ))
    }
}

#[allow(unsafe_code)]
fn statvfs_available(dir: &Path) -> std::io::Result<u64> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("data directory path contains a NUL byte"))?;
    // SAFETY: statvfs is plain old data; all-zero bytes are a valid value of it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a valid, writable statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Both fields are u64 on Linux x86_64 and aarch64.
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}
