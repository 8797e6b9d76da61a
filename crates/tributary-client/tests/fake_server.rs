//! The SDK's retry and stop logic against `FakeTributary`, an in-process gRPC **fake**.
//!
//! A fake, not the real server, because these tests need faults on demand: a PutRecords call
//! that fails whole, one shard's entries failing while the other's succeed, an iterator that
//! expires mid-read, a ListShards tip that lags the log, a fan-out subscription that ends
//! after a few events or fails in the middle. End-to-end behaviour against real nodes lives
//! in the workspace `tests` crate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tributary_client::proto::v1::data_service_server::{DataService, DataServiceServer};
use tributary_client::proto::v1::stream_service_server::{StreamService, StreamServiceServer};
use tributary_client::proto::v1::{
    AddTagsToStreamRequest, AddTagsToStreamResponse, ChildShard, CreateStreamRequest,
    CreateStreamResponse, DeleteStreamRequest, DeleteStreamResponse,
    DeregisterStreamConsumerRequest, DeregisterStreamConsumerResponse,
    DescribeStreamConsumerRequest, DescribeStreamConsumerResponse, DescribeStreamRequest,
    DescribeStreamResponse, DescribeStreamSummaryRequest, DescribeStreamSummaryResponse,
    GetRecordsRequest, GetShardIteratorRequest, GetShardIteratorResponse, ListShardsRequest,
    ListShardsResponse, ListStreamConsumersRequest, ListStreamConsumersResponse,
    ListStreamsRequest, ListStreamsResponse, ListTagsForStreamRequest, ListTagsForStreamResponse,
    MergeShardsRequest, MergeShardsResponse, PutRecordRequest, PutRecordsRequest,
    PutRecordsResultEntry, RegisterStreamConsumerRequest, RegisterStreamConsumerResponse,
    RemoveTagsFromStreamRequest, RemoveTagsFromStreamResponse, ShardIteratorType,
    SplitShardRequest, SplitShardResponse, StartingPosition as WirePosition,
    SubscribeToShardRequest, UpdateShardCountRequest, UpdateShardCountResponse,
    UpdateStreamRetentionRequest, UpdateStreamRetentionResponse,
};
use tributary_client::{
    error_code_name, follow, put_all, read_shard_until_tip, read_stream_until_tip,
    shard_for_record, Client, Consumer, ConsumerStatus, ErrorCode, FanOutConsumer, FanOutOptions,
    GetRecordsResponse, PutOptions, PutRecordResponse, PutRecordsResponse, Record, RetryPolicy,
    Shard, ShardStatus, StartingPosition, StreamDescription, StreamStatus, StreamSummary,
    SubscribeToShardEvent,
};

const STREAM: &str = "orders";

/// Decides the fate of one PutRecords entry: `(call number from 1, shard index)` → failure.
type EntryFault = Box<dyn FnMut(usize, usize, &str) -> Option<ErrorCode> + Send>;

struct FakeShard {
    meta: Shard,
    log: Vec<Record>,
    /// Report only this many records as committed in ListShards (a tip that lags the log).
    listed_len: Option<usize>,
}

#[derive(Default)]
struct FakeState {
    shards: Vec<FakeShard>,
    /// Whole PutRecords calls to fail, one per call, before faults per entry apply.
    put_call_faults: Vec<ErrorCode>,
    entry_fault: Option<EntryFault>,
    /// Number of entries in each PutRecords request, in call order.
    put_request_sizes: Vec<usize>,
    /// GetRecords call numbers (from 1) that fail with ExpiredIterator.
    expire_get_records_calls: Vec<usize>,
    get_records_calls: usize,
    /// Most records a GetRecords page returns, so reads take several pages.
    max_page: usize,
    /// DescribeStream reports CREATING this many times before ACTIVE.
    creating_describes: usize,
    /// ListShards lists the shards in reverse (children before parents).
    reverse_listing: bool,
    /// ListShards leaves these shards out (a node that lags behind a reshard).
    unlisted: HashSet<String>,
    tags: BTreeMap<String, String>,
    retention_seconds: u64,
    /// Registered fan-out consumers by name.
    consumers: BTreeMap<String, Consumer>,
    registrations: u64,
    /// A registered consumer stays CREATING through this many Describe/Subscribe calls.
    consumer_activation_calls: usize,
    /// The newest subscription of each (consumer, shard id): an older one is taken over.
    subscription_generation: HashMap<(String, String), u64>,
    /// Every SubscribeToShard call: when, which shard, from where.
    subscribe_calls: Vec<(Instant, String, WirePosition)>,
    /// A subscription ends (OK) after this many events, like the server's 5-minute limit.
    events_per_subscription: Option<usize>,
    /// Subscriptions to fail with these codes after their first event, one per subscription.
    subscription_faults: Vec<ErrorCode>,
    /// An idle subscription sends an event without records this often.
    heartbeat: Duration,
}

impl FakeState {
    fn index_of(&self, shard_id: &str) -> Result<usize, Status> {
        self.shards
            .iter()
            .position(|s| s.meta.shard_id == shard_id)
            .ok_or_else(|| api_status(ErrorCode::ResourceNotFound, "no such shard"))
    }

    /// Where a read from `kind` (and `given`, for the sequence-number kinds) starts in the log.
    fn offset(&self, index: usize, kind: ShardIteratorType, given: Option<&str>) -> usize {
        let log = &self.shards[index].log;
        let given = given.and_then(|s| s.parse::<u128>().ok());
        let seq_of = |r: &Record| r.sequence_number.parse::<u128>().unwrap_or(0);
        match (kind, given) {
            (ShardIteratorType::Latest, _) => log.len(),
            (ShardIteratorType::AtSequenceNumber, Some(given)) => {
                log.iter().take_while(|r| seq_of(r) < given).count()
            }
            (ShardIteratorType::AfterSequenceNumber, Some(given)) => {
                log.iter().take_while(|r| seq_of(r) <= given).count()
            }
            _ => 0,
        }
    }

    /// The shards that continue `index`'s hash keys.
    fn children(&self, index: usize) -> Vec<ChildShard> {
        let parent_id = &self.shards[index].meta.shard_id;
        self.shards
            .iter()
            .filter(|child| {
                child.meta.parent_shard_id.as_ref() == Some(parent_id)
                    || child.meta.adjacent_parent_shard_id.as_ref() == Some(parent_id)
            })
            .map(|child| ChildShard {
                shard_id: child.meta.shard_id.clone(),
                parent_shards: [
                    &child.meta.parent_shard_id,
                    &child.meta.adjacent_parent_shard_id,
                ]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
                starting_hash_key: child.meta.starting_hash_key.clone(),
                ending_hash_key: child.meta.ending_hash_key.clone(),
            })
            .collect()
    }

    /// The consumer, after one more call towards its activation.
    fn consumer(&mut self, name: &str) -> Result<Consumer, Status> {
        let activate = self.consumer_activation_calls == 0;
        self.consumer_activation_calls = self.consumer_activation_calls.saturating_sub(1);
        let consumer = self.consumers.get_mut(name).ok_or_else(|| {
            api_status(
                ErrorCode::ResourceNotFound,
                format!("consumer '{name}' not found"),
            )
        })?;
        if activate && consumer.status() == ConsumerStatus::ConsumerCreating {
            consumer.set_status(ConsumerStatus::ConsumerActive);
        }
        Ok(consumer.clone())
    }

