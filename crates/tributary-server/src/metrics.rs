//! Prometheus metrics: counters and histograms updated on the data path (atomics only), and
//! gauges read from raft, the logs and the subscription registry when scraped. Served as
//! text (exposition format 0.0.4) on `--metrics-listen`, `GET /metrics`.
//!
//! Names are `tributary_*`; per-shard series carry `stream` and `shard` labels. Counters
//! count what this node served: writes where the client's request arrived, reads where the
//! GetRecords or subscription ran.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tributary_proto::v1 as pb;

use crate::node::{role_name, with_metrics, Node};

/// Latency bucket bounds in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A fixed-bucket latency histogram.
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Observes the time until the returned guard is dropped (early returns included).
    pub fn start_timer(&self) -> Timer<'_> {
        Timer {
            histogram: self,
            started: std::time::Instant::now(),
        }
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Times one operation into a histogram when dropped.
pub struct Timer<'a> {
    histogram: &'a Histogram,
    started: std::time::Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed());
    }
}

/// Node-wide metrics updated on the data path.
pub struct NodeMetrics {
    /// PutRecord/PutRecords latency as this node answered them.
    pub put_latency: Histogram,
    /// GetRecords latency (long polls included).
    pub get_latency: Histogram,
    /// One fsync of one log by the flusher.
    pub fsync_latency: Histogram,
    /// Writes refused by a shard's quota.
    pub throttled_writes: AtomicU64,
    /// Reads refused by a shard's quota.
    pub throttled_reads: AtomicU64,
    /// SubscribeToShard streams open on this node.
    pub open_subscriptions: AtomicU64,
    /// Corrupt frames found by reads or scrubs.
    pub corrupt_frames_found: AtomicU64,
    /// Corrupt frames put back from a replica's copy.
    pub corrupt_frames_repaired: AtomicU64,
    /// Shard groups restarted from disk after their raft stopped on a storage error.
    pub group_restarts_after_error: AtomicU64,
    /// Writes refused because the data directory's free space was below the floor.
    pub writes_refused_disk_floor: AtomicU64,
    /// Free bytes on the data directory's filesystem at the last reading.
    pub disk_free_bytes: AtomicU64,
    /// Millis behind latest of each enhanced fan-out consumer's subscription, by
    /// (stream, consumer, shard), from its newest event.
    consumer_lag: Mutex<std::collections::BTreeMap<(String, String, String), u64>>,
}

/// The process's metrics (one node per process).
pub static METRICS: LazyLock<NodeMetrics> = LazyLock::new(|| NodeMetrics {
    put_latency: Histogram::new(),
    get_latency: Histogram::new(),
    fsync_latency: Histogram::new(),
    throttled_writes: AtomicU64::new(0),
    throttled_reads: AtomicU64::new(0),
    open_subscriptions: AtomicU64::new(0),
    corrupt_frames_found: AtomicU64::new(0),
    corrupt_frames_repaired: AtomicU64::new(0),
    group_restarts_after_error: AtomicU64::new(0),
    writes_refused_disk_floor: AtomicU64::new(0),
    disk_free_bytes: AtomicU64::new(0),
    consumer_lag: Mutex::new(Default::default()),
});

impl NodeMetrics {
    /// Records a fan-out consumer's lag in one shard.
    pub fn consumer_lag(&self, stream: &str, consumer: &str, shard: &str, millis: u64) {
        self.consumer_lag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((stream.into(), consumer.into(), shard.into()), millis);
    }

    /// Forgets a subscription's lag when it ends.
    pub fn forget_consumer(&self, stream: &str, consumer: &str, shard: &str) {
        self.consumer_lag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(stream.into(), consumer.into(), shard.into()));
    }
}

/// Per-shard traffic counters (held by each shard group on this node).
#[derive(Default)]
pub struct ShardTraffic {
    /// Records acknowledged to writers that called this node.
    pub records_in: AtomicU64,
    /// Their key and data bytes.
    pub bytes_in: AtomicU64,
    /// Records returned to readers (GetRecords and subscriptions) by this node.
    pub records_out: AtomicU64,
    /// Their data bytes.
    pub bytes_out: AtomicU64,
    /// MillisBehindLatest of the newest GetRecords answer served here.
    pub get_millis_behind: AtomicU64,
}

