//! Retention: expired records leave the disk in whole segments, and closed shards whose
//! every record expired leave the stream.
//!
//! Readers never see an expired record: they skip records older than the stream's
//! retention at read time (`reader`), so a retention decrease hides data at once. This
//! module frees the space, on each node, every `retention_check_interval_ms`:
//!
//! - Each shard's active segment rolls once it is older than half the retention (or the
//!   configured segment age), so an idle shard's records can expire too.
//! - A shard's leader proposes a `Trim` entry up to the newest expired entry. Every
//!   replica applies it, snapshots at that point (a metadata-only snapshot; see
//!   `raft::state_machine`) and lets openraft purge the log below it, which deletes
//!   the segments wholly below the trim point. Replicas thus agree on TRIM_HORIZON across
//!   failover, and a lagging replica is sent the trim-point snapshot, never a hole.
//! - The metadata leader drops closed shards whose retention has passed since they closed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::metadata::{MetadataCommand, ShardState};
use crate::node::{leader_of, with_metrics, Node, ShardGroup};
use crate::raft::{entry_codec, Command, ShardControl};

/// Runs retention passes until the node stops.
pub async fn run(node: Arc<Node>) {
    let interval = Duration::from_millis(node.config().retention_check_interval_ms);
    loop {
        tokio::time::sleep(interval).await;
        if !node.is_ready() {
            continue;
        }
        for shard in node.shard_groups() {
            let retention_ms = node
                .metadata()
                .stream_by_id(shard.stream_id)
                .map(|s| s.retention_ms);
            if let Some(retention_ms) = retention_ms {
                if let Err(err) = expire(&node, &shard, retention_ms).await {
                    tracing::warn!(group = shard.group_id, %err, "retention pass failed");
                }
            }
        }
        if leader_of(node.metadata_raft()) == Some(node.config().node_id) {
            drop_expired_shards(&node).await;
        }
    }
}

/// The newest entry of `shard` that is past retention at `now_ms`, if any is not trimmed
/// yet: the entry before the first one at or after the horizon (or everything applied).
fn trim_point(shard: &ShardGroup, now_ms: i64, retention_ms: u64) -> Option<u64> {
    let log = shard.log.log();
    let tip = *shard.tip.borrow();
    log.first_index()?;
    let horizon = now_ms.saturating_sub(i64::try_from(retention_ms).unwrap_or(i64::MAX));
    // Cheap skip (most passes): nothing was appended before the oldest segment was
    // created, so nothing can have expired yet. Entry timestamps come from the leader's
    // clock, so allow for skew; a record this misses is still hidden from readers and is
    // trimmed on a later pass.
    const CLOCK_SKEW_MS: i64 = 60_000;
    if log
        .oldest_segment_created_ms()
        .is_some_and(|created| created > horizon.saturating_add(CLOCK_SKEW_MS))
    {
        return None;
    }
    let upto = match log.find_by_timestamp(horizon) {
        Some(first_kept) => first_kept.checked_sub(1)?,
        None => log.last_index()?,
    };
    let upto = upto.min(tip.applied_index);
    // A trim below the newest membership change would be ignored by every replica (the
    // snapshot must carry the membership in force at its point); wait for a later one.
    let membership_index = with_metrics(&shard.raft, |m| {
        m.membership_config
            .log_id()
            .as_ref()
            .map_or(0, |id| id.index)
    });
    (upto > tip.trim_index && upto >= membership_index).then_some(upto)
}

async fn expire(node: &Node, shard: &ShardGroup, retention_ms: u64) -> anyhow::Result<()> {
    let log = shard.log.log();
    let max_age = Duration::from_secs(node.config().segment_max_age_secs)
        .min(Duration::from_millis(retention_ms / 2).max(Duration::from_secs(1)));
    log.roll_if_older(SystemTime::now(), max_age)?;

    let me = node.config().node_id;
    if leader_of(&shard.raft) == Some(me) {
        if let Some(upto) = trim_point(shard, node.now_ms(), retention_ms) {
            let batch = log.read(upto, 1, usize::MAX)?;
            let entry = batch
                .first()
                .filter(|b| b.index == upto)
                .map(entry_codec::decode)
                .transpose()?;
            if let Some(entry) = entry {
                let id = entry.log_id;
                let trim = ShardControl::Trim {
                    index: id.index,
                    term: id.leader_id.term,
                    leader_node: id.leader_id.node_id,
                };
                propose_trim(shard, trim, upto).await;
            }
        }
    }

    // Every replica: snapshot at the trim point, then purge below it.
    let trim = shard.tip.borrow().trim_index;
    if trim == 0 {
        return Ok(());
    }
    let (snapshot, purged) = with_metrics(&shard.raft, |m| {
        (
            m.snapshot.map_or(0, |id| id.index),
            m.purged.map_or(0, |id| id.index),
        )
    });
    if snapshot < trim {
        shard.raft.trigger().snapshot().await?;
    } else if purged < trim {
        tracing::debug!(group = shard.group_id, trim, purged, "retention: purging");
        shard.raft.trigger().purge_log(trim).await?;
    }
    Ok(())
}

/// Proposes a trim on this replica (it leads the group). A quiesced leader's lease has
/// lapsed (it sent no heartbeats), so it refuses writes until the heartbeat that waking it
/// sends is acknowledged: retry briefly.
async fn propose_trim(shard: &ShardGroup, trim: ShardControl, upto: u64) {
    shard.touch();
    for _ in 0..40 {
        match shard.raft.client_write(Command::Shard(trim.clone())).await {
            Ok(_) => {
                tracing::info!(group = shard.group_id, upto, "retention: trimmed");
                return;
            }
            Err(openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ForwardToLeader(forward),
            )) if forward.leader_id.is_none() => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => {
                tracing::debug!(group = shard.group_id, %err, "trim not proposed");
                return;
            }
        }
    }
}

/// Proposes dropping closed shards whose retention has passed since they closed.
async fn drop_expired_shards(node: &Node) {
    let now_ms = node.now_ms();
    let expired: Vec<(u64, Vec<u32>)> = node
        .metadata()
        .streams
        .values()
        .filter_map(|stream| {
            let retention = i64::try_from(stream.retention_ms).unwrap_or(i64::MAX);
            let shards: Vec<u32> = stream
                .shards
                .iter()
                .filter(|s| match s.state {
                    ShardState::Closed { closed_at_ms, .. } => {
                        closed_at_ms.saturating_add(retention) < now_ms
                    }
                    _ => false,
                })
                .map(|s| s.shard_index)
                .collect();
            (!shards.is_empty()).then_some((stream.stream_id, shards))
        })
        .collect();
    for (stream_id, shard_indexes) in expired {
        tracing::info!(
            stream_id,
            ?shard_indexes,
            "dropping closed shards past retention"
        );
        let command = MetadataCommand::DropExpiredShards {
            stream_id,
            shard_indexes,
            now_ms,
        };
        if let Err(err) = node.propose_metadata(command).await {
            tracing::warn!(stream_id, %err, "cannot drop expired shards yet");
        }
    }
}
