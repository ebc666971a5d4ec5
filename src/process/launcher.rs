//! [`ProcessLauncher`]: starts a worker program per worker, each in a process
//! group of its own, and waits until it accepts connections.

use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::{TcpStream, UnixStream};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tracing::Level;

use super::builder::{EndpointKind, ProcessLauncherBuilder};
use super::output::{StderrTail, forward_stderr, forward_stdout, with_stderr_tail};
use super::socket_dir::SocketDir;
use super::worker::ProcessWorker;
use super::{ENDPOINT_ENV, LIFELINE_ENV, SECRET_ENV, SOCKET_DIR_ENV, WORKER_ID_ENV};
use crate::error::LaunchError;
use crate::launcher::{Endpoint, Launcher, WorkerExit, WorkerId, WorkerProcess};
use crate::net::WorkerSecret;

/// How often a starting worker's endpoint is tried.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long one connection attempt may take; a listener with a full backlog can
/// leave a connect pending, and the next attempt should not wait behind it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a failed launch waits for the stderr forwarder to read what the
/// worker wrote before it died, so the error can quote it.
const STDERR_DRAIN: Duration = Duration::from_millis(200);

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
#[derive(Debug)]
pub struct ProcessLauncher {
    pub(super) program: OsString,
    pub(super) args: Vec<OsString>,
    pub(super) envs: Vec<(OsString, OsString)>,
    pub(super) current_dir: Option<PathBuf>,
    pub(super) endpoint_kind: EndpointKind,
    pub(super) connections: usize,
    pub(super) tcp_host: IpAddr,
    pub(super) endpoint_args: bool,
    /// Whether this runs the embedded Python worker, for errors that say what to fix.
    pub(super) is_python_worker: bool,
    /// The level of a stderr line that does not start with one.
    pub(super) raw_stderr_level: Level,
    pub(super) socket_dir: SocketDir,
}

impl ProcessLauncher {
    /// Starts configuring a launcher that runs `program` for every worker.
    ///
    /// `program` is looked up on `PATH` unless it contains a `/`.
    pub fn builder(program: impl Into<OsString>) -> ProcessLauncherBuilder {
        ProcessLauncherBuilder::new(program.into())
    }

    /// Starts configuring a launcher for the reference Python asyncio worker,
    /// serving `handler` (`module:function`).
    ///
    /// It runs `python3 -u <script> --handler HANDLER`, where the script is the
    /// `python/async_pool_worker.py` this crate embeds, written into the
    /// launcher's socket directory by [`build`](ProcessLauncherBuilder::build);
    /// no checkout of the repository is needed. Add the handler's directory with
    /// [`handler_path`](ProcessLauncherBuilder::handler_path), and choose another
    /// interpreter with [`python`](ProcessLauncherBuilder::python).
    pub fn python_worker(handler: &str) -> ProcessLauncherBuilder {
        ProcessLauncherBuilder::python_worker(handler)
    }

    /// The private directory (mode 0700) holding the Unix sockets and the
    /// embedded worker script; removed when the launcher is dropped.
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
                            format!(
                                "cannot remove the stale socket file {}: {error}",
                                path.display()
                            ),
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
        let mut command = Command::new(&self.program);
        command.args(&self.args);
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
            .envs(self.envs.iter().map(|(key, value)| (key, value)))
            .env(WORKER_ID_ENV, worker.to_string())
            .env(ENDPOINT_ENV, endpoint.to_string())
            .env(LIFELINE_ENV, "stdin")
            .env(SOCKET_DIR_ENV, self.socket_dir.path());
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
            _ => format!("cannot start worker program {program}: {error}"),
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
            LaunchError::with_source(
                format!("cannot make a secret for worker {worker}: {error}"),
                error,
            )
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
        process.hold_secret(secret.clone(), secret.register(endpoint.clone()));
        let pid = process.pid().unwrap_or_default();
        tracing::debug!(%worker, pid, %endpoint, "worker process started");

        let Some(exit) = wait_until_ready(&mut process, &endpoint).await else {
            tracing::info!(%worker, pid, %endpoint, "worker process accepts connections");
            return Ok(process);
        };
        drain_stderr(stderr_forwarder).await;
        Err(self.exited_error(worker, exit, &tail.lines()))
    }
}

