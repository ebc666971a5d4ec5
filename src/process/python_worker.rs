//! The kinds of program a [`ProcessLauncher`](crate::ProcessLauncher) runs:
//! any program, or the reference Python worker, which the crate embeds and
//! which alone has a handler and handler paths.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::launcher::LaunchError;

/// The reference worker's package name: the directory it is written to in the
/// launcher's directory, and the module `python -m` runs. It must stay
/// `async_pool_worker`: handlers import `Response` from the package of that name.
const PACKAGE: &str = "async_pool_worker";

/// The reference worker, the `python/async_pool_worker/` package, embedded so
/// that the crate works without a checkout: each module's path in the package
/// and its text. A test checks that no module of the package is missing.
const PACKAGE_FILES: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../python/async_pool_worker/__init__.py"),
    ),
    (
        "__main__.py",
        include_str!("../../python/async_pool_worker/__main__.py"),
    ),
    (
        "asgi.py",
        include_str!("../../python/async_pool_worker/asgi.py"),
    ),
    (
        "config.py",
        include_str!("../../python/async_pool_worker/config.py"),
    ),
    (
        "handler.py",
        include_str!("../../python/async_pool_worker/handler.py"),
    ),
    (
        "hello.py",
        include_str!("../../python/async_pool_worker/hello.py"),
    ),
    (
        "importer.py",
        include_str!("../../python/async_pool_worker/importer.py"),
    ),
    (
        "lifespan.py",
        include_str!("../../python/async_pool_worker/lifespan.py"),
    ),
    (
        "logs.py",
        include_str!("../../python/async_pool_worker/logs.py"),
    ),
    (
        "loops.py",
        include_str!("../../python/async_pool_worker/loops.py"),
    ),
    (
        "protocol.py",
        include_str!("../../python/async_pool_worker/protocol.py"),
    ),
    (
        "server.py",
        include_str!("../../python/async_pool_worker/server.py"),
    ),
    (
        "websocket.py",
        include_str!("../../python/async_pool_worker/websocket.py"),
    ),
    (
        "wsgi.py",
        include_str!("../../python/async_pool_worker/wsgi.py"),
    ),
];

/// The environment variable of Python's module search path.
pub(super) const PYTHONPATH: &str = "PYTHONPATH";

/// Whether an ASGI app's lifespan protocol is run (`--lifespan` of the
/// reference worker, as uvicorn's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Lifespan {
    /// Run it if the app speaks it: an app that raises before completing the
    /// startup is taken not to, and is served without it.
    #[default]
    Auto,
    /// Run it, and fail the launch if the app does not complete the startup.
    On,
    /// Do not run it.
    Off,
}

impl Lifespan {
    fn as_arg(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        }
    }
}

impl std::str::FromStr for Lifespan {
    type Err = LaunchError;

    /// `auto`, `on` or `off`.
    fn from_str(text: &str) -> Result<Self, LaunchError> {
        match text {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(LaunchError::new(format!(
                "the lifespan setting {other:?} must be auto, on or off"
            ))),
        }
    }
}

/// What the reference worker runs: a handler, an ASGI app, or a WSGI app
/// and its threads.
#[derive(Debug, Clone)]
enum Target {
    Handler(String),
    Asgi(String),
    Wsgi(String),
}

/// The threads each worker runs a WSGI app in unless
/// [`ProcessLauncherBuilder::wsgi_threads`](crate::ProcessLauncherBuilder::wsgi_threads)
/// says otherwise. Each request crosses a socket to the worker and back, and
/// the worker's GIL stays busy only with enough requests in flight to cover
/// that trip: a Flask hello route on one worker served 26 % more requests a
/// second with 8 threads than with 4, at 22 % less CPU per request, and 16
/// added only 7 % more (BENCHMARKS.md, "WSGI apps"). More threads beyond that
/// help only views that wait (a database, an HTTP call), and each thread is
/// a slot the pool fills (and, in Django, a database connection of its own):
/// raise it for such views, add workers for views that compute.
pub const DEFAULT_WSGI_THREADS: usize = 8;

mod sealed {
    pub trait Sealed {}
}

