//! Sequence numbers: decimal strings of a 112-bit integer
//! `shard_index (32 bits) | log_index (64 bits) | slot (16 bits)`.
//!
//! The shard index in the high bits makes numbers unique per stream, puts a child shard's
//! numbers above its parents' (children get higher indexes), and lets a number from another
//! shard be recognised. Within a shard the raft log index and the record's slot in its batch
//! make numbers strictly increasing. 112 bits stays well under Kinesis's 186-bit bound, so
//! Kinesis client libraries can treat them as opaque.

use crate::error::ApiError;

/// Records per raft entry are bounded by the slot width.
pub const MAX_RECORDS_PER_BATCH: usize = u16::MAX as usize + 1;

/// A decoded sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SequenceNumber {
    /// Index of the shard within its stream (the number in `shardId-000000000007`).
    pub shard_index: u32,
    /// Raft log index of the batch that holds the record.
    pub log_index: u64,
    /// Position of the record within its batch.
    pub slot: u16,
}

impl SequenceNumber {
    /// The 112-bit value.
    pub fn to_u128(self) -> u128 {
        (u128::from(self.shard_index) << 80)
            | (u128::from(self.log_index) << 16)
            | u128::from(self.slot)
    }

    /// Decodes a 112-bit value.
    pub fn from_u128(value: u128) -> Option<Self> {
        if value >> 112 != 0 {
            return None;
        }
        Some(Self {
            shard_index: (value >> 80) as u32,
            log_index: (value >> 16) as u64,
            slot: value as u16,
        })
    }

    /// Parses the decimal form, rejecting anything that is not a Tributary sequence number.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let invalid = || {
            ApiError::invalid(format!("sequence number {text:?} is not a valid sequence number (a decimal integer issued by this stream)"))
        };
        if text.is_empty() || text.len() > 40 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let value = text.parse::<u128>().map_err(|_| invalid())?;
        Self::from_u128(value).ok_or_else(invalid)
    }

    /// The first number a shard can hold.
    pub fn shard_start(shard_index: u32) -> Self {
        Self {
            shard_index,
            log_index: 0,
            slot: 0,
        }
    }
}

impl std::fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_u128())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decimal_round_trip(shard_index in any::<u32>(), log_index in any::<u64>(), slot in any::<u16>()) {
            let seq = SequenceNumber { shard_index, log_index, slot };
            prop_assert_eq!(SequenceNumber::parse(&seq.to_string()).ok(), Some(seq));
        }

        #[test]
        fn order_is_numeric_order(a in any::<(u32, u64, u16)>(), b in any::<(u32, u64, u16)>()) {
            let sa = SequenceNumber { shard_index: a.0, log_index: a.1, slot: a.2 };
            let sb = SequenceNumber { shard_index: b.0, log_index: b.1, slot: b.2 };
            prop_assert_eq!(sa.cmp(&sb), sa.to_u128().cmp(&sb.to_u128()));
        }
    }

    #[test]
    fn malformed_numbers_are_rejected() {
        for bad in [
            "",
            "abc",
            "-1",
            "1.5",
            &(1u128 << 112).to_string(),
            &"9".repeat(41),
        ] {
            assert!(SequenceNumber::parse(bad).is_err(), "{bad}");
        }
    }
}
