//! Idempotent produce: each shard remembers, per producer, the newest requests it appended
//! (the last `REQUESTS_PER_PRODUCER`, as Kafka keeps five batches), so a retried request
//! (same producer id and request number) is answered with the original sequence numbers
//! instead of being appended twice. Requests may reach a shard out of number order (after a
//! merge, two of the producer's queues can land in one shard); a number inside the window
//! that was never appended is appended, one below the window is refused.
//!
//! The table is part of the shard's replicated state: every replica updates it when it
//! applies an append, so it survives leader changes and restarts. The leader decides before
//! proposing, from the applied table plus the requests it has in flight; it first waits
//! until it has applied an entry of its own term, so every entry an earlier leader may have
//! committed is in the table.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::error::ApiError;
use crate::raft::{ProducerLast, ProducerStamp};

/// Producers remembered per shard; the least recently appended one is forgotten beyond it
/// (its retries would then be appended again: at-least-once, as without idempotence).
pub const MAX_PRODUCERS_PER_SHARD: usize = 4096;

/// Requests remembered per producer and shard.
pub const REQUESTS_PER_PRODUCER: usize = 5;

/// Per producer id, its newest appended requests in ascending number order.
pub type ProducerTable = BTreeMap<u64, Vec<ProducerLast>>;

/// Records an applied request; keeps the table bounded.
pub fn record(table: &mut ProducerTable, stamp: ProducerStamp, index: u64, count: u32) {
    let recent = table.entry(stamp.id).or_default();
    if let Err(at) = recent.binary_search_by_key(&stamp.sequence, |r| r.sequence) {
        recent.insert(
            at,
            ProducerLast {
                sequence: stamp.sequence,
                index,
                count,
            },
        );
        if recent.len() > REQUESTS_PER_PRODUCER {
            recent.remove(0);
        }
    }
    if table.len() > MAX_PRODUCERS_PER_SHARD {
        let newest = |recent: &Vec<ProducerLast>| recent.iter().map(|r| r.index).max();
        if let Some(oldest) = table
            .iter()
            .min_by_key(|(_, recent)| newest(recent))
            .map(|(id, _)| *id)
        {
            table.remove(&oldest);
        }
    }
}

/// What the leader does with a stamped request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// New: append it.
    Append,
    /// Already appended at this log index: answer with it.
    Duplicate(u64),
}

/// Decides from the producer's newest applied requests.
pub fn decide(
    recent: Option<&Vec<ProducerLast>>,
    stamp: ProducerStamp,
    count: usize,
    shard: &str,
) -> Result<Decision, ApiError> {
    let Some(recent) = recent.filter(|r| !r.is_empty()) else {
        return Ok(Decision::Append);
    };
    if let Some(same) = recent.iter().find(|r| r.sequence == stamp.sequence) {
        if same.count as usize != count {
            return Err(ApiError::invalid(format!(
                "producer {} request {} was appended to {shard} with {} records; the retry has {count} (a retry must carry the same records)",
                stamp.id, stamp.sequence, same.count
            )));
        }
        return Ok(Decision::Duplicate(same.index));
    }
    let oldest = recent[0].sequence;
    if recent.len() == REQUESTS_PER_PRODUCER && stamp.sequence < oldest {
        return Err(ApiError::invalid(format!(
            "producer {} request {} is older than the {REQUESTS_PER_PRODUCER} newest requests {shard} remembers (from {oldest}); it cannot tell whether it was appended",
            stamp.id, stamp.sequence
        )));
    }
    Ok(Decision::Append)
}

/// The applied table as the leader reads it (the state machine keeps it current).
pub type ProducerView = Arc<Mutex<ProducerTable>>;

/// Outcome of an in-flight request: the log index, or the error.
type Outcome = Option<Result<u64, ApiError>>;

/// Requests the leader has proposed and not yet answered, per producer id.
#[derive(Default)]
pub struct InFlight {
    requests: Mutex<HashMap<u64, (u64, watch::Receiver<Outcome>)>>,
}

/// What a caller holds while its request is in flight.
pub enum Claim {
    /// This caller proposes; it reports the outcome through the guard.
    Mine(InFlightGuard),
    /// The same request is already in flight: wait for its outcome.
    Wait(watch::Receiver<Outcome>),
}

impl InFlight {
    /// Claims `stamp`: the first caller proposes, a retry arriving meanwhile waits for it.
    pub fn claim(self: &Arc<Self>, stamp: ProducerStamp) -> Claim {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((sequence, outcome)) = requests.get(&stamp.id) {
            if *sequence == stamp.sequence {
                return Claim::Wait(outcome.clone());
            }
        }
        let (tx, rx) = watch::channel(None);
        requests.insert(stamp.id, (stamp.sequence, rx));
        Claim::Mine(InFlightGuard {
            owner: self.clone(),
            stamp,
            outcome: tx,
        })
    }
}

