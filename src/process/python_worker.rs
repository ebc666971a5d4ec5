//! The kinds of program a [`ProcessLauncher`](crate::ProcessLauncher) runs:
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
    handler: String,
    pub(super) handler_paths: Vec<PathBuf>,
}

impl PythonWorker {
    pub(super) fn new(handler: &str) -> Self {
        Self {
            handler: handler.to_owned(),
            handler_paths: Vec::new(),
        }
    }
}

impl sealed::Sealed for PythonWorker {}

impl Program for PythonWorker {
    const IS_PYTHON_WORKER: bool = true;

    /// Checks the handler and writes the embedded script into `dir`.
    fn arguments(&self, dir: &Path) -> Result<Vec<OsString>, LaunchError> {
        let (module, function) = self.handler.split_once(':').unwrap_or_default();
        if module.is_empty() || function.is_empty() {
            return Err(LaunchError::new(format!(
                "the handler {:?} must be of the form module:function",
                self.handler
            )));
        }
        let script = dir.join(PYTHON_WORKER_FILE);
        std::fs::write(&script, PYTHON_WORKER_SCRIPT).map_err(|error| {
            LaunchError::with_source(
                format!(
                    "cannot write the Python worker script to {}",
                    script.display()
                ),
                error,
            )
        })?;
        // -u: unbuffered, so its output reaches the log as it is written.
        let mut args: Vec<OsString> = vec!["-u".into(), script.into_os_string()];
        args.extend(["--handler".into(), self.handler.clone().into()]);
        for dir in &self.handler_paths {
            args.extend(["--handler-path".into(), dir.clone().into_os_string()]);
        }
        Ok(args)
    }
}
