//! Drive Nuclio's own Python async wrapper (`_nuclio_async_wrapper.py`),
//! unchanged: the `nuclio` feature.
//!
//! - [`NuclioLauncher`] runs the wrapper per worker with Nuclio's command line,
//!   listens on its control socket, and reports it ready on
//!   `wrapperInitialized`; [`NuclioWorker`] maps terminate and drain to
//!   `SIGUSR1` and `SIGUSR2`.
//! - [`NuclioTransport`] speaks the wrapper's event protocol over TCP: events
//!   out as a 4-byte length and a msgpack map ([`NuclioEvent`]), packets back as
//!   lines (`s`, `l`, `m`, `r`, and `c`/`b`/`e` for a streamed
//!   [`NuclioResponse`]). Handler logs go to `tracing`, handler durations to
//!   [`HandlerDurations`].
//! - [`NuclioSpec`] reads the pool settings from a function configuration in
//!   JSON, with Nuclio's field names.
//!
//! ```no_run
//! use async_worker_pool::Pool;
//! use async_worker_pool::nuclio::{NuclioEvent, NuclioLauncher, NuclioSpec, NuclioTransport};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let spec = NuclioSpec::from_json(&std::fs::read_to_string("function.json")?)?;
//! let launcher = NuclioLauncher::builder("/opt/nuclio/_nuclio_async_wrapper.py", "main:handler")
//!     .handler_path("/opt/nuclio/handler")
//!     .build()?;
//! let transport = NuclioTransport::new();
//! let durations = transport.handler_durations();
//! let pool = Pool::builder(transport, launcher)
//!     .config(spec.pool_config("http")?)
//!     .build()?;
//! let response = pool.dispatch(NuclioEvent::new("hello")).await?;
//! println!("{}: {:?}", response.status_code, response.body.to_bytes());
//! println!("handler time so far: {:?}", durations.snapshot().sum);
//! # Ok(())
//! # }
//! ```

mod config;
mod control;
mod durations;
mod endpoint;
mod error;
mod event;
mod launcher;
mod logs;
mod packet;
mod response;
mod socket;
mod transport;
mod worker;

pub use config::NuclioSpec;
pub use durations::{HandlerDurationStats, HandlerDurations};
pub use error::{NuclioError, SpecError};
pub use event::{NuclioEvent, TriggerInfo};
pub use launcher::{NuclioLauncher, NuclioLauncherBuilder};
pub use response::{NuclioBody, NuclioResponse};
pub use transport::{
    DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_STREAM_BYTES, NuclioConn,
    NuclioTransport,
};
pub use worker::NuclioWorker;
