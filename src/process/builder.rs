//! [`ProcessLauncherBuilder`]: what to run, where workers listen, and the
//! checks that turn a bad setting into an error before any worker is started.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use tracing::Level;

use super::launcher::ProcessLauncher;
use super::python_worker::{AnyProgram, Lifespan, Program, PythonWorker};
use super::socket_dir::SocketDir;
use super::template;
use crate::endpoint::EndpointKind;
use crate::launcher::LaunchError;

impl ProcessLauncher {
    /// Starts configuring a launcher that runs `program` for every worker.
    ///
    /// `program` is looked up on `PATH` unless it contains a `/`.
    pub fn builder(program: impl Into<OsString>) -> ProcessLauncherBuilder {
        ProcessLauncherBuilder::new(program.into(), AnyProgram)
    }

    /// Starts configuring a launcher for the reference Python asyncio worker,
    /// serving `handler` (`module:function`).
    ///
    /// It runs `python3 -u -m async_pool_worker --handler HANDLER`, where
    /// `async_pool_worker` is the package `python/async_pool_worker/` that this
    /// crate embeds, written into the launcher's socket directory by
    /// [`build`](ProcessLauncherBuilder::build) and found there through
    /// `PYTHONPATH`, whose value from [`env`](ProcessLauncherBuilder::env) or
    /// the host's environment follows that directory; no checkout of the
    /// repository is needed. Add the handler's directory with
    /// [`handler_path`](ProcessLauncherBuilder::handler_path), and choose another
    /// interpreter with [`python`](ProcessLauncherBuilder::python); only this
    /// builder has those two.
    pub fn python_worker(handler: &str) -> ProcessLauncherBuilder<PythonWorker> {
        ProcessLauncherBuilder::new("python3".into(), PythonWorker::new(handler))
    }

    /// Starts configuring a launcher for the reference Python worker serving
    /// the ASGI 3 app `app` (`module:attribute`, e.g. `main:app` for a FastAPI
    /// or Starlette app), unchanged: `--asgi APP` instead of `--handler`. The
    /// same as [`python_worker`](Self::python_worker) followed by
    /// [`asgi`](ProcessLauncherBuilder::asgi).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use async_worker_pool::ProcessLauncher;
    /// use async_worker_pool::process::Lifespan;
    ///
    /// let launcher = ProcessLauncher::asgi_app("main:app")
    ///     .handler_path("service")
    ///     .lifespan(Lifespan::On)
    ///     .build()?;
    /// # Ok::<(), async_worker_pool::LaunchError>(())
    /// ```
    pub fn asgi_app(app: &str) -> ProcessLauncherBuilder<PythonWorker> {
        Self::python_worker(app).asgi(app)
    }

    /// Starts configuring a launcher for the reference Python worker serving
    /// the WSGI app `app` (`module:attribute`, e.g. `app:app` for a Flask app,
    /// `mysite.wsgi:application` for a Django project), unchanged, in
    /// [`wsgi_threads`](ProcessLauncherBuilder::wsgi_threads) threads per
    /// worker ([`DEFAULT_WSGI_THREADS`](super::DEFAULT_WSGI_THREADS) unless
    /// set): `--wsgi APP` instead of `--handler`. The same as
    /// [`python_worker`](Self::python_worker) followed by
    /// [`wsgi`](ProcessLauncherBuilder::wsgi).
    ///
    /// A worker's slots are its threads: the launcher's
    /// [`connections`](ProcessLauncherBuilder::connections) follow
    /// `wsgi_threads`, and a pool whose `max_connections` is larger is refused
    /// when it is built, so the pool never sends a worker more requests than it
    /// has threads for, and late binding sends each request to a worker with a
    /// free thread. Set the pool's `max_connections` to the threads.
    ///
    /// A thread cannot be stopped: a view that runs past the pool's
    /// `event_timeout` keeps its thread, and its slot, until it returns.
    /// [`PoolBuilder::recycle_after_event_timeout`](crate::PoolBuilder::recycle_after_event_timeout)
    /// replaces such a worker once its other events are done, which ends the
    /// thread with the process. Without it, on a multiplexed
    /// [`SocketTransport`](crate::net::SocketTransport) (whose reconnect of
    /// the slot waits for the worker to confirm the cancel), a view stuck
    /// longer than `reconnect_attempts × establish_connection_timeout` has the
    /// pool restart the worker, and the events still on it fail.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use async_worker_pool::net::SocketTransport;
    /// use async_worker_pool::{Pool, ProcessLauncher};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let launcher = ProcessLauncher::wsgi_app("app:app")
    ///     .handler_path("service")
    ///     .wsgi_threads(8)
    ///     .build()?;
    /// let pool = Pool::builder(SocketTransport::new(), launcher)
    ///     .num_workers(2)
    ///     .max_connections(8)
    ///     // A view stuck past the timeout cannot be cancelled: replace its worker.
    ///     .event_timeout(std::time::Duration::from_secs(30))
    ///     .recycle_after_event_timeout(true)
    ///     .build()?;
    /// # let _ = pool;
    /// # Ok(())
    /// # }
    /// ```
    pub fn wsgi_app(app: &str) -> ProcessLauncherBuilder<PythonWorker> {
        Self::python_worker(app).wsgi(app)
    }
}

