//! Input formats shared by the fuzz targets (`fuzz_targets/`) and the seed writer
//! (`src/bin/write_seeds.rs`), so seeds are built with the same code the targets parse with.

pub mod log_dir;

/// The cluster key the `iterator_token` target signs and verifies with.
pub const ITERATOR_KEY: &[u8] = b"fuzz-cluster-iterator-key";
/// The "now" the `iterator_token` target decodes at (2023-11-14T22:13:20Z).
pub const ITERATOR_NOW_MS: i64 = 1_700_000_000_000;
/// Iterator lifetime of the `iterator_token` target's codec.
pub const ITERATOR_TTL_MS: u64 = 300_000;

/// First byte of an `iterator_token` input: what the rest is.
pub mod iterator_mode {
    /// The rest is a token string, decoded as a client would send it.
    pub const TOKEN: u8 = 0;
    /// The rest is a position (stream u64, shard u32, log index u64, slot u16, issued i64),
    /// a "now" (i64), a lifetime in ms (u64) and a mutation (index u16, byte u8): encode, then
    /// decode must give the position back (or "expired"), and the mutated token must be refused.
    pub const ROUND_TRIP: u8 = 1;
    /// The rest is a token body, signed with the right key: decoding must check the length and
    /// version, not only the MAC.
    pub const SIGNED_BODY: u8 = 2;
    /// Number of modes; the first byte is taken modulo this.
    pub const COUNT: u8 = 3;
}

/// CRC-32 (IEEE), as the log engine's files use it; written out here so that the harness does not
/// share code with the decoders it checks.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A little-endian reader that yields zeros past the end, so every input maps to some value.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.bytes(N);
        out[..got.len()].copy_from_slice(got);
        out
    }

    /// A `u8` (0 past the end).
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A little-endian `i64`.
    pub fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.array())
    }
}
