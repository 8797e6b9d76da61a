//! Reading records from a shard log: GetShardIterator positions and GetRecords pages.
//! Readers see only applied (committed) entries: nothing above the tip can be truncated.

use bytes::Bytes;

use crate::error::ApiError;
use crate::node::ShardGroup;
use crate::raft::entry_codec;
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

/// One page of records.
#[derive(Debug)]
pub struct ReadPage {
    /// Records in sequence order.
    pub records: Vec<ReadRecord>,
    /// Where the next read starts: (log index, slot).
    pub next: (u64, u16),
    /// How far the last returned record is behind the shard's newest record.
    pub millis_behind_latest: u64,
}

fn log_error(err: tributary_log::LogError) -> ApiError {
    match err {
        tributary_log::LogError::Corruption { .. } => {
            tracing::error!(%err, "corrupt shard data detected on read");
            ApiError::corruption(format!(
                "stored data failed its checksum and was not returned: {err}"
            ))
        }
        other => ApiError::internal(format!("reading the shard log failed: {other}")),
    }
}

/// The position of the oldest readable record.
pub fn trim_horizon(shard: &ShardGroup) -> (u64, u16) {
    (shard.log.log().first_index().unwrap_or(0), 0)
}

/// The position just after the newest committed record.
pub fn latest(shard: &ShardGroup) -> (u64, u16) {
    (shard.tip.borrow().applied_index + 1, 0)
}

/// The first position at or after `ts_ms`.
pub fn at_timestamp(shard: &ShardGroup, ts_ms: i64) -> (u64, u16) {
    let applied = shard.tip.borrow().applied_index;
    match shard.log.log().find_by_timestamp(ts_ms) {
        Some(index) if index <= applied => (index, 0),
        _ => (applied + 1, 0),
    }
}

/// The sequence number of the newest committed record, if any (scans back over the few
/// record-less entries, such as leader-election blanks, that can follow it).
pub fn last_sequence(shard: &ShardGroup) -> Result<Option<SequenceNumber>, ApiError> {
    let log = shard.log.log();
    let applied = shard.tip.borrow().applied_index;
    let Some(first) = log.first_index() else {
        return Ok(None);
    };
    let mut index = applied.min(log.last_index().unwrap_or(0));
    for _ in 0..1024 {
        if index < first {
            return Ok(None);
        }
        let batches = log.read(index, 1, usize::MAX).map_err(log_error)?;
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

/// Reads up to `limit` records and about `max_bytes` of data from `from`.
pub fn read(
    shard: &ShardGroup,
    from: (u64, u16),
    limit: usize,
    max_bytes: usize,
) -> Result<ReadPage, ApiError> {
    let tip = *shard.tip.borrow();
    let log = shard.log.log();
    let (mut index, mut slot) = from;
    if let Some(first) = log.first_index() {
        if index < first {
            (index, slot) = (first, 0);
        }
    }
    let mut records = Vec::new();
    let mut bytes = 0usize;
    'outer: while index <= tip.applied_index && records.len() < limit && bytes < max_bytes {
        let want = usize::try_from(tip.applied_index - index + 1)
            .unwrap_or(usize::MAX)
            .min(256);
        let batches = log
            .read(index, want, max_bytes.saturating_sub(bytes).max(1))
            .map_err(log_error)?;
        if batches.is_empty() {
            break;
        }
        for batch in &batches {
            if batch.index > tip.applied_index {
                break 'outer;
            }
            if batch.record_count > 0 {
                if let Some(decoded) = entry_codec::decode_record_batch(batch).map_err(|e| {
                    ApiError::corruption(format!("entry {} cannot be decoded: {e}", batch.index))
                })? {
                    for (position, record) in decoded
                        .records
                        .into_iter()
                        .enumerate()
                        .skip(usize::from(slot))
                    {
                        let full = records.len() >= limit
                            || (bytes + record.data.len() > max_bytes && !records.is_empty());
                        if full {
                            let at = u16::try_from(position).unwrap_or(u16::MAX);
                            return Ok(finish(records, (batch.index, at), tip, false));
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
    let caught_up = index > tip.applied_index;
    Ok(finish(records, (index, slot), tip, caught_up))
}

fn finish(
    records: Vec<ReadRecord>,
    next: (u64, u16),
    tip: crate::raft::state_machine::ShardTip,
    caught_up: bool,
) -> ReadPage {
    let millis_behind_latest = match (caught_up, records.last()) {
        (true, _) | (false, None) => 0,
        (false, Some(last)) => u64::try_from(tip.last_record_ms - last.arrival_ms).unwrap_or(0),
    };
    ReadPage {
        records,
        next,
        millis_behind_latest,
    }
}
