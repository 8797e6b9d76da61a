//! Reading records from a shard log: GetShardIterator positions and GetRecords pages.
//! Readers see only applied (committed) entries: nothing above the tip can be truncated.
//! They never see a record older than the stream's retention (`horizon_ms`), whether or not
//! its segment was deleted yet, nor anything at or after a closed shard's seal entry.

use bytes::Bytes;

use crate::error::ApiError;
use crate::node::ShardGroup;
use crate::raft::entry_codec;
use crate::raft::state_machine::ShardTip;
use crate::sequence::SequenceNumber;

/// A record as returned to readers.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// Its sequence number.
    pub sequence: SequenceNumber,
    /// ApproximateArrivalTimestamp (ms since epoch).
    pub arrival_ms: i64,
    /// Partition key.
    pub partition_key: String,
    /// Data (a slice of the read buffer, not a copy).
    pub data: Bytes,
}

impl ReadRecord {
    /// The API form.
    pub fn into_proto(self) -> tributary_proto::v1::Record {
        tributary_proto::v1::Record {
            sequence_number: self.sequence.to_string(),
            approximate_arrival_timestamp: Some(crate::service::timestamp(self.arrival_ms)),
            data: self.data,
            partition_key: self.partition_key,
        }
    }
}

/// One page of records.
#[derive(Debug)]
pub struct ReadPage {
    /// Records in sequence order.
    pub records: Vec<ReadRecord>,
    /// Where the next read starts: (log index, slot).
    pub next: (u64, u16),
    /// How far the last returned record is behind the shard's newest record.
    pub millis_behind_latest: u64,
    /// The shard is sealed and `next` is at its end: nothing more will ever be read.
    pub at_shard_end: bool,
}

/// The first index past what readers may see: the seal entry of a sealed shard, else the
/// entry after the newest applied one.
fn end_index(tip: &ShardTip) -> u64 {
    let applied_end = tip.applied_index + 1;
    tip.sealed_index.map_or(applied_end, |s| s.min(applied_end))
}

/// The first index that may hold unexpired records, never past the readable end (entries
/// above the applied index may still be replaced, so no position may point beyond them).
fn first_unexpired(shard: &ShardGroup, tip: &ShardTip, horizon_ms: i64) -> u64 {
    let log = shard.log.log();
    let end = end_index(tip);
    let mut first = log.first_index().unwrap_or(0).max(tip.trim_index + 1);
    match log.find_by_timestamp(horizon_ms) {
        Some(kept) => first = first.max(kept),
        // Every entry is older than the horizon.
        None if log.first_index().is_some() => first = end,
        None => {}
    }
    first.min(end)
}

fn log_error(shard: &ShardGroup, err: tributary_log::LogError) -> ApiError {
    match err {
        tributary_log::LogError::Corruption { .. } => {
            tracing::error!(%err, "corrupt shard data detected on read; queued for repair");
            shard.repair.request(shard.group_id);
            ApiError::corruption(format!(
                "stored data failed its checksum and was not returned: {err}"
            ))
        }
        other => ApiError::internal(format!("reading the shard log failed: {other}")),
    }
}

/// The position of the oldest readable (unexpired) record.
pub fn trim_horizon(shard: &ShardGroup, horizon_ms: i64) -> (u64, u16) {
    let tip = *shard.tip.borrow();
    (
        first_unexpired(shard, &tip, horizon_ms).min(end_index(&tip)),
        0,
    )
}

/// The position just after the newest committed record (a closed shard's end).
pub fn latest(shard: &ShardGroup) -> (u64, u16) {
    (end_index(&shard.tip.borrow()), 0)
}

/// The first position at or after `ts_ms`; a time before the retention horizon is the
/// trim horizon.
pub fn at_timestamp(shard: &ShardGroup, ts_ms: i64, horizon_ms: i64) -> (u64, u16) {
    let tip = *shard.tip.borrow();
    let end = end_index(&tip);
    let floor = first_unexpired(shard, &tip, horizon_ms);
    match shard.log.log().find_by_timestamp(ts_ms.max(horizon_ms)) {
        Some(index) if index < end => (index.max(floor), 0),
        _ => (end, 0),
    }
}

/// The sequence number of the newest committed record, if any (scans back over the few
/// record-less entries, such as leader-election blanks, that can follow it).
pub fn last_sequence(shard: &ShardGroup) -> Result<Option<SequenceNumber>, ApiError> {
    let log = shard.log.log();
    let tip = *shard.tip.borrow();
    let Some(first) = log.first_index() else {
        return Ok(None);
    };
    let first = first.max(tip.trim_index + 1);
    let Some(mut index) = end_index(&tip)
        .checked_sub(1)
        .map(|i| i.min(log.last_index().unwrap_or(0)))
    else {
        return Ok(None);
    };
    for _ in 0..1024 {
        if index < first {
            return Ok(None);
        }
        let batches = log
            .read(index, 1, usize::MAX)
            .map_err(|e| log_error(shard, e))?;
        if let Some(batch) = batches.first() {
            if batch.record_count > 0 {
                let slot = u16::try_from(batch.record_count - 1).unwrap_or(u16::MAX);
                return Ok(Some(SequenceNumber {
                    shard_index: shard.shard_index,
                    log_index: batch.index,
                    slot,
                }));
            }
        }
        if index == 0 {
            return Ok(None);
        }
        index -= 1;
    }
    Ok(None)
}