/// The kind of program a [`ProcessLauncherBuilder`](crate::ProcessLauncherBuilder)
/// configures: [`AnyProgram`] or [`PythonWorker`]. Sealed: the crate's two are
/// all there is.
pub trait Program: sealed::Sealed + Clone + std::fmt::Debug {
    /// Whether this is the embedded Python worker, for errors that say what to fix.
    #[doc(hidden)]
    const IS_PYTHON_WORKER: bool;

    /// The arguments that come before the builder's own, once the launcher's
    /// directory `dir` exists.
    #[doc(hidden)]
    fn arguments(&self, dir: &Path) -> Result<Vec<OsString>, LaunchError>;

    /// The connections per worker the program itself fixes, if it does: a
    /// WSGI app's threads, one slot each.
    #[doc(hidden)]
    fn fixed_connections(&self) -> Option<usize> {
        None
    }
}

/// Any program, run with the builder's arguments.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyProgram;

impl sealed::Sealed for AnyProgram {}

impl Program for AnyProgram {
    const IS_PYTHON_WORKER: bool = false;

    fn arguments(&self, _dir: &Path) -> Result<Vec<OsString>, LaunchError> {
        Ok(Vec::new())
    }
}

/// The reference Python worker (the `python/async_pool_worker/` package,
/// embedded) and its handler.
#[derive(Debug, Clone)]
pub struct PythonWorker {
    target: Target,
    /// Set only by `ProcessLauncherBuilder::lifespan`: an error for a handler.
    lifespan: Option<Lifespan>,
    /// Set only by `ProcessLauncherBuilder::wsgi_threads`: an error unless
    /// the target is a WSGI app.
    wsgi_threads: Option<usize>,
    pub(super) handler_paths: Vec<PathBuf>,
}

impl PythonWorker {
    pub(super) fn new(handler: &str) -> Self {
        Self {
            target: Target::Handler(handler.to_owned()),
            lifespan: None,
            wsgi_threads: None,
            handler_paths: Vec::new(),
        }
    }

    /// Runs the ASGI app `app` (`module:attribute`) instead of a handler.
    pub(super) fn set_asgi(&mut self, app: &str) {
        self.target = Target::Asgi(app.to_owned());
    }

    /// Sets the ASGI app's lifespan mode.
    pub(super) fn set_lifespan(&mut self, mode: Lifespan) {
        self.lifespan = Some(mode);
    }

    /// Runs the WSGI app `app` (`module:attribute`) instead of a handler.
    pub(super) fn set_wsgi(&mut self, app: &str) {
        self.target = Target::Wsgi(app.to_owned());
    }

    /// Sets a WSGI app's threads per worker.
    pub(super) fn set_wsgi_threads(&mut self, threads: usize) {
        self.wsgi_threads = Some(threads);
    }

    /// A WSGI app's threads per worker; `None` for a handler or an ASGI app.
    pub(super) fn wsgi_threads(&self) -> Option<usize> {
        match self.target {
            Target::Wsgi(_) => Some(self.wsgi_threads.unwrap_or(DEFAULT_WSGI_THREADS)),
            _ => None,
        }
    }
}

impl sealed::Sealed for PythonWorker {}

impl Program for PythonWorker {
    const IS_PYTHON_WORKER: bool = true;

    fn fixed_connections(&self) -> Option<usize> {
        self.wsgi_threads()
    }

