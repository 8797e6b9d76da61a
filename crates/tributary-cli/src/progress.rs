//! Waiting for a stream to be ACTIVE again after a change, with progress on stderr.
//!
//! `stream create`, `stream scale`, `shard split` and `shard merge` all wait this way (unless
//! `--no-wait`). On a terminal one status line is redrawn in place; otherwise (a log, a CI
//! job) a line is printed only when the status or the open shard count changes, so the output
//! stays short.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tributary_client::{Client, Error, StreamDescription};

/// How long `stream create` waits for ACTIVE. Creating a stream elects a leader for every
/// shard; a minute covers many shards on a loaded machine without leaving a script hanging
/// when the cluster cannot make progress.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a reshard (`stream scale`, `shard split`, `shard merge`) is waited for. Scaling
/// runs one split or merge after another, each electing leaders for new shards, so a large
/// change takes minutes; ten bound it without hanging a script on a stuck cluster.
pub const RESHARD_TIMEOUT: Duration = Duration::from_secs(600);

/// How often the terminal line is redrawn when nothing changed, to keep the elapsed time
/// moving.
const REDRAW_INTERVAL: Duration = Duration::from_millis(500);

/// Waits until `stream` is ACTIVE and `settled` holds for its description (see
/// [`Client::wait_for_active_where`]), showing progress on stderr. `target_open` is the open
/// shard count being worked towards, shown next to the current one.
pub async fn wait_until_active<F>(
    client: &Client,
    stream: &str,
    timeout: Duration,
    target_open: Option<u32>,
    mut settled: F,
) -> anyhow::Result<StreamDescription>
where
    F: FnMut(&StreamDescription) -> bool,
{
    let mut progress = Progress::new(stream, target_open, std::io::stderr().is_terminal());
    let result = client
        .wait_for_active_where(stream, timeout, |description| {
            progress.show(description);
            settled(description)
        })
        .await;
    progress.finish();
    result.map_err(|error| match error {
        Error::Timeout(message) => anyhow::anyhow!(
            "Timeout: {message}; the server carries on with the change: check on it with \
             `trib stream describe {stream}`"
        ),
        other => other.into(),
    })
}

/// What one poll showed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    status: String,
    open_shards: u32,
}

/// The status line on stderr.
#[derive(Debug)]
struct Progress<'a> {
    stream: &'a str,
    target_open: Option<u32>,
    terminal: bool,
    started: Instant,
    last: Option<Seen>,
    drawn_at: Option<Instant>,
}

impl<'a> Progress<'a> {
    fn new(stream: &'a str, target_open: Option<u32>, terminal: bool) -> Progress<'a> {
        Progress {
            stream,
            target_open,
            terminal,
            started: Instant::now(),
            last: None,
            drawn_at: None,
        }
    }

    fn show(&mut self, description: &StreamDescription) {
        let Some(summary) = description.summary.as_ref() else {
            return;
        };
        let seen = Seen {
            status: summary.status().as_str_name().to_owned(),
            open_shards: summary.open_shard_count,
        };
        let changed = self.last.as_ref() != Some(&seen);
        let due = self
            .drawn_at
            .is_none_or(|at| at.elapsed() >= REDRAW_INTERVAL);
        let line = progress_line(self.stream, &seen, self.target_open, self.started.elapsed());
        let mut err = std::io::stderr().lock();
        // Progress is a courtesy: a stderr that cannot be written must not fail the command.
        if self.terminal && (changed || due) {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
            self.drawn_at = Some(Instant::now());
        } else if !self.terminal && changed {
            let _ = writeln!(err, "{line}");
        }
        self.last = Some(seen);
    }

    /// Clears the terminal line, so the command's own final message takes its place.
    fn finish(&mut self) {
        if self.terminal && self.drawn_at.is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

/// `stream 'orders': UPDATING, 5 open shards (target 8), 12s`
fn progress_line(stream: &str, seen: &Seen, target_open: Option<u32>, elapsed: Duration) -> String {
    let noun = if seen.open_shards == 1 {
        "shard"
    } else {
        "shards"
    };
    let target = target_open.map_or_else(String::new, |target| format!(" (target {target})"));
    format!(
        "stream '{stream}': {}, {} open {noun}{target}, {}s",
        seen.status,
        seen.open_shards,
        elapsed.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_show_status_open_shards_and_target() {
        let seen = Seen {
            status: "UPDATING".into(),
            open_shards: 5,
        };
        assert_eq!(
            progress_line("orders", &seen, Some(8), Duration::from_millis(12_400)),
            "stream 'orders': UPDATING, 5 open shards (target 8), 12s"
        );
        let seen = Seen {
            status: "CREATING".into(),
            open_shards: 1,
        };
        assert_eq!(
            progress_line("s", &seen, None, Duration::ZERO),
            "stream 's': CREATING, 1 open shard, 0s"
        );
    }
}
