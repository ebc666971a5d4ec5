//! The launcher's private directory: the workers' Unix sockets live here, and so
//! does the embedded Python worker package. Only its owner may enter it, so no
//! other user of the machine can connect to a worker.

use std::fs::{self, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::launcher::LaunchError;
use crate::worker::WorkerId;

/// The longest socket path every Unix accepts (`sun_path` is 104 bytes on the
/// BSDs and macOS, 108 on Linux, both counting the terminating NUL).
const MAX_SOCKET_PATH: usize = 103;

/// The longest file name [`SocketDir::socket_path`] produces.
const LONGEST_SOCKET_NAME: &str = "worker-4294967295.sock";

/// A directory with mode 0700, removed with everything in it on drop.
#[derive(Debug)]
pub(crate) struct SocketDir {
    dir: tempfile::TempDir,
}

impl SocketDir {
    /// Creates a fresh directory under `parent`. With `for_sockets`, also checks
    /// that a socket path inside it fits in `sun_path`, because a worker that
    /// cannot bind would only say so after it was started.
    pub(crate) fn create(parent: &Path, for_sockets: bool) -> Result<Self, LaunchError> {
        let dir = tempfile::Builder::new()
            .prefix("async-worker-pool-")
            .tempdir_in(parent)
            .map_err(|error| {
                LaunchError::with_source(
                    format!(
                        "cannot create the socket directory in {} (set \
                         ProcessLauncherBuilder::socket_dir_parent to a writable directory)",
                        parent.display()
                    ),
                    error,
                )
            })?;
        // mkdtemp already creates it 0700, but the guarantee matters enough (anyone
        // who can reach a socket can send events) to be set and checked here.
        let path = dir.path();
        let restrict = || -> std::io::Result<u32> {
            fs::set_permissions(path, Permissions::from_mode(0o700))?;
            Ok(fs::metadata(path)?.permissions().mode() & 0o7777)
        };
        match restrict() {
            Ok(0o700) => {}
            Ok(mode) => {
                return Err(LaunchError::new(format!(
                    "the socket directory {} has mode {mode:o} instead of 700 after chmod; \
                     choose a socket_dir_parent on a file system with Unix permissions",
                    path.display()
                )));
            }
            Err(error) => {
                return Err(LaunchError::with_source(
                    format!(
                        "cannot restrict the socket directory {} to mode 700",
                        path.display()
                    ),
                    error,
                ));
            }
        }
        let longest = path.join(LONGEST_SOCKET_NAME);
        if for_sockets && longest.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(LaunchError::new(format!(
                "socket paths under {} would be longer than the {MAX_SOCKET_PATH} bytes a Unix \
                 socket address allows; set ProcessLauncherBuilder::socket_dir_parent to a \
                 shorter directory",
                path.display()
            )));
        }
        Ok(Self { dir })
    }

    /// The directory itself.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where worker `worker` connects to the host's control socket. The name is
    /// shorter than [`LONGEST_SOCKET_NAME`], so the length check covers it.
    #[cfg(feature = "nuclio")]
    pub(crate) fn control_socket_path(&self, worker: WorkerId) -> PathBuf {
        self.dir.path().join(format!("ctl-{worker}.sock"))
    }

    /// Where worker `worker` listens.
    pub(crate) fn socket_path(&self, worker: WorkerId) -> PathBuf {
        self.dir.path().join(format!("worker-{worker}.sock"))
    }
}
