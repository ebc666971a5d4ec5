//! A minimal host over real Python workers: two reference asyncio workers,
//! 1000 slots each, carried as streams on one multiplexed connection per
//! worker, and 5000 events dispatched at once to the sleepy handler
//! (`examples/handlers/sleepy.py`, which awaits the seconds its body names).
//! The whole of what a host writes to use the pool, without an HTTP front
//! end: build, wait until ready, dispatch, read the numbers, shut down.
//!
//! Run with `cargo run --release --example python_host` (needs `python3`).

use std::time::{Duration, Instant};

use async_worker_pool::net::{Event, Reply, SocketTransport};
use async_worker_pool::{Pool, ProcessLauncher};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const EVENTS: usize = 5000;
    let launcher = ProcessLauncher::python_worker("sleepy:handler")
        .handler_path(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/handlers"))
        .build()?;
    let pool = Pool::builder(SocketTransport::new().multiplex(1), launcher)
        .num_workers(2)
        .max_connections(1000)
        .event_timeout(Duration::from_secs(5))
        .build()?;
    // A worker that cannot start (no python3, a handler that does not
    // import) is reported here, with its reason, rather than on the first event.
    pool.ready(Duration::from_secs(30)).await?;

    let started = Instant::now();
    let events = (0..EVENTS).map(|_| {
        let pool = pool.clone();
        // Each event awaits 0.1 s in the worker: I/O-bound, as Nuclio's
        // async mode is meant for.
        tokio::spawn(async move { pool.dispatch(Event::plain("0.1")).await })
    });
    let (mut ok, mut failed) = (0, 0);
    for event in events.collect::<Vec<_>>() {
        match event.await? {
            Ok(Reply::Returned { status: 200, .. }) => ok += 1,
            Ok(other) => {
                failed += 1;
                eprintln!("unexpected reply: {other:?}");
            }
            Err(error) => {
                failed += 1;
                eprintln!("event failed: {error}");
            }
        }
    }
    let elapsed = started.elapsed();

    let stats = pool.stats();
    println!(
        "{ok} events answered and {failed} failed in {elapsed:.2?} \
         ({:.0} events/s) on {} workers x {} slots",
        EVENTS as f64 / elapsed.as_secs_f64(),
        stats.workers.len(),
        stats.capacity / stats.workers.len(),
    );
    println!(
        "slots: taken at once {}, after a wait {}; events ok {}",
        stats.allocations.immediate, stats.allocations.after_wait, stats.events.ok
    );
    pool.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
