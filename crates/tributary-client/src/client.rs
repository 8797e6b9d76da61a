//! The connection to a Tributary node and one method per RPC.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};
use tributary_proto::v1::cluster_service_client::ClusterServiceClient;
use tributary_proto::v1::data_service_client::DataServiceClient;
use tributary_proto::v1::stream_service_client::StreamServiceClient;
use tributary_proto::v1::{
    ClusterStatusRequest, ClusterStatusResponse, CreateStreamRequest, DeleteStreamRequest,
    DescribeStreamRequest, ErrorCode, GetRecordsRequest, GetRecordsResponse, ListShardsRequest,
    ListStreamsRequest, PutRecordRequest, PutRecordResponse, PutRecordsEntry, PutRecordsRequest,
    PutRecordsResponse, ReplaceNodeRequest, Shard, StreamDescription, StreamStatus, StreamSummary,
};

use crate::{Error, StartingPosition};

/// Largest gRPC message the SDK sends or accepts.
///
/// tonic's 4 MiB default is below the largest legal request (a 5 MiB PutRecords batch) and
/// response (a 10 MiB GetRecords page); 64 MiB leaves room for framing while still refusing a
/// corrupt length prefix before it turns into a huge allocation.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How often [`Client::wait_for_active`] polls the stream's status.
const ACTIVE_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long to wait for the TCP (and HTTP/2) connection. Short, so a wrong endpoint fails
    /// fast instead of hanging a CLI command.
    pub connect_timeout: Duration,
    /// Deadline for each RPC, `None` for no deadline. Every RPC is a quick request/response, so
    /// a deadline only fires when a node hangs; too short a value would fail big GetRecords pages
    /// on slow links.
    pub request_timeout: Option<Duration>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// A connection to one Tributary node (any node of the cluster serves every RPC).
///
/// Cloning is cheap: clones share the underlying HTTP/2 channel.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: String,
    streams: StreamServiceClient<Channel>,
    data: DataServiceClient<Channel>,
    cluster: ClusterServiceClient<Channel>,
}

impl Client {
    /// Connects to `endpoint` (`http://host:port` or `host:port`) with default options.
    pub async fn connect(endpoint: &str) -> Result<Client, Error> {
        Client::connect_with(endpoint, &ClientOptions::default()).await
    }

    /// Connects to `endpoint` (`http://host:port` or `host:port`). A comma-separated list
    /// of a cluster's nodes (`a:7101,b:7101,c:7101`) spreads requests over the nodes that
    /// answer and keeps working while any of them is down (every node serves every request).
    pub async fn connect_with(endpoint: &str, options: &ClientOptions) -> Result<Client, Error> {
        let uris = endpoint
            .split(',')
            .map(normalize_endpoint)
            .collect::<Result<Vec<_>, _>>()?;
        let mut endpoints = Vec::with_capacity(uris.len());
        for uri in &uris {
            let mut builder = Endpoint::from_shared(uri.clone())
                .map_err(|error| {
                    Error::InvalidInput(format!(
                        "endpoint '{uri}' is not a valid URL ({error}); expected http://HOST:PORT \
                         or HOST:PORT"
                    ))
                })?
                .connect_timeout(options.connect_timeout)
                .tcp_nodelay(true);
            if let Some(timeout) = options.request_timeout {
                builder = builder.timeout(timeout);
            }
            endpoints.push(builder);
        }
        let uri = uris.join(",");
        let channel = if endpoints.len() == 1 {
            let only = endpoints.remove(0);
            only.connect().await.map_err(|source| Error::Transport {
                endpoint: uri.clone(),
                source,
            })?
        } else {
            // Connects lazily; a node that does not answer is skipped while others do.
            Channel::balance_list(endpoints.into_iter())
        };
        Ok(Client {
            endpoint: uri,
            streams: StreamServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            data: DataServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            cluster: ClusterServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        })
    }

