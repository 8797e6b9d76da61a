//! The metadata group's state: streams, their shards and the cluster's iterator key.
//! Applied identically on every node from the metadata raft log, so every decision here
//! must be deterministic (no clocks, no node config: such values travel in the command).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tributary_proto::v1::ErrorCode;

use crate::error::ApiError;
use crate::raft::GroupId;
use crate::routing::HashRange;
use crate::sequence::SequenceNumber;

/// A change to the metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// First command of a new cluster: the key that signs shard iterators.
    InitCluster {
        /// HMAC key shared by every node.
        iterator_key: Vec<u8>,
    },
    /// A stream created by the first release (retention in hours, only a shard limit).
    /// Still applied when replaying an old metadata log; never proposed any more.
    #[serde(rename = "CreateStream")]
    CreateStreamV1 {
        /// Validated stream name.
        name: String,
        /// Number of shards.
        shard_count: u32,
        /// Retention in hours.
        retention_hours: u32,
        /// Largest record in bytes.
        max_record_bytes: u32,
        /// Creation time.
        created_at_ms: i64,
        /// The shard limit at proposal time.
        max_shards: u32,
    },
    /// Every open shard of the stream has a leader: the stream accepts traffic (CREATING),
    /// or a finished reshard's children are led (UPDATING).
    MarkStreamActive {
        /// The stream incarnation.
        stream_id: u64,
    },
    /// Remove a stream; its shard groups are stopped and their files deleted.
    DeleteStream {
        /// Stream name.
        name: String,
    },
    /// Begin a reshard: the first step's child shards are created (pending, not yet
    /// routed to) and the stream becomes UPDATING.
    StartReshard {
        /// Stream name.
        name: String,
        /// What to do.
        plan: ReshardPlan,
        /// The cluster's limits at proposal time.
        limits: Limits,
    },
    /// The parents of the current step are sealed: close them at their seal entries and
    /// open the children; then start the next step or finish.
    CompleteReshardStep {
        /// The stream incarnation.
        stream_id: u64,
        /// (shard index, seal entry index) of every parent of the step.
        seals: Vec<(u32, u64)>,
        /// When the parents closed (ms), chosen by the proposer.
        closed_at_ms: i64,
    },
    /// Change a stream's retention.
    UpdateRetention {
        /// Stream name.
        name: String,
        /// New retention in milliseconds (validated).
        retention_ms: u64,
    },
    /// Add or overwrite tags.
    AddTags {
        /// Stream name.
        name: String,
        /// Tags (validated against the state by `apply` too).
        tags: BTreeMap<String, String>,
    },
    /// Remove tags (absent keys are ignored).
    RemoveTags {
        /// Stream name.
        name: String,
        /// Keys to remove.
        keys: Vec<String>,
    },
    /// Forget closed shards whose every record is past retention.
    DropExpiredShards {
        /// The stream incarnation.
        stream_id: u64,
        /// Closed shards to drop.
        shard_indexes: Vec<u32>,
        /// The proposer's clock; `apply` re-checks expiry against it.
        now_ms: i64,
    },
    /// Create a stream with evenly split shards. (Last, so older commands keep their
    /// bincode variant numbers on the wire between nodes of different releases.)
    #[serde(rename = "CreateStreamV2")]
    CreateStream {
        /// Validated stream name.
        name: String,
        /// Number of shards (validated).
        shard_count: u32,
        /// Retention in milliseconds (validated).
        retention_ms: u64,
        /// Largest record in bytes.
        max_record_bytes: u32,
        /// Creation time, chosen by the proposer.
        created_at_ms: i64,
        /// Tags (validated).
        tags: BTreeMap<String, String>,
        /// The cluster's limits at proposal time.
        limits: Limits,
    },
    /// Register an enhanced fan-out consumer.
    RegisterConsumer {
        /// Stream name.
        name: String,
        /// Validated consumer name.
        consumer: String,
        /// Registration time, chosen by the proposer.
        created_at_ms: i64,
        /// The per-stream consumer limit at proposal time.
        max_consumers: u32,
    },
    /// Deregister an enhanced fan-out consumer; its subscriptions end.
    DeregisterConsumer {
        /// Stream name.
        name: String,
        /// Consumer name.
        consumer: String,
    },
    /// A consumer-group worker takes a shard's lease (compare-and-set on the epoch).
    TakeLease {
        /// Which stream, application and shard.
        lease: LeaseKey,
        /// The worker taking it.
        owner: String,
        /// The epoch the worker saw; the take fails if it changed since.
        expected_epoch: u64,
        /// Take it from a live owner too (rebalancing).
        steal: bool,
        /// The proposer's clock.
        now_ms: i64,
        /// How long the lease runs without renewal.
        lease_ms: u64,
    },
    /// A worker extends the leases it still holds (owner and epoch unchanged).
    RenewLeases {
        /// Stream name.
        name: String,
        /// Application name.
        application: String,
        /// The worker.
        owner: String,
        /// `(shard index, epoch)` of each lease to extend.
        leases: Vec<(u32, u64)>,
        /// The proposer's clock.
        now_ms: i64,
        /// How long the leases run from now.
        lease_ms: u64,
    },
    /// A worker gives a lease up (graceful shutdown, rebalancing).
    ReleaseLease {
        /// Which lease.
        lease: LeaseKey,
        /// The worker.
        owner: String,
        /// The epoch it holds.
        epoch: u64,
    },
    /// A lease holder records how far the application has processed the shard.
    Checkpoint {
        /// Which lease.
        lease: LeaseKey,
        /// The worker.
        owner: String,
        /// The epoch it holds.
        epoch: u64,
        /// The new checkpoint.
        position: CheckpointPosition,
    },
}

/// One lease: a consumer application's claim on one shard of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseKey {
    /// Stream name.
    pub name: String,
    /// Application name.
    pub application: String,
    /// Shard index.
    pub shard: u32,
}

/// How far an application has processed a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointPosition {
    /// Every record up to and including this sequence number.
    Sequence(#[serde(with = "decimal_u128")] u128),
    /// The whole (closed) shard.
    ShardEnd,
}

/// A shard lease of a consumer application (consumer groups).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseMeta {
    /// The worker holding it; `None` once released (or never taken).
    pub owner: Option<String>,
    /// Grows by one with every take; fences checkpoints from earlier holders.
    pub epoch: u64,
    /// When the lease lapses unless renewed (proposer clock, ms since epoch).
    pub expires_at_ms: i64,
    /// The application's progress in the shard.
    pub checkpoint: Option<CheckpointPosition>,
}

impl LeaseMeta {
    /// Whether `owner` holds the lease at `epoch` (an expired lease nobody took yet still
    /// counts: its holder may checkpoint and renew it, as in the Kinesis Client Library).
    fn held_by(&self, owner: &str, epoch: u64) -> bool {
        self.owner.as_deref() == Some(owner) && self.epoch == epoch
    }
}

/// u128 as a decimal string in JSON (log entries and snapshots), which has no 128-bit numbers.
mod decimal_u128 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u128, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Cluster-wide limits, carried in commands so `apply` stays deterministic when an
/// operator changes them in a node's config.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Limits {
    /// Open (and pending) shards across all streams.
    pub max_shards: u32,
    /// Streams.
    pub max_streams: u32,
}

