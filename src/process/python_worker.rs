//! The kinds of program a [`ProcessLauncher`](super::ProcessLauncher) runs:
//! any program, or the reference Python worker, which the crate embeds and
//! which alone has a handler and handler paths.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::launcher::LaunchError;

/// The reference worker, embedded so that the crate works without a checkout.
const PYTHON_WORKER_SCRIPT: &str = include_str!("../../python/async_pool_worker.py");

/// Its file name in the socket directory. It must stay `async_pool_worker.py`:
/// handlers import `Response` from the module of that name.
const PYTHON_WORKER_FILE: &str = "async_pool_worker.py";

/// The worker's ASGI adapter, embedded too, and written beside the worker
/// (which imports it by this name) when the worker runs an ASGI app.
const ASGI_ADAPTER_SCRIPT: &str = include_str!("../../python/async_pool_asgi.py");

/// Its file name, the module name the worker imports.
const ASGI_ADAPTER_FILE: &str = "async_pool_asgi.py";

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

/// What the reference worker runs: a handler or an ASGI app.
#[derive(Debug, Clone)]
enum Target {
    Handler(String),
    Asgi(String),
}

mod sealed {
    pub trait Sealed {}
}

/// The kind of program a [`ProcessLauncherBuilder`](super::ProcessLauncherBuilder)
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

/// The reference Python worker (`python/async_pool_worker.py`, embedded) and
/// its handler.
#[derive(Debug, Clone)]
pub struct PythonWorker {
    target: Target,
    /// Set only by `ProcessLauncherBuilder::lifespan`: an error for a handler.
    lifespan: Option<Lifespan>,
    pub(super) handler_paths: Vec<PathBuf>,
}

impl PythonWorker {
    pub(super) fn new(handler: &str) -> Self {
        Self {
            target: Target::Handler(handler.to_owned()),
            lifespan: None,
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
}

impl sealed::Sealed for PythonWorker {}

impl Program for PythonWorker {
    const IS_PYTHON_WORKER: bool = true;

    /// Checks the handler (or app) and writes the embedded scripts into `dir`.
    fn arguments(&self, dir: &Path) -> Result<Vec<OsString>, LaunchError> {
        let (what, spec) = match &self.target {
            Target::Handler(handler) => ("handler", handler),
            Target::Asgi(app) => ("ASGI app", app),
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
        let script = write_script(dir, PYTHON_WORKER_FILE, PYTHON_WORKER_SCRIPT)?;
        // -u: unbuffered, so its output reaches the log as it is written.
        let mut args: Vec<OsString> = vec!["-u".into(), script.into_os_string()];
        match &self.target {
            Target::Handler(_) if self.lifespan.is_some() => {
                return Err(LaunchError::new(
                    "a lifespan setting is for an ASGI app (ProcessLauncherBuilder::asgi), \
                     not for a handler",
                ));
            }
            Target::Handler(handler) => args.extend(["--handler".into(), handler.into()]),
            Target::Asgi(app) => {
                let lifespan = self.lifespan.unwrap_or_default();
                write_script(dir, ASGI_ADAPTER_FILE, ASGI_ADAPTER_SCRIPT)?;
                args.extend([
                    "--asgi".into(),
                    app.into(),
                    "--lifespan".into(),
                    lifespan.as_arg().into(),
                ]);
            }
        }
        for dir in &self.handler_paths {
            args.extend(["--handler-path".into(), dir.clone().into_os_string()]);
        }
        Ok(args)
    }
}

fn write_script(dir: &Path, name: &str, text: &str) -> Result<PathBuf, LaunchError> {
    let script = dir.join(name);
    std::fs::write(&script, text).map_err(|error| {
        LaunchError::with_source(
            format!(
                "cannot write the Python worker's {name} to {}",
                script.display()
            ),
            error,
        )
    })?;
    Ok(script)
}
