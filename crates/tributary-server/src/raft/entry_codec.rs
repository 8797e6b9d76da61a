//! Raft entry <-> log batch. The batch payload is the one place record bytes are written;
//! decoding slices record data out of the read buffer without copying.
//!
//! Payload layout (little-endian), after the log engine's frame header:
//! ```text
//! entry_format u8 (=1) | term u64 | leader_node u64 | kind u8 | body
//! kind 0 blank:      (empty)
//! kind 1 membership: JSON of openraft::Membership
//! kind 2 append:     arrival_ms i64 | count u32 | count x (key_len u16 | key | data_len u32 | data)
//! kind 3 metadata:   JSON of MetadataCommand
//! kind 4 shard:      JSON of ShardControl (seal, trim)
//! kind 5 idempotent append: producer_id u64 | producer_sequence u64 | (kind 2 body)
//! ```
//! `entry_format` lets a later release read entries written by this one (rolling upgrades).

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use openraft::entry::RaftEntry;
use openraft::EntryPayload;

use super::{Command, Entry, LogId, ProducerStamp, RecordBatch, StoredRecord};

const ENTRY_FORMAT: u8 = 1;
const KIND_BLANK: u8 = 0;
const KIND_MEMBERSHIP: u8 = 1;
const KIND_APPEND: u8 = 2;
const KIND_METADATA: u8 = 3;
const KIND_SHARD: u8 = 4;
const KIND_APPEND_IDEMPOTENT: u8 = 5;

fn invalid(detail: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail.into())
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// Bytes of a payload before its kind-specific body: format, term, leader node, kind.
const HEADER_LEN: usize = 18;

/// Encodes an entry as a log batch.
pub fn encode(entry: &Entry) -> io::Result<tributary_log::Batch> {
    let log_id = entry.log_id();
    if let EntryPayload::Normal(Command::Append(batch)) = &entry.payload {
        if let Some(payload) = reusable_payload(batch, &log_id) {
            return Ok(tributary_log::Batch {
                index: log_id.index,
                timestamp_ms: batch.arrival_ms,
                record_count: batch.records.len() as u32,
                payload,
            });
        }
    }
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u8(ENTRY_FORMAT);
    buf.put_u64_le(log_id.leader_id.term);
    buf.put_u64_le(log_id.leader_id.node_id);
    let (timestamp_ms, record_count) = match &entry.payload {
        EntryPayload::Blank => {
            buf.put_u8(KIND_BLANK);
            (now_ms(), 0)
        }
        EntryPayload::Membership(membership) => {
            buf.put_u8(KIND_MEMBERSHIP);
            let json = serde_json::to_vec(membership).map_err(|e| invalid(e.to_string()))?;
            buf.put_slice(&json);
            (now_ms(), 0)
        }
        EntryPayload::Normal(Command::Append(batch)) => {
            let size: usize = batch
                .records
                .iter()
                .map(|r| 6 + r.partition_key.len() + r.data.len())
                .sum();
            match batch.producer {
                None => {
                    buf.put_u8(KIND_APPEND);
                    buf.reserve(12 + size);
                }
                Some(stamp) => {
                    buf.put_u8(KIND_APPEND_IDEMPOTENT);
                    buf.reserve(28 + size);
                    buf.put_u64_le(stamp.id);
                    buf.put_u64_le(stamp.sequence);
                }
            }
            buf.put_i64_le(batch.arrival_ms);
            buf.put_u32_le(batch.records.len() as u32);
            for record in &batch.records {
                let key_len = u16::try_from(record.partition_key.len())
                    .map_err(|_| invalid("partition key longer than 65535 bytes"))?;
                let data_len = u32::try_from(record.data.len())
                    .map_err(|_| invalid("record larger than 4 GiB"))?;
                buf.put_u16_le(key_len);
                buf.put_slice(record.partition_key.as_bytes());
                buf.put_u32_le(data_len);
                buf.put_slice(&record.data);
            }
            (batch.arrival_ms, batch.records.len() as u32)
        }
        EntryPayload::Normal(Command::Metadata(command)) => {
            buf.put_u8(KIND_METADATA);
            let json = serde_json::to_vec(command).map_err(|e| invalid(e.to_string()))?;
            buf.put_slice(&json);
            (now_ms(), 0)
        }
        EntryPayload::Normal(Command::Shard(control)) => {
            buf.put_u8(KIND_SHARD);
            let json = serde_json::to_vec(control).map_err(|e| invalid(e.to_string()))?;
            buf.put_slice(&json);
            (now_ms(), 0)
        }
    };
    Ok(tributary_log::Batch {
        index: log_id.index,
        timestamp_ms,
        record_count,
        payload: buf.freeze(),
    })
}