impl ShardTraffic {
    /// Counts records written.
    pub fn wrote(&self, records: u64, bytes: u64) {
        self.records_in.fetch_add(records, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts records read.
    pub fn read(&self, records: u64, bytes: u64) {
        self.records_out.fetch_add(records, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition text of a node.
pub fn render(node: &Node) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let m = &*METRICS;
    let node_id = node.config().node_id;

    help(
        &mut out,
        "tributary_put_latency_seconds",
        "histogram",
        "PutRecord/PutRecords latency as answered by this node.",
    );
    m.put_latency
        .render(&mut out, "tributary_put_latency_seconds", "");
    help(
        &mut out,
        "tributary_get_records_latency_seconds",
        "histogram",
        "GetRecords latency (long polls included).",
    );
    m.get_latency
        .render(&mut out, "tributary_get_records_latency_seconds", "");
    help(
        &mut out,
        "tributary_fsync_latency_seconds",
        "histogram",
        "One fsync of one shard log by the flusher.",
    );
    m.fsync_latency
        .render(&mut out, "tributary_fsync_latency_seconds", "");
    help(
        &mut out,
        "tributary_throttled_requests_total",
        "counter",
        "Requests refused by a shard quota.",
    );
    let _ = writeln!(
        out,
        "tributary_throttled_requests_total{{op=\"write\"}} {}",
        m.throttled_writes.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "tributary_throttled_requests_total{{op=\"read\"}} {}",
        m.throttled_reads.load(Ordering::Relaxed)
    );
    for (name, about, value) in [
        (
            "tributary_corrupt_frames_found_total",
            "Stored frames that failed their checksum on a read or a scrub.",
            &m.corrupt_frames_found,
        ),
        (
            "tributary_corrupt_frames_repaired_total",
            "Corrupt frames replaced by a verified copy from a replica.",
            &m.corrupt_frames_repaired,
        ),
        (
            "tributary_group_restarts_after_error_total",
            "Shard groups restarted from disk after a storage error stopped them.",
            &m.group_restarts_after_error,
        ),
        (
            "tributary_writes_refused_disk_floor_total",
            "Writes refused because free disk space was below min_free_disk_bytes.",
            &m.writes_refused_disk_floor,
        ),
    ] {
        help(&mut out, name, "counter", about);
        let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
    }
    node.disk_space().free_bytes();
    help(
        &mut out,
        "tributary_disk_free_bytes",
        "gauge",
        "Bytes free on the data directory's filesystem.",
    );
    let _ = writeln!(
        out,
        "tributary_disk_free_bytes {}",
        m.disk_free_bytes.load(Ordering::Relaxed)
    );

    let metadata = node.metadata().clone();
    let role = with_metrics(node.metadata_raft(), |r| role_name(r.state));
    help(
        &mut out,
        "tributary_metadata_leader",
        "gauge",
        "1 when this node leads the metadata group.",
    );
    let _ = writeln!(
        out,
        "tributary_metadata_leader{{node=\"{node_id}\"}} {}",
        u8::from(role == "leader")
    );
    help(
        &mut out,
        "tributary_streams",
        "gauge",
        "Streams in the cluster.",
    );
    let _ = writeln!(out, "tributary_streams {}", metadata.streams.len());

    let shards = node.shard_groups();
    let mut rows = Vec::with_capacity(shards.len());
    for group in &shards {
        let stream = metadata
            .stream_by_id(group.stream_id)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let labels = format!(
            "stream=\"{}\",shard=\"{}\"",
            label(&stream),
            crate::metadata::shard_id(group.shard_index)
        );
        rows.push((labels, group.clone()));
    }
    let counter = |out: &mut String,
                   name: &str,
                   text: &str,
                   value: &dyn Fn(&crate::node::ShardGroup) -> u64| {
        help(out, name, "counter", text);
        for (labels, group) in &rows {
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(group));
        }
    };
    counter(
        &mut out,
        "tributary_shard_incoming_records_total",
        "Records acknowledged to writers that called this node.",
        &|g| g.traffic.records_in.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "tributary_shard_incoming_bytes_total",
        "Key and data bytes acknowledged to writers that called this node.",
        &|g| g.traffic.bytes_in.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "tributary_shard_outgoing_records_total",
        "Records this node returned to readers (GetRecords and subscriptions).",
        &|g| g.traffic.records_out.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "tributary_shard_outgoing_bytes_total",
        "Data bytes this node returned to readers.",
        &|g| g.traffic.bytes_out.load(Ordering::Relaxed),
    );
    let gauge = |out: &mut String,
                 name: &str,
                 text: &str,
                 value: &dyn Fn(&crate::node::ShardGroup) -> u64| {
        help(out, name, "gauge", text);
        for (labels, group) in &rows {
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(group));
        }
    };
    gauge(
        &mut out,
        "tributary_shard_get_records_millis_behind_latest",
        "MillisBehindLatest of the newest GetRecords answer this node served.",
        &|g| g.traffic.get_millis_behind.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "tributary_shard_segments",
        "Segment files of the shard's log on this node.",
        &|g| g.log.log().segment_count() as u64,
    );
    gauge(
        &mut out,
        "tributary_shard_disk_bytes",
        "Bytes of the shard's log on this node.",
        &|g| g.log.log().disk_bytes(),
    );
    gauge(
        &mut out,
        "tributary_shard_leader",
        "1 when this node leads the shard's raft group.",
        &|g| u64::from(with_metrics(&g.raft, |r| r.current_leader == Some(node_id))),
    );
    gauge(
        &mut out,
        "tributary_shard_raft_term",
        "The shard group's current raft term.",
        &|g| with_metrics(&g.raft, |r| r.current_term),
    );
    gauge(
        &mut out,
        "tributary_shard_last_log_index",
        "Newest log index of the shard on this node.",
        &|g| with_metrics(&g.raft, |r| r.last_log_index.unwrap_or(0)),
    );
    gauge(
        &mut out,
        "tributary_shard_applied_index",
        "Newest applied (committed) index of the shard on this node.",
        &|g| g.tip.borrow().applied_index,
    );

    help(
        &mut out,
        "tributary_shard_follower_lag_entries",
        "gauge",
        "On the leader: entries each follower is behind the leader's log.",
    );
    for (labels, group) in &rows {
        for (follower, lag) in follower_lags(group, node_id) {
            let _ = writeln!(
                out,
                "tributary_shard_follower_lag_entries{{{labels},follower=\"{follower}\"}} {lag}"
            );
        }
    }

    help(
        &mut out,
        "tributary_consumer_millis_behind_latest",
        "gauge",
        "Enhanced fan-out consumers: millis behind latest of each subscription served here.",
    );
    for ((stream, consumer, shard), millis) in m
        .consumer_lag
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "tributary_consumer_millis_behind_latest{{stream=\"{}\",consumer=\"{}\",shard=\"{shard}\"}} {millis}",
            label(stream),
            label(consumer)
        );
    }
    help(
        &mut out,
        "tributary_open_subscriptions",
        "gauge",
        "SubscribeToShard streams open on this node.",
    );
    let _ = writeln!(
        out,
        "tributary_open_subscriptions {}",
        m.open_subscriptions.load(Ordering::Relaxed)
    );
    out
}

