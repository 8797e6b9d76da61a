//! The machine's own ceilings, measured the same way every time so results from different
//! machines can be read against them: fdatasync latency, loopback TCP bandwidth, memcpy
//! bandwidth.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Serialize)]
pub struct Ceilings {
    pub cores: usize,
    pub cpu_model: String,
    /// Mean and p99 of write(4 KiB) + fdatasync, appending to one file.
    pub fdatasync_4k_mean_us: f64,
    pub fdatasync_4k_p99_us: f64,
    /// Sequential MB/s appending 64 KiB writes, each followed by fdatasync.
    pub fdatasync_64k_mb_per_sec: f64,
    /// One TCP connection on 127.0.0.1, 1 MiB writes.
    pub loopback_tcp_mb_per_sec: f64,
    /// Copying a 64 MiB buffer, one thread.
    pub memcpy_mb_per_sec: f64,
}

pub async fn measure(dir: &Path) -> anyhow::Result<Ceilings> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let (mean, p99) = fdatasync_latency(dir, 4096, 1000)?;
    let big = fdatasync_throughput(dir, 65536, 2000)?;
    Ok(Ceilings {
        cores,
        cpu_model,
        fdatasync_4k_mean_us: mean,
        fdatasync_4k_p99_us: p99,
        fdatasync_64k_mb_per_sec: big,
        loopback_tcp_mb_per_sec: loopback().await?,
        memcpy_mb_per_sec: memcpy(),
    })
}

fn fdatasync_latency(dir: &Path, size: usize, count: usize) -> anyhow::Result<(f64, f64)> {
    let path = dir.join("ceilings-fdatasync");
    let mut file = std::fs::File::create(&path)?;
    let buf = vec![7u8; size];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        file.write_all(&buf)?;
        file.sync_data()?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    std::fs::remove_file(&path)?;
    samples.sort_by(f64::total_cmp);
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
    Ok((mean, p99))
}

fn fdatasync_throughput(dir: &Path, size: usize, count: usize) -> anyhow::Result<f64> {
    let path = dir.join("ceilings-fdatasync-big");
    let mut file = std::fs::File::create(&path)?;
    let buf = vec![7u8; size];
    let started = Instant::now();
    for _ in 0..count {
        file.write_all(&buf)?;
        file.sync_data()?;
    }
    let secs = started.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok((size * count) as f64 / secs / 1e6)
}

async fn loopback() -> anyhow::Result<f64> {
    const TOTAL: usize = 2 << 30;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < TOTAL {
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        anyhow::Ok(got)
    });
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    let buf = vec![1u8; 1 << 20];
    let started = Instant::now();
    let mut sent = 0;
    while sent < TOTAL {
        socket.write_all(&buf).await?;
        sent += buf.len();
    }
    socket.flush().await?;
    let got = reader.await??;
    Ok(got as f64 / started.elapsed().as_secs_f64() / 1e6)
}

fn memcpy() -> f64 {
    let source = vec![3u8; 64 << 20];
    let mut target = vec![0u8; 64 << 20];
    let started = Instant::now();
    let mut copied = 0usize;
    while started.elapsed() < Duration::from_secs(1) {
        target.copy_from_slice(&source);
        std::hint::black_box(&mut target);
        copied += source.len();
    }
    copied as f64 / started.elapsed().as_secs_f64() / 1e6
}

impl Ceilings {
    pub fn markdown(&self) -> String {
        format!(
            "{} cores ({}); write 4 KiB + fdatasync: mean {:.0} µs, p99 {:.0} µs; 64 KiB appends \
             each fdatasync'ed: {:.0} MB/s; loopback TCP (one connection): {:.0} MB/s; memcpy \
             (one thread): {:.0} MB/s",
            self.cores,
            self.cpu_model,
            self.fdatasync_4k_mean_us,
            self.fdatasync_4k_p99_us,
            self.fdatasync_64k_mb_per_sec,
            self.loopback_tcp_mb_per_sec,
            self.memcpy_mb_per_sec
        )
    }
}
