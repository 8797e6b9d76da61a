//! DataService: PutRecord(s), GetShardIterator, GetRecords.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use tonic::{Request, Response, Status};
use tributary_proto::v1 as pb;
use tributary_proto::v1::data_service_server::DataService;

use super::fanout::Subscription;
use super::stream_snapshot;
use crate::error::ApiError;
use crate::iterator::IteratorPosition;
use crate::metadata::{parse_shard_id, ShardState, StreamMeta, StreamStatus};
use crate::metrics::METRICS;
use crate::node::{Node, ShardGroup};
use crate::raft::{ProducerStamp, RecordBatch, StoredRecord};
use crate::reader;
use crate::routing;
use crate::sequence::SequenceNumber;
use crate::validation::{
    self, GET_RECORDS_MAX_BYTES, PUT_RECORDS_MAX_BYTES, PUT_RECORDS_MAX_ENTRIES,
};

/// How far in the future an AT_TIMESTAMP may be before it is rejected (clock skew).
const FUTURE_TIMESTAMP_SLACK_MS: i64 = 5_000;

/// The data-plane service (a cheap handle: subscriptions keep one).
#[derive(Clone)]
pub struct DataApi {
    node: Arc<Node>,
}

/// A validated entry ready to route.
struct Routed {
    position: usize,
    hash: u128,
    shard_index: u32,
    record: StoredRecord,
}

/// How many times one PutRecords call follows reshards before it reports `ShardClosed`.
const MAX_REROUTES: usize = 4;

