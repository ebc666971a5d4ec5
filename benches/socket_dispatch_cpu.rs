//! Host CPU time per event, and events per second, through the pool's socket
//! transport against the raw-socket client, 64 events in flight on 64
//! connections, 64-byte and 64 KiB bodies. Prints a Markdown table.
//!
//! The echo worker runs in a child process (this binary, started again with
//! `AWP_BENCH_ECHO_SOCKET` set), so that `getrusage(RUSAGE_SELF)` counts the
//! host side only. Each contender runs `AWP_BENCH_SECONDS` (default 1.5) per
//! round, three rounds in alternation. `AWP_BENCH_ONLY=pool` (or `raw`) runs
//! one contender alone, for profiling.

#[path = "support/wire.rs"]
mod wire;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wire::{Run, Stop};

const ECHO_ENV: &str = "AWP_BENCH_ECHO_SOCKET";
const IN_FLIGHT: usize = 64;
const ROUNDS: usize = 3;
const BODIES: [(usize, &str); 2] = [(64, "64 B"), (64 * 1024, "64 KiB")];

fn main() {
    if let Ok(path) = std::env::var(ECHO_ENV) {
        echo_worker(Path::new(&path));
        return;
    }
    if wire::only_listing("socket_dispatch_cpu/cpu_per_event") {
        return;
    }
    let seconds = wire::seconds_from_env("AWP_BENCH_SECONDS", 1.5);
    println!(
        "socket_dispatch_cpu: {IN_FLIGHT} events in flight, {ROUNDS} x {seconds:?} per contender \
         and body, host CPU = getrusage(RUSAGE_SELF) user + sys\n"
    );
    println!(
        "| body | pool events/s | raw events/s | pool ÷ raw | pool CPU/event | raw CPU/event | pool ÷ raw |"
    );
    println!("|---|---|---|---|---|---|---|");
    // For profiling one body size alone: `AWP_BENCH_BODY=64` or `65536`.
    let only_body = std::env::var("AWP_BENCH_BODY").ok();
    for (len, label) in BODIES {
        if only_body
            .as_ref()
            .is_some_and(|only| *only != len.to_string())
        {
            continue;
        }
        let (pool, raw) = measure(len, seconds);
        println!(
            "| {label} | {:.0} | {:.0} | {:.2}x | {:.2} µs | {:.2} µs | {:.2}x |",
            pool.events_per_sec(),
            raw.events_per_sec(),
            pool.events_per_sec() / raw.events_per_sec(),
            micros(pool.cpu_per_event()),
            micros(raw.cpu_per_event()),
            pool.cpu_per_event().as_secs_f64() / raw.cpu_per_event().as_secs_f64(),
        );
    }
}

fn micros(time: Duration) -> f64 {
    time.as_secs_f64() * 1e6
}

/// Both contenders against a fresh echo process, in alternation.
fn measure(len: usize, seconds: Duration) -> (Run, Run) {
    let (_dir, path) = wire::socket_path("echo.sock");
    let mut echo = spawn_echo_worker(&path);
    let runtime = wire::host_runtime();
    let body = Bytes::from(vec![b'x'; len]);
    let result = runtime.block_on(async {
        let pool = wire::socket_pool(&path, IN_FLIGHT).await;
        let mut pool_callers = wire::pool_callers(&pool, IN_FLIGHT, &body);
        let mut raw_callers =
            wire::raw_callers(wire::raw_conns(&path, IN_FLIGHT, None).await, &body);
        // Warm-up: first-use allocations and the echo process's own start.
        (pool_callers, _) = wire::drive(pool_callers, Stop::Elapsed(seconds / 3), false).await;
        (raw_callers, _) = wire::drive(raw_callers, Stop::Elapsed(seconds / 3), false).await;
        let (mut pool_total, mut raw_total) = (Run::default(), Run::default());
        // For profiling one contender alone: `AWP_BENCH_ONLY=pool` or `raw`.
        let only = std::env::var("AWP_BENCH_ONLY").unwrap_or_default();
        for _ in 0..ROUNDS {
            if only != "raw" {
                let run;
                (pool_callers, run) =
                    wire::drive(pool_callers, Stop::Elapsed(seconds), false).await;
                wire::merge(&mut pool_total, run);
            }
            if only != "pool" {
                let run;
                (raw_callers, run) = wire::drive(raw_callers, Stop::Elapsed(seconds), false).await;
                wire::merge(&mut raw_total, run);
            }
        }
        drop(pool_callers);
        drop(raw_callers);
        pool.shutdown(Duration::ZERO).await;
        (pool_total, raw_total)
    });
    let _ = echo.kill();
    let _ = echo.wait();
    result
}

/// Starts this binary again as the echo worker on `path` and waits until it
/// accepts connections.
fn spawn_echo_worker(path: &Path) -> Child {
    let child = Command::new(std::env::current_exe().expect("this binary's path"))
        .env(ECHO_ENV, path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("start the echo worker");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "the echo worker did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// The child's side: serves until its stdin closes, that is, until the bench
/// exits or dies.
fn echo_worker(path: &Path) {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    wire::host_runtime().block_on(async {
        let listener = tokio::net::UnixListener::bind(path).expect("bind the echo socket");
        wire::serve_echo(listener).await;
    });
}
