//! `trib stream create|list|describe|stats|delete|retention|scale|tag|untag|tags`.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use tributary_client::{CreateStreamOptions, StreamDescription};

use super::Context;
use crate::duration::{format_retention, parse_retention};
use crate::output::{
    shards_table, streams_table, tags_table, write_json_line, OutputFormat, ShardView, StreamView,
    TagView,
};
use crate::progress::{wait_until_active, CREATE_TIMEOUT, RESHARD_TIMEOUT};

#[derive(Debug, Subcommand)]
pub enum StreamCommand {
    /// Create a stream and wait until it is ACTIVE (every shard has a leader).
    Create {
        /// Stream name: 1-128 of [a-zA-Z0-9_.-].
        name: String,
        /// Number of shards.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        shards: u32,
        /// How long records are kept: minutes, hours or days from 1m to 365d (e.g. 90m, 24h,
        /// 7d). Default: the server's (24h).
        #[arg(long, value_name = "DURATION", value_parser = parse_retention)]
        retention: Option<Duration>,
        /// A tag to attach; repeat for more (up to 50).
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// Return as soon as the server accepted the request, without waiting for ACTIVE.
        #[arg(long)]
        no_wait: bool,
    },
    /// List every stream.
    List,
    /// Show a stream's status, retention and counts, and its shards.
    Describe {
        /// The stream.
        name: String,
    },
    /// Per-shard traffic, raft position and disk use, gathered from every node: rates are
    /// the difference of two samples `--interval` apart.
    Stats {
        /// The stream.
        name: String,
        /// Time between the two samples (e.g. 1s, 500ms, 5s; 100ms to 60s).
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
    },
    /// Delete a stream and all its records.
    Delete {
        /// The stream.
        name: String,
    },
    /// Change how long records are kept. A decrease hides older records at once.
    Retention {
        /// The stream.
        name: String,
        /// Minutes, hours or days from 1m to 365d (e.g. 90m, 24h, 7d).
        #[arg(value_name = "DURATION", value_parser = parse_retention)]
        retention: Duration,
    },
    /// Scale to a number of open shards (by splits and merges) and wait until the stream
    /// is ACTIVE again. Records are not moved: closed shards stay readable until retention.
    Scale {
        /// The stream.
        name: String,
        /// The number of open shards to reach.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        shards: u32,
        /// Return as soon as the server accepted the request, without waiting for ACTIVE.
        #[arg(long)]
        no_wait: bool,
    },
    /// Add tags, or overwrite the values of existing keys.
    Tag {
        /// The stream.
        name: String,
        /// The tags.
        #[arg(value_name = "KEY=VALUE", required = true, value_parser = parse_tag)]
        tags: Vec<(String, String)>,
    },
    /// Remove tags by key.
    Untag {
        /// The stream.
        name: String,
        /// The tag keys.
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
    },
    /// List a stream's tags.
    Tags {
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
            tags,
            no_wait,
        } => {
            let options = CreateStreamOptions {
                retention,
                tags: tags.into_iter().collect(),
            };
            create(context, &name, shards, &options, no_wait).await
        }
        StreamCommand::List => list(context).await,
        StreamCommand::Describe { name } => describe(context, &name).await,
        StreamCommand::Stats { name, interval } => {
            super::stream_stats::stats(context, &name, interval).await
        }
        StreamCommand::Delete { name } => delete(context, &name).await,
        StreamCommand::Retention { name, retention } => {
            let client = context.connect().await?;
            client.update_stream_retention(&name, retention).await?;
            eprintln!(
                "stream '{name}' now keeps records for {}",
                format_retention(retention)
            );
            Ok(())
        }
        StreamCommand::Scale {
            name,
            shards,
            no_wait,
        } => scale(context, &name, shards, no_wait).await,
        StreamCommand::Tag { name, tags } => {
            let client = context.connect().await?;
            let count = tags.len();
            client.add_tags(&name, tags).await?;
            eprintln!("stream '{name}': {count} {} set", plural(count, "tag"));
            Ok(())
        }
        StreamCommand::Untag { name, keys } => {
            let client = context.connect().await?;
            let count = keys.len();
            client.remove_tags(&name, keys).await?;
            eprintln!("stream '{name}': {count} {} removed", plural(count, "tag"));
            Ok(())
        }
        StreamCommand::Tags { name } => tags(context, &name).await,
    }
}

