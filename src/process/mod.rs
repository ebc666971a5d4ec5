//! Worker processes started from a program: [`ProcessLauncher`](crate::ProcessLauncher) runs one per
//! worker, each in a process group of its own, and [`ProcessWorker`](crate::ProcessWorker) watches,
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
//! with target `async_worker_pool::worker` and the fields `worker` and `pid`:
//! stdout at `info`, and each stderr line at the level it starts with
//! (`WARNING worker.0: ...`, as the reference worker writes them), or at
//! [`raw_stderr_level`](crate::ProcessLauncherBuilder::raw_stderr_level) (`info` by
//! default) when it starts with none.
//!
//! Nothing a worker starts outlives its handle: terminating, dropping, or seeing
//! the worker exit kills what is left of its process group. Because each worker
//! has its own group, a Ctrl-C at the terminal reaches the host only, which then
//! shuts the pool down.
//!
//! # Workers die with their host
//!
//! A host killed with `SIGKILL` (the OOM killer, a crash) cannot clean up. So
//! each worker's stdin is a pipe that the host holds open and never writes to,
//! the *lifeline*: when the host dies, however it dies, the kernel closes it
//! and the worker reads end of file. The environment variable
//! [`LIFELINE_ENV`] (`stdin`) tells the worker to watch for that; the reference
//! Python worker then removes its socket file (and the launcher's directory,
//! once empty) and kills its process group within moments. Another worker
//! program should do the same: read stdin on a thread of its own, so that a
//! blocked event loop does not keep it alive. A program that ignores stdin is
//! not stopped by a dead host. This needs no `unsafe` code in the host (a
//! parent-death signal would need `prctl` between fork and exec) and works for
//! any way the host can die.
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

pub(crate) mod builder;
mod fd_limit;
pub(crate) mod launcher;
mod memory;
mod output;
mod python_worker;
mod socket_dir;
mod spawn;
mod template;
pub(crate) mod worker;

pub use fd_limit::raise_fd_limit;
#[cfg(feature = "nuclio")]
pub(crate) use output::with_stderr_tail;
pub use python_worker::{AnyProgram, DEFAULT_WSGI_THREADS, Lifespan, Program, PythonWorker};
#[cfg(feature = "nuclio")]
pub(crate) use socket_dir::SocketDir;
#[cfg(feature = "nuclio")]
pub(crate) use spawn::{Started, drain_stderr, free_tcp_port, start, worker_command};

/// The environment variable that holds the worker's index in the pool.
pub const WORKER_ID_ENV: &str = "ASYNC_WORKER_POOL_WORKER_ID";

/// The environment variable that holds the worker's endpoint: `unix:PATH` or
/// `tcp:HOST:PORT`.
pub const ENDPOINT_ENV: &str = "ASYNC_WORKER_POOL_ENDPOINT";

/// The environment variable that tells the worker how to learn that its host
/// has died: `stdin`, which reaches end of file then. See
/// [Workers die with their host](self#workers-die-with-their-host).
pub const LIFELINE_ENV: &str = "ASYNC_WORKER_POOL_LIFELINE";

/// The environment variable that holds the launcher's private directory (its
/// Unix sockets and the embedded Python worker), which a worker whose host has
/// died may remove once it is empty.
pub const SOCKET_DIR_ENV: &str = "ASYNC_WORKER_POOL_SOCKET_DIR";
/// The environment variable that holds the worker's
/// [`WorkerSecret`](crate::net::WorkerSecret), fresh for each launch, as 64 hex
/// digits. A worker that checks it serves a connection only once the host has
/// answered its handshake challenge (`docs/protocol.md`, "Handshake"); it should
/// remove it from its environment before it runs anything else, so that the
/// processes it starts do not inherit it.
pub const SECRET_ENV: &str = "ASYNC_WORKER_POOL_SECRET";