    /// The endpoint URL(s) this client is connected to (comma-separated for a list).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Creates a stream with `shards` shards. `retention_hours: None` takes the server's
    /// default (24 h). The stream starts CREATING; see [`Client::wait_for_active`].
    pub async fn create_stream(
        &self,
        name: &str,
        shards: u32,
        retention_hours: Option<u32>,
    ) -> Result<(), Error> {
        let request = CreateStreamRequest {
            stream_name: name.to_owned(),
            shard_count: shards,
            retention_hours: retention_hours.unwrap_or(0),
            max_record_bytes: 0,
        };
        self.streams.clone().create_stream(request).await?;
        Ok(())
    }

    /// Starts deleting a stream.
    pub async fn delete_stream(&self, name: &str) -> Result<(), Error> {
        let request = DeleteStreamRequest {
            stream_name: name.to_owned(),
        };
        self.streams.clone().delete_stream(request).await?;
        Ok(())
    }

    /// The stream's summary and all its shards (closed ones included).
    pub async fn describe_stream(&self, name: &str) -> Result<StreamDescription, Error> {
        let request = DescribeStreamRequest {
            stream_name: name.to_owned(),
        };
        let response = self.streams.clone().describe_stream(request).await?;
        response.into_inner().stream.ok_or_else(|| {
            Error::UnexpectedResponse(format!("DescribeStream of '{name}' has no stream"))
        })
    }

    /// Every stream.
    pub async fn list_streams(&self) -> Result<Vec<StreamSummary>, Error> {
        let response = self
            .streams
            .clone()
            .list_streams(ListStreamsRequest {})
            .await?;
        Ok(response.into_inner().streams)
    }

    /// The stream's shards, closed ones included, in the server's order (parents before
    /// children).
    pub async fn list_shards(&self, stream: &str) -> Result<Vec<Shard>, Error> {
        let request = ListShardsRequest {
            stream_name: stream.to_owned(),
        };
        let response = self.streams.clone().list_shards(request).await?;
        Ok(response.into_inner().shards)
    }

    /// Writes one record.
    pub async fn put_record(
        &self,
        stream: &str,
        partition_key: &str,
        data: impl Into<Bytes>,
        explicit_hash_key: Option<&str>,
    ) -> Result<PutRecordResponse, Error> {
        let request = PutRecordRequest {
            stream_name: stream.to_owned(),
            partition_key: partition_key.to_owned(),
            data: data.into(),
            explicit_hash_key: explicit_hash_key.map(str::to_owned),
        };
        let response = self.data.clone().put_record(request).await?;
        Ok(response.into_inner())
    }

    /// Writes a batch of records (at most 500 and 5 MiB). Entries fail individually: check
    /// `failed_record_count` and each result's `error_code`. The response is checked to hold
    /// one result per entry.
    pub async fn put_records(
        &self,
        stream: &str,
        records: Vec<PutRecordsEntry>,
    ) -> Result<PutRecordsResponse, Error> {
        let sent = records.len();
        let request = PutRecordsRequest {
            stream_name: stream.to_owned(),
            records,
        };
        let response = self.data.clone().put_records(request).await?.into_inner();
        if response.records.len() != sent {
            return Err(Error::UnexpectedResponse(format!(
                "PutRecords returned {} results for {sent} records",
                response.records.len()
            )));
        }
        Ok(response)
    }

    /// Opens an iterator at `position` in the shard; pass it to [`Client::get_records`].
    pub async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<String, Error> {
        let request = position.to_request(stream, shard_id);
        let response = self.data.clone().get_shard_iterator(request).await?;
        Ok(response.into_inner().shard_iterator)
    }

    /// Reads up to `limit` records (1-10,000; 0 means 10,000) at the iterator.
    pub async fn get_records(
        &self,
        shard_iterator: &str,
        limit: u32,
    ) -> Result<GetRecordsResponse, Error> {
        let request = GetRecordsRequest {
            shard_iterator: shard_iterator.to_owned(),
            limit,
            stream_name: None,
            wait_ms: None,
        };
        let response = self.data.clone().get_records(request).await?;
        Ok(response.into_inner())
    }

