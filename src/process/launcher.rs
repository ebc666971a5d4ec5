//! [`ProcessLauncher`]: starts a worker program per worker, each in a process
//! group of its own, and waits until it accepts connections.

use std::ffi::OsString;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::process::Command;
use tracing::Level;

use super::output::with_stderr_tail;
use super::python_worker::{PYTHONPATH, module_search_path};
use super::socket_dir::SocketDir;
use super::spawn::{
    Started, drain_stderr, free_tcp_port, start_with, wait_until_ready, worker_command,
};
use super::template::Values;
use super::worker::ProcessWorker;
use super::{ENDPOINT_ENV, LIFELINE_ENV, SECRET_ENV, SOCKET_DIR_ENV, WORKER_ID_ENV};
use crate::endpoint::{Endpoint, EndpointKind};
use crate::launcher::LaunchError;
use crate::launcher::{Launcher, WorkerExit, WorkerProcess};
use crate::net::WorkerSecret;
use crate::worker::WorkerId;

/// A [`Launcher`] that runs a program per worker and hands it an endpoint to
/// listen on: a Unix socket in a private directory, or a free loopback TCP port.
///
/// Built with [`ProcessLauncher::builder`] for any program, or with
/// [`ProcessLauncher::python_worker`] for the reference Python asyncio worker,
/// which is embedded in the crate.
///
/// The launcher owns its socket directory and removes it when dropped; the pool
/// drops its launcher after [`shutdown`](crate::Pool::shutdown), once every
/// worker has been reaped.
///
/// # Examples
///
/// Any program that listens where it is told, here a Python module of the
/// host's own run by the embedded reference worker (not run here: it needs
/// `python3` and the handler):
///
/// ```no_run
/// use std::time::Duration;
/// use async_worker_pool::net::{Event, SocketTransport};
/// use async_worker_pool::{EndpointKind, Pool, ProcessLauncher};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // The host needs a descriptor per connection: raise its soft limit first.
/// async_worker_pool::process::raise_fd_limit(4 * 250 + 64)?;
/// let launcher = ProcessLauncher::python_worker("app:handler")
///     .handler_path("/srv/app")
///     .endpoint_kind(EndpointKind::Unix)
///     .connections(250)
///     .env("APP_MODE", "production")
///     .build()?;
/// let pool = Pool::builder(SocketTransport::new(), launcher)
///     .num_workers(4)
///     .max_connections(250)
///     .build()?;
/// pool.ready(Duration::from_secs(30)).await?;
/// let reply = pool.dispatch(Event::plain("work")).await?;
/// # let _ = reply;
/// pool.shutdown(Duration::from_secs(10)).await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ProcessLauncher {
    pub(super) program: OsString,
    pub(super) args: Vec<OsString>,
    pub(super) envs: Vec<(OsString, OsString)>,
    pub(super) current_dir: Option<PathBuf>,
    pub(super) endpoint_kind: EndpointKind,
    pub(super) connections: usize,
    /// A WSGI app's threads per worker (then also `connections`), for errors
    /// that say what to fix.
    pub(super) wsgi_threads: Option<usize>,
    pub(super) tcp_host: IpAddr,
    pub(super) endpoint_args: bool,
    /// Whether this runs the embedded Python worker: it gets the package on
    /// PYTHONPATH, and errors say what to fix.
    pub(super) is_python_worker: bool,
    /// The level of stderr lines that carry none of their own.
    pub(super) raw_stderr_level: Level,
    pub(super) socket_dir: SocketDir,
}

impl ProcessLauncher {
    /// The private directory (mode 0700) holding the Unix sockets and the
    /// embedded worker package; removed when the launcher is dropped.
    pub fn socket_dir(&self) -> &Path {
        self.socket_dir.path()
    }

    /// Whether workers listen on Unix sockets or on TCP.
    pub fn endpoint_kind(&self) -> EndpointKind {
        self.endpoint_kind
    }

