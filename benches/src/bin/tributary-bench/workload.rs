//! What one run does: the OMB-style workload, from flags or a TOML file (same fields).

use serde::{Deserialize, Serialize};

/// How records are read while they are produced (end-to-end latency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ConsumerMode {
    /// No readers: produce only.
    None,
    /// GetRecords in a loop, sleeping `poll_interval_ms` after an empty answer (Kinesis style).
    Polling,
    /// GetRecords long polls (the server answers as soon as records commit).
    LongPoll,
    /// Enhanced fan-out: SubscribeToShard, the server pushes records as they commit.
    Efo,
}

/// One benchmark workload. Every field has a default, so a TOML file names only what it
/// changes (`deny_unknown_fields` catches typos).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Streams to create (Tributary streams; JetStream: one stream per shard of each).
    #[arg(long, default_value_t = 1)]
    pub streams: u32,
    /// Shards per stream. On JetStream each shard is its own R3 stream (its own raft
    /// group, like a Tributary shard).
    #[arg(long, default_value_t = 6)]
    pub shards: u32,
    /// Record payload bytes (at least 16: an 8-byte send timestamp and an 8-byte id lead
    /// it; half of it is random so compression cannot cheat).
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Producer tasks. Each has its own connection to every node.
    #[arg(long, default_value_t = 4)]
    pub producers: u32,
    /// Records per batch (one PutRecords call on Tributary; that many pipelined publishes
    /// on JetStream). A batch goes to one shard.
    #[arg(long, default_value_t = 64)]
    pub batch_records: usize,
    /// At a fixed rate: how long a batch may wait for more records after its first one is
    /// due, in milliseconds (0 = send what is due at once).
    #[arg(long, default_value_t = 0.0)]
    pub linger_ms: f64,
    /// Batches each producer may have in flight at once (across shards).
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Target rate in records per second over all producers (open loop: the schedule does
    /// not wait for acknowledgements; lag shows as publish delay). 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Readers during the measured phase (one per shard), for end-to-end latency.
    #[arg(long, value_enum, default_value_t = ConsumerMode::None)]
    pub consumers: ConsumerMode,
    /// With `--consumers polling`: the sleep after an empty GetRecords.
    #[arg(long, default_value_t = 200)]
    pub poll_interval_ms: u64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 5)]
    pub warmup_secs: u64,
    /// Seconds measured (0 skips the produce phase, e.g. for a catch-up-only run).
    #[arg(long, default_value_t = 30)]
    pub duration_secs: u64,
    /// After the produce phase: write this many MB (10^6 bytes) into a fresh stream as fast
    /// as possible, then read it all back from one node and report the catch-up read rate.
    /// 0 skips the phase.
    #[arg(long, default_value_t = 0)]
    pub backlog_mb: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            streams: 1,
            shards: 6,
            record_size: 1024,
            producers: 4,
            batch_records: 64,
            linger_ms: 0.0,
            in_flight: 4,
            rate: 0,
            consumers: ConsumerMode::None,
            poll_interval_ms: 200,
            warmup_secs: 5,
            duration_secs: 30,
            backlog_mb: 0,
        }
    }
}

impl Workload {
    /// Refuses values that cannot run, saying what is allowed.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.streams >= 1, "streams is 0; at least 1 is needed");
        anyhow::ensure!(self.shards >= 1, "shards is 0; at least 1 is needed");
        anyhow::ensure!(
            self.record_size >= 16,
            "record size is {}; at least 16 bytes carry the timestamp and id",
            self.record_size
        );
        anyhow::ensure!(self.producers >= 1, "producers is 0; at least 1 is needed");
        anyhow::ensure!(
            (1..=500).contains(&self.batch_records),
            "batch records is {}; PutRecords takes 1 to 500",
            self.batch_records
        );
        anyhow::ensure!(
            self.batch_records * (self.record_size + 8) <= 5 * 1024 * 1024,
            "a batch of {} records of {} bytes exceeds PutRecords' 5 MiB",
            self.batch_records,
            self.record_size
        );
        anyhow::ensure!(self.in_flight >= 1, "in flight is 0; at least 1 is needed");
        anyhow::ensure!(
            self.linger_ms >= 0.0 && self.linger_ms.is_finite(),
            "linger is {} ms; it must be 0 or more",
            self.linger_ms
        );
        Ok(())
    }

    /// Reads a workload file (TOML, the same field names as the flags with underscores).
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Workload> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read workload file {}: {e}", path.display()))?;
        let workload: Workload = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("workload file {}: {e}", path.display()))?;
        Ok(workload)
    }
}
