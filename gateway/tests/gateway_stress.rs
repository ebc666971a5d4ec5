//! The HTTP gateway's listener under stress, end to end: a burst of
//! connections against the backlog, clients that trickle their headers, and a
//! gateway out of file descriptors. The real binary, raw TCP clients.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;

/// One test at a time in this binary, also under `cargo test`'s threads:
/// each measures latency or CPU, or opens a thousand connections.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running gateway, stopped with SIGTERM (so that it stops its workers)
/// when the test ends, killed if that takes too long.
struct Gateway {
    child: Child,
    address: String,
    output: Arc<Mutex<String>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        support::terminate(&mut self.child);
    }
}

fn gateway_binary() -> PathBuf {
    PathBuf::from(support::HTTP_GATEWAY)
}

/// Starts the gateway through `sh`, so that `ulimit` can come first. Its
/// output (the address line, then its log) is collected in `Gateway::output`.
fn start(shell_prefix: &str, args: &[&str]) -> Gateway {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("{shell_prefix} exec \"$0\" \"$@\""))
        .arg(gateway_binary())
        .args(["--listen", "127.0.0.1:0", "--shutdown-grace", "2s"])
        .args(["--workers", "1", "--max-connections", "8"])
        .args(args)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = command.spawn().expect("the gateway starts");
    let output = Arc::new(Mutex::new(String::new()));
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("the gateway prints its address")
            .expect("a line of text");
        if let Some(address) = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("http://"))
        {
            break address.to_string();
        }
        output.lock().unwrap().push_str(&line);
    };
    std::thread::spawn({
        let output = output.clone();
        move || {
            for line in lines.map_while(Result::ok) {
                let mut output = output.lock().unwrap();
                output.push_str(&line);
                output.push('\n');
            }
        }
    });
    Gateway {
        child,
        address,
        output,
    }
}

/// Raises this test process's own open-file limit, for its many clients.
fn raise_own_fd_limit(wanted: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < wanted {
        setrlimit(Resource::RLIMIT_NOFILE, wanted.min(hard), hard).unwrap();
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        soft >= wanted,
        "this test needs {wanted} open files; the hard limit allows {soft}"
    );
}

/// The kernel's count of connections dropped because an accept queue was
/// full (TcpExt ListenOverflows; for this network namespace, all processes).
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let names = lines[0].split_whitespace();
    let values = lines[1].split_whitespace();
    names
        .zip(values)
        .find(|(name, _)| *name == "ListenOverflows")
        .map(|(_, value)| value.parse().unwrap())
        .expect("ListenOverflows in /proc/net/netstat")
}

/// Sends one GET and reads its response: the status code.
async fn request(stream: &mut TcpStream, path: &str, close: bool) -> std::io::Result<u16> {
    let connection = if close { "close" } else { "keep-alive" };
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: {connection}\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    read_response(stream).await
}

/// Reads one response (head and a Content-Length body): its status code.
async fn read_response(stream: &mut TcpStream) -> std::io::Result<u16> {
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().unwrap());
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Ok(status)
}

fn percentile(samples: &mut [Duration], fraction: f64) -> Duration {
    samples.sort();
    let at = ((samples.len() as f64 - 1.0) * fraction).round() as usize;
    samples[at]
}

/// Up to this many rounds of a latency comparison. A slowdown the gateway
/// causes shows in every round; another process's burst on a shared machine
/// in one or two, so the test passes on the first round within its bound and
/// fails only when none is.
const ROUNDS: usize = 3;

/// The one-minute load average, when it is over twice the cores: a machine
/// so busy that latencies measure it, not the gateway. The latency bounds
/// below are then reported, not asserted; every other check still is.
fn overloaded() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let load: f64 = text.split_whitespace().next()?.parse().ok()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (load > 2.0 * cores).then_some(load)
}

