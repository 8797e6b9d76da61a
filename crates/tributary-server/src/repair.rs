//! Scrubbing shard logs and repairing corrupt frames from a replica's copy.
//!
//! Every frame carries a CRC, so a flipped bit is found when the frame is read: by a
//! consumer (the read fails with `DataCorruption` and never returns the bytes), or by the
//! scrub this module runs over every shard log each `scrub_interval_ms`. Either way the group
//! is queued here, the first corrupt index is located, and the frame is fetched from another
//! replica and written back in place.
//!
//! Only a *committed* entry is repaired (its index is at most the applied index here and at
//! the replica it comes from): raft's log matching makes every replica's committed entry at
//! an index the same entry, so the copy is the entry this node once wrote. The log engine
//! accepts the copy only if it fits the hole exactly (it ends where the next verified frame
//! begins), and re-verifies it after the write. Until then the node serves nothing past the
//! bad frame: readers get `DataCorruption` and move to another replica.
//!
//! Votes are not affected: a vote depends on the last log id, which lives in the last frame;
//! a log whose last frame is corrupt does not open, so its group does not start (and cannot
//! vote) until an operator acts.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tributary_proto::v1 as pb;

use crate::error::ApiError;
use crate::node::{Node, ShardGroup};
use crate::raft::{entry_codec, GroupId};

/// Queue of groups to scrub now (a read found corruption); the periodic pass covers the rest.
/// A group is queued at most once until its scrub starts, however many reads fail meanwhile.
#[derive(Clone)]
pub struct RepairQueue {
    tx: mpsc::UnboundedSender<GroupId>,
    pending: Arc<std::sync::Mutex<std::collections::HashSet<GroupId>>>,
}

impl RepairQueue {
    /// A queue and the receiving end the scrub loop consumes.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<GroupId>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::default();
        (Self { tx, pending }, rx)
    }

    /// Asks for a scrub (and repair) of `group` soon.
    pub fn request(&self, group: GroupId) {
        let queued = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group);
        if queued {
            let _ = self.tx.send(group);
        }
    }

    fn started(&self, group: GroupId) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
    }
}

/// Scrubs every shard log every `scrub_interval_ms` (0: only on request) and whenever a
/// read reports corruption, until the node stops.
pub async fn run(
    node: Arc<Node>,
    queue: RepairQueue,
    mut requests: mpsc::UnboundedReceiver<GroupId>,
) {
    let interval = node.config().scrub_interval_ms;
    let mut tick = tokio::time::interval(Duration::from_millis(interval.max(1000)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let groups: Vec<Arc<ShardGroup>> = tokio::select! {
            requested = requests.recv() => {
                let Some(group) = requested else { return };
                queue.started(group);
                node.shard_group(group).into_iter().collect()
            }
            _ = tick.tick(), if interval > 0 => node.shard_groups(),
        };
        for shard in groups {
            if let Err(err) = scrub_group(&node, &shard).await {
                tracing::error!(group = shard.group_id, %err, "scrub and repair failed; the shard keeps refusing reads of the bad frame");
            }
        }
    }
}

/// Finds and repairs corrupt frames of one running shard log, lowest first.
async fn scrub_group(node: &Node, shard: &Arc<ShardGroup>) -> Result<(), ApiError> {
    let applied = shard.tip.borrow().applied_index;
    repair_log(node, shard.group_id, shard.log.log(), applied).await
}

/// Finds and repairs every corrupt frame of a group's log, lowest first. `committed` is an
/// index every entry up to which is known committed here (the applied index): only those
/// entries are repaired. Also used before a group starts, when replaying its log met a
/// corrupt frame.
pub async fn repair_log(
    node: &Node,
    group: GroupId,
    log: &Arc<tributary_log::Log>,
    committed: u64,
) -> Result<(), ApiError> {
    let mut from = 0;
    loop {
        let scrubbed = log.clone();
        let corrupt = tokio::task::spawn_blocking(move || scrubbed.first_corrupt_index(from))
            .await
            .map_err(|e| ApiError::internal(format!("scrub task: {e}")))?
            .map_err(|e| ApiError::internal(format!("scrub: {e}")))?;
        let Some(index) = corrupt else {
            return Ok(());
        };
        crate::metrics::METRICS
            .corrupt_frames_found
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(
            group,
            index,
            "corrupt frame found; fetching the entry from a replica"
        );
        if index > committed {
            return Err(ApiError::corruption(format!(
                "entry {index} is corrupt but not known committed here (applied {committed}); only committed entries are repaired"
            )));
        }
        repair_from_replicas(node, group, log, index).await?;
        crate::metrics::METRICS
            .corrupt_frames_repaired
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(after) = index.checked_add(1) else {
            return Ok(());
        };
        from = after;
    }
}

/// Fetches committed entry `index` from the first replica with a verified copy and puts it
/// in place of the corrupt frame.
async fn repair_from_replicas(
    node: &Node,
    group: GroupId,
    log: &Arc<tributary_log::Log>,
    index: u64,
) -> Result<(), ApiError> {
    let mut reasons = Vec::new();
    let peers = node.other_peer_clients();
    if peers.is_empty() {
        reasons.push("no other replica is known".to_string());
    }
    for mut peer in peers {
        let mut request = tonic::Request::new(pb::ReadLogEntryRequest {
            group_id: group,
            index,
        });
        request.set_timeout(Duration::from_secs(10));
        let reply = match peer.read_log_entry(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                reasons.push(status.message().to_string());
                continue;
            }
        };
        if !reply.error.is_empty() {
            reasons.push(reply.error);
            continue;
        }
        if reply.applied_index < index {
            reasons.push(format!(
                "a replica has applied only up to {}",
                reply.applied_index
            ));
            continue;
        }
        let copy = tributary_log::Batch {
            index,
            timestamp_ms: reply.timestamp_ms,
            record_count: reply.record_count,
            payload: reply.payload,
        };
        // A copy that does not decode as an entry is not one (the index is ours).
        if entry_codec::decode(&copy).is_err() {
            reasons.push("a replica's copy does not decode as an entry".into());
            continue;
        }
        let target = log.clone();
        let repaired = tokio::task::spawn_blocking(move || target.repair(&copy))
            .await
            .map_err(|e| ApiError::internal(format!("repair task: {e}")))?;
        match repaired {
            Ok(_) => {
                tracing::warn!(group, index, "corrupt frame repaired from a replica's copy");
                return Ok(());
            }
            Err(err) => reasons.push(err.to_string()),
        }
    }
    Err(ApiError::corruption(format!(
        "entry {index} could not be repaired from any replica: {}",
        reasons.join("; ")
    )))
}

/// A verified copy of a committed entry of a group this node holds (the peer side).
pub fn local_entry(node: &Node, group: GroupId, index: u64) -> pb::ReadLogEntryReply {
    let fail = |error: String| pb::ReadLogEntryReply {
        error,
        ..Default::default()
    };
    let Some(shard) = node.shard_group(group) else {
        return fail(format!("group {group} is not running on this node"));
    };
    let applied_index = shard.tip.borrow().applied_index;
    match shard.log.log().read(index, 1, usize::MAX) {
        Ok(batches) => match batches.into_iter().next() {
            Some(batch) if batch.index == index => pb::ReadLogEntryReply {
                applied_index,
                timestamp_ms: batch.timestamp_ms,
                record_count: batch.record_count,
                payload: batch.payload,
                error: String::new(),
            },
            _ => fail(format!("entry {index} is not in this replica's log")),
        },
        Err(err) => fail(format!("this replica cannot read entry {index}: {err}")),
    }
}
