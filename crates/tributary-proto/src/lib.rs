//! Generated types for the Tributary public gRPC API (`proto/tributary/v1`).
//!
//! Nothing else lives here: conversions and validation belong to the server and SDK.

#![allow(missing_docs, clippy::all)]

/// Version 1 of the API.
pub mod v1 {
    tonic::include_proto!("tributary.v1");
}

/// Response metadata key that carries the stable error name (e.g. `InvalidArgument`).
pub const ERROR_CODE_METADATA: &str = "tributary-error-code";

/// Response metadata key that carries an `ErrorDetail` (binary protobuf) of a failed RPC.
pub const ERROR_DETAIL_METADATA: &str = "tributary-error-detail-bin";

/// The stable, Kinesis-style name of a code, as sent in the `tributary-error-code` metadata.
/// These strings are part of the public API and never change.
pub fn error_code_name(code: v1::ErrorCode) -> &'static str {
    use v1::ErrorCode;
    match code {
        ErrorCode::Unspecified => "Unspecified",
        ErrorCode::InvalidArgument => "InvalidArgument",
        ErrorCode::ResourceNotFound => "ResourceNotFound",
        ErrorCode::ResourceInUse => "ResourceInUse",
        ErrorCode::LimitExceeded => "LimitExceeded",
        ErrorCode::ProvisionedThroughputExceeded => "ProvisionedThroughputExceeded",
        ErrorCode::ExpiredIterator => "ExpiredIterator",
        ErrorCode::InternalFailure => "InternalFailure",
        ErrorCode::Unavailable => "Unavailable",
        ErrorCode::DataCorruption => "DataCorruption",
        ErrorCode::ShardClosed => "ShardClosed",
        ErrorCode::LeaseLost => "LeaseLost",
        ErrorCode::StorageFull => "StorageFull",
    }
}

/// The code with the given name (the inverse of [`error_code_name`]).
pub fn error_code_from_name(name: &str) -> Option<v1::ErrorCode> {
    use v1::ErrorCode;
    [
        ErrorCode::InvalidArgument,
        ErrorCode::ResourceNotFound,
        ErrorCode::ResourceInUse,
        ErrorCode::LimitExceeded,
        ErrorCode::ProvisionedThroughputExceeded,
        ErrorCode::ExpiredIterator,
        ErrorCode::InternalFailure,
        ErrorCode::Unavailable,
        ErrorCode::DataCorruption,
        ErrorCode::ShardClosed,
        ErrorCode::LeaseLost,
        ErrorCode::StorageFull,
    ]
    .into_iter()
    .find(|code| error_code_name(*code) == name)
}

/// The largest HTTP/2 DATA frame a Tributary server or client accepts (`SETTINGS_MAX_FRAME_SIZE`;
/// the HTTP/2 default is 16 KiB). PutRecords bodies, raft batches and GetRecords pages are
/// often hundreds of KiB: at the default each crosses as dozens of frames, each read, copied
/// and flow-controlled on its own.
pub const HTTP2_MAX_FRAME_BYTES: u32 = 1024 * 1024;

/// HTTP/2 flow-control window of a whole connection, for servers, peers and the SDK: large
/// enough that catch-up pages and raft batches of several MiB do not stall on window updates.
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 8 * 1024 * 1024;

/// HTTP/2 flow-control window of one stream (one call), as above.
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
