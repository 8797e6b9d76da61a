//! Kinesis routing: a record's 128-bit hash key is MD5(partition key) read big-endian, or
//! an explicit hash key; it belongs to the open shard whose inclusive range contains it.

use md5::{Digest, Md5};

/// The hash key of a partition key.
pub fn hash_key(partition_key: &str) -> u128 {
    let digest = Md5::digest(partition_key.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest);
    u128::from_be_bytes(bytes)
}

/// An inclusive hash key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HashRange {
    /// First hash key in the range.
    pub start: u128,
    /// Last hash key in the range (inclusive).
    pub end: u128,
}

impl HashRange {
    /// Whether `key` falls in the range.
    pub fn contains(&self, key: u128) -> bool {
        self.start <= key && key <= self.end
    }

    /// Splits [0, 2^128-1] into `count` contiguous ranges of (nearly) equal size.
    ///
    /// Range `i` starts at `floor(i * 2^128 / count)`, as Kinesis does, so the boundaries
    /// of `count` shards are also boundaries of any multiple of `count` (scaling 2 -> 8
    /// splits each shard in four, leaving no sliver shards).
    pub fn split_evenly(count: u32) -> Vec<HashRange> {
        assert!(count > 0, "split_evenly needs at least one shard");
        let n = u128::from(count);
        // 2^128 = q * n + (r + 1), so floor(i * 2^128 / n) = i * q + floor(i * (r + 1) / n),
        // with no intermediate value above 2^128 - 1.
        let (q, r) = (u128::MAX / n, u128::MAX % n);
        let start = |i: u128| i * q + i * (r + 1) / n;
        (0..n)
            .map(|i| HashRange {
                start: start(i),
                end: if i + 1 == n {
                    u128::MAX
                } else {
                    start(i + 1) - 1
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn md5_is_read_big_endian() {
        assert_eq!(hash_key("a"), 0x0cc175b9c0f1b6a831c399e269772661);
    }

    #[test]
    fn one_shard_covers_everything() {
        assert_eq!(
            HashRange::split_evenly(1),
            vec![HashRange {
                start: 0,
                end: u128::MAX
            }]
        );
    }

    #[test]
    fn boundaries_match_kinesis_and_nest() {
        // Kinesis: a 2-shard stream's first shard ends at 2^127 - 1.
        assert_eq!(HashRange::split_evenly(2)[0].end, (1u128 << 127) - 1);
        let eight = HashRange::split_evenly(8);
        for (i, two) in HashRange::split_evenly(2).iter().enumerate() {
            assert_eq!(two.start, eight[i * 4].start);
            assert_eq!(two.end, eight[i * 4 + 3].end);
        }
    }

    proptest! {
        #[test]
        fn ranges_tile_the_key_space(count in 1u32..2000) {
            let ranges = HashRange::split_evenly(count);
            prop_assert_eq!(ranges.len(), count as usize);
            prop_assert_eq!(ranges[0].start, 0);
            prop_assert_eq!(ranges[ranges.len() - 1].end, u128::MAX);
            for pair in ranges.windows(2) {
                prop_assert!(pair[0].start <= pair[0].end);
                prop_assert_eq!(pair[0].end + 1, pair[1].start);
            }
        }

        #[test]
        fn every_key_has_exactly_one_range(count in 1u32..64, key in any::<u128>()) {
            let ranges = HashRange::split_evenly(count);
            prop_assert_eq!(ranges.iter().filter(|r| r.contains(key)).count(), 1);
        }
    }
}
