//! `RaftLogStorage` over a `tributary_log::Log`: the raft log of a shard group *is* the
//! shard's record log. Vote and purged ids go to RocksDB; entries go to segment files;
//! fsyncs go through the node-wide `Flusher`.
//!
//! The committed id is persisted for the metadata group only. A shard group's state
//! machine already writes its applied id after every apply (`state_machine`), and every
//! applied entry is committed, so a second RocksDB write per commit would buy nothing but
//! a re-apply of the few entries between the two after a restart; at open a shard group's
//! committed id is the persisted applied id (or an older persisted committed id, if larger).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend, RaftLogReader};

use super::entry_codec;
use super::flusher::Flusher;
use super::meta_store::{GroupKey, MetaStore};
use super::{Command, Entry, GroupId, LogId, TypeConfig, Vote, METADATA_GROUP};

/// Raft's replication reads stop at this many bytes (always at least one entry), so a
/// burst of 5 MiB batches cannot build a huge AppendEntries message.
const REPLICATION_READ_BUDGET: usize = 8 * 1024 * 1024;

/// The newest appended entries are kept in memory up to this many payload bytes...
const RECENT_ENTRIES_BYTES: usize = 1024 * 1024;
/// ...and this many entries.
const RECENT_ENTRIES_MAX: usize = 256;

/// The newest entries appended here, as the encoded batches written to the log: a
/// contiguous run ending at the last log entry. Replication to followers almost always
/// asks for exactly these, so the leader decodes them from memory instead of reading them
/// back from the segment files (a read syscall and a checksum per follower per entry).
/// Holding the encoded copies (not the entries, whose record bytes may be slices of much
/// larger request buffers) bounds the memory by the payload bytes counted here; a group
/// that goes quiet forgets its run.
#[derive(Default)]
struct RecentEntries {
    batches: std::collections::VecDeque<tributary_log::Batch>,
    bytes: usize,
}

