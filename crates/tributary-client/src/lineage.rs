//! The order in which a whole-stream read takes up shards.
//!
//! A reshard never moves data: it closes a parent shard and starts its children, so a
//! partition key's older records stay in the parent and its newer ones go to a child. A
//! reader that took up a child before its parent was drained would hand the key's records
//! over out of put order. So a shard is taken up only once each of its parents is drained —
//! read to its end — or gone: absent from the listing, expired by retention together with its
//! records. Shards with no such relation may be read in any order, or at the same time.
//!
//! [`Lineage`] is that rule alone, without I/O; [`StreamWalk`] drives it with the listings a
//! read needs. Every whole-stream reader — until the tip, a polling follow, an enhanced
//! fan-out follow — walks the stream through a `StreamWalk`, so all of them take up shards
//! in the same order.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tributary_proto::v1::{ChildShard, ErrorCode, Shard, ShardStatus};

use crate::{Client, Error, StartingPosition};

/// How often a whole-stream follow lists the shards again to pick up new (child) shards
/// that no read has pointed it to (a reshard noticed at the end of a parent is picked up at
/// once).
pub(crate) const FOLLOW_SHARD_REFRESH: Duration = Duration::from_secs(5);

/// Where a listed shard stands in a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not taken up yet: a parent is still to be drained.
    Waiting,
    /// Handed out by [`Lineage::take_ready`]; being read.
    Taken,
    /// Read to its end.
    Drained,
    /// Expired by retention: reading it found it no longer listed.
    Gone,
}

#[derive(Debug)]
struct Entry {
    shard: Shard,
    state: State,
    /// Listed when the read began (as opposed to found by a later listing).
    initial: bool,
}

/// A shard handed out by [`Lineage::take_ready`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ReadyShard {
    /// The shard as last listed.
    pub shard: Shard,
    /// Whether the shard was in the listing the read began with. A shard that appeared later
    /// was created after the read began, so all of it is new.
    pub initial: bool,
}

impl ReadyShard {
    /// Where a follow that began at `from` starts reading this shard. A shard found after the
    /// follow began was created after that, so everything in it is new and it is read from
    /// its start — except before a timestamp, which still applies.
    pub fn start(&self, from: &StartingPosition) -> StartingPosition {
        match from {
            _ if self.initial => from.clone(),
            StartingPosition::AtTimestamp(_) => from.clone(),
            _ => StartingPosition::TrimHorizon,
        }
    }
}

/// Every shard a whole-stream read has seen, its parents, and how far it got.
#[derive(Debug, Default)]
pub(crate) struct Lineage {
    /// In the order first listed (ListShards order), which keeps the output deterministic.
    entries: Vec<Entry>,
    by_id: HashMap<String, usize>,
}

impl Lineage {
    /// Starts from the listing the read begins with.
    pub fn new(listing: Vec<Shard>) -> Lineage {
        let mut lineage = Lineage::default();
        for shard in listing {
            lineage.insert(shard, true);
        }
        lineage
    }

    fn insert(&mut self, shard: Shard, initial: bool) {
        if self.by_id.contains_key(&shard.shard_id) {
            return;
        }
        self.by_id
            .insert(shard.shard_id.clone(), self.entries.len());
        self.entries.push(Entry {
            shard,
            state: State::Waiting,
            initial,
        });
    }

    /// Takes in a later listing: shards not seen before start waiting (and waiting ones get
    /// their newer description). Returns how many shards are new.
    ///
    /// A shard missing from the listing is not taken for gone here: a node that lags behind
    /// the metadata leader may list a stream without its newest shards. Only
    /// [`Lineage::retire_if_unlisted`] retires a shard, when reading it failed.
    pub fn update(&mut self, listing: Vec<Shard>) -> usize {
        let before = self.entries.len();
        for shard in listing {
            match self.by_id.get(&shard.shard_id) {
                Some(&index) if self.entries[index].state == State::Waiting => {
                    self.entries[index].shard = shard;
                }
                Some(_) => {}
                None => self.insert(shard, false),
            }
        }
        self.entries.len() - before
    }

    /// Takes in the children a closed shard named at its end (a listing may not show them
    /// yet). Returns how many are new.
    pub fn add_children(&mut self, children: &[ChildShard]) -> usize {
        let before = self.entries.len();
        for child in children {
            let mut shard = Shard {
                shard_id: child.shard_id.clone(),
                starting_hash_key: child.starting_hash_key.clone(),
                ending_hash_key: child.ending_hash_key.clone(),
                parent_shard_id: child.parent_shards.first().cloned(),
                adjacent_parent_shard_id: child.parent_shards.get(1).cloned(),
                ..Shard::default()
            };
            shard.set_status(ShardStatus::Open);
            self.insert(shard, false);
        }
        self.entries.len() - before
    }

