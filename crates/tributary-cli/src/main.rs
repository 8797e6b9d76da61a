//! `trib`: the Tributary admin and data CLI.
//!
//! Exit codes: 0 success, 1 when the server (or the connection) refused the operation, 2 for
//! usage errors. Errors go to stderr as `error: <CodeName>: <message>`.

mod commands;
mod duration;
mod hash_key;
mod output;
mod progress;

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::cluster::ClusterCommand;
use commands::consume::ConsumeArgs;
use commands::consumer::ConsumerCommand;
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
    /// Create, list, describe, delete, scale and tag streams; change their retention.
    #[command(subcommand)]
    Stream(StreamCommand),
    /// List a stream's shards; split and merge them.
    #[command(subcommand)]
    Shard(ShardCommand),
    /// Write records: DATA, or one record per line of stdin.
    Put(PutArgs),
    /// Read records up to the tip at the time of the call, or follow new ones (by polling,
    /// or through an enhanced fan-out consumer).
    Get(GetArgs),
    /// Join a consumer group: share the stream's shards with the other workers of the same
    /// application, print records as JSON lines and checkpoint after each batch.
    Consume(ConsumeArgs),
    /// Register, list, describe and deregister enhanced fan-out consumers.
    #[command(subcommand)]
    Consumer(ConsumerCommand),
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
        Command::Consume(args) => commands::consume::run(&context, args).await,
        Command::Consumer(command) => commands::consumer::run(&context, command).await,
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
    use std::time::Duration;

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

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("trib").chain(args.iter().copied()))
    }

    fn usage_error(args: &[&str]) -> String {
        let error = parse(args).expect_err("a usage error");
        assert_eq!(error.exit_code(), 2, "{args:?}: {error}");
        error.to_string()
    }

    #[test]
    fn create_takes_retention_in_minutes_hours_or_days_and_tags() {
        let cli = parse(&[
            "stream",
            "create",
            "s",
            "--shards",
            "2",
            "--retention",
            "90m",
            "--tag",
            "team=data",
            "--tag",
            "env=",
        ])
        .expect("valid command line");
        let Command::Stream(StreamCommand::Create {
            retention, tags, ..
        }) = cli.command
        else {
            panic!("parsed as stream create");
        };
        assert_eq!(retention, Some(Duration::from_secs(90 * 60)));
        assert_eq!(
            tags,
            [
                ("team".to_owned(), "data".to_owned()),
                ("env".to_owned(), String::new())
            ]
        );
    }

    #[test]
    fn bad_create_arguments_name_the_limit() {
        let cases: [(&[&str], &str); 5] = [
            (
                &[
                    "stream",
                    "create",
                    "s",
                    "--shards",
                    "2",
                    "--retention",
                    "30s",
                ],
                "minimum of 1m",
            ),
            (
                &[
                    "stream",
                    "create",
                    "s",
                    "--shards",
                    "2",
                    "--retention",
                    "366d",
                ],
                "maximum of 365d",
            ),
            (
                &["stream", "create", "s", "--shards", "0"],
                "0 is not in 1..",
            ),
            (
                &["stream", "create", "s", "--shards", "1", "--tag", "team"],
                "KEY=VALUE",
            ),
            (&["stream", "create", "s"], "--shards"),
        ];
        for (args, expected) in cases {
            let text = usage_error(args);
            assert!(text.contains(expected), "{args:?}: {text}");
        }
    }

    #[test]
    fn stream_retention_scale_and_tags_parse() {
        let cli = parse(&["stream", "retention", "s", "7d"]).expect("valid");
        let Command::Stream(StreamCommand::Retention { name, retention }) = cli.command else {
            panic!("parsed as stream retention");
        };
        assert_eq!(
            (name.as_str(), retention),
            ("s", Duration::from_secs(7 * 86_400))
        );
        assert!(usage_error(&["stream", "retention", "s", "10s"]).contains("minimum of 1m"));

        let cli = parse(&["stream", "scale", "s", "--shards", "8", "--no-wait"]).expect("valid");
        let Command::Stream(StreamCommand::Scale {
            shards, no_wait, ..
        }) = cli.command
        else {
            panic!("parsed as stream scale");
        };
        assert_eq!((shards, no_wait), (8, true));
        usage_error(&["stream", "scale", "s", "--shards", "0"]);
        usage_error(&["stream", "scale", "s"]);

        let cli = parse(&["stream", "tag", "s", "a=1", "b=2"]).expect("valid");
        let Command::Stream(StreamCommand::Tag { tags, .. }) = cli.command else {
            panic!("parsed as stream tag");
        };
        assert_eq!(tags.len(), 2);
        usage_error(&["stream", "tag", "s"]);
        assert!(usage_error(&["stream", "tag", "s", "=1"]).contains("empty key"));

        let cli = parse(&["stream", "untag", "s", "a", "b"]).expect("valid");
        let Command::Stream(StreamCommand::Untag { keys, .. }) = cli.command else {
            panic!("parsed as stream untag");
        };
        assert_eq!(keys, ["a", "b"]);
        usage_error(&["stream", "untag", "s"]);
        parse(&["stream", "tags", "s", "--output", "json"]).expect("valid");
    }

    #[test]
    fn consumer_commands_parse() {
        let cli = parse(&["consumer", "register", "orders", "audit"]).expect("valid");
        let Command::Consumer(ConsumerCommand::Register {
            stream,
            name,
            no_wait,
        }) = cli.command
        else {
            panic!("parsed as consumer register");
        };
        assert_eq!(
            (stream.as_str(), name.as_str(), no_wait),
            ("orders", "audit", false)
        );
        let cli = parse(&["consumer", "register", "orders", "audit", "--no-wait"]).expect("valid");
        assert!(matches!(
            cli.command,
            Command::Consumer(ConsumerCommand::Register { no_wait: true, .. })
        ));
        let cli = parse(&["consumer", "deregister", "orders", "audit"]).expect("valid");
        let Command::Consumer(ConsumerCommand::Deregister { stream, name }) = cli.command else {
            panic!("parsed as consumer deregister");
        };
        assert_eq!((stream.as_str(), name.as_str()), ("orders", "audit"));
        let cli = parse(&[
            "consumer", "describe", "orders", "audit", "--output", "json",
        ])
        .expect("valid");
        assert_eq!(cli.output, OutputFormat::Json);
        let Command::Consumer(ConsumerCommand::Describe { stream, name }) = cli.command else {
            panic!("parsed as consumer describe");
        };
        assert_eq!((stream.as_str(), name.as_str()), ("orders", "audit"));
        let cli = parse(&["consumer", "list", "orders"]).expect("valid");
        let Command::Consumer(ConsumerCommand::List { stream }) = cli.command else {
            panic!("parsed as consumer list");
        };
        assert_eq!(stream, "orders");
    }

    #[test]
    fn consumer_commands_need_their_arguments() {
        let cases: [&[&str]; 7] = [
            &["consumer"],
            &["consumer", "register", "orders"],
            &["consumer", "deregister", "orders"],
            &["consumer", "describe", "orders"],
            &["consumer", "list"],
            &["consumer", "list", "orders", "audit"],
            &["consumer", "rename", "orders", "audit"],
        ];
        for args in cases {
            usage_error(args);
        }
        assert!(usage_error(&["consumer", "register", "orders"]).contains("<NAME>"));
    }

    fn get_args(args: &[&str]) -> GetArgs {
        let cli = parse(args).expect("valid command line");
        let Command::Get(args) = cli.command else {
            panic!("parsed as get");
        };
        args
    }

    #[test]
    fn get_reads_through_a_consumer_only_when_following() {
        let args = get_args(&["get", "orders", "--consumer", "audit", "--follow"]);
        assert_eq!(args.consumer.as_deref(), Some("audit"));
        assert!(args.follow);
        args.check().expect("fan-out follow");
        let args = get_args(&[
            "get",
            "orders",
            "--consumer",
            "audit",
            "--follow",
            "--shard",
            "shardId-000000000001",
            "--from",
            "after:17",
            "--limit",
            "5",
        ]);
        args.check().expect("one shard, after a sequence number");
        assert_eq!(args.limit, Some(5));

        let error = get_args(&["get", "orders", "--consumer", "audit"])
            .check()
            .expect_err("fan-out has no tip to stop at");
        assert!(
            error.0.starts_with("--consumer needs --follow"),
            "{}",
            error.0
        );
        let error = get_args(&[
            "get",
            "orders",
            "--consumer",
            "a",
            "--follow",
            "--from",
            "at:5",
        ])
        .check()
        .expect_err("a sequence number needs a shard");
        assert!(error.0.contains("add --shard ID"), "{}", error.0);
        get_args(&["get", "orders"])
            .check()
            .expect("a polling read");
        usage_error(&["get", "orders", "--consumer"]);
    }

    #[test]
    fn shard_split_and_merge_parse() {
        let at = u128::MAX.to_string();
        let cli =
            parse(&["shard", "split", "s", "shardId-000000000000", "--at", &at]).expect("valid");
        let Command::Shard(ShardCommand::Split {
            shard, at, no_wait, ..
        }) = cli.command
        else {
            panic!("parsed as shard split");
        };
        assert_eq!(
            (shard.as_str(), at, no_wait),
            ("shardId-000000000000", Some(u128::MAX), false)
        );
        let cli = parse(&["shard", "split", "s", "shardId-000000000000"]).expect("valid");
        let Command::Shard(ShardCommand::Split { at, .. }) = cli.command else {
            panic!("parsed as shard split");
        };
        assert_eq!(at, None, "the middle by default");
        assert!(usage_error(&["shard", "split", "s", "x", "--at", "0x10"])
            .contains("not a decimal integer"));
        usage_error(&["shard", "split", "s"]);

        let cli = parse(&["shard", "merge", "s", "a", "b", "--no-wait"]).expect("valid");
        let Command::Shard(ShardCommand::Merge {
            shard,
            adjacent,
            no_wait,
            ..
        }) = cli.command
        else {
            panic!("parsed as shard merge");
        };
        assert_eq!(
            (shard.as_str(), adjacent.as_str(), no_wait),
            ("a", "b", true)
        );
        usage_error(&["shard", "merge", "s", "a"]);
    }
}
