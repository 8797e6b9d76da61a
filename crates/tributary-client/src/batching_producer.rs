//! [`Producer`]: send records one by one and let the SDK batch, retry and deduplicate.
//!
//! Records are queued per shard (routed with the stream's shard map, as the server routes)
//! and go out as PutRecords requests of up to `max_batch_records` / `max_batch_bytes`, after
//! at most `linger`. Each shard has at most one request in flight, and a request's failed
//! entries are retried before the shard's next request, so each partition key's records are
//! stored in send order. Memory is bounded: [`Producer::send`] waits while
//! `max_buffered_bytes` of records are queued or in flight (back-pressure).
//!
//! **Idempotence** (on by default). The producer has a random id and numbers its requests.
//! When a request's outcome is unknown — a timeout, a dropped connection, a leader change —
//! it is retried with the same number and the same records; the shard, which remembers each
//! producer's newest request numbers in its replicated state, answers a retry of a request
//! it already stored with the original sequence numbers instead of storing it twice.
//! Entries refused for certain (throughput exceeded) are retried under a new number.
//!
//! After a reshard the server routes records to the child shards itself; when a result
//! names a shard other than the one a record was queued for, the producer reloads the
//! shard map and, before anything goes to the new shards, lets every request still in
//! flight to the old ones finish (so no key's records overtake each other).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tributary_proto::v1::{ErrorCode, PutRecordsEntry, Shard};

use crate::backoff::{Backoff, RetryPolicy};
use crate::producer::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS};
use crate::routing::{hash_key, shard_for_hash};
use crate::{Client, Error};

/// How a [`Producer`] batches, bounds memory and retries.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// How long a record may wait for others to join its request.
    pub linger: Duration,
    /// Records per request, 1 to 500.
    pub max_batch_records: usize,
    /// Key and data bytes per request, at most 5 MiB.
    pub max_batch_bytes: usize,
    /// Key and data bytes queued or in flight before [`Producer::send`] waits.
    pub max_buffered_bytes: usize,
    /// Retry bounds for each request.
    pub retry: RetryPolicy,
    /// Number requests so retries are never stored twice (see the module docs).
    pub idempotent: bool,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            linger: Duration::from_millis(5),
            max_batch_records: MAX_BATCH_RECORDS,
            max_batch_bytes: MAX_BATCH_BYTES,
            max_buffered_bytes: 64 * 1024 * 1024,
            retry: RetryPolicy::default(),
            idempotent: true,
        }
    }
}

/// Where an acknowledged record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReceipt {
    /// The shard that holds it.
    pub shard_id: String,
    /// Its sequence number.
    pub sequence_number: String,
}

/// Counters of a [`Producer`] (a snapshot).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerMetrics {
    /// Records acknowledged.
    pub records_acknowledged: u64,
    /// Records that failed for good.
    pub records_failed: u64,
    /// PutRecords requests sent, retries included.
    pub requests: u64,
    /// Requests sent again (same number: outcome unknown; new number: entries refused).
    pub retries: u64,
    /// Key and data bytes queued or in flight now.
    pub buffered_bytes: u64,
}

#[derive(Default)]
struct Counters {
    acknowledged: AtomicU64,
    failed: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    buffered: AtomicU64,
}

/// The acknowledgement of one sent record: resolves once it is stored (or failed for good).
pub struct Delivery {
    reply: oneshot::Receiver<Result<SendReceipt, Error>>,
}

impl Future for Delivery {
    type Output = Result<SendReceipt, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.reply).poll(cx).map(|reply| {
            reply.unwrap_or_else(|_| {
                Err(Error::UnexpectedResponse(
                    "the producer stopped before the record was acknowledged".into(),
                ))
            })
        })
    }
}

struct Pending {
    stream: String,
    entry: PutRecordsEntry,
    hash: u128,
    bytes: usize,
    reply: oneshot::Sender<Result<SendReceipt, Error>>,
    _budget: OwnedSemaphorePermit,
}

