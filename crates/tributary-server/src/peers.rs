//! Connections to the other nodes, and what this node last heard from each.
//!
//! One tonic `Channel` per peer address: a single long-lived HTTP/2 connection that carries
//! one batched stream with the raft messages of every group (`crate::raft_mux`), plus
//! forwarded client requests and probes as their own HTTP/2 streams (no connection per
//! message). A background task asks every peer for its `NodeInfo` a few
//! times a second; that is the failure detector behind `up`/`down` in cluster status and
//! behind the leadership balancer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tributary_proto::v1 as pb;
use tributary_proto::v1::peer_service_client::PeerServiceClient;

use crate::raft_mux::RaftMux;
use crate::service::MAX_MESSAGE_BYTES;

/// How often peers are asked for their `NodeInfo`.
const PROBE_INTERVAL: Duration = Duration::from_millis(300);
/// A peer not heard from for this long is reported down.
const DOWN_AFTER: Duration = Duration::from_millis(1500);

/// A peer's last answer.
#[derive(Debug, Clone)]
pub struct PeerView {
    /// When it answered.
    pub at: Instant,
    /// What it said.
    pub info: pb::NodeInfoReply,
}

/// The other nodes of the cluster.
pub struct Peers {
    self_id: u64,
    addresses: RwLock<BTreeMap<u64, String>>,
    channels: Mutex<HashMap<String, Channel>>,
    muxes: Mutex<HashMap<String, Arc<RaftMux>>>,
    views: RwLock<BTreeMap<u64, PeerView>>,
}

impl Peers {
    /// Peers from the configured `id -> address` map (this node included or not).
    pub fn new(self_id: u64, addresses: BTreeMap<u64, String>) -> Arc<Self> {
        Arc::new(Self {
            self_id,
            addresses: RwLock::new(addresses),
            channels: Mutex::new(HashMap::new()),
            muxes: Mutex::new(HashMap::new()),
            views: RwLock::new(BTreeMap::new()),
        })
    }

    /// The configured nodes (this one included when configured).
    pub fn addresses(&self) -> BTreeMap<u64, String> {
        self.addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The address of a node, if known.
    pub fn address(&self, node: u64) -> Option<String> {
        self.addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .cloned()
    }

    /// Ids of the other nodes.
    pub fn others(&self) -> Vec<u64> {
        self.addresses()
            .into_keys()
            .filter(|id| *id != self.self_id)
            .collect()
    }

    /// The shared channel to an address (created on first use; reconnects by itself).
    pub fn channel(&self, addr: &str) -> Channel {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(addr) {
            return channel.clone();
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("peer addresses are validated as HOST:PORT")
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .initial_connection_window_size(Some(tributary_proto::HTTP2_CONNECTION_WINDOW_BYTES))
            .initial_stream_window_size(Some(tributary_proto::HTTP2_STREAM_WINDOW_BYTES))
            .max_frame_size(Some(tributary_proto::HTTP2_MAX_FRAME_BYTES))
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        channel
    }

    /// A PeerService client over the shared channel to `addr`.
    pub fn client(&self, addr: &str) -> PeerServiceClient<Channel> {
        PeerServiceClient::new(self.channel(addr))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The batched raft message stream to `addr` (started on first use).
    pub fn raft_mux(&self, addr: &str) -> Arc<RaftMux> {
        let mut muxes = self.muxes.lock().unwrap_or_else(|p| p.into_inner());
        muxes
            .entry(addr.to_string())
            .or_insert_with(|| RaftMux::start(self.client(addr), addr.to_string()))
            .clone()
    }

    /// A client for a node by id.
    pub fn client_for(&self, node: u64) -> Option<PeerServiceClient<Channel>> {
        self.address(node).map(|addr| self.client(&addr))
    }

    /// Asks one node for its NodeInfo, bounded by `timeout`.
    pub async fn node_info(&self, node: u64, timeout: Duration) -> Option<pb::NodeInfoReply> {
        let mut client = self.client_for(node)?;
        let mut request = tonic::Request::new(pb::NodeInfoRequest { from: self.self_id });
        request.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.node_info(request)).await {
            Ok(Ok(reply)) => Some(reply.into_inner()),
            _ => None,
        }
    }

    /// The last answer of a peer that answered recently.
    pub fn view(&self, node: u64) -> Option<PeerView> {
        self.views
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .filter(|v| v.at.elapsed() < DOWN_AFTER)
            .cloned()
    }

    /// Whether a peer answered recently.
    pub fn is_up(&self, node: u64) -> bool {
        node == self.self_id || self.view(node).is_some()
    }

    /// Whether a peer is up, serving, and not shutting down: a good place for a leader.
    pub fn can_lead(&self, node: u64) -> bool {
        self.view(node)
            .is_some_and(|v| v.info.ready && !v.info.draining)
    }

    /// Probes every peer forever (spawned once per node).
    pub async fn probe_loop(self: Arc<Self>) {
        loop {
            let probes = self.others().into_iter().map(|id| {
                let peers = self.clone();
                async move { (id, peers.node_info(id, DOWN_AFTER).await) }
            });
            for (id, info) in futures::future::join_all(probes).await {
                if let Some(info) = info {
                    self.views
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(
                            id,
                            PeerView {
                                at: Instant::now(),
                                info,
                            },
                        );
                }
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }
}
