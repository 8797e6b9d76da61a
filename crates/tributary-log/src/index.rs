//! The sparse index of a segment, in memory and as a `.idx` file.
//!
//! One entry is kept per `index_interval_bytes` of frames (always one for the first frame). Each
//! entry serves both lookups the log needs:
//! - index -> byte offset: start at the last entry at or before the wanted index and step over at
//!   most one interval of frame headers;
//! - timestamp -> index: each entry carries the running maximum of batch timestamps within the
//!   segment up to and including its frame. The running max never decreases, so a binary search
//!   over it stays correct when a producer's clock steps back, and "first frame whose running max
//!   is >= t" is exactly "first frame whose timestamp is >= t".
//!
//! The `.idx` file is derived data: it is written and fsynced when a segment is sealed, and
//! rebuilt by scanning frame headers whenever it is missing, fails its CRC or describes a
//! different segment length. Its layout is documented in `segment.rs`.

use crate::frame::{read_u16, read_u32, read_u64};
use crate::segment::SEGMENT_HEADER_LEN;

/// Magic bytes at the start of a `.idx` file.
pub(crate) const INDEX_MAGIC: [u8; 8] = *b"TRIBIDX\0";
/// `.idx` format version written by this build.
pub(crate) const INDEX_VERSION: u16 = 1;
const INDEX_HEADER_LEN: usize = 56;
const INDEX_ENTRY_LEN: usize = 24;

/// One sparse-index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// Index of the batch whose frame starts at `offset`.
    pub index: u64,
    /// Byte offset of that frame in the segment file.
    pub offset: u64,
    /// Largest timestamp of the segment's frames up to and including this one.
    pub max_ts: i64,
}

/// The in-memory sparse index of one segment.
#[derive(Debug, Clone, Default)]
pub(crate) struct SparseIndex {
    entries: Vec<IndexEntry>,
}

impl SparseIndex {
    pub fn from_entries(entries: Vec<IndexEntry>) -> Self {
        Self { entries }
    }

    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    /// Records a frame appended at `offset`; adds an entry if it is the first frame or at least
    /// `interval` bytes past the previous entry.
    pub fn observe(&mut self, index: u64, offset: u64, running_max_ts: i64, interval: u64) {
        let due = match self.entries.last() {
            None => true,
            Some(last) => offset.saturating_sub(last.offset) >= interval,
        };
        if due {
            self.entries.push(IndexEntry {
                index,
                offset,
                max_ts: running_max_ts,
            });
        }
    }

    /// The last entry whose index is <= `index`.
    pub fn floor_by_index(&self, index: u64) -> Option<IndexEntry> {
        let n = self.entries.partition_point(|e| e.index <= index);
        n.checked_sub(1).map(|i| self.entries[i])
    }

    /// The last entry whose running max timestamp is < `ts`: every frame up to and including it is
    /// older than `ts`, so a scan for the first frame with timestamp >= `ts` can start there.
    pub fn floor_by_timestamp(&self, ts: i64) -> Option<IndexEntry> {
        let n = self.entries.partition_point(|e| e.max_ts < ts);
        n.checked_sub(1).map(|i| self.entries[i])
    }

    /// Drops the entries of frames after `index`.
    pub fn truncate_after(&mut self, index: u64) {
        let keep = self.entries.partition_point(|e| e.index <= index);
        self.entries.truncate(keep);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Everything a sealed segment's `.idx` file records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexFile {
    pub base: u64,
    /// Length of the segment file this index describes; a different length means it is stale.
    pub segment_len: u64,
    pub last_index: u64,
    /// Largest timestamp in the segment.
    pub max_ts: i64,
    /// Timestamp of the last batch.
    pub last_ts: i64,
    pub entries: Vec<IndexEntry>,
}

impl IndexFile {
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(INDEX_HEADER_LEN + self.entries.len() * INDEX_ENTRY_LEN + 4);
        out.extend_from_slice(&INDEX_MAGIC);
        out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.base.to_le_bytes());
        out.extend_from_slice(&self.segment_len.to_le_bytes());
        out.extend_from_slice(&self.last_index.to_le_bytes());
        out.extend_from_slice(&self.max_ts.to_le_bytes());
        out.extend_from_slice(&self.last_ts.to_le_bytes());
        let count = u32::try_from(self.entries.len())
            .expect("invariant: a segment has fewer than 2^32 index entries");
        out.extend_from_slice(&count.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.index.to_le_bytes());
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.max_ts.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and checks an index file; the error says why it cannot be used (it is then rebuilt).
    pub fn decode(buf: &[u8]) -> Result<IndexFile, String> {
        if buf.len() < INDEX_HEADER_LEN + 4 {
            return Err(format!(
                "{} bytes is shorter than an index header",
                buf.len()
            ));
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        let stored = read_u32(crc, 0);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(format!(
                "crc mismatch: stored {stored:#010x} computed {computed:#010x}"
            ));
        }
        if body[0..8] != INDEX_MAGIC {
            return Err("bad magic".to_owned());
        }
        let version = read_u16(body, 8);
        if version != INDEX_VERSION {
            return Err(format!(
                "index format version {version}, this build writes {INDEX_VERSION}"
            ));
        }
        let count = read_u32(body, 52) as usize;
        if body.len() != INDEX_HEADER_LEN + count * INDEX_ENTRY_LEN {
            return Err(format!(
                "{count} entries do not match the file length {}",
                buf.len()
            ));
        }
        let file = IndexFile {
            base: read_u64(body, 12),
            segment_len: read_u64(body, 20),
            last_index: read_u64(body, 28),
            max_ts: read_u64(body, 36) as i64,
            last_ts: read_u64(body, 44) as i64,
            entries: (0..count)
                .map(|i| {
                    let at = INDEX_HEADER_LEN + i * INDEX_ENTRY_LEN;
                    IndexEntry {
                        index: read_u64(body, at),
                        offset: read_u64(body, at + 8),
                        max_ts: read_u64(body, at + 16) as i64,
                    }
                })
                .collect(),
        };
        file.check()?;
        Ok(file)
    }

