//! Records put through the gRPC API come back complete, in per-shard order, across a
//! SIGKILL and restart.

use std::collections::{BTreeMap, HashMap};

use tributary_proto::v1 as pb;
use tributary_tests::NodeProcess;

const RECORDS: usize = 10_000;
const SHARDS: u32 = 4;

/// Puts RECORDS records (batches of 500) with 97 partition keys; returns, per shard, the
/// acknowledged (sequence number, data) in acknowledgement order.
async fn put_all(node: &NodeProcess, stream: &str) -> BTreeMap<String, Vec<(u128, Vec<u8>)>> {
    let mut data = node.data().await;
    let mut acked: BTreeMap<String, Vec<(u128, Vec<u8>)>> = BTreeMap::new();
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(500) {
        let records: Vec<pb::PutRecordsEntry> = chunk
            .iter()
            .map(|i| pb::PutRecordsEntry {
                partition_key: format!("key-{}", i % 97),
                data: format!("{i}").into_bytes().into(),
                explicit_hash_key: None,
            })
            .collect();
        let response = data
            .put_records(pb::PutRecordsRequest {
                stream_name: stream.into(),
                producer_id: 0,
                producer_sequence: 0,
                records: records.clone(),
            })
            .await
            .expect("put records")
            .into_inner();
        assert_eq!(
            response.failed_record_count,
            0,
            "{:?}",
            response.records.iter().find(|r| r.error_code != 0)
        );
        for (entry, result) in records.iter().zip(response.records) {
            let seq: u128 = result
                .sequence_number
                .parse()
                .expect("decimal sequence number");
            acked
                .entry(result.shard_id)
                .or_default()
                .push((seq, entry.data.to_vec()));
        }
    }
    acked
}

async fn assert_reads_back(
    node: &NodeProcess,
    stream: &str,
    acked: &BTreeMap<String, Vec<(u128, Vec<u8>)>>,
) {
    let shards = node.shards(stream).await;
    assert_eq!(shards.len(), SHARDS as usize);
    let mut total = 0;
    let mut per_key_last: HashMap<String, usize> = HashMap::new();
    for shard in &shards {
        let records = node
            .read_shard(stream, &shard.shard_id)
            .await
            .expect("read shard");
        let got: Vec<(u128, Vec<u8>)> = records
            .iter()
            .map(|r| (r.sequence_number.parse().expect("seq"), r.data.to_vec()))
            .collect();
        let expected = acked.get(&shard.shard_id).cloned().unwrap_or_default();
        assert_eq!(
            got.len(),
            expected.len(),
            "shard {} record count",
            shard.shard_id
        );
        assert_eq!(
            got, expected,
            "shard {} must return exactly the acknowledged records in order",
            shard.shard_id
        );
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "sequence numbers strictly increase"
        );
        for record in &records {
            let value: usize = String::from_utf8_lossy(&record.data)
                .parse()
                .expect("numeric data");
            if let Some(previous) = per_key_last.insert(record.partition_key.clone(), value) {
                assert!(
                    previous < value,
                    "key {} out of order: {previous} then {value}",
                    record.partition_key
                );
            }
        }
        total += got.len();
    }
    assert_eq!(total, RECORDS);
}

#[tokio::test]
async fn ten_thousand_records_over_four_shards_read_back_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(&dir.path().join("node"), &[]).await;
    node.create_stream("orders", SHARDS).await;
    let acked = put_all(&node, "orders").await;
    assert_eq!(
        acked.len(),
        SHARDS as usize,
        "97 keys spread over every shard"
    );
    assert_reads_back(&node, "orders", &acked).await;
}

#[tokio::test]
async fn acknowledged_records_survive_sigkill_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = NodeProcess::start(&dir.path().join("node"), &[]).await;
    node.create_stream("orders", SHARDS).await;
    let acked = put_all(&node, "orders").await;
    node.kill();
    node.restart().await;
    node.wait_active("orders").await;
    assert_reads_back(&node, "orders", &acked).await;

    // The restarted node keeps appending above what it had.
    let after = node.put_one("orders", "key-1", b"after-restart").await;
    let before_max = acked[&after.shard_id]
        .iter()
        .map(|(s, _)| *s)
        .max()
        .expect("records");
    assert!(after.sequence_number.parse::<u128>().expect("seq") > before_max);
}

