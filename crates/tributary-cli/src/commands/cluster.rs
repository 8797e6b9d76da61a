//! `trib cluster status` and `trib cluster replace-node`.

use std::io::Write;

use clap::Subcommand;

use super::Context;
use crate::output::{nodes_table, write_json_line, NodeView, OutputFormat};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show every node, its availability zone, state and roles.
    Status,
    /// Re-add a node whose data dir was lost. Start the node first (with an empty data
    /// dir it refuses to rejoin on its own); this removes its old replica from every raft
    /// group, adds the new one as a learner, waits until it caught up, and lets it vote.
    ReplaceNode {
        /// The node's id.
        node_id: u64,
    },
}

pub async fn run(context: &Context, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status => status(context).await,
        ClusterCommand::ReplaceNode { node_id } => {
            let client = context.connect().await?;
            let groups = client.replace_node(node_id).await?;
            eprintln!(
                "node {node_id} replaced in {groups} raft groups; it has caught up and votes again"
            );
            Ok(())
        }
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
