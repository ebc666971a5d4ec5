//! What a host can rely on when a worker, or another user of the machine, is
//! not to be trusted: the Unix sockets live in a private directory that is gone
//! after shutdown, TCP workers listen on loopback only, a local client without
//! the worker's secret runs no event and learns no pid while the pool keeps
//! serving, an oversized frame is refused without being allocated, and no bytes
//! from a worker can make a call panic or hang.

#[path = "support/alloc_counter.rs"]
mod alloc_counter;
mod support;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use alloc_counter::peak_during;
use async_worker_pool::net::{Event, NetError, SocketTransport, WorkerSecret};
use async_worker_pool::{
    Endpoint, EndpointKind, Launcher, Pool, Transport, WorkerId, WorkerInfo, WorkerProcess,
};
use support::real::{is_alive, python_worker, returned_body, worker_pids};
use support::stats::until_full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::time::{Instant, timeout};

fn ready_frame() -> Vec<u8> {
    let meta = br#"{"pid":1,"worker_id":0}"#;
    let mut payload = vec![b'R'];
    payload.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    payload.extend_from_slice(meta);
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend(payload);
    out
}

/// Reads one event frame from the host.
async fn read_event(stream: &mut UnixStream) -> std::io::Result<()> {
    let mut len = [0; 4];
    stream.read_exact(&mut len).await?;
    let mut payload = vec![0; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut payload).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_directory_is_private_and_removed_after_shutdown() {
    let launcher = python_worker("echo:handler", 4).build().unwrap();
    let dir = launcher.socket_dir().to_path_buf();
    let pool = Pool::builder(support::real::transport(), launcher)
        .num_workers(2)
        .max_connections(4)
        .build()
        .unwrap();
    let pids = worker_pids(&until_full(&pool).await);
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode,
        0o700,
        "socket directory {} has mode {mode:o}",
        dir.display()
    );
    let sockets: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".sock"))
        .collect();
    assert_eq!(sockets.len(), 2, "{sockets:?}");
    let reply = pool.dispatch(Event::plain("in")).await.unwrap();
    assert_eq!(returned_body(reply), "in");

    pool.shutdown(Duration::from_secs(2)).await;
    assert!(!dir.exists(), "{} survived the shutdown", dir.display());
    for pid in pids {
        assert!(!is_alive(pid), "worker {pid} survived the shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_workers_listen_on_loopback_unless_told_otherwise() {
    let launcher = python_worker("echo:handler", 2)
        .endpoint_kind(EndpointKind::Tcp)
        .build()
        .unwrap();
    let mut worker = launcher.launch(WorkerId::new(0)).await.unwrap();
    let Endpoint::Tcp(addr) = worker.endpoint() else {
        panic!("not a TCP endpoint: {}", worker.endpoint());
    };
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    // And the process really listens there and nowhere else: its listening
    // socket in /proc/net/tcp is bound to 127.0.0.1 (0100007F, little-endian).
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = format!(":{:04X}", addr.port());
    let listening: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Field 3 is the state; 0A is LISTEN.
            (fields[1].ends_with(&port) && fields[3] == "0A").then_some(fields[1])
        })
        .collect();
    assert_eq!(listening, [format!("0100007F{port}")], "{listening:?}");
    let mut conn = SocketTransport::new()
        .connect_authenticated(&worker.endpoint(), worker.secret().unwrap())
        .await
        .unwrap();
    let reply = conn.call(&Event::plain("tcp")).await.unwrap();
    assert_eq!(returned_body(reply), "tcp");
    worker.terminate(Duration::from_secs(2)).await;
}