/// A requested reshard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReshardPlan {
    /// Split one open shard in two; the second child starts at `at`.
    Split {
        /// Shard index.
        shard: u32,
        /// First hash key of the second child.
        at: u128,
    },
    /// Merge two adjacent open shards into one.
    Merge {
        /// Shard index (the child's parent).
        shard: u32,
        /// Adjacent shard index (the child's adjacent parent).
        adjacent: u32,
    },
    /// Scale uniformly to `target` open shards, in split and merge steps.
    Scale {
        /// Wanted open shard count.
        target: u32,
    },
}

/// A reshard in progress. The current step's children are the stream's pending shards;
/// their parents are the shards being sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reshard {
    /// What was asked for.
    pub plan: ReshardPlan,
    /// Open shards when it started (for progress reports).
    pub from_count: u32,
}

impl Reshard {
    /// The open shard count when done.
    pub fn target(&self) -> u32 {
        match self.plan {
            ReshardPlan::Split { .. } => self.from_count + 1,
            ReshardPlan::Merge { .. } => self.from_count - 1,
            ReshardPlan::Scale { target } => target,
        }
    }
}

/// The result of applying a metadata command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetadataOutcome {
    /// Applied.
    Ok,
    /// Not applied; nothing changed.
    Rejected {
        /// `tributary.v1.ErrorCode` value.
        code: i32,
        /// What was wrong.
        message: String,
    },
}

impl MetadataOutcome {
    fn rejected(err: ApiError) -> Self {
        MetadataOutcome::Rejected {
            code: err.code as i32,
            message: err.message,
        }
    }

    fn from_result(result: Result<(), ApiError>) -> Self {
        match result {
            Ok(()) => MetadataOutcome::Ok,
            Err(err) => Self::rejected(err),
        }
    }

    /// Turns a rejection back into an API error.
    pub fn into_result(self) -> Result<(), ApiError> {
        match self {
            MetadataOutcome::Ok => Ok(()),
            MetadataOutcome::Rejected { code, message } => Err(ApiError {
                code: ErrorCode::try_from(code).unwrap_or(ErrorCode::InternalFailure),
                message,
            }),
        }
    }
}

/// Lifecycle of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamStatus {
    /// Shard groups are starting.
    Creating,
    /// Every shard has a leader.
    Active,
    /// A reshard is running (or its children are electing leaders). Writes and reads go on.
    Updating,
}

impl StreamStatus {
    /// The API name.
    pub fn name(self) -> &'static str {
        match self {
            StreamStatus::Creating => "CREATING",
            StreamStatus::Active => "ACTIVE",
            StreamStatus::Updating => "UPDATING",
        }
    }
}

/// Where a shard is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardState {
    /// Created by a reshard step whose parents are not sealed yet: its group runs, but no
    /// record is routed to it and listings do not show it.
    Pending,
    /// Takes the records of its hash range.
    Open,
    /// Closed by a reshard; readable until its records expire.
    Closed {
        /// Index of the seal entry in the shard's log: every record is below it.
        seal_index: u64,
        /// When it closed (ms); once retention has passed since, it is dropped.
        closed_at_ms: i64,
    },
}

/// One shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardMeta {
    /// Index within the stream (`shardId-000000000003` has index 3).
    pub shard_index: u32,
    /// The raft group holding the shard's log.
    pub group_id: GroupId,
    /// Hash keys routed here.
    pub hash_range: HashRange,
    /// The shard this one was split from, or the first of the two it was merged from.
    pub parent: Option<u32>,
    /// The second shard of a merge.
    pub adjacent_parent: Option<u32>,
    /// Lifecycle.
    pub state: ShardState,
}

impl ShardMeta {
    /// The Kinesis-style shard id.
    pub fn shard_id(&self) -> String {
        shard_id(self.shard_index)
    }

    /// The first sequence number the shard can hold.
    pub fn starting_sequence_number(&self) -> SequenceNumber {
        SequenceNumber::shard_start(self.shard_index)
    }

    /// Whether records are routed here.
    pub fn is_open(&self) -> bool {
        self.state == ShardState::Open
    }

    /// The inclusive upper bound of the shard's sequence numbers once closed: just below
    /// the seal entry's first number.
    pub fn ending_sequence_number(&self) -> Option<u128> {
        match self.state {
            ShardState::Closed { seal_index, .. } => Some(
                SequenceNumber {
                    shard_index: self.shard_index,
                    log_index: seal_index,
                    slot: 0,
                }
                .to_u128()
                    - 1,
            ),
            _ => None,
        }
    }

    /// The parents recorded for this shard.
    pub fn parents(&self) -> impl Iterator<Item = u32> {
        self.parent.into_iter().chain(self.adjacent_parent)
    }
}

/// Formats a shard index as a shard id.
pub fn shard_id(index: u32) -> String {
    format!("shardId-{index:012}")
}

/// Parses a shard id back to its index.
pub fn parse_shard_id(id: &str) -> Result<u32, ApiError> {
    id.strip_prefix("shardId-")
        .filter(|digits| digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u32>().ok())
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "shard id {id:?} is malformed; expected shardId- followed by 12 digits"
            ))
        })
}

/// One stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamMeta {
    /// Unique per incarnation: a deleted and recreated stream gets a new id.
    pub stream_id: u64,
    /// Name.
    pub name: String,
    /// Lifecycle state.
    pub status: StreamStatus,
    /// Creation time (ms since epoch).
    pub created_at_ms: i64,
    /// Retention in milliseconds.
    pub retention_ms: u64,
    /// Largest record in bytes.
    pub max_record_bytes: u32,
    /// Shards by index: open, pending and closed (until expired).
    pub shards: Vec<ShardMeta>,
    /// The index the next new shard gets (indexes are never reused).
    pub next_shard_index: u32,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// The reshard in progress, if any.
    pub reshard: Option<Reshard>,
    /// Registered enhanced fan-out consumers by name.
    #[serde(default)]
    pub consumers: BTreeMap<String, ConsumerMeta>,
    /// Consumer-group applications reading the stream: their shard leases by shard index.
    #[serde(default)]
    pub applications: BTreeMap<String, BTreeMap<u32, LeaseMeta>>,
}

/// A registered enhanced fan-out consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerMeta {
    /// Unique per registration (a re-registered consumer gets a new one).
    pub consumer_id: u64,
    /// Registration time (ms).
    pub created_at_ms: i64,
}

impl StreamMeta {
    /// The shard with the given index.
    pub fn shard(&self, index: u32) -> Option<&ShardMeta> {
        self.shards.iter().find(|s| s.shard_index == index)
    }

    /// The open shard that takes a hash key.
    pub fn shard_for_hash(&self, hash: u128) -> Option<&ShardMeta> {
        self.shards
            .iter()
            .find(|s| s.is_open() && s.hash_range.contains(hash))
    }

    /// Open shards in hash key order.
    pub fn open_shards(&self) -> Vec<&ShardMeta> {
        let mut open: Vec<&ShardMeta> = self.shards.iter().filter(|s| s.is_open()).collect();
        open.sort_by_key(|s| s.hash_range.start);
        open
    }

    /// Shards a client may see: open and closed (pending children are internal).
    pub fn visible_shards(&self) -> impl Iterator<Item = &ShardMeta> {
        self.shards
            .iter()
            .filter(|s| s.state != ShardState::Pending)
    }

