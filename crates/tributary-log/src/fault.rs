//! Fault injection for tests of the layers above: make every fsync of this process fail with
//! `EIO` while a trigger file exists, the way a dying disk or a full thin-provisioned volume
//! reports a lost writeback. Off unless [`fail_fsync_while_exists`] was called (the server calls
//! it only when the `TRIBUTARY_FAULT_FSYNC_TRIGGER` environment variable names a file).

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::OnceLock;

static FSYNC_TRIGGER: OnceLock<PathBuf> = OnceLock::new();

/// From now on, every fsync the log engine issues fails with `EIO` while `trigger` exists.
/// Can be set once per process; later calls are ignored.
pub fn fail_fsync_while_exists(trigger: PathBuf) {
    let _ = FSYNC_TRIGGER.set(trigger);
}

fn injected() -> io::Result<()> {
    match FSYNC_TRIGGER.get() {
        Some(trigger) if trigger.exists() => Err(io::Error::other(format!(
            "Input/output error (os error 5), injected: {} exists",
            trigger.display()
        ))),
        _ => Ok(()),
    }
}

/// `fdatasync` of a file, failing instead while a fault is injected.
pub(crate) fn sync_data(file: &File) -> io::Result<()> {
    injected()?;
    file.sync_data()
}

/// `fsync` of a directory, failing instead while a fault is injected.
pub(crate) fn sync_dir(dir: &File) -> io::Result<()> {
    injected()?;
    dir.sync_all()
}
