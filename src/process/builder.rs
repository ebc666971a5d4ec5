//! [`ProcessLauncherBuilder`]: what to run, where workers listen, and the
//! checks that turn a bad setting into an error before any worker is started.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use tracing::Level;

use super::launcher::ProcessLauncher;
use super::socket_dir::SocketDir;
use crate::error::LaunchError;

/// The reference worker, embedded so that the crate works without a checkout.
const PYTHON_WORKER_SCRIPT: &str = include_str!("../../python/async_pool_worker.py");

/// Its file name in the socket directory. It must stay `async_pool_worker.py`:
/// handlers import `Response` from the module of that name.
const PYTHON_WORKER_FILE: &str = "async_pool_worker.py";

/// Where a worker process accepts connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointKind {
    /// A Unix socket `worker-N.sock` in the launcher's private directory: no port
    /// to collide with, and only the host's user can connect.
    #[default]
    Unix,
    /// A free TCP port on [`tcp_host`](ProcessLauncherBuilder::tcp_host),
    /// loopback unless told otherwise.
    Tcp,
}

/// Configures a [`ProcessLauncher`]; see [`ProcessLauncher::builder`] and
/// [`ProcessLauncher::python_worker`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct ProcessLauncherBuilder {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    current_dir: Option<PathBuf>,
    endpoint_kind: EndpointKind,
    connections: usize,
    socket_dir_parent: Option<PathBuf>,
    tcp_host: IpAddr,
    endpoint_args: bool,
    python: Option<PythonWorker>,
    raw_stderr_level: Level,
    /// A Python-only setting used on a builder for another program, reported by build().
    misused: Option<&'static str>,
}

/// The settings only the embedded Python worker has.
#[derive(Debug, Clone)]
struct PythonWorker {
    handler: String,
    handler_paths: Vec<PathBuf>,
}

impl ProcessLauncherBuilder {
    pub(super) fn new(program: OsString) -> Self {
        Self {
            program,
            args: Vec::new(),
            envs: Vec::new(),
            current_dir: None,
            endpoint_kind: EndpointKind::Unix,
            connections: 1000,
            socket_dir_parent: None,
            tcp_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            endpoint_args: true,
            python: None,
            raw_stderr_level: Level::INFO,
            misused: None,
        }
    }

    pub(super) fn python_worker(handler: &str) -> Self {
        Self {
            python: Some(PythonWorker {
                handler: handler.to_owned(),
                handler_paths: Vec::new(),
            }),
            ..Self::new("python3".into())
        }
    }

    /// Adds an argument for the program.
    ///
    /// Arguments come after those of the Python worker and before the endpoint
    /// arguments (see [`endpoint_args`](Self::endpoint_args)).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds several arguments, as [`arg`](Self::arg) does.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the program, on top of the host's own
    /// environment.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Runs the program in `dir` instead of the host's working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Unix sockets (the default) or TCP.
    pub fn endpoint_kind(mut self, kind: EndpointKind) -> Self {
        self.endpoint_kind = kind;
        self
    }

