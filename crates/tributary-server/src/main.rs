//! `tributary`: the Tributary node binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tributary_server::config::NodeConfig;

#[derive(Parser)]
#[command(
    name = "tributary",
    version,
    about = "A Raft-replicated, sharded, ordered log with Kinesis semantics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(Box<ServeArgs>),
    /// Run a local 3-node cluster (az-a, az-b, az-c on 127.0.0.1:7101-7103) as three
    /// processes; Ctrl-C stops all three. Data stays in --data-dir across restarts.
    Dev(DevArgs),
}

#[derive(Args)]
struct DevArgs {
    /// Parent directory of the three nodes' data dirs (node-1, node-2, node-3).
    #[arg(long, default_value = "./.tributary/dev")]
    data_dir: PathBuf,
    /// Port of node 1; nodes 2 and 3 use the next two.
    #[arg(long, default_value_t = 7101)]
    base_port: u16,
    /// Prometheus port of node 1 (`GET /metrics`); nodes 2 and 3 use the next two. 0: none.
    #[arg(long, default_value_t = 9101)]
    metrics_base_port: u16,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML file with node settings (field names as in NodeConfig); flags and TRIBUTARY_* override it.
    #[arg(long, env = "TRIBUTARY_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id (1 or more).
    #[arg(long, env = "TRIBUTARY_NODE_ID")]
    node_id: Option<u64>,
    /// Address for clients and peers.
    #[arg(long, env = "TRIBUTARY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory.
    #[arg(long, env = "TRIBUTARY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Availability zone name.
    #[arg(long, env = "TRIBUTARY_AZ")]
    az: Option<String>,
    /// Peers as ID=HOST:PORT,... (multi-node clusters).
    #[arg(long, env = "TRIBUTARY_PEERS")]
    peers: Option<String>,
    /// Prometheus metrics address.
    #[arg(long, env = "TRIBUTARY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Shard iterator lifetime in milliseconds.
    #[arg(long, env = "TRIBUTARY_ITERATOR_TTL_MS")]
    iterator_ttl_ms: Option<u64>,
    /// Maximum shards across all streams.
    #[arg(long, env = "TRIBUTARY_MAX_SHARDS")]
    max_shards: Option<u32>,
    /// Enforce per-shard throughput quotas (Kinesis defaults unless set below).
    #[arg(long, env = "TRIBUTARY_SHARD_QUOTAS")]
    shard_quotas: bool,
    /// Quota: record bytes a shard takes per second.
    #[arg(long, env = "TRIBUTARY_SHARD_WRITE_BYTES_PER_SEC")]
    shard_write_bytes_per_sec: Option<u64>,
    /// Quota: records a shard takes per second.
    #[arg(long, env = "TRIBUTARY_SHARD_WRITE_RECORDS_PER_SEC")]
    shard_write_records_per_sec: Option<u64>,
    /// Quota: bytes GetRecords returns per shard per second (per node).
    #[arg(long, env = "TRIBUTARY_SHARD_READ_BYTES_PER_SEC")]
    shard_read_bytes_per_sec: Option<u64>,
    /// Quota: GetRecords calls per shard per second (per node).
    #[arg(long, env = "TRIBUTARY_SHARD_READ_CALLS_PER_SEC")]
    shard_read_calls_per_sec: Option<u64>,
    /// Enhanced fan-out consumers per stream.
    #[arg(long, env = "TRIBUTARY_MAX_CONSUMERS_PER_STREAM")]
    max_consumers_per_stream: Option<u32>,
    /// SubscribeToShard calls end after this many milliseconds.
    #[arg(long, env = "TRIBUTARY_SUBSCRIPTION_MAX_MS")]
    subscription_max_ms: Option<u64>,
    /// Maximum streams.
    #[arg(long, env = "TRIBUTARY_MAX_STREAMS")]
    max_streams: Option<u32>,
    /// How often expired data is looked for, in milliseconds.
    #[arg(long, env = "TRIBUTARY_RETENTION_CHECK_INTERVAL_MS")]
    retention_check_interval_ms: Option<u64>,
    /// Roll an idle segment after this many seconds.
    #[arg(long, env = "TRIBUTARY_SEGMENT_MAX_AGE_SECS")]
    segment_max_age_secs: Option<u64>,
    /// Quiesce a shard group after this many idle milliseconds (0: never).
    #[arg(long, env = "TRIBUTARY_QUIESCE_AFTER_MS")]
    quiesce_after_ms: Option<u64>,
    /// Segment roll size in bytes.
    #[arg(long, env = "TRIBUTARY_SEGMENT_MAX_BYTES")]
    segment_max_bytes: Option<u64>,
    /// Bytes of each shard log's newest data kept in the OS page cache after fsync; older
    /// synced data is dropped from it.
    #[arg(long, env = "TRIBUTARY_PAGE_CACHE_KEEP_BYTES")]
    page_cache_keep_bytes: Option<u64>,
    /// How often every shard log's checksums are verified, in milliseconds (0: only when a
    /// read meets a corrupt frame).
    #[arg(long, env = "TRIBUTARY_SCRUB_INTERVAL_MS")]
    scrub_interval_ms: Option<u64>,
    /// Free bytes to keep on the data directory's filesystem (0: no floor).
    #[arg(long, env = "TRIBUTARY_MIN_FREE_DISK_BYTES")]
    min_free_disk_bytes: Option<u64>,
    /// Threads that run the node's request, raft and network tasks (default: one per
    /// core). Several nodes sharing one machine's cores run best with fewer each: fewer
    /// idle threads to wake, fewer context switches per write.
    #[arg(long, env = "TRIBUTARY_WORKER_THREADS", value_parser = parse_worker_threads)]
    worker_threads: Option<usize>,
}

