//! The socket side of the end-to-end benches (`socket_dispatch`,
//! `socket_dispatch_cpu`, `python_worker`): a Rust echo worker that speaks
//! `docs/protocol.md`, a launcher for a worker that is already listening, the
//! raw-socket baseline client, and one load driver for both contenders.
//!
//! The raw client is the limit of the socket path: one prebuilt event frame
//! written per exchange and one answer frame read into a reused buffer, with no
//! pool and no codec per exchange. What is done once (the event frame, the
//! check of the ready frame) uses the crate's own envelope types; the exchange
//! itself and the echo worker stay raw bytes (see `read_frame`).

// Each bench binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_worker_pool::net::{
    Challenge, Event, HANDSHAKE_VERSION, NONCE_LEN, Ready, Reply, SocketTransport, WorkerSecret,
};
use async_worker_pool::{
    Attachments, Endpoint, LaunchError, Launcher, Pool, WorkerExit, WorkerId, WorkerProcess,
    async_trait,
};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// The 4-byte length prefix.
const PREFIX: usize = 4;
/// Kind byte and meta length, at the start of every payload.
const HEADER: usize = 5;

/// Appends one frame: length prefix, kind, meta length, meta, body.
pub fn put_frame(out: &mut Vec<u8>, kind: u8, meta: &[u8], body: &[u8]) {
    let payload = HEADER + meta.len() + body.len();
    out.reserve(PREFIX + payload);
    out.extend_from_slice(&u32::try_from(payload).expect("a bench frame").to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&u32::try_from(meta.len()).expect("short meta").to_be_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(body);
}

/// A plain event frame (meta `{}`) carrying `body`, as the pool's transport
/// would write it.
pub fn event_frame(body: &[u8]) -> Vec<u8> {
    let mut envelope = bytes::BytesMut::new();
    Event::plain(Bytes::copy_from_slice(body)).encode(&mut envelope);
    let len = u32::try_from(envelope.len()).expect("a bench frame");
    [&len.to_be_bytes()[..], &envelope].concat()
}

/// Reads exactly one frame into `buf` (prefix included), with as few reads as
/// the socket allows. `Ok(false)` when the peer closed between frames.
///
/// Both ends of this protocol have at most one frame in flight per
/// connection, so nothing past the frame can arrive and `buf` never holds more.
///
/// Raw on purpose, as is the echo worker: the crate's envelope types are the
/// host's side only (an event encodes, an answer decodes), and decoding each
/// answer with `Reply` would put the codec into the baseline it is measured
/// against.
async fn read_frame(stream: &mut UnixStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    let mut need = PREFIX;
    loop {
        if buf.len() >= PREFIX && need == PREFIX {
            let len = u32::from_be_bytes(buf[..PREFIX].try_into().expect("4 bytes"));
            need = PREFIX + len as usize;
        }
        if buf.len() >= need {
            if buf.len() > need {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a second frame before the answer",
                ));
            }
            return Ok(true);
        }
        buf.reserve((need - buf.len()).max(8 * 1024));
        if stream.read_buf(buf).await? == 0 {
            if buf.is_empty() {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// The kind byte and the body of a frame read by [`read_frame`].
fn kind_and_body(frame: &[u8]) -> io::Result<(u8, &[u8])> {
    let payload = &frame[PREFIX..];
    if payload.len() < HEADER {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "short payload"));
    }
    let meta_len = u32::from_be_bytes(payload[1..HEADER].try_into().expect("4 bytes")) as usize;
    let body = payload
        .get(HEADER + meta_len..)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "meta past the end"))?;
    Ok((payload[0], body))
}

/// The echo worker: for every connection, an `R` frame, then an `O` frame with
/// meta `{}` echoing the body of each `E` frame. Runs until the task is dropped.
pub async fn serve_echo(listener: UnixListener) {
    serve_echo_with(listener, None).await;
}

/// The echo worker, opening every connection with the handshake of
/// `docs/protocol.md` when it has a `secret`: a challenge with a fresh nonce
/// from the OS, and the answer checked before the `R` frame.
pub async fn serve_echo_with(listener: UnixListener, secret: Option<WorkerSecret>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let secret = secret.clone();
                tokio::spawn(async move {
                    // A host that goes away mid-event is no concern of the bench.
                    let _ = echo_connection(stream, secret).await;
                });
            }
            Err(err) => eprintln!("echo worker: accept failed: {err}"),
        }
    }
}

