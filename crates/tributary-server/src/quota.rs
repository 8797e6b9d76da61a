//! Optional per-shard throughput quotas (off by default; `shard_quotas = true`), with the
//! Kinesis defaults: 1 MiB/s or 1,000 records/s in, 2 MiB/s and 5 GetRecords calls/s out.
//!
//! Each limit is a token bucket holding one second of its rate (the burst). A request is
//! admitted while its buckets are not in debt, and then takes what it used, possibly going
//! into debt: a 5 MiB PutRecords to a 1 MiB/s shard passes once and the shard then refuses
//! writes for about four seconds. So the long-run rate holds without refusing a single
//! request that is larger than one second's worth. A refused request changes nothing and is
//! answered `ProvisionedThroughputExceeded` (per entry in PutRecords); retry with backoff.
//!
//! Writes are metered on the shard's leader (every write passes there, whichever node took
//! it). Reads are metered on the node that serves them, so a shard read through all three
//! nodes gets up to three times the read quota.

use std::sync::Mutex;
use std::time::Instant;

use crate::error::ApiError;
use crate::metadata::shard_id;

/// The quota settings of a node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaLimits {
    /// Record bytes (data + partition keys) appended per second.
    pub write_bytes_per_sec: u64,
    /// Records appended per second.
    pub write_records_per_sec: u64,
    /// Record bytes returned by GetRecords per second.
    pub read_bytes_per_sec: u64,
    /// GetRecords calls per second.
    pub read_calls_per_sec: u64,
}

/// A token bucket that may go into debt (see the module docs).
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Self {
            rate: rate as f64,
            tokens: rate as f64,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.at = now;
    }

    fn in_debt(&self) -> bool {
        self.tokens < 0.0
    }

    fn take(&mut self, amount: u64) {
        self.tokens -= amount as f64;
    }
}

/// The buckets of one shard on one node.
#[derive(Debug)]
pub struct ShardQuota {
    limits: QuotaLimits,
    buckets: Mutex<[Bucket; 4]>,
}

const WRITE_BYTES: usize = 0;
const WRITE_RECORDS: usize = 1;
const READ_BYTES: usize = 2;
const READ_CALLS: usize = 3;

impl ShardQuota {
    /// Full buckets.
    pub fn new(limits: QuotaLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new([
                Bucket::new(limits.write_bytes_per_sec),
                Bucket::new(limits.write_records_per_sec),
                Bucket::new(limits.read_bytes_per_sec),
                Bucket::new(limits.read_calls_per_sec),
            ]),
        }
    }

    fn buckets(&self) -> std::sync::MutexGuard<'_, [Bucket; 4]> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for bucket in buckets.iter_mut() {
            bucket.refill(now);
        }
        buckets
    }

    /// Admits (and charges) an append of `records` records and `bytes` bytes to shard
    /// `shard_index`, or refuses it.
    pub fn admit_write(&self, shard_index: u32, records: u64, bytes: u64) -> Result<(), ApiError> {
        let mut buckets = self.buckets();
        if buckets[WRITE_BYTES].in_debt() || buckets[WRITE_RECORDS].in_debt() {
            crate::metrics::METRICS
                .throttled_writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(ApiError::throughput(format!(
                "shard {} is over its write quota of {} bytes/s or {} records/s; retry with backoff",
                shard_id(shard_index),
                self.limits.write_bytes_per_sec,
                self.limits.write_records_per_sec
            )));
        }
        buckets[WRITE_BYTES].take(bytes);
        buckets[WRITE_RECORDS].take(records);
        Ok(())
    }

    /// Admits (and charges) one GetRecords call, or refuses it.
    pub fn admit_read(&self, shard_index: u32) -> Result<(), ApiError> {
        let mut buckets = self.buckets();
        if buckets[READ_CALLS].tokens < 1.0 || buckets[READ_BYTES].in_debt() {
            crate::metrics::METRICS
                .throttled_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(ApiError::throughput(format!(
                "shard {} is over its read quota of {} GetRecords calls/s or {} bytes/s on this node; retry with backoff",
                shard_id(shard_index),
                self.limits.read_calls_per_sec,
                self.limits.read_bytes_per_sec
            )));
        }
        buckets[READ_CALLS].take(1);
        Ok(())
    }

    /// Charges the bytes a GetRecords call returned.
    pub fn charge_read(&self, bytes: u64) {
        self.buckets()[READ_BYTES].take(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> QuotaLimits {
        QuotaLimits {
            write_bytes_per_sec: 1000,
            write_records_per_sec: 10,
            read_bytes_per_sec: 2000,
            read_calls_per_sec: 2,
        }
    }

    #[test]
    fn writes_pass_until_a_bucket_is_in_debt() {
        let quota = ShardQuota::new(limits());
        for _ in 0..10 {
            quota.admit_write(3, 1, 10).expect("within 10 records/s");
        }
        // Exactly empty is not debt: one more goes through and puts the bucket in debt.
        quota
            .admit_write(3, 1, 10)
            .expect("the bucket is empty, not in debt");
        let err = quota.admit_write(3, 1, 10).expect_err("in debt");
        assert_eq!(
            err.code,
            tributary_proto::v1::ErrorCode::ProvisionedThroughputExceeded
        );
        assert!(
            err.message.contains("shardId-000000000003"),
            "{}",
            err.message
        );
        assert!(err.message.contains("10 records/s"), "{}", err.message);
    }

    #[test]
    fn one_large_write_passes_then_the_shard_waits() {
        let quota = ShardQuota::new(limits());
        quota
            .admit_write(0, 1, 5000)
            .expect("a big write passes once");
        assert!(quota.admit_write(0, 1, 1).is_err());
    }

    #[test]
    fn reads_are_limited_by_calls_and_bytes() {
        let quota = ShardQuota::new(limits());
        quota.admit_read(0).expect("first call");
        quota.charge_read(5000);
        let err = quota.admit_read(0).expect_err("bytes in debt");
        assert!(err.message.contains("2000 bytes/s"), "{}", err.message);
        let calls = ShardQuota::new(limits());
        calls.admit_read(0).expect("1");
        calls.admit_read(0).expect("2");
        assert!(calls.admit_read(0).is_err(), "3rd call within the second");
    }

    #[test]
    fn buckets_refill_at_their_rate() {
        let mut bucket = Bucket::new(10);
        bucket.take(15);
        assert!(bucket.in_debt());
        let later = bucket.at + std::time::Duration::from_millis(600);
        bucket.refill(later);
        assert!(!bucket.in_debt());
        bucket.refill(later + std::time::Duration::from_secs(10));
        assert!((bucket.tokens - 10.0).abs() < 1e-9, "capped at one second");
    }
}
