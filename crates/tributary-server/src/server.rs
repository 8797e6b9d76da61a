//! Wires a node to its gRPC listener.

use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tributary_proto::v1::cluster_service_server::ClusterServiceServer;
use tributary_proto::v1::data_service_server::DataServiceServer;
use tributary_proto::v1::peer_service_server::PeerServiceServer;
use tributary_proto::v1::stream_service_server::StreamServiceServer;

use crate::config::NodeConfig;
use crate::error::ApiError;
use crate::node::Node;
use crate::service::cluster::ClusterApi;
use crate::service::data::DataApi;
use crate::service::peer::PeerApi;
use crate::service::stream::StreamApi;
use crate::service::MAX_MESSAGE_BYTES;

/// How long in-flight requests may take to finish once shutdown begins.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Concurrent HTTP/2 streams allowed on one connection (see `serve`).
const PEER_MAX_CONCURRENT_STREAMS: u32 = 65_536;

/// How long SIGTERM waits for this node's leaderships to move to peers.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts a node and serves its API until `shutdown` resolves.
///
/// The listener opens before the node has joined its cluster: peers need this node's
/// answers to bootstrap and to replicate to it. Client services answer `Unavailable`
/// ("starting") and the health service reports NOT_SERVING until the node is ready.
pub async fn serve(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    // Bind first so a taken port fails fast, before any data is touched.
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let node = Node::open(config.clone()).await?;
    if let Some(addr) = config.metrics_listen {
        crate::metrics::serve(addr, node.clone()).await?;
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;

    tracing::info!(listen = %config.listen, node_id = config.node_id, az = %config.az, incarnation = format!("{:x}", node.identity().incarnation), "listening");
    // Shutdown: hand leaderships to peers, stop accepting, let in-flight requests finish,
    // but do not wait for idle client connections (a client may hold one open for hours)
    // longer than the grace period.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let draining = node.clone();
    let drain_health = health_reporter.clone();
    let signal = async move {
        shutdown.await;
        drain_health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        draining.drain(DRAIN_LIMIT).await;
        let _ = stop_tx.send(true);
    };
    let signal_task = tokio::spawn(signal);
    let mut graceful = stop_rx.clone();
    let mut deadline = stop_rx.clone();
    let ready = |node: &Arc<Node>| {
        let node = node.clone();
        move |request: tonic::Request<()>| {
            if node.accepts_clients() {
                Ok(request)
            } else {
                Err(tonic::Status::from(ApiError::unavailable(
                    "this node is starting (joining its cluster); retry, or use another node",
                )))
            }
        }
    };
    let serving = Server::builder()
        // A peer multiplexes every raft group's messages over one connection: with a
        // thousand shard groups that is far more concurrent streams than hyper's default
        // of 200, and a refused stream looks like a dead peer to raft.
        .max_concurrent_streams(Some(PEER_MAX_CONCURRENT_STREAMS))
        .http2_max_pending_accept_reset_streams(Some(1024))
        // PutRecords bodies and raft batches are often 100 KiB or more: bigger DATA frames
        // and windows mean fewer frames and window updates per request (see `peers.rs`).
        .max_frame_size(Some(tributary_proto::HTTP2_MAX_FRAME_BYTES))
        .initial_connection_window_size(Some(tributary_proto::HTTP2_CONNECTION_WINDOW_BYTES))
        .initial_stream_window_size(Some(tributary_proto::HTTP2_STREAM_WINDOW_BYTES))
        .add_service(health_service)
        .add_service(
            PeerServiceServer::new(PeerApi::new(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(InterceptedService::new(
            StreamServiceServer::new(StreamApi::new(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            ready(&node),
        ))
        .add_service(InterceptedService::new(
            DataServiceServer::new(DataApi::new(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            ready(&node),
        ))
        .add_service(InterceptedService::new(
            ClusterServiceServer::new(ClusterApi::new(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            ready(&node),
        ))
        .serve_with_incoming_shutdown(
            // TCP_NODELAY on every accepted connection: without it Nagle holds the tail of
            // a response (or a raft reply frame) until the peer's delayed ACK, ~40 ms, and
            // every pipelined request pays that (measured: 44 ms per 64 KiB PutRecords
            // back to back on one shard, 1 ms with it off; docs/benchmarks.md).
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |connection| {
                    if let Ok(socket) = &connection {
                        if let Err(err) = socket.set_nodelay(true) {
                            tracing::warn!(%err, "cannot set TCP_NODELAY on a connection");
                        }
                    }
                    connection
                },
            ),
            async move {
                let _ = graceful.wait_for(|stop| *stop).await;
            },
        );
    let starting = node.clone();
    let mut stopped_early = stop_rx;
    let startup = async move {
        tokio::select! {
            result = starting.start() => {
                result?;
                health_reporter
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
                tracing::info!("serving");
                std::future::pending::<anyhow::Result<()>>().await
            }
            _ = stopped_early.wait_for(|stop| *stop) => Ok(()),
        }
    };
    let result = tokio::select! {
        result = serving => result.map_err(|e| anyhow::anyhow!("gRPC server failed: {e}")),
        result = startup => result,
        _ = async {
            let _ = deadline.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(
                "connections still open {} s after shutdown began; closing them",
                SHUTDOWN_GRACE.as_secs()
            );
            Ok(())
        }
    };
    signal_task.abort();
    node.shutdown().await;
    result
}

/// Raises the soft open-files limit to the hard limit: every shard keeps segment files
/// open, and thousands of them exceed the usual default of 1024.
pub fn raise_open_files_limit() {
    #[allow(unsafe_code)]
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("could not raise the open-files limit");
            }
        }
    }
}
