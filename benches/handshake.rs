//! Group `handshake`: what the authenticated handshake costs, measured beside
//! the same thing without it, in the same run.
//!
//! - `connect/*`: one `SocketTransport::connect` (connect, handshake
//!   if the worker asks, ready frame) and the close, to the in-process Rust
//!   echo worker (`rust-echo`) and to the real Python worker (`python`), each
//!   with the handshake (`handshake`) and without it (`plain`: the echo worker
//!   with no secret, the Python worker with `--no-auth`). The handshake is paid
//!   once per connection.
//! - `event/python/*`: one 64-byte event through the pool, 16 in flight on 16
//!   connections, to each Python worker: after connect the two protocols are
//!   the same, so the figures should match within noise.
//!
//! Criterion measures each contender in turn, so load from elsewhere on the
//! machine (other builds) can land on one and not the other. After the group,
//! the bench therefore also prints paired ratios: 31 rounds, each timing a
//! batch of one contender right after a batch of the other, and the median of
//! the per-round ratios with its quartiles.
//!
//! The echo workers run on a runtime of their own in their own thread; the
//! host runs on a current-thread runtime.

#[path = "support/wire.rs"]
mod wire;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_worker_pool::net::{SocketTransport, WorkerSecret};
use async_worker_pool::{
    Attachments, Endpoint, Launcher, ProcessLauncher, Transport, WorkerId, WorkerInfo,
    WorkerProcess,
};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::net::UnixListener;
use wire::{PoolCaller, Stop};

/// Events in flight, and connections of each pool, for the event benches.
const IN_FLIGHT: usize = 16;

/// Rounds of the paired comparison, and what each times per contender.
const PAIRED_ROUNDS: usize = 31;
const PAIRED_CONNECTS: usize = 100;
const PAIRED_EVENTS: u64 = 2_000;

/// The median and quartiles of per-round ratios `with / without`.
fn print_paired(what: &str, mut ratios: Vec<f64>, without: Duration, with: Duration) {
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    println!(
        "paired {what}: handshake / plain = {:.2}x (quartiles {:.2}x to {:.2}x over {} rounds); \
         medians {:.1} µs plain, {:.1} µs handshake",
        at(0.5),
        at(0.25),
        at(0.75),
        ratios.len(),
        without.as_secs_f64() * 1e6,
        with.as_secs_f64() * 1e6,
    );
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Times `PAIRED_CONNECTS` connects (and closes) to `worker`, per connect.
async fn connects(transport: &SocketTransport, worker: &WorkerInfo) -> Duration {
    let started = Instant::now();
    for _ in 0..PAIRED_CONNECTS {
        drop(transport.connect(worker).await.expect("a connection"));
    }
    started.elapsed() / PAIRED_CONNECTS as u32
}

/// Starts an echo worker on `path`, with the handshake if it has a `secret`,
/// in a thread of its own for the rest of the process.
fn start_echo_worker(path: &Path, secret: Option<WorkerSecret>) {
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind the echo socket");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking socket");
    std::thread::spawn(move || {
        let runtime = wire::host_runtime();
        runtime.block_on(async move {
            let listener = UnixListener::from_std(listener).expect("a tokio listener");
            wire::serve_echo_with(listener, secret).await;
        });
    });
}

/// Times `iters` events spread over the callers, which are kept for the next
/// sample.
async fn timed(callers: &Mutex<Option<Vec<PoolCaller>>>, iters: u64) -> Duration {
    let taken = callers
        .lock()
        .unwrap()
        .take()
        .expect("callers between samples");
    let (back, run) = wire::drive(taken, Stop::After(iters), false).await;
    *callers.lock().unwrap() = Some(back);
    run.elapsed
}

