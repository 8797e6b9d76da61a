//! The seeded fault schedule. One fault at a time, each followed by a heal and a quiet gap,
//! so the cluster keeps a majority and every fault is attributable: kill (SIGKILL +
//! restart) of a leader or a follower, `docker pause` of a leader for longer than the
//! election timeout, isolation of one node (`docker network disconnect`), one-way drops
//! (iptables) and netem delay/loss/reorder in one node's network namespace, a rolling
//! restart of all three, and resharding (UpdateShardCount) while the others run.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tributary_chaos::report::FaultTally;

use crate::cluster::{docker, Cluster};
use crate::workload::{leader, wait_healthy, Nodes, RPC_TIMEOUT};

/// The default election timeout is 750-1500 ms; a pause must outlast it to force an election.
const PAUSE_RANGE_MS: std::ops::Range<u64> = 3_000..8_000;

/// The fault types, by the name the report uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the metadata or a shard leader's container, start it again after the hold.
    KillLeader,
    /// SIGKILL a node that leads nothing we picked.
    KillFollower,
    /// `docker pause` the metadata or a shard leader for 3-8 s.
    PauseLeader,
    /// Disconnect a random node from the cluster network.
    Isolate,
    /// Disconnect the metadata leader from the cluster network.
    IsolateLeader,
    /// Drop packets from one peer on one node (iptables INPUT in its netns).
    DropOneWay,
    /// netem delay, loss and reordering on one node's interface.
    Netem,
    /// Restart all three nodes one after another (SIGTERM), waiting for each to serve.
    RollingRestart,
    /// UpdateShardCount to double or back to the base count.
    Reshard,
}

impl Fault {
    /// The report's name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill_leader",
            Fault::KillFollower => "kill_follower",
            Fault::PauseLeader => "pause_leader",
            Fault::Isolate => "isolate",
            Fault::IsolateLeader => "isolate_leader",
            Fault::DropOneWay => "iptables_drop_one_way",
            Fault::Netem => "netem_delay_loss_reorder",
            Fault::RollingRestart => "rolling_restart",
            Fault::Reshard => "reshard",
        }
    }

    /// The smoke schedule: kill, isolate and pause.
    pub const SMOKE: &'static [Fault] = &[
        Fault::KillLeader,
        Fault::Isolate,
        Fault::PauseLeader,
        Fault::KillFollower,
    ];

    /// Everything.
    pub const ALL: &'static [Fault] = &[
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::PauseLeader,
        Fault::Isolate,
        Fault::IsolateLeader,
        Fault::DropOneWay,
        Fault::Netem,
        Fault::RollingRestart,
        Fault::Reshard,
    ];
}

/// Drives the faults.
pub struct Nemesis {
    cluster: Cluster,
    nodes: Nodes,
    stream: String,
    rng: StdRng,
    started: Instant,
    network: String,
    faults: Vec<Fault>,
    base_shards: u32,
    /// What was injected, and what could not be.
    pub tally: FaultTally,
    /// Injections or heals that failed: the run cannot vouch for its schedule.
    pub errors: Vec<String>,
}

impl Nemesis {
    /// Probes which fault types this host can inject and prepares the schedule.
    pub async fn new(
        cluster: Cluster,
        nodes: Nodes,
        stream: &str,
        seed: u64,
        faults: &[Fault],
        base_shards: u32,
    ) -> Result<Nemesis> {
        let network = cluster.network().await?;
        let mut nemesis = Nemesis {
            cluster,
            nodes,
            stream: stream.to_owned(),
            rng: StdRng::seed_from_u64(seed),
            started: Instant::now(),
            network,
            faults: Vec::new(),
            base_shards,
            tally: FaultTally::default(),
            errors: Vec::new(),
        };
        for fault in faults {
            match nemesis.probe(*fault).await {
                Ok(()) => nemesis.faults.push(*fault),
                Err(why) => {
                    nemesis
                        .tally
                        .not_injected
                        .insert(fault.name().to_owned(), format!("{why:#}"));
                }
            }
        }
        if nemesis.faults.is_empty() {
            return Err(anyhow!("no fault type can be injected on this host"));
        }
        Ok(nemesis)
    }

