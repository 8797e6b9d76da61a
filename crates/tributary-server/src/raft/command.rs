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
    /// A change to a shard's own state (shard groups only).
    Shard(ShardControl),
}

/// Control entries of a shard group's log. They carry no records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum ShardControl {
    /// Closes the shard for a reshard: entries after this one are never records of the
    /// shard (appends that land after it are answered `ShardClosed`), so the shard's
    /// ending sequence number is fixed by this entry's index on every replica.
    Seal,
    /// Retention: entries up to and including `index` (whose term is `term`, proposed by
    /// `leader_node`) have expired. Every replica hides them, snapshots at this point and
    /// purges whole segments below it, so replicas agree on TRIM_HORIZON across failover.
    Trim {
        /// Last expired index.
        index: u64,
        /// Term of that entry.
        term: u64,
        /// Leader node of that entry's term.
        leader_node: u64,
    },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Append(batch) => write!(f, "Append({} records)", batch.records.len()),
            Command::Metadata(command) => write!(f, "Metadata({command:?})"),
            Command::Shard(control) => write!(f, "Shard({control:?})"),
        }
    }
}

/// Records appended together; their sequence numbers derive from the entry's log index and
/// each record's position in `records`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordBatch {
    /// ApproximateArrivalTimestamp of every record, set by the shard leader (ms since epoch).
    pub arrival_ms: i64,
    /// The records in arrival order.
    pub records: Vec<StoredRecord>,
    /// Set by an idempotent producer: the shard appends one request number once.
    pub producer: Option<ProducerStamp>,
    /// The encoded entry payload this batch was decoded from (`entry_codec::decode`), which
    /// also records the entry's log id. A follower appends the entries it received this way,
    /// so `entry_codec::encode` hands these bytes back instead of copying every record into
    /// a new payload. Never sent or compared; `None` for a batch built from a request.
    #[serde(skip)]
    pub encoded: Option<Bytes>,
}

impl PartialEq for RecordBatch {
    fn eq(&self, other: &Self) -> bool {
        self.arrival_ms == other.arrival_ms
            && self.records == other.records
            && self.producer == other.producer
    }
}

impl Eq for RecordBatch {}

/// An idempotent producer's id and request number (see `PutRecordsRequest`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProducerStamp {
    /// Random non-zero id chosen by the producer.
    pub id: u64,
    /// The producer's request number, growing across all shards.
    pub sequence: u64,
}

/// The newest request of one producer a shard appended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProducerLast {
    /// Its request number.
    pub sequence: u64,
    /// The log index it was appended at.
    pub index: u64,
    /// How many records it had.
    pub count: u32,
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
    /// The shard is sealed at this index (the answer to `Seal`, and to any append that
    /// landed after the seal, which is not part of the shard).
    Sealed {
        /// Index of the seal entry.
        index: u64,
    },
}
