//! The consumer-group part of the workload: workers of one application (the SDK's
//! [`ConsumerGroup`]) share the stream's shards through leases and checkpoints kept by the
//! cluster, for the whole run. Each worker talks to one node, so a fault on that node makes
//! its leases expire and the other worker take them over; the lease is short so that
//! happens within a fault. Every batch a processor is handed, every checkpoint and every
//! lease a processor starts under is recorded; at the end the workers catch up, shut down
//! (final checkpoint, leases released) and the lease table is read through every node.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use tokio::sync::watch;
use tributary_chaos::history::{Op, OpFn, OpType, ReadRecord};
use tributary_client::{
    Checkpointer, ConsumeMode, ConsumerGroup, ConsumerGroupOptions, ErrorCode, InitialPosition,
    Lease, ProcessError, Record, RecordProcessor, RetryPolicy, ShardInfo, StartingPosition,
};

use crate::workload::{Recorder, Workload, RPC_TIMEOUT};

/// The application name the workers share.
pub const APPLICATION: &str = "chaos-app";

/// Lease duration: shorter than the faults (3-8 s pauses, longer kills and isolations), so
/// a worker cut off from the cluster loses its shards to the other worker during the fault
/// rather than after it. The renew round runs every second.
const LEASE: Duration = Duration::from_secs(4);

/// Process ids of the workers are `WORKER_PROCESS + worker`.
pub const WORKER_PROCESS: u64 = 2000;

/// Process ids of the final lease-table reads are `TABLE_PROCESS + node`.
const TABLE_PROCESS: u64 = 3000;

/// Upper bound of one checkpoint call: the SDK retries transient errors within the retry
/// policy below, and this catches a call that hangs anyway.
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(20);

/// The SDK's retry bounds for reads and checkpoints: short, so a worker whose node is down
/// keeps cycling (and recording) instead of sitting in one call for the default 30 s.
fn retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        max_elapsed: Duration::from_secs(10),
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
    }
}

/// Runs worker `index` through node `index` (wrapping) until `shutdown` turns true. A run
/// of the SDK worker that ends with an error (it gives up on non-retryable ones, such as a
/// node that does not know the stream yet after a restart) is recorded and started again
/// after a backoff, with the same worker id.
pub async fn worker(
    work: Arc<Workload>,
    index: u64,
    chain_ids: Arc<AtomicU64>,
    shutdown: watch::Receiver<bool>,
) {
    let process = WORKER_PROCESS + index;
    let node = (index - 1) % work.nodes.len() + 1;
    let recorder = work.recorder.clone();
    let mut backoff = Duration::from_millis(500);
    while !*shutdown.borrow() {
        let id = recorder.id();
        recorder.record(Op::new(
            id,
            process,
            OpType::Invoke,
            OpFn::Worker,
            node,
            recorder.now_ns(),
        ));
        let started = Instant::now();
        let outcome = match work.nodes.client(node).await {
            Err(error) => Err((OpType::Fail, format!("connect: {error}"))),
            Ok(client) => {
                let factory = {
                    let recorder = recorder.clone();
                    let chain_ids = chain_ids.clone();
                    move |info: &ShardInfo| Processor {
                        recorder: recorder.clone(),
                        process,
                        node,
                        shard: info.shard_id.clone(),
                        epoch: info.epoch,
                        chain: chain_ids.fetch_add(1, Ordering::Relaxed),
                        last: None,
                        checkpointed: None,
                    }
                };
                let options = ConsumerGroupOptions {
                    worker_id: format!("chaos-worker-{index}"),
                    lease: LEASE,
                    renew_interval: Duration::from_secs(1),
                    initial_position: InitialPosition::TrimHorizon,
                    mode: ConsumeMode::Polling,
                    batch_limit: 1_000,
                    retry: retry(),
                };
                let group = ConsumerGroup::new(&client, &work.stream, APPLICATION, factory)
                    .with_options(options);
                let mut stop = shutdown.clone();
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                group
                    .run(stopped)
                    .await
                    .map_err(|error| (OpType::Info, error.to_string()))
            }
        };
        let done = recorder.now_ns();
        match outcome {
            Ok(()) => recorder.record(Op::new(id, process, OpType::Ok, OpFn::Worker, node, done)),
            Err((kind, error)) => recorder.record(Op {
                error: Some(error),
                ..Op::new(id, process, kind, OpFn::Worker, node, done)
            }),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        let mut stop = shutdown.clone();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(8));
    }
}

/// One shard's processor: records what it is handed and checkpoints after every batch.
struct Processor {
    recorder: Arc<Recorder>,
    process: u64,
    node: u64,
    shard: String,
    epoch: u64,
    /// Names this processor in the history (its batches are checked like a read chain).
    chain: u64,
    /// The last record processed.
    last: Option<String>,
    /// The last checkpoint acknowledged.
    checkpointed: Option<String>,
}

