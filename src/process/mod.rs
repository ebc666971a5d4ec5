//! Worker processes started from a program: [`ProcessLauncher`] runs one per
//! worker, each in a process group of its own, and [`ProcessWorker`] watches,
//! stops and kills it.
//!
//! Each worker is told where to listen with command-line arguments (`--unix PATH`
//! or `--tcp HOST:PORT`, `--worker-id N`, `--connections N`, the command line of
//! the reference Python worker) and with the environment variables
//! [`ENDPOINT_ENV`] and [`WORKER_ID_ENV`]. A launch succeeds once the endpoint
//! accepts a connection; a worker that exits first fails the launch with its exit
//! status and the last lines it wrote on stderr.
//!
//! A worker's stdout and stderr are forwarded line by line as `tracing` events
//! with target `async_worker_pool::worker` (`info` for stdout, `warn` for
//! stderr) and the fields `worker` and `pid`.
//!
//! Nothing a worker starts outlives its handle: terminating, dropping, or seeing
//! the worker exit kills what is left of its process group. Because each worker
//! has its own group, a Ctrl-C at the terminal reaches the host only, which then
//! shuts the pool down. (A host killed with `SIGKILL` cannot clean up; its
//! workers then stay until they are killed.)
//!
//! ```no_run
//! use std::time::Duration;
//! use async_worker_pool::{Launcher, ProcessLauncher, WorkerId, WorkerProcess};
//!
//! # async fn demo() -> Result<(), async_worker_pool::LaunchError> {
//! let launcher = ProcessLauncher::python_worker("echo:handler")
//!     .handler_path("examples/handlers")
//!     .connections(100)
//!     .build()?;
//! let mut worker = launcher.launch(WorkerId::new(0)).await?;
//! println!("worker 0 listens on {} as pid {:?}", worker.endpoint(), worker.pid());
//! let exit = worker.terminate(Duration::from_secs(5)).await;
//! assert_eq!(exit.exit_code(), Some(0));
//! # Ok(())
//! # }
//! ```

mod builder;
mod launcher;
mod output;
mod socket_dir;
mod worker;

pub use builder::{EndpointKind, ProcessLauncherBuilder};
pub use launcher::ProcessLauncher;
#[cfg(feature = "nuclio")]
pub(crate) use launcher::{Started, drain_stderr, free_tcp_port, start, worker_command};
#[cfg(feature = "nuclio")]
pub(crate) use output::with_stderr_tail;
#[cfg(feature = "nuclio")]
pub(crate) use socket_dir::SocketDir;
pub use worker::ProcessWorker;

/// The environment variable that holds the worker's index in the pool.
pub const WORKER_ID_ENV: &str = "ASYNC_WORKER_POOL_WORKER_ID";

/// The environment variable that holds the worker's endpoint: `unix:PATH` or
/// `tcp:HOST:PORT`.
pub const ENDPOINT_ENV: &str = "ASYNC_WORKER_POOL_ENDPOINT";

/// The environment variable that holds the worker's
/// [`WorkerSecret`](crate::net::WorkerSecret), fresh for each launch, as 64 hex
/// digits. A worker that checks it serves a connection only once the host has
/// answered its handshake challenge (`docs/protocol.md`, "Handshake"); it should
/// remove it from its environment before it runs anything else, so that the
/// processes it starts do not inherit it.
pub const SECRET_ENV: &str = "ASYNC_WORKER_POOL_SECRET";
