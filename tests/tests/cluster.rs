//! The three-node cluster as processes on loopback: bootstrap in any order, writes through
//! any node, no acknowledged record lost when a node dies, catch-up on restart, refusal
//! and replacement of a node whose data dir was wiped, leadership spread and SIGTERM
//! handoff.

use std::time::Duration;

use tributary_proto::v1 as pb;
use tributary_tests::{assert_contains_acked, Cluster, ShardRecords};

fn leader_counts(status: &pb::ClusterStatusResponse) -> Vec<u32> {
    status.nodes.iter().map(|n| n.shard_leaders).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_in_any_order_replicate_and_survive_a_node_loss() {
    // Node 3 first, node 1 (which forms the cluster) last.
    let mut cluster = Cluster::start_in_order([3, 2, 1], &[]).await;
    let status = cluster
        .wait_status(2, "all three nodes up", Duration::from_secs(10), |s| {
            s.nodes.len() == 3 && s.nodes.iter().all(|n| n.state == "up")
        })
        .await;
    let azs: Vec<&str> = status.nodes.iter().map(|n| n.az.as_str()).collect();
    assert_eq!(azs, ["az-a", "az-b", "az-c"]);
    assert_ne!(status.metadata_leader_id, 0, "{status:#?}");

    // A stream created through node 2 is usable through every node.
    cluster.node(2).create_stream("orders", 4).await;
    let mut acked = Vec::new();
    for i in 0..60u64 {
        let via = cluster.node(i % 3 + 1);
        let data = format!("before-{i}");
        let (shard, seq) = via
            .put_acked("orders", &format!("key-{}", i % 7), &data)
            .await;
        acked.push((shard, seq, data));
    }
    let reads: Vec<_> = futures_reads(&cluster, &[1, 2, 3]).await;
    for (id, read) in &reads {
        assert_contains_acked(read, &acked, &format!("node {id}"));
        assert_eq!(read, &reads[0].1, "node {id} diverges from node 1");
    }

    // Kill the node leading the metadata group; the other two keep taking writes.
    let victim = cluster.status(1).await.metadata_leader_id;
    cluster.node_mut(victim).kill();
    let alive: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
    for i in 0..60u64 {
        let via = cluster.node(alive[(i % 2) as usize]);
        let data = format!("after-{i}");
        let (shard, seq) = via
            .put_acked("orders", &format!("key-{}", i % 7), &data)
            .await;
        acked.push((shard, seq, data));
    }
    let reads = futures_reads(&cluster, &alive).await;
    for (id, read) in &reads {
        assert_contains_acked(read, &acked, &format!("node {id} with node {victim} down"));
    }
    assert_eq!(reads[0].1, reads[1].1, "the surviving nodes diverge");

    // The killed node restarts with its data dir, catches up, and serves the same log.
    cluster.node_mut(victim).restart().await;
    let reads = futures_reads(&cluster, &[victim]).await;
    assert_contains_acked(&reads[0].1, &acked, &format!("restarted node {victim}"));
    cluster
        .wait_status(
            victim,
            "the restarted node sees everyone up",
            Duration::from_secs(10),
            |s| s.nodes.iter().all(|n| n.state == "up"),
        )
        .await;
}

async fn futures_reads(cluster: &Cluster, ids: &[u64]) -> Vec<(u64, ShardRecords)> {
    let mut out = Vec::new();
    for id in ids {
        out.push((*id, cluster.node(*id).read_all("orders").await));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_refused_until_replaced_then_catches_up() {
    let mut cluster = Cluster::start(&[]).await;
    cluster.node(1).create_stream("orders", 2).await;
    let mut acked = Vec::new();
    for i in 0..30u64 {
        let data = format!("r-{i}");
        let (shard, seq) = cluster
            .node(1)
            .put_acked("orders", &format!("k{i}"), &data)
            .await;
        acked.push((shard, seq, data));
    }

    // Node 3 loses its disk and comes back empty.
    let node3 = cluster.node_mut(3);
    node3.kill();
    std::fs::remove_dir_all(&node3.data_dir).expect("wipe node 3");
    node3.spawn_process();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let node3 = cluster.node_mut(3);
    assert!(node3.is_running(), "node 3 exited: {}", node3.log());
    let refused = node3
        .streams()
        .await
        .list_streams(pb::ListStreamsRequest {})
        .await;
    let refused = refused.expect_err("a wiped node must not serve before it is replaced");
    assert_eq!(tributary_tests::error_code(&refused), "Unavailable");
    assert!(
        refused.message().contains("this node is starting"),
        "{refused:?}"
    );
    assert!(
        node3.log().contains("empty data dir"),
        "node 3 must say why it waits: {}",
        node3.log()
    );
    // Writes go on with two nodes meanwhile.
    for i in 30..40u64 {
        let data = format!("r-{i}");
        let (shard, seq) = cluster
            .node(2)
            .put_acked("orders", &format!("k{i}"), &data)
            .await;
        acked.push((shard, seq, data));
    }

    // The operator replaces it; it catches up from its peers and serves everything.
    let client = tributary_client::Client::connect(&cluster.node(1).endpoint())
        .await
        .expect("connect");
    let groups = client.replace_node(3).await.expect("replace node 3");
    assert_eq!(groups, 3, "the metadata group and two shard groups");
    cluster.node_mut(3).wait_ready().await;
    let read = cluster.node(3).read_all("orders").await;
    assert_contains_acked(&read, &acked, "replaced node 3");
    assert_eq!(read, cluster.node(1).read_all("orders").await);
    // Replacing a node that has its data is refused and changes nothing.
    let err = client
        .replace_node(2)
        .await
        .expect_err("node 2 has its data");
    assert!(err.to_string().contains("still has its data"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_spread_evenly_and_sigterm_hands_them_off() {
    let mut cluster = Cluster::start(&[]).await;
    cluster.node(1).create_stream("spread", 6).await;
    let status = cluster
        .wait_status(
            1,
            "two shard leaders per node",
            Duration::from_secs(15),
            |s| leader_counts(s) == [2, 2, 2],
        )
        .await;
    assert!(
        status.nodes.iter().all(|n| n.shard_replicas == 6),
        "{status:#?}"
    );

    // Keep writing through node 2 while node 1 is stopped with SIGTERM: it hands its
    // leaderships over first, so no write fails.
    let (stop, writes) = spawn_writer(cluster.node(2).endpoint(), "spread");
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.node_mut(1).terminate();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (ok, failed) = stop_writer(stop, writes).await;
    assert!(ok > 0);
    assert!(
        failed.is_empty(),
        "{} of {} writes failed during a graceful stop: {:?}\n---- node 1 log ----\n{}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)],
        cluster.node(1).log()
    );
    assert!(cluster
        .node(1)
        .log()
        .contains("handed every leadership to peers"));

    // With node 1 back, leaders spread over all three again.
    cluster.node_mut(1).spawn_process();
    cluster.node_mut(1).wait_ready().await;
    cluster
        .wait_status(
            2,
            "leaders re-spread after node 1 returned",
            Duration::from_secs(15),
            |s| leader_counts(s) == [2, 2, 2],
        )
        .await;
}

type Writer = (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<(u32, Vec<String>)>,
);

/// Writes PutRecords of 6 records in a loop through `endpoint` until stopped; returns
/// how many records were acknowledged and every failure.
fn spawn_writer(endpoint: String, stream: &'static str) -> Writer {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = stop.clone();
    let writes = tokio::spawn(async move {
        let mut client = pb::data_service_client::DataServiceClient::connect(endpoint)
            .await
            .expect("connect");
        let (mut ok, mut failed) = (0u32, Vec::new());
        let mut i = 0u64;
        while !stop_writer.load(std::sync::atomic::Ordering::SeqCst) {
            let entries = (0..6)
                .map(|k| pb::PutRecordsEntry {
                    partition_key: format!("key-{k}-{i}"),
                    data: format!("w-{i}-{k}").into_bytes().into(),
                    explicit_hash_key: None,
                })
                .collect();
            match client
                .put_records(pb::PutRecordsRequest {
                    stream_name: stream.into(),
                    producer_id: 0,
                    producer_sequence: 0,
                    records: entries,
                })
                .await
            {
                Ok(reply) => {
                    for entry in reply.into_inner().records {
                        if entry.error_code == 0 {
                            ok += 1;
                        } else {
                            failed.push(entry.error_message);
                        }
                    }
                }
                Err(status) => failed.push(format!("{status:?}")),
            }
            i += 1;
        }
        (ok, failed)
    });
    (stop, writes)
}

async fn stop_writer(
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writes: tokio::task::JoinHandle<(u32, Vec<String>)>,
) -> (u32, Vec<String>) {
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writes.await.expect("writer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_all_three_nodes_fails_no_write() {
    let mut cluster = Cluster::start(&[]).await;
    cluster.node(1).create_stream("rolling", 6).await;
    cluster
        .wait_status(1, "leaders spread", Duration::from_secs(15), |s| {
            leader_counts(s) == [2, 2, 2]
        })
        .await;
    for id in 1..=3u64 {
        // Write through a node that stays up while `id` restarts.
        let via = id % 3 + 1;
        let (stop, writes) = spawn_writer(cluster.node(via).endpoint(), "rolling");
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.node_mut(id).terminate();
        cluster.node_mut(id).spawn_process();
        cluster.node_mut(id).wait_ready().await;
        cluster
            .wait_status(via, "every node up again", Duration::from_secs(15), |s| {
                s.nodes.iter().all(|n| n.state == "up")
            })
            .await;
        let (ok, failed) = stop_writer(stop, writes).await;
        assert!(ok > 0, "no write went through while node {id} restarted");
        assert!(
            failed.is_empty(),
            "restarting node {id}: {} of {} records failed: {:?}",
            failed.len(),
            ok as usize + failed.len(),
            &failed[..failed.len().min(5)]
        );
    }
    let read = cluster.node(1).read_all("rolling").await;
    assert_eq!(
        read,
        cluster.node(3).read_all("rolling").await,
        "replicas diverge"
    );
}

/// Three consecutive free loopback ports.
fn free_port_run() -> u16 {
    for _ in 0..100 {
        let base = tributary_tests::free_addr().port();
        if base > 65_000 {
            continue;
        }
        let taken = (1..3).any(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_err());
        if !taken {
            return base;
        }
    }
    panic!("no three consecutive free ports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tributary_dev_runs_three_nodes_stops_cleanly_and_keeps_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_port_run();
    let start = || {
        std::process::Command::new(tributary_tests::binary("tributary"))
            .args(["dev", "--base-port", &base.to_string(), "--data-dir"])
            .arg(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tributary dev")
    };
    let node = |i: u16| tributary_tests::Remote {
        endpoint: format!("http://127.0.0.1:{}", base + i),
    };
    let mut dev = start();
    for i in 0..3 {
        node(i).wait_serving().await;
    }
    node(0).create_stream("dev", 2).await;
    let (shard, seq) = node(2).put_acked("dev", "k", "kept").await;

    let stop = |dev: &mut std::process::Child| {
        #[allow(unsafe_code)]
        // SAFETY: sending SIGTERM to our own child by PID.
        unsafe {
            libc::kill(dev.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = dev.try_wait() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "tributary dev did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    stop(&mut dev);
    // All three nodes are gone: their ports accept no connections.
    for i in 0..3 {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", base + i)).is_err(),
            "node on port {} still listens after tributary dev stopped",
            base + i
        );
    }

    // Started again on the same data, the record is still there.
    let mut dev = start();
    for i in 0..3 {
        node(i).wait_serving().await;
    }
    assert_contains_acked(
        &node(1).read_all("dev").await,
        &[(shard, seq, "kept".to_string())],
        "restarted dev cluster",
    );
    stop(&mut dev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_get_records_returns_as_soon_as_a_record_commits() {
    let cluster = Cluster::start(&[]).await;
    cluster.node(1).create_stream("poll", 1).await;
    // Poll a follower replica of the shard (any node serves reads).
    let shard = cluster.node(1).shards("poll").await.remove(0).shard_id;
    let reader = cluster.node(3).remote();
    let mut data = reader.data().await;
    let iterator = data
        .get_shard_iterator(pb::GetShardIteratorRequest {
            stream_name: "poll".into(),
            shard_id: shard,
            shard_iterator_type: pb::ShardIteratorType::Latest as i32,
            ..Default::default()
        })
        .await
        .expect("iterator")
        .into_inner()
        .shard_iterator;
    // Without a wait, the tip answers at once and empty.
    let empty = data
        .get_records(pb::GetRecordsRequest {
            shard_iterator: iterator.clone(),
            limit: 0,
            stream_name: None,
            wait_ms: None,
        })
        .await
        .expect("get")
        .into_inner();
    assert!(empty.records.is_empty());
    let poll = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let page = data
            .get_records(pb::GetRecordsRequest {
                shard_iterator: iterator,
                limit: 0,
                stream_name: None,
                wait_ms: Some(8_000),
            })
            .await
            .expect("long poll")
            .into_inner();
        (page, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, seq) = cluster.node(2).put_acked("poll", "k", "arrived").await;
    let (page, waited) = poll.await.expect("poll task");
    assert_eq!(
        page.records.len(),
        1,
        "the long poll returns the new record"
    );
    assert_eq!(page.records[0].sequence_number, seq);
    assert!(
        waited < Duration::from_secs(6),
        "the long poll returned after {waited:?}, not when the record committed"
    );
    // And an idle long poll returns empty after its wait.
    let started = std::time::Instant::now();
    let page = reader
        .data()
        .await
        .get_records(pb::GetRecordsRequest {
            shard_iterator: page.next_shard_iterator.expect("open shard"),
            limit: 0,
            stream_name: None,
            wait_ms: Some(700),
        })
        .await
        .expect("idle poll")
        .into_inner();
    assert!(page.records.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(650));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesced_shards_elect_new_leaders_when_their_leaders_node_dies() {
    let mut cluster = Cluster::start(&[]).await;
    cluster.node(1).create_stream("quiet", 6).await;
    cluster
        .wait_status(1, "leaders spread", Duration::from_secs(15), |s| {
            leader_counts(s) == [2, 2, 2]
        })
        .await;
    let shards = cluster.node(1).shards("quiet").await;
    let mut acked = Vec::new();
    for shard in &shards {
        let data = format!("before-{}", shard.shard_id);
        let (_, seq) = cluster
            .node(2)
            .put_acked_with("quiet", "k", Some(&shard.starting_hash_key), &data)
            .await;
        acked.push((shard.shard_id.clone(), seq, data));
    }
    // Idle: every replica of every shard goes quiet (no raft timers).
    cluster
        .wait_status(2, "all shards quiet", Duration::from_secs(15), |s| {
            s.nodes.iter().all(|n| n.quiet_shards == 6)
        })
        .await;

    // Node 1 dies while its two shards are quiet: their followers must notice through
    // the node-level probe, wake, and elect, so writes resume within a few seconds.
    cluster.node_mut(1).kill();
    let mut slowest = Duration::ZERO;
    for shard in &shards {
        let data = format!("after-{}", shard.shard_id);
        let started = std::time::Instant::now();
        let (_, seq) = cluster
            .node(2)
            .put_acked_with("quiet", "k", Some(&shard.starting_hash_key), &data)
            .await;
        slowest = slowest.max(started.elapsed());
        acked.push((shard.shard_id.clone(), seq, data));
    }
    eprintln!("quiet shards took writes again {slowest:?} after their leader's node died");
    assert!(
        slowest < Duration::from_secs(10),
        "a quiet shard took {slowest:?} to take writes again after its leader's node died"
    );
    let read = cluster.node(3).read_all("quiet").await;
    assert_contains_acked(&read, &acked, "node 3");
    assert_eq!(
        read,
        cluster.node(2).read_all("quiet").await,
        "node 2 and 3 diverge"
    );
}