async fn echo_connection(mut stream: UnixStream, secret: Option<WorkerSecret>) -> io::Result<()> {
    if let Some(secret) = secret {
        // The crate has the host's half of the handshake only: the challenge
        // is built here, with its constants.
        const PAYLOAD: u8 = 2 + NONCE_LEN as u8;
        let mut nonce = [0; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(io::Error::other)?;
        let mut challenge = vec![0, 0, 0, PAYLOAD, b'C', HANDSHAKE_VERSION];
        challenge.extend_from_slice(&nonce);
        stream.write_all(&challenge).await?;
        let mut answer = [0; 4 + PAYLOAD as usize];
        stream.read_exact(&mut answer).await?;
        if answer[..6] != [0, 0, 0, PAYLOAD, b'A', HANDSHAKE_VERSION]
            || !secret.verify(&nonce, &answer[6..])
        {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "wrong answer",
            ));
        }
    }
    let mut out = Vec::with_capacity(8 * 1024);
    let ready = format!(r#"{{"pid":{},"worker_id":0}}"#, std::process::id());
    put_frame(&mut out, b'R', ready.as_bytes(), b"");
    stream.write_all(&out).await?;
    let mut input = Vec::with_capacity(8 * 1024);
    while read_frame(&mut stream, &mut input).await? {
        let (kind, body) = kind_and_body(&input)?;
        if kind == b'M' {
            // The host asks to multiplex (docs/protocol.md, "Multiplexing").
            out.clear();
            put_frame(&mut out, b'M', br#"{"version":1}"#, b"");
            stream.write_all(&out).await?;
            return echo_streams(stream).await;
        }
        if kind != b'E' {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not an event"));
        }
        out.clear();
        put_frame(&mut out, b'O', b"{}", body);
        stream.write_all(&out).await?;
    }
    Ok(())
}

/// The echo worker on a multiplexed connection: every read may bring many
/// frames, and the answers to all of them go out in one write.
async fn echo_streams(mut stream: UnixStream) -> io::Result<()> {
    let mut input: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(256 * 1024);
    loop {
        input.reserve(64 * 1024);
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
        let mut at = 0;
        out.clear();
        while input.len() - at >= PREFIX {
            let len = u32::from_be_bytes(input[at..at + PREFIX].try_into().expect("4 bytes"));
            let end = at + PREFIX + len as usize;
            if end > input.len() {
                break;
            }
            // Stream id, then the envelope.
            let frame = &input[at + PREFIX..end];
            let (stream_id, envelope) = frame.split_at(4);
            let meta_len =
                u32::from_be_bytes(envelope[1..HEADER].try_into().expect("4 bytes")) as usize;
            let kind = envelope[0];
            let body = &envelope[HEADER + meta_len..];
            let (kind, body) = match kind {
                b'E' => (b'O', body),
                b'K' => (b'Q', &[][..]),
                _ => return Err(io::Error::new(io::ErrorKind::InvalidData, "not an event")),
            };
            let payload = 4 + HEADER + 2 + body.len();
            out.extend_from_slice(&u32::try_from(payload).expect("a bench frame").to_be_bytes());
            out.extend_from_slice(stream_id);
            out.push(kind);
            out.extend_from_slice(&2u32.to_be_bytes());
            out.extend_from_slice(b"{}");
            out.extend_from_slice(body);
            at = end;
        }
        input.drain(..at);
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
    }
}

/// A launcher for one worker that is already listening at a fixed endpoint:
/// its "process" never exits and stopping it does nothing, so the pool and the
/// raw client can drive the very same worker. Its attachments (a secret, say)
/// go to the transport with the process.
#[derive(Debug, Clone)]
pub struct Listening(pub Endpoint, pub Attachments);

/// The never-ending process of [`Listening`].
#[derive(Debug)]
pub struct ListeningWorker(Endpoint, Attachments);

#[async_trait]
impl WorkerProcess for ListeningWorker {
    fn endpoint(&self) -> Endpoint {
        self.0.clone()
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn attachments(&self) -> Attachments {
        self.1.clone()
    }

    async fn wait(&mut self) -> WorkerExit {
        std::future::pending().await
    }

    async fn terminate(&mut self, _grace: Duration) -> WorkerExit {
        WorkerExit::unknown()
    }
}

#[async_trait]
impl Launcher for Listening {
    type Process = ListeningWorker;

    async fn launch(&self, _worker: WorkerId) -> Result<ListeningWorker, LaunchError> {
        Ok(ListeningWorker(self.0.clone(), self.1.clone()))
    }
}

pub type SocketPool = Pool<SocketTransport>;

/// A pool of one worker at `path` with `connections` connections, once every
/// connection is open and idle.
pub async fn socket_pool(path: &Path, connections: usize) -> SocketPool {
    socket_pool_multiplexed(path, connections, 0).await
}

/// As [`socket_pool`], in the multiplexed mode with `multiplex` physical
/// connections (0: one connection per slot).
pub async fn socket_pool_multiplexed(
    path: &Path,
    connections: usize,
    multiplex: usize,
) -> SocketPool {
    socket_pool_with(path, connections, multiplex, Attachments::new()).await
}

/// [`socket_pool_multiplexed`], with `attachments` on the worker's process
/// (its secret).
pub async fn socket_pool_with(
    path: &Path,
    connections: usize,
    multiplex: usize,
    attachments: Attachments,
) -> SocketPool {
    let pool = Pool::builder(
        SocketTransport::new().multiplex(multiplex),
        Listening(Endpoint::Unix(path.to_path_buf()), attachments),
    )
    .num_workers(1)
    .max_connections(connections)
    .build()
    .expect("a valid configuration inside a runtime");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = pool.stats();
        if stats.idle == stats.capacity {
            return pool;
        }
        assert!(
            Instant::now() < deadline,
            "the pool opened {} of {} connections in 60 s",
            stats.idle,
            stats.capacity
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One connection of the raw client.
#[derive(Debug)]
pub struct RawConn {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects, answers the worker's handshake challenge with `secret` if it
    /// sends one, and waits for its ready frame.
    pub async fn connect(path: &Path, secret: Option<&WorkerSecret>) -> io::Result<Self> {
        let mut conn = Self {
            stream: UnixStream::connect(path).await?,
            buf: Vec::with_capacity(8 * 1024),
        };
        if !read_frame(&mut conn.stream, &mut conn.buf).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if conn.buf.get(PREFIX) == Some(&b'C') {
            let challenge = Challenge::decode(&conn.buf[PREFIX..])
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
            let secret = secret.ok_or_else(|| {
                io::Error::new(io::ErrorKind::PermissionDenied, "a challenge and no secret")
            })?;
            let mut answer = bytes::BytesMut::new();
            challenge.encode_answer(secret, &mut answer);
            let len = u32::try_from(answer.len()).expect("a short answer");
            conn.stream
                .write_all(&[&len.to_be_bytes()[..], &answer].concat())
                .await?;
            if !read_frame(&mut conn.stream, &mut conn.buf).await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ready::decode(&conn.buf[PREFIX..])
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
        Ok(conn)
    }

    /// Writes one prebuilt event frame and reads its answer; returns the
    /// answer's body length.
    pub async fn call(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.stream.write_all(frame).await?;
        if !read_frame(&mut self.stream, &mut self.buf).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let (kind, body) = kind_and_body(&self.buf)?;
        if kind != b'O' {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not an answer"));
        }
        Ok(body.len())
    }
}

/// Opens `count` raw connections to the worker at `path`, answering its
/// handshake with `secret` if it asks.
pub async fn raw_conns(path: &Path, count: usize, secret: Option<&WorkerSecret>) -> Vec<RawConn> {
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        conns.push(
            RawConn::connect(path, secret)
                .await
                .expect("a raw connection"),
        );
    }
    conns
}

/// One of the concurrent callers a load run drives: it sends one event and
/// waits for its answer per call.
pub trait Caller: Send + 'static {
    fn call(&mut self) -> impl Future<Output = ()> + Send;
}

/// The pool as a caller: `dispatch` of a plain event with a shared body.
#[derive(Debug, Clone)]
pub struct PoolCaller {
    pub pool: SocketPool,
    pub body: Bytes,
}

impl Caller for PoolCaller {
    async fn call(&mut self) {
        let reply = self
            .pool
            .dispatch(Event::plain(self.body.clone()))
            .await
            .expect("an answer");
        assert!(
            matches!(&reply, Reply::Returned { body, .. } if body.len() == self.body.len()),
            "an echo of the event"
        );
    }
}

/// The raw client as a caller: its own connection and the prebuilt frame.
#[derive(Debug)]
pub struct RawCaller {
    pub conn: RawConn,
    pub frame: Arc<[u8]>,
    pub body_len: usize,
}

impl Caller for RawCaller {
    async fn call(&mut self) {
        let len = self.conn.call(&self.frame).await.expect("an answer");
        assert_eq!(len, self.body_len, "an echo of the event");
    }
}

/// `tasks` pool callers sharing `pool`.
pub fn pool_callers(pool: &SocketPool, tasks: usize, body: &Bytes) -> Vec<PoolCaller> {
    (0..tasks)
        .map(|_| PoolCaller {
            pool: pool.clone(),
            body: body.clone(),
        })
        .collect()
}

/// One raw caller per connection, all sending `body`.
pub fn raw_callers(conns: Vec<RawConn>, body: &[u8]) -> Vec<RawCaller> {
    let frame: Arc<[u8]> = event_frame(body).into();
    conns
        .into_iter()
        .map(|conn| RawCaller {
            conn,
            frame: frame.clone(),
            body_len: body.len(),
        })
        .collect()
}

/// When a load run ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this many events in all, spread evenly over the callers.
    After(u64),
    /// Once this much time has passed; events in flight then finish.
    Elapsed(Duration),
}

/// What one load run measured.
#[derive(Debug, Default)]
pub struct Run {
    pub events: u64,
    pub elapsed: Duration,
    /// User + system CPU time of this process (every thread) during the run.
    pub cpu: Duration,
    /// Times this process went to sleep waiting (voluntary context switches
    /// of `getrusage`) during the run: its wake-ups.
    pub wakeups: u64,
    /// One entry per event when asked for, unordered.
    pub latencies: Vec<Duration>,
}

impl Run {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    /// Events per wake-up.
    pub fn events_per_wakeup(&self) -> f64 {
        self.events as f64 / self.wakeups.max(1) as f64
    }

    pub fn cpu_per_event(&self) -> Duration {
        self.cpu
            .checked_div(self.events.try_into().unwrap_or(u32::MAX))
            .unwrap_or_default()
    }

    /// The latency below which `quantile` of the events finished; sorts them.
    pub fn latency(&mut self, quantile: f64) -> Duration {
        self.latencies.sort_unstable();
        let last = self.latencies.len().saturating_sub(1);
        self.latencies
            .get((last as f64 * quantile).round() as usize)
            .copied()
            .unwrap_or_default()
    }
}

/// Runs every caller in a task of its own, each one event at a time, until
/// `stop`; returns the callers for the next run and what was measured.
pub async fn drive<C: Caller>(callers: Vec<C>, stop: Stop, record: bool) -> (Vec<C>, Run) {
    let tasks = callers.len() as u64;
    let started = Instant::now();
    let cpu_before = cpu_time();
    let wakeups_before = wakeups();
    let handles: Vec<_> = callers
        .into_iter()
        .enumerate()
        .map(|(index, mut caller)| {
            let (quota, deadline) = match stop {
                Stop::After(total) => {
                    let extra = u64::from((index as u64) < total % tasks);
                    (total / tasks + extra, None)
                }
                Stop::Elapsed(length) => (u64::MAX, Some(started + length)),
            };
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut done = 0;
                while done < quota && deadline.is_none_or(|at| Instant::now() < at) {
                    if record {
                        let sent = Instant::now();
                        caller.call().await;
                        latencies.push(sent.elapsed());
                    } else {
                        caller.call().await;
                    }
                    done += 1;
                }
                (caller, done, latencies)
            })
        })
        .collect();
    let mut callers = Vec::with_capacity(handles.len());
    let mut run = Run::default();
    for handle in handles {
        let (caller, done, latencies) = handle.await.expect("a caller panicked");
        callers.push(caller);
        run.events += done;
        run.latencies.extend(latencies);
    }
    run.elapsed = started.elapsed();
    run.cpu = cpu_time().saturating_sub(cpu_before);
    run.wakeups = wakeups().saturating_sub(wakeups_before);
    (callers, run)
}

