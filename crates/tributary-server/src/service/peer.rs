//! PeerService: what nodes ask each other (raft messages, node info, forwarded writes and
//! read indexes). Not for clients.

use std::io::Cursor;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tributary_proto::v1 as pb;
use tributary_proto::v1::peer_service_server::PeerService;

use crate::error::ApiError;
use crate::node::{not_leader, LocalWrite, Node};
use crate::raft::network::{SnapshotWire, UNKNOWN_KIND};
use crate::raft::replication_wire;
use crate::raft::{Raft, RecordBatch};
use crate::raft_mux::serve_stream;

/// The node-to-node service.
pub struct PeerApi {
    node: Arc<Node>,
}

impl PeerApi {
    /// A service over a node.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    bincode::deserialize(body).map_err(|e| format!("raft message does not decode: {e}"))
}

fn reply<T: Serialize, E: std::fmt::Display>(result: Result<T, E>) -> pb::RaftReply {
    match result {
        Ok(value) => match bincode::serialize(&value) {
            Ok(body) => pb::RaftReply {
                body: body.into(),
                error: String::new(),
            },
            Err(err) => pb::RaftReply {
                body: Default::default(),
                error: format!("cannot encode the raft reply: {err}"),
            },
        },
        Err(err) => pb::RaftReply {
            body: Default::default(),
            error: err.to_string(),
        },
    }
}

fn forward_reply(result: Result<LocalWrite<u64>, ApiError>) -> pb::ForwardReply {
    let (result, not_leader) = match result {
        Ok(LocalWrite::Done(index)) => (Ok(index), false),
        Ok(LocalWrite::NotLeader(leader)) => (Err(not_leader(leader)), true),
        Err(err) => (Err(err), false),
    };
    match result {
        Ok(index) => pb::ForwardReply {
            index,
            error_code: pb::ErrorCode::Unspecified as i32,
            error_message: String::new(),
            not_leader,
        },
        Err(err) => pb::ForwardReply {
            index: 0,
            error_code: err.code as i32,
            error_message: err.message,
            not_leader,
        },
    }
}

async fn handle(raft: &Raft, kind: pb::RaftMessageKind, body: bytes::Bytes) -> pb::RaftReply {
    use pb::RaftMessageKind as Kind;
    match kind {
        Kind::AppendEntriesBatches => match replication_wire::decode(body) {
            Ok(rpc) => reply(raft.append_entries(rpc).await),
            Err(err) => reply::<(), _>(Err(format!("raft message does not decode: {err}"))),
        },
        Kind::AppendEntries => match decode(&body) {
            Ok(rpc) => reply(raft.append_entries(rpc).await),
            Err(err) => reply::<(), _>(Err(err)),
        },
        Kind::Vote => match decode(&body) {
            Ok(rpc) => reply(raft.vote(rpc).await),
            Err(err) => reply::<(), _>(Err(err)),
        },
        Kind::PreVote => match decode(&body) {
            Ok(rpc) => reply(raft.pre_vote(rpc).await),
            Err(err) => reply::<(), _>(Err(err)),
        },
        Kind::FullSnapshot => match decode::<SnapshotWire>(&body) {
            Ok((vote, meta, data)) => {
                let snapshot = openraft::alias::SnapshotOf::<crate::raft::TypeConfig, _> {
                    meta,
                    snapshot: Cursor::new(data),
                };
                reply(raft.install_full_snapshot(vote, snapshot).await)
            }
            Err(err) => reply::<(), _>(Err(err)),
        },
        Kind::TransferLeader => match decode(&body) {
            Ok(rpc) => reply(raft.handle_transfer_leader(rpc).await),
            Err(err) => reply::<(), _>(Err(err)),
        },
        Kind::Unspecified => reply::<(), _>(Err(UNKNOWN_KIND)),
    }
}

/// One raft message from a peer: checked against this data dir's incarnation, routed to
/// its group.
async fn handle_message(node: &Node, message: pb::RaftMessage) -> pb::RaftReply {
    let identity = node.identity();
    if !identity.accepts(message.target_incarnation) {
        return reply::<(), _>(Err(format!(
            "node {} is incarnation {:x}, not {:x}: its data dir was replaced and it must be re-added (trib cluster replace-node {})",
            identity.node_id, identity.incarnation, message.target_incarnation, identity.node_id
        )));
    }
    let Some(raft) = node.raft_for(message.group_id) else {
        return reply::<(), _>(Err(format!(
            "group {} is not running on this node yet",
            message.group_id
        )));
    };
    let kind =
        pb::RaftMessageKind::try_from(message.kind).unwrap_or(pb::RaftMessageKind::Unspecified);
    if matches!(
        kind,
        pb::RaftMessageKind::AppendEntries | pb::RaftMessageKind::AppendEntriesBatches
    ) {
        if let Some(shard) = node.shard_group(message.group_id) {
            shard.note_leader_contact();
        }
    }
    handle(&raft, kind, message.body).await
}

