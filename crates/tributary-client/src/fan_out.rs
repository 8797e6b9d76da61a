//! Reading through enhanced fan-out: a registered consumer's subscriptions, into which the
//! server pushes records as they commit (no polling, and a throughput of its own per
//! consumer).
//!
//! A subscription does not last: it ends after up to 5 minutes, and earlier when the node
//! serving it restarts or a shard's leader changes. [`ShardSubscriber`] hides that. It
//! remembers the continuation of the last event and subscribes again just after it, so the
//! records it hands over have no gap and no duplicate across subscriptions. A new subscription
//! to a shard starts no sooner than [`FanOutOptions::resubscribe_interval`] after the
//! previous one — a server that ends subscriptions at once costs one call per second per
//! shard, not a busy loop — and failures back off on top of that.
//!
//! What stops a subscriber:
//! - the end of a closed shard (an event without a continuation, naming the children);
//! - ResourceInUse on a running subscription: another subscription of the same consumer to
//!   the same shard took over. Subscribing again would take the shard back, and two readers
//!   would go on stealing it from each other, each seeing a part of the records; so the
//!   error is returned. (ResourceInUse when a subscription is *opened* means the consumer
//!   is not ACTIVE yet — it was just registered — and is retried like a transient failure.);
//! - an error that retrying cannot fix (no such consumer, stream or shard), or retries
//!   running out.
//!
//! A whole-stream follow ([`FanOutConsumer::follow`]) walks the lineage like the polling
//! [`follow`](crate::follow) does (see `lineage.rs`): a child shard is subscribed only once
//! its parents were read to their end, so each partition key's records come out in put
//! order across reshards. Unlike polling, the shards that may be read are subscribed all at
//! once: a subscription waits for the server to push, so they cannot take turns.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::Streaming;
use tributary_proto::v1::{ChildShard, ErrorCode, Record, SubscribeToShardEvent};

use crate::backoff::{Backoff, RetryPolicy};
use crate::lineage::StreamWalk;
use crate::reader::Delivery;
use crate::{Client, Error, StartingPosition};

/// The least time between two subscriptions of one shard by one subscriber (the server
/// refuses faster re-subscription of a consumer to a shard, as Kinesis does).
pub const RESUBSCRIBE_INTERVAL: Duration = Duration::from_secs(1);

/// How many batches the shard subscriptions of a whole-stream follow may have read ahead of
/// the caller's callback. Small: a subscription whose events are not read is back-pressured
/// by the server, which is where a slow reader's backlog belongs.
const READ_AHEAD: usize = 8;

/// How a fan-out reader paces and retries its subscriptions.
#[derive(Debug, Clone)]
pub struct FanOutOptions {
    /// The least time between two subscriptions of one shard. Shorter reacts faster to a
    /// subscription that ended; it should not go below the server's own limit (1 s), or
    /// the early attempts are refused and only add load.
    pub resubscribe_interval: Duration,
    /// Bounds for failed subscriptions in a row; every event received starts the count
    /// over. A normal end of a subscription is not a failure.
    pub retry: RetryPolicy,
}

impl Default for FanOutOptions {
    fn default() -> Self {
        FanOutOptions {
            resubscribe_interval: RESUBSCRIBE_INTERVAL,
            retry: RetryPolicy::default(),
        }
    }
}

/// Reads one shard through a consumer's subscriptions, subscribing again whenever one ends
/// (see the module docs).
#[derive(Debug)]
pub struct ShardSubscriber {
    client: Client,
    stream: String,
    consumer: String,
    shard_id: String,
    /// Where the next subscription starts: the starting position until an event arrived,
    /// then just after the last continuation.
    position: StartingPosition,
    events: Option<Streaming<SubscribeToShardEvent>>,
    last_subscribed: Option<Instant>,
    subscriptions: u64,
    millis_behind_latest: u64,
    finished: bool,
    /// From the last event of a closed shard: the shards that continue its hash keys.
    child_shards: Vec<ChildShard>,
    options: FanOutOptions,
}

impl ShardSubscriber {
    /// A subscriber of `consumer` to `shard_id` from `from`. No RPC is made until
    /// [`ShardSubscriber::next_batch`].
    pub fn new(
        client: &Client,
        stream: &str,
        consumer: &str,
        shard_id: &str,
        from: StartingPosition,
    ) -> ShardSubscriber {
        ShardSubscriber {
            client: client.clone(),
            stream: stream.to_owned(),
            consumer: consumer.to_owned(),
            shard_id: shard_id.to_owned(),
            position: from,
            events: None,
            last_subscribed: None,
            subscriptions: 0,
            millis_behind_latest: 0,
            finished: false,
            child_shards: Vec::new(),
            options: FanOutOptions::default(),
        }
    }