    fn range(&self, index: usize) -> (u128, u128) {
        let meta = &self.shards[index].meta;
        let parse = |key: &str| key.parse::<u128>().expect("decimal hash key");
        (parse(&meta.starting_hash_key), parse(&meta.ending_hash_key))
    }

    /// Closes the shard at its last record; later writes to its keys go to the new shards.
    fn close(&mut self, index: usize) {
        let shard = &mut self.shards[index];
        shard.meta.set_status(ShardStatus::Closed);
        shard.meta.ending_sequence_number = Some(
            shard
                .log
                .last()
                .map_or(shard.meta.starting_sequence_number.clone(), |r| {
                    r.sequence_number.clone()
                }),
        );
    }

    fn add_child(&mut self, parents: &[&str], start: u128, end: u128) {
        let index = self.shards.len();
        let mut meta = Shard {
            shard_id: format!("shardId-{index:012}"),
            starting_hash_key: start.to_string(),
            ending_hash_key: end.to_string(),
            starting_sequence_number: sequence(index, 0).to_string(),
            parent_shard_id: parents.first().map(|p| (*p).to_owned()),
            adjacent_parent_shard_id: parents.get(1).map(|p| (*p).to_owned()),
            leader_node_id: 1,
            ..Default::default()
        };
        meta.set_status(ShardStatus::Open);
        self.shards.push(FakeShard {
            meta,
            log: Vec::new(),
            listed_len: None,
        });
    }

    fn split(&mut self, shard_id: &str, at: Option<u128>) -> Result<(), Status> {
        let index = self.index_of(shard_id)?;
        let (start, end) = self.range(index);
        let at = at.unwrap_or(start + (end - start) / 2 + 1);
        self.close(index);
        self.add_child(&[shard_id], start, at - 1);
        self.add_child(&[shard_id], at, end);
        Ok(())
    }

    fn merge(&mut self, shard_id: &str, adjacent: &str) -> Result<(), Status> {
        let (first, second) = (self.index_of(shard_id)?, self.index_of(adjacent)?);
        let (a, b) = (self.range(first), self.range(second));
        let (start, end) = (a.0.min(b.0), a.1.max(b.1));
        self.close(first);
        self.close(second);
        self.add_child(&[shard_id, adjacent], start, end);
        Ok(())
    }

    fn summary(&self) -> StreamSummary {
        let open = self
            .shards
            .iter()
            .filter(|s| s.meta.status() == ShardStatus::Open)
            .count();
        let mut summary = StreamSummary {
            stream_name: STREAM.into(),
            shard_count: self.shards.len() as u32,
            open_shard_count: open as u32,
            retention_seconds: self.retention_seconds,
            ..Default::default()
        };
        summary.set_status(StreamStatus::Active);
        summary
    }
}

#[derive(Clone)]
struct FakeTributary {
    state: Arc<Mutex<FakeState>>,
}

