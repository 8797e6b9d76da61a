//! The connection to a Tributary node and one method per RPC.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};
use tributary_proto::v1::cluster_service_client::ClusterServiceClient;
use tributary_proto::v1::data_service_client::DataServiceClient;
use tributary_proto::v1::stream_service_client::StreamServiceClient;
use tributary_proto::v1::{
    AddTagsToStreamRequest, CheckpointRequest, ClusterStatusRequest, ClusterStatusResponse,
    Consumer, ConsumerStatus, CreateStreamRequest, DeleteStreamRequest,
    DeregisterStreamConsumerRequest, DescribeStreamConsumerRequest, DescribeStreamRequest,
    DescribeStreamSummaryRequest, ErrorCode, GetRecordsRequest, GetRecordsResponse,
    GetShardStatsRequest, GetShardStatsResponse, Lease, ListLeasesRequest, ListShardsRequest,
    ListStreamConsumersRequest, ListStreamsRequest, ListTagsForStreamRequest, MergeShardsRequest,
    PutRecordRequest, PutRecordResponse, PutRecordsEntry, PutRecordsRequest, PutRecordsResponse,
    RegisterStreamConsumerRequest, ReleaseLeaseRequest, RemoveTagsFromStreamRequest,
    RenewLeasesRequest, ReplaceNodeRequest, Shard, SplitShardRequest, StreamDescription,
    StreamStatus, StreamSummary, SubscribeToShardEvent, SubscribeToShardRequest, TakeLeaseRequest,
    UpdateShardCountRequest, UpdateStreamRetentionRequest,
};

use crate::{Error, StartingPosition};

