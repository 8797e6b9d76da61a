//! Raft messages between nodes.
//!
//! Every group's messages to a peer travel over that peer's one batched stream
//! (`crate::raft_mux`, on the shared HTTP/2 connection of `crate::peers`), tagged with the group id and the incarnation the sender's membership
//! records for the target. Bodies are bincode of the openraft types (in flight only; never
//! stored), except AppendEntries, whose entries travel as encoded log batches
//! (`replication_wire`). Any failure to deliver, including "that group does not run there yet" and an
//! incarnation mismatch, is reported to openraft as `Unreachable`, which makes it back off
//! and retry rather than treat the answer as a vote or an acknowledgement.

use std::future::Future;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tributary_proto::v1 as pb;

use super::{replication_wire, GroupId, Member, TypeConfig, Vote};
use crate::peers::Peers;
use crate::raft_mux::RaftMux;

/// A snapshot as it travels: the leader's vote, the snapshot's meta and its bytes.
pub type SnapshotWire = (Vote, openraft::alias::SnapshotMetaOf<TypeConfig>, Vec<u8>);

/// Network factory for one group on this node.
#[derive(Clone)]
pub struct PeerNetwork {
    peers: Arc<Peers>,
    group: GroupId,
    from: u64,
}

impl PeerNetwork {
    /// The network of `group` as seen from node `from`.
    pub fn new(peers: Arc<Peers>, group: GroupId, from: u64) -> Self {
        Self { peers, group, from }
    }
}

/// What a node answers to a raft message kind it does not know (`service/peer.rs`); a node
/// of an earlier release answers `APPEND_ENTRIES_BATCHES` so.
pub const UNKNOWN_KIND: &str = "raft message kind is unspecified";

/// One group's link to one peer.
pub struct PeerLink {
    mux: Arc<RaftMux>,
    group: GroupId,
    from: u64,
    target: u64,
    incarnation: u64,
    /// The peer refused AppendEntries as log batches (it runs an earlier release, as in a
    /// rolling upgrade): bincode is sent to it from then on.
    bincode_appends: bool,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: u64, node: &Member) -> Self::Network {
        PeerLink {
            mux: self.peers.raft_mux(&node.addr),
            group: self.group,
            from: self.from,
            target,
            incarnation: node.incarnation,
            bincode_appends: false,
        }
    }
}

fn unreachable(message: String) -> Unreachable<TypeConfig> {
    Unreachable::from_string(message)
}

impl PeerLink {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        kind: pb::RaftMessageKind,
        request: &Req,
        ttl: Duration,
    ) -> Result<Resp, Unreachable<TypeConfig>> {
        let body = bincode::serialize(request)
            .map_err(|e| unreachable(format!("cannot encode a raft message: {e}")))?;
        let reply = self.send(kind, body.into(), ttl).await?;
        self.decode_reply(reply)
    }

    /// Sends one message; the reply may still carry an error.
    async fn send(
        &mut self,
        kind: pb::RaftMessageKind,
        body: bytes::Bytes,
        ttl: Duration,
    ) -> Result<pb::RaftReply, Unreachable<TypeConfig>> {
        let message = pb::RaftMessage {
            group_id: self.group,
            kind: kind as i32,
            from: self.from,
            target_incarnation: self.incarnation,
            body,
        };
        match tokio::time::timeout(ttl, self.mux.call(message)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(why)) => Err(unreachable(format!("node {}: {why}", self.target))),
            Err(_) => Err(unreachable(format!(
                "node {} did not answer within {} ms",
                self.target,
                ttl.as_millis()
            ))),
        }
    }

    fn decode_reply<Resp: DeserializeOwned>(
        &self,
        reply: pb::RaftReply,
    ) -> Result<Resp, Unreachable<TypeConfig>> {
        if !reply.error.is_empty() {
            return Err(unreachable(format!(
                "node {}: {}",
                self.target, reply.error
            )));
        }
        bincode::deserialize(&reply.body).map_err(|e| {
            unreachable(format!(
                "node {} sent a raft reply that does not decode: {e}",
                self.target
            ))
        })
    }
}

/// Bounds an RPC by openraft's hard TTL, but never below a floor that a busy loopback
/// machine can meet.
fn ttl(option: &RPCOption) -> Duration {
    option.hard_ttl().max(Duration::from_millis(200))
}

impl RaftNetworkV2<TypeConfig> for PeerLink {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // Large batches take longer than a heartbeat interval to ship and fsync.
        let ttl = ttl(&option).max(Duration::from_secs(5));
        if !self.bincode_appends {
            let body = replication_wire::encode(&rpc)
                .map_err(|e| unreachable(format!("cannot encode AppendEntries: {e}")))?;
            let reply = self
                .send(pb::RaftMessageKind::AppendEntriesBatches, body, ttl)
                .await?;
            if reply.error != UNKNOWN_KIND {
                return Ok(self.decode_reply(reply)?);
            }
            tracing::info!(
                group = self.group,
                node = self.target,
                "the peer does not take AppendEntries as log batches (an earlier release); sending it bincode"
            );
            self.bincode_appends = true;
        }
        Ok(self
            .call(pb::RaftMessageKind::AppendEntries, &rpc, ttl)
            .await?)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self
            .call(pb::RaftMessageKind::Vote, &rpc, ttl(&option))
            .await?)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self
            .call(pb::RaftMessageKind::PreVote, &rpc, ttl(&option))
            .await?)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, Self::SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let wire: SnapshotWire = (vote, snapshot.meta, snapshot.snapshot.into_inner());
        let ttl = ttl(&option).max(Duration::from_secs(30));
        Ok(self
            .call(pb::RaftMessageKind::FullSnapshot, &wire, ttl)
            .await?)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self
            .call(pb::RaftMessageKind::TransferLeader, &req, ttl(&option))
            .await?)
    }
}
