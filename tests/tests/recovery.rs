//! Crash recovery on a real node: a torn final frame is truncated with every acknowledged
//! record intact; a flipped byte in a sealed segment is reported as corruption, never
//! returned as data.

use std::io::Write;

use tributary_proto::v1 as pb;
use tributary_tests::{error_code, shard_segment_files, NodeProcess};

async fn put_numbered(node: &NodeProcess, stream: &str, count: usize, size: usize) -> Vec<String> {
    let mut data = node.data().await;
    let mut seqs = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(10) {
        let records = chunk
            .iter()
            .map(|i| pb::PutRecordsEntry {
                partition_key: format!("k{i}"),
                data: pattern(*i, size).into(),
                explicit_hash_key: None,
            })
            .collect();
        let response = data
            .put_records(pb::PutRecordsRequest {
                stream_name: stream.into(),
                producer_id: 0,
                producer_sequence: 0,
                records,
            })
            .await
            .expect("put")
            .into_inner();
        assert_eq!(response.failed_record_count, 0);
        seqs.extend(response.records.into_iter().map(|r| r.sequence_number));
    }
    seqs
}

/// Record `i`'s bytes: its number, then filler, so any corruption is visible.
fn pattern(i: usize, size: usize) -> Vec<u8> {
    let mut data = format!("{i}:").into_bytes();
    data.resize(size.max(data.len()), b'a' + (i % 26) as u8);
    data
}

#[tokio::test]
async fn torn_final_frame_is_truncated_and_acknowledged_records_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = NodeProcess::start(&dir.path().join("node"), &[]).await;
    node.create_stream("torn", 2).await;
    let seqs = put_numbered(&node, "torn", 200, 100).await;
    node.kill();

    // A crash mid-write: each shard's active segment ends with a frame whose header claims
    // more bytes than were written.
    let segments = shard_segment_files(&node.data_dir);
    assert!(!segments.is_empty(), "the shard groups have segment files");
    for path in &segments {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .expect("open segment");
        file.write_all(&4096u32.to_le_bytes()).expect("write");
        file.write_all(&[0x5a; 4]).expect("write");
        file.write_all(b"partial frame").expect("write");
    }

    node.restart().await;
    node.wait_active("torn").await;
    let mut read = Vec::new();
    for shard in node.shards("torn").await {
        read.extend(
            node.read_shard("torn", &shard.shard_id)
                .await
                .expect("read after recovery"),
        );
    }
    assert_eq!(read.len(), 200, "every acknowledged record is intact");
    let mut got: Vec<String> = read.iter().map(|r| r.sequence_number.clone()).collect();
    let mut want = seqs.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    for record in &read {
        let number: usize = String::from_utf8_lossy(&record.data)
            .split(':')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("numbered");
        assert_eq!(record.data.to_vec(), pattern(number, 100));
    }
    assert!(
        node.log().contains("torn") || node.log().contains("truncat"),
        "recovery reports the truncation:\n{}",
        node.log()
    );

    // And the shard takes new writes after the truncated tail.
    put_numbered(&node, "torn", 10, 100).await;
}

#[tokio::test]
async fn flipped_byte_in_a_sealed_segment_is_reported_not_returned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = NodeProcess::start(
        &dir.path().join("node"),
        &["--segment-max-bytes", "1048576"],
    )
    .await;
    node.create_stream("flip", 1).await;
    // 40 records of 100 KiB: about 4 MiB, so several sealed 1 MiB segments.
    put_numbered(&node, "flip", 40, 100 * 1024).await;
    node.kill();

    let segments = shard_segment_files(&node.data_dir);
    assert!(
        segments.len() >= 3,
        "expected several segments, got {segments:?}"
    );
    let sealed = &segments[0];
    let mut bytes = std::fs::read(sealed).expect("read segment");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(sealed, &bytes).expect("write segment");

    node.restart().await;
    node.wait_active("flip").await;
    let outcome = node.read_shard("flip", "shardId-000000000000").await;
    match outcome {
        Err(status) => {
            assert_eq!(error_code(&status), "DataCorruption", "{status:?}");
            assert!(
                status.message().contains("checksum"),
                "{}",
                status.message()
            );
        }
        Ok(records) => panic!("corrupt data must not be read as {} records", records.len()),
    }
}