    /// Retires `shard_id` as gone (expired by retention) when `listing` — taken after reading
    /// the shard failed with ResourceNotFound — no longer has it. Returns whether it is gone.
    pub fn retire_if_unlisted(&mut self, shard_id: &str, listing: &[Shard]) -> bool {
        let Some(&index) = self.by_id.get(shard_id) else {
            return false;
        };
        if listing.iter().any(|shard| shard.shard_id == shard_id) {
            return false;
        }
        self.entries[index].state = State::Gone;
        true
    }

    /// The waiting shards whose parents are all drained or gone (or were never listed), in
    /// listing order; they count as taken from now on.
    pub fn take_ready(&mut self) -> Vec<ReadyShard> {
        let ready: Vec<usize> = (0..self.entries.len())
            .filter(|&index| {
                let entry = &self.entries[index];
                entry.state == State::Waiting && parents(&entry.shard).all(|p| self.released(p))
            })
            .collect();
        ready
            .into_iter()
            .map(|index| {
                let entry = &mut self.entries[index];
                entry.state = State::Taken;
                ReadyShard {
                    shard: entry.shard.clone(),
                    initial: entry.initial,
                }
            })
            .collect()
    }

    /// Whether a parent no longer holds its children back.
    fn released(&self, parent: &str) -> bool {
        match self.by_id.get(parent) {
            Some(&index) => matches!(self.entries[index].state, State::Drained | State::Gone),
            // Expired before the read began.
            None => true,
        }
    }

    /// The shard was read to its end.
    pub fn drained(&mut self, shard_id: &str) {
        if let Some(&index) = self.by_id.get(shard_id) {
            self.entries[index].state = State::Drained;
        }
    }

    /// Whether every shard is drained or gone: nothing is left to read unless a later
    /// listing brings new shards.
    pub fn is_done(&self) -> bool {
        self.entries
            .iter()
            .all(|entry| matches!(entry.state, State::Drained | State::Gone))
    }

    /// Whether a shard handed out by [`Lineage::take_ready`] is still being read.
    pub fn is_reading(&self) -> bool {
        self.entries.iter().any(|entry| entry.state == State::Taken)
    }

    /// The shards still waiting; when none is being read and none is ready, their parents
    /// can never drain (the listing's lineage has a cycle).
    pub fn waiting(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|entry| entry.state == State::Waiting)
            .map(|entry| entry.shard.shard_id.as_str())
            .collect()
    }
}

/// A whole-stream read's walk through the lineage, with the listings it takes: the one it
/// starts from, the one that tells a shard expired by retention from a failed read, and a
/// follow's later ones, which bring shards created after the read began.
#[derive(Debug)]
pub(crate) struct StreamWalk {
    client: Client,
    stream: String,
    lineage: Lineage,
    listed_at: Instant,
}

impl StreamWalk {
    /// Starts from the stream's current listing.
    pub async fn list(client: &Client, stream: &str) -> Result<StreamWalk, Error> {
        let listing = client.list_shards(stream).await?;
        Ok(StreamWalk::new(client, stream, listing))
    }

    /// Starts from `listing`, taken just now.
    pub fn new(client: &Client, stream: &str, listing: Vec<Shard>) -> StreamWalk {
        StreamWalk {
            client: client.clone(),
            stream: stream.to_owned(),
            lineage: Lineage::new(listing),
            listed_at: Instant::now(),
        }
    }

    /// The shards to take up now: their parents are drained or gone. Each counts as being
    /// read until [`StreamWalk::drained`] or [`StreamWalk::failed`].
    ///
    /// Fails when no shard is ready or being read but some wait: the listing's parent links
    /// form a cycle, so those could never be read.
    pub fn take_ready(&mut self) -> Result<Vec<ReadyShard>, Error> {
        let ready = self.lineage.take_ready();
        if ready.is_empty() && !self.lineage.is_reading() {
            if let waiting @ [_, ..] = self.lineage.waiting().as_slice() {
                return Err(Error::UnexpectedResponse(format!(
                    "the shards of stream '{}' name each other as parents, so none of {} can \
                     be read after its parents",
                    self.stream,
                    waiting.join(", ")
                )));
            }
        }
        Ok(ready)
    }

