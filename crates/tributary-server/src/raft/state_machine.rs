//! State machines. Shard groups keep no record state (records are read straight from the
//! log); applying an entry only advances the shard's tip, which wakes readers. The metadata
//! group applies commands to `MetadataState`.

use std::io;
use std::io::Cursor;
use std::sync::{Arc, RwLock};

use futures::{Stream, TryStreamExt};
use openraft::alias::{SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StoredMembership};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::log_store::GroupLogStore;
use super::meta_store::{GroupKey, MetaStore};
use super::{Command, CommandResponse, GroupId, LogId, ShardControl, TypeConfig};
use crate::idempotence::{self, ProducerTable, ProducerView};
use crate::metadata::MetadataState;

type Membership = StoredMembershipOf<TypeConfig>;

/// The newest applied (committed) position of a shard; readers never go past it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardTip {
    /// Highest applied log index (0 = nothing yet).
    pub applied_index: u64,
    /// Arrival time of the newest applied record (ms), 0 when none.
    pub last_record_ms: i64,
    /// Index of the seal entry once a reshard closed the shard: readers stop before it.
    pub sealed_index: Option<u64>,
    /// Retention has expired entries up to and including this index (0 = none).
    pub trim_index: u64,
}

/// Shared view of the metadata state plus a change counter the node watches.
pub struct MetadataShared {
    /// The state.
    pub state: RwLock<MetadataState>,
    /// Bumped after every applied metadata command.
    pub version: watch::Sender<u64>,
}

impl MetadataShared {
    /// An empty state.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: RwLock::new(MetadataState::default()),
            version: watch::channel(0).0,
        })
    }

    /// Reads the state.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, MetadataState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, MetadataState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

enum Kind {
    Metadata(Arc<MetadataShared>),
    Shard {
        tip: watch::Sender<ShardTip>,
        log: GroupLogStore,
        /// The applied idempotent-producer table, as the leader reads it.
        producers: ProducerView,
    },
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    applied: Option<LogId>,
    membership: Membership,
    /// Shard groups: the seal entry's index (see `ShardControl::Seal`).
    #[serde(default)]
    sealed: Option<u64>,
    /// Shard groups: the newest retention trim point and the membership in force there
    /// (the snapshot a lagging replica installs is taken at the trim point).
    #[serde(default)]
    trim: Option<(LogId, Membership)>,
    /// Stamped appends applied since the idempotent-producer table (`Kind::Shard`'s
    /// `producers`, persisted apart every `PRODUCERS_PERSIST_EVERY` of them) was last written.
    #[serde(skip)]
    producers_unsaved: u32,
}

/// How many idempotent appends may be applied before the producer table is written again
/// (a restart re-reads at most this many entries' headers from the log to catch up).
const PRODUCERS_PERSIST_EVERY: u32 = 256;

/// The producer table as persisted: complete through `through_index`.
#[derive(Default, Serialize, Deserialize)]
struct StoredProducers {
    through_index: u64,
    table: ProducerTable,
}

/// The applied log id a shard group's state machine last persisted (every entry up to it
/// is committed and durable here).
pub fn persisted_applied_log_id(group: GroupId, meta: &MetaStore) -> io::Result<Option<LogId>> {
    let restored: Option<AppliedState> = meta.get(group, GroupKey::Applied)?;
    Ok(restored.and_then(|state| state.applied))
}

/// Rebuilds the producer table of entries `(through, applied]` from the log (at open).
fn catch_up_producers(
    log: &GroupLogStore,
    table: &mut ProducerTable,
    through: u64,
    applied: u64,
) -> io::Result<()> {
    let mut next = through
        .saturating_add(1)
        .max(log.log().first_index().unwrap_or(0));
    while next <= applied {
        let batches = match log.log().read(next, 256, 8 << 20) {
            Ok(batches) => batches,
            Err(tributary_log::LogError::Purged { first, .. }) => {
                next = first;
                continue;
            }
            // Kept typed: a `Corruption` here is repaired from a replica before the start.
            Err(err) => return Err(io::Error::other(err)),
        };
        let Some(last) = batches.last().map(|b| b.index) else {
            break;
        };
        for batch in batches.iter().filter(|b| b.index <= applied) {
            if let Some(records) = super::entry_codec::decode_record_batch(batch)? {
                if let Some(stamp) = records.producer {
                    idempotence::record(table, stamp, batch.index, records.records.len() as u32);
                }
            }
        }
        next = last + 1;
    }
    Ok(())
}

