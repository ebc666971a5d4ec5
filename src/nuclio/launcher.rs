//! [`NuclioLauncher`] and its builder: runs Nuclio's Python async wrapper per
//! worker and waits until it reports `wrapperInitialized`.

use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::task::AbortOnDropHandle;
use async_trait::async_trait;
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use tokio::net::UnixListener;
use tokio::process::Command;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::control;
use super::endpoint::EndpointState;
use super::logs;
use super::worker::NuclioWorker;
use crate::endpoint::Endpoint;
use crate::launcher::LaunchError;
use crate::launcher::{Launcher, WorkerExit, WorkerProcess};
use crate::process::{
    SocketDir, Started, drain_stderr, free_tcp_port, start, with_stderr_tail, worker_command,
};
use crate::worker::WorkerId;

/// A [`Launcher`] for Nuclio's own Python async wrapper
/// (`_nuclio_async_wrapper.py`), run unchanged.
///
/// For each worker it picks a free loopback TCP port for the wrapper to listen
/// on, listens on a Unix control socket in a private 0700 directory (removed
/// when the launcher is dropped), and runs
///
/// ```text
/// python3 -u WRAPPER --handler MODULE:FUNCTION --event-socket-path 127.0.0.1:PORT
///     --control-socket-path PATH --platform-kind local --namespace NS
///     --worker-id N --trigger-kind KIND --trigger-name NAME --decode-event-strings
/// ```
///
/// as Nuclio's Python runtime does. `--decode-event-strings` makes the
/// handler see the event's method, path, headers and other strings as `str`,
/// not `bytes`; it is left out when
/// [`decode_event_strings(false)`](NuclioLauncherBuilder::decode_event_strings)
/// says so or, unless that is set, when the environment variable
/// `NUCLIO_PYTHON_DECODE_EVENT_STRINGS` (the wrapper's, from
/// [`env`](NuclioLauncherBuilder::env), or else the host's) is `no`, `false`,
/// `disable` or `disabled`, as in Nuclio.
///
/// with `PYTHONPATH` holding the wrapper's directory and the handler
/// directories. The launch succeeds once the wrapper sends `wrapperInitialized`
/// on the control socket; a wrapper that exits first fails it with its exit
/// status and last stderr lines.
///
/// Each wrapper runs in a process group of its own. Its log records reach
/// `tracing` at their own level under the target
/// `async_worker_pool::nuclio::handler`, whichever way its version sends them:
/// JSON lines on stdout (the early-2025 wrapper), `log` messages on the control
/// socket (newer ones, `init_context`'s included) or `l` packets on an event
/// connection. Other output goes to target `async_worker_pool::worker`, stdout
/// at `info`, stderr at `warn`. See [`NuclioWorker`] for how it is stopped.
#[derive(Debug)]
pub struct NuclioLauncher {
    python: OsString,
    wrapper: PathBuf,
    handler: String,
    python_path: OsString,
    platform_kind: String,
    namespace: String,
    trigger_kind: String,
    trigger_name: String,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    decode_event_strings: bool,
    host: IpAddr,
    ready_timeout: Duration,
    dir: SocketDir,
}

/// Configures a [`NuclioLauncher`]; see [`NuclioLauncher::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct NuclioLauncherBuilder {
    wrapper: PathBuf,
    handler: String,
    python: OsString,
    handler_paths: Vec<PathBuf>,
    platform_kind: String,
    namespace: String,
    trigger_kind: String,
    trigger_name: String,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    decode_event_strings: Option<bool>,
    socket_dir_parent: Option<PathBuf>,
    ready_timeout: Duration,
}

impl NuclioLauncher {
    /// Starts configuring a launcher that runs the wrapper script at `wrapper`
    /// (`_nuclio_async_wrapper.py` of a Nuclio installation) serving `handler`
    /// (`module:function`).
    pub fn builder(wrapper: impl Into<PathBuf>, handler: &str) -> NuclioLauncherBuilder {
        NuclioLauncherBuilder {
            wrapper: wrapper.into(),
            handler: handler.to_owned(),
            python: "python3".into(),
            handler_paths: Vec::new(),
            platform_kind: "local".to_owned(),
            namespace: "default".to_owned(),
            trigger_kind: "http".to_owned(),
            trigger_name: "http".to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            decode_event_strings: None,
            socket_dir_parent: None,
            ready_timeout: Duration::from_secs(30),
        }
    }

