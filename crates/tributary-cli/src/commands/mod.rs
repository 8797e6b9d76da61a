//! One module per `trib` command group.

pub mod cluster;
pub mod consume;
pub mod consumer;
pub mod get;
pub mod put;
pub mod shard;
pub mod stream;
pub mod stream_stats;

use tributary_client::Client;

use crate::output::OutputFormat;

/// What every command gets from the global flags.
#[derive(Debug, Clone)]
pub struct Context {
    pub endpoint: String,
    pub output: OutputFormat,
}

impl Context {
    pub async fn connect(&self) -> Result<Client, tributary_client::Error> {
        Client::connect(&self.endpoint).await
    }
}