impl RecentEntries {
    fn push(&mut self, batch: tributary_log::Batch) {
        let follows = self
            .batches
            .back()
            .is_none_or(|last| last.index + 1 == batch.index);
        if !follows {
            self.clear();
        }
        self.bytes += batch.payload.len();
        self.batches.push_back(batch);
        while self.bytes > RECENT_ENTRIES_BYTES || self.batches.len() > RECENT_ENTRIES_MAX {
            match self.batches.pop_front() {
                Some(old) => self.bytes -= old.payload.len(),
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    /// Forgets entries after `index` (all of them for `None`).
    fn truncate_after(&mut self, index: Option<u64>) {
        while let Some(last) = self.batches.back() {
            if index.is_some_and(|keep| last.index <= keep) {
                break;
            }
            self.bytes -= last.payload.len();
            self.batches.pop_back();
        }
    }

    /// Forgets entries up to and including `index`.
    fn purge_upto(&mut self, index: u64) {
        while let Some(first) = self.batches.front() {
            if first.index > index {
                break;
            }
            self.bytes -= first.payload.len();
            self.batches.pop_front();
        }
    }

    /// The batches of entries `[start, end_exclusive)` within `budget` bytes (always at
    /// least one), if the run holds `start`; `None` sends the read to the log.
    fn read(
        &self,
        start: u64,
        end_exclusive: u64,
        budget: usize,
    ) -> Option<Vec<tributary_log::Batch>> {
        let first = self.batches.front()?.index;
        let last = self.batches.back()?.index;
        if start < first || start > last {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for batch in self.batches.range((start - first) as usize..) {
            if batch.index >= end_exclusive || (bytes >= budget && !out.is_empty()) {
                break;
            }
            bytes += batch.payload.len();
            out.push(batch.clone());
        }
        Some(out)
    }
}

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
    recent: Mutex<RecentEntries>,
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
        let stored_committed: Option<LogId> = meta.get(group, GroupKey::Committed)?;
        let committed = if group == METADATA_GROUP {
            stored_committed
        } else {
            let applied = super::state_machine::persisted_applied_log_id(group, &meta)?;
            stored_committed.max(applied)
        };
        let state = LogMeta {
            last_log_id,
            last_purged: meta.get(group, GroupKey::Purged)?,
            vote: meta.get(group, GroupKey::Vote)?,
            committed,
        };
        let inner = Inner {
            group,
            log,
            meta,
            flusher,
            disk_space,
            state: Mutex::new(state),
            recent: Mutex::new(RecentEntries::default()),
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

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEntries> {
        self.inner
            .recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets the in-memory run of the newest entries (a quiet group holds no memory for
    /// replication it is not doing).
    pub fn forget_recent_entries(&self) {
        self.recent().clear();
    }

    fn read_range(&self, start: u64, end_exclusive: u64, budget: usize) -> io::Result<Vec<Entry>> {
        // Decoded outside the lock: `append` waits on it.
        let recent = self.recent().read(start, end_exclusive, budget);
        if let Some(batches) = recent {
            return batches.iter().map(entry_codec::decode).collect();
        }
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
        // Shard groups keep it in memory (see the module docs).
        if self.inner.group == METADATA_GROUP {
            self.inner
                .meta
                .put(self.inner.group, GroupKey::Committed, &committed, false)?;
        }
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
        // Which batches came in an AppendEntries message and are slices of it
        // (`replication_wire`): the recent-entries run holds a copy of those, so that a small
        // entry cannot keep a whole multi-MiB message alive. The run must still take every
        // entry: it ends at the last log entry, and a follower's state machine applies from it.
        let mut received = Vec::new();
        let mut last = None;
        for entry in entries {
            batches.push(entry_codec::encode(&entry)?);
            received.push(matches!(
                &entry.payload,
                EntryPayload::Normal(Command::Append(batch)) if batch.encoded.is_some()
            ));
            last = Some(entry.log_id());
        }
        if !batches.is_empty() {
            if let Err(err) = self.inner.log.append(&batches) {
                // What the log holds is unknown now: read it back from disk from here on.
                self.recent().clear();
                return Err(log_err(err));
            }
            self.lock().last_log_id = last;
            let mut recent = self.recent();
            for (batch, received) in batches.into_iter().zip(received) {
                let payload = if received {
                    bytes::Bytes::copy_from_slice(&batch.payload)
                } else {
                    batch.payload
                };
                recent.push(tributary_log::Batch { payload, ..batch });
            }
        }
        self.inner.flusher.flush(self.inner.log.clone(), callback);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.recent()
            .truncate_after(last_log_id.as_ref().map(|id| id.index));
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
        self.recent().purge_upto(log_id.index);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries as a follower receives them: decoded from what a leader encoded.
    fn received(from: u64, to: u64) -> Vec<Entry> {
        (from..=to)
            .map(|index| {
                let sent = Entry {
                    log_id: LogId::new(
                        openraft::vote::leader_id_adv::LeaderId {
                            term: 1,
                            node_id: 1,
                        },
                        index,
                    ),
                    payload: EntryPayload::Normal(Command::Append(super::super::RecordBatch {
                        arrival_ms: 1,
                        records: vec![super::super::StoredRecord {
                            partition_key: "k".into(),
                            data: bytes::Bytes::from(vec![index as u8; 100]),
                        }],
                        producer: None,
                        encoded: None,
                    })),
                };
                entry_codec::decode(&entry_codec::encode(&sent).expect("encode")).expect("decode")
            })
            .collect()
    }

    #[tokio::test]
    async fn received_entries_are_kept_as_copies_not_as_slices_of_the_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Arc::new(MetaStore::open(&dir.path().join("meta")).expect("meta store"));
        let (mut store, _) = GroupLogStore::open(
            1,
            &dir.path().join("log"),
            tributary_log::LogConfig::default(),
            meta,
            Flusher::start().expect("flusher"),
            None,
        )
        .expect("open");
        let entries = received(1, 3);
        let slices: Vec<*const u8> = entries
            .iter()
            .map(|entry| match &entry.payload {
                EntryPayload::Normal(Command::Append(batch)) => batch
                    .encoded
                    .as_ref()
                    .expect("decoded entries keep their payload")
                    .as_ptr(),
                other => panic!("an append decoded as {other:?}"),
            })
            .collect();
        store
            .append(entries, IOFlushed::noop())
            .await
            .expect("append as a follower");
        let run: Vec<_> = store.recent().batches.iter().cloned().collect();
        // The run ends at the last entry (the state machine applies from it)...
        assert_eq!(indexes(&run), vec![1, 2, 3]);
        // ...holding copies, not slices of the message the entries came in.
        for (kept, slice) in run.iter().zip(slices) {
            assert_ne!(kept.payload.as_ptr(), slice);
        }
        let read = store.read_range(1, 4, usize::MAX).expect("read");
        let stored: Vec<_> = read
            .iter()
            .map(|entry| entry_codec::encode(entry).expect("encode").payload)
            .collect();
        assert_eq!(
            stored,
            run.iter().map(|b| b.payload.clone()).collect::<Vec<_>>()
        );
    }

    fn batch(index: u64, bytes: usize) -> tributary_log::Batch {
        tributary_log::Batch {
            index,
            timestamp_ms: 0,
            record_count: 0,
            payload: bytes::Bytes::from(vec![7u8; bytes]),
        }
    }

    fn indexes(batches: &[tributary_log::Batch]) -> Vec<u64> {
        batches.iter().map(|b| b.index).collect()
    }

    fn run(first: u64, last: u64, bytes: usize) -> RecentEntries {
        let mut recent = RecentEntries::default();
        for index in first..=last {
            recent.push(batch(index, bytes));
        }
        recent
    }

    #[test]
    fn serves_only_ranges_that_start_inside_the_run() {
        let recent = run(10, 14, 100);
        assert_eq!(
            indexes(
                &recent
                    .read(12, 100, usize::MAX)
                    .expect("served from the run")
            ),
            [12, 13, 14]
        );
        assert_eq!(
            indexes(
                &recent
                    .read(10, 12, usize::MAX)
                    .expect("served from the run")
            ),
            [10, 11]
        );
        assert!(
            recent.read(9, 12, usize::MAX).is_none(),
            "before the run: read the log"
        );
        assert!(
            recent.read(15, 20, usize::MAX).is_none(),
            "past the end: read the log"
        );
    }

    #[test]
    fn a_read_stops_at_its_budget_but_returns_at_least_one_entry() {
        let recent = run(1, 5, 100);
        assert_eq!(
            indexes(&recent.read(1, 6, 250).expect("served from the run")),
            [1, 2, 3]
        );
        assert_eq!(
            indexes(&recent.read(2, 6, 1).expect("served from the run")),
            [2]
        );
    }

    #[test]
    fn the_run_is_bounded_by_bytes_and_by_count() {
        let recent = run(1, 20, RECENT_ENTRIES_BYTES / 4);
        assert_eq!(recent.batches.len(), 4);
        assert_eq!(recent.bytes, RECENT_ENTRIES_BYTES);
        assert_eq!(recent.batches.front().expect("a run").index, 17);

        let recent = run(1, RECENT_ENTRIES_MAX as u64 + 10, 1);
        assert_eq!(recent.batches.len(), RECENT_ENTRIES_MAX);

        let mut recent = run(1, 3, 10);
        recent.push(batch(4, RECENT_ENTRIES_BYTES + 1));
        assert!(
            recent.batches.is_empty(),
            "an entry over the bound is not kept"
        );
        assert_eq!(recent.bytes, 0);
    }

    #[test]
    fn truncation_purge_and_gaps_keep_the_run_contiguous_and_true() {
        let mut recent = run(1, 6, 10);
        recent.truncate_after(Some(4));
        assert_eq!(
            indexes(
                &recent
                    .read(1, 100, usize::MAX)
                    .expect("served from the run")
            ),
            [1, 2, 3, 4]
        );
        assert_eq!(recent.bytes, 40);
        recent.purge_upto(2);
        assert_eq!(
            indexes(
                &recent
                    .read(3, 100, usize::MAX)
                    .expect("served from the run")
            ),
            [3, 4]
        );
        assert!(recent.read(2, 100, usize::MAX).is_none());
        // A new entry that does not follow the run (after a truncation the log did not
        // report here) starts a new run.
        recent.push(batch(9, 10));
        assert!(recent.read(3, 100, usize::MAX).is_none());
        assert_eq!(
            indexes(
                &recent
                    .read(9, 100, usize::MAX)
                    .expect("served from the run")
            ),
            [9]
        );
        recent.truncate_after(None);
        assert!(recent.batches.is_empty());
        assert_eq!(recent.bytes, 0);
    }
}