impl FakeTributary {
    /// `shards` equal hash ranges, all open.
    fn new(shards: usize) -> FakeTributary {
        let width = u128::MAX / shards as u128;
        let shards = (0..shards)
            .map(|index| {
                let start = index as u128 * width;
                let end = if index + 1 == shards {
                    u128::MAX
                } else {
                    start + width - 1
                };
                let mut meta = Shard {
                    shard_id: format!("shardId-{index:012}"),
                    starting_hash_key: start.to_string(),
                    ending_hash_key: end.to_string(),
                    starting_sequence_number: sequence(index, 0).to_string(),
                    leader_node_id: 1,
                    ..Default::default()
                };
                meta.set_status(ShardStatus::Open);
                FakeShard {
                    meta,
                    log: Vec::new(),
                    listed_len: None,
                }
            })
            .collect();
        FakeTributary {
            state: Arc::new(Mutex::new(FakeState {
                shards,
                max_page: 10_000,
                heartbeat: Duration::from_millis(50),
                ..Default::default()
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake state lock")
    }

    /// Serves the fake on a free loopback port and connects a client to it.
    async fn start(&self) -> Client {
        let addr = "127.0.0.1:0".parse().expect("socket address");
        let incoming = TcpIncoming::bind(addr).expect("bind a loopback port");
        let local = incoming.local_addr().expect("bound address");
        let server = tonic::transport::Server::builder()
            .add_service(StreamServiceServer::new(self.clone()))
            .add_service(DataServiceServer::new(self.clone()))
            .serve_with_incoming(incoming);
        tokio::spawn(server);
        Client::connect(&local.to_string())
            .await
            .expect("connect to the fake")
    }

    /// `(partition_key, data)` of each shard's log, by shard index.
    fn logs(&self) -> Vec<Vec<(String, String)>> {
        self.state()
            .shards
            .iter()
            .map(|shard| {
                shard
                    .log
                    .iter()
                    .map(|r| {
                        let data = String::from_utf8_lossy(&r.data).into_owned();
                        (r.partition_key.clone(), data)
                    })
                    .collect()
            })
            .collect()
    }

    fn log_records(&self, shard: usize) -> Vec<Record> {
        self.state().shards[shard].log.clone()
    }
}

/// Sequence numbers carry the shard index in their high bits, like the real server's.
fn sequence(shard: usize, offset: usize) -> u128 {
    ((shard as u128) << 64) + offset as u128 + 1
}

fn api_status(code: ErrorCode, message: impl Into<String>) -> Status {
    let mut status = Status::unavailable(message);
    if let Ok(value) = MetadataValue::try_from(error_code_name(code)) {
        status
            .metadata_mut()
            .insert(tributary_client::proto::ERROR_CODE_METADATA, value);
    }
    status
}

fn check_stream(name: &str) -> Result<(), Status> {
    if name == STREAM {
        Ok(())
    } else {
        Err(api_status(
            ErrorCode::ResourceNotFound,
            format!("stream '{name}' not found"),
        ))
    }
}

#[tonic::async_trait]
impl StreamService for FakeTributary {
    async fn create_stream(
        &self,
        _: Request<CreateStreamRequest>,
    ) -> Result<Response<CreateStreamResponse>, Status> {
        Ok(Response::new(CreateStreamResponse {}))
    }

    async fn delete_stream(
        &self,
        _: Request<DeleteStreamRequest>,
    ) -> Result<Response<DeleteStreamResponse>, Status> {
        Ok(Response::new(DeleteStreamResponse {}))
    }

    async fn describe_stream(
        &self,
        request: Request<DescribeStreamRequest>,
    ) -> Result<Response<DescribeStreamResponse>, Status> {
        check_stream(&request.get_ref().stream_name)?;
        let mut state = self.state();
        let mut summary = state.summary();
        if state.creating_describes > 0 {
            state.creating_describes -= 1;
            summary.set_status(StreamStatus::Creating);
        }
        let stream = StreamDescription {
            summary: Some(summary),
            shards: state.shards.iter().map(|s| s.meta.clone()).collect(),
        };
        Ok(Response::new(DescribeStreamResponse {
            stream: Some(stream),
        }))
    }

    async fn list_streams(
        &self,
        _: Request<ListStreamsRequest>,
    ) -> Result<Response<ListStreamsResponse>, Status> {
        Ok(Response::new(ListStreamsResponse::default()))
    }

    async fn list_shards(
        &self,
        request: Request<ListShardsRequest>,
    ) -> Result<Response<ListShardsResponse>, Status> {
        check_stream(&request.get_ref().stream_name)?;
        let state = self.state();
        let mut shards: Vec<Shard> = state
            .shards
            .iter()
            .filter(|shard| !state.unlisted.contains(&shard.meta.shard_id))
            .map(|shard| {
                let len = shard
                    .listed_len
                    .unwrap_or(shard.log.len())
                    .min(shard.log.len());
                let mut meta = shard.meta.clone();
                meta.last_sequence_number = len
                    .checked_sub(1)
                    .map(|last| shard.log[last].sequence_number.clone());
                meta
            })
            .collect();
        if state.reverse_listing {
            shards.reverse();
        }
        Ok(Response::new(ListShardsResponse { shards }))
    }

    async fn describe_stream_summary(
        &self,
        request: Request<DescribeStreamSummaryRequest>,
    ) -> Result<Response<DescribeStreamSummaryResponse>, Status> {
        check_stream(&request.get_ref().stream_name)?;
        Ok(Response::new(DescribeStreamSummaryResponse {
            summary: Some(self.state().summary()),
        }))
    }

    async fn split_shard(
        &self,
        request: Request<SplitShardRequest>,
    ) -> Result<Response<SplitShardResponse>, Status> {
        let request = request.into_inner();
        check_stream(&request.stream_name)?;
        let at = request
            .new_starting_hash_key
            .map(|key| key.parse::<u128>())
            .transpose()
            .map_err(|_| api_status(ErrorCode::InvalidArgument, "bad hash key"))?;
        self.state().split(&request.shard_to_split, at)?;
        Ok(Response::new(SplitShardResponse {}))
    }

    async fn merge_shards(
        &self,
        request: Request<MergeShardsRequest>,
    ) -> Result<Response<MergeShardsResponse>, Status> {
        let request = request.into_inner();
        check_stream(&request.stream_name)?;
        self.state()
            .merge(&request.shard_to_merge, &request.adjacent_shard_to_merge)?;
        Ok(Response::new(MergeShardsResponse {}))
    }

    async fn update_shard_count(
        &self,
        _: Request<UpdateShardCountRequest>,
    ) -> Result<Response<UpdateShardCountResponse>, Status> {
        Err(Status::unimplemented(
            "the fake reshards by split and merge",
        ))
    }

    async fn update_stream_retention(
        &self,
        request: Request<UpdateStreamRetentionRequest>,
    ) -> Result<Response<UpdateStreamRetentionResponse>, Status> {
        let request = request.into_inner();
        check_stream(&request.stream_name)?;
        self.state().retention_seconds = request.retention_seconds;
        Ok(Response::new(UpdateStreamRetentionResponse {}))
    }

    async fn add_tags_to_stream(
        &self,
        request: Request<AddTagsToStreamRequest>,
    ) -> Result<Response<AddTagsToStreamResponse>, Status> {
        let request = request.into_inner();
        check_stream(&request.stream_name)?;
        self.state().tags.extend(request.tags);
        Ok(Response::new(AddTagsToStreamResponse {}))
    }

    async fn remove_tags_from_stream(
        &self,
        request: Request<RemoveTagsFromStreamRequest>,
    ) -> Result<Response<RemoveTagsFromStreamResponse>, Status> {
        let request = request.into_inner();
        check_stream(&request.stream_name)?;
        let mut state = self.state();
        for key in &request.tag_keys {
            state.tags.remove(key);
        }
        Ok(Response::new(RemoveTagsFromStreamResponse {}))
    }

    async fn list_tags_for_stream(
        &self,
        request: Request<ListTagsForStreamRequest>,
    ) -> Result<Response<ListTagsForStreamResponse>, Status> {
        check_stream(&request.get_ref().stream_name)?;
        let tags = self.state().tags.clone().into_iter().collect();
        Ok(Response::new(ListTagsForStreamResponse { tags }))
    }

    async fn register_stream_consumer(
        &self,
        request: Request<RegisterStreamConsumerRequest>,
    ) -> Result<Response<RegisterStreamConsumerResponse>, Status> {
        let request = request.into_inner();
        check_stream(&request.stream_name)?;
        let mut state = self.state();
        let name = request.consumer_name;
        if state.consumers.contains_key(&name) {
            return Err(api_status(
                ErrorCode::ResourceInUse,
                format!("consumer '{name}' is already registered"),
            ));
        }
        state.registrations += 1;
        let mut consumer = Consumer {
            consumer_name: name.clone(),
            consumer_id: format!("{name}:{}", state.registrations),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_714_564_800,
                nanos: 0,
            }),
            stream_name: request.stream_name,
            ..Default::default()
        };
        consumer.set_status(ConsumerStatus::ConsumerCreating);
        state.consumers.insert(name, consumer.clone());
        Ok(Response::new(RegisterStreamConsumerResponse {
            consumer: Some(consumer),
        }))
    }

    async fn deregister_stream_consumer(
        &self,
        request: Request<DeregisterStreamConsumerRequest>,
    ) -> Result<Response<DeregisterStreamConsumerResponse>, Status> {
        let request = request.into_inner();
        check_stream(&request.stream_name)?;
        // Its subscriptions notice and end.
        self.state()
            .consumers
            .remove(&request.consumer_name)
            .ok_or_else(|| api_status(ErrorCode::ResourceNotFound, "no such consumer"))?;
        Ok(Response::new(DeregisterStreamConsumerResponse {}))
    }

    async fn describe_stream_consumer(
        &self,
        request: Request<DescribeStreamConsumerRequest>,
    ) -> Result<Response<DescribeStreamConsumerResponse>, Status> {
        let request = request.into_inner();
        check_stream(&request.stream_name)?;
        let consumer = self.state().consumer(&request.consumer_name)?;
        Ok(Response::new(DescribeStreamConsumerResponse {
            consumer: Some(consumer),
        }))
    }

    async fn list_stream_consumers(
        &self,
        request: Request<ListStreamConsumersRequest>,
    ) -> Result<Response<ListStreamConsumersResponse>, Status> {
        check_stream(&request.get_ref().stream_name)?;
        let consumers = self.state().consumers.values().cloned().collect();
        Ok(Response::new(ListStreamConsumersResponse { consumers }))
    }

    // Consumer-group leases are tested against real nodes (tests/tests/consumer_groups.rs).
    async fn list_leases(
        &self,
        _: Request<tributary_proto::v1::ListLeasesRequest>,
    ) -> Result<Response<tributary_proto::v1::ListLeasesResponse>, Status> {
        Err(Status::unimplemented("leases are not faked"))
    }

    async fn take_lease(
        &self,
        _: Request<tributary_proto::v1::TakeLeaseRequest>,
    ) -> Result<Response<tributary_proto::v1::TakeLeaseResponse>, Status> {
        Err(Status::unimplemented("leases are not faked"))
    }

    async fn renew_leases(
        &self,
        _: Request<tributary_proto::v1::RenewLeasesRequest>,
    ) -> Result<Response<tributary_proto::v1::RenewLeasesResponse>, Status> {
        Err(Status::unimplemented("leases are not faked"))
    }

    async fn release_lease(
        &self,
        _: Request<tributary_proto::v1::ReleaseLeaseRequest>,
    ) -> Result<Response<tributary_proto::v1::ReleaseLeaseResponse>, Status> {
        Err(Status::unimplemented("leases are not faked"))
    }

    async fn checkpoint(
        &self,
        _: Request<tributary_proto::v1::CheckpointRequest>,
    ) -> Result<Response<tributary_proto::v1::CheckpointResponse>, Status> {
        Err(Status::unimplemented("leases are not faked"))
    }

    async fn get_shard_stats(
        &self,
        _: Request<tributary_proto::v1::GetShardStatsRequest>,
    ) -> Result<Response<tributary_proto::v1::GetShardStatsResponse>, Status> {
        Err(Status::unimplemented("shard stats are not faked"))
    }
}

#[tonic::async_trait]
impl DataService for FakeTributary {
    async fn put_record(
        &self,
        _: Request<PutRecordRequest>,
    ) -> Result<Response<PutRecordResponse>, Status> {
        Err(Status::unimplemented("the SDK producer uses PutRecords"))
    }

    async fn put_records(
        &self,
        request: Request<PutRecordsRequest>,
    ) -> Result<Response<PutRecordsResponse>, Status> {
        let request = request.into_inner();
        check_stream(&request.stream_name)?;
        let mut guard = self.state();
        let state = &mut *guard;
        state.put_request_sizes.push(request.records.len());
        let call = state.put_request_sizes.len();
        if !state.put_call_faults.is_empty() {
            let code = state.put_call_faults.remove(0);
            return Err(api_status(code, "injected whole-call failure"));
        }
        let metas: Vec<Shard> = state.shards.iter().map(|s| s.meta.clone()).collect();
        let mut response = PutRecordsResponse::default();
        for entry in request.records {
            let Some(shard) = shard_for_record(
                &metas,
                &entry.partition_key,
                entry.explicit_hash_key.as_deref(),
            ) else {
                return Err(api_status(ErrorCode::InternalFailure, "no shard"));
            };
            let index = metas
                .iter()
                .position(|m| m.shard_id == shard.shard_id)
                .expect("routed to a listed shard");
            let fault = state
                .entry_fault
                .as_mut()
                .and_then(|fault| fault(call, index, &entry.partition_key));
            if let Some(code) = fault {
                response.failed_record_count += 1;
                let mut result = PutRecordsResultEntry {
                    error_message: format!("injected {}", error_code_name(code)),
                    ..Default::default()
                };
                result.set_error_code(code);
                response.records.push(result);
                continue;
            }
            let log = &mut state.shards[index].log;
            let sequence_number = sequence(index, log.len()).to_string();
            log.push(Record {
                sequence_number: sequence_number.clone(),
                approximate_arrival_timestamp: None,
                data: entry.data,
                partition_key: entry.partition_key,
            });
            response.records.push(PutRecordsResultEntry {
                shard_id: shard.shard_id.clone(),
                sequence_number,
                ..Default::default()
            });
        }
        Ok(Response::new(response))
    }

    async fn get_shard_iterator(
        &self,
        request: Request<GetShardIteratorRequest>,
    ) -> Result<Response<GetShardIteratorResponse>, Status> {
        let request = request.into_inner();
        check_stream(&request.stream_name)?;
        let state = self.state();
        let Some(index) = state
            .shards
            .iter()
            .position(|s| s.meta.shard_id == request.shard_id)
        else {
            return Err(api_status(ErrorCode::ResourceNotFound, "no such shard"));
        };
        let offset = state.offset(
            index,
            request.shard_iterator_type(),
            request.starting_sequence_number.as_deref(),
        );
        Ok(Response::new(GetShardIteratorResponse {
            shard_iterator: format!("{index}:{offset}"),
        }))
    }

    async fn get_records(
        &self,
        request: Request<GetRecordsRequest>,
    ) -> Result<Response<GetRecordsResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state();
        state.get_records_calls += 1;
        if state
            .expire_get_records_calls
            .contains(&state.get_records_calls)
        {
            return Err(api_status(ErrorCode::ExpiredIterator, "iterator expired"));
        }
        let parsed = request
            .shard_iterator
            .split_once(':')
            .and_then(|(shard, offset)| Some((shard.parse().ok()?, offset.parse().ok()?)));
        let Some((index, offset)): Option<(usize, usize)> = parsed else {
            return Err(api_status(ErrorCode::InvalidArgument, "bad iterator"));
        };
        let shard: &FakeShard = &state.shards[index];
        let limit = (request.limit as usize).min(state.max_page);
        let end = (offset + limit).min(shard.log.len());
        let closed = shard.meta.status() == ShardStatus::Closed;
        let at_end = closed && end == shard.log.len();
        let child_shards = if at_end {
            state.children(index)
        } else {
            Vec::new()
        };
        let response = GetRecordsResponse {
            records: shard.log[offset..end].to_vec(),
            next_shard_iterator: (!at_end).then(|| format!("{index}:{end}")),
            millis_behind_latest: if end < shard.log.len() { 1000 } else { 0 },
            child_shards,
        };
        Ok(Response::new(response))
    }

    type SubscribeToShardStream = ReceiverStream<Result<SubscribeToShardEvent, Status>>;

    async fn subscribe_to_shard(
        &self,
        request: Request<SubscribeToShardRequest>,
    ) -> Result<Response<Self::SubscribeToShardStream>, Status> {
        let request = request.into_inner();
        check_stream(&request.stream_name)?;
        let position = request.starting_position.unwrap_or_default();
        let subscription = {
            let mut state = self.state();
            state.subscribe_calls.push((
                Instant::now(),
                request.shard_id.clone(),
                position.clone(),
            ));
            let consumer = state.consumer(&request.consumer_name)?;
            if consumer.status() != ConsumerStatus::ConsumerActive {
                return Err(api_status(
                    ErrorCode::ResourceInUse,
                    format!("consumer '{}' is not ACTIVE yet", request.consumer_name),
                ));
            }
            let index = state.index_of(&request.shard_id)?;
            let offset = state.offset(
                index,
                position.r#type(),
                position.sequence_number.as_deref(),
            );
            let key = (request.consumer_name, request.shard_id);
            let generation = state
                .subscription_generation
                .entry(key.clone())
                .or_default();
            *generation += 1;
            Subscription {
                fake: self.clone(),
                index,
                offset,
                generation: *generation,
                key,
            }
        };
        // Room for two events, then the subscription waits for the reader (back-pressure).
        let (sender, receiver) = mpsc::channel(2);
        tokio::spawn(subscription.push(sender));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// One open SubscribeToShard stream of the fake.
struct Subscription {
    fake: FakeTributary,
    index: usize,
    /// The next record to push.
    offset: usize,
    generation: u64,
    /// (consumer, shard id)
    key: (String, String),
}

enum Step {
    Push {
        event: SubscribeToShardEvent,
        end: usize,
        at_end: bool,
    },
    Fail(Status),
    Idle,
}

impl Subscription {
    /// Pushes events like the server: committed records as they arrive (a page at a time),
    /// an empty event when idle, the children at the end of a closed shard; ends OK after
    /// `events_per_subscription`, fails when taken over or deregistered.
    async fn push(mut self, sender: mpsc::Sender<Result<SubscribeToShardEvent, Status>>) {
        let mut pushed = 0;
        let mut last_pushed = Instant::now();
        loop {
            let step = self.step(last_pushed);
            let (event, end, at_end) = match step {
                Step::Idle => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                Step::Fail(status) => {
                    // The reader may be gone already.
                    let _ = sender.send(Err(status)).await;
                    return;
                }
                Step::Push { event, end, at_end } => (event, end, at_end),
            };
            if sender.send(Ok(event)).await.is_err() {
                return;
            }
            self.offset = end;
            pushed += 1;
            last_pushed = Instant::now();
            if at_end {
                return;
            }
            let fault = {
                let mut state = self.fake.state();
                if state
                    .events_per_subscription
                    .is_some_and(|most| pushed >= most)
                {
                    return;
                }
                (pushed == 1 && !state.subscription_faults.is_empty())
                    .then(|| state.subscription_faults.remove(0))
            };
            if let Some(code) = fault {
                let status = api_status(code, "injected failure of a running subscription");
                let _ = sender.send(Err(status)).await;
                return;
            }
        }
    }

    fn step(&self, last_pushed: Instant) -> Step {
        let state = self.fake.state();
        if state.subscription_generation.get(&self.key) != Some(&self.generation) {
            return Step::Fail(api_status(
                ErrorCode::ResourceInUse,
                "another subscription of this consumer to this shard took over",
            ));
        }
        if !state.consumers.contains_key(&self.key.0) {
            return Step::Fail(api_status(
                ErrorCode::ResourceNotFound,
                "the consumer was deregistered",
            ));
        }
        let log = &state.shards[self.index].log;
        let end = (self.offset + state.max_page).min(log.len());
        let closed = state.shards[self.index].meta.status() == ShardStatus::Closed;
        let at_end = closed && end == log.len();
        if end == self.offset && !at_end && last_pushed.elapsed() < state.heartbeat {
            return Step::Idle;
        }
        // After the last record pushed, or before the shard's first one.
        let continuation = match end.checked_sub(1) {
            Some(last) => log[last].sequence_number.clone(),
            None => (sequence(self.index, 0) - 1).to_string(),
        };
        Step::Push {
            event: SubscribeToShardEvent {
                records: log[self.offset..end].to_vec(),
                continuation_sequence_number: (!at_end).then_some(continuation),
                millis_behind_latest: if end < log.len() { 1000 } else { 0 },
                child_shards: if at_end {
                    state.children(self.index)
                } else {
                    Vec::new()
                },
            },
            end,
            at_end,
        }
    }
}

fn fast_options() -> PutOptions {
    PutOptions {
        retry: RetryPolicy {
            max_attempts: 5,
            max_elapsed: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        },
        ..PutOptions::default()
    }
}

fn keyed_records(count: usize, keys: usize) -> Vec<(String, Vec<u8>, Option<String>)> {
    (0..count)
        .map(|i| {
            (
                format!("key-{}", i % keys),
                i.to_string().into_bytes(),
                None,
            )
        })
        .collect()
}

/// Each key's data values, in log order.
fn data_by_key(logs: &[Vec<(String, String)>]) -> BTreeMap<String, Vec<usize>> {
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (key, data) in logs.iter().flatten() {
        let value = data.parse().expect("numeric data");
        by_key.entry(key.clone()).or_default().push(value);
    }
    by_key
}

#[tokio::test]
async fn put_all_retries_only_failed_entries_and_keeps_key_order() {
    let fake = FakeTributary::new(2);
    {
        let mut state = fake.state();
        state.put_call_faults = vec![ErrorCode::Unavailable];
        // The second call (the first batch, resent) finds shard 1 leaderless.
        state.entry_fault = Some(Box::new(|call, shard, _| {
            (call == 2 && shard == 1).then_some(ErrorCode::Unavailable)
        }));
    }
    let client = fake.start().await;
    let records = keyed_records(1200, 7);
    let summary = put_all(&client, STREAM, records, &fast_options())
        .await
        .expect("every record acknowledged");

    assert_eq!(summary.acknowledged, 1200);
    assert_eq!(summary.results.len(), 1200);
    let logs = fake.logs();
    assert_eq!(
        logs.iter().map(Vec::len).sum::<usize>(),
        1200,
        "no duplicates"
    );
    for (key, values) in data_by_key(&logs) {
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{key} out of order");
    }
    let on_shard_1 = logs[1]
        .iter()
        .filter(|(_, data)| data.parse::<usize>().is_ok_and(|i| i < 500))
        .count();
    assert_eq!(
        fake.state().put_request_sizes,
        vec![500, 500, on_shard_1, 500, 200],
        "whole batch resent after a call failure; only failed entries after an entry failure"
    );
    // Results are in input order and point at the stored records.
    for (i, (shard_id, sequence_number)) in summary.results.iter().enumerate() {
        let shard = usize::from(shard_id.ends_with('1'));
        let record = fake
            .log_records(shard)
            .into_iter()
            .find(|r| &r.sequence_number == sequence_number)
            .expect("result names a stored record");
        assert_eq!(record.data, i.to_string().into_bytes());
    }
}

#[tokio::test]
async fn put_all_stops_at_a_non_retryable_entry_error() {
    let fake = FakeTributary::new(2);
    fake.state().entry_fault = Some(Box::new(|_, _, key| {
        (key == "bad").then_some(ErrorCode::InvalidArgument)
    }));
    let client = fake.start().await;
    let mut records = keyed_records(1100, 3);
    records[550].0 = "bad".into();
    let error = put_all(&client, STREAM, records, &fast_options())
        .await
        .expect_err("record 550 is refused");

    assert_eq!(error.total, 1100);
    assert_eq!(
        error.acknowledged, 999,
        "batch 1 and the rest of record 550's batch"
    );
    assert_eq!(error.source.code(), Some(ErrorCode::InvalidArgument));
    assert!(
        error.source.to_string().contains("record 550"),
        "{}",
        error.source
    );
    assert_eq!(
        fake.state().put_request_sizes,
        vec![500, 500],
        "no later batch is sent"
    );
}

#[tokio::test]
async fn put_all_gives_up_when_the_retry_bound_runs_out() {
    let fake = FakeTributary::new(2);
    fake.state().entry_fault = Some(Box::new(|_, shard, _| {
        (shard == 1).then_some(ErrorCode::ProvisionedThroughputExceeded)
    }));
    let client = fake.start().await;
    let error = put_all(&client, STREAM, keyed_records(100, 10), &fast_options())
        .await
        .expect_err("shard 1 never accepts");

    let logs = fake.logs();
    assert_eq!(error.acknowledged, logs[0].len());
    assert!(logs[1].is_empty());
    assert_eq!(
        error.source.code(),
        Some(ErrorCode::ProvisionedThroughputExceeded)
    );
    assert!(error.source.is_retryable());
    assert!(
        error
            .source
            .to_string()
            .contains("gave up after 5 attempts"),
        "{}",
        error.source
    );
    assert_eq!(fake.state().put_request_sizes.len(), 5);
}

#[tokio::test]
async fn stream_reads_stop_at_the_tip_listed_when_the_read_started() {
    let fake = FakeTributary::new(2);
    let client = fake.start().await;
    put_all(&client, STREAM, keyed_records(60, 12), &fast_options())
        .await
        .expect("write");
    let logs = fake.logs();
    assert!(
        logs[0].len() > 5 && logs[1].len() > 5,
        "keys spread over both shards"
    );
    {
        // Records past these were "written after the read started".
        let mut state = fake.state();
        state.shards[0].listed_len = Some(4);
        state.shards[1].listed_len = Some(5);
        state.max_page = 3;
    }
    let records = read_stream_until_tip(&client, STREAM, &StartingPosition::TrimHorizon, None)
        .await
        .expect("read");

    let shard_0 = fake.log_records(0);
    let shard_1 = fake.log_records(1);
    let expected: Vec<(&str, &Record)> = shard_0[..4]
        .iter()
        .map(|r| ("shardId-000000000000", r))
        .chain(shard_1[..5].iter().map(|r| ("shardId-000000000001", r)))
        .collect();
    let got: Vec<(&str, &Record)> = records
        .iter()
        .map(|r| (r.shard_id.as_str(), &r.record))
        .collect();
    assert_eq!(
        got, expected,
        "shard-list order, each shard up to its listed tip"
    );
}

#[tokio::test]
async fn reads_honour_positions_limits_and_empty_shards() {
    let fake = FakeTributary::new(2);
    let client = fake.start().await;
    // Explicit hash key 0 sends everything to shard 0; shard 1 stays empty.
    let records: Vec<_> = (0..20)
        .map(|i| ("k".to_owned(), i.to_string(), Some("0".to_owned())))
        .collect();
    put_all(&client, STREAM, records, &fast_options())
        .await
        .expect("write");
    fake.state().max_page = 6;
    let log = fake.log_records(0);

    let all = read_stream_until_tip(&client, STREAM, &StartingPosition::TrimHorizon, Some(13))
        .await
        .expect("read");
    assert_eq!(all.len(), 13, "the limit caps the total");

    let after = StartingPosition::AfterSequence(log[16].sequence_number.clone());
    let tail = read_shard_until_tip(&client, STREAM, "shardId-000000000000", &after, None)
        .await
        .expect("read");
    assert_eq!(tail, log[17..].to_vec());

    let latest = read_shard_until_tip(
        &client,
        STREAM,
        "shardId-000000000000",
        &StartingPosition::Latest,
        None,
    )
    .await
    .expect("read");
    assert!(latest.is_empty());

    let empty = read_shard_until_tip(
        &client,
        STREAM,
        "shardId-000000000001",
        &StartingPosition::TrimHorizon,
        None,
    )
    .await
    .expect("read");
    assert!(empty.is_empty());

    let error = read_shard_until_tip(
        &client,
        STREAM,
        "shardId-000000000009",
        &StartingPosition::TrimHorizon,
        None,
    )
    .await
    .expect_err("no such shard");
    assert_eq!(error.code(), Some(ErrorCode::ResourceNotFound));
}

#[tokio::test]
async fn an_expired_iterator_is_reopened_after_the_last_record() {
    let fake = FakeTributary::new(1);
    let client = fake.start().await;
    put_all(&client, STREAM, keyed_records(25, 3), &fast_options())
        .await
        .expect("write");
    {
        let mut state = fake.state();
        state.max_page = 7;
        state.expire_get_records_calls = vec![2, 4];
    }
    let records = read_shard_until_tip(
        &client,
        STREAM,
        "shardId-000000000000",
        &StartingPosition::TrimHorizon,
        None,
    )
    .await
    .expect("read");
    assert_eq!(records, fake.log_records(0), "no gaps, no duplicates");
}

#[tokio::test]
async fn follow_hands_over_new_records_and_ends_on_a_closed_shard() {
    let fake = FakeTributary::new(2);
    let client = fake.start().await;
    let writer = {
        let client = client.clone();
        async move {
            for round in 0..4 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let records: Vec<_> = (0..5)
                    .map(|i| (format!("k{i}"), format!("{round}-{i}"), None))
                    .collect();
                put_all(&client, STREAM, records, &fast_options())
                    .await
                    .expect("write");
            }
        }
    };
    let mut seen = Vec::new();
    let reader = follow(
        &client,
        STREAM,
        None,
        &StartingPosition::Latest,
        None,
        |shard_id, record| {
            seen.push((shard_id.to_owned(), record));
            if seen.len() == 20 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    );
    let (followed, ()) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(reader, writer)
    })
    .await
    .expect("follow sees all 20 records in time");
    assert_eq!(followed.expect("follow"), 20);
    assert_eq!(seen.len(), 20);

    // A closed, fully read shard ends a follow on its own.
    fake.state().shards[0].meta.set_status(ShardStatus::Closed);
    let mut count = 0;
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        follow(
            &client,
            STREAM,
            Some("shardId-000000000000"),
            &StartingPosition::TrimHorizon,
            None,
            |_, _| {
                count += 1;
                ControlFlow::Continue(())
            },
        ),
    )
    .await
    .expect("the follow ends");
    assert_eq!(read.expect("follow"), fake.log_records(0).len());
    assert_eq!(count, fake.log_records(0).len());
}

