//! The built-in socket transport: [`SocketTransport`] speaks the wire protocol of
//! `docs/protocol.md` over Unix or TCP sockets, to workers such as the reference
//! Python worker, the `python/async_pool_worker/` package.
//!
//! A host that brings its own [`Transport`](crate::Transport) does not need this
//! module. It is here so that the common case, a pool of asyncio workers on local
//! sockets, needs no code beyond a launcher.
//!
//! - [`Event`], [`Reply`] and [`Ready`] are the typed envelopes; bodies are
//!   [`Bytes`](bytes::Bytes), so they are not copied more than the socket needs.
//! - Framing is tokio-util's [`LengthDelimitedCodec`](tokio_util::codec::LengthDelimitedCodec),
//!   which refuses an oversized frame from its length prefix alone, so a
//!   misbehaving worker cannot make the host allocate what it announces.
//! - [`NetError`] tells a worker that closed the connection, one that broke the
//!   protocol ([`ProtocolError`]) and a failing socket apart.
//! - Every connection opens with a handshake when the worker has a
//!   [`WorkerSecret`]: the worker sends a [`Challenge`], and serves the
//!   connection only once the host has answered it with an HMAC that only the
//!   holder of the secret can compute. The transport finds the secret attached
//!   to the worker's process ([`WorkerInfo::attachments`](crate::WorkerInfo::attachments)),
//!   where the process launcher puts the secret of every launch.
//!
//! ```no_run
//! use async_worker_pool::Endpoint;
//! use async_worker_pool::net::{Event, Reply, SocketTransport};
//!
//! # async fn run() -> Result<(), async_worker_pool::net::NetError> {
//! let transport = SocketTransport::new().max_frame_bytes(1024 * 1024);
//! let mut conn = transport
//!     .connect_endpoint(&Endpoint::Unix("/tmp/w0.sock".into()))
//!     .await?;
//! match conn.call(&Event::plain("hello")).await? {
//!     Reply::Returned { status, body, .. } => println!("{status}: {body:?}"),
//!     Reply::Raised { exception_type, message, .. } => {
//!         println!("handler raised {exception_type}: {message}")
//!     }
//!     _ => {}
//! }
//! # Ok(())
//! # }
//! ```

mod answer;
mod envelope;
mod error;
mod handshake;
mod mux;
mod response_stream;
mod secret;
mod stream;
mod transport;
mod websocket;
mod websocket_link;

pub use envelope::{Event, Ready, Reply};
pub use error::{NetError, ProtocolError};
pub use handshake::{Challenge, HANDSHAKE_VERSION, NONCE_LEN};
pub use response_stream::{ResponsePart, ResponseParts, ResponseSink};
pub use secret::{InvalidSecret, MIN_SECRET_LEN, SECRET_LEN, WorkerSecret};
pub use transport::{DEFAULT_MAX_FRAME_BYTES, SocketConn, SocketTransport};
pub use websocket_link::{
    ABNORMAL_CLOSURE, DEFAULT_WINDOW, FromWorker, MESSAGE_COST, WEBSOCKET_VERSION, WebSocketClosed,
    WebSocketLink, WebSocketMessage, WebSocketReceiver, WebSocketSender,
};
