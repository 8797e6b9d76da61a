//! State-machine model test: random append / sync / crash / reopen / truncate / purge / read
//! sequences against a `Vec` model, with tiny segments so rolls happen all the time.
//!
//! A crash drops the `Log` and cuts the active segment at a random length between its length at
//! the last point the engine fsynced it and its current length (the unsynced page-cache data a
//! power loss may drop). The recovered log must be a prefix of the model at least as long as the
//! synced index, and as long as what `durable_index()` claimed; the model then adopts that prefix.

use std::fs::OpenOptions;
use std::path::PathBuf;

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::{LogError, SEGMENT_HEADER_LEN};

#[derive(Debug, Clone)]
enum Op {
    Append {
        count: usize,
        payload: usize,
        ts_step: i64,
    },
    Sync,
    Crash {
        cut: Index,
    },
    Reopen,
    /// Truncate after `last - back` (everything when `back` exceeds the log).
    Truncate {
        back: u64,
    },
    /// Purge up to `last + 3 - back` (so sometimes past the end).
    Purge {
        back: u64,
    },
    Read {
        from: Index,
        max_batches: usize,
        max_bytes: usize,
    },
    /// Look up a timestamp around the range the log holds.
    FindByTimestamp {
        probe: Index,
    },
    /// Seal the active segment as if it were old.
    RollIfAged,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..5, 0usize..150, -30i64..60).prop_map(|(count, payload, ts_step)| Op::Append {
            count,
            payload,
            ts_step
        }),
        2 => Just(Op::Sync),
        2 => any::<Index>().prop_map(|cut| Op::Crash { cut }),
        1 => Just(Op::Reopen),
        1 => (0u64..12).prop_map(|back| Op::Truncate { back }),
        1 => (0u64..15).prop_map(|back| Op::Purge { back }),
        2 => (any::<Index>(), 1usize..6, 0usize..400).prop_map(|(from, max_batches, max_bytes)| Op::Read {
            from,
            max_batches,
            max_bytes
        }),
        1 => any::<Index>().prop_map(|probe| Op::FindByTimestamp { probe }),
        1 => Just(Op::RollIfAged),
    ]
}

fn model_config() -> LogConfig {
    LogConfig {
        segment_max_bytes: 400,
        index_interval_bytes: 100,
        ..small_config()
    }
}

#[derive(Debug, Default)]
struct Model {
    /// Batches on disk (some maybe purged), consecutive.
    batches: Vec<Batch>,
    purge: Option<u64>,
    /// Every batch up to here must survive a crash.
    synced: Option<u64>,
    ts: i64,
}

impl Model {
    fn physical_last(&self) -> Option<u64> {
        self.batches.last().map(|b| b.index)
    }

    fn first(&self) -> Option<u64> {
        let last = self.physical_last()?;
        let first = self.batches[0].index.max(self.purge.map_or(0, |p| p + 1));
        (first <= last).then_some(first)
    }

    fn last(&self) -> Option<u64> {
        self.first()?;
        self.physical_last()
    }

    fn next_index(&self) -> u64 {
        match self.last() {
            Some(last) => last + 1,
            None => self.purge.map_or(1, |p| p + 1),
        }
    }

