//! Design question: per-shard segment files, or one node-wide file shared by all shards?
//!
//! For K active shards, each commit window appends one batch (4 KiB by default) per shard and then
//! makes the window durable:
//! - `per-shard serial`:   K files, then fdatasync each of the K files one after another;
//! - `per-shard parallel`: K files, each fdatasynced by its own thread at the same time (what
//!   independent shard raft loops do);
//! - `node-wide`:          one file gets the K appends, then one fdatasync.
//!
//! Usage: `fsync_layout [--dir DIR] [--windows N] [--shards 1,4,16,64] [--batch-bytes 4096]`.
//! The default directory is a temp dir under the current directory, not /tmp (often a tmpfs,
//! where fsync does nothing); the filesystem type is printed and a tmpfs is refused.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

struct Args {
    dir: Option<PathBuf>,
    windows: usize,
    shards: Vec<usize>,
    batch_bytes: usize,
}

fn usage() -> String {
    "usage: fsync_layout [--dir DIR] [--windows N] [--shards 1,4,16,64] [--batch-bytes 4096]"
        .to_owned()
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dir: None,
        windows: 100,
        shards: vec![1, 4, 16, 64],
        batch_bytes: 4096,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))
        };
        match flag.as_str() {
            "--dir" => args.dir = Some(PathBuf::from(value()?)),
            "--windows" => {
                args.windows = value()?.parse().map_err(|e| format!("--windows: {e}"))?
            }
            "--batch-bytes" => {
                args.batch_bytes = value()?
                    .parse()
                    .map_err(|e| format!("--batch-bytes: {e}"))?
            }
            "--shards" => {
                args.shards = value()?
                    .split(',')
                    .map(|k| k.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--shards: {e}"))?
            }
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    if args.windows == 0 || args.batch_bytes == 0 || args.shards.contains(&0) {
        return Err(
            "--windows, --batch-bytes and every --shards value must be positive".to_owned(),
        );
    }
    Ok(args)
}

/// The filesystem type and device holding `dir`, from /proc/mounts (longest matching mount).
fn filesystem_of(dir: &Path) -> Option<(String, String, String)> {
    let dir = fs::canonicalize(dir).ok()?;
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (device, mount, fstype) = (parts.next()?, parts.next()?, parts.next()?);
            dir.starts_with(mount)
                .then(|| (mount.to_owned(), fstype.to_owned(), device.to_owned()))
        })
        .max_by_key(|(mount, _, _)| mount.len())
        .map(|(mount, fstype, device)| (fstype, device, mount))
}

#[derive(Clone, Copy)]
enum Layout {
    PerShardSerial,
    PerShardParallel,
    NodeWide,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::PerShardSerial => "per-shard serial",
            Layout::PerShardParallel => "per-shard parallel",
            Layout::NodeWide => "node-wide",
        }
    }
}