    /// How many connections the pool opens to each worker, passed to it as
    /// `--connections N` so it can size its backlog and file limit; default 1000.
    /// Set it to the pool's `max_connections`: the reference worker serves at
    /// most N + 4 connections at once (the 4 for liveness probes) and refuses
    /// the rest.
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = connections;
        self
    }

    /// Where to create the private socket directory; default
    /// [`std::env::temp_dir`]. Keep it short: a Unix socket path has at most 103
    /// bytes.
    pub fn socket_dir_parent(mut self, parent: impl Into<PathBuf>) -> Self {
        self.socket_dir_parent = Some(parent.into());
        self
    }

    /// The address TCP workers listen on; default `127.0.0.1`. Anything but a
    /// loopback address exposes the workers to the network.
    pub fn tcp_host(mut self, host: IpAddr) -> Self {
        self.tcp_host = host;
        self
    }

    /// Whether to append the endpoint arguments `--unix PATH` or
    /// `--tcp HOST:PORT`, then `--worker-id N` and `--connections N`; default
    /// true. Without them a program finds its endpoint in the environment
    /// variable [`ENDPOINT_ENV`](super::ENDPOINT_ENV) (`unix:PATH` or
    /// `tcp:HOST:PORT`), which is always set, as are
    /// [`WORKER_ID_ENV`](super::WORKER_ID_ENV) and the worker's secret,
    /// [`SECRET_ENV`](super::SECRET_ENV).
    pub fn endpoint_args(mut self, on: bool) -> Self {
        self.endpoint_args = on;
        self
    }

    /// The level at which a worker's stderr lines that carry no level of their
    /// own are logged; `INFO` by default.
    ///
    /// A line that starts with a level name in capitals followed by a space or
    /// a colon (`WARNING worker.0: ...`, as the reference worker writes every
    /// line, or uvicorn's `INFO:     ...`) is logged at that level, without the
    /// name (`WARNING` is `WARN`, `CRITICAL` is `ERROR`). Every other line, a
    /// foreign program's raw output or a traceback Python prints on its own,
    /// gets this level.
    pub fn raw_stderr_level(mut self, level: Level) -> Self {
        self.raw_stderr_level = level;
        self
    }

    /// For [`ProcessLauncher::python_worker`]: a directory to import the handler
    /// from (`--handler-path DIR`); may be given several times. A relative path is
    /// taken from the worker's working directory.
    pub fn handler_path(mut self, dir: impl Into<PathBuf>) -> Self {
        match &mut self.python {
            Some(python) => python.handler_paths.push(dir.into()),
            None => self.misused = Some("handler_path"),
        }
        self
    }

    /// For [`ProcessLauncher::python_worker`]: the Python interpreter to run,
    /// instead of `python3` from `PATH`.
    pub fn python(mut self, program: impl Into<OsString>) -> Self {
        if self.python.is_some() {
            self.program = program.into();
        } else {
            self.misused = Some("python");
        }
        self
    }

    /// Checks the settings, creates the private socket directory (mode 0700) and,
    /// for the Python worker, writes the embedded script into it.
    ///
    /// # Errors
    ///
    /// A [`LaunchError`] that names the setting or path to fix: a Python-only
    /// setting on another program, `connections` of 0, an empty program, a
    /// handler not of the form `module:function`, a working directory that does
    /// not exist, a socket directory that cannot be created or whose socket paths
    /// would be too long, or a script that cannot be written.
    pub fn build(self) -> Result<ProcessLauncher, LaunchError> {
        if let Some(setting) = self.misused {
            return Err(LaunchError::new(format!(
                "ProcessLauncherBuilder::{setting} only applies to ProcessLauncher::python_worker"
            )));
        }
        if self.connections == 0 {
            return Err(LaunchError::new(
                "ProcessLauncherBuilder::connections must be at least 1",
            ));
        }
        if self.program.is_empty() {
            return Err(LaunchError::new("the worker program is empty"));
        }
        if let Some(dir) = &self.current_dir {
            if !dir.is_dir() {
                return Err(LaunchError::new(format!(
                    "the worker's working directory {} does not exist or is not a directory",
                    dir.display()
                )));
            }
        }
        let parent = self.socket_dir_parent.unwrap_or_else(std::env::temp_dir);
        let socket_dir = SocketDir::create(&parent, self.endpoint_kind == EndpointKind::Unix)?;

        let mut args = Vec::new();
        if let Some(python) = &self.python {
            let (module, function) = python.handler.split_once(':').unwrap_or_default();
            if module.is_empty() || function.is_empty() {
                return Err(LaunchError::new(format!(
                    "the handler {:?} must be of the form module:function",
                    python.handler
                )));
            }
            let script = socket_dir.path().join(PYTHON_WORKER_FILE);
            std::fs::write(&script, PYTHON_WORKER_SCRIPT).map_err(|error| {
                LaunchError::with_source(
                    format!(
                        "cannot write the Python worker script to {}: {error}",
                        script.display()
                    ),
                    error,
                )
            })?;
            // -u: unbuffered, so its output reaches the log as it is written.
            args.extend(["-u".into(), script.into_os_string()]);
            args.extend(["--handler".into(), python.handler.clone().into()]);
            for dir in &python.handler_paths {
                args.extend(["--handler-path".into(), dir.clone().into_os_string()]);
            }
        }
        args.extend(self.args);

        Ok(ProcessLauncher {
            program: self.program,
            args,
            envs: self.envs,
            current_dir: self.current_dir,
            endpoint_kind: self.endpoint_kind,
            connections: self.connections,
            tcp_host: self.tcp_host,
            endpoint_args: self.endpoint_args,
            is_python_worker: self.python.is_some(),
            raw_stderr_level: self.raw_stderr_level,
            socket_dir,
        })
    }
}
