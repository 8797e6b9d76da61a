//! Reading shards: up to the tip they had when the read started, or following them forever.
//!
//! "Until the tip" is what a one-shot read (`trib get`, a test that checks what was written)
//! needs: the shard's `last_sequence_number` is taken from ListShards once, at the start, and
//! the read stops there — so records written meanwhile cannot keep it going forever, and the
//! result is exactly what had been committed when the read began. A shard that is empty at
//! the start, a caught-up response (no records, `millis_behind_latest == 0`) and a closed,
//! fully read shard (no next iterator) end the read too.
//!
//! Reads survive the usual transient failures: retryable errors (a leader election) are
//! retried with backoff, and an expired iterator is reopened after the last record returned.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tributary_proto::v1::{ErrorCode, Record, Shard, ShardStatus};

use crate::backoff::{Backoff, RetryPolicy};
use crate::{Client, Error, StartingPosition};

/// Most records one GetRecords call returns.
pub const MAX_RECORDS_PER_CALL: u32 = 10_000;

/// How long a follow waits after a round of polls that returned nothing. Short enough that a
/// follower sees new records promptly, long enough not to hammer idle shards.
pub const FOLLOW_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How often a whole-stream follow lists the shards again to pick up new (child) shards.
const FOLLOW_SHARD_REFRESH: Duration = Duration::from_secs(5);

/// When a [`ShardReader`] is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// At the shard's tip as listed when the reader was made (see the module docs).
    UntilTip,
    /// Only when the shard is closed and fully read.
    Follow,
}

/// A record and the shard it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRecord {
    /// The shard that holds the record.
    pub shard_id: String,
    /// The record.
    pub record: Record,
}

/// Reads one shard page by page.
#[derive(Debug)]
pub struct ShardReader {
    client: Client,
    stream: String,
    shard_id: String,
    /// Where to (re)open an iterator: the starting position until a record has been read,
    /// then just after the last record read.
    position: StartingPosition,
    iterator: Option<String>,
    opened: bool,
    /// UntilTip only: the newest sequence number when the reader was made (`None`: empty).
    tip: Option<u128>,
    mode: ReadMode,
    finished: bool,
    retry: RetryPolicy,
}

impl ShardReader {
    /// A reader of `shard` (as listed by [`Client::list_shards`]; UntilTip stops at its
    /// `last_sequence_number`) from `from`. No RPC is made until [`ShardReader::next_batch`].
    pub fn new(
        client: &Client,
        stream: &str,
        shard: &Shard,
        from: StartingPosition,
        mode: ReadMode,
    ) -> ShardReader {
        ShardReader {
            client: client.clone(),
            stream: stream.to_owned(),
            shard_id: shard.shard_id.clone(),
            position: from,
            iterator: None,
            opened: false,
            tip: shard
                .last_sequence_number
                .as_deref()
                .and_then(|sequence| sequence.parse::<u128>().ok()),
            mode,
            finished: false,
            retry: RetryPolicy::default(),
        }
    }

    /// Lists the stream's shards and makes a reader of `shard_id`.
    pub async fn open(
        client: &Client,
        stream: &str,
        shard_id: &str,
        from: StartingPosition,
        mode: ReadMode,
    ) -> Result<ShardReader, Error> {
        let shards = client.list_shards(stream).await?;
        let shard = find_shard(&shards, stream, shard_id)?;
        Ok(ShardReader::new(client, stream, shard, from, mode))
    }

    /// Replaces the retry bounds for transient GetShardIterator/GetRecords failures.
    pub fn with_retry(mut self, retry: RetryPolicy) -> ShardReader {
        self.retry = retry;
        self
    }

