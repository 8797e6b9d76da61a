//! The persisted purge point: the highest index the caller has purged.
//!
//! Purging is logical first (the batches become unreadable at once) and physical later (only whole
//! sealed segments are deleted), so the log must remember the point across restarts; otherwise a
//! reopened log would serve batches that raft already compacted into a snapshot. The file is
//! replaced atomically (write tmp, fdatasync, rename, fsync directory), so a crash leaves either the
//! old or the new value, never a torn one. Layout in `segment.rs`.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::error::LogError;
use crate::frame::{read_u16, read_u32, read_u64};
use crate::segment::sync_dir;

pub(crate) const PURGE_FILE: &str = "purge_point";
const PURGE_TMP: &str = "purge_point.tmp";
const PURGE_MAGIC: [u8; 8] = *b"TRIBPRG\0";
const PURGE_VERSION: u16 = 1;
const PURGE_LEN: usize = 24;

pub(crate) fn purge_path(dir: &Path) -> PathBuf {
    dir.join(PURGE_FILE)
}

fn encode(index: u64) -> [u8; PURGE_LEN] {
    let mut out = [0u8; PURGE_LEN];
    out[0..8].copy_from_slice(&PURGE_MAGIC);
    out[8..10].copy_from_slice(&PURGE_VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&index.to_le_bytes());
    let crc = crc32fast::hash(&out[0..20]);
    out[20..24].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode(buf: &[u8], path: &Path) -> Result<u64, LogError> {
    if buf.len() != PURGE_LEN {
        return Err(LogError::corruption(
            path,
            0,
            format!(
                "purge point file is {} bytes, expected {PURGE_LEN}",
                buf.len()
            ),
        ));
    }
    if buf[0..8] != PURGE_MAGIC {
        return Err(LogError::corruption(path, 0, "bad purge point magic"));
    }
    let version = read_u16(buf, 8);
    if version != PURGE_VERSION {
        return Err(LogError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: PURGE_VERSION,
        });
    }
    let stored = read_u32(buf, 20);
    let computed = crc32fast::hash(&buf[0..20]);
    if stored != computed {
        return Err(LogError::corruption(
            path,
            0,
            format!("purge point crc mismatch: stored {stored:#010x} computed {computed:#010x}"),
        ));
    }
    Ok(read_u64(buf, 12))
}

/// Reads the purge point; `None` if the log was never purged.
///
/// The file only ever appears through a rename of a complete, fsynced file, so a damaged one is
/// real corruption and is reported rather than ignored (ignoring it would resurrect purged data).
pub(crate) fn load(dir: &Path) -> Result<Option<u64>, LogError> {
    let path = purge_path(dir);
    match fs::read(&path) {
        Ok(buf) => decode(&buf, &path).map(Some),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::io("read purge point", &path, e)),
    }
}

/// Atomically replaces the purge point.
pub(crate) fn store(dir: &Path, index: u64) -> Result<(), LogError> {
    let tmp = dir.join(PURGE_TMP);
    let mut file = File::create(&tmp).map_err(|e| LogError::io("create purge point", &tmp, e))?;
    file.write_all(&encode(index))
        .map_err(|e| LogError::io("write purge point", &tmp, e))?;
    crate::fault::sync_data(&file).map_err(|e| LogError::io("fdatasync purge point", &tmp, e))?;
    drop(file);
    let path = purge_path(dir);
    fs::rename(&tmp, &path).map_err(|e| LogError::io("rename purge point", &path, e))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_then_load() -> Result<(), LogError> {
        let dir = tempfile::tempdir().map_err(|e| LogError::io("tempdir", Path::new("."), e))?;
        assert_eq!(load(dir.path())?, None);
        store(dir.path(), 41)?;
        store(dir.path(), 99)?;
        assert_eq!(load(dir.path())?, Some(99));
        assert!(!dir.path().join(PURGE_TMP).exists());
        Ok(())
    }

    #[test]
    fn damaged_file_is_corruption() {
        let path = Path::new("purge_point");
        let mut bytes = encode(7);
        bytes[13] ^= 4;
        assert!(matches!(
            decode(&bytes, path),
            Err(LogError::Corruption { .. })
        ));
        assert!(decode(&bytes[..10], path).is_err());
    }
}
