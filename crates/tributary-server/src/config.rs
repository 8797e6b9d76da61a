//! Node configuration: one plain struct that flags, `TRIBUTARY_*` environment variables
//! and a TOML file all map onto. Every field documents its trade-off.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Everything a node needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's id in the cluster; never reuse the id of a node whose data was lost.
    pub node_id: u64,
    /// The one address clients and peers use (gRPC over HTTP/2).
    pub listen: SocketAddr,
    /// Where segment files and the RocksDB metadata store live.
    pub data_dir: PathBuf,
    /// The availability zone this node stands for (reported in `trib cluster status`).
    pub az: String,
    /// Every node of the cluster, this one included, as `ID=HOST:PORT,...` (each node's
    /// `listen` address as its peers reach it; hostnames allowed). Empty: a single-node
    /// cluster.
    pub peers: String,
    /// How often a node checks whether shard leaderships should move to their preferred
    /// node (the even spread), in milliseconds.
    pub rebalance_interval_ms: u64,
    /// A shard group with no reads or writes for this long stops its raft timers
    /// (quiescence; node-level probes still detect a dead leader). 0 keeps every group
    /// awake, which costs heartbeats per group per follower.
    pub quiesce_after_ms: u64,
    /// Where to serve Prometheus metrics (`GET /metrics`); none when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Shard iterators expire after this many milliseconds (Kinesis: 5 minutes). Shorter
    /// values let tests exercise expiry quickly; longer ones let slow consumers keep tokens.
    pub iterator_ttl_ms: u64,
    /// Upper bound on shards over all streams on this cluster. Each shard is a raft group
    /// with its own files and timers, so this caps memory and open files.
    pub max_shards: u32,
    /// Upper bound on streams on this cluster.
    pub max_streams: u32,
    /// How often each node looks for expired records, closed shards past retention and
    /// idle segments to roll, in milliseconds. Expired records are hidden from readers at
    /// once regardless; this only paces when their disk space is freed.
    pub retention_check_interval_ms: u64,
    /// Enhanced fan-out consumers a stream may register.
    pub max_consumers_per_stream: u32,
    /// A SubscribeToShard call ends after this many milliseconds (Kinesis: 5 minutes); the
    /// client then subscribes again from its continuation.
    pub subscription_max_ms: u64,
    /// Per-shard throughput quotas (Kinesis-style; see `quota.rs`). Off by default: a
    /// self-hosted cluster is usually limited by its hardware, not by a per-shard contract.
    pub shard_quotas: bool,
    /// With `shard_quotas`: record bytes (data + keys) a shard takes per second.
    pub shard_write_bytes_per_sec: u64,
    /// With `shard_quotas`: records a shard takes per second.
    pub shard_write_records_per_sec: u64,
    /// With `shard_quotas`: record bytes GetRecords returns per shard per second (per node).
    pub shard_read_bytes_per_sec: u64,
    /// With `shard_quotas`: GetRecords calls per shard per second (per node).
    pub shard_read_calls_per_sec: u64,
    /// Raft heartbeat interval in milliseconds. Lower detects a dead leader sooner but
    /// costs one message per group per follower per interval.
    pub heartbeat_interval_ms: u64,
    /// Minimum raft election timeout in milliseconds (must exceed the heartbeat interval).
    pub election_timeout_min_ms: u64,
    /// Maximum raft election timeout in milliseconds.
    pub election_timeout_max_ms: u64,
    /// Roll a segment file at this size. Larger files mean fewer files and coarser retention.
    pub segment_max_bytes: u64,
    /// After each fsync, the newest this many bytes of every shard log stay in the OS page
    /// cache and older synced data is dropped from it. Readers within this distance of the
    /// tip read from memory, readers further behind from disk; a larger value holds more
    /// memory per busy shard. Set it above the node's data (for example 1 TiB) to leave
    /// caching to the kernel.
    pub page_cache_keep_bytes: u64,
    /// Roll an idle segment after this many seconds so retention can delete it.
    pub segment_max_age_secs: u64,
    /// How often every shard log is read through and its checksums verified, in
    /// milliseconds (0: only when a read meets a corrupt frame). Corrupt frames are
    /// repaired from a replica (see `repair.rs`).
    pub scrub_interval_ms: u64,
    /// Free bytes to keep on the data directory's filesystem: below it, shard leaders
    /// refuse writes with `StorageFull` and replicas stop taking appends (0: no floor).
    pub min_free_disk_bytes: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7101)),
            data_dir: PathBuf::from("./.tributary/data"),
            az: "az-a".to_string(),
            peers: String::new(),
            rebalance_interval_ms: 1000,
            quiesce_after_ms: 2000,
            metrics_listen: None,
            iterator_ttl_ms: 5 * 60 * 1000,
            max_shards: 1024,
            max_streams: 1024,
            retention_check_interval_ms: 10_000,
            max_consumers_per_stream: 20,
            subscription_max_ms: 5 * 60 * 1000,
            shard_quotas: false,
            shard_write_bytes_per_sec: 1024 * 1024,
            shard_write_records_per_sec: 1000,
            shard_read_bytes_per_sec: 2 * 1024 * 1024,
            shard_read_calls_per_sec: 5,
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 750,
            election_timeout_max_ms: 1500,
            segment_max_bytes: 64 * 1024 * 1024,
            page_cache_keep_bytes: 16 * 1024 * 1024,
            segment_max_age_secs: 3600,
            scrub_interval_ms: 60 * 60 * 1000,
            min_free_disk_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The largest `election_timeout_max_ms` accepted (1 hour): a leader silent for longer than that
