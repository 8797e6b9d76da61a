//! Consumer groups: many workers of one application share a stream's shards, each shard
//! processed by one worker at a time, resuming from the application's checkpoints — what
//! the Kinesis Client Library does, with the lease table in the cluster's metadata group
//! instead of DynamoDB.
//!
//! Each worker runs a loop every `renew_interval`:
//! 1. **Renew** the leases it holds. The answer is the whole lease table; a held lease whose
//!    owner or epoch changed was lost (another worker took it), and its processor is stopped
//!    with [`RecordProcessor::lease_lost`].
//! 2. **Find the shards to process**: every listed shard not yet processed to its end whose
//!    parents are all processed to their end (so a child's records never come before its
//!    parents' last record).
//! 3. **Balance**: with `W` live workers (live lease owners plus itself) and `S` shards, the
//!    target is `ceil(S / W)`. Below it the worker takes free or expired leases first, then
//!    steals from the most loaded worker, never taking that worker below the target.
//!    Taking names the epoch the worker saw, so two workers never both win a lease; the
//!    loser learns it from the next table.
//!
//! A shard's processor receives records in order and checkpoints through its
//! [`Checkpointer`]; a checkpoint from a worker that lost the lease is refused (LeaseLost),
//! so it can never move the application's progress. At a shard's end the processor's
//! [`RecordProcessor::shard_ended`] runs and the group records the shard as finished, which
//! lets the children start. On shutdown every processor gets
//! [`RecordProcessor::shutdown_requested`] (a last chance to checkpoint) and the leases are
//! released, so other workers take them at once instead of after the lease expiry.
//!
//! Delivery is at least once: records processed after the last checkpoint are processed
//! again by the next owner.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tributary_proto::v1::{
    CheckpointRequest, ErrorCode, Lease, LeaseClaim, Record, ReleaseLeaseRequest,
    RenewLeasesRequest, Shard, ShardStatus, TakeLeaseRequest,
};

use crate::backoff::{Backoff, RetryPolicy};
use crate::fan_out::ShardSubscriber;
use crate::reader::{ReadMode, ShardReader};
use crate::{Client, Error, StartingPosition};

/// Default lease duration: a crashed worker's shards move to others within this time.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// An error a [`RecordProcessor`] returns.
pub type ProcessError = Box<dyn std::error::Error + Send + Sync>;

/// Where a shard nobody has checkpointed starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialPosition {
    /// The oldest retained record (a new application processes the whole stream).
    TrimHorizon,
    /// Records put from now on. Shards already closed when the application first sees them
    /// are skipped. The position is checkpointed when the lease is first taken, so a worker
    /// that takes over later continues there instead of at its own "now".
    Latest,
}

/// How workers read their shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeMode {
    /// GetRecords, long-polling at the tip (shared read throughput).
    Polling,
    /// SubscribeToShard through this registered enhanced fan-out consumer.
    FanOut {
        /// The registered consumer's name.
        consumer: String,
    },
}

/// How a [`ConsumerGroup`] worker behaves.
#[derive(Debug, Clone)]
pub struct ConsumerGroupOptions {
    /// This worker's id in the lease table: unique per running worker.
    pub worker_id: String,
    /// How long a lease runs without renewal.
    pub lease: Duration,
    /// How often leases are renewed and the balance is checked (at most a third of `lease`).
    pub renew_interval: Duration,
    /// Where shards without a checkpoint start.
    pub initial_position: InitialPosition,
    /// Polling or enhanced fan-out.
    pub mode: ConsumeMode,
    /// Records per GetRecords call (polling).
    pub batch_limit: u32,
    /// Retry bounds for reads and checkpoints before a shard's processing backs off.
    pub retry: RetryPolicy,
}

impl Default for ConsumerGroupOptions {
    fn default() -> Self {
        ConsumerGroupOptions {
            worker_id: default_worker_id(),
            lease: DEFAULT_LEASE,
            renew_interval: DEFAULT_LEASE / 3,
            initial_position: InitialPosition::TrimHorizon,
            mode: ConsumeMode::Polling,
            batch_limit: 1_000,
            retry: RetryPolicy::default(),
        }
    }
}

