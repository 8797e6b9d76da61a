//! Rust SDK for Tributary, a Raft-replicated, Kinesis-like sharded log.
//!
//! - [`Client`]: one connection to any node, one method per RPC, typed [`Error`]s that carry
//!   the server's stable [`ErrorCode`](tributary_proto::v1::ErrorCode).
//! - [`Producer`]: send records one at a time; the SDK batches them per shard, bounds the
//!   memory they take, retries failures and (idempotent produce) never stores a retried
//!   request twice.
//! - [`put_all`]: batched, retried, order-keeping writes of many records.
//! - [`read_until_tip`], [`read_shard_until_tip`], [`read_stream_until_tip`], [`follow`] and
//!   [`ShardReader`]: reading shards up to their tip at the time of the call, or forever. A
//!   whole-stream read drains parent shards before their children, so each partition key's
//!   records come out in put order across splits and merges.
//! - [`follow_with_consumer`], [`FanOutConsumer`] and [`ShardSubscriber`]: the same through
//!   enhanced fan-out — a registered consumer's subscriptions, into which the server pushes
//!   records — subscribing again after the last event whenever a subscription ends.
//! - [`ConsumerGroup`]: workers of one application sharing a stream's shards through leases
//!   and checkpoints kept in the cluster, each shard processed by one [`RecordProcessor`] at
//!   a time, parents before children, resuming from the checkpoint after a crash.
//! - [`hash_key`] and [`shard_for_hash`]: which shard a partition key lands on.
//!
//! The wire types are re-exported as [`proto`].

#![warn(missing_docs)]

mod backoff;
mod batching_producer;
mod client;
mod consumer_group;
mod error;
mod fan_out;
mod lineage;
mod position;
mod producer;
mod reader;
mod routing;

pub use bytes::Bytes;
pub use tributary_proto as proto;

pub use backoff::RetryPolicy;
pub use batching_producer::{Delivery, Producer, ProducerMetrics, ProducerOptions, SendReceipt};
pub use client::{Client, ClientOptions, CreateStreamOptions, PutRecordOptions, MAX_MESSAGE_BYTES};
pub use consumer_group::{
    Checkpointer, ConsumeMode, ConsumerGroup, ConsumerGroupOptions, InitialPosition, ProcessError,
    RecordProcessor, ShardInfo, WorkerStatus, DEFAULT_LEASE,
};
pub use error::{error_code_from_name, error_code_name, is_retryable_code, Error};
pub use fan_out::{
    follow_with_consumer, FanOutConsumer, FanOutOptions, ShardSubscriber, RESUBSCRIBE_INTERVAL,
};
pub use position::StartingPosition;
pub use producer::{put_all, PutError, PutOptions, PutSummary, MAX_BATCH_BYTES, MAX_BATCH_RECORDS};
pub use reader::{
    follow, read_shard_until_tip, read_stream_until_tip, read_until_tip, ReadMode, ShardReader,
    ShardRecord, FOLLOW_POLL_INTERVAL, MAX_RECORDS_PER_CALL,
};
pub use routing::{hash_key, shard_for_hash, shard_for_record};
pub use tributary_proto::v1::{
    ChildShard, ClusterStatusResponse, Consumer, ConsumerStatus, ErrorCode, GetRecordsResponse,
    Lease, NodeStatus, PutRecordResponse, PutRecordsEntry, PutRecordsResponse, Record, Shard,
    ShardStatus, StreamDescription, StreamStatus, StreamSummary, SubscribeToShardEvent,
};
