//! `trib stream create|list|describe|delete`.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;

use super::Context;
use crate::duration::parse_retention_hours;
use crate::output::{
    shards_table, streams_table, write_json_line, OutputFormat, ShardView, StreamView,
};

/// How long `stream create` waits for the stream to become ACTIVE. Creating a stream elects
/// a leader for every shard; a minute covers many shards on a loaded machine without leaving
/// a script hanging when the cluster cannot make progress.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Subcommand)]
pub enum StreamCommand {
    /// Create a stream and wait until it is ACTIVE (every shard has a leader).
    Create {
        /// Stream name: 1-128 of [a-zA-Z0-9_.-].
        name: String,
        /// Number of shards.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        shards: u32,
        /// How long records are kept, in whole hours or days (e.g. 24h, 7d). Default: the
        /// server's (24h).
        #[arg(long, value_name = "DURATION", value_parser = parse_retention_hours)]
        retention: Option<u32>,
        /// Return as soon as the server accepted the request, without waiting for ACTIVE.
        #[arg(long)]
        no_wait: bool,
    },
    /// List every stream.
    List,
    /// Show a stream and its shards.
    Describe {
        /// The stream.
        name: String,
    },
    /// Delete a stream and all its records.
    Delete {
        /// The stream.
        name: String,
    },
}

pub async fn run(context: &Context, command: StreamCommand) -> anyhow::Result<()> {
    match command {
        StreamCommand::Create {
            name,
            shards,
            retention,
            no_wait,
        } => create(context, &name, shards, retention, no_wait).await,
        StreamCommand::List => list(context).await,
        StreamCommand::Describe { name } => describe(context, &name).await,
        StreamCommand::Delete { name } => delete(context, &name).await,
    }
}

async fn create(
    context: &Context,
    name: &str,
    shards: u32,
    retention_hours: Option<u32>,
    no_wait: bool,
) -> anyhow::Result<()> {
    let client = context.connect().await?;
    client.create_stream(name, shards, retention_hours).await?;
    if no_wait {
        eprintln!("stream '{name}' is being created");
        return Ok(());
    }
    let description = client.wait_for_active(name, ACTIVE_TIMEOUT).await?;
    let view = description.summary.as_ref().map(StreamView::new);
    match (context.output, view) {
        (OutputFormat::Json, Some(view)) => {
            let mut out = std::io::stdout().lock();
            write_json_line(&mut out, &view)?;
            out.flush()?;
        }
        (_, view) => {
            let shards = view.map_or(shards, |view| view.shard_count);
            eprintln!("stream '{name}' is ACTIVE with {shards} shards");
        }
    }
    Ok(())
}

async fn list(context: &Context) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let streams = client.list_streams().await?;
    let views: Vec<StreamView> = streams.iter().map(StreamView::new).collect();
    let mut out = std::io::stdout().lock();
    match context.output {
        OutputFormat::Table => out.write_all(streams_table(&views).render().as_bytes())?,
        OutputFormat::Json => {
            for view in &views {
                write_json_line(&mut out, view)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

async fn describe(context: &Context, name: &str) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let description = client.describe_stream(name).await?;
    let Some(summary) = description.summary.as_ref() else {
        anyhow::bail!("InternalFailure: the server described stream '{name}' without a summary");
    };
    let mut view = StreamView::new(summary);
    let shards: Vec<ShardView> = description.shards.iter().map(ShardView::new).collect();
    let mut out = std::io::stdout().lock();
    match context.output {
        OutputFormat::Table => {
            out.write_all(
                streams_table(std::slice::from_ref(&view))
                    .render()
                    .as_bytes(),
            )?;
            out.write_all(b"\n")?;
            out.write_all(shards_table(&shards).render().as_bytes())?;
        }
        OutputFormat::Json => {
            view.shards = Some(shards);
            write_json_line(&mut out, &view)?;
        }
    }
    out.flush()?;
    Ok(())
}

async fn delete(context: &Context, name: &str) -> anyhow::Result<()> {
    let client = context.connect().await?;
    client.delete_stream(name).await?;
    eprintln!("stream '{name}' is being deleted");
    Ok(())
}