#[test]
fn an_oversized_frame_on_a_real_socket_is_refused_without_allocating_it() {
    const LIMIT: usize = 1024 * 1024;
    // One thread, so that the counting allocator sees every allocation the
    // host makes for the call (and the fake worker's few bytes too).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let worker = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(&ready_frame()).await.unwrap();
            read_event(&mut stream).await.unwrap();
            // 1 GiB announced, and a little of it sent.
            stream.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
            stream.write_all(&[b'O'; 4096]).await.unwrap();
            // Keep the connection open until the host closes it.
            let _ = stream.read(&mut [0; 1]).await;
        });
        let transport = SocketTransport::new().max_frame_bytes(LIMIT);
        let mut conn = transport
            .connect_endpoint(&Endpoint::Unix(path))
            .await
            .unwrap();
        let event = Event::plain("please answer");
        let mut call = Box::pin(conn.call(&event));
        // Poll the call by hand (with a waker that does nothing: the loop
        // polls on a timer) so that only the host's own work is measured.
        let mut worst = 0;
        let result = loop {
            let (poll, peak) =
                peak_during(|| call.as_mut().poll(&mut Context::from_waker(Waker::noop())));
            worst = worst.max(peak);
            match poll {
                Poll::Ready(result) => break result,
                // Let the fake worker run, then poll again.
                Poll::Pending => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        };
        println!("a 1 GiB frame was refused with at most {worst} bytes allocated by one poll");
        assert!(worst < 2 * LIMIT, "{worst} bytes allocated by one poll");
        assert!(
            matches!(result, Err(NetError::FrameTooLarge { limit: LIMIT })),
            "{result:?}"
        );
        drop(call);
        assert!(!conn.is_usable());
        drop(conn);
        worker.await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_from_a_worker_end_every_call_with_an_error_in_bounded_time() {
    const ROUNDS: u64 = 300;
    const BOUND: Duration = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // Each connection: sometimes random bytes instead of the ready frame;
    // otherwise a ready frame, then random bytes (a plausible small length
    // prefix half the time) in answer to the event, then the connection closes.
    let worker = tokio::spawn(async move {
        for round in 0..ROUNDS {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut rng = fastrand::Rng::with_seed(round);
            let mut junk: Vec<u8> = (0..rng.usize(0..512)).map(|_| rng.u8(..)).collect();
            if rng.bool() && junk.len() >= 4 {
                let len = rng.u32(..1024).to_be_bytes();
                junk[..4].copy_from_slice(&len);
            }
            if round % 4 != 0 {
                stream.write_all(&ready_frame()).await.unwrap();
                if read_event(&mut stream).await.is_err() {
                    continue;
                }
            }
            let _ = stream.write_all(&junk).await;
            let _ = stream.shutdown().await;
        }
    });
    let transport = SocketTransport::new().max_frame_bytes(64 * 1024);
    let (mut refused_at_connect, mut failed_calls) = (0, 0);
    for round in 0..ROUNDS {
        let outcome = tokio::time::timeout(BOUND, async {
            let mut conn = transport
                .connect_endpoint(&Endpoint::Unix(path.clone()))
                .await?;
            conn.call(&Event::plain("x")).await
        })
        .await
        .unwrap_or_else(|_| panic!("round {round} did not end within {BOUND:?}"));
        match outcome {
            Err(
                NetError::ClosedBeforeReady
                | NetError::NotReady(_)
                | NetError::FrameTooLarge { .. },
            ) if round % 4 == 0 => refused_at_connect += 1,
            Err(NetError::Closed | NetError::Protocol(_) | NetError::FrameTooLarge { .. }) => {
                failed_calls += 1
            }
            other => panic!("round {round}: random bytes gave {other:?}"),
        }
    }
    worker.await.unwrap();
    println!("{refused_at_connect} connects refused, {failed_calls} calls failed");
    assert_eq!(refused_at_connect + failed_calls, ROUNDS);
}

/// The loopback TCP port process `pid` listens on, from /proc: the inode of
/// each of its sockets, matched against the listening sockets of /proc/net/tcp.
fn listening_port(pid: u32) -> u16 {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let ports: Vec<u16> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Field 3 is the state (0A is LISTEN), field 9 the inode.
            (fields[3] == "0A" && inodes.iter().any(|inode| inode == fields[9]))
                .then(|| u16::from_str_radix(fields[1].rsplit(':').next().unwrap(), 16).unwrap())
        })
        .collect();
    assert_eq!(ports.len(), 1, "worker {pid} listens on {ports:?}");
    ports[0]
}

/// A frame around `payload`, as any client could write it.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// An event envelope with `body`, as a foreign client would send it.
fn foreign_event(body: &str) -> Vec<u8> {
    let mut payload = vec![b'E'];
    payload.extend_from_slice(&2u32.to_be_bytes());
    payload.extend_from_slice(b"{}");
    payload.extend_from_slice(body.as_bytes());
    frame(&payload)
}

/// What a foreign client does once connected, given the challenge it read.
#[derive(Debug, Clone, Copy)]
enum Foreign {
    /// Knows nothing of the handshake: sends an event straight away.
    NoSecret,
    /// Answers the challenge with a secret of its own, then sends an event.
    WrongSecret,
    /// Reads the challenge and says nothing.
    Silent,
}

