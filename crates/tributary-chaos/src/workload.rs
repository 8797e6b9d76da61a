//! The clients: producers writing unique `producer:counter` values with PutRecords, readers
//! following iterator chains over every shard, and the final drain of every shard through
//! every node. Each call is recorded as invoke + completion in the [`Recorder`].

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use rand::{Rng as _, SeedableRng as _};
use tributary_chaos::history::{Op, OpFn, OpType, ReadRecord};
use tributary_client::{
    Client, ClientOptions, Error, ErrorCode, PutRecordsEntry, ReadMode, ShardReader, ShardStatus,
    StartingPosition,
};

/// Deadline of every RPC the workload makes; a paused node turns into an `info` after it.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a value whose put had an unknown outcome is sent again.
const MAX_ATTEMPTS: u32 = 3;

/// The history as it is being recorded: in memory for the checker and streamed to a JSON
/// lines file so a crashed run still leaves one.
pub struct Recorder {
    start: Instant,
    next_id: AtomicU64,
    ops: Mutex<Vec<Op>>,
    file: Mutex<BufWriter<File>>,
}

impl Recorder {
    /// Records into `path`.
    pub fn create(path: &Path) -> Result<Recorder> {
        Ok(Recorder {
            start: Instant::now(),
            next_id: AtomicU64::new(0),
            ops: Mutex::new(Vec::new()),
            file: Mutex::new(BufWriter::new(File::create(path)?)),
        })
    }

    /// Monotonic nanoseconds since the run started.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// A fresh operation id.
    pub fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Appends `op`.
    pub fn record(&self, op: Op) {
        if let Ok(mut file) = self.file.lock() {
            if serde_json::to_writer(&mut *file, &op).is_ok() {
                let _ = file.write_all(b"\n");
            }
        }
        if let Ok(mut ops) = self.ops.lock() {
            ops.push(op);
        }
    }

    /// Everything recorded so far (flushes the file).
    pub fn snapshot(&self) -> Vec<Op> {
        if let Ok(mut file) = self.file.lock() {
            let _ = file.flush();
        }
        self.ops.lock().map(|ops| ops.clone()).unwrap_or_default()
    }
}

/// Lazily connected SDK clients, one per node endpoint (a node that is down at connect
/// time is dialled again on next use).
#[derive(Clone)]
pub struct Nodes {
    endpoints: Vec<String>,
    clients: Arc<Mutex<BTreeMap<u64, Client>>>,
}

impl Nodes {
    /// Clients for node ids 1..=endpoints.len().
    pub fn new(endpoints: Vec<String>) -> Nodes {
        Nodes {
            endpoints,
            clients: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> u64 {
        self.endpoints.len() as u64
    }

    /// The client for node `id`, connecting if needed.
    pub async fn client(&self, id: u64) -> Result<Client, Error> {
        if let Some(client) = self.clients.lock().ok().and_then(|c| c.get(&id).cloned()) {
            return Ok(client);
        }
        let options = ClientOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Some(RPC_TIMEOUT),
        };
        let endpoint = &self.endpoints[(id - 1) as usize];
        let client = tokio::time::timeout(RPC_TIMEOUT, Client::connect_with(endpoint, &options))
            .await
            .map_err(|_| Error::Timeout(format!("connecting to {endpoint}")))??;
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(id, client.clone());
        }
        Ok(client)
    }

    /// The next node after `id`, wrapping around.
    pub fn next(&self, id: u64) -> u64 {
        id % self.len() + 1
    }
}

/// Whether a failed put (whole call or one entry) definitely did not apply. Everything
/// else — no leader, a timeout, a lost connection, an internal failure after the write may
/// have been proposed — is an unknown outcome.
fn definitely_not_applied(code: Option<ErrorCode>) -> bool {
    matches!(
        code,
        Some(
            ErrorCode::InvalidArgument
                | ErrorCode::ResourceNotFound
                | ErrorCode::LimitExceeded
                | ErrorCode::ProvisionedThroughputExceeded
                | ErrorCode::ShardClosed
                | ErrorCode::StorageFull
        )
    )
}

/// Shared state of the workload.
pub struct Workload {
    /// The stream written and read.
    pub stream: String,
    /// Clients per node.
    pub nodes: Nodes,
    /// The history.
    pub recorder: Arc<Recorder>,
    /// Set to end producers and readers.
    pub stop: Arc<AtomicBool>,
}

/// One value waiting to be (re)sent.
struct Pending {
    value: String,
    key: String,
    attempt: u32,
}

