//! Group `socket_dispatch`: events per second through the pool's built-in
//! socket transport (`SocketTransport`, framed by tokio-util) against a
//! hand-written raw-socket client, both with 64 events in flight on 64 Unix
//! socket connections to the same in-process Rust echo worker, for 64-byte and
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

/// Events in flight, and connections of each contender.
const IN_FLIGHT: usize = 64;
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
    let (_dir, path) = wire::socket_path("echo.sock");
    start_echo_worker(&path);
    let runtime = wire::host_runtime();
    let mut group = c.benchmark_group("socket_dispatch");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .throughput(Throughput::Elements(1));
    for (len, label) in BODIES {
        let body = Bytes::from(vec![b'x'; len]);

        let pool = runtime.block_on(wire::socket_pool(&path, IN_FLIGHT));
        let callers = wire::pool_callers(&pool, IN_FLIGHT, &body);
        bench_callers(&mut group, &runtime, "async-worker-pool", label, callers);
        runtime.block_on(pool.shutdown(Duration::ZERO));

        let conns = runtime.block_on(wire::raw_conns(&path, IN_FLIGHT, None));
        let callers = wire::raw_callers(conns, &body);
        bench_callers(&mut group, &runtime, "raw-socket", label, callers);
    }
    group.finish();
}

criterion_group!(benches, socket_dispatch);
criterion_main!(benches);