/// Largest gRPC message the SDK sends or accepts.
///
/// tonic's 4 MiB default is below the largest legal request (a 5 MiB PutRecords batch) and
/// response (a 10 MiB GetRecords page); 64 MiB leaves room for framing while still refusing a
/// corrupt length prefix before it turns into a huge allocation.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How often [`Client::wait_for_active`] and [`Client::wait_for_consumer_active`] poll.
const ACTIVE_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Settings of a new stream beyond its name and shard count ([`Client::create_stream_with`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateStreamOptions {
    /// How long records are kept, in whole seconds from 1 minute up to 365 days (the server
    /// checks the range). `None` takes the server's default, 24 hours.
    pub retention: Option<Duration>,
    /// Tags to attach (up to 50; keys 1-128 characters, values up to 256).
    pub tags: BTreeMap<String, String>,
}

/// Optional fields of a single-record put ([`Client::put_record`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutRecordOptions {
    /// A decimal 128-bit integer that picks the shard instead of the partition key's hash.
    pub explicit_hash_key: Option<String>,
    /// The sequence number of an earlier record this one must follow: the new record gets a
    /// strictly greater sequence number. It must come from the shard the record lands on or
    /// from an ancestor of it (a reshard in between is fine).
    pub sequence_number_for_ordering: Option<String>,
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long to wait for the TCP (and HTTP/2) connection. Short, so a wrong endpoint fails
    /// fast instead of hanging a CLI command.
    pub connect_timeout: Duration,
    /// Deadline for each RPC, `None` for no deadline. Every RPC is a quick request/response, so
    /// a deadline only fires when a node hangs; too short a value would fail big GetRecords pages
    /// on slow links.
    pub request_timeout: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// A connection to one Tributary node (any node of the cluster serves every RPC).
///
/// Cloning is cheap: clones share the underlying HTTP/2 channel.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: String,
    streams: StreamServiceClient<Channel>,
    data: DataServiceClient<Channel>,
    cluster: ClusterServiceClient<Channel>,
}

impl Client {
    /// Connects to `endpoint` (`http://host:port` or `host:port`) with default options.
    pub async fn connect(endpoint: &str) -> Result<Client, Error> {
        Client::connect_with(endpoint, &ClientOptions::default()).await
    }

    /// Connects to `endpoint` (`http://host:port` or `host:port`). A comma-separated list
    /// of a cluster's nodes (`a:7101,b:7101,c:7101`) spreads requests over the nodes that
    /// answer and keeps working while any of them is down (every node serves every request).
    pub async fn connect_with(endpoint: &str, options: &ClientOptions) -> Result<Client, Error> {
        let uris = endpoint
            .split(',')
            .map(normalize_endpoint)
            .collect::<Result<Vec<_>, _>>()?;
        let mut endpoints = Vec::with_capacity(uris.len());
        for uri in &uris {
            let mut builder = Endpoint::from_shared(uri.clone())
                .map_err(|error| {
                    Error::InvalidInput(format!(
                        "endpoint '{uri}' is not a valid URL ({error}); expected http://HOST:PORT \
                         or HOST:PORT"
                    ))
                })?
                .connect_timeout(options.connect_timeout)
                .tcp_nodelay(true)
                // Large enough for catch-up pages of several MiB without stalling on window
                // updates; larger frames mean fewer of them per page.
                .initial_connection_window_size(Some(
                    tributary_proto::HTTP2_CONNECTION_WINDOW_BYTES,
                ))
                .initial_stream_window_size(Some(tributary_proto::HTTP2_STREAM_WINDOW_BYTES))
                .max_frame_size(Some(tributary_proto::HTTP2_MAX_FRAME_BYTES));
            if let Some(timeout) = options.request_timeout {
                builder = builder.timeout(timeout);
            }
            endpoints.push(builder);
        }
        let uri = uris.join(",");
        let channel = if endpoints.len() == 1 {
            let only = endpoints.remove(0);
            only.connect().await.map_err(|source| Error::Transport {
                endpoint: uri.clone(),
                source,
            })?
        } else {
            // Connects lazily; a node that does not answer is skipped while others do.
            Channel::balance_list(endpoints.into_iter())
        };
        Ok(Client {
            endpoint: uri,
            streams: StreamServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            data: DataServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            cluster: ClusterServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        })
    }

    /// The endpoint URL(s) this client is connected to (comma-separated for a list).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Creates a stream with `shards` shards. `retention: None` takes the server's default
    /// (24 h). The stream starts CREATING; see [`Client::wait_for_active`].
    pub async fn create_stream(
        &self,
        name: &str,
        shards: u32,
        retention: Option<Duration>,
    ) -> Result<(), Error> {
        let options = CreateStreamOptions {
            retention,
            ..CreateStreamOptions::default()
        };
        self.create_stream_with(name, shards, &options).await
    }

    /// Creates a stream with `shards` shards, retention and tags as in `options`. The stream
    /// starts CREATING; see [`Client::wait_for_active`].
    pub async fn create_stream_with(
        &self,
        name: &str,
        shards: u32,
        options: &CreateStreamOptions,
    ) -> Result<(), Error> {
        let retention_seconds = match options.retention {
            Some(retention) => retention_seconds(retention)?,
            None => 0,
        };
        let request = CreateStreamRequest {
            stream_name: name.to_owned(),
            shard_count: shards,
            max_record_bytes: 0,
            retention_seconds,
            tags: options
                .tags
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        };
        self.streams.clone().create_stream(request).await?;
        Ok(())
    }

    /// Starts deleting a stream.
    pub async fn delete_stream(&self, name: &str) -> Result<(), Error> {
        let request = DeleteStreamRequest {
            stream_name: name.to_owned(),
        };
        self.streams.clone().delete_stream(request).await?;
        Ok(())
    }

    /// The stream's summary and all its shards (closed ones included).
    pub async fn describe_stream(&self, name: &str) -> Result<StreamDescription, Error> {
        let request = DescribeStreamRequest {
            stream_name: name.to_owned(),
        };
        let response = self.streams.clone().describe_stream(request).await?;
        response.into_inner().stream.ok_or_else(|| {
            Error::UnexpectedResponse(format!("DescribeStream of '{name}' has no stream"))
        })
    }

    /// Every stream.
    pub async fn list_streams(&self) -> Result<Vec<StreamSummary>, Error> {
        let response = self
            .streams
            .clone()
            .list_streams(ListStreamsRequest {})
            .await?;
        Ok(response.into_inner().streams)
    }

    /// The stream's summary (status, retention, shard and consumer counts) without its shards:
    /// cheaper than [`Client::describe_stream`] for a stream with many shards.
    pub async fn describe_stream_summary(&self, name: &str) -> Result<StreamSummary, Error> {
        let request = DescribeStreamSummaryRequest {
            stream_name: name.to_owned(),
        };
        let response = self
            .streams
            .clone()
            .describe_stream_summary(request)
            .await?;
        response.into_inner().summary.ok_or_else(|| {
            Error::UnexpectedResponse(format!("DescribeStreamSummary of '{name}' has no summary"))
        })
    }

    /// The stream's shards, closed ones included, in the server's order (parents before
    /// children).
    pub async fn list_shards(&self, stream: &str) -> Result<Vec<Shard>, Error> {
        let request = ListShardsRequest {
            stream_name: stream.to_owned(),
        };
        let response = self.streams.clone().list_shards(request).await?;
        Ok(response.into_inner().shards)
    }

    /// The connected node's own figures for each shard of `stream` it holds a replica of
    /// (traffic it served, raft position, disk use). With a list of endpoints, the node
    /// that answers is named in the response.
    pub async fn shard_stats(&self, stream: &str) -> Result<GetShardStatsResponse, Error> {
        let request = GetShardStatsRequest {
            stream_name: stream.to_owned(),
        };
        let response = self.streams.clone().get_shard_stats(request).await?;
        Ok(response.into_inner())
    }

    /// Writes one record; `options` may pin its hash key or order it after an earlier record.
    pub async fn put_record(
        &self,
        stream: &str,
        partition_key: &str,
        data: impl Into<Bytes>,
        options: &PutRecordOptions,
    ) -> Result<PutRecordResponse, Error> {
        let request = PutRecordRequest {
            stream_name: stream.to_owned(),
            partition_key: partition_key.to_owned(),
            data: data.into(),
            explicit_hash_key: options.explicit_hash_key.clone(),
            sequence_number_for_ordering: options.sequence_number_for_ordering.clone(),
        };
        let response = self.data.clone().put_record(request).await?;
        Ok(response.into_inner())
    }

    /// Writes a batch of records (at most 500 and 5 MiB). Entries fail individually: check
    /// `failed_record_count` and each result's `error_code`. The response is checked to hold
    /// one result per entry.
    pub async fn put_records(
        &self,
        stream: &str,
        records: Vec<PutRecordsEntry>,
    ) -> Result<PutRecordsResponse, Error> {
        self.put_records_as(stream, records, None).await
    }

    /// PutRecords as request `sequence` of idempotent producer `producer_id` (both
    /// non-zero): a retry with the same numbers and records is answered with the original
    /// sequence numbers instead of being stored twice. [`crate::Producer`] numbers its
    /// requests this way.
    pub async fn put_records_idempotent(
        &self,
        stream: &str,
        records: Vec<PutRecordsEntry>,
        producer_id: u64,
        sequence: u64,
    ) -> Result<PutRecordsResponse, Error> {
        self.put_records_as(stream, records, Some((producer_id, sequence)))
            .await
    }

    async fn put_records_as(
        &self,
        stream: &str,
        records: Vec<PutRecordsEntry>,
        producer: Option<(u64, u64)>,
    ) -> Result<PutRecordsResponse, Error> {
        let sent = records.len();
        let (producer_id, producer_sequence) = producer.unwrap_or((0, 0));
        let request = PutRecordsRequest {
            stream_name: stream.to_owned(),
            records,
            producer_id,
            producer_sequence,
        };
        let response = self.data.clone().put_records(request).await?.into_inner();
        if response.records.len() != sent {
            return Err(Error::UnexpectedResponse(format!(
                "PutRecords returned {} results for {sent} records",
                response.records.len()
            )));
        }
        Ok(response)
    }

    /// Opens an iterator at `position` in the shard; pass it to [`Client::get_records`].
    pub async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<String, Error> {
        let request = position.to_request(stream, shard_id);
        let response = self.data.clone().get_shard_iterator(request).await?;
        Ok(response.into_inner().shard_iterator)
    }

    /// Reads up to `limit` records (1-10,000; 0 means 10,000) at the iterator.
    pub async fn get_records(
        &self,
        shard_iterator: &str,
        limit: u32,
    ) -> Result<GetRecordsResponse, Error> {
        self.get_records_waiting(shard_iterator, limit, None).await
    }

    /// Like [`Client::get_records`], but at the shard's tip the server waits up to `wait`
    /// (at most 10 s) for records to commit and answers as soon as they do (long poll).
    pub async fn get_records_waiting(
        &self,
        shard_iterator: &str,
        limit: u32,
        wait: Option<std::time::Duration>,
    ) -> Result<GetRecordsResponse, Error> {
        let request = GetRecordsRequest {
            shard_iterator: shard_iterator.to_owned(),
            limit,
            stream_name: None,
            wait_ms: wait.map(|w| u32::try_from(w.as_millis()).unwrap_or(u32::MAX)),
        };
        let response = self.data.clone().get_records(request).await?;
        Ok(response.into_inner())
    }

    /// Subscribes `consumer` (a registered enhanced fan-out consumer) to `shard_id` from
    /// `position`: the server pushes records as they commit, and an event without records
    /// about every 5 s while the shard is idle.
    ///
    /// A failed call is a typed [`Error`]; a failure on the returned stream is a
    /// `tonic::Status` that [`Error::from`] types the same way. The stream ends (without an
    /// error) after up to 5 minutes: subscribe again `AfterSequence` the last event's
    /// `continuation_sequence_number`. The event that finishes a closed shard has no
    /// continuation and names the shard's children. A second subscription of the same
    /// consumer to the same shard takes over; this one then fails with ResourceInUse.
    /// [`ShardSubscriber`](crate::ShardSubscriber) does all of that.
    ///
    /// The client's request timeout bounds only the wait for the subscription to start,
    /// never the stream of events.
    pub async fn subscribe_to_shard(
        &self,
        stream: &str,
        consumer: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<tonic::Streaming<SubscribeToShardEvent>, Error> {
        let request = SubscribeToShardRequest {
            stream_name: stream.to_owned(),
            consumer_name: consumer.to_owned(),
            shard_id: shard_id.to_owned(),
            starting_position: Some(position.to_proto()),
        };
        let response = self.data.clone().subscribe_to_shard(request).await?;
        Ok(response.into_inner())
    }

    /// Registers an enhanced fan-out consumer of the stream (at most 20 per stream). It
    /// starts CREATING; see [`Client::wait_for_consumer_active`].
    pub async fn register_stream_consumer(
        &self,
        stream: &str,
        consumer: &str,
    ) -> Result<Consumer, Error> {
        let request = RegisterStreamConsumerRequest {
            stream_name: stream.to_owned(),
            consumer_name: consumer.to_owned(),
        };
        let response = self
            .streams
            .clone()
            .register_stream_consumer(request)
            .await?;
        response.into_inner().consumer.ok_or_else(|| {
            Error::UnexpectedResponse(format!(
                "RegisterStreamConsumer of '{consumer}' on stream '{stream}' has no consumer"
            ))
        })
    }

    /// Starts deregistering a consumer; its subscriptions end.
    pub async fn deregister_stream_consumer(
        &self,
        stream: &str,
        consumer: &str,
    ) -> Result<(), Error> {
        let request = DeregisterStreamConsumerRequest {
            stream_name: stream.to_owned(),
            consumer_name: consumer.to_owned(),
        };
        self.streams
            .clone()
            .deregister_stream_consumer(request)
            .await?;
        Ok(())
    }

    /// One consumer of the stream.
    pub async fn describe_stream_consumer(
        &self,
        stream: &str,
        consumer: &str,
    ) -> Result<Consumer, Error> {
        let request = DescribeStreamConsumerRequest {
            stream_name: stream.to_owned(),
            consumer_name: consumer.to_owned(),
        };
        let response = self
            .streams
            .clone()
            .describe_stream_consumer(request)
            .await?;
        response.into_inner().consumer.ok_or_else(|| {
            Error::UnexpectedResponse(format!(
                "DescribeStreamConsumer of '{consumer}' on stream '{stream}' has no consumer"
            ))
        })
    }

    /// Every consumer registered on the stream.
    pub async fn list_stream_consumers(&self, stream: &str) -> Result<Vec<Consumer>, Error> {
        let request = ListStreamConsumersRequest {
            stream_name: stream.to_owned(),
        };
        let response = self.streams.clone().list_stream_consumers(request).await?;
        Ok(response.into_inner().consumers)
    }

    /// Every shard lease of a consumer-group application (shards nobody ever took are not
    /// listed). See [`crate::ConsumerGroup`] for the worker that uses these calls.
    pub async fn list_leases(&self, stream: &str, application: &str) -> Result<Vec<Lease>, Error> {
        let request = ListLeasesRequest {
            stream_name: stream.to_owned(),
            application: application.to_owned(),
        };
        Ok(self
            .streams
            .clone()
            .list_leases(request)
            .await?
            .into_inner()
            .leases)
    }

    /// Takes a shard lease if its epoch is still `request.expected_epoch` (and it is free,
    /// expired, or `steal` is set); returns the lease as taken.
    pub async fn take_lease(&self, request: TakeLeaseRequest) -> Result<Lease, Error> {
        let shard = request.shard_id.clone();
        let response = self.streams.clone().take_lease(request).await?;
        response.into_inner().lease.ok_or_else(|| {
            Error::UnexpectedResponse(format!("TakeLease of {shard} returned no lease"))
        })
    }

    /// Extends the leases the owner still holds; returns every lease of the application.
    pub async fn renew_leases(&self, request: RenewLeasesRequest) -> Result<Vec<Lease>, Error> {
        Ok(self
            .streams
            .clone()
            .renew_leases(request)
            .await?
            .into_inner()
            .leases)
    }

    /// Gives a held lease up so another worker can take it at once.
    pub async fn release_lease(&self, request: ReleaseLeaseRequest) -> Result<(), Error> {
        self.streams.clone().release_lease(request).await?;
        Ok(())
    }

    /// Records a held lease's checkpoint (LeaseLost if the lease was taken over).
    pub async fn checkpoint(&self, request: CheckpointRequest) -> Result<Lease, Error> {
        let shard = request.shard_id.clone();
        let response = self.streams.clone().checkpoint(request).await?;
        response.into_inner().lease.ok_or_else(|| {
            Error::UnexpectedResponse(format!("Checkpoint of {shard} returned no lease"))
        })
    }

    /// Polls DescribeStreamConsumer until the consumer is ACTIVE (subscriptions are accepted)
    /// and returns it.
    ///
    /// Retryable errors and ResourceNotFound (a node that has not applied the registration
    /// yet) are waited out; a consumer being deleted is ResourceInUse at once; after
    /// `timeout` the last status or error is reported as [`Error::Timeout`].
    pub async fn wait_for_consumer_active(
        &self,
        stream: &str,
        consumer: &str,
        timeout: Duration,
    ) -> Result<Consumer, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.describe_stream_consumer(stream, consumer).await {
                Ok(described) => match described.status() {
                    ConsumerStatus::ConsumerActive => return Ok(described),
                    ConsumerStatus::ConsumerDeleting => {
                        return Err(Error::api(
                            ErrorCode::ResourceInUse,
                            format!(
                                "consumer '{consumer}' of stream '{stream}' is being \
                                 deregistered"
                            ),
                        ))
                    }
                    other => format!("status {}", other.as_str_name()),
                },
                Err(error)
                    if error.is_retryable()
                        || error.code() == Some(ErrorCode::ResourceNotFound) =>
                {
                    error.to_string()
                }
                Err(error) => return Err(error),
            };
            if Instant::now() + ACTIVE_POLL_INTERVAL > deadline {
                return Err(Error::Timeout(format!(
                    "consumer '{consumer}' of stream '{stream}' is not ACTIVE after {:.1}s \
                     (last: {last})",
                    timeout.as_secs_f64()
                )));
            }
            tokio::time::sleep(ACTIVE_POLL_INTERVAL).await;
        }
    }

    /// The cluster's nodes and their roles.
    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, Error> {
        let response = self
            .cluster
            .clone()
            .cluster_status(ClusterStatusRequest {})
            .await?;
        Ok(response.into_inner())
    }

    /// Re-adds a node whose data dir was lost (see `trib cluster replace-node`); returns
    /// how many raft groups changed. Waits until the node has caught up everywhere.
    pub async fn replace_node(&self, node_id: u64) -> Result<u32, Error> {
        let response = self
            .cluster
            .clone()
            .replace_node(ReplaceNodeRequest { node_id })
            .await?;
        Ok(response.into_inner().groups_changed)
    }

    /// Splits an open shard in two. `new_starting_hash_key` starts the second child (above
    /// the shard's starting hash key, at most its ending one); `None` splits in the middle.
    /// The stream is UPDATING until the split is done; see [`Client::wait_for_active_where`].
    pub async fn split_shard(
        &self,
        stream: &str,
        shard_id: &str,
        new_starting_hash_key: Option<u128>,
    ) -> Result<(), Error> {
        let request = SplitShardRequest {
            stream_name: stream.to_owned(),
            shard_to_split: shard_id.to_owned(),
            new_starting_hash_key: new_starting_hash_key.map(|key| key.to_string()),
        };
        self.streams.clone().split_shard(request).await?;
        Ok(())
    }

    /// Merges two open shards whose hash key ranges touch into one. The stream is UPDATING
    /// until the merge is done; see [`Client::wait_for_active_where`].
    pub async fn merge_shards(
        &self,
        stream: &str,
        shard_id: &str,
        adjacent_shard_id: &str,
    ) -> Result<(), Error> {
        let request = MergeShardsRequest {
            stream_name: stream.to_owned(),
            shard_to_merge: shard_id.to_owned(),
            adjacent_shard_to_merge: adjacent_shard_id.to_owned(),
        };
        self.streams.clone().merge_shards(request).await?;
        Ok(())
    }

    /// Starts scaling the stream to `target` open shards (by splits and merges) and returns
    /// `(current, target)` open shard counts as the server saw them. The stream is UPDATING
    /// until the last reshard is done; see [`Client::wait_for_active_where`].
    pub async fn update_shard_count(&self, stream: &str, target: u32) -> Result<(u32, u32), Error> {
        let request = UpdateShardCountRequest {
            stream_name: stream.to_owned(),
            target_shard_count: target,
        };
        let response = self
            .streams
            .clone()
            .update_shard_count(request)
            .await?
            .into_inner();
        Ok((response.current_shard_count, response.target_shard_count))
    }

    /// Sets how long records are kept, in whole seconds from 1 minute up to 365 days. A
    /// decrease hides older records at once.
    pub async fn update_stream_retention(
        &self,
        stream: &str,
        retention: Duration,
    ) -> Result<(), Error> {
        let request = UpdateStreamRetentionRequest {
            stream_name: stream.to_owned(),
            retention_seconds: retention_seconds(retention)?,
        };
        self.streams
            .clone()
            .update_stream_retention(request)
            .await?;
        Ok(())
    }

    /// Adds tags to the stream, overwriting the values of keys it already has.
    pub async fn add_tags(
        &self,
        stream: &str,
        tags: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), Error> {
        let request = AddTagsToStreamRequest {
            stream_name: stream.to_owned(),
            tags: tags.into_iter().collect::<HashMap<_, _>>(),
        };
        self.streams.clone().add_tags_to_stream(request).await?;
        Ok(())
    }

    /// Removes the tags with these keys (keys the stream does not have are ignored).
    pub async fn remove_tags(
        &self,
        stream: &str,
        keys: impl IntoIterator<Item = String>,
    ) -> Result<(), Error> {
        let request = RemoveTagsFromStreamRequest {
            stream_name: stream.to_owned(),
            tag_keys: keys.into_iter().collect(),
        };
        self.streams
            .clone()
            .remove_tags_from_stream(request)
            .await?;
        Ok(())
    }

    /// The stream's tags, sorted by key.
    pub async fn list_tags(&self, stream: &str) -> Result<BTreeMap<String, String>, Error> {
        let request = ListTagsForStreamRequest {
            stream_name: stream.to_owned(),
        };
        let response = self.streams.clone().list_tags_for_stream(request).await?;
        Ok(response.into_inner().tags.into_iter().collect())
    }

    /// Polls DescribeStream until the stream is ACTIVE and returns its description.
    ///
    /// Retryable errors (an election in progress) and ResourceNotFound (a node that has not
    /// applied the create yet) are waited out; after `timeout` the last status or error is
    /// reported as [`Error::Timeout`].
    pub async fn wait_for_active(
        &self,
        stream: &str,
        timeout: Duration,
    ) -> Result<StreamDescription, Error> {
        self.wait_for_active_where(stream, timeout, |_| true).await
    }

    /// Like [`Client::wait_for_active`], but also waits until `settled` holds.
    ///
    /// `settled` sees the description of every poll, whatever the status, so it can report
    /// progress. It lets a caller wait for its own change to be visible: right after a
    /// reshard is accepted, a node that has not applied it yet may still describe the
    /// stream as ACTIVE with the old shards.
    pub async fn wait_for_active_where<F>(
        &self,
        stream: &str,
        timeout: Duration,
        mut settled: F,
    ) -> Result<StreamDescription, Error>
    where
        F: FnMut(&StreamDescription) -> bool,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.describe_stream(stream).await {
                Ok(description) => {
                    let status = description
                        .summary
                        .as_ref()
                        .map_or(StreamStatus::Unspecified, |summary| summary.status());
                    let done = settled(&description);
                    match status {
                        StreamStatus::Active if done => return Ok(description),
                        StreamStatus::Active => {
                            "status ACTIVE, the change is not visible yet".to_owned()
                        }
                        StreamStatus::Deleting => {
                            return Err(Error::api(
                                ErrorCode::ResourceInUse,
                                format!("stream '{stream}' is being deleted"),
                            ))
                        }
                        other => format!("status {}", other.as_str_name()),
                    }
                }
                Err(error)
                    if error.is_retryable()
                        || error.code() == Some(ErrorCode::ResourceNotFound) =>
                {
                    error.to_string()
                }
                Err(error) => return Err(error),
            };
            if Instant::now() + ACTIVE_POLL_INTERVAL > deadline {
                return Err(Error::Timeout(format!(
                    "stream '{stream}' is not ACTIVE after {:.1}s (last: {last})",
                    timeout.as_secs_f64()
                )));
            }
            tokio::time::sleep(ACTIVE_POLL_INTERVAL).await;
        }
    }
}

