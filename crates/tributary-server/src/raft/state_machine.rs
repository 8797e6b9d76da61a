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
use super::{Command, CommandResponse, GroupId, LogId, TypeConfig};
use crate::metadata::MetadataState;

type Membership = StoredMembershipOf<TypeConfig>;

/// The newest applied (committed) position of a shard; readers never go past it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardTip {
    /// Highest applied log index (0 = nothing yet).
    pub applied_index: u64,
    /// Arrival time of the newest applied record (ms), 0 when none.
    pub last_record_ms: i64,
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
    },
}

#[derive(Serialize, Deserialize)]
struct AppliedState {
    applied: Option<LogId>,
    membership: Membership,
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
    applied: tokio::sync::Mutex<(Option<LogId>, Membership)>,
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

    /// A shard group's state machine. The applied position is persisted so a restart does
    /// not re-read the whole log; it is only ever persisted at or below the durable index.
    pub fn shard(
        group: GroupId,
        meta: Arc<MetaStore>,
        log: GroupLogStore,
    ) -> io::Result<(Self, watch::Receiver<ShardTip>)> {
        let restored: Option<AppliedState> = meta.get(group, GroupKey::Applied)?;
        let (applied, membership) = match restored {
            Some(state) => (state.applied, state.membership),
            None => (None, Membership::default()),
        };
        let tip = ShardTip {
            applied_index: applied.as_ref().map_or(0, |id| id.index),
            last_record_ms: log.log().last_timestamp_ms().unwrap_or(0),
        };
        let (tx, rx) = watch::channel(tip);
        let inner = Inner {
            group,
            meta,
            kind: Kind::Shard { tip: tx, log },
            applied: tokio::sync::Mutex::new((applied, membership)),
        };
        Ok((
            Self {
                inner: Arc::new(inner),
            },
            rx,
        ))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for GroupStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(
        &mut self,
    ) -> Result<SnapshotOf<TypeConfig, Cursor<Vec<u8>>>, io::Error> {
        let applied = self.inner.applied.lock().await;
        let data = match &self.inner.kind {
            Kind::Metadata(shared) => {
                serde_json::to_vec(&*shared.read()).map_err(io::Error::other)?
            }
            Kind::Shard { .. } => Vec::new(),
        };
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: applied.0,
            last_membership: applied.1.clone(),
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
        Ok((applied.0, applied.1.clone()))
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
                    applied.1 = StoredMembership::new(Some(entry.log_id), membership.clone());
                    CommandResponse::Applied
                }
                EntryPayload::Normal(Command::Append(batch)) => {
                    last_record_ms = Some(batch.arrival_ms);
                    CommandResponse::Applied
                }
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
            };
            applied.0 = Some(entry.log_id);
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        match &self.inner.kind {
            Kind::Metadata(shared) => {
                shared.version.send_modify(|v| *v += 1);
            }
            Kind::Shard { tip, log } => {
                let applied_index = applied.0.as_ref().map_or(0, |id| id.index);
                tip.send_modify(|t| {
                    t.applied_index = applied_index;
                    if let Some(ms) = last_record_ms {
                        t.last_record_ms = t.last_record_ms.max(ms);
                    }
                });
                // Persist only what is durable locally, so a crash can never leave the
                // recorded applied position above the recovered log.
                if log
                    .log()
                    .durable_index()
                    .is_some_and(|durable| durable >= applied_index)
                {
                    let state = AppliedState {
                        applied: applied.0,
                        membership: applied.1.clone(),
                    };
                    self.inner
                        .meta
                        .put(self.inner.group, GroupKey::Applied, &state, false)?;
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
        if let Kind::Metadata(shared) = &self.inner.kind {
            let state: MetadataState =
                serde_json::from_slice(snapshot.get_ref()).map_err(io::Error::other)?;
            *shared.write() = state;
            shared.version.send_modify(|v| *v += 1);
        }
        *applied = (meta.last_log_id, meta.last_membership.clone());
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Self::SnapshotData>>, io::Error> {
        Ok(None)
    }
}
