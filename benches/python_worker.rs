//! A real Python worker (the `python/async_pool_worker/` package with
//! `examples/handlers/echo.py`) driven through the pool and by the raw-socket
//! client, one task per connection each doing event / answer in a loop, at 1,
//! 10, 100 and 1000 connections. Prints a Markdown table: events per second,
//! host CPU time per event (`getrusage(RUSAGE_SELF)`; the worker is a child and
//! not counted), and p50 / p99 latency.
//!
//! Both contenders drive the same worker process. Each point runs pool, raw,
//! pool, raw for `AWP_BENCH_SECONDS` (default 2.5) each, after a short warm-up,
//! to even out drift; the whole bench takes about a minute.

#[path = "support/wire.rs"]
mod wire;

use std::time::Duration;

use async_worker_pool::process::raise_fd_limit;
use async_worker_pool::{Endpoint, Launcher, ProcessLauncher, WorkerId, WorkerProcess};
use bytes::Bytes;
use wire::{Run, Stop};

const CONNECTIONS: [usize; 4] = [1, 10, 100, 1000];
const BODY_LEN: usize = 64;
const ROUNDS: usize = 2;

fn main() {
    if wire::only_listing("python_worker/events_per_sec") {
        return;
    }
    let seconds = wire::seconds_from_env("AWP_BENCH_SECONDS", 2.5);
    let most = *CONNECTIONS.iter().max().expect("points");
    // Both contenders' connections, plus the worker's pipes and spares.
    match raise_fd_limit(2 * most as u64 + 256) {
        Ok(limit) if limit < 2 * most as u64 => {
            eprintln!("python_worker: open-file limit {limit} is too low for {most} connections");
        }
        Ok(_) => {}
        Err(err) => eprintln!("python_worker: cannot raise the open-file limit: {err}"),
    }
    let runtime = wire::host_runtime();
    runtime.block_on(async {
        let launcher = ProcessLauncher::python_worker("echo:handler")
            .handler_path(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/handlers"))
            // Pool and raw client hold `most` connections each at once, and the
            // worker serves no more than it is told (plus probe room).
            .connections(2 * most)
            .build()
            .expect("the Python worker's launcher");
        let mut worker = launcher
            .launch(WorkerId::new(0))
            .await
            .expect("the Python worker starts");
        let Endpoint::Unix(path) = worker.endpoint() else {
            panic!("a Unix socket endpoint");
        };
        println!(
            "python_worker: echo handler, {BODY_LEN}-byte bodies, pool / raw alternated \
             {ROUNDS} x {seconds:?} each per point; host CPU = getrusage(RUSAGE_SELF) user + sys\n"
        );
        println!(
            "| connections | pool events/s | raw events/s | pool ÷ raw | pool CPU/event | \
             raw CPU/event | pool ÷ raw | pool p50 | raw p50 | pool p99 | raw p99 |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        let body = Bytes::from(vec![b'x'; BODY_LEN]);
        for connections in CONNECTIONS {
            let pool = wire::socket_pool(&path, connections).await;
            let mut pool_callers = wire::pool_callers(&pool, connections, &body);
            let conns = wire::raw_conns(&path, connections, worker.secret()).await;
            let mut raw_callers = wire::raw_callers(conns, &body);
            let warm_up = Stop::Elapsed(Duration::from_millis(500));
            (pool_callers, _) = wire::drive(pool_callers, warm_up, false).await;
            (raw_callers, _) = wire::drive(raw_callers, warm_up, false).await;
            let (mut pool_total, mut raw_total) = (Run::default(), Run::default());
            for _ in 0..ROUNDS {
                let run;
                (pool_callers, run) = wire::drive(pool_callers, Stop::Elapsed(seconds), true).await;
                wire::merge(&mut pool_total, run);
                let run;
                (raw_callers, run) = wire::drive(raw_callers, Stop::Elapsed(seconds), true).await;
                wire::merge(&mut raw_total, run);
            }
            drop(pool_callers);
            drop(raw_callers);
            pool.shutdown(Duration::ZERO).await;
            print_row(connections, &mut pool_total, &mut raw_total);
        }
        worker.terminate(Duration::from_secs(5)).await;
    });
}

fn print_row(connections: usize, pool: &mut Run, raw: &mut Run) {
    let ms = |time: Duration| format!("{:.2} ms", time.as_secs_f64() * 1e3);
    let us = |time: Duration| format!("{:.1} µs", time.as_secs_f64() * 1e6);
    println!(
        "| {connections} | {:.0} | {:.0} | {:.2}x | {} | {} | {:.2}x | {} | {} | {} | {} |",
        pool.events_per_sec(),
        raw.events_per_sec(),
        pool.events_per_sec() / raw.events_per_sec(),
        us(pool.cpu_per_event()),
        us(raw.cpu_per_event()),
        pool.cpu_per_event().as_secs_f64() / raw.cpu_per_event().as_secs_f64(),
        ms(pool.latency(0.5)),
        ms(raw.latency(0.5)),
        ms(pool.latency(0.99)),
        ms(raw.latency(0.99)),
    );
}