/// The connections per worker unless set: the default `max_connections` of a pool.
const DEFAULT_CONNECTIONS: usize = 1000;

/// Configures a [`ProcessLauncher`]; see [`ProcessLauncher::builder`] and
/// [`ProcessLauncher::python_worker`]. `P` is the kind of program: any program
/// ([`AnyProgram`]), or the embedded Python worker ([`PythonWorker`]), whose
/// own settings only its builder has:
///
/// ```compile_fail
/// // A handler path means nothing to another program, so it does not compile.
/// async_worker_pool::ProcessLauncher::builder("sh").handler_path("handlers");
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct ProcessLauncherBuilder<P = AnyProgram> {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    current_dir: Option<PathBuf>,
    endpoint_kind: EndpointKind,
    /// `None` until set: then the program's own number (a WSGI app's
    /// threads), or [`DEFAULT_CONNECTIONS`].
    connections: Option<usize>,
    socket_dir_parent: Option<PathBuf>,
    tcp_host: IpAddr,
    endpoint_args: bool,
    raw_stderr_level: Level,
    kind: P,
}

impl<P: Program> ProcessLauncherBuilder<P> {
    fn new(program: OsString, kind: P) -> Self {
        Self {
            program,
            args: Vec::new(),
            envs: Vec::new(),
            current_dir: None,
            endpoint_kind: EndpointKind::Unix,
            connections: None,
            socket_dir_parent: None,
            tcp_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            endpoint_args: true,
            raw_stderr_level: Level::INFO,
            kind,
        }
    }

    /// Adds an argument for the program.
    ///
    /// Arguments come after those of the Python worker and before the endpoint
    /// arguments (see [`endpoint_args`](Self::endpoint_args)).
    ///
    /// # Placeholders
    ///
    /// In arguments and environment values, these are replaced for each launch,
    /// so that any server program can be told where to listen in its own words
    /// (with [`endpoint_args(false)`](Self::endpoint_args)):
    ///
    /// | placeholder | replaced with |
    /// |---|---|
    /// | `{endpoint}` | `unix:PATH` or `tcp:HOST:PORT` |
    /// | `{host}`, `{port}` | the TCP address's parts ([`EndpointKind::Tcp`] only) |
    /// | `{path}` | the Unix socket's path ([`EndpointKind::Unix`] only) |
    /// | `{worker_id}` | the worker's index |
    /// | `{connections}` | [`connections`](Self::connections) |
    ///
    /// A placeholder the endpoint kind cannot fill fails [`build`](Self::build).
    /// Such a program is ready once its endpoint accepts a connection.
    ///
    /// ```no_run
    /// # use async_worker_pool::{EndpointKind, ProcessLauncher};
    /// let uvicorn = ProcessLauncher::builder("uvicorn")
    ///     .args(["app:app", "--host", "{host}", "--port", "{port}"])
    ///     .endpoint_kind(EndpointKind::Tcp)
    ///     .endpoint_args(false)
    ///     .build();
    /// ```
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
    /// The reference worker serves at most N + 4 connections at once (the 4
    /// for liveness probes) and refuses the rest, so a pool of this launcher
    /// refuses a `max_connections` above N, at build time
    /// ([`BuildError::Config`](crate::BuildError::Config), naming both values)
    /// and in [`Pool::set_max_connections`](crate::Pool::set_max_connections)
    /// (see [`Launcher::check_pool_size`](crate::Launcher::check_pool_size)).
    /// Set it to the pool's `max_connections`, or to the most the pool grows to.
    ///
    /// For a WSGI app it is the app's threads
    /// ([`wsgi_threads`](ProcessLauncherBuilder::wsgi_threads)), one slot
    /// each: leave it unset, as another value fails [`build`](Self::build).
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = Some(connections);
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

