//! Wires a node to its gRPC listener.

use tokio::net::TcpListener;
use tonic::transport::Server;
use tributary_proto::v1::cluster_service_server::ClusterServiceServer;
use tributary_proto::v1::data_service_server::DataServiceServer;
use tributary_proto::v1::stream_service_server::StreamServiceServer;

use crate::config::NodeConfig;
use crate::node::Node;
use crate::service::cluster::ClusterApi;
use crate::service::data::DataApi;
use crate::service::stream::StreamApi;
use crate::service::MAX_MESSAGE_BYTES;

/// How long in-flight requests may take to finish once shutdown begins.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts a node and serves its API until `shutdown` resolves.
pub async fn serve(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    // Bind first so a taken port fails fast, before any data is touched.
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let node = Node::start(config.clone()).await?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    tracing::info!(listen = %config.listen, node_id = config.node_id, az = %config.az, "serving");
    // Shutdown: stop accepting, let in-flight requests finish, but do not wait for idle
    // client connections (a client may hold one open for hours) longer than the grace period.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let signal_task = tokio::spawn(signal);
    let mut graceful = stop_rx.clone();
    let mut deadline = stop_rx;
    let serving = Server::builder()
        .add_service(health_service)
        .add_service(
            StreamServiceServer::new(StreamApi::new(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            DataServiceServer::new(DataApi::new(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ClusterServiceServer::new(ClusterApi::new(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                let _ = graceful.wait_for(|stop| *stop).await;
            },
        );
    let result = tokio::select! {
        result = serving => result,
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
    result.map_err(|e| anyhow::anyhow!("gRPC server failed: {e}"))
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