/// Connects to `port` as `kind`; returns everything the worker sent after
/// its challenge until it closed the connection, and how long that took.
async fn foreign_client(port: u16, kind: Foreign) -> (Vec<u8>, Duration) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = Instant::now();
    let mut challenge = [0; 4 + 34];
    stream.read_exact(&mut challenge).await.unwrap();
    assert_eq!(
        challenge[..6],
        [0, 0, 0, 34, b'C', 1],
        "the worker opened with something else than its challenge"
    );
    match kind {
        Foreign::NoSecret => stream.write_all(&foreign_event("FOREIGN")).await.unwrap(),
        Foreign::WrongSecret => {
            let mut answer = vec![b'A', 1];
            answer.extend(WorkerSecret::generate().unwrap().answer(&challenge[6..]));
            let mut bytes = frame(&answer);
            bytes.extend(foreign_event("FOREIGN"));
            stream.write_all(&bytes).await.unwrap();
        }
        Foreign::Silent => {}
    }
    let mut rest = Vec::new();
    // A reset counts as closed; what matters is what arrived before it.
    let _ = timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the worker kept a foreign connection open for 10 s");
    (rest, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_client_without_the_secret_runs_no_event_and_learns_no_pid() {
    let launcher = python_worker("record:handler", 2)
        .endpoint_kind(EndpointKind::Tcp)
        .args(["--handshake-timeout", "0.5"])
        .build()
        .unwrap();
    let pool = Pool::builder(support::real::transport(), launcher)
        .num_workers(1)
        .max_connections(2)
        .build()
        .unwrap();
    let pid = worker_pids(&until_full(&pool).await)[0];
    let port = listening_port(pid);

    // The pool serves all along, on both of its connections.
    let serving = async {
        let deadline = Instant::now() + Duration::from_millis(1500);
        let mut served = 0;
        while Instant::now() < deadline {
            let (a, b) = tokio::join!(
                pool.dispatch(Event::plain("host")),
                pool.dispatch(Event::plain("host"))
            );
            a.unwrap();
            b.unwrap();
            served += 2;
        }
        served
    };
    let attacks = async {
        tokio::join!(
            foreign_client(port, Foreign::NoSecret),
            foreign_client(port, Foreign::WrongSecret),
            foreign_client(port, Foreign::Silent),
        )
    };
    let (served, (no_secret, wrong_secret, silent)) = tokio::join!(serving, attacks);

    for (kind, (rest, _)) in [
        (Foreign::NoSecret, &no_secret),
        (Foreign::WrongSecret, &wrong_secret),
        (Foreign::Silent, &silent),
    ] {
        assert!(
            rest.is_empty(),
            "{kind:?} was sent {rest:?} after the challenge"
        );
    }
    // The silent client was closed at the deadline, not left to hold a place.
    assert!(
        silent.1 >= Duration::from_millis(400) && silent.1 < Duration::from_secs(3),
        "the silent client was closed after {:?}",
        silent.1
    );
    let reply = pool.dispatch(Event::plain("last")).await.unwrap();
    let ran: Vec<String> = serde_json::from_slice(&returned_body(reply)).unwrap();
    assert_eq!(ran.len(), served + 1, "{ran:?}");
    assert!(
        ran.iter().all(|body| body == "host" || body == "last"),
        "{ran:?}"
    );
    let stats = pool.stats();
    assert_eq!(stats.events.error, 0, "{stats:#?}");
    assert_eq!(stats.worker_restarts, 0, "{stats:#?}");
    println!("the pool served {served} events while three foreign clients were turned away");
    pool.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_in_one_process_keep_their_workers_secrets_apart() {
    // Each worker's secret travels attached to its own process handle: a
    // worker of one pool does not serve the other pool's secret, though both
    // are worker 0 of a pool in the same host process.
    let (unix, tcp) = (
        python_worker("echo:handler", 2).build().unwrap(),
        python_worker("echo:handler", 2)
            .endpoint_kind(EndpointKind::Tcp)
            .build()
            .unwrap(),
    );
    let (mut first, mut second) = (
        unix.launch(WorkerId::new(0)).await.unwrap(),
        tcp.launch(WorkerId::new(0)).await.unwrap(),
    );
    assert_ne!(first.endpoint(), second.endpoint());
    assert_ne!(
        first.secret().unwrap().to_hex(),
        second.secret().unwrap().to_hex()
    );
    let info = |process: &dyn WorkerProcess, attachments| {
        WorkerInfo::new(WorkerId::new(0), 1, process.endpoint(), process.pid())
            .with_attachments(attachments)
    };
    let transport = SocketTransport::new();
    let crossed = info(&first, second.attachments());
    let err = transport.connect(&crossed).await.unwrap_err();
    assert!(matches!(err, NetError::Rejected), "{err:?}");
    for process in [&first, &second] {
        let own = info(process, process.attachments());
        let mut conn = transport.connect(&own).await.unwrap();
        let reply = transport
            .call(&mut conn, Event::plain("own"))
            .await
            .unwrap();
        assert_eq!(returned_body(reply), "own");
    }
    first.terminate(Duration::from_secs(2)).await;
    second.terminate(Duration::from_secs(2)).await;

    // And two pools of them serve side by side.
    let pools = [unix, tcp].map(|launcher| {
        Pool::builder(SocketTransport::new(), launcher)
            .num_workers(1)
            .max_connections(2)
            .build()
            .unwrap()
    });
    for pool in &pools {
        until_full(pool).await;
    }
    let (a, b) = tokio::join!(
        pools[0].dispatch(Event::plain("a")),
        pools[1].dispatch(Event::plain("b"))
    );
    assert_eq!(returned_body(a.unwrap()), "a");
    assert_eq!(returned_body(b.unwrap()), "b");
    for pool in &pools {
        pool.shutdown(Duration::from_secs(2)).await;
    }
}
