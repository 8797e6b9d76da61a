//! AppendEntries on the wire. The entries travel as the encoded batches the log stores
//! (`entry_codec`), not as bincode of their records: the leader's batches are already
//! encoded (its log store keeps the newest ones in memory), so sending them costs one copy
//! into the message, and the follower's entries are slices of the message that its log
//! store appends without encoding them again (`RecordBatch::encoded`). bincode of the
//! records cost a copy and two allocations per record on each side.
//!
//! Layout (little-endian):
//! ```text
//! header_len u32 | header: bincode of (vote, prev_log_id, leader_commit)
//! count u32 | count x (index u64 | timestamp_ms i64 | record_count u32 | payload_len u32 | payload)
//! ```

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use openraft::raft::AppendEntriesRequest;

use super::{entry_codec, LogId, TypeConfig, Vote};

/// `index` + `timestamp_ms` + `record_count` + `payload_len`.
const ENTRY_PREFIX_LEN: usize = 24;

type Header = (Vote, Option<LogId>, Option<LogId>);

fn invalid(detail: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail.into())
}

/// Encodes a request for the wire.
pub fn encode(rpc: &AppendEntriesRequest<TypeConfig>) -> io::Result<Bytes> {
    let header: Header = (rpc.vote, rpc.prev_log_id, rpc.leader_commit);
    let header = bincode::serialize(&header).map_err(|e| invalid(e.to_string()))?;
    let batches = rpc
        .entries
        .iter()
        .map(entry_codec::encode)
        .collect::<io::Result<Vec<_>>>()?;
    let size = 8
        + header.len()
        + batches
            .iter()
            .map(|b| ENTRY_PREFIX_LEN + b.payload.len())
            .sum::<usize>();
    let mut out = BytesMut::with_capacity(size);
    out.put_u32_le(header.len() as u32);
    out.put_slice(&header);
    out.put_u32_le(batches.len() as u32);
    for batch in &batches {
        let len = u32::try_from(batch.payload.len())
            .map_err(|_| invalid("an entry larger than 4 GiB"))?;
        out.put_u64_le(batch.index);
        out.put_i64_le(batch.timestamp_ms);
        out.put_u32_le(batch.record_count);
        out.put_u32_le(len);
        out.put_slice(&batch.payload);
    }
    Ok(out.freeze())
}

/// Decodes a request; its entries' record bytes are slices of `body` (no copy).
pub fn decode(mut body: Bytes) -> io::Result<AppendEntriesRequest<TypeConfig>> {
    let short = || invalid("AppendEntries message is truncated");
    if body.remaining() < 4 {
        return Err(short());
    }
    let header_len = body.get_u32_le() as usize;
    if body.remaining() < header_len.saturating_add(4) {
        return Err(short());
    }
    let header = body.split_to(header_len);
    let (vote, prev_log_id, leader_commit): Header =
        bincode::deserialize(&header).map_err(|e| invalid(e.to_string()))?;
    let count = body.get_u32_le() as usize;
    // Every entry takes at least its prefix, so a corrupt count cannot allocate much.
    let mut entries = Vec::with_capacity(count.min(body.remaining() / ENTRY_PREFIX_LEN));
    for _ in 0..count {
        if body.remaining() < ENTRY_PREFIX_LEN {
            return Err(short());
        }
        let index = body.get_u64_le();
        let timestamp_ms = body.get_i64_le();
        let record_count = body.get_u32_le();
        let len = body.get_u32_le() as usize;
        if body.remaining() < len {
            return Err(short());
        }
        let batch = tributary_log::Batch {
            index,
            timestamp_ms,
            record_count,
            payload: body.split_to(len),
        };
        entries.push(entry_codec::decode(&batch)?);
    }
    if body.has_remaining() {
        return Err(invalid(format!(
            "AppendEntries message has {} bytes after its last entry",
            body.remaining()
        )));
    }
    Ok(AppendEntriesRequest {
        vote,
        prev_log_id,
        entries,
        leader_commit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Command, Entry, RecordBatch, StoredRecord};
    use openraft::vote::leader_id_adv::LeaderId;
    use openraft::EntryPayload;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(LeaderId { term, node_id: 1 }, index)
    }

    fn request(entries: Vec<Entry>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(2, 9)),
            entries,
            leader_commit: Some(log_id(2, 8)),
        }
    }

    fn append(index: u64, records: usize) -> Entry {
        Entry {
            log_id: log_id(3, index),
            payload: EntryPayload::Normal(Command::Append(RecordBatch {
                arrival_ms: 1_700_000_000_000 + index as i64,
                records: (0..records)
                    .map(|i| StoredRecord {
                        partition_key: format!("key-{i}"),
                        data: Bytes::from(vec![i as u8; 100 + i]),
                    })
                    .collect(),
                producer: None,
                encoded: None,
            })),
        }
    }

    #[test]
    fn a_request_round_trips_and_its_entries_encode_to_what_the_leader_stored() {
        let entries = vec![
            Entry {
                log_id: log_id(3, 10),
                payload: EntryPayload::Blank,
            },
            append(11, 3),
            append(12, 0),
            append(13, 50),
        ];
        let sent = request(entries.clone());
        let wire = encode(&sent).expect("encode");
        let got = decode(wire.clone()).expect("decode");
        assert_eq!(got.vote, sent.vote);
        assert_eq!(got.prev_log_id, sent.prev_log_id);
        assert_eq!(got.leader_commit, sent.leader_commit);
        assert_eq!(got.entries.len(), entries.len());
        let range = wire.as_ptr_range();
        for (got, sent) in got.entries.iter().zip(&entries) {
            assert_eq!(got.log_id, sent.log_id);
            let stored = entry_codec::encode(got).expect("encode received");
            if let EntryPayload::Normal(Command::Append(batch)) = &sent.payload {
                assert_eq!(stored, entry_codec::encode(sent).expect("encode sent"));
                // The follower appends a slice of the message, not a copy.
                assert!(range.contains(&stored.payload.as_ptr()));
                match &got.payload {
                    EntryPayload::Normal(Command::Append(got)) => assert_eq!(got, batch),
                    other => panic!("an append arrived as {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_heartbeat_round_trips() {
        let got = decode(encode(&request(Vec::new())).expect("encode")).expect("decode");
        assert!(got.entries.is_empty());
        assert_eq!(got.leader_commit, Some(log_id(2, 8)));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_decode_or_fail_without_panicking(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            flip in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let _ = decode(Bytes::from(body));
            // And a real message with one byte changed.
            let mut wire = encode(&request(vec![append(11, 2), append(12, 1)])).expect("encode").to_vec();
            let at = flip.index(wire.len());
            wire[at] ^= 0xa5;
            let _ = decode(Bytes::from(wire));
        }
    }

    #[test]
    fn a_truncated_or_padded_message_is_refused() {
        let wire = encode(&request(vec![append(11, 2), append(12, 2)])).expect("encode");
        for cut in [0, 3, 10, wire.len() / 2, wire.len() - 1] {
            assert!(decode(wire.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut padded = wire.to_vec();
        padded.push(0);
        let err = decode(Bytes::from(padded)).expect_err("padded");
        assert!(err.to_string().contains("after its last entry"), "{err}");
    }
}
