//! Group `socket_dispatch`: events per second through the pool's built-in
//! socket transport (`SocketTransport`, framed by tokio-util), one connection
//! per slot and multiplexed on one connection, against a hand-written
//! raw-socket client (one connection per event in flight), with 1, 64 and 1000
//! events in flight to the same in-process Rust echo worker, for 64-byte and
//! 64 KiB bodies.
//!
//! The echo worker runs on a runtime of its own in its own thread; the host side
//! of both contenders runs on a current-thread runtime. Host CPU time per event
//! is measured by `benches/socket_dispatch_cpu.rs`, with the echo worker in a
//! separate process.

#[path = "support/wire.rs"]
mod wire;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
    measurement::WallTime,
};
use tokio::net::UnixListener;
use wire::{Caller, Stop};

/// Events in flight, and slots of each contender.
const IN_FLIGHT: [usize; 3] = [1, 64, 1000];
const BODIES: [(usize, &str); 2] = [(64, "64B"), (64 * 1024, "64KiB")];

/// Starts the echo worker on `path` in a thread of its own, for the rest of the
/// process.
fn start_echo_worker(path: &Path) {
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind the echo socket");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking socket");
    std::thread::spawn(move || {
        let runtime = wire::host_runtime();
        runtime.block_on(async move {
            let listener = UnixListener::from_std(listener).expect("a tokio listener");
            wire::serve_echo(listener).await;
        });
    });
}

/// Times `iters` events spread over the callers, which are kept for the next
/// sample.
async fn timed<C: Caller>(callers: &Mutex<Option<Vec<C>>>, iters: u64) -> Duration {
    let taken = callers
        .lock()
        .unwrap()
        .take()
        .expect("callers between samples");
    let (back, run) = wire::drive(taken, Stop::After(iters), false).await;
    *callers.lock().unwrap() = Some(back);
    run.elapsed
}

fn bench_callers<C: Caller>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    label: &str,
    callers: Vec<C>,
) {
    let callers = Mutex::new(Some(callers));
    group.bench_function(BenchmarkId::new(name, label), |b| {
        b.to_async(runtime)
            .iter_custom(|iters| timed(&callers, iters));
    });
}

fn socket_dispatch(c: &mut Criterion) {
    // Two sockets per event in flight at 1000 (the pool's and the raw client's).
    let _ = async_worker_pool::process::raise_fd_limit(4 * 1024);
    let (_dir, path) = wire::socket_path("echo.sock");
    start_echo_worker(&path);
    let runtime = wire::host_runtime();
    let mut group = c.benchmark_group("socket_dispatch");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .throughput(Throughput::Elements(1));
    for (len, body_label) in BODIES {
        let body = Bytes::from(vec![b'x'; len]);
        for in_flight in IN_FLIGHT {
            let label = format!("{body_label}/{in_flight}");

            let pool = runtime.block_on(wire::socket_pool(&path, in_flight));
            let callers = wire::pool_callers(&pool, in_flight, &body);
            bench_callers(&mut group, &runtime, "async-worker-pool", &label, callers);
            runtime.block_on(pool.shutdown(Duration::ZERO));

            let pool = runtime.block_on(wire::socket_pool_multiplexed(&path, in_flight, 1));
            let callers = wire::pool_callers(&pool, in_flight, &body);
            bench_callers(
                &mut group,
                &runtime,
                "async-worker-pool-mux",
                &label,
                callers,
            );
            runtime.block_on(pool.shutdown(Duration::ZERO));

            let conns = runtime.block_on(wire::raw_conns(&path, in_flight, None));
            let callers = wire::raw_callers(conns, &body);
            bench_callers(&mut group, &runtime, "raw-socket", &label, callers);
        }
    }
    group.finish();
}

criterion_group!(benches, socket_dispatch);
criterion_main!(benches);
