//! The `unsynced_after` marker: left in a log directory when an fsync (or a write the engine
//! could not roll back) failed, naming the last index that was durable before the failure.
//!
//! Contents: `durable <index>\n`, or `durable none\n` when nothing was durable yet. Written
//! through a `.tmp` file and a rename, so a reader sees the whole marker or none. Its own fsync
//! is best effort: the marker matters while the page cache that holds the unsynced frames
//! survives (this boot); after a power loss the disk itself is the truth again.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::error::LogError;

const NAME: &str = "unsynced_after";
const TMP: &str = "unsynced_after.tmp";

fn path(dir: &Path) -> PathBuf {
    dir.join(NAME)
}

/// Leaves the marker. An existing one is kept: the first failure's durable index is the one
/// that can be trusted.
pub(crate) fn write(dir: &Path, durable: Option<u64>) -> Result<(), LogError> {
    let target = path(dir);
    if target.exists() {
        return Ok(());
    }
    let tmp = dir.join(TMP);
    let text = match durable {
        Some(index) => format!("durable {index}\n"),
        None => "durable none\n".to_string(),
    };
    let mut file =
        File::create(&tmp).map_err(|e| LogError::io("create unsynced marker", &tmp, e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| LogError::io("write unsynced marker", &tmp, e))?;
    // Best effort (see the module docs): the disk may be what is failing.
    let _ = crate::fault::sync_data(&file);
    drop(file);
    fs::rename(&tmp, &target).map_err(|e| LogError::io("rename unsynced marker", &target, e))?;
    let _ = File::open(dir).and_then(|d| crate::fault::sync_dir(&d));
    Ok(())
}

/// The durable index a marker names: `None` when there is no marker, `Some(None)` when nothing
/// was durable.
pub(crate) fn read(dir: &Path) -> Result<Option<Option<u64>>, LogError> {
    let target = path(dir);
    let text = match fs::read_to_string(&target) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io("read unsynced marker", &target, e)),
    };
    let value = text
        .strip_prefix("durable ")
        .and_then(|rest| rest.strip_suffix('\n'));
    match value {
        Some("none") => Ok(Some(None)),
        Some(number) => number
            .parse::<u64>()
            .map(|index| Some(Some(index)))
            .map_err(|_| LogError::corruption(&target, 0, format!("unparsable marker {text:?}"))),
        None => Err(LogError::corruption(
            &target,
            0,
            format!("unparsable marker {text:?}"),
        )),
    }
}

/// Removes the marker once the log was cut back to what it names, durably.
pub(crate) fn remove(dir: &Path) -> Result<(), LogError> {
    let target = path(dir);
    match fs::remove_file(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LogError::io("remove unsynced marker", &target, e)),
    }
    crate::segment::sync_dir(dir)
}