    fn readable(&self) -> Vec<Batch> {
        match self.first() {
            Some(first) => self
                .batches
                .iter()
                .filter(|b| b.index >= first)
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }

    fn read(&self, from: u64, max_batches: usize, max_bytes: usize) -> Result<Vec<Batch>, u64> {
        let readable = self.readable();
        let first = self.first().unwrap_or_else(|| self.next_index());
        if from < first && (self.first().is_some() || self.purge.is_some_and(|p| from <= p)) {
            return Err(first);
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for b in readable.into_iter().filter(|b| b.index >= from) {
            if out.len() == max_batches || (!out.is_empty() && bytes + b.payload.len() > max_bytes)
            {
                break;
            }
            bytes += b.payload.len();
            out.push(b);
        }
        Ok(out)
    }
}

/// Where the engine last made the active segment durable: (file, length).
type SyncedFile = Option<(PathBuf, u64)>;

fn record_synced(dir: &Path) -> SyncedFile {
    active_segment(dir).map(|p| {
        let len = file_len(&p);
        (p, len)
    })
}

/// `index` unless it is purged. Which purged batches are still on disk depends on segment
/// boundaries (only whole segments are deleted), so the model makes no claim about them.
fn unpurged(index: Option<u64>, purge: Option<u64>) -> Option<u64> {
    index.filter(|&i| purge.is_none_or(|p| i > p))
}

fn check(log: &Log, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        unpurged(log.physical_last_index(), model.purge),
        unpurged(model.physical_last(), model.purge)
    );
    prop_assert_eq!(log.first_index(), model.first());
    prop_assert_eq!(log.last_index(), model.last());
    prop_assert_eq!(
        log.last_timestamp_ms(),
        model
            .last()
            .map(|_| model.batches[model.batches.len() - 1].timestamp_ms)
    );
    prop_assert!(log.durable_index() <= log.physical_last_index());
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
    let dir = dir.path();
    let fail = |e: LogError| TestCaseError::fail(e.to_string());
    let (mut log, _) = open(dir, model_config()).map_err(fail)?;
    let mut model = Model::default();
    let mut synced_file: SyncedFile = None;
    let mut clock = std::time::SystemTime::now();

    for op in ops {
        match op {
            Op::Append {
                count,
                payload,
                ts_step,
            } => {
                let start = model.next_index();
                if model.physical_last().is_some_and(|l| l + 1 != start) {
                    // A purge emptied the log and the new batches do not continue the old ones:
                    // the engine starts a new segment and deletes the purged ones.
                    model.batches.clear();
                    model.synced = None;
                }
                let new: Vec<Batch> = (start..start + count as u64)
                    .map(|i| {
                        model.ts += ts_step;
                        batch(i, model.ts, payload)
                    })
                    .collect();
                log.append(&new).map_err(fail)?;
                model.batches.extend(new);
            }
            Op::Sync => {
                let durable = log.sync().map_err(fail)?;
                prop_assert_eq!(
                    unpurged(durable, model.purge),
                    unpurged(model.physical_last(), model.purge)
                );
                model.synced = model.physical_last();
                synced_file = record_synced(dir);
            }
            Op::Crash { cut } => {
                let claimed = log.durable_index();
                drop(log);
                if let Some(active) = active_segment(dir) {
                    let len = file_len(&active);
                    let synced_len = match &synced_file {
                        Some((path, synced_len)) if *path == active => *synced_len,
                        // Created after the last sync; creation fsynced its header.
                        _ => SEGMENT_HEADER_LEN,
                    }
                    .min(len);
                    let new_len = synced_len + cut.index((len - synced_len + 1) as usize) as u64;
                    OpenOptions::new()
                        .write(true)
                        .open(&active)
                        .and_then(|f| f.set_len(new_len))
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                let (reopened, _) = open(dir, model_config()).map_err(fail)?;
                log = reopened;
                let recovered = log.physical_last_index();
                let synced = unpurged(model.synced, model.purge);
                prop_assert!(
                    recovered >= synced,
                    "recovered up to {:?}, but {:?} was synced",
                    recovered,
                    synced
                );
                let claimed = unpurged(claimed, model.purge);
                prop_assert!(
                    recovered >= claimed,
                    "recovered up to {:?}, but durable_index() said {:?}",
                    recovered,
                    claimed
                );
                prop_assert!(
                    unpurged(recovered, model.purge)
                        <= unpurged(model.physical_last(), model.purge)
                );
                model
                    .batches
                    .retain(|b| recovered.is_some_and(|r| b.index <= r));
                // Open fsyncs what it recovered.
                model.synced = model.physical_last();
                synced_file = record_synced(dir);
            }
            Op::Reopen => {
                drop(log);
                let (reopened, report) = open(dir, model_config()).map_err(fail)?;
                log = reopened;
                prop_assert!(report.truncated_tails.is_empty(), "{:?}", report);
                prop_assert!(report.index_files_rebuilt.is_empty(), "{:?}", report);
                model.synced = model.physical_last();
                synced_file = record_synced(dir);
            }
            Op::Truncate { back } => {
                let target = match model.physical_last() {
                    Some(last) if back <= last => Some(last - back),
                    _ => None,
                };
                log.truncate_after(target).map_err(fail)?;
                if back > 0 || target.is_none() {
                    model
                        .batches
                        .retain(|b| target.is_some_and(|t| b.index <= t));
                    // Truncation fsyncs what remains.
                    model.synced = model.physical_last();
                    synced_file = record_synced(dir);
                }
            }
            Op::Purge { back } => {
                let top = model.physical_last().or(model.purge).unwrap_or(0);
                let target = (top + 3).saturating_sub(back);
                log.purge_upto(target).map_err(fail)?;
                model.purge = model.purge.max(Some(target));
            }
            Op::Read {
                from,
                max_batches,
                max_bytes,
            } => {
                let lo = model
                    .first()
                    .unwrap_or_else(|| model.next_index())
                    .saturating_sub(2);
                let hi = model.last().map_or(lo + 4, |l| l + 2);
                let from = lo + from.index((hi - lo + 1) as usize) as u64;
                match (
                    log.read(from, max_batches, max_bytes),
                    model.read(from, max_batches, max_bytes),
                ) {
                    (Ok(got), Ok(want)) => {
                        prop_assert_eq!(got, want, "read({}, {}, {})", from, max_batches, max_bytes)
                    }
                    (Err(LogError::Purged { index, first }), Err(want_first)) => {
                        prop_assert_eq!((index, first), (from, want_first));
                    }
                    (got, want) => {
                        prop_assert!(false, "read({}): log {:?}, model {:?}", from, got, want)
                    }
                }
            }
            Op::FindByTimestamp { probe } => {
                let readable = model.readable();
                let lo = readable.iter().map(|b| b.timestamp_ms).min().unwrap_or(0) - 5;
                let hi = readable.iter().map(|b| b.timestamp_ms).max().unwrap_or(0) + 5;
                let ts = lo + probe.index((hi - lo + 1) as usize) as i64;
                let want = readable
                    .iter()
                    .find(|b| b.timestamp_ms >= ts)
                    .map(|b| b.index);
                prop_assert_eq!(
                    log.try_find_by_timestamp(ts).map_err(fail)?,
                    want,
                    "ts {}",
                    ts
                );
            }
            Op::RollIfAged => {
                // Every roll is two hours after the previous one (and after real time).
                clock += std::time::Duration::from_secs(7200);
                let active_len = active_segment(dir).map(|p| file_len(&p));
                let rolled = log.roll_if_aged(clock).map_err(fail)?;
                // It rolls exactly when the active segment holds batches; the new one is empty.
                prop_assert_eq!(rolled, active_len.is_some_and(|l| l > SEGMENT_HEADER_LEN));
                if rolled {
                    let new_len = active_segment(dir).map(|p| file_len(&p));
                    prop_assert_eq!(new_len, Some(SEGMENT_HEADER_LEN));
                }
            }
        }
        check(&log, &model)?;
    }
    prop_assert_eq!(read_all(&log).map_err(fail)?, model.readable());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model_through_crashes(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        run(ops)?;
    }
}