impl AppliedState {
    fn tip(&self, last_record_ms: i64) -> ShardTip {
        ShardTip {
            applied_index: self.applied.as_ref().map_or(0, |id| id.index),
            last_record_ms,
            sealed_index: self.sealed,
            trim_index: self.trim.as_ref().map_or(0, |(id, _)| id.index),
        }
    }
}

/// What a shard group's snapshot carries: no records (they stay in the log), only the
/// shard state that entries at or below the snapshot point established.
#[derive(Default, Serialize, Deserialize)]
struct ShardSnapshot {
    sealed: Option<u64>,
}

/// A shard snapshot as persisted when it is built: openraft purges the log below a built
/// snapshot without asking the state machine to persist anything, so a restart must find
/// the snapshot (and install it) even if the applied state was last written below it.
#[derive(Serialize, Deserialize)]
struct StoredShardSnapshot {
    last_log_id: LogId,
    membership: Membership,
    sealed: Option<u64>,
}

/// The state machine of one group; a cheap handle.
#[derive(Clone)]
pub struct GroupStateMachine {
    inner: Arc<Inner>,
}

struct Inner {
    group: GroupId,
    meta: Arc<MetaStore>,
    kind: Kind,
    applied: tokio::sync::Mutex<AppliedState>,
}

impl GroupStateMachine {
    /// The metadata group's state machine. Its state is rebuilt by replaying the log from
    /// the start at each boot (metadata is small), so nothing is persisted here.
    pub fn metadata(group: GroupId, meta: Arc<MetaStore>, shared: Arc<MetadataShared>) -> Self {
        let inner = Inner {
            group,
            meta,
            kind: Kind::Metadata(shared),
            applied: Default::default(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The applied index a shard group's state machine last persisted (0: none): every
    /// entry up to it is committed.
    pub fn persisted_applied_index(group: GroupId, meta: &MetaStore) -> io::Result<u64> {
        Ok(persisted_applied_log_id(group, meta)?.map_or(0, |id| id.index))
    }

    /// A shard group's state machine. The applied position is persisted so a restart does
    /// not re-read the whole log; it is only ever persisted at or below the durable index.
    pub fn shard(
        group: GroupId,
        meta: Arc<MetaStore>,
        log: GroupLogStore,
    ) -> io::Result<(Self, watch::Receiver<ShardTip>, ProducerView)> {
        let mut restored: AppliedState = meta.get(group, GroupKey::Applied)?.unwrap_or_default();
        let snapshot: Option<StoredShardSnapshot> = meta.get(group, GroupKey::Snapshot)?;
        if let Some(snapshot) = snapshot {
            let newer = restored
                .trim
                .as_ref()
                .is_none_or(|(id, _)| id.index < snapshot.last_log_id.index);
            if newer {
                restored.trim = Some((snapshot.last_log_id, snapshot.membership));
                restored.sealed = restored.sealed.or(snapshot.sealed);
            }
        }
        let stored: StoredProducers = meta.get(group, GroupKey::Producers)?.unwrap_or_default();
        let mut table = stored.table;
        let applied_index = restored.applied.as_ref().map_or(0, |id| id.index);
        catch_up_producers(&log, &mut table, stored.through_index, applied_index)?;
        let tip = restored.tip(log.log().last_timestamp_ms().unwrap_or(0));
        let (tx, rx) = watch::channel(tip);
        let producers: ProducerView = Arc::new(std::sync::Mutex::new(table));
        let inner = Inner {
            group,
            meta,
            kind: Kind::Shard {
                tip: tx,
                log,
                producers: producers.clone(),
            },
            applied: tokio::sync::Mutex::new(restored),
        };
        Ok((
            Self {
                inner: Arc::new(inner),
            },
            rx,
            producers,
        ))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for GroupStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(
        &mut self,
    ) -> Result<SnapshotOf<TypeConfig, Cursor<Vec<u8>>>, io::Error> {
        let applied = self.inner.applied.lock().await;
        let snapshot = self.inner.snapshot(&applied)?;
        if let (Kind::Shard { .. }, Some(last_log_id)) =
            (&self.inner.kind, snapshot.meta.last_log_id)
        {
            let data: ShardSnapshot =
                serde_json::from_slice(snapshot.snapshot.get_ref()).map_err(io::Error::other)?;
            let stored = StoredShardSnapshot {
                last_log_id,
                membership: snapshot.meta.last_membership.clone(),
                sealed: data.sealed,
            };
            self.inner
                .meta
                .put(self.inner.group, GroupKey::Snapshot, &stored, true)?;
        }
        Ok(snapshot)
    }
}

impl Inner {
    /// The metadata group snapshots everything it applied. A shard group snapshots at its
    /// retention trim point, not at its applied index: a replica that installs the snapshot
    /// drops its log up to the snapshot point, and records after the trim point are still
    /// within retention ("retention-anchored snapshot", docs/architecture.md).
    fn snapshot(
        &self,
        applied: &AppliedState,
    ) -> Result<SnapshotOf<TypeConfig, Cursor<Vec<u8>>>, io::Error> {
        let (meta, data) = match &self.kind {
            Kind::Metadata(shared) => (
                SnapshotMetaOf::<TypeConfig> {
                    last_log_id: applied.applied,
                    last_membership: applied.membership.clone(),
                },
                serde_json::to_vec(&*shared.read()).map_err(io::Error::other)?,
            ),
            Kind::Shard { .. } => {
                let (last_log_id, last_membership) = match &applied.trim {
                    Some((id, membership)) => (Some(*id), membership.clone()),
                    None => (None, Membership::default()),
                };
                let sealed = applied
                    .sealed
                    .filter(|s| last_log_id.is_some_and(|id| *s <= id.index));
                (
                    SnapshotMetaOf::<TypeConfig> {
                        last_log_id,
                        last_membership,
                    },
                    serde_json::to_vec(&ShardSnapshot { sealed }).map_err(io::Error::other)?,
                )
            }
        };
        Ok(SnapshotOf::<TypeConfig, Cursor<Vec<u8>>> {
            meta,
            snapshot: Cursor::new(data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), io::Error> {
        let applied = self.inner.applied.lock().await;
        Ok((applied.applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut applied = self.inner.applied.lock().await;
        let mut last_record_ms = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = match &entry.payload {
                EntryPayload::Blank => CommandResponse::Applied,
                EntryPayload::Membership(membership) => {
                    applied.membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    CommandResponse::Applied
                }
                EntryPayload::Normal(Command::Append(batch)) => match applied.sealed {
                    // Landed after the seal: not part of the shard, never read.
                    Some(index) => CommandResponse::Sealed { index },
                    None => {
                        last_record_ms = Some(batch.arrival_ms);
                        if let (Some(stamp), Kind::Shard { producers, .. }) =
                            (batch.producer, &self.inner.kind)
                        {
                            // Before the response goes out: a retry that arrives once the
                            // original was answered must find it in the table.
                            let count = batch.records.len() as u32;
                            let index = entry.log_id.index;
                            let mut table = producers.lock().unwrap_or_else(|p| p.into_inner());
                            idempotence::record(&mut table, stamp, index, count);
                            applied.producers_unsaved += 1;
                        }
                        CommandResponse::Applied
                    }
                },
                EntryPayload::Normal(Command::Metadata(command)) => match &self.inner.kind {
                    Kind::Metadata(shared) => {
                        CommandResponse::Metadata(shared.write().apply(command))
                    }
                    Kind::Shard { .. } => {
                        return Err(io::Error::other(format!(
                            "group {}: metadata command in a shard group at {}",
                            self.inner.group, entry.log_id
                        )))
                    }
                },
                EntryPayload::Normal(Command::Shard(control)) => {
                    if let Kind::Metadata(_) = &self.inner.kind {
                        return Err(io::Error::other(format!(
                            "group {}: shard command in the metadata group at {}",
                            self.inner.group, entry.log_id
                        )));
                    }
                    apply_shard_control(&mut applied, control, entry.log_id.index)
                }
            };
            applied.applied = Some(entry.log_id);
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        match &self.inner.kind {
            Kind::Metadata(shared) => {
                shared.version.send_modify(|v| *v += 1);
            }
            Kind::Shard {
                tip,
                log,
                producers,
            } => {
                let next = applied.tip(0);
                tip.send_modify(|t| {
                    let last_record_ms = match last_record_ms {
                        Some(ms) => t.last_record_ms.max(ms),
                        None => t.last_record_ms,
                    };
                    *t = ShardTip {
                        last_record_ms,
                        ..next
                    };
                });
                // Persist only what is durable locally, so a crash can never leave the
                // recorded applied position above the recovered log.
                if log
                    .log()
                    .durable_index()
                    .is_some_and(|durable| durable >= next.applied_index)
                {
                    self.inner
                        .meta
                        .put(self.inner.group, GroupKey::Applied, &*applied, false)?;
                    // Written after the applied position: a crash that keeps this write
                    // kept the one before it (one WAL), so `through_index` <= applied.
                    if applied.producers_unsaved >= PRODUCERS_PERSIST_EVERY {
                        let stored = StoredProducers {
                            through_index: next.applied_index,
                            table: producers.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                        };
                        self.inner.meta.put(
                            self.inner.group,
                            GroupKey::Producers,
                            &stored,
                            false,
                        )?;
                        applied.producers_unsaved = 0;
                    }
                }
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let mut applied = self.inner.applied.lock().await;
        applied.applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        match &self.inner.kind {
            Kind::Metadata(shared) => {
                let state: MetadataState =
                    serde_json::from_slice(snapshot.get_ref()).map_err(io::Error::other)?;
                *shared.write() = state;
                shared.version.send_modify(|v| *v += 1);
            }
            Kind::Shard { tip, producers, .. } => {
                // The snapshot point is the retention trim point: producers whose newest
                // request is older than retention are forgotten (see `idempotence`).
                applied.producers_unsaved = 0;
                producers.lock().unwrap_or_else(|p| p.into_inner()).clear();
                let through_index = meta.last_log_id.map_or(0, |id| id.index);
                self.inner.meta.put(
                    self.inner.group,
                    GroupKey::Producers,
                    &StoredProducers {
                        through_index,
                        table: ProducerTable::new(),
                    },
                    false,
                )?;
                let data: ShardSnapshot = if snapshot.get_ref().is_empty() {
                    ShardSnapshot::default()
                } else {
                    serde_json::from_slice(snapshot.get_ref()).map_err(io::Error::other)?
                };
                applied.sealed = data.sealed;
                applied.trim = meta
                    .last_log_id
                    .map(|id| (id, meta.last_membership.clone()));
                let next = applied.tip(0);
                tip.send_modify(|t| {
                    *t = ShardTip {
                        last_record_ms: t.last_record_ms,
                        ..next
                    }
                });
                self.inner
                    .meta
                    .put(self.inner.group, GroupKey::Applied, &*applied, false)?;
            }
        }
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Self::SnapshotData>>, io::Error> {
        // A shard's snapshot is tiny and derived from the trim point, so it is rebuilt on
        // demand; the metadata group never purges its log and so never ships one.
        let applied = self.inner.applied.lock().await;
        match (&self.inner.kind, &applied.trim) {
            (Kind::Shard { .. }, Some(_)) => self.inner.snapshot(&applied).map(Some),
            _ => Ok(None),
        }
    }
}

/// Applies a seal or trim to a shard's state. Deterministic: every replica decides the
/// same from the same log.
fn apply_shard_control(
    applied: &mut AppliedState,
    control: &ShardControl,
    index: u64,
) -> CommandResponse {
    match control {
        ShardControl::Seal => {
            let sealed = *applied.sealed.get_or_insert(index);
            CommandResponse::Sealed { index: sealed }
        }
        ShardControl::Trim {
            index: upto,
            term,
            leader_node,
        } => {
            let newer = applied.trim.as_ref().is_none_or(|(id, _)| id.index < *upto);
            // The snapshot at the trim point must carry the membership in force there, so
            // a trim point below the newest membership change waits for a later one.
            let membership_below = applied
                .membership
                .log_id()
                .as_ref()
                .is_none_or(|id| id.index <= *upto);
            if newer && membership_below && *upto < index {
                let id = LogId::new(
                    openraft::vote::leader_id_adv::LeaderId {
                        term: *term,
                        node_id: *leader_node,
                    },
                    *upto,
                );
                applied.trim = Some((id, applied.membership.clone()));
            }
            CommandResponse::Applied
        }
    }
}