/// The payload `batch` was decoded from, if it is what encoding it as the entry `log_id`
/// would write: same format, log id, kind, producer stamp, arrival time, record count and
/// size. A batch changed after decoding, or put under another log id, fails a check and is
/// encoded afresh; nothing changes a decoded batch's record bytes in place (a change that
/// kept every one of these would not be seen).
fn reusable_payload(batch: &RecordBatch, log_id: &LogId) -> Option<Bytes> {
    let payload = batch.encoded.as_ref()?;
    let (kind, stamp_len) = match batch.producer {
        None => (KIND_APPEND, 0),
        Some(_) => (KIND_APPEND_IDEMPOTENT, 16),
    };
    let body: usize = batch
        .records
        .iter()
        .map(|r| 6 + r.partition_key.len() + r.data.len())
        .sum();
    if payload.len() != HEADER_LEN + stamp_len + 12 + body {
        return None;
    }
    let mut header = &payload[..HEADER_LEN + stamp_len + 12];
    let same = header.get_u8() == ENTRY_FORMAT
        && header.get_u64_le() == log_id.leader_id.term
        && header.get_u64_le() == log_id.leader_id.node_id
        && header.get_u8() == kind
        && batch.producer.is_none_or(|stamp| {
            header.get_u64_le() == stamp.id && header.get_u64_le() == stamp.sequence
        })
        && header.get_i64_le() == batch.arrival_ms
        && header.get_u32_le() as usize == batch.records.len();
    same.then(|| payload.clone())
}

/// Decodes a log batch into an entry. An append entry keeps `batch`'s payload (see
/// `RecordBatch::encoded`).
pub fn decode(batch: &tributary_log::Batch) -> io::Result<Entry> {
    let mut payload = batch.payload.clone();
    if payload.remaining() < HEADER_LEN {
        return Err(invalid(format!(
            "entry {} payload is {} bytes; too short",
            batch.index,
            payload.len()
        )));
    }
    let format = payload.get_u8();
    if format != ENTRY_FORMAT {
        return Err(invalid(format!(
            "entry {} has entry format {format}; this release reads format {ENTRY_FORMAT}",
            batch.index
        )));
    }
    let term = payload.get_u64_le();
    let node_id = payload.get_u64_le();
    let kind = payload.get_u8();
    let log_id = LogId::new(
        openraft::vote::leader_id_adv::LeaderId { term, node_id },
        batch.index,
    );
    let payload = match kind {
        KIND_BLANK => EntryPayload::Blank,
        KIND_MEMBERSHIP => EntryPayload::Membership(
            serde_json::from_slice(&payload).map_err(|e| invalid(e.to_string()))?,
        ),
        KIND_APPEND | KIND_APPEND_IDEMPOTENT => {
            let mut records = decode_records(kind, payload, batch.index)?;
            records.encoded = Some(batch.payload.clone());
            EntryPayload::Normal(Command::Append(records))
        }
        KIND_METADATA => EntryPayload::Normal(Command::Metadata(
            serde_json::from_slice(&payload).map_err(|e| invalid(e.to_string()))?,
        )),
        KIND_SHARD => EntryPayload::Normal(Command::Shard(
            serde_json::from_slice(&payload).map_err(|e| invalid(e.to_string()))?,
        )),
        other => {
            return Err(invalid(format!(
                "entry {} has unknown kind {other}",
                batch.index
            )))
        }
    };
    Ok(Entry { log_id, payload })
}

/// Decodes only the records of an append entry (None for other kinds); used by readers.
pub fn decode_record_batch(batch: &tributary_log::Batch) -> io::Result<Option<RecordBatch>> {
    let mut payload = batch.payload.clone();
    if payload.remaining() < HEADER_LEN {
        return Err(invalid(format!(
            "entry {} payload is too short",
            batch.index
        )));
    }
    // The same format check as `decode`: records of a format this release does not know
    // must not be read as format 1 (found by the `entry_codec` fuzz target).
    let format = payload.get_u8();
    if format != ENTRY_FORMAT {
        return Err(invalid(format!(
            "entry {} has entry format {format}; this release reads format {ENTRY_FORMAT}",
            batch.index
        )));
    }
    payload.advance(16);
    match payload.get_u8() {
        kind @ (KIND_APPEND | KIND_APPEND_IDEMPOTENT) => {
            decode_records(kind, payload, batch.index).map(Some)
        }
        _ => Ok(None),
    }
}

