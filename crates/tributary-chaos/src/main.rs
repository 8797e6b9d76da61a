//! `tributary-chaos`: runs the workload (producers, readers, consumer-group workers) against
//! the docker-compose cluster under a seeded fault schedule, heals, drains every shard
//! through every node, lets the workers catch up and reads their final lease table, checks
//! the history and prints the report (its last line is one JSON object).
//!
//! Exit codes: 0 every safety figure is zero; 1 a safety figure is non-zero or the run
//! could not complete; 2 faults cannot be injected here (no Docker engine or compose).

mod cluster;
mod consumer_group;
mod nemesis;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use clap::{Parser, Subcommand};
use tributary_chaos::checker::{self, Findings};
use tributary_chaos::history;
use tributary_chaos::report::{FaultTally, Report};
use tributary_client::CreateStreamOptions;

use crate::cluster::{compose_tool, Cluster};
use crate::nemesis::{Fault, Nemesis};
use crate::workload::{drain_node, wait_healthy, Nodes, Recorder, Workload};

#[derive(Parser)]
#[command(about = "Fault-injection suite for Tributary on docker compose")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a compose cluster, run the workload under faults, check and report.
    Run(RunArgs),
    /// Check a recorded history (history.jsonl of an earlier run) and print the findings.
    Check {
        /// The JSON-lines history.
        history: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Seed of the fault schedule (random when absent; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 120)]
    duration: u64,
    /// Only kill, isolate and pause (the CI smoke); otherwise every fault type.
    #[arg(long)]
    smoke: bool,
    /// Image with the `tributary` binary (deploy/build-image.sh builds it).
    #[arg(long, default_value = "tributary:dev")]
    image: String,
    /// The compose file.
    #[arg(long, default_value = "tests/chaos/docker-compose.yml")]
    compose_file: PathBuf,
    /// Where the history, report, node logs and (on failure) data directories go.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Producers writing concurrently.
    #[arg(long, default_value_t = 4)]
    producers: u64,
    /// Readers following every shard.
    #[arg(long, default_value_t = 2)]
    readers: u64,
    /// Consumer-group workers (one application, each worker through its own node); 0 runs
    /// none and skips the consumer-group checks.
    #[arg(long, default_value_t = 2)]
    workers: u64,
    /// Shards of the stream at the start.
    #[arg(long, default_value_t = 3)]
    shards: u32,
    /// Keep the data directories even when the run passes.
    #[arg(long)]
    keep: bool,
    /// Compose project name (default tributary-chaos-PID); containers and the network it
    /// creates carry it, so a wrapper can clean up after an interrupted run.
    #[arg(long)]
    project: Option<String>,
    /// The commit under test as shown in the report (default: git describe of the checkout).
    #[arg(long)]
    commit: Option<String>,
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Check { history } => check_file(&history),
            Command::Run(args) => run(args).await,
        }
    });
    std::process::exit(code);
}

fn check_file(path: &Path) -> i32 {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) => {
            eprintln!("cannot open {}: {error}", path.display());
            return 1;
        }
    };
    let ops = match history::read_jsonl(std::io::BufReader::new(file)) {
        Ok(ops) => ops,
        Err(error) => {
            eprintln!("{error:#}");
            return 1;
        }
    };
    let findings = checker::check(&ops);
    let report = Report {
        seed: 0,
        commit: "history file".into(),
        duration_s: 0,
        faults: FaultTally::default(),
        findings,
        run_errors: Vec::new(),
    };
    print!("{}", report.render());
    i32::from(!report.findings.is_safe())
}

fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{head}-dirty")
            } else {
                head
            }
        }
        None => "unknown".into(),
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn run(args: RunArgs) -> i32 {
    let seed = args
        .seed
        .unwrap_or_else(|| workload::jitter(1..1_000_000_000));
    let commit = args.commit.clone().unwrap_or_else(commit);
    eprintln!(
        "tributary-chaos: seed {seed} (replay: scripts/chaos --seed {seed} --duration {})",
        args.duration
    );
    let mut report = Report {
        seed,
        commit,
        duration_s: args.duration,
        faults: FaultTally::default(),
        findings: Findings::default(),
        run_errors: Vec::new(),
    };
    let tool = match compose_tool().await {
        Ok(tool) => tool,
        Err(why) => {
            report
                .run_errors
                .push(format!("could not inject faults: {why:#}"));
            print!("{}", report.render());
            return 2;
        }
    };
    let out = args.out.clone().unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from(format!("target/chaos/{stamp}-seed-{seed}"))
    });
    if let Err(error) = std::fs::create_dir_all(&out) {
        report
            .run_errors
            .push(format!("cannot create {}: {error}", out.display()));
        print!("{}", report.render());
        return 1;
    }
    let out = std::fs::canonicalize(&out).unwrap_or(out);
    let cluster = match new_cluster(&args, tool, &out) {
        Ok(cluster) => cluster,
        Err(error) => {
            report.run_errors.push(format!("{error:#}"));
            print!("{}", report.render());
            return 1;
        }
    };
    eprintln!(
        "tributary-chaos: project {}, output {}",
        cluster.project,
        out.display()
    );
    let outcome = drive(&args, &cluster, &out, &mut report).await;
    if let Err(error) = outcome {
        report.run_errors.push(format!("{error:#}"));
    }
    cluster.save_logs(&out).await;
    if let Err(error) = cluster.down().await {
        report
            .run_errors
            .push(format!("could not remove the compose project: {error:#}"));
    }
    let text = report.render();
    let _ = std::fs::write(out.join("report.txt"), &text);
    let passed = report.passed();
    if passed && !args.keep {
        let _ = std::fs::remove_dir_all(&cluster.data_dir);
    } else {
        eprintln!(
            "tributary-chaos: kept node logs, data dirs and history in {} — replay with scripts/chaos --seed {seed} --duration {}",
            out.display(),
            args.duration
        );
    }
    print!("{text}");
    i32::from(!passed)
}

