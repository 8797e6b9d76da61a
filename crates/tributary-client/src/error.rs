//! Typed errors for SDK calls.
//!
//! The server names every failure with a stable Kinesis-style code (`InvalidArgument`,
//! `ResourceNotFound`, …) in the `tributary-error-code` response metadata. Callers act on that
//! code — retry, refresh an iterator, give up — so it is decoded into [`ErrorCode`] rather
//! than left inside a `tonic::Status`, where only the coarser gRPC code would be visible.

use prost::Message as _;
use tonic::Code;
use tributary_proto::v1::{ErrorCode, ErrorDetail};

/// Response metadata key of the binary [`ErrorDetail`] the server may attach to a failed RPC.
use tributary_proto::ERROR_DETAIL_METADATA;

/// An error from an SDK call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server (or the SDK, checking a response on the caller's behalf) refused the request.
    #[error("{}: {message}", error_code_name(*.code))]
    Api {
        /// The stable error code.
        code: ErrorCode,
        /// What was wrong and what is allowed, as the server phrased it.
        message: String,
    },
    /// No connection to the endpoint could be made.
    #[error("Unavailable: cannot connect to {endpoint}")]
    Transport {
        /// The endpoint that was dialled.
        endpoint: String,
        /// Why the connection failed.
        #[source]
        source: tonic::transport::Error,
    },
    /// The caller passed something the SDK rejects before sending it (a malformed endpoint,
    /// starting position, …).
    #[error("InvalidArgument: {0}")]
    InvalidInput(String),
    /// The server answered in a way this SDK does not understand (a missing field, a result
    /// count that does not match the request). Retrying will not help.
    #[error("InternalFailure: unexpected response from the server: {0}")]
    UnexpectedResponse(String),
    /// A bounded wait ran out.
    #[error("Timeout: {0}")]
    Timeout(String),
}

impl Error {
    /// Whether retrying the same call later may succeed: no leader right now, throughput quota
    /// exceeded, an unexpected server failure, or no connection.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api { code, .. } => is_retryable_code(*code),
            Error::Transport { .. } => true,
            Error::InvalidInput(_) | Error::UnexpectedResponse(_) | Error::Timeout(_) => false,
        }
    }

    /// The stable error code when the server reported one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Builds an [`Error::Api`].
    pub fn api(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Api {
            code,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let code = code_from_metadata(&status).unwrap_or_else(|| code_from_grpc(status.code()));
        let message = if status.message().is_empty() {
            format!("gRPC status {:?} without a message", status.code())
        } else {
            status.message().to_owned()
        };
        Error::Api { code, message }
    }
}

/// Whether an entry or call that failed with `code` may succeed when retried.
pub fn is_retryable_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable
            | ErrorCode::ProvisionedThroughputExceeded
            | ErrorCode::InternalFailure
            | ErrorCode::ShardClosed
            | ErrorCode::StorageFull
    )
}

pub use tributary_proto::{error_code_from_name, error_code_name};

/// The code the server named, from the text metadata first and the binary detail second.
fn code_from_metadata(status: &tonic::Status) -> Option<ErrorCode> {
    let metadata = status.metadata();
    if let Some(code) = metadata
        .get(tributary_proto::ERROR_CODE_METADATA)
        .and_then(|value| value.to_str().ok())
        .and_then(|name| error_code_from_name(name.trim()))
    {
        return Some(code);
    }
    let detail = metadata.get_bin(ERROR_DETAIL_METADATA)?.to_bytes().ok()?;
    let detail = ErrorDetail::decode(detail).ok()?;
    match detail.code() {
        ErrorCode::Unspecified => None,
        code => Some(code),
    }
}

/// The closest stable code for a failure that did not come with one (a proxy, the transport,
/// or tonic itself refusing an oversized message).
fn code_from_grpc(code: Code) -> ErrorCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => ErrorCode::InvalidArgument,
        Code::NotFound => ErrorCode::ResourceNotFound,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => ErrorCode::ResourceInUse,
        Code::ResourceExhausted => ErrorCode::LimitExceeded,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ErrorCode::Unavailable,
        Code::Internal | Code::Unknown => ErrorCode::InternalFailure,
        Code::DataLoss => ErrorCode::DataCorruption,
        Code::Ok | Code::Unimplemented | Code::PermissionDenied | Code::Unauthenticated => {
            ErrorCode::Unspecified
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::{MetadataMap, MetadataValue};

    fn status_with_code_name(code: Code, name: &str) -> tonic::Status {
        let mut metadata = MetadataMap::new();
        if let Ok(value) = MetadataValue::try_from(name) {
            metadata.insert(tributary_proto::ERROR_CODE_METADATA, value);
        }
        tonic::Status::with_metadata(code, "stream 'x' not found", metadata)
    }

    #[test]
    fn every_code_name_round_trips() {
        for value in 1..=10 {
            let code = ErrorCode::try_from(value).unwrap_or(ErrorCode::Unspecified);
            assert_ne!(code, ErrorCode::Unspecified, "code {value} is defined");
            assert_eq!(error_code_from_name(error_code_name(code)), Some(code));
        }
    }

    #[test]
    fn metadata_code_wins_over_grpc_code() {
        let error = Error::from(status_with_code_name(Code::Internal, "ResourceNotFound"));
        assert_eq!(error.code(), Some(ErrorCode::ResourceNotFound));
        assert_eq!(error.to_string(), "ResourceNotFound: stream 'x' not found");
        assert!(!error.is_retryable());
    }

    #[test]
    fn binary_detail_is_used_when_the_name_is_absent() {
        let mut metadata = MetadataMap::new();
        let detail = ErrorDetail {
            code: ErrorCode::ExpiredIterator as i32,
            message: "old".into(),
        };
        metadata.insert_bin(
            ERROR_DETAIL_METADATA,
            tonic::metadata::MetadataValue::from_bytes(&detail.encode_to_vec()),
        );
        let error = Error::from(tonic::Status::with_metadata(Code::Unknown, "old", metadata));
        assert_eq!(error.code(), Some(ErrorCode::ExpiredIterator));
    }

    #[test]
    fn grpc_code_is_the_fallback() {
        let cases = [
            (Code::Unavailable, ErrorCode::Unavailable, true),
            (Code::NotFound, ErrorCode::ResourceNotFound, false),
            (Code::InvalidArgument, ErrorCode::InvalidArgument, false),
            (Code::Internal, ErrorCode::InternalFailure, true),
            (Code::ResourceExhausted, ErrorCode::LimitExceeded, false),
            (Code::Unimplemented, ErrorCode::Unspecified, false),
        ];
        for (grpc, expected, retryable) in cases {
            let error = Error::from(status_with_code_name(grpc, "NotACode"));
            assert_eq!(error.code(), Some(expected), "{grpc:?}");
            assert_eq!(error.is_retryable(), retryable, "{grpc:?}");
        }
    }
}