/// Serves `GET /metrics` on `addr` until the node stops. A minimal HTTP/1.1 responder:
/// one request per connection.
pub async fn serve(addr: SocketAddr, node: Arc<Node>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))?;
    tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            let node = node.clone();
            tokio::spawn(async move {
                let mut request = Vec::with_capacity(1024);
                let mut buf = [0u8; 1024];
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                })
                .await;
                if read.is_err() {
                    return;
                }
                let line = String::from_utf8_lossy(&request);
                let first = line.lines().next().unwrap_or_default();
                let (status, body) = if first.starts_with("GET /metrics ") {
                    ("200 OK", render(&node))
                } else if first.starts_with("GET / ") {
                    ("200 OK", "tributary metrics: GET /metrics\n".to_string())
                } else {
                    (
                        "404 Not Found",
                        "only GET /metrics is served here\n".to_string(),
                    )
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok(())
}

/// On a shard's leader: how many entries each follower is behind the leader's log (empty on
/// a follower).
pub fn follower_lags(group: &crate::node::ShardGroup, me: u64) -> Vec<(u64, u64)> {
    with_metrics(&group.raft, |r| {
        let last = r.last_log_index.unwrap_or(0);
        r.replication
            .as_ref()
            .map(|map| {
                map.iter()
                    .filter(|(id, _)| **id != me)
                    .map(|(id, matched)| {
                        (
                            *id,
                            last.saturating_sub(matched.as_ref().map_or(0, |m| m.index)),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// This node's figures for one shard replica (`GetShardStats`; the same sources as the
/// Prometheus series above).
pub fn shard_stats(group: &crate::node::ShardGroup, me: u64, open: bool) -> pb::ShardStats {
    let (leader_node_id, raft_term, last_log_index) = with_metrics(&group.raft, |r| {
        (
            r.current_leader.unwrap_or(0),
            r.current_term,
            r.last_log_index.unwrap_or(0),
        )
    });
    let tip = *group.tip.borrow();
    let traffic = &group.traffic;
    pb::ShardStats {
        shard_id: crate::metadata::shard_id(group.shard_index),
        state: if open { "open" } else { "closed" }.to_string(),
        leader_node_id,
        leader: leader_node_id == me,
        raft_term,
        last_log_index,
        applied_index: tip.applied_index,
        incoming_records: traffic.records_in.load(Ordering::Relaxed),
        incoming_bytes: traffic.bytes_in.load(Ordering::Relaxed),
        outgoing_records: traffic.records_out.load(Ordering::Relaxed),
        outgoing_bytes: traffic.bytes_out.load(Ordering::Relaxed),
        millis_behind_latest: traffic.get_millis_behind.load(Ordering::Relaxed),
        segments: group.log.log().segment_count() as u32,
        disk_bytes: group.log.log().disk_bytes(),
        follower_lag: follower_lags(group, me).into_iter().collect(),
        last_record_ms: tip.last_record_ms,
    }
}
