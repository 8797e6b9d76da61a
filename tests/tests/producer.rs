//! Idempotent produce on real nodes: a retried request is stored once — after the original
//! was answered, after the shard's leader was killed, and after a restart — and the SDK's
//! batching Producer delivers every record exactly once, in key order, through a leader kill.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tributary_client::{Client, Producer, ProducerOptions};
use tributary_proto::v1 as pb;
use tributary_tests::{error_code, Cluster, NodeProcess};

fn entries(tag: &str, count: usize) -> Vec<pb::PutRecordsEntry> {
    (0..count)
        .map(|i| pb::PutRecordsEntry {
            partition_key: format!("key-{i}"),
            data: format!("{tag}-{i}").into_bytes().into(),
            explicit_hash_key: None,
        })
        .collect()
}

fn request(producer_sequence: u64, records: Vec<pb::PutRecordsEntry>) -> pb::PutRecordsRequest {
    pb::PutRecordsRequest {
        stream_name: "idem".into(),
        records,
        producer_id: 42,
        producer_sequence,
    }
}

fn sequence_numbers(response: &pb::PutRecordsResponse) -> Vec<String> {
    assert_eq!(
        response.failed_record_count,
        0,
        "{:?}",
        response.records.iter().find(|r| r.error_code != 0)
    );
    response
        .records
        .iter()
        .map(|r| r.sequence_number.clone())
        .collect()
}