    /// Replaces the pacing and retry bounds.
    pub fn with_options(mut self, options: FanOutOptions) -> ShardSubscriber {
        self.options = options;
        self
    }

    /// The shard being read.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// Where the next subscription would start: the starting position until the first
    /// event, then `AfterSequence` of the last continuation.
    pub fn position(&self) -> &StartingPosition {
        &self.position
    }

    /// How many subscriptions were opened so far (SubscribeToShard calls that succeeded or
    /// failed).
    pub fn subscriptions(&self) -> u64 {
        self.subscriptions
    }

    /// How far the last event was behind the shard's newest record, in milliseconds.
    pub fn millis_behind_latest(&self) -> u64 {
        self.millis_behind_latest
    }

    /// Whether the shard was read to its end (it is closed);
    /// [`ShardSubscriber::next_batch`] then returns no records.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Once a closed shard has been read to its end: the shards that continue its hash keys
    /// (one after a merge, two after a split). Empty before that.
    pub fn child_shards(&self) -> &[ChildShard] {
        &self.child_shards
    }

    /// The records of the next event, waiting for the server to push one; subscribes (again)
    /// as needed. Returns no records for a heartbeat (an idle shard, about every 5 s) and once
    /// finished.
    pub async fn next_batch(&mut self) -> Result<Vec<Record>, Error> {
        if self.finished {
            return Ok(Vec::new());
        }
        let retry = self.options.retry.clone();
        let mut backoff = Backoff::start(&retry);
        loop {
            if self.events.is_none() {
                match self.subscribe().await {
                    Ok(events) => self.events = Some(events),
                    // Not ACTIVE yet (just registered), or a transient failure.
                    Err(error)
                        if error.is_retryable()
                            || error.code() == Some(ErrorCode::ResourceInUse) =>
                    {
                        self.wait_to_retry(&mut backoff, error).await?;
                        continue;
                    }
                    Err(error) => return Err(error),
                }
            }
            let Some(events) = self.events.as_mut() else {
                continue;
            };
            let error = match events.message().await {
                Ok(Some(event)) => return Ok(self.take(event)),
                Ok(None) => {
                    // The subscription's time is up (or its node let it go): not a failure.
                    tracing::debug!(
                        stream = %self.stream,
                        consumer = %self.consumer,
                        shard = %self.shard_id,
                        position = %self.position,
                        "subscription ended; subscribing again"
                    );
                    self.events = None;
                    continue;
                }
                Err(status) => Error::from(status),
            };
            self.events = None;
            if error.code() == Some(ErrorCode::ResourceInUse) {
                return Err(Error::api(
                    ErrorCode::ResourceInUse,
                    format!(
                        "another subscription of consumer '{}' to shard '{}' of stream '{}' \
                         took over ({error}); a consumer reads each shard through one \
                         subscription at a time, so run one reader per consumer or register \
                         a consumer per reader",
                        self.consumer, self.shard_id, self.stream
                    ),
                ));
            }
            if !error.is_retryable() {
                return Err(error);
            }
            self.wait_to_retry(&mut backoff, error).await?;
        }
    }

    /// Opens a subscription at the current position, no sooner than the resubscribe
    /// interval after the previous one.
    async fn subscribe(&mut self) -> Result<Streaming<SubscribeToShardEvent>, Error> {
        if let Some(last) = self.last_subscribed {
            let next = last + self.options.resubscribe_interval;
            tokio::time::sleep_until(next.into()).await;
        }
        self.last_subscribed = Some(Instant::now());
        self.subscriptions += 1;
        self.client
            .subscribe_to_shard(&self.stream, &self.consumer, &self.shard_id, &self.position)
            .await
    }

    /// Takes in an event and returns its records.
    fn take(&mut self, event: SubscribeToShardEvent) -> Vec<Record> {
        self.millis_behind_latest = event.millis_behind_latest;
        match event.continuation_sequence_number {
            Some(continuation) => {
                self.position = StartingPosition::AfterSequence(continuation);
            }
            None => {
                // A closed shard read to its end; the server ends the subscription.
                self.finished = true;
                self.child_shards = event.child_shards;
                self.events = None;
            }
        }
        event.records
    }

