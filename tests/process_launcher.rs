//! `ProcessLauncher` and `ProcessWorker` with real processes: the reference
//! Python worker, and small Python scripts that misbehave on purpose.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod support;

use async_worker_pool::process::{ENDPOINT_ENV, PythonWorker, SECRET_ENV};
use async_worker_pool::{
    BuildError, Endpoint, EndpointKind, LaunchError, Launcher, OpsError, Pool, ProcessLauncher,
    ProcessLauncherBuilder, ProcessWorker, Transport, WorkerId, WorkerInfo, WorkerProcess,
    async_trait,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::real::is_alive;
use support::trace::Capture;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{Instant, sleep, timeout};

fn echo_worker() -> ProcessLauncherBuilder<PythonWorker> {
    ProcessLauncher::python_worker("echo:handler").handler_path(handlers_dir())
}

fn handlers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/handlers")
}

fn nix_pid(pid: u32) -> Pid {
    Pid::from_raw(pid as i32)
}

/// Waits up to two seconds for `pid` to be gone.
async fn is_gone_soon(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while is_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(10)).await;
    }
    true
}

async fn launch(launcher: &ProcessLauncher, index: u32) -> ProcessWorker {
    timeout(
        Duration::from_secs(10),
        launcher.launch(WorkerId::new(index)),
    )
    .await
    .expect("launch took too long")
    .expect("launch failed")
}

async fn launch_error(launcher: &ProcessLauncher) -> LaunchError {
    match timeout(Duration::from_secs(10), launcher.launch(WorkerId::new(0)))
        .await
        .expect("launch took too long")
    {
        Ok(process) => panic!("launch succeeded with pid {:?}", process.pid()),
        Err(error) => error,
    }
}

/// A worker that ignores SIGTERM, starts `sleep 1000` in the background (which
/// ignores it too), writes that child's pid to `$CHILD_PID_FILE`, then accepts
/// connections on the Unix socket named in `$ASYNC_WORKER_POOL_ENDPOINT`.
const STUBBORN_WORKER: &str = r#"
import os, signal, socket, subprocess
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(["sleep", "1000"])
with open(os.environ["CHILD_PID_FILE"], "w") as f:
    f.write(str(child.pid))
listener = socket.socket(socket.AF_UNIX)
listener.bind(os.environ["ASYNC_WORKER_POOL_ENDPOINT"][len("unix:"):])
listener.listen()
while True:
    listener.accept()[0].close()
"#;

/// The stubborn worker's launcher, and the file its child's pid goes to.
fn stubborn_worker() -> (ProcessLauncher, tempfile::TempDir, PathBuf) {
    let scratch = tempfile::tempdir().unwrap();
    let pid_file = scratch.path().join("child.pid");
    let launcher = ProcessLauncher::builder("python3")
        .args(["-c", STUBBORN_WORKER])
        .env("CHILD_PID_FILE", &pid_file)
        .endpoint_args(false)
        .build()
        .unwrap();
    (launcher, scratch, pid_file)
}