fn decode_records(kind: u8, mut body: Bytes, index: u64) -> io::Result<RecordBatch> {
    let short = || invalid(format!("entry {index}: record batch is truncated"));
    let producer = if kind == KIND_APPEND_IDEMPOTENT {
        if body.remaining() < 16 {
            return Err(short());
        }
        Some(ProducerStamp {
            id: body.get_u64_le(),
            sequence: body.get_u64_le(),
        })
    } else {
        None
    };
    if body.remaining() < 12 {
        return Err(short());
    }
    let arrival_ms = body.get_i64_le();
    let count = body.get_u32_le() as usize;
    let mut records = Vec::with_capacity(count.min(body.remaining() / 6 + 1));
    for _ in 0..count {
        if body.remaining() < 2 {
            return Err(short());
        }
        let key_len = body.get_u16_le() as usize;
        if body.remaining() < key_len + 4 {
            return Err(short());
        }
        let key = body.split_to(key_len);
        let partition_key = String::from_utf8(key.to_vec())
            .map_err(|_| invalid(format!("entry {index}: partition key is not UTF-8")))?;
        let data_len = body.get_u32_le() as usize;
        if body.remaining() < data_len {
            return Err(short());
        }
        let data = body.split_to(data_len);
        records.push(StoredRecord {
            partition_key,
            data,
        });
    }
    Ok(RecordBatch {
        arrival_ms,
        records,
        producer,
        encoded: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(index: u64, payload: EntryPayload<Command, u64, crate::raft::Member>) -> Entry {
        Entry {
            log_id: LogId::new(
                openraft::vote::leader_id_adv::LeaderId {
                    term: 3,
                    node_id: 1,
                },
                index,
            ),
            payload,
        }
    }

    fn record_batch() -> impl Strategy<Value = RecordBatch> {
        let record = (
            "[a-z0-9]{1,20}",
            proptest::collection::vec(any::<u8>(), 0..200),
        );
        (
            any::<i64>(),
            proptest::collection::vec(record, 0..20),
            proptest::option::of((1u64..u64::MAX, 1u64..u64::MAX)),
        )
            .prop_map(|(arrival_ms, records, producer)| RecordBatch {
                arrival_ms,
                records: records
                    .into_iter()
                    .map(|(k, d)| StoredRecord {
                        partition_key: k,
                        data: Bytes::from(d),
                    })
                    .collect(),
                producer: producer.map(|(id, sequence)| ProducerStamp { id, sequence }),
                encoded: None,
            })
    }

    proptest! {
        #[test]
        fn append_entries_round_trip(
            index in 1u64..u64::MAX,
            batch in record_batch(),
        ) {
            let original = entry(index, EntryPayload::Normal(Command::Append(batch.clone())));
            let encoded = encode(&original).expect("encode");
            prop_assert_eq!(encoded.index, index);
            prop_assert_eq!(encoded.record_count as usize, batch.records.len());
            let decoded = decode(&encoded).expect("decode");
            prop_assert_eq!(decoded.log_id, original.log_id);
            match decoded.payload {
                EntryPayload::Normal(Command::Append(got)) => prop_assert_eq!(got, batch.clone()),
                other => prop_assert!(false, "wrong payload {:?}", other),
            }
            prop_assert_eq!(decode_record_batch(&encoded).expect("records"), Some(batch.clone()));
        }

        #[test]
        fn a_decoded_append_encodes_to_the_same_bytes_without_a_copy(
            index in 2u64..u64::MAX,
            batch in record_batch(),
        ) {
            let stored = encode(&entry(index, EntryPayload::Normal(Command::Append(batch)))).expect("encode");
            let decoded = decode(&stored).expect("decode");
            let again = encode(&decoded).expect("encode again");
            prop_assert_eq!(&again, &stored);
            prop_assert_eq!(again.payload.as_ptr(), stored.payload.as_ptr(), "the stored payload is reused");

            // Changed after decoding, or under another log id: encoded afresh, never the old bytes.
            let EntryPayload::Normal(Command::Append(mut changed)) = decoded.payload.clone() else {
                panic!("an append decodes as an append");
            };
            changed.arrival_ms = changed.arrival_ms.wrapping_add(1);
            let fresh = Command::Append(RecordBatch { encoded: None, ..changed.clone() });
            let reencoded = encode(&entry(index, EntryPayload::Normal(Command::Append(changed)))).expect("encode changed");
            prop_assert_eq!(&reencoded, &encode(&entry(index, EntryPayload::Normal(fresh))).expect("encode fresh"));
            let moved = Entry {
                log_id: LogId::new(openraft::vote::leader_id_adv::LeaderId { term: 4, node_id: 2 }, index - 1),
                payload: decoded.payload,
            };
            let reencoded = encode(&moved).expect("encode under another log id");
            prop_assert_eq!(decode(&reencoded).expect("decode").log_id, moved.log_id);
            prop_assert_ne!(reencoded.payload.as_ptr(), stored.payload.as_ptr());
        }
    }

    #[test]
    fn blank_and_membership_round_trip() {
        let blank = encode(&entry(5, EntryPayload::Blank)).expect("encode");
        assert!(matches!(
            decode(&blank).expect("decode").payload,
            EntryPayload::Blank
        ));
        assert_eq!(decode_record_batch(&blank).expect("decode"), None);
        let mut nodes = std::collections::BTreeMap::new();
        nodes.insert(
            1u64,
            crate::raft::Member {
                addr: "127.0.0.1:7101".into(),
                incarnation: 7,
            },
        );
        let membership = openraft::Membership::new(vec![[1u64].into_iter().collect()], nodes)
            .expect("valid membership");
        let encoded =
            encode(&entry(6, EntryPayload::Membership(membership.clone()))).expect("encode");
        match decode(&encoded).expect("decode").payload {
            EntryPayload::Membership(got) => assert_eq!(got, membership),
            other => panic!("wrong payload {other:?}"),
        }
    }

    #[test]
    fn shard_control_round_trips_and_carries_no_records() {
        for control in [
            crate::raft::ShardControl::Seal,
            crate::raft::ShardControl::Trim {
                index: 41,
                term: 3,
                leader_node: 2,
            },
        ] {
            let batch = encode(&entry(
                42,
                EntryPayload::Normal(Command::Shard(control.clone())),
            ))
            .expect("encode");
            assert_eq!(batch.record_count, 0);
            assert_eq!(decode_record_batch(&batch).expect("decode"), None);
            match decode(&batch).expect("decode").payload {
                EntryPayload::Normal(Command::Shard(got)) => assert_eq!(got, control),
                other => panic!("wrong payload {other:?}"),
            }
        }
    }

    #[test]
    fn membership_written_before_incarnations_still_reads() {
        let json = br#"{"configs":[[1]],"nodes":{"1":{"addr":"127.0.0.1:7101"}}}"#;
        let membership: openraft::Membership<u64, crate::raft::Member> =
            serde_json::from_slice(json).expect("old membership json reads");
        let node = membership.get_node(&1).expect("node 1");
        assert_eq!(node.addr, "127.0.0.1:7101");
        assert_eq!(node.incarnation, 0);
    }

    /// Entry 1: an append of one record, encoded.
    fn one_record_append() -> tributary_log::Batch {
        let batch = RecordBatch {
            arrival_ms: 1,
            records: vec![StoredRecord {
                partition_key: "k".into(),
                data: Bytes::from_static(b"hello"),
            }],
            producer: None,
            encoded: None,
        };
        encode(&entry(1, EntryPayload::Normal(Command::Append(batch)))).expect("encode")
    }

    #[test]
    fn a_stored_payload_is_not_reused_for_records_of_the_same_size_but_another_count() {
        let record = |len: usize| StoredRecord {
            partition_key: "k".into(),
            data: Bytes::from(vec![7u8; len]),
        };
        let two = RecordBatch {
            arrival_ms: 5,
            records: vec![record(10), record(20)],
            producer: None,
            encoded: None,
        };
        let stored = encode(&entry(9, EntryPayload::Normal(Command::Append(two)))).expect("encode");
        let EntryPayload::Normal(Command::Append(mut decoded)) =
            decode(&stored).expect("decode").payload
        else {
            panic!("an append decodes as an append");
        };
        // One record of 37 bytes takes the same 44 payload bytes as records of 10 and 20.
        decoded.records = vec![record(37)];
        let again = encode(&entry(
            9,
            EntryPayload::Normal(Command::Append(decoded.clone())),
        ))
        .expect("encode");
        assert_eq!(again.payload.len(), stored.payload.len());
        assert_ne!(again.payload, stored.payload);
        let read = decode_record_batch(&again)
            .expect("decode")
            .expect("records");
        assert_eq!(read.records, decoded.records);
    }

    #[test]
    fn records_of_an_unknown_entry_format_are_refused() {
        // Regression (fuzz target `entry_codec`): `decode` refused format 5 but
        // `decode_record_batch` returned its records as if it were format 1.
        let mut encoded = one_record_append();
        let mut payload = encoded.payload.to_vec();
        payload[0] = 5;
        encoded.payload = Bytes::from(payload);
        assert!(decode(&encoded).is_err());
        let err = decode_record_batch(&encoded).expect_err("unknown format");
        assert!(err.to_string().contains("entry format 5"), "{err}");
    }

    #[test]
    fn truncated_payload_is_an_error() {
        let mut encoded = one_record_append();
        encoded.payload = encoded.payload.slice(..encoded.payload.len() - 1);
        assert!(decode(&encoded).is_err());
    }
}
