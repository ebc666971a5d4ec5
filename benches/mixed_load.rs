//! An open-loop HTTP/1.1 load of two kinds of request at once, for the
//! end-to-end bench's mixed scenarios (`scripts/bench_e2e.py`, e.g.
//! `E2E_ONLY=flask-mixed,asgi-mixed`): light requests at a fixed rate over a
//! fixed set of keep-alive connections, and heavy ones (a view that burns CPU)
//! at a fixed interval on connections of their own. Prints one JSON line.
//!
//! # Open loop
//!
//! Every request has a send time fixed before the run (the i-th light request
//! at `i / rate` seconds), and its latency runs from that time to the last
//! byte of its answer. A server that stalls is charged for every request that
//! came due meanwhile; a closed-loop client such as wrk would send fewer
//! requests instead and hide the stall (coordinated omission). A clock thread
//! per kind releases the requests at their times with `std::thread::sleep`
//! (tens of µs late, where the runtime's timer rounds up to the millisecond);
//! how late it was is reported as `clock_lag`, the client's own error.
//!
//! # Connections
//!
//! The light requests share `--connections` keep-alive connections, made
//! before the run starts, as a proxy's upstream pool of that size would: a
//! request that comes due takes whichever connection is free, first come
//! first served, and waits in the client while all are busy; that wait is part
//! of its latency (and of `send_wait`). No connection is opened beyond these,
//! so the server never holds more than `--connections` light requests at once.
//! A connection that fails or times out is dropped and made again for the
//! next request; a kept-alive one that the server closed before answering is
//! retried once on a fresh connection, as a proxy would. The heavy requests
//! work the same way on `--heavy-connections` of their own.
//!
//! # Bounds
//!
//! Loopback addresses only. At most `rate × duration` light requests and
//! `duration / heavy-interval` heavy ones; a request still unsent `--timeout`
//! after the schedule ends is counted as unsent, and one sent is given up
//! after `--timeout`, so a run lasts at most `duration + 2 × timeout`.
//!
//! Run alone by `cargo bench` (no `--addr`), it does nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

/// The most requests of one kind in a run: a few tens of bytes of samples each.
const MAX_REQUESTS: f64 = 1e6;
/// The longest response head (status line and headers) or chunk-size line.
const MAX_HEAD: usize = 64 * 1024;
/// The largest response body read; the bench's answers are a few bytes.
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, Parser)]
#[command(
    about = "Open-loop mixed HTTP load: light requests at a fixed rate, heavy ones at an interval"
)]
struct Args {
    /// The server, host:port, on a loopback address.
    #[arg(long, env = "AWP_MIXED_ADDR")]
    addr: Option<SocketAddr>,
    /// The light requests' path.
    #[arg(long, env = "AWP_MIXED_LIGHT_PATH", default_value = "/bench")]
    light_path: String,
    /// The heavy requests' path.
    #[arg(long, env = "AWP_MIXED_HEAVY_PATH", default_value = "/cpu")]
    heavy_path: String,
    /// Light requests per second.
    #[arg(long, env = "AWP_MIXED_RATE", default_value_t = 1000.0)]
    rate: f64,
    /// Keep-alive connections the light requests share.
    #[arg(long, env = "AWP_MIXED_CONNECTIONS", default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    connections: u16,
    /// How long requests are scheduled for.
    #[arg(long, env = "AWP_MIXED_DURATION", default_value = "10s",
          value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time between two heavy requests; 0 sends none.
    #[arg(long, env = "AWP_MIXED_HEAVY_INTERVAL", default_value = "200ms",
          value_parser = humantime::parse_duration)]
    heavy_interval: Duration,
    /// Connections the heavy requests share.
    #[arg(long, env = "AWP_MIXED_HEAVY_CONNECTIONS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    heavy_connections: u16,
    /// How long a request may wait for its answer, and the unsent ones for a
    /// connection after the schedule ends.
    #[arg(long, env = "AWP_MIXED_TIMEOUT", default_value = "5s",
          value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// A bench name filter passed by `cargo bench`; ignored.
    #[arg(hide = true)]
    filter: Vec<String>,
}

