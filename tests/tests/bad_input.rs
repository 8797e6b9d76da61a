//! Every kind of bad input gets a clear error naming the limit and a stable code, and
//! changes nothing.

use tributary_proto::v1 as pb;
use tributary_tests::{error_code, NodeProcess};

fn entry(key: &str, data: Vec<u8>) -> pb::PutRecordsEntry {
    pb::PutRecordsEntry {
        partition_key: key.into(),
        data: data.into(),
        explicit_hash_key: None,
    }
}

async fn record_count(node: &NodeProcess, stream: &str) -> usize {
    let mut total = 0;
    for shard in node.shards(stream).await {
        total += node
            .read_shard(stream, &shard.shard_id)
            .await
            .expect("read")
            .len();
    }
    total
}

#[tokio::test]
async fn bad_input_is_rejected_with_stable_codes_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(&dir.path().join("node"), &["--max-shards", "8"]).await;
    node.create_stream("good", 2).await;
    let mut streams = node.streams().await;
    let mut data = node.data().await;

    // Stream creation.
    let create = |name: &str, shards: u32| pb::CreateStreamRequest {
        stream_name: name.into(),
        shard_count: shards,
        ..Default::default()
    };
    let cases = [
        (create("bad name", 1), "InvalidArgument", "[a-zA-Z0-9_.-]"),
        (create("", 1), "InvalidArgument", "empty"),
        (
            create(&"x".repeat(129), 1),
            "InvalidArgument",
            "limit is 128",
        ),
        (create("zero", 0), "InvalidArgument", "shard count is 0"),
        (create("huge", 9), "LimitExceeded", "shard limit of 8"),
        (create("good", 1), "ResourceInUse", "already exists"),
        (
            pb::CreateStreamRequest {
                retention_seconds: 365 * 24 * 3600 + 1,
                ..create("r", 1)
            },
            "InvalidArgument",
            "365 days",
        ),
        (
            pb::CreateStreamRequest {
                retention_seconds: 30,
                ..create("r", 1)
            },
            "InvalidArgument",
            "60 seconds (1 minute)",
        ),
        (
            pb::CreateStreamRequest {
                tags: [("".to_string(), "v".to_string())].into(),
                ..create("t", 1)
            },
            "InvalidArgument",
            "tag key",
        ),
        (
            pb::CreateStreamRequest {
                max_record_bytes: 11 << 20,
                ..create("m", 1)
            },
            "InvalidArgument",
            "10 MiB",
        ),
    ];
    for (request, code, needle) in cases {
        let name = request.stream_name.clone();
        let status = streams.create_stream(request).await.expect_err(&name);
        assert_eq!(
            error_code(&status),
            code,
            "create {name:?}: {}",
            status.message()
        );
        assert!(
            status.message().contains(needle),
            "create {name:?}: {:?} lacks {needle:?}",
            status.message()
        );
    }
    // The shard limit counts existing shards: 2 used, 7 more would make 9 > 8.
    let status = streams
        .create_stream(create("more", 7))
        .await
        .expect_err("over the limit");
    assert_eq!(error_code(&status), "LimitExceeded", "{}", status.message());
    let names: Vec<String> = streams
        .list_streams(pb::ListStreamsRequest {})
        .await
        .expect("list")
        .into_inner()
        .streams
        .into_iter()
        .map(|s| s.stream_name)
        .collect();
    assert_eq!(names, ["good"], "no rejected stream was created");

    // Unknown stream.
    for status in [
        streams
            .describe_stream(pb::DescribeStreamRequest {
                stream_name: "nope".into(),
            })
            .await
            .expect_err("unknown"),
        streams
            .delete_stream(pb::DeleteStreamRequest {
                stream_name: "nope".into(),
            })
            .await
            .expect_err("unknown"),
        data.put_records(pb::PutRecordsRequest {
            stream_name: "nope".into(),
            producer_id: 0,
            producer_sequence: 0,
            records: vec![entry("k", b"x".to_vec())],
        })
        .await
        .expect_err("unknown"),
    ] {
        assert_eq!(
            error_code(&status),
            "ResourceNotFound",
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("stream nope does not exist"),
            "{}",
            status.message()
        );
    }

    // Records.
    let put = |records: Vec<pb::PutRecordsEntry>| pb::PutRecordsRequest {
        stream_name: "good".into(),
        producer_id: 0,
        producer_sequence: 0,
        records,
    };
    let hash = |h: &str| pb::PutRecordsEntry {
        explicit_hash_key: Some(h.into()),
        ..entry("k", b"x".to_vec())
    };
    let cases = [
        (
            put(vec![
                entry("ok", b"fine".to_vec()),
                entry("", b"x".to_vec()),
            ]),
            "record 1: partition key is empty",
        ),
        (
            put(vec![entry(&"k".repeat(257), b"x".to_vec())]),
            "partition key is 257 characters; the limit is 256",
        ),
        (
            put(vec![entry("k", vec![0; (1 << 20) + 1])]),
            "record data is 1048577 bytes; this stream's limit is 1048576 bytes",
        ),
        (
            put((0..501).map(|_| entry("k", b"x".to_vec())).collect()),
            "PutRecords has 501 records; the limit is 500",
        ),
        (
            put((0..6).map(|_| entry("k", vec![0; 1 << 20])).collect()),
            "the limit is 5242880 bytes (5 MiB)",
        ),
        (
            put(vec![hash("-5")]),
            "explicit hash key \"-5\" is not a decimal integer",
        ),
        (
            put(vec![hash("340282366920938463463374607431768211456")]),
            "above the largest hash key",
        ),
        (put(vec![]), "PutRecords has no records"),
    ];
    for (request, needle) in cases {
        let status = data.put_records(request).await.expect_err(needle);
        assert_eq!(
            error_code(&status),
            "InvalidArgument",
            "{}",
            status.message()
        );
        assert!(
            status.message().contains(needle),
            "{:?} lacks {needle:?}",
            status.message()
        );
    }
    let status = data
        .put_record(pb::PutRecordRequest {
            stream_name: "good".into(),
            partition_key: "".into(),
            data: b"x".to_vec().into(),
            explicit_hash_key: None,
            sequence_number_for_ordering: None,
        })
        .await
        .expect_err("empty key");
    assert_eq!(error_code(&status), "InvalidArgument");
    assert_eq!(
        status.message(),
        "partition key is empty; it must be 1-256 characters"
    );
    assert_eq!(
        record_count(&node, "good").await,
        0,
        "no rejected record was written"
    );

    // Iterators and sequence numbers.
    let iterator =
        |kind: pb::ShardIteratorType, shard: &str, seq: Option<&str>| pb::GetShardIteratorRequest {
            stream_name: "good".into(),
            shard_id: shard.into(),
            shard_iterator_type: kind as i32,
            starting_sequence_number: seq.map(str::to_string),
            timestamp: None,
        };
    let seq_of_shard_1 = data
        .put_record(pb::PutRecordRequest {
            stream_name: "good".into(),
            partition_key: "k".into(),
            data: b"x".to_vec().into(),
            explicit_hash_key: Some(u128::MAX.to_string()),
            sequence_number_for_ordering: None,
        })
        .await
        .expect("put to the last shard")
        .into_inner();
    assert_eq!(seq_of_shard_1.shard_id, "shardId-000000000001");
    let cases = [
        (
            iterator(
                pb::ShardIteratorType::AtSequenceNumber,
                "shardId-000000000000",
                Some("12ab"),
            ),
            "InvalidArgument",
            "not a valid sequence number",
        ),
        (
            iterator(
                pb::ShardIteratorType::AtSequenceNumber,
                "shardId-000000000000",
                None,
            ),
            "InvalidArgument",
            "needs starting_sequence_number",
        ),
        (
            iterator(
                pb::ShardIteratorType::AfterSequenceNumber,
                "shardId-000000000000",
                Some(&seq_of_shard_1.sequence_number),
            ),
            "InvalidArgument",
            "belongs to shardId-000000000001",
        ),
        (
            iterator(pb::ShardIteratorType::TrimHorizon, "shard-0", None),
            "InvalidArgument",
            "shard id \"shard-0\" is malformed",
        ),
        (
            iterator(
                pb::ShardIteratorType::TrimHorizon,
                "shardId-000000000009",
                None,
            ),
            "ResourceNotFound",
            "does not exist",
        ),
        (
            iterator(
                pb::ShardIteratorType::Unspecified,
                "shardId-000000000000",
                None,
            ),
            "InvalidArgument",
            "shard_iterator_type must be",
        ),
        (
            pb::GetShardIteratorRequest {
                timestamp: Some(prost_types::Timestamp {
                    seconds: i64::from(u32::MAX),
                    nanos: 0,
                }),
                ..iterator(
                    pb::ShardIteratorType::AtTimestamp,
                    "shardId-000000000000",
                    None,
                )
            },
            "InvalidArgument",
            "in the future",
        ),
    ];
    for (request, code, needle) in cases {
        let status = data.get_shard_iterator(request).await.expect_err(needle);
        assert_eq!(error_code(&status), code, "{}", status.message());
        assert!(
            status.message().contains(needle),
            "{:?} lacks {needle:?}",
            status.message()
        );
    }

    // An iterator of another stream, a forged iterator, and a bad limit.
    node.create_stream("other", 1).await;
    let other_iterator = data
        .get_shard_iterator(pb::GetShardIteratorRequest {
            stream_name: "other".into(),
            shard_id: "shardId-000000000000".into(),
            shard_iterator_type: pb::ShardIteratorType::TrimHorizon as i32,
            ..Default::default()
        })
        .await
        .expect("iterator")
        .into_inner()
        .shard_iterator;
    let status = data
        .get_records(pb::GetRecordsRequest {
            shard_iterator: other_iterator.clone(),
            limit: 0,
            stream_name: Some("good".into()),
            wait_ms: None,
        })
        .await
        .expect_err("iterator of another stream");
    assert_eq!(error_code(&status), "InvalidArgument");
    assert!(
        status
            .message()
            .contains("belongs to stream other, not good"),
        "{}",
        status.message()
    );
    let mut forged = other_iterator.clone().into_bytes();
    let last = forged.len() - 3;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let status = data
        .get_records(pb::GetRecordsRequest {
            shard_iterator: String::from_utf8(forged).expect("ascii"),
            limit: 0,
            stream_name: None,
            wait_ms: None,
        })
        .await
        .expect_err("forged");
    assert_eq!(error_code(&status), "InvalidArgument");
    assert!(
        status.message().contains("not issued by this cluster"),
        "{}",
        status.message()
    );
    let status = data
        .get_records(pb::GetRecordsRequest {
            shard_iterator: other_iterator.clone(),
            limit: 10_001,
            stream_name: None,
            wait_ms: None,
        })
        .await
        .expect_err("limit");
    assert_eq!(error_code(&status), "InvalidArgument");
    assert!(
        status.message().contains("at most 10000 records"),
        "{}",
        status.message()
    );
    let status = data
        .get_records(pb::GetRecordsRequest {
            shard_iterator: other_iterator,
            limit: 0,
            stream_name: None,
            wait_ms: Some(10_001),
        })
        .await
        .expect_err("wait");
    assert_eq!(error_code(&status), "InvalidArgument");
    assert!(
        status.message().contains("waits at most 10000 ms"),
        "{}",
        status.message()
    );

    assert_eq!(
        record_count(&node, "good").await,
        1,
        "only the one valid put was written"
    );
}