impl DataApi {
    /// A service over a node.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    fn writable_stream(&self, name: &str) -> Result<StreamMeta, ApiError> {
        let stream = stream_snapshot(&self.node, name)?;
        if stream.status == StreamStatus::Creating {
            return Err(ApiError::in_use(format!(
                "stream {name} is not ACTIVE yet; retry once it is"
            )));
        }
        Ok(stream)
    }

    /// The stream as metadata shows it once `closed` shards are closed there (a write met
    /// their seal, so the metadata command that closes them is committed or about to be).
    async fn stream_after_close(
        &self,
        stream: &StreamMeta,
        closed: &[u32],
    ) -> Result<StreamMeta, ApiError> {
        let mut version = self.node.metadata_version();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let current = stream_snapshot(&self.node, &stream.name)?;
            if current.stream_id != stream.stream_id {
                return Err(ApiError::not_found(format!(
                    "stream {} was deleted",
                    stream.name
                )));
            }
            let all_closed = closed
                .iter()
                .all(|index| current.shard(*index).is_none_or(|shard| !shard.is_open()));
            if all_closed {
                return Ok(current);
            }
            if tokio::time::timeout_at(deadline, version.changed())
                .await
                .is_err()
            {
                return Err(crate::node::shard_closed(closed[0]));
            }
        }
    }

    pub(crate) fn shard_group(
        &self,
        stream: &StreamMeta,
        shard_index: u32,
    ) -> Result<Arc<ShardGroup>, ApiError> {
        let shard = stream
            .shard(shard_index)
            .filter(|s| s.state != ShardState::Pending)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "shard {} does not exist in stream {}",
                    crate::metadata::shard_id(shard_index),
                    stream.name
                ))
            })?;
        self.node
            .shard_group_or_error(shard.group_id, &shard.shard_id())
    }

    /// Validates every entry before anything is written: a bad entry rejects the whole call
    /// and changes nothing.
    fn route(
        stream: &StreamMeta,
        entries: Vec<pb::PutRecordsEntry>,
    ) -> Result<Vec<Routed>, ApiError> {
        let mut routed = Vec::with_capacity(entries.len());
        for (position, entry) in entries.into_iter().enumerate() {
            let context = |err: ApiError| ApiError {
                message: format!("record {position}: {}", err.message),
                ..err
            };
            validation::partition_key(&entry.partition_key).map_err(context)?;
            validation::record_data(entry.data.len(), stream.max_record_bytes).map_err(context)?;
            let hash = match &entry.explicit_hash_key {
                Some(text) => validation::explicit_hash_key(text).map_err(context)?,
                None => routing::hash_key(&entry.partition_key),
            };
            let shard = stream.shard_for_hash(hash).ok_or_else(|| {
                ApiError::internal(format!("no open shard covers hash key {hash}"))
            })?;
            routed.push(Routed {
                position,
                hash,
                shard_index: shard.shard_index,
                record: StoredRecord {
                    partition_key: entry.partition_key,
                    data: entry.data,
                },
            });
        }
        Ok(routed)
    }

    /// Appends one batch per shard, concurrently; per-shard failures become per-entry errors.
    /// Entries whose shard a reshard closed meanwhile are routed again, to its children.
    async fn put(
        &self,
        stream: &StreamMeta,
        mut routed: Vec<Routed>,
        producer: Option<ProducerStamp>,
    ) -> Vec<pb::PutRecordsResultEntry> {
        let mut results = vec![pb::PutRecordsResultEntry::default(); routed.len()];
        let mut stream = stream.clone();
        for attempt in 0..=MAX_REROUTES {
            let closed = self.put_once(&stream, routed, producer, &mut results).await;
            let Some((closed_shards, entries)) = closed else {
                break;
            };
            if attempt == MAX_REROUTES {
                break;
            }
            stream = match self.stream_after_close(&stream, &closed_shards).await {
                Ok(stream) => stream,
                Err(err) => {
                    for entry in &entries {
                        results[entry.position] = failed_entry(&err);
                    }
                    break;
                }
            };
            routed = Vec::with_capacity(entries.len());
            for mut entry in entries {
                match stream.shard_for_hash(entry.hash) {
                    Some(shard) => {
                        entry.shard_index = shard.shard_index;
                        routed.push(entry);
                    }
                    None => {
                        let err = ApiError::internal(format!(
                            "no open shard covers hash key {}",
                            entry.hash
                        ));
                        results[entry.position] = failed_entry(&err);
                    }
                }
            }
        }
        results
    }

    /// One round of appends. Returns the entries that met a sealed shard (their results
    /// hold `ShardClosed` until a later round replaces them), with those shards.
    async fn put_once(
        &self,
        stream: &StreamMeta,
        routed: Vec<Routed>,
        producer: Option<ProducerStamp>,
        results: &mut [pb::PutRecordsResultEntry],
    ) -> Option<(Vec<u32>, Vec<Routed>)> {
        let mut by_shard: BTreeMap<u32, Vec<Routed>> = BTreeMap::new();
        for entry in routed {
            by_shard.entry(entry.shard_index).or_default().push(entry);
        }
        let appends = by_shard
            .into_iter()
            .map(|(shard_index, entries)| async move {
                // The records move into the batch (no copy); they come back out of it only
                // if the shard turns out sealed and they must be routed again.
                let (places, records): (Vec<(usize, u128)>, Vec<StoredRecord>) = entries
                    .into_iter()
                    .map(|e| ((e.position, e.hash), e.record))
                    .unzip();
                let batch = RecordBatch {
                    // Set by the shard's leader when it appends.
                    arrival_ms: 0,
                    records,
                    producer,
                    encoded: None,
                };
                let result = match self.shard_group(stream, shard_index) {
                    Ok(group) => {
                        let result = self.node.append(&group, &batch).await;
                        if result.is_ok() {
                            let bytes: usize = batch
                                .records
                                .iter()
                                .map(|r| r.data.len() + r.partition_key.len())
                                .sum();
                            group
                                .traffic
                                .wrote(batch.records.len() as u64, bytes as u64);
                        }
                        result
                    }
                    Err(err) => Err(err),
                };
                (shard_index, places, batch.records, result)
            });
        let mut closed_shards = Vec::new();
        let mut closed_entries = Vec::new();
        for (shard_index, places, records, result) in join_all(appends).await {
            for (slot, (position, _)) in places.iter().enumerate() {
                results[*position] = match &result {
                    Ok(log_index) => pb::PutRecordsResultEntry {
                        shard_id: crate::metadata::shard_id(shard_index),
                        sequence_number: SequenceNumber {
                            shard_index,
                            log_index: *log_index,
                            slot: slot as u16,
                        }
                        .to_string(),
                        error_code: pb::ErrorCode::Unspecified as i32,
                        error_message: String::new(),
                    },
                    Err(err) => failed_entry(err),
                };
            }
            if matches!(&result, Err(err) if err.code == pb::ErrorCode::ShardClosed) {
                closed_shards.push(shard_index);
                closed_entries.extend(places.into_iter().zip(records).map(
                    |((position, hash), record)| Routed {
                        position,
                        hash,
                        shard_index,
                        record,
                    },
                ));
            }
        }
        (!closed_entries.is_empty()).then(|| {
            closed_entries.sort_by_key(|e| e.position);
            (closed_shards, closed_entries)
        })
    }

    /// The (log index, slot) a GetShardIterator or SubscribeToShard starting position names.
    pub(crate) fn start_position(
        &self,
        stream: &StreamMeta,
        group: &ShardGroup,
        shard_id: &str,
        kind: i32,
        sequence: Option<&str>,
        timestamp: Option<prost_types::Timestamp>,
    ) -> Result<(u64, u16), ApiError> {
        let shard_index = group.shard_index;
        let kind =
            pb::ShardIteratorType::try_from(kind).unwrap_or(pb::ShardIteratorType::Unspecified);
        let sequence = |kind: &str| -> Result<SequenceNumber, ApiError> {
            let text = sequence.ok_or_else(|| {
                ApiError::invalid(format!("{kind} needs starting_sequence_number"))
            })?;
            let seq = SequenceNumber::parse(text)?;
            if seq.shard_index != shard_index {
                return Err(ApiError::invalid(format!(
                    "sequence number {text} belongs to {}, not {shard_id}",
                    crate::metadata::shard_id(seq.shard_index),
                )));
            }
            Ok(seq)
        };
        Ok(match kind {
            pb::ShardIteratorType::TrimHorizon => {
                reader::trim_horizon(group, self.horizon_ms(stream))
            }
            pb::ShardIteratorType::Latest => reader::latest(group),
            pb::ShardIteratorType::AtSequenceNumber => {
                let seq = sequence("AT_SEQUENCE_NUMBER")?;
                (seq.log_index, seq.slot)
            }
            pb::ShardIteratorType::AfterSequenceNumber => {
                let seq = sequence("AFTER_SEQUENCE_NUMBER")?;
                match seq.slot.checked_add(1) {
                    Some(slot) => (seq.log_index, slot),
                    None => (seq.log_index + 1, 0),
                }
            }
            pb::ShardIteratorType::AtTimestamp => {
                let ts = timestamp.ok_or_else(|| ApiError::invalid("AT_TIMESTAMP needs a timestamp"))?;
                let ts_ms = ts
                    .seconds
                    .saturating_mul(1000)
                    .saturating_add(i64::from(ts.nanos) / 1_000_000);
                if ts_ms > self.node.now_ms() + FUTURE_TIMESTAMP_SLACK_MS {
                    return Err(ApiError::invalid(
                        "AT_TIMESTAMP is in the future; use LATEST to read new records",
                    ));
                }
                reader::at_timestamp(group, ts_ms, self.horizon_ms(stream))
            }
            pb::ShardIteratorType::Unspecified => {
                return Err(ApiError::invalid(
                    "shard_iterator_type must be TRIM_HORIZON, LATEST, AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER or AT_TIMESTAMP",
                ))
            }
        })
    }

    /// The children of a shard once this node's metadata shows it closed (None while it
    /// is open here: a reader at its seal waits for the metadata to catch up).
    pub(crate) fn closed_children(
        &self,
        stream_id: u64,
        shard_index: u32,
    ) -> Option<Vec<pb::ChildShard>> {
        let state = self.node.metadata();
        let current = state.stream_by_id(stream_id)?;
        let shard = current.shard(shard_index)?;
        if shard.is_open() {
            return None;
        }
        Some(
            current
                .children_of(shard_index)
                .map(|child| pb::ChildShard {
                    shard_id: child.shard_id(),
                    parent_shards: child.parents().map(crate::metadata::shard_id).collect(),
                    starting_hash_key: child.hash_range.start.to_string(),
                    ending_hash_key: child.hash_range.end.to_string(),
                })
                .collect(),
        )
    }

    /// The retention horizon of a stream: records that arrived before it have expired.
    pub(crate) fn horizon_ms(&self, stream: &StreamMeta) -> i64 {
        self.node
            .now_ms()
            .saturating_sub(i64::try_from(stream.retention_ms).unwrap_or(i64::MAX))
    }
}