enum Message {
    Record(Pending),
    Flush(oneshot::Sender<()>),
}

/// Batches, retries and (by default) deduplicates records sent one at a time; see the
/// module docs. Cheap to share behind an `Arc`; dropping it stops the background task once
/// everything queued was sent.
pub struct Producer {
    messages: mpsc::UnboundedSender<Message>,
    budget: Arc<Semaphore>,
    max_buffered: usize,
    counters: Arc<Counters>,
    producer_id: u64,
}

impl Producer {
    /// A producer writing through `client`. Starts a background task (needs a tokio runtime).
    pub fn new(client: &Client, options: ProducerOptions) -> Producer {
        let (messages, receiver) = mpsc::unbounded_channel();
        let max_buffered = options.max_buffered_bytes.max(1);
        let counters = Arc::new(Counters::default());
        // Any non-zero number: collisions between 64-bit random ids are not a concern.
        let producer_id = rand::random::<u64>().max(1);
        let dispatcher = Dispatcher {
            client: client.clone(),
            options,
            counters: counters.clone(),
            producer_id,
            next_request: Arc::new(AtomicU64::new(1)),
            streams: HashMap::new(),
            flushes: Vec::new(),
        };
        tokio::spawn(dispatcher.run(receiver));
        Producer {
            messages,
            budget: Arc::new(Semaphore::new(max_buffered)),
            max_buffered,
            counters,
            producer_id,
        }
    }

    /// This producer's id (in the server's deduplication table).
    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    /// Queues a record and returns its [`Delivery`]; waits first while the buffer is full.
    /// `data` is anything that converts into [`Bytes`].
    pub async fn send(
        &self,
        stream: &str,
        partition_key: &str,
        data: impl Into<Bytes>,
    ) -> Result<Delivery, Error> {
        self.send_with_hash_key(stream, partition_key, data, None)
            .await
    }

    /// Like [`Producer::send`], routed by an explicit hash key (a decimal 128-bit integer).
    pub async fn send_with_hash_key(
        &self,
        stream: &str,
        partition_key: &str,
        data: impl Into<Bytes>,
        explicit_hash_key: Option<String>,
    ) -> Result<Delivery, Error> {
        let data: Bytes = data.into();
        let hash = match &explicit_hash_key {
            Some(text) => text.parse::<u128>().map_err(|_| {
                Error::InvalidInput(format!(
                    "explicit hash key {text:?} is not a decimal number from 0 to 2^128-1"
                ))
            })?,
            None => hash_key(partition_key),
        };
        let bytes = partition_key.len() + data.len();
        // A record larger than the whole budget takes all of it and goes alone.
        let permits = u32::try_from(bytes.clamp(1, self.max_buffered)).unwrap_or(u32::MAX);
        let budget = self
            .budget
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| Error::UnexpectedResponse("the producer was closed".into()))?;
        self.counters
            .buffered
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let (reply, receiver) = oneshot::channel();
        let pending = Pending {
            stream: stream.to_owned(),
            entry: PutRecordsEntry {
                partition_key: partition_key.to_owned(),
                data,
                explicit_hash_key,
            },
            hash,
            bytes,
            reply,
            _budget: budget,
        };
        self.messages
            .send(Message::Record(pending))
            .map_err(|_| Error::UnexpectedResponse("the producer's task stopped".into()))?;
        Ok(Delivery { reply: receiver })
    }

    /// Sends everything queued now, without waiting for the linger time, and returns once
    /// all of it is acknowledged or failed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.messages.send(Message::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// The counters.
    pub fn metrics(&self) -> ProducerMetrics {
        let c = &self.counters;
        ProducerMetrics {
            records_acknowledged: c.acknowledged.load(Ordering::Relaxed),
            records_failed: c.failed.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            buffered_bytes: c.buffered.load(Ordering::Relaxed),
        }
    }
}

