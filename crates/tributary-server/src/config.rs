//! Node configuration: one plain struct that flags, `TRIBUTARY_*` environment variables
//! and a TOML file all map onto. Every field documents its trade-off.

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
    /// Prometheus endpoint. Reserved: this release serves no metrics yet, so setting it is
    /// refused rather than silently ignored.
    pub metrics_listen: Option<SocketAddr>,
    /// Shard iterators expire after this many milliseconds (Kinesis: 5 minutes). Shorter
    /// values let tests exercise expiry quickly; longer ones let slow consumers keep tokens.
    pub iterator_ttl_ms: u64,
    /// Upper bound on shards over all streams on this cluster. Each shard is a raft group
    /// with its own files and timers, so this caps memory and open files.
    pub max_shards: u32,
    /// Raft heartbeat interval in milliseconds. Lower detects a dead leader sooner but
    /// costs one message per group per follower per interval.
    pub heartbeat_interval_ms: u64,
    /// Minimum raft election timeout in milliseconds (must exceed the heartbeat interval).
    pub election_timeout_min_ms: u64,
    /// Maximum raft election timeout in milliseconds.
    pub election_timeout_max_ms: u64,
    /// Roll a segment file at this size. Larger files mean fewer files and coarser retention.
    pub segment_max_bytes: u64,
    /// Roll an idle segment after this many seconds so retention can delete it.
    pub segment_max_age_secs: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7101)),
            data_dir: PathBuf::from("./.tributary/data"),
            az: "az-a".to_string(),
            metrics_listen: None,
            iterator_ttl_ms: 5 * 60 * 1000,
            max_shards: 1024,
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 750,
            election_timeout_max_ms: 1500,
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age_secs: 3600,
        }
    }
}

/// A configuration value that cannot work, with what is allowed.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigInvalid(pub String);

impl NodeConfig {
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
        if let Some(addr) = self.metrics_listen {
            return Err(ConfigInvalid(format!(
                "metrics_listen ({addr}): this release has no Prometheus endpoint yet; remove the setting"
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
        if self.segment_max_bytes < 1024 * 1024 {
            return Err(ConfigInvalid(format!(
                "segment_max_bytes is {}; it must be at least 1048576 (1 MiB)",
                self.segment_max_bytes
            )));
        }
        if self.segment_max_age_secs == 0 {
            return Err(ConfigInvalid(
                "segment_max_age_secs must be at least 1".into(),
            ));
        }
        Ok(())
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
    fn metrics_listen_is_refused_until_metrics_exist() {
        let config = NodeConfig {
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9101))),
            ..Default::default()
        };
        let err = config.validate().expect_err("refused").to_string();
        assert!(err.contains("no Prometheus endpoint yet"), "{err}");
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
