//! Spawning a worker process and waiting for it: the settings every worker
//! process gets, the forwarding of its output, its lifeline, and the check that
//! it accepts connections. Shared by every launcher of the crate, and open to
//! custom launchers through [`ProcessWorker::spawn`].

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tracing::Level;

use super::output::{StderrTail, forward_stderr, forward_stdout};
use super::worker::ProcessWorker;
use crate::endpoint::Endpoint;
use crate::launcher::LaunchError;
use crate::launcher::{WorkerExit, WorkerProcess};
use crate::worker::WorkerId;

/// How often a starting worker's endpoint is tried.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// How long one connection attempt may take; a listener with a full backlog can
/// leave a connect pending, and the next attempt should not wait behind it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a failed launch waits for the stderr forwarder to read what the
/// worker wrote before it died, so the error can quote it.
const STDERR_DRAIN: Duration = Duration::from_millis(200);

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
        LaunchError::with_source(format!("cannot find a free TCP port on {host}"), error)
    };
    let listener = TcpListener::bind((host, 0)).map_err(cannot)?;
    listener.local_addr().map_err(cannot)
}

/// Tries the endpoint every [`POLL_INTERVAL`] until it accepts a connection
/// (`None`) or the process exits (`Some`).
pub(crate) async fn wait_until_ready(
    process: &mut ProcessWorker,
    endpoint: &Endpoint,
) -> Option<WorkerExit> {
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

/// For launchers of your own: the process handling of [`ProcessLauncher`](super::ProcessLauncher)
/// without its choice of program and endpoint.
impl ProcessWorker {
    /// Spawns `command` as worker `worker`, which will listen on `endpoint`,
    /// with what every worker process of this crate gets: its own process
    /// group (killed as a whole when the handle is dropped or terminated),
    /// stdout and stderr forwarded to `tracing` (target
    /// `async_worker_pool::worker`), and a lifeline on stdin (see
    /// [Workers die with their host](super#workers-die-with-their-host);
    /// [`LIFELINE_ENV`](super::LIFELINE_ENV) is set for it).
    ///
    /// Settings of `command` for stdin, stdout, stderr and the process group
    /// are replaced; its program, arguments, environment and working directory
    /// are kept. Wait for it with [`wait_until_accepting`](Self::wait_until_accepting).
    ///
    /// # Errors
    ///
    /// The operating system's, if the program cannot be started.
    pub fn spawn(mut command: Command, worker: WorkerId, endpoint: Endpoint) -> io::Result<Self> {
        command.env(super::LIFELINE_ENV, "stdin");
        worker_command(&mut command);
        match start(command, worker, endpoint)? {
            Some(started) => Ok(started.process),
            None => Err(io::Error::other(
                "the worker process vanished as it was started",
            )),
        }
    }

    /// Waits until the process's endpoint accepts a connection, trying every
    /// 10 ms; `Err` with its exit if it exits first. Only Unix and TCP
    /// endpoints can be tried; bound the wait with a timeout of your own.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only connects, closes, and watches the process.
    pub async fn wait_until_accepting(&mut self) -> Result<(), WorkerExit> {
        let endpoint = self.endpoint();
        match wait_until_ready(self, &endpoint).await {
            None => Ok(()),
            Some(exit) => Err(exit),
        }
    }
}