    /// The shard being read.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// Whether the read is over; [`ShardReader::next_batch`] then returns no records.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// One GetRecords call of up to `limit` records (clamped to 1..=10,000). May return no
    /// records without being finished (nothing new yet, or the server skipped a gap).
    pub async fn next_batch(&mut self, limit: u32) -> Result<Vec<Record>, Error> {
        if self.finished {
            return Ok(Vec::new());
        }
        if !self.opened {
            self.iterator = Some(self.open_iterator().await?);
            self.opened = true;
            if self.mode == ReadMode::UntilTip && self.tip.is_none() {
                // Empty when the read started: nothing to read up to.
                self.finished = true;
                return Ok(Vec::new());
            }
        }
        let Some(iterator) = self.iterator.clone() else {
            self.finished = true;
            return Ok(Vec::new());
        };
        let response = self
            .get_records(iterator, limit.clamp(1, MAX_RECORDS_PER_CALL))
            .await?;
        let caught_up = response.records.is_empty() && response.millis_behind_latest == 0;
        let mut records = response.records;
        if let Some(last) = records.last() {
            self.position = StartingPosition::AfterSequence(last.sequence_number.clone());
        }
        self.iterator = response.next_shard_iterator;
        if self.iterator.is_none() {
            self.finished = true;
        }
        if self.mode == ReadMode::UntilTip {
            if caught_up {
                self.finished = true;
            }
            if let Some(tip) = self.tip {
                if let Some(keep) = records_up_to(&records, tip) {
                    records.truncate(keep);
                    self.finished = true;
                }
            }
        }
        Ok(records)
    }

    async fn open_iterator(&self) -> Result<String, Error> {
        let mut backoff = Backoff::start(&self.retry);
        loop {
            let error = match self
                .client
                .get_shard_iterator(&self.stream, &self.shard_id, &self.position)
                .await
            {
                Ok(iterator) => return Ok(iterator),
                Err(error) if error.is_retryable() => error,
                Err(error) => return Err(error),
            };
            self.wait_to_retry(&mut backoff, error).await?;
        }
    }

    /// GetRecords, retrying transient errors and reopening an expired iterator once.
    async fn get_records(
        &mut self,
        mut iterator: String,
        limit: u32,
    ) -> Result<tributary_proto::v1::GetRecordsResponse, Error> {
        let mut backoff = Backoff::start(&self.retry);
        let mut reopened = false;
        loop {
            let error = match self.client.get_records(&iterator, limit).await {
                Ok(response) => return Ok(response),
                Err(error) if error.code() == Some(ErrorCode::ExpiredIterator) && !reopened => {
                    tracing::debug!(shard = %self.shard_id, %error, "reopening expired iterator");
                    reopened = true;
                    iterator = self.open_iterator().await?;
                    continue;
                }
                Err(error) if error.is_retryable() => error,
                Err(error) => return Err(error),
            };
            self.wait_to_retry(&mut backoff, error).await?;
        }
    }

    async fn wait_to_retry(&self, backoff: &mut Backoff<'_>, error: Error) -> Result<(), Error> {
        let Some(delay) = backoff.next_delay() else {
            return Err(error);
        };
        tracing::warn!(
            stream = %self.stream,
            shard = %self.shard_id,
            attempt = backoff.attempts(),
            ?delay,
            %error,
            "retrying shard read"
        );
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// When a page reaches `tip`: how many of its records to keep (those at or below it).
/// `None` while the page ends below the tip.
fn records_up_to(records: &[Record], tip: u128) -> Option<usize> {
    records.iter().enumerate().find_map(|(index, record)| {
        let sequence = record.sequence_number.parse::<u128>().ok()?;
        match sequence.cmp(&tip) {
            std::cmp::Ordering::Less => None,
            std::cmp::Ordering::Equal => Some(index + 1),
            std::cmp::Ordering::Greater => Some(index),
        }
    })
}

fn find_shard<'a>(shards: &'a [Shard], stream: &str, shard_id: &str) -> Result<&'a Shard, Error> {
    shards
        .iter()
        .find(|shard| shard.shard_id == shard_id)
        .ok_or_else(|| {
            // Name a few shards, not all: a stream may have a thousand.
            const SHOWN: usize = 8;
            let mut known: Vec<&str> = shards
                .iter()
                .take(SHOWN)
                .map(|shard| shard.shard_id.as_str())
                .collect();
            let more = format!("… ({} in all)", shards.len());
            if shards.len() > SHOWN {
                known.push(&more);
            }
            Error::api(
                ErrorCode::ResourceNotFound,
                format!(
                    "shard '{shard_id}' not found in stream '{stream}'; its shards are: {}",
                    known.join(", ")
                ),
            )
        })
}

