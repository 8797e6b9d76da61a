//! The payload of a raft entry.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::metadata::{MetadataCommand, MetadataOutcome};

/// What one raft entry carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// One PutRecords call's records for one shard: appended as one entry, one frame.
    Append(RecordBatch),
    /// A change to streams and shards (metadata group only).
    Metadata(MetadataCommand),
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Append(batch) => write!(f, "Append({} records)", batch.records.len()),
            Command::Metadata(command) => write!(f, "Metadata({command:?})"),
        }
    }
}

/// Records appended together; their sequence numbers derive from the entry's log index and
/// each record's position in `records`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordBatch {
    /// ApproximateArrivalTimestamp of every record, set by the shard leader (ms since epoch).
    pub arrival_ms: i64,
    /// The records in arrival order.
    pub records: Vec<StoredRecord>,
}

/// A record as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredRecord {
    /// The producer's partition key.
    pub partition_key: String,
    /// The record bytes.
    pub data: Bytes,
}

/// What applying an entry produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CommandResponse {
    /// A blank, membership or record entry was applied.
    Applied,
    /// A metadata command was applied (or rejected by the state machine).
    Metadata(MetadataOutcome),
}
