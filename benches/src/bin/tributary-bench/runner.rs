//! One workload against one running cluster: open-loop producers on a schedule, optional
//! readers, a warmup then a measured window (with /proc samples of the servers at both
//! ends), then the optional backlog/catch-up phase.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use crate::backend::{send_batch, Cluster, Target};
use crate::report::{CatchUp, Produce, RunReport};
use crate::stats::{PayloadMaker, Stats};
use crate::workload::Workload;

/// Runs `w` on `cluster`; stream names start with `name`.
pub async fn run(cluster: &mut Cluster, w: &Workload, name: &str) -> anyhow::Result<RunReport> {
    w.validate()?;
    let mut report = RunReport::new(cluster.system, w);
    if w.duration_secs > 0 {
        let targets = Arc::new(cluster.prepare(name, w).await?);
        let warmup = Duration::from_secs(w.warmup_secs);
        let duration = Duration::from_secs(w.duration_secs);
        // Nothing is measured until the window is set, once readers are in place.
        let stats = Arc::new(Stats::new(Instant::now(), Duration::ZERO, Duration::ZERO));
        let consumers = cluster.start_consumers(&targets, w, stats.clone()).await?;
        if !consumers.is_empty() {
            // Let subscriptions and first polls open before records flow.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let start = Instant::now();
        stats.set_window(start.duration_since(stats.start) + warmup, duration);
        let stop = Arc::new(AtomicBool::new(false));
        let producers = spawn_producers(cluster, &targets, w, &stats, &stop, None).await?;
        tokio::time::sleep_until((start + warmup).into()).await;
        let before = cluster.procs.sample();
        let measured_from = Instant::now();
        tokio::time::sleep_until((start + warmup + duration).into()).await;
        let after = cluster.procs.sample();
        let secs = measured_from.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for producer in producers {
            producer.await??;
        }
        // Give readers a moment for the window's last records.
        let acked = stats.acked_records.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !consumers.is_empty()
            && stats.consumed_in_window.load(Ordering::Relaxed) < acked
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for consumer in &consumers {
            consumer.abort();
        }
        cluster.procs.check_running()?;
        let nodes = cluster.procs.figures(&before, &after, secs);
        let acked_bytes = stats.acked_bytes.load(Ordering::Relaxed);
        let written: u64 = nodes.iter().map(|n| n.disk_write_bytes).sum();
        report.write_amplification =
            (acked_bytes > 0).then(|| written as f64 / (acked_bytes as f64 * 3.0));
        report.produce = Some(Produce {
            measured_secs: secs,
            acked_records: acked,
            acked_bytes,
            records_per_sec: acked as f64 / secs,
            mb_per_sec: acked_bytes as f64 / secs / 1e6,
            errors: stats.errors.load(Ordering::Relaxed),
            first_error: stats.first_error(),
            latency: stats.produce_latency(),
            publish_delay: (w.rate > 0).then(|| stats.delay_percentiles()),
        });
        if !consumers.is_empty() {
            report.consumed_in_window = Some(stats.consumed_in_window.load(Ordering::Relaxed));
            report.end_to_end = Some(stats.e2e_latency());
        }
        report.nodes = nodes;
    }
    if w.backlog_mb > 0 {
        report.catch_up = Some(catch_up(cluster, w, name).await?);
    }
    Ok(report)
}

async fn catch_up(cluster: &mut Cluster, w: &Workload, name: &str) -> anyhow::Result<CatchUp> {
    let backlog = Workload {
        rate: 0,
        consumers: crate::workload::ConsumerMode::None,
        ..w.clone()
    };
    let targets = Arc::new(
        cluster
            .prepare(&format!("{name}-backlog"), &backlog)
            .await?,
    );
    let records = (w.backlog_mb * 1_000_000).div_ceil(w.record_size as u64);
    let stats = Arc::new(Stats::new(
        Instant::now(),
        Duration::ZERO,
        Duration::from_secs(365 * 24 * 3600),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let producers =
        spawn_producers(cluster, &targets, &backlog, &stats, &stop, Some(records)).await?;
    for producer in producers {
        producer.await??;
    }
    let write_secs = started.elapsed().as_secs_f64();
    let written_bytes = stats.acked_bytes.load(Ordering::Relaxed);
    // Let followers apply the tail before reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cluster.procs.sample();
    let read_started = Instant::now();
    let (read_records, read_bytes) = cluster.catch_up(&targets).await?;
    let read_secs = read_started.elapsed().as_secs_f64();
    let after = cluster.procs.sample();
    cluster.procs.check_running()?;
    if read_records < stats.acked_total.load(Ordering::Relaxed) {
        eprintln!(
            "warning: catch-up read {read_records} records; {} were acknowledged",
            stats.acked_total.load(Ordering::Relaxed)
        );
    }
    Ok(CatchUp {
        backlog_bytes: written_bytes,
        backlog_write_secs: write_secs,
        backlog_write_mb_per_sec: written_bytes as f64 / write_secs / 1e6,
        read_records,
        read_bytes,
        read_secs,
        read_mb_per_sec: read_bytes as f64 / read_secs / 1e6,
        nodes: cluster.procs.figures(&before, &after, read_secs),
    })
}

/// Starts `w.producers` producer tasks. Each stops when `stop` is set or, with `budget`,
/// once the producers together have sent that many records.
async fn spawn_producers(
    cluster: &Cluster,
    targets: &Arc<Vec<Target>>,
    w: &Workload,
    stats: &Arc<Stats>,
    stop: &Arc<AtomicBool>,
    budget: Option<u64>,
) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<()>>>> {
    let remaining = Arc::new(AtomicI64::new(
        budget.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX)),
    ));
    let mut handles = Vec::new();
    for p in 0..w.producers {
        let conns = cluster.connect().await?;
        let targets = targets.clone();
        let stats = stats.clone();
        let stop = stop.clone();
        let remaining = remaining.clone();
        let w = w.clone();
        handles.push(tokio::spawn(async move {
            producer(p, conns, targets, w, stats, stop, remaining).await;
            anyhow::Ok(())
        }));
    }
    Ok(handles)
}

async fn producer(
    p: u32,
    conns: crate::backend::Conns,
    targets: Arc<Vec<Target>>,
    w: Workload,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    remaining: Arc<AtomicI64>,
) {
    let conns = Arc::new(conns);
    let in_flight = Arc::new(Semaphore::new(w.in_flight));
    let mut maker = PayloadMaker::new(w.record_size, p);
    let batch = w.batch_records as u64;
    // Each producer's share of the rate; its records are due at start + i * interval.
    let interval =
        (w.rate > 0).then(|| Duration::from_secs_f64(f64::from(w.producers) / w.rate as f64));
    let linger = Duration::from_secs_f64(w.linger_ms / 1000.0);
    let start = Instant::now();
    let mut next: u64 = 0;
    let mut cursor = p as usize;
    let mut tasks = JoinSet::new();
    while !stop.load(Ordering::Relaxed) {
        // Sleep until the batch's scheduled time (its first record due, plus linger, or the
        // moment it would be full), then wait for an in-flight slot.
        let scheduled = match interval {
            Some(interval) => {
                let due = |i: u64| start + interval.mul_f64(i as f64);
                let close = (due(next) + linger).min(due(next + batch - 1));
                tokio::time::sleep_until(close.into()).await;
                close
            }
            None => Instant::now(),
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Everything due by now goes out (a producer that fell behind sends full batches).
        let count = match interval {
            Some(interval) => {
                let due_now = (Instant::now().duration_since(start).as_secs_f64()
                    / interval.as_secs_f64())
                .floor() as u64
                    + 1;
                due_now.saturating_sub(next).clamp(1, batch)
            }
            None => batch,
        };
        let left = remaining.fetch_sub(count as i64, Ordering::Relaxed);
        if left <= 0 {
            break;
        }
        let count = count.min(left as u64);
        let sent = Instant::now();
        let sent_us = stats.now_us();
        if interval.is_some() {
            let delay = sent.saturating_duration_since(scheduled).as_micros() as u64;
            stats.publish_delay(sent_us, delay, count);
        }
        let payloads = (0..count).map(|_| maker.make(sent_us)).collect();
        let target = targets[cursor % targets.len()].clone();
        cursor += 1;
        let conns = conns.clone();
        let stats = stats.clone();
        tasks.spawn(async move {
            send_batch(&conns, &target, payloads, sent_us, &stats).await;
            drop(permit);
        });
        next += count;
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}
