//! `trib shard list`.

use std::io::Write;

use clap::Subcommand;

use super::Context;
use crate::output::{shards_table, write_json_line, OutputFormat, ShardView};

#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// List a stream's shards, closed ones included.
    List {
        /// The stream.
        stream: String,
    },
}

pub async fn run(context: &Context, command: ShardCommand) -> anyhow::Result<()> {
    match command {
        ShardCommand::List { stream } => list(context, &stream).await,
    }
}

async fn list(context: &Context, stream: &str) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let shards = client.list_shards(stream).await?;
    let views: Vec<ShardView> = shards.iter().map(ShardView::new).collect();
    let mut out = std::io::stdout().lock();
    match context.output {
        OutputFormat::Table => out.write_all(shards_table(&views).render().as_bytes())?,
        OutputFormat::Json => {
            for view in &views {
                write_json_line(&mut out, view)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