    /// Shards whose parents include `index`.
    pub fn children_of(&self, index: u32) -> impl Iterator<Item = &ShardMeta> {
        self.shards
            .iter()
            .filter(move |s| s.state != ShardState::Pending && s.parents().any(|p| p == index))
    }

    fn live_shard_count(&self) -> usize {
        self.shards
            .iter()
            .filter(|s| !matches!(s.state, ShardState::Closed { .. }))
            .count()
    }

    fn shard_mut(&mut self, index: u32) -> Option<&mut ShardMeta> {
        self.shards.iter_mut().find(|s| s.shard_index == index)
    }
}

/// A child shard a reshard step creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChildSpec {
    hash_range: HashRange,
    parent: u32,
    adjacent_parent: Option<u32>,
}

/// The children of the next step toward `target` uniform shards, or None when the open
/// shards already are the target's. First every open shard that a target boundary cuts is
/// split at those boundaries (one step); then the shards inside each target range are
/// merged pairwise, a step per halving. Each child has at most two parents, so lineage
/// fits Kinesis's ParentShardId / AdjacentParentShardId.
fn scale_step(open: &[&ShardMeta], target: u32) -> Option<Vec<ChildSpec>> {
    let ranges = HashRange::split_evenly(target);
    let boundaries: Vec<u128> = ranges.iter().skip(1).map(|r| r.start).collect();
    let mut splits = Vec::new();
    for shard in open {
        let cuts: Vec<u128> = boundaries
            .iter()
            .copied()
            .filter(|b| shard.hash_range.start < *b && *b <= shard.hash_range.end)
            .collect();
        if cuts.is_empty() {
            continue;
        }
        let mut start = shard.hash_range.start;
        for cut in cuts {
            splits.push(ChildSpec {
                hash_range: HashRange {
                    start,
                    end: cut - 1,
                },
                parent: shard.shard_index,
                adjacent_parent: None,
            });
            start = cut;
        }
        splits.push(ChildSpec {
            hash_range: HashRange {
                start,
                end: shard.hash_range.end,
            },
            parent: shard.shard_index,
            adjacent_parent: None,
        });
    }
    if !splits.is_empty() {
        return Some(splits);
    }
    let mut merges = Vec::new();
    for range in &ranges {
        let inside: Vec<&&ShardMeta> = open
            .iter()
            .filter(|s| range.start <= s.hash_range.start && s.hash_range.end <= range.end)
            .collect();
        for pair in inside.chunks(2) {
            if let [a, b] = pair {
                merges.push(ChildSpec {
                    hash_range: HashRange {
                        start: a.hash_range.start,
                        end: b.hash_range.end,
                    },
                    parent: a.shard_index,
                    adjacent_parent: Some(b.shard_index),
                });
            }
        }
    }
    (!merges.is_empty()).then_some(merges)
}

/// The first step of a plan, validated against the stream.
fn first_step(stream: &StreamMeta, plan: ReshardPlan) -> Result<Vec<ChildSpec>, ApiError> {
    let open_shard = |index: u32| -> Result<&ShardMeta, ApiError> {
        let shard = stream
            .shard(index)
            .filter(|s| s.state != ShardState::Pending);
        match shard {
            None => Err(ApiError::not_found(format!(
                "shard {} does not exist in stream {}",
                shard_id(index),
                stream.name
            ))),
            Some(s) if !s.is_open() => Err(ApiError::invalid(format!(
                "shard {} of stream {} is CLOSED; only open shards can be resharded",
                shard_id(index),
                stream.name
            ))),
            Some(s) => Ok(s),
        }
    };
    match plan {
        ReshardPlan::Split { shard, at } => {
            let parent = open_shard(shard)?;
            let range = parent.hash_range;
            if at <= range.start || at > range.end {
                return Err(ApiError::invalid(format!(
                    "new starting hash key {at} is outside shard {}'s range: it must be above {} and at most {}",
                    parent.shard_id(),
                    range.start,
                    range.end
                )));
            }
            Ok(vec![
                ChildSpec {
                    hash_range: HashRange {
                        start: range.start,
                        end: at - 1,
                    },
                    parent: shard,
                    adjacent_parent: None,
                },
                ChildSpec {
                    hash_range: HashRange {
                        start: at,
                        end: range.end,
                    },
                    parent: shard,
                    adjacent_parent: None,
                },
            ])
        }
        ReshardPlan::Merge { shard, adjacent } => {
            if shard == adjacent {
                return Err(ApiError::invalid(format!(
                    "cannot merge shard {} with itself",
                    shard_id(shard)
                )));
            }
            let a = open_shard(shard)?;
            let b = open_shard(adjacent)?;
            let (low, high) = if a.hash_range.start < b.hash_range.start {
                (a, b)
            } else {
                (b, a)
            };
            if low.hash_range.end.checked_add(1) != Some(high.hash_range.start) {
                return Err(ApiError::invalid(format!(
                    "shards {} and {} are not adjacent: merged shards must cover neighbouring hash key ranges",
                    a.shard_id(),
                    b.shard_id()
                )));
            }
            Ok(vec![ChildSpec {
                hash_range: HashRange {
                    start: low.hash_range.start,
                    end: high.hash_range.end,
                },
                parent: shard,
                adjacent_parent: Some(adjacent),
            }])
        }
        ReshardPlan::Scale { target } => {
            let open = stream.open_shards();
            if target as usize == open.len() {
                return Err(ApiError::invalid(format!(
                    "stream {} already has {target} open shards",
                    stream.name
                )));
            }
            scale_step(&open, target).ok_or_else(|| {
                ApiError::internal(format!("no reshard step leads to {target} shards"))
            })
        }
    }
}

/// Everything the metadata group holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetadataState {
    /// Signs shard iterators; set by the first command of the cluster.
    pub iterator_key: Option<Vec<u8>>,
    /// Streams by name.
    pub streams: BTreeMap<String, StreamMeta>,
    next_stream_id: u64,
    next_group_id: GroupId,
    #[serde(default)]
    next_consumer_id: u64,
}

impl MetadataState {
    /// Open and pending shards across streams (closed shards do not count toward the limit).
    pub fn shard_total(&self) -> usize {
        self.streams.values().map(|s| s.live_shard_count()).sum()
    }