#[tokio::test]
async fn server_errors_are_typed_and_waits_are_bounded() {
    let fake = FakeTributary::new(1);
    let client = fake.start().await;

    let error = client
        .list_shards("nope")
        .await
        .expect_err("unknown stream");
    assert_eq!(error.code(), Some(ErrorCode::ResourceNotFound));
    assert_eq!(
        error.to_string(),
        "ResourceNotFound: stream 'nope' not found"
    );
    assert!(!error.is_retryable());

    fake.state().creating_describes = 3;
    let description = client
        .wait_for_active(STREAM, Duration::from_secs(10))
        .await
        .expect("ACTIVE after a few polls");
    assert_eq!(
        description.summary.map(|s| s.status()),
        Some(StreamStatus::Active)
    );

    fake.state().creating_describes = 1000;
    let error = client
        .wait_for_active(STREAM, Duration::from_millis(500))
        .await
        .expect_err("never ACTIVE");
    assert!(
        matches!(error, tributary_client::Error::Timeout(_)),
        "{error}"
    );
    assert!(error.to_string().contains("CREATING"), "{error}");
}

/// Each key's data values in the order a read handed them over.
fn read_order_by_key<'a>(
    records: impl IntoIterator<Item = &'a Record>,
) -> BTreeMap<String, Vec<usize>> {
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for record in records {
        let value = String::from_utf8_lossy(&record.data)
            .parse()
            .expect("numeric data");
        by_key
            .entry(record.partition_key.clone())
            .or_default()
            .push(value);
    }
    by_key
}

