//! Test harness: starts real `tributary` nodes as processes on loopback, with their own
//! temp data dirs, and stops them by PID. Every wait is bounded.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tributary_proto::v1::data_service_client::DataServiceClient;
use tributary_proto::v1::stream_service_client::StreamServiceClient;
use tributary_proto::v1::{self as pb};

/// Path of a workspace binary built by `cargo build --bins` (scripts/test does that first).
pub fn binary(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` (scripts/test does) first",
        path.display()
    );
    path
}

/// A free loopback port (bound then released; good enough on loopback in tests).
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr")
}

/// A `tributary serve` process.
pub struct NodeProcess {
    /// Its node id.
    pub node_id: u64,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data dir (kept across restarts).
    pub data_dir: PathBuf,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
    child: Option<Child>,
    log_path: PathBuf,
    remote: Remote,
}

impl NodeProcess {
    /// Starts a single-node cluster in `data_dir` with extra flags, and waits until it
    /// serves.
    pub async fn start(data_dir: &Path, extra_args: &[&str]) -> NodeProcess {
        let mut node = NodeProcess::launch(1, free_addr(), data_dir, extra_args);
        node.wait_ready().await;
        node
    }

    /// Starts node `node_id` on `addr` without waiting for it (a cluster member serves
    /// only once a majority is up).
    pub fn launch(
        node_id: u64,
        addr: SocketAddr,
        data_dir: &Path,
        extra_args: &[&str],
    ) -> NodeProcess {
        let mut node = NodeProcess {
            node_id,
            addr,
            data_dir: data_dir.to_path_buf(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            extra_env: Vec::new(),
            child: None,
            log_path: data_dir.with_extension("log"),
            remote: Remote {
                endpoint: format!("http://{addr}"),
            },
        };
        node.spawn_process();
        node
    }

    async fn spawn(&mut self) {
        self.spawn_process();
        self.wait_ready().await;
    }

    /// Starts the process again (after `kill` or `terminate`) without waiting.
    pub fn spawn_process(&mut self) {
        let az = ["az-a", "az-b", "az-c"][((self.node_id - 1) % 3) as usize];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        let child = Command::new(binary("tributary"))
            .arg("serve")
            .args(["--node-id", &self.node_id.to_string(), "--az", az])
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start tributary");
        self.child = Some(child);
    }

    /// Sets an environment variable for the next start of the process.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.retain(|(k, _)| k != key);
        self.extra_env.push((key.to_string(), value.to_string()));
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The node's endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The node's log output so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (60 s at most) until the node serves client requests.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "tributary exited with {status} before serving; log:\n{}",
                        self.log()
                    );
                }
            }
            if let Ok(mut client) = StreamServiceClient::connect(self.endpoint()).await {
                if client.list_streams(pb::ListStreamsRequest {}).await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "tributary did not serve within 60 s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown path runs, unsynced page-cache writes stay (a process crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL by PID
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for exit (bounded).
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as libc::pid_t;
            #[allow(unsafe_code)]
            // SAFETY: sending a signal to our own child by PID.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tributary did not exit within 20 s of SIGTERM; log:\n{}",
                self.log()
            );
        }
    }

    /// Starts the process again on the same data dir and port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Clients for this node.
    pub fn remote(&self) -> Remote {
        Remote {
            endpoint: self.endpoint(),
        }
    }
}

impl std::ops::Deref for NodeProcess {
    type Target = Remote;

    fn deref(&self) -> &Remote {
        &self.remote
    }
}

/// A node reached by its endpoint URL (a process, a container, any node of a cluster).
#[derive(Debug, Clone)]
pub struct Remote {
    /// `http://HOST:PORT`.
    pub endpoint: String,
}

impl Remote {
    /// A control-plane client.
    pub async fn streams(&self) -> StreamServiceClient<tonic::transport::Channel> {
        StreamServiceClient::connect(self.endpoint.clone())
            .await
            .expect("connect")
    }