fn new_cluster(args: &RunArgs, tool: Vec<String>, out: &Path) -> Result<Cluster> {
    let file = std::fs::canonicalize(&args.compose_file)
        .with_context(|| format!("compose file {}", args.compose_file.display()))?;
    let pid = std::process::id();
    Ok(Cluster {
        tool,
        project: args
            .project
            .clone()
            .unwrap_or_else(|| format!("tributary-chaos-{pid}")),
        file,
        image: args.image.clone(),
        ports: [free_port()?, free_port()?, free_port()?],
        // A /24 of 10.213-10.250 picked per process so concurrent runs do not collide.
        net_prefix: format!("10.{}.{}", 213 + pid % 38, (pid / 38) % 250),
        data_dir: out.join("data"),
    })
}

async fn drive(args: &RunArgs, cluster: &Cluster, out: &Path, report: &mut Report) -> Result<()> {
    cluster.up().await?;
    let nodes = Nodes::new((1..=3).map(|id| cluster.endpoint(id)).collect());
    wait_healthy(&nodes, None, Duration::from_secs(120))
        .await
        .context("the fresh cluster")?;
    let stream = "chaos";
    let client = nodes.client(1).await.map_err(|e| anyhow!("{e}"))?;
    client
        .create_stream_with(stream, args.shards, &CreateStreamOptions::default())
        .await
        .map_err(|e| anyhow!("CreateStream: {e}"))?;
    client
        .wait_for_active(stream, Duration::from_secs(60))
        .await
        .map_err(|e| anyhow!("{e}"))?;

    let recorder = Arc::new(Recorder::create(&out.join("history.jsonl"))?);
    let work = Arc::new(Workload {
        stream: stream.into(),
        nodes: nodes.clone(),
        recorder: recorder.clone(),
        stop: Arc::new(AtomicBool::new(false)),
    });
    let faults = if args.smoke { Fault::SMOKE } else { Fault::ALL };
    let mut nemesis = Nemesis::new(
        cluster.clone(),
        nodes.clone(),
        stream,
        report.seed,
        faults,
        args.shards,
    )
    .await?;
    let mut tasks = Vec::new();
    for p in 1..=args.producers {
        tasks.push(tokio::spawn(workload::producer(
            work.clone(),
            p,
            report.seed,
        )));
    }
    let chain_ids = Arc::new(AtomicU64::new(1));
    for r in 1..=args.readers {
        tasks.push(tokio::spawn(workload::reader(
            work.clone(),
            100 + r,
            chain_ids.clone(),
        )));
    }
    // The workers outlive the producers and readers: they catch up after the drain.
    let (shutdown_workers, workers_shutdown) = tokio::sync::watch::channel(false);
    let workers: Vec<_> = (1..=args.workers)
        .map(|w| {
            tokio::spawn(consumer_group::worker(
                work.clone(),
                w,
                chain_ids.clone(),
                workers_shutdown.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    let hold = if args.smoke {
        4_000..9_000
    } else {
        5_000..20_000
    };
    nemesis
        .run(started + Duration::from_secs(args.duration), hold)
        .await;
    let left = Duration::from_secs(args.duration).saturating_sub(started.elapsed());
    tokio::time::sleep(left).await;
    eprintln!("tributary-chaos: faults over; healing");
    nemesis.heal_all().await;
    // Keep writing for a few seconds after the heal: a write-unavailability window that is
    // still open closes on the first acknowledged put.
    tokio::time::sleep(Duration::from_secs(5)).await;
    work.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        if tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .is_err()
        {
            report
                .run_errors
                .push("a client task did not stop within 30 s".into());
        }
    }
    report.faults = nemesis.tally.clone();
    report.run_errors.extend(nemesis.errors.iter().cloned());

    eprintln!("tributary-chaos: waiting for a healthy cluster, then draining every node");
    wait_healthy(&nodes, Some(stream), Duration::from_secs(120))
        .await
        .context("after the heal")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in 1..=3 {
        if let Err(error) = drain_node(&work, node, Duration::from_secs(120)).await {
            report
                .run_errors
                .push(format!("drain through node {node}: {error:#}"));
        }
    }
    if !workers.is_empty() {
        eprintln!("tributary-chaos: waiting for the consumer-group workers to catch up");
        if let Err(error) = consumer_group::wait_caught_up(&work, Duration::from_secs(120)).await {
            report.run_errors.push(format!("{error:#}"));
        }
    }
    let _ = shutdown_workers.send(true);
    for worker in workers {
        // Shutting down runs every processor's last checkpoint and releases the leases.
        if tokio::time::timeout(Duration::from_secs(60), worker)
            .await
            .is_err()
        {
            report
                .run_errors
                .push("a consumer-group worker did not shut down within 60 s".into());
        }
    }
    if args.workers > 0 {
        if let Err(error) =
            consumer_group::record_final_tables(&work, Duration::from_secs(30)).await
        {
            report.run_errors.push(format!("{error:#}"));
        }
    }
    let ops = recorder.snapshot();
    eprintln!("tributary-chaos: checking {} history entries", ops.len());
    report.findings = checker::check(&ops);
    Ok(())
}
