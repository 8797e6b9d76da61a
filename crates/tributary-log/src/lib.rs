//! The storage engine for one shard's raft log.
//!
//! It stores opaque [`Batch`]es under consecutive `u64` indexes in CRC-framed segment files, with
//! a sparse index per segment, crash recovery at open, durable truncation and purging. It knows
//! nothing about raft or the network; the server drives it from openraft's log storage.
//!
//! - [`Log`]: the engine (`open`, `append`, `sync`, `read`, `truncate_after`, `purge_upto`, ...).
//! - [`LogConfig`]: the tuning knobs.
//! - [`RecoveryReport`]: what `open` found and repaired.
//! - the on-disk format is documented in the `segment` module source (`src/segment.rs`).

#![warn(missing_docs)]

mod config;
mod drop_behind;
mod error;
pub mod fault;
mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod index;
mod log;
mod purge_point;
mod recovery;
mod scan;
mod segment;
mod unsynced_marker;

#[cfg(test)]
mod tests;

pub use config::{LogConfig, MAX_BATCH_BYTES_LIMIT};
pub use error::LogError;
pub use frame::Batch;
pub use log::Log;
pub use recovery::{RebuiltIndex, RecoveryReport, TailCause, TailTruncation};
pub use segment::{SEGMENT_HEADER_LEN, SEGMENT_VERSION};
