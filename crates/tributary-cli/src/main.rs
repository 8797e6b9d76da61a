//! `trib`: the Tributary admin and data CLI.
//!
//! Exit codes: 0 success, 1 when the server (or the connection) refused the operation, 2 for
//! usage errors. Errors go to stderr as `error: <CodeName>: <message>`.

mod commands;
mod duration;
mod output;

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::cluster::ClusterCommand;
use commands::get::{GetArgs, UsageError};
use commands::put::{acknowledged_line, PartialPut, PutArgs};
use commands::shard::ShardCommand;
use commands::stream::StreamCommand;
use commands::Context;
use output::OutputFormat;

#[derive(Debug, Parser)]
#[command(name = "trib", version, about = "Tributary admin and data CLI")]
struct Cli {
    /// Any node of the cluster (http://HOST:PORT or HOST:PORT), or several, comma-separated:
    /// requests then go to whichever of them answer.
    #[arg(
        long,
        global = true,
        env = "TRIBUTARY_ENDPOINT",
        default_value = "http://127.0.0.1:7101"
    )]
    endpoint: String,
    /// Output format: aligned columns, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe and delete streams.
    #[command(subcommand)]
    Stream(StreamCommand),
    /// Inspect a stream's shards.
    #[command(subcommand)]
    Shard(ShardCommand),
    /// Write records: DATA, or one record per line of stdin.
    Put(PutArgs),
    /// Read records up to the tip at the time of the call, or follow new ones.
    Get(GetArgs),
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let context = Context {
        endpoint: cli.endpoint,
        output: cli.output,
    };
    let result = match cli.command {
        Command::Stream(command) => commands::stream::run(&context, command).await,
        Command::Shard(command) => commands::shard::run(&context, command).await,
        Command::Put(args) => commands::put::run(&context, args).await,
        Command::Get(args) => commands::get::run(&context, args).await,
        Command::Cluster(command) => commands::cluster::run(&context, command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report(&error),
    }
}

/// Prints the error to stderr and picks the exit code.
fn report(error: &anyhow::Error) -> ExitCode {
    if let Some(io_error) = error.downcast_ref::<io::Error>() {
        if io_error.kind() == io::ErrorKind::BrokenPipe {
            // The reader of our output went away (`trib get | head`): nothing left to do.
            return ExitCode::SUCCESS;
        }
    }
    if let Some(usage) = error.downcast_ref::<UsageError>() {
        eprintln!("error: {usage}");
        return ExitCode::from(2);
    }
    if let Some(partial) = error.downcast_ref::<PartialPut>() {
        eprintln!("error: {}", chain(&partial.source));
        eprintln!(
            "{}",
            acknowledged_line(partial.acknowledged, Some(partial.total))
        );
        return ExitCode::from(1);
    }
    eprintln!("error: {}", chain(error.as_ref()));
    ExitCode::from(1)
}

/// An error and its sources, `: `-separated, skipping a source that repeats the message
/// before it (hyper wraps connect errors that way).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut previous = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if message != previous {
            text.push_str(": ");
            text.push_str(&message);
        }
        previous = message;
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_are_accepted_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "trib",
            "stream",
            "list",
            "--output",
            "json",
            "--endpoint",
            "node-2:7102",
        ])
        .expect("valid command line");
        assert_eq!(cli.output, OutputFormat::Json);
        assert_eq!(cli.endpoint, "node-2:7102");
    }

    #[test]
    fn get_parses_positions_and_rejects_bad_ones() {
        let cli = Cli::try_parse_from(["trib", "get", "s", "--from", "after:17", "--shard", "x"])
            .expect("valid command line");
        let Command::Get(args) = cli.command else {
            panic!("parsed as get");
        };
        assert_eq!(
            args.from,
            tributary_client::StartingPosition::AfterSequence("17".into())
        );
        let error = Cli::try_parse_from(["trib", "get", "s", "--from", "oldest"])
            .expect_err("unknown position");
        assert_eq!(error.exit_code(), 2);
        let error = Cli::try_parse_from(["trib", "get", "s", "--limit", "0"])
            .expect_err("limit must be positive");
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn create_rejects_retention_that_is_not_whole_hours() {
        let error = Cli::try_parse_from([
            "trib",
            "stream",
            "create",
            "s",
            "--shards",
            "2",
            "--retention",
            "90m",
        ])
        .expect_err("90m is not whole hours");
        assert!(
            error.to_string().contains("whole number of hours"),
            "{error}"
        );
        let cli = Cli::try_parse_from([
            "trib",
            "stream",
            "create",
            "s",
            "--shards",
            "2",
            "--retention",
            "7d",
        ])
        .expect("valid command line");
        let Command::Stream(StreamCommand::Create { retention, .. }) = cli.command else {
            panic!("parsed as stream create");
        };
        assert_eq!(retention, Some(168));
    }
}