/// One shard's queue.
#[derive(Default)]
struct ShardQueue {
    records: VecDeque<Pending>,
    bytes: usize,
    since: Option<Instant>,
    /// A request of this queue is in flight.
    busy: bool,
}

/// What the producer knows of one stream.
#[derive(Default)]
struct StreamState {
    /// Open shards, from the last listing.
    shards: Vec<Shard>,
    /// Bumped when the shard map is reloaded.
    generation: u64,
    queues: BTreeMap<String, ShardQueue>,
    /// Requests in flight per shard-map generation.
    in_flight: BTreeMap<u64, usize>,
}

impl StreamState {
    /// Whether requests of an older shard map are still in flight (new queues then wait).
    fn draining(&self) -> bool {
        self.in_flight
            .iter()
            .any(|(generation, count)| *generation < self.generation && *count > 0)
    }
}

/// A finished request.
struct Done {
    stream: String,
    shard_id: String,
    generation: u64,
    /// A result named another shard than the queue's: the map is stale.
    moved: bool,
}

type RequestFuture = Pin<Box<dyn Future<Output = Done> + Send>>;

struct Dispatcher {
    client: Client,
    options: ProducerOptions,
    counters: Arc<Counters>,
    producer_id: u64,
    next_request: Arc<AtomicU64>,
    streams: HashMap<String, StreamState>,
    flushes: Vec<oneshot::Sender<()>>,
}

impl Dispatcher {
    async fn run(mut self, mut messages: mpsc::UnboundedReceiver<Message>) {
        let mut requests: FuturesUnordered<RequestFuture> = FuturesUnordered::new();
        let mut open = true;
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                message = messages.recv(), if open => match message {
                    Some(Message::Record(pending)) => self.enqueue(pending).await,
                    Some(Message::Flush(done)) => self.flushes.push(done),
                    None => open = false,
                },
                Some(done) = requests.next(), if !requests.is_empty() => self.finished(done).await,
                _ = sleep_until(deadline), if deadline.is_some() => {}
            }
            let flushing = !self.flushes.is_empty() || !open;
            for request in self.dispatch(flushing) {
                requests.push(request);
            }
            if requests.is_empty() && self.is_empty() {
                for done in self.flushes.drain(..) {
                    let _ = done.send(());
                }
                if !open {
                    return;
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.streams
            .values()
            .all(|s| s.queues.values().all(|q| q.records.is_empty()))
    }

    /// The earliest moment a lingering queue becomes due.
    fn next_deadline(&self) -> Option<Instant> {
        self.streams
            .values()
            .filter(|s| !s.draining())
            .flat_map(|s| s.queues.values())
            .filter(|q| !q.busy)
            .filter_map(|q| q.since)
            .min()
            .map(|since| since + self.options.linger)
    }

    async fn enqueue(&mut self, pending: Pending) {
        if !self.streams.contains_key(&pending.stream) {
            let mut state = StreamState::default();
            match self.client.list_shards(&pending.stream).await {
                Ok(shards) => state.shards = shards,
                Err(err) => {
                    self.fail(pending, err);
                    return;
                }
            }
            self.streams.insert(pending.stream.clone(), state);
        }
        let state = self
            .streams
            .get_mut(&pending.stream)
            .expect("inserted above");
        route(state, pending);
    }

    fn fail(&self, pending: Pending, err: Error) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        self.counters
            .buffered
            .fetch_sub(pending.bytes as u64, Ordering::Relaxed);
        let _ = pending.reply.send(Err(err));
    }