/// Writes `rounds` of `per_round` records (data: the running index), resharding between
/// rounds: shard 0 splits, then its upper child merges with shard 1. Returns the total.
async fn write_across_reshards(fake: &FakeTributary, client: &Client) -> usize {
    let per_round = 90;
    let round = |n: usize| -> Vec<(String, Vec<u8>, Option<String>)> {
        (n * per_round..(n + 1) * per_round)
            .map(|i| (format!("key-{}", i % 17), i.to_string().into_bytes(), None))
            .collect()
    };
    put_all(client, STREAM, round(0), &fast_options())
        .await
        .expect("write");
    client
        .split_shard(STREAM, "shardId-000000000000", None)
        .await
        .expect("split");
    put_all(client, STREAM, round(1), &fast_options())
        .await
        .expect("write");
    client
        .merge_shards(STREAM, "shardId-000000000003", "shardId-000000000001")
        .await
        .expect("merge");
    put_all(client, STREAM, round(2), &fast_options())
        .await
        .expect("write");
    let logs = fake.logs();
    assert_eq!(logs.len(), 5);
    assert!(
        logs.iter().all(|log| !log.is_empty()),
        "every shard has records"
    );
    3 * per_round
}

fn assert_put_order(by_key: &BTreeMap<String, Vec<usize>>, total: usize) {
    assert_eq!(by_key.values().map(Vec::len).sum::<usize>(), total);
    for (key, values) in by_key {
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "{key} out of put order: {values:?}"
        );
    }
}