    /// Chooses where `worker` will listen, and clears the way for it.
    fn endpoint_for(&self, worker: WorkerId) -> Result<Endpoint, LaunchError> {
        match self.endpoint_kind {
            EndpointKind::Unix => {
                let path = self.socket_dir.socket_path(worker);
                // A previous generation killed with SIGKILL leaves its socket file,
                // and probing a stale file would only fail; the worker must bind anew.
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => {
                        return Err(LaunchError::with_source(
                            format!("cannot remove the stale socket file {}", path.display()),
                            error,
                        ));
                    }
                }
                Ok(Endpoint::Unix(path))
            }
            EndpointKind::Tcp => {
                let addr = free_tcp_port(self.tcp_host)?;
                Ok(Endpoint::Tcp(addr))
            }
        }
    }

    fn command(&self, worker: WorkerId, endpoint: &Endpoint) -> Command {
        let values = Values::new(endpoint, worker, self.connections);
        let mut command = Command::new(&self.program);
        command.args(self.args.iter().map(|arg| values.expand(arg)));
        if self.endpoint_args {
            match endpoint {
                Endpoint::Unix(path) => command.arg("--unix").arg(path),
                Endpoint::Tcp(addr) => command.arg("--tcp").arg(addr.to_string()),
                // endpoint_for never picks one; nothing to tell the worker.
                Endpoint::Named(_) => &mut command,
            };
            command
                .arg("--worker-id")
                .arg(worker.to_string())
                .arg("--connections")
                .arg(self.connections.to_string());
        }
        command
            .envs(
                self.envs
                    .iter()
                    .map(|(key, value)| (key, values.expand(value))),
            )
            .env(WORKER_ID_ENV, worker.to_string())
            .env(ENDPOINT_ENV, endpoint.to_string())
            .env(LIFELINE_ENV, "stdin")
            .env(SOCKET_DIR_ENV, self.socket_dir.path());
        if self.is_python_worker {
            // The embedded package is in the launcher's directory; the user's
            // PYTHONPATH (set on the builder, or the host's own) follows it.
            let inherited = match self.envs.iter().rev().find(|(key, _)| key == PYTHONPATH) {
                Some((_, value)) => Some(values.expand(value)),
                None => std::env::var_os(PYTHONPATH),
            };
            command.env(
                PYTHONPATH,
                module_search_path(self.socket_dir.path(), inherited.as_deref()),
            );
        }
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        worker_command(&mut command);
        command
    }

    /// Says what to fix when the program could not be started at all.
    fn spawn_error(&self, error: io::Error) -> LaunchError {
        let program = self.program.to_string_lossy();
        let message = match error.kind() {
            io::ErrorKind::NotFound => match &self.current_dir {
                Some(dir) if !dir.is_dir() => format!(
                    "the worker's working directory {} does not exist",
                    dir.display()
                ),
                _ if self.is_python_worker => {
                    let on_path = if program.contains('/') {
                        ""
                    } else {
                        " on PATH"
                    };
                    format!(
                        "{program} not found{on_path}: install Python 3.9 or later, or set \
                         ProcessLauncherBuilder::python(...) to the interpreter"
                    )
                }
                _ if program.contains('/') => {
                    format!("worker program {program} not found: check the path")
                }
                _ => format!(
                    "worker program {program} not found on PATH: install it or give its full path"
                ),
            },
            io::ErrorKind::PermissionDenied => format!(
                "worker program {program} cannot be executed (permission denied): \
                 check that it is an executable file"
            ),
            _ => format!("cannot start worker program {program}"),
        };
        LaunchError::with_source(message, error)
    }

    /// The error for a worker that exited before it accepted a connection.
    fn exited_error(&self, worker: WorkerId, exit: WorkerExit, stderr: &[String]) -> LaunchError {
        let program = self.program.to_string_lossy();
        let hint = match (self.is_python_worker, exit.exit_code()) {
            (true, Some(2)) => {
                " (the handler could not be loaded, is not an async function, or an argument is wrong)"
            }
            (true, Some(1)) => " (it could not listen on its endpoint)",
            _ => "",
        };
        let message =
            format!("worker {worker} ({program}) exited during start-up with {exit}{hint}");
        LaunchError::new(with_stderr_tail(message, stderr))
    }
}

