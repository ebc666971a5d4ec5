//! The control socket: the wrapper connects to it at start, reports
//! `wrapperInitialized` once its `init_context` is done, and may send further
//! control messages (explicit acks, logs) for as long as it runs. Newer
//! wrappers send their own logger's records here as `log` messages, from the
//! start (`init_context`'s among them): those go to `tracing` at their level.

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::{FramedRead, LinesCodec};

use super::logs;
use crate::worker::WorkerId;

/// Control messages are small; a longer line is a broken wrapper.
const MAX_CONTROL_LINE: usize = 1024 * 1024;

type ControlLines = FramedRead<UnixStream, LinesCodec>;

#[derive(Deserialize)]
struct ControlMessage {
    kind: String,
    #[serde(default)]
    attributes: serde_json::Value,
}

/// Forwards a `log` message to `tracing`; shows any other at `debug`.
fn handle(worker: WorkerId, message: ControlMessage, line: &str) {
    if message.kind == "log" && logs::forward_control(worker, message.attributes) {
        return;
    }
    tracing::debug!(%worker, kind = message.kind, message = line, "control message");
}

/// Accepts the wrapper's connection on `listener` and reads control messages
/// until `wrapperInitialized`. Returns the connection for [`follow`], or a
/// reason why the wrapper cannot be ready.
///
/// # Cancel safety
///
/// Cancel safe, as far as a launch cares: a dropped future drops the connection.
pub(crate) async fn wait_initialized(
    listener: &UnixListener,
    worker: WorkerId,
) -> Result<ControlLines, String> {
    let (stream, _) = listener
        .accept()
        .await
        .map_err(|error| format!("cannot accept the wrapper's control connection: {error}"))?;
    let mut lines = FramedRead::new(stream, LinesCodec::new_with_max_length(MAX_CONTROL_LINE));
    loop {
        let line = match lines.next().await {
            Some(Ok(line)) => line,
            Some(Err(error)) => return Err(format!("reading the control socket failed: {error}")),
            None => {
                return Err(
                    "the wrapper closed its control connection before it reported \
                            wrapperInitialized"
                        .to_owned(),
                );
            }
        };
        match serde_json::from_str::<ControlMessage>(&line) {
            Ok(message) if message.kind == "wrapperInitialized" => return Ok(lines),
            Ok(message) => handle(worker, message, &line),
            Err(error) => {
                tracing::warn!(%worker, %error, "ignoring a control line that is not a control message");
            }
        }
    }
}

/// Reads the rest of the control connection, so the wrapper never blocks on
/// it: `log` messages go to `tracing` at their level, others at `debug`. Ends
/// when the wrapper closes it.
pub(crate) async fn follow(mut lines: ControlLines, worker: WorkerId) {
    while let Some(line) = lines.next().await {
        match line {
            Ok(line) => match serde_json::from_str::<ControlMessage>(&line) {
                Ok(message) => handle(worker, message, &line),
                Err(_) => {
                    tracing::debug!(%worker, message = line, "control line that is not a control message")
                }
            },
            Err(error) => {
                tracing::debug!(%worker, %error, "no longer reading the control socket");
                return;
            }
        }
    }
}
