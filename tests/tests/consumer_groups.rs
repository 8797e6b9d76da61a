//! Consumer groups on real nodes: leases and checkpoints in the metadata group, workers
//! sharing shards, a SIGKILLed worker's shards moving to the survivor, fencing of a stale
//! lease owner, and parents processed before children after a split.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tributary_client::proto::v1::{CheckpointRequest, ReleaseLeaseRequest, TakeLeaseRequest};
use tributary_client::{
    put_all, Checkpointer, Client, ConsumeMode, ConsumerGroup, ConsumerGroupOptions, ErrorCode,
    InitialPosition, Lease, ProcessError, PutOptions, Record, RecordProcessor, ShardInfo,
};
use tributary_tests::{binary, Cluster, NodeProcess};

/// Short leases so failover happens in seconds.
const LEASE_MS: u64 = 2_000;

/// Puts `count` records `w{from..}` with 40 distinct keys; returns the acknowledged values.
async fn put_values(client: &Client, stream: &str, from: usize, count: usize) -> Vec<String> {
    let values: Vec<String> = (from..from + count).map(|i| format!("w{i}")).collect();
    let records = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                format!("key-{}", (from + i) % 40),
                v.clone(),
                None::<String>,
            )
        })
        .collect();
    put_all(client, stream, records, &PutOptions::default())
        .await
        .expect("all records acknowledged");
    values
}

/// A `trib consume` worker writing its JSON lines to a file.
struct Worker {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Worker {
    fn start(dir: &std::path::Path, endpoint: &str, stream: &str, id: &str) -> Worker {
        let out = dir.join(format!("{id}.out"));
        let err = dir.join(format!("{id}.err"));
        let child = Command::new(binary("trib"))
            .args([
                "--endpoint",
                endpoint,
                "consume",
                stream,
                "--app",
                "billing",
            ])
            .args(["--lease-ms", &LEASE_MS.to_string(), "--worker-id", id])
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"))
            .spawn()
            .expect("start trib consume");
        Worker { child, out, err }
    }

    /// `(shard, sequence, value)` of every record printed so far.
    fn records(&self) -> Vec<(String, u128, String)> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter(|line| line.ends_with('}')) // a line being written is skipped
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                let data = base64_decode(v["data"].as_str().expect("data"));
                (
                    v["shard_id"].as_str().expect("shard").to_owned(),
                    v["sequence_number"]
                        .as_str()
                        .expect("sequence")
                        .parse()
                        .expect("decimal"),
                    data,
                )
            })
            .collect()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn kill(&mut self) {
        // SIGKILL: no final checkpoint, no release; the leases must expire.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        #[allow(unsafe_code)]
        // SAFETY: sending a signal to our own child by PID.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "trib consume did not stop after SIGTERM: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_decode(text: &str) -> String {
    use base64::Engine as _;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("base64"),
    )
    .expect("utf-8")
}

/// Live leases per owner.
fn owners(leases: &[Lease]) -> BTreeMap<String, usize> {
    let mut owners = BTreeMap::new();
    for lease in leases {
        if let (Some(owner), true) = (&lease.owner, lease.expires_in_ms > 0) {
            *owners.entry(owner.clone()).or_default() += 1;
        }
    }
    owners
}

