//! StreamService: create, delete, describe and list streams and shards.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tributary_proto::v1 as pb;
use tributary_proto::v1::stream_service_server::StreamService;

use super::lease::Leases;
use super::{stream_snapshot, timestamp};
use crate::error::ApiError;
use crate::metadata::{
    parse_shard_id, MetadataCommand, ReshardPlan, ShardState, StreamMeta, StreamStatus,
};
use crate::node::Node;
use crate::reader;
use crate::validation;

/// The control-plane service.
pub struct StreamApi {
    node: Arc<Node>,
    leases: Leases,
}

impl StreamApi {
    /// A service over a node.
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            leases: Leases::new(node.clone()),
            node,
        }
    }

    fn summary(stream: &StreamMeta) -> pb::StreamSummary {
        pb::StreamSummary {
            stream_name: stream.name.clone(),
            status: match stream.status {
                StreamStatus::Creating => pb::StreamStatus::Creating,
                StreamStatus::Active => pb::StreamStatus::Active,
                StreamStatus::Updating => pb::StreamStatus::Updating,
            } as i32,
            shard_count: stream.visible_shards().count() as u32,
            open_shard_count: stream.open_shards().len() as u32,
            retention_seconds: stream.retention_ms / 1000,
            created_at: Some(timestamp(stream.created_at_ms)),
            max_record_bytes: stream.max_record_bytes,
            consumer_count: stream.consumers.len() as u32,
        }
    }

    fn consumer(stream: &StreamMeta, name: &str) -> Result<pb::Consumer, ApiError> {
        let consumer = stream.consumers.get(name).ok_or_else(|| {
            ApiError::not_found(format!(
                "consumer {name} is not registered on stream {}",
                stream.name
            ))
        })?;
        Ok(pb::Consumer {
            consumer_name: name.to_string(),
            consumer_id: consumer.consumer_id.to_string(),
            status: pb::ConsumerStatus::ConsumerActive as i32,
            created_at: Some(timestamp(consumer.created_at_ms)),
            stream_name: stream.name.clone(),
        })
    }

    /// Proposes a reshard after checking the request's shape.
    async fn reshard(&self, name: String, plan: ReshardPlan) -> Result<(), Status> {
        stream_snapshot(&self.node, &name)?;
        self.node
            .propose_metadata(MetadataCommand::StartReshard {
                name,
                plan,
                limits: self.node.limits(),
            })
            .await?;
        Ok(())
    }

    async fn shards(&self, stream: &StreamMeta) -> Result<Vec<pb::Shard>, Status> {
        let mut shards = Vec::with_capacity(stream.shards.len());
        for shard in stream.visible_shards() {
            let group = self.node.shard_group(shard.group_id);
            let (leader, last) = match &group {
                Some(group) => (
                    group.raft.current_leader().await.unwrap_or(0),
                    reader::last_sequence(group)?,
                ),
                None => (0, None),
            };
            let status = match shard.state {
                ShardState::Closed { .. } => pb::ShardStatus::Closed,
                _ => pb::ShardStatus::Open,
            };
            shards.push(pb::Shard {
                shard_id: shard.shard_id(),
                status: status as i32,
                starting_hash_key: shard.hash_range.start.to_string(),
                ending_hash_key: shard.hash_range.end.to_string(),
                starting_sequence_number: shard.starting_sequence_number().to_string(),
                ending_sequence_number: shard.ending_sequence_number().map(|n| n.to_string()),
                parent_shard_id: shard.parent.map(crate::metadata::shard_id),
                adjacent_parent_shard_id: shard.adjacent_parent.map(crate::metadata::shard_id),
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
        let limits = self.node.limits();
        validation::shard_count(request.shard_count, limits.max_shards)?;
        let retention_ms = validation::retention(request.retention_seconds, true)?;
        let max_record_bytes = validation::max_record_bytes(request.max_record_bytes)?;
        validation::tags(&request.tags, &Default::default())?;
        self.node
            .propose_metadata(MetadataCommand::CreateStream {
                name: request.stream_name,
                shard_count: request.shard_count,
                retention_ms,
                max_record_bytes,
                created_at_ms: self.node.now_ms(),
                tags: request.tags.into_iter().collect(),
                limits,
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

    async fn describe_stream_summary(
        &self,
        request: Request<pb::DescribeStreamSummaryRequest>,
    ) -> Result<Response<pb::DescribeStreamSummaryResponse>, Status> {
        let stream = stream_snapshot(&self.node, &request.into_inner().stream_name)?;
        Ok(Response::new(pb::DescribeStreamSummaryResponse {
            summary: Some(Self::summary(&stream)),
        }))
    }

    async fn get_shard_stats(
        &self,
        request: Request<pb::GetShardStatsRequest>,
    ) -> Result<Response<pb::GetShardStatsResponse>, Status> {
        let stream = stream_snapshot(&self.node, &request.into_inner().stream_name)?;
        let me = self.node.config().node_id;
        let shards = stream
            .shards
            .iter()
            .filter_map(|shard| {
                let group = self.node.shard_group(shard.group_id)?;
                Some(crate::metrics::shard_stats(&group, me, shard.is_open()))
            })
            .collect();
        Ok(Response::new(pb::GetShardStatsResponse {
            node_id: me,
            shards,
        }))
    }

    async fn split_shard(
        &self,
        request: Request<pb::SplitShardRequest>,
    ) -> Result<Response<pb::SplitShardResponse>, Status> {
        let request = request.into_inner();
        let stream = stream_snapshot(&self.node, &request.stream_name)?;
        let index = parse_shard_id(&request.shard_to_split)?;
        let at = match &request.new_starting_hash_key {
            Some(text) => validation::explicit_hash_key(text).map_err(|e| ApiError {
                message: e
                    .message
                    .replace("explicit hash key", "new starting hash key"),
                ..e
            })?,
            None => {
                let shard = stream.shard(index).ok_or_else(|| {
                    ApiError::not_found(format!(
                        "shard {} does not exist in stream {}",
                        request.shard_to_split, stream.name
                    ))
                })?;
                let range = shard.hash_range;
                if range.start == range.end {
                    return Err(ApiError::invalid(format!(
                        "shard {} covers a single hash key and cannot be split",
                        request.shard_to_split
                    ))
                    .into());
                }
                // The middle, rounded up so the first child is never empty.
                range.start + (range.end - range.start) / 2 + 1
            }
        };
        self.reshard(request.stream_name, ReshardPlan::Split { shard: index, at })
            .await?;
        Ok(Response::new(pb::SplitShardResponse {}))
    }

    async fn merge_shards(
        &self,
        request: Request<pb::MergeShardsRequest>,
    ) -> Result<Response<pb::MergeShardsResponse>, Status> {
        let request = request.into_inner();
        let shard = parse_shard_id(&request.shard_to_merge)?;
        let adjacent = parse_shard_id(&request.adjacent_shard_to_merge)?;
        self.reshard(request.stream_name, ReshardPlan::Merge { shard, adjacent })
            .await?;
        Ok(Response::new(pb::MergeShardsResponse {}))
    }

    async fn update_shard_count(
        &self,
        request: Request<pb::UpdateShardCountRequest>,
    ) -> Result<Response<pb::UpdateShardCountResponse>, Status> {
        let request = request.into_inner();
        let stream = stream_snapshot(&self.node, &request.stream_name)?;
        let target = request.target_shard_count;
        validation::shard_count(target, self.node.limits().max_shards)?;
        let current = stream.open_shards().len() as u32;
        self.reshard(request.stream_name, ReshardPlan::Scale { target })
            .await?;
        Ok(Response::new(pb::UpdateShardCountResponse {
            current_shard_count: current,
            target_shard_count: target,
        }))
    }

    async fn update_stream_retention(
        &self,
        request: Request<pb::UpdateStreamRetentionRequest>,
    ) -> Result<Response<pb::UpdateStreamRetentionResponse>, Status> {
        let request = request.into_inner();
        stream_snapshot(&self.node, &request.stream_name)?;
        let retention_ms = validation::retention(request.retention_seconds, false)?;
        self.node
            .propose_metadata(MetadataCommand::UpdateRetention {
                name: request.stream_name,
                retention_ms,
            })
            .await?;
        Ok(Response::new(pb::UpdateStreamRetentionResponse {}))
    }

    async fn add_tags_to_stream(
        &self,
        request: Request<pb::AddTagsToStreamRequest>,
    ) -> Result<Response<pb::AddTagsToStreamResponse>, Status> {
        let request = request.into_inner();
        let stream = stream_snapshot(&self.node, &request.stream_name)?;
        if request.tags.is_empty() {
            return Err(ApiError::invalid("no tags given; add 1 to 50").into());
        }
        validation::tags(&request.tags, &stream.tags)?;
        self.node
            .propose_metadata(MetadataCommand::AddTags {
                name: request.stream_name,
                tags: request.tags.into_iter().collect(),
            })
            .await?;
        Ok(Response::new(pb::AddTagsToStreamResponse {}))
    }

    async fn remove_tags_from_stream(
        &self,
        request: Request<pb::RemoveTagsFromStreamRequest>,
    ) -> Result<Response<pb::RemoveTagsFromStreamResponse>, Status> {
        let request = request.into_inner();
        stream_snapshot(&self.node, &request.stream_name)?;
        if request.tag_keys.is_empty() {
            return Err(ApiError::invalid("no tag keys given; remove 1 to 50").into());
        }
        for key in &request.tag_keys {
            validation::tag_key(key)?;
        }
        self.node
            .propose_metadata(MetadataCommand::RemoveTags {
                name: request.stream_name,
                keys: request.tag_keys,
            })
            .await?;
        Ok(Response::new(pb::RemoveTagsFromStreamResponse {}))
    }

    async fn list_tags_for_stream(
        &self,
        request: Request<pb::ListTagsForStreamRequest>,
    ) -> Result<Response<pb::ListTagsForStreamResponse>, Status> {
        let stream = stream_snapshot(&self.node, &request.into_inner().stream_name)?;
        Ok(Response::new(pb::ListTagsForStreamResponse {
            tags: stream.tags.into_iter().collect(),
        }))
    }

    async fn register_stream_consumer(
        &self,
        request: Request<pb::RegisterStreamConsumerRequest>,
    ) -> Result<Response<pb::RegisterStreamConsumerResponse>, Status> {
        let request = request.into_inner();
        stream_snapshot(&self.node, &request.stream_name)?;
        validation::consumer_name(&request.consumer_name)?;
        self.node
            .propose_metadata(MetadataCommand::RegisterConsumer {
                name: request.stream_name.clone(),
                consumer: request.consumer_name.clone(),
                created_at_ms: self.node.now_ms(),
                max_consumers: self.node.config().max_consumers_per_stream,
            })
            .await?;
        let stream = stream_snapshot(&self.node, &request.stream_name)?;
        Ok(Response::new(pb::RegisterStreamConsumerResponse {
            consumer: Some(Self::consumer(&stream, &request.consumer_name)?),
        }))
    }

    async fn deregister_stream_consumer(
        &self,
        request: Request<pb::DeregisterStreamConsumerRequest>,
    ) -> Result<Response<pb::DeregisterStreamConsumerResponse>, Status> {
        let request = request.into_inner();
        stream_snapshot(&self.node, &request.stream_name)?;
        validation::consumer_name(&request.consumer_name)?;
        self.node
            .propose_metadata(MetadataCommand::DeregisterConsumer {
                name: request.stream_name,
                consumer: request.consumer_name,
            })
            .await?;
        Ok(Response::new(pb::DeregisterStreamConsumerResponse {}))
    }

    async fn describe_stream_consumer(
        &self,
        request: Request<pb::DescribeStreamConsumerRequest>,
    ) -> Result<Response<pb::DescribeStreamConsumerResponse>, Status> {
        let request = request.into_inner();
        let stream = stream_snapshot(&self.node, &request.stream_name)?;
        validation::consumer_name(&request.consumer_name)?;
        Ok(Response::new(pb::DescribeStreamConsumerResponse {
            consumer: Some(Self::consumer(&stream, &request.consumer_name)?),
        }))
    }

    async fn list_stream_consumers(
        &self,
        request: Request<pb::ListStreamConsumersRequest>,
    ) -> Result<Response<pb::ListStreamConsumersResponse>, Status> {
        let stream = stream_snapshot(&self.node, &request.into_inner().stream_name)?;
        let consumers = stream
            .consumers
            .keys()
            .map(|name| Self::consumer(&stream, name))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListStreamConsumersResponse { consumers }))
    }

    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        self.leases
            .list(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn take_lease(
        &self,
        request: Request<pb::TakeLeaseRequest>,
    ) -> Result<Response<pb::TakeLeaseResponse>, Status> {
        self.leases
            .take(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn renew_leases(
        &self,
        request: Request<pb::RenewLeasesRequest>,
    ) -> Result<Response<pb::RenewLeasesResponse>, Status> {
        self.leases
            .renew(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn release_lease(
        &self,
        request: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<Response<pb::ReleaseLeaseResponse>, Status> {
        self.leases
            .release(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn checkpoint(
        &self,
        request: Request<pb::CheckpointRequest>,
    ) -> Result<Response<pb::CheckpointResponse>, Status> {
        self.leases
            .checkpoint(request.into_inner())
            .await
            .map(Response::new)
    }
}