/// How many records to ask for next, given what the caller still wants.
fn page_limit(remaining: Option<usize>) -> u32 {
    match remaining {
        Some(remaining) => u32::try_from(remaining)
            .unwrap_or(MAX_RECORDS_PER_CALL)
            .clamp(1, MAX_RECORDS_PER_CALL),
        None => MAX_RECORDS_PER_CALL,
    }
}

/// Reads one shard from `from` until its tip at the time of the call (or `limit` records).
pub async fn read_shard_until_tip(
    client: &Client,
    stream: &str,
    shard_id: &str,
    from: &StartingPosition,
    limit: Option<usize>,
) -> Result<Vec<Record>, Error> {
    let mut records = Vec::new();
    read_until_tip(client, stream, Some(shard_id), from, limit, |_, record| {
        records.push(record);
        ControlFlow::Continue(())
    })
    .await?;
    Ok(records)
}

/// Reads every shard of the stream (closed ones included, in ListShards order — parents
/// before children) from `from` until each one's tip at the time of the call; `limit` caps
/// the total.
pub async fn read_stream_until_tip(
    client: &Client,
    stream: &str,
    from: &StartingPosition,
    limit: Option<usize>,
) -> Result<Vec<ShardRecord>, Error> {
    let mut records = Vec::new();
    read_until_tip(client, stream, None, from, limit, |shard_id, record| {
        records.push(ShardRecord {
            shard_id: shard_id.to_owned(),
            record,
        });
        ControlFlow::Continue(())
    })
    .await?;
    Ok(records)
}

/// Reads `shard_id` (or, with `None`, every shard one after another in ListShards order) from
/// `from` until the tip at the time of the call, handing each record to `on_record` as it
/// arrives. Stops early after `limit` records in total or when `on_record` breaks. Returns
/// the number of records handed over.
pub async fn read_until_tip<F>(
    client: &Client,
    stream: &str,
    shard_id: Option<&str>,
    from: &StartingPosition,
    limit: Option<usize>,
    mut on_record: F,
) -> Result<usize, Error>
where
    F: FnMut(&str, Record) -> ControlFlow<()>,
{
    let shards = select_shards(client, stream, shard_id).await?;
    let mut delivered = 0;
    for shard in &shards {
        let mut reader = ShardReader::new(client, stream, shard, from.clone(), ReadMode::UntilTip);
        while !reader.is_finished() {
            let remaining = limit.map(|limit| limit.saturating_sub(delivered));
            if remaining == Some(0) {
                return Ok(delivered);
            }
            for record in reader.next_batch(page_limit(remaining)).await? {
                if limit.is_some_and(|limit| delivered >= limit) {
                    return Ok(delivered);
                }
                delivered += 1;
                if on_record(reader.shard_id(), record).is_break() {
                    return Ok(delivered);
                }
            }
        }
    }
    Ok(delivered)
}