impl Processor {
    fn op(&self, id: u64, kind: OpType, f: OpFn, time: u64) -> Op {
        Op {
            shard: Some(self.shard.clone()),
            epoch: Some(self.epoch),
            ..Op::new(id, self.process, kind, f, self.node, time)
        }
    }

    /// Checkpoints the last record processed (if it is not checkpointed yet).
    async fn checkpoint(&mut self, checkpointer: &Checkpointer) {
        let Some(seq) = self.last.clone() else {
            return;
        };
        if self.checkpointed.as_ref() == Some(&seq) {
            return;
        }
        let id = self.recorder.id();
        let at = |kind, time| Op {
            seq: Some(seq.clone()),
            ..self.op(id, kind, OpFn::Checkpoint, time)
        };
        self.recorder
            .record(at(OpType::Invoke, self.recorder.now_ns()));
        let result = tokio::time::timeout(CHECKPOINT_TIMEOUT, checkpointer.checkpoint(&seq)).await;
        let done = self.recorder.now_ns();
        match result {
            Ok(Ok(())) => {
                self.recorder.record(at(OpType::Ok, done));
                self.checkpointed = Some(seq);
            }
            Ok(Err(error)) => {
                let kind = match error.code() {
                    Some(ErrorCode::LeaseLost | ErrorCode::InvalidArgument) => OpType::Fail,
                    _ => OpType::Info,
                };
                self.recorder.record(Op {
                    error: Some(error.to_string()),
                    ..at(kind, done)
                });
            }
            Err(_) => self.recorder.record(Op {
                error: Some(format!(
                    "checkpoint not answered within {CHECKPOINT_TIMEOUT:?}"
                )),
                ..at(OpType::Info, done)
            }),
        }
    }
}

impl RecordProcessor for Processor {
    async fn initialize(&mut self, shard: &ShardInfo) {
        let id = self.recorder.id();
        let now = self.recorder.now_ns();
        let (kind, seq, error) = match &shard.start {
            StartingPosition::TrimHorizon => (OpType::Ok, None, None),
            StartingPosition::AfterSequence(seq) => (OpType::Ok, Some(seq.clone()), None),
            other => (
                OpType::Info,
                None,
                Some(format!("unexpected start position {other}")),
            ),
        };
        self.recorder.record(Op {
            seq: seq.clone(),
            ..self.op(id, OpType::Invoke, OpFn::Lease, now)
        });
        self.recorder.record(Op {
            seq,
            error,
            ..self.op(id, kind, OpFn::Lease, now)
        });
    }