/// Every stored value, with how many times it is stored.
async fn stored(node: &NodeProcess) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for records in node.remote().read_all("idem").await.values() {
        for (_, value) in records {
            *counts.entry(value.clone()).or_default() += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_stored_once_even_after_the_leader_dies() {
    let mut cluster = Cluster::start(&[]).await;
    cluster.node(1).remote().create_stream("idem", 1).await;
    cluster.node(1).remote().wait_active("idem").await;
    let mut via1 = cluster.node(1).data().await;
    let first = via1
        .put_records(request(1, entries("a", 10)))
        .await
        .expect("put")
        .into_inner();
    let original = sequence_numbers(&first);
    // The same request again (a client whose answer got lost): the original numbers, once.
    let again = via1
        .put_records(request(1, entries("a", 10)))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(sequence_numbers(&again), original);
    assert!(stored(cluster.node(1)).await.values().all(|n| *n == 1));

    // A retry with other records under the same number is refused and stores nothing.
    let mismatch = via1
        .put_records(request(1, entries("a", 3)))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(mismatch.failed_record_count, 3);
    assert_eq!(
        mismatch.records[0].error_code,
        pb::ErrorCode::InvalidArgument as i32,
        "{:?}",
        mismatch.records[0]
    );
    assert!(mismatch.records[0].error_message.contains("same records"));

    // Kill the shard's leader: the new leader knows request 1 from its replicated state.
    let leader = cluster.node(1).remote().shards("idem").await[0].leader_node_id;
    cluster.node_mut(leader).kill();
    let survivor = if leader == 1 { 2 } else { 1 };
    let mut via = cluster.node(survivor).data().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let response = via
            .put_records(request(1, entries("a", 10)))
            .await
            .expect("retry after failover")
            .into_inner();
        if response.failed_record_count == 0 {
            break response;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new leader: {:?}",
            response.records[0]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(sequence_numbers(&after), original);
    let next = via
        .put_records(request(2, entries("b", 5)))
        .await
        .expect("next request")
        .into_inner();
    sequence_numbers(&next);
    let counts = stored(cluster.node(survivor)).await;
    assert_eq!(counts.len(), 15, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");

    // The killed node restarts, catches up and, if it leads again, still knows both.
    cluster.node_mut(leader).restart().await;
    let mut via_restarted = cluster.node(leader).data().await;
    let replay = via_restarted
        .put_records(request(2, entries("b", 5)))
        .await
        .expect("replayed request")
        .into_inner();
    assert_eq!(sequence_numbers(&replay), sequence_numbers(&next));
}

#[tokio::test]
async fn the_producer_table_survives_a_restart_and_bad_numbers_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = NodeProcess::start(&dir.path().join("node"), &[]).await;
    node.remote().create_stream("idem", 1).await;
    node.remote().wait_active("idem").await;
    let mut data = node.data().await;
    // More requests than the table is persisted after (256): a restart reads the rest
    // back from the log.
    let mut answers = BTreeMap::new();
    for sequence in 1..=300u64 {
        let response = data
            .put_records(request(sequence, entries(&format!("r{sequence}"), 2)))
            .await
            .expect("put")
            .into_inner();
        answers.insert(sequence, sequence_numbers(&response));
    }
    node.restart().await;
    let mut data = node.data().await;
    for sequence in [296u64, 300] {
        let response = data
            .put_records(request(sequence, entries(&format!("r{sequence}"), 2)))
            .await
            .expect("replay")
            .into_inner();
        assert_eq!(
            sequence_numbers(&response),
            answers[&sequence],
            "request {sequence}"
        );
    }
    // Older than the window of 5 remembered requests: cannot be told apart, refused.
    let old = data
        .put_records(request(3, entries("r3", 2)))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(
        old.records[0].error_code,
        pb::ErrorCode::InvalidArgument as i32
    );
    assert!(
        old.records[0].error_message.contains("older than"),
        "{:?}",
        old.records[0]
    );
    let counts = stored(&node).await;
    assert_eq!(counts.len(), 600);
    assert!(counts.values().all(|n| *n == 1));

    // Half a producer stamp is malformed.
    for (producer_id, producer_sequence, says) in [
        (0, 5, "needs a producer_id"),
        (9, 0, "needs a producer_sequence"),
    ] {
        let status = data
            .put_records(pb::PutRecordsRequest {
                producer_id,
                producer_sequence,
                ..request(1, entries("x", 1))
            })
            .await
            .expect_err("refused");
        assert_eq!(error_code(&status), "InvalidArgument");
        assert!(status.message().contains(says), "{}", status.message());
    }
    assert_eq!(stored(&node).await.len(), 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_delivers_every_record_once_in_key_order_through_a_leader_kill() {
    let mut cluster = Cluster::start(&[]).await;
    cluster.node(1).remote().create_stream("idem", 4).await;
    cluster.node(1).remote().wait_active("idem").await;
    let client = Client::connect(&cluster.node(1).endpoint())
        .await
        .expect("connect");
    let producer = Producer::new(&client, ProducerOptions::default());
    let shards = cluster.node(1).remote().shards("idem").await;
    // A node other than the one the producer talks to, leading at least one shard.
    let victim = shards
        .iter()
        .map(|s| s.leader_node_id)
        .find(|leader| *leader != 1)
        .unwrap_or(2);

    let total = 6_000;
    let mut deliveries = Vec::with_capacity(total);
    for i in 0..total {
        if i == total / 3 {
            cluster.node_mut(victim).kill();
        }
        let key = format!("key-{}", i % 60);
        let delivery = producer
            .send("idem", &key, format!("{key}:{i}"))
            .await
            .expect("queued");
        deliveries.push(delivery);
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut acked = HashSet::new();
    for delivery in deliveries {
        let receipt = delivery.await.expect("every record is acknowledged");
        acked.insert(receipt.sequence_number);
    }
    assert_eq!(
        acked.len(),
        total,
        "each record got its own sequence number"
    );
    let metrics = producer.metrics();
    assert_eq!(metrics.records_acknowledged, total as u64);
    assert_eq!(metrics.buffered_bytes, 0);
    eprintln!("producer metrics through the leader kill: {metrics:?}");

    // Read back through the producer's node: every value once, each key in send order.
    let read = cluster.node(1).remote().read_all("idem").await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut last_of_key: HashMap<String, usize> = HashMap::new();
    for records in read.values() {
        for (_, value) in records {
            *seen.entry(value.clone()).or_default() += 1;
            let (key, i) = value.split_once(':').expect("key:i");
            let i: usize = i.parse().expect("number");
            if let Some(previous) = last_of_key.insert(key.to_owned(), i) {
                assert!(i > previous, "{key}: {i} stored after {previous}");
            }
        }
    }
    assert_eq!(seen.len(), total, "every record stored");
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "stored more than once: {duplicated:?}"
    );
}