    async fn finished(&mut self, done: Done) {
        let Some(state) = self.streams.get_mut(&done.stream) else {
            return;
        };
        if let Some(count) = state.in_flight.get_mut(&done.generation) {
            *count = count.saturating_sub(1);
        }
        if let Some(queue) = state.queues.get_mut(&done.shard_id) {
            queue.busy = false;
        }
        if done.moved && done.generation == state.generation {
            // Reload the map once per generation; queued records move to their new shard.
            match self.client.list_shards(&done.stream).await {
                Ok(shards) => {
                    state.shards = shards;
                    state.generation += 1;
                    let queued: Vec<Pending> = state
                        .queues
                        .values_mut()
                        .flat_map(|q| {
                            q.bytes = 0;
                            q.since = None;
                            q.records.drain(..)
                        })
                        .collect();
                    for pending in queued {
                        route(state, pending);
                    }
                }
                Err(err) => {
                    tracing::warn!(stream = %done.stream, error = %err, "cannot reload the shard map")
                }
            }
        }
    }

    /// Starts a request for every queue that is due and free.
    fn dispatch(&mut self, flushing: bool) -> Vec<RequestFuture> {
        let now = Instant::now();
        let mut started = Vec::new();
        let max_records = self.options.max_batch_records.clamp(1, MAX_BATCH_RECORDS);
        let max_bytes = self.options.max_batch_bytes.clamp(1, MAX_BATCH_BYTES);
        let idempotence = self.idempotence();
        for (stream, state) in &mut self.streams {
            let draining = state.draining();
            let generation = state.generation;
            for (shard_id, queue) in &mut state.queues {
                if queue.busy || queue.records.is_empty() || draining {
                    continue;
                }
                let full = queue.records.len() >= max_records || queue.bytes >= max_bytes;
                let due = queue
                    .since
                    .is_some_and(|since| now >= since + self.options.linger);
                if !(full || due || flushing) {
                    continue;
                }
                let mut batch = Vec::new();
                let mut bytes = 0;
                while let Some(next) = queue.records.front() {
                    if !batch.is_empty()
                        && (batch.len() >= max_records || bytes + next.bytes > max_bytes)
                    {
                        break;
                    }
                    bytes += next.bytes;
                    batch.extend(queue.records.pop_front());
                }
                queue.bytes -= bytes;
                queue.since = (!queue.records.is_empty()).then_some(now);
                queue.busy = true;
                *state.in_flight.entry(generation).or_default() += 1;
                started.push(Box::pin(send_request(
                    self.client.clone(),
                    stream.clone(),
                    shard_id.clone(),
                    generation,
                    batch,
                    self.options.clone(),
                    idempotence.clone(),
                    self.counters.clone(),
                )) as RequestFuture);
            }
        }
        started
    }

    fn idempotence(&self) -> Option<(u64, Arc<AtomicU64>)> {
        self.options
            .idempotent
            .then(|| (self.producer_id, self.next_request.clone()))
    }
}

/// Puts a record in its shard's queue (by the current map; unknown ranges go to a queue of
/// their own and the server routes them).
fn route(state: &mut StreamState, pending: Pending) {
    let shard_id = shard_for_hash(&state.shards, pending.hash)
        .map(|s| s.shard_id.clone())
        .unwrap_or_default();
    let queue = state.queues.entry(shard_id).or_default();
    queue.bytes += pending.bytes;
    queue.since.get_or_insert_with(Instant::now);
    queue.records.push_back(pending);
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// Codes after which a request may or may not have been stored: retried under the same
/// number so the shard can recognize it.
fn outcome_unknown(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Unavailable | ErrorCode::InternalFailure)
}

