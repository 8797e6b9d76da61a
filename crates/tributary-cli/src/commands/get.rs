//! `trib get`: print a shard's or a whole stream's records.

use std::io::{self, Write};
use std::ops::ControlFlow;

use clap::Args;
use tributary_client::{follow, read_until_tip, Record, StartingPosition};

use super::Context;
use crate::output::{record_line, write_json_line, OutputFormat, RecordView};

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The stream to read.
    pub stream: String,
    /// Read only this shard. Default: every shard, closed ones included, one after another:
    /// each parent before its children (so every partition key's records come out in put
    /// order across splits and merges), otherwise in `shard list` order.
    #[arg(long, value_name = "ID")]
    pub shard: Option<String>,
    /// Where to start: trim-horizon, latest, at:SEQ, after:SEQ or time:RFC3339.
    #[arg(long, value_name = "POSITION", default_value = "trim-horizon")]
    pub from: StartingPosition,
    /// Print at most this many records in total.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Keep printing new records until interrupted, instead of stopping at the tip.
    #[arg(long)]
    pub follow: bool,
}

/// A usage mistake found after parsing; `main` exits with code 2 like clap does.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub async fn run(context: &Context, args: GetArgs) -> anyhow::Result<()> {
    if args.shard.is_none()
        && matches!(
            args.from,
            StartingPosition::AtSequence(_) | StartingPosition::AfterSequence(_)
        )
    {
        return Err(UsageError(format!(
            "--from {} names a position in one shard; add --shard ID (see `trib shard list {}`)",
            args.from, args.stream
        ))
        .into());
    }
    let limit = args
        .limit
        .map(|limit| usize::try_from(limit).unwrap_or(usize::MAX));
    let client = context.connect().await?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut write_error = None;
    let output = context.output;
    let follow_mode = args.follow;
    let on_record = |shard_id: &str, record: Record| {
        let written = write_record(&mut out, output, shard_id, &record).and_then(|()| {
            // A follower is watched live: do not hold records back in the buffer.
            if follow_mode {
                out.flush()
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => ControlFlow::Continue(()),
            Err(error) => {
                write_error = Some(error);
                ControlFlow::Break(())
            }
        }
    };
    let shard = args.shard.as_deref();
    let read = if args.follow {
        follow(&client, &args.stream, shard, &args.from, limit, on_record).await
    } else {
        read_until_tip(&client, &args.stream, shard, &args.from, limit, on_record).await
    };
    if let Some(error) = write_error {
        return Err(error.into());
    }
    // Records already printed stay printed even when a later page fails.
    let flushed = out.flush();
    read?;
    flushed?;
    Ok(())
}

fn write_record(
    out: &mut impl Write,
    output: OutputFormat,
    shard_id: &str,
    record: &Record,
) -> io::Result<()> {
    match output {
        OutputFormat::Table => writeln!(out, "{}", record_line(shard_id, record)),
        OutputFormat::Json => write_json_line(out, &RecordView::new(shard_id, record)),
    }
}