impl Args {
    /// The reason these arguments would make an unbounded or off-machine run.
    fn check(&self, addr: SocketAddr) -> Result<(), String> {
        if !addr.ip().is_loopback() {
            return Err(format!("{addr} is not a loopback address"));
        }
        if !(self.rate > 0.0 && self.rate <= 100_000.0) {
            return Err(format!("--rate {} is outside (0, 100000]", self.rate));
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(3600) {
            return Err("--duration must be above 0 and at most an hour".into());
        }
        if self.rate * self.duration.as_secs_f64() > MAX_REQUESTS {
            return Err(format!(
                "--rate x --duration is above {MAX_REQUESTS} requests"
            ));
        }
        if !self.heavy_interval.is_zero() && self.heavy_interval < Duration::from_millis(1) {
            return Err("--heavy-interval must be 0 (none) or at least 1ms".into());
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err("--timeout must be above 0 and at most a minute".into());
        }
        for path in [&self.light_path, &self.heavy_path] {
            if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err(format!("{path:?} is not a request path"));
            }
        }
        Ok(())
    }
}

/// One kind of request: what it asks for, when, and over how many connections.
struct Kind {
    path: String,
    /// Requests, the i-th due `i × every` after the start.
    count: u64,
    every: Duration,
    connections: usize,
}

/// What one kind of request got.
#[derive(Default)]
struct Tally {
    sent: u64,
    answered: u64,
    failed: u64,
    unsent: u64,
    retried: u64,
    /// From the scheduled time to the answer's last byte, answered requests only.
    latency: Vec<Duration>,
    /// From the scheduled time to the write: the clock's lag and the wait for
    /// a free connection.
    send_wait: Vec<Duration>,
    /// How late the clock thread released each request.
    clock_lag: Vec<Duration>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.failed += other.failed;
        self.unsent += other.unsent;
        self.retried += other.retried;
        self.latency.extend(other.latency);
        self.send_wait.extend(other.send_wait);
        self.clock_lag.extend(other.clock_lag);
        for (error, count) in other.errors {
            *self.errors.entry(error).or_default() += count;
        }
    }

    fn fail(&mut self, error: String) {
        self.failed += 1;
        *self.errors.entry(error).or_default() += 1;
    }

    /// The tally as a JSON object; latencies in milliseconds, null when none.
    fn json(&mut self, scheduled: u64) -> String {
        for samples in [&mut self.latency, &mut self.send_wait, &mut self.clock_lag] {
            samples.sort_unstable();
        }
        let mut out = format!(
            "{{\"scheduled\":{scheduled},\"sent\":{},\"answered\":{},\"failed\":{},\
             \"unsent\":{},\"retried\":{}",
            self.sent, self.answered, self.failed, self.unsent, self.retried
        );
        let figures = [
            ("p50_ms", quantile(&self.latency, 0.5)),
            ("p99_ms", quantile(&self.latency, 0.99)),
            ("p999_ms", quantile(&self.latency, 0.999)),
            ("max_ms", self.latency.last().copied()),
            ("send_wait_p50_ms", quantile(&self.send_wait, 0.5)),
            ("send_wait_p99_ms", quantile(&self.send_wait, 0.99)),
            ("clock_lag_p99_ms", quantile(&self.clock_lag, 0.99)),
            ("clock_lag_max_ms", self.clock_lag.last().copied()),
        ];
        for (name, value) in figures {
            match value {
                Some(value) => write!(out, ",\"{name}\":{:.3}", value.as_secs_f64() * 1e3),
                None => write!(out, ",\"{name}\":null"),
            }
            .expect("writing to a String");
        }
        out.push('}');
        out
    }
}

