//! The Prometheus endpoint of a real node: series exist and move as records flow.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tributary_client::{Client, StartingPosition};
use tributary_tests::{free_addr, NodeProcess};

/// `GET path` over plain HTTP/1.1; returns (status line, body).
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// Sample values by series (name plus labels), comments skipped.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("series value");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// Sum of every series of metric `name`.
fn total(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| series.as_str() == name || series.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_records_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = free_addr();
    let node = NodeProcess::start(
        &dir.path().join("node"),
        &["--metrics-listen", &metrics.to_string()],
    )
    .await;
    node.remote().create_stream("watched", 2).await;
    node.remote().wait_active("watched").await;

    let (status, body) = http_get(metrics, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let before = samples(&body);
    for name in [
        "tributary_put_latency_seconds_count",
        "tributary_fsync_latency_seconds_count",
        "tributary_shard_segments",
        "tributary_shard_disk_bytes",
        "tributary_shard_leader",
        "tributary_shard_raft_term",
        "tributary_open_subscriptions",
        "tributary_throttled_requests_total",
    ] {
        assert!(
            before.keys().any(|series| series.starts_with(name)),
            "{name} missing from\n{body}"
        );
    }
    assert_eq!(
        total(&before, "tributary_shard_incoming_records_total"),
        0.0
    );
    assert_eq!(
        total(&before, "tributary_shard_leader"),
        2.0,
        "a single node leads both shards"
    );
    assert!(body.contains("shard=\"shardId-000000000001\""), "{body}");

    let client = Client::connect(&node.endpoint()).await.expect("connect");
    let records = (0..25)
        .map(|i| (format!("k{i}"), format!("value-{i}"), None::<String>))
        .collect();
    tributary_client::put_all(&client, "watched", records, &Default::default())
        .await
        .expect("put");
    let read = tributary_client::read_stream_until_tip(
        &client,
        "watched",
        &StartingPosition::TrimHorizon,
        None,
    )
    .await
    .expect("read");
    assert_eq!(read.len(), 25);

    let after = samples(&http_get(metrics, "/metrics").1);
    assert_eq!(
        total(&after, "tributary_shard_incoming_records_total"),
        25.0
    );
    assert_eq!(
        total(&after, "tributary_shard_outgoing_records_total"),
        25.0
    );
    let data_bytes: f64 = (0..25).map(|i| format!("value-{i}").len() as f64).sum();
    assert_eq!(
        total(&after, "tributary_shard_outgoing_bytes_total"),
        data_bytes
    );
    assert!(
        total(&after, "tributary_put_latency_seconds_count")
            > total(&before, "tributary_put_latency_seconds_count")
    );
    assert!(
        total(&after, "tributary_fsync_latency_seconds_count")
            > total(&before, "tributary_fsync_latency_seconds_count")
    );
    assert!(total(&after, "tributary_get_records_latency_seconds_count") >= 2.0);
    assert!(
        total(&after, "tributary_shard_applied_index")
            > total(&before, "tributary_shard_applied_index")
    );

    let (status, _) = http_get(metrics, "/nope");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}
