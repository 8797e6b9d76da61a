//! StreamService: create, delete, describe and list streams and shards.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tributary_proto::v1 as pb;
use tributary_proto::v1::stream_service_server::StreamService;

use super::{stream_snapshot, timestamp};
use crate::metadata::{MetadataCommand, StreamMeta, StreamStatus};
use crate::node::Node;
use crate::reader;
use crate::validation;

/// The control-plane service.
pub struct StreamApi {
    node: Arc<Node>,
}

impl StreamApi {
    /// A service over a node.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn summary(stream: &StreamMeta) -> pb::StreamSummary {
        pb::StreamSummary {
            stream_name: stream.name.clone(),
            status: match stream.status {
                StreamStatus::Creating => pb::StreamStatus::Creating,
                StreamStatus::Active => pb::StreamStatus::Active,
            } as i32,
            shard_count: stream.shards.len() as u32,
            open_shard_count: stream.shards.len() as u32,
            retention_hours: stream.retention_hours,
            created_at: Some(timestamp(stream.created_at_ms)),
            max_record_bytes: stream.max_record_bytes,
        }
    }

    async fn shards(&self, stream: &StreamMeta) -> Result<Vec<pb::Shard>, Status> {
        let mut shards = Vec::with_capacity(stream.shards.len());
        for shard in &stream.shards {
            let group = self.node.shard_group(shard.group_id);
            let (leader, last) = match &group {
                Some(group) => (
                    group.raft.current_leader().await.unwrap_or(0),
                    reader::last_sequence(group)?,
                ),
                None => (0, None),
            };
            shards.push(pb::Shard {
                shard_id: shard.shard_id(),
                status: pb::ShardStatus::Open as i32,
                starting_hash_key: shard.hash_range.start.to_string(),
                ending_hash_key: shard.hash_range.end.to_string(),
                starting_sequence_number: shard.starting_sequence_number().to_string(),
                ending_sequence_number: None,
                parent_shard_id: None,
                adjacent_parent_shard_id: None,
                leader_node_id: leader,
                last_sequence_number: last.map(|s| s.to_string()),
            });
        }
        Ok(shards)
    }
}

#[tonic::async_trait]
impl StreamService for StreamApi {
    async fn create_stream(
        &self,
        request: Request<pb::CreateStreamRequest>,
    ) -> Result<Response<pb::CreateStreamResponse>, Status> {
        let request = request.into_inner();
        validation::stream_name(&request.stream_name)?;
        let max_shards = self.node.config().max_shards;
        validation::shard_count(request.shard_count, max_shards)?;
        let retention_hours = validation::retention_hours(request.retention_hours)?;
        let max_record_bytes = validation::max_record_bytes(request.max_record_bytes)?;
        self.node
            .propose_metadata(MetadataCommand::CreateStream {
                name: request.stream_name,
                shard_count: request.shard_count,
                retention_hours,
                max_record_bytes,
                created_at_ms: self.node.now_ms(),
                max_shards,
            })
            .await?;
        Ok(Response::new(pb::CreateStreamResponse {}))
    }

    async fn delete_stream(
        &self,
        request: Request<pb::DeleteStreamRequest>,
    ) -> Result<Response<pb::DeleteStreamResponse>, Status> {
        let name = request.into_inner().stream_name;
        stream_snapshot(&self.node, &name)?;
        self.node
            .propose_metadata(MetadataCommand::DeleteStream { name })
            .await?;
        Ok(Response::new(pb::DeleteStreamResponse {}))
    }

    async fn describe_stream(
        &self,
        request: Request<pb::DescribeStreamRequest>,
    ) -> Result<Response<pb::DescribeStreamResponse>, Status> {
        let stream = stream_snapshot(&self.node, &request.into_inner().stream_name)?;
        let shards = self.shards(&stream).await?;
        Ok(Response::new(pb::DescribeStreamResponse {
            stream: Some(pb::StreamDescription {
                summary: Some(Self::summary(&stream)),
                shards,
            }),
        }))
    }

    async fn list_streams(
        &self,
        _request: Request<pb::ListStreamsRequest>,
    ) -> Result<Response<pb::ListStreamsResponse>, Status> {
        let streams = self
            .node
            .metadata()
            .streams
            .values()
            .map(Self::summary)
            .collect();
        Ok(Response::new(pb::ListStreamsResponse { streams }))
    }

    async fn list_shards(
        &self,
        request: Request<pb::ListShardsRequest>,
    ) -> Result<Response<pb::ListShardsResponse>, Status> {
        let stream = stream_snapshot(&self.node, &request.into_inner().stream_name)?;
        let shards = self.shards(&stream).await?;
        Ok(Response::new(pb::ListShardsResponse { shards }))
    }
}