#[async_trait]
impl Launcher for ProcessLauncher {
    type Process = ProcessWorker;

    /// Starts the program for `worker` and resolves once its endpoint accepts a
    /// connection.
    ///
    /// Each launch makes a fresh [`WorkerSecret`], gives it to the program in
    /// [`SECRET_ENV`] and registers it for the endpoint (for as long as the
    /// returned [`ProcessWorker`] lives), so that a
    /// [`SocketTransport`](crate::net::SocketTransport) answers the worker's
    /// handshake. A program that ignores the variable serves without one.
    ///
    /// # Errors
    ///
    /// If the program cannot be started, or exits before it accepts a connection
    /// (the error quotes its exit status and last stderr lines).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future kills the process group it started.
    async fn launch(&self, worker: WorkerId) -> Result<ProcessWorker, LaunchError> {
        let endpoint = self.endpoint_for(worker)?;
        let secret = WorkerSecret::generate().map_err(|error| {
            LaunchError::with_source(format!("cannot make a secret for worker {worker}"), error)
        })?;
        let mut command = self.command(worker, &endpoint);
        // In the environment, not the arguments: /proc/PID/cmdline is world-readable.
        command.env(SECRET_ENV, secret.to_hex());
        let Started {
            mut process,
            stderr_forwarder,
            stderr_tail: tail,
        } = start_with(command, worker, endpoint.clone(), self.raw_stderr_level)
            .map_err(|error| self.spawn_error(error))?
            .ok_or_else(|| {
                // Only a reaped child has no pid, and this one was never waited for.
                LaunchError::new(format!(
                    "worker {worker} ({}) vanished as it was started",
                    self.program.to_string_lossy()
                ))
            })?;
        process.hold_secret(secret);
        let pid = process.pid().unwrap_or_default();
        tracing::debug!(%worker, pid, %endpoint, "worker process started");

        let Some(exit) = wait_until_ready(&mut process, &endpoint).await else {
            tracing::info!(%worker, pid, %endpoint, "worker process accepts connections");
            return Ok(process);
        };
        drain_stderr(stderr_forwarder).await;
        Err(self.exited_error(worker, exit, &tail.lines()))
    }

    /// Refuses a pool that would open more connections to a worker than
    /// [`ProcessLauncherBuilder::connections`](crate::ProcessLauncherBuilder::connections)
    /// tells it to serve (it would refuse the rest; for a WSGI app, more slots
    /// than it has threads), or more connections in all than the host's soft
    /// open-file limit allows (see [`raise_fd_limit`](super::raise_fd_limit)).
    fn check_pool_size(&self, num_workers: usize, max_connections: usize) -> Result<(), String> {
        if let Some(threads) = self
            .wsgi_threads
            .filter(|&threads| max_connections > threads)
        {
            return Err(format!(
                "is {max_connections}, more than the {threads} threads each worker runs the \
                 WSGI app in (ProcessLauncherBuilder::wsgi_threads), one slot each: set \
                 max_connections to {threads}, or raise wsgi_threads"
            ));
        }
        if max_connections > self.connections {
            return Err(format!(
                "is {max_connections}, more than the {} connections the launcher tells each \
                 worker to serve (ProcessLauncherBuilder::connections); set both to \
                 {max_connections}, or max_connections to at most {}",
                self.connections, self.connections
            ));
        }
        let need = super::fd_limit::descriptors_needed(num_workers, max_connections);
        match super::fd_limit::soft_fd_limit() {
            Some(limit) if limit < need => Err(format!(
                "needs about {need} file descriptors in the host ({num_workers} workers × \
                 {max_connections} connections, and some to spare), more than the open-file \
                 limit of {limit}: raise it first (process::raise_fd_limit({need}), or `ulimit -n`)"
            )),
            _ => Ok(()),
        }
    }
}