#[tonic::async_trait]
impl PeerService for PeerApi {
    type RaftStreamStream = ReceiverStream<Result<pb::RaftFrame, Status>>;

    async fn raft_stream(
        &self,
        request: Request<Streaming<pb::RaftFrame>>,
    ) -> Result<Response<Self::RaftStreamStream>, Status> {
        let node = self.node.clone();
        Ok(Response::new(serve_stream(
            request.into_inner(),
            move |message| {
                let node = node.clone();
                async move { handle_message(&node, message).await }
            },
        )))
    }

    async fn node_info(
        &self,
        _request: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoReply>, Status> {
        Ok(Response::new(self.node.node_info()))
    }

    async fn forward_append(
        &self,
        request: Request<pb::ForwardAppendRequest>,
    ) -> Result<Response<pb::ForwardReply>, Status> {
        let request = request.into_inner();
        let result = match bincode::deserialize::<RecordBatch>(&request.batch) {
            Ok(batch) => self.node.forwarded_append(request.group_id, batch).await,
            Err(err) => Err(ApiError::internal(format!(
                "forwarded batch does not decode: {err}"
            ))),
        };
        Ok(Response::new(forward_reply(result)))
    }

    async fn forward_metadata(
        &self,
        request: Request<pb::ForwardMetadataRequest>,
    ) -> Result<Response<pb::ForwardReply>, Status> {
        let request = request.into_inner();
        let result = match bincode::deserialize(&request.command) {
            Ok(command) => self.node.forwarded_metadata(command).await,
            Err(err) => Err(ApiError::internal(format!(
                "forwarded metadata command does not decode: {err}"
            ))),
        };
        Ok(Response::new(forward_reply(result)))
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ForwardReply>, Status> {
        let group = request.into_inner().group_id;
        Ok(Response::new(forward_reply(
            self.node.forwarded_read_index(group).await,
        )))
    }

    async fn end_older_subscription(
        &self,
        request: Request<pb::EndOlderSubscriptionRequest>,
    ) -> Result<Response<pb::EndOlderSubscriptionReply>, Status> {
        let request = request.into_inner();
        let ended = self.node.subscriptions().end_older(
            (request.stream_id, request.consumer_id, request.shard_index),
            request.started_at_ms,
            request.node_id,
            self.node.config().node_id,
        );
        Ok(Response::new(pb::EndOlderSubscriptionReply { ended }))
    }

    async fn read_log_entry(
        &self,
        request: Request<pb::ReadLogEntryRequest>,
    ) -> Result<Response<pb::ReadLogEntryReply>, Status> {
        let request = request.into_inner();
        let node = self.node.clone();
        let reply = tokio::task::spawn_blocking(move || {
            crate::repair::local_entry(&node, request.group_id, request.index)
        })
        .await
        .map_err(|e| Status::internal(format!("read task: {e}")))?;
        Ok(Response::new(reply))
    }

    async fn forward_seal(
        &self,
        request: Request<pb::ForwardSealRequest>,
    ) -> Result<Response<pb::ForwardReply>, Status> {
        let group = request.into_inner().group_id;
        Ok(Response::new(forward_reply(
            self.node.forwarded_seal(group).await,
        )))
    }

    async fn replace_member(
        &self,
        request: Request<pb::ReplaceMemberRequest>,
    ) -> Result<Response<pb::ForwardReply>, Status> {
        let request = request.into_inner();
        Ok(Response::new(forward_reply(
            self.node
                .replace_member_local(
                    request.group_id,
                    request.node_id,
                    request.address,
                    request.incarnation,
                )
                .await
                .map(|outcome| match outcome {
                    LocalWrite::Done(()) => LocalWrite::Done(0),
                    LocalWrite::NotLeader(leader) => LocalWrite::NotLeader(leader),
                }),
        )))
    }
}