    /// `shard_id` was read to its end, where it named `children` (none for a shard read
    /// until the tip). Returns whether a child is new to the walk: a follow then lists the
    /// shards again at once, since a lagging node's end-of-shard may not name every child.
    pub fn drained(&mut self, shard_id: &str, children: &[ChildShard]) -> bool {
        self.lineage.drained(shard_id);
        // Children are taken up at once, even before a listing shows them.
        self.lineage.add_children(children) > 0
    }

    /// Reading `shard_id` failed with `error`. When the shard expired by retention meanwhile
    /// (the error is ResourceNotFound and a fresh listing no longer has the shard) the walk
    /// goes on without it; otherwise `error` — or that of the listing, when the stream itself
    /// is gone — is returned.
    pub async fn failed(&mut self, shard_id: &str, error: Error) -> Result<(), Error> {
        if error.code() != Some(ErrorCode::ResourceNotFound) {
            return Err(error);
        }
        let listing = self.client.list_shards(&self.stream).await?;
        self.listed_at = Instant::now();
        let gone = self.lineage.retire_if_unlisted(shard_id, &listing);
        self.lineage.update(listing);
        if !gone {
            return Err(error);
        }
        tracing::debug!(stream = %self.stream, shard = %shard_id, "shard expired while being read");
        Ok(())
    }

    /// For a follow: lists the shards again when `relist` asks for it, when every shard is
    /// drained, or [`FOLLOW_SHARD_REFRESH`] after the last listing. Breaks once nothing can
    /// bring new records: every shard is closed and drained, and no new shard appeared. A
    /// retryable listing failure is logged and left to the next refresh.
    pub async fn refresh(&mut self, relist: bool) -> Result<ControlFlow<()>, Error> {
        if !relist && !self.lineage.is_done() && Instant::now() < self.next_refresh() {
            return Ok(ControlFlow::Continue(()));
        }
        self.listed_at = Instant::now();
        match self.client.list_shards(&self.stream).await {
            Ok(listing) => {
                let new = self.lineage.update(listing);
                if new == 0 && self.lineage.is_done() {
                    return Ok(ControlFlow::Break(()));
                }
            }
            Err(error) if error.is_retryable() => {
                tracing::warn!(stream = %self.stream, %error, "listing shards to follow failed; will retry");
            }
            Err(error) => return Err(error),
        }
        Ok(ControlFlow::Continue(()))
    }

    /// When [`StreamWalk::refresh`] lists the shards again at the latest.
    pub fn next_refresh(&self) -> Instant {
        self.listed_at + FOLLOW_SHARD_REFRESH
    }
}

