//! Reading shards: up to the tip they had when the read started, or following them forever.
//!
//! "Until the tip" is what a one-shot read (`trib get`, a test that checks what was written)
//! needs: the shard's `last_sequence_number` is taken from ListShards once, at the start, and
//! the read stops there — so records written meanwhile cannot keep it going forever, and the
//! result is exactly what had been committed when the read began. A shard that is empty at
//! the start, a caught-up response (no records, `millis_behind_latest == 0`) and a closed,
//! fully read shard (no next iterator) end the read too. A shard that was already closed is
//! read to its end: nothing can be added to it.
//!
//! A whole-stream read follows the shards' lineage (see `lineage.rs`): a child shard is read
//! only once its parents are drained, so each partition key's records come out in put order
//! across any number of splits and merges. Until the tip, that covers the shards listed at the
//! start (a child created later holds only records written after the read began); a follow
//! also moves from a closed shard into children it had not seen yet.
//!
//! Reads survive the usual transient failures: retryable errors (a leader election) are
//! retried with backoff, and an expired iterator is reopened after the last record returned.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tributary_proto::v1::{ChildShard, ErrorCode, Record, Shard, ShardStatus};

use crate::backoff::{Backoff, RetryPolicy};
use crate::lineage::StreamWalk;
use crate::{Client, Error, StartingPosition};

/// Most records one GetRecords call returns.
pub const MAX_RECORDS_PER_CALL: u32 = 10_000;

/// How long a follow waits after a round of polls that returned nothing. Short enough that a
/// follower sees new records promptly, long enough not to hammer idle shards.
pub const FOLLOW_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How long a follow's GetRecords at the tip waits for new records (long poll) when it
/// reads one shard; several shards are polled in turn instead, so none waits on another.
pub const FOLLOW_LONG_POLL: Duration = Duration::from_secs(5);

/// When a [`ShardReader`] is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// At the shard's tip as listed when the reader was made (see the module docs); a shard
    /// listed as closed is read to its end.
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

/// Where an UntilTip read of one shard stops, besides a caught-up page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// At the end of a closed shard (no next iterator): always for Follow, and for a shard
    /// listed as closed.
    End,
    /// At the newest record when the shard was listed.
    Tip(u128),
    /// At once: the open shard was empty when listed.
    Empty,
}

impl Stop {
    fn for_shard(mode: ReadMode, shard: &Shard) -> Stop {
        let tip = shard
            .last_sequence_number
            .as_deref()
            .and_then(|sequence| sequence.parse::<u128>().ok());
        match (mode, shard.status(), tip) {
            (ReadMode::Follow, _, _) | (ReadMode::UntilTip, ShardStatus::Closed, _) => Stop::End,
            (ReadMode::UntilTip, _, Some(tip)) => Stop::Tip(tip),
            (ReadMode::UntilTip, _, None) => Stop::Empty,
        }
    }
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
    stop: Stop,
    mode: ReadMode,
    finished: bool,
    /// From the last page of a closed shard: the shards that continue its hash keys.
    child_shards: Vec<ChildShard>,
    /// Long poll: how long the server may wait at the tip for new records.
    wait: Option<Duration>,
    retry: RetryPolicy,
}

