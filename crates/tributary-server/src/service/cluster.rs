//! ClusterService: the nodes of the cluster and their roles, and node replacement.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tributary_proto::v1 as pb;
use tributary_proto::v1::cluster_service_server::ClusterService;

use crate::node::{role_name, with_metrics, Node};

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

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let me = self.node.config().node_id;
        let (state, leader) =
            with_metrics(self.node.metadata_raft(), |m| (m.state, m.current_leader));
        let mut ids: Vec<u64> = self.node.members().into_keys().collect();
        for id in self.node.peers().addresses().into_keys() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let members = self.node.members();
        let nodes = ids
            .into_iter()
            .map(|id| {
                let address = members
                    .get(&id)
                    .map(|m| m.addr.clone())
                    .or_else(|| self.node.peers().address(id))
                    .unwrap_or_default();
                if id == me {
                    let (replicas, leaders) = self.node.shard_counts();
                    return pb::NodeStatus {
                        node_id: id,
                        address,
                        az: self.node.config().az.clone(),
                        state: "up".into(),
                        metadata_role: role_name(state).into(),
                        shard_replicas: replicas,
                        shard_leaders: leaders,
                        quiet_shards: self.node.quiet_count(),
                    };
                }
                match self.node.peers().view(id) {
                    Some(view) => pb::NodeStatus {
                        node_id: id,
                        address,
                        az: view.info.az,
                        state: "up".into(),
                        metadata_role: view.info.metadata_role,
                        shard_replicas: view.info.shard_replicas,
                        shard_leaders: view.info.shard_leaders,
                        quiet_shards: view.info.quiet_shards,
                    },
                    None => pb::NodeStatus {
                        node_id: id,
                        address,
                        az: String::new(),
                        state: "down".into(),
                        metadata_role: "unknown".into(),
                        shard_replicas: 0,
                        shard_leaders: 0,
                        quiet_shards: 0,
                    },
                }
            })
            .collect();
        Ok(Response::new(pb::ClusterStatusResponse {
            nodes,
            metadata_leader_id: leader.unwrap_or(0),
        }))
    }

    async fn replace_node(
        &self,
        request: Request<pb::ReplaceNodeRequest>,
    ) -> Result<Response<pb::ReplaceNodeResponse>, Status> {
        let node_id = request.into_inner().node_id;
        let groups_changed = self.node.replace_node(node_id).await?;
        Ok(Response::new(pb::ReplaceNodeResponse { groups_changed }))
    }
}
