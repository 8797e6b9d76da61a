//! Enhanced fan-out on real processes: consumer registration and its limits, records pushed
//! as they commit, resuming from a continuation, takeover, the subscription lifetime, the
//! end of a closed shard, and deregistration ending a subscription.

use std::time::{Duration, Instant};

use tributary_proto::v1 as pb;
use tributary_tests::{error_code, NodeProcess, Remote};

const SHARD: &str = "shardId-000000000000";

async fn register(
    remote: &Remote,
    stream: &str,
    consumer: &str,
) -> Result<pb::Consumer, tonic::Status> {
    remote
        .streams()
        .await
        .register_stream_consumer(pb::RegisterStreamConsumerRequest {
            stream_name: stream.into(),
            consumer_name: consumer.into(),
        })
        .await
        .map(|r| r.into_inner().consumer.expect("consumer"))
}

async fn subscribe(
    remote: &Remote,
    consumer: &str,
    kind: pb::ShardIteratorType,
    sequence: Option<String>,
) -> Result<tonic::Streaming<pb::SubscribeToShardEvent>, tonic::Status> {
    remote
        .data()
        .await
        .subscribe_to_shard(pb::SubscribeToShardRequest {
            stream_name: "fan".into(),
            consumer_name: consumer.into(),
            shard_id: SHARD.into(),
            starting_position: Some(pb::StartingPosition {
                r#type: kind as i32,
                sequence_number: sequence,
                timestamp: None,
            }),
        })
        .await
        .map(|r| r.into_inner())
}

/// Receives events until `count` records arrived (bounded): (records' data, last continuation).
async fn receive(
    events: &mut tonic::Streaming<pb::SubscribeToShardEvent>,
    count: usize,
) -> (Vec<String>, Option<String>) {
    let mut data = Vec::new();
    let mut continuation = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while data.len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} records pushed",
            data.len()
        );
        let event = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("an event within 10 s")
            .expect("no error")
            .expect("the subscription is open");
        data.extend(
            event
                .records
                .iter()
                .map(|r| String::from_utf8(r.data.to_vec()).expect("utf8")),
        );
        continuation = event.continuation_sequence_number;
    }
    (data, continuation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_pushed_to_registered_consumers_and_resume_after_the_continuation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(
        dir.path(),
        &[
            "--max-consumers-per-stream",
            "2",
            "--subscription-max-ms",
            "3000",
        ],
    )
    .await;
    let remote = node.remote();
    remote.create_stream("fan", 1).await;

    // Registration, its limit and bad names.
    let first = register(&remote, "fan", "app").await.expect("register");
    assert_eq!(first.status, pb::ConsumerStatus::ConsumerActive as i32);
    let dup = register(&remote, "fan", "app").await.expect_err("twice");
    assert_eq!(error_code(&dup), "ResourceInUse");
    register(&remote, "fan", "other")
        .await
        .expect("second consumer");
    let over = register(&remote, "fan", "third").await.expect_err("limit");
    assert_eq!(error_code(&over), "LimitExceeded");
    assert!(over.message().contains("limit is 2"), "{over:?}");
    let bad = register(&remote, "fan", "a b").await.expect_err("name");
    assert_eq!(error_code(&bad), "InvalidArgument");
    assert!(bad.message().contains("consumer name"), "{bad:?}");
    let missing = register(&remote, "nope", "app").await.expect_err("stream");
    assert_eq!(error_code(&missing), "ResourceNotFound");
    let mut streams = remote.streams().await;
    let listed = streams
        .list_stream_consumers(pb::ListStreamConsumersRequest {
            stream_name: "fan".into(),
        })
        .await
        .expect("list")
        .into_inner()
        .consumers;
    assert_eq!(listed.len(), 2);
    let summary = streams
        .describe_stream_summary(pb::DescribeStreamSummaryRequest {
            stream_name: "fan".into(),
        })
        .await
        .expect("summary")
        .into_inner()
        .summary
        .expect("summary");
    assert_eq!(summary.consumer_count, 2);
    let unknown = subscribe(&remote, "ghost", pb::ShardIteratorType::Latest, None)
        .await
        .expect_err("unregistered");
    assert_eq!(error_code(&unknown), "ResourceNotFound");

    // Pushed as they commit: subscribe at LATEST, then write.
    let mut events = subscribe(&remote, "app", pb::ShardIteratorType::Latest, None)
        .await
        .expect("subscribe");
    let opening = events
        .message()
        .await
        .expect("ok")
        .expect("an opening event");
    assert!(opening.records.is_empty());
    assert!(opening.continuation_sequence_number.is_some());
    for i in 0..50 {
        remote.put_acked("fan", "k", &format!("r{i}")).await;
    }
    let (data, continuation) = receive(&mut events, 50).await;
    let expected: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
    assert_eq!(data, expected);

    // The subscription ends after --subscription-max-ms; resuming AFTER the continuation
    // continues exactly where it stopped.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.message().await.expect("no error") {
            assert!(event.records.is_empty(), "nothing more was written");
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the subscription did not end after its lifetime"
    );
    for i in 50..80 {
        remote.put_acked("fan", "k", &format!("r{i}")).await;
    }
    let mut events = subscribe(
        &remote,
        "app",
        pb::ShardIteratorType::AfterSequenceNumber,
        continuation,
    )
    .await
    .expect("resubscribe");
    let (data, _) = receive(&mut events, 30).await;
    let expected: Vec<String> = (50..80).map(|i| format!("r{i}")).collect();
    assert_eq!(data, expected);

    // A second subscription of the same consumer and shard takes over.
    let mut second = subscribe(&remote, "app", pb::ShardIteratorType::Latest, None)
        .await
        .expect("second subscription");
    second.message().await.expect("ok").expect("opening");
    let status = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the first subscription ended without an error"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the first subscription ends at once");
    assert_eq!(error_code(&status), "ResourceInUse");

    // Deregistering ends the consumer's subscription.
    streams
        .deregister_stream_consumer(pb::DeregisterStreamConsumerRequest {
            stream_name: "fan".into(),
            consumer_name: "app".into(),
        })
        .await
        .expect("deregister");
    let status = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match second.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended without an error"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the subscription ends at once");
    assert_eq!(error_code(&status), "ResourceNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_ends_at_a_closed_shards_end_with_its_children() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]).await;
    let remote = node.remote();
    remote.create_stream("fan", 1).await;
    register(&remote, "fan", "app").await.expect("register");
    for i in 0..10 {
        remote.put_acked("fan", "k", &format!("r{i}")).await;
    }
    let mut events = subscribe(&remote, "app", pb::ShardIteratorType::TrimHorizon, None)
        .await
        .expect("subscribe");
    let (data, _) = receive(&mut events, 10).await;
    assert_eq!(data.len(), 10);
    remote
        .streams()
        .await
        .split_shard(pb::SplitShardRequest {
            stream_name: "fan".into(),
            shard_to_split: SHARD.into(),
            new_starting_hash_key: None,
        })
        .await
        .expect("split");
    let last = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = events
                .message()
                .await
                .expect("ok")
                .expect("open until the end");
            if event.continuation_sequence_number.is_none() {
                return event;
            }
        }
    })
    .await
    .expect("the shard end arrives");
    assert_eq!(last.child_shards.len(), 2);
    for child in &last.child_shards {
        assert_eq!(child.parent_shards, vec![SHARD.to_string()]);
    }
    assert!(
        events.message().await.expect("ok").is_none(),
        "then the stream ends"
    );
}