/// A reader this many entries or more behind the tip reads on a blocking-pool thread.
const FAR_BEHIND_ENTRIES: u64 = 16;

/// `read`, on a blocking-pool thread when the reader is far behind the tip. A catch-up
/// page is up to 10 MB of reads from the segment files, checksums and decoding: off the
/// async workers it neither stalls the node's other tasks (raft, other readers) on a
/// page-cache miss nor is confined to them, so one node can serve catch-up reads with more
/// cores than it has async workers. A reader near the tip (a long poll, a tailing consumer)
/// reads in place: a hand-off to another thread would cost more than its small read.
pub async fn read_far_behind_off_runtime(
    shard: &std::sync::Arc<ShardGroup>,
    from: (u64, u16),
    limit: usize,
    max_bytes: usize,
    horizon_ms: i64,
) -> Result<ReadPage, ApiError> {
    let applied = shard.tip.borrow().applied_index;
    if applied.saturating_sub(from.0) < FAR_BEHIND_ENTRIES {
        return read(shard, from, limit, max_bytes, horizon_ms);
    }
    let shard = shard.clone();
    tokio::task::spawn_blocking(move || read(&shard, from, limit, max_bytes, horizon_ms))
        .await
        .map_err(|e| ApiError::internal(format!("a read task failed: {e}")))?
}

/// Reads up to `limit` records and about `max_bytes` of data from `from`, skipping records
/// that arrived before `horizon_ms` (expired by retention).
pub fn read(
    shard: &ShardGroup,
    from: (u64, u16),
    limit: usize,
    max_bytes: usize,
    horizon_ms: i64,
) -> Result<ReadPage, ApiError> {
    let tip = *shard.tip.borrow();
    let end = end_index(&tip);
    let log = shard.log.log();
    let (mut index, mut slot) = from;
    let floor = log.first_index().unwrap_or(0).max(tip.trim_index + 1);
    if index < floor {
        (index, slot) = (floor, 0);
    }
    // Expired entries not trimmed yet are skipped one by one below; a long run of them is
    // jumped over with the time index (once per call: the search costs a few reads).
    let mut jumped = false;
    let mut records = Vec::new();
    let mut bytes = 0usize;
    'outer: while index < end && records.len() < limit && bytes < max_bytes {
        let want = usize::try_from(end - index).unwrap_or(usize::MAX).min(256);
        let batches = log
            .read(index, want, max_bytes.saturating_sub(bytes).max(1))
            .map_err(|e| log_error(shard, e))?;
        if batches.is_empty() {
            break;
        }
        for batch in &batches {
            if batch.index >= end {
                break 'outer;
            }
            if !jumped && batch.timestamp_ms < horizon_ms {
                jumped = true;
                let first = first_unexpired(shard, &tip, horizon_ms);
                if first > batch.index + 1 {
                    (index, slot) = (first, 0);
                    continue 'outer;
                }
            }
            if batch.record_count > 0 {
                if let Some(decoded) = entry_codec::decode_record_batch(batch).map_err(|e| {
                    ApiError::corruption(format!("entry {} cannot be decoded: {e}", batch.index))
                })? {
                    let expired = decoded.arrival_ms < horizon_ms;
                    for (position, record) in decoded
                        .records
                        .into_iter()
                        .enumerate()
                        .skip(usize::from(slot))
                        .filter(|_| !expired)
                    {
                        let full = records.len() >= limit
                            || (bytes + record.data.len() > max_bytes && !records.is_empty());
                        if full {
                            let at = u16::try_from(position).unwrap_or(u16::MAX);
                            return Ok(finish(records, (batch.index, at), tip, false, end));
                        }
                        bytes += record.data.len();
                        records.push(ReadRecord {
                            sequence: SequenceNumber {
                                shard_index: shard.shard_index,
                                log_index: batch.index,
                                slot: u16::try_from(position).unwrap_or(u16::MAX),
                            },
                            arrival_ms: decoded.arrival_ms,
                            partition_key: record.partition_key,
                            data: record.data,
                        });
                    }
                }
            }
            index = batch.index + 1;
            slot = 0;
            if records.len() >= limit || bytes >= max_bytes {
                break 'outer;
            }
        }
    }
    let caught_up = index >= end;
    Ok(finish(records, (index, slot), tip, caught_up, end))
}

fn finish(
    records: Vec<ReadRecord>,
    next: (u64, u16),
    tip: ShardTip,
    caught_up: bool,
    end: u64,
) -> ReadPage {
    let millis_behind_latest = match (caught_up, records.last()) {
        (true, _) | (false, None) => 0,
        (false, Some(last)) => u64::try_from(tip.last_record_ms - last.arrival_ms).unwrap_or(0),
    };
    ReadPage {
        records,
        next,
        millis_behind_latest,
        at_shard_end: tip.sealed_index.is_some() && next.0 >= end,
    }
}
