//! `trib cluster status`.

use std::io::Write;

use clap::Subcommand;

use super::Context;
use crate::output::{nodes_table, write_json_line, NodeView, OutputFormat};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show every node, its availability zone, state and roles.
    Status,
}

pub async fn run(context: &Context, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status => status(context).await,
    }
}

async fn status(context: &Context) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let status = client.cluster_status().await?;
    let nodes: Vec<NodeView> = status.nodes.iter().map(NodeView::new).collect();
    let mut out = std::io::stdout().lock();
    match context.output {
        OutputFormat::Table => out.write_all(nodes_table(&nodes).render().as_bytes())?,
        OutputFormat::Json => {
            for node in &nodes {
                write_json_line(&mut out, node)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
