//! The server processes a run starts: spawning, sampling their CPU, memory and disk writes
//! from /proc, and killing them by PID (never by name) when done or interrupted.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use serde::Serialize;

/// PIDs and temp dirs to clean up if the harness is interrupted (Ctrl-C).
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Kills every child still registered and removes the data dirs (Ctrl-C handler).
pub fn kill_all_registered() {
    if let Ok(pids) = LIVE.lock() {
        for pid in pids.iter() {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
    }
    if let Ok(dirs) = DIRS.lock() {
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A port nobody listens on right now (bind to 0, read, release).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// One server process.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// What /proc says about a process at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub cpu_ticks: u64,
    pub write_bytes: u64,
    pub peak_rss_kb: u64,
}

/// Per-node figures over a measured interval.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct NodeFigures {
    pub name: String,
    pub pid: u32,
    /// CPU seconds (user + system, all threads) used in the interval.
    pub cpu_secs: f64,
    /// The same as a percentage of one core.
    pub cpu_pct_of_core: f64,
    /// Peak resident memory since the process started (VmHWM), MiB.
    pub peak_rss_mib: f64,
    /// Bytes the process caused to be written to storage in the interval
    /// (/proc/PID/io write_bytes: page-cache writes that reach the disk, fsync or not).
    pub disk_write_bytes: u64,
    /// Size of its data dir at the end of the interval.
    pub data_dir_bytes: u64,
}

/// The processes of one cluster, with their temp dir (removed on drop).
pub struct Procs {
    pub procs: Vec<Proc>,
    pub dir: tempfile::TempDir,
    clk_tck: f64,
}

impl Procs {
    pub fn new(prefix: &str) -> anyhow::Result<Procs> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        if let Ok(mut dirs) = DIRS.lock() {
            dirs.push(dir.path().to_path_buf());
        }
        Ok(Procs {
            procs: Vec::new(),
            dir,
            clk_tck: clock_ticks(),
        })
    }

    /// Starts `command` (stdout and stderr to `<dir>/<name>.log`).
    pub fn spawn(
        &mut self,
        name: &str,
        data_dir: &Path,
        mut command: Command,
    ) -> anyhow::Result<()> {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
        if let Ok(mut live) = LIVE.lock() {
            live.push(child.id());
        }
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
            data_dir: data_dir.to_path_buf(),
            log,
        });
        Ok(())
    }

    /// Fails (with the tail of its log) when a process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for proc in &mut self.procs {
            if let Ok(Some(status)) = proc.child.try_wait() {
                let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                anyhow::bail!("{} exited with {status}; its log ends:\n{tail}", proc.name);
            }
        }
        Ok(())
    }

    pub fn sample(&self) -> Vec<Sample> {
        self.procs.iter().map(|p| sample(p.child.id())).collect()
    }

    /// Figures per node between two samples taken `secs` apart.
    pub fn figures(&self, before: &[Sample], after: &[Sample], secs: f64) -> Vec<NodeFigures> {
        self.procs
            .iter()
            .zip(before.iter().zip(after))
            .map(|(proc, (b, a))| {
                let cpu_secs = a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / self.clk_tck;
                NodeFigures {
                    name: proc.name.clone(),
                    pid: proc.child.id(),
                    cpu_secs,
                    cpu_pct_of_core: if secs > 0.0 {
                        100.0 * cpu_secs / secs
                    } else {
                        0.0
                    },
                    peak_rss_mib: a.peak_rss_kb as f64 / 1024.0,
                    disk_write_bytes: a.write_bytes.saturating_sub(b.write_bytes),
                    data_dir_bytes: dir_bytes(&proc.data_dir),
                }
            })
            .collect()
    }

    /// Kills every process (by PID) and waits for it.
    pub fn stop(&mut self) {
        for proc in &mut self.procs {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
            if let Ok(mut live) = LIVE.lock() {
                live.retain(|pid| *pid != proc.child.id());
            }
        }
        self.procs.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop();
        if let Ok(mut dirs) = DIRS.lock() {
            dirs.retain(|d| d != self.dir.path());
        }
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

fn sample(pid: u32) -> Sample {
    let mut sample = Sample::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the command name (which may contain spaces) start at field 3.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 overall, 12 and 13 after ')'.
            let utime = fields
                .get(11)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
            let stime = fields
                .get(12)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
            sample.cpu_ticks = utime + stime;
        }
    }
    if let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
        sample.write_bytes = field(&io, "write_bytes:");
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        sample.peak_rss_kb = field(&status, "VmHWM:");
    }
    sample
}

fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
