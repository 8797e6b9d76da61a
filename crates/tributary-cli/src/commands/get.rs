//! `trib get`: print a shard's or a whole stream's records, by polling or (`--consumer`)
//! through enhanced fan-out.

use std::io::{self, Write};
use std::ops::ControlFlow;

use clap::Args;
use tributary_client::{follow, follow_with_consumer, read_until_tip, Record, StartingPosition};

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
    /// Read through this enhanced fan-out consumer (see `trib consumer register`): the
    /// server pushes records as they are written, with a throughput of the consumer's own.
    /// Needs --follow.
    #[arg(long, value_name = "NAME")]
    pub consumer: Option<String>,
}

impl GetArgs {
    /// Combinations the parser cannot refuse on its own.
    pub fn check(&self) -> Result<(), UsageError> {
        if self.shard.is_none()
            && matches!(
                self.from,
                StartingPosition::AtSequence(_) | StartingPosition::AfterSequence(_)
            )
        {
            return Err(UsageError(format!(
                "--from {} names a position in one shard; add --shard ID (see `trib shard \
                 list {}`)",
                self.from, self.stream
            )));
        }
        if self.consumer.is_some() && !self.follow {
            // Fan-out pushes records as they are written and has no notion of a tip to stop
            // at, so a one-shot read through it is not offered.
            return Err(UsageError(
                "--consumer needs --follow: enhanced fan-out pushes records as they are \
                 written and never stops at the tip; add --follow, or leave out --consumer \
                 to read up to the tip by polling"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

/// A usage mistake found after parsing; `main` exits with code 2 like clap does.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub async fn run(context: &Context, args: GetArgs) -> anyhow::Result<()> {
    args.check()?;
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
    let read = if let Some(consumer) = args.consumer.as_deref() {
        let stream = &args.stream;
        follow_with_consumer(
            &client, stream, consumer, shard, &args.from, limit, on_record,
        )
        .await
    } else if args.follow {
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
