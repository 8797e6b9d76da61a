//! The two systems under test behind one interface: starting a 3-node cluster on loopback,
//! creating the streams a workload needs, sending a batch, reading for end-to-end latency,
//! and reading a backlog back (catch-up).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use tokio::task::JoinHandle;
use tributary_client::proto::v1::PutRecordsEntry;
use tributary_client::{
    Client, ErrorCode, ReadMode, ShardReader, ShardSubscriber, StartingPosition,
};

use crate::procs::{free_port, Procs};
use crate::stats::Stats;
use crate::workload::{ConsumerMode, Workload};

/// Where `libeatmydata` lives (Debian package `eatmydata`): an LD_PRELOAD library that turns
/// fsync/fdatasync/O_SYNC into no-ops. Tributary has no option to skip fsync, so the unsafe
/// comparison run uses this.
pub const EATMYDATA: &str = "/usr/lib/x86_64-linux-gnu/libeatmydata.so";

/// Async worker threads per Tributary node: the node's share of this machine's cores
/// (three nodes share them here; on its own machine a node uses one per core). Measured on
/// the 2-core bench machine: one thread per node gave 99 MB/s where the default of one per
/// core gave 83 MB/s, fewer idle threads woken per write. `nats-server` keeps its default
/// GOMAXPROCS: 1 made no difference to it (47.8 against 47.9 MB/s, same day).
/// `BENCH_WORKER_THREADS=N` overrides it (for comparisons).
pub fn tributary_worker_threads() -> usize {
    if let Some(n) = std::env::var("BENCH_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 3).max(1)
}

/// Which system (and durability setting) a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// Tributary as shipped: acknowledged after a majority fsynced.
    Tributary,
    /// Tributary with every fsync turned into a no-op by LD_PRELOAD=libeatmydata (UNSAFE).
    TributaryNofsync,
    /// NATS JetStream R3, file storage, `sync_interval: always`.
    Nats,
    /// NATS JetStream R3, file storage, default `sync_interval` (2 minutes).
    NatsDefaultSync,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            System::Tributary => "Tributary (fsync)",
            System::TributaryNofsync => "Tributary, fsync OFF (UNSAFE)",
            System::Nats => "JetStream R3 sync=always",
            System::NatsDefaultSync => "JetStream R3 default sync",
        }
    }

    /// What an acknowledgement means on this system.
    pub fn guarantee(self) -> &'static str {
        match self {
            System::Tributary => "ack after a majority (2 of 3) has the batch fdatasync'ed to disk",
            System::TributaryNofsync => {
                "UNSAFE: ack after a majority has the batch in the page cache (fsync made a \
                 no-op by LD_PRELOAD=libeatmydata; the server has no such option); a power \
                 loss on two nodes can lose acknowledged records"
            }
            System::Nats => {
                "ack after a quorum (2 of 3) stored the message with sync_interval=always \
                 (each write fsynced before the ack)"
            }
            System::NatsDefaultSync => {
                "ack after a quorum stored the message in the page cache; fsync every 2 min \
                 (JetStream's default sync_interval)"
            }
        }
    }

    pub fn is_nats(self) -> bool {
        matches!(self, System::Nats | System::NatsDefaultSync)
    }
}

/// Where the server binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub tributary: PathBuf,
    pub nats_server: PathBuf,
}

/// One shard (Tributary) or one single-subject stream (JetStream) that batches go to.
#[derive(Debug, Clone)]
pub struct Target {
    /// Tributary stream name.
    pub stream: String,
    /// Tributary shard (as listed) and the hash key that lands on it.
    pub shard: Option<tributary_client::Shard>,
    pub hash_key: String,
    pub partition_key: String,
    /// JetStream stream and its subject.
    pub js_stream: String,
    pub subject: async_nats::Subject,
    /// Index (0-based) of the node leading it: batches are sent there.
    pub node: usize,
}

/// A producer's connections, one to every node.
#[derive(Clone)]
pub enum Conns {
    Tributary(Vec<Client>),
    Nats(Vec<jetstream::Context>),
}

/// A running 3-node cluster of one system.
pub struct Cluster {
    pub system: System,
    pub procs: Procs,
    /// Client endpoints, node 1 first.
    pub endpoints: Vec<String>,
}

