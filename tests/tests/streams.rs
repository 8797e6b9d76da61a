//! Kinesis stream semantics on real processes: resharding with lineage while writers run,
//! per-key order across reshards, retention (expiry, decrease, segment deletion, closed
//! shards dropping out), tags and the summary, and every bad input of these APIs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tributary_proto::v1 as pb;
use tributary_tests::{error_code, Cluster, NodeProcess, Remote};

/// One acknowledged record: (partition key, data, shard id, sequence number).
type Acked = (String, String, String, String);

/// Puts `records` with PutRecords, retrying failed entries (never more than one call in
/// flight, so each key's acknowledgement order is its put order). Returns them in
/// acknowledgement order.
async fn put_keyed(node: &Remote, stream: &str, records: Vec<(String, String)>) -> Vec<Acked> {
    let mut data = node.data().await;
    let mut pending = records;
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "records not acknowledged in 60 s"
        );
        let request = pb::PutRecordsRequest {
            stream_name: stream.into(),
            producer_id: 0,
            producer_sequence: 0,
            records: pending
                .iter()
                .map(|(key, value)| pb::PutRecordsEntry {
                    partition_key: key.clone(),
                    data: value.clone().into_bytes().into(),
                    explicit_hash_key: None,
                })
                .collect(),
        };
        let reply = match data.put_records(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                assert_eq!(error_code(&status), "Unavailable", "{status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut failed = Vec::new();
        for (entry, result) in pending.into_iter().zip(reply.records) {
            if result.error_code == pb::ErrorCode::Unspecified as i32 {
                acked.push((entry.0, entry.1, result.shard_id, result.sequence_number));
            } else {
                // Only retryable failures are expected while the cluster reshards.
                assert!(
                    result.error_code == pb::ErrorCode::Unavailable as i32,
                    "entry failed: {} {}",
                    result.error_code,
                    result.error_message
                );
                failed.push(entry);
            }
        }
        // Retried entries go after every entry acknowledged above, so put order and
        // acknowledgement order agree per key only if a failed key's later entries wait:
        // keep them together by retrying failed entries before anything new.
        pending = failed;
    }
    acked
}

/// Every record of a stream, parents drained before children: (shard id, records).
async fn read_in_lineage_order(node: &Remote, stream: &str) -> Vec<(String, Vec<pb::Record>)> {
    let shards = node.shards(stream).await;
    let listed: BTreeSet<String> = shards.iter().map(|s| s.shard_id.clone()).collect();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    while done.len() < shards.len() {
        let ready: Vec<&pb::Shard> = shards
            .iter()
            .filter(|s| !done.contains(&s.shard_id))
            .filter(|s| {
                s.parent_shard_id
                    .iter()
                    .chain(&s.adjacent_parent_shard_id)
                    .all(|p| done.contains(p) || !listed.contains(p))
            })
            .collect();
        assert!(!ready.is_empty(), "shard lineage has a cycle: {shards:#?}");
        for shard in ready {
            let records = match node.read_shard(stream, &shard.shard_id).await {
                Ok(records) => records,
                // Dropped by retention since the listing: nothing left to read.
                Err(status) if error_code(&status) == "ResourceNotFound" => Vec::new(),
                Err(status) => panic!("read {}: {status:?}", shard.shard_id),
            };
            out.push((shard.shard_id.clone(), records));
            done.insert(shard.shard_id.clone());
        }
    }
    out
}