    /// Whether `fault` can be injected here (tc/iptables on the host, netem in the kernel).
    async fn probe(&self, fault: Fault) -> Result<()> {
        match fault {
            Fault::Netem => {
                which("tc")?;
                which("nsenter")?;
                self.cluster
                    .in_netns(
                        1,
                        "tc",
                        &[
                            "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms",
                        ],
                    )
                    .await?;
                self.cluster
                    .in_netns(1, "tc", &["qdisc", "del", "dev", "eth0", "root"])
                    .await?;
                Ok(())
            }
            Fault::DropOneWay => {
                which("iptables")?;
                which("nsenter")?;
                let rule = ["INPUT", "-s", "192.0.2.1", "-j", "DROP"];
                self.cluster
                    .in_netns(1, "iptables", &[&["-A"], &rule[..]].concat())
                    .await?;
                self.cluster
                    .in_netns(1, "iptables", &[&["-D"], &rule[..]].concat())
                    .await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn at(&self) -> String {
        format!("t={:>6.1}s", self.started.elapsed().as_secs_f64())
    }

    /// Runs faults until `deadline` (each fault ends, healed, before it).
    pub async fn run(&mut self, deadline: Instant, hold: std::ops::Range<u64>) {
        // The first pass visits every enabled type once (in a seeded order) so even a short
        // run covers all of them; later picks are uniform.
        let mut order = self.faults.clone();
        for i in (1..order.len()).rev() {
            let j = self.rng.random_range(0..=i);
            order.swap(i, j);
        }
        let mut round = 0usize;
        loop {
            let quiet = Duration::from_millis(self.rng.random_range(2_000..5_000));
            let fault = if round < order.len() {
                order[round]
            } else {
                self.faults[self.rng.random_range(0..self.faults.len())]
            };
            round += 1;
            let hold_ms = match fault {
                Fault::PauseLeader => self.rng.random_range(PAUSE_RANGE_MS),
                _ => self.rng.random_range(hold.clone()),
            };
            let pick = self.rng.random_range(0..1_000u64);
            let needed = quiet + Duration::from_millis(hold_ms) + Duration::from_secs(5);
            if Instant::now() + needed > deadline {
                break;
            }
            tokio::time::sleep(quiet).await;
            let began = Instant::now();
            match self
                .inject(fault, Duration::from_millis(hold_ms), pick)
                .await
            {
                Ok(target) => {
                    let seconds = began.elapsed().as_secs_f64();
                    let line =
                        format!("{} {} {target} for {seconds:.1} s", self.at(), fault.name());
                    eprintln!("nemesis: {line}");
                    self.tally.add(fault.name(), seconds, line);
                }
                Err(error) => {
                    let line = format!("{} {} failed: {error:#}", self.at(), fault.name());
                    eprintln!("nemesis: {line}");
                    self.errors.push(line);
                    self.heal_all().await;
                }
            }
        }
    }

    /// A node that leads (`metadata`: the metadata group; else a random open shard), or a
    /// random node when no leader is known.
    async fn leader(&self, metadata: bool, pick: u64) -> u64 {
        leader(&self.nodes, &self.stream, metadata, pick)
            .await
            .unwrap_or(pick % 3 + 1)
    }

    async fn inject(&mut self, fault: Fault, hold: Duration, pick: u64) -> Result<String> {
        let metadata = pick.is_multiple_of(2);
        match fault {
            Fault::KillLeader | Fault::KillFollower => {
                let leader = self.leader(true, pick).await;
                let node = if fault == Fault::KillLeader {
                    self.leader(metadata, pick).await
                } else {
                    // Not the metadata leader.
                    (leader + pick % 2) % 3 + 1
                };
                let container = self.cluster.container(node).await?;
                docker(&["kill", "-s", "KILL", &container]).await?;
                tokio::time::sleep(hold).await;
                docker(&["start", &container]).await?;
                Ok(format!("node{node}"))
            }
            Fault::PauseLeader => {
                let node = self.leader(metadata, pick).await;
                let container = self.cluster.container(node).await?;
                docker(&["pause", &container]).await?;
                tokio::time::sleep(hold).await;
                docker(&["unpause", &container]).await?;
                Ok(format!(
                    "node{node} ({} leader)",
                    if metadata { "metadata" } else { "shard" }
                ))
            }
            Fault::Isolate | Fault::IsolateLeader => {
                let node = if fault == Fault::IsolateLeader {
                    self.leader(true, pick).await
                } else {
                    pick % 3 + 1
                };
                let container = self.cluster.container(node).await?;
                docker(&["network", "disconnect", &self.network, &container]).await?;
                tokio::time::sleep(hold).await;
                self.reconnect(node, &container).await?;
                Ok(format!("node{node}"))
            }
            Fault::DropOneWay => {
                let node = pick % 3 + 1;
                let from = (node + pick % 2) % 3 + 1;
                let ip = self.cluster.ip(from);
                let rule = ["INPUT", "-s", ip.as_str(), "-j", "DROP"];
                self.cluster
                    .in_netns(node, "iptables", &[&["-A"], &rule[..]].concat())
                    .await?;
                tokio::time::sleep(hold).await;
                self.cluster
                    .in_netns(node, "iptables", &[&["-D"], &rule[..]].concat())
                    .await?;
                Ok(format!("node{node} drops packets from node{from}"))
            }
            Fault::Netem => {
                let node = pick % 3 + 1;
                let args = [
                    "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "150ms", "100ms",
                    "loss", "10%", "reorder", "25%", "50%",
                ];
                self.cluster.in_netns(node, "tc", &args).await?;
                tokio::time::sleep(hold).await;
                self.cluster
                    .in_netns(node, "tc", &["qdisc", "del", "dev", "eth0", "root"])
                    .await?;
                Ok(format!(
                    "node{node} eth0 delay 150±100ms loss 10% reorder 25%"
                ))
            }
            Fault::RollingRestart => {
                for node in 1..=3 {
                    let container = self.cluster.container(node).await?;
                    docker(&["restart", "-t", "10", &container]).await?;
                    wait_healthy(&self.nodes, None, Duration::from_secs(60)).await?;
                }
                Ok("node1, node2, node3".into())
            }
            Fault::Reshard => {
                let client = self
                    .nodes
                    .client(pick % 3 + 1)
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
                let summary =
                    tokio::time::timeout(RPC_TIMEOUT, client.describe_stream_summary(&self.stream))
                        .await
                        .map_err(|_| anyhow!("DescribeStreamSummary timed out"))??;
                let current = summary.open_shard_count;
                let target = if current > self.base_shards {
                    self.base_shards
                } else {
                    self.base_shards * 2
                };
                tokio::time::timeout(RPC_TIMEOUT, client.update_shard_count(&self.stream, target))
                    .await
                    .map_err(|_| anyhow!("UpdateShardCount timed out"))??;
                // Let the reshard run under the workload (and the next fault).
                tokio::time::sleep(hold).await;
                Ok(format!("{current} -> {target} open shards"))
            }
        }
    }

    /// Connects node `id` back at its own address and name.
    async fn reconnect(&self, id: u64, container: &str) -> Result<()> {
        let ip = self.cluster.ip(id);
        let alias = format!("node{id}");
        docker(&[
            "network",
            "connect",
            "--ip",
            &ip,
            "--alias",
            &alias,
            &self.network,
            container,
        ])
        .await
        .map(|_| ())
    }

    /// Undoes every fault type on every node; errors mean "nothing to undo".
    pub async fn heal_all(&self) {
        for id in 1..=3 {
            let Ok(container) = self.cluster.container(id).await else {
                continue;
            };
            let _ = docker(&["unpause", &container]).await;
            let _ = docker(&["start", &container]).await;
            let connected = docker(&[
                "inspect",
                "-f",
                "{{json .NetworkSettings.Networks}}",
                &container,
            ])
            .await
            .is_ok_and(|networks| networks.contains(&self.network));
            if !connected {
                let _ = self.reconnect(id, &container).await;
            }
            let _ = self
                .cluster
                .in_netns(id, "tc", &["qdisc", "del", "dev", "eth0", "root"])
                .await;
            for peer in 1..=3 {
                let ip = self.cluster.ip(peer);
                while self
                    .cluster
                    .in_netns(id, "iptables", &["-D", "INPUT", "-s", &ip, "-j", "DROP"])
                    .await
                    .is_ok()
                {}
            }
        }
    }
}

/// Fails with a reason when `program` is not on the PATH.
fn which(program: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if found {
        Ok(())
    } else {
        Err(anyhow!("`{program}` is not installed on the host"))
    }
}