/// The nearest-rank quantile `q` of sorted samples.
fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    if raw.iter().any(|arg| arg == "--list") {
        // As the other benches answer a test runner's listing.
        if !raw.iter().any(|arg| arg == "--ignored") {
            println!("mixed_load: benchmark");
        }
        return ExitCode::SUCCESS;
    }
    if raw.iter().any(|arg| arg == "--exact") {
        // A test runner running what it listed: there is no server to load.
        println!("mixed_load: skipped (scripts/bench_e2e.py runs it against each server)");
        return ExitCode::SUCCESS;
    }
    let args = Args::parse();
    let Some(addr) = args.addr else {
        println!(
            "mixed_load: skipped (give --addr; scripts/bench_e2e.py runs it against each server)"
        );
        return ExitCode::SUCCESS;
    };
    if let Err(reason) = args.check(addr) {
        eprintln!("mixed_load: {reason}");
        return ExitCode::from(2);
    }
    // One thread for the connections, so that the client takes at most one
    // core from the servers it measures (plus the clock threads' wake-ups).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    match runtime.block_on(run(addr, &args)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("mixed_load: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(addr: SocketAddr, args: &Args) -> io::Result<String> {
    let light = Kind {
        path: args.light_path.clone(),
        count: (args.rate * args.duration.as_secs_f64()).round() as u64,
        every: Duration::from_secs_f64(1.0 / args.rate),
        connections: args.connections.into(),
    };
    // At most an hour of one per millisecond: it fits.
    let heavy_count = if args.heavy_interval.is_zero() {
        0
    } else {
        (args.duration.as_nanos() / args.heavy_interval.as_nanos()) as u64
    };
    let heavy = Kind {
        path: args.heavy_path.clone(),
        count: heavy_count,
        every: args.heavy_interval,
        connections: if heavy_count == 0 {
            0
        } else {
            args.heavy_connections.into()
        },
    };
    // Every connection is up before the first request is due, as a proxy's
    // pool would be.
    let mut light_conns = Vec::with_capacity(light.connections);
    for _ in 0..light.connections {
        light_conns.push(Conn::open(addr, args.timeout).await?);
    }
    let mut heavy_conns = Vec::with_capacity(heavy.connections);
    for _ in 0..heavy.connections {
        heavy_conns.push(Conn::open(addr, args.timeout).await?);
    }
    let start = Instant::now() + Duration::from_millis(20);
    let stop = start + args.duration + args.timeout;
    let (mut light_tally, mut heavy_tally) = tokio::join!(
        drive_kind(addr, &light, light_conns, start, stop, args.timeout),
        drive_kind(addr, &heavy, heavy_conns, start, stop, args.timeout),
    );
    let elapsed = start.elapsed();
    for (name, tally) in [("light", &light_tally), ("heavy", &heavy_tally)] {
        for (error, count) in &tally.errors {
            eprintln!("mixed_load: {name}: {count} x {error}");
        }
    }
    Ok(format!(
        "{{\"addr\":\"{addr}\",\"duration_s\":{:.3},\"rate\":{},\"connections\":{},\
         \"heavy_interval_s\":{:.3},\"heavy_connections\":{},\"elapsed_s\":{:.3},\
         \"light\":{},\"heavy\":{}}}",
        args.duration.as_secs_f64(),
        args.rate,
        args.connections,
        args.heavy_interval.as_secs_f64(),
        heavy.connections,
        elapsed.as_secs_f64(),
        light_tally.json(light.count),
        heavy_tally.json(heavy.count),
    ))
}

/// Sends one kind of request on its schedule over its connections.
async fn drive_kind(
    addr: SocketAddr,
    kind: &Kind,
    conns: Vec<Conn>,
    start: Instant,
    stop: Instant,
    timeout: Duration,
) -> Tally {
    if kind.count == 0 {
        return Tally::default();
    }
    let (due_tx, due_rx) = mpsc::unbounded_channel();
    let due = Arc::new(Mutex::new(due_rx));
    let (count, every) = (kind.count, kind.every.as_secs_f64());
    let clock = std::thread::spawn(move || release(start, count, every, &due_tx));
    let request: Arc<[u8]> = format!("GET {} HTTP/1.1\r\nHost: {addr}\r\n\r\n", kind.path)
        .into_bytes()
        .into();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let (due, request) = (due.clone(), request.clone());
            tokio::spawn(send_due(addr, conn, request, due, stop, timeout))
        })
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.expect("a connection's task panicked"));
    }
    tally.clock_lag = clock.join().expect("the clock thread panicked");
    tally
}

/// The clock: hands each send time to the connections when it comes, and
/// returns how late it was for each.
fn release(
    start: Instant,
    count: u64,
    every_secs: f64,
    due: &mpsc::UnboundedSender<Instant>,
) -> Vec<Duration> {
    let mut lag = Vec::with_capacity(count as usize);
    for i in 0..count {
        // From the start each time, so that rounding never accumulates.
        let at = start + Duration::from_secs_f64(i as f64 * every_secs);
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        lag.push(Instant::now().saturating_duration_since(at));
        if due.send(at).is_err() {
            break;
        }
    }
    lag
}

/// One connection's loop: take the oldest due request, send it, read the
/// answer, until the clock has released them all.
async fn send_due(
    addr: SocketAddr,
    conn: Conn,
    request: Arc<[u8]>,
    due: Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>,
    stop: Instant,
    timeout: Duration,
) -> Tally {
    let mut tally = Tally::default();
    let mut conn = Some(conn);
    loop {
        let next = due.lock().await.recv().await;
        let Some(scheduled) = next else { break };
        let now = Instant::now();
        if now >= stop {
            tally.unsent += 1;
            continue;
        }
        tally.sent += 1;
        tally
            .send_wait
            .push(now.saturating_duration_since(scheduled));
        let answer = exchange(addr, &mut conn, &request, timeout, &mut tally);
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                tally.answered += 1;
                tally.latency.push(scheduled.elapsed());
            }
            Ok(Ok(status)) => tally.fail(format!("status {status}")),
            Ok(Err(error)) => {
                conn = None;
                tally.fail(error.to_string());
            }
            Err(_) => {
                conn = None;
                tally.fail(format!("no answer within {timeout:?}"));
            }
        }
    }
    tally
}