fn failed_entry(err: &ApiError) -> pb::PutRecordsResultEntry {
    pb::PutRecordsResultEntry {
        shard_id: String::new(),
        sequence_number: String::new(),
        error_code: err.code as i32,
        error_message: err.message.clone(),
    }
}

#[tonic::async_trait]
impl DataService for DataApi {
    async fn put_record(
        &self,
        request: Request<pb::PutRecordRequest>,
    ) -> Result<Response<pb::PutRecordResponse>, Status> {
        let _timer = METRICS.put_latency.start_timer();
        let request = request.into_inner();
        let stream = self.writable_stream(&request.stream_name)?;
        let entry = pb::PutRecordsEntry {
            partition_key: request.partition_key,
            data: request.data,
            explicit_hash_key: request.explicit_hash_key,
        };
        let routed = Self::route(&stream, vec![entry]).map_err(|e| ApiError {
            message: e.message.trim_start_matches("record 0: ").to_string(),
            ..e
        })?;
        // SequenceNumberForOrdering: numbers strictly increase within a shard and a child's
        // are above its parents', so the new record's number is greater whenever the given
        // one was issued by the record's shard (checked to exist below) or an ancestor. A
        // number of another shard orders nothing for this key, as in Kinesis, and is accepted.
        if let (Some(text), Some(entry)) = (&request.sequence_number_for_ordering, routed.first()) {
            let seq = SequenceNumber::parse(text).map_err(|e| ApiError {
                message: format!("sequence_number_for_ordering: {}", e.message),
                ..e
            })?;
            if seq.shard_index == entry.shard_index {
                let group = self.shard_group(&stream, entry.shard_index)?;
                if seq.log_index > group.tip.borrow().applied_index {
                    self.node.catch_up_reads(&group).await?;
                    if seq.log_index > group.tip.borrow().applied_index {
                        return Err(ApiError::invalid(format!(
                            "sequence_number_for_ordering {text} is above the newest sequence number of {}",
                            crate::metadata::shard_id(seq.shard_index)
                        ))
                        .into());
                    }
                }
            }
        }
        let result = self
            .put(&stream, routed, None)
            .await
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::internal("no result"))?;
        if result.error_code != pb::ErrorCode::Unspecified as i32 {
            return Err(ApiError {
                code: pb::ErrorCode::try_from(result.error_code)
                    .unwrap_or(pb::ErrorCode::InternalFailure),
                message: result.error_message,
            }
            .into());
        }
        Ok(Response::new(pb::PutRecordResponse {
            shard_id: result.shard_id,
            sequence_number: result.sequence_number,
        }))
    }

    async fn put_records(
        &self,
        request: Request<pb::PutRecordsRequest>,
    ) -> Result<Response<pb::PutRecordsResponse>, Status> {
        let _timer = METRICS.put_latency.start_timer();
        let request = request.into_inner();
        let stream = self.writable_stream(&request.stream_name)?;
        if request.records.is_empty() {
            return Err(ApiError::invalid("PutRecords has no records; send 1 to 500").into());
        }
        if request.records.len() > PUT_RECORDS_MAX_ENTRIES {
            return Err(ApiError::invalid(format!(
                "PutRecords has {} records; the limit is {PUT_RECORDS_MAX_ENTRIES}",
                request.records.len()
            ))
            .into());
        }
        let total: usize = request
            .records
            .iter()
            .map(|r| r.data.len() + r.partition_key.len())
            .sum();
        if total > PUT_RECORDS_MAX_BYTES {
            return Err(ApiError::invalid(format!(
                "PutRecords carries {total} bytes of data and partition keys; the limit is {PUT_RECORDS_MAX_BYTES} bytes (5 MiB)"
            ))
            .into());
        }
        let producer = match (request.producer_id, request.producer_sequence) {
            (0, 0) => None,
            (0, _) => {
                return Err(ApiError::invalid(
                    "producer_sequence needs a producer_id (a random non-zero number)",
                )
                .into())
            }
            (_, 0) => {
                return Err(ApiError::invalid(
                    "producer_id needs a producer_sequence: number requests from 1",
                )
                .into())
            }
            (id, sequence) => Some(ProducerStamp { id, sequence }),
        };
        let routed = Self::route(&stream, request.records)?;
        let records = self.put(&stream, routed, producer).await;
        let failed = records
            .iter()
            .filter(|r| r.error_code != pb::ErrorCode::Unspecified as i32)
            .count() as u32;
        Ok(Response::new(pb::PutRecordsResponse {
            failed_record_count: failed,
            records,
        }))
    }

    type SubscribeToShardStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::SubscribeToShardEvent, Status>>;

    async fn subscribe_to_shard(
        &self,
        request: Request<pb::SubscribeToShardRequest>,
    ) -> Result<Response<Self::SubscribeToShardStream>, Status> {
        let request = request.into_inner();
        let stream = stream_snapshot(&self.node, &request.stream_name)?;
        validation::consumer_name(&request.consumer_name)?;
        let consumer_id = stream
            .consumers
            .get(&request.consumer_name)
            .map(|c| c.consumer_id)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "consumer {} is not registered on stream {}",
                    request.consumer_name, stream.name
                ))
            })?;
        let shard_index = parse_shard_id(&request.shard_id)?;
        let group = self.shard_group(&stream, shard_index)?;
        self.node.catch_up_reads(&group).await?;
        let start = request
            .starting_position
            .ok_or_else(|| ApiError::invalid("starting_position is required"))?;
        let position = self.start_position(
            &stream,
            &group,
            &request.shard_id,
            start.r#type,
            start.sequence_number.as_deref(),
            start.timestamp,
        )?;
        let events = Subscription {
            api: self.clone(),
            stream,
            consumer: request.consumer_name,
            consumer_id,
            group,
            position,
        }
        .start();
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            events,
        )))
    }

    async fn get_shard_iterator(
        &self,
        request: Request<pb::GetShardIteratorRequest>,
    ) -> Result<Response<pb::GetShardIteratorResponse>, Status> {
        let request = request.into_inner();
        let stream = stream_snapshot(&self.node, &request.stream_name)?;
        let shard_index = parse_shard_id(&request.shard_id)?;
        let group = self.shard_group(&stream, shard_index)?;
        self.node.catch_up_reads(&group).await?;
        let (log_index, slot) = self.start_position(
            &stream,
            &group,
            &request.shard_id,
            request.shard_iterator_type,
            request.starting_sequence_number.as_deref(),
            request.timestamp,
        )?;
        let token = self.node.iterators()?.encode(&IteratorPosition {
            stream_id: stream.stream_id,
            shard_index,
            log_index,
            slot,
            issued_at_ms: self.node.now_ms(),
        });
        Ok(Response::new(pb::GetShardIteratorResponse {
            shard_iterator: token,
        }))
    }

    async fn get_records(
        &self,
        request: Request<pb::GetRecordsRequest>,
    ) -> Result<Response<pb::GetRecordsResponse>, Status> {
        let _timer = METRICS.get_latency.start_timer();
        let request = request.into_inner();
        let limit = validation::get_records_limit(request.limit)?;
        let wait = validation::get_records_wait(request.wait_ms)?;
        let codec = self.node.iterators()?;
        let now = self.node.now_ms();
        let position = codec.decode(&request.shard_iterator, now)?;
        let stream = self
            .node
            .metadata()
            .stream_by_id(position.stream_id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("the iterator's stream no longer exists"))?;
        if let Some(name) = &request.stream_name {
            if *name != stream.name {
                return Err(ApiError::invalid(format!(
                    "the shard iterator belongs to stream {}, not {name}",
                    stream.name
                ))
                .into());
            }
        }
        let group = self.shard_group(&stream, position.shard_index)?;
        if let Some(quota) = &group.quota {
            quota.admit_read(position.shard_index)?;
        }
        self.node.catch_up_reads(&group).await?;
        let from = (position.log_index, position.slot);
        let horizon = self.horizon_ms(&stream);
        let max_bytes = GET_RECORDS_MAX_BYTES;
        let mut page =
            reader::read_far_behind_off_runtime(&group, from, limit as usize, max_bytes, horizon)
                .await?;
        if page.records.is_empty() && !page.at_shard_end && !wait.is_zero() {
            // Long poll: wake from the shard's apply watch (no timer polling) as soon as
            // an entry past the position commits, and read again; entries without records
            // (a new leader's blank entry) do not end the wait.
            let deadline = tokio::time::Instant::now() + wait;
            let mut tip = group.tip.clone();
            while page.records.is_empty() && !page.at_shard_end {
                let next = page.next.0;
                let committed = tokio::time::timeout_at(deadline, async {
                    tip.wait_for(|t| t.applied_index >= next).await.map(|_| ())
                })
                .await;
                if !matches!(committed, Ok(Ok(()))) {
                    break;
                }
                page = reader::read(&group, page.next, limit as usize, max_bytes, horizon)?;
            }
        }
        let bytes_out: u64 = page.records.iter().map(|r| r.data.len() as u64).sum();
        if let Some(quota) = &group.quota {
            quota.charge_read(bytes_out);
        }
        group.traffic.read(page.records.len() as u64, bytes_out);
        group.traffic.get_millis_behind.store(
            page.millis_behind_latest,
            std::sync::atomic::Ordering::Relaxed,
        );
        // A closed shard read to its end: no next iterator; the children carry on. (Until
        // this node's metadata shows the shard closed, the reader just waits at the end.)
        let mut children = page
            .at_shard_end
            .then(|| self.closed_children(stream.stream_id, position.shard_index))
            .flatten();
        if page.at_shard_end && children.is_none() && !wait.is_zero() {
            // Sealed here but not yet closed in this node's metadata: a long poll waits
            // for the metadata rather than answering empty at once.
            let mut version = self.node.metadata_version();
            let deadline = tokio::time::Instant::now() + wait;
            while children.is_none() {
                if !matches!(
                    tokio::time::timeout_at(deadline, version.changed()).await,
                    Ok(Ok(()))
                ) {
                    break;
                }
                children = self.closed_children(stream.stream_id, position.shard_index);
            }
        }
        let next = match children {
            Some(_) => None,
            None => Some(codec.encode(&IteratorPosition {
                log_index: page.next.0,
                slot: page.next.1,
                issued_at_ms: now,
                ..position
            })),
        };
        let records = page
            .records
            .into_iter()
            .map(reader::ReadRecord::into_proto)
            .collect();
        Ok(Response::new(pb::GetRecordsResponse {
            records,
            next_shard_iterator: next,
            millis_behind_latest: page.millis_behind_latest,
            child_shards: children.unwrap_or_default(),
        }))
    }
}
