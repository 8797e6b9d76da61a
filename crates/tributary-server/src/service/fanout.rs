//! Enhanced fan-out: SubscribeToShard pushes a registered consumer's records as they
//! commit.
//!
//! One task per subscription reads the shard from its position on this replica and sends
//! events into a small bounded channel; when the client reads slowly the channel fills and
//! the task waits, so the node buffers at most a few events per subscription. With nothing
//! to send, the task sleeps on the shard's apply watch (the commit path wakes it, no timer
//! polling) and sends an empty event every few seconds so the client sees it is alive and
//! gets a fresh continuation. A subscription ends after `subscription_max_ms`, when a newer
//! subscription of the same consumer to the same shard takes over on this node
//! (`ResourceInUse`), when the consumer is deregistered (`ResourceNotFound`), or at the end
//! of a closed shard (an event with no continuation and the child shards).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::Status;
use tributary_proto::v1 as pb;

use super::data::DataApi;
use crate::error::ApiError;
use crate::metadata::StreamMeta;
use crate::node::ShardGroup;
use crate::reader;
use crate::sequence::SequenceNumber;

/// Events buffered per subscription before the reading task waits for the client.
const EVENT_BUFFER: usize = 2;
/// Largest event: the enhanced fan-out throughput of a shard per consumer per second.
const EVENT_MAX_BYTES: usize = 2 * 1024 * 1024;
/// Most records per event.
const EVENT_MAX_RECORDS: usize = 10_000;
/// An idle subscription sends an empty event this often.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// (stream incarnation, consumer id, shard index): one live subscription each per node.
/// (stream id, consumer id, shard index).
pub type SubscriptionKey = (u64, u64, u32);

/// A live subscription: its id here, when it started (ms), and its takeover switch.
struct Live {
    id: u64,
    started_at_ms: i64,
    taken_over: watch::Sender<bool>,
}

/// The live subscriptions of this node, so a newer one can take over an older one — here
/// directly, on the other nodes through `EndOlderSubscription`.
#[derive(Default)]
pub struct Subscriptions {
    live: Mutex<HashMap<SubscriptionKey, Live>>,
    next: std::sync::atomic::AtomicU64,
}

impl Subscriptions {
    /// Registers a subscription, ending any older one for the same key; returns its id and
    /// a receiver that turns true when a newer one takes over.
    fn take_over(&self, key: SubscriptionKey, started_at_ms: i64) -> (u64, watch::Receiver<bool>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(false);
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let newer = Live {
            id,
            started_at_ms,
            taken_over: tx,
        };
        if let Some(older) = live.insert(key, newer) {
            let _ = older.taken_over.send(true);
        }
        (id, rx)
    }

    /// A subscription with `key` started on node `origin` at `started_at_ms`: ends the one
    /// here if it started earlier (ties: the lower node id is older). Returns how many ended.
    pub fn end_older(
        &self,
        key: SubscriptionKey,
        started_at_ms: i64,
        origin: u64,
        this_node: u64,
    ) -> u32 {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let older = live
            .get(&key)
            .is_some_and(|here| (here.started_at_ms, this_node) < (started_at_ms, origin));
        if !older {
            return 0;
        }
        match live.remove(&key) {
            Some(here) => u32::from(here.taken_over.send(true).is_ok()),
            None => 0,
        }
    }

    fn finish(&self, key: SubscriptionKey, id: u64) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.get(&key).is_some_and(|current| current.id == id) {
            live.remove(&key);
        }
    }
}

