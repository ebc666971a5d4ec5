//! The WebSocket echo bench: the gateway's `--asgi` against uvicorn
//! (`--ws websockets`, uvloop) and granian (ASGI, uvloop) on the same bare
//! ASGI echo app (`ws_echo_app.py`) and the same interpreter. Run it through
//! `sh scripts/bench_ws.sh`, which makes the virtualenv and builds the
//! gateway in release first; it needs an otherwise idle machine, and says
//! so with the load average it saw.
//!
//! Each of `WS_CLIENTS` clients (100) sends a 64-byte text message, waits for
//! its echo, and sends the next, for `WS_SECONDS` (10) after a warm-up; the
//! servers take turns, `WS_ROUNDS` (3) times, the order rotating. Reported
//! per server: messages per second, messages per CPU-second of the server's
//! processes (utime + stime from /proc of the server and its children: the
//! gateway and its worker, granian and its worker), and the round trip's
//! p50 and p99; medians over the rounds, with the ratios to uvicorn.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A server under test, started, with its port.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(side: &str, python: &str, gateway: &str) -> Server {
    let apps = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches");
    let port = free_port();
    let port_text = port.to_string();
    let mut command = match side {
        "gateway" => {
            let mut command = Command::new(gateway);
            command
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--asgi", "ws_echo_app:app", "--workers", "1"])
                .arg("--handler-path")
                .arg(&apps)
                .args(["--python", python]);
            command
        }
        "uvicorn" => {
            let mut command = Command::new(python);
            command
                .args(["-m", "uvicorn", "ws_echo_app:app", "--app-dir"])
                .arg(&apps)
                .args([
                    "--port",
                    &port_text,
                    "--loop",
                    "uvloop",
                    "--ws",
                    "websockets",
                ])
                .args(["--log-level", "warning", "--no-access-log"]);
            command
        }
        "granian" => {
            let mut command = Command::new(python);
            command
                .args(["-m", "granian", "--interface", "asgi", "--loop", "uvloop"])
                .args(["--port", &port_text, "--workers", "1", "--working-dir"])
                .arg(&apps)
                .args(["--log-level", "warning", "ws_echo_app:app"]);
            command
        }
        other => panic!("unknown side {other}"),
    };
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {side}: {error}"));
    Server { child, port }
}

/// Waits until a WebSocket handshake to `url` succeeds.
async fn until_serving(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio_tungstenite::connect_async(url).await.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The CPU ticks (utime + stime) of `pid` and every process below it.
fn cpu_ticks(pid: u32) -> u64 {
    let mut stats = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = text.rsplit_once(") ") else {
            continue;
        };
        let own: u32 = head.split(' ').next().unwrap().parse().unwrap_or(0);
        let fields: Vec<&str> = rest.split(' ').collect();
        let parent: u32 = fields[1].parse().unwrap_or(0);
        let ticks = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        stats.push((own, parent, ticks));
    }
    let mut tree = vec![pid];
    let mut total = 0;
    while let Some(at) = tree.pop() {
        for &(own, parent, ticks) in &stats {
            if own == at {
                total += ticks;
            }
            if parent == at {
                tree.push(own);
            }
        }
    }
    total
}