/// A worker process just spawned by [`start`], with its output forwarded.
pub(crate) struct Started {
    /// The handle, which kills the process group if dropped.
    pub(crate) process: ProcessWorker,
    /// The task forwarding stderr, to wait for before quoting the tail.
    pub(crate) stderr_forwarder: Option<JoinHandle<()>>,
    /// The last lines the process wrote on stderr.
    pub(crate) stderr_tail: StderrTail,
}

/// Spawns `command` as worker `worker` listening on `endpoint`, in a process
/// group of its own and killed on drop, and forwards its stdout and stderr to
/// `tracing`. `Ok(None)` if the child has no pid, which only a reaped child has.
///
/// The command's stdout and stderr must be piped for them to be forwarded;
/// [`worker_command`] sets that up.
#[cfg_attr(not(feature = "nuclio"), allow(dead_code))]
pub(crate) fn start(
    command: Command,
    worker: WorkerId,
    endpoint: Endpoint,
) -> io::Result<Option<Started>> {
    start_with(command, worker, endpoint, Level::INFO)
}

/// [`start`], logging the stderr lines that carry no level at `raw_stderr`.
pub(crate) fn start_with(
    mut command: Command,
    worker: WorkerId,
    endpoint: Endpoint,
    raw_stderr: Level,
) -> io::Result<Option<Started>> {
    let mut child = command.spawn()?;
    let Some(pid) = child.id() else {
        return Ok(None);
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let lifeline = child.stdin.take();
    let tail = StderrTail::default();
    // From here the handle is the guard: if the caller's future is dropped, its
    // Drop kills the group.
    let process = ProcessWorker::new(worker, endpoint, pid, child, tail.clone(), lifeline);
    if let Some(stdout) = stdout {
        forward_stdout(stdout, worker, pid);
    }
    let stderr_forwarder =
        stderr.map(|stderr| forward_stderr(stderr, worker, pid, tail.clone(), raw_stderr));
    Ok(Some(Started {
        process,
        stderr_forwarder,
        stderr_tail: tail,
    }))
}

/// The settings every worker process gets: a pipe as stdin that only the host
/// writes to (the lifeline: it reaches end of file when the host dies, however
/// it dies), piped output for forwarding, a process group of its own (so that
/// killpg reaches whatever it starts), and killed if its handle is dropped,
/// whatever else happens.
pub(crate) fn worker_command(command: &mut Command) {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
}

/// Gives the stderr forwarder of a worker that died a moment to read what it
/// wrote last, so that an error can quote it.
pub(crate) async fn drain_stderr(forwarder: Option<JoinHandle<()>>) {
    if let Some(forwarder) = forwarder {
        let _ = timeout(STDERR_DRAIN, forwarder).await;
    }
}

/// A free TCP port on `host`, for a worker to listen on.
///
/// It binds port 0 to let the kernel pick a free port, then releases it for the
/// worker. Another process could take it in between; the worker then exits
/// during start-up and the launch fails with its error.
pub(crate) fn free_tcp_port(host: IpAddr) -> Result<SocketAddr, LaunchError> {
    let cannot = |error: io::Error| {
        LaunchError::with_source(
            format!("cannot find a free TCP port on {host}: {error}"),
            error,
        )
    };
    let listener = TcpListener::bind((host, 0)).map_err(cannot)?;
    listener.local_addr().map_err(cannot)
}

/// Tries the endpoint every [`POLL_INTERVAL`] until it accepts a connection
/// (`None`) or the process exits (`Some`).
async fn wait_until_ready(process: &mut ProcessWorker, endpoint: &Endpoint) -> Option<WorkerExit> {
    loop {
        tokio::select! {
            biased;
            exit = process.wait() => return Some(exit),
            accepted = timeout(PROBE_TIMEOUT, probe(endpoint)) => {
                if matches!(accepted, Ok(Ok(()))) {
                    return None;
                }
            }
        }
        tokio::select! {
            exit = process.wait() => return Some(exit),
            () = sleep(POLL_INTERVAL) => {}
        }
    }
}

/// Opens a connection and closes it at once: the worker is ready when it accepts.
async fn probe(endpoint: &Endpoint) -> io::Result<()> {
    match endpoint {
        Endpoint::Unix(path) => UnixStream::connect(path).await.map(drop),
        Endpoint::Tcp(addr) => TcpStream::connect(addr).await.map(drop),
        Endpoint::Named(name) => Err(io::Error::other(format!(
            "cannot probe the endpoint {name}"
        ))),
    }
}
