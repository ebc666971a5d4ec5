//! A pool of two in-process "workers" that each serve 1000 connections, driven by
//! 10,000 concurrent I/O-bound events: the shape of Nuclio's async mode without
//! any process or socket, to show the pool's own behaviour and numbers.
//!
//! Run with `cargo run --release --example in_process`.

use std::time::{Duration, Instant};

use async_worker_pool::{InProcessLauncher, Pool, PoolError, Transport, WorkerInfo, async_trait};

/// Each event "awaits I/O" for 50 ms, then echoes its number with the worker's id.
struct SimulatedIo;

#[async_trait]
impl Transport for SimulatedIo {
    type Conn = WorkerInfo;
    type Request = u64;
    type Response = (u64, usize);
    type Error = std::io::Error;

    async fn connect(&self, worker: &WorkerInfo) -> Result<WorkerInfo, std::io::Error> {
        Ok(worker.clone())
    }

    async fn call(
        &self,
        conn: &mut WorkerInfo,
        event: u64,
    ) -> Result<(u64, usize), std::io::Error> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok((event, conn.id.index()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const EVENTS: u64 = 10_000;
    let pool = Pool::builder(SimulatedIo, InProcessLauncher)
        .num_workers(2)
        .max_connections(1000)
        .build()?;

    // Let the supervisors open all 2000 connections before timing.
    while pool.stats().idle < pool.stats().capacity {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let started = Instant::now();
    let tasks: Vec<_> = (0..EVENTS)
        .map(|event| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.dispatch(event).await })
        })
        .collect();
    let mut per_worker = [0u64; 2];
    for (event, task) in (0..EVENTS).zip(tasks) {
        let (echoed, worker) = task.await??;
        assert_eq!(echoed, event, "every event gets its own answer");
        per_worker[worker] += 1;
    }
    let elapsed = started.elapsed();

    let stats = pool.stats();
    println!(
        "{EVENTS} events of 50 ms on {} slots in {:.2?} (serially: {:.0?})",
        stats.capacity,
        elapsed,
        Duration::from_millis(50) * EVENTS as u32,
    );
    println!("served per worker: {per_worker:?}");
    println!(
        "allocations: {} ({} immediate, {} after waiting, {} timed out), mean wait {:.2?}",
        stats.allocations.count,
        stats.allocations.immediate,
        stats.allocations.after_wait,
        stats.allocations.timeout,
        stats
            .allocations
            .wait_duration_sum
            .checked_div(stats.allocations.after_wait.max(1) as u32)
            .unwrap_or_default(),
    );

    pool.shutdown(Duration::from_secs(1)).await;
    match pool.dispatch(0).await {
        Err(PoolError::Closed) => println!("after shutdown: dispatch fails with Closed"),
        other => return Err(format!("expected Closed after shutdown, got {other:?}").into()),
    }
    Ok(())
}
