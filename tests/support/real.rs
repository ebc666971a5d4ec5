//! Helpers for the tests that run real Python worker processes through a pool:
//! where the handlers live, how to build such a pool, and how to tell whether a
//! worker process is gone. Waiting for the pool is in `support::stats`.

use std::path::{Path, PathBuf};

use async_worker_pool::net::{Reply, SocketTransport};
use async_worker_pool::process::PythonWorker;
use async_worker_pool::{Pool, PoolBuilder, ProcessLauncher, ProcessLauncherBuilder, Stats};
use bytes::Bytes;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A pool of real worker processes over the built-in socket transport.
pub type RealPool = Pool<SocketTransport>;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The example handlers: echo, hello, sleepy, faulty.
pub fn example_handlers() -> PathBuf {
    manifest_dir().join("examples/handlers")
}

/// The handlers written for these tests.
pub fn test_handlers() -> PathBuf {
    manifest_dir().join("tests/handlers")
}

/// A worker script of these tests, by file name.
pub fn test_worker(name: &str) -> PathBuf {
    manifest_dir().join("tests/workers").join(name)
}

/// The reference Python worker serving `handler`, found among the example and
/// the test handlers, told to expect `connections` connections.
pub fn python_worker(handler: &str, connections: usize) -> ProcessLauncherBuilder<PythonWorker> {
    ProcessLauncher::python_worker(handler)
        .handler_path(example_handlers())
        .handler_path(test_handlers())
        .connections(connections)
}

/// The variable that runs the real-worker tests in the multiplexed mode:
/// `ASYNC_WORKER_POOL_TEST_MULTIPLEX=N` gives every worker N physical
/// connections; unset or 0, one connection per slot. `scripts/test.sh` runs
/// the fault suite both ways.
pub const MULTIPLEX_ENV: &str = "ASYNC_WORKER_POOL_TEST_MULTIPLEX";

/// The socket transport of the real-worker tests, in the mode
/// [`MULTIPLEX_ENV`] asks for.
pub fn transport() -> SocketTransport {
    let per_worker = std::env::var(MULTIPLEX_ENV)
        .ok()
        .filter(|value| !value.is_empty())
        .map_or(0, |value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{MULTIPLEX_ENV}={value:?} is not a number"))
        });
    SocketTransport::new().multiplex(per_worker)
}

/// A pool of `workers` reference workers with `connections` connections each,
/// serving `handler`; `configure` adds the test's own settings.
pub fn python_pool(
    handler: &str,
    workers: usize,
    connections: usize,
    configure: impl FnOnce(
        PoolBuilder<SocketTransport, ProcessLauncher>,
    ) -> PoolBuilder<SocketTransport, ProcessLauncher>,
) -> RealPool {
    let launcher = python_worker(handler, connections).build().unwrap();
    let builder = Pool::builder(transport(), launcher)
        .num_workers(workers)
        .max_connections(connections);
    configure(builder).build().unwrap()
}

/// The pid of every worker, in worker order; panics if one has none.
pub fn worker_pids(stats: &Stats) -> Vec<u32> {
    stats
        .workers
        .iter()
        .map(|worker| worker.pid.expect("a running worker has a pid"))
        .collect()
}

/// Sends `signal` to process `pid`.
pub fn signal(pid: u32, signal: Signal) {
    kill(Pid::from_raw(pid as i32), signal).unwrap();
}

/// Whether `pid` still names a live process. A zombie counts as gone: where
/// nothing reaps orphans (some containers) it is as dead as a process gets.
pub fn is_alive(pid: u32) -> bool {
    match kill(Pid::from_raw(pid as i32), None) {
        Err(Errno::ESRCH) => false,
        _ => !is_zombie(pid),
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// The body of a reply the handler returned; panics on any other reply.
pub fn returned_body(reply: Reply) -> Bytes {
    match reply {
        Reply::Returned { body, .. } => body,
        other => panic!("expected a returned reply, got {other:?}"),
    }
}
