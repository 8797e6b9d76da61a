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

/// At most this many fsyncs run at once (the flusher thread and its pool). Parallel fdatasyncs of different files let the
/// filesystem batch them into fewer journal commits: measured with `fsync_layout` (see
/// docs/benchmarks.md), 16 shards synced in parallel reach 629 windows/s against 209/s one
/// after another (a node-wide log reaches 2,030/s; see docs/architecture.md).
const PARALLEL_SYNCS: usize = 16;

/// Threads that fsync logs for the flusher, started once: spawning threads per window
/// cost more CPU than the syncs themselves at a few thousand small writes a second.
struct SyncPool {
    jobs: mpsc::Sender<SyncJob>,
}

/// One log to sync, and where to report (its slot in the window, the failure if any).
struct SyncJob {
    slot: usize,
    log: Arc<tributary_log::Log>,
    done: mpsc::Sender<(usize, Option<String>)>,
}

impl SyncPool {
    fn start(threads: usize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<SyncJob>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for n in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("tributary-sync-{n}"))
                .spawn(move || loop {
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let failure = sync_one(&job.log);
                    let _ = job.done.send((job.slot, failure));
                })?;
        }
        Ok(Self { jobs })
    }

    /// Syncs every log (the first on this thread, the rest on the pool), recording failures.
    fn sync_all(&self, logs: &mut [(Arc<tributary_log::Log>, Option<String>)]) {
        let (done, results) = mpsc::channel();
        let mut waiting = 0;
        for (slot, (log, failure)) in logs.iter_mut().enumerate().skip(1) {
            // Failed until its thread reports success: a thread that dies without reporting
            // (a panic inside the sync) must never let the window be acknowledged.
            *failure = Some("the fsync thread did not report".to_string());
            let job = SyncJob {
                slot,
                log: log.clone(),
                done: done.clone(),
            };
            if self.jobs.send(job).is_ok() {
                waiting += 1;
            } else {
                *failure = Some("the fsync threads have stopped".to_string());
            }
        }
        drop(done);
        if let Some((log, failure)) = logs.first_mut() {
            *failure = sync_one(log);
        }
        for _ in 0..waiting {
            match results.recv() {
                Ok((slot, failure)) => logs[slot].1 = failure,
                Err(_) => break,
            }
        }
    }
}

/// Syncs one log; returns the failure, if any.
fn sync_one(log: &tributary_log::Log) -> Option<String> {
    let started = std::time::Instant::now();
    let synced = log.sync();
    crate::metrics::METRICS
        .fsync_latency
        .observe(started.elapsed());
    match synced {
        Ok(_) => None,
        Err(err) => {
            tracing::error!(error = %err, dir = %log.dir().display(), "fsync failed; appends in this window are not acknowledged");
            Some(err.to_string())
        }
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
        let pool = SyncPool::start(PARALLEL_SYNCS - 1)?;
        std::thread::Builder::new()
            .name("tributary-flusher".into())
            .spawn(move || run(rx, &pool))?;
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

fn run(rx: mpsc::Receiver<FlushRequest>, pool: &SyncPool) {
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
        pool.sync_all(&mut logs);
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