    /// The private directory (mode 0700) holding the control sockets; removed
    /// when the launcher is dropped.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the wrapper is run with `--decode-event-strings`.
    pub fn decodes_event_strings(&self) -> bool {
        self.decode_event_strings
    }

    fn command(&self, worker: WorkerId, event: SocketAddr, control: &Path) -> Command {
        let mut command = Command::new(&self.python);
        command
            .arg("-u")
            .arg(&self.wrapper)
            .arg("--handler")
            .arg(&self.handler)
            .arg("--event-socket-path")
            .arg(event.to_string())
            .arg("--control-socket-path")
            .arg(control)
            .arg("--platform-kind")
            .arg(&self.platform_kind)
            .arg("--namespace")
            .arg(&self.namespace)
            .arg("--worker-id")
            .arg(worker.to_string())
            .arg("--trigger-kind")
            .arg(&self.trigger_kind)
            .arg("--trigger-name")
            .arg(&self.trigger_name);
        if self.decode_event_strings {
            command.arg("--decode-event-strings");
        }
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(key, value)| (key, value)))
            .env("PYTHONPATH", &self.python_path);
        worker_command(&mut command);
        command
    }

    fn spawn_error(&self, error: io::Error) -> LaunchError {
        let python = self.python.to_string_lossy();
        let message = match error.kind() {
            io::ErrorKind::NotFound => format!(
                "{python} not found: install Python 3, or set NuclioLauncherBuilder::python(...) \
                 to the interpreter of your Nuclio installation"
            ),
            _ => format!("cannot start {python}"),
        };
        LaunchError::with_source(message, error)
    }

    fn exited_error(&self, worker: WorkerId, exit: WorkerExit, stderr: &[String]) -> LaunchError {
        let message = format!(
            "Nuclio wrapper of worker {worker} ({}) exited during start-up with {exit}",
            self.wrapper.display()
        );
        LaunchError::new(with_stderr_tail(message, stderr))
    }
}

#[async_trait]
impl Launcher for NuclioLauncher {
    type Process = NuclioWorker;

    /// Starts the wrapper for `worker` and resolves once it has reported
    /// `wrapperInitialized` on the control socket.
    ///
    /// # Errors
    ///
    /// If the interpreter cannot be started, or the wrapper exits, closes its
    /// control connection or stays silent for the ready timeout before it
    /// reports ready.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future kills the process group it started.
    async fn launch(&self, worker: WorkerId) -> Result<NuclioWorker, LaunchError> {
        let addr = free_tcp_port(self.host)?;
        let control_path = self.dir.control_socket_path(worker);
        match std::fs::remove_file(&control_path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(LaunchError::with_source(
                    format!(
                        "cannot remove the stale control socket {}",
                        control_path.display()
                    ),
                    error,
                ));
            }
        }
        let listener = UnixListener::bind(&control_path).map_err(|error| {
            LaunchError::with_source(
                format!(
                    "cannot listen on the control socket {}",
                    control_path.display()
                ),
                error,
            )
        })?;
        let endpoint = Endpoint::Tcp(addr);
        let mut command = self.command(worker, addr, &control_path);
        // Stdout through a pipe of our own, read here: an early-2025 wrapper
        // writes its log records there as JSON.
        let (stdout_writer, stdout_reader) = tokio::net::unix::pipe::pipe().map_err(|error| {
            LaunchError::with_source("cannot make a pipe for the wrapper's stdout", error)
        })?;
        let stdout_writer = stdout_writer.into_blocking_fd().map_err(|error| {
            LaunchError::with_source("cannot make a pipe for the wrapper's stdout", error)
        })?;
        command.stdout(std::process::Stdio::from(stdout_writer));
        let Started {
            mut process,
            stderr_forwarder,
            stderr_tail,
        } = start(command, worker, endpoint.clone())
            .map_err(|error| self.spawn_error(error))?
            .ok_or_else(|| {
                LaunchError::new(format!("worker {worker} vanished as it was started"))
            })?;
        process.set_stop_signal(Signal::SIGUSR1);
        let pid = process.pid().unwrap_or_default();
        tokio::spawn(forward_stdout(stdout_reader, worker, pid));
        tracing::debug!(%worker, pid, %endpoint, "Nuclio wrapper started");

