//! Which shard a record goes to.
//!
//! Kinesis semantics: the MD5 of the partition key, read as a big-endian 128-bit integer,
//! falls into exactly one open shard's inclusive hash key range. The server does the routing;
//! the SDK computes it too so callers can group records by shard (and tests can predict it).

use md5::{Digest, Md5};
use tributary_proto::v1::{Shard, ShardStatus};

/// The 128-bit hash of a partition key: MD5 of its UTF-8 bytes, big-endian.
pub fn hash_key(partition_key: &str) -> u128 {
    let digest: [u8; 16] = Md5::digest(partition_key.as_bytes()).into();
    u128::from_be_bytes(digest)
}

/// The open shard whose inclusive `[starting_hash_key, ending_hash_key]` contains `hash`.
///
/// Closed shards are skipped (they take no writes), as are shards whose range is not a pair of
/// decimal 128-bit integers.
pub fn shard_for_hash(shards: &[Shard], hash: u128) -> Option<&Shard> {
    shards.iter().find(|shard| {
        if shard.status() != ShardStatus::Open {
            return false;
        }
        let start = shard.starting_hash_key.parse::<u128>();
        let end = shard.ending_hash_key.parse::<u128>();
        matches!((start, end), (Ok(start), Ok(end)) if start <= hash && hash <= end)
    })
}

/// The open shard that a record with this partition key (and optional explicit hash key, a
/// decimal 128-bit integer that overrides the key's hash) is written to.
pub fn shard_for_record<'a>(
    shards: &'a [Shard],
    partition_key: &str,
    explicit_hash_key: Option<&str>,
) -> Option<&'a Shard> {
    let hash = match explicit_hash_key {
        Some(explicit) => explicit.parse::<u128>().ok()?,
        None => hash_key(partition_key),
    };
    shard_for_hash(shards, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, status: ShardStatus, start: u128, end: u128) -> Shard {
        let mut shard = Shard {
            shard_id: id.into(),
            starting_hash_key: start.to_string(),
            ending_hash_key: end.to_string(),
            ..Default::default()
        };
        shard.set_status(status);
        shard
    }

    #[test]
    fn md5_matches_known_digests() {
        let cases = [
            ("a", 0x0cc175b9c0f1b6a831c399e269772661_u128),
            ("", 0xd41d8cd98f00b204e9800998ecf8427e),
            ("abc", 0x900150983cd24fb0d6963f7d28e17f72),
        ];
        for (key, expected) in cases {
            assert_eq!(hash_key(key), expected, "md5({key:?})");
        }
    }

    #[test]
    fn picks_the_open_shard_whose_range_contains_the_hash() {
        let half = u128::MAX / 2;
        let shards = [
            shard("shardId-000000000000", ShardStatus::Closed, 0, u128::MAX),
            shard("shardId-000000000001", ShardStatus::Open, 0, half),
            shard(
                "shardId-000000000002",
                ShardStatus::Open,
                half + 1,
                u128::MAX,
            ),
        ];
        let cases = [
            (0, Some("shardId-000000000001")),
            (half, Some("shardId-000000000001")),
            (half + 1, Some("shardId-000000000002")),
            (u128::MAX, Some("shardId-000000000002")),
        ];
        for (hash, expected) in cases {
            let picked = shard_for_hash(&shards, hash).map(|s| s.shard_id.as_str());
            assert_eq!(picked, expected, "hash {hash}");
        }
        assert!(
            shard_for_hash(&shards[..1], 5).is_none(),
            "closed shards take no writes"
        );
    }

    #[test]
    fn explicit_hash_key_overrides_the_partition_key() {
        let half = u128::MAX / 2;
        let shards = [
            shard("low", ShardStatus::Open, 0, half),
            shard("high", ShardStatus::Open, half + 1, u128::MAX),
        ];
        // md5("a") starts with 0x0c: the low half.
        assert_eq!(
            shard_for_record(&shards, "a", None).map(|s| s.shard_id.as_str()),
            Some("low")
        );
        let explicit = u128::MAX.to_string();
        assert_eq!(
            shard_for_record(&shards, "a", Some(&explicit)).map(|s| s.shard_id.as_str()),
            Some("high")
        );
        assert!(shard_for_record(&shards, "a", Some("not a number")).is_none());
    }
}
