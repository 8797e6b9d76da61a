//! The metadata group's state: streams, their shards and the cluster's iterator key.
//! Applied identically on every node from the metadata raft log, so every decision here
//! must be deterministic (no clocks, no node config: such values travel in the command).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tributary_proto::v1::ErrorCode;

use crate::error::ApiError;
use crate::raft::GroupId;
use crate::routing::HashRange;
use crate::sequence::SequenceNumber;

/// A change to the metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// First command of a new cluster: the key that signs shard iterators.
    InitCluster {
        /// HMAC key shared by every node.
        iterator_key: Vec<u8>,
    },
    /// Create a stream with evenly split shards.
    CreateStream {
        /// Validated stream name.
        name: String,
        /// Number of shards (validated).
        shard_count: u32,
        /// Retention in hours.
        retention_hours: u32,
        /// Largest record in bytes.
        max_record_bytes: u32,
        /// Creation time, chosen by the proposer.
        created_at_ms: i64,
        /// The cluster's shard limit at proposal time.
        max_shards: u32,
    },
    /// Every shard of the stream has a leader: the stream accepts traffic.
    MarkStreamActive {
        /// The stream incarnation.
        stream_id: u64,
    },
    /// Remove a stream; its shard groups are stopped and their files deleted.
    DeleteStream {
        /// Stream name.
        name: String,
    },
}

/// The result of applying a metadata command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetadataOutcome {
    /// Applied.
    Ok,
    /// Not applied; nothing changed.
    Rejected {
        /// `tributary.v1.ErrorCode` value.
        code: i32,
        /// What was wrong.
        message: String,
    },
}

impl MetadataOutcome {
    fn rejected(err: ApiError) -> Self {
        MetadataOutcome::Rejected {
            code: err.code as i32,
            message: err.message,
        }
    }

    /// Turns a rejection back into an API error.
    pub fn into_result(self) -> Result<(), ApiError> {
        match self {
            MetadataOutcome::Ok => Ok(()),
            MetadataOutcome::Rejected { code, message } => Err(ApiError {
                code: ErrorCode::try_from(code).unwrap_or(ErrorCode::InternalFailure),
                message,
            }),
        }
    }
}

/// Lifecycle of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamStatus {
    /// Shard groups are starting.
    Creating,
    /// Every shard has a leader.
    Active,
}

/// One shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardMeta {
    /// Index within the stream (`shardId-000000000003` has index 3).
    pub shard_index: u32,
    /// The raft group holding the shard's log.
    pub group_id: GroupId,
    /// Hash keys routed here.
    pub hash_range: HashRange,
}

impl ShardMeta {
    /// The Kinesis-style shard id.
    pub fn shard_id(&self) -> String {
        shard_id(self.shard_index)
    }

    /// The first sequence number the shard can hold.
    pub fn starting_sequence_number(&self) -> SequenceNumber {
        SequenceNumber::shard_start(self.shard_index)
    }
}

/// Formats a shard index as a shard id.
pub fn shard_id(index: u32) -> String {
    format!("shardId-{index:012}")
}

/// Parses a shard id back to its index.
pub fn parse_shard_id(id: &str) -> Result<u32, ApiError> {
    id.strip_prefix("shardId-")
        .filter(|digits| digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u32>().ok())
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "shard id {id:?} is malformed; expected shardId- followed by 12 digits"
            ))
        })
}

/// One stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamMeta {
    /// Unique per incarnation: a deleted and recreated stream gets a new id.
    pub stream_id: u64,
    /// Name.
    pub name: String,
    /// Lifecycle state.
    pub status: StreamStatus,
    /// Creation time (ms since epoch).
    pub created_at_ms: i64,
    /// Retention in hours.
    pub retention_hours: u32,
    /// Largest record in bytes.
    pub max_record_bytes: u32,
    /// Shards, by index.
    pub shards: Vec<ShardMeta>,
}

impl StreamMeta {
    /// The shard with the given index.
    pub fn shard(&self, index: u32) -> Option<&ShardMeta> {
        self.shards.iter().find(|s| s.shard_index == index)
    }

    /// The shard that takes a hash key.
    pub fn shard_for_hash(&self, hash: u128) -> Option<&ShardMeta> {
        self.shards.iter().find(|s| s.hash_range.contains(hash))
    }
}

/// Everything the metadata group holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetadataState {
    /// Signs shard iterators; set by the first command of the cluster.
    pub iterator_key: Option<Vec<u8>>,
    /// Streams by name.
    pub streams: BTreeMap<String, StreamMeta>,
    next_stream_id: u64,
    next_group_id: GroupId,
}

impl MetadataState {
    /// Total shards across streams.
    pub fn shard_total(&self) -> usize {
        self.streams.values().map(|s| s.shards.len()).sum()
    }