    /// The cluster's nodes and their roles.
    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, Error> {
        let response = self
            .cluster
            .clone()
            .cluster_status(ClusterStatusRequest {})
            .await?;
        Ok(response.into_inner())
    }

    /// Re-adds a node whose data dir was lost (see `trib cluster replace-node`); returns
    /// how many raft groups changed. Waits until the node has caught up everywhere.
    pub async fn replace_node(&self, node_id: u64) -> Result<u32, Error> {
        let response = self
            .cluster
            .clone()
            .replace_node(ReplaceNodeRequest { node_id })
            .await?;
        Ok(response.into_inner().groups_changed)
    }

    /// Polls DescribeStream until the stream is ACTIVE and returns its description.
    ///
    /// Retryable errors (an election in progress) and ResourceNotFound (a node that has not
    /// applied the create yet) are waited out; after `timeout` the last status or error is
    /// reported as [`Error::Timeout`].
    pub async fn wait_for_active(
        &self,
        stream: &str,
        timeout: Duration,
    ) -> Result<StreamDescription, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.describe_stream(stream).await {
                Ok(description) => {
                    let status = description
                        .summary
                        .as_ref()
                        .map_or(StreamStatus::Unspecified, |summary| summary.status());
                    match status {
                        StreamStatus::Active => return Ok(description),
                        StreamStatus::Deleting => {
                            return Err(Error::api(
                                ErrorCode::ResourceInUse,
                                format!("stream '{stream}' is being deleted"),
                            ))
                        }
                        other => format!("status {}", other.as_str_name()),
                    }
                }
                Err(error)
                    if error.is_retryable()
                        || error.code() == Some(ErrorCode::ResourceNotFound) =>
                {
                    error.to_string()
                }
                Err(error) => return Err(error),
            };
            if Instant::now() + ACTIVE_POLL_INTERVAL > deadline {
                return Err(Error::Timeout(format!(
                    "stream '{stream}' is not ACTIVE after {:.1}s (last: {last})",
                    timeout.as_secs_f64()
                )));
            }
            tokio::time::sleep(ACTIVE_POLL_INTERVAL).await;
        }
    }
}

/// `host:port` becomes `http://host:port`; URLs with a scheme are kept.
fn normalize_endpoint(endpoint: &str) -> Result<String, Error> {
    let endpoint = endpoint.trim();
    if endpoint.is_empty() {
        return Err(Error::InvalidInput(
            "the endpoint is empty; expected http://HOST:PORT or HOST:PORT".into(),
        ));
    }
    if endpoint.contains("://") {
        Ok(endpoint.to_owned())
    } else {
        Ok(format!("http://{endpoint}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_without_a_scheme_get_http() {
        let cases = [
            ("127.0.0.1:7101", "http://127.0.0.1:7101"),
            ("http://node-1:7101", "http://node-1:7101"),
            (" https://node-1:7101 ", "https://node-1:7101"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_endpoint(input).ok().as_deref(), Some(expected));
        }
        assert!(normalize_endpoint("  ").is_err());
    }

    #[tokio::test]
    async fn malformed_endpoints_are_invalid_input() {
        let error = Client::connect("http://[::1").await.expect_err("bad URL");
        assert!(matches!(error, Error::InvalidInput(_)), "{error:?}");
    }

    #[tokio::test]
    async fn refused_connections_are_transport_errors() {
        // Port 1 on loopback is essentially never listening.
        let options = ClientOptions {
            connect_timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        };
        let error = Client::connect_with("127.0.0.1:1", &options)
            .await
            .expect_err("nothing listens on port 1");
        assert!(matches!(error, Error::Transport { .. }), "{error:?}");
        assert!(error.is_retryable());
        assert!(error.to_string().starts_with("Unavailable: "), "{error}");
    }
}