    /// A data-plane client with message limits raised for big records.
    pub async fn data(&self) -> DataServiceClient<tonic::transport::Channel> {
        DataServiceClient::connect(self.endpoint.clone())
            .await
            .expect("connect")
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// Puts one record and expects it to be acknowledged.
    pub async fn put_one(&self, stream: &str, key: &str, data: &[u8]) -> pb::PutRecordResponse {
        self.data()
            .await
            .put_record(pb::PutRecordRequest {
                stream_name: stream.into(),
                partition_key: key.into(),
                data: data.to_vec().into(),
                explicit_hash_key: None,
                sequence_number_for_ordering: None,
            })
            .await
            .unwrap_or_else(|status| panic!("put to {stream}: {status:?}"))
            .into_inner()
    }

    /// Creates a stream and waits until it is ACTIVE.
    pub async fn create_stream(&self, name: &str, shards: u32) {
        let mut client = self.streams().await;
        client
            .create_stream(pb::CreateStreamRequest {
                stream_name: name.into(),
                shard_count: shards,
                ..Default::default()
            })
            .await
            .expect("create stream");
        self.wait_active(name).await;
    }

    /// Waits until a stream is ACTIVE (bounded).
    pub async fn wait_active(&self, name: &str) {
        let mut client = self.streams().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = client
                .describe_stream(pb::DescribeStreamRequest {
                    stream_name: name.into(),
                })
                .await
                .ok()
                .and_then(|r| r.into_inner().stream)
                .and_then(|s| s.summary)
                .map(|s| s.status);
            if status == Some(pb::StreamStatus::Active as i32) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stream {name} not ACTIVE within 30 s (status {status:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Lists a stream's shards.
    pub async fn shards(&self, name: &str) -> Vec<pb::Shard> {
        self.streams()
            .await
            .list_shards(pb::ListShardsRequest {
                stream_name: name.into(),
            })
            .await
            .expect("list shards")
            .into_inner()
            .shards
    }

    /// Reads a shard from TRIM_HORIZON until a page comes back empty at the tip.
    pub async fn read_shard(
        &self,
        stream: &str,
        shard_id: &str,
    ) -> Result<Vec<pb::Record>, tonic::Status> {
        let mut data = self.data().await;
        let mut iterator = data
            .get_shard_iterator(pb::GetShardIteratorRequest {
                stream_name: stream.into(),
                shard_id: shard_id.into(),
                shard_iterator_type: pb::ShardIteratorType::TrimHorizon as i32,
                ..Default::default()
            })
            .await?
            .into_inner()
            .shard_iterator;
        let mut records = Vec::new();
        for _ in 0..100_000 {
            let page = data
                .get_records(pb::GetRecordsRequest {
                    shard_iterator: iterator.clone(),
                    limit: 0,
                    stream_name: None,
                    wait_ms: None,
                })
                .await?
                .into_inner();
            let empty = page.records.is_empty();
            records.extend(page.records);
            match page.next_shard_iterator {
                Some(next) => iterator = next,
                None => break,
            }
            if empty && page.millis_behind_latest == 0 {
                break;
            }
        }
        Ok(records)
    }

    /// Puts one record through `node`, retrying retryable failures (elections) for up to 20 s.
    /// Returns the sequence number once acknowledged.
    pub async fn put_acked(&self, stream: &str, key: &str, data: &str) -> (String, String) {
        self.put_acked_with(stream, key, None, data).await
    }

    /// Like `put_acked`, routed by `explicit_hash_key` when given.
    pub async fn put_acked_with(
        &self,
        stream: &str,
        key: &str,
        explicit_hash_key: Option<&str>,
        data: &str,
    ) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut client = self.data().await;
            match client
                .put_record(pb::PutRecordRequest {
                    stream_name: stream.into(),
                    partition_key: key.into(),
                    data: data.as_bytes().to_vec().into(),
                    explicit_hash_key: explicit_hash_key.map(str::to_string),
                    sequence_number_for_ordering: None,
                })
                .await
            {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    return (reply.shard_id, reply.sequence_number);
                }
                Err(status) => {
                    assert!(
                        error_code(&status) == "Unavailable" && Instant::now() < deadline,
                        "put {data} via {}: {status:?}",
                        self.endpoint
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Every record of every shard as read through `node`: shard id -> [(sequence, data)].
    pub async fn read_all(&self, stream: &str) -> ShardRecords {
        self.try_read_all(stream)
            .await
            .unwrap_or_else(|s| panic!("read {stream} via {}: {s:?}", self.endpoint))
    }

    /// Like `read_all`, but the first failed read is returned instead of panicking.
    pub async fn try_read_all(&self, stream: &str) -> Result<ShardRecords, tonic::Status> {
        let mut out = ShardRecords::new();
        for shard in self.shards(stream).await {
            let records = self.read_shard(stream, &shard.shard_id).await?;
            out.insert(
                shard.shard_id.clone(),
                records
                    .into_iter()
                    .map(|r| {
                        (
                            r.sequence_number,
                            String::from_utf8(r.data.to_vec()).expect("utf8"),
                        )
                    })
                    .collect(),
            );
        }
        Ok(out)
    }

    /// Waits (60 s at most) until the node serves client requests.
    pub async fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut client) = StreamServiceClient::connect(self.endpoint.clone()).await {
                if client.list_streams(pb::ListStreamsRequest {}).await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not serve within 60 s",
                self.endpoint
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Records per shard as read: shard id -> [(sequence number, data as text)].
pub type ShardRecords = std::collections::BTreeMap<String, Vec<(String, String)>>;

/// Asserts every acknowledged record is in `read` at its acknowledged sequence number,
/// and that each shard's sequence numbers strictly increase.
pub fn assert_contains_acked(read: &ShardRecords, acked: &[(String, String, String)], who: &str) {
    for (shard, records) in read {
        for pair in records.windows(2) {
            let a: u128 = pair[0].0.parse().expect("decimal");
            let b: u128 = pair[1].0.parse().expect("decimal");
            assert!(
                a < b,
                "{who}: {shard} sequence numbers not increasing: {pair:?}"
            );
        }
    }
    for (shard, sequence, data) in acked {
        let found = read
            .get(shard)
            .and_then(|records| records.iter().find(|(s, _)| s == sequence));
        assert_eq!(
            found.map(|(_, d)| d.as_str()),
            Some(data.as_str()),
            "{who}: acknowledged record {data} ({shard} {sequence}) is missing or different"
        );
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The stable error name a failed RPC carries.
pub fn error_code(status: &tonic::Status) -> String {
    status
        .metadata()
        .get(tributary_proto::ERROR_CODE_METADATA)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
        .to_string()
}

/// Every segment file under a node's data dir for shard groups (not the metadata group).
pub fn shard_segment_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(groups) = std::fs::read_dir(data_dir.join("groups")) else {
        return files;
    };
    for group in groups.flatten() {
        if group
            .file_name()
            .to_string_lossy()
            .trim_start_matches('0')
            .is_empty()
        {
            continue; // group 0 is the metadata group
        }
        if let Ok(entries) = std::fs::read_dir(group.path()) {
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "seg") {
                    files.push(entry.path());
                }
            }
        }
    }
    files.sort();
    files
}

/// A three-node cluster of `tributary serve` processes on loopback (az-a, az-b, az-c),
/// each with its own data dir under one temp dir.
pub struct Cluster {
    /// Nodes 1, 2, 3 (index = id - 1).
    pub nodes: Vec<NodeProcess>,
    /// The `--peers` value every node got.
    pub peers: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts three nodes, in the given order of ids, and waits until all serve.
    pub async fn start_in_order(order: [u64; 3], extra_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut args: Vec<&str> = vec!["--peers", &peers];
        args.extend_from_slice(extra_args);
        let mut slots: Vec<Option<NodeProcess>> = vec![None, None, None];
        for id in order {
            let i = (id - 1) as usize;
            let data_dir = dir.path().join(format!("node-{id}"));
            slots[i] = Some(NodeProcess::launch(id, addrs[i], &data_dir, &args));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut nodes: Vec<NodeProcess> = slots.into_iter().map(|n| n.expect("started")).collect();
        for node in &mut nodes {
            node.wait_ready().await;
        }
        Cluster {
            nodes,
            peers,
            _dir: dir,
        }
    }

    /// Starts three nodes in id order and waits until all serve.
    pub async fn start(extra_args: &[&str]) -> Cluster {
        Cluster::start_in_order([1, 2, 3], extra_args).await
    }

    /// Node `id` (1-based).
    pub fn node(&self, id: u64) -> &NodeProcess {
        &self.nodes[(id - 1) as usize]
    }

    /// Node `id`, mutable (to kill or restart it).
    pub fn node_mut(&mut self, id: u64) -> &mut NodeProcess {
        &mut self.nodes[(id - 1) as usize]
    }

    /// `ClusterStatus` as node `via` sees it.
    pub async fn status(&self, via: u64) -> pb::ClusterStatusResponse {
        let mut client =
            tributary_proto::v1::cluster_service_client::ClusterServiceClient::connect(
                self.node(via).endpoint(),
            )
            .await
            .expect("connect");
        client
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .expect("cluster status")
            .into_inner()
    }

    /// Waits (bounded) until `check` holds for the status seen from node `via`.
    pub async fn wait_status(
        &self,
        via: u64,
        what: &str,
        limit: Duration,
        check: impl Fn(&pb::ClusterStatusResponse) -> bool,
    ) -> pb::ClusterStatusResponse {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status(via).await;
            if check(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached within {limit:?}; last status {status:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