async fn create(
    context: &Context,
    name: &str,
    shards: u32,
    options: &CreateStreamOptions,
    no_wait: bool,
) -> anyhow::Result<()> {
    let client = context.connect().await?;
    client.create_stream_with(name, shards, options).await?;
    if no_wait {
        eprintln!("stream '{name}' is being created");
        return Ok(());
    }
    let description = wait_until_active(&client, name, CREATE_TIMEOUT, None, |_| true).await?;
    print_settled(context, name, &description)
}

async fn scale(context: &Context, name: &str, shards: u32, no_wait: bool) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let (current, target) = client.update_shard_count(name, shards).await?;
    if no_wait {
        eprintln!("stream '{name}' is scaling from {current} to {target} open shards");
        return Ok(());
    }
    let description = wait_until_active(
        &client,
        name,
        RESHARD_TIMEOUT,
        Some(target),
        |description| {
            description
                .summary
                .as_ref()
                .is_some_and(|summary| summary.open_shard_count == target)
        },
    )
    .await?;
    print_settled(context, name, &description)
}

/// After a wait: the stream as one JSON line, or a line on stderr for people.
fn print_settled(
    context: &Context,
    name: &str,
    description: &StreamDescription,
) -> anyhow::Result<()> {
    let Some(summary) = description.summary.as_ref() else {
        anyhow::bail!("InternalFailure: the server described stream '{name}' without a summary");
    };
    match context.output {
        OutputFormat::Json => {
            let mut out = std::io::stdout().lock();
            write_json_line(&mut out, &StreamView::new(summary))?;
            out.flush()?;
        }
        OutputFormat::Table => {
            let open = summary.open_shard_count;
            eprintln!(
                "stream '{name}' is ACTIVE with {open} open {}",
                plural(open as usize, "shard")
            );
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

async fn tags(context: &Context, name: &str) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let tags = client.list_tags(name).await?;
    let views: Vec<TagView> = tags
        .iter()
        .map(|(key, value)| TagView { key, value })
        .collect();
    let mut out = std::io::stdout().lock();
    match context.output {
        OutputFormat::Table => out.write_all(tags_table(&views).render().as_bytes())?,
        OutputFormat::Json => {
            for view in &views {
                write_json_line(&mut out, view)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// `KEY=VALUE`, split at the first `=`; the key must not be empty, the value may be. The
/// server checks the lengths (keys 1-128 characters, values up to 256).
pub fn parse_tag(input: &str) -> Result<(String, String), String> {
    match input.split_once('=') {
        Some(("", _)) => Err(format!(
            "tag '{input}' has an empty key; expected KEY=VALUE"
        )),
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
        None => Err(format!("tag '{input}' has no '='; expected KEY=VALUE")),
    }
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        noun.to_owned()
    } else {
        format!("{noun}s")
    }
}

/// `--interval`: a number with `ms` or `s`, from 100 ms to 60 s.
fn parse_interval(input: &str) -> Result<Duration, String> {
    let parsed = if let Some(ms) = input.strip_suffix("ms") {
        ms.parse::<u64>().ok().map(Duration::from_millis)
    } else if let Some(s) = input.strip_suffix('s') {
        s.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
    } else {
        None
    };
    match parsed {
        Some(d) if d >= Duration::from_millis(100) && d <= Duration::from_secs(60) => Ok(d),
        Some(_) => Err(format!("interval {input} is outside 100ms..=60s")),
        None => Err(format!(
            "interval {input:?} is not a duration like 500ms or 2s (100ms to 60s)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_within_bounds() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_interval("50ms")
            .expect_err("too short")
            .contains("100ms..=60s"));
        assert!(parse_interval("61s")
            .expect_err("too long")
            .contains("100ms..=60s"));
        assert!(parse_interval("fast")
            .expect_err("not a duration")
            .contains("not a duration"));
    }

    #[test]
    fn tags_split_at_the_first_equals_sign() {
        let cases = [
            ("team=data", ("team", "data")),
            ("url=a=b", ("url", "a=b")),
            ("empty=", ("empty", "")),
        ];
        for (input, (key, value)) in cases {
            assert_eq!(
                parse_tag(input),
                Ok((key.to_owned(), value.to_owned())),
                "{input}"
            );
        }
        assert!(parse_tag("=x")
            .expect_err("empty key")
            .contains("empty key"));
        assert!(parse_tag("team").expect_err("no =").contains("KEY=VALUE"));
    }
}
