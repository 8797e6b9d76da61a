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
    Serve(ServeArgs),
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
    /// Segment roll size in bytes.
    #[arg(long, env = "TRIBUTARY_SEGMENT_MAX_BYTES")]
    segment_max_bytes: Option<u64>,
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
            anyhow::bail!(
                "--peers {peers}: multi-node clusters are not available in this release; run without --peers for a single-node cluster"
            );
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
        if let Some(v) = self.segment_max_bytes {
            config.segment_max_bytes = v;
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = args.into_config()?;
            tributary_server::server::raise_open_files_limit();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
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