impl ShardReader {
    /// A reader of `shard` (as listed by [`Client::list_shards`]; UntilTip stops at its
    /// `last_sequence_number`, or at its end when it is closed) from `from`. No RPC is made
    /// until [`ShardReader::next_batch`].
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
            stop: Stop::for_shard(mode, shard),
            mode,
            finished: false,
            child_shards: Vec::new(),
            wait: None,
            retry: RetryPolicy::default(),
        }
    }

    /// Makes each GetRecords at the tip a long poll of up to `wait` (at most 10 s): the
    /// server answers as soon as records commit, so a follower sees them without polling.
    pub fn set_long_poll(&mut self, wait: Option<Duration>) {
        self.wait = wait;
    }

    /// Whether GetRecords calls long-poll (an empty answer then already waited).
    pub fn long_polls(&self) -> bool {
        self.wait.is_some()
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

    /// Once a closed shard has been read to its end: the shards that continue its hash keys
    /// (one after a merge, two after a split). Empty before that.
    pub fn child_shards(&self) -> &[ChildShard] {
        &self.child_shards
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
            if self.stop == Stop::Empty {
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
            self.child_shards = response.child_shards;
        }
        if self.mode == ReadMode::UntilTip {
            if caught_up {
                self.finished = true;
            }
            if let Stop::Tip(tip) = self.stop {
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
            let error = match self
                .client
                .get_records_waiting(&iterator, limit, self.wait)
                .await
            {
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

/// Hands records to the caller's callback and keeps count against the limit (shared with
/// the enhanced fan-out reader, so `limit` and a breaking callback mean the same there).
pub(crate) struct Delivery<F> {
    limit: Option<usize>,
    pub(crate) delivered: usize,
    on_record: F,
}

impl<F> Delivery<F>
where
    F: FnMut(&str, Record) -> ControlFlow<()>,
{
    pub(crate) fn new(limit: Option<usize>, on_record: F) -> Self {
        Delivery {
            limit,
            delivered: 0,
            on_record,
        }
    }

    /// The page size for the next GetRecords call.
    fn page_limit(&self) -> u32 {
        page_limit(self.limit.map(|limit| limit.saturating_sub(self.delivered)))
    }

    pub(crate) fn is_full(&self) -> bool {
        self.limit.is_some_and(|limit| self.delivered >= limit)
    }

    /// Hands `records` over; breaks once the limit is reached or the callback breaks.
    pub(crate) fn hand_over(&mut self, shard_id: &str, records: Vec<Record>) -> ControlFlow<()> {
        for record in records {
            if self.is_full() {
                return ControlFlow::Break(());
            }
            self.delivered += 1;
            (self.on_record)(shard_id, record)?;
        }
        if self.is_full() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
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

/// Reads every shard of the stream (closed ones included; parents drained before their
/// children, otherwise in ListShards order) from `from` until each one's tip at the time of
/// the call; `limit` caps the total.
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

/// Reads `shard_id` (or, with `None`, every shard one after another: each parent to its end
/// before any of its children, otherwise in ListShards order) from `from` until the tip at
/// the time of the call, handing each record to `on_record` as it arrives. Stops early after
/// `limit` records in total or when `on_record` breaks. Returns the number of records handed
/// over.
pub async fn read_until_tip<F>(
    client: &Client,
    stream: &str,
    shard_id: Option<&str>,
    from: &StartingPosition,
    limit: Option<usize>,
    on_record: F,
) -> Result<usize, Error>
where
    F: FnMut(&str, Record) -> ControlFlow<()>,
{
    let listing = client.list_shards(stream).await?;
    let mut delivery = Delivery::new(limit, on_record);
    if let Some(shard_id) = shard_id {
        let shard = find_shard(&listing, stream, shard_id)?;
        let mut reader = ShardReader::new(client, stream, shard, from.clone(), ReadMode::UntilTip);
        // Stopped by the limit or at the tip: either way the count is the answer.
        let _ = read_to_end(&mut reader, &mut delivery).await?;
        return Ok(delivery.delivered);
    }
    let mut walk = StreamWalk::new(client, stream, listing);
    loop {
        let ready = walk.take_ready()?;
        if ready.is_empty() {
            return Ok(delivery.delivered);
        }
        for ready in ready {
            let shard_id = ready.shard.shard_id.clone();
            let mut reader = ShardReader::new(
                client,
                stream,
                &ready.shard,
                from.clone(),
                ReadMode::UntilTip,
            );
            match read_to_end(&mut reader, &mut delivery).await {
                Ok(ControlFlow::Break(())) => return Ok(delivery.delivered),
                Ok(ControlFlow::Continue(())) => {
                    walk.drained(&shard_id, &[]);
                }
                Err(error) => walk.failed(&shard_id, error).await?,
            }
        }
    }
}

/// Reads until the reader is finished, the limit is reached or the callback breaks.
async fn read_to_end<F>(
    reader: &mut ShardReader,
    delivery: &mut Delivery<F>,
) -> Result<ControlFlow<()>, Error>
where
    F: FnMut(&str, Record) -> ControlFlow<()>,
{
    while !reader.is_finished() {
        if delivery.is_full() {
            return Ok(ControlFlow::Break(()));
        }
        let records = reader.next_batch(delivery.page_limit()).await?;
        if delivery.hand_over(reader.shard_id(), records).is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// Follows `shard_id` (or, with `None`, the whole stream) from `from`, handing each record
/// to `on_record`, sleeping [`FOLLOW_POLL_INTERVAL`] when a round brings nothing.
///
/// A whole-stream follow polls the shards it may read in turn: a child shard only once its
/// parents are read to their end, so each partition key's records come out in put order
/// across reshards. It moves from a closed shard into its children (listing the shards again
/// when they are new to it; it also does so every few seconds), reading children created
/// after the follow began from their start.
///
/// Runs until `on_record` breaks, `limit` records were handed over, or there is nothing left
/// that could ever hold new records (the shard, or every shard of the stream, is closed and
/// fully read). Returns the number of records handed over.
pub async fn follow<F>(
    client: &Client,
    stream: &str,
    shard_id: Option<&str>,
    from: &StartingPosition,
    limit: Option<usize>,
    on_record: F,
) -> Result<usize, Error>
where
    F: FnMut(&str, Record) -> ControlFlow<()>,
{
    let listing = client.list_shards(stream).await?;
    let mut delivery = Delivery::new(limit, on_record);
    let Some(shard_id) = shard_id else {
        let walk = StreamWalk::new(client, stream, listing);
        follow_stream(client, stream, walk, from, &mut delivery).await?;
        return Ok(delivery.delivered);
    };
    let shard = find_shard(&listing, stream, shard_id)?;
    let mut reader = ShardReader::new(client, stream, shard, from.clone(), ReadMode::Follow);
    reader.set_long_poll(Some(FOLLOW_LONG_POLL));
    while !reader.is_finished() && !delivery.is_full() {
        let started = Instant::now();
        let records = reader.next_batch(delivery.page_limit()).await?;
        let received = !records.is_empty();
        if delivery.hand_over(reader.shard_id(), records).is_break() {
            break;
        }
        // A server that answered an empty long poll early (or ignores the wait) must not
        // make this loop spin.
        if !received && !reader.is_finished() {
            pace(started).await;
        }
    }
    Ok(delivery.delivered)
}

async fn follow_stream<F>(
    client: &Client,
    stream: &str,
    mut walk: StreamWalk,
    from: &StartingPosition,
    delivery: &mut Delivery<F>,
) -> Result<(), Error>
where
    F: FnMut(&str, Record) -> ControlFlow<()>,
{
    let mut readers: Vec<ShardReader> = Vec::new();
    loop {
        for ready in walk.take_ready()? {
            readers.push(ShardReader::new(
                client,
                stream,
                &ready.shard,
                ready.start(from),
                ReadMode::Follow,
            ));
        }
        let mut received = false;
        let mut relist = false;
        let mut index = 0;
        let started = Instant::now();
        // One shard to read: long-poll it. Several: poll them in turn.
        let single = readers.len() == 1;
        for reader in &mut readers {
            reader.set_long_poll(single.then_some(FOLLOW_LONG_POLL));
        }
        while index < readers.len() {
            if delivery.is_full() {
                return Ok(());
            }
            let reader = &mut readers[index];
            let shard_id = reader.shard_id().to_owned();
            match reader.next_batch(delivery.page_limit()).await {
                Ok(records) => {
                    received |= !records.is_empty();
                    if delivery.hand_over(&shard_id, records).is_break() {
                        return Ok(());
                    }
                }
                Err(error) => {
                    walk.failed(&shard_id, error).await?;
                    readers.remove(index);
                    continue;
                }
            }
            let reader = &readers[index];
            if reader.is_finished() {
                relist |= walk.drained(&shard_id, reader.child_shards());
                readers.remove(index);
            } else {
                index += 1;
            }
        }
        if walk.refresh(relist).await?.is_break() {
            // Every shard is closed and read to its end: nothing can come.
            return Ok(());
        }
        // New children are read at once; otherwise an idle round waits before the next
        // (a long poll has usually waited already).
        if !received && !relist {
            pace(started).await;
        }
    }
}

/// Sleeps what is left of [`FOLLOW_POLL_INTERVAL`] since `started`.
async fn pace(started: Instant) {
    if let Some(rest) = FOLLOW_POLL_INTERVAL.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
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
    fn closed_shards_are_read_to_their_end() {
        let shard = |status: ShardStatus, last: Option<&str>| {
            let mut shard = Shard {
                last_sequence_number: last.map(str::to_owned),
                ..Default::default()
            };
            shard.set_status(status);
            shard
        };
        let cases = [
            (
                ReadMode::UntilTip,
                ShardStatus::Open,
                Some("7"),
                Stop::Tip(7),
            ),
            (ReadMode::UntilTip, ShardStatus::Open, None, Stop::Empty),
            (
                ReadMode::UntilTip,
                ShardStatus::Closed,
                Some("7"),
                Stop::End,
            ),
            // A closed shard's tip may be left out of the listing; it still has records.
            (ReadMode::UntilTip, ShardStatus::Closed, None, Stop::End),
            (ReadMode::Follow, ShardStatus::Open, Some("7"), Stop::End),
        ];
        for (mode, status, last, expected) in cases {
            assert_eq!(
                Stop::for_shard(mode, &shard(status, last)),
                expected,
                "{mode:?} {status:?} {last:?}"
            );
        }
    }

    #[test]
    fn delivery_stops_at_the_limit_or_when_the_callback_breaks() {
        let mut seen = Vec::new();
        let mut delivery = Delivery::new(Some(5), |shard: &str, record: Record| {
            seen.push((shard.to_owned(), record.sequence_number));
            ControlFlow::Continue(())
        });
        assert_eq!(delivery.page_limit(), 5);
        assert!(delivery.hand_over("a", records(&[1, 2, 3])).is_continue());
        assert_eq!(delivery.page_limit(), 2);
        assert!(delivery.hand_over("b", records(&[4, 5, 6])).is_break());
        assert_eq!(delivery.delivered, 5);
        assert!(delivery.is_full());
        assert_eq!(
            seen.len(),
            5,
            "the record past the limit is not handed over"
        );

        let mut delivery = Delivery::new(None, |_: &str, record: Record| {
            if record.sequence_number == "2" {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert!(delivery.hand_over("a", records(&[1, 2, 3])).is_break());
        assert_eq!(
            delivery.delivered, 2,
            "the breaking record counts as handed over"
        );
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
