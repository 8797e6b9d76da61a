//! Consumer-group leases and checkpoints (part of StreamService): validation, the metadata
//! commands, and the lease table as the wire shows it.

use std::sync::Arc;

use tonic::Status;
use tributary_proto::v1 as pb;

use super::stream_snapshot;
use crate::error::ApiError;
use crate::metadata::{
    parse_shard_id, shard_id, CheckpointPosition, LeaseKey, LeaseMeta, MetadataCommand, StreamMeta,
};
use crate::node::Node;
use crate::sequence::SequenceNumber;
use crate::validation;

/// The lease handlers; `StreamApi` delegates to these.
pub struct Leases {
    node: Arc<Node>,
}

impl Leases {
    /// Handlers over a node.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// ListLeases: every lease of an application.
    pub async fn list(
        &self,
        request: pb::ListLeasesRequest,
    ) -> Result<pb::ListLeasesResponse, Status> {
        validation::application_name(&request.application)?;
        let stream = stream_snapshot(&self.node, &request.stream_name)?;
        Ok(pb::ListLeasesResponse {
            leases: self.table(&stream, &request.application),
        })
    }

    /// TakeLease: compare-and-set on the epoch the caller saw.
    pub async fn take(
        &self,
        request: pb::TakeLeaseRequest,
    ) -> Result<pb::TakeLeaseResponse, Status> {
        let lease = self.key(
            &request.stream_name,
            &request.application,
            &request.shard_id,
        )?;
        validation::lease_owner(&request.owner)?;
        let lease_ms = validation::lease_ms(request.lease_ms)?;
        self.node
            .propose_metadata(MetadataCommand::TakeLease {
                lease: lease.clone(),
                owner: request.owner,
                expected_epoch: request.expected_epoch,
                steal: request.steal,
                now_ms: self.node.now_ms(),
                lease_ms,
            })
            .await?;
        Ok(pb::TakeLeaseResponse {
            lease: Some(self.one(&lease)?),
        })
    }

    /// RenewLeases: extends the caller's leases, answers with the whole table.
    pub async fn renew(
        &self,
        request: pb::RenewLeasesRequest,
    ) -> Result<pb::RenewLeasesResponse, Status> {
        validation::application_name(&request.application)?;
        validation::lease_owner(&request.owner)?;
        let lease_ms = validation::lease_ms(request.lease_ms)?;
        stream_snapshot(&self.node, &request.stream_name)?;
        let leases = request
            .leases
            .iter()
            .map(|claim| Ok((parse_shard_id(&claim.shard_id)?, claim.epoch)))
            .collect::<Result<Vec<_>, ApiError>>()?;
        self.node
            .propose_metadata(MetadataCommand::RenewLeases {
                name: request.stream_name.clone(),
                application: request.application.clone(),
                owner: request.owner,
                leases,
                now_ms: self.node.now_ms(),
                lease_ms,
            })
            .await?;
        let stream = stream_snapshot(&self.node, &request.stream_name)?;
        Ok(pb::RenewLeasesResponse {
            leases: self.table(&stream, &request.application),
        })
    }

    /// ReleaseLease: gives a held lease up.
    pub async fn release(
        &self,
        request: pb::ReleaseLeaseRequest,
    ) -> Result<pb::ReleaseLeaseResponse, Status> {
        let lease = self.key(
            &request.stream_name,
            &request.application,
            &request.shard_id,
        )?;
        validation::lease_owner(&request.owner)?;
        self.node
            .propose_metadata(MetadataCommand::ReleaseLease {
                lease,
                owner: request.owner,
                epoch: request.epoch,
            })
            .await?;
        Ok(pb::ReleaseLeaseResponse {})
    }

    /// Checkpoint: records a held lease's progress (fenced by epoch).
    pub async fn checkpoint(
        &self,
        request: pb::CheckpointRequest,
    ) -> Result<pb::CheckpointResponse, Status> {
        let lease = self.key(
            &request.stream_name,
            &request.application,
            &request.shard_id,
        )?;
        validation::lease_owner(&request.owner)?;
        let position = match (&request.sequence_number, request.shard_end) {
            (Some(sequence), false) => {
                let parsed = SequenceNumber::parse(sequence)?;
                if parsed.shard_index != lease.shard {
                    return Err(ApiError::invalid(format!(
                        "sequence number {sequence} belongs to {}, not {}",
                        shard_id(parsed.shard_index),
                        request.shard_id
                    ))
                    .into());
                }
                CheckpointPosition::Sequence(parsed.to_u128())
            }
            (None, true) => CheckpointPosition::ShardEnd,
            _ => {
                return Err(ApiError::invalid(
                    "a checkpoint takes exactly one of sequence_number and shard_end",
                )
                .into())
            }
        };
        self.node
            .propose_metadata(MetadataCommand::Checkpoint {
                lease: lease.clone(),
                owner: request.owner,
                epoch: request.epoch,
                position,
            })
            .await?;
        Ok(pb::CheckpointResponse {
            lease: Some(self.one(&lease)?),
        })
    }

    /// Checks the names and that the shard exists in this node's view.
    fn key(&self, stream: &str, application: &str, shard: &str) -> Result<LeaseKey, ApiError> {
        validation::application_name(application)?;
        let meta = stream_snapshot(&self.node, stream)?;
        let index = parse_shard_id(shard)?;
        if meta.visible_shards().all(|s| s.shard_index != index) {
            return Err(ApiError::not_found(format!(
                "stream {stream} has no shard {shard}"
            )));
        }
        Ok(LeaseKey {
            name: stream.to_string(),
            application: application.to_string(),
            shard: index,
        })
    }

    fn one(&self, key: &LeaseKey) -> Result<pb::Lease, ApiError> {
        let stream = stream_snapshot(&self.node, &key.name)?;
        let lease = stream
            .applications
            .get(&key.application)
            .and_then(|table| table.get(&key.shard))
            .cloned()
            .unwrap_or_default();
        Ok(to_proto(key.shard, &lease, self.node.now_ms()))
    }

    fn table(&self, stream: &StreamMeta, application: &str) -> Vec<pb::Lease> {
        let now = self.node.now_ms();
        stream
            .applications
            .get(application)
            .map(|table| {
                table
                    .iter()
                    .map(|(shard, lease)| to_proto(*shard, lease, now))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn to_proto(shard: u32, lease: &LeaseMeta, now_ms: i64) -> pb::Lease {
    let live = lease.owner.is_some() && lease.expires_at_ms > now_ms;
    pb::Lease {
        shard_id: shard_id(shard),
        owner: lease.owner.clone(),
        epoch: lease.epoch,
        expires_in_ms: if live {
            u64::try_from(lease.expires_at_ms - now_ms).unwrap_or(0)
        } else {
            0
        },
        checkpoint_sequence_number: match lease.checkpoint {
            Some(CheckpointPosition::Sequence(sequence)) => Some(sequence.to_string()),
            _ => None,
        },
        shard_end: lease.checkpoint == Some(CheckpointPosition::ShardEnd),
    }
}