/// One burst of `BURST` simultaneous connections, each asking `/healthz`:
/// the listen overflows the kernel counted meanwhile, the median and the
/// worst latency.
async fn burst(address: &str) -> (u64, Duration, Duration) {
    const BURST: usize = 2000;
    let before = listen_overflows();
    let start = Arc::new(tokio::sync::Barrier::new(BURST));
    let clients: Vec<_> = (0..BURST)
        .map(|_| {
            let address = address.to_string();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let began = Instant::now();
                let mut stream = TcpStream::connect(&address).await?;
                let status = request(&mut stream, "/healthz", true).await?;
                Ok::<_, std::io::Error>((status, began.elapsed()))
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(BURST);
    for client in clients {
        let (status, took) = client.await.unwrap().expect("every connection is served");
        assert_eq!(status, 200);
        latencies.push(took);
    }
    let overflows = listen_overflows() - before;
    let worst = *latencies.iter().max().unwrap();
    (overflows, percentile(&mut latencies, 0.5), worst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_2000_connections_overflows_no_backlog_and_waits_under_500_ms() {
    let _alone = ALONE.lock().await;
    raise_own_fd_limit(2000 + 256);
    let gateway = start("", &[]);
    let mut worsts = Vec::new();
    for round in 1..=ROUNDS {
        let (overflows, p50, worst) = burst(&gateway.address).await;
        eprintln!(
            "figure: round {round}: 2000 simultaneous connections to /healthz: {overflows} \
             listen overflows, p50 {p50:?}, worst {worst:?}"
        );
        // An overflow is never noise: the kernel dropped a SYN.
        assert_eq!(overflows, 0, "the kernel dropped connections");
        worsts.push(worst);
        if worst < Duration::from_millis(500) {
            return;
        }
    }
    if let Some(load) = overloaded() {
        eprintln!(
            "figure: not asserted: the slowest request took over 500 ms in every round \
             ({worsts:?}), with a load average of {load} on this machine"
        );
        return;
    }
    panic!("the slowest request took over 500 ms in every round: {worsts:?}");
}

/// `clients` keep-alive connections each send `each` requests to the worker
/// route, one after the other: every request's latency.
async fn normal_load(address: &str, clients: usize, each: usize) -> Vec<Duration> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let address = address.to_string();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(&address).await.unwrap();
                let mut took = Vec::with_capacity(each);
                for _ in 0..each {
                    let began = Instant::now();
                    assert_eq!(request(&mut stream, "/normal", false).await.unwrap(), 200);
                    took.push(began.elapsed());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                took
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// A client that sends its request head one byte a second and never
/// finishes it: how long until the gateway closed the connection.
async fn trickle(address: String) -> std::io::Result<Duration> {
    let stream = TcpStream::connect(&address).await?;
    let began = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let head = b"GET /slow HTTP/1.1\r\nHost: test\r\nX-Slow: "
        .iter()
        .copied();
    let writing = async move {
        for byte in head.chain(std::iter::repeat(b'a')) {
            if writer.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let mut sink = Vec::new();
    tokio::select! {
        () = writing => {}
        _ = reader.read_to_end(&mut sink) => {}
    }
    Ok(began.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_trickling_headers_do_not_slow_others_and_close_at_the_header_timeout() {
    let _alone = ALONE.lock().await;
    const SLOW: usize = 1000;
    const TIMEOUT: Duration = Duration::from_secs(4);
    raise_own_fd_limit(SLOW as u64 + 256);
    let gateway = start("", &["--header-read-timeout", "4s"]);
    let address = gateway.address.clone();
    // Warm up.
    normal_load(&address, 4, 10).await;
    let mut ratios = Vec::new();
    for round in 1..=ROUNDS {
        let mut quiet = normal_load(&address, 4, 60).await;
        let slow: Vec<_> = (0..SLOW)
            .map(|_| tokio::spawn(trickle(address.clone())))
            .collect();
        // Let them connect and start trickling, then the same load beside them.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut loaded = normal_load(&address, 4, 60).await;
        let mut closed = Vec::with_capacity(SLOW);
        for client in slow {
            closed.push(client.await.unwrap().expect("the slow client connects"));
        }
        let earliest = *closed.iter().min().unwrap();
        let latest = *closed.iter().max().unwrap();
        // Whatever the machine's load, each slow client goes at the timeout.
        assert!(
            earliest >= TIMEOUT - Duration::from_millis(100),
            "a slow client was closed after {earliest:?}, before the timeout"
        );
        assert!(
            latest <= TIMEOUT + Duration::from_secs(2),
            "a slow client was still open after {latest:?}"
        );
        let mut quiet_after = normal_load(&address, 4, 60).await;
        let quiet_p99 = percentile(&mut quiet, 0.99).max(percentile(&mut quiet_after, 0.99));
        let loaded_p99 = percentile(&mut loaded, 0.99);
        let ratio = loaded_p99.as_secs_f64() / quiet_p99.as_secs_f64();
        eprintln!(
            "figure: round {round}: {SLOW} trickling clients closed after {earliest:?} to \
             {latest:?}; p99 of normal requests {loaded_p99:?} beside them, {quiet_p99:?} \
             quiet (ratio {ratio:.2})"
        );
        ratios.push(ratio);
        if ratio <= 2.0 {
            return;
        }
    }
    if let Some(load) = overloaded() {
        eprintln!(
            "figure: not asserted: the p99 ratio was over 2 in every round ({ratios:?}), \
             with a load average of {load} on this machine"
        );
        return;
    }
    panic!("slow clients slowed the others more than 2x in every round: {ratios:?}");
}

/// CPU time (user and system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the whole line.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

/// What offering 1000 connections to a gateway under `ulimit -n 256` showed.
struct Saturated {
    served: usize,
    waiting: usize,
    cpu: f64,
    log: String,
}

/// Starts a gateway under `ulimit -n 256` with `args`, offers it 1000
/// keep-alive connections at once, each asking for /healthz, and measures
/// its CPU while they wait; checks that it still serves the connections it
/// holds and that it serves new clients once the load drops.
async fn saturate(args: &[&str]) -> Saturated {
    const OFFERED: usize = 1000;
    raise_own_fd_limit(OFFERED as u64 + 256);
    let gateway = start("ulimit -n 256 &&", args);
    let address = gateway.address.clone();
    let began = Instant::now();
    let clients: Vec<_> = (0..OFFERED)
        .map(|_| {
            let address = address.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(&address).await.unwrap();
                let answered = tokio::time::timeout(
                    Duration::from_secs(3),
                    request(&mut stream, "/healthz", false),
                )
                .await;
                (stream, matches!(answered, Ok(Ok(200))))
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut waiting = Vec::new();
    for client in clients {
        let (stream, answered) = client.await.unwrap();
        if answered {
            held.push(stream);
        } else {
            waiting.push(stream);
        }
    }
    assert!(
        !held.is_empty() && !waiting.is_empty(),
        "not saturated: {} served, {} waiting",
        held.len(),
        waiting.len()
    );

    // Saturated: the gateway idles rather than spinning.
    let pid = gateway.child.id();
    let ticks = cpu_ticks(pid);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu =
        (cpu_ticks(pid) - ticks) as f64 / clock_ticks_per_second() / window.elapsed().as_secs_f64();
    // It still serves the connections it holds, and its workers.
    for stream in held.iter_mut().take(20) {
        let status = request(stream, "/healthz", false).await.unwrap();
        assert_eq!(status, 200, "{}", gateway.output.lock().unwrap());
    }
    let (served, still_waiting) = (held.len(), waiting.len());

    // The load drops: new clients are served again.
    drop(held);
    drop(waiting);
    let recovered = async {
        loop {
            if let Ok(mut stream) = TcpStream::connect(&address).await {
                let answer = tokio::time::timeout(
                    Duration::from_secs(1),
                    request(&mut stream, "/healthz", true),
                );
                if let Ok(Ok(200)) = answer.await {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), recovered)
        .await
        .expect("the gateway serves again once the load drops");
    let log = gateway.output.lock().unwrap().clone();
    eprintln!(
        "figure: under ulimit -n 256 ({args:?}), {OFFERED} connections offered: {served} served, \
         {still_waiting} waiting in the backlog, gateway CPU {:.1}% while saturated \
         ({:?} in all)",
        cpu * 100.0,
        began.elapsed()
    );
    Saturated {
        served,
        waiting: still_waiting,
        cpu,
        log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_fd_limit_the_client_cap_keeps_descriptors_for_the_workers() {
    let _alone = ALONE.lock().await;
    let saturated = saturate(&[]).await;
    assert!(saturated.served + saturated.waiting == 1000);
    // 256 minus the workers' reserve (8 + 8 + 64).
    assert_eq!(saturated.served, 176);
    assert!(
        saturated.cpu < 0.20,
        "the saturated gateway used {:.0}% CPU",
        saturated.cpu * 100.0
    );
    assert!(
        !saturated.log.contains("cannot accept"),
        "the cap should keep accepts from failing:\n{}",
        saturated.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_accept_errors_pause_the_loop_and_are_logged_at_a_bounded_rate() {
    let _alone = ALONE.lock().await;
    // A cap above what the limit holds: accepts fail for lack of descriptors,
    // and so do the liveness probes, which need a descriptor of their own.
    let started = Instant::now();
    let saturated = saturate(&["--max-clients", "1000", "--probe-interval", "1s"]).await;
    // A probe the host had no descriptor for says nothing about the worker.
    assert!(
        !saturated.log.contains("unresponsive") && !saturated.log.contains("launch failed"),
        "the worker was restarted for the host's lack of descriptors:\n{}",
        saturated.log
    );
    assert!(
        saturated.cpu < 0.20,
        "the saturated gateway used {:.0}% CPU",
        saturated.cpu * 100.0
    );
    let reports = saturated
        .log
        .matches("cannot accept client connections")
        .count();
    let bound = (started.elapsed().as_secs() / 5 + 2) as usize;
    assert!(
        (1..=bound).contains(&reports),
        "{reports} accept-error reports in {:?} (at most {bound}):\n{}",
        started.elapsed(),
        saturated.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_at_the_keep_alive_timeout() {
    let _alone = ALONE.lock().await;
    let gateway = start("", &["--keep-alive-timeout", "1s"]);
    let mut stream = TcpStream::connect(&gateway.address).await.unwrap();
    // Busy for longer than the timeout: requests 300 ms apart keep it open.
    for _ in 0..5 {
        assert_eq!(request(&mut stream, "/healthz", false).await.unwrap(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let idle = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    let after = idle.elapsed();
    assert!(closed.is_ok(), "the idle connection stayed open");
    assert!(
        after >= Duration::from_millis(600) && after < Duration::from_secs(3),
        "closed after {after:?} idle, for a 1 s timeout"
    );
}

/// `clients` kept-alive connections that send requests one after the other
/// for `lasting`, then all hang up at once, as `wrk` does when it stops: the
/// events in flight and the requests still queued in the backlog are
/// cancelled together, most of them right after they were sent to a worker.
async fn flood_then_hang_up(address: &str, clients: usize, lasting: Duration) {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let address = address.to_string();
            tokio::spawn(async move {
                let Ok(mut stream) = TcpStream::connect(&address).await else {
                    return;
                };
                while request(&mut stream, "/", false).await.is_ok() {}
            })
        })
        .collect();
    tokio::time::sleep(lasting).await;
    // Aborting a client drops its connection.
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// The slot lines of the gateway's /metrics.
async fn slot_metrics(client: &reqwest::Client, address: &str) -> String {
    let text = match client.get(format!("http://{address}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(error) => return error.to_string(),
    };
    text.lines()
        .filter(|line| line.starts_with("async_worker_pool_slots{"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_flood_under_a_low_fd_limit_every_worker_connection_is_back_at_once() {
    let _alone = ALONE.lock().await;
    // Before the worker confirmed the cancel of an event it had not started
    // yet, the connections stayed lost in about one round in four.
    const ROUNDS: usize = 12;
    const CLIENTS: usize = 1000;
    raise_own_fd_limit(CLIENTS as u64 + 256);
    let gateway = start("ulimit -n 256 &&", &[]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    for round in 1..=ROUNDS {
        flood_then_hang_up(&gateway.address, CLIENTS, Duration::from_millis(1500)).await;
        // The backlog of dead clients is drained within a second or two;
        // the availability timeout (10 s) is far.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut slots = slot_metrics(&client, &gateway.address).await;
        while !slots.contains("async_worker_pool_slots{state=\"idle\"} 8")
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            slots = slot_metrics(&client, &gateway.address).await;
        }
        assert!(
            slots.contains("async_worker_pool_slots{state=\"idle\"} 8"),
            "round {round}: the worker connections were not all back 5 s after the \
             flood: {slots}\n{}",
            gateway.output.lock().unwrap()
        );
        let answer = client
            .get(format!("http://{}/", gateway.address))
            .send()
            .await;
        assert!(
            answer.as_ref().is_ok_and(|answer| answer.status() == 200),
            "round {round}: a plain request after the flood: {answer:?}"
        );
    }
}
