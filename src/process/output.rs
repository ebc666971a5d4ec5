//! Forwarding a worker's stdout and stderr to `tracing`, and keeping the last
//! stderr lines for the error of a launch that fails.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{ChildStderr, ChildStdout};
use tokio::task::JoinHandle;
use tracing::Level;

use crate::worker::WorkerId;

/// How many stderr lines a worker keeps for its error messages.
pub(crate) const STDERR_TAIL_LINES: usize = 20;

/// Longer lines are forwarded in pieces, so that a worker writing without
/// newlines cannot make the host buffer without bound.
const MAX_LINE_BYTES: u64 = 16 * 1024;

/// The last [`STDERR_TAIL_LINES`] lines a worker wrote on stderr, shared between
/// the forwarding task and the worker's handle.
#[derive(Debug, Clone, Default)]
pub(crate) struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn push(&self, line: String) {
        let mut lines = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if lines.len() == STDERR_TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// A copy of the lines, oldest first.
    pub(crate) fn lines(&self) -> Vec<String> {
        let lines = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        lines.iter().cloned().collect()
    }
}

/// Forwards stdout as `info` events until the pipe closes.
pub(crate) fn forward_stdout(pipe: ChildStdout, worker: WorkerId, pid: u32) -> JoinHandle<()> {
    tokio::spawn(forward_lines(pipe, move |line| {
        tracing::info!(target: "async_worker_pool::worker", %worker, pid, "{line}");
    }))
}

/// Forwards stderr until the pipe closes, keeping the tail: each line at the
/// level it starts with (see [`line_level`]), a line without one at `raw`.
pub(crate) fn forward_stderr(
    pipe: ChildStderr,
    worker: WorkerId,
    pid: u32,
    tail: StderrTail,
    raw: Level,
) -> JoinHandle<()> {
    tokio::spawn(forward_lines(pipe, move |line| {
        let (level, message) = line_level(&line, raw);
        // tracing's macros take their level as a constant.
        match level {
            Level::ERROR => {
                tracing::error!(target: "async_worker_pool::worker", %worker, pid, "{message}");
            }
            Level::WARN => {
                tracing::warn!(target: "async_worker_pool::worker", %worker, pid, "{message}");
            }
            Level::INFO => {
                tracing::info!(target: "async_worker_pool::worker", %worker, pid, "{message}");
            }
            Level::DEBUG => {
                tracing::debug!(target: "async_worker_pool::worker", %worker, pid, "{message}");
            }
            Level::TRACE => {
                tracing::trace!(target: "async_worker_pool::worker", %worker, pid, "{message}");
            }
        }
        tail.push(line);
    }))
}

/// The level a worker's stderr line announces, and the line without it.
///
/// A line that starts with a level name in capitals, followed by a space or a
/// colon, is of that level: the reference worker's `WARNING worker.0: ...`,
/// and also the `INFO:     ...` of uvicorn and other Python programs.
/// `WARNING` is `WARN`, and `CRITICAL` and `FATAL` are `ERROR`. Any other line
/// is a program's raw output, of level `raw`, and is kept whole.
pub(crate) fn line_level(line: &str, raw: Level) -> (Level, &str) {
    let end = line.find([' ', ':']).unwrap_or(line.len());
    let level = match &line[..end] {
        "TRACE" => Level::TRACE,
        "DEBUG" => Level::DEBUG,
        "INFO" => Level::INFO,
        "WARN" | "WARNING" => Level::WARN,
        "ERROR" | "CRITICAL" | "FATAL" => Level::ERROR,
        _ => return (raw, line),
    };
    if end == line.len() {
        // A level name alone is a line of text, not a level.
        return (raw, line);
    }
    let rest = &line[end + 1..];
    (level, rest.trim_start_matches(' '))
}

/// Reads `pipe` line by line until end of file. The pipe stays open as long as
/// any process of the worker's group holds it, and the group is killed with the
/// worker, so the task ends with it.
async fn forward_lines(pipe: impl AsyncRead + Unpin, mut on_line: impl FnMut(String)) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) => return,
            Ok(_) => {
                while line
                    .last()
                    .is_some_and(|&byte| byte == b'\n' || byte == b'\r')
                {
                    line.pop();
                }
                on_line(String::from_utf8_lossy(&line).into_owned());
            }
            Err(error) => {
                tracing::debug!(%error, "reading a worker's output failed; no longer forwarding it");
                return;
            }
        }
    }
}

/// `message`, followed by what the worker wrote last on stderr: the first thing
/// to read when a worker dies during start-up.
pub(crate) fn with_stderr_tail(mut message: String, stderr: &[String]) -> String {
    if stderr.is_empty() {
        message.push_str("; it wrote nothing on stderr");
    } else {
        message.push_str("; last lines on stderr:");
        for line in stderr {
            message.push_str("\n  ");
            message.push_str(line);
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_logged_at_the_level_it_starts_with() {
        let cases = [
            (
                "INFO worker.0: got 3 bytes",
                Level::INFO,
                "worker.0: got 3 bytes",
            ),
            (
                "WARNING async_pool_worker: slow",
                Level::WARN,
                "async_pool_worker: slow",
            ),
            (
                "ERROR worker.1: Traceback (most recent call last):",
                Level::ERROR,
                "worker.1: Traceback (most recent call last):",
            ),
            ("CRITICAL x: y", Level::ERROR, "x: y"),
            ("DEBUG x: y", Level::DEBUG, "x: y"),
            (
                "INFO:     Started server process [42]",
                Level::INFO,
                "Started server process [42]",
            ),
        ];
        for (line, level, message) in cases {
            assert_eq!(line_level(line, Level::TRACE), (level, message), "{line}");
        }
    }

    #[test]
    fn a_line_without_a_level_gets_the_raw_level_and_stays_whole() {
        for line in [
            "Traceback (most recent call last):",
            "  File \"x.py\", line 1",
            "info: lower case is not a level",
            "INFORMATION about something",
            "ERROR",
            "",
            "Ünïcode ✓",
        ] {
            assert_eq!(
                line_level(line, Level::WARN),
                (Level::WARN, line),
                "{line:?}"
            );
            assert_eq!(
                line_level(line, Level::INFO),
                (Level::INFO, line),
                "{line:?}"
            );
        }
    }
}