#[tokio::test]
async fn whole_stream_reads_drain_parents_before_children() {
    let fake = FakeTributary::new(2);
    let client = fake.start().await;
    let total = write_across_reshards(&fake, &client).await;
    {
        let mut state = fake.state();
        // Children listed first: ListShards order alone would read them too early.
        state.reverse_listing = true;
        state.max_page = 7;
    }
    let records = read_stream_until_tip(&client, STREAM, &StartingPosition::TrimHorizon, None)
        .await
        .expect("read");
    assert_put_order(&read_order_by_key(records.iter().map(|r| &r.record)), total);
    let position = |id: &str| records.iter().position(|r| r.shard_id == id);
    let first_of_4 = position("shardId-000000000004").expect("merged child read");
    assert!(
        records[first_of_4..]
            .iter()
            .all(|r| r.shard_id != "shardId-000000000001" && r.shard_id != "shardId-000000000003"),
        "both parents of the merged shard are drained before it"
    );

    // A follow does the same, and finds children a lagging listing does not show yet.
    {
        let mut state = fake.state();
        state.unlisted = [
            "shardId-000000000002",
            "shardId-000000000003",
            "shardId-000000000004",
        ]
        .map(String::from)
        .into();
    }
    let mut followed = Vec::new();
    let count = tokio::time::timeout(
        Duration::from_secs(20),
        follow(
            &client,
            STREAM,
            None,
            &StartingPosition::TrimHorizon,
            Some(total),
            |_, record| {
                followed.push(record);
                ControlFlow::Continue(())
            },
        ),
    )
    .await
    .expect("the follow reaches every record")
    .expect("follow");
    assert_eq!(count, total);
    assert_put_order(&read_order_by_key(&followed), total);
}

