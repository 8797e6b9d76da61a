//! A node: the metadata group, the shard groups the metadata says should exist, and the
//! reconciler that starts and stops shard groups as streams come and go.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use rand::RngCore;
use tokio::sync::watch;

use crate::clock::now_ms;
use crate::config::NodeConfig;
use crate::error::ApiError;
use crate::iterator::IteratorCodec;
use crate::metadata::{MetadataCommand, MetadataState, StreamStatus};
use crate::raft::flusher::Flusher;
use crate::raft::log_store::GroupLogStore;
use crate::raft::meta_store::MetaStore;
use crate::raft::network::LocalOnlyNetwork;
use crate::raft::state_machine::{GroupStateMachine, MetadataShared, ShardTip};
use crate::raft::{
    raft_config, Command, CommandResponse, GroupId, Raft, RecordBatch, METADATA_GROUP,
};

/// A running shard group.
pub struct ShardGroup {
    /// Raft group id.
    pub group_id: GroupId,
    /// The stream incarnation it belongs to.
    pub stream_id: u64,
    /// Index within the stream.
    pub shard_index: u32,
    /// The raft handle.
    pub raft: Raft,
    /// The shard log (shared with raft).
    pub log: GroupLogStore,
    /// Applied position; readers never read past it.
    pub tip: watch::Receiver<ShardTip>,
}

/// A running node.
pub struct Node {
    config: NodeConfig,
    meta_store: Arc<MetaStore>,
    flusher: Flusher,
    metadata: Arc<MetadataShared>,
    metadata_raft: Raft,
    shards: RwLock<HashMap<GroupId, Arc<ShardGroup>>>,
    /// Shard groups that could not start, with the error readers and writers get instead.
    /// A group whose data failed its checksum stays here until an operator acts.
    failed: RwLock<HashMap<GroupId, ApiError>>,
    iterators: RwLock<Option<IteratorCodec>>,
}

fn groups_dir(config: &NodeConfig) -> PathBuf {
    config.data_dir.join("groups")
}

fn group_dir(config: &NodeConfig, group: GroupId) -> PathBuf {
    groups_dir(config).join(format!("{group:016}"))
}

fn log_config(config: &NodeConfig) -> tributary_log::LogConfig {
    tributary_log::LogConfig {
        segment_max_bytes: config.segment_max_bytes,
        segment_max_age: Duration::from_secs(config.segment_max_age_secs),
        ..Default::default()
    }
}

fn io(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{err}")
}

impl Node {
    /// Opens the data directory, starts the metadata group and waits until this node leads
    /// it and has replayed every committed metadata command, then starts the shard groups.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Arc<Node>> {
        std::fs::create_dir_all(groups_dir(&config)).map_err(|e| {
            anyhow::anyhow!("cannot create data dir {}: {e}", config.data_dir.display())
        })?;
        let meta_store = Arc::new(MetaStore::open(&config.data_dir.join("meta"))?);
        let flusher = Flusher::start()?;
        let metadata = MetadataShared::new();

        let (log, report) = GroupLogStore::open(
            METADATA_GROUP,
            &group_dir(&config, METADATA_GROUP),
            log_config(&config),
            meta_store.clone(),
            flusher.clone(),
        )?;
        tracing::info!(?report, "metadata log opened");
        let fresh = !log.has_state();
        let sm = GroupStateMachine::metadata(METADATA_GROUP, meta_store.clone(), metadata.clone());
        let metadata_raft = Raft::new(
            config.node_id,
            raft_config(&config, METADATA_GROUP)?,
            LocalOnlyNetwork,
            log,
            sm,
        )
        .await
        .map_err(io)?;
        if fresh {
            metadata_raft
                .initialize(Self::members(&config))
                .await
                .map_err(io)?;
            tracing::info!(
                node_id = config.node_id,
                "initialized a new single-node cluster"
            );
        }

