//! Writing many records reliably: batching, retrying failed entries, keeping key order.
//!
//! Records go out in PutRecords batches of at most 500 records and 5 MiB, with at most one
//! batch in flight. A batch's retryable failures (no leader, throughput exceeded, internal
//! failure) are retried — only those entries — before any later record is sent, so a
//! partition key's records cannot overtake each other across batches. Within one batch the
//! server may accept a key's later record while rejecting an earlier one; retrying the earlier
//! one then lands it after the later one (Kinesis has the same caveat).

use std::time::Instant;

use bytes::Bytes;

use tributary_proto::v1::{ErrorCode, PutRecordsEntry};

use crate::backoff::{Backoff, RetryPolicy};
use crate::error::is_retryable_code;
use crate::{Client, Error};

/// Most records one PutRecords call may carry.
pub const MAX_BATCH_RECORDS: usize = 500;

/// Most bytes (partition keys plus data) one PutRecords call may carry.
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;

/// How [`put_all`] batches and retries.
#[derive(Debug, Clone)]
pub struct PutOptions {
    /// Records per PutRecords call, 1 to [`MAX_BATCH_RECORDS`]. Smaller batches lower latency
    /// per call but cost more calls.
    pub max_batch_records: usize,
    /// Partition key plus data bytes per call, at most [`MAX_BATCH_BYTES`]. A single record
    /// larger than this still goes out, alone, and the server judges it.
    pub max_batch_bytes: usize,
    /// Retry bounds for each batch.
    pub retry: RetryPolicy,
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions {
            max_batch_records: MAX_BATCH_RECORDS,
            max_batch_bytes: MAX_BATCH_BYTES,
            retry: RetryPolicy::default(),
        }
    }
}

/// The outcome of a [`put_all`] in which every record was acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutSummary {
    /// Records acknowledged (all of them).
    pub acknowledged: usize,
    /// `(shard_id, sequence_number)` of each record, in input order.
    pub results: Vec<(String, String)>,
}

/// A [`put_all`] that stopped before every record was acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("{source} ({acknowledged} of {total} records acknowledged)")]
pub struct PutError {
    /// Records the server acknowledged before the failure (they are durable).
    pub acknowledged: usize,
    /// Records passed in.
    pub total: usize,
    /// Why the put stopped: a non-retryable error, or the last retryable one once the retry
    /// bound ran out.
    #[source]
    pub source: Error,
}

/// Writes `records` — `(partition_key, data, explicit_hash_key)` — to `stream` in order,
/// retrying failed entries with backoff, and returns where each one landed.
///
/// `data` is anything that converts into [`Bytes`] (`Vec<u8>`, `String`, `Bytes`, …).
pub async fn put_all<D: Into<Bytes>>(
    client: &Client,
    stream: &str,
    records: Vec<(String, D, Option<String>)>,
    options: &PutOptions,
) -> Result<PutSummary, PutError> {
    let total = records.len();
    let entries: Vec<PutRecordsEntry> = records
        .into_iter()
        .map(|(partition_key, data, explicit_hash_key)| PutRecordsEntry {
            partition_key,
            data: data.into(),
            explicit_hash_key,
        })
        .collect();
    let mut results: Vec<Option<(String, String)>> = vec![None; total];
    let mut acknowledged = 0;
    let mut start = 0;
    while start < total {
        let len = batch_len(&entries[start..], options);
        let batch = &entries[start..start + len];
        let sent = send_batch(client, stream, start, batch, options, &mut results).await;
        acknowledged += sent.acknowledged;
        if let Some(source) = sent.error {
            return Err(PutError {
                acknowledged,
                total,
                source,
            });
        }
        start += len;
    }
    let results: Vec<(String, String)> = results.into_iter().flatten().collect();
    if results.len() != total {
        // send_batch returns without an error only once every entry of the batch has a result.
        unreachable!("put_all finished with {} of {total} results", results.len());
    }
    Ok(PutSummary {
        acknowledged,
        results,
    })
}

/// How many of the leading `entries` go into the next batch: as many as fit the count and
/// byte limits, and at least one.
fn batch_len(entries: &[PutRecordsEntry], options: &PutOptions) -> usize {
    let max_records = options.max_batch_records.clamp(1, MAX_BATCH_RECORDS);
    let max_bytes = options.max_batch_bytes.min(MAX_BATCH_BYTES);
    let mut bytes = 0usize;
    let mut len = 0;
    for entry in entries.iter().take(max_records) {
        let size = entry.partition_key.len() + entry.data.len();
        if len > 0 && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        len += 1;
    }
    len
}

struct BatchOutcome {
    acknowledged: usize,
    error: Option<Error>,
}