/// is dead for any purpose.
pub const MAX_ELECTION_TIMEOUT_MS: u64 = 60 * 60 * 1000;

/// A configuration value that cannot work, with what is allowed.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigInvalid(pub String);

impl NodeConfig {
    /// The per-shard quotas, when enabled.
    pub fn quota_limits(&self) -> Option<crate::quota::QuotaLimits> {
        self.shard_quotas.then_some(crate::quota::QuotaLimits {
            write_bytes_per_sec: self.shard_write_bytes_per_sec,
            write_records_per_sec: self.shard_write_records_per_sec,
            read_bytes_per_sec: self.shard_read_bytes_per_sec,
            read_calls_per_sec: self.shard_read_calls_per_sec,
        })
    }

    /// Rejects combinations that would start a node that cannot work.
    pub fn validate(&self) -> Result<(), ConfigInvalid> {
        if self.node_id == 0 {
            return Err(ConfigInvalid("node id is 0; it must be at least 1".into()));
        }
        if self.az.is_empty() {
            return Err(ConfigInvalid(
                "az is empty; name the availability zone, e.g. az-a".into(),
            ));
        }
        if self.metrics_listen == Some(self.listen) {
            return Err(ConfigInvalid(format!(
                "metrics_listen ({}) is the same address as listen; the Prometheus endpoint needs a port of its own",
                self.listen
            )));
        }
        if self.iterator_ttl_ms < 1000 {
            return Err(ConfigInvalid(format!(
                "iterator_ttl_ms is {}; it must be at least 1000",
                self.iterator_ttl_ms
            )));
        }
        if self.max_shards == 0 {
            return Err(ConfigInvalid(
                "max_shards is 0; it must be at least 1".into(),
            ));
        }
        if self.max_consumers_per_stream == 0 {
            return Err(ConfigInvalid(
                "max_consumers_per_stream is 0; it must be at least 1".into(),
            ));
        }
        if self.subscription_max_ms < 1000 {
            return Err(ConfigInvalid(format!(
                "subscription_max_ms is {}; it must be at least 1000",
                self.subscription_max_ms
            )));
        }
        if self.max_streams == 0 {
            return Err(ConfigInvalid(
                "max_streams is 0; it must be at least 1".into(),
            ));
        }
        if self.scrub_interval_ms != 0 && self.scrub_interval_ms < 1000 {
            return Err(ConfigInvalid(format!(
                "scrub_interval_ms is {}; it must be 0 (off) or at least 1000",
                self.scrub_interval_ms
            )));
        }
        if self.retention_check_interval_ms < 100 {
            return Err(ConfigInvalid(format!(
                "retention_check_interval_ms is {}; it must be at least 100",
                self.retention_check_interval_ms
            )));
        }
        for (name, value) in [
            ("shard_write_bytes_per_sec", self.shard_write_bytes_per_sec),
            (
                "shard_write_records_per_sec",
                self.shard_write_records_per_sec,
            ),
            ("shard_read_bytes_per_sec", self.shard_read_bytes_per_sec),
            ("shard_read_calls_per_sec", self.shard_read_calls_per_sec),
        ] {
            if value == 0 {
                return Err(ConfigInvalid(format!(
                    "{name} is 0; it must be at least 1 (turn quotas off with shard_quotas = false)"
                )));
            }
        }
        if self.heartbeat_interval_ms == 0 {
            return Err(ConfigInvalid(
                "heartbeat_interval_ms must be at least 1".into(),
            ));
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return Err(ConfigInvalid(format!(
                "election_timeout_min_ms ({}) must be greater than heartbeat_interval_ms ({})",
                self.election_timeout_min_ms, self.heartbeat_interval_ms
            )));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(ConfigInvalid(format!(
                "election_timeout_max_ms ({}) must be greater than election_timeout_min_ms ({})",
                self.election_timeout_max_ms, self.election_timeout_min_ms
            )));
        }
        // Raft (and the node's failure detection) does arithmetic on these timings, which a
        // huge value overflowed (the `node_config` fuzz target checks that openraft takes every
        // config this accepts). Bounding the largest of the three bounds all of them.
        if self.election_timeout_max_ms > MAX_ELECTION_TIMEOUT_MS {
            return Err(ConfigInvalid(format!(
                "election_timeout_max_ms is {}; it must be at most {MAX_ELECTION_TIMEOUT_MS} (1 hour)",
                self.election_timeout_max_ms
            )));
        }
        if self.segment_max_bytes < 1024 * 1024 {
            return Err(ConfigInvalid(format!(
                "segment_max_bytes is {}; it must be at least 1048576 (1 MiB)",
                self.segment_max_bytes
            )));
        }
        let peers = self.peer_map()?;
        if !peers.is_empty() && !peers.contains_key(&self.node_id) {
            return Err(ConfigInvalid(format!(
                "peers ({}) must list this node (id {}) too, with the address its peers reach it at",
                self.peers, self.node_id
            )));
        }
        if self.rebalance_interval_ms < 100 {
            return Err(ConfigInvalid(format!(
                "rebalance_interval_ms is {}; it must be at least 100",
                self.rebalance_interval_ms
            )));
        }
        if self.segment_max_age_secs == 0 {
            return Err(ConfigInvalid(
                "segment_max_age_secs must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The cluster's nodes by id (empty for a single-node cluster).
    pub fn peer_map(&self) -> Result<BTreeMap<u64, String>, ConfigInvalid> {
        let mut peers = BTreeMap::new();
        for part in self
            .peers
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let bad = |why: &str| {
                ConfigInvalid(format!(
                    "peers entry {part:?}: {why}; write ID=HOST:PORT, e.g. 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103"
                ))
            };
            let (id, addr) = part.split_once('=').ok_or_else(|| bad("no '='"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| bad("the id is not a number"))?;
            if id == 0 {
                return Err(bad("node ids start at 1"));
            }
            let addr = addr.trim();
            let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no port"))?;
            if host.is_empty() || !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
                return Err(bad(
                    "the address is not HOST:PORT with a port from 1 to 65535",
                ));
            }
            if peers.insert(id, addr.to_string()).is_some() {
                return Err(bad("this id is listed twice"));
            }
        }
        if peers.len() == 1 {
            return Err(ConfigInvalid(format!(
                "peers ({}) lists one node; list every node of the cluster, or leave peers empty for a single-node cluster",
                self.peers
            )));
        }
        Ok(peers)
    }

    /// The address peers and clients reach this node at.
    pub fn advertised_address(&self) -> String {
        self.peer_map()
            .ok()
            .and_then(|peers| peers.get(&self.node_id).cloned())
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// The iterator lifetime as a duration.
    pub fn iterator_ttl(&self) -> Duration {
        Duration::from_millis(self.iterator_ttl_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        NodeConfig::default()
            .validate()
            .expect("defaults must validate");
    }

    #[test]
    fn election_timeout_must_exceed_heartbeat() {
        let config = NodeConfig {
            election_timeout_min_ms: 100,
            heartbeat_interval_ms: 200,
            ..Default::default()
        };
        let err = config.validate().expect_err("must be rejected").to_string();
        assert!(
            err.contains("election_timeout_min_ms (100) must be greater"),
            "{err}"
        );
    }

    #[test]
    fn huge_election_timeouts_are_refused() {
        // Regression: these validated, then overflowed in openraft's config validation
        // (`heartbeat_interval * 13`, a panic in debug builds).
        let config: NodeConfig = toml::from_str(
            "heartbeat_interval_ms = 2000000000000000000\n\
             election_timeout_min_ms = 3000000000000000000\n\
             election_timeout_max_ms = 4000000000000000000\n",
        )
        .expect("parses");
        let err = config.validate().expect_err("refused").to_string();
        assert!(
            err.contains("election_timeout_max_ms is 4000000000000000000"),
            "{err}"
        );
        let longest = NodeConfig {
            election_timeout_max_ms: MAX_ELECTION_TIMEOUT_MS,
            ..Default::default()
        };
        longest.validate().expect("the bound itself is allowed");
        crate::raft::raft_config(&longest, 1).expect("openraft takes it");
    }

    #[test]
    fn metrics_listen_needs_its_own_port() {
        let listen = SocketAddr::from(([127, 0, 0, 1], 7101));
        let config = NodeConfig {
            listen,
            metrics_listen: Some(listen),
            ..Default::default()
        };
        let err = config.validate().expect_err("refused").to_string();
        assert!(err.contains("needs a port of its own"), "{err}");
        let config = NodeConfig {
            listen,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9101))),
            ..Default::default()
        };
        config.validate().expect("a port of its own is fine");
    }

    #[test]
    fn peers_parse_and_must_include_self() {
        let config = NodeConfig {
            node_id: 2,
            peers: "1=127.0.0.1:7101, 2=node-b:7102,3=127.0.0.1:7103".into(),
            ..Default::default()
        };
        config.validate().expect("valid");
        assert_eq!(config.advertised_address(), "node-b:7102");
        let missing = NodeConfig {
            node_id: 4,
            ..config.clone()
        };
        let err = missing.validate().expect_err("self missing").to_string();
        assert!(err.contains("must list this node (id 4)"), "{err}");
    }

    #[test]
    fn bad_peers_are_named() {
        for (peers, why) in [
            ("1=a:1,1=b:2", "listed twice"),
            ("1=a:1,x=b:2", "not a number"),
            ("1=a:1,2=b", "no port"),
            ("1=a:1,2=b:0", "port from 1"),
            ("1=a:1,2b:2", "no '='"),
            ("0=a:1,1=b:2", "start at 1"),
            ("1=a:1", "lists one node"),
        ] {
            let config = NodeConfig {
                peers: peers.into(),
                ..Default::default()
            };
            let err = config.validate().expect_err(peers).to_string();
            assert!(err.contains(why), "{peers}: {err}");
        }
    }

    #[test]
    fn a_scrub_interval_below_a_second_is_refused() {
        let config = NodeConfig {
            scrub_interval_ms: 10,
            ..NodeConfig::default()
        };
        let err = config.validate().expect_err("too short");
        assert!(err.to_string().contains("scrub_interval_ms is 10"), "{err}");
        let off = NodeConfig {
            scrub_interval_ms: 0,
            ..NodeConfig::default()
        };
        off.validate().expect("0 turns scrubbing off");
    }

    #[test]
    fn toml_rejects_unknown_fields() {
        let err =
            toml::from_str::<NodeConfig>("node_id = 2\nbogus = 1\n").expect_err("unknown field");
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn toml_fills_defaults() {
        let config: NodeConfig = toml::from_str("node_id = 3\naz = \"az-c\"\n").expect("parses");
        assert_eq!(config.node_id, 3);
        assert_eq!(config.iterator_ttl_ms, 300_000);
    }
}