/// Follows `shard_id` (or, with `None`, every shard, polled in turn) from `from`, handing
/// each record to `on_record`, sleeping [`FOLLOW_POLL_INTERVAL`] when a round brings nothing.
///
/// Runs until `on_record` breaks, `limit` records were handed over, or there is nothing left
/// that could ever hold new records (the shard, or every shard of the stream, is closed and
/// fully read). A whole-stream follow lists the shards every few seconds and reads shards
/// that appeared meanwhile (children of a resharding) from their start. Returns the number of
/// records handed over.
pub async fn follow<F>(
    client: &Client,
    stream: &str,
    shard_id: Option<&str>,
    from: &StartingPosition,
    limit: Option<usize>,
    mut on_record: F,
) -> Result<usize, Error>
where
    F: FnMut(&str, Record) -> ControlFlow<()>,
{
    let shards = select_shards(client, stream, shard_id).await?;
    let mut known: HashSet<String> = shards.iter().map(|s| s.shard_id.clone()).collect();
    let mut readers: Vec<ShardReader> = shards
        .iter()
        .map(|shard| ShardReader::new(client, stream, shard, from.clone(), ReadMode::Follow))
        .collect();
    let mut delivered = 0;
    let mut listed_at = Instant::now();
    loop {
        let mut received = false;
        for reader in readers.iter_mut().filter(|reader| !reader.is_finished()) {
            let remaining = limit.map(|limit| limit.saturating_sub(delivered));
            if remaining == Some(0) {
                return Ok(delivered);
            }
            let records = reader.next_batch(page_limit(remaining)).await?;
            received |= !records.is_empty();
            for record in records {
                if limit.is_some_and(|limit| delivered >= limit) {
                    return Ok(delivered);
                }
                delivered += 1;
                if on_record(reader.shard_id(), record).is_break() {
                    return Ok(delivered);
                }
            }
        }
        let all_finished = readers.iter().all(ShardReader::is_finished);
        if shard_id.is_some() && all_finished {
            return Ok(delivered);
        }
        if shard_id.is_none() && (all_finished || listed_at.elapsed() >= FOLLOW_SHARD_REFRESH) {
            listed_at = Instant::now();
            match client.list_shards(stream).await {
                Ok(shards) => {
                    let any_open = shards.iter().any(|s| s.status() == ShardStatus::Open);
                    for shard in shards {
                        if known.insert(shard.shard_id.clone()) {
                            // Everything in a shard born after the follow began is new.
                            readers.push(ShardReader::new(
                                client,
                                stream,
                                &shard,
                                StartingPosition::TrimHorizon,
                                ReadMode::Follow,
                            ));
                        }
                    }
                    if !any_open && readers.iter().all(ShardReader::is_finished) {
                        return Ok(delivered);
                    }
                }
                Err(error) if error.is_retryable() => {
                    tracing::warn!(stream, %error, "listing shards to follow failed; will retry");
                }
                Err(error) => return Err(error),
            }
        }
        if !received {
            tokio::time::sleep(FOLLOW_POLL_INTERVAL).await;
        }
    }
}

/// The shards a read covers: the one named, or all of them in ListShards order.
async fn select_shards(
    client: &Client,
    stream: &str,
    shard_id: Option<&str>,
) -> Result<Vec<Shard>, Error> {
    let shards = client.list_shards(stream).await?;
    match shard_id {
        None => Ok(shards),
        Some(shard_id) => Ok(vec![find_shard(&shards, stream, shard_id)?.clone()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(sequences: &[u128]) -> Vec<Record> {
        sequences
            .iter()
            .map(|sequence| Record {
                sequence_number: sequence.to_string(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn pages_are_cut_at_the_tip() {
        let cases: [(&[u128], u128, Option<usize>); 6] = [
            (&[1, 2, 3], 10, None),
            (&[1, 2, 3], 3, Some(3)),
            (&[1, 2, 3], 2, Some(2)),
            (&[5, 7, 9], 6, Some(1)),
            (&[5, 7, 9], 4, Some(0)),
            (&[], 4, None),
        ];
        for (sequences, tip, expected) in cases {
            assert_eq!(
                records_up_to(&records(sequences), tip),
                expected,
                "{sequences:?} tip {tip}"
            );
        }
    }

    #[test]
    fn tips_compare_as_128_bit_integers_not_strings() {
        // "9" > "10" as strings; as numbers 9 is below the tip.
        assert_eq!(records_up_to(&records(&[9]), 10), None);
        let big = u128::MAX - 1;
        assert_eq!(records_up_to(&records(&[big, u128::MAX]), big), Some(1));
    }

    #[test]
    fn page_limits_follow_what_is_left() {
        assert_eq!(page_limit(None), MAX_RECORDS_PER_CALL);
        assert_eq!(page_limit(Some(7)), 7);
        assert_eq!(page_limit(Some(1_000_000)), MAX_RECORDS_PER_CALL);
        assert_eq!(page_limit(Some(usize::MAX)), MAX_RECORDS_PER_CALL);
    }

    #[test]
    fn unknown_shards_are_resource_not_found() {
        let shards = [Shard {
            shard_id: "shardId-000000000000".into(),
            ..Default::default()
        }];
        let error = find_shard(&shards, "s", "shardId-000000000009").expect_err("unknown");
        assert_eq!(error.code(), Some(ErrorCode::ResourceNotFound));
        assert!(
            error.to_string().contains("shardId-000000000000"),
            "{error}"
        );
    }
}
