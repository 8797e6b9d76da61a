//! A node: the metadata group, the shard groups the metadata says should exist, and the
//! reconciler that starts and stops shard groups as streams come and go, forwarding to
//! group leaders, and the balancer that spreads shard leaderships over the nodes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::join_all;
use openraft::error::{ClientWriteError, RaftError};
use rand::RngCore;
use tokio::sync::watch;

use crate::clock::now_ms;
use crate::config::NodeConfig;
use crate::error::ApiError;
use crate::identity::Identity;
use crate::iterator::IteratorCodec;
use crate::metadata::{Limits, MetadataCommand, MetadataState, ShardState, StreamStatus};
use crate::peers::Peers;
use crate::raft::flusher::Flusher;
use crate::raft::log_store::GroupLogStore;
use crate::raft::meta_store::MetaStore;
use crate::raft::network::PeerNetwork;
use crate::raft::state_machine::{GroupStateMachine, MetadataShared, ShardTip};
use crate::raft::{
    raft_config, Command, CommandResponse, GroupId, Member, Members, Raft, RecordBatch,
    ShardControl, TypeConfig, METADATA_GROUP,
};

type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

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
    /// Idempotent producers' newest applied requests.
    producers: crate::idempotence::ProducerView,
    /// Idempotent requests this node (as leader) is appending.
    in_flight: Arc<crate::idempotence::InFlight>,
    /// Whether the group is quiesced here (no ticks, heartbeats or election timer).
    quiet: AtomicBool,
    /// Last client activity or log growth seen, for quiescence.
    activity: std::sync::Mutex<(std::time::Instant, Option<u64>)>,
    /// The leader's node and boot id when this follower replica quiesced: if that node
    /// stops answering or restarts, the leader is gone and the replica must wake.
    quiet_leader: std::sync::Mutex<Option<(u64, u64)>>,
    /// When this replica last received AppendEntries (a heartbeat or entries) from a leader.
    leader_contact: std::sync::Mutex<std::time::Instant>,
    /// Throughput quotas, when the node enforces them.
    pub quota: Option<crate::quota::ShardQuota>,
    /// What this node served of the shard (Prometheus counters).
    pub traffic: crate::metrics::ShardTraffic,
    /// Where a read that met a corrupt frame asks for a scrub and repair.
    pub repair: crate::repair::RepairQueue,
}

impl ShardGroup {
    /// Records activity and wakes the group if it was quiet. Called on the client paths
    /// (writes, leader read checks) before raft is asked to do anything.
    pub fn touch(&self) {
        self.activity.lock().unwrap_or_else(|p| p.into_inner()).0 = std::time::Instant::now();
        if self.quiet.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    fn wake(&self) {
        let runtime = self.raft.runtime_config();
        runtime.tick(true);
        runtime.heartbeat(true);
        runtime.elect(true);
        self.quiet.store(false, Ordering::SeqCst);
    }

    fn quiesce(&self) {
        let runtime = self.raft.runtime_config();
        runtime.heartbeat(false);
        runtime.elect(false);
        runtime.tick(false);
        self.quiet.store(true, Ordering::SeqCst);
        self.log.forget_recent_entries();
    }

    /// Notes that a leader just reached this replica (the peer service calls this).
    pub fn note_leader_contact(&self) {
        *self
            .leader_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
    }

    /// Whether the group is quiesced on this node.
    pub fn is_quiet(&self) -> bool {
        self.quiet.load(Ordering::SeqCst)
    }
}

/// A running node.
pub struct Node {
    config: NodeConfig,
    identity: Identity,
    peers: Arc<Peers>,
    meta_store: Arc<MetaStore>,
    flusher: Flusher,
    metadata: Arc<MetadataShared>,
    metadata_raft: Raft,
    /// The metadata log was empty when the node opened it: bootstrap or join.
    metadata_fresh: bool,
    shards: RwLock<HashMap<GroupId, Arc<ShardGroup>>>,
    /// Shard groups that could not start, with the error readers and writers get instead.
    /// A group whose data failed its checksum stays here until an operator acts.
    failed: RwLock<HashMap<GroupId, ApiError>>,
    iterators: RwLock<Option<IteratorCodec>>,
    /// Serving client requests (the metadata group caught up and shard groups started).
    ready: AtomicBool,
    /// Shutting down: leaderships are being handed to peers.
    draining: AtomicBool,
    /// Raft groups are being stopped for good (no restart after their raft stops).
    stopping: AtomicBool,
    /// Random per process start (see `NodeInfoReply.boot_id`).
    boot_id: u64,
    /// Live SubscribeToShard streams served here (takeover by newer ones).
    subscriptions: crate::service::fanout::Subscriptions,
    /// The free-space floor of the data directory.
    disk_space: Arc<crate::disk_space::DiskSpace>,
    /// Groups to scrub and repair now; the receiver goes to the scrub loop at start.
    repair: crate::repair::RepairQueue,
    repair_requests: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<GroupId>>>,
    /// When each shard group whose raft stopped on a storage error was taken down, so it is
    /// restarted after a pause rather than in a tight loop.
    stopped_on_error: std::sync::Mutex<HashMap<GroupId, std::time::Instant>>,
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
        page_cache_keep_bytes: config.page_cache_keep_bytes,
        ..Default::default()
    }
}

fn io(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{err}")
}

/// What an operation on this node's replica of a group came to: done, or not done because
/// this replica does not lead the group (which a forwarding node retries with the next
/// leader).
pub enum LocalWrite<T> {
    /// Done, with its result.
    Done(T),
    /// This replica does not lead the group (the leader, if known).
    NotLeader(Option<u64>),
}

