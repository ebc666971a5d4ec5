//! Host CPU time per event, events per second and events per wake-up of the
//! host (voluntary context switches), through the pool's socket transport in its two modes (one
//! connection per slot, and multiplexed) against the raw-socket client, at 1,
//! 64 and 1000 events in flight, 64-byte and 64 KiB bodies. Prints a Markdown
//! table.
//!
//! The echo worker runs in a child process (this binary, started again with
//! `AWP_BENCH_ECHO_SOCKET` set), so that `getrusage(RUSAGE_SELF)` counts
//! the host side only. For system calls per event, run one contender alone
//! under `perf stat -e raw_syscalls:sys_enter --no-inherit` (the host runtime
//! is one thread) and divide by its events (BENCHMARKS.md). Each contender runs
//! `AWP_BENCH_SECONDS` (default 1.5) per round, three rounds in alternation.
//! `AWP_BENCH_ONLY=pool`, `mux` or `raw` runs one contender alone, for
//! profiling; `AWP_BENCH_BODY=64` (or `65536`) and `AWP_BENCH_IN_FLIGHT=64`
//! pick one body and one concurrency; `AWP_BENCH_MULTIPLEX` sets the physical
//! connections of the multiplexed pool (default 1).

#[path = "support/wire.rs"]
mod wire;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wire::{Run, Stop};

const ECHO_ENV: &str = "AWP_BENCH_ECHO_SOCKET";
const IN_FLIGHT: [usize; 3] = [1, 64, 1000];
const ROUNDS: usize = 3;
const BODIES: [(usize, &str); 2] = [(64, "64 B"), (64 * 1024, "64 KiB")];
/// The contenders, in the order they run and are printed.
const CONTENDERS: [&str; 3] = ["pool", "mux", "raw"];

fn main() {
    if let Ok(path) = std::env::var(ECHO_ENV) {
        echo_worker(Path::new(&path));
        return;
    }
    if wire::only_listing("socket_dispatch_cpu/cpu_per_event") {
        return;
    }
    // Two sockets per event in flight at 1000 (pool and raw client).
    let _ = async_worker_pool::process::raise_fd_limit(4 * 1024);
    let seconds = wire::seconds_from_env("AWP_BENCH_SECONDS", 1.5);
    let multiplex = std::env::var("AWP_BENCH_MULTIPLEX")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1);
    println!(
        "socket_dispatch_cpu: {ROUNDS} x {seconds:?} per contender, body and concurrency; \
         host CPU = getrusage(RUSAGE_SELF) user + sys; wake-ups = its voluntary \
         context switches; pool = one connection per slot, mux = multiplexed on {multiplex} \
         connection(s)\n"
    );
    println!(
        "| body | in flight | contender | events | events/s | CPU/event | events/wake-up | CPU ÷ pool's | events/s ÷ pool's |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let only_body = std::env::var("AWP_BENCH_BODY").ok();
    let only_in_flight = std::env::var("AWP_BENCH_IN_FLIGHT").ok();
    for (len, label) in BODIES {
        if only_body
            .as_ref()
            .is_some_and(|only| *only != len.to_string())
        {
            continue;
        }
        for in_flight in IN_FLIGHT {
            if only_in_flight
                .as_ref()
                .is_some_and(|only| *only != in_flight.to_string())
            {
                continue;
            }
            let runs = measure(len, in_flight, multiplex, seconds);
            let pool = &runs[0];
            for (name, run) in CONTENDERS.iter().zip(&runs) {
                if run.events == 0 {
                    continue;
                }
                let (cpu_ratio, rate_ratio) = if pool.events == 0 {
                    ("–".to_owned(), "–".to_owned())
                } else {
                    (
                        format!("{:.2}x", ratio(run.cpu_per_event(), pool.cpu_per_event())),
                        format!("{:.2}x", run.events_per_sec() / pool.events_per_sec()),
                    )
                };
                println!(
                    "| {label} | {in_flight} | {name} | {} | {:.0} | {:.2} µs | {:.2} | {cpu_ratio} | {rate_ratio} |",
                    run.events,
                    run.events_per_sec(),
                    micros(run.cpu_per_event()),
                    run.events_per_wakeup(),
                );
            }
        }
    }
}

fn micros(time: Duration) -> f64 {
    time.as_secs_f64() * 1e6
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// The three contenders against a fresh echo process, in alternation:
/// `[pool, mux, raw]`.
fn measure(len: usize, in_flight: usize, multiplex: usize, seconds: Duration) -> [Run; 3] {
    let (_dir, path) = wire::socket_path("echo.sock");
    let mut echo = spawn_echo_worker(&path);
    let runtime = wire::host_runtime();
    let body = Bytes::from(vec![b'x'; len]);
    let result = runtime.block_on(async {
        let pool = wire::socket_pool(&path, in_flight).await;
        let mux = wire::socket_pool_multiplexed(&path, in_flight, multiplex).await;
        let mut pool_callers = wire::pool_callers(&pool, in_flight, &body);
        let mut mux_callers = wire::pool_callers(&mux, in_flight, &body);
        let mut raw_callers =
            wire::raw_callers(wire::raw_conns(&path, in_flight, None).await, &body);
        // Warm-up: first-use allocations and the echo process's own start.
        (pool_callers, _) = wire::drive(pool_callers, Stop::Elapsed(seconds / 3), false).await;
        (mux_callers, _) = wire::drive(mux_callers, Stop::Elapsed(seconds / 3), false).await;
        (raw_callers, _) = wire::drive(raw_callers, Stop::Elapsed(seconds / 3), false).await;
        let mut totals: [Run; 3] = Default::default();
        let only = std::env::var("AWP_BENCH_ONLY").unwrap_or_default();
        let runs = |name: &str| only.is_empty() || only == name;
        for _ in 0..ROUNDS {
            if runs("pool") {
                let run;
                (pool_callers, run) =
                    wire::drive(pool_callers, Stop::Elapsed(seconds), false).await;
                wire::merge(&mut totals[0], run);
            }
            if runs("mux") {
                let run;
                (mux_callers, run) = wire::drive(mux_callers, Stop::Elapsed(seconds), false).await;
                wire::merge(&mut totals[1], run);
            }
            if runs("raw") {
                let run;
                (raw_callers, run) = wire::drive(raw_callers, Stop::Elapsed(seconds), false).await;
                wire::merge(&mut totals[2], run);
            }
        }
        drop((pool_callers, mux_callers, raw_callers));
        pool.shutdown(Duration::ZERO).await;
        mux.shutdown(Duration::ZERO).await;
        totals
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