/// `host-pid-random`: unique per process even when two share a host and pid namespace.
fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "worker".to_owned()
    } else {
        host
    };
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The shard a processor works on.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    /// The shard.
    pub shard_id: String,
    /// The lease epoch this worker holds it at.
    pub epoch: u64,
    /// Where processing starts.
    pub start: StartingPosition,
}

/// One shard's processing logic; a new one is made each time the worker takes a lease.
///
/// Methods return futures that must be `Send` (they run on the tokio runtime); implement
/// them with `async fn`.
pub trait RecordProcessor: Send + 'static {
    /// Called once before the first records.
    fn initialize(&mut self, shard: &ShardInfo) -> impl Future<Output = ()> + Send {
        let _ = shard;
        async {}
    }

    /// Processes records in shard order. Checkpoint through `checkpointer` when the effect
    /// of the records is durable. An error makes the group offer the same records again
    /// after a backoff.
    fn process_records(
        &mut self,
        records: &[Record],
        checkpointer: &Checkpointer,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send;

    /// Another worker took the lease: stop; checkpoints would be refused.
    fn lease_lost(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The shard is closed and every record was processed. After this returns `Ok`, the
    /// group records the shard as finished (its children may then start).
    fn shard_ended(
        &mut self,
        checkpointer: &Checkpointer,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send {
        let _ = checkpointer;
        async { Ok(()) }
    }

    /// The worker is shutting down: checkpoint what is done. The lease is released next.
    fn shutdown_requested(
        &mut self,
        checkpointer: &Checkpointer,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send {
        let _ = checkpointer;
        async { Ok(()) }
    }
}

/// Records checkpoints of one shard under the lease this worker holds.
#[derive(Debug)]
pub struct Checkpointer {
    client: Client,
    stream: String,
    application: String,
    shard_id: String,
    owner: String,
    epoch: u64,
    retry: RetryPolicy,
    lost: AtomicBool,
}

impl Checkpointer {
    /// The shard.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The lease epoch the checkpoints are made under.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether a checkpoint was refused because the lease was lost.
    pub fn lease_was_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Records that every record up to and including `sequence_number` is processed.
    /// Refused with LeaseLost when another worker took the lease, and with InvalidArgument
    /// below the current checkpoint.
    pub async fn checkpoint(&self, sequence_number: &str) -> Result<(), Error> {
        self.send(Some(sequence_number.to_owned()), false).await
    }

    /// Records that the closed shard is processed to its end.
    async fn checkpoint_shard_end(&self) -> Result<(), Error> {
        self.send(None, true).await
    }

    async fn send(&self, sequence_number: Option<String>, shard_end: bool) -> Result<(), Error> {
        let request = CheckpointRequest {
            stream_name: self.stream.clone(),
            application: self.application.clone(),
            shard_id: self.shard_id.clone(),
            owner: self.owner.clone(),
            epoch: self.epoch,
            sequence_number,
            shard_end,
        };
        let mut backoff = Backoff::start(&self.retry);
        loop {
            match self.client.checkpoint(request.clone()).await {
                Ok(_) => return Ok(()),
                Err(err) if err.code() == Some(ErrorCode::LeaseLost) => {
                    self.lost.store(true, Ordering::Relaxed);
                    return Err(err);
                }
                Err(err) if err.is_retryable() => match backoff.next_delay() {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(err),
                },
                Err(err) => return Err(err),
            }
        }
    }
}

/// Why a shard's processing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Keep going.
    Run,
    /// The lease was lost.
    LeaseLost,
    /// The worker shuts down.
    Shutdown,
}

/// How a shard task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Processed to the end and recorded as finished.
    ShardEnd,
    /// Lost the lease (told by the worker or by a refused checkpoint).
    LeaseLost,
    /// Shut down after `shutdown_requested`.
    Shutdown,
}

struct HeldShard {
    epoch: u64,
    stop: watch::Sender<Stop>,
    task: JoinHandle<Ended>,
}

/// What the worker currently holds and processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStatus {
    /// Shards this worker holds, with their lease epochs.
    pub held: BTreeMap<String, u64>,
}

