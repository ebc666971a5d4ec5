//! The four contenders every bench group measures, behind one interface: this
//! crate's `Pool`, a bare `tokio::sync::Semaphore` (the floor: admission with no
//! slot bookkeeping), and the `deadpool` and `bb8` pools as baselines.
//!
//! Every contender manages unit "connections" that cost nothing to create or
//! check, so the benches time the pools' own bookkeeping and nothing else.

// Each bench binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_worker_pool::{InProcessLauncher, Pool, Slot, Transport, WorkerInfo, async_trait};
use tokio::sync::{Semaphore, SemaphorePermit};

/// A transport to in-memory workers: connecting is free and a call echoes its
/// request, so only the pool's own work is timed.
#[derive(Debug, Clone, Copy)]
pub struct Echo;

#[async_trait]
impl Transport for Echo {
    type Conn = ();
    type Request = u64;
    type Response = u64;
    type Error = std::io::Error;

    async fn connect(&self, _worker: &WorkerInfo) -> Result<(), std::io::Error> {
        Ok(())
    }

    async fn call(&self, _conn: &mut (), request: u64) -> Result<u64, std::io::Error> {
        Ok(request)
    }
}

pub type WorkerPool = Pool<Echo>;

/// Builds a pool of `workers` x `connections` slots and waits until every slot
/// is connected and idle, so that no acquire waits for a connect.
pub async fn worker_pool(workers: usize, connections: usize) -> WorkerPool {
    let pool = Pool::builder(Echo, InProcessLauncher)
        .num_workers(workers)
        .max_connections(connections)
        .build()
        .expect("a valid configuration inside a runtime");
    loop {
        let stats = pool.stats();
        if stats.idle == stats.capacity {
            return pool;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A deadpool manager of unit objects that are always fit for reuse.
#[derive(Debug)]
pub struct UnitManager;

impl deadpool::managed::Manager for UnitManager {
    type Type = ();
    type Error = Infallible;

    async fn create(&self) -> Result<(), Infallible> {
        Ok(())
    }

    async fn recycle(
        &self,
        _object: &mut (),
        _metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Infallible> {
        Ok(())
    }
}

pub type DeadPool = deadpool::managed::Pool<UnitManager>;

/// A deadpool of `size` objects, all created up front (deadpool creates them
/// lazily, and creating is not what is measured).
pub async fn deadpool_pool(size: usize) -> DeadPool {
    let pool = DeadPool::builder(UnitManager)
        .max_size(size)
        .build()
        .expect("no timeouts, so no runtime is needed");
    let mut objects = Vec::with_capacity(size);
    for _ in 0..size {
        objects.push(pool.get().await.expect("creating a unit never fails"));
    }
    drop(objects);
    pool
}

/// A bb8 connection manager of unit connections that never break.
#[derive(Debug)]
pub struct UnitConnections;

impl bb8::ManageConnection for UnitConnections {
    type Connection = ();
    type Error = Infallible;

    async fn connect(&self) -> Result<(), Infallible> {
        Ok(())
    }

    async fn is_valid(&self, _conn: &mut ()) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _conn: &mut ()) -> bool {
        false
    }
}

pub type Bb8Pool = bb8::Pool<UnitConnections>;

/// A bb8 pool of `size` connections, all established up front, with no check on
/// checkout and no reaper (nothing ever expires), so only `get` is measured.
pub async fn bb8_pool(size: u32) -> Bb8Pool {
    bb8::Pool::builder()
        .max_size(size)
        .min_idle(Some(size))
        .test_on_check_out(false)
        .idle_timeout(None)
        .max_lifetime(None)
        .build(UnitConnections)
        .await
        .expect("connecting a unit never fails")
}

/// A pool under test: something that hands out slots, built at a given size.
///
/// Each contender is its own type, so a bench is monomorphised per contender and
/// no dispatch of ours sits in the loop being timed.
pub trait Contender: Clone + Send + Sync + 'static {
    /// Its name in the criterion reports.
    const NAME: &'static str;
    /// What it hands out for one slot; dropping it gives the slot back.
    type Held<'a>: Send
    where
        Self: 'a;

    /// A ready pool of `workers` x `connections` slots.
    fn build(workers: usize, connections: usize) -> impl Future<Output = Self> + Send;

    /// Takes one slot.
    fn acquire(&self) -> impl Future<Output = Self::Held<'_>> + Send;
}

impl Contender for WorkerPool {
    const NAME: &'static str = "async-worker-pool";
    type Held<'a> = Slot<'a, Echo>;

    async fn build(workers: usize, connections: usize) -> Self {
        worker_pool(workers, connections).await
    }

    #[inline]
    async fn acquire(&self) -> Slot<'_, Echo> {
        Pool::acquire(self).await.expect("a slot")
    }
}

/// The floor: a bare semaphore admits as many tasks as there are slots but keeps
/// no slot table, no idle list and no counters.
#[derive(Debug, Clone)]
pub struct BareSemaphore(Arc<Semaphore>);

impl Contender for BareSemaphore {
    const NAME: &'static str = "semaphore";
    type Held<'a> = SemaphorePermit<'a>;

    async fn build(workers: usize, connections: usize) -> Self {
        Self(Arc::new(Semaphore::new(workers * connections)))
    }

    #[inline]
    async fn acquire(&self) -> SemaphorePermit<'_> {
        self.0.acquire().await.expect("never closed")
    }
}

impl Contender for DeadPool {
    const NAME: &'static str = "deadpool";
    type Held<'a> = deadpool::managed::Object<UnitManager>;

    async fn build(workers: usize, connections: usize) -> Self {
        deadpool_pool(workers * connections).await
    }

    #[inline]
    async fn acquire(&self) -> deadpool::managed::Object<UnitManager> {
        self.get().await.expect("an object")
    }
}

impl Contender for Bb8Pool {
    const NAME: &'static str = "bb8";
    type Held<'a> = bb8::PooledConnection<'a, UnitConnections>;

    async fn build(workers: usize, connections: usize) -> Self {
        let size = u32::try_from(workers * connections).expect("a bench-sized pool");
        bb8_pool(size).await
    }

    #[inline]
    async fn acquire(&self) -> bb8::PooledConnection<'_, UnitConnections> {
        self.get().await.expect("a connection")
    }
}

/// Takes `count` slots and keeps them until the result is dropped.
pub async fn hold<C: Contender>(contender: &C, count: usize) -> Vec<C::Held<'_>> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        held.push(contender.acquire().await);
    }
    held
}

/// Each of `tasks` tasks takes a slot, yields once while holding it, and gives
/// it back, `rounds` times; resolves when every task is done.
pub async fn contend<C: Contender>(contender: &C, tasks: usize, rounds: usize) {
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let contender = contender.clone();
            tokio::spawn(async move {
                for _ in 0..rounds {
                    let held = contender.acquire().await;
                    tokio::task::yield_now().await;
                    drop(held);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("a contending task panicked");
    }
}

/// A multi-thread runtime with two worker threads, for the contended groups.
pub fn two_threads() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A current-thread runtime, for the uncontended groups.
pub fn one_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Short runs: the whole `cargo bench` must fit in a few minutes on two cores.
pub fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
}