impl Node {
    /// Opens the data directory and creates the metadata group (not yet bootstrapped or
    /// caught up: see `start`). The node can answer peers from here on, which a cluster
    /// that bootstraps needs.
    pub async fn open(config: NodeConfig) -> anyhow::Result<Arc<Node>> {
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
            None,
        )?;
        tracing::info!(?report, "metadata log opened");
        let metadata_fresh = !log.has_state();
        let identity = Identity::load_or_create(&config.data_dir, config.node_id, !metadata_fresh)?;
        let mut addresses = config.peer_map()?;
        addresses.insert(config.node_id, config.advertised_address());
        let peers = Peers::new(config.node_id, addresses);
        let sm = GroupStateMachine::metadata(METADATA_GROUP, meta_store.clone(), metadata.clone());
        let metadata_raft = Raft::new(
            config.node_id,
            raft_config(&config, METADATA_GROUP)?,
            PeerNetwork::new(peers.clone(), METADATA_GROUP, config.node_id),
            log,
            sm,
        )
        .await
        .map_err(io)?;
        let (repair, repair_requests) = crate::repair::RepairQueue::new();
        let disk_space = Arc::new(crate::disk_space::DiskSpace::new(
            &config.data_dir,
            config.min_free_disk_bytes,
        ));
        Ok(Arc::new(Node {
            config,
            identity,
            peers,
            meta_store,
            flusher,
            metadata,
            metadata_raft,
            metadata_fresh,
            shards: RwLock::new(HashMap::new()),
            failed: RwLock::new(HashMap::new()),
            iterators: RwLock::new(None),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            boot_id: rand::random::<u64>().max(1),
            subscriptions: Default::default(),
            repair,
            disk_space,
            repair_requests: std::sync::Mutex::new(Some(repair_requests)),
            stopped_on_error: Default::default(),
        }))
    }

    /// Bootstraps or joins the cluster, waits until this node has replayed every committed
    /// metadata command, starts the shard groups and the background loops, then reports
    /// ready.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        if !self.peers.others().is_empty() {
            tokio::spawn(self.peers.clone().probe_loop());
        }
        if self.metadata_fresh {
            self.bootstrap().await?;
        }
        self.wait_metadata_caught_up().await;
        if self.metadata.read().iterator_key.is_none() {
            let mut key = vec![0u8; 32];
            rand::rng().fill_bytes(&mut key);
            // Every node may try; the first applied wins and the rest change nothing.
            self.propose_metadata(MetadataCommand::InitCluster { iterator_key: key })
                .await
                .map_err(|e| anyhow::anyhow!("cannot initialize the cluster key: {e}"))?;
        }
        self.remove_orphan_groups();
        self.reconcile().await;
        self.wait_shard_leaders(Duration::from_secs(10)).await;
        tokio::spawn(Self::reconcile_loop(self.clone()));
        tokio::spawn(Self::rebalance_loop(self.clone()));
        tokio::spawn(crate::retention::run(self.clone()));
        let repair_requests = self
            .repair_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(requests) = repair_requests {
            tokio::spawn(crate::repair::run(
                self.clone(),
                self.repair.clone(),
                requests,
            ));
        }
        if self.config.quiesce_after_ms > 0 && !self.peers.others().is_empty() {
            tokio::spawn(Self::quiesce_loop(self.clone()));
        }
        self.ready.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// A fresh metadata log: form a new cluster, or join one that already exists.
    ///
    /// A new cluster is formed exactly once: by the lowest node id, once every configured
    /// node has answered and none holds state; it initializes membership with every node's
    /// incarnation. The other nodes wait to be contacted. A node whose data dir was wiped
    /// finds the cluster already holding state and a different incarnation recorded for
    /// itself: it refuses to take part until an operator replaces it.
    async fn bootstrap(&self) -> anyhow::Result<()> {
        let me = self.config.node_id;
        let others = self.peers.others();
        if others.is_empty() {
            self.metadata_raft
                .initialize(self.single_member())
                .await
                .map_err(io)?;
            tracing::info!(node_id = me, "initialized a new single-node cluster");
            return Ok(());
        }
        let mut last_log = std::time::Instant::now() - Duration::from_secs(60);
        loop {
            let answers = join_all(others.iter().map(|id| async move {
                (*id, self.peers.node_info(*id, Duration::from_secs(1)).await)
            }))
            .await;
            let loud = last_log.elapsed() >= Duration::from_secs(10);
            if let Some((peer, info)) = answers
                .iter()
                .find_map(|(id, info)| info.as_ref().filter(|i| i.has_state).map(|i| (*id, i)))
            {
                match info.member_incarnations.get(&me) {
                    Some(incarnation) if self.identity.accepts(*incarnation) => {
                        tracing::info!(node_id = me, peer, "joining the existing cluster");
                        return Ok(());
                    }
                    recorded => {
                        if loud {
                            last_log = std::time::Instant::now();
                            tracing::error!(
                                "node {me} has an empty data dir ({}) but the cluster already holds data \
                                 (node {peer} knows node {me} as incarnation {recorded:?}, this directory is {:x}). \
                                 It will not rejoin as if it still had its log: that could lose acknowledged writes. \
                                 Replace it from a running node: trib --endpoint http://{} cluster replace-node {me}",
                                self.config.data_dir.display(),
                                self.identity.incarnation,
                                self.peers.address(peer).unwrap_or_default(),
                            );
                        }
                    }
                }
            } else if answers.iter().all(|(_, info)| info.is_some()) {
                let lowest = others.iter().copied().chain([me]).min().unwrap_or(me);
                if lowest == me {
                    let mut members = self.single_member();
                    for (id, info) in &answers {
                        let info = info.as_ref().expect("all answered");
                        members.insert(
                            *id,
                            Member {
                                addr: self.peers.address(*id).unwrap_or_default(),
                                incarnation: info.incarnation,
                            },
                        );
                    }
                    self.metadata_raft.initialize(members).await.map_err(io)?;
                    tracing::info!(node_id = me, nodes = ?self.peers.addresses(), "bootstrapped a new cluster");
                    return Ok(());
                }
                if loud {
                    last_log = std::time::Instant::now();
                    tracing::info!(
                        node_id = me,
                        "waiting for node {lowest} to bootstrap the cluster"
                    );
                }
            } else if loud {
                last_log = std::time::Instant::now();
                let missing: Vec<u64> = answers
                    .iter()
                    .filter(|(_, info)| info.is_none())
                    .map(|(id, _)| *id)
                    .collect();
                tracing::info!(
                    node_id = me,
                    ?missing,
                    "waiting for peers to answer before forming the cluster"
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn single_member(&self) -> Members {
        Members::from([(
            self.config.node_id,
            Member {
                addr: self.config.advertised_address(),
                incarnation: self.identity.incarnation,
            },
        )])
    }

    /// This node's identity (id and data-dir incarnation).
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// The SubscribeToShard streams this node serves.
    pub fn subscriptions(&self) -> &crate::service::fanout::Subscriptions {
        &self.subscriptions
    }

    /// Clients of every other member whose address is known.
    pub fn other_peer_clients(
        &self,
    ) -> Vec<tributary_proto::v1::peer_service_client::PeerServiceClient<tonic::transport::Channel>>
    {
        let me = self.config.node_id;
        self.members()
            .keys()
            .filter(|id| **id != me)
            .filter_map(|id| self.peer_client(*id).ok())
            .collect()
    }

    /// The data directory's free-space floor.
    pub fn disk_space(&self) -> &crate::disk_space::DiskSpace {
        &self.disk_space
    }

    /// The other nodes.
    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    /// Serving client requests.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.is_draining()
    }

    /// Client services answer (the node started; while draining it still forwards).
    pub fn accepts_clients(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Handing leaderships away before shutdown.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The raft handle of a group running on this node.
    pub fn raft_for(&self, group: GroupId) -> Option<Raft> {
        if group == METADATA_GROUP {
            return Some(self.metadata_raft.clone());
        }
        self.shard_group(group).map(|g| g.raft.clone())
    }

    /// The metadata group's members (node id -> address and incarnation).
    pub fn members(&self) -> Members {
        with_metrics(&self.metadata_raft, |m| {
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, node)| (*id, node.clone()))
                .collect()
        })
    }

    /// Whether this node starts the first election of a new shard group: it is the group's
    /// preferred leader, or the first voter after it that is up.
    fn initializes(&self, group: GroupId) -> bool {
        let voters: Vec<u64> = self.voters().into_keys().collect();
        let Some(preferred) = preferred_leader(group, &voters) else {
            return true;
        };
        let start = voters.iter().position(|id| *id == preferred).unwrap_or(0);
        voters
            .iter()
            .cycle()
            .skip(start)
            .take(voters.len())
            .find(|id| self.peers.is_up(**id))
            == Some(&self.config.node_id)
    }

    /// The metadata group's voters.
    fn voters(&self) -> Members {
        with_metrics(&self.metadata_raft, |m| {
            let membership = m.membership_config.membership();
            membership
                .voter_ids()
                .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
                .collect()
        })
    }

    /// What this node tells its peers about itself.
    pub fn node_info(&self) -> tributary_proto::v1::NodeInfoReply {
        let role = with_metrics(&self.metadata_raft, |m| role_name(m.state));
        let members: HashMap<u64, u64> = self
            .members()
            .into_iter()
            .map(|(id, member)| (id, member.incarnation))
            .collect();
        let (replicas, leaders) = self.shard_counts();
        tributary_proto::v1::NodeInfoReply {
            node_id: self.config.node_id,
            incarnation: self.identity.incarnation,
            az: self.config.az.clone(),
            has_state: !members.is_empty(),
            member_incarnations: members,
            metadata_role: if self.ready.load(Ordering::SeqCst) {
                role.into()
            } else {
                "starting".into()
            },
            draining: self.is_draining(),
            shard_replicas: replicas,
            shard_leaders: leaders,
            ready: self.is_ready(),
            boot_id: self.boot_id,
            quiet_shards: self.quiet_count(),
        }
    }

    /// Shard replicas here that are quiesced.
    pub fn quiet_count(&self) -> u32 {
        self.shard_groups().iter().filter(|g| g.is_quiet()).count() as u32
    }

    /// Shard groups hosted here and how many this node leads.
    pub fn shard_counts(&self) -> (u32, u32) {
        let groups = self.shard_groups();
        let leaders = groups
            .iter()
            .filter(|g| leader_of(&g.raft) == Some(self.config.node_id))
            .count();
        (groups.len() as u32, leaders as u32)
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

    /// This node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Waits until this replica has applied everything the metadata group committed
    /// before now. Without a quorum this waits (and says so) rather than serve stale streams.
    async fn wait_metadata_caught_up(&self) {
        let mut last_log = std::time::Instant::now();
        loop {
            match self.read_index(&self.metadata_raft, METADATA_GROUP).await {
                Ok(index) => {
                    if self
                        .metadata_raft
                        .wait(Some(Duration::from_secs(5)))
                        .applied_index_at_least(Some(index), "metadata caught up")
                        .await
                        .is_ok()
                    {
                        return;
                    }
                }
                Err(err) => {
                    if last_log.elapsed() >= Duration::from_secs(10) {
                        last_log = std::time::Instant::now();
                        tracing::warn!(%err.message, "waiting for the metadata group (a majority of nodes must be up)");
                    } else {
                        tracing::debug!(%err.message, "waiting for the metadata group");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The metadata state (streams and shards).
    pub fn metadata(&self) -> std::sync::RwLockReadGuard<'_, MetadataState> {
        self.metadata.read()
    }

    /// A watch that changes after every applied metadata command.
    pub fn metadata_version(&self) -> watch::Receiver<u64> {
        self.metadata.version.subscribe()
    }

    /// The metadata group's raft handle.
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

    /// Waits (bounded by a few election timeouts) until a group has a leader.
    async fn wait_leader(&self, raft: &Raft) -> Result<u64, ApiError> {
        let limit = Duration::from_millis(self.config.election_timeout_max_ms * 3);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(leader) = leader_of(raft) {
                return Ok(leader);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::unavailable(format!(
                    "no leader was elected within {} ms (is a majority of nodes up?); retry",
                    limit.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Proposes a metadata command and waits until it is applied; a node that does not
    /// lead the metadata group forwards it to the one that does.
    pub async fn propose_metadata(&self, command: MetadataCommand) -> Result<(), ApiError> {
        let me = self.config.node_id;
        let command = &command;
        let index = self
            .on_leader(
                &self.metadata_raft,
                || "the metadata group's leadership kept changing".to_string(),
                |leader| {
                    Box::pin(async move {
                        if leader == me {
                            self.propose_metadata_local(command.clone()).await
                        } else {
                            self.forward_metadata(leader, command).await
                        }
                    })
                },
            )
            .await?;
        // Read your writes: this replica shows the change before the caller hears back.
        let _ = self
            .metadata_raft
            .wait(Some(Duration::from_secs(5)))
            .applied_index_at_least(Some(index), "metadata command applied here")
            .await;
        Ok(())
    }

    /// Runs `attempt(leader)` against a group's current leader (the attempt works locally
    /// when the leader is this node and forwards otherwise), following leadership changes
    /// (a "not the leader" answer means nothing was done) for up to three election
    /// timeouts before giving up with a retryable error.
    async fn on_leader<'a, T>(
        &self,
        raft: &Raft,
        what: impl FnOnce() -> String,
        attempt: impl Fn(u64) -> futures::future::BoxFuture<'a, Result<LocalWrite<T>, ApiError>>,
    ) -> Result<T, ApiError> {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.config.election_timeout_max_ms * 3);
        loop {
            let leader = self.wait_leader(raft).await?;
            if let LocalWrite::Done(value) = attempt(leader).await? {
                return Ok(value);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::unavailable(format!("{}; retry", what())));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Proposes on this replica only (a forwarded command is never forwarded again);
    /// returns the command's log index.
    async fn propose_metadata_local(
        &self,
        command: MetadataCommand,
    ) -> Result<LocalWrite<u64>, ApiError> {
        let response = match self
            .metadata_raft
            .client_write(Command::Metadata(command))
            .await
        {
            Ok(response) => response,
            Err(err) => return write_error(err),
        };
        let index = response.log_id.index;
        match response.data {
            CommandResponse::Metadata(outcome) => {
                outcome.into_result().map(|()| LocalWrite::Done(index))
            }
            CommandResponse::Applied | CommandResponse::Sealed { .. } => {
                Err(ApiError::internal("metadata command produced no outcome"))
            }
        }
    }

    /// Runs a forwarded metadata command here; the peer service calls this.
    pub async fn forwarded_metadata(
        &self,
        command: MetadataCommand,
    ) -> Result<LocalWrite<u64>, ApiError> {
        self.propose_metadata_local(command).await
    }

    async fn forward_metadata(
        &self,
        leader: u64,
        command: &MetadataCommand,
    ) -> Result<LocalWrite<u64>, ApiError> {
        let command = bincode::serialize(command)
            .map_err(|e| ApiError::internal(format!("cannot encode a metadata command: {e}")))?;
        let mut client = self.peer_client(leader)?;
        let mut request = tonic::Request::new(tributary_proto::v1::ForwardMetadataRequest {
            command: command.into(),
        });
        request.set_timeout(Duration::from_secs(30));
        forward_outcome(leader, client.forward_metadata(request).await)
    }

    fn peer_client(
        &self,
        node: u64,
    ) -> Result<
        tributary_proto::v1::peer_service_client::PeerServiceClient<tonic::transport::Channel>,
        ApiError,
    > {
        if let Some(client) = self.peers.client_for(node) {
            return Ok(client);
        }
        match self.members().get(&node) {
            Some(member) => Ok(self.peers.client(&member.addr)),
            None => Err(ApiError::unavailable(format!(
                "the leader is node {node}, whose address this node does not know; retry"
            ))),
        }
    }

    /// Appends a batch to a shard; returns the raft log index once a majority has it on
    /// disk. A node that does not lead the shard forwards the batch to the one that does.
    /// If the forward fails in flight, the outcome is unknown and the caller gets a
    /// retryable error (a retry may then store the batch twice: at-least-once, as Kinesis).
    pub async fn append(&self, group: &ShardGroup, batch: &RecordBatch) -> Result<u64, ApiError> {
        let me = self.config.node_id;
        // Encoded at most once, however many leaders the batch is forwarded to.
        let encoded = std::sync::OnceLock::<bytes::Bytes>::new();
        let encoded = &encoded;
        self.on_leader(
            &group.raft,
            || {
                format!(
                    "shard {}'s leadership kept changing",
                    crate::metadata::shard_id(group.shard_index)
                )
            },
            |leader| {
                Box::pin(async move {
                    if leader == me {
                        return self.append_local(group, batch.clone()).await;
                    }
                    let body = match encoded.get() {
                        Some(body) => body.clone(),
                        None => {
                            let body = bincode::serialize(batch).map_err(|e| {
                                ApiError::internal(format!("cannot encode a record batch: {e}"))
                            })?;
                            encoded.get_or_init(|| body.into()).clone()
                        }
                    };
                    self.forward_append(leader, group.group_id, body).await
                })
            },
        )
        .await
    }

    async fn append_local(
        &self,
        group: &ShardGroup,
        mut batch: RecordBatch,
    ) -> Result<LocalWrite<u64>, ApiError> {
        group.touch();
        // ApproximateArrivalTimestamp is the leader's clock, whichever node took the call,
        // so a shard's timestamps follow one clock (AT_TIMESTAMP and retention rely on it).
        batch.arrival_ms = self.now_ms();
        if group.tip.borrow().sealed_index.is_some() {
            return Err(shard_closed(group.shard_index));
        }
        let Some(stamp) = batch.producer else {
            return self.propose_append(group, batch).await;
        };
        use crate::idempotence::{decide, wait, Claim, Decision};
        let leader = with_metrics(&group.raft, |m| m.current_leader);
        if leader != Some(self.config.node_id) {
            return Ok(LocalWrite::NotLeader(leader));
        }
        // Every entry an earlier leader committed must be in the table first.
        self.wait_applied_own_term(group).await?;
        // Claim before reading the table: a same-numbered request that finished before the
        // claim is in the table (applied before it was answered); one still running is
        // waited for.
        match group.in_flight.claim(stamp) {
            Claim::Wait(outcome) => wait(outcome).await.map(LocalWrite::Done),
            Claim::Mine(guard) => {
                let shard = crate::metadata::shard_id(group.shard_index);
                let recent = group
                    .producers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&stamp.id)
                    .cloned();
                let decision = decide(recent.as_ref(), stamp, batch.records.len(), &shard);
                let result = match decision {
                    Ok(Decision::Duplicate(index)) => Ok(LocalWrite::Done(index)),
                    Ok(Decision::Append) => self.propose_append(group, batch).await,
                    Err(err) => Err(err),
                };
                if let Ok(LocalWrite::Done(index)) = &result {
                    guard.finish(&Ok(*index));
                } else if let Err(err) = &result {
                    guard.finish(&Err(err.clone()));
                }
                result
            }
        }
    }

    /// Waits (bounded) until this leader has applied an entry of its own term: then every
    /// entry of earlier terms that can ever commit has been applied here.
    async fn wait_applied_own_term(&self, group: &ShardGroup) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.config.election_timeout_max_ms * 3);
        loop {
            let caught_up = with_metrics(&group.raft, |m| {
                m.last_applied
                    .as_ref()
                    .is_some_and(|id| id.leader_id.term == m.current_term)
            });
            if caught_up {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::unavailable(format!(
                    "shard {}'s new leader has not caught up yet; retry",
                    crate::metadata::shard_id(group.shard_index)
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn propose_append(
        &self,
        group: &ShardGroup,
        batch: RecordBatch,
    ) -> Result<LocalWrite<u64>, ApiError> {
        if self.disk_space.below_floor()
            && with_metrics(&group.raft, |m| m.current_leader) == Some(self.config.node_id)
        {
            return Err(self
                .disk_space
                .refuse_write(&crate::metadata::shard_id(group.shard_index)));
        }
        if let Some(quota) = &group.quota {
            let bytes: usize = batch
                .records
                .iter()
                .map(|r| r.data.len() + r.partition_key.len())
                .sum();
            quota.admit_write(group.shard_index, batch.records.len() as u64, bytes as u64)?;
        }
        match group.raft.client_write(Command::Append(batch)).await {
            Ok(response) => match response.data {
                CommandResponse::Sealed { .. } => Err(shard_closed(group.shard_index)),
                _ => Ok(LocalWrite::Done(response.log_id.index)),
            },
            Err(err) => write_error(err),
        }
    }

    /// Seals a shard for a reshard (idempotent); returns the seal entry's index. A node
    /// that does not lead the shard forwards the request to the one that does.
    pub async fn seal(&self, group: &ShardGroup) -> Result<u64, ApiError> {
        let me = self.config.node_id;
        self.on_leader(
            &group.raft,
            || {
                format!(
                    "shard {}'s leadership kept changing while sealing it",
                    crate::metadata::shard_id(group.shard_index)
                )
            },
            |leader| {
                Box::pin(async move {
                    if leader == me {
                        return self.seal_local(group).await;
                    }
                    let mut client = self.peer_client(leader)?;
                    let mut request =
                        tonic::Request::new(tributary_proto::v1::ForwardSealRequest {
                            group_id: group.group_id,
                        });
                    request.set_timeout(Duration::from_secs(30));
                    forward_outcome(leader, client.forward_seal(request).await)
                })
            },
        )
        .await
    }

    async fn seal_local(&self, group: &ShardGroup) -> Result<LocalWrite<u64>, ApiError> {
        group.touch();
        match group
            .raft
            .client_write(Command::Shard(ShardControl::Seal))
            .await
        {
            Ok(response) => match response.data {
                CommandResponse::Sealed { index } => Ok(LocalWrite::Done(index)),
                _ => Err(ApiError::internal("sealing produced no seal index")),
            },
            Err(err) => write_error(err),
        }
    }

    /// Seals a shard this node leads; the peer service calls this.
    pub async fn forwarded_seal(&self, group: GroupId) -> Result<LocalWrite<u64>, ApiError> {
        // Not running here (yet: a node that just restarted starts its groups after it
        // answers peers): it does not lead the group, so the forwarder retries with
        // whoever does, within its own deadline, instead of failing the call.
        let Some(shard) = self.shard_group(group) else {
            return Ok(LocalWrite::NotLeader(None));
        };
        self.seal_local(&shard).await
    }

    /// Appends a forwarded batch here; the peer service calls this.
    pub async fn forwarded_append(
        &self,
        group: GroupId,
        batch: RecordBatch,
    ) -> Result<LocalWrite<u64>, ApiError> {
        // Not running here: nothing was done, so the forwarder may retry (as `forwarded_seal`).
        let Some(shard) = self.shard_group(group) else {
            return Ok(LocalWrite::NotLeader(None));
        };
        self.append_local(&shard, batch).await
    }

    async fn forward_append(
        &self,
        leader: u64,
        group: GroupId,
        batch: bytes::Bytes,
    ) -> Result<LocalWrite<u64>, ApiError> {
        let mut client = self.peer_client(leader)?;
        let mut request = tonic::Request::new(tributary_proto::v1::ForwardAppendRequest {
            group_id: group,
            batch,
        });
        request.set_timeout(Duration::from_secs(30));
        forward_outcome(leader, client.forward_append(request).await)
    }

    /// The index up to which a read of `raft`'s group must have applied to be linearizable:
    /// the leader confirms it still leads (a lease, else a heartbeat round to a majority),
    /// so a deposed leader that was paused never serves its stale tip as current.
    pub async fn read_index(&self, raft: &Raft, group: GroupId) -> Result<u64, ApiError> {
        let me = self.config.node_id;
        self.on_leader(
            raft,
            || format!("group {group}'s leadership kept changing"),
            |leader| {
                Box::pin(async move {
                    if leader == me {
                        self.read_index_local(raft).await
                    } else {
                        self.forward_read_index(leader, group).await
                    }
                })
            },
        )
        .await
    }

    async fn read_index_local(&self, raft: &Raft) -> Result<LocalWrite<u64>, ApiError> {
        use openraft::error::LinearizableReadError;
        match raft
            .ensure_linearizable(openraft::LinearizerOption::new(None, true))
            .await
        {
            Ok(read) => Ok(LocalWrite::Done(read.index())),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Ok(LocalWrite::NotLeader(f.leader_id))
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q))) => {
                Err(ApiError::unavailable(format!(
                    "a majority of replicas is not reachable ({q}); retry"
                )))
            }
            Err(RaftError::Fatal(fatal)) => {
                Err(ApiError::internal(format!("raft group stopped: {fatal}")))
            }
        }
    }

    /// The read index of a group this node leads; the peer service calls this.
    pub async fn forwarded_read_index(&self, group: GroupId) -> Result<LocalWrite<u64>, ApiError> {
        if let Some(shard) = self.shard_group(group) {
            shard.touch();
        }
        let raft = self.raft_for(group).ok_or_else(|| {
            ApiError::unavailable(format!("group {group} is not running on this node; retry"))
        })?;
        self.read_index_local(&raft).await
    }

    async fn forward_read_index(
        &self,
        leader: u64,
        group: GroupId,
    ) -> Result<LocalWrite<u64>, ApiError> {
        let mut client = self.peer_client(leader)?;
        let mut request =
            tonic::Request::new(tributary_proto::v1::ReadIndexRequest { group_id: group });
        request.set_timeout(Duration::from_secs(5));
        forward_outcome(leader, client.read_index(request).await)
    }

    /// Makes this replica of a shard current before a read: waits until it has applied
    /// the leader's read index (bounded), so what it serves as the tip is not stale.
    pub async fn catch_up_reads(&self, group: &ShardGroup) -> Result<(), ApiError> {
        group.touch();
        let index = self.read_index(&group.raft, group.group_id).await?;
        let mut tip = group.tip.clone();
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            tip.wait_for(|t| t.applied_index >= index).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ApiError::unavailable("the shard group stopped; retry")),
            Err(_) => Err(ApiError::unavailable(format!(
                "this replica of shard {} is behind its leader; retry",
                crate::metadata::shard_id(group.shard_index)
            ))),
        }
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
        let (desired, new_groups, settling) = {
            let state = self.metadata.read();
            let desired: HashMap<GroupId, (u64, u32)> = state
                .shard_groups()
                .map(|(s, shard)| (shard.group_id, (s.stream_id, shard.shard_index)))
                .collect();
            // Groups nobody has initialized yet: a new stream's, and a reshard's children.
            let new_groups: Vec<GroupId> = state
                .shard_groups()
                .filter(|(s, shard)| {
                    s.status == StreamStatus::Creating || shard.state == ShardState::Pending
                })
                .map(|(_, shard)| shard.group_id)
                .collect();
            // Streams that turn ACTIVE once every open shard has a leader.
            let settling: Vec<(u64, Vec<GroupId>)> = state
                .streams
                .values()
                .filter(|s| {
                    s.status == StreamStatus::Creating
                        || (s.status == StreamStatus::Updating && s.reshard.is_none())
                })
                .map(|s| {
                    let open = s.shards.iter().filter(|sh| sh.is_open());
                    (s.stream_id, open.map(|sh| sh.group_id).collect())
                })
                .collect();
            (desired, new_groups, settling)
        };
        let running: std::collections::HashSet<GroupId> = self
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
        let running = self.take_down_stopped_groups(running).await;
        for (group, (stream_id, shard_index)) in &desired {
            let corrupt = self
                .failed
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(group)
                .is_some_and(|e| e.code == tributary_proto::v1::ErrorCode::DataCorruption);
            if running.contains(group) || corrupt || self.restart_pending(*group) {
                continue;
            }
            match self.start_group(*group, *stream_id, *shard_index).await {
                Ok(()) => {
                    self.failed
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(group);
                    self.stopped_on_error
                        .lock()
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
        // A replica starts empty and uninitialized: it cannot start an election, and its
        // leader fills it in (membership included), as for a replica created after the
        // stream (its node was down, or was replaced). Only while the stream is CREATING,
        // or the shard is a reshard's pending child, does one node initialize each new
        // group, with the metadata group's voters as members: the group's preferred
        // leader, or the next voter that is up if it is not, so a thousand new groups do
        // not hold three-way elections. Should that node go down before initializing, the
        // next one in line does it on a later pass.
        //
        // Known gap: if the initializing node dies after its vote requests reached the
        // other replicas but before it replicated the membership, those replicas count as
        // initialized without a membership and the group cannot elect until that node
        // returns. Initializing on every node closes the gap but, as tried, made SIGTERM
        // handoffs fail writes; see docs/architecture.md.
        for group in &new_groups {
            let Some(shard) = self.shard_group(*group) else {
                continue;
            };
            if leader_of(&shard.raft).is_some()
                || !self.initializes(*group)
                || !matches!(shard.raft.is_initialized().await, Ok(false))
            {
                continue;
            }
            if let Err(err) = shard.raft.initialize(self.voters()).await {
                tracing::debug!(group, %err, "initializing a new shard group");
            }
        }
        // Only the metadata leader marks streams ACTIVE and drives reshards (the others
        // would only forward).
        if leader_of(&self.metadata_raft) != Some(self.config.node_id) {
            return;
        }
        for (stream_id, groups) in settling {
            let all_led = groups.iter().all(|group| {
                self.shard_group(*group)
                    .is_some_and(|g| leader_of(&g.raft).is_some())
            });
            if all_led {
                if let Err(err) = self
                    .propose_metadata(MetadataCommand::MarkStreamActive { stream_id })
                    .await
                {
                    tracing::warn!(stream_id, %err, "cannot mark stream active yet");
                }
            }
        }
        crate::reshard::drive(self).await;
    }

    /// Takes down the shard groups whose raft stopped on a fatal error (a failed fsync or
    /// write: fail-stop, nothing more is acknowledged), keeping their files, so a later pass
    /// restarts them from disk: the log's recovery drops whatever was written after the last
    /// good fsync, and the replica catches up from its leader. Returns the groups still
    /// running.
    async fn take_down_stopped_groups(
        &self,
        running: std::collections::HashSet<GroupId>,
    ) -> std::collections::HashSet<GroupId> {
        let mut still_running = running;
        if self.stopping.load(Ordering::SeqCst) {
            return still_running;
        }
        for group in still_running.clone() {
            let Some(shard) = self.shard_group(group) else {
                continue;
            };
            // A group stopped on purpose (`Fatal::Stopped`: node shutdown) stays stopped.
            let fatal = with_metrics(&shard.raft, |m| match &m.running_state {
                Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
                Err(fatal) => Some(fatal.to_string()),
            });
            let Some(fatal) = fatal else { continue };
            tracing::error!(group, %fatal, "shard group stopped on a storage error; restarting it from disk shortly");
            self.shards
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&group);
            let _ = shard.raft.shutdown().await;
            self.failed.write().unwrap_or_else(|p| p.into_inner()).insert(
                group,
                ApiError::unavailable(format!(
                    "shard {} stopped on this node after a storage error ({fatal}) and is restarting; retry",
                    crate::metadata::shard_id(shard.shard_index)
                )),
            );
            self.stopped_on_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(group, std::time::Instant::now());
            crate::metrics::METRICS
                .group_restarts_after_error
                .fetch_add(1, Ordering::Relaxed);
            still_running.remove(&group);
        }
        still_running
    }

    /// Whether a group taken down after a storage error is still in its pause before a
    /// restart (a disk that keeps failing is retried every `RESTART_PAUSE`, not in a loop).
    fn restart_pending(&self, group: GroupId) -> bool {
        const RESTART_PAUSE: Duration = Duration::from_secs(2);
        let mut stopped = self
            .stopped_on_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match stopped.get(&group) {
            // Below the hard floor a restart would only stop again at the first append.
            Some(at) if at.elapsed() < RESTART_PAUSE || self.disk_space.below_hard_floor() => true,
            Some(_) => {
                stopped.insert(group, std::time::Instant::now());
                false
            }
            None => false,
        }
    }

    /// The cluster limits new streams and reshards are checked against.
    pub fn limits(&self) -> Limits {
        Limits {
            max_shards: self.config.max_shards,
            max_streams: self.config.max_streams,
        }
    }

    async fn start_group(
        &self,
        group: GroupId,
        stream_id: u64,
        shard_index: u32,
    ) -> anyhow::Result<()> {
        let dir = group_dir(&self.config, group);
        // Opening recovers segment files with blocking I/O: keep it off the async workers'
        // hot path so a node starting a thousand groups still answers its peers.
        let (log, report) = tokio::task::block_in_place(|| {
            GroupLogStore::open(
                group,
                &dir,
                log_config(&self.config),
                self.meta_store.clone(),
                self.flusher.clone(),
                Some(self.disk_space.clone()),
            )
        })?;
        tracing::info!(group, stream_id, shard_index, ?report, "shard log opened");
        let (sm, tip, producers) = match GroupStateMachine::shard(
            group,
            self.meta_store.clone(),
            log.clone(),
        ) {
            Err(err) if is_corruption(&err) => {
                // Replaying the log met a corrupt frame: put the committed entries back
                // from a replica, then replay again.
                tracing::error!(group, %err, "corrupt frame met while starting a shard group; repairing from a replica");
                let applied = GroupStateMachine::persisted_applied_index(group, &self.meta_store)?;
                if let Err(repair) =
                    crate::repair::repair_log(self, group, log.log(), applied).await
                {
                    // Stays offline here with DataCorruption (restart the node to retry once
                    // a replica with the data is up).
                    anyhow::bail!("{err}; repair from a replica failed: {}", repair.message);
                }
                GroupStateMachine::shard(group, self.meta_store.clone(), log.clone())?
            }
            other => other?,
        };
        let raft = Raft::new(
            self.config.node_id,
            raft_config(&self.config, group)?,
            PeerNetwork::new(self.peers.clone(), group, self.config.node_id),
            log.clone(),
            sm,
        )
        .await
        .map_err(io)?;
        let shard = Arc::new(ShardGroup {
            group_id: group,
            stream_id,
            shard_index,
            raft,
            log,
            tip,
            producers,
            in_flight: Default::default(),
            quiet: AtomicBool::new(false),
            activity: std::sync::Mutex::new((std::time::Instant::now(), None)),
            quiet_leader: std::sync::Mutex::new(None),
            leader_contact: std::sync::Mutex::new(std::time::Instant::now()),
            quota: self
                .config
                .quota_limits()
                .map(crate::quota::ShardQuota::new),
            traffic: Default::default(),
            repair: self.repair.clone(),
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
        self.stopped_on_error
            .lock()
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

    /// Moves shard leaderships to their preferred nodes, a few at a time, so leaders
    /// spread evenly over the nodes that are up and re-spread when a node returns.
    ///
    /// See `preferred_leader`. Only the current leader acts, only toward a peer that is up,
    /// serving and caught up with the leader's log.
    async fn rebalance_loop(node: Arc<Node>) {
        const MOVES_PER_ROUND: usize = 16;
        let interval = Duration::from_millis(node.config.rebalance_interval_ms);
        loop {
            tokio::time::sleep(interval).await;
            if node.is_draining() || node.peers.others().is_empty() {
                continue;
            }
            let me = node.config.node_id;
            let mut moved = 0;
            for group in node.shard_groups() {
                if moved >= MOVES_PER_ROUND {
                    break;
                }
                // Below the free-space floor this node leads nothing it can hand over.
                let leave = node.disk_space.below_floor();
                let target = with_metrics(&group.raft, |m| {
                    if m.current_leader != Some(me) {
                        return None;
                    }
                    if leave {
                        return voter_ids(m).into_iter().find(|peer| {
                            *peer != me && has_whole_log(m, *peer) && node.peers.can_lead(*peer)
                        });
                    }
                    preferred_leader(group.group_id, &voter_ids(m))
                        .filter(|preferred| *preferred != me && has_whole_log(m, *preferred))
                });
                let Some(target) = target else { continue };
                if !node.peers.can_lead(target) {
                    continue;
                }
                tracing::debug!(
                    group = group.group_id,
                    target,
                    "moving shard leadership to its preferred node"
                );
                if group.raft.trigger().transfer_leader(target).await.is_ok() {
                    moved += 1;
                }
            }
        }
    }

    /// Quiesces idle shard groups and wakes them on traffic or trouble.
    ///
    /// Raft heartbeats cost one message per group per follower per interval: with a
    /// thousand shards, an idle cluster would spend its CPU on them. As TiKV's hibernating
    /// regions and CockroachDB's quiescence do, a group that saw no writes or reads for
    /// `quiesce_after_ms`, and whose reachable followers all have the leader's whole log,
    /// stops its timers: the leader sends no heartbeats and followers run no election
    /// timer. Failure detection moves to the node level: each node probes its peers a few
    /// times a second (`Peers::probe_loop`), and a follower whose leader's node stops
    /// answering wakes at once and elects a new leader after one election timeout. Any
    /// write or read wakes the group on the node that serves it; followers wake as soon as
    /// their log grows.
    async fn quiesce_loop(node: Arc<Node>) {
        let idle_after = Duration::from_millis(node.config.quiesce_after_ms);
        let me = node.config.node_id;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            for group in node.shard_groups() {
                let (leader, last_index, followers_done) = with_metrics(&group.raft, |m| {
                    let done = m.replication.as_ref().is_some_and(|r| {
                        r.keys()
                            .all(|id| *id == me || has_whole_log(m, *id) || !node.peers.is_up(*id))
                    });
                    (m.current_leader, m.last_log_index, done)
                });
                let idle = {
                    let mut activity = group.activity.lock().unwrap_or_else(|p| p.into_inner());
                    if activity.1 != last_index {
                        *activity = (std::time::Instant::now(), last_index);
                    }
                    activity.0.elapsed() >= idle_after
                };
                // A follower goes quiet only right after its leader reached it (so the
                // leader it names is alive and leading, not a node that just died), and
                // stays quiet only while that node answers and has not restarted since
                // (a restarted node leads nothing).
                let contact_fresh = group
                    .leader_contact
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .elapsed()
                    < Duration::from_millis(node.config.election_timeout_min_ms);
                let leader_boot = leader
                    .filter(|l| *l != me)
                    .and_then(|l| node.peers.view(l).map(|v| (l, v.info.boot_id)));
                let mut quiet_leader = group.quiet_leader.lock().unwrap_or_else(|p| p.into_inner());
                let leader_unchanged = match (*quiet_leader, leader_boot) {
                    (Some(recorded), Some(now)) => recorded == now,
                    (None, Some(_)) => contact_fresh,
                    (_, None) => false,
                };
                let may_rest = idle
                    && !node.is_draining()
                    && match leader {
                        Some(l) if l == me => followers_done,
                        Some(_) => leader_unchanged,
                        None => false,
                    };
                if may_rest && !group.is_quiet() {
                    *quiet_leader = leader_boot;
                    group.quiesce();
                } else if !may_rest && group.is_quiet() {
                    *quiet_leader = None;
                    group.wake();
                }
            }
        }
    }

    /// Hands every leadership this node holds to a peer that can take it, and waits
    /// (bounded) until they moved, so a node stopped for a rolling restart takes no write
    /// down with it. Called on SIGTERM, before the listener closes.
    pub async fn drain(&self, limit: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        for group in self.shard_groups() {
            group.wake();
        }
        if self.peers.others().is_empty() {
            return;
        }
        let me = self.config.node_id;
        let deadline = tokio::time::Instant::now() + limit;
        let mut rafts: Vec<Raft> = self.shard_groups().iter().map(|g| g.raft.clone()).collect();
        rafts.push(self.metadata_raft.clone());
        loop {
            let led: Vec<&Raft> = rafts.iter().filter(|r| leader_of(r) == Some(me)).collect();
            if led.is_empty() {
                // Let the other followers hear from the new leaders (a heartbeat or two)
                // before this node stops answering forwards.
                tokio::time::sleep(Duration::from_millis(self.config.heartbeat_interval_ms * 2))
                    .await;
                tracing::info!("handed every leadership to peers");
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    still_leading = led.len(),
                    "could not hand every leadership away before shutdown"
                );
                return;
            }
            for raft in led {
                let target = with_metrics(raft, |m| {
                    voter_ids(m)
                        .into_iter()
                        .filter(|id| *id != me && self.peers.can_lead(*id))
                        .max_by_key(|id| (has_whole_log(m, *id), *id))
                });
                if let Some(target) = target {
                    let _ = raft.trigger().transfer_leader(target).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Replaces a node whose data dir was lost: in every group (metadata first), removes
    /// its old incarnation as a voter, adds the new one as a learner, waits until it caught
    /// up, then makes it a voter again. Until then it never counts toward a quorum.
    /// Returns how many groups were changed.
    pub async fn replace_node(&self, node_id: u64) -> Result<u32, ApiError> {
        let old = self.members().get(&node_id).cloned().ok_or_else(|| {
            ApiError::not_found(format!("node {node_id} is not a member of this cluster"))
        })?;
        let info = self
            .peers
            .node_info(node_id, Duration::from_secs(2))
            .await
            .ok_or_else(|| {
                ApiError::unavailable(format!(
                    "node {node_id} does not answer; start it (with its empty data dir) first, then retry"
                ))
            })?;
        // Nothing to do when every group already has this incarnation as a voter (a node
        // that kept its data, or a replacement that completed). A replacement that
        // stopped halfway is simply run again: each group's step is idempotent.
        let mut groups = vec![METADATA_GROUP];
        groups.extend(self.metadata.read().shard_groups().map(|(_, s)| s.group_id));
        let current = groups.iter().all(|group| {
            self.raft_for(*group).is_some_and(|raft| {
                let (is_voter, recorded) = membership_of(&raft, node_id);
                is_voter && recorded.is_some_and(|m| m.incarnation == info.incarnation)
            })
        });
        if current {
            return Err(ApiError::invalid(format!(
                "node {node_id} still has its data (incarnation {:x}) and votes in every group; replace-node is only for a node whose data dir was lost",
                info.incarnation
            )));
        }
        let addr = old.addr.clone();
        let mut changed = 0;
        for group in groups {
            let raft = match self.raft_for(group) {
                Some(raft) => raft,
                None => continue,
            };
            let leader = self.wait_leader(&raft).await?;
            if leader == self.config.node_id {
                let outcome = self
                    .replace_member_local(group, node_id, addr.clone(), info.incarnation)
                    .await?;
                if let LocalWrite::NotLeader(leader) = outcome {
                    return Err(not_leader(leader));
                }
            } else {
                let mut client = self.peer_client(leader)?;
                let mut request = tonic::Request::new(tributary_proto::v1::ReplaceMemberRequest {
                    group_id: group,
                    node_id,
                    address: addr.clone(),
                    incarnation: info.incarnation,
                });
                request.set_timeout(Duration::from_secs(600));
                forward_result(leader, client.replace_member(request).await)?;
            }
            tracing::info!(group, node_id, "replaced the node's replica");
            changed += 1;
        }
        Ok(changed)
    }

    /// One group's part of `replace_node`, on its leader; the peer service calls this.
    pub async fn replace_member_local(
        &self,
        group: GroupId,
        node_id: u64,
        addr: String,
        incarnation: u64,
    ) -> Result<LocalWrite<()>, ApiError> {
        use openraft::ChangeMembers;
        let raft = self.raft_for(group).ok_or_else(|| {
            ApiError::unavailable(format!("group {group} is not running on this node; retry"))
        })?;
        let leader = leader_of(&raft);
        if leader != Some(self.config.node_id) {
            return Ok(LocalWrite::NotLeader(leader));
        }
        let change_error = |err| match write_error::<()>(err) {
            Ok(_) => not_leader(None),
            Err(err) => err,
        };
        let member = Member { addr, incarnation };
        let (is_voter, recorded) = membership_of(&raft, node_id);
        if is_voter && recorded.as_ref() == Some(&member) {
            return Ok(LocalWrite::Done(())); // already done (a retried replace)
        }
        if recorded.is_some() && recorded.as_ref() != Some(&member) {
            let change = if is_voter {
                ChangeMembers::RemoveVoters([node_id].into())
            } else {
                ChangeMembers::RemoveNodes([node_id].into())
            };
            raft.change_membership(change, false)
                .await
                .map_err(change_error)?;
        }
        raft.add_learner(node_id, member, true)
            .await
            .map_err(change_error)?;
        raft.change_membership(ChangeMembers::AddVoterIds([node_id].into()), false)
            .await
            .map_err(change_error)?;
        Ok(LocalWrite::Done(()))
    }

    /// Stops every group (for tests and orderly shutdown).
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
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

/// Reads a group's raft metrics. The watch borrow ends before this returns, so it is never
/// held across an await (which can stall openraft's core).
pub fn with_metrics<T>(raft: &Raft, read: impl FnOnce(&RaftMetrics) -> T) -> T {
    let metrics = raft.metrics();
    let metrics = openraft::async_runtime::WatchReceiver::borrow_watched(&metrics);
    read(&metrics)
}

/// Whether an I/O error carries the log engine's `Corruption`.
fn is_corruption(err: &std::io::Error) -> bool {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<tributary_log::LogError>())
        .is_some_and(|e| matches!(e, tributary_log::LogError::Corruption { .. }))
}

/// The leader a group's replica currently knows of.
pub fn leader_of(raft: &Raft) -> Option<u64> {
    with_metrics(raft, |m| m.current_leader)
}

/// On a leader: whether `node`'s replica holds the leader's whole log.
fn has_whole_log(metrics: &RaftMetrics, node: u64) -> bool {
    metrics
        .replication
        .as_ref()
        .and_then(|r| r.get(&node).cloned().flatten())
        .map(|id| id.index)
        >= metrics.last_log_index
}

/// A group's voter ids, in order.
fn voter_ids(metrics: &RaftMetrics) -> Vec<u64> {
    metrics.membership_config.membership().voter_ids().collect()
}

/// The node that should lead a group: voter `group_id mod voters`. Group ids are
/// allocated in sequence, so every node is preferred by an equal share of the groups.
fn preferred_leader(group: GroupId, voters: &[u64]) -> Option<u64> {
    (!voters.is_empty()).then(|| voters[(group as usize) % voters.len()])
}

/// Whether `node` votes in a group, and what its membership records for it.
fn membership_of(raft: &Raft, node: u64) -> (bool, Option<Member>) {
    with_metrics(raft, |m| {
        let membership = m.membership_config.membership();
        let is_voter = membership.voter_ids().any(|id| id == node);
        (is_voter, membership.get_node(&node).cloned())
    })
}

/// A raft role as `trib cluster status` names it.
pub fn role_name(state: openraft::ServerState) -> &'static str {
    use openraft::ServerState;
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// The error for a write to a shard a reshard has sealed.
pub fn shard_closed(shard_index: u32) -> ApiError {
    ApiError {
        code: tributary_proto::v1::ErrorCode::ShardClosed,
        message: format!(
            "shard {} was closed by a reshard; its records now go to its child shards; retry",
            crate::metadata::shard_id(shard_index)
        ),
    }
}

/// The error for an operation that found its replica not leading the group.
pub fn not_leader(leader: Option<u64>) -> ApiError {
    ApiError::unavailable(match leader {
        Some(id) => format!("not the leader: leadership moved to node {id}; retry"),
        None => "not the leader: leadership is changing; retry".to_string(),
    })
}

/// A forwarded request's reply as the client's result.
fn forward_result(
    leader: u64,
    reply: Result<tonic::Response<tributary_proto::v1::ForwardReply>, tonic::Status>,
) -> Result<u64, ApiError> {
    match forward_outcome(leader, reply)? {
        LocalWrite::Done(index) => Ok(index),
        LocalWrite::NotLeader(leader) => Err(not_leader(leader)),
    }
}

/// Like `forward_result`, but tells "the receiver did not lead, nothing was done" apart.
fn forward_outcome(
    leader: u64,
    reply: Result<tonic::Response<tributary_proto::v1::ForwardReply>, tonic::Status>,
) -> Result<LocalWrite<u64>, ApiError> {
    match reply {
        Ok(reply) => {
            let reply = reply.into_inner();
            if reply.not_leader {
                return Ok(LocalWrite::NotLeader(None));
            }
            let code = tributary_proto::v1::ErrorCode::try_from(reply.error_code)
                .unwrap_or(tributary_proto::v1::ErrorCode::InternalFailure);
            if code == tributary_proto::v1::ErrorCode::Unspecified {
                Ok(LocalWrite::Done(reply.index))
            } else {
                Err(ApiError {
                    code,
                    message: reply.error_message,
                })
            }
        }
        // Could not connect: the request never left this node, so it is safe to retry
        // with whoever leads next (the leader may have just stopped).
        Err(status) if never_sent(&status) => Ok(LocalWrite::NotLeader(None)),
        Err(status) => Err(ApiError::unavailable(format!(
            "forwarding to the leader (node {leader}) failed: {}; the outcome is unknown, retry",
            status.message()
        ))),
    }
}

/// Whether a failed forward certainly never reached the peer (no connection was made).
fn never_sent(status: &tonic::Status) -> bool {
    use std::error::Error;
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source = status.source();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = err.source();
    }
    status.message().contains("tcp connect error")
}

fn write_error<T>(
    err: RaftError<crate::raft::TypeConfig, ClientWriteError<crate::raft::TypeConfig>>,
) -> Result<LocalWrite<T>, ApiError> {
    match err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            Ok(LocalWrite::NotLeader(forward.leader_id))
        }
        RaftError::APIError(other) => Err(ApiError::unavailable(format!(
            "write not accepted: {other}; retry"
        ))),
        RaftError::Fatal(fatal) => Err(ApiError::internal(format!("raft group stopped: {fatal}"))),
    }
}