/// Sends one request until every record is acknowledged or failed for good.
#[allow(clippy::too_many_arguments)]
async fn send_request(
    client: Client,
    stream: String,
    shard_id: String,
    generation: u64,
    batch: Vec<Pending>,
    options: ProducerOptions,
    idempotence: Option<(u64, Arc<AtomicU64>)>,
    counters: Arc<Counters>,
) -> Done {
    let mut moved = false;
    let number = |idempotence: &Option<(u64, Arc<AtomicU64>)>| {
        idempotence
            .as_ref()
            .map(|(id, next)| (*id, next.fetch_add(1, Ordering::Relaxed)))
    };
    let mut stamp = number(&idempotence);
    let mut pending = batch;
    // Refused for certain: sent under a new number once the unknown ones are settled.
    let mut refused: Vec<Pending> = Vec::new();
    let mut backoff = Backoff::start(&options.retry);
    let started = Instant::now();
    let mut first = true;
    loop {
        if !first {
            counters.retries.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let entries: Vec<PutRecordsEntry> = pending.iter().map(|p| p.entry.clone()).collect();
        let response = match stamp {
            Some((id, sequence)) => {
                client
                    .put_records_idempotent(&stream, entries, id, sequence)
                    .await
            }
            None => client.put_records(&stream, entries).await,
        };
        let last_error = match response {
            Ok(response) => {
                let mut unknown = Vec::new();
                let mut error = None;
                for (record, result) in pending.into_iter().zip(response.records) {
                    match result.error_code() {
                        ErrorCode::Unspecified => {
                            moved |= !shard_id.is_empty() && result.shard_id != shard_id;
                            acknowledge(&counters, record, result.shard_id, result.sequence_number);
                        }
                        code if outcome_unknown(code) => {
                            error = Some(Error::api(code, result.error_message));
                            unknown.push(record);
                        }
                        code if crate::is_retryable_code(code) => {
                            if code == ErrorCode::ShardClosed {
                                moved = true;
                            }
                            error = Some(Error::api(code, result.error_message));
                            refused.push(record);
                        }
                        code => fail(&counters, record, Error::api(code, result.error_message)),
                    }
                }
                if !unknown.is_empty() {
                    pending = unknown; // same number, same records
                } else if !refused.is_empty() {
                    pending = std::mem::take(&mut refused);
                    stamp = number(&idempotence);
                } else {
                    break;
                }
                error.unwrap_or_else(|| Error::Timeout("retrying".into()))
            }
            // The whole call failed: nothing is known of any record.
            Err(err) if err.is_retryable() => err,
            Err(err) => {
                for record in pending.into_iter().chain(refused) {
                    fail(&counters, record, clone_error(&err));
                }
                break;
            }
        };
        match backoff.next_delay() {
            Some(delay) => tokio::time::sleep(delay).await,
            None => {
                let message = format!(
                    "{last_error} (gave up after {} attempts in {:.1}s)",
                    backoff.attempts(),
                    started.elapsed().as_secs_f64()
                );
                for record in pending.into_iter().chain(refused) {
                    let err = match &last_error {
                        Error::Api { code, .. } => Error::api(*code, message.clone()),
                        _ => Error::Timeout(message.clone()),
                    };
                    fail(&counters, record, err);
                }
                break;
            }
        }
    }
    Done {
        stream,
        shard_id,
        generation,
        moved,
    }
}

fn acknowledge(counters: &Counters, record: Pending, shard_id: String, sequence_number: String) {
    counters.acknowledged.fetch_add(1, Ordering::Relaxed);
    counters
        .buffered
        .fetch_sub(record.bytes as u64, Ordering::Relaxed);
    let _ = record.reply.send(Ok(SendReceipt {
        shard_id,
        sequence_number,
    }));
}

fn fail(counters: &Counters, record: Pending, err: Error) {
    counters.failed.fetch_add(1, Ordering::Relaxed);
    counters
        .buffered
        .fetch_sub(record.bytes as u64, Ordering::Relaxed);
    let _ = record.reply.send(Err(err));
}

/// Errors are not `Clone` (a transport error holds its source); keep code and text.
fn clone_error(err: &Error) -> Error {
    match err {
        Error::Api { code, message } => Error::api(*code, message.clone()),
        Error::InvalidInput(text) => Error::InvalidInput(text.clone()),
        Error::Timeout(text) => Error::Timeout(text.clone()),
        other => Error::UnexpectedResponse(other.to_string()),
    }
}
