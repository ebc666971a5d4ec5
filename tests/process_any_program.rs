//! Any server program as a worker: one that knows nothing of this crate, told
//! where to listen through placeholders in its arguments, driven by a
//! transport of the host's own; a launcher of the host's own built on
//! `ProcessWorker::spawn`; and `Pool::ready` reporting a program that does not
//! exist.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use async_worker_pool::{
    Endpoint, EndpointKind, LaunchError, Launcher, Pool, ProcessLauncher, ProcessWorker,
    ReadyError, Transport, WorkerId, WorkerInfo, async_trait,
};
use support::real::is_alive;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A line echo server on the port given as its first argument; stdlib only.
const ECHO_SERVER: &str = r#"
import asyncio, sys
async def serve(reader, writer):
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
"#;

/// One line out, one line back, over TCP: a host's own transport.
struct Lines;

#[async_trait]
impl Transport for Lines {
    type Conn = BufReader<TcpStream>;
    type Request = String;
    type Response = String;
    type Error = std::io::Error;

    async fn connect(&self, worker: &WorkerInfo) -> std::io::Result<Self::Conn> {
        let Endpoint::Tcp(addr) = &worker.endpoint else {
            return Err(std::io::Error::other("a TCP endpoint was expected"));
        };
        Ok(BufReader::new(TcpStream::connect(addr).await?))
    }

    async fn call(&self, conn: &mut Self::Conn, line: String) -> std::io::Result<String> {
        conn.get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        let mut answer = String::new();
        if conn.read_line(&mut answer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(answer.trim_end().to_owned())
    }
}

async fn echo_through(pool: &Pool<Lines>) {
    pool.ready(Duration::from_secs(20)).await.unwrap();
    for n in 0..20 {
        let line = format!("line {n}");
        assert_eq!(pool.dispatch(line.clone()).await.unwrap(), line);
    }
}

#[tokio::test]
async fn a_plain_tcp_server_told_its_port_by_placeholder_serves_through_the_pool() {
    let launcher = ProcessLauncher::builder("python3")
        .args(["-c", ECHO_SERVER, "{port}"])
        .endpoint_kind(EndpointKind::Tcp)
        .endpoint_args(false)
        .build()
        .unwrap();
    let pool = Pool::builder(Lines, launcher)
        .num_workers(2)
        .max_connections(4)
        .build()
        .unwrap();
    echo_through(&pool).await;
    let pids: Vec<u32> = pool.stats().workers.iter().filter_map(|w| w.pid).collect();
    assert_eq!(pids.len(), 2);
    pool.shutdown(Duration::from_secs(1)).await;
    assert!(pids.iter().all(|&pid| !is_alive(pid)));
}

#[test]
fn a_placeholder_the_endpoint_cannot_fill_fails_the_build() {
    let error = ProcessLauncher::builder("python3")
        .args(["-c", ECHO_SERVER, "{port}"])
        .endpoint_kind(EndpointKind::Unix)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("{port}"), "{error}");
}

/// A launcher of the host's own: picks the port itself, and leaves the
/// process handling to `ProcessWorker::spawn`.
struct OwnLauncher;

#[async_trait]
impl Launcher for OwnLauncher {
    type Process = ProcessWorker;

    async fn launch(&self, worker: WorkerId) -> Result<ProcessWorker, LaunchError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|error| LaunchError::with_source("no free port", error))?
            .port();
        let mut command = tokio::process::Command::new("python3");
        command.args(["-c", ECHO_SERVER, &port.to_string()]);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut process = ProcessWorker::spawn(command, worker, Endpoint::Tcp(addr))
            .map_err(|error| LaunchError::with_source("cannot start python3", error))?;
        process
            .wait_until_accepting()
            .await
            .map_err(|exit| LaunchError::new(format!("exited during start-up with {exit}")))?;
        Ok(process)
    }
}

#[tokio::test]
async fn a_launcher_of_ones_own_reuses_the_process_handling() {
    let pool = Pool::builder(Lines, OwnLauncher)
        .max_connections(3)
        .build()
        .unwrap();
    echo_through(&pool).await;
    let pid = pool.stats().workers[0].pid.unwrap();
    pool.shutdown(Duration::from_secs(1)).await;
    assert!(!is_alive(pid), "the process outlived the pool");
}

#[tokio::test]
async fn ready_reports_a_missing_program_within_seconds() {
    let launcher = ProcessLauncher::builder("no-such-worker-program")
        .build()
        .unwrap();
    let pool = Pool::builder(Lines, launcher).build().unwrap();
    let started = std::time::Instant::now();
    match pool.ready(Duration::from_secs(10)).await {
        Err(ReadyError::LaunchFailed { worker, reason, .. }) => {
            assert_eq!(worker.index(), 0);
            assert!(reason.contains("not found"), "{reason}");
        }
        other => panic!("expected LaunchFailed, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    pool.shutdown(Duration::ZERO).await;
}
