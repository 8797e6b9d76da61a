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