/// Asserts every acknowledged record was read at its sequence number and each key's
/// acknowledged records come out in acknowledgement order. A record read that was not
/// acknowledged must be a copy of one that was (a retry after an unknown outcome).
fn assert_per_key_order(read: &[(String, Vec<pb::Record>)], acked: &[Acked]) {
    let acked_sequences: BTreeMap<&str, &str> = acked
        .iter()
        .map(|(_, data, _, sequence)| (sequence.as_str(), data.as_str()))
        .collect();
    let acked_data: BTreeSet<&str> = acked.iter().map(|(_, data, _, _)| data.as_str()).collect();
    let mut read_by_key: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (shard, records) in read {
        for record in records {
            let data = String::from_utf8(record.data.to_vec()).expect("utf8");
            assert!(
                seen.insert(record.sequence_number.clone()),
                "sequence number {} read twice",
                record.sequence_number
            );
            match acked_sequences.get(record.sequence_number.as_str()) {
                Some(expected) => assert_eq!(*expected, data, "{shard} {}", record.sequence_number),
                None => {
                    assert!(
                        acked_data.contains(data.as_str()),
                        "read {data}, never written"
                    );
                    continue;
                }
            }
            read_by_key
                .entry(record.partition_key.clone())
                .or_default()
                .push((shard.clone(), data));
        }
    }
    let mut acked_by_key: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (key, data, shard, sequence) in acked {
        assert!(
            seen.contains(sequence),
            "acknowledged {data} ({shard} {sequence}) was not read"
        );
        acked_by_key
            .entry(key.clone())
            .or_default()
            .push((shard.clone(), data.clone()));
    }
    assert_eq!(
        read_by_key.len(),
        acked_by_key.len(),
        "keys read and acknowledged differ"
    );
    for (key, expected) in &acked_by_key {
        assert_eq!(
            read_by_key.get(key),
            Some(expected),
            "key {key}: read order differs from acknowledgement order"
        );
    }
}

/// Writes batches of one record per key (`key-0` .. `key-{keys-1}`) to stream `demo`
/// through `node` until `stop` is set and at least `min_batches` were written; the task
/// returns what was acknowledged, in acknowledgement order.
fn spawn_keyed_writer(
    node: Remote,
    keys: usize,
    min_batches: usize,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<Vec<Acked>>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = stop.clone();
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut batch = 0;
        while batch < min_batches || !writing.load(std::sync::atomic::Ordering::SeqCst) {
            let records = (0..keys)
                .map(|i| (format!("key-{i}"), format!("{batch}-{i}")))
                .collect();
            acked.extend(put_keyed(&node, "demo", records).await);
            batch += 1;
        }
        acked
    });
    (stop, writer)
}

async fn wait_open_shards(node: &Remote, stream: &str, count: usize) {
    node.wait_active(stream).await;
    let open = node
        .shards(stream)
        .await
        .iter()
        .filter(|s| s.status == pb::ShardStatus::Open as i32)
        .count();
    assert_eq!(open, count, "open shards of {stream}");
}

