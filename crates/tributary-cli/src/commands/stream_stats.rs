//! `trib stream stats STREAM`: per-shard figures gathered from every node.
//!
//! Each node reports what it served and where its replica stands (`GetShardStats`). The
//! command asks every node twice, `--interval` apart, adds the traffic counters up (each
//! node counts the calls it answered) and divides the difference by the interval; raft
//! figures come from the replica that leads the shard, disk use is the largest replica's.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use serde::Serialize;
use tributary_client::Client;
use tributary_proto::v1::{GetShardStatsResponse, ShardStats};

use super::Context;
use crate::output::{write_json_line, OutputFormat, Table};

/// One shard, summed over the nodes that answered.
#[derive(Debug, Default, Serialize)]
struct ShardFigures {
    shard_id: String,
    state: String,
    /// The leader the replicas report (0: none known).
    leader: u64,
    /// Replicas that answered.
    replicas: u32,
    /// The leader's applied index (the highest any replica reports when no leader answered).
    applied_index: u64,
    incoming_records_per_sec: f64,
    incoming_bytes_per_sec: f64,
    outgoing_records_per_sec: f64,
    outgoing_bytes_per_sec: f64,
    incoming_records_total: u64,
    outgoing_records_total: u64,
    /// The largest MillisBehindLatest a node served (GetRecords readers).
    millis_behind_latest: u64,
    /// On the leader: the farthest follower's distance, in entries.
    max_follower_lag: u64,
    /// The largest replica's log.
    disk_bytes: u64,
    segments: u32,
    /// Arrival time of the newest record (ms since the epoch), 0 when none.
    last_record_ms: i64,
}

/// Every node's answer, by node id; nodes that do not answer are left out (and named).
async fn sample(
    nodes: &[(u64, String)],
    stream: &str,
) -> (BTreeMap<u64, GetShardStatsResponse>, Vec<String>) {
    let mut answers = BTreeMap::new();
    let mut missing = Vec::new();
    for (id, address) in nodes {
        let answer = match Client::connect(address).await {
            Ok(client) => client.shard_stats(stream).await,
            Err(err) => Err(err),
        };
        match answer {
            Ok(stats) => {
                answers.insert(*id, stats);
            }
            Err(err) => missing.push(format!("node {id} ({address}): {err}")),
        }
    }
    (answers, missing)
}

fn totals(answers: &BTreeMap<u64, GetShardStatsResponse>) -> BTreeMap<String, [u64; 4]> {
    let mut totals: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for answer in answers.values() {
        for shard in &answer.shards {
            let t = totals.entry(shard.shard_id.clone()).or_default();
            t[0] += shard.incoming_records;
            t[1] += shard.incoming_bytes;
            t[2] += shard.outgoing_records;
            t[3] += shard.outgoing_bytes;
        }
    }
    totals
}

fn figures(
    answers: &BTreeMap<u64, GetShardStatsResponse>,
    before: &BTreeMap<String, [u64; 4]>,
    seconds: f64,
) -> Vec<ShardFigures> {
    let after = totals(answers);
    let mut by_shard: BTreeMap<String, Vec<&ShardStats>> = BTreeMap::new();
    for answer in answers.values() {
        for shard in &answer.shards {
            by_shard
                .entry(shard.shard_id.clone())
                .or_default()
                .push(shard);
        }
    }
    by_shard
        .into_iter()
        .map(|(shard_id, replicas)| {
            let leader = replicas.iter().find(|r| r.leader).copied();
            let now = after.get(&shard_id).copied().unwrap_or_default();
            let then = before.get(&shard_id).copied().unwrap_or_default();
            let rate = |i: usize| now[i].saturating_sub(then[i]) as f64 / seconds;
            ShardFigures {
                state: replicas[0].state.clone(),
                leader: leader.map_or(replicas[0].leader_node_id, |l| l.leader_node_id),
                replicas: replicas.len() as u32,
                applied_index: leader.map_or_else(
                    || replicas.iter().map(|r| r.applied_index).max().unwrap_or(0),
                    |l| l.applied_index,
                ),
                incoming_records_per_sec: rate(0),
                incoming_bytes_per_sec: rate(1),
                outgoing_records_per_sec: rate(2),
                outgoing_bytes_per_sec: rate(3),
                incoming_records_total: now[0],
                outgoing_records_total: now[2],
                millis_behind_latest: replicas
                    .iter()
                    .map(|r| r.millis_behind_latest)
                    .max()
                    .unwrap_or(0),
                max_follower_lag: leader
                    .and_then(|l| l.follower_lag.values().max().copied())
                    .unwrap_or(0),
                disk_bytes: replicas.iter().map(|r| r.disk_bytes).max().unwrap_or(0),
                segments: replicas.iter().map(|r| r.segments).max().unwrap_or(0),
                last_record_ms: replicas.iter().map(|r| r.last_record_ms).max().unwrap_or(0),
                shard_id,
            }
        })
        .collect()
}

fn mb(bytes: f64) -> String {
    format!("{:.2}", bytes / 1_000_000.0)
}

/// Samples every node twice, `interval` apart, and prints one row per shard.
pub async fn stats(context: &Context, stream: &str, interval: Duration) -> anyhow::Result<()> {
    let client = context.connect().await?;
    // Fails with ResourceNotFound (and the stream's name) before any node is asked.
    client.describe_stream_summary(stream).await?;
    let nodes: Vec<(u64, String)> = client
        .cluster_status()
        .await?
        .nodes
        .into_iter()
        .map(|n| (n.node_id, n.address))
        .collect();
    let (first, _) = sample(&nodes, stream).await;
    let started = Instant::now();
    tokio::time::sleep(interval).await;
    let (answers, missing) = sample(&nodes, stream).await;
    if answers.is_empty() {
        anyhow::bail!(
            "Unavailable: no node answered GetShardStats: {}",
            missing.join("; ")
        );
    }
    for line in &missing {
        eprintln!("not included: {line}");
    }
    let seconds = started.elapsed().as_secs_f64().max(0.001);
    let rows = figures(&answers, &totals(&first), seconds);
    let mut out = std::io::stdout().lock();
    match context.output {
        OutputFormat::Json => {
            for row in &rows {
                write_json_line(&mut out, row)?;
            }
        }
        OutputFormat::Table => {
            let mut table = Table::new(vec![
                "SHARD",
                "STATE",
                "LEADER",
                "REPLICAS",
                "APPLIED",
                "IN_REC/S",
                "IN_MB/S",
                "OUT_REC/S",
                "OUT_MB/S",
                "BEHIND_MS",
                "FOLLOWER_LAG",
                "DISK_MB",
                "SEGMENTS",
            ]);
            for row in &rows {
                table.push(vec![
                    row.shard_id.clone(),
                    row.state.clone(),
                    if row.leader == 0 {
                        "-".into()
                    } else {
                        row.leader.to_string()
                    },
                    row.replicas.to_string(),
                    row.applied_index.to_string(),
                    format!("{:.0}", row.incoming_records_per_sec),
                    mb(row.incoming_bytes_per_sec),
                    format!("{:.0}", row.outgoing_records_per_sec),
                    mb(row.outgoing_bytes_per_sec),
                    row.millis_behind_latest.to_string(),
                    row.max_follower_lag.to_string(),
                    mb(row.disk_bytes as f64),
                    row.segments.to_string(),
                ]);
            }
            out.write_all(table.render().as_bytes())?;
            writeln!(
                out,
                "rates over {seconds:.1} s from {} of {} nodes",
                answers.len(),
                nodes.len()
            )?;
        }
    }
    out.flush()?;
    Ok(())
}