/// Removes the in-flight entry when the proposer is done (or dropped).
pub struct InFlightGuard {
    owner: Arc<InFlight>,
    stamp: ProducerStamp,
    outcome: watch::Sender<Outcome>,
}

impl InFlightGuard {
    /// Publishes the outcome to waiting retries.
    pub fn finish(self, outcome: &Result<u64, ApiError>) {
        self.outcome.send_replace(Some(outcome.clone()));
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut requests = self
            .owner
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if requests
            .get(&self.stamp.id)
            .is_some_and(|(sequence, _)| *sequence == self.stamp.sequence)
        {
            requests.remove(&self.stamp.id);
        }
    }
}

/// Waits for an in-flight request's outcome; a proposer that went away without one leaves
/// the outcome unknown (retryable).
pub async fn wait(mut outcome: watch::Receiver<Outcome>) -> Result<u64, ApiError> {
    loop {
        if let Some(result) = outcome.borrow_and_update().clone() {
            return result;
        }
        if outcome.changed().await.is_err() {
            return outcome.borrow().clone().unwrap_or_else(|| {
                Err(ApiError::unavailable(
                    "the original request's outcome is unknown; retry with the same request number",
                ))
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(id: u64, sequence: u64) -> ProducerStamp {
        ProducerStamp { id, sequence }
    }

    #[test]
    fn a_retry_is_answered_from_the_table_and_old_numbers_are_refused() {
        let mut table = ProducerTable::new();
        assert!(matches!(
            decide(table.get(&7), stamp(7, 1), 3, "s"),
            Ok(Decision::Append)
        ));
        record(&mut table, stamp(7, 1), 40, 3);
        assert!(matches!(
            decide(table.get(&7), stamp(7, 1), 3, "s"),
            Ok(Decision::Duplicate(40))
        ));
        assert!(
            decide(table.get(&7), stamp(7, 1), 2, "s").is_err(),
            "different records"
        );
        // Gaps are normal: the producer's other requests went to other shards.
        assert!(matches!(
            decide(table.get(&7), stamp(7, 9), 1, "s"),
            Ok(Decision::Append)
        ));
        record(&mut table, stamp(7, 9), 41, 1);
        // Out of order inside the window: a number never appended is appended.
        assert!(matches!(
            decide(table.get(&7), stamp(7, 5), 1, "s"),
            Ok(Decision::Append)
        ));
        for (sequence, index) in [(10, 42), (11, 43), (12, 44)] {
            record(&mut table, stamp(7, sequence), index, 1);
        }
        // The window keeps the five newest: 1, 9, 10, 11 and 12.
        assert_eq!(table[&7].len(), REQUESTS_PER_PRODUCER);
        assert!(matches!(
            decide(table.get(&7), stamp(7, 9), 1, "s"),
            Ok(Decision::Duplicate(41))
        ));
        record(&mut table, stamp(7, 13), 45, 1);
        let old = decide(table.get(&7), stamp(7, 2), 1, "s").expect_err("older");
        assert!(
            old.message.contains("older than the 5 newest"),
            "{}",
            old.message
        );
        // Replaying the log applies the same entries again: nothing changes.
        let before = table.clone();
        record(&mut table, stamp(7, 13), 45, 1);
        assert_eq!(table, before);
    }

    #[test]
    fn the_table_is_bounded_by_forgetting_the_oldest_producer() {
        let mut table = ProducerTable::new();
        for id in 0..=MAX_PRODUCERS_PER_SHARD as u64 {
            record(&mut table, stamp(id + 1, 1), id + 100, 1);
        }
        assert_eq!(table.len(), MAX_PRODUCERS_PER_SHARD);
        assert!(
            !table.contains_key(&1),
            "the producer appended first is forgotten"
        );
    }

    #[tokio::test]
    async fn a_retry_during_the_original_waits_for_its_outcome() {
        let inflight = Arc::new(InFlight::default());
        let Claim::Mine(guard) = inflight.claim(stamp(1, 5)) else {
            panic!("first claim proposes");
        };
        let Claim::Wait(outcome) = inflight.claim(stamp(1, 5)) else {
            panic!("the retry waits");
        };
        let waiter = tokio::spawn(wait(outcome));
        guard.finish(&Ok(77));
        assert_eq!(waiter.await.expect("task").expect("outcome"), 77);
        // Done: a later retry proposes (and will find the request in the applied table).
        assert!(matches!(inflight.claim(stamp(1, 5)), Claim::Mine(_)));
    }
}