async fn scale(node: &Remote, stream: &str, target: u32) {
    node.streams()
        .await
        .update_shard_count(pb::UpdateShardCountRequest {
            stream_name: stream.into(),
            target_shard_count: target,
        })
        .await
        .unwrap_or_else(|s| panic!("scale {stream} to {target}: {s:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_up_and_down_under_writes_keeps_every_keys_order() {
    let cluster = Cluster::start(&[]).await;
    let node = cluster.node(1).remote();
    node.create_stream("demo", 2).await;

    // A writer puts 100 keys' records in batches through node 2 while node 1 scales the
    // stream to 8 shards and back to 3.
    // Until both scales are done, and at least 20 batches.
    let (stop, writer) = spawn_keyed_writer(cluster.node(2).remote(), 100, 20);
    tokio::time::sleep(Duration::from_millis(300)).await;
    scale(&node, "demo", 8).await;
    wait_open_shards(&node, "demo", 8).await;
    scale(&node, "demo", 3).await;
    wait_open_shards(&node, "demo", 3).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = writer.await.expect("writer");
    assert!(
        acked.len() >= 2000 && acked.len() % 100 == 0,
        "{}",
        acked.len()
    );

    // Lineage: closed parents stay listed with their ending sequence numbers; children
    // name their parents; the open shards tile the hash key space evenly.
    let shards = node.shards("demo").await;
    let closed: Vec<&pb::Shard> = shards
        .iter()
        .filter(|s| s.status == pb::ShardStatus::Closed as i32)
        .collect();
    assert!(closed.len() >= 2 + 8, "{shards:#?}");
    for shard in &closed {
        assert!(shard.ending_sequence_number.is_some(), "{shard:?}");
    }
    for shard in shards.iter().filter(|s| s.parent_shard_id.is_some()) {
        let parent = shard.parent_shard_id.as_ref().expect("parent");
        assert!(
            shards.iter().any(|s| &s.shard_id == parent),
            "{parent} listed"
        );
    }
    let mut open: Vec<(u128, u128)> = shards
        .iter()
        .filter(|s| s.status == pb::ShardStatus::Open as i32)
        .map(|s| {
            (
                s.starting_hash_key.parse().expect("hash"),
                s.ending_hash_key.parse().expect("hash"),
            )
        })
        .collect();
    open.sort();
    assert_eq!(open.first().map(|r| r.0), Some(0));
    assert_eq!(open.last().map(|r| r.1), Some(u128::MAX));
    for pair in open.windows(2) {
        assert_eq!(
            pair[0].1 + 1,
            pair[1].0,
            "open shards leave a gap or overlap"
        );
    }

    // Every node reads the same records, each key in put order across every reshard.
    for id in 1..=3 {
        let read = read_in_lineage_order(&cluster.node(id).remote(), "demo").await;
        assert_per_key_order(&read, &acked);
    }

    // The end of a closed shard: no next iterator, and the children to read next.
    let parent = closed[0];
    let page = first_page(
        &node,
        "demo",
        &parent.shard_id,
        pb::ShardIteratorType::Latest,
    )
    .await;
    assert!(page.records.is_empty());
    assert_eq!(page.next_shard_iterator, None);
    assert!(!page.child_shards.is_empty());
    for child in &page.child_shards {
        assert!(child.parent_shards.contains(&parent.shard_id), "{child:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_splits_and_merges_keep_per_key_order() {
    let seed: u64 = std::env::var("TRIBUTARY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (replay with TRIBUTARY_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]).await;
    let remote = node.remote();
    remote.create_stream("prop", 2).await;
    let mut acked = Vec::new();
    let mut counter = 0;
    for _ in 0..12 {
        // Some puts with random keys...
        for _ in 0..rng.random_range(1..4) {
            let records = (0..rng.random_range(1..60))
                .map(|_| {
                    counter += 1;
                    (
                        format!("k{}", rng.random_range(0..40)),
                        format!("v{counter}"),
                    )
                })
                .collect();
            acked.extend(put_keyed(&remote, "prop", records).await);
        }
        // ...then a random split or merge of the open shards.
        let mut open: Vec<pb::Shard> = remote
            .shards("prop")
            .await
            .into_iter()
            .filter(|s| s.status == pb::ShardStatus::Open as i32)
            .collect();
        open.sort_by_key(|s| s.starting_hash_key.parse::<u128>().expect("hash"));
        let mut streams = remote.streams().await;
        if open.len() > 1 && rng.random_bool(0.4) {
            let i = rng.random_range(0..open.len() - 1);
            streams
                .merge_shards(pb::MergeShardsRequest {
                    stream_name: "prop".into(),
                    shard_to_merge: open[i].shard_id.clone(),
                    adjacent_shard_to_merge: open[i + 1].shard_id.clone(),
                })
                .await
                .expect("merge");
        } else {
            let shard = &open[rng.random_range(0..open.len())];
            let start: u128 = shard.starting_hash_key.parse().expect("hash");
            let end: u128 = shard.ending_hash_key.parse().expect("hash");
            let at = rng.random_range(start + 1..=end);
            streams
                .split_shard(pb::SplitShardRequest {
                    stream_name: "prop".into(),
                    shard_to_split: shard.shard_id.clone(),
                    new_starting_hash_key: Some(at.to_string()),
                })
                .await
                .expect("split");
        }
        remote.wait_active("prop").await;
    }
    acked.extend(put_keyed(&remote, "prop", vec![("k1".into(), "last".into())]).await);
    let read = read_in_lineage_order(&remote, "prop").await;
    assert_per_key_order(&read, &acked);
}

/// Segment files of one shard group (directory named by its group id).
fn group_segments(data_dir: &std::path::Path, group: u64) -> Vec<std::path::PathBuf> {
    let dir = format!("{group:016x}");
    tributary_tests::shard_segment_files(data_dir)
        .into_iter()
        .filter(|f| {
            f.parent()
                .and_then(|p| p.file_name())
                .is_some_and(|n| n == dir.as_str())
        })
        .collect()
}

/// The first GetRecords page of a shard from an iterator of `kind` (AT_TIMESTAMP: 1970).
async fn first_page(
    remote: &Remote,
    stream: &str,
    shard_id: &str,
    kind: pb::ShardIteratorType,
) -> pb::GetRecordsResponse {
    let mut data = remote.data().await;
    let iterator = data
        .get_shard_iterator(pb::GetShardIteratorRequest {
            stream_name: stream.into(),
            shard_id: shard_id.into(),
            shard_iterator_type: kind as i32,
            timestamp: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("iterator")
        .into_inner()
        .shard_iterator;
    data.get_records(pb::GetRecordsRequest {
        shard_iterator: iterator,
        ..Default::default()
    })
    .await
    .expect("records")
    .into_inner()
}

/// The data of a page's records.
fn page_data(page: &pb::GetRecordsResponse) -> Vec<String> {
    page.records
        .iter()
        .map(|r| String::from_utf8(r.data.to_vec()).expect("utf8"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_hides_expired_records_frees_segments_and_drops_closed_shards() {
    // Three nodes: trims go through a quiesced leader (whose lease has lapsed) and every
    // replica snapshots and purges.
    let mut cluster = Cluster::start(&[
        "--retention-check-interval-ms",
        "200",
        "--segment-max-age-secs",
        "1",
    ])
    .await;
    let remote = cluster.node(1).remote();
    let mut streams = remote.streams().await;
    streams
        .create_stream(pb::CreateStreamRequest {
            stream_name: "short".into(),
            shard_count: 2,
            retention_seconds: 120,
            ..Default::default()
        })
        .await
        .expect("create");
    remote.wait_active("short").await;
    let old = put_keyed(
        &remote,
        "short",
        (0..50)
            .map(|i| (format!("k{i}"), format!("old-{i}")))
            .collect(),
    )
    .await;
    let open_shard = "shardId-000000000001";
    let old_in_open = old.iter().filter(|a| a.2 == open_shard).count();
    assert!(old_in_open > 0 && old_in_open < 50);
    // Shard 0 closes now holding its old records; shard 1 (group 2) stays open.
    streams
        .split_shard(pb::SplitShardRequest {
            stream_name: "short".into(),
            shard_to_split: "shardId-000000000000".into(),
            new_starting_hash_key: None,
        })
        .await
        .expect("split");
    remote.wait_active("short").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old_segments: Vec<Vec<std::path::PathBuf>> = cluster
        .nodes
        .iter()
        .map(|n| group_segments(&n.data_dir, 2))
        .collect();
    assert!(
        old_segments.iter().all(|s| !s.is_empty()),
        "{old_segments:?}"
    );

    tokio::time::sleep(Duration::from_secs(60)).await;
    let new = put_keyed(
        &remote,
        "short",
        (0..50)
            .map(|i| (format!("k{i}"), format!("new-{i}")))
            .collect(),
    )
    .await;
    let both = page_data(
        &first_page(
            &remote,
            "short",
            open_shard,
            pb::ShardIteratorType::TrimHorizon,
        )
        .await,
    );
    assert_eq!(
        both.len(),
        50,
        "within 120 s retention the open shard keeps old and new"
    );

    // A decrease to 1 minute hides the old records at once, in the open shard too, and
    // TRIM_HORIZON and AT_TIMESTAMP (before the horizon) start at the first new record.
    streams
        .update_stream_retention(pb::UpdateStreamRetentionRequest {
            stream_name: "short".into(),
            retention_seconds: 60,
        })
        .await
        .expect("decrease retention");
    let new_in_open: Vec<String> = new
        .iter()
        .filter(|a| a.2 == open_shard)
        .map(|a| a.1.clone())
        .collect();
    for kind in [
        pb::ShardIteratorType::TrimHorizon,
        pb::ShardIteratorType::AtTimestamp,
    ] {
        let page = page_data(&first_page(&remote, "short", open_shard, kind).await);
        assert_eq!(page, new_in_open, "{kind:?}");
    }
    let summary = streams
        .describe_stream_summary(pb::DescribeStreamSummaryRequest {
            stream_name: "short".into(),
        })
        .await
        .expect("summary")
        .into_inner()
        .summary
        .expect("summary");
    assert_eq!(summary.retention_seconds, 60);

    // The closed parent (every record expired) leaves the listing, and the open shard's
    // expired segments leave the disk (trim entry, snapshot at the trim point, purge).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let shards = remote.shards("short").await;
        let parent_gone = !shards.iter().any(|s| s.shard_id == "shardId-000000000000");
        let segments: Vec<Vec<std::path::PathBuf>> = cluster
            .nodes
            .iter()
            .map(|n| group_segments(&n.data_dir, 2))
            .collect();
        let purged = segments
            .iter()
            .zip(&old_segments)
            .all(|(now, before)| !now.contains(&before[0]));
        if parent_gone && purged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "parent gone {parent_gone}, old segment purged {purged}: {segments:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let read = read_in_lineage_order(&remote, "short").await;
    assert_per_key_order(&read, &new);

    // After a restart over the purged log the shard starts from its trim-point snapshot
    // and serves the same records and new writes.
    cluster.node_mut(1).restart().await;
    let remote = cluster.node(1).remote();
    let read = read_in_lineage_order(&remote, "short").await;
    assert_per_key_order(&read, &new);
    let mut all = new.clone();
    all.extend(
        put_keyed(
            &remote,
            "short",
            vec![("k1".into(), "after-restart".into())],
        )
        .await,
    );
    let read = read_in_lineage_order(&remote, "short").await;
    assert_per_key_order(&read, &all);
}

#[tokio::test]
async fn reshard_retention_and_tag_bad_input_is_rejected_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &["--max-shards", "6", "--max-streams", "2"]).await;
    let remote = node.remote();
    remote.create_stream("s", 2).await;
    let mut streams = remote.streams().await;
    let before = remote.shards("s").await;
    let unchanged = |after: &[pb::Shard]| {
        let ids = |shards: &[pb::Shard]| -> Vec<(String, i32)> {
            shards
                .iter()
                .map(|s| (s.shard_id.clone(), s.status))
                .collect()
        };
        assert_eq!(ids(after), ids(&before));
    };
    let expect = |result: Result<(), tonic::Status>, code: &str, needle: &str| {
        let status = result.expect_err(needle);
        assert_eq!(error_code(&status), code, "{needle}: {status:?}");
        assert!(
            status.message().contains(needle),
            "message {:?} should contain {needle:?}",
            status.message()
        );
    };
    let split = |shard: &str, at: Option<String>| pb::SplitShardRequest {
        stream_name: "s".into(),
        shard_to_split: shard.into(),
        new_starting_hash_key: at,
    };
    expect(
        streams
            .split_shard(split("shardId-000000000009", None))
            .await
            .map(drop),
        "ResourceNotFound",
        "does not exist",
    );
    expect(
        streams.split_shard(split("shard-9", None)).await.map(drop),
        "InvalidArgument",
        "malformed",
    );
    expect(
        streams
            .split_shard(split("shardId-000000000001", Some("0".into())))
            .await
            .map(drop),
        "InvalidArgument",
        "outside",
    );
    expect(
        streams
            .split_shard(split("shardId-000000000000", Some("12x".into())))
            .await
            .map(drop),
        "InvalidArgument",
        "new starting hash key",
    );
    let merge = |a: &str, b: &str| pb::MergeShardsRequest {
        stream_name: "s".into(),
        shard_to_merge: a.into(),
        adjacent_shard_to_merge: b.into(),
    };
    expect(
        streams
            .merge_shards(merge("shardId-000000000000", "shardId-000000000000"))
            .await
            .map(drop),
        "InvalidArgument",
        "itself",
    );
    let scale_to = |n: u32| pb::UpdateShardCountRequest {
        stream_name: "s".into(),
        target_shard_count: n,
    };
    expect(
        streams.update_shard_count(scale_to(0)).await.map(drop),
        "InvalidArgument",
        "between 1 and 6",
    );
    expect(
        streams.update_shard_count(scale_to(7)).await.map(drop),
        "LimitExceeded",
        "shard limit of 6",
    );
    expect(
        streams.update_shard_count(scale_to(2)).await.map(drop),
        "InvalidArgument",
        "already has 2 open shards",
    );
    expect(
        streams
            .update_stream_retention(pb::UpdateStreamRetentionRequest {
                stream_name: "s".into(),
                retention_seconds: 59,
            })
            .await
            .map(drop),
        "InvalidArgument",
        "60 seconds (1 minute)",
    );
    expect(
        streams
            .update_stream_retention(pb::UpdateStreamRetentionRequest {
                stream_name: "s".into(),
                retention_seconds: 365 * 24 * 3600 + 1,
            })
            .await
            .map(drop),
        "InvalidArgument",
        "365 days",
    );
    expect(
        streams
            .update_stream_retention(pb::UpdateStreamRetentionRequest {
                stream_name: "nope".into(),
                retention_seconds: 3600,
            })
            .await
            .map(drop),
        "ResourceNotFound",
        "does not exist",
    );
    let too_many: std::collections::HashMap<String, String> =
        (0..51).map(|i| (format!("k{i}"), "v".into())).collect();
    expect(
        streams
            .add_tags_to_stream(pb::AddTagsToStreamRequest {
                stream_name: "s".into(),
                tags: too_many,
            })
            .await
            .map(drop),
        "LimitExceeded",
        "limit is 50",
    );
    let long_key = std::iter::once(("k".repeat(129), "v".to_string())).collect();
    expect(
        streams
            .add_tags_to_stream(pb::AddTagsToStreamRequest {
                stream_name: "s".into(),
                tags: long_key,
            })
            .await
            .map(drop),
        "InvalidArgument",
        "1-128",
    );
    let tags = streams
        .list_tags_for_stream(pb::ListTagsForStreamRequest {
            stream_name: "s".into(),
        })
        .await
        .expect("tags")
        .into_inner()
        .tags;
    assert!(tags.is_empty(), "rejected tags changed nothing");
    unchanged(&remote.shards("s").await);

    // A second reshard while one runs gets ResourceInUse: the metadata unit test
    // `split_closes_the_parent_and_opens_two_children` checks it deterministically (here
    // a single node finishes a split within milliseconds).
    streams
        .split_shard(split("shardId-000000000000", None))
        .await
        .expect("split");
    remote.wait_active("s").await;

    // Tags, the summary and the stream limit.
    streams
        .add_tags_to_stream(pb::AddTagsToStreamRequest {
            stream_name: "s".into(),
            tags: [("team".to_string(), "payments".to_string())].into(),
        })
        .await
        .expect("tag");
    streams
        .remove_tags_from_stream(pb::RemoveTagsFromStreamRequest {
            stream_name: "s".into(),
            tag_keys: vec!["absent".into()],
        })
        .await
        .expect("untag an absent key");
    let tags = streams
        .list_tags_for_stream(pb::ListTagsForStreamRequest {
            stream_name: "s".into(),
        })
        .await
        .expect("tags")
        .into_inner()
        .tags;
    assert_eq!(tags.get("team").map(String::as_str), Some("payments"));
    let summary = streams
        .describe_stream_summary(pb::DescribeStreamSummaryRequest {
            stream_name: "s".into(),
        })
        .await
        .expect("summary")
        .into_inner()
        .summary
        .expect("summary");
    assert_eq!(summary.status, pb::StreamStatus::Active as i32);
    assert_eq!(summary.retention_seconds, 24 * 3600);
    assert!(summary.open_shard_count >= 3);
    remote.create_stream("t", 1).await;
    let status = streams
        .create_stream(pb::CreateStreamRequest {
            stream_name: "u".into(),
            shard_count: 1,
            ..Default::default()
        })
        .await
        .expect_err("third stream");
    assert_eq!(error_code(&status), "LimitExceeded");
    assert!(status.message().contains("stream limit is 2"), "{status:?}");

    // SequenceNumberForOrdering: a later record gets a greater number; a number from
    // the future or from a newer shard is refused.
    let mut data = remote.data().await;
    let put = |ordering: Option<String>| pb::PutRecordRequest {
        stream_name: "t".into(),
        partition_key: "k".into(),
        data: b"x".to_vec().into(),
        explicit_hash_key: None,
        sequence_number_for_ordering: ordering,
    };
    let first = data.put_record(put(None)).await.expect("put").into_inner();
    let second = data
        .put_record(put(Some(first.sequence_number.clone())))
        .await
        .expect("put ordered")
        .into_inner();
    let (a, b): (u128, u128) = (
        first.sequence_number.parse().expect("seq"),
        second.sequence_number.parse().expect("seq"),
    );
    assert!(b > a);
    // A number of another shard orders nothing for this key and is accepted.
    data.put_record(put(Some(((9u128 << 80) | (1 << 16)).to_string())))
        .await
        .expect("another shard's number");
    for (bad, needle) in [
        ("abc".to_string(), "not a valid sequence number"),
        ((b + (1 << 40)).to_string(), "above the newest"),
    ] {
        let status = data.put_record(put(Some(bad))).await.expect_err(needle);
        assert_eq!(error_code(&status), "InvalidArgument", "{status:?}");
        assert!(status.message().contains(needle), "{status:?}");
    }
}

#[tokio::test]
async fn shard_quotas_refuse_excess_throughput_and_write_nothing_for_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(
        dir.path(),
        &[
            "--shard-quotas",
            "--shard-write-records-per-sec",
            "20",
            "--shard-read-calls-per-sec",
            "2",
        ],
    )
    .await;
    let remote = node.remote();
    remote.create_stream("q", 1).await;
    // 100 single-record puts at once: the 20 records/s bucket admits about 21 (plus what
    // refills meanwhile) and refuses the rest, per entry.
    let records: Vec<(String, String)> = (0..100).map(|i| ("k".into(), format!("{i}"))).collect();
    let mut data = remote.data().await;
    let reply = data
        .put_records(pb::PutRecordsRequest {
            stream_name: "q".into(),
            producer_id: 0,
            producer_sequence: 0,
            records: records
                .iter()
                .map(|(key, value)| pb::PutRecordsEntry {
                    partition_key: key.clone(),
                    data: value.clone().into_bytes().into(),
                    explicit_hash_key: None,
                })
                .collect(),
        })
        .await
        .expect("one batch within quota")
        .into_inner();
    assert_eq!(
        reply.failed_record_count, 0,
        "the first batch is admitted whole"
    );
    let mut refused = 0;
    let mut admitted = 100;
    for i in 0..20 {
        let result = data
            .put_record(pb::PutRecordRequest {
                stream_name: "q".into(),
                partition_key: "k".into(),
                data: format!("more-{i}").into_bytes().into(),
                explicit_hash_key: None,
                sequence_number_for_ordering: None,
            })
            .await;
        match result {
            Ok(_) => admitted += 1,
            Err(status) => {
                assert_eq!(error_code(&status), "ProvisionedThroughputExceeded");
                assert!(status.message().contains("20 records/s"), "{status:?}");
                refused += 1;
            }
        }
    }
    assert!(
        refused >= 15,
        "the shard is in debt for ~4 s: {refused} refused"
    );
    // Refused writes changed nothing.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let read = remote
        .read_shard("q", "shardId-000000000000")
        .await
        .expect("read");
    assert_eq!(read.len(), admitted);

    // Reads: 2 GetRecords calls per second on this node (reading all took two).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let page = first_page(
        &remote,
        "q",
        "shardId-000000000000",
        pb::ShardIteratorType::Latest,
    )
    .await;
    let next = page.next_shard_iterator.expect("next");
    let again = |iterator: String| pb::GetRecordsRequest {
        shard_iterator: iterator,
        ..Default::default()
    };
    data.get_records(again(next.clone()))
        .await
        .expect("second call within the second");
    let status = data
        .get_records(again(next))
        .await
        .expect_err("third call within the second");
    assert_eq!(error_code(&status), "ProvisionedThroughputExceeded");
    assert!(
        status.message().contains("2 GetRecords calls/s"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known open bug: a child group initialized by the killed node alone can be left unable to elect (see docs/architecture.md, Replication); run with --run-ignored"]
async fn a_reshard_survives_the_metadata_leader_dying_mid_way() {
    let mut cluster = Cluster::start(&[]).await;
    let node = cluster.node(1).remote();
    node.create_stream("demo", 2).await;
    let leader = cluster.status(1).await.metadata_leader_id;
    let survivor = (1..=3).find(|id| *id != leader).expect("another node");
    let (stop, writer) = spawn_keyed_writer(cluster.node(survivor).remote(), 50, 10);
    // Scale 2 -> 3 (a split step, then merges) and kill the metadata leader right away:
    // the next leader carries the remaining steps out.
    scale(&cluster.node(survivor).remote(), "demo", 3).await;
    cluster.node_mut(leader).kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let summary = cluster
            .node(survivor)
            .streams()
            .await
            .describe_stream_summary(pb::DescribeStreamSummaryRequest {
                stream_name: "demo".into(),
            })
            .await
            .expect("summary")
            .into_inner()
            .summary
            .expect("summary");
        if summary.status == pb::StreamStatus::Active as i32 && summary.open_shard_count == 3 {
            break;
        }
        if Instant::now() > deadline {
            for id in (1..=3).filter(|id| *id != leader) {
                eprintln!("---- node {id} ----\n{}", cluster.node(id).log());
            }
            panic!("the reshard did not finish without the old metadata leader: {summary:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.node_mut(leader).restart().await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = writer.await.expect("writer");
    for id in 1..=3 {
        let read = read_in_lineage_order(&cluster.node(id).remote(), "demo").await;
        assert_per_key_order(&read, &acked);
    }
}