    /// A stream by name, or ResourceNotFound.
    pub fn stream(&self, name: &str) -> Result<&StreamMeta, ApiError> {
        self.streams
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("stream {name} does not exist")))
    }

    /// A stream by incarnation id.
    pub fn stream_by_id(&self, stream_id: u64) -> Option<&StreamMeta> {
        self.streams.values().find(|s| s.stream_id == stream_id)
    }

    /// Applies a command. Must be deterministic.
    pub fn apply(&mut self, command: &MetadataCommand) -> MetadataOutcome {
        match command {
            MetadataCommand::InitCluster { iterator_key } => {
                if self.iterator_key.is_none() {
                    self.iterator_key = Some(iterator_key.clone());
                }
                MetadataOutcome::Ok
            }
            MetadataCommand::CreateStream {
                name,
                shard_count,
                retention_hours,
                max_record_bytes,
                created_at_ms,
                max_shards,
            } => {
                if self.streams.contains_key(name) {
                    return MetadataOutcome::rejected(ApiError::in_use(format!(
                        "stream {name} already exists"
                    )));
                }
                let total = self.shard_total() as u64 + u64::from(*shard_count);
                if total > u64::from(*max_shards) {
                    return MetadataOutcome::rejected(ApiError::limit(format!(
                        "creating {shard_count} shards would make {total} shards; this cluster's shard limit is {max_shards}"
                    )));
                }
                self.next_stream_id += 1;
                let shards = HashRange::split_evenly(*shard_count)
                    .into_iter()
                    .enumerate()
                    .map(|(i, hash_range)| {
                        self.next_group_id += 1;
                        ShardMeta {
                            shard_index: i as u32,
                            group_id: self.next_group_id,
                            hash_range,
                        }
                    })
                    .collect();
                self.streams.insert(
                    name.clone(),
                    StreamMeta {
                        stream_id: self.next_stream_id,
                        name: name.clone(),
                        status: StreamStatus::Creating,
                        created_at_ms: *created_at_ms,
                        retention_hours: *retention_hours,
                        max_record_bytes: *max_record_bytes,
                        shards,
                    },
                );
                MetadataOutcome::Ok
            }
            MetadataCommand::MarkStreamActive { stream_id } => {
                if let Some(stream) = self
                    .streams
                    .values_mut()
                    .find(|s| s.stream_id == *stream_id)
                {
                    stream.status = StreamStatus::Active;
                }
                MetadataOutcome::Ok
            }
            MetadataCommand::DeleteStream { name } => match self.streams.remove(name) {
                Some(_) => MetadataOutcome::Ok,
                None => MetadataOutcome::rejected(ApiError::not_found(format!(
                    "stream {name} does not exist"
                ))),
            },
        }
    }

    /// Every shard group that should exist.
    pub fn shard_groups(&self) -> impl Iterator<Item = (&StreamMeta, &ShardMeta)> {
        self.streams
            .values()
            .flat_map(|s| s.shards.iter().map(move |shard| (s, shard)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, shards: u32, max: u32) -> MetadataCommand {
        MetadataCommand::CreateStream {
            name: name.into(),
            shard_count: shards,
            retention_hours: 24,
            max_record_bytes: 1 << 20,
            created_at_ms: 1,
            max_shards: max,
        }
    }

    #[test]
    fn create_delete_recreate_gets_new_ids() {
        let mut state = MetadataState::default();
        assert!(state.apply(&create("s", 2, 10)).into_result().is_ok());
        let first = state.stream("s").expect("exists").clone();
        assert_eq!(first.shards.len(), 2);
        let dup = state
            .apply(&create("s", 1, 10))
            .into_result()
            .expect_err("duplicate");
        assert_eq!(dup.code, ErrorCode::ResourceInUse);
        assert!(state
            .apply(&MetadataCommand::DeleteStream { name: "s".into() })
            .into_result()
            .is_ok());
        assert!(state.apply(&create("s", 1, 10)).into_result().is_ok());
        let second = state.stream("s").expect("exists");
        assert_ne!(second.stream_id, first.stream_id);
        assert!(second.shards[0].group_id > first.shards[1].group_id);
    }

    #[test]
    fn shard_limit_is_enforced_and_changes_nothing() {
        let mut state = MetadataState::default();
        assert!(state.apply(&create("a", 3, 4)).into_result().is_ok());
        let err = state
            .apply(&create("b", 2, 4))
            .into_result()
            .expect_err("over limit");
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        assert!(state.stream("b").is_err());
        assert_eq!(state.shard_total(), 3);
    }

    #[test]
    fn shard_ids() {
        assert_eq!(shard_id(7), "shardId-000000000007");
        assert_eq!(parse_shard_id("shardId-000000000007").ok(), Some(7));
        for bad in [
            "shardId-7",
            "shard-000000000007",
            "shardId-00000000000x",
            "",
        ] {
            assert!(parse_shard_id(bad).is_err(), "{bad}");
        }
    }
}
