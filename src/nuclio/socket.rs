//! One socket to the wrapper: [`Started`], a connection the wrapper has
//! started (sent `s` on), and how one is opened and read line by line. The
//! transport hands these out; an endpoint's state keeps those nobody waits for.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, sleep};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::error::NuclioError;
use super::packet::Packet;

/// How often a refused connection is tried again while the wrapper starts to listen.
const REFUSED_RETRY_INTERVAL: Duration = Duration::from_millis(10);

/// A connection the wrapper has started (sent `s` on), not yet handed out.
#[derive(Debug)]
pub(crate) struct Started {
    pub(super) lines: FramedRead<OwnedReadHalf, LinesCodec>,
    pub(super) write: OwnedWriteHalf,
    pub(super) limit: usize,
}

/// Opens a connection to `addr`, retrying a refused one for `refused_retry`,
/// and waits for the wrapper's `s` on it.
pub(super) async fn open(
    addr: SocketAddr,
    limit: usize,
    refused_retry: Duration,
) -> Result<Started, NuclioError> {
    // A window too long to represent never closes.
    let deadline = Instant::now().checked_add(refused_retry);
    let stream = loop {
        match TcpStream::connect(addr).await {
            Ok(stream) => break stream,
            Err(error)
                if error.kind() == std::io::ErrorKind::ConnectionRefused
                    && deadline.is_none_or(|deadline| Instant::now() < deadline) =>
            {
                sleep(REFUSED_RETRY_INTERVAL).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    // Small packets each way: Nagle would only add latency.
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let mut lines = FramedRead::new(read, LinesCodec::new_with_max_length(limit));
    match next_line(&mut lines, limit).await {
        Ok(Some(line)) => match Packet::parse(&line)? {
            Packet::Start => Ok(Started {
                lines,
                write,
                limit,
            }),
            other => Err(NuclioError::NotReady { kind: other.kind() }),
        },
        Ok(None) | Err(NuclioError::Closed) => Err(NuclioError::ClosedBeforeReady),
        Err(error) => Err(error),
    }
}

/// The next line of `lines`, `None` at end of stream.
pub(super) async fn next_line(
    lines: &mut FramedRead<OwnedReadHalf, LinesCodec>,
    limit: usize,
) -> Result<Option<String>, NuclioError> {
    match lines.next().await {
        None => Ok(None),
        Some(Ok(line)) => Ok(Some(line)),
        Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
            Err(NuclioError::LineTooLong { limit })
        }
        Some(Err(LinesCodecError::Io(error))) => Err(error.into()),
    }
}