#[tokio::test]
async fn iterators_expire_after_the_configured_lifetime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(&dir.path().join("node"), &["--iterator-ttl-ms", "1000"]).await;
    node.create_stream("s", 1).await;
    let mut data = node.data().await;
    let iterator = data
        .get_shard_iterator(pb::GetShardIteratorRequest {
            stream_name: "s".into(),
            shard_id: "shardId-000000000000".into(),
            shard_iterator_type: pb::ShardIteratorType::TrimHorizon as i32,
            ..Default::default()
        })
        .await
        .expect("iterator")
        .into_inner()
        .shard_iterator;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let status = data
        .get_records(pb::GetRecordsRequest {
            shard_iterator: iterator,
            limit: 0,
            stream_name: None,
            wait_ms: None,
        })
        .await
        .expect_err("expired");
    assert_eq!(
        error_code(&status),
        "ExpiredIterator",
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn invalid_configuration_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "node_id = 1\nno_such_setting = 3\n").expect("write config");
    let output = std::process::Command::new(tributary_tests::binary("tributary"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run tributary");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no_such_setting"), "{stderr}");

    let output = std::process::Command::new(tributary_tests::binary("tributary"))
        .args(["serve", "--node-id", "0"])
        .output()
        .expect("run tributary");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("node id is 0"));

    for (args, needle) in [
        (
            &["--shard-quotas", "--shard-write-records-per-sec", "0"][..],
            "shard_write_records_per_sec is 0",
        ),
        (&["--max-streams", "0"][..], "max_streams is 0"),
        (
            &["--retention-check-interval-ms", "5"][..],
            "retention_check_interval_ms is 5",
        ),
        (
            &["--worker-threads", "0"][..],
            "worker threads must be between 1 and 1024, got 0",
        ),
        (
            &["--worker-threads", "2000"][..],
            "worker threads must be between 1 and 1024, got 2000",
        ),
        (
            &["--worker-threads", "two"][..],
            "'two' is not a whole number of threads",
        ),
        (
            &["--page-cache-keep-bytes", "16MiB"][..],
            "invalid value '16MiB' for '--page-cache-keep-bytes",
        ),
    ] {
        let output = std::process::Command::new(tributary_tests::binary("tributary"))
            .arg("serve")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path().join("never"))
            .output()
            .expect("run tributary");
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(
            !dir.path().join("never").exists(),
            "a refused config creates nothing"
        );
    }
}
