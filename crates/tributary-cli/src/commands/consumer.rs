//! `trib consumer register|deregister|list|describe`: enhanced fan-out consumers.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use tributary_client::{Consumer, Error};

use super::Context;
use crate::output::{consumers_table, write_json_line, ConsumerView, OutputFormat};

/// How long `consumer register` waits for ACTIVE. Registering is one metadata write, so this
/// is only reached when the cluster cannot make progress; a script should not hang then.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Subcommand)]
pub enum ConsumerCommand {
    /// Register an enhanced fan-out consumer and wait until it is ACTIVE. Each consumer reads
    /// every shard with a throughput of its own (`trib get STREAM --consumer NAME --follow`);
    /// up to 20 per stream.
    Register {
        /// The stream.
        stream: String,
        /// Consumer name: 1-128 of [a-zA-Z0-9_.-], unique in the stream.
        name: String,
        /// Return as soon as the server accepted the request, without waiting for ACTIVE.
        #[arg(long)]
        no_wait: bool,
    },
    /// Deregister a consumer; its subscriptions end.
    Deregister {
        /// The stream.
        stream: String,
        /// The consumer.
        name: String,
    },
    /// List a stream's consumers.
    List {
        /// The stream.
        stream: String,
    },
    /// Show one consumer.
    Describe {
        /// The stream.
        stream: String,
        /// The consumer.
        name: String,
    },
}

pub async fn run(context: &Context, command: ConsumerCommand) -> anyhow::Result<()> {
    match command {
        ConsumerCommand::Register {
            stream,
            name,
            no_wait,
        } => register(context, &stream, &name, no_wait).await,
        ConsumerCommand::Deregister { stream, name } => {
            let client = context.connect().await?;
            client.deregister_stream_consumer(&stream, &name).await?;
            eprintln!("consumer '{name}' of stream '{stream}' is being deregistered");
            Ok(())
        }
        ConsumerCommand::List { stream } => {
            let client = context.connect().await?;
            let consumers = client.list_stream_consumers(&stream).await?;
            print(context, &consumers)
        }
        ConsumerCommand::Describe { stream, name } => {
            let client = context.connect().await?;
            let consumer = client.describe_stream_consumer(&stream, &name).await?;
            print(context, std::slice::from_ref(&consumer))
        }
    }
}

async fn register(
    context: &Context,
    stream: &str,
    name: &str,
    no_wait: bool,
) -> anyhow::Result<()> {
    let client = context.connect().await?;
    let registered = client.register_stream_consumer(stream, name).await?;
    let consumer = if no_wait {
        registered
    } else {
        client
            .wait_for_consumer_active(stream, name, REGISTER_TIMEOUT)
            .await
            .map_err(|error| match error {
                Error::Timeout(message) => anyhow::anyhow!(
                    "Timeout: {message}; the server carries on with the registration: check \
                     on it with `trib consumer describe {stream} {name}`"
                ),
                other => other.into(),
            })?
    };
    match context.output {
        OutputFormat::Json => print(context, std::slice::from_ref(&consumer)),
        OutputFormat::Table => {
            let view = ConsumerView::new(&consumer);
            eprintln!(
                "consumer '{}' of stream '{}' is {} (id {})",
                view.consumer_name, view.stream_name, view.status, view.consumer_id
            );
            Ok(())
        }
    }
}

/// A table, or one JSON line per consumer.
fn print(context: &Context, consumers: &[Consumer]) -> anyhow::Result<()> {
    let views: Vec<ConsumerView> = consumers.iter().map(ConsumerView::new).collect();
    let mut out = std::io::stdout().lock();
    match context.output {
        OutputFormat::Table => out.write_all(consumers_table(&views).render().as_bytes())?,
        OutputFormat::Json => {
            for view in &views {
                write_json_line(&mut out, view)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}
