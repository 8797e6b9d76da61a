//! Writes the seed corpora, `fuzz/corpus/<target>/seed-<name>`, from the real encoders (the log
//! engine, the entry codec, the iterator codec), so each fuzzer starts from valid shapes.
//!
//! `scripts/fuzz --write-seeds` builds and runs it; the seeds are committed, the inputs the
//! fuzzers add next to them (named by their SHA-1) are not. Usage: `write_seeds CORPUS_DIR`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use openraft::EntryPayload;
use tributary_fuzz::log_dir::{self, FileKind, FIX_BASES, FIX_CRCS, RENUMBER_FRAMES};
use tributary_fuzz::{iterator_mode, ITERATOR_KEY, ITERATOR_NOW_MS, ITERATOR_TTL_MS};
use tributary_log::fuzzing::encode_frame;
use tributary_log::{Batch, Log};
use tributary_server::iterator::{IteratorCodec, IteratorPosition};
use tributary_server::raft::entry_codec;
use tributary_server::raft::{
    Command, Entry, LogId, Member, ProducerStamp, RecordBatch, ShardControl, StoredRecord,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let corpus = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: write_seeds CORPUS_DIR (fuzz/corpus)")?,
    );
    let mut seeds = Seeds::default();
    log_frame(&mut seeds);
    log_recovery(&mut seeds)?;
    entry_codec_seeds(&mut seeds)?;
    iterator_token(&mut seeds);
    node_config(&mut seeds);
    for ((target, name), bytes) in &seeds.0 {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    println!("wrote {} seeds under {}", seeds.0.len(), corpus.display());
    Ok(())
}