/// A retention as the wire's whole seconds. Zero means "the default" on the wire, so a
/// duration that would round to it (or lose a fraction) is refused rather than sent.
fn retention_seconds(retention: Duration) -> Result<u64, Error> {
    if retention.subsec_nanos() != 0 || retention.as_secs() == 0 {
        return Err(Error::InvalidInput(format!(
            "retention {retention:?} is not a whole number of seconds; the server allows 1 \
             minute up to 365 days"
        )));
    }
    Ok(retention.as_secs())
}

/// `host:port` becomes `http://host:port`; URLs with a scheme are kept.
fn normalize_endpoint(endpoint: &str) -> Result<String, Error> {
    let endpoint = endpoint.trim();
    if endpoint.is_empty() {
        return Err(Error::InvalidInput(
            "the endpoint is empty; expected http://HOST:PORT or HOST:PORT".into(),
        ));
    }
    if endpoint.contains("://") {
        Ok(endpoint.to_owned())
    } else {
        Ok(format!("http://{endpoint}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_without_a_scheme_get_http() {
        let cases = [
            ("127.0.0.1:7101", "http://127.0.0.1:7101"),
            ("http://node-1:7101", "http://node-1:7101"),
            (" https://node-1:7101 ", "https://node-1:7101"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_endpoint(input).ok().as_deref(), Some(expected));
        }
        assert!(normalize_endpoint("  ").is_err());
    }

    #[test]
    fn retention_goes_out_in_whole_seconds() {
        assert_eq!(retention_seconds(Duration::from_secs(60)).ok(), Some(60));
        assert_eq!(
            retention_seconds(Duration::from_secs(365 * 86_400)).ok(),
            Some(31_536_000)
        );
        // Zero means "the default" on the wire; a fraction would be silently dropped.
        for bad in [
            Duration::ZERO,
            Duration::from_millis(500),
            Duration::from_millis(90_500),
        ] {
            let error = retention_seconds(bad).expect_err("refused");
            assert!(matches!(error, Error::InvalidInput(_)), "{error:?}");
        }
    }

    #[tokio::test]
    async fn malformed_endpoints_are_invalid_input() {
        let error = Client::connect("http://[::1").await.expect_err("bad URL");
        assert!(matches!(error, Error::InvalidInput(_)), "{error:?}");
    }

    #[tokio::test]
    async fn refused_connections_are_transport_errors() {
        // Port 1 on loopback is essentially never listening.
        let options = ClientOptions {
            connect_timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        };
        let error = Client::connect_with("127.0.0.1:1", &options)
            .await
            .expect_err("nothing listens on port 1");
        assert!(matches!(error, Error::Transport { .. }), "{error:?}");
        assert!(error.is_retryable());
        assert!(error.to_string().starts_with("Unavailable: "), "{error}");
    }
}