impl Cluster {
    pub async fn start(system: System, bins: &Binaries) -> anyhow::Result<Cluster> {
        let mut procs = Procs::new(&format!("tributary-bench-{system:?}-").to_lowercase())?;
        let mut endpoints = Vec::new();
        if system.is_nats() {
            let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
            let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
            let routes = route_ports
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(", ");
            for i in 0..3 {
                let data = procs.dir.path().join(format!("n{}", i + 1));
                std::fs::create_dir_all(&data)?;
                let sync = if system == System::Nats {
                    "  sync_interval: always\n"
                } else {
                    ""
                };
                let config = format!(
                    "server_name: n{id}\nlisten: 127.0.0.1:{port}\nmax_payload: 8MB\n\
                     jetstream {{\n  store_dir: \"{dir}\"\n{sync}}}\n\
                     cluster {{\n  name: bench\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n",
                    id = i + 1,
                    port = client_ports[i],
                    dir = data.display(),
                    route = route_ports[i],
                );
                let config_path = procs.dir.path().join(format!("n{}.conf", i + 1));
                std::fs::write(&config_path, config)?;
                let mut command = Command::new(&bins.nats_server);
                command.arg("-c").arg(&config_path);
                procs.spawn(&format!("nats-n{}", i + 1), &data, command)?;
                endpoints.push(format!("nats://127.0.0.1:{}", client_ports[i]));
            }
        } else {
            let ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
            let peers = ports
                .iter()
                .enumerate()
                .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
                .collect::<Vec<_>>()
                .join(",");
            let worker_threads = tributary_worker_threads().to_string();
            for (i, port) in ports.iter().enumerate() {
                let data = procs.dir.path().join(format!("node-{}", i + 1));
                let mut command = Command::new(&bins.tributary);
                command
                    .arg("serve")
                    .args(["--node-id", &(i + 1).to_string()])
                    .args(["--listen", &format!("127.0.0.1:{port}")])
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["--az", ["az-a", "az-b", "az-c"][i]])
                    .args(["--peers", &peers])
                    .args(["--worker-threads", &worker_threads])
                    .env("RUST_LOG", "warn");
                if system == System::TributaryNofsync {
                    anyhow::ensure!(
                        Path::new(EATMYDATA).exists(),
                        "{EATMYDATA} is missing: apt-get install eatmydata (the unsafe \
                         no-fsync run needs it)"
                    );
                    command.env("LD_PRELOAD", EATMYDATA);
                }
                procs.spawn(&format!("tributary-{}", i + 1), &data, command)?;
                endpoints.push(format!("http://127.0.0.1:{port}"));
            }
        }
        let mut cluster = Cluster {
            system,
            procs,
            endpoints,
        };
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.procs.check_running()?;
            let ready = if self.system.is_nats() {
                self.nats_ready().await
            } else {
                self.tributary_ready().await
            };
            if ready {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} cluster not ready within 60 s (logs in {})",
                self.system.label(),
                self.procs.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn tributary_ready(&self) -> bool {
        let Ok(client) = Client::connect(&self.endpoints[0]).await else {
            return false;
        };
        match client.cluster_status().await {
            Ok(status) => status.nodes.iter().filter(|n| n.state == "up").count() == 3,
            Err(_) => false,
        }
    }

    async fn nats_ready(&self) -> bool {
        for endpoint in &self.endpoints {
            let Ok(client) = async_nats::connect(endpoint).await else {
                return false;
            };
            let js = jetstream::new(client);
            if js.query_account().await.is_err() {
                return false;
            }
        }
        true
    }

    /// Connections for one producer (or consumer group): one per node.
    pub async fn connect(&self) -> anyhow::Result<Conns> {
        if self.system.is_nats() {
            let mut contexts = Vec::new();
            for endpoint in &self.endpoints {
                let client = async_nats::connect(endpoint)
                    .await
                    .with_context(|| format!("connect to {endpoint}"))?;
                let context = jetstream::context::ContextBuilder::new()
                    .timeout(Duration::from_secs(30))
                    .max_ack_inflight(100_000)
                    .build(client);
                contexts.push(context);
            }
            Ok(Conns::Nats(contexts))
        } else {
            let mut clients = Vec::new();
            for endpoint in &self.endpoints {
                clients.push(
                    Client::connect(endpoint)
                        .await
                        .with_context(|| format!("connect to {endpoint}"))?,
                );
            }
            Ok(Conns::Tributary(clients))
        }
    }