#[tokio::test]
async fn a_follow_ends_once_every_shard_is_closed_and_read() {
    let fake = FakeTributary::new(2);
    let client = fake.start().await;
    let total = write_across_reshards(&fake, &client).await;
    {
        let mut state = fake.state();
        for index in [2, 4] {
            state.close(index);
        }
    }
    let mut count = 0;
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        follow(
            &client,
            STREAM,
            None,
            &StartingPosition::TrimHorizon,
            None,
            |_, _| {
                count += 1;
                ControlFlow::Continue(())
            },
        ),
    )
    .await
    .expect("the follow ends on its own");
    assert_eq!(read.expect("follow"), total);
    assert_eq!(count, total);
}

#[tokio::test]
async fn control_plane_calls_reach_the_server() {
    let fake = FakeTributary::new(2);
    let client = fake.start().await;

    client
        .add_tags(
            STREAM,
            [
                ("team".to_owned(), "data".to_owned()),
                ("env".to_owned(), "dev".to_owned()),
            ],
        )
        .await
        .expect("add tags");
    client
        .remove_tags(STREAM, ["env".to_owned()])
        .await
        .expect("remove tags");
    let tags = client.list_tags(STREAM).await.expect("list tags");
    assert_eq!(
        tags,
        BTreeMap::from([("team".to_owned(), "data".to_owned())])
    );

    client
        .update_stream_retention(STREAM, Duration::from_secs(7 * 86_400))
        .await
        .expect("retention");
    client
        .split_shard(STREAM, "shardId-000000000001", Some(u128::MAX - 5))
        .await
        .expect("split");
    let summary = client
        .describe_stream_summary(STREAM)
        .await
        .expect("summary");
    assert_eq!(summary.retention_seconds, 7 * 86_400);
    assert_eq!((summary.shard_count, summary.open_shard_count), (4, 3));
    let shards = client.list_shards(STREAM).await.expect("list");
    assert_eq!(shards[3].starting_hash_key, (u128::MAX - 5).to_string());

    let settled = client
        .wait_for_active_where(STREAM, Duration::from_secs(5), |description| {
            description
                .summary
                .as_ref()
                .is_some_and(|summary| summary.open_shard_count == 3)
        })
        .await
        .expect("settled");
    assert_eq!(settled.shards.len(), 4);
    let error = client
        .wait_for_active_where(STREAM, Duration::from_millis(500), |_| false)
        .await
        .expect_err("never settles");
    assert!(error.to_string().contains("not visible yet"), "{error}");

    let error = client
        .update_stream_retention(STREAM, Duration::from_millis(1500))
        .await
        .expect_err("not whole seconds");
    assert!(
        matches!(error, tributary_client::Error::InvalidInput(_)),
        "{error}"
    );
}

const CONSUMER: &str = "audit";

/// Short pacing so re-subscriptions do not slow the tests down.
fn fast_fan_out() -> FanOutOptions {
    FanOutOptions {
        resubscribe_interval: Duration::from_millis(50),
        retry: RetryPolicy {
            max_attempts: 5,
            max_elapsed: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        },
    }
}

/// `(shard id, position type, sequence number)` of every SubscribeToShard call so far.
fn subscribe_calls(fake: &FakeTributary) -> Vec<(String, ShardIteratorType, Option<String>)> {
    fake.state()
        .subscribe_calls
        .iter()
        .map(|(_, shard, position)| {
            (
                shard.clone(),
                position.r#type(),
                position.sequence_number.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn fan_out_resubscribes_after_the_continuation_without_gaps_or_duplicates() {
    let fake = FakeTributary::new(1);
    {
        let mut state = fake.state();
        state.max_page = 4;
        // Every subscription ends after two events; the first one fails after one instead.
        state.events_per_subscription = Some(2);
        state.subscription_faults = vec![ErrorCode::InternalFailure];
    }
    let client = fake.start().await;
    put_all(&client, STREAM, keyed_records(22, 3), &fast_options())
        .await
        .expect("write");
    client
        .register_stream_consumer(STREAM, CONSUMER)
        .await
        .expect("register");

    let writer = {
        let client = client.clone();
        async move {
            // Pushed to the subscription as they commit.
            tokio::time::sleep(Duration::from_millis(300)).await;
            put_all(&client, STREAM, keyed_records(10, 3), &fast_options())
                .await
                .expect("write");
        }
    };
    let reader = FanOutConsumer::new(&client, STREAM, CONSUMER).with_options(fast_fan_out());
    let mut seen = Vec::new();
    let follow = reader.follow(
        Some("shardId-000000000000"),
        &StartingPosition::TrimHorizon,
        Some(32),
        |shard_id, record| {
            assert_eq!(shard_id, "shardId-000000000000");
            seen.push(record);
            ControlFlow::Continue(())
        },
    );
    let (read, ()) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(follow, writer)
    })
    .await
    .expect("the follow reaches 32 records");
    assert_eq!(read.expect("follow"), 32);
    assert_eq!(
        seen,
        fake.log_records(0),
        "no gaps, no duplicates, in order"
    );

    let calls = subscribe_calls(&fake);
    // 4 records before the fault, then at most 8 (two pages) per subscription.
    assert!(calls.len() >= 5, "a subscription per 2 events: {calls:?}");
    assert_eq!(calls[0].1, ShardIteratorType::TrimHorizon);
    let log: Vec<u128> = seen
        .iter()
        .map(|r| r.sequence_number.parse().expect("decimal"))
        .collect();
    let mut previous = 0;
    for (_, kind, sequence) in &calls[1..] {
        assert_eq!(*kind, ShardIteratorType::AfterSequenceNumber, "{calls:?}");
        let sequence: u128 = sequence
            .as_deref()
            .and_then(|s| s.parse().ok())
            .expect("a continuation");
        assert!(log.contains(&sequence), "after a record handed over");
        assert!(sequence >= previous, "never back: {calls:?}");
        previous = sequence;
    }
    // The fault's retry and the normal ends alike wait out the interval.
    let times: Vec<Instant> = fake.state().subscribe_calls.iter().map(|c| c.0).collect();
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(25),
            "re-subscribed after {gap:?}"
        );
    }
}

