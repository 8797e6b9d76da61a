//! Everything that touches openraft lives under this module, so an openraft upgrade (it is
//! pinned to an alpha) changes one place.
//!
//! - `command`: what a raft entry carries (a record batch or a metadata command).
//! - `entry_codec`: raft entry <-> `tributary_log::Batch` (the on-disk frame payload).
//! - `log_store`: `RaftLogStorage` over a shard log; the log *is* the data.
//! - `flusher`: the node-wide group-commit thread that fsyncs many groups' logs per window.
//! - `meta_store`: RocksDB for vote, committed and purged log ids and applied state.
//! - `state_machine`: metadata state, and the shard tip watch readers wake from.
//! - `network`: raft messages over the shared peer connections (`crate::peers`).
//! - `replication_wire`: AppendEntries with its entries as encoded log batches.

pub mod command;
pub mod entry_codec;
pub mod flusher;
pub mod log_store;
pub mod meta_store;
pub mod network;
pub mod replication_wire;
pub mod state_machine;

use std::sync::Arc;

use crate::config::NodeConfig;
pub use command::{
    Command, CommandResponse, ProducerLast, ProducerStamp, RecordBatch, ShardControl, StoredRecord,
};

openraft::declare_raft_types!(
    /// The raft type configuration shared by the metadata group and every shard group.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        Node = Member,
);

/// A node as raft membership records it.
///
/// Stored as JSON inside membership entries; `incarnation` defaults to 0 so entries written
/// before it existed (`{"addr": ...}`) still read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Where peers reach the node (its `--peers` address).
    pub addr: String,
    /// The incarnation of the node's data directory when it was added. A node that comes
    /// back with an empty data directory has a new incarnation, and refuses raft messages
    /// addressed to the old one until an operator replaces it. 0: not checked (data written
    /// before incarnations existed).
    #[serde(default)]
    pub incarnation: u64,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{:x}", self.addr, self.incarnation)
    }
}

/// A group's members by node id.
pub type Members = std::collections::BTreeMap<u64, Member>;

/// A raft group handle.
pub type Raft = openraft::Raft<TypeConfig, state_machine::GroupStateMachine>;
/// A raft log entry.
pub type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
/// A raft log id.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A raft vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// Identifies a raft group on this node; 0 is the metadata group, shard groups count from 1.
pub type GroupId = u64;
/// The metadata group's id.
pub const METADATA_GROUP: GroupId = 0;

/// The openraft configuration for every group on this node.
pub fn raft_config(
    node: &NodeConfig,
    group: GroupId,
) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let config = openraft::Config {
        cluster_name: format!("tributary-group-{group}"),
        heartbeat_interval: node.heartbeat_interval_ms,
        election_timeout_min: node.election_timeout_min_ms,
        election_timeout_max: node.election_timeout_max_ms,
        // Retention purges explicitly (a later issue); never snapshot-and-purge on a count,
        // which would cut records still inside retention from the log (reference/openraft.md §2).
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: u64::MAX,
        // One PutRecords batch can be 5 MiB; keep AppendEntries and merged writes bounded.
        max_payload_entries: 64,
        max_append_entries: Some(64),
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}