fn handshake(c: &mut Criterion) {
    let runtime = wire::host_runtime();
    let transport = SocketTransport::new();

    // The Rust echo worker, with and without a secret.
    let (_plain_dir, plain_path) = wire::socket_path("plain.sock");
    start_echo_worker(&plain_path, None);
    let (_auth_dir, auth_path) = wire::socket_path("auth.sock");
    let secret = WorkerSecret::generate().expect("a secret");
    start_echo_worker(&auth_path, Some(secret.clone()));

    // The Python worker, with and without the handshake.
    let python = |no_auth: bool| {
        let mut builder = ProcessLauncher::python_worker("echo:handler")
            .handler_path(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/handlers"))
            // Room for the pool and for connections still closing between
            // connect iterations: the worker refuses more than it is told.
            .connections(4 * IN_FLIGHT);
        if no_auth {
            builder = builder.arg("--no-auth");
        }
        let launcher = builder.build().expect("the Python worker's launcher");
        let worker = runtime
            .block_on(launcher.launch(WorkerId::new(0)))
            .expect("the Python worker starts");
        (launcher, worker)
    };
    let (_plain_launcher, mut plain_python) = python(true);
    let (_auth_launcher, mut auth_python) = python(false);

    // The secrets travel as a pool's connects get them: attached to the process.
    let info = |endpoint: Endpoint, attachments: Attachments| {
        WorkerInfo::new(WorkerId::new(0), 1, endpoint, None).with_attachments(attachments)
    };
    let endpoints = [
        (
            "rust-echo",
            "plain",
            info(Endpoint::Unix(plain_path), Attachments::new()),
        ),
        (
            "rust-echo",
            "handshake",
            info(Endpoint::Unix(auth_path), Attachments::new().with(secret)),
        ),
        (
            "python",
            "plain",
            info(plain_python.endpoint(), plain_python.attachments()),
        ),
        (
            "python",
            "handshake",
            info(auth_python.endpoint(), auth_python.attachments()),
        ),
    ];
    let mut group = c.benchmark_group("handshake");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    for (worker, protocol, endpoint) in &endpoints {
        group.bench_function(
            BenchmarkId::new(format!("connect/{worker}"), protocol),
            |b| {
                b.to_async(&runtime).iter(|| async {
                    let conn = transport.connect(endpoint).await.expect("a connection");
                    drop(conn);
                });
            },
        );
    }

    group.throughput(Throughput::Elements(1));
    let body = Bytes::from(vec![b'x'; 64]);
    let mut pools = Vec::new();
    for (_, protocol, endpoint) in endpoints.iter().filter(|(w, ..)| *w == "python") {
        let Endpoint::Unix(path) = &endpoint.endpoint else {
            panic!("a Unix socket endpoint");
        };
        let pool = runtime.block_on(wire::socket_pool_with(
            path,
            IN_FLIGHT,
            0,
            endpoint.attachments.clone(),
        ));
        let callers = Mutex::new(Some(wire::pool_callers(&pool, IN_FLIGHT, &body)));
        group.bench_function(BenchmarkId::new("event/python", protocol), |b| {
            b.to_async(&runtime)
                .iter_custom(|iters| timed(&callers, iters));
        });
        pools.push((pool, callers));
    }
    group.finish();

    // The paired comparisons, plain then handshake in every round: only when
    // measuring, not when a test runner lists or smoke-tests the bench.
    let args: Vec<String> = std::env::args().collect();
    let measuring =
        args.iter().any(|arg| arg == "--bench") && !args.iter().any(|arg| arg == "--list");
    for pair in endpoints.chunks(2).filter(|_| measuring) {
        let [(worker, _, plain), (_, _, auth)] = pair else {
            unreachable!("endpoints come in pairs");
        };
        let (mut ratios, mut without, mut with) = (Vec::new(), Vec::new(), Vec::new());
        runtime.block_on(async {
            for _ in 0..PAIRED_ROUNDS {
                let plain = connects(&transport, plain).await;
                let auth = connects(&transport, auth).await;
                ratios.push(auth.as_secs_f64() / plain.as_secs_f64());
                without.push(plain);
                with.push(auth);
            }
        });
        print_paired(
            &format!("connect/{worker}"),
            ratios,
            median(without),
            median(with),
        );
    }
    let (mut ratios, mut without, mut with) = (Vec::new(), Vec::new(), Vec::new());
    runtime.block_on(async {
        for _ in (0..PAIRED_ROUNDS).filter(|_| measuring) {
            let plain = timed(&pools[0].1, PAIRED_EVENTS).await / PAIRED_EVENTS as u32;
            let auth = timed(&pools[1].1, PAIRED_EVENTS).await / PAIRED_EVENTS as u32;
            ratios.push(auth.as_secs_f64() / plain.as_secs_f64());
            without.push(plain);
            with.push(auth);
        }
    });
    if measuring {
        print_paired("event/python", ratios, median(without), median(with));
    }
    for (pool, callers) in pools {
        drop(callers);
        runtime.block_on(pool.shutdown(Duration::ZERO));
    }

    runtime.block_on(async {
        plain_python.terminate(Duration::from_secs(5)).await;
        auth_python.terminate(Duration::from_secs(5)).await;
    });
}

criterion_group!(benches, handshake);
criterion_main!(benches);
