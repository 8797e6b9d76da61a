//! gRPC services. Each file is one service of `proto/tributary/v1`.

pub mod cluster;
pub mod data;
pub mod fanout;
pub mod lease;
pub mod peer;
pub mod stream;

use std::sync::Arc;

use crate::error::ApiError;
use crate::metadata::StreamMeta;
use crate::node::Node;

/// Largest gRPC message accepted or sent: a 10 MiB record in PutRecord, or a GetRecords
/// page of 10 MiB of data plus up to 10,000 keys and sequence numbers, with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// A protobuf timestamp of milliseconds since the Unix epoch.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn stream_snapshot(node: &Arc<Node>, name: &str) -> Result<StreamMeta, ApiError> {
    crate::validation::stream_name(name)?;
    node.metadata().stream(name).cloned()
}