    /// Creates the streams of a workload (names start with `name`) and returns its targets.
    pub async fn prepare(&self, name: &str, w: &Workload) -> anyhow::Result<Vec<Target>> {
        match self.connect().await? {
            Conns::Tributary(clients) => prepare_tributary(&clients, name, w).await,
            Conns::Nats(contexts) => prepare_nats(&contexts, name, w).await,
        }
    }

    /// Starts one reader per target that hands every record to `stats`; abort the handles
    /// to stop them.
    pub async fn start_consumers(
        &self,
        targets: &[Target],
        w: &Workload,
        stats: Arc<Stats>,
    ) -> anyhow::Result<Vec<JoinHandle<()>>> {
        if w.consumers == ConsumerMode::None {
            return Ok(Vec::new());
        }
        let conns = self.connect().await?;
        let mut handles = Vec::new();
        match conns {
            Conns::Tributary(clients) => {
                if w.consumers == ConsumerMode::Efo {
                    let mut streams: Vec<&str> =
                        targets.iter().map(|t| t.stream.as_str()).collect();
                    streams.dedup();
                    for stream in streams {
                        match clients[0]
                            .register_stream_consumer(stream, EFO_CONSUMER)
                            .await
                        {
                            Ok(_) => {}
                            Err(e) if e.code() == Some(ErrorCode::ResourceInUse) => {}
                            Err(e) => return Err(e.into()),
                        }
                        clients[0]
                            .wait_for_consumer_active(stream, EFO_CONSUMER, Duration::from_secs(30))
                            .await?;
                    }
                }
                for target in targets {
                    let client = clients[target.node].clone();
                    handles.push(tokio::spawn(tributary_reader(
                        client,
                        target.clone(),
                        w.consumers,
                        Duration::from_millis(w.poll_interval_ms),
                        stats.clone(),
                    )));
                }
            }
            Conns::Nats(contexts) => {
                for target in targets {
                    let stream = contexts[target.node]
                        .get_stream(&target.js_stream)
                        .await
                        .map_err(|e| anyhow::anyhow!("get stream {}: {e}", target.js_stream))?;
                    let consumer = stream
                        .create_consumer(jetstream::consumer::pull::OrderedConfig {
                            deliver_policy: jetstream::consumer::DeliverPolicy::New,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| anyhow::anyhow!("create consumer: {e}"))?;
                    let stats = stats.clone();
                    handles.push(tokio::spawn(async move {
                        let mut messages = match consumer.messages().await {
                            Ok(messages) => messages,
                            Err(e) => {
                                eprintln!("warning: JetStream consumer failed to start: {e}");
                                return;
                            }
                        };
                        while let Some(message) = messages.next().await {
                            match message {
                                Ok(message) => stats.consumed(&message.message.payload),
                                Err(e) => {
                                    eprintln!("warning: JetStream consumer: {e}");
                                }
                            }
                        }
                    }));
                }
            }
        }
        Ok(handles)
    }

    /// Reads every record of `targets` from the start through node 1 only; returns
    /// (records, payload bytes).
    pub async fn catch_up(&self, targets: &[Target]) -> anyhow::Result<(u64, u64)> {
        let mut tasks = tokio::task::JoinSet::new();
        if self.system.is_nats() {
            let client = async_nats::connect(&self.endpoints[0]).await?;
            let js = jetstream::new(client);
            for target in targets {
                let mut stream = js
                    .get_stream(&target.js_stream)
                    .await
                    .map_err(|e| anyhow::anyhow!("get stream {}: {e}", target.js_stream))?;
                let count = stream
                    .info()
                    .await
                    .map_err(|e| anyhow::anyhow!("stream info: {e}"))?
                    .state
                    .messages;
                let consumer = stream
                    .create_consumer(jetstream::consumer::pull::OrderedConfig {
                        deliver_policy: jetstream::consumer::DeliverPolicy::All,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("create consumer: {e}"))?;
                tasks.spawn(async move {
                    let mut messages = consumer
                        .messages()
                        .await
                        .map_err(|e| anyhow::anyhow!("consume: {e}"))?;
                    let (mut records, mut bytes) = (0u64, 0u64);
                    while records < count {
                        match messages.next().await {
                            Some(Ok(message)) => {
                                records += 1;
                                bytes += message.message.payload.len() as u64;
                            }
                            Some(Err(e)) => eprintln!("warning: JetStream catch-up read: {e}"),
                            None => break,
                        }
                    }
                    anyhow::Ok((records, bytes))
                });
            }
        } else {
            let client = Client::connect(&self.endpoints[0]).await?;
            let mut streams: Vec<&str> = targets.iter().map(|t| t.stream.as_str()).collect();
            streams.dedup();
            for stream in streams {
                for shard in client.list_shards(stream).await? {
                    let mut reader = ShardReader::new(
                        &client,
                        stream,
                        &shard,
                        StartingPosition::TrimHorizon,
                        ReadMode::UntilTip,
                    );
                    tasks.spawn(async move {
                        let (mut records, mut bytes) = (0u64, 0u64);
                        while !reader.is_finished() {
                            for record in reader.next_batch(10_000).await? {
                                records += 1;
                                bytes += record.data.len() as u64;
                            }
                        }
                        anyhow::Ok((records, bytes))
                    });
                }
            }
        }
        let (mut records, mut bytes) = (0, 0);
        while let Some(result) = tasks.join_next().await {
            let (r, b) = result??;
            records += r;
            bytes += b;
        }
        Ok((records, bytes))
    }
}

const EFO_CONSUMER: &str = "bench-efo";

async fn prepare_tributary(
    clients: &[Client],
    name: &str,
    w: &Workload,
) -> anyhow::Result<Vec<Target>> {
    let client = &clients[0];
    let mut names = Vec::new();
    for s in 0..w.streams {
        let stream = format!("{name}-{s}");
        client.create_stream(&stream, w.shards, None).await?;
        client
            .wait_for_active(&stream, Duration::from_secs(60))
            .await?;
        names.push(stream);
    }
    // Wait (bounded) until shard leaders are spread evenly, as the rebalancer will make them.
    let total = (w.streams * w.shards) as usize;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut listing = Vec::new();
    loop {
        listing.clear();
        for stream in &names {
            for shard in client.list_shards(stream).await? {
                listing.push((stream.clone(), shard));
            }
        }
        let mut per_node = [0usize; 3];
        let mut unknown = 0;
        for (_, shard) in &listing {
            match shard.leader_node_id {
                1..=3 => per_node[(shard.leader_node_id - 1) as usize] += 1,
                _ => unknown += 1,
            }
        }
        let spread = per_node.iter().max().unwrap_or(&0) - per_node.iter().min().unwrap_or(&0);
        if unknown == 0 && (spread <= 1 || total < 3) {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("note: shard leaders per node {per_node:?} ({unknown} unknown) after 20 s; going on");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(listing
        .into_iter()
        .enumerate()
        .map(|(i, (stream, shard))| Target {
            stream,
            hash_key: shard.starting_hash_key.clone(),
            partition_key: format!("k{i}"),
            node: shard.leader_node_id.clamp(1, 3) as usize - 1,
            shard: Some(shard),
            js_stream: String::new(),
            subject: async_nats::Subject::from(""),
        })
        .collect())
}

async fn prepare_nats(
    contexts: &[jetstream::Context],
    name: &str,
    w: &Workload,
) -> anyhow::Result<Vec<Target>> {
    let js = &contexts[0];
    let mut targets = Vec::new();
    for s in 0..w.streams {
        for k in 0..w.shards {
            let js_stream = format!("{name}-{s}-{k}");
            let subject = format!("{name}.{s}.{k}");
            let config = jetstream::stream::Config {
                name: js_stream.clone(),
                subjects: vec![subject.clone()],
                num_replicas: 3,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut stream = loop {
                match js.create_stream(config.clone()).await {
                    Ok(stream) => break stream,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("note: create JetStream stream {js_stream}: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => anyhow::bail!("create JetStream stream {js_stream}: {e}"),
                }
            };
            // Publish to the stream leader's server, as Tributary producers send to the shard
            // leader: no extra hop on either side.
            let mut node = 0;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let leader = stream
                    .info()
                    .await
                    .ok()
                    .and_then(|i| i.cluster.clone())
                    .and_then(|c| c.leader);
                if let Some(leader) = leader {
                    node = leader
                        .trim_start_matches('n')
                        .parse::<usize>()
                        .unwrap_or(1)
                        .clamp(1, 3)
                        - 1;
                    break;
                }
                if Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            targets.push(Target {
                stream: String::new(),
                shard: None,
                hash_key: String::new(),
                partition_key: String::new(),
                js_stream,
                subject: async_nats::Subject::from(subject),
                node,
            });
        }
    }
    Ok(targets)
}

/// Sends one batch to `target` and records its outcome. Refused Tributary entries are
/// retried (up to 20 attempts); latency runs from the first send to the final ack.
pub async fn send_batch(
    conns: &Conns,
    target: &Target,
    payloads: Vec<Bytes>,
    sent_us: u64,
    stats: &Stats,
) {
    match conns {
        Conns::Tributary(clients) => {
            let client = &clients[target.node];
            let mut pending: Vec<PutRecordsEntry> = payloads
                .into_iter()
                .map(|data| PutRecordsEntry {
                    partition_key: target.partition_key.clone(),
                    data,
                    explicit_hash_key: Some(target.hash_key.clone()),
                })
                .collect();
            for attempt in 0..20 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                match client.put_records(&target.stream, pending.clone()).await {
                    Ok(response) => {
                        let mut retry = Vec::new();
                        let (mut ok, mut bytes) = (0u64, 0u64);
                        let mut message = String::new();
                        for (entry, result) in pending.into_iter().zip(response.records) {
                            if result.error_code() == ErrorCode::Unspecified {
                                ok += 1;
                                bytes += entry.data.len() as u64;
                            } else {
                                message =
                                    format!("{:?}: {}", result.error_code(), result.error_message);
                                retry.push(entry);
                            }
                        }
                        stats.acked(sent_us, ok, bytes);
                        if !retry.is_empty() {
                            stats.failed(retry.len() as u64, || message);
                        }
                        pending = retry;
                    }
                    Err(e) => stats.failed(pending.len() as u64, || e.to_string()),
                }
                if pending.is_empty() {
                    return;
                }
            }
        }
        Conns::Nats(contexts) => {
            let js = &contexts[target.node];
            let mut acks = Vec::with_capacity(payloads.len());
            for payload in payloads {
                let len = payload.len() as u64;
                match js.publish(target.subject.clone(), payload).await {
                    Ok(ack) => acks.push((ack, len)),
                    Err(e) => stats.failed(1, || e.to_string()),
                }
            }
            for (ack, len) in acks {
                match ack.await {
                    Ok(_) => stats.acked(sent_us, 1, len),
                    Err(e) => stats.failed(1, || e.to_string()),
                }
            }
        }
    }
}

async fn tributary_reader(
    client: Client,
    target: Target,
    mode: ConsumerMode,
    poll_interval: Duration,
    stats: Arc<Stats>,
) {
    let Some(shard) = target.shard.clone() else {
        return;
    };
    if mode == ConsumerMode::Efo {
        let mut subscriber = ShardSubscriber::new(
            &client,
            &target.stream,
            EFO_CONSUMER,
            &shard.shard_id,
            StartingPosition::Latest,
        );
        loop {
            match subscriber.next_batch().await {
                Ok(records) => records.iter().for_each(|r| stats.consumed(&r.data)),
                Err(e) => {
                    eprintln!("warning: fan-out reader of {}: {e}", shard.shard_id);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let mut reader = ShardReader::new(
        &client,
        &target.stream,
        &shard,
        StartingPosition::Latest,
        ReadMode::Follow,
    );
    if mode == ConsumerMode::LongPoll {
        reader.set_long_poll(Some(Duration::from_secs(5)));
    }
    loop {
        match reader.next_batch(10_000).await {
            Ok(records) if records.is_empty() && mode == ConsumerMode::Polling => {
                tokio::time::sleep(poll_interval).await;
            }
            Ok(records) => records.iter().for_each(|r| stats.consumed(&r.data)),
            Err(e) => {
                eprintln!("warning: reader of {}: {e}", shard.shard_id);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
