//! Group commit across shards: one node-wide thread fsyncs every log that has unsynced
//! appends, then completes all the waiting raft appends at once. Concurrent writes to any
//! number of groups share a flush window; no write pays for its own fsync.
//!
//! A raft append is acknowledged to openraft (and so can count towards a commit) only after
//! its log's `sync` returned, which is what makes an acknowledged record durable.

use std::sync::mpsc;
use std::sync::Arc;

use openraft::storage::IOFlushed;

use super::TypeConfig;

struct FlushRequest {
    log: Arc<tributary_log::Log>,
    callback: IOFlushed<TypeConfig>,
}

/// At most this many fsyncs run at once. Parallel fdatasyncs of different files let the
/// filesystem batch them into fewer journal commits: measured with `fsync_layout` (see
/// docs/benchmarks.md), 16 shards synced in parallel reach 629 windows/s against 209/s one
/// after another (a node-wide log reaches 2,030/s; see docs/architecture.md).
const PARALLEL_SYNCS: usize = 16;

/// Syncs every log, up to `PARALLEL_SYNCS` at a time, recording failures.
fn sync_all(logs: &mut [(Arc<tributary_log::Log>, Option<String>)]) {
    for chunk in logs.chunks_mut(PARALLEL_SYNCS) {
        if chunk.len() == 1 {
            sync_one(&mut chunk[0]);
            continue;
        }
        std::thread::scope(|scope| {
            for entry in chunk.iter_mut() {
                scope.spawn(move || sync_one(entry));
            }
        });
    }
}

fn sync_one((log, failure): &mut (Arc<tributary_log::Log>, Option<String>)) {
    let started = std::time::Instant::now();
    let synced = log.sync();
    crate::metrics::METRICS
        .fsync_latency
        .observe(started.elapsed());
    if let Err(err) = synced {
        tracing::error!(error = %err, dir = %log.dir().display(), "fsync failed; appends in this window are not acknowledged");
        *failure = Some(err.to_string());
    }
}

/// Handle to the flusher thread; cloning shares the thread.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::Sender<FlushRequest>,
}

impl Flusher {
    /// Starts the flusher thread. It stops when every handle is dropped.
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<FlushRequest>();
        std::thread::Builder::new()
            .name("tributary-flusher".into())
            .spawn(move || run(rx))?;
        Ok(Self { tx })
    }

    /// Completes `callback` once everything appended to `log` so far is on disk.
    pub fn flush(&self, log: Arc<tributary_log::Log>, callback: IOFlushed<TypeConfig>) {
        if let Err(mpsc::SendError(request)) = self.tx.send(FlushRequest { log, callback }) {
            request
                .callback
                .io_completed(Err(std::io::Error::other("the flusher has stopped")));
        }
    }
}

fn run(rx: mpsc::Receiver<FlushRequest>) {
    while let Ok(first) = rx.recv() {
        let mut window = vec![first];
        while let Ok(more) = rx.try_recv() {
            window.push(more);
        }
        // One sync per distinct log in the window, however many appends it had.
        let mut logs: Vec<(Arc<tributary_log::Log>, Option<String>)> = Vec::new();
        for request in &window {
            if !logs.iter().any(|(log, _)| Arc::ptr_eq(log, &request.log)) {
                logs.push((request.log.clone(), None));
            }
        }
        sync_all(&mut logs);
        for request in window {
            let failure = logs
                .iter()
                .find(|(log, _)| Arc::ptr_eq(log, &request.log))
                .and_then(|(_, f)| f.clone());
            let result = match failure {
                None => Ok(()),
                Some(message) => Err(std::io::Error::other(message)),
            };
            request.callback.io_completed(result);
        }
    }
}