struct Outcome {
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn create(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

fn run(
    dir: &Path,
    layout: Layout,
    shards: usize,
    windows: usize,
    batch: &[u8],
) -> std::io::Result<Outcome> {
    let len = batch.len() as u64;
    let mut latencies = Vec::with_capacity(windows);
    let start = Instant::now();
    match layout {
        Layout::PerShardSerial => {
            let files = (0..shards)
                .map(|k| create(&dir.join(format!("shard-{k}.seg"))))
                .collect::<std::io::Result<Vec<_>>>()?;
            for w in 0..windows as u64 {
                let t = Instant::now();
                for file in &files {
                    file.write_all_at(batch, w * len)?;
                }
                for file in &files {
                    file.sync_data()?;
                }
                latencies.push(t.elapsed());
            }
        }
        Layout::PerShardParallel => {
            // One long-lived thread per shard; two barriers delimit each window.
            let begin = Arc::new(Barrier::new(shards + 1));
            let end = Arc::new(Barrier::new(shards + 1));
            let handles = (0..shards)
                .map(|k| {
                    let file = create(&dir.join(format!("shard-{k}.seg")))?;
                    let (begin, end, batch) = (begin.clone(), end.clone(), batch.to_vec());
                    Ok(thread::spawn(move || -> std::io::Result<()> {
                        let mut result = Ok(());
                        for w in 0..windows as u64 {
                            begin.wait();
                            if result.is_ok() {
                                result = file
                                    .write_all_at(&batch, w * len)
                                    .and_then(|()| file.sync_data());
                            }
                            end.wait();
                        }
                        result
                    }))
                })
                .collect::<std::io::Result<Vec<_>>>()?;
            for _ in 0..windows {
                let t = Instant::now();
                begin.wait();
                end.wait();
                latencies.push(t.elapsed());
            }
            for handle in handles {
                handle
                    .join()
                    .map_err(|_| std::io::Error::other("shard thread panicked"))??;
            }
        }
        Layout::NodeWide => {
            let file = create(&dir.join("node.seg"))?;
            let mut offset = 0;
            for _ in 0..windows {
                let t = Instant::now();
                for _ in 0..shards {
                    file.write_all_at(batch, offset)?;
                    offset += len;
                }
                file.sync_data()?;
                latencies.push(t.elapsed());
            }
        }
    }
    let elapsed = start.elapsed();
    for entry in fs::read_dir(dir)? {
        fs::remove_file(entry?.path())?;
    }
    Ok(Outcome { elapsed, latencies })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    let (_guard, dir) = match &args.dir {
        Some(dir) => {
            fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            let run_dir = tempfile::Builder::new()
                .prefix("fsync-layout-")
                .tempdir_in(dir)
                .map_err(|e| format!("temp dir in {}: {e}", dir.display()))?;
            let path = fs::canonicalize(run_dir.path()).map_err(|e| e.to_string())?;
            (run_dir, path)
        }
        None => {
            let run_dir = tempfile::Builder::new()
                .prefix("fsync-layout-")
                .tempdir_in(".")
                .map_err(|e| format!("temp dir in the current directory: {e}"))?;
            let path = fs::canonicalize(run_dir.path()).map_err(|e| e.to_string())?;
            (run_dir, path)
        }
    };
    match filesystem_of(&dir) {
        Some((fstype, _, _)) if fstype == "tmpfs" || fstype == "ramfs" => {
            return Err(format!(
                "{} is on {fstype}, where fsync does nothing; pass --dir on a real disk",
                dir.display()
            ));
        }
        Some((fstype, device, mount)) => {
            println!(
                "directory: {} ({fstype} on {device}, mounted at {mount})",
                dir.display()
            )
        }
        None => println!("directory: {} (filesystem unknown)", dir.display()),
    }
    println!(
        "{} windows per run, one {}-byte batch per shard per window, fdatasync\n",
        args.windows, args.batch_bytes
    );
    println!(
        "{:>4}  {:<19} {:>10} {:>9} {:>11} {:>10} {:>10}",
        "K", "layout", "windows/s", "MB/s", "mean ms", "p50 ms", "p99 ms"
    );
    let batch: Vec<u8> = (0..args.batch_bytes).map(|i| (i * 31) as u8).collect();
    for &k in &args.shards {
        for layout in [
            Layout::PerShardSerial,
            Layout::PerShardParallel,
            Layout::NodeWide,
        ] {
            let outcome = run(&dir, layout, k, args.windows, &batch)
                .map_err(|e| format!("{} K={k}: {e}", layout.name()))?;
            let secs = outcome.elapsed.as_secs_f64();
            let mut sorted = outcome.latencies.clone();
            sorted.sort();
            let mean = sorted.iter().sum::<Duration>() / sorted.len() as u32;
            let bytes = (args.windows * k * args.batch_bytes) as f64;
            println!(
                "{:>4}  {:<19} {:>10.1} {:>9.2} {:>11.3} {:>10.3} {:>10.3}",
                k,
                layout.name(),
                args.windows as f64 / secs,
                bytes / secs / 1e6,
                mean.as_secs_f64() * 1e3,
                percentile(&sorted, 0.5).as_secs_f64() * 1e3,
                percentile(&sorted, 0.99).as_secs_f64() * 1e3,
            );
        }
    }
    Ok(())
}