/// Tells every other node that a subscription with `key` started here (best effort, in the
/// background: a node that cannot be reached keeps its older subscription until that one
/// ends on its own, at most `subscription_max_ms` later).
fn end_older_on_peers(node: &Arc<crate::node::Node>, key: SubscriptionKey, started_at_ms: i64) {
    let (stream_id, consumer_id, shard_index) = key;
    let request = pb::EndOlderSubscriptionRequest {
        stream_id,
        consumer_id,
        shard_index,
        started_at_ms,
        node_id: node.config().node_id,
    };
    for mut peer in node.other_peer_clients() {
        tokio::spawn(async move {
            // A few bounded attempts: a busy peer may be slow to answer once.
            for attempt in 1..=3 {
                let mut call = tonic::Request::new(request);
                call.set_timeout(Duration::from_secs(5));
                match peer.end_older_subscription(call).await {
                    Ok(_) => return,
                    Err(status) if attempt == 3 => {
                        tracing::warn!(%status, "could not tell a peer about a newer subscription; its older one runs until its lifetime ends");
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
    }
}

/// Everything a subscription task needs.
pub struct Subscription {
    pub(crate) api: DataApi,
    pub(crate) stream: StreamMeta,
    pub(crate) consumer: String,
    pub(crate) consumer_id: u64,
    pub(crate) group: Arc<ShardGroup>,
    pub(crate) position: (u64, u16),
}

/// The number just before `position`: resuming AFTER it starts exactly at `position`.
fn continuation(shard_index: u32, (log_index, slot): (u64, u16)) -> String {
    SequenceNumber {
        shard_index,
        log_index,
        slot,
    }
    .to_u128()
    .saturating_sub(1)
    .to_string()
}

impl Subscription {
    /// Starts the task; returns the receiving end of its events.
    pub fn start(self) -> mpsc::Receiver<Result<pb::SubscribeToShardEvent, Status>> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        tokio::spawn(async move {
            let key = (
                self.stream.stream_id,
                self.consumer_id,
                self.group.shard_index,
            );
            let node = self.api.node().clone();
            let started_at_ms = node.now_ms();
            let (id, taken_over) = node.subscriptions().take_over(key, started_at_ms);
            end_older_on_peers(&node, key, started_at_ms);
            let metrics = &crate::metrics::METRICS;
            metrics.open_subscriptions.fetch_add(1, Ordering::Relaxed);
            if let Err(err) = self.run(&tx, taken_over).await {
                let _ = tx.send(Err(err.into())).await;
            }
            metrics.open_subscriptions.fetch_sub(1, Ordering::Relaxed);
            metrics.forget_consumer(
                &self.stream.name,
                &self.consumer,
                &crate::metadata::shard_id(self.group.shard_index),
            );
            node.subscriptions().finish(key, id);
        });
        rx
    }

    async fn run(
        &self,
        tx: &mpsc::Sender<Result<pb::SubscribeToShardEvent, Status>>,
        mut taken_over: watch::Receiver<bool>,
    ) -> Result<(), ApiError> {
        let node = self.api.node();
        let shard_index = self.group.shard_index;
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(node.config().subscription_max_ms);
        let mut position = self.position;
        let mut tip = self.group.tip.clone();
        let mut metadata = node.metadata_version();
        let mut sent_any = false;
        loop {
            if *taken_over.borrow() {
                return Err(ApiError::in_use(format!(
                    "a newer subscription of consumer {} to {} took over",
                    self.consumer,
                    crate::metadata::shard_id(shard_index)
                )));
            }
            self.check_registered()?;
            let stream = node
                .metadata()
                .stream_by_id(self.stream.stream_id)
                .cloned()
                .ok_or_else(|| {
                    ApiError::not_found(format!("stream {} was deleted", self.stream.name))
                })?;
            let horizon = self.api.horizon_ms(&stream);
            let page = reader::read(
                &self.group,
                position,
                EVENT_MAX_RECORDS,
                EVENT_MAX_BYTES,
                horizon,
            )?;
            let children = page
                .at_shard_end
                .then(|| self.api.closed_children(stream.stream_id, shard_index))
                .flatten();
            let has_records = !page.records.is_empty();
            self.group.traffic.read(
                page.records.len() as u64,
                page.records.iter().map(|r| r.data.len() as u64).sum(),
            );
            crate::metrics::METRICS.consumer_lag(
                &self.stream.name,
                &self.consumer,
                &crate::metadata::shard_id(shard_index),
                page.millis_behind_latest,
            );
            let event = pb::SubscribeToShardEvent {
                records: page
                    .records
                    .into_iter()
                    .map(reader::ReadRecord::into_proto)
                    .collect(),
                continuation_sequence_number: match children {
                    Some(_) => None,
                    None => Some(continuation(shard_index, page.next)),
                },
                millis_behind_latest: page.millis_behind_latest,
                child_shards: children.clone().unwrap_or_default(),
            };
            position = page.next;
            // The first event goes out at once, records or not: the client then knows the
            // subscription is established (Kinesis sends an initial response).
            if has_records || children.is_some() || !sent_any {
                sent_any = true;
                // Back-pressure: wait here while the client's buffer is full.
                tokio::select! {
                    sent = tx.send(Ok(event)) => if sent.is_err() { return Ok(()) },
                    _ = taken_over.changed() => continue,
                    _ = tokio::time::sleep_until(deadline) => return Ok(()),
                }
                if children.is_some() {
                    return Ok(());
                }
                if has_records {
                    continue;
                }
            }
            // Caught up: sleep until an entry past the position applies, the metadata
            // changes (a seal's CompleteReshardStep, a deregistration), a takeover, the
            // heartbeat or the end of the subscription.
            let heartbeat = tokio::time::sleep(HEARTBEAT);
            let stopped =
                || ApiError::unavailable("the shard stopped on this node; subscribe again");
            tokio::select! {
                applied = async { tip.wait_for(|t| t.applied_index >= position.0).await.map(|_| ()) } => {
                    applied.map_err(|_| stopped())?;
                }
                changed = metadata.changed() => changed.map_err(|_| stopped())?,
                _ = taken_over.changed() => {}
                _ = heartbeat => {
                    let idle = pb::SubscribeToShardEvent {
                        records: Vec::new(),
                        continuation_sequence_number: Some(continuation(shard_index, position)),
                        millis_behind_latest: 0,
                        child_shards: Vec::new(),
                    };
                    tokio::select! {
                        sent = tx.send(Ok(idle)) => if sent.is_err() { return Ok(()) },
                        _ = tokio::time::sleep_until(deadline) => return Ok(()),
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    fn check_registered(&self) -> Result<(), ApiError> {
        let state = self.api.node().metadata();
        let registered = state
            .stream_by_id(self.stream.stream_id)
            .and_then(|s| s.consumers.get(&self.consumer))
            .is_some_and(|c| c.consumer_id == self.consumer_id);
        if registered {
            Ok(())
        } else {
            Err(ApiError::not_found(format!(
                "consumer {} is no longer registered on stream {}",
                self.consumer, self.stream.name
            )))
        }
    }
}