/// Sends one batch (entries `first..first + batch.len()` of the input) until every entry is
/// acknowledged, an entry fails for good, or the retry bound runs out.
async fn send_batch(
    client: &Client,
    stream: &str,
    first: usize,
    batch: &[PutRecordsEntry],
    options: &PutOptions,
    results: &mut [Option<(String, String)>],
) -> BatchOutcome {
    let mut outcome = BatchOutcome {
        acknowledged: 0,
        error: None,
    };
    let started = Instant::now();
    let mut backoff = Backoff::start(&options.retry);
    // Indexes into `batch` still to be acknowledged, in input order.
    let mut pending: Vec<usize> = (0..batch.len()).collect();
    loop {
        let request = pending.iter().map(|&i| batch[i].clone()).collect();
        let error = match client.put_records(stream, request).await {
            Ok(response) => {
                let mut retry = Vec::new();
                let mut last_retryable = None;
                for (&i, result) in pending.iter().zip(response.records) {
                    let index = first + i;
                    match result.error_code() {
                        ErrorCode::Unspecified => {
                            results[index] = Some((result.shard_id, result.sequence_number));
                            outcome.acknowledged += 1;
                        }
                        code if is_retryable_code(code) => {
                            retry.push(i);
                            last_retryable = Some(Error::api(code, result.error_message));
                        }
                        code => {
                            outcome.error.get_or_insert_with(|| {
                                Error::api(
                                    code,
                                    format!("record {index}: {}", result.error_message),
                                )
                            });
                        }
                    }
                }
                if outcome.error.is_some() {
                    return outcome;
                }
                match last_retryable {
                    None => return outcome,
                    Some(error) => {
                        pending = retry;
                        error
                    }
                }
            }
            Err(error) if error.is_retryable() => error,
            Err(error) => {
                outcome.error = Some(error);
                return outcome;
            }
        };
        match backoff.next_delay() {
            Some(delay) => {
                tracing::warn!(
                    stream,
                    records = pending.len(),
                    attempt = backoff.attempts(),
                    ?delay,
                    %error,
                    "retrying records that PutRecords did not acknowledge"
                );
                tokio::time::sleep(delay).await;
            }
            None => {
                outcome.error = Some(gave_up(error, backoff.attempts(), started));
                return outcome;
            }
        }
    }
}

/// The last retryable error, saying that the retry bound ran out.
fn gave_up(error: Error, attempts: u32, started: Instant) -> Error {
    let bound = format!(
        "gave up after {attempts} attempts in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    match error {
        Error::Api { code, message } => Error::Api {
            code,
            message: format!("{message} ({bound})"),
        },
        other => {
            tracing::warn!(%other, "{bound}");
            other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key_len: usize, data_len: usize) -> PutRecordsEntry {
        PutRecordsEntry {
            partition_key: "k".repeat(key_len),
            data: vec![0; data_len].into(),
            explicit_hash_key: None,
        }
    }

    #[test]
    fn batches_stop_at_500_records() {
        let entries: Vec<_> = (0..1200).map(|_| entry(4, 10)).collect();
        let options = PutOptions::default();
        assert_eq!(batch_len(&entries, &options), 500);
        assert_eq!(batch_len(&entries[1000..], &options), 200);
    }

    #[test]
    fn batches_stop_before_5_mib_counting_keys_and_data() {
        let mib = 1024 * 1024;
        let options = PutOptions::default();
        // Five records of exactly 1 MiB (key + data) fit; a sixth byte does not.
        let entries: Vec<_> = (0..6).map(|_| entry(16, mib - 16)).collect();
        assert_eq!(batch_len(&entries, &options), 5);
        let mut entries: Vec<_> = (0..5).map(|_| entry(16, mib - 16)).collect();
        entries[4].partition_key.push('x');
        assert_eq!(batch_len(&entries, &options), 4);
    }

    #[test]
    fn an_oversized_record_goes_alone() {
        let options = PutOptions::default();
        let entries = [entry(1, MAX_BATCH_BYTES + 1), entry(1, 1)];
        assert_eq!(batch_len(&entries, &options), 1);
        assert_eq!(batch_len(&entries[1..], &options), 1);
        assert_eq!(batch_len(&[], &options), 0);
    }

    #[test]
    fn options_are_clamped_to_the_server_limits() {
        let options = PutOptions {
            max_batch_records: 0,
            ..PutOptions::default()
        };
        let entries: Vec<_> = (0..3).map(|_| entry(1, 1)).collect();
        assert_eq!(batch_len(&entries, &options), 1);
        let options = PutOptions {
            max_batch_records: 10_000,
            ..PutOptions::default()
        };
        let entries: Vec<_> = (0..600).map(|_| entry(1, 1)).collect();
        assert_eq!(batch_len(&entries, &options), MAX_BATCH_RECORDS);
    }
}