/// Writes until `stop`: batches of 1-8 new values (plus values whose previous send had an
/// unknown outcome) through its preferred node, moving to the next node on a failed call.
pub async fn producer(work: Arc<Workload>, process: u64, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (process << 32));
    let mut node = (process - 1) % work.nodes.len() + 1;
    let mut counter = 0u64;
    let mut retries: VecDeque<Pending> = VecDeque::new();
    while !work.stop.load(Ordering::Relaxed) {
        let mut batch: Vec<Pending> = Vec::new();
        while batch.len() < 4 {
            match retries.pop_front() {
                Some(p) => batch.push(p),
                None => break,
            }
        }
        for _ in 0..rng.random_range(1..=8) {
            batch.push(Pending {
                value: format!("{process}:{counter}"),
                key: format!("k{}", rng.random_range(0..10_000)),
                attempt: 1,
            });
            counter += 1;
        }
        let ids: Vec<u64> = batch.iter().map(|_| work.recorder.id()).collect();
        let invoked = work.recorder.now_ns();
        for (p, id) in batch.iter().zip(&ids) {
            work.recorder.record(Op {
                value: Some(p.value.clone()),
                attempt: Some(p.attempt),
                ..Op::new(*id, process, OpType::Invoke, OpFn::Put, node, invoked)
            });
        }
        let entries: Vec<PutRecordsEntry> = batch
            .iter()
            .map(|p| PutRecordsEntry {
                partition_key: p.key.clone(),
                data: p.value.clone().into_bytes().into(),
                explicit_hash_key: None,
            })
            .collect();
        let result = match work.nodes.client(node).await {
            Ok(client) => {
                match tokio::time::timeout(
                    RPC_TIMEOUT + Duration::from_secs(1),
                    client.put_records(&work.stream, entries),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(Error::Timeout("PutRecords".into())),
                }
            }
            Err(error) => Err(error),
        };
        let done = work.recorder.now_ns();
        let mut call_failed = false;
        match result {
            Ok(response) => {
                for ((p, id), entry) in batch.into_iter().zip(&ids).zip(response.records) {
                    let code = ErrorCode::try_from(entry.error_code).ok();
                    let base = |kind| Op {
                        value: Some(p.value.clone()),
                        attempt: Some(p.attempt),
                        ..Op::new(*id, process, kind, OpFn::Put, node, done)
                    };
                    if code == Some(ErrorCode::Unspecified) {
                        work.recorder.record(Op {
                            shard: Some(entry.shard_id),
                            seq: Some(entry.sequence_number),
                            ..base(OpType::Ok)
                        });
                        continue;
                    }
                    let error = Some(format!(
                        "{}: {}",
                        code.map_or("?", tributary_client::error_code_name),
                        entry.error_message
                    ));
                    if definitely_not_applied(code) {
                        work.recorder.record(Op {
                            error,
                            ..base(OpType::Fail)
                        });
                    } else {
                        work.recorder.record(Op {
                            error,
                            ..base(OpType::Info)
                        });
                        if p.attempt < MAX_ATTEMPTS {
                            retries.push_back(Pending {
                                attempt: p.attempt + 1,
                                ..p
                            });
                        }
                    }
                }
            }
            Err(error) => {
                call_failed = true;
                let kind = if definitely_not_applied(error.code()) {
                    OpType::Fail
                } else {
                    OpType::Info
                };
                for (p, id) in batch.into_iter().zip(&ids) {
                    work.recorder.record(Op {
                        value: Some(p.value.clone()),
                        attempt: Some(p.attempt),
                        error: Some(error.to_string()),
                        ..Op::new(*id, process, kind, OpFn::Put, node, done)
                    });
                    if kind == OpType::Info && p.attempt < MAX_ATTEMPTS {
                        retries.push_back(Pending {
                            attempt: p.attempt + 1,
                            ..p
                        });
                    }
                }
            }
        }
        if call_failed {
            node = work.nodes.next(node);
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
        }
    }
}

/// One iterator chain of a reader.
struct Chain {
    id: u64,
    shard: String,
    iterator: Option<String>,
    last: Option<String>,
    finished: bool,
}