    /// A stream by name, or ResourceNotFound.
    pub fn stream(&self, name: &str) -> Result<&StreamMeta, ApiError> {
        self.streams
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("stream {name} does not exist")))
    }

    fn stream_mut(&mut self, name: &str) -> Result<&mut StreamMeta, ApiError> {
        self.streams
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(format!("stream {name} does not exist")))
    }

    /// An application's lease of a visible shard, made (free, epoch 0) on first use.
    fn lease_mut(&mut self, key: &LeaseKey) -> Result<&mut LeaseMeta, ApiError> {
        let stream = self.stream_mut(&key.name)?;
        let visible = stream
            .shard(key.shard)
            .is_some_and(|shard| shard.state != ShardState::Pending);
        if !visible {
            return Err(ApiError::not_found(format!(
                "stream {} has no shard {}",
                key.name,
                shard_id(key.shard)
            )));
        }
        Ok(stream
            .applications
            .entry(key.application.clone())
            .or_default()
            .entry(key.shard)
            .or_default())
    }

    /// The lease if `owner` holds it at `epoch`, else LeaseLost.
    fn held_lease_mut(
        &mut self,
        key: &LeaseKey,
        owner: &str,
        epoch: u64,
    ) -> Result<&mut LeaseMeta, ApiError> {
        let current = self.lease_mut(key)?;
        if !current.held_by(owner, epoch) {
            return Err(ApiError::lease_lost(format!(
                "{owner} no longer holds the lease of {} (epoch {epoch}); it is {} at epoch {}",
                shard_id(key.shard),
                match &current.owner {
                    Some(other) => format!("held by {other}"),
                    None => "free".to_string(),
                },
                current.epoch
            )));
        }
        Ok(current)
    }

    /// A stream by incarnation id.
    pub fn stream_by_id(&self, stream_id: u64) -> Option<&StreamMeta> {
        self.streams.values().find(|s| s.stream_id == stream_id)
    }

    fn stream_by_id_mut(&mut self, stream_id: u64) -> Option<&mut StreamMeta> {
        self.streams.values_mut().find(|s| s.stream_id == stream_id)
    }

    /// Applies a command. Must be deterministic.
    pub fn apply(&mut self, command: &MetadataCommand) -> MetadataOutcome {
        match command {
            MetadataCommand::InitCluster { iterator_key } => {
                if self.iterator_key.is_none() {
                    self.iterator_key = Some(iterator_key.clone());
                }
                MetadataOutcome::Ok
            }
            MetadataCommand::CreateStreamV1 {
                name,
                shard_count,
                retention_hours,
                max_record_bytes,
                created_at_ms,
                max_shards,
            } => MetadataOutcome::from_result(self.create_stream(
                name,
                *shard_count,
                u64::from(*retention_hours) * 3600 * 1000,
                *max_record_bytes,
                *created_at_ms,
                &BTreeMap::new(),
                Limits {
                    max_shards: *max_shards,
                    max_streams: u32::MAX,
                },
            )),
            MetadataCommand::CreateStream {
                name,
                shard_count,
                retention_ms,
                max_record_bytes,
                created_at_ms,
                tags,
                limits,
            } => MetadataOutcome::from_result(self.create_stream(
                name,
                *shard_count,
                *retention_ms,
                *max_record_bytes,
                *created_at_ms,
                tags,
                *limits,
            )),
            MetadataCommand::MarkStreamActive { stream_id } => {
                if let Some(stream) = self.stream_by_id_mut(*stream_id) {
                    if stream.reshard.is_none() {
                        stream.status = StreamStatus::Active;
                    }
                }
                MetadataOutcome::Ok
            }
            MetadataCommand::DeleteStream { name } => match self.streams.remove(name) {
                Some(_) => MetadataOutcome::Ok,
                None => MetadataOutcome::rejected(ApiError::not_found(format!(
                    "stream {name} does not exist"
                ))),
            },
            MetadataCommand::StartReshard { name, plan, limits } => {
                MetadataOutcome::from_result(self.start_reshard(name, *plan, *limits))
            }
            MetadataCommand::CompleteReshardStep {
                stream_id,
                seals,
                closed_at_ms,
            } => MetadataOutcome::from_result(self.complete_reshard_step(
                *stream_id,
                seals,
                *closed_at_ms,
            )),
            MetadataCommand::UpdateRetention { name, retention_ms } => {
                MetadataOutcome::from_result(self.stream_mut(name).map(|stream| {
                    stream.retention_ms = *retention_ms;
                }))
            }
            MetadataCommand::AddTags { name, tags } => {
                MetadataOutcome::from_result(self.stream_mut(name).and_then(|stream| {
                    let added = tags
                        .keys()
                        .filter(|k| !stream.tags.contains_key(*k))
                        .count();
                    let total = stream.tags.len() + added;
                    if total > crate::validation::MAX_TAGS {
                        return Err(ApiError::limit(format!(
                            "the stream would have {total} tags; the limit is {} per stream",
                            crate::validation::MAX_TAGS
                        )));
                    }
                    stream
                        .tags
                        .extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
                    Ok(())
                }))
            }
            MetadataCommand::RemoveTags { name, keys } => {
                MetadataOutcome::from_result(self.stream_mut(name).map(|stream| {
                    for key in keys {
                        stream.tags.remove(key);
                    }
                }))
            }
            MetadataCommand::RegisterConsumer {
                name,
                consumer,
                created_at_ms,
                max_consumers,
            } => {
                let next_id = self.next_consumer_id + 1;
                let result = self.stream_mut(name).and_then(|stream| {
                    if stream.consumers.contains_key(consumer) {
                        return Err(ApiError::in_use(format!(
                            "consumer {consumer} is already registered on stream {name}"
                        )));
                    }
                    if stream.consumers.len() >= *max_consumers as usize {
                        return Err(ApiError::limit(format!(
                            "stream {name} already has {} consumers; the limit is {max_consumers} per stream",
                            stream.consumers.len()
                        )));
                    }
                    stream.consumers.insert(
                        consumer.clone(),
                        ConsumerMeta {
                            consumer_id: next_id,
                            created_at_ms: *created_at_ms,
                        },
                    );
                    Ok(())
                });
                if result.is_ok() {
                    self.next_consumer_id = next_id;
                }
                MetadataOutcome::from_result(result)
            }
            MetadataCommand::DeregisterConsumer { name, consumer } => {
                MetadataOutcome::from_result(self.stream_mut(name).and_then(|stream| {
                    stream
                        .consumers
                        .remove(consumer)
                        .map(|_| ())
                        .ok_or_else(|| {
                            ApiError::not_found(format!(
                                "consumer {consumer} is not registered on stream {name}"
                            ))
                        })
                }))
            }
            MetadataCommand::DropExpiredShards {
                stream_id,
                shard_indexes,
                now_ms,
            } => {
                if let Some(stream) = self.stream_by_id_mut(*stream_id) {
                    let retention = i64::try_from(stream.retention_ms).unwrap_or(i64::MAX);
                    stream.shards.retain(|shard| match shard.state {
                        ShardState::Closed { closed_at_ms, .. } => {
                            !(shard_indexes.contains(&shard.shard_index)
                                && closed_at_ms.saturating_add(retention) < *now_ms)
                        }
                        _ => true,
                    });
                    let shards = &stream.shards;
                    for leases in stream.applications.values_mut() {
                        leases.retain(|index, _| shards.iter().any(|s| s.shard_index == *index));
                    }
                }
                MetadataOutcome::Ok
            }
            MetadataCommand::TakeLease {
                lease,
                owner,
                expected_epoch,
                steal,
                now_ms,
                lease_ms,
            } => MetadataOutcome::from_result(self.lease_mut(lease).and_then(|current| {
                if current.epoch != *expected_epoch {
                    return Err(ApiError::in_use(format!(
                        "the lease of {} was taken since epoch {expected_epoch} (it is at epoch {})",
                        shard_id(lease.shard),
                        current.epoch
                    )));
                }
                let live = current.owner.is_some() && current.expires_at_ms > *now_ms;
                if live && !steal && current.owner.as_deref() != Some(owner.as_str()) {
                    return Err(ApiError::in_use(format!(
                        "the lease of {} is held by {} until it expires",
                        shard_id(lease.shard),
                        current.owner.as_deref().unwrap_or_default()
                    )));
                }
                current.owner = Some(owner.clone());
                current.epoch += 1;
                current.expires_at_ms = expiry(*now_ms, *lease_ms);
                Ok(())
            })),
            MetadataCommand::RenewLeases {
                name,
                application,
                owner,
                leases,
                now_ms,
                lease_ms,
            } => MetadataOutcome::from_result(self.stream_mut(name).map(|stream| {
                if let Some(table) = stream.applications.get_mut(application) {
                    for (shard, epoch) in leases {
                        if let Some(current) = table.get_mut(shard) {
                            if current.held_by(owner, *epoch) {
                                current.expires_at_ms = expiry(*now_ms, *lease_ms);
                            }
                        }
                    }
                }
            })),
            MetadataCommand::ReleaseLease {
                lease,
                owner,
                epoch,
            } => MetadataOutcome::from_result(self.held_lease_mut(lease, owner, *epoch).map(
                |current| {
                    current.owner = None;
                    current.expires_at_ms = 0;
                },
            )),
            MetadataCommand::Checkpoint {
                lease,
                owner,
                epoch,
                position,
            } => {
                let closed = self
                    .stream(&lease.name)
                    .ok()
                    .and_then(|stream| stream.shard(lease.shard))
                    .is_some_and(|shard| matches!(shard.state, ShardState::Closed { .. }));
                MetadataOutcome::from_result(self.held_lease_mut(lease, owner, *epoch).and_then(
                    |current| {
                        let id = shard_id(lease.shard);
                        match (current.checkpoint, *position) {
                            (Some(CheckpointPosition::ShardEnd), CheckpointPosition::Sequence(_)) => {
                                return Err(ApiError::invalid(format!(
                                    "{id} is already checkpointed at its end; checkpoints never move back"
                                )))
                            }
                            (
                                Some(CheckpointPosition::Sequence(old)),
                                CheckpointPosition::Sequence(new),
                            ) if new < old => {
                                return Err(ApiError::invalid(format!(
                                    "checkpoint {new} of {id} is below the current checkpoint {old}; checkpoints never move back"
                                )))
                            }
                            (_, CheckpointPosition::ShardEnd) if !closed => {
                                return Err(ApiError::invalid(format!(
                                    "{id} is open; only a closed shard can be checkpointed at its end"
                                )))
                            }
                            _ => {}
                        }
                        current.checkpoint = Some(*position);
                        Ok(())
                    },
                ))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create_stream(
        &mut self,
        name: &str,
        shard_count: u32,
        retention_ms: u64,
        max_record_bytes: u32,
        created_at_ms: i64,
        tags: &BTreeMap<String, String>,
        limits: Limits,
    ) -> Result<(), ApiError> {
        if self.streams.contains_key(name) {
            return Err(ApiError::in_use(format!("stream {name} already exists")));
        }
        if self.streams.len() >= limits.max_streams as usize {
            return Err(ApiError::limit(format!(
                "this cluster already has {} streams; its stream limit is {}",
                self.streams.len(),
                limits.max_streams
            )));
        }
        let total = self.shard_total() as u64 + u64::from(shard_count);
        if total > u64::from(limits.max_shards) {
            return Err(ApiError::limit(format!(
                "creating {shard_count} shards would make {total} open shards; this cluster's shard limit is {}",
                limits.max_shards
            )));
        }
        self.next_stream_id += 1;
        let shards = HashRange::split_evenly(shard_count)
            .into_iter()
            .enumerate()
            .map(|(i, hash_range)| {
                self.next_group_id += 1;
                ShardMeta {
                    shard_index: i as u32,
                    group_id: self.next_group_id,
                    hash_range,
                    parent: None,
                    adjacent_parent: None,
                    state: ShardState::Open,
                }
            })
            .collect();
        self.streams.insert(
            name.to_string(),
            StreamMeta {
                stream_id: self.next_stream_id,
                name: name.to_string(),
                status: StreamStatus::Creating,
                created_at_ms,
                retention_ms,
                max_record_bytes,
                shards,
                next_shard_index: shard_count,
                tags: tags.clone(),
                reshard: None,
                consumers: BTreeMap::new(),
                applications: BTreeMap::new(),
            },
        );
        Ok(())
    }

    fn start_reshard(
        &mut self,
        name: &str,
        plan: ReshardPlan,
        limits: Limits,
    ) -> Result<(), ApiError> {
        let others = self.shard_total() - self.stream(name)?.live_shard_count();
        let stream = self.stream(name)?;
        if stream.status != StreamStatus::Active {
            return Err(ApiError::in_use(format!(
                "stream {name} is {}; reshard it once it is ACTIVE",
                stream.status.name()
            )));
        }
        let children = first_step(stream, plan)?;
        let open = stream.open_shards().len();
        let parents: std::collections::BTreeSet<u32> = children
            .iter()
            .flat_map(|c| std::iter::once(c.parent).chain(c.adjacent_parent))
            .collect();
        // The most open shards the operation reaches: after its first step (a scale
        // splits first, then only merges), or at its end.
        let after_first = open - parents.len() + children.len();
        let after = match plan {
            ReshardPlan::Scale { target } => target as usize,
            _ => after_first,
        };
        let needed = others + after_first.max(after);
        if needed > limits.max_shards as usize {
            return Err(ApiError::limit(format!(
                "this reshard needs up to {needed} open shards in the cluster at once; the shard limit is {}",
                limits.max_shards
            )));
        }
        let from_count = open as u32;
        let mut next_group = self.next_group_id;
        let stream = self.stream_mut(name)?;
        add_children(stream, &children, &mut next_group);
        stream.status = StreamStatus::Updating;
        stream.reshard = Some(Reshard { plan, from_count });
        self.next_group_id = next_group;
        Ok(())
    }

    fn complete_reshard_step(
        &mut self,
        stream_id: u64,
        seals: &[(u32, u64)],
        closed_at_ms: i64,
    ) -> Result<(), ApiError> {
        let mut next_group = self.next_group_id;
        let stream = self
            .stream_by_id_mut(stream_id)
            .ok_or_else(|| ApiError::not_found("the resharded stream no longer exists"))?;
        let reshard = stream
            .reshard
            .ok_or_else(|| ApiError::in_use("no reshard is in progress"))?;
        let parents: std::collections::BTreeSet<u32> = stream
            .shards
            .iter()
            .filter(|s| s.state == ShardState::Pending)
            .flat_map(|s| s.parents())
            .collect();
        let sealed: std::collections::BTreeSet<u32> = seals.iter().map(|(i, _)| *i).collect();
        if parents != sealed {
            return Err(ApiError::in_use(format!(
                "the step's parents are {parents:?} but seals came for {sealed:?}"
            )));
        }
        for (index, seal_index) in seals {
            if let Some(shard) = stream.shard_mut(*index) {
                shard.state = ShardState::Closed {
                    seal_index: *seal_index,
                    closed_at_ms,
                };
            }
        }
        for shard in &mut stream.shards {
            if shard.state == ShardState::Pending {
                shard.state = ShardState::Open;
            }
        }
        let next = match reshard.plan {
            ReshardPlan::Scale { target } => scale_step(&stream.open_shards(), target),
            _ => None,
        };
        match next {
            Some(children) => add_children(stream, &children, &mut next_group),
            // Done; the stream turns ACTIVE once the children have leaders.
            None => stream.reshard = None,
        }
        self.next_group_id = next_group;
        Ok(())
    }

    /// Every shard group that should exist.
    pub fn shard_groups(&self) -> impl Iterator<Item = (&StreamMeta, &ShardMeta)> {
        self.streams
            .values()
            .flat_map(|s| s.shards.iter().map(move |shard| (s, shard)))
    }
}

/// When a lease taken or renewed at `now_ms` for `lease_ms` lapses.
fn expiry(now_ms: i64, lease_ms: u64) -> i64 {
    now_ms.saturating_add(i64::try_from(lease_ms).unwrap_or(i64::MAX))
}

fn add_children(stream: &mut StreamMeta, children: &[ChildSpec], next_group: &mut GroupId) {
    for child in children {
        *next_group += 1;
        stream.shards.push(ShardMeta {
            shard_index: stream.next_shard_index,
            group_id: *next_group,
            hash_range: child.hash_range,
            parent: Some(child.parent),
            adjacent_parent: child.adjacent_parent,
            state: ShardState::Pending,
        });
        stream.next_shard_index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_shards: u32) -> Limits {
        Limits {
            max_shards,
            max_streams: 10,
        }
    }

    fn create(name: &str, shards: u32, max: u32) -> MetadataCommand {
        MetadataCommand::CreateStream {
            name: name.into(),
            shard_count: shards,
            retention_ms: 24 * 3600 * 1000,
            max_record_bytes: 1 << 20,
            created_at_ms: 1,
            tags: BTreeMap::new(),
            limits: limits(max),
        }
    }

    /// An ACTIVE stream with `shards` shards.
    fn active(shards: u32, max: u32) -> MetadataState {
        let mut state = MetadataState::default();
        state
            .apply(&create("s", shards, max))
            .into_result()
            .expect("create");
        let id = state.stream("s").expect("exists").stream_id;
        state.apply(&MetadataCommand::MarkStreamActive { stream_id: id });
        state
    }

    fn start(state: &mut MetadataState, plan: ReshardPlan, max: u32) -> Result<(), ApiError> {
        state
            .apply(&MetadataCommand::StartReshard {
                name: "s".into(),
                plan,
                limits: limits(max),
            })
            .into_result()
    }

    /// Seals every parent of the current step (at a made-up index) until the reshard ends;
    /// returns the number of steps.
    fn run_to_end(state: &mut MetadataState) -> usize {
        let mut steps = 0;
        loop {
            let stream = state.stream("s").expect("exists").clone();
            if stream.reshard.is_none() {
                return steps;
            }
            let seals: std::collections::BTreeSet<u32> = stream
                .shards
                .iter()
                .filter(|s| s.state == ShardState::Pending)
                .flat_map(|s| s.parents())
                .collect();
            state
                .apply(&MetadataCommand::CompleteReshardStep {
                    stream_id: stream.stream_id,
                    seals: seals.into_iter().map(|i| (i, 10)).collect(),
                    closed_at_ms: 5,
                })
                .into_result()
                .expect("step completes");
            steps += 1;
            assert!(steps < 64, "reshard does not converge");
        }
    }

    /// Open shards tile the hash key space without gaps or overlaps.
    fn assert_open_tiles(stream: &StreamMeta) {
        let open = stream.open_shards();
        assert_eq!(open.first().map(|s| s.hash_range.start), Some(0));
        assert_eq!(open.last().map(|s| s.hash_range.end), Some(u128::MAX));
        for pair in open.windows(2) {
            assert_eq!(pair[0].hash_range.end + 1, pair[1].hash_range.start);
        }
    }

    #[test]
    fn split_closes_the_parent_and_opens_two_children() {
        let mut state = active(2, 100);
        let at = HashRange::split_evenly(2)[0].end / 2;
        start(&mut state, ReshardPlan::Split { shard: 0, at }, 100).expect("split");
        let stream = state.stream("s").expect("exists");
        assert_eq!(stream.status, StreamStatus::Updating);
        // Until the parent is sealed, records still go to it.
        assert_eq!(stream.shard_for_hash(0).map(|s| s.shard_index), Some(0));
        assert_eq!(stream.visible_shards().count(), 2);
        // A second reshard meanwhile is refused and changes nothing.
        let busy = start(&mut state, ReshardPlan::Scale { target: 4 }, 100).expect_err("busy");
        assert_eq!(busy.code, ErrorCode::ResourceInUse);
        assert!(busy.message.contains("UPDATING"), "{}", busy.message);
        assert_eq!(run_to_end(&mut state), 1);
        let stream = state.stream("s").expect("exists");
        assert_eq!(stream.open_shards().len(), 3);
        assert_open_tiles(stream);
        let parent = stream.shard(0).expect("parent stays");
        assert!(matches!(
            parent.state,
            ShardState::Closed { seal_index: 10, .. }
        ));
        assert!(parent.ending_sequence_number().is_some());
        let children: Vec<u32> = stream.children_of(0).map(|c| c.shard_index).collect();
        assert_eq!(children, vec![2, 3]);
        assert_eq!(stream.shard(3).map(|c| c.hash_range.start), Some(at));
        assert_eq!(stream.shard_for_hash(at).map(|s| s.shard_index), Some(3));
        // Children have higher indexes, so their sequence numbers are above the parent's.
        assert!(
            stream
                .shard(2)
                .map(|c| c.starting_sequence_number().to_u128())
                > parent.ending_sequence_number()
        );
        let id = stream.stream_id;
        state.apply(&MetadataCommand::MarkStreamActive { stream_id: id });
        assert_eq!(
            state.stream("s").map(|s| s.status).ok(),
            Some(StreamStatus::Active)
        );
    }

    #[test]
    fn merge_needs_adjacent_open_shards() {
        let mut state = active(3, 100);
        let err = start(
            &mut state,
            ReshardPlan::Merge {
                shard: 0,
                adjacent: 2,
            },
            100,
        )
        .expect_err("not adjacent");
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("not adjacent"), "{}", err.message);
        assert_eq!(
            state.stream("s").map(|s| s.status).ok(),
            Some(StreamStatus::Active)
        );
        let missing = start(
            &mut state,
            ReshardPlan::Merge {
                shard: 0,
                adjacent: 9,
            },
            100,
        )
        .expect_err("missing");
        assert_eq!(missing.code, ErrorCode::ResourceNotFound);
        start(
            &mut state,
            ReshardPlan::Merge {
                shard: 2,
                adjacent: 1,
            },
            100,
        )
        .expect("merge");
        run_to_end(&mut state);
        let stream = state.stream("s").expect("exists");
        assert_open_tiles(stream);
        let child = stream.shard(3).expect("child");
        assert_eq!((child.parent, child.adjacent_parent), (Some(2), Some(1)));
        state.apply(&MetadataCommand::MarkStreamActive {
            stream_id: stream.stream_id,
        });
        let closed = start(
            &mut state,
            ReshardPlan::Merge {
                shard: 1,
                adjacent: 0,
            },
            100,
        )
        .expect_err("closed");
        assert_eq!(closed.code, ErrorCode::InvalidArgument);
        assert!(closed.message.contains("CLOSED"), "{}", closed.message);
    }

    #[test]
    fn split_point_must_be_inside_the_shard() {
        let mut state = active(2, 100);
        let range = HashRange::split_evenly(2)[1];
        for at in [range.start, range.start - 1, 0] {
            let err =
                start(&mut state, ReshardPlan::Split { shard: 1, at }, 100).expect_err("outside");
            assert_eq!(err.code, ErrorCode::InvalidArgument);
            assert!(err.message.contains("outside"), "{}", err.message);
        }
        assert!(state.stream("s").expect("exists").reshard.is_none());
        start(
            &mut state,
            ReshardPlan::Split {
                shard: 1,
                at: u128::MAX,
            },
            100,
        )
        .expect("the last key may start the second child");
    }

    #[test]
    fn scaling_reaches_uniform_ranges_with_at_most_two_parents() {
        for (from, to) in [(2, 8), (8, 3), (3, 1), (1, 7), (5, 6), (6, 5), (7, 2)] {
            let mut state = active(from, 100);
            start(&mut state, ReshardPlan::Scale { target: to }, 100).expect("scale");
            run_to_end(&mut state);
            let stream = state.stream("s").expect("exists");
            let ranges: Vec<HashRange> =
                stream.open_shards().iter().map(|s| s.hash_range).collect();
            assert_eq!(ranges, HashRange::split_evenly(to), "{from} -> {to}");
            for shard in &stream.shards {
                assert!(shard.parents().count() <= 2);
            }
        }
    }

    #[test]
    fn scaling_checks_the_shard_limit_up_front() {
        let mut state = active(2, 10);
        let err = start(&mut state, ReshardPlan::Scale { target: 11 }, 10).expect_err("limit");
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        assert!(err.message.contains("shard limit is 10"), "{}", err.message);
        // 4 -> 3 splits two shards at 1/3 and 2/3 first: 6 open shards at once.
        let mut four = active(4, 5);
        let err = start(&mut four, ReshardPlan::Scale { target: 3 }, 5).expect_err("peak");
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        assert!(err.message.contains("needs up to 6"), "{}", err.message);
        assert!(four.stream("s").expect("exists").reshard.is_none());
        let same = start(&mut state, ReshardPlan::Scale { target: 2 }, 10).expect_err("same");
        assert_eq!(same.code, ErrorCode::InvalidArgument);
        assert_eq!(state.stream("s").map(|s| s.shards.len()).ok(), Some(2));
        // Closed shards do not count: 2 -> 8 -> 2 -> 8 fits a limit of 10.
        for target in [8, 2, 8] {
            start(&mut state, ReshardPlan::Scale { target }, 10).expect("fits");
            run_to_end(&mut state);
            let id = state.stream("s").expect("exists").stream_id;
            state.apply(&MetadataCommand::MarkStreamActive { stream_id: id });
        }
    }

    #[test]
    fn expired_closed_shards_are_dropped_and_open_ones_never() {
        let mut state = active(1, 10);
        start(&mut state, ReshardPlan::Scale { target: 2 }, 10).expect("scale");
        run_to_end(&mut state);
        let stream = state.stream("s").expect("exists").clone();
        let retention = stream.retention_ms as i64;
        let drop = |now_ms| MetadataCommand::DropExpiredShards {
            stream_id: stream.stream_id,
            shard_indexes: vec![0, 1, 2],
            now_ms,
        };
        state.apply(&drop(5 + retention));
        assert_eq!(state.stream("s").map(|s| s.shards.len()).ok(), Some(3));
        state.apply(&drop(6 + retention));
        let after = state.stream("s").expect("exists");
        assert!(after.shard(0).is_none());
        assert_eq!(after.open_shards().len(), 2);
    }

    #[test]
    fn stream_limit_and_tags() {
        let mut state = MetadataState::default();
        for i in 0..10 {
            state
                .apply(&create(&format!("s{i}"), 1, 100))
                .into_result()
                .expect("create");
        }
        let err = state
            .apply(&create("s10", 1, 100))
            .into_result()
            .expect_err("limit");
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        assert!(
            err.message.contains("stream limit is 10"),
            "{}",
            err.message
        );
        let tags: BTreeMap<String, String> = (0..50)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        state
            .apply(&MetadataCommand::AddTags {
                name: "s0".into(),
                tags,
            })
            .into_result()
            .expect("50 tags");
        let one_more = MetadataCommand::AddTags {
            name: "s0".into(),
            tags: std::iter::once(("x".to_string(), "y".to_string())).collect(),
        };
        let err = state.apply(&one_more).into_result().expect_err("51");
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        assert_eq!(state.stream("s0").map(|s| s.tags.len()).ok(), Some(50));
        state.apply(&MetadataCommand::RemoveTags {
            name: "s0".into(),
            keys: vec!["k1".into(), "absent".into()],
        });
        assert_eq!(state.stream("s0").map(|s| s.tags.len()).ok(), Some(49));
    }

    #[test]
    fn a_first_release_create_stream_still_applies() {
        let json = r#"{"CreateStream":{"name":"old","shard_count":2,"retention_hours":48,"max_record_bytes":1048576,"created_at_ms":7,"max_shards":10}}"#;
        let command: MetadataCommand = serde_json::from_str(json).expect("old command reads");
        let mut state = MetadataState::default();
        state.apply(&command).into_result().expect("applies");
        let stream = state.stream("old").expect("exists");
        assert_eq!(stream.retention_ms, 48 * 3600 * 1000);
        assert_eq!(stream.open_shards().len(), 2);
    }

    fn key(shard: u32) -> LeaseKey {
        LeaseKey {
            name: "s".into(),
            application: "app".into(),
            shard,
        }
    }

    fn take(
        owner: &str,
        shard: u32,
        expected_epoch: u64,
        steal: bool,
        now_ms: i64,
    ) -> MetadataCommand {
        MetadataCommand::TakeLease {
            lease: key(shard),
            owner: owner.into(),
            expected_epoch,
            steal,
            now_ms,
            lease_ms: 1_000,
        }
    }

    fn checkpoint(owner: &str, epoch: u64, position: CheckpointPosition) -> MetadataCommand {
        MetadataCommand::Checkpoint {
            lease: key(0),
            owner: owner.into(),
            epoch,
            position,
        }
    }

    fn lease(state: &MetadataState, shard: u32) -> LeaseMeta {
        state.streams["s"].applications["app"][&shard].clone()
    }

    fn code(outcome: MetadataOutcome) -> Option<ErrorCode> {
        outcome.into_result().err().map(|e| e.code)
    }

    #[test]
    fn a_lease_is_taken_by_one_worker_until_it_expires_or_is_stolen() {
        let mut state = active(2, 10);
        assert_eq!(code(state.apply(&take("a", 0, 0, false, 100))), None);
        assert_eq!(lease(&state, 0).epoch, 1);
        assert_eq!(lease(&state, 0).expires_at_ms, 1_100);
        // A second take naming the same (now stale) epoch loses the compare-and-set.
        assert_eq!(
            code(state.apply(&take("b", 0, 0, false, 200))),
            Some(ErrorCode::ResourceInUse)
        );
        // Live and not stolen: refused; stolen: taken.
        assert_eq!(
            code(state.apply(&take("b", 0, 1, false, 200))),
            Some(ErrorCode::ResourceInUse)
        );
        assert_eq!(code(state.apply(&take("b", 0, 1, true, 200))), None);
        assert_eq!(lease(&state, 0).owner.as_deref(), Some("b"));
        assert_eq!(lease(&state, 0).epoch, 2);
        // Renewing a lost lease does nothing; renewing a held one moves its expiry.
        let renew = |owner: &str, epoch: u64, now_ms: i64| MetadataCommand::RenewLeases {
            name: "s".into(),
            application: "app".into(),
            owner: owner.into(),
            leases: vec![(0, epoch)],
            now_ms,
            lease_ms: 1_000,
        };
        state.apply(&renew("a", 1, 900));
        assert_eq!(lease(&state, 0).expires_at_ms, 1_200);
        state.apply(&renew("b", 2, 900));
        assert_eq!(lease(&state, 0).expires_at_ms, 1_900);
        // Expired: anyone may take it without stealing.
        assert_eq!(code(state.apply(&take("a", 0, 2, false, 2_000))), None);
        assert_eq!(lease(&state, 0).epoch, 3);
        // No such shard.
        assert_eq!(
            code(state.apply(&take("a", 7, 0, false, 2_000))),
            Some(ErrorCode::ResourceNotFound)
        );
    }

    #[test]
    fn checkpoints_are_fenced_by_epoch_and_never_move_back() {
        let mut state = active(1, 10);
        state.apply(&take("a", 0, 0, false, 0));
        let seq = |n: u128| CheckpointPosition::Sequence(n);
        assert_eq!(code(state.apply(&checkpoint("a", 1, seq(10)))), None);
        assert_eq!(
            code(state.apply(&checkpoint("a", 1, seq(9)))),
            Some(ErrorCode::InvalidArgument)
        );
        assert_eq!(code(state.apply(&checkpoint("a", 1, seq(10)))), None);
        // An open shard cannot be checkpointed at its end.
        assert_eq!(
            code(state.apply(&checkpoint("a", 1, CheckpointPosition::ShardEnd))),
            Some(ErrorCode::InvalidArgument)
        );
        // b steals the lease: a's checkpoint is refused and changes nothing.
        state.apply(&take("b", 0, 1, true, 10));
        assert_eq!(
            code(state.apply(&checkpoint("a", 1, seq(50)))),
            Some(ErrorCode::LeaseLost)
        );
        assert_eq!(lease(&state, 0).checkpoint, Some(seq(10)));
        assert_eq!(code(state.apply(&checkpoint("b", 2, seq(20)))), None);
        // Released: the old holder can neither checkpoint nor release again.
        let release = |owner: &str, epoch: u64| MetadataCommand::ReleaseLease {
            lease: key(0),
            owner: owner.into(),
            epoch,
        };
        assert_eq!(code(state.apply(&release("b", 2))), None);
        assert_eq!(lease(&state, 0).owner, None);
        assert_eq!(
            code(state.apply(&checkpoint("b", 2, seq(30)))),
            Some(ErrorCode::LeaseLost)
        );
        assert_eq!(
            code(state.apply(&release("b", 2))),
            Some(ErrorCode::LeaseLost)
        );
        // The next taker continues from the checkpoint at the next epoch.
        assert_eq!(code(state.apply(&take("c", 0, 2, false, 20))), None);
        assert_eq!(lease(&state, 0).epoch, 3);
        assert_eq!(lease(&state, 0).checkpoint, Some(seq(20)));
    }

    #[test]
    fn leases_survive_a_json_round_trip_and_go_with_their_shard() {
        let mut state = active(1, 10);
        state.apply(&take("a", 0, 0, false, 0));
        let big = u128::MAX - 5;
        state.apply(&checkpoint("a", 1, CheckpointPosition::Sequence(big)));
        let json = serde_json::to_vec(&state).expect("encode");
        let back: MetadataState = serde_json::from_slice(&json).expect("decode");
        assert_eq!(
            lease(&back, 0).checkpoint,
            Some(CheckpointPosition::Sequence(big))
        );
        // A split closes shard 0; once it expires and is dropped, its lease goes too.
        start(
            &mut state,
            ReshardPlan::Split {
                shard: 0,
                at: 1 << 127,
            },
            10,
        )
        .expect("split");
        run_to_end(&mut state);
        assert_eq!(
            code(state.apply(&checkpoint("a", 1, CheckpointPosition::ShardEnd))),
            None
        );
        assert_eq!(
            code(state.apply(&checkpoint("a", 1, CheckpointPosition::Sequence(big)))),
            Some(ErrorCode::InvalidArgument)
        );
        let id = state.streams["s"].stream_id;
        let drop = MetadataCommand::DropExpiredShards {
            stream_id: id,
            shard_indexes: vec![0],
            now_ms: i64::MAX,
        };
        state.apply(&drop);
        assert!(!state.streams["s"].applications["app"].contains_key(&0));
    }

    #[test]
    fn consumers_register_once_up_to_the_limit_and_get_new_ids() {
        let mut state = active(1, 10);
        let register = |consumer: &str| MetadataCommand::RegisterConsumer {
            name: "s".into(),
            consumer: consumer.into(),
            created_at_ms: 3,
            max_consumers: 2,
        };
        state.apply(&register("a")).into_result().expect("a");
        let first_id = state.stream("s").expect("s").consumers["a"].consumer_id;
        let dup = state.apply(&register("a")).into_result().expect_err("dup");
        assert_eq!(dup.code, ErrorCode::ResourceInUse);
        state.apply(&register("b")).into_result().expect("b");
        let over = state
            .apply(&register("c"))
            .into_result()
            .expect_err("limit");
        assert_eq!(over.code, ErrorCode::LimitExceeded);
        assert!(over.message.contains("limit is 2"), "{}", over.message);
        let deregister = MetadataCommand::DeregisterConsumer {
            name: "s".into(),
            consumer: "a".into(),
        };
        state.apply(&deregister).into_result().expect("deregister");
        let gone = state.apply(&deregister).into_result().expect_err("twice");
        assert_eq!(gone.code, ErrorCode::ResourceNotFound);
        state.apply(&register("a")).into_result().expect("again");
        assert_ne!(
            state.stream("s").expect("s").consumers["a"].consumer_id,
            first_id
        );
    }

    #[test]
    fn create_delete_recreate_gets_new_ids() {
        let mut state = MetadataState::default();
        assert!(state.apply(&create("s", 2, 10)).into_result().is_ok());
        let first = state.stream("s").expect("exists").clone();
        assert_eq!(first.shards.len(), 2);
        let dup = state
            .apply(&create("s", 1, 10))
            .into_result()
            .expect_err("duplicate");
        assert_eq!(dup.code, ErrorCode::ResourceInUse);
        assert!(state
            .apply(&MetadataCommand::DeleteStream { name: "s".into() })
            .into_result()
            .is_ok());
        assert!(state.apply(&create("s", 1, 10)).into_result().is_ok());
        let second = state.stream("s").expect("exists");
        assert_ne!(second.stream_id, first.stream_id);
        assert!(second.shards[0].group_id > first.shards[1].group_id);
    }

    #[test]
    fn shard_limit_is_enforced_and_changes_nothing() {
        let mut state = MetadataState::default();
        assert!(state.apply(&create("a", 3, 4)).into_result().is_ok());
        let err = state
            .apply(&create("b", 2, 4))
            .into_result()
            .expect_err("over limit");
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        assert!(state.stream("b").is_err());
        assert_eq!(state.shard_total(), 3);
    }

    #[test]
    fn shard_ids() {
        assert_eq!(shard_id(7), "shardId-000000000007");
        assert_eq!(parse_shard_id("shardId-000000000007").ok(), Some(7));
        for bad in [
            "shardId-7",
            "shard-000000000007",
            "shardId-00000000000x",
            "",
        ] {
            assert!(parse_shard_id(bad).is_err(), "{bad}");
        }
    }
}
