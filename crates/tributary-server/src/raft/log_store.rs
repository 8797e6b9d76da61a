//! `RaftLogStorage` over a `tributary_log::Log`: the raft log of a shard group *is* the
//! shard's record log. Vote, committed and purged ids go to RocksDB; entries go to segment
//! files; fsyncs go through the node-wide `Flusher`.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::entry_codec;
use super::flusher::Flusher;
use super::meta_store::{GroupKey, MetaStore};
use super::{Entry, GroupId, LogId, TypeConfig, Vote};

/// Raft's replication reads stop at this many bytes (always at least one entry), so a
/// burst of 5 MiB batches cannot build a huge AppendEntries message.
const REPLICATION_READ_BUDGET: usize = 8 * 1024 * 1024;

/// A cheap handle; openraft, the state machine and readers share one log.
#[derive(Clone)]
pub struct GroupLogStore {
    inner: Arc<Inner>,
}

struct Inner {
    group: GroupId,
    log: Arc<tributary_log::Log>,
    meta: Arc<MetaStore>,
    flusher: Flusher,
    /// Below half its floor this replica refuses appends (the group stops here; see
    /// `disk_space.rs`). None for the metadata group, whose entries are few and small.
    disk_space: Option<Arc<crate::disk_space::DiskSpace>>,
    state: Mutex<LogMeta>,
}

#[derive(Default)]
struct LogMeta {
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

fn log_err(err: tributary_log::LogError) -> io::Error {
    io::Error::other(err)
}

impl GroupLogStore {
    /// Opens a group's log directory, recovering a torn tail if the last run crashed.
    pub fn open(
        group: GroupId,
        dir: &Path,
        config: tributary_log::LogConfig,
        meta: Arc<MetaStore>,
        flusher: Flusher,
        disk_space: Option<Arc<crate::disk_space::DiskSpace>>,
    ) -> io::Result<(Self, tributary_log::RecoveryReport)> {
        let (log, report) = tributary_log::Log::open(dir, config).map_err(log_err)?;
        let log = Arc::new(log);
        let last_log_id = match log.last_index() {
            None => None,
            Some(index) => {
                let batch = log.read(index, 1, usize::MAX).map_err(log_err)?;
                let batch = batch.first().ok_or_else(|| {
                    io::Error::other(format!("group {group}: last entry {index} unreadable"))
                })?;
                Some(entry_codec::decode(batch)?.log_id)
            }
        };
        let state = LogMeta {
            last_log_id,
            last_purged: meta.get(group, GroupKey::Purged)?,
            vote: meta.get(group, GroupKey::Vote)?,
            committed: meta.get(group, GroupKey::Committed)?,
        };
        let inner = Inner {
            group,
            log,
            meta,
            flusher,
            disk_space,
            state: Mutex::new(state),
        };
        Ok((
            Self {
                inner: Arc::new(inner),
            },
            report,
        ))
    }

    /// The underlying log, for readers (GetRecords) that bound themselves by the applied index.
    pub fn log(&self) -> &Arc<tributary_log::Log> {
        &self.inner.log
    }

    /// Whether this group has ever voted or logged (a restarted group must not re-initialize).
    pub fn has_state(&self) -> bool {
        let state = self.lock();
        state.vote.is_some() || state.last_log_id.is_some() || state.last_purged.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogMeta> {
        // A poisoned lock means a panic mid-update of four small fields; the data is still
        // consistent with disk, so keep serving.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_range(&self, start: u64, end_exclusive: u64, budget: usize) -> io::Result<Vec<Entry>> {
        let log = &self.inner.log;
        let Some(first) = log.first_index() else {
            return Ok(Vec::new());
        };
        let mut next = start.max(first);
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        while next < end_exclusive && bytes < budget {
            let want = (end_exclusive - next).min(1024) as usize;
            let batches = log.read(next, want, budget - bytes).map_err(log_err)?;
            if batches.is_empty() {
                break;
            }
            for batch in &batches {
                if batch.index >= end_exclusive {
                    break;
                }
                bytes += batch.payload.len();
                entries.push(entry_codec::decode(batch)?);
                next = batch.index + 1;
            }
        }
        Ok(entries)
    }
}

fn range_to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for GroupLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = range_to_bounds(&range);
        self.read_range(start, end, usize::MAX)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.lock().vote)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        self.read_range(start, end, REPLICATION_READ_BUDGET)
    }
}

impl RaftLogStorage<TypeConfig> for GroupLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let state = self.lock();
        Ok(LogState {
            last_purged_log_id: state.last_purged,
            last_log_id: state.last_log_id.or_else(|| state.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.inner
            .meta
            .put(self.inner.group, GroupKey::Vote, vote, true)?;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not fsynced: losing it only means re-learning the commit index after a restart.
        self.inner
            .meta
            .put(self.inner.group, GroupKey::Committed, &committed, false)?;
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(disk) = &self.inner.disk_space {
            if disk.below_hard_floor() {
                return Err(disk.refuse_append());
            }
        }
        let mut batches = Vec::new();
        let mut last = None;
        for entry in entries {
            batches.push(entry_codec::encode(&entry)?);
            last = Some(entry.log_id());
        }
        if !batches.is_empty() {
            self.inner.log.append(&batches).map_err(log_err)?;
            self.lock().last_log_id = last;
        }
        self.inner.flusher.flush(self.inner.log.clone(), callback);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.inner
            .log
            .truncate_after(last_log_id.as_ref().map(|id| id.index))
            .map_err(log_err)?;
        let mut state = self.lock();
        state.last_log_id = last_log_id.or_else(|| state.last_purged);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Record the purge point first so a crash mid-purge never leaves a hole unexplained.
        self.inner
            .meta
            .put(self.inner.group, GroupKey::Purged, &log_id, true)?;
        self.inner.log.purge_upto(log_id.index).map_err(log_err)?;
        let mut state = self.lock();
        if state
            .last_log_id
            .as_ref()
            .is_none_or(|last| last.index < log_id.index)
        {
            state.last_log_id = Some(log_id);
        }
        state.last_purged = Some(log_id);
        Ok(())
    }
}
