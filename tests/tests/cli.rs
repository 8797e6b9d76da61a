//! The `trib` CLI against a real node, as a new user would run it.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use tributary_tests::{binary, NodeProcess};

fn trib(node: &NodeProcess, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(binary("trib"))
        .args(["--endpoint", &node.endpoint()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run trib");
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("trib output")
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "trib failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 stdout")
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

#[tokio::test]
async fn put_a_thousand_lines_and_get_them_back_as_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(&dir.path().join("node"), &[]).await;
    ok(trib(
        &node,
        &["stream", "create", "demo", "--shards", "4"],
        None,
    ));

    let input: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    let output = trib(&node, &["put", "demo"], Some(&input));
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    ok(output);
    assert!(
        stderr.contains("1000"),
        "put reports what it acknowledged: {stderr}"
    );

    let records = json_lines(&ok(trib(
        &node,
        &["get", "demo", "--from", "trim-horizon", "--output", "json"],
        None,
    )));
    assert_eq!(records.len(), 1000);
    let mut values: Vec<u64> = Vec::new();
    for record in &records {
        for field in [
            "shard_id",
            "sequence_number",
            "partition_key",
            "data",
            "approximate_arrival_timestamp",
        ] {
            assert!(
                record.get(field).is_some(),
                "record lacks {field}: {record}"
            );
        }
        assert!(
            record["sequence_number"].is_string(),
            "sequence numbers are decimal strings"
        );
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD
            .decode(record["data"].as_str().expect("base64"))
            .expect("base64");
        values.push(
            String::from_utf8(data)
                .expect("utf-8")
                .parse()
                .expect("number"),
        );
    }
    values.sort_unstable();
    assert_eq!(values, (1..=1000).collect::<Vec<u64>>());

    // --limit caps the total; global flags work after the subcommand too.
    let limited = ok(trib(
        &node,
        &["get", "demo", "--limit", "7", "--output", "json"],
        None,
    ));
    assert_eq!(json_lines(&limited).len(), 7);

    // Streams and shards in JSON with the documented field names.
    let streams = json_lines(&ok(trib(
        &node,
        &["--output", "json", "stream", "list"],
        None,
    )));
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0]["stream_name"], "demo");
    assert_eq!(streams[0]["status"], "ACTIVE");
    assert_eq!(streams[0]["shard_count"], 4);
    assert_eq!(streams[0]["retention"], "24h");
    let shards = json_lines(&ok(trib(
        &node,
        &["shard", "list", "demo", "--output", "json"],
        None,
    )));
    assert_eq!(shards.len(), 4);
    assert_eq!(shards[0]["shard_id"], "shardId-000000000000");
    assert_eq!(shards[0]["status"], "OPEN");
    assert_eq!(shards[0]["starting_hash_key"], "0");
    assert_eq!(shards[3]["ending_hash_key"], u128::MAX.to_string());
    assert!(shards[0]["ending_sequence_number"].is_null());
    assert!(shards[0]["parent_shard_id"].is_null());

    let nodes = json_lines(&ok(trib(
        &node,
        &["cluster", "status", "--output", "json"],
        None,
    )));
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["metadata_role"], "leader");
    assert_eq!(nodes[0]["state"], "up");
    assert_eq!(nodes[0]["shard_leaders"], 4);
}