/// Largest `--worker-threads` accepted.
const MAX_WORKER_THREADS: usize = 1024;

fn parse_worker_threads(text: &str) -> Result<usize, String> {
    let threads: usize = text
        .parse()
        .map_err(|_| format!("'{text}' is not a whole number of threads"))?;
    if !(1..=MAX_WORKER_THREADS).contains(&threads) {
        return Err(format!(
            "worker threads must be between 1 and {MAX_WORKER_THREADS}, got {threads}"
        ));
    }
    Ok(threads)
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<NodeConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<NodeConfig>(&text)
                    .with_context(|| format!("config file {} is invalid", path.display()))?
            }
            None => NodeConfig::default(),
        };
        if let Some(peers) = self.peers {
            config.peers = peers;
        }
        if let Some(v) = self.node_id {
            config.node_id = v;
        }
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.az {
            config.az = v;
        }
        if let Some(v) = self.metrics_listen {
            config.metrics_listen = Some(v);
        }
        if let Some(v) = self.iterator_ttl_ms {
            config.iterator_ttl_ms = v;
        }
        if let Some(v) = self.max_shards {
            config.max_shards = v;
        }
        if let Some(v) = self.max_consumers_per_stream {
            config.max_consumers_per_stream = v;
        }
        if let Some(v) = self.subscription_max_ms {
            config.subscription_max_ms = v;
        }
        if self.shard_quotas {
            config.shard_quotas = true;
        }
        if let Some(v) = self.shard_write_bytes_per_sec {
            config.shard_write_bytes_per_sec = v;
        }
        if let Some(v) = self.shard_write_records_per_sec {
            config.shard_write_records_per_sec = v;
        }
        if let Some(v) = self.shard_read_bytes_per_sec {
            config.shard_read_bytes_per_sec = v;
        }
        if let Some(v) = self.shard_read_calls_per_sec {
            config.shard_read_calls_per_sec = v;
        }
        if let Some(v) = self.max_streams {
            config.max_streams = v;
        }
        if let Some(v) = self.retention_check_interval_ms {
            config.retention_check_interval_ms = v;
        }
        if let Some(v) = self.segment_max_age_secs {
            config.segment_max_age_secs = v;
        }
        if let Some(v) = self.quiesce_after_ms {
            config.quiesce_after_ms = v;
        }
        if let Some(v) = self.segment_max_bytes {
            config.segment_max_bytes = v;
        }
        if let Some(v) = self.page_cache_keep_bytes {
            config.page_cache_keep_bytes = v;
        }
        if let Some(v) = self.scrub_interval_ms {
            config.scrub_interval_ms = v;
        }
        if let Some(v) = self.min_free_disk_bytes {
            config.min_free_disk_bytes = v;
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Dev(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(dev(args))
        }
        Command::Serve(args) => {
            let worker_threads = args.worker_threads;
            let config = args.into_config()?;
            // Test-only fault injection (docs/reliability.md): fsyncs fail while this file
            // exists.
            if let Some(trigger) = std::env::var_os("TRIBUTARY_FAULT_FSYNC_TRIGGER") {
                tracing::warn!(trigger = ?trigger, "fault injection on: fsyncs fail while this file exists");
                tributary_log::fault::fail_fsync_while_exists(trigger.into());
            }
            tributary_server::server::raise_open_files_limit();
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            if let Some(threads) = worker_threads {
                runtime.worker_threads(threads);
            }
            let runtime = runtime.enable_all().build()?;
            runtime.block_on(tributary_server::server::serve(config, shutdown_signal()))
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::warn!(%err, "cannot watch SIGTERM");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

/// `tributary dev`: three `tributary serve` children on loopback.
async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the tributary executable")?;
    let ports: Vec<u16> = (0..3u16)
        .map(|i| args.base_port.checked_add(i))
        .collect::<Option<_>>()
        .context("--base-port leaves no room for three ports")?;
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("{}=127.0.0.1:{port}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let id = i + 1;
        let data_dir = args.data_dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let child = tokio::process::Command::new(&exe)
            .arg("serve")
            .args(["--node-id", &id.to_string()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--az", ["az-a", "az-b", "az-c"][i]])
            .args(["--peers", &peers])
            .args(match args.metrics_base_port {
                0 => Vec::new(),
                base => vec![
                    "--metrics-listen".to_string(),
                    format!("127.0.0.1:{}", base.saturating_add(i as u16)),
                ],
            })
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start node {id}"))?;
        let metrics = match args.metrics_base_port {
            0 => String::new(),
            base => format!(
                ", metrics http://127.0.0.1:{}/metrics",
                base.saturating_add(i as u16)
            ),
        };
        eprintln!(
            "node {id} (az-{}) on 127.0.0.1:{port}{metrics}, data in {}, pid {}",
            ["a", "b", "c"][i],
            data_dir.display(),
            child.id().unwrap_or(0)
        );
        children.push((id, child));
    }
    eprintln!(
        "cluster: trib --endpoint http://127.0.0.1:{} cluster status   (Ctrl-C stops all three)",
        ports[0]
    );
    let mut exits = futures::stream::FuturesUnordered::new();
    let pids: Vec<(usize, u32)> = children
        .iter()
        .map(|(id, child)| (*id, child.id().unwrap_or(0)))
        .collect();
    for (id, mut child) in children {
        exits.push(async move { (id, child.wait().await) });
    }
    use futures::StreamExt;
    tokio::select! {
        _ = shutdown_signal() => {}
        Some((id, status)) = exits.next() => {
            eprintln!("node {id} exited ({status:?}); stopping the others");
        }
    }
    for (_, pid) in &pids {
        terminate(*pid);
    }
    let all = async { while exits.next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(15), all)
        .await
        .is_err()
    {
        eprintln!("nodes did not stop within 15 s; killing them");
    }
    Ok(())
}

/// Sends SIGTERM to one child by pid (never by name).
fn terminate(pid: u32) {
    if pid == 0 {
        return;
    }
    #[allow(unsafe_code)]
    // SAFETY: kill(2) with a pid we spawned and a valid signal number has no memory effects.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}