/// Voluntary context switches of this process so far: how often it slept
/// waiting for something.
pub fn wakeups() -> u64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage of this process");
    u64::try_from(usage.voluntary_context_switches()).unwrap_or(0)
}

/// User + system CPU time of this process so far, all threads, children not
/// included.
pub fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage of this process");
    let seconds = |time: nix::sys::time::TimeVal| {
        Duration::from_secs(time.tv_sec() as u64) + Duration::from_micros(time.tv_usec() as u64)
    };
    seconds(usage.user_time()) + seconds(usage.system_time())
}

/// A fresh path for a Unix socket in a private temporary directory (kept alive
/// by the returned guard).
pub fn socket_path(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("awp-bench")
        .tempdir()
        .expect("a temporary directory");
    let path = dir.path().join(name);
    (dir, path)
}

/// A current-thread runtime: the host side of every end-to-end bench runs on
/// one thread, leaving the other core to the worker.
pub fn host_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// What a plain-main bench does under a test runner: answers `--list` as
/// criterion does (one benchmark, no test, so cargo-nextest skips it) and
/// returns true when the process should stop there, which is also the case
/// whenever `--bench` is absent (`cargo test --benches` runs benches bare).
pub fn only_listing(name: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|arg| arg == "--list") {
        if !args.iter().any(|arg| arg == "--ignored") {
            println!("{name}: benchmark");
        }
        return true;
    }
    if !args.iter().any(|arg| arg == "--bench") {
        println!("{name}: skipped (run it with cargo bench)");
        return true;
    }
    false
}

/// Seconds from the environment variable `var`, else `default`.
pub fn seconds_from_env(var: &str, default: f64) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|value| value.parse::<f64>().ok())
        .map_or(Duration::from_secs_f64(default), Duration::from_secs_f64)
}

/// A run's figures merged into `total`.
pub fn merge(total: &mut Run, run: Run) {
    total.events += run.events;
    total.elapsed += run.elapsed;
    total.cpu += run.cpu;
    total.wakeups += run.wakeups;
    total.latencies.extend(run.latencies);
}