/// Waits (15 s at most) for a subscription to end with an error; returns it.
async fn ended_with(events: &mut tonic::Streaming<pb::SubscribeToShardEvent>) -> tonic::Status {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the subscription ended without an error"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the older subscription ends within 15 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_through_another_node_takes_over() {
    let cluster = tributary_tests::Cluster::start(&[]).await;
    let first_node = cluster.node(1).remote();
    first_node.create_stream("fan", 1).await;
    first_node.wait_active("fan").await;
    register(&first_node, "fan", "app").await.expect("register");

    let mut first = subscribe(&first_node, "app", pb::ShardIteratorType::Latest, None)
        .await
        .expect("subscription through node 1");
    first.message().await.expect("ok").expect("opening event");
    // The same consumer and shard through node 2: node 1's subscription ends.
    let second_node = cluster.node(2).remote();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut second = loop {
        // Node 2 may not have applied the registration yet.
        match subscribe(&second_node, "app", pb::ShardIteratorType::Latest, None).await {
            Ok(events) => break events,
            Err(status) if Instant::now() < deadline => {
                eprintln!("retrying: {status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("subscription through node 2: {status:?}"),
        }
    };
    second.message().await.expect("ok").expect("opening event");
    let status = tokio::time::timeout(Duration::from_secs(16), ended_with(&mut first))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "node 1's subscription did not end; node 1 log:\n{}\nnode 2 log:\n{}",
                cluster.node(1).log(),
                cluster.node(2).log()
            )
        });
    assert_eq!(error_code(&status), "ResourceInUse");
    assert!(status.message().contains("took over"), "{status:?}");

    // And back through node 3: node 2's ends, node 3's keeps receiving records.
    let third_node = cluster.node(3).remote();
    let mut third = subscribe(&third_node, "app", pb::ShardIteratorType::Latest, None)
        .await
        .expect("subscription through node 3");
    third.message().await.expect("ok").expect("opening event");
    assert_eq!(error_code(&ended_with(&mut second).await), "ResourceInUse");
    first_node.put_acked("fan", "k", "after-takeover").await;
    let (data, _) = receive(&mut third, 1).await;
    assert_eq!(data, vec!["after-takeover".to_string()]);
}