async fn wait_owners(
    client: &Client,
    stream: &str,
    want: &[(&str, usize)],
    limit: Duration,
    context: impl Fn() -> String,
) -> Duration {
    let started = Instant::now();
    let want: BTreeMap<String, usize> = want.iter().map(|(o, n)| (o.to_string(), *n)).collect();
    loop {
        let leases = client.list_leases(stream, "billing").await.expect("leases");
        if owners(&leases) == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "lease owners never became {want:?} within {limit:?}; now {:?}\n{}",
            owners(&leases),
            context()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every shard's records in one worker's output come in strictly increasing sequence order.
fn assert_in_order(records: &[(String, u128, String)], who: &str) {
    let mut last: HashMap<&str, u128> = HashMap::new();
    for (shard, sequence, value) in records {
        if let Some(previous) = last.insert(shard, *sequence) {
            assert!(
                *sequence > previous,
                "{who} printed {value} ({shard} {sequence}) after {previous}"
            );
        }
    }
}

/// A worker's output when shards may leave it and come back (first balancing, takeover):
/// each stay ("tenure") of a shard prints strictly increasing sequence numbers; a new tenure
/// starts at the checkpoint it took over, which may be below what an earlier tenure printed
/// but not checkpointed (at-least-once). So per shard the output is a series of increasing
/// runs, and a run only ever restarts at or below where the previous one ended.
fn assert_in_order_per_tenure(records: &[(String, u128, String)], who: &str) {
    let mut last: HashMap<&str, u128> = HashMap::new();
    let mut restarts = 0;
    for (shard, sequence, _) in records {
        if let Some(previous) = last.insert(shard, *sequence) {
            assert!(
                *sequence != previous,
                "{who} printed {shard} {sequence} twice in a row"
            );
            if *sequence < previous {
                restarts += 1;
            }
        }
    }
    // Restarts come only from leases moving; with two workers and 8 shards a handful at most.
    assert!(restarts <= 8, "{who} restarted shards {restarts} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_eight_shards_and_a_killed_ones_move_to_the_survivor() {
    let cluster = Cluster::start(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client = Client::connect(&cluster.node(1).endpoint())
        .await
        .expect("connect");
    cluster.node(1).remote().create_stream("cg", 8).await;
    cluster.node(1).remote().wait_active("cg").await;
    let mut acked = put_values(&client, "cg", 0, 800).await;

    let mut w1 = Worker::start(dir.path(), &cluster.node(2).endpoint(), "cg", "w1");
    let mut w2 = Worker::start(dir.path(), &cluster.node(3).endpoint(), "cg", "w2");
    let context = || {
        format!(
            "w1 stderr:\n{}\nw2 stderr:\n{}",
            std::fs::read_to_string(dir.path().join("w1.err")).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("w2.err")).unwrap_or_default()
        )
    };
    wait_owners(
        &client,
        "cg",
        &[("w1", 4), ("w2", 4)],
        Duration::from_secs(30),
        context,
    )
    .await;
    acked.extend(put_values(&client, "cg", 800, 400).await);

    w1.kill();
    // w1's checkpoints as it died (SIGKILL: it writes no more), for the shards it held.
    let at_kill: HashMap<String, Option<u128>> = client
        .list_leases("cg", "billing")
        .await
        .expect("leases")
        .into_iter()
        .filter(|l| l.owner.as_deref() == Some("w1"))
        .map(|l| {
            let checkpoint = l
                .checkpoint_sequence_number
                .map(|s| s.parse().expect("decimal"));
            (l.shard_id, checkpoint)
        })
        .collect();
    assert_eq!(at_kill.len(), 4, "w1 held 4 leases when killed");
    // w2 may have held some of those shards itself during the first balancing; only what it
    // prints from now on is the takeover.
    let w2_printed_before_kill = w2.records().len();
    // The survivor owns all 8 within the lease expiry (plus one renew round and RPCs).
    let took = wait_owners(
        &client,
        "cg",
        &[("w2", 8)],
        Duration::from_millis(LEASE_MS) + Duration::from_secs(10),
        context,
    )
    .await;
    eprintln!("w2 owned all 8 shards {took:?} after w1 was killed (lease {LEASE_MS} ms)");
    assert!(
        took <= Duration::from_millis(LEASE_MS) + Duration::from_secs(3),
        "failover took {took:?}; the lease is {LEASE_MS} ms"
    );
    acked.extend(put_values(&client, "cg", 1200, 400).await);

    // Every acknowledged record is processed at least once.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: HashSet<String> = w1
            .records()
            .into_iter()
            .chain(w2.records())
            .map(|(_, _, v)| v)
            .collect();
        let missing: Vec<&String> = acked.iter().filter(|v| !seen.contains(*v)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged records never processed, e.g. {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            context()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_in_order_per_tenure(&w1.records(), "w1");
    assert_in_order_per_tenure(&w2.records(), "w2");
    // w2 resumed each of w1's shards just after w1's checkpoint: nothing at or below it
    // was processed again (only what w1 printed after its last checkpoint may repeat).
    for (shard, sequence, value) in w2.records().into_iter().skip(w2_printed_before_kill) {
        if let Some(Some(checkpoint)) = at_kill.get(&shard) {
            assert!(
                sequence > *checkpoint,
                "w2 processed {value} ({shard} {sequence}) at or below w1's checkpoint {checkpoint}"
            );
        }
    }

    // Graceful stop: the last checkpoint, then the leases are released at once.
    let status = w2.terminate();
    assert!(
        status.success(),
        "trib consume exit {status}: {}",
        w2.stderr()
    );
    let leases = client.list_leases("cg", "billing").await.expect("leases");
    assert_eq!(leases.len(), 8);
    // Every shard's checkpoint is its newest record: the last batch was checkpointed.
    let mut newest: HashMap<String, u128> = HashMap::new();
    for (shard, sequence, _) in w2.records() {
        let entry = newest.entry(shard).or_default();
        *entry = (*entry).max(sequence);
    }
    for lease in &leases {
        let checkpoint: Option<u128> = lease
            .checkpoint_sequence_number
            .as_deref()
            .map(|s| s.parse().expect("decimal"));
        assert_eq!(
            checkpoint,
            newest.get(&lease.shard_id).copied(),
            "{}: the checkpoint is not the newest record processed",
            lease.shard_id
        );
    }
    assert!(
        leases.iter().all(|l| l.owner.is_none()),
        "leases not released: {leases:?}"
    );
}

#[tokio::test]
async fn a_stale_lease_owners_checkpoint_is_rejected_and_bad_requests_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(&dir.path().join("node"), &[]).await;
    node.remote().create_stream("fence", 2).await;
    node.remote().wait_active("fence").await;
    let client = Client::connect(&node.endpoint()).await.expect("connect");
    let shards = client.list_shards("fence").await.expect("shards");
    let (shard, sequence) = node.remote().put_acked("fence", "k", "one").await;
    let other = shards
        .iter()
        .find(|s| s.shard_id != shard)
        .expect("a second shard");
    let sequence_in = |owner: &str, epoch: u64, sequence: &str| CheckpointRequest {
        stream_name: "fence".into(),
        application: "app".into(),
        shard_id: shard.clone(),
        owner: owner.into(),
        epoch,
        sequence_number: Some(sequence.into()),
        shard_end: false,
    };
    let take = |owner: &str, expected_epoch: u64, steal: bool| TakeLeaseRequest {
        stream_name: "fence".into(),
        application: "app".into(),
        shard_id: shard.clone(),
        owner: owner.into(),
        expected_epoch,
        steal,
        lease_ms: 60_000,
    };
    let code = |result: Result<Lease, tributary_client::Error>| {
        result.expect_err("refused").code().expect("a code")
    };

    let a = client
        .take_lease(take("a", 0, false))
        .await
        .expect("a takes");
    assert_eq!(a.epoch, 1);
    assert_eq!(a.owner.as_deref(), Some("a"));
    // Live lease: another worker cannot take it without stealing, nor with a stale epoch.
    assert_eq!(
        code(client.take_lease(take("b", 1, false)).await),
        ErrorCode::ResourceInUse
    );
    assert_eq!(
        code(client.take_lease(take("b", 0, true)).await),
        ErrorCode::ResourceInUse
    );
    let a_shard_sequence = sequence.clone();
    client
        .checkpoint(sequence_in("a", 1, &a_shard_sequence))
        .await
        .expect("a checkpoints");
    let b = client
        .take_lease(take("b", 1, true))
        .await
        .expect("b steals");
    assert_eq!(b.epoch, 2);
    assert_eq!(
        b.checkpoint_sequence_number.as_deref(),
        Some(sequence.as_str())
    );

    // a lost the lease: its checkpoint, renewal and release change nothing.
    let (_, later) = node.remote().put_acked("fence", "k", "two").await;
    let stale = client.checkpoint(sequence_in("a", 1, &later)).await;
    assert_eq!(code(stale), ErrorCode::LeaseLost);
    let release = client
        .release_lease(ReleaseLeaseRequest {
            stream_name: "fence".into(),
            application: "app".into(),
            shard_id: shard.clone(),
            owner: "a".into(),
            epoch: 1,
        })
        .await
        .expect_err("a cannot release b's lease");
    assert_eq!(release.code(), Some(ErrorCode::LeaseLost));
    let leases = client.list_leases("fence", "app").await.expect("leases");
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].owner.as_deref(), Some("b"));
    assert_eq!(leases[0].epoch, 2);
    assert_eq!(
        leases[0].checkpoint_sequence_number.as_deref(),
        Some(sequence.as_str())
    );

    // The holder's checkpoints move forward only, within its own shard.
    client
        .checkpoint(sequence_in("b", 2, &later))
        .await
        .expect("b checkpoints");
    let back = client.checkpoint(sequence_in("b", 2, &sequence)).await;
    assert_eq!(code(back), ErrorCode::InvalidArgument);
    let other_shard = node
        .remote()
        .put_acked_with("fence", "k", Some(&other.starting_hash_key), "x")
        .await
        .1;
    let wrong = client.checkpoint(sequence_in("b", 2, &other_shard)).await;
    let wrong = wrong.expect_err("another shard's number");
    assert_eq!(wrong.code(), Some(ErrorCode::InvalidArgument));
    assert!(wrong.to_string().contains("belongs to"), "{wrong}");
    let open_end = client
        .checkpoint(CheckpointRequest {
            sequence_number: None,
            shard_end: true,
            ..sequence_in("b", 2, "")
        })
        .await;
    assert_eq!(code(open_end), ErrorCode::InvalidArgument);

    // Malformed requests: each names what is wrong.
    let bad = [
        (
            TakeLeaseRequest {
                application: "bad name!".into(),
                ..take("c", 2, true)
            },
            "application name",
        ),
        (
            TakeLeaseRequest {
                lease_ms: 10,
                ..take("c", 2, true)
            },
            "lease duration",
        ),
        (
            TakeLeaseRequest {
                owner: String::new(),
                ..take("c", 2, true)
            },
            "lease owner",
        ),
        (
            TakeLeaseRequest {
                shard_id: "shardId-000000000099".into(),
                ..take("c", 2, true)
            },
            "has no shard",
        ),
    ];
    for (request, says) in bad {
        let err = client.take_lease(request).await.expect_err("refused");
        assert!(err.to_string().contains(says), "{err} should say {says}");
    }
    let leases = client.list_leases("fence", "app").await.expect("leases");
    assert_eq!(leases[0].owner.as_deref(), Some("b"));
    assert_eq!(leases[0].epoch, 2);
    assert_eq!(
        leases[0].checkpoint_sequence_number.as_deref(),
        Some(later.as_str())
    );
}

/// Records every processed record, in processing order, across all shards.
#[derive(Clone, Default)]
struct Journal {
    entries: Arc<Mutex<Vec<(String, u128, String)>>>,
    ended: Arc<Mutex<Vec<String>>>,
}

struct Recorder {
    journal: Journal,
}

impl RecordProcessor for Recorder {
    async fn process_records(
        &mut self,
        records: &[Record],
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessError> {
        {
            let mut entries = self.journal.entries.lock().expect("journal");
            for record in records {
                entries.push((
                    checkpointer.shard_id().to_owned(),
                    record.sequence_number.parse()?,
                    String::from_utf8(record.data.to_vec())?,
                ));
            }
        }
        if let Some(last) = records.last() {
            checkpointer.checkpoint(&last.sequence_number).await?;
        }
        Ok(())
    }

    async fn shard_ended(&mut self, checkpointer: &Checkpointer) -> Result<(), ProcessError> {
        self.journal
            .ended
            .lock()
            .expect("journal")
            .push(checkpointer.shard_id().to_owned());
        Ok(())
    }
}

async fn split_while_consuming(mode: ConsumeMode) {
    let cluster = Cluster::start(&[]).await;
    let client = Client::connect(&cluster.node(1).endpoint())
        .await
        .expect("connect");
    cluster.node(1).remote().create_stream("lineage", 1).await;
    cluster.node(1).remote().wait_active("lineage").await;
    if let ConsumeMode::FanOut { consumer } = &mode {
        client
            .register_stream_consumer("lineage", consumer)
            .await
            .expect("register");
        client
            .wait_for_consumer_active("lineage", consumer, Duration::from_secs(30))
            .await
            .expect("active");
    }
    let mut acked = put_values(&client, "lineage", 0, 300).await;
    let journal = Journal::default();
    let factory_journal = journal.clone();
    let group = ConsumerGroup::new(&client, "lineage", "billing", move |_: &ShardInfo| {
        Recorder {
            journal: factory_journal.clone(),
        }
    })
    .with_options(ConsumerGroupOptions {
        worker_id: "solo".into(),
        lease: Duration::from_millis(LEASE_MS),
        renew_interval: Duration::from_millis(300),
        initial_position: InitialPosition::TrimHorizon,
        mode,
        ..ConsumerGroupOptions::default()
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(group.run(async move {
        let _ = stopped.await;
    }));

    // Split while records keep coming: the parent closes at some record, children go on.
    let writer = {
        let client = client.clone();
        tokio::spawn(async move { put_values(&client, "lineage", 300, 600).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .split_shard("lineage", "shardId-000000000000", None)
        .await
        .expect("split");
    acked.extend(writer.await.expect("writer"));
    // Once the children are open, these go to them.
    client
        .wait_for_active_where("lineage", Duration::from_secs(30), |d| {
            d.shards
                .iter()
                .filter(|s| s.ending_sequence_number.is_none())
                .count()
                == 2
        })
        .await
        .expect("split done");
    acked.extend(put_values(&client, "lineage", 900, 300).await);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: HashSet<String> = journal
            .entries
            .lock()
            .expect("journal")
            .iter()
            .map(|(_, _, v)| v.clone())
            .collect();
        let missing = acked.iter().filter(|v| !seen.contains(*v)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged records never processed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    worker.await.expect("worker task").expect("worker ran");

    let entries = journal.entries.lock().expect("journal").clone();
    let parent = "shardId-000000000000";
    let last_parent = entries
        .iter()
        .rposition(|(shard, _, _)| shard == parent)
        .expect("parent records processed");
    let first_child = entries
        .iter()
        .position(|(shard, _, _)| shard != parent)
        .expect("child records processed");
    assert!(
        first_child > last_parent,
        "a child record ({:?}) was processed at {first_child}, before the parent's last ({:?}) at {last_parent}",
        entries[first_child],
        entries[last_parent]
    );
    assert_eq!(
        *journal.ended.lock().expect("journal"),
        vec![parent.to_string()]
    );
    assert_in_order(&entries, "the worker");
    let leases = client
        .list_leases("lineage", "billing")
        .await
        .expect("leases");
    let parent_lease = leases
        .iter()
        .find(|l| l.shard_id == parent)
        .expect("parent");
    assert!(
        parent_lease.shard_end,
        "parent not recorded as finished: {parent_lease:?}"
    );
    assert_eq!(leases.len(), 3, "{leases:?}");
    assert!(
        leases.iter().all(|l| l.owner.is_none()),
        "released on shutdown: {leases:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_split_no_child_record_is_processed_before_its_parents_last_polling() {
    split_while_consuming(ConsumeMode::Polling).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_split_no_child_record_is_processed_before_its_parents_last_fan_out() {
    split_while_consuming(ConsumeMode::FanOut {
        consumer: "pusher".into(),
    })
    .await;
}
