//! Storage faults on real nodes (issue 7): failing fsyncs on two of three replicas (injected
//! through the log engine's test hook: every fsync fails with EIO while a trigger file
//! exists), a flipped bit in a committed segment of one replica, and a data directory that
//! runs low on space (a real tmpfs).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tributary_proto::v1 as pb;
use tributary_tests::{error_code, shard_segment_files, Cluster, NodeProcess, ShardRecords};

/// Waits (bounded) until reading `stream` through `node` gives exactly `expected`.
async fn wait_reads_equal(
    node: &NodeProcess,
    stream: &str,
    expected: &ShardRecords,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let read = node.remote().try_read_all(stream).await;
        if read.as_ref().is_ok_and(|r| r == expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} does not serve the same records as its peers within {within:?}: {:?}; log:\n{}",
            node.node_id,
            read.map(|r| r.values().map(Vec::len).sum::<usize>()),
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn flip_byte(path: &Path, offset: u64) -> u8 {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open segment");
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, offset).expect("read byte");
    file.write_all_at(&[b[0] ^ 0x04], offset)
        .expect("flip byte");
    b[0]
}

fn byte_at(path: &Path, offset: u64) -> u8 {
    let mut b = [0u8; 1];
    std::fs::File::open(path)
        .expect("open segment")
        .read_exact_at(&mut b, offset)
        .expect("read byte");
    b[0]
}