    /// Checks the settings, creates the private socket directory (mode 0700) and,
    /// for the Python worker, writes the embedded package into it.
    ///
    /// # Errors
    ///
    /// A [`LaunchError`] that names the setting or path to fix: `connections`
    /// of 0, an empty program, a
    /// handler not of the form `module:function`, a working directory that does
    /// not exist, a socket directory that cannot be created or whose socket paths
    /// would be too long, or (for the Python worker) that has a `:` in its path,
    /// which `PYTHONPATH` cannot hold, or a package that cannot be written.
    pub fn build(self) -> Result<ProcessLauncher, LaunchError> {
        let fixed = self.kind.fixed_connections();
        let connections = match (fixed, self.connections) {
            (Some(0), _) => {
                return Err(LaunchError::new(
                    "ProcessLauncherBuilder::wsgi_threads must be at least 1",
                ));
            }
            (Some(threads), Some(set)) if set != threads => {
                return Err(LaunchError::new(format!(
                    "the WSGI app runs in {threads} threads per worker, one slot each, but \
                     ProcessLauncherBuilder::connections is {set}: leave connections unset \
                     (it follows wsgi_threads), or set wsgi_threads({set})"
                )));
            }
            (Some(threads), _) => threads,
            (None, set) => set.unwrap_or(DEFAULT_CONNECTIONS),
        };
        if connections == 0 {
            return Err(LaunchError::new(
                "ProcessLauncherBuilder::connections must be at least 1",
            ));
        }
        if self.program.is_empty() {
            return Err(LaunchError::new("the worker program is empty"));
        }
        for arg in &self.args {
            template::check(arg, self.endpoint_kind, "the argument")?;
        }
        for (_, value) in &self.envs {
            template::check(value, self.endpoint_kind, "the environment value")?;
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

        let mut args = self.kind.arguments(socket_dir.path())?;
        args.extend(self.args);

        Ok(ProcessLauncher {
            program: self.program,
            args,
            envs: self.envs,
            current_dir: self.current_dir,
            endpoint_kind: self.endpoint_kind,
            connections,
            wsgi_threads: fixed,
            tcp_host: self.tcp_host,
            endpoint_args: self.endpoint_args,
            is_python_worker: P::IS_PYTHON_WORKER,
            raw_stderr_level: self.raw_stderr_level,
            socket_dir,
        })
    }
}

impl ProcessLauncherBuilder<PythonWorker> {
    /// A directory to import the handler from (`--handler-path DIR`); may be
    /// given several times. A relative path is taken from the worker's working
    /// directory.
    pub fn handler_path(mut self, dir: impl Into<PathBuf>) -> Self {
        self.kind.handler_paths.push(dir.into());
        self
    }

    /// The Python interpreter to run, instead of `python3` from `PATH`.
    pub fn python(mut self, program: impl Into<OsString>) -> Self {
        self.program = program.into();
        self
    }

    /// Runs the ASGI 3 app `app` (`module:attribute`) instead of the handler:
    /// the worker's `--asgi`. The app's module is imported from the
    /// [`handler_path`](Self::handler_path)s as a handler's would be. See
    /// `python/async_pool_worker/asgi.py` for the scope it gets and how its response
    /// travels; WebSocket is not supported.
    pub fn asgi(mut self, app: &str) -> Self {
        self.kind.set_asgi(app);
        self
    }

    /// Runs the WSGI app `app` (`module:attribute`) instead of the handler:
    /// the worker's `--wsgi`. The app's module is imported from the
    /// [`handler_path`](Self::handler_path)s as a handler's would be, and it
    /// is called in threads of the worker's own, so that its event loop stays
    /// free for the protocol and the liveness probe. See
    /// `python/async_pool_worker/wsgi.py` for the environ it gets, how its
    /// response travels, and what happens to a view the pool gives up on.
    pub fn wsgi(mut self, app: &str) -> Self {
        self.kind.set_wsgi(app);
        self
    }

    /// The threads each worker runs the WSGI app in (`--wsgi-threads`;
    /// [`DEFAULT_WSGI_THREADS`](super::DEFAULT_WSGI_THREADS) unless set),
    /// which are also its slots: [`connections`](Self::connections) follows
    /// it. Without a WSGI app it is an error at [`build`](Self::build).
    pub fn wsgi_threads(mut self, threads: usize) -> Self {
        self.kind.set_wsgi_threads(threads);
        self
    }

    /// Whether the ASGI app's lifespan protocol runs ([`Lifespan::Auto`] by
    /// default). Startup runs once per worker process before it counts as
    /// ready; a failed startup fails the launch with the app's message.
    /// Shutdown runs when the worker drains.
    ///
    /// Without an ASGI app it is an error at [`build`](Self::build).
    pub fn lifespan(mut self, mode: Lifespan) -> Self {
        self.kind.set_lifespan(mode);
        self
    }
}
