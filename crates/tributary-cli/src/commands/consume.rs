//! `trib consume`: one worker of a consumer-group application. Run it several times with
//! the same `--app` and the stream's shards are shared between the processes; a killed
//! process's shards move to the others once its leases expire, resuming from the checkpoints.

use std::io::{self, Write};
use std::time::Duration;

use clap::{Args, ValueEnum};
use tributary_client::{
    Checkpointer, ConsumeMode, ConsumerGroup, ConsumerGroupOptions, InitialPosition, ProcessError,
    Record, RecordProcessor, ShardInfo, DEFAULT_LEASE,
};

use super::Context;
use crate::output::{write_json_line, RecordView};

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The stream to consume.
    pub stream: String,
    /// Application name (1-128 of [a-zA-Z0-9_.-]): workers with the same name share the
    /// shards and the checkpoints.
    #[arg(long, value_name = "NAME")]
    pub app: String,
    /// Read through this registered enhanced fan-out consumer instead of polling.
    #[arg(long, value_name = "CONSUMER")]
    pub efo: Option<String>,
    /// Where shards without a checkpoint start (a new application).
    #[arg(long, value_enum, default_value = "trim-horizon")]
    pub from: From,
    /// How long a lease runs without renewal: a killed worker's shards move to the others
    /// within this time. 500 to 600000.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_LEASE.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(500..=600_000))]
    pub lease_ms: u64,
    /// This worker's id in the lease table (default: host-pid-random).
    #[arg(long, value_name = "ID")]
    pub worker_id: Option<String>,
}

/// `--from` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum From {
    /// The oldest retained record.
    TrimHorizon,
    /// Records put from now on.
    Latest,
}

/// Prints each batch as JSON lines, flushes stdout, then checkpoints the batch's last record.
struct Printer;

impl RecordProcessor for Printer {
    async fn process_records(
        &mut self,
        records: &[Record],
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessError> {
        let shard = checkpointer.shard_id().to_owned();
        let written = {
            let mut out = io::stdout().lock();
            records
                .iter()
                .try_for_each(|record| write_json_line(&mut out, &RecordView::new(&shard, record)))
                .and_then(|()| out.flush())
        };
        if let Err(err) = written {
            // The reader of our output went away (or the disk is full): nothing can be
            // processed any more, and checkpointing would skip records never printed.
            if err.kind() == io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: cannot write records to stdout: {err}");
            std::process::exit(1);
        }
        if let Some(last) = records.last() {
            checkpointer.checkpoint(&last.sequence_number).await?;
        }
        Ok(())
    }
}

pub async fn run(context: &Context, args: ConsumeArgs) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let mut options = ConsumerGroupOptions {
        lease: Duration::from_millis(args.lease_ms),
        renew_interval: Duration::from_millis(args.lease_ms / 3),
        initial_position: match args.from {
            From::TrimHorizon => InitialPosition::TrimHorizon,
            From::Latest => InitialPosition::Latest,
        },
        mode: match args.efo {
            Some(consumer) => ConsumeMode::FanOut { consumer },
            None => ConsumeMode::Polling,
        },
        ..ConsumerGroupOptions::default()
    };
    if let Some(id) = args.worker_id {
        options.worker_id = id;
    }
    let group = ConsumerGroup::new(&client, &args.stream, &args.app, |_: &ShardInfo| Printer)
        .with_options(options);
    eprintln!(
        "consuming {} as application {} (worker {})",
        args.stream,
        args.app,
        group.worker_id()
    );
    let mut status = group.status();
    let report = tokio::spawn(async move {
        while status.changed().await.is_ok() {
            let held: Vec<String> = status.borrow_and_update().held.keys().cloned().collect();
            eprintln!("holding {} shard(s): {}", held.len(), held.join(" "));
        }
    });
    let result = group.run(shutdown_signal()).await;
    report.abort();
    result?;
    Ok(())
}

/// Ctrl-C or SIGTERM: stop, checkpoint and hand the leases over.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