#[tokio::test]
async fn errors_go_to_stderr_with_a_non_zero_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(&dir.path().join("node"), &[]).await;
    let output = trib(
        &node,
        &["stream", "create", "bad name", "--shards", "1"],
        None,
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("[a-zA-Z0-9_.-]"),
        "{stderr}"
    );

    let output = trib(&node, &["get", "missing"], None);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("ResourceNotFound"));

    ok(trib(
        &node,
        &["stream", "create", "keys", "--shards", "2"],
        None,
    ));
    let output = trib(
        &node,
        &["put", "keys", "--key", &"k".repeat(300), "hello"],
        None,
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("the limit is 256"));

    // Explicit hash keys route to the shard that owns them.
    let put = ok(trib(
        &node,
        &[
            "put",
            "keys",
            "--key",
            "a",
            "--explicit-hash-key",
            "0",
            "first",
            "--output",
            "json",
        ],
        None,
    ));
    assert_eq!(json_lines(&put)[0]["shard_id"], "shardId-000000000000");
    let read = json_lines(&ok(trib(
        &node,
        &[
            "get",
            "keys",
            "--shard",
            "shardId-000000000000",
            "--output",
            "json",
        ],
        None,
    )));
    assert_eq!(read.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_while_putting_keeps_every_keys_order_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(&dir.path().join("node"), &[]).await;
    ok(trib(
        &node,
        &["stream", "create", "demo", "--shards", "2"],
        None,
    ));
    // 20,000 records over 100 keys, put while the stream scales to 8 shards and back to 3.
    let input: String = (1..=20_000)
        .map(|i| format!("k{},{i}\n", i % 100))
        .collect();
    let endpoint = node.endpoint();
    let put = std::thread::spawn(move || {
        let mut child = Command::new(binary("trib"))
            .args([
                "--endpoint",
                &endpoint,
                "put",
                "demo",
                "--key-separator",
                ",",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run trib put");
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
        drop(pipe);
        child.wait_with_output().expect("trib put output")
    });
    ok(trib(
        &node,
        &["stream", "scale", "demo", "--shards", "8"],
        None,
    ));
    ok(trib(
        &node,
        &["stream", "scale", "demo", "--shards", "3"],
        None,
    ));
    ok(put.join().expect("put thread"));

    let records = json_lines(&ok(trib(
        &node,
        &["get", "demo", "--from", "trim-horizon", "--output", "json"],
        None,
    )));
    assert_eq!(records.len(), 20_000);
    let mut by_key: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for record in &records {
        let data = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            record["data"].as_str().expect("data"),
        )
        .expect("base64");
        let value: u64 = String::from_utf8(data)
            .expect("utf8")
            .parse()
            .expect("number");
        by_key
            .entry(record["partition_key"].as_str().expect("key").to_string())
            .or_default()
            .push(value);
    }
    assert_eq!(by_key.len(), 100);
    for (key, values) in &by_key {
        assert!(values.windows(2).all(|w| w[0] < w[1]), "{key} out of order");
        assert_eq!(values.len(), 200, "{key}");
    }

    let shards = json_lines(&ok(trib(
        &node,
        &["shard", "list", "demo", "--output", "json"],
        None,
    )));
    let open = shards.iter().filter(|s| s["status"] == "OPEN").count();
    assert_eq!(open, 3, "{shards:?}");
    for shard in shards.iter().filter(|s| s["status"] == "CLOSED") {
        assert!(shard["ending_sequence_number"].is_string(), "{shard}");
    }
    assert!(shards.iter().any(|s| s["parent_shard_id"].is_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_fan_out_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(&dir.path().join("node"), &[]).await;
    ok(trib(
        &node,
        &["stream", "create", "fan", "--shards", "2"],
        None,
    ));
    ok(trib(&node, &["consumer", "register", "fan", "app"], None));
    let listed = json_lines(&ok(trib(
        &node,
        &["consumer", "list", "fan", "--output", "json"],
        None,
    )));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["consumer_name"], "app");
    assert_eq!(listed[0]["status"], "ACTIVE");
    let input: String = (1..=100).map(|i| format!("k{},{i}\n", i % 7)).collect();
    ok(trib(
        &node,
        &["put", "fan", "--key-separator", ","],
        Some(&input),
    ));
    // Pushed through SubscribeToShard; --limit ends the follow.
    let records = json_lines(&ok(trib(
        &node,
        &[
            "get",
            "fan",
            "--consumer",
            "app",
            "--follow",
            "--from",
            "trim-horizon",
            "--limit",
            "100",
            "--output",
            "json",
        ],
        None,
    )));
    assert_eq!(records.len(), 100);
    let no_follow = trib(&node, &["get", "fan", "--consumer", "app"], None);
    assert!(!no_follow.status.success());
    assert!(String::from_utf8_lossy(&no_follow.stderr).contains("--consumer needs --follow"));
    ok(trib(&node, &["consumer", "deregister", "fan", "app"], None));
    let gone = trib(&node, &["consumer", "describe", "fan", "app"], None);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("ResourceNotFound"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_follow_long_polls_and_prints_a_new_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(&dir.path().join("node"), &[]).await;
    ok(trib(
        &node,
        &["stream", "create", "f", "--shards", "1"],
        None,
    ));
    let endpoint = node.endpoint();
    let follow = std::thread::spawn(move || {
        Command::new(binary("trib"))
            .args([
                "--endpoint",
                &endpoint,
                "get",
                "f",
                "--shard",
                "shardId-000000000000",
            ])
            .args([
                "--follow", "--from", "latest", "--limit", "1", "--output", "json",
            ])
            .output()
            .expect("run trib get --follow")
    });
    // The follow is waiting in a long poll (server-side) when the record commits.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    ok(trib(&node, &["put", "f", "hello"], None));
    let records = json_lines(&ok(follow.join().expect("follow thread")));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["data"], "aGVsbG8=");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_stats_adds_up_every_node_and_shows_live_rates() {
    let cluster = tributary_tests::Cluster::start(&[]).await;
    let node = cluster.node(1);
    node.remote().create_stream("stats", 2).await;
    node.remote().wait_active("stats").await;
    for i in 0..200 {
        let via = cluster.node(1 + i % 3);
        via.remote().put_acked("stats", &format!("k{i}"), "x").await;
    }
    // Keep writing through node 2 while the command samples.
    let writer = {
        let remote = cluster.node(2).remote();
        tokio::spawn(async move {
            for i in 0.. {
                remote.put_acked("stats", &format!("w{i}"), "y").await;
            }
        })
    };
    let out = tokio::task::block_in_place(|| {
        ok(trib(
            node,
            &[
                "stream",
                "stats",
                "stats",
                "--interval",
                "1s",
                "--output",
                "json",
            ],
            None,
        ))
    });
    writer.abort();
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    let mut incoming = 0;
    let mut rate = 0.0;
    for row in &rows {
        assert_eq!(row["replicas"], 3, "{row}");
        assert_eq!(row["state"], "open", "{row}");
        assert!(
            row["leader"].as_u64().is_some_and(|l| (1..=3).contains(&l)),
            "{row}"
        );
        assert!(
            row["applied_index"].as_u64().is_some_and(|i| i > 0),
            "{row}"
        );
        assert!(row["disk_bytes"].as_u64().is_some_and(|b| b > 0), "{row}");
        incoming += row["incoming_records_total"].as_u64().expect("total");
        rate += row["incoming_records_per_sec"].as_f64().expect("rate");
    }
    // Each node counts the writes it answered; the sum is every acknowledged write.
    assert!(incoming >= 200, "{out}");
    assert!(rate > 0.0, "the writer's traffic shows as a rate: {out}");

    let table = tokio::task::block_in_place(|| ok(trib(node, &["stream", "stats", "stats"], None)));
    assert!(
        table.contains("IN_REC/S") && table.contains("shardId-000000000001"),
        "{table}"
    );

    let missing = trib(node, &["stream", "stats", "nope"], None);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("ResourceNotFound"));
    let bad = trib(
        node,
        &["stream", "stats", "stats", "--interval", "5ms"],
        None,
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("100ms..=60s"));
}
