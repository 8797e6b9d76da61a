//! ClusterService: the nodes of the cluster and their roles.

use std::sync::Arc;

use openraft::ServerState;
use tonic::{Request, Response, Status};
use tributary_proto::v1 as pb;
use tributary_proto::v1::cluster_service_server::ClusterService;

use crate::node::Node;

/// The cluster view service.
pub struct ClusterApi {
    node: Arc<Node>,
}

impl ClusterApi {
    /// A service over a node.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let config = self.node.config();
        let (state, leader) = {
            let metrics = self.node.metadata_raft().metrics();
            let metrics = openraft::async_runtime::WatchReceiver::borrow_watched(&metrics);
            (metrics.state, metrics.current_leader)
        };
        let groups = self.node.shard_groups();
        let mut shard_leaders = 0;
        for group in &groups {
            if group.raft.current_leader().await == Some(config.node_id) {
                shard_leaders += 1;
            }
        }
        let node = pb::NodeStatus {
            node_id: config.node_id,
            address: config.listen.to_string(),
            az: config.az.clone(),
            state: "up".into(),
            metadata_role: role(state).into(),
            shard_replicas: groups.len() as u32,
            shard_leaders,
        };
        Ok(Response::new(pb::ClusterStatusResponse {
            nodes: vec![node],
            metadata_leader_id: leader.unwrap_or(0),
        }))
    }
}
