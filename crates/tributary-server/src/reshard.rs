//! Carrying out reshards. A reshard never moves data: a step closes parent shards and
//! opens child shards that take over their hash keys.
//!
//! The metadata group holds the plan and the current step (`metadata::Reshard`; the step's
//! children are the stream's pending shards). The metadata leader drives each step here:
//!
//! 1. The children's raft groups start on every node and elect leaders while the parents
//!    still take all writes (see `Node::reconcile`).
//! 2. Once every child has a leader, each parent gets a seal entry in its own log. Appends
//!    that land after it are answered `ShardClosed` and are never read, so the parent's
//!    ending sequence number is fixed by the seal's index on every replica.
//! 3. `CompleteReshardStep` closes the parents at their seals and opens the children;
//!    writers re-route (the data service waits for this command when a write meets a seal)
//!    and readers reach the children through `child_shards`. A scale then starts its next
//!    step, or the reshard ends and the stream turns ACTIVE once every child is led.
//!
//! Every step is idempotent (sealing a sealed shard returns the same index), so a new
//! metadata leader picks up a step where the old one stopped.

use futures::future::join_all;

use crate::metadata::{MetadataCommand, ShardState};
use crate::node::{leader_of, Node};
use crate::raft::GroupId;

/// How long one pass waits for a parent's seal to commit.
const SEAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One step waiting to be carried out.
struct PendingStep {
    stream_id: u64,
    children: Vec<GroupId>,
    /// (shard index, group) of each parent.
    parents: Vec<(u32, GroupId)>,
}

fn pending_steps(node: &Node) -> Vec<PendingStep> {
    let state = node.metadata();
    state
        .streams
        .values()
        .filter(|s| s.reshard.is_some())
        .map(|stream| {
            let pending = stream
                .shards
                .iter()
                .filter(|s| s.state == ShardState::Pending);
            let parent_indexes: std::collections::BTreeSet<u32> =
                pending.clone().flat_map(|s| s.parents()).collect();
            PendingStep {
                stream_id: stream.stream_id,
                children: pending.map(|s| s.group_id).collect(),
                parents: parent_indexes
                    .into_iter()
                    .filter_map(|i| stream.shard(i).map(|s| (i, s.group_id)))
                    .collect(),
            }
        })
        .collect()
}

/// Advances every reshard in progress by at most one step. Called by the metadata leader
/// on each reconcile pass; whatever cannot happen yet (a child without a leader, a parent
/// whose seal did not commit) is retried on the next pass.
pub async fn drive(node: &Node) {
    for step in pending_steps(node) {
        let children_led = step.children.iter().all(|group| {
            node.shard_group(*group)
                .is_some_and(|g| leader_of(&g.raft).is_some())
        });
        if !children_led {
            continue;
        }
        let Some(parents) = step
            .parents
            .iter()
            .map(|(index, group)| node.shard_group(*group).map(|g| (*index, g)))
            .collect::<Option<Vec<_>>>()
        else {
            tracing::debug!(
                stream_id = step.stream_id,
                "a parent shard group is not running here yet"
            );
            continue;
        };
        // Seal only when every parent has a leader: a parent sealed while another cannot
        // be would refuse writes until the step completes.
        if !parents.iter().all(|(_, g)| leader_of(&g.raft).is_some()) {
            continue;
        }
        // Bounded, so a parent that lost its quorum cannot stall the reconcile loop.
        let sealed = join_all(parents.iter().map(|(index, group)| async move {
            match tokio::time::timeout(SEAL_TIMEOUT, node.seal(group)).await {
                Ok(result) => result.map(|seal| (*index, seal)),
                Err(_) => Err(crate::error::ApiError::unavailable(format!(
                    "sealing {} took over {} s",
                    crate::metadata::shard_id(*index),
                    SEAL_TIMEOUT.as_secs()
                ))),
            }
        }))
        .await;
        let seals = match sealed.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(seals) => seals,
            Err(err) => {
                tracing::warn!(stream_id = step.stream_id, %err, "cannot seal a parent shard yet");
                continue;
            }
        };
        tracing::info!(
            stream_id = step.stream_id,
            ?seals,
            "reshard step: parents sealed"
        );
        let command = MetadataCommand::CompleteReshardStep {
            stream_id: step.stream_id,
            seals,
            closed_at_ms: node.now_ms(),
        };
        if let Err(err) = node.propose_metadata(command).await {
            tracing::warn!(stream_id = step.stream_id, %err, "cannot complete a reshard step yet");
        }
    }
}
