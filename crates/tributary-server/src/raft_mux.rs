//! Raft messages of every group to one peer, batched over one long-lived stream.
//!
//! A cluster with a thousand shards has a thousand raft groups, each sending heartbeats and
//! appends to each follower. As one RPC each, that is thousands of concurrent HTTP/2
//! streams per connection (and a request queue in front of the connection that delays
//! everything else, the failure-detector probe included). Instead, each node keeps one
//! bidirectional `RaftStream` open per peer: whatever messages are queued when the stream
//! is ready to write go out together in one `RaftFrame`, and the peer answers in frames
//! too, matched by envelope id. A broken stream fails its pending calls (openraft sees
//! `Unreachable` and backs off) and is reopened on the next call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tributary_proto::v1 as pb;
use tributary_proto::v1::peer_service_client::PeerServiceClient;

/// At most this many bytes of envelopes are packed into one frame (one envelope may be
/// larger: a replication read is bounded separately).
const FRAME_BYTES: usize = 4 * 1024 * 1024;
/// At most this many envelopes per frame.
const FRAME_ENVELOPES: usize = 512;

type Reply = Result<pb::RaftReply, String>;
type Call = (pb::RaftMessage, oneshot::Sender<Reply>);

/// The sending side of one peer's stream.
pub struct RaftMux {
    calls: mpsc::UnboundedSender<Call>,
}

impl RaftMux {
    /// Starts the task that owns the stream to the peer behind `client`.
    pub fn start(client: PeerServiceClient<Channel>, target: String) -> Arc<Self> {
        let (calls, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(client, target, queue));
        Arc::new(Self { calls })
    }

    /// Sends one message and waits for its reply (the caller bounds the wait).
    pub async fn call(&self, message: pb::RaftMessage) -> Reply {
        let (tx, rx) = oneshot::channel();
        self.calls
            .send((message, tx))
            .map_err(|_| "the peer stream task stopped".to_string())?;
        rx.await
            .map_err(|_| "the peer stream closed before the reply".to_string())?
    }
}

/// Takes the first queued call and as many more as fit one frame.
fn pack(first: Call, queue: &mut mpsc::UnboundedReceiver<Call>) -> Vec<Call> {
    let mut bytes = first.0.encoded_len();
    let mut calls = vec![first];
    while calls.len() < FRAME_ENVELOPES && bytes < FRAME_BYTES {
        match queue.try_recv() {
            Ok(call) => {
                bytes += call.0.encoded_len();
                calls.push(call);
            }
            Err(_) => break,
        }
    }
    calls
}

async fn run(
    mut client: PeerServiceClient<Channel>,
    target: String,
    mut queue: mpsc::UnboundedReceiver<Call>,
) {
    let mut next_id: u64 = 0;
    // Wait for the first call before connecting, and after a failure.
    while let Some(first) = queue.recv().await {
        let (frames, outgoing) = mpsc::channel::<pb::RaftFrame>(16);
        let opened = client.raft_stream(ReceiverStream::new(outgoing)).await;
        let mut inbound = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => {
                let why = format!(
                    "cannot open the raft stream to {target}: {}",
                    status.message()
                );
                let _ = first.1.send(Err(why.clone()));
                while let Ok(call) = queue.try_recv() {
                    let _ = call.1.send(Err(why.clone()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Only this task touches the pending calls: no lock.
        let mut pending: HashMap<u64, oneshot::Sender<Reply>> = HashMap::new();
        let mut carry = Some(first);
        let why = loop {
            let call = match carry.take() {
                Some(call) => call,
                None => tokio::select! {
                    call = queue.recv() => match call {
                        Some(call) => call,
                        None => return,
                    },
                    frame = inbound.message() => match frame {
                        Ok(Some(frame)) => {
                            deliver(&mut pending, frame);
                            continue;
                        }
                        Ok(None) => break format!("{target} closed the raft stream"),
                        Err(status) => break format!("raft stream to {target} failed: {}", status.message()),
                    },
                },
            };
            let calls = pack(call, &mut queue);
            let mut envelopes = Vec::with_capacity(calls.len());
            // Forget calls whose caller gave up (timed out), so a peer that never
            // answers cannot grow this map without bound.
            if pending.len() > 4096 {
                pending.retain(|_, tx| !tx.is_closed());
            }
            for (message, tx) in calls {
                next_id += 1;
                pending.insert(next_id, tx);
                envelopes.push(pb::RaftEnvelope {
                    id: next_id,
                    message: Some(message),
                    reply: None,
                });
            }
            // Read replies while waiting for room to send, or a full outbound buffer
            // would stall the replies that free it.
            let send = frames.send(pb::RaftFrame { envelopes });
            tokio::pin!(send);
            let sent = loop {
                tokio::select! {
                    sent = &mut send => break sent.is_ok(),
                    frame = inbound.message() => match frame {
                        Ok(Some(frame)) => deliver(&mut pending, frame),
                        _ => break false,
                    },
                }
            };
            if !sent {
                break format!("raft stream to {target} broke while sending");
            }
        };
        for (_, tx) in pending.drain() {
            let _ = tx.send(Err(why.clone()));
        }
        tracing::debug!(%target, %why, "raft stream closed; reopening on the next message");
    }
}

fn deliver(pending: &mut HashMap<u64, oneshot::Sender<Reply>>, frame: pb::RaftFrame) {
    for envelope in frame.envelopes {
        if let Some(tx) = pending.remove(&envelope.id) {
            let _ = tx.send(
                envelope
                    .reply
                    .ok_or_else(|| "a raft reply envelope without a reply".to_string()),
            );
        }
    }
}

/// Serves one incoming `RaftStream`: every request is handled concurrently by `handle`,
/// and replies are packed into frames as they complete.
pub fn serve_stream<H, F>(
    mut inbound: tonic::Streaming<pb::RaftFrame>,
    handle: H,
) -> ReceiverStream<Result<pb::RaftFrame, tonic::Status>>
where
    H: Fn(pb::RaftMessage) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = pb::RaftReply> + Send + 'static,
{
    let (replies, mut ready) = mpsc::unbounded_channel::<pb::RaftEnvelope>();
    let (frames, outgoing) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok(Some(frame)) = inbound.message().await {
            for envelope in frame.envelopes {
                let Some(message) = envelope.message else {
                    continue;
                };
                let work = handle(message);
                let replies = replies.clone();
                let id = envelope.id;
                tokio::spawn(async move {
                    let reply = work.await;
                    let _ = replies.send(pb::RaftEnvelope {
                        id,
                        message: None,
                        reply: Some(reply),
                    });
                });
            }
        }
    });
    tokio::spawn(async move {
        while let Some(first) = ready.recv().await {
            let mut bytes = first.encoded_len();
            let mut envelopes = vec![first];
            while envelopes.len() < FRAME_ENVELOPES && bytes < FRAME_BYTES {
                match ready.try_recv() {
                    Ok(envelope) => {
                        bytes += envelope.encoded_len();
                        envelopes.push(envelope);
                    }
                    Err(_) => break,
                }
            }
            if frames.send(Ok(pb::RaftFrame { envelopes })).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(outgoing)
}