    async fn process_records(
        &mut self,
        records: &[Record],
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessError> {
        let id = self.recorder.id();
        self.recorder.record(Op {
            chain: Some(self.chain),
            ..self.op(id, OpType::Invoke, OpFn::Process, self.recorder.now_ns())
        });
        let batch: Vec<ReadRecord> = records
            .iter()
            .map(|r| ReadRecord {
                seq: r.sequence_number.clone(),
                value: String::from_utf8_lossy(&r.data).into_owned(),
            })
            .collect();
        if let Some(last) = batch.last() {
            self.last = Some(last.seq.clone());
        }
        self.recorder.record(Op {
            chain: Some(self.chain),
            records: batch,
            ..self.op(id, OpType::Ok, OpFn::Process, self.recorder.now_ns())
        });
        // A failed checkpoint is recorded and left to the next batch (or the shutdown):
        // returning an error would make the SDK hand the same records again.
        self.checkpoint(checkpointer).await;
        Ok(())
    }

    async fn shutdown_requested(
        &mut self,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessError> {
        self.checkpoint(checkpointer).await;
        Ok(())
    }
}

/// The last record of every shard in the final drains (the highest sequence number any
/// node returned).
fn drained_tips(ops: &[Op]) -> BTreeMap<String, u128> {
    let mut tips = BTreeMap::new();
    for op in ops
        .iter()
        .filter(|op| op.f == OpFn::Drain && op.kind == OpType::Ok)
    {
        let Some(shard) = &op.shard else { continue };
        for record in &op.records {
            if let Some(seq) = tributary_chaos::checker::parse_seq(&record.seq) {
                let tip = tips.entry(shard.clone()).or_insert(seq);
                *tip = (*tip).max(seq);
            }
        }
    }
    tips
}

/// Whether a lease's checkpoint covers `tip`.
fn covers(lease: &Lease, tip: u128) -> bool {
    lease.shard_end
        || lease
            .checkpoint_sequence_number
            .as_deref()
            .and_then(tributary_chaos::checker::parse_seq)
            .is_some_and(|seq| seq >= tip)
}

/// Waits until the application's checkpoint of every drained shard covers its last record
/// (or the shard is checkpointed at its end), asking the nodes in turn.
pub async fn wait_caught_up(work: &Workload, timeout: Duration) -> Result<()> {
    let tips = drained_tips(&work.recorder.snapshot());
    let started = Instant::now();
    let mut node = 1;
    let mut behind = String::from("not checked yet");
    while started.elapsed() < timeout {
        if let Ok(client) = work.nodes.client(node).await {
            if let Ok(Ok(leases)) =
                tokio::time::timeout(RPC_TIMEOUT, client.list_leases(&work.stream, APPLICATION))
                    .await
            {
                let lagging: Vec<String> = tips
                    .iter()
                    .filter(|(shard, tip)| {
                        !leases
                            .iter()
                            .any(|l| &&l.shard_id == shard && covers(l, **tip))
                    })
                    .map(|(shard, tip)| {
                        let at = leases
                            .iter()
                            .find(|l| &l.shard_id == shard)
                            .and_then(|l| l.checkpoint_sequence_number.clone())
                            .unwrap_or_else(|| "none".into());
                        format!("{shard} checkpointed at {at}, last record {tip}")
                    })
                    .collect();
                if lagging.is_empty() {
                    return Ok(());
                }
                behind = lagging.join("; ");
            }
        }
        node = work.nodes.next(node);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(anyhow!(
        "the consumer-group workers did not catch up within {:.0} s: {behind}",
        timeout.as_secs_f64()
    ))
}

/// One node's answer to ListLeases: when it was asked and answered, and the rows.
struct Listing {
    node: u64,
    invoked: u64,
    done: u64,
    leases: Vec<Lease>,
}

/// What must be equal between nodes: the rows without the remaining lease time.
fn comparable(leases: &[Lease]) -> Vec<Lease> {
    let mut rows: Vec<Lease> = leases
        .iter()
        .map(|l| Lease {
            expires_in_ms: 0,
            ..l.clone()
        })
        .collect();
    rows.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    rows
}

/// Reads the application's lease table through every node until all three list the same
/// table (a replica may still be applying the last releases), then records each node's
/// table: one `lease_table` operation per row, or one without a shard for an empty table.
/// After `timeout` the last answers are recorded anyway and the disagreement is an error.
pub async fn record_final_tables(work: &Workload, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let mut listings = Vec::new();
        let mut missing = Vec::new();
        for node in 1..=work.nodes.len() {
            let invoked = work.recorder.now_ns();
            let answer = match work.nodes.client(node).await {
                Ok(client) => {
                    tokio::time::timeout(RPC_TIMEOUT, client.list_leases(&work.stream, APPLICATION))
                        .await
                        .unwrap_or_else(|_| {
                            Err(tributary_client::Error::Timeout("ListLeases".into()))
                        })
                }
                Err(error) => Err(error),
            };
            match answer {
                Ok(leases) => listings.push(Listing {
                    node,
                    invoked,
                    done: work.recorder.now_ns(),
                    leases,
                }),
                Err(error) => missing.push(format!("node {node}: {error}")),
            }
        }
        let agree = missing.is_empty()
            && listings
                .windows(2)
                .all(|w| comparable(&w[0].leases) == comparable(&w[1].leases));
        if agree || started.elapsed() >= timeout {
            for listing in &listings {
                record_listing(work, listing);
            }
            if agree {
                return Ok(());
            }
            return Err(anyhow!(
                "the final lease tables still differ after {:.0} s ({} of {} nodes answered{})",
                timeout.as_secs_f64(),
                listings.len(),
                work.nodes.len(),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!("; {}", missing.join("; "))
                }
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn record_listing(work: &Workload, listing: &Listing) {
    let process = TABLE_PROCESS + listing.node;
    let record = |shard: Option<&Lease>| {
        let id = work.recorder.id();
        let base = |kind, time| Op {
            shard: shard.map(|l| l.shard_id.clone()),
            seq: shard.and_then(|l| l.checkpoint_sequence_number.clone()),
            epoch: shard.map(|l| l.epoch),
            shard_end: shard.is_some_and(|l| l.shard_end),
            ..Op::new(id, process, kind, OpFn::LeaseTable, listing.node, time)
        };
        work.recorder.record(base(OpType::Invoke, listing.invoked));
        work.recorder.record(base(OpType::Ok, listing.done));
    };
    if listing.leases.is_empty() {
        record(None);
    }
    for lease in &listing.leases {
        record(Some(lease));
    }
}
