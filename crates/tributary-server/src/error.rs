//! Errors that cross the wire. Each carries a stable code (the Kinesis-equivalent name,
//! also `tributary.v1.ErrorCode`) and a message that says what was wrong and what is allowed.

use tributary_proto::v1::ErrorCode;
use tributary_proto::{ERROR_CODE_METADATA, ERROR_DETAIL_METADATA};

/// An error returned to an API caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code_name(*code))]
pub struct ApiError {
    /// The stable code.
    pub code: ErrorCode,
    /// Human-readable detail naming the limit or the missing resource.
    pub message: String,
}

pub use tributary_proto::error_code_name as code_name;

impl ApiError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// Malformed input or a broken limit.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    /// A stream or shard that does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ResourceNotFound, message)
    }
    /// A resource in a state that forbids the call.
    pub fn in_use(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ResourceInUse, message)
    }
    /// A cluster-wide limit reached.
    pub fn limit(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::LimitExceeded, message)
    }
    /// A shard's throughput quota exceeded.
    pub fn throughput(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ProvisionedThroughputExceeded, message)
    }
    /// An iterator past its lifetime.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ExpiredIterator, message)
    }
    /// No leader right now; the caller should retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    /// An unexpected failure; the outcome is unknown.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InternalFailure, message)
    }
    /// A consumer-group lease the caller no longer holds.
    pub fn lease_lost(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::LeaseLost, message)
    }
    /// The data directory's free space is below the configured floor.
    pub fn storage_full(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::StorageFull, message)
    }
    /// Stored data failed its checksum.
    pub fn corruption(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::DataCorruption, message)
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        let grpc = match err.code {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::ResourceNotFound => tonic::Code::NotFound,
            ErrorCode::ResourceInUse => tonic::Code::FailedPrecondition,
            ErrorCode::LimitExceeded => tonic::Code::ResourceExhausted,
            ErrorCode::ProvisionedThroughputExceeded | ErrorCode::StorageFull => {
                tonic::Code::ResourceExhausted
            }
            ErrorCode::ExpiredIterator | ErrorCode::LeaseLost => tonic::Code::FailedPrecondition,
            ErrorCode::Unavailable | ErrorCode::ShardClosed => tonic::Code::Unavailable,
            ErrorCode::DataCorruption => tonic::Code::DataLoss,
            ErrorCode::InternalFailure | ErrorCode::Unspecified => tonic::Code::Internal,
        };
        let detail = prost::Message::encode_to_vec(&tributary_proto::v1::ErrorDetail {
            code: err.code as i32,
            message: err.message.clone(),
        });
        let mut status = tonic::Status::new(grpc, err.message);
        let metadata = status.metadata_mut();
        metadata.insert(
            ERROR_CODE_METADATA,
            tonic::metadata::MetadataValue::from_static(code_name(err.code)),
        );
        metadata.insert_bin(
            ERROR_DETAIL_METADATA,
            tonic::metadata::MetadataValue::from_bytes(&detail),
        );
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_the_stable_code_name() {
        let status: tonic::Status =
            ApiError::invalid("partition key is 300 characters; the limit is 256").into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let name = status
            .metadata()
            .get(ERROR_CODE_METADATA)
            .and_then(|v| v.to_str().ok());
        assert_eq!(name, Some("InvalidArgument"));
        assert!(status.message().contains("the limit is 256"));
        let detail = status
            .metadata()
            .get_bin(ERROR_DETAIL_METADATA)
            .and_then(|v| v.to_bytes().ok());
        let detail: tributary_proto::v1::ErrorDetail =
            prost::Message::decode(detail.expect("binary detail")).expect("decodes");
        assert_eq!(detail.code, ErrorCode::InvalidArgument as i32);
    }
}
