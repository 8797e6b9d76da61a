//! Counters and microsecond HdrHistograms shared by producer and consumer tasks, and the
//! record payload format that carries the send time to the consumer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use rand::RngCore;
use serde::Serialize;

/// Highest value a histogram holds: one hour in microseconds (higher values saturate).
const HIST_MAX_US: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, HIST_MAX_US, 3) {
        Ok(histogram) => histogram,
        // Constant, valid bounds: 1 <= low, high >= 2 * low, 3 significant digits.
        Err(error) => unreachable!("histogram bounds are constants: {error}"),
    }
}

/// Percentiles of one latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Percentiles {
    /// Samples (records).
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        if histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
            mean_ms: histogram.mean() / 1000.0,
        }
    }
}

/// Everything one run measures, shared between its tasks.
pub struct Stats {
    /// Time zero of the run; payload timestamps are microseconds since it.
    pub start: Instant,
    /// The measured window, in microseconds since `start` (empty until set).
    window_start_us: AtomicU64,
    window_end_us: AtomicU64,
    /// Records and payload bytes acknowledged whose batch was sent inside the window.
    pub acked_records: AtomicU64,
    pub acked_bytes: AtomicU64,
    /// Records acknowledged in any phase (backlog budget, sanity checks).
    pub acked_total: AtomicU64,
    /// Entries refused or lost (each retry attempt of a refused entry counts once).
    pub errors: AtomicU64,
    /// Records handed to consumers (any phase) and those sent inside the window.
    pub consumed_records: AtomicU64,
    pub consumed_in_window: AtomicU64,
    produce: Mutex<Histogram<u64>>,
    delay: Mutex<Histogram<u64>>,
    e2e: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
}

impl Stats {
    /// Stats for a run whose measured window is `[start + warmup, start + warmup + duration)`.
    pub fn new(start: Instant, warmup: Duration, duration: Duration) -> Stats {
        let window_start_us = warmup.as_micros() as u64;
        Stats {
            start,
            window_start_us: AtomicU64::new(window_start_us),
            window_end_us: AtomicU64::new(window_start_us + duration.as_micros() as u64),
            acked_records: AtomicU64::new(0),
            acked_bytes: AtomicU64::new(0),
            acked_total: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            consumed_records: AtomicU64::new(0),
            consumed_in_window: AtomicU64::new(0),
            produce: Mutex::new(new_histogram()),
            delay: Mutex::new(new_histogram()),
            e2e: Mutex::new(new_histogram()),
            first_error: Mutex::new(None),
        }
    }

    /// Microseconds since the run started.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Whether a batch sent at `sent_us` belongs to the measured window.
    pub fn in_window(&self, sent_us: u64) -> bool {
        let start = self.window_start_us.load(Ordering::Relaxed);
        let end = self.window_end_us.load(Ordering::Relaxed);
        (start..end).contains(&sent_us)
    }

    /// Moves the measured window to `[start + from, start + from + duration)`.
    pub fn set_window(&self, from: Duration, duration: Duration) {
        let from = from.as_micros() as u64;
        self.window_start_us.store(from, Ordering::Relaxed);
        self.window_end_us
            .store(from + duration.as_micros() as u64, Ordering::Relaxed);
    }

    /// `records` records of `bytes` payload bytes sent at `sent_us` were acknowledged now.
    pub fn acked(&self, sent_us: u64, records: u64, bytes: u64) {
        if records == 0 {
            return;
        }
        self.acked_total.fetch_add(records, Ordering::Relaxed);
        if !self.in_window(sent_us) {
            return;
        }
        let latency = self.now_us().saturating_sub(sent_us).clamp(1, HIST_MAX_US);
        self.acked_records.fetch_add(records, Ordering::Relaxed);
        self.acked_bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Ok(mut histogram) = self.produce.lock() {
            let _ = histogram.record_n(latency, records);
        }
    }

    /// A batch of `records` sent at `sent_us` went out `delay_us` after its scheduled time.
    pub fn publish_delay(&self, sent_us: u64, delay_us: u64, records: u64) {
        if !self.in_window(sent_us) {
            return;
        }
        if let Ok(mut histogram) = self.delay.lock() {
            let _ = histogram.record_n(delay_us.clamp(1, HIST_MAX_US), records);
        }
    }

    /// `records` entries failed; keeps the first message for the report.
    pub fn failed(&self, records: u64, message: impl FnOnce() -> String) {
        self.errors.fetch_add(records, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            if first.is_none() {
                let message = message();
                eprintln!("warning: first produce error: {message}");
                *first = Some(message);
            }
        }
    }

    /// A consumer received a record with this payload.
    pub fn consumed(&self, payload: &[u8]) {
        self.consumed_records.fetch_add(1, Ordering::Relaxed);
        let Some(sent_us) = sent_at(payload) else {
            return;
        };
        if !self.in_window(sent_us) {
            return;
        }
        self.consumed_in_window.fetch_add(1, Ordering::Relaxed);
        let latency = self.now_us().saturating_sub(sent_us).clamp(1, HIST_MAX_US);
        if let Ok(mut histogram) = self.e2e.lock() {
            let _ = histogram.record(latency);
        }
    }

    pub fn produce_latency(&self) -> Percentiles {
        self.produce
            .lock()
            .map(|h| Percentiles::of(&h))
            .unwrap_or_default()
    }

    pub fn delay_percentiles(&self) -> Percentiles {
        self.delay
            .lock()
            .map(|h| Percentiles::of(&h))
            .unwrap_or_default()
    }

    pub fn e2e_latency(&self) -> Percentiles {
        self.e2e
            .lock()
            .map(|h| Percentiles::of(&h))
            .unwrap_or_default()
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }
}

/// The send time a payload carries (microseconds since the run started).
fn sent_at(payload: &[u8]) -> Option<u64> {
    let head: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

/// Makes record payloads: `[send µs][producer id, counter][random half][zeros]`. The random
/// half comes from a per-producer pool at a moving offset, so payloads differ and do not
/// compress below half.
pub struct PayloadMaker {
    size: usize,
    pool: Vec<u8>,
    offset: usize,
    id: u64,
}

const POOL_BYTES: usize = 1 << 20;

impl PayloadMaker {
    pub fn new(size: usize, producer: u32) -> PayloadMaker {
        let mut pool = vec![0u8; POOL_BYTES + size];
        rand::rng().fill_bytes(&mut pool);
        PayloadMaker {
            size,
            pool,
            offset: 0,
            id: u64::from(producer) << 48,
        }
    }

    pub fn make(&mut self, sent_us: u64) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.size);
        buf.put_u64_le(sent_us);
        buf.put_u64_le(self.id);
        self.id += 1;
        let random = (self.size / 2).min(self.size - 16);
        buf.put_slice(&self.pool[self.offset..self.offset + random]);
        self.offset = (self.offset + 997) % POOL_BYTES;
        buf.put_bytes(0, self.size - 16 - random);
        buf.freeze()
    }
}