fn read_pid(file: &Path) -> u32 {
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn python_worker_listens_on_a_socket_in_a_private_directory() {
    let launcher = echo_worker().build().unwrap();
    let mut worker = launch(&launcher, 0).await;

    let Endpoint::Unix(socket) = worker.endpoint() else {
        panic!("not a Unix endpoint: {}", worker.endpoint());
    };
    assert_eq!(socket, launcher.socket_dir().join("worker-0.sock"));
    assert!(socket.exists());
    let mode = std::fs::metadata(socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let pid = worker.pid().expect("a process has a pid");
    assert!(is_alive(pid));
    UnixStream::connect(&socket).await.unwrap();

    worker.terminate(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn socket_directory_is_removed_when_the_launcher_is_dropped() {
    let launcher = echo_worker().build().unwrap();
    let mut worker = launch(&launcher, 3).await;
    let dir = launcher.socket_dir().to_path_buf();
    worker.terminate(Duration::from_secs(2)).await;
    assert!(dir.is_dir());

    drop(launcher);
    assert!(!dir.exists());
}

#[tokio::test]
async fn tcp_worker_listens_on_loopback() {
    let launcher = echo_worker()
        .endpoint_kind(EndpointKind::Tcp)
        .build()
        .unwrap();
    let mut worker = launch(&launcher, 1).await;

    let Endpoint::Tcp(addr) = worker.endpoint() else {
        panic!("not a TCP endpoint: {}", worker.endpoint());
    };
    assert_eq!(addr.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert_ne!(addr.port(), 0);
    TcpStream::connect(addr).await.unwrap();

    worker.terminate(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn handler_that_does_not_import_fails_launch_with_status_and_python_error() {
    let launcher = ProcessLauncher::python_worker("no_such_module_here:handler")
        .handler_path(handlers_dir())
        .build()
        .unwrap();

    let message = launch_error(&launcher).await.to_string();
    assert!(message.contains("exit status 2"), "{message}");
    assert!(message.contains("ModuleNotFoundError"), "{message}");
    assert!(message.contains("no_such_module_here"), "{message}");
}

#[tokio::test]
async fn missing_program_fails_launch_naming_it() {
    let launcher = ProcessLauncher::builder("no-such-worker-program-here")
        .build()
        .unwrap();
    let message = launch_error(&launcher).await.to_string();
    assert!(message.contains("no-such-worker-program-here"), "{message}");
    assert!(message.contains("not found"), "{message}");

    let launcher = echo_worker()
        .python("python3-that-is-not-there")
        .build()
        .unwrap();
    let message = launch_error(&launcher).await.to_string();
    assert!(
        message.contains("python3-that-is-not-there not found on PATH"),
        "{message}"
    );
    assert!(message.contains("python(...)"), "{message}");
}

#[tokio::test]
async fn socket_paths_too_long_for_a_unix_socket_fail_build() {
    let scratch = tempfile::tempdir().unwrap();
    let parent = scratch.path().join("d".repeat(100));
    std::fs::create_dir(&parent).unwrap();
    let error = echo_worker()
        .socket_dir_parent(&parent)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("socket_dir_parent"), "{error}");
    // TCP workers need no socket path.
    echo_worker()
        .socket_dir_parent(&parent)
        .endpoint_kind(EndpointKind::Tcp)
        .build()
        .unwrap();
}

#[tokio::test]
async fn wait_reports_sigkill_at_once() {
    let launcher = echo_worker().build().unwrap();
    let mut worker = launch(&launcher, 0).await;
    let pid = worker.pid().unwrap();

    kill(nix_pid(pid), Signal::SIGKILL).unwrap();
    let exit = timeout(Duration::from_secs(1), worker.wait())
        .await
        .expect("wait did not notice SIGKILL");
    assert_eq!(exit.exit_signal(), Some(9));
    assert_eq!(exit.exit_code(), None);
    // Resolved once, it keeps its answer.
    assert_eq!(worker.wait().await, exit);
}

#[tokio::test]
async fn wait_is_cancel_safe() {
    let launcher = echo_worker().build().unwrap();
    let mut worker = launch(&launcher, 0).await;
    for _ in 0..5 {
        assert!(
            timeout(Duration::from_millis(5), worker.wait())
                .await
                .is_err()
        );
    }
    kill(nix_pid(worker.pid().unwrap()), Signal::SIGKILL).unwrap();
    let exit = timeout(Duration::from_secs(1), worker.wait())
        .await
        .unwrap();
    assert_eq!(exit.exit_signal(), Some(9));
}

#[tokio::test]
async fn terminate_drains_the_python_worker_to_exit_code_0() {
    let launcher = echo_worker().build().unwrap();
    let mut worker = launch(&launcher, 0).await;
    let pid = worker.pid().unwrap();

    let exit = worker.terminate(Duration::from_secs(2)).await;
    assert_eq!(exit.exit_code(), Some(0), "{exit}");
    assert!(!is_alive(pid));
    assert_eq!(worker.wait().await, exit);
}

#[tokio::test]
async fn terminate_kills_a_worker_that_ignores_sigterm_and_its_children() {
    let (launcher, _scratch, pid_file) = stubborn_worker();
    let mut worker = launch(&launcher, 0).await;
    let (pid, child) = (worker.pid().unwrap(), read_pid(&pid_file));
    assert!(is_alive(child));

    let started = Instant::now();
    let exit = worker.terminate(Duration::from_millis(300)).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(exit.exit_signal(), Some(9), "{exit}");
    assert!(!is_alive(pid));
    assert!(
        is_gone_soon(child).await,
        "the worker's child {child} survived"
    );
}

#[tokio::test]
async fn dropping_a_worker_kills_it_and_its_process_group() {
    let (launcher, _scratch, pid_file) = stubborn_worker();
    let worker = launch(&launcher, 0).await;
    let (pid, child) = (worker.pid().unwrap(), read_pid(&pid_file));

    drop(worker);
    assert!(is_gone_soon(pid).await, "the worker {pid} survived");
    assert!(
        is_gone_soon(child).await,
        "the worker's child {child} survived"
    );
}

#[tokio::test]
async fn dropping_a_launch_in_progress_kills_the_process() {
    // Writes its pid, then never listens.
    let scratch = tempfile::tempdir().unwrap();
    let pid_file = scratch.path().join("worker.pid");
    let launcher = ProcessLauncher::builder("python3")
        .args([
            "-c",
            "import os, time\n\
             open(os.environ['PID_FILE'], 'w').write(str(os.getpid()))\n\
             time.sleep(1000)",
        ])
        .env("PID_FILE", &pid_file)
        .endpoint_args(false)
        .build()
        .unwrap();

    let launching = timeout(Duration::from_secs(1), launcher.launch(WorkerId::new(0)));
    assert!(
        launching.await.is_err(),
        "a worker that never listens launched"
    );
    let pid = read_pid(&pid_file);
    assert!(
        is_gone_soon(pid).await,
        "the abandoned worker {pid} survived"
    );
}

#[tokio::test]
async fn workers_see_their_endpoint_in_the_environment() {
    let scratch = tempfile::tempdir().unwrap();
    let seen = scratch.path().join("seen");
    let launcher = ProcessLauncher::builder("python3")
        .args([
            "-c",
            "import os, socket\n\
             open(os.environ['SEEN'], 'w').write(os.environ['ASYNC_WORKER_POOL_WORKER_ID'] + ' ' + os.environ['ASYNC_WORKER_POOL_ENDPOINT'])\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.bind(os.environ['ASYNC_WORKER_POOL_ENDPOINT'][5:])\n\
             s.listen()\n\
             while True: s.accept()[0].close()",
        ])
        .env("SEEN", &seen)
        .endpoint_args(false)
        .build()
        .unwrap();
    let mut worker = launch(&launcher, 7).await;
    let expected = format!("7 {}", worker.endpoint());
    assert!(expected.starts_with("7 unix:"));
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), expected);
    assert_eq!(ENDPOINT_ENV, "ASYNC_WORKER_POOL_ENDPOINT");
    worker.terminate(Duration::ZERO).await;
}

/// The NUL-separated strings of `/proc/PID/<file>`.
fn proc_strings(pid: u32, file: &str) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .unwrap()
        .split(|&byte| byte == 0)
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect()
}

#[tokio::test]
async fn each_launch_gets_a_fresh_secret_in_its_environment_never_in_its_arguments() {
    let launcher = echo_worker().build().unwrap();
    let mut secrets = Vec::new();
    for _ in 0..2 {
        let mut worker = launch(&launcher, 0).await;
        let pid = worker.pid().unwrap();
        let secret = worker
            .secret()
            .expect("a launched worker has a secret")
            .to_hex();
        assert_eq!(secret.len(), 64);
        // Every user can read the command line; only the host's user the
        // environment, where the worker's initial copy stays (SECURITY.md).
        let cmdline = proc_strings(pid, "cmdline").join(" ");
        assert!(
            !cmdline.contains(&secret),
            "the secret is in argv: {cmdline}"
        );
        assert!(cmdline.contains("--handler"), "{cmdline}");
        let environ = proc_strings(pid, "environ");
        assert!(
            environ.contains(&format!("{SECRET_ENV}={secret}")),
            "no {SECRET_ENV} in the worker's environment"
        );
        secrets.push(secret);
        worker.terminate(Duration::ZERO).await;
    }
    assert_ne!(secrets[0], secrets[1], "a relaunch reused the secret");
}

/// A transport that only connects: enough for the pool to fill its slots.
struct ConnectOnly;

#[async_trait]
impl Transport for ConnectOnly {
    type Conn = UnixStream;
    type Request = ();
    type Response = ();
    type Error = std::io::Error;

    async fn connect(&self, worker: &WorkerInfo) -> std::io::Result<UnixStream> {
        match &worker.endpoint {
            Endpoint::Unix(path) => UnixStream::connect(path).await,
            other => Err(std::io::Error::other(format!(
                "unexpected endpoint {other}"
            ))),
        }
    }

    async fn call(&self, _conn: &mut UnixStream, (): ()) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn pool_of_python_workers_shuts_down_leaving_nothing_behind() {
    let launcher = echo_worker().connections(2).build().unwrap();
    let dir = launcher.socket_dir().to_path_buf();
    let pool = Pool::builder(ConnectOnly, launcher)
        .num_workers(2)
        .max_connections(2)
        .build()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().idle < 4 {
        assert!(
            Instant::now() < deadline,
            "slots never filled: {:?}",
            pool.stats()
        );
        sleep(Duration::from_millis(10)).await;
    }
    let pids: Vec<u32> = pool
        .stats()
        .workers
        .iter()
        .map(|worker| worker.pid.expect("a running worker has a pid"))
        .collect();
    assert_eq!(pids.len(), 2);
    assert_ne!(pids[0], pids[1]);
    assert!(pids.iter().all(|&pid| is_alive(pid)));

    pool.shutdown(Duration::from_secs(1)).await;
    for pid in pids {
        assert!(!is_alive(pid), "worker {pid} outlived the pool");
    }
    drop(pool);
    let deadline = Instant::now() + Duration::from_secs(1);
    while dir.exists() {
        assert!(
            Instant::now() < deadline,
            "{} outlived the pool",
            dir.display()
        );
        sleep(Duration::from_millis(10)).await;
    }
}

/// The worker's stderr lines as `tracing` saw them: (level, message). The
/// test's runtime is single-threaded, so the forwarding tasks log on the
/// capture's thread.
fn worker_lines(capture: &Capture) -> Vec<(tracing::Level, String)> {
    capture
        .events()
        .into_iter()
        .filter(|event| event.target == "async_worker_pool::worker")
        .map(|event| (event.level, event.message))
        .collect()
}

#[tokio::test]
async fn reference_worker_lines_are_logged_at_their_own_level() {
    let capture = Capture::start();
    let launcher = echo_worker().build().unwrap();
    let mut worker = launch(&launcher, 0).await;
    worker.terminate(Duration::from_secs(5)).await;
    // Give the forwarder the last lines.
    sleep(Duration::from_millis(200)).await;
    let seen = worker_lines(&capture);
    let draining = seen
        .iter()
        .find(|(_, message)| message.contains("draining"))
        .unwrap_or_else(|| panic!("no draining line in {seen:?}"));
    // The worker logs it with logger.info; before, every stderr line was WARN.
    assert_eq!(draining.0, tracing::Level::INFO, "{seen:?}");
    assert!(
        draining.1.starts_with("async_pool_worker: "),
        "the level word is taken off the message: {draining:?}"
    );
}

#[tokio::test]
async fn a_foreign_programs_raw_stderr_gets_the_configured_level() {
    let capture = Capture::start();
    let launcher = ProcessLauncher::builder("sh")
        .args([
            "-c",
            "echo 'plain text' >&2; echo 'ERROR app: it broke' >&2; exit 3",
        ])
        .endpoint_args(false)
        .raw_stderr_level(tracing::Level::DEBUG)
        .build()
        .unwrap();
    launch_error(&launcher).await;
    let seen = worker_lines(&capture);
    assert!(
        seen.contains(&(tracing::Level::DEBUG, "plain text".to_string())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(tracing::Level::ERROR, "app: it broke".to_string())),
        "{seen:?}"
    );

    // INFO unless told otherwise.
    let capture = Capture::start();
    let launcher = ProcessLauncher::builder("sh")
        .args(["-c", "echo 'plain text' >&2; exit 3"])
        .endpoint_args(false)
        .build()
        .unwrap();
    launch_error(&launcher).await;
    let seen = worker_lines(&capture);
    assert!(
        seen.contains(&(tracing::Level::INFO, "plain text".to_string())),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_pool_that_would_open_more_connections_than_its_workers_serve_is_refused() {
    // The launcher tells each worker to serve 1, the pool would open 10: the
    // worker would refuse 9 of them and the pool restart it in a loop.
    let launcher = echo_worker().connections(1).build().unwrap();
    let Err(BuildError::Config(error)) = Pool::builder(ConnectOnly, launcher)
        .max_connections(10)
        .build()
    else {
        panic!("a pool of 10 connections over workers told 1 was built");
    };
    assert_eq!(error.field(), "max_connections");
    let message = error.to_string();
    assert!(
        message.contains("is 10") && message.contains("the 1 connections"),
        "{message}"
    );

    // Fewer than the workers serve is fine, and growing past them is refused.
    let launcher = echo_worker().connections(2).build().unwrap();
    let pool = Pool::builder(ConnectOnly, launcher)
        .max_connections(1)
        .build()
        .unwrap();
    let Err(OpsError::Config(error)) = pool.set_max_connections(3).await else {
        panic!("grew past the workers' connections");
    };
    assert!(error.to_string().contains("is 3"), "{error}");
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_wsgi_workers_slots_are_its_threads() {
    // A pool of more slots than threads would send a worker more requests than
    // it can run: refused, naming the threads.
    let launcher = ProcessLauncher::wsgi_app("app:app")
        .wsgi_threads(3)
        .build()
        .unwrap();
    let Err(BuildError::Config(error)) = Pool::builder(ConnectOnly, launcher).build() else {
        panic!("a pool of the default 1000 slots over 3 threads was built");
    };
    assert_eq!(error.field(), "max_connections");
    let message = error.to_string();
    assert!(
        message.contains("is 1000") && message.contains("3 threads"),
        "{message}"
    );
    let launcher = ProcessLauncher::wsgi_app("app:app")
        .wsgi_threads(3)
        .build()
        .unwrap();
    let pool = Pool::builder(ConnectOnly, launcher)
        .max_connections(3)
        .build()
        .unwrap();
    pool.shutdown(Duration::from_secs(2)).await;

    // The connections follow the threads; another number is a mistake.
    let error = ProcessLauncher::wsgi_app("app:app")
        .wsgi_threads(3)
        .connections(10)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("wsgi_threads"), "{error}");
    let error = ProcessLauncher::wsgi_app("app:app")
        .wsgi_threads(0)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("at least 1"), "{error}");
    let error = echo_worker().wsgi_threads(2).build().unwrap_err();
    assert!(error.to_string().contains("for a WSGI app"), "{error}");
}

#[tokio::test]
async fn a_pool_beyond_the_open_file_limit_is_refused_naming_the_limit() {
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("the open-file limit");
    // Two workers of `soft` connections each need twice the limit.
    let connections = usize::try_from(soft).unwrap().min(1 << 19);
    let launcher = echo_worker().connections(connections).build().unwrap();
    let result = Pool::builder(ConnectOnly, launcher)
        .num_workers(2)
        .max_connections(connections)
        .build();
    if soft > 1 << 19 {
        // No pool of at most MAX_CAPACITY slots can pass this limit.
        return;
    }
    let Err(BuildError::Config(error)) = result else {
        panic!("a pool of 2 × {connections} was built under a limit of {soft}");
    };
    let message = error.to_string();
    assert!(
        message.contains(&format!("open-file limit of {soft}"))
            && message.contains("process::raise_fd_limit"),
        "{message}"
    );
}