fn parents(shard: &Shard) -> impl Iterator<Item = &str> {
    [&shard.parent_shard_id, &shard.adjacent_parent_shard_id]
        .into_iter()
        .flatten()
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str]) -> Shard {
        Shard {
            shard_id: id.into(),
            parent_shard_id: parents.first().map(|p| (*p).to_owned()),
            adjacent_parent_shard_id: parents.get(1).map(|p| (*p).to_owned()),
            ..Default::default()
        }
    }

    fn ids(ready: &[ReadyShard]) -> Vec<&str> {
        ready.iter().map(|r| r.shard.shard_id.as_str()).collect()
    }

    /// 0 and 1 at the start; 0 split into 2 and 3; 3 and 1 merged into 4.
    fn split_then_merge() -> Vec<Shard> {
        vec![
            shard("0", &[]),
            shard("1", &[]),
            shard("2", &["0"]),
            shard("3", &["0"]),
            shard("4", &["3", "1"]),
        ]
    }

    #[test]
    fn children_wait_until_every_parent_is_drained() {
        let mut lineage = Lineage::new(split_then_merge());
        assert_eq!(ids(&lineage.take_ready()), ["0", "1"]);
        assert!(
            lineage.take_ready().is_empty(),
            "nothing is handed out twice"
        );
        lineage.drained("1");
        assert!(lineage.take_ready().is_empty(), "4 still waits for 3");
        lineage.drained("0");
        assert_eq!(ids(&lineage.take_ready()), ["2", "3"]);
        lineage.drained("3");
        assert_eq!(ids(&lineage.take_ready()), ["4"]);
        assert!(!lineage.is_done());
        lineage.drained("2");
        lineage.drained("4");
        assert!(lineage.is_done());
    }

    #[test]
    fn parents_that_were_never_listed_have_expired() {
        // 0, 1 and 3 expired by retention; their children remain.
        let mut lineage = Lineage::new(vec![shard("2", &["0"]), shard("4", &["3", "1"])]);
        assert_eq!(ids(&lineage.take_ready()), ["2", "4"]);
        // 3 is still there: 4 waits for it, not for the expired 1.
        let mut lineage = Lineage::new(vec![shard("3", &["0"]), shard("4", &["3", "1"])]);
        assert_eq!(ids(&lineage.take_ready()), ["3"]);
    }

    #[test]
    fn later_listings_and_parents_ends_add_children() {
        let mut lineage = Lineage::new(vec![shard("0", &[]), shard("1", &[])]);
        assert_eq!(ids(&lineage.take_ready()), ["0", "1"]);
        // 0 was split meanwhile; a listing that lags shows only one child.
        let new = lineage.update(vec![shard("0", &[]), shard("1", &[]), shard("2", &["0"])]);
        assert_eq!(new, 1);
        assert!(lineage.take_ready().is_empty(), "0 is not drained yet");
        lineage.drained("0");
        // The end of 0 names both children.
        let children = [("2", "0", "9"), ("3", "10", "19")].map(|(id, start, end)| ChildShard {
            shard_id: id.into(),
            parent_shards: vec!["0".into()],
            starting_hash_key: start.into(),
            ending_hash_key: end.into(),
        });
        assert_eq!(lineage.add_children(&children), 1);
        let ready = lineage.take_ready();
        assert_eq!(ids(&ready), ["2", "3"]);
        assert!(
            ready.iter().all(|r| !r.initial),
            "found after the read began"
        );
        assert_eq!(ready[1].shard.parent_shard_id.as_deref(), Some("0"));
        lineage.drained("2");
        lineage.drained("3");
        assert!(!lineage.is_done(), "1 is still being read");
        lineage.drained("1");
        assert!(lineage.is_done());
    }

    #[test]
    fn only_a_shard_that_failed_and_is_unlisted_is_gone() {
        // 1 and 0 were merged into 2; 1 expired after the read began.
        let mut lineage = Lineage::new(vec![
            shard("0", &[]),
            shard("1", &[]),
            shard("2", &["0", "1"]),
        ]);
        assert_eq!(ids(&lineage.take_ready()), ["0", "1"]);
        lineage.drained("0");
        let listing = [shard("0", &[]), shard("2", &["0", "1"])];
        lineage.update(listing.to_vec());
        assert!(
            lineage.take_ready().is_empty(),
            "missing from a listing is not gone"
        );
        assert!(!lineage.retire_if_unlisted("0", &listing));
        assert!(lineage.retire_if_unlisted("1", &listing));
        assert_eq!(ids(&lineage.take_ready()), ["2"]);
    }

    #[test]
    fn a_cycle_leaves_shards_waiting_with_none_ready() {
        let mut lineage = Lineage::new(vec![shard("a", &["b"]), shard("b", &["a"])]);
        assert!(lineage.take_ready().is_empty());
        assert_eq!(lineage.waiting(), ["a", "b"]);
        assert!(!lineage.is_done());
        assert!(!lineage.is_reading());
    }

    #[test]
    fn shards_are_being_read_from_taken_until_drained() {
        let mut lineage = Lineage::new(vec![shard("0", &[]), shard("1", &["0"])]);
        assert!(!lineage.is_reading());
        assert_eq!(ids(&lineage.take_ready()), ["0"]);
        assert!(lineage.is_reading());
        lineage.drained("0");
        assert!(!lineage.is_reading(), "1 waits to be taken, not read");
    }

    #[test]
    fn shards_found_later_are_read_from_their_start() {
        let at = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(5);
        let cases = [
            (true, StartingPosition::Latest, StartingPosition::Latest),
            (
                false,
                StartingPosition::Latest,
                StartingPosition::TrimHorizon,
            ),
            (
                true,
                StartingPosition::AfterSequence("7".into()),
                StartingPosition::AfterSequence("7".into()),
            ),
            (
                false,
                StartingPosition::AtSequence("7".into()),
                StartingPosition::TrimHorizon,
            ),
            (
                false,
                StartingPosition::AtTimestamp(at),
                StartingPosition::AtTimestamp(at),
            ),
        ];
        for (initial, from, expected) in cases {
            let ready = ReadyShard {
                shard: shard("0", &[]),
                initial,
            };
            assert_eq!(ready.start(&from), expected, "{initial} {from}");
        }
    }
}