    /// Checks the handler (or app) and writes the embedded package into `dir`.
    fn arguments(&self, dir: &Path) -> Result<Vec<OsString>, LaunchError> {
        let (what, spec) = match &self.target {
            Target::Handler(handler) => ("handler", handler),
            Target::Asgi(app) => ("ASGI app", app),
            Target::Wsgi(app) => ("WSGI app", app),
        };
        let (module, attribute) = spec.split_once(':').unwrap_or_default();
        if module.is_empty() || attribute.is_empty() {
            let form = if matches!(self.target, Target::Handler(_)) {
                "module:function"
            } else {
                "module:attribute"
            };
            return Err(LaunchError::new(format!(
                "the {what} {spec:?} must be of the form {form}"
            )));
        }
        write_package(dir)?;
        // -u: unbuffered, so its output reaches the log as it is written. The
        // package is found through PYTHONPATH (see module_search_path).
        let mut args: Vec<OsString> = vec!["-u".into(), "-m".into(), PACKAGE.into()];
        match &self.target {
            Target::Handler(_) | Target::Wsgi(_) if self.lifespan.is_some() => {
                return Err(LaunchError::new(
                    "a lifespan setting is for an ASGI app (ProcessLauncherBuilder::asgi), \
                     not for a handler or a WSGI app",
                ));
            }
            Target::Handler(_) | Target::Asgi(_) if self.wsgi_threads.is_some() => {
                return Err(LaunchError::new(
                    "wsgi_threads is for a WSGI app (ProcessLauncherBuilder::wsgi), \
                     not for a handler or an ASGI app",
                ));
            }
            Target::Handler(handler) => args.extend(["--handler".into(), handler.into()]),
            Target::Asgi(app) => {
                let lifespan = self.lifespan.unwrap_or_default();
                args.extend([
                    "--asgi".into(),
                    app.into(),
                    "--lifespan".into(),
                    lifespan.as_arg().into(),
                ]);
            }
            Target::Wsgi(app) => args.extend([
                "--wsgi".into(),
                app.into(),
                "--wsgi-threads".into(),
                self.wsgi_threads().unwrap_or_default().to_string().into(),
            ]),
        }
        for dir in &self.handler_paths {
            args.extend(["--handler-path".into(), dir.clone().into_os_string()]);
        }
        Ok(args)
    }
}

/// Writes the embedded package into `dir`, as `dir/async_pool_worker/`.
fn write_package(dir: &Path) -> Result<(), LaunchError> {
    if dir.as_os_str().as_bytes().contains(&b':') {
        // PYTHONPATH separates its entries with ':' and has no way to escape one.
        return Err(LaunchError::new(format!(
            "the launcher's directory {} has a ':' in its path, so the Python worker \
             cannot be put on PYTHONPATH; set ProcessLauncherBuilder::socket_dir_parent \
             to a directory without one",
            dir.display()
        )));
    }
    let package = dir.join(PACKAGE);
    let cannot = |what: &Path, error: std::io::Error| {
        LaunchError::with_source(
            format!("cannot write the Python worker to {}", what.display()),
            error,
        )
    };
    std::fs::create_dir(&package).map_err(|error| cannot(&package, error))?;
    for (name, text) in PACKAGE_FILES {
        let file = package.join(name);
        std::fs::write(&file, text).map_err(|error| cannot(&file, error))?;
    }
    Ok(())
}

/// The PYTHONPATH of a worker run from the launcher's directory `dir`: `dir`
/// first, so that `python -m` finds the embedded package, then `inherited`
/// (the worker's PYTHONPATH otherwise), kept for the handler's own imports.
pub(super) fn module_search_path(dir: &Path, inherited: Option<&OsStr>) -> OsString {
    let mut path = dir.as_os_str().to_owned();
    if let Some(inherited) = inherited.filter(|inherited| !inherited.is_empty()) {
        path.push(":");
        path.push(inherited);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_of_the_package_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("python")
            .join(PACKAGE);
        let mut modules: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".py"))
            .collect();
        modules.sort();
        let embedded: Vec<&str> = PACKAGE_FILES.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            modules,
            embedded,
            "add each module of {} to PACKAGE_FILES",
            dir.display()
        );
    }

    #[test]
    fn the_launchers_directory_comes_first_on_the_module_search_path() {
        let dir = Path::new("/tmp/async-worker-pool-x");
        assert_eq!(module_search_path(dir, None), "/tmp/async-worker-pool-x");
        assert_eq!(
            module_search_path(dir, Some(OsStr::new(""))),
            "/tmp/async-worker-pool-x"
        );
        assert_eq!(
            module_search_path(dir, Some(OsStr::new("/srv/lib:/opt/lib"))),
            "/tmp/async-worker-pool-x:/srv/lib:/opt/lib"
        );
    }

    #[test]
    fn a_directory_that_pythonpath_cannot_hold_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("a:b");
        std::fs::create_dir(&dir).unwrap();
        let error = write_package(&dir).unwrap_err();
        assert!(error.to_string().contains("socket_dir_parent"), "{error}");
        assert!(!dir.join(PACKAGE).exists());
    }
}