    async fn wait_to_retry(&self, backoff: &mut Backoff<'_>, error: Error) -> Result<(), Error> {
        let Some(delay) = backoff.next_delay() else {
            return Err(error);
        };
        tracing::warn!(
            stream = %self.stream,
            consumer = %self.consumer,
            shard = %self.shard_id,
            attempt = backoff.attempts(),
            ?delay,
            %error,
            "retrying shard subscription"
        );
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// A registered consumer reading a stream through enhanced fan-out.
#[derive(Debug, Clone)]
pub struct FanOutConsumer {
    client: Client,
    stream: String,
    consumer: String,
    options: FanOutOptions,
}

impl FanOutConsumer {
    /// `consumer` (registered with [`Client::register_stream_consumer`]) reading `stream`.
    pub fn new(client: &Client, stream: &str, consumer: &str) -> FanOutConsumer {
        FanOutConsumer {
            client: client.clone(),
            stream: stream.to_owned(),
            consumer: consumer.to_owned(),
            options: FanOutOptions::default(),
        }
    }

    /// Replaces the pacing and retry bounds of every shard's subscriptions.
    pub fn with_options(mut self, options: FanOutOptions) -> FanOutConsumer {
        self.options = options;
        self
    }

    /// A subscriber of this consumer to `shard_id` from `from`.
    pub fn subscriber(&self, shard_id: &str, from: StartingPosition) -> ShardSubscriber {
        ShardSubscriber::new(&self.client, &self.stream, &self.consumer, shard_id, from)
            .with_options(self.options.clone())
    }

    /// Follows `shard_id` (or, with `None`, the whole stream) from `from`, handing each
    /// record to `on_record` as it is pushed.
    ///
    /// A whole-stream follow subscribes every shard whose parents are read to their end, and
    /// moves from a closed shard into its children (also ones created after the follow
    /// began, read from their start; it lists the shards again every few seconds to find
    /// them). Runs until `on_record` breaks, `limit` records were handed over, or nothing is
    /// left that could ever hold new records (the shard, or every shard of the stream, is
    /// closed and read to its end). Returns the number of records handed over.
    pub async fn follow<F>(
        &self,
        shard_id: Option<&str>,
        from: &StartingPosition,
        limit: Option<usize>,
        on_record: F,
    ) -> Result<usize, Error>
    where
        F: FnMut(&str, Record) -> ControlFlow<()>,
    {
        let mut delivery = Delivery::new(limit, on_record);
        let Some(shard_id) = shard_id else {
            self.follow_stream(from, &mut delivery).await?;
            return Ok(delivery.delivered);
        };
        let mut subscriber = self.subscriber(shard_id, from.clone());
        while !subscriber.is_finished() && !delivery.is_full() {
            let records = subscriber.next_batch().await?;
            if delivery.hand_over(shard_id, records).is_break() {
                break;
            }
        }
        Ok(delivery.delivered)
    }

    async fn follow_stream<F>(
        &self,
        from: &StartingPosition,
        delivery: &mut Delivery<F>,
    ) -> Result<(), Error>
    where
        F: FnMut(&str, Record) -> ControlFlow<()>,
    {
        if delivery.is_full() {
            return Ok(());
        }
        let mut walk = StreamWalk::list(&self.client, &self.stream).await?;
        let (sender, mut messages) = mpsc::channel(READ_AHEAD);
        // Dropped on return, which aborts every subscription still running.
        let mut subscriptions = JoinSet::new();
        loop {
            for ready in walk.take_ready()? {
                let subscriber = self.subscriber(&ready.shard.shard_id, ready.start(from));
                subscriptions.spawn(run_subscriber(subscriber, sender.clone()));
            }
            let mut relist = false;
            tokio::select! {
                // Never `None`: `sender` is held here.
                Some(message) = messages.recv() => match message {
                    ShardMessage::Records { shard_id, records } => {
                        if delivery.hand_over(&shard_id, records).is_break() {
                            return Ok(());
                        }
                    }
                    ShardMessage::Drained { shard_id, children } => {
                        relist = walk.drained(&shard_id, &children);
                    }
                    ShardMessage::Failed { shard_id, error } => {
                        walk.failed(&shard_id, error).await?;
                    }
                },
                Some(joined) = subscriptions.join_next() => {
                    if let Err(error) = joined {
                        if error.is_panic() {
                            std::panic::resume_unwind(error.into_panic());
                        }
                    }
                }
                () = tokio::time::sleep_until(walk.next_refresh().into()) => {}
            }
            if walk.refresh(relist).await?.is_break() {
                // Every shard is closed and read to its end: nothing can come.
                return Ok(());
            }
        }
    }
}

/// Follows `shard_id` (or, with `None`, the whole stream) through the subscriptions of
/// `consumer`, with the default [`FanOutOptions`]; see [`FanOutConsumer::follow`]. The
/// enhanced fan-out counterpart of [`follow`](crate::follow), with the same arguments and
/// the same order of records.
pub async fn follow_with_consumer<F>(
    client: &Client,
    stream: &str,
    consumer: &str,
    shard_id: Option<&str>,
    from: &StartingPosition,
    limit: Option<usize>,
    on_record: F,
) -> Result<usize, Error>
where
    F: FnMut(&str, Record) -> ControlFlow<()>,
{
    FanOutConsumer::new(client, stream, consumer)
        .follow(shard_id, from, limit, on_record)
        .await
}

/// What a shard's subscriber task tells the whole-stream follow, in the shard's order.
enum ShardMessage {
    Records {
        shard_id: String,
        records: Vec<Record>,
    },
    /// The shard was read to its end; after its last records.
    Drained {
        shard_id: String,
        children: Vec<ChildShard>,
    },
    Failed {
        shard_id: String,
        error: Error,
    },
}

/// Reads one shard into `messages` until it is drained or fails, or the follow is over
/// (the receiver is gone).
async fn run_subscriber(mut subscriber: ShardSubscriber, messages: mpsc::Sender<ShardMessage>) {
    let shard_id = subscriber.shard_id().to_owned();
    loop {
        let records = match subscriber.next_batch().await {
            Ok(records) => records,
            Err(error) => {
                // A closed receiver means the follow is over; nothing to report to.
                let _ = messages
                    .send(ShardMessage::Failed { shard_id, error })
                    .await;
                return;
            }
        };
        if !records.is_empty() {
            let batch = ShardMessage::Records {
                shard_id: shard_id.clone(),
                records,
            };
            if messages.send(batch).await.is_err() {
                return;
            }
        }
        if subscriber.is_finished() {
            let children = subscriber.child_shards().to_vec();
            let _ = messages
                .send(ShardMessage::Drained { shard_id, children })
                .await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn subscriber() -> ShardSubscriber {
        // A lazily connecting client: these tests make no RPC.
        let client = Client::connect_with("127.0.0.1:1,127.0.0.1:2", &Default::default())
            .await
            .expect("a lazy balanced channel connects without dialling");
        ShardSubscriber::new(&client, "s", "c", "shardId-0", StartingPosition::Latest)
    }

    fn event(sequences: &[u64], continuation: Option<&str>) -> SubscribeToShardEvent {
        SubscribeToShardEvent {
            records: sequences
                .iter()
                .map(|sequence| Record {
                    sequence_number: sequence.to_string(),
                    ..Default::default()
                })
                .collect(),
            continuation_sequence_number: continuation.map(str::to_owned),
            millis_behind_latest: 7,
            child_shards: Vec::new(),
        }
    }

    #[tokio::test]
    async fn continuations_move_the_next_subscription_and_the_end_finishes() {
        let mut subscriber = subscriber().await;
        assert_eq!(subscriber.position(), &StartingPosition::Latest);
        let records = subscriber.take(event(&[3, 4], Some("4")));
        assert_eq!(records.len(), 2);
        assert_eq!(
            subscriber.position(),
            &StartingPosition::AfterSequence("4".into())
        );
        assert_eq!(subscriber.millis_behind_latest(), 7);
        // A heartbeat may move the continuation past records it does not carry.
        assert!(subscriber.take(event(&[], Some("9"))).is_empty());
        assert_eq!(
            subscriber.position(),
            &StartingPosition::AfterSequence("9".into())
        );
        assert!(!subscriber.is_finished());

        let mut last = event(&[10], None);
        last.child_shards = vec![ChildShard {
            shard_id: "shardId-1".into(),
            ..Default::default()
        }];
        assert_eq!(
            subscriber.take(last).len(),
            1,
            "the last records still count"
        );
        assert!(subscriber.is_finished());
        assert_eq!(subscriber.child_shards().len(), 1);
        assert!(subscriber.next_batch().await.expect("finished").is_empty());
        assert_eq!(subscriber.subscriptions(), 0, "no RPC after the end");
    }
}
