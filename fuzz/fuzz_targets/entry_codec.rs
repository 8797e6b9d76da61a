//! The raft entry decoder (`tributary-server` `raft/entry_codec.rs`) on arbitrary batch
//! payloads: what a node reads back from its shard logs.
//!
//! Asserts: `decode` and `decode_record_batch` return `Ok` or an error, never panic; they agree
//! (records come back exactly for the append entries `decode` accepts); an entry `decode`
//! accepts re-encodes, and the re-encoding decodes to the same entry.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use openraft::EntryPayload;
use tributary_server::raft::entry_codec::{decode, decode_record_batch, encode};
use tributary_server::raft::{Command, Entry};

const INDEX: u64 = 42;

fuzz_target!(|data: &[u8]| {
    let batch = tributary_log::Batch {
        index: INDEX,
        timestamp_ms: 0,
        record_count: 0,
        payload: Bytes::copy_from_slice(data),
    };
    let records = decode_record_batch(&batch);
    let Ok(entry) = decode(&batch) else {
        assert!(
            !matches!(records, Ok(Some(_))),
            "decode_record_batch returned records from an entry decode refuses"
        );
        return;
    };
    match (&entry.payload, &records) {
        (EntryPayload::Normal(Command::Append(batch)), Ok(Some(got))) => assert_eq!(batch, got),
        (EntryPayload::Normal(Command::Append(_)), other) => {
            panic!("decode found an append, decode_record_batch {other:?}")
        }
        (_, Ok(None)) => {}
        (_, other) => panic!("decode found a non-append entry, decode_record_batch {other:?}"),
    }
    let encoded = encode(&entry).expect("an entry that decoded re-encodes");
    assert_eq!(encoded.index, INDEX);
    let again = decode(&encoded).expect("a re-encoded entry decodes");
    assert_same(&entry, &again);
});

/// `Command` has no `PartialEq`; compare its JSON (or, failing that, its `Debug` form).
fn assert_same(a: &Entry, b: &Entry) {
    assert_eq!(a.log_id, b.log_id);
    match (&a.payload, &b.payload) {
        (EntryPayload::Blank, EntryPayload::Blank) => {}
        (EntryPayload::Membership(x), EntryPayload::Membership(y)) => assert_eq!(x, y),
        (EntryPayload::Normal(x), EntryPayload::Normal(y)) => {
            match (serde_json::to_value(x), serde_json::to_value(y)) {
                (Ok(x), Ok(y)) => assert_eq!(x, y),
                _ => assert_eq!(format!("{x:?}"), format!("{y:?}")),
            }
        }
        (x, y) => panic!("payload changed kind in a round trip: {x:?} -> {y:?}"),
    }
}