#[tokio::test]
async fn fan_out_follow_drains_parents_and_moves_into_their_children() {
    let fake = FakeTributary::new(2);
    let client = fake.start().await;
    let total = write_across_reshards(&fake, &client).await;
    {
        let mut state = fake.state();
        // The last shards are closed too, so the follow ends on its own.
        for index in [2, 4] {
            state.close(index);
        }
        // Children listed first, and a lagging listing that shows none of them: only the
        // ends of their parents name them.
        state.reverse_listing = true;
        state.unlisted = [
            "shardId-000000000002",
            "shardId-000000000003",
            "shardId-000000000004",
        ]
        .map(String::from)
        .into();
        state.max_page = 7;
        state.events_per_subscription = Some(3);
    }
    client
        .register_stream_consumer(STREAM, CONSUMER)
        .await
        .expect("register");
    let reader = FanOutConsumer::new(&client, STREAM, CONSUMER).with_options(fast_fan_out());
    let mut seen: Vec<(String, Record)> = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        reader.follow(
            None,
            &StartingPosition::TrimHorizon,
            None,
            |shard_id, record| {
                seen.push((shard_id.to_owned(), record));
                ControlFlow::Continue(())
            },
        ),
    )
    .await
    .expect("the follow ends once every shard is closed and read");
    assert_eq!(read.expect("follow"), total);
    assert_put_order(&read_order_by_key(seen.iter().map(|(_, r)| r)), total);

    let first = |id: &str| seen.iter().position(|(shard, _)| shard == id);
    let last = |id: &str| seen.iter().rposition(|(shard, _)| shard == id);
    for (parent, child) in [("0", "2"), ("0", "3"), ("1", "4"), ("3", "4")] {
        let parent = format!("shardId-00000000000{parent}");
        let child = format!("shardId-00000000000{child}");
        assert!(
            last(&parent) < first(&child),
            "{parent} is drained before {child} starts"
        );
    }
    for (index, shard) in fake.state().shards.iter().enumerate() {
        let from_shard: Vec<&Record> = seen
            .iter()
            .filter(|(id, _)| *id == shard.meta.shard_id)
            .map(|(_, r)| r)
            .collect();
        assert_eq!(
            from_shard,
            shard.log.iter().collect::<Vec<_>>(),
            "shard {index} exactly once, in order"
        );
    }
    let calls = subscribe_calls(&fake);
    for child in ["2", "3", "4"] {
        let id = format!("shardId-00000000000{child}");
        let first_call = calls.iter().find(|call| call.0 == id).expect("subscribed");
        assert_eq!(first_call.1, ShardIteratorType::TrimHorizon, "{id}");
    }
}

#[tokio::test]
async fn a_fan_out_subscription_that_is_taken_over_stops_with_resource_in_use() {
    let fake = FakeTributary::new(1);
    let client = fake.start().await;
    put_all(&client, STREAM, keyed_records(5, 2), &fast_options())
        .await
        .expect("write");
    // CREATING through the first three subscribe calls: those are retried.
    fake.state().consumer_activation_calls = 3;
    client
        .register_stream_consumer(STREAM, CONSUMER)
        .await
        .expect("register");
    let reader = FanOutConsumer::new(&client, STREAM, CONSUMER).with_options(fast_fan_out());
    let mut first = reader.subscriber("shardId-000000000000", StartingPosition::TrimHorizon);
    let records = first.next_batch().await.expect("ACTIVE after a few tries");
    assert_eq!(records, fake.log_records(0));
    assert_eq!(
        first.subscriptions(),
        4,
        "three refusals, then the subscription"
    );

    let mut second = reader.subscriber("shardId-000000000000", StartingPosition::TrimHorizon);
    assert_eq!(
        second.next_batch().await.expect("takes over"),
        fake.log_records(0)
    );
    let error = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // Heartbeats pushed before the takeover come first.
            if let Err(error) = first.next_batch().await {
                return error;
            }
        }
    })
    .await
    .expect("the first subscription ends");
    assert_eq!(error.code(), Some(ErrorCode::ResourceInUse));
    assert!(error.to_string().contains("took over"), "{error}");
    assert_eq!(first.subscriptions(), 4, "it does not take the shard back");

    let mut stranger = FanOutConsumer::new(&client, STREAM, "nobody")
        .with_options(fast_fan_out())
        .subscriber("shardId-000000000000", StartingPosition::TrimHorizon);
    let error = stranger.next_batch().await.expect_err("not registered");
    assert_eq!(error.code(), Some(ErrorCode::ResourceNotFound));
    assert_eq!(stranger.subscriptions(), 1, "not retried");
}

#[tokio::test]
async fn consumers_are_registered_described_listed_and_deregistered() {
    let fake = FakeTributary::new(1);
    let client = fake.start().await;
    let registered = client
        .register_stream_consumer(STREAM, CONSUMER)
        .await
        .expect("register");
    assert_eq!(registered.status(), ConsumerStatus::ConsumerCreating);
    assert_eq!(registered.stream_name, STREAM);
    let error = client
        .register_stream_consumer(STREAM, CONSUMER)
        .await
        .expect_err("the name is taken");
    assert_eq!(error.code(), Some(ErrorCode::ResourceInUse));

    let active = client
        .wait_for_consumer_active(STREAM, CONSUMER, Duration::from_secs(5))
        .await
        .expect("ACTIVE");
    assert_eq!(active.status(), ConsumerStatus::ConsumerActive);
    assert_eq!(active.consumer_id, registered.consumer_id);
    let listed = client.list_stream_consumers(STREAM).await.expect("list");
    assert_eq!(listed, std::slice::from_ref(&active));
    assert_eq!(
        client
            .describe_stream_consumer(STREAM, CONSUMER)
            .await
            .expect("describe"),
        active
    );

    client
        .deregister_stream_consumer(STREAM, CONSUMER)
        .await
        .expect("deregister");
    assert!(client
        .list_stream_consumers(STREAM)
        .await
        .expect("list")
        .is_empty());
    let error = client
        .describe_stream_consumer(STREAM, CONSUMER)
        .await
        .expect_err("gone");
    assert_eq!(error.code(), Some(ErrorCode::ResourceNotFound));
    let again = client
        .register_stream_consumer(STREAM, CONSUMER)
        .await
        .expect("register again");
    assert_ne!(again.consumer_id, registered.consumer_id, "a new id");

    fake.state().consumer_activation_calls = 1000;
    client
        .deregister_stream_consumer(STREAM, CONSUMER)
        .await
        .expect("deregister");
    client
        .register_stream_consumer(STREAM, CONSUMER)
        .await
        .expect("register");
    let error = client
        .wait_for_consumer_active(STREAM, CONSUMER, Duration::from_millis(500))
        .await
        .expect_err("stays CREATING");
    assert!(
        matches!(error, tributary_client::Error::Timeout(_)),
        "{error}"
    );
    assert!(error.to_string().contains("CONSUMER_CREATING"), "{error}");

    let error = client
        .subscribe_to_shard(
            "nope",
            CONSUMER,
            "shardId-000000000000",
            &StartingPosition::Latest,
        )
        .await
        .expect_err("unknown stream");
    assert_eq!(error.code(), Some(ErrorCode::ResourceNotFound));
}