/// One worker of a consumer-group application. Start as many as wanted (in one process or
/// many) with the same stream and application name; they share the shards.
pub struct ConsumerGroup<F> {
    client: Client,
    stream: String,
    application: String,
    options: ConsumerGroupOptions,
    factory: Arc<F>,
    status: watch::Sender<WorkerStatus>,
}

impl<F, P> ConsumerGroup<F>
where
    F: Fn(&ShardInfo) -> P + Send + Sync + 'static,
    P: RecordProcessor,
{
    /// A worker of `application` on `stream` that makes one processor per shard lease with
    /// `factory`.
    pub fn new(client: &Client, stream: &str, application: &str, factory: F) -> Self {
        ConsumerGroup {
            client: client.clone(),
            stream: stream.to_owned(),
            application: application.to_owned(),
            options: ConsumerGroupOptions::default(),
            factory: Arc::new(factory),
            status: watch::channel(WorkerStatus::default()).0,
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: ConsumerGroupOptions) -> Self {
        self.options = options;
        self
    }

    /// This worker's id in the lease table.
    pub fn worker_id(&self) -> &str {
        &self.options.worker_id
    }

    /// Watches what the worker holds (updated every round).
    pub fn status(&self) -> watch::Receiver<WorkerStatus> {
        self.status.subscribe()
    }

    /// Runs until `shutdown` completes, then stops every processor (after
    /// `shutdown_requested`) and releases the leases. Returns an error only for a
    /// non-retryable failure of the stream itself (deleted, bad names).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let interval = self
            .options
            .renew_interval
            .min(self.options.lease / 3)
            .max(Duration::from_millis(50));
        let mut held: HashMap<String, HeldShard> = HashMap::new();
        tokio::pin!(shutdown);
        let mut result = Ok(());
        loop {
            if let Err(err) = self.round(&mut held).await {
                if !err.is_retryable() {
                    result = Err(err);
                    break;
                }
                tracing::warn!(error = %err, "consumer group round failed; retrying");
            }
            self.status.send_replace(WorkerStatus {
                held: held
                    .iter()
                    .map(|(shard, h)| (shard.clone(), h.epoch))
                    .collect(),
            });
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        self.stop_all(held, Stop::Shutdown).await;
        self.status.send_replace(WorkerStatus::default());
        result
    }

    /// One renew-and-balance round.
    async fn round(&self, held: &mut HashMap<String, HeldShard>) -> Result<(), Error> {
        let me = &self.options.worker_id;
        // Shards whose task ended: finished ones are released, lost ones forgotten.
        let done: Vec<String> = held
            .iter()
            .filter(|(_, h)| h.task.is_finished())
            .map(|(shard, _)| shard.clone())
            .collect();
        for shard in done {
            if let Some(h) = held.remove(&shard) {
                if let Ok(Ended::ShardEnd) = h.task.await {
                    self.release(&shard, h.epoch).await;
                }
            }
        }
        let table = self
            .client
            .renew_leases(RenewLeasesRequest {
                stream_name: self.stream.clone(),
                application: self.application.clone(),
                owner: me.clone(),
                leases: held
                    .iter()
                    .map(|(shard, h)| LeaseClaim {
                        shard_id: shard.clone(),
                        epoch: h.epoch,
                    })
                    .collect(),
                lease_ms: duration_ms(self.options.lease),
            })
            .await?;
        let table: HashMap<String, Lease> = table
            .into_iter()
            .map(|lease| (lease.shard_id.clone(), lease))
            .collect();
        // Lost leases: another worker took them.
        let lost: Vec<String> = held
            .iter()
            .filter(|(shard, h)| {
                table
                    .get(*shard)
                    .is_none_or(|l| l.owner.as_deref() != Some(me.as_str()) || l.epoch != h.epoch)
            })
            .map(|(shard, _)| shard.clone())
            .collect();
        for shard in lost {
            if let Some(h) = held.remove(&shard) {
                let _ = h.stop.send(Stop::LeaseLost);
                let _ = h.task.await;
            }
        }

        let shards = self.client.list_shards(&self.stream).await?;
        let workable = workable_shards(&shards, &table, self.options.initial_position);
        let mut load: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for shard in &workable {
            if let Some(lease) = table.get(&shard.shard_id) {
                if let Some(owner) = lease.owner.as_deref() {
                    if lease.expires_in_ms > 0 && owner != me {
                        load.entry(owner.to_owned())
                            .or_default()
                            .push(&shard.shard_id);
                    }
                }
            }
        }
        let workers = load.len() + 1;
        let target = workable.len().div_ceil(workers);
        let mut wanted = target.saturating_sub(held.len());
        // Free or expired leases first.
        for shard in &workable {
            if wanted == 0 {
                break;
            }
            if held.contains_key(&shard.shard_id) {
                continue;
            }
            let lease = table.get(&shard.shard_id);
            let free = lease.is_none_or(|l| l.owner.is_none() || l.expires_in_ms == 0);
            if free && self.take(held, shard, lease, &table, false).await {
                wanted -= 1;
            }
        }
        // Then steal from the most loaded workers, never below the target.
        while wanted > 0 {
            let Some((victim, shards_held)) = load
                .iter_mut()
                .filter(|(_, s)| s.len() > target)
                .max_by_key(|(_, s)| s.len())
            else {
                break;
            };
            let Some(shard_id) = shards_held.pop() else {
                break;
            };
            tracing::debug!(victim = %victim, shard = shard_id, "stealing a lease to rebalance");
            let Some(shard) = workable.iter().find(|s| s.shard_id == shard_id) else {
                break;
            };
            if self
                .take(held, shard, table.get(shard_id), &table, true)
                .await
            {
                wanted -= 1;
            }
        }
        Ok(())
    }

    /// Tries to take one lease (compare-and-set on the epoch seen) and starts its processor.
    async fn take(
        &self,
        held: &mut HashMap<String, HeldShard>,
        shard: &Shard,
        seen: Option<&Lease>,
        table: &HashMap<String, Lease>,
        steal: bool,
    ) -> bool {
        let taken = self
            .client
            .take_lease(TakeLeaseRequest {
                stream_name: self.stream.clone(),
                application: self.application.clone(),
                shard_id: shard.shard_id.clone(),
                owner: self.options.worker_id.clone(),
                expected_epoch: seen.map_or(0, |l| l.epoch),
                steal,
                lease_ms: duration_ms(self.options.lease),
            })
            .await;
        let lease = match taken {
            Ok(lease) => lease,
            Err(err) => {
                tracing::debug!(shard = %shard.shard_id, error = %err, "lease not taken");
                return false;
            }
        };
        let checkpointer = Checkpointer {
            client: self.client.clone(),
            stream: self.stream.clone(),
            application: self.application.clone(),
            shard_id: shard.shard_id.clone(),
            owner: self.options.worker_id.clone(),
            epoch: lease.epoch,
            retry: self.options.retry.clone(),
            lost: AtomicBool::new(false),
        };
        let start = match self
            .start_position(shard, &lease, table, &checkpointer)
            .await
        {
            Ok(start) => start,
            Err(err) => {
                tracing::warn!(shard = %shard.shard_id, error = %err, "cannot fix the start position; releasing the lease");
                self.release(&shard.shard_id, lease.epoch).await;
                return false;
            }
        };
        let info = ShardInfo {
            shard_id: shard.shard_id.clone(),
            epoch: lease.epoch,
            start,
        };
        let processor = (self.factory)(&info);
        let (stop, stop_rx) = watch::channel(Stop::Run);
        let task = tokio::spawn(process_shard(
            self.client.clone(),
            self.stream.clone(),
            shard.clone(),
            self.options.clone(),
            info,
            processor,
            Arc::new(checkpointer),
            stop_rx,
        ));
        held.insert(
            shard.shard_id.clone(),
            HeldShard {
                epoch: lease.epoch,
                stop,
                task,
            },
        );
        true
    }

    /// The checkpoint if there is one; a child of processed parents from its start; else
    /// the initial position (Latest is pinned to the shard's newest record as a checkpoint).
    async fn start_position(
        &self,
        shard: &Shard,
        lease: &Lease,
        table: &HashMap<String, Lease>,
        checkpointer: &Checkpointer,
    ) -> Result<StartingPosition, Error> {
        if let Some(sequence) = &lease.checkpoint_sequence_number {
            return Ok(StartingPosition::AfterSequence(sequence.clone()));
        }
        let after_parent = parents(shard).any(|p| table.get(p).is_some_and(|l| l.shard_end));
        if after_parent || self.options.initial_position == InitialPosition::TrimHorizon {
            return Ok(StartingPosition::TrimHorizon);
        }
        match &shard.last_sequence_number {
            Some(newest) => {
                checkpointer.checkpoint(newest).await?;
                Ok(StartingPosition::AfterSequence(newest.clone()))
            }
            None => Ok(StartingPosition::TrimHorizon),
        }
    }

    async fn release(&self, shard: &str, epoch: u64) {
        let request = ReleaseLeaseRequest {
            stream_name: self.stream.clone(),
            application: self.application.clone(),
            shard_id: shard.to_owned(),
            owner: self.options.worker_id.clone(),
            epoch,
        };
        if let Err(err) = self.client.release_lease(request).await {
            tracing::debug!(shard, error = %err, "lease not released (it expires on its own)");
        }
    }

    async fn stop_all(&self, held: HashMap<String, HeldShard>, why: Stop) {
        for (_, h) in held.iter() {
            let _ = h.stop.send(why);
        }
        for (shard, h) in held {
            let ended = h.task.await;
            if why == Stop::Shutdown && !matches!(ended, Ok(Ended::LeaseLost)) {
                self.release(&shard, h.epoch).await;
            }
        }
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn parents(shard: &Shard) -> impl Iterator<Item = &str> {
    shard
        .parent_shard_id
        .iter()
        .chain(shard.adjacent_parent_shard_id.iter())
        .map(String::as_str)
}

/// Shards to process now: not finished, and every listed parent finished. Under
/// [`InitialPosition::Latest`], closed shards the application never touched are skipped and
/// count as finished for their children.
fn workable_shards<'a>(
    shards: &'a [Shard],
    table: &HashMap<String, Lease>,
    initial: InitialPosition,
) -> Vec<&'a Shard> {
    let skipped = |shard: &Shard| {
        initial == InitialPosition::Latest
            && shard.status() == ShardStatus::Closed
            && !table.contains_key(&shard.shard_id)
    };
    let finished =
        |shard: &Shard| table.get(&shard.shard_id).is_some_and(|l| l.shard_end) || skipped(shard);
    shards
        .iter()
        .filter(|shard| !finished(shard))
        .filter(|shard| {
            parents(shard).all(
                |parent| match shards.iter().find(|s| s.shard_id == parent) {
                    Some(parent) => finished(parent),
                    None => true, // expired and dropped: nothing left to read
                },
            )
        })
        .collect()
}

/// Where a shard's records come from.
enum Source {
    Polling(Box<ShardReader>),
    FanOut(Box<ShardSubscriber>),
}

impl Source {
    async fn next_batch(&mut self, limit: u32) -> Result<Vec<Record>, Error> {
        match self {
            Source::Polling(reader) => reader.next_batch(limit).await,
            Source::FanOut(subscriber) => subscriber.next_batch().await,
        }
    }

    fn is_finished(&self) -> bool {
        match self {
            Source::Polling(reader) => reader.is_finished(),
            Source::FanOut(subscriber) => subscriber.is_finished(),
        }
    }
}

/// Long-poll wait at the tip: short enough that a stop is noticed promptly.
const LONG_POLL: Duration = Duration::from_secs(1);

/// Processes one leased shard until its end, the lease is lost, or shutdown.
#[allow(clippy::too_many_arguments)]
async fn process_shard<P: RecordProcessor>(
    client: Client,
    stream: String,
    shard: Shard,
    options: ConsumerGroupOptions,
    info: ShardInfo,
    mut processor: P,
    checkpointer: Arc<Checkpointer>,
    mut stop: watch::Receiver<Stop>,
) -> Ended {
    let mut source = match &options.mode {
        ConsumeMode::Polling => {
            let mut reader = ShardReader::new(
                &client,
                &stream,
                &shard,
                info.start.clone(),
                ReadMode::Follow,
            )
            .with_retry(options.retry.clone());
            reader.set_long_poll(Some(LONG_POLL));
            Source::Polling(Box::new(reader))
        }
        ConsumeMode::FanOut { consumer } => Source::FanOut(Box::new(ShardSubscriber::new(
            &client,
            &stream,
            consumer,
            &shard.shard_id,
            info.start.clone(),
        ))),
    };
    processor.initialize(&info).await;
    loop {
        let why = *stop.borrow();
        match why {
            Stop::Run => {}
            Stop::LeaseLost => {
                processor.lease_lost().await;
                return Ended::LeaseLost;
            }
            Stop::Shutdown => {
                if let Err(err) = processor.shutdown_requested(&checkpointer).await {
                    tracing::warn!(shard = %info.shard_id, error = %err, "shutdown_requested failed");
                }
                return Ended::Shutdown;
            }
        }
        let batch = tokio::select! {
            _ = stop.changed() => continue,
            batch = source.next_batch(options.batch_limit) => batch,
        };
        let records = match batch {
            Ok(records) => records,
            Err(err) => {
                tracing::warn!(shard = %info.shard_id, error = %err, "read failed; retrying");
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        if !records.is_empty() {
            let mut backoff = Backoff::start(&options.retry);
            loop {
                let outcome = processor.process_records(&records, &checkpointer).await;
                if checkpointer.lease_was_lost() {
                    processor.lease_lost().await;
                    return Ended::LeaseLost;
                }
                match outcome {
                    Ok(()) => break,
                    Err(err) => {
                        tracing::warn!(shard = %info.shard_id, error = %err, "processor failed; offering the records again");
                        let delay = backoff.next_delay().unwrap_or(Duration::from_secs(5));
                        tokio::time::sleep(delay).await;
                        if *stop.borrow() != Stop::Run {
                            break;
                        }
                    }
                }
            }
        }
        if source.is_finished() {
            if let Err(err) = processor.shard_ended(&checkpointer).await {
                tracing::warn!(shard = %info.shard_id, error = %err, "shard_ended failed; the shard stays unfinished");
                return Ended::Shutdown;
            }
            return match checkpointer.checkpoint_shard_end().await {
                Ok(()) => Ended::ShardEnd,
                Err(_) if checkpointer.lease_was_lost() => {
                    processor.lease_lost().await;
                    Ended::LeaseLost
                }
                Err(err) => {
                    tracing::warn!(shard = %info.shard_id, error = %err, "cannot record the shard's end");
                    Ended::Shutdown
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, closed: bool, parent: Option<&str>) -> Shard {
        Shard {
            shard_id: id.into(),
            status: if closed {
                ShardStatus::Closed
            } else {
                ShardStatus::Open
            } as i32,
            parent_shard_id: parent.map(Into::into),
            ..Default::default()
        }
    }

    fn finished(id: &str) -> (String, Lease) {
        (
            id.into(),
            Lease {
                shard_id: id.into(),
                shard_end: true,
                ..Default::default()
            },
        )
    }

    fn ids(shards: Vec<&Shard>) -> Vec<&str> {
        shards.iter().map(|s| s.shard_id.as_str()).collect()
    }

    #[test]
    fn children_wait_for_their_parents_end() {
        let shards = vec![
            shard("p", true, None),
            shard("c1", false, Some("p")),
            shard("c2", false, Some("p")),
            shard("other", false, None),
        ];
        let none = HashMap::new();
        assert_eq!(
            ids(workable_shards(
                &shards,
                &none,
                InitialPosition::TrimHorizon
            )),
            vec!["p", "other"]
        );
        let done: HashMap<_, _> = [finished("p")].into_iter().collect();
        assert_eq!(
            ids(workable_shards(
                &shards,
                &done,
                InitialPosition::TrimHorizon
            )),
            vec!["c1", "c2", "other"]
        );
        // Latest: a closed shard the application never touched is skipped.
        assert_eq!(
            ids(workable_shards(&shards, &none, InitialPosition::Latest)),
            vec!["c1", "c2", "other"]
        );
        // A parent dropped by retention does not hold its child back.
        let orphan = vec![shard("c", false, Some("gone"))];
        assert_eq!(
            ids(workable_shards(
                &orphan,
                &none,
                InitialPosition::TrimHorizon
            )),
            vec!["c"]
        );
    }
}
