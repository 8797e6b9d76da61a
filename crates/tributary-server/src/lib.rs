//! A Tributary node: a Raft-replicated, sharded, ordered append-only log with Kinesis
//! semantics. The binary `tributary` (see `main.rs`) wraps [`server::serve`].

#![warn(missing_docs)]

pub mod clock;
pub mod config;
pub mod disk_space;
pub mod error;
pub mod idempotence;
pub mod identity;
pub mod iterator;
pub mod metadata;
pub mod metrics;
pub mod node;
pub mod peers;
pub mod quota;
pub mod raft;
pub mod raft_mux;
pub mod reader;
pub mod repair;
pub mod reshard;
pub mod retention;
pub mod routing;
pub mod sequence;
pub mod server;
pub mod service;
pub mod validation;
