//! The wrapper's log records, whichever way a wrapper version sends them: as
//! `l` packets on an event connection, as `log` messages on the control
//! socket, or as JSON lines on its stdout. All go to `tracing` at their level.

use serde::Deserialize;

use crate::worker::WorkerId;

/// The target of every forwarded log record.
pub(crate) const TARGET: &str = "async_worker_pool::nuclio::handler";

/// A log record, as nuclio-sdk's JSON formatter writes it.
#[derive(Debug, Deserialize)]
pub(crate) struct LogRecord {
    #[serde(default)]
    datetime: Option<String>,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    with: Option<serde_json::Map<String, serde_json::Value>>,
}

impl LogRecord {
    /// Whether it has a level and a message: where other JSON may come (stdout,
    /// control messages), only such a record is taken for a log record.
    fn is_whole(&self) -> bool {
        self.level.is_some() && self.message.is_some()
    }
}

/// Which way a record came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// An `l` packet on an event connection.
    EventSocket,
    /// A `log` message on the control socket.
    ControlSocket,
    /// A JSON line on the wrapper's stdout.
    Stdout,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Self::EventSocket => "event socket",
            Self::ControlSocket => "control socket",
            Self::Stdout => "stdout",
        }
    }
}

/// Forwards `record` to `tracing` at its level, with target
/// `async_worker_pool::nuclio::handler` and the fields `worker`, `via`,
/// `datetime` and `with` (the record's structured fields as JSON, when it has
/// any).
pub(crate) fn forward(worker: WorkerId, via: Via, record: LogRecord) {
    let with = record
        .with
        .filter(|with| !with.is_empty())
        .map(|with| serde_json::Value::Object(with).to_string());
    let datetime = record.datetime.unwrap_or_default();
    let message = record.message.unwrap_or_default();
    let via = via.as_str();
    macro_rules! emit {
        ($level:ident) => {
            match &with {
                Some(with) => tracing::$level!(target: TARGET, %worker, via, datetime, with, "{message}"),
                None => tracing::$level!(target: TARGET, %worker, via, datetime, "{message}"),
            }
        };
    }
    match record
        .level
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "debug" | "trace" => emit!(debug),
        "warn" | "warning" => emit!(warn),
        "error" | "critical" | "fatal" => emit!(error),
        _ => emit!(info),
    }
}

/// Forwards one line of the wrapper's stdout: a JSON log record at its level,
/// anything else (a `print`, a traceback) at `info` under
/// `async_worker_pool::worker`, as a worker's stdout is forwarded.
pub(crate) fn forward_stdout_line(worker: WorkerId, pid: u32, line: &str) {
    if line.starts_with('{') {
        match serde_json::from_str::<LogRecord>(line) {
            Ok(record) if record.is_whole() => {
                forward(worker, Via::Stdout, record);
                return;
            }
            _ => {}
        }
    }
    tracing::info!(target: "async_worker_pool::worker", %worker, pid, "{line}");
}

/// Forwards the attributes of a `log` control message; `false` if they are
/// not a log record.
pub(crate) fn forward_control(worker: WorkerId, attributes: serde_json::Value) -> bool {
    match serde_json::from_value::<LogRecord>(attributes) {
        Ok(record) if record.is_whole() => {
            forward(worker, Via::ControlSocket, record);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_record_with_a_level_and_a_message_counts_on_stdout_and_control() {
        let whole = |text| serde_json::from_str::<LogRecord>(text).map(|r| r.is_whole());
        assert!(whole(r#"{"level": "info", "message": "hi"}"#).unwrap());
        assert!(!whole(r#"{"message": "no level"}"#).unwrap());
        assert!(whole(r#"{"level": "info", "message": 3}"#).is_err());
        assert!(!forward_control(
            WorkerId::new(0),
            serde_json::json!({"ready": "true"})
        ));
        assert!(forward_control(
            WorkerId::new(0),
            serde_json::json!({"level": "warning", "message": "m", "with": {"a": 1}})
        ));
    }
}