#[derive(Default)]
struct Seeds(BTreeMap<(&'static str, String), Vec<u8>>);

impl Seeds {
    fn add(&mut self, target: &'static str, name: &str, bytes: Vec<u8>) {
        self.0.insert((target, name.to_owned()), bytes);
    }
}

fn batch(index: u64, payload: &str) -> Batch {
    Batch {
        index,
        timestamp_ms: 1_700_000_000_000 + index as i64 * 1000,
        record_count: 1,
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

fn log_frame(seeds: &mut Seeds) {
    // Option byte 5: max_batch_bytes 1 MiB; 8 + 5: also recompute the first frame's CRC.
    let one = encode_frame(&batch(1, "a record batch payload"));
    let two = encode_frame(&batch(2, ""));
    seeds.add("log_frame", "one-frame", [&[5][..], &one].concat());
    seeds.add("log_frame", "two-frames", [&[5][..], &one, &two].concat());
    let mut newer = one.clone();
    newer[8] = 2; // frame format version 2, CRC recomputed by the option
    seeds.add("log_frame", "newer-version", [&[13][..], &newer].concat());
    seeds.add(
        "log_frame",
        "truncated",
        [&[5][..], &one[..one.len() - 3]].concat(),
    );
}

/// The files of `dir` the input format knows, by name.
fn dir_files(dir: &Path) -> Result<Vec<(FileKind, Vec<u8>)>> {
    let mut files = Vec::new();
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        if let Some(kind) = FileKind::from_file_name(&name) {
            files.push((kind, fs::read(dir.join(&name))?));
        }
    }
    Ok(files)
}

fn add_log_seed(seeds: &mut Seeds, name: &str, choice: u8, dir: &Path) -> Result<()> {
    let files = dir_files(dir)?;
    // The repairs must leave files the engine wrote unchanged, or they would mislead the fuzzer.
    let repaired = log_dir::parse(&log_dir::pack(
        choice | FIX_CRCS | FIX_BASES | RENUMBER_FRAMES,
        &files,
    ));
    assert_eq!(
        repaired.files, files,
        "{name}: a repair changed a valid file"
    );
    seeds.add("log_recovery", name, log_dir::pack(choice, &files));
    Ok(())
}

fn log_recovery(seeds: &mut Seeds) -> Result<()> {
    let payload = "0123456789abcdef0123456789abcdef";
    // Config 0: 1 KiB segments, so 30 batches make several sealed segments with .idx files.
    let dir = tempfile::tempdir()?;
    let (log, _) = Log::open(dir.path(), log_dir::config(0))?;
    for i in 1..=30 {
        log.append(&[batch(i, payload)])?;
    }
    log.sync()?;
    drop(log);
    add_log_seed(seeds, "sealed-and-active", 0, dir.path())?;

    fs::write(dir.path().join("unsynced_after"), "durable 25\n")?;
    add_log_seed(seeds, "unsynced-marker", 0, dir.path())?;
    fs::remove_file(dir.path().join("unsynced_after"))?;

    let (log, _) = Log::open(dir.path(), log_dir::config(0))?;
    log.purge_upto(12)?;
    drop(log);
    add_log_seed(seeds, "purged", 0, dir.path())?;

    // A torn last frame in the only segment.
    let dir = tempfile::tempdir()?;
    let (log, _) = Log::open(dir.path(), log_dir::config(0))?;
    log.append(&[batch(1, payload), batch(2, payload), batch(3, payload)])?;
    log.sync()?;
    drop(log);
    let segment = dir.path().join(FileKind::Segment(1).file_name());
    let len = fs::metadata(&segment)?.len();
    fs::OpenOptions::new()
        .write(true)
        .open(&segment)?
        .set_len(len - 7)?;
    add_log_seed(seeds, "torn-tail", 0, dir.path())?;

    // Config 2: an index entry per frame, 4 KiB segments; a log that starts at a high index.
    let dir = tempfile::tempdir()?;
    let (log, _) = Log::open(dir.path(), log_dir::config(2))?;
    for i in 1_000_000..1_000_040 {
        log.append(&[batch(i, payload)])?;
    }
    log.sync()?;
    drop(log);
    add_log_seed(seeds, "dense-index", 2, dir.path())?;
    Ok(())
}

fn entry(index: u64, payload: EntryPayload<Command, u64, Member>) -> Entry {
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

fn entry_codec_seeds(seeds: &mut Seeds) -> Result<()> {
    let records = vec![
        StoredRecord {
            partition_key: "user-17".into(),
            data: Bytes::from_static(b"{\"clicked\":true}"),
        },
        StoredRecord {
            partition_key: "k".into(),
            data: Bytes::new(),
        },
    ];
    let nodes: BTreeMap<u64, Member> = (1..=3)
        .map(|id| {
            let member = Member {
                addr: format!("127.0.0.1:710{id}"),
                incarnation: 0x5eed + id,
            };
            (id, member)
        })
        .collect();
    let membership = openraft::Membership::new(vec![[1u64, 2, 3].into_iter().collect()], nodes)?;
    let mut entries = vec![
        ("blank", EntryPayload::Blank),
        ("membership", EntryPayload::Membership(membership)),
        (
            "append",
            EntryPayload::Normal(Command::Append(RecordBatch {
                arrival_ms: 1_700_000_000_000,
                records: records.clone(),
                producer: None,
                encoded: None,
            })),
        ),
        (
            "append-idempotent",
            EntryPayload::Normal(Command::Append(RecordBatch {
                arrival_ms: 1_700_000_000_000,
                records,
                producer: Some(ProducerStamp {
                    id: 99,
                    sequence: 4,
                }),
                encoded: None,
            })),
        ),
        (
            "seal",
            EntryPayload::Normal(Command::Shard(ShardControl::Seal)),
        ),
        (
            "trim",
            EntryPayload::Normal(Command::Shard(ShardControl::Trim {
                index: 41,
                term: 3,
                leader_node: 2,
            })),
        ),
    ];
    // Metadata commands by their JSON, so a renamed field only drops a seed.
    for (name, json) in [
        (
            "metadata-init",
            r#"{"InitCluster":{"iterator_key":[1,2,3,4]}}"#,
        ),
        ("metadata-active", r#"{"MarkStreamActive":{"stream_id":7}}"#),
    ] {
        match serde_json::from_str(json) {
            Ok(command) => entries.push((name, EntryPayload::Normal(Command::Metadata(command)))),
            Err(e) => eprintln!("skipping seed {name}: {e}"),
        }
    }
    for (name, payload) in entries {
        let batch = entry_codec::encode(&entry(42, payload))?;
        seeds.add("entry_codec", name, batch.payload.to_vec());
    }
    Ok(())
}

fn iterator_token(seeds: &mut Seeds) {
    let codec = IteratorCodec::new(
        ITERATOR_KEY.to_vec(),
        Duration::from_millis(ITERATOR_TTL_MS),
    );
    let position = IteratorPosition {
        stream_id: 7,
        shard_index: 3,
        log_index: 42,
        slot: 9,
        issued_at_ms: ITERATOR_NOW_MS - 1000,
    };
    let token = codec.encode(&position);
    seeds.add(
        "iterator_token",
        "token",
        [&[iterator_mode::TOKEN][..], token.as_bytes()].concat(),
    );
    let mut round_trip = vec![iterator_mode::ROUND_TRIP];
    round_trip.extend_from_slice(&position.stream_id.to_le_bytes());
    round_trip.extend_from_slice(&position.shard_index.to_le_bytes());
    round_trip.extend_from_slice(&position.log_index.to_le_bytes());
    round_trip.extend_from_slice(&position.slot.to_le_bytes());
    round_trip.extend_from_slice(&position.issued_at_ms.to_le_bytes());
    round_trip.extend_from_slice(&ITERATOR_NOW_MS.to_le_bytes());
    round_trip.extend_from_slice(&ITERATOR_TTL_MS.to_le_bytes());
    round_trip.extend_from_slice(&[10, 0, b'x']);
    seeds.add("iterator_token", "round-trip", round_trip);
    let mut body = vec![iterator_mode::SIGNED_BODY, 1];
    body.extend_from_slice(&position.stream_id.to_le_bytes());
    body.extend_from_slice(&position.shard_index.to_le_bytes());
    body.extend_from_slice(&position.log_index.to_le_bytes());
    body.extend_from_slice(&position.slot.to_le_bytes());
    body.extend_from_slice(&position.issued_at_ms.to_le_bytes());
    seeds.add("iterator_token", "signed-body", body);
}

fn node_config(seeds: &mut Seeds) {
    // What `tributary dev` passes node 2 as flags, as a file.
    seeds.add(
        "node_config",
        "dev-node-2",
        br#"node_id = 2
listen = "127.0.0.1:7102"
data_dir = "./.tributary/dev/node-2"
az = "az-b"
peers = "1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103"
metrics_listen = "127.0.0.1:9102"
"#
        .to_vec(),
    );
    seeds.add(
        "node_config",
        "every-field",
        br#"node_id = 1
listen = "0.0.0.0:7101"
data_dir = "/data"
az = "az-a"
peers = "1=node1:7101,2=node2:7101,3=node3:7101"
rebalance_interval_ms = 1000
quiesce_after_ms = 2000
metrics_listen = "[::1]:9101"
iterator_ttl_ms = 300000
max_shards = 1024
max_streams = 1024
retention_check_interval_ms = 10000
max_consumers_per_stream = 20
subscription_max_ms = 300000
shard_quotas = true
shard_write_bytes_per_sec = 1048576
shard_write_records_per_sec = 1000
shard_read_bytes_per_sec = 2097152
shard_read_calls_per_sec = 5
heartbeat_interval_ms = 250
election_timeout_min_ms = 750
election_timeout_max_ms = 1500
segment_max_bytes = 67108864
segment_max_age_secs = 3600
"#
        .to_vec(),
    );
    seeds.add(
        "node_config",
        "single-node",
        b"node_id = 1\naz = \"az-a\"\n".to_vec(),
    );
}