        let node = Arc::new(Node {
            config,
            meta_store,
            flusher,
            metadata,
            metadata_raft,
            shards: RwLock::new(HashMap::new()),
            failed: RwLock::new(HashMap::new()),
            iterators: RwLock::new(None),
        });
        node.wait_metadata_caught_up().await?;
        if node.metadata.read().iterator_key.is_none() {
            let mut key = vec![0u8; 32];
            rand::rng().fill_bytes(&mut key);
            node.propose_metadata(MetadataCommand::InitCluster { iterator_key: key })
                .await?;
        }
        node.remove_orphan_groups();
        node.reconcile().await;
        node.wait_shard_leaders(Duration::from_secs(30)).await;
        tokio::spawn(Self::reconcile_loop(node.clone()));
        Ok(node)
    }

    /// Waits (bounded) until every shard group has a leader, so a node that reports ready
    /// after a restart takes writes at once.
    async fn wait_shard_leaders(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        for group in self.shard_groups() {
            while group.raft.current_leader().await.is_none() {
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(
                        group = group.group_id,
                        "shard group has no leader yet; serving anyway"
                    );
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    fn members(config: &NodeConfig) -> BTreeMap<u64, BasicNode> {
        BTreeMap::from([(config.node_id, BasicNode::new(config.listen.to_string()))])
    }

    /// This node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    async fn wait_metadata_caught_up(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self
                .metadata_raft
                .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                .await
            {
                Ok(_) => return Ok(()),
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%err, "waiting for the metadata group");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => {
                    anyhow::bail!("the metadata group did not become ready within 60 s: {err}")
                }
            }
        }
    }

    /// The metadata state (streams and shards).
    pub fn metadata(&self) -> std::sync::RwLockReadGuard<'_, MetadataState> {
        self.metadata.read()
    }

    /// The metadata raft group (for status reporting).
    pub fn metadata_raft(&self) -> &Raft {
        &self.metadata_raft
    }

    /// A running shard group.
    pub fn shard_group(&self, group: GroupId) -> Option<Arc<ShardGroup>> {
        self.shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .cloned()
    }

    /// A running shard group, or why it is not running.
    pub fn shard_group_or_error(
        &self,
        group: GroupId,
        shard_id: &str,
    ) -> Result<Arc<ShardGroup>, ApiError> {
        if let Some(shard) = self.shard_group(group) {
            return Ok(shard);
        }
        if let Some(err) = self
            .failed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
        {
            return Err(err.clone());
        }
        Err(ApiError::unavailable(format!(
            "shard {shard_id} is starting on this node; retry"
        )))
    }

    /// Every running shard group.
    pub fn shard_groups(&self) -> Vec<Arc<ShardGroup>> {
        self.shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The iterator codec, once the cluster key is known.
    pub fn iterators(&self) -> Result<IteratorCodec, ApiError> {
        if let Some(codec) = self
            .iterators
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(codec.clone());
        }
        let key = self
            .metadata
            .read()
            .iterator_key
            .clone()
            .ok_or_else(|| ApiError::unavailable("the cluster is still initializing; retry"))?;
        let codec = IteratorCodec::new(key, self.config.iterator_ttl());
        *self.iterators.write().unwrap_or_else(|p| p.into_inner()) = Some(codec.clone());
        Ok(codec)
    }

    /// Proposes a metadata command and waits until it is applied.
    pub async fn propose_metadata(&self, command: MetadataCommand) -> Result<(), ApiError> {
        let response = self
            .metadata_raft
            .client_write(Command::Metadata(command))
            .await
            .map_err(write_error)?;
        match response.data {
            CommandResponse::Metadata(outcome) => outcome.into_result(),
            CommandResponse::Applied => {
                Err(ApiError::internal("metadata command produced no outcome"))
            }
        }
    }

    /// Appends a batch to a shard; returns the raft log index once a majority has it on disk.
    pub async fn append(&self, group: &ShardGroup, batch: RecordBatch) -> Result<u64, ApiError> {
        let response = group
            .raft
            .client_write(Command::Append(batch))
            .await
            .map_err(write_error)?;
        Ok(response.log_id.index)
    }

    async fn reconcile_loop(node: Arc<Node>) {
        let mut version = node.metadata.version.subscribe();
        loop {
            tokio::select! {
                changed = version.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            node.reconcile().await;
        }
    }

    /// Starts missing shard groups, stops removed ones, and marks streams ACTIVE once every
    /// shard has a leader.
    async fn reconcile(&self) {
        let (desired, creating) = {
            let state = self.metadata.read();
            let desired: HashMap<GroupId, (u64, u32)> = state
                .shard_groups()
                .map(|(s, shard)| (shard.group_id, (s.stream_id, shard.shard_index)))
                .collect();
            let creating: Vec<(u64, Vec<GroupId>)> = state
                .streams
                .values()
                .filter(|s| s.status == StreamStatus::Creating)
                .map(|s| (s.stream_id, s.shards.iter().map(|sh| sh.group_id).collect()))
                .collect();
            (desired, creating)
        };
        let running: Vec<GroupId> = self
            .shards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        let failed: Vec<GroupId> = self
            .failed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        for group in running
            .iter()
            .chain(&failed)
            .filter(|g| !desired.contains_key(g))
        {
            self.stop_group(*group).await;
        }
        for (group, (stream_id, shard_index)) in &desired {
            let corrupt = self
                .failed
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(group)
                .is_some_and(|e| e.code == tributary_proto::v1::ErrorCode::DataCorruption);
            if running.contains(group) || corrupt {
                continue;
            }
            match self.start_group(*group, *stream_id, *shard_index).await {
                Ok(()) => {
                    self.failed
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(group);
                }
                Err(err) => {
                    let detail = format!("{err:#}");
                    tracing::error!(group, stream_id, shard_index, error = %detail, "cannot start shard group");
                    let shard = crate::metadata::shard_id(*shard_index);
                    let api = if detail.contains("corrupt log data") {
                        ApiError::corruption(format!(
                            "shard {shard} is offline on this node: its stored data failed its checksum ({detail})"
                        ))
                    } else {
                        ApiError::unavailable(format!(
                            "shard {shard} cannot start on this node: {detail}; retry"
                        ))
                    };
                    self.failed
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(*group, api);
                }
            }
        }
        for (stream_id, groups) in creating {
            let mut all_led = true;
            for group in &groups {
                let led = match self.shard_group(*group) {
                    Some(g) => g.raft.current_leader().await.is_some(),
                    None => false,
                };
                all_led &= led;
            }
            if all_led {
                if let Err(err) = self
                    .propose_metadata(MetadataCommand::MarkStreamActive { stream_id })
                    .await
                {
                    tracing::warn!(stream_id, %err, "cannot mark stream active yet");
                }
            }
        }
    }

    async fn start_group(
        &self,
        group: GroupId,
        stream_id: u64,
        shard_index: u32,
    ) -> anyhow::Result<()> {
        let dir = group_dir(&self.config, group);
        let (log, report) = GroupLogStore::open(
            group,
            &dir,
            log_config(&self.config),
            self.meta_store.clone(),
            self.flusher.clone(),
        )?;
        tracing::info!(group, stream_id, shard_index, ?report, "shard log opened");
        let fresh = !log.has_state();
        let (sm, tip) = GroupStateMachine::shard(group, self.meta_store.clone(), log.clone())?;
        let raft = Raft::new(
            self.config.node_id,
            raft_config(&self.config, group)?,
            LocalOnlyNetwork,
            log.clone(),
            sm,
        )
        .await
        .map_err(io)?;
        if fresh {
            raft.initialize(Self::members(&self.config))
                .await
                .map_err(io)?;
        }
        let shard = Arc::new(ShardGroup {
            group_id: group,
            stream_id,
            shard_index,
            raft,
            log,
            tip,
        });
        self.shards
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group, shard);
        Ok(())
    }

    async fn stop_group(&self, group: GroupId) {
        self.failed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
        let removed = self
            .shards
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
        if let Some(shard) = removed {
            if let Err(err) = shard.raft.shutdown().await {
                tracing::warn!(group, %err, "shard group did not shut down cleanly");
            }
        }
        self.delete_group_files(group);
    }

    fn delete_group_files(&self, group: GroupId) {
        if let Err(err) = self.meta_store.delete_group(group) {
            tracing::warn!(group, %err, "cannot delete group metadata");
        }
        let dir = group_dir(&self.config, group);
        if let Err(err) = remove_dir_if_present(&dir) {
            tracing::warn!(group, dir = %dir.display(), %err, "cannot delete group files");
        }
    }

    /// Deletes groups left on disk by a stream deleted just before a crash.
    fn remove_orphan_groups(&self) {
        let desired: Vec<GroupId> = self
            .metadata
            .read()
            .shard_groups()
            .map(|(_, s)| s.group_id)
            .collect();
        let Ok(entries) = std::fs::read_dir(groups_dir(&self.config)) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(group) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<GroupId>().ok())
            else {
                continue;
            };
            if group != METADATA_GROUP && !desired.contains(&group) {
                tracing::info!(group, "removing the files of a deleted stream's shard");
                self.delete_group_files(group);
            }
        }
    }

    /// Stops every group (for tests and orderly shutdown).
    pub async fn shutdown(&self) {
        for shard in self.shard_groups() {
            let _ = shard.raft.shutdown().await;
        }
        let _ = self.metadata_raft.shutdown().await;
    }

    /// Current time as the leader stamps arrivals.
    pub fn now_ms(&self) -> i64 {
        now_ms()
    }
}

fn remove_dir_if_present(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn write_error(
    err: RaftError<crate::raft::TypeConfig, ClientWriteError<crate::raft::TypeConfig>>,
) -> ApiError {
    match err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            ApiError::unavailable(format!(
                "this node does not lead the group (leader: {:?}); retry",
                forward.leader_id
            ))
        }
        RaftError::APIError(other) => {
            ApiError::unavailable(format!("write not accepted: {other}; retry"))
        }
        RaftError::Fatal(fatal) => ApiError::internal(format!("raft group stopped: {fatal}")),
    }
}