        let ready = tokio::time::timeout(self.ready_timeout, async {
            tokio::select! {
                biased;
                exit = process.wait() => Err(Some(exit)),
                initialized = control::wait_initialized(&listener, worker) => {
                    initialized.map_err(|reason| {
                        tracing::warn!(%worker, pid, reason, "Nuclio wrapper did not initialize");
                        None
                    })
                }
            }
        })
        .await;
        // The one connection expected is made (or never will be): the socket file
        // has served its purpose.
        drop(listener);
        let _ = std::fs::remove_file(&control_path);
        match ready {
            Ok(Ok(lines)) => {
                tracing::info!(%worker, pid, %endpoint, "Nuclio wrapper initialized");
                let control = AbortOnDropHandle::new(tokio::spawn(control::follow(lines, worker)));
                Ok(NuclioWorker::new(process, control, EndpointState::fresh()))
            }
            Ok(Err(exited)) => {
                let exit = match exited {
                    Some(exit) => exit,
                    // It closed its control connection: it is probably exiting.
                    None => tokio::time::timeout(Duration::from_secs(1), process.wait())
                        .await
                        .unwrap_or(WorkerExit::unknown()),
                };
                drain_stderr(stderr_forwarder).await;
                Err(self.exited_error(worker, exit, &stderr_tail.lines()))
            }
            Err(_) => Err(LaunchError::new(format!(
                "the Nuclio wrapper of worker {worker} did not report wrapperInitialized within {:?}",
                self.ready_timeout
            ))),
        }
    }
}

impl NuclioLauncherBuilder {
    /// The Python interpreter to run, instead of `python3` from `PATH`: the one
    /// that has `nuclio_sdk` and `msgpack` installed.
    pub fn python(mut self, program: impl Into<OsString>) -> Self {
        self.python = program.into();
        self
    }

    /// A directory to import the handler from, put on `PYTHONPATH` after the
    /// wrapper's own directory; may be given several times.
    pub fn handler_path(mut self, dir: impl Into<PathBuf>) -> Self {
        self.handler_paths.push(dir.into());
        self
    }

    /// `--platform-kind`; default `local`.
    pub fn platform_kind(mut self, kind: impl Into<String>) -> Self {
        self.platform_kind = kind.into();
        self
    }

    /// `--namespace`; default `default`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// `--trigger-kind` and `--trigger-name`; default `http` and `http`.
    pub fn trigger(mut self, kind: impl Into<String>, name: impl Into<String>) -> Self {
        self.trigger_kind = kind.into();
        self.trigger_name = name.into();
        self
    }

    /// Adds an argument after the standard ones, for a wrapper that takes more.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable for the wrapper, on top of the host's own.
    /// `PYTHONPATH` is set by the launcher; see
    /// [`handler_path`](Self::handler_path).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Whether to run the wrapper with `--decode-event-strings`, so that the
    /// handler sees strings as `str` rather than `bytes`. Unless this is set,
    /// it follows `NUCLIO_PYTHON_DECODE_EVENT_STRINGS` as Nuclio does (see
    /// [`NuclioLauncher`]): on unless that says `no`, `false`, `disable` or
    /// `disabled`.
    pub fn decode_event_strings(mut self, decode: bool) -> Self {
        self.decode_event_strings = Some(decode);
        self
    }

    /// Where to create the private control-socket directory; default
    /// [`std::env::temp_dir`]. Keep it short: a Unix socket path has at most 103
    /// bytes.
    pub fn socket_dir_parent(mut self, parent: impl Into<PathBuf>) -> Self {
        self.socket_dir_parent = Some(parent.into());
        self
    }

