//! Tributary's fault-injection suite: record what clients did ([`history`]), check it for
//! lost, phantom, duplicate, reordered and divergent records and for consumer-group
//! checkpoints that move back or skip records ([`checker`]), and summarize
//! a run ([`report`]). The `tributary-chaos` binary drives the workload and the faults
//! against the docker-compose cluster.

#![warn(missing_docs)]

pub mod checker;
pub mod history;
pub mod report;