#[tokio::test]
async fn iterator_positions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(&dir.path().join("node"), &[]).await;
    node.create_stream("pos", 1).await;
    let mut data = node.data().await;
    let start = std::time::SystemTime::now();
    let mut seqs = Vec::new();
    for i in 0..5 {
        let r = data
            .put_record(pb::PutRecordRequest {
                stream_name: "pos".into(),
                partition_key: "k".into(),
                data: format!("r{i}").into_bytes().into(),
                explicit_hash_key: None,
                sequence_number_for_ordering: None,
            })
            .await
            .expect("put")
            .into_inner();
        seqs.push(r.sequence_number);
    }
    let shard_id = "shardId-000000000000".to_string();
    let read_from =
        |kind: pb::ShardIteratorType, seq: Option<String>, ts: Option<prost_types::Timestamp>| {
            let mut data = data.clone();
            let shard_id = shard_id.clone();
            async move {
                let it = data
                    .get_shard_iterator(pb::GetShardIteratorRequest {
                        stream_name: "pos".into(),
                        shard_id,
                        shard_iterator_type: kind as i32,
                        starting_sequence_number: seq,
                        timestamp: ts,
                    })
                    .await
                    .expect("iterator")
                    .into_inner()
                    .shard_iterator;
                let page = data
                    .get_records(pb::GetRecordsRequest {
                        shard_iterator: it,
                        limit: 0,
                        stream_name: Some("pos".into()),
                        wait_ms: None,
                    })
                    .await
                    .expect("get records")
                    .into_inner();
                page.records
                    .into_iter()
                    .map(|r| String::from_utf8_lossy(&r.data).to_string())
                    .collect::<Vec<_>>()
            }
        };
    assert_eq!(
        read_from(pb::ShardIteratorType::TrimHorizon, None, None).await,
        ["r0", "r1", "r2", "r3", "r4"]
    );
    assert_eq!(
        read_from(
            pb::ShardIteratorType::AtSequenceNumber,
            Some(seqs[2].clone()),
            None
        )
        .await,
        ["r2", "r3", "r4"]
    );
    assert_eq!(
        read_from(
            pb::ShardIteratorType::AfterSequenceNumber,
            Some(seqs[2].clone()),
            None
        )
        .await,
        ["r3", "r4"]
    );
    assert!(read_from(pb::ShardIteratorType::Latest, None, None)
        .await
        .is_empty());
    let since = start.duration_since(std::time::UNIX_EPOCH).expect("clock");
    let ts = prost_types::Timestamp {
        seconds: since.as_secs() as i64 - 1,
        nanos: 0,
    };
    assert_eq!(
        read_from(pb::ShardIteratorType::AtTimestamp, None, Some(ts))
            .await
            .len(),
        5
    );

    // GetRecords honours the limit and says how far behind the page is.
    let it = data
        .get_shard_iterator(pb::GetShardIteratorRequest {
            stream_name: "pos".into(),
            shard_id: shard_id.clone(),
            shard_iterator_type: pb::ShardIteratorType::TrimHorizon as i32,
            ..Default::default()
        })
        .await
        .expect("iterator")
        .into_inner()
        .shard_iterator;
    let page = data
        .get_records(pb::GetRecordsRequest {
            shard_iterator: it,
            limit: 2,
            stream_name: None,
            wait_ms: None,
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(page.records.len(), 2);
    let rest = data
        .get_records(pb::GetRecordsRequest {
            shard_iterator: page.next_shard_iterator.expect("next"),
            limit: 0,
            stream_name: None,
            wait_ms: None,
        })
        .await
        .expect("rest")
        .into_inner();
    assert_eq!(rest.records.len(), 3);
    assert_eq!(
        rest.millis_behind_latest, 0,
        "a page that reaches the tip is 0 ms behind"
    );
}

#[tokio::test]
async fn sigterm_stops_the_node_cleanly_and_keeps_the_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = NodeProcess::start(&dir.path().join("node"), &[]).await;
    node.create_stream("term", 1).await;
    let put = node.put_one("term", "k", b"kept").await;
    // A client that keeps its connection open must not keep the node alive after SIGTERM.
    let _held_connection = node.data().await;
    node.terminate(); // panics unless the process exits within 20 s of SIGTERM
    assert!(node.log().contains("shutting down"), "{}", node.log());
    node.restart().await;
    let records = node.read_shard("term", &put.shard_id).await.expect("read");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].sequence_number, put.sequence_number);
    assert_eq!(&records[0].data[..], b"kept");
}