    /// How long a launch waits for `wrapperInitialized`; default 30 s. The pool
    /// also bounds every launch with its `establish_connection_timeout`, so this
    /// matters for a launcher used on its own.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Checks the settings and creates the private control-socket directory.
    ///
    /// # Errors
    ///
    /// A [`LaunchError`] that names what to fix: a wrapper script that is not a
    /// file, a handler not of the form `module:function`, an empty interpreter,
    /// or a directory that cannot be created or whose socket paths would be too
    /// long.
    pub fn build(self) -> Result<NuclioLauncher, LaunchError> {
        if !self.wrapper.is_file() {
            return Err(LaunchError::new(format!(
                "the Nuclio wrapper {} does not exist or is not a file; give the path of \
                 _nuclio_async_wrapper.py",
                self.wrapper.display()
            )));
        }
        let (module, function) = self.handler.split_once(':').unwrap_or_default();
        if module.is_empty() || function.is_empty() {
            return Err(LaunchError::new(format!(
                "the handler {:?} must be of the form module:function",
                self.handler
            )));
        }
        if self.python.is_empty() {
            return Err(LaunchError::new("the Python interpreter is empty"));
        }
        // The wrapper imports the SDK and the handler by module name: its own
        // directory first, then the handler's, then whatever the host had.
        let wrapper = std::path::absolute(&self.wrapper).unwrap_or(self.wrapper);
        let mut paths: Vec<PathBuf> = wrapper
            .parent()
            .map(Path::to_path_buf)
            .into_iter()
            .collect();
        paths.extend(self.handler_paths);
        if let Some(inherited) = std::env::var_os("PYTHONPATH") {
            paths.extend(std::env::split_paths(&inherited));
        }
        let python_path = std::env::join_paths(&paths).map_err(|error| {
            LaunchError::with_source("a handler path cannot go on PYTHONPATH", error)
        })?;
        let decode_event_strings = self.decode_event_strings.unwrap_or_else(|| {
            let setting = self
                .envs
                .iter()
                .rev()
                .find(|(key, _)| key == DECODE_EVENT_STRINGS_ENV)
                .map(|(_, value)| value.clone())
                .or_else(|| std::env::var_os(DECODE_EVENT_STRINGS_ENV));
            decode_setting(setting.as_deref())
        });
        let parent = self.socket_dir_parent.unwrap_or_else(std::env::temp_dir);
        let dir = SocketDir::create(&parent, true)?;
        Ok(NuclioLauncher {
            python: self.python,
            wrapper,
            handler: self.handler,
            python_path,
            platform_kind: self.platform_kind,
            namespace: self.namespace,
            trigger_kind: self.trigger_kind,
            trigger_name: self.trigger_name,
            args: self.args,
            envs: self.envs,
            decode_event_strings,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ready_timeout: self.ready_timeout,
            dir,
        })
    }
}

/// The environment variable with which Nuclio turns `--decode-event-strings` off.
const DECODE_EVENT_STRINGS_ENV: &str = "NUCLIO_PYTHON_DECODE_EVENT_STRINGS";

/// Whether a `NUCLIO_PYTHON_DECODE_EVENT_STRINGS` value leaves decoding on: only
/// `no`, `false`, `disable` and `disabled` (any case) turn it off, as in Nuclio.
fn decode_setting(value: Option<&std::ffi::OsStr>) -> bool {
    let value = value.map(|value| value.to_string_lossy().to_ascii_lowercase());
    !matches!(
        value.as_deref(),
        Some("no" | "false" | "disable" | "disabled")
    )
}

/// Reads the wrapper's stdout line by line until the pipe closes (the wrapper's
/// group is gone): JSON log records at their level, other lines at `info`.
async fn forward_stdout(pipe: tokio::net::unix::pipe::Receiver, worker: WorkerId, pid: u32) {
    let mut lines = FramedRead::new(pipe, LinesCodec::new_with_max_length(MAX_STDOUT_LINE));
    while let Some(line) = lines.next().await {
        match line {
            Ok(line) => logs::forward_stdout_line(worker, pid, line.trim_end_matches('\r')),
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                tracing::warn!(%worker, pid, "the wrapper wrote a line longer than {MAX_STDOUT_LINE} bytes on stdout; skipped");
            }
            Err(LinesCodecError::Io(error)) => {
                tracing::debug!(%worker, pid, %error, "reading the wrapper's stdout failed; no longer forwarding it");
                return;
            }
        }
    }
}

/// The longest stdout line forwarded; longer ones are skipped.
const MAX_STDOUT_LINE: usize = 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nuclios_off_words_turn_string_decoding_off() {
        for off in ["no", "false", "disable", "DISABLED"] {
            assert!(!decode_setting(Some(off.as_ref())), "{off}");
        }
        for on in ["", "true", "yes", "0", "enabled"] {
            assert!(decode_setting(Some(on.as_ref())), "{on}");
        }
        assert!(decode_setting(None));
    }
}