/// One request and its answer's status; `conn` is made again if it is gone,
/// and left `None` when the server closes it.
async fn exchange(
    addr: SocketAddr,
    conn: &mut Option<Conn>,
    request: &[u8],
    timeout: Duration,
    tally: &mut Tally,
) -> io::Result<u16> {
    let reused = conn.is_some();
    let c = match conn {
        Some(c) => c,
        None => conn.insert(Conn::open(addr, timeout).await?),
    };
    let mut answer = c.ask(request).await;
    if reused && answer.as_ref().is_err_and(closed_unanswered) {
        // The server closed a kept-alive connection before it read this
        // request: a proxy sends it again on a new one.
        tally.retried += 1;
        *conn = None;
        answer = conn
            .insert(Conn::open(addr, timeout).await?)
            .ask(request)
            .await;
    }
    let (status, keep_alive) = answer?;
    if !keep_alive {
        *conn = None;
    }
    Ok(status)
}

fn closed_unanswered(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
    )
}

/// A client connection and what it has read and not yet consumed.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect to {addr}")))??;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Writes `request` and reads its whole answer: the status, and whether
    /// the connection may be used again.
    async fn ask(&mut self, request: &[u8]) -> io::Result<(u16, bool)> {
        self.stream.write_all(request).await?;
        let head_end = match self.find(0, b"\r\n\r\n").await {
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof && self.buf.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "connection closed before the answer",
                ));
            }
            other => other?,
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| invalid("response head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let mut status_line = lines.next().unwrap_or_default().splitn(3, ' ');
        let version = status_line.next().unwrap_or_default();
        let status: u16 = status_line
            .next()
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| invalid("no status code"))?;
        let mut keep_alive = version == "HTTP/1.1";
        let (mut length, mut chunked) = (None, false);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim().to_ascii_lowercase();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| invalid("bad content-length"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                if value.contains("close") {
                    keep_alive = false;
                } else if value.contains("keep-alive") {
                    keep_alive = true;
                }
            }
        }
        let end = if status == 204 || status == 304 {
            head_end
        } else if chunked {
            self.chunks(head_end).await?
        } else if let Some(length) = length {
            if length > MAX_BODY {
                return Err(invalid("body too long"));
            }
            self.want(head_end + length).await?;
            head_end + length
        } else {
            // Delimited by the end of the connection.
            while self.buf.len() <= head_end + MAX_BODY && self.fill().await? {}
            keep_alive = false;
            self.buf.len()
        };
        self.buf.drain(..end);
        Ok((status, keep_alive))
    }

    /// The end of a chunked body that starts at `at`, trailers included.
    async fn chunks(&mut self, mut at: usize) -> io::Result<usize> {
        let body_start = at;
        loop {
            let line_end = self.find(at, b"\r\n").await?;
            let line = std::str::from_utf8(&self.buf[at..line_end - 2])
                .map_err(|_| invalid("chunk size is not UTF-8"))?;
            let size_hex = line.split(';').next().unwrap_or_default().trim();
            let size =
                usize::from_str_radix(size_hex, 16).map_err(|_| invalid("bad chunk size"))?;
            at = line_end;
            if size == 0 {
                // Trailers, up to an empty line.
                loop {
                    let end = self.find(at, b"\r\n").await?;
                    let empty = end == at + 2;
                    at = end;
                    if empty {
                        return Ok(at);
                    }
                }
            }
            if size > MAX_BODY || at + size - body_start > MAX_BODY {
                return Err(invalid("body too long"));
            }
            self.want(at + size + 2).await?;
            at += size + 2;
        }
    }

    /// The index just past the first `needle` at or after `from`, reading
    /// until it comes.
    async fn find(&mut self, from: usize, needle: &[u8]) -> io::Result<usize> {
        let mut searched = from;
        loop {
            if let Some(i) = self.buf[searched..]
                .windows(needle.len())
                .position(|window| window == needle)
            {
                return Ok(searched + i + needle.len());
            }
            if self.buf.len() - from > MAX_HEAD {
                return Err(invalid("response head or chunk line too long"));
            }
            // A needle may straddle what was read and what comes next.
            searched = self.buf.len().saturating_sub(needle.len() - 1).max(from);
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads until `len` bytes are buffered.
    async fn want(&mut self, len: usize) -> io::Result<()> {
        while self.buf.len() < len {
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    /// Reads what the socket has; false at its end.
    async fn fill(&mut self) -> io::Result<bool> {
        self.buf.reserve(4096);
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}
