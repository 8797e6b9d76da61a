//! Log engine micro-benchmarks: append throughput with different sync policies, and sequential
//! read throughput.
//!
//! Batches are 64 KiB (64 records of 1 KiB), like a busy shard's raft entries. The log lives in
//! Cargo's per-target temp dir (on the build disk, not a tmpfs), because fsync cost is the point.
//!
//! Run: `cargo bench -p tributary-bench --bench log_engine` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tributary_log::{Batch, Log, LogConfig};

const RECORD_BYTES: usize = 1024;
const RECORDS_PER_BATCH: u32 = 64;
const BATCH_BYTES: usize = RECORD_BYTES * RECORDS_PER_BATCH as usize;
const GROUP_COMMIT: u64 = 16;

fn bench_dir() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tempfile::Builder::new()
        .prefix("log_engine-")
        .tempdir_in(base)
        .expect("create a bench directory under CARGO_TARGET_TMPDIR")
}

fn payload() -> Bytes {
    Bytes::from((0..BATCH_BYTES).map(|i| (i * 7) as u8).collect::<Vec<u8>>())
}

/// Appends batches with consecutive indexes to one log.
struct Appender {
    log: Log,
    next: u64,
    payload: Bytes,
    _dir: tempfile::TempDir,
}

impl Appender {
    fn new() -> Self {
        let dir = bench_dir();
        let (log, _) = Log::open(dir.path(), LogConfig::default()).expect("open bench log");
        Self {
            log,
            next: 1,
            payload: payload(),
            _dir: dir,
        }
    }

    fn append_one(&mut self) {
        let batch = Batch {
            index: self.next,
            timestamp_ms: self.next as i64,
            record_count: RECORDS_PER_BATCH,
            payload: self.payload.clone(),
        };
        self.log.append(&[batch]).expect("append");
        self.next += 1;
    }
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_64KiB_batches");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));

    group.throughput(Throughput::Bytes(BATCH_BYTES as u64));
    let mut appender = Appender::new();
    group.bench_function("sync_every_batch", |b| {
        b.iter(|| {
            appender.append_one();
            black_box(appender.log.sync().expect("sync"));
        })
    });

    group.throughput(Throughput::Bytes(BATCH_BYTES as u64 * GROUP_COMMIT));
    let mut appender = Appender::new();
    group.bench_function("sync_every_16_batches", |b| {
        b.iter(|| {
            for _ in 0..GROUP_COMMIT {
                appender.append_one();
            }
            black_box(appender.log.sync().expect("sync"));
        })
    });

    group.throughput(Throughput::Bytes(BATCH_BYTES as u64));
    let mut appender = Appender::new();
    group.bench_function("no_sync_page_cache_only", |b| {
        b.iter(|| appender.append_one())
    });
    group.finish();
}

fn sequential_read(c: &mut Criterion) {
    const BATCHES: u64 = 512; // 32 MiB
    let mut appender = Appender::new();
    for _ in 0..BATCHES {
        appender.append_one();
    }
    appender.log.sync().expect("sync");
    let log = &appender.log;

    let mut group = c.benchmark_group("sequential_read");
    group.sample_size(20);
    group.throughput(Throughput::Bytes(BATCH_BYTES as u64 * BATCHES));
    group.bench_function("whole_log_1MiB_reads", |b| {
        b.iter(|| {
            let mut from = 1;
            let mut bytes = 0;
            while from <= BATCHES {
                let batches = log.read(from, usize::MAX, 1 << 20).expect("read");
                from += batches.len() as u64;
                bytes += batches.iter().map(|b| b.payload.len()).sum::<usize>();
            }
            black_box(bytes)
        })
    });
    group.finish();
}

criterion_group!(benches, append, sequential_read);
criterion_main!(benches);