/// `clients` echo loops for `seconds`: messages echoed and round trips (µs).
async fn load(url: &str, clients: usize, seconds: Duration) -> (u64, Vec<u32>) {
    let mut sockets = Vec::new();
    for _ in 0..clients {
        sockets.push(tokio_tungstenite::connect_async(url).await.unwrap().0);
    }
    let until = Instant::now() + seconds;
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            tokio::spawn(async move {
                let payload = "x".repeat(64);
                let mut rtts = Vec::new();
                while Instant::now() < until {
                    let sent = Instant::now();
                    socket.send(Message::text(payload.clone())).await.unwrap();
                    loop {
                        match socket.next().await {
                            Some(Ok(Message::Text(_))) => break,
                            Some(Ok(_)) => {}
                            other => panic!("the echo failed: {other:?}"),
                        }
                    }
                    rtts.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                }
                let _ = socket.close(None).await;
                rtts
            })
        })
        .collect();
    let mut rtts = Vec::new();
    for task in tasks {
        rtts.extend(task.await.unwrap());
    }
    (rtts.len() as u64, rtts)
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    per_second: f64,
    per_cpu_second: f64,
    p50_us: u32,
    p99_us: u32,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken. A test runner
    // (nextest with --all-targets) lists the bench and runs it without
    // `--bench`: it is answered, and nothing is started.
    let raw: Vec<String> = std::env::args().collect();
    if raw.iter().any(|arg| arg == "--list") {
        if !raw.iter().any(|arg| arg == "--ignored") {
            println!("ws_echo: benchmark");
        }
        return;
    }
    if !raw.iter().any(|arg| arg == "--bench") {
        println!("ws_echo: skipped (run it with `sh scripts/bench_ws.sh`)");
        return;
    }
    let python = env_or("WS_PYTHON", "python3");
    let gateway = env_or(
        "WS_GATEWAY",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/release/http_gateway"
        ),
    );
    let seconds = Duration::from_secs_f64(env_or("WS_SECONDS", "10").parse().unwrap());
    let rounds: usize = env_or("WS_ROUNDS", "3").parse().unwrap();
    let clients: usize = env_or("WS_CLIENTS", "100").parse().unwrap();
    let sides: Vec<String> = env_or("WS_SIDES", "gateway,uvicorn,granian")
        .split(',')
        .map(str::to_owned)
        .collect();
    // The kernel's clock ticks per second, in which /proc counts CPU time.
    let ticks_per_second: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    println!("load average before: {}", load_average().trim());
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); sides.len()];
    for round in 0..rounds {
        for turn in 0..sides.len() {
            let index = (turn + round) % sides.len();
            let side = &sides[index];
            let server = start(side, &python, &gateway);
            let url = format!("ws://127.0.0.1:{}/echo", server.port);
            until_serving(&url).await;
            load(&url, clients, Duration::from_secs(2)).await;
            let pid = server.child.id();
            let before = cpu_ticks(pid);
            let started = Instant::now();
            let (messages, mut rtts) = load(&url, clients, seconds).await;
            let elapsed = started.elapsed().as_secs_f64();
            let cpu = (cpu_ticks(pid) - before) as f64 / ticks_per_second;
            rtts.sort_unstable();
            let figures = Figures {
                per_second: messages as f64 / elapsed,
                per_cpu_second: messages as f64 / cpu.max(1e-9),
                p50_us: rtts[rtts.len() / 2],
                p99_us: rtts[rtts.len() * 99 / 100],
            };
            println!("round {round} {side}: {figures:?}");
            results[index].push(figures);
            drop(server);
        }
    }
    println!("load average after: {}", load_average().trim());
    let summary: Vec<(String, Figures)> = sides
        .iter()
        .zip(&results)
        .map(|(side, runs)| {
            let pick = |f: fn(&Figures) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
            (
                side.clone(),
                Figures {
                    per_second: pick(|f| f.per_second),
                    per_cpu_second: pick(|f| f.per_cpu_second),
                    p50_us: pick(|f| f64::from(f.p50_us)) as u32,
                    p99_us: pick(|f| f64::from(f.p99_us)) as u32,
                },
            )
        })
        .collect();
    let uvicorn = summary
        .iter()
        .find(|(side, _)| side == "uvicorn")
        .map(|(_, f)| *f);
    println!(
        "\n| server | messages/s | messages per CPU-s | p50 | p99 | ×uvicorn msg/CPU-s | ×uvicorn p99 |\n|---|---|---|---|---|---|---|"
    );
    for (side, f) in &summary {
        let (cpu_ratio, p99_ratio) = uvicorn.map_or((f64::NAN, f64::NAN), |u| {
            (
                f.per_cpu_second / u.per_cpu_second,
                f64::from(f.p99_us) / f64::from(u.p99_us),
            )
        });
        println!(
            "| {side} | {:.0} | {:.0} | {} µs | {} µs | {cpu_ratio:.2} | {p99_ratio:.2} |",
            f.per_second, f.per_cpu_second, f.p50_us, f.p99_us
        );
    }
}