/// Follows every shard of the stream (children of reshards included) with iterator chains
/// until `stop`. A failed call moves to the next node; the chain resumes after its last
/// record (same chain id, so a skip across the resume is still caught).
pub async fn reader(work: Arc<Workload>, process: u64, chain_ids: Arc<AtomicU64>) {
    let mut node = (process - 1) % work.nodes.len() + 1;
    let mut chains: Vec<Chain> = Vec::new();
    let mut listed_at: Option<Instant> = None;
    while !work.stop.load(Ordering::Relaxed) {
        if listed_at.is_none_or(|t| t.elapsed() > Duration::from_secs(3)) {
            if let Ok(client) = work.nodes.client(node).await {
                if let Ok(Ok(shards)) =
                    tokio::time::timeout(RPC_TIMEOUT, client.list_shards(&work.stream)).await
                {
                    for shard in shards {
                        if !chains.iter().any(|c| c.shard == shard.shard_id) {
                            chains.push(Chain {
                                id: chain_ids.fetch_add(1, Ordering::Relaxed),
                                shard: shard.shard_id,
                                iterator: None,
                                last: None,
                                finished: false,
                            });
                        }
                    }
                    listed_at = Some(Instant::now());
                }
            }
        }
        let mut read_any = false;
        for chain in chains.iter_mut().filter(|c| !c.finished) {
            if work.stop.load(Ordering::Relaxed) {
                break;
            }
            match read_step(&work, process, node, chain).await {
                Ok(n) => read_any |= n > 0,
                Err(()) => {
                    node = work.nodes.next(node);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if !read_any {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One GetRecords call of a chain (opening its iterator first when needed). Returns the
/// number of records read, or `Err` when the node should be changed.
async fn read_step(
    work: &Workload,
    process: u64,
    node: u64,
    chain: &mut Chain,
) -> Result<usize, ()> {
    let client = work.nodes.client(node).await.map_err(|_| ())?;
    let iterator = match chain.iterator.clone() {
        Some(iterator) => iterator,
        None => {
            let from = match &chain.last {
                Some(seq) => StartingPosition::AfterSequence(seq.clone()),
                None => StartingPosition::TrimHorizon,
            };
            let opened = tokio::time::timeout(
                RPC_TIMEOUT,
                client.get_shard_iterator(&work.stream, &chain.shard, &from),
            )
            .await;
            match opened {
                Ok(Ok(iterator)) => iterator,
                _ => return Err(()),
            }
        }
    };
    let id = work.recorder.id();
    let base = |kind, time| Op {
        shard: Some(chain.shard.clone()),
        chain: Some(chain.id),
        ..Op::new(id, process, kind, OpFn::Read, node, time)
    };
    work.recorder
        .record(base(OpType::Invoke, work.recorder.now_ns()));
    let result = tokio::time::timeout(
        RPC_TIMEOUT + Duration::from_secs(1),
        client.get_records(&iterator, 1000),
    )
    .await
    .unwrap_or_else(|_| Err(Error::Timeout("GetRecords".into())));
    let done = work.recorder.now_ns();
    match result {
        Ok(response) => {
            let records: Vec<ReadRecord> = response
                .records
                .iter()
                .map(|r| ReadRecord {
                    seq: r.sequence_number.clone(),
                    value: String::from_utf8_lossy(&r.data).into_owned(),
                })
                .collect();
            let n = records.len();
            if let Some(last) = records.last() {
                chain.last = Some(last.seq.clone());
            }
            work.recorder.record(Op {
                records,
                ..base(OpType::Ok, done)
            });
            match response.next_shard_iterator {
                Some(next) => chain.iterator = Some(next),
                None => chain.finished = true,
            }
            Ok(n)
        }
        Err(error) => {
            let kind = match error.code() {
                Some(ErrorCode::ExpiredIterator | ErrorCode::InvalidArgument) => OpType::Fail,
                _ => OpType::Info,
            };
            work.recorder.record(Op {
                error: Some(error.to_string()),
                ..base(kind, done)
            });
            // Reopen after the last record read, possibly on another node.
            chain.iterator = None;
            Err(())
        }
    }
}

/// Reads every shard of the stream from TRIM_HORIZON to its tip through node `node` only,
/// recording one drain operation per shard.
pub async fn drain_node(work: &Workload, node: u64, deadline: Duration) -> Result<()> {
    let process = 1000 + node;
    let client = work
        .nodes
        .client(node)
        .await
        .map_err(|e| anyhow!("node {node}: {e}"))?;
    let shards = tokio::time::timeout(RPC_TIMEOUT, client.list_shards(&work.stream))
        .await
        .map_err(|_| anyhow!("node {node}: ListShards timed out"))?
        .map_err(|e| anyhow!("node {node}: ListShards: {e}"))?;
    let started = Instant::now();
    for shard in shards {
        let id = work.recorder.id();
        let base = |kind, time| Op {
            shard: Some(shard.shard_id.clone()),
            ..Op::new(id, process, kind, OpFn::Drain, node, time)
        };
        work.recorder
            .record(base(OpType::Invoke, work.recorder.now_ns()));
        let mut reader = ShardReader::new(
            &client,
            &work.stream,
            &shard,
            StartingPosition::TrimHorizon,
            ReadMode::UntilTip,
        );
        let mut records = Vec::new();
        let mut error = None;
        while !reader.is_finished() {
            let left = deadline.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, reader.next_batch(10_000)).await {
                Ok(Ok(batch)) => records.extend(batch.into_iter().map(|r| ReadRecord {
                    seq: r.sequence_number,
                    value: String::from_utf8_lossy(&r.data).into_owned(),
                })),
                Ok(Err(e)) => {
                    error = Some(e.to_string());
                    break;
                }
                Err(_) => {
                    error = Some(format!("drain not finished after {deadline:?}"));
                    break;
                }
            }
        }
        let done = work.recorder.now_ns();
        match error {
            None => work.recorder.record(Op {
                records,
                ..base(OpType::Ok, done)
            }),
            Some(error) => work.recorder.record(Op {
                error: Some(error),
                ..base(OpType::Info, done)
            }),
        }
    }
    Ok(())
}

/// Waits until every node answers ClusterStatus with all nodes up and a metadata leader,
/// and lists every open shard of the stream with a leader.
pub async fn wait_healthy(nodes: &Nodes, stream: Option<&str>, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let mut last = String::from("not checked yet");
    while started.elapsed() < timeout {
        match healthy_once(nodes, stream).await {
            Ok(()) => return Ok(()),
            Err(why) => last = why,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(anyhow!(
        "cluster not healthy after {:.0} s: {last}",
        timeout.as_secs_f64()
    ))
}

async fn healthy_once(nodes: &Nodes, stream: Option<&str>) -> Result<(), String> {
    for id in 1..=nodes.len() {
        let client = nodes
            .client(id)
            .await
            .map_err(|e| format!("node {id}: {e}"))?;
        let status = tokio::time::timeout(RPC_TIMEOUT, client.cluster_status())
            .await
            .map_err(|_| format!("node {id}: ClusterStatus timed out"))?
            .map_err(|e| format!("node {id}: {e}"))?;
        if status.metadata_leader_id == 0 {
            return Err(format!("node {id} knows no metadata leader"));
        }
        if let Some(down) = status.nodes.iter().find(|n| n.state != "up") {
            return Err(format!(
                "node {id} sees node {} {}",
                down.node_id, down.state
            ));
        }
        if let Some(stream) = stream {
            let shards = tokio::time::timeout(RPC_TIMEOUT, client.list_shards(stream))
                .await
                .map_err(|_| format!("node {id}: ListShards timed out"))?
                .map_err(|e| format!("node {id}: {e}"))?;
            if let Some(s) = shards
                .iter()
                .find(|s| s.status() == ShardStatus::Open && s.leader_node_id == 0)
            {
                return Err(format!("node {id}: {} has no leader", s.shard_id));
            }
        }
    }
    Ok(())
}

/// A random partition-key-free probe of which node leads: the metadata leader, or the
/// leader of a random open shard.
pub async fn leader(nodes: &Nodes, stream: &str, metadata: bool, pick: u64) -> Option<u64> {
    for id in 1..=nodes.len() {
        let Ok(client) = nodes.client(id).await else {
            continue;
        };
        if metadata {
            if let Ok(Ok(status)) = tokio::time::timeout(RPC_TIMEOUT, client.cluster_status()).await
            {
                if status.metadata_leader_id != 0 {
                    return Some(status.metadata_leader_id);
                }
            }
        } else if let Ok(Ok(shards)) =
            tokio::time::timeout(RPC_TIMEOUT, client.list_shards(stream)).await
        {
            let open: Vec<_> = shards
                .iter()
                .filter(|s| s.status() == ShardStatus::Open && s.leader_node_id != 0)
                .collect();
            if !open.is_empty() {
                return Some(open[(pick as usize) % open.len()].leader_node_id);
            }
        }
    }
    None
}

/// A random number in `range` from the thread RNG (for jitter that needs no replay).
pub fn jitter(range: std::ops::Range<u64>) -> u64 {
    rand::rng().random_range(range)
}
