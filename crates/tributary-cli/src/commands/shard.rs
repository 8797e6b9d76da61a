//! `trib shard list|split|merge`.

use std::io::Write;

use clap::Subcommand;
use tributary_client::{Shard, ShardStatus, StreamDescription};

use super::Context;
use crate::hash_key::parse_hash_key;
use crate::output::{shards_table, write_json_line, OutputFormat, ShardView};
use crate::progress::{wait_until_active, RESHARD_TIMEOUT};

#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// List a stream's shards, closed ones included, with their parents.
    List {
        /// The stream.
        stream: String,
    },
    /// Split an open shard in two and wait until the stream is ACTIVE again. The shard
    /// closes (its records stay readable until retention) and two children take its keys.
    Split {
        /// The stream.
        stream: String,
        /// The shard to split.
        shard: String,
        /// The hash key (decimal) that starts the second child: above the shard's starting
        /// hash key, at most its ending one. Default: the middle of the shard's range.
        #[arg(long, value_name = "HASH", value_parser = parse_hash_key)]
        at: Option<u128>,
        /// Return as soon as the server accepted the request, without waiting for ACTIVE.
        #[arg(long)]
        no_wait: bool,
    },
    /// Merge two open shards with adjacent hash key ranges into one and wait until the
    /// stream is ACTIVE again. Both close (their records stay readable until retention).
    Merge {
        /// The stream.
        stream: String,
        /// One shard to merge.
        shard: String,
        /// The shard whose hash keys come right before or after SHARD's.
        adjacent: String,
        /// Return as soon as the server accepted the request, without waiting for ACTIVE.
        #[arg(long)]
        no_wait: bool,
    },
}

pub async fn run(context: &Context, command: ShardCommand) -> anyhow::Result<()> {
    match command {
        ShardCommand::List { stream } => list(context, &stream).await,
        ShardCommand::Split {
            stream,
            shard,
            at,
            no_wait,
        } => {
            let client = context.connect().await?;
            client.split_shard(&stream, &shard, at).await?;
            let parents = [shard.as_str()];
            if no_wait {
                eprintln!("shard {shard} of stream '{stream}' is being split");
                return Ok(());
            }
            let description =
                wait_until_active(&client, &stream, RESHARD_TIMEOUT, None, |description| {
                    all_closed(description, &parents)
                })
                .await?;
            print_children(context, &stream, &description, &parents, "split into")
        }
        ShardCommand::Merge {
            stream,
            shard,
            adjacent,
            no_wait,
        } => {
            let client = context.connect().await?;
            client.merge_shards(&stream, &shard, &adjacent).await?;
            let parents = [shard.as_str(), adjacent.as_str()];
            if no_wait {
                eprintln!("shards {shard} and {adjacent} of stream '{stream}' are being merged");
                return Ok(());
            }
            let description =
                wait_until_active(&client, &stream, RESHARD_TIMEOUT, None, |description| {
                    all_closed(description, &parents)
                })
                .await?;
            print_children(context, &stream, &description, &parents, "merged into")
        }
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

/// Whether the description shows every one of `shard_ids` closed: the reshard that closes
/// them is done (and visible on the node that answered).
fn all_closed(description: &StreamDescription, shard_ids: &[&str]) -> bool {
    shard_ids.iter().all(|id| {
        description
            .shards
            .iter()
            .any(|shard| shard.shard_id == *id && shard.status() == ShardStatus::Closed)
    })
}

/// The shards whose parents are exactly `parents` (in either order).
fn children_of<'a>(description: &'a StreamDescription, parents: &[&str]) -> Vec<&'a Shard> {
    description
        .shards
        .iter()
        .filter(|shard| {
            let mut theirs: Vec<&str> = [&shard.parent_shard_id, &shard.adjacent_parent_shard_id]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
            let mut ours = parents.to_vec();
            theirs.sort_unstable();
            ours.sort_unstable();
            theirs == ours
        })
        .collect()
}

/// The new shards as JSON lines, or a line on stderr for people.
fn print_children(
    context: &Context,
    stream: &str,
    description: &StreamDescription,
    parents: &[&str],
    verb: &str,
) -> anyhow::Result<()> {
    let children = children_of(description, parents);
    match context.output {
        OutputFormat::Json => {
            let mut out = std::io::stdout().lock();
            for child in children {
                write_json_line(&mut out, &ShardView::new(child))?;
            }
            out.flush()?;
        }
        OutputFormat::Table => {
            let ids: Vec<&str> = children.iter().map(|s| s.shard_id.as_str()).collect();
            eprintln!(
                "stream '{stream}': {} {verb} {}",
                parents.join(" and "),
                ids.join(" and ")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, status: ShardStatus, parents: &[&str]) -> Shard {
        let mut shard = Shard {
            shard_id: id.into(),
            parent_shard_id: parents.first().map(|p| (*p).to_owned()),
            adjacent_parent_shard_id: parents.get(1).map(|p| (*p).to_owned()),
            ..Default::default()
        };
        shard.set_status(status);
        shard
    }

    #[test]
    fn children_are_found_by_their_parents() {
        let description = StreamDescription {
            summary: None,
            shards: vec![
                shard("0", ShardStatus::Closed, &[]),
                shard("1", ShardStatus::Closed, &[]),
                shard("2", ShardStatus::Open, &["0"]),
                shard("3", ShardStatus::Closed, &["0"]),
                shard("4", ShardStatus::Open, &["3", "1"]),
            ],
        };
        let ids = |shards: Vec<&Shard>| -> Vec<String> {
            shards.iter().map(|s| s.shard_id.clone()).collect()
        };
        assert_eq!(ids(children_of(&description, &["0"])), ["2", "3"]);
        assert_eq!(ids(children_of(&description, &["1", "3"])), ["4"]);
        assert!(children_of(&description, &["2"]).is_empty());
        assert!(all_closed(&description, &["0", "3"]));
        assert!(!all_closed(&description, &["0", "2"]));
        assert!(
            !all_closed(&description, &["9"]),
            "an unknown shard is not closed"
        );
    }
}