    /// Structural checks a CRC cannot give: the entries describe this segment, in order.
    fn check(&self) -> Result<(), String> {
        let Some(first) = self.entries.first() else {
            return Err("no entries (a sealed segment holds at least one batch)".to_owned());
        };
        if first.index != self.base || first.offset != SEGMENT_HEADER_LEN {
            return Err(format!(
                "first entry ({}, {}) is not the segment's first frame ({}, {SEGMENT_HEADER_LEN})",
                first.index, first.offset, self.base
            ));
        }
        for pair in self.entries.windows(2) {
            if pair[1].index <= pair[0].index
                || pair[1].offset <= pair[0].offset
                || pair[1].max_ts < pair[0].max_ts
            {
                return Err(format!("entries out of order at index {}", pair[1].index));
            }
        }
        let last = self.entries[self.entries.len() - 1];
        if last.index > self.last_index
            || last.offset >= self.segment_len
            || last.max_ts > self.max_ts
        {
            return Err(format!(
                "last entry (index {}, offset {}) lies outside the segment",
                last.index, last.offset
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> IndexFile {
        IndexFile {
            base: 10,
            segment_len: 10_000,
            last_index: 40,
            max_ts: 900,
            last_ts: 850,
            entries: vec![
                IndexEntry {
                    index: 10,
                    offset: SEGMENT_HEADER_LEN,
                    max_ts: 100,
                },
                IndexEntry {
                    index: 20,
                    offset: 4_200,
                    max_ts: 500,
                },
                IndexEntry {
                    index: 30,
                    offset: 8_300,
                    max_ts: 900,
                },
            ],
        }
    }

    #[test]
    fn index_file_round_trips() {
        let file = sample();
        assert_eq!(IndexFile::decode(&file.encode()), Ok(file));
    }

    #[test]
    fn damaged_index_file_is_refused() {
        let bytes = sample().encode();
        for at in [0, 9, 13, 30, 60, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(
                IndexFile::decode(&bad).is_err(),
                "flip at byte {at} accepted"
            );
        }
        assert!(IndexFile::decode(&bytes[..bytes.len() - 5]).is_err());
    }

    #[test]
    fn lookups_use_the_floor_entry() {
        let index = SparseIndex::from_entries(sample().entries);
        assert_eq!(index.floor_by_index(9), None);
        assert_eq!(index.floor_by_index(10).map(|e| e.index), Some(10));
        assert_eq!(index.floor_by_index(29).map(|e| e.index), Some(20));
        assert_eq!(index.floor_by_index(99).map(|e| e.index), Some(30));
        // Entries whose running max is < ts: frames up to them are all older than ts.
        assert_eq!(index.floor_by_timestamp(100), None);
        assert_eq!(index.floor_by_timestamp(101).map(|e| e.index), Some(10));
        assert_eq!(index.floor_by_timestamp(900).map(|e| e.index), Some(20));
        assert_eq!(
            index.floor_by_timestamp(i64::MAX).map(|e| e.index),
            Some(30)
        );
    }

    #[test]
    fn observe_adds_one_entry_per_interval() {
        let mut index = SparseIndex::default();
        for (i, offset) in [(1, 32), (2, 1000), (3, 4000), (4, 4200), (5, 8300)] {
            index.observe(i, offset, i as i64, 4096);
        }
        let indexes: Vec<u64> = index.entries().iter().map(|e| e.index).collect();
        assert_eq!(indexes, vec![1, 4, 5]);
        index.truncate_after(4);
        assert_eq!(index.len(), 2);
    }
}