/// Waits (20 s at most) until the byte at `offset` is `original` again.
async fn wait_byte(node: &NodeProcess, path: &Path, offset: u64, original: u8, by: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while byte_at(path, offset) != original {
        assert!(
            Instant::now() < deadline,
            "{by} did not repair the flipped byte within 20 s; log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sealed_segments(node: &NodeProcess) -> Vec<PathBuf> {
    let mut files = shard_segment_files(&node.data_dir);
    files.pop(); // the active segment (highest base) is scanned at open, not scrubbed
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_on_one_replica_is_detected_and_repaired_from_its_peers() {
    let mut cluster = Cluster::start(&["--segment-max-bytes", "1048576"]).await;
    cluster.node(1).remote().create_stream("flip", 1).await;
    cluster.node(1).remote().wait_active("flip").await;
    // About 4.5 MB: four sealed 1 MiB segments and an active one.
    let mut written = 0;
    for batch in 0..9 {
        let (ok, refused) = put_batch(cluster.node(1), "flip", &format!("b{batch}"), 500).await;
        assert!(refused.is_none(), "{refused:?}");
        written += ok.len();
    }
    let expected = cluster.node(1).remote().read_all("flip").await;
    assert_eq!(expected.values().map(Vec::len).sum::<usize>(), written);
    wait_reads_equal(cluster.node(3), "flip", &expected, Duration::from_secs(20)).await;

    // 1. Found by a read: the bad frame is never returned, and is repaired from a peer.
    let segments = sealed_segments(cluster.node(3));
    assert!(
        segments.len() >= 3,
        "expected several sealed segments: {segments:?}"
    );
    let first = segments[1].clone();
    let offset = std::fs::metadata(&first).expect("stat").len() / 2;
    let original = flip_byte(&first, offset);
    let shard = expected.keys().next().expect("one shard").clone();
    match cluster.node(3).remote().read_shard("flip", &shard).await {
        Err(status) => assert_eq!(error_code(&status), "DataCorruption", "{status:?}"),
        Ok(records) => panic!(
            "a read through the corrupt replica returned {} records instead of failing",
            records.len()
        ),
    }
    wait_reads_equal(cluster.node(3), "flip", &expected, Duration::from_secs(15)).await;
    assert_eq!(
        byte_at(&first, offset),
        original,
        "the flipped byte is back"
    );
    assert!(cluster
        .node(3)
        .log()
        .contains("corrupt frame repaired from a replica's copy"));

    // 2. Found by the scrub, with no reader involved: restart the node with a 1 s scrub
    //    interval, then flip a byte under it.
    let node3 = cluster.node_mut(3);
    node3.set_env("TRIBUTARY_SCRUB_INTERVAL_MS", "1000");
    node3.restart().await;
    let second = segments[2].clone();
    let offset = std::fs::metadata(&second).expect("stat").len() / 3;
    let original = flip_byte(&second, offset);
    wait_byte(node3, &second, offset, original, "the scrub").await;

    // 3. Found while starting: a byte flipped while the node is down is met when the shard
    //    group replays its log at start, and repaired before the group starts (scrub off,
    //    no reader: nothing else can find it).
    node3.kill();
    node3.set_env("TRIBUTARY_SCRUB_INTERVAL_MS", "0");
    let third = segments[0].clone();
    let offset = std::fs::metadata(&third).expect("stat").len() / 4;
    let original = flip_byte(&third, offset);
    node3.restart().await;
    wait_byte(node3, &third, offset, original, "the start").await;
    assert!(node3
        .log()
        .contains("corrupt frame met while starting a shard group"));
    wait_reads_equal(cluster.node(3), "flip", &expected, Duration::from_secs(15)).await;
    // The other replicas were never touched.
    wait_reads_equal(cluster.node(2), "flip", &expected, Duration::from_secs(5)).await;
}

/// Puts one record through `node` with a bounded wait; `Some(sequence)` if acknowledged.
async fn put_within(
    node: &NodeProcess,
    stream: &str,
    value: &str,
    wait: Duration,
) -> Option<String> {
    let mut client = node.remote().data().await;
    let put = client.put_record(pb::PutRecordRequest {
        stream_name: stream.into(),
        partition_key: value.into(),
        data: value.as_bytes().to_vec().into(),
        explicit_hash_key: None,
        sequence_number_for_ordering: None,
    });
    match tokio::time::timeout(wait, put).await {
        Ok(Ok(reply)) => Some(reply.into_inner().sequence_number),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_errors_on_two_replicas_acknowledge_nothing_and_the_replicas_recover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start(&[]).await;
    let triggers: Vec<PathBuf> = [2, 3]
        .iter()
        .map(|id| dir.path().join(format!("fail-fsync-{id}")))
        .collect();
    for (id, trigger) in [2, 3].into_iter().zip(&triggers) {
        let node = cluster.node_mut(id);
        node.set_env(
            "TRIBUTARY_FAULT_FSYNC_TRIGGER",
            &trigger.display().to_string(),
        );
        node.restart().await;
    }
    let node1 = cluster.node(1);
    node1.remote().create_stream("fsync", 1).await;
    node1.remote().wait_active("fsync").await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let value = format!("before-{i}");
        acked.push((
            node1.remote().put_acked("fsync", &value, &value).await,
            value,
        ));
    }

    // Two of three replicas cannot persist anything: no write may be acknowledged.
    for trigger in &triggers {
        std::fs::write(trigger, b"").expect("create trigger");
    }
    let started = Instant::now();
    let mut attempts = 0;
    while started.elapsed() < Duration::from_secs(6) {
        attempts += 1;
        let value = format!("during-{attempts}");
        for id in 1..=3 {
            if let Some(seq) =
                put_within(cluster.node(id), "fsync", &value, Duration::from_secs(2)).await
            {
                panic!("{value} was acknowledged (sequence {seq}) via node {id} while two replicas could not fsync");
            }
        }
    }
    let stopped = [2, 3].iter().any(|id| {
        cluster
            .node(*id)
            .log()
            .contains("shard group stopped on a storage error")
    });
    assert!(
        stopped,
        "no replica reported stopping its shard group on the fsync error"
    );

    // The disks heal: the replicas restart their groups from disk (dropping what they
    // never persisted), catch up, and writes are acknowledged again.
    for trigger in &triggers {
        std::fs::remove_file(trigger).expect("remove trigger");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while acked.len() < 40 {
        i += 1;
        let value = format!("after-{i}");
        if let Some(seq) =
            put_within(cluster.node(1), "fsync", &value, Duration::from_secs(2)).await
        {
            acked.push(((String::new(), seq), value));
        }
        assert!(
            Instant::now() < deadline,
            "writes were not acknowledged again within 30 s of the disks healing"
        );
    }
    let reference = cluster.node(1).remote().read_all("fsync").await;
    let stored: Vec<(String, String)> = reference.values().flatten().cloned().collect();
    for ((_, seq), value) in &acked {
        assert!(
            stored.iter().any(|(s, v)| s == seq && v == value),
            "acknowledged {value} at {seq} is missing"
        );
    }
    assert!(
        stored.iter().all(|(_, v)| v.starts_with("before-")
            || v.starts_with("during-")
            || v.starts_with("after-")),
        "a record nobody wrote"
    );
    for id in [2, 3] {
        wait_reads_equal(
            cluster.node(id),
            "fsync",
            &reference,
            Duration::from_secs(20),
        )
        .await;
    }
}

/// Where tmpfs cannot be mounted (not root) the disk-space tests are skipped, saying why; in
/// CI (`CI=true`, root on the project's machine) that is a failure, never a silent pass.
fn skip_without_tmpfs(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "cannot mount a tmpfs in CI: {why}"
    );
    eprintln!("SKIPPED: this test mounts a tmpfs (needs root): {why}");
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(path.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {} to {size}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Puts `count` 1000-byte records; returns the acknowledged ones and the first refusal.
async fn put_batch(
    node: &NodeProcess,
    stream: &str,
    tag: &str,
    count: usize,
) -> (Vec<(String, String)>, Option<(String, String)>) {
    let values: Vec<String> = (0..count)
        .map(|i| format!("{tag}-{i:04}-{}", ".".repeat(980)))
        .collect();
    let (acked, refused) = put_values(node, stream, &values).await;
    (
        acked,
        refused
            .into_iter()
            .next()
            .map(|(_, code, message)| (code, message)),
    )
}

/// Puts `values` in one PutRecords call: the acknowledged (sequence, value) pairs and the
/// refused (value, code, message) ones (every value, when the whole call failed).
async fn put_values(
    node: &NodeProcess,
    stream: &str,
    values: &[String],
) -> (Vec<(String, String)>, Vec<(String, String, String)>) {
    let request = pb::PutRecordsRequest {
        stream_name: stream.into(),
        records: values
            .iter()
            .map(|v| pb::PutRecordsEntry {
                partition_key: v[..16].to_string(),
                data: v.clone().into_bytes().into(),
                explicit_hash_key: None,
            })
            .collect(),
        producer_id: 0,
        producer_sequence: 0,
    };
    let reply = match node.remote().data().await.put_records(request).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => {
            let code = error_code(&status);
            return (
                Vec::new(),
                values
                    .iter()
                    .map(|v| (v.clone(), code.clone(), status.message().to_string()))
                    .collect(),
            );
        }
    };
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    for (value, result) in values.iter().zip(reply.records) {
        if result.error_code == pb::ErrorCode::Unspecified as i32 {
            acked.push((result.sequence_number, value.clone()));
        } else {
            let name = pb::ErrorCode::try_from(result.error_code)
                .map(tributary_proto::error_code_name)
                .unwrap_or("?");
            refused.push((value.clone(), name.to_string(), result.error_message));
        }
    }
    (acked, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_floor_writes_are_refused_and_resume_when_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = match Tmpfs::mount(&dir.path().join("disk"), "96m") {
        Ok(disk) => disk,
        Err(why) => {
            return skip_without_tmpfs(&why);
        }
    };
    let floor: u64 = 48 * 1024 * 1024;
    let mut node = NodeProcess::start(
        &disk.0.join("node"),
        &[
            "--min-free-disk-bytes",
            &floor.to_string(),
            "--segment-max-bytes",
            "1048576",
        ],
    )
    .await;
    node.remote().create_stream("full", 1).await;
    node.remote().wait_active("full").await;

    let mut acked: Vec<(String, String)> = Vec::new();
    let mut refusal = None;
    for batch in 0..400 {
        let (ok, refused) = put_batch(&node, "full", &format!("b{batch}"), 200).await;
        acked.extend(ok);
        if let Some(refused) = refused {
            refusal = Some(refused);
            break;
        }
    }
    let (code, message) =
        refusal.expect("writes were never refused although the data kept growing");
    assert_eq!(code, "StorageFull", "{message}");
    assert!(
        message.contains("min_free_disk_bytes = 50331648"),
        "{message}"
    );
    assert!(!acked.is_empty());
    // Refused before the disk filled: at least half the floor is still free.
    let free = fs_free(&disk.0);
    assert!(
        free > floor / 2,
        "only {free} bytes left: the floor did not hold"
    );

    // A refused write changed nothing; everything acknowledged reads back.
    let (ok, refused) = put_batch(&node, "full", "refused", 10).await;
    assert!(ok.is_empty() && refused.is_some_and(|(c, _)| c == "StorageFull"));
    let stored: Vec<(String, String)> = node
        .remote()
        .read_all("full")
        .await
        .into_values()
        .flatten()
        .collect();
    assert_eq!(
        stored, acked,
        "the log holds exactly the acknowledged records"
    );

    // Space returns: writes are taken again.
    disk.resize("512m");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, _) = put_batch(&node, "full", "after", 10).await;
        if ok.len() == 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes still refused 10 s after space returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    node.kill();
}

fn fs_free(path: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_low_on_space_stops_taking_appends_and_catches_up_when_space_returns() {
    let floor: u64 = 48 * 1024 * 1024;
    let floor_arg = floor.to_string();
    let mut cluster = Cluster::start(&[
        "--min-free-disk-bytes",
        &floor_arg,
        "--segment-max-bytes",
        "1048576",
    ])
    .await;
    // Move node 3's data dir onto a small tmpfs.
    let node3 = cluster.node_mut(3);
    node3.kill();
    let data_dir = node3.data_dir.clone();
    let moved = data_dir.with_extension("moved");
    std::fs::rename(&data_dir, &moved).expect("move data dir");
    let disk = match Tmpfs::mount(&data_dir, "96m") {
        Ok(disk) => disk,
        Err(why) => {
            return skip_without_tmpfs(&why);
        }
    };
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", moved.display()))
        .arg(&data_dir)
        .status()
        .expect("cp");
    assert!(copied.success());
    node3.restart().await;

    let node1 = cluster.node(1);
    node1.remote().create_stream("low", 3).await;
    node1.remote().wait_active("low").await;
    // About 100 MB: far more than node 3's tmpfs holds above its floor. A refused entry is
    // sent again, as a producer would; every one must be taken within 30 s.
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut refusals: std::collections::BTreeMap<String, usize> = Default::default();
    for batch in 0..200 {
        let mut pending: Vec<String> = (0..500)
            .map(|i| format!("b{batch}-{i:04}-{}", ".".repeat(980)))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pending.is_empty() {
            let (ok, refused) = put_values(cluster.node(1 + batch % 2), "low", &pending).await;
            acked.extend(ok);
            pending = refused
                .into_iter()
                .map(|(value, code, message)| {
                    assert!(
                        code == "StorageFull" || code == "Unavailable",
                        "{code}: {message}"
                    );
                    *refusals.entry(code).or_default() += 1;
                    value
                })
                .collect();
            assert!(
                Instant::now() < deadline,
                "batch {batch}: {} records still refused after 30 s ({refusals:?})",
                pending.len()
            );
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!(
        "{} records acknowledged; refusals on the way: {refusals:?}",
        acked.len()
    );
    // Node 3 kept its floor (it never ran its disk full) and still runs.
    let free = fs_free(&data_dir);
    assert!(free > floor / 4, "node 3 has only {free} bytes left");
    assert!(
        cluster.node_mut(3).is_running(),
        "node 3 exited:\n{}",
        cluster.node(3).log()
    );
    assert!(
        cluster
            .node(3)
            .log()
            .contains("this replica takes no more appends"),
        "node 3 never refused an append"
    );

    // Every acknowledged record is on the two nodes with room.
    let reference = cluster.node(1).remote().read_all("low").await;
    let stored: std::collections::HashSet<(String, String)> =
        reference.values().flatten().cloned().collect();
    let missing = acked.iter().filter(|a| !stored.contains(a)).count();
    assert_eq!(missing, 0, "acknowledged records missing");
    wait_reads_equal(cluster.node(2), "low", &reference, Duration::from_secs(20)).await;

    // Space returns: node 3 restarts its shard groups and catches up.
    disk.resize("1g");
    wait_reads_equal(cluster.node(3), "low", &reference, Duration::from_secs(60)).await;
    cluster.node_mut(3).kill();
}
