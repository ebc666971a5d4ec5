//! Group `acquire_release`: one uncontended acquire and release of a slot, on a
//! current-thread runtime, in a pool of 16 slots (one worker with 16 connections
//! for this crate), against a bare semaphore, deadpool and bb8, and the
//! crate's owned slot beside its borrowed one.

mod support;

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use support::{BareSemaphore, Bb8Pool, Contender, DeadPool, WorkerPool};

fn acquire_and_release<C: Contender>(group: &mut BenchmarkGroup<'_, WallTime>) {
    let runtime = support::one_thread();
    let pool = runtime.block_on(C::build(1, 16));
    group.bench_function(C::NAME, |b| {
        b.to_async(&runtime)
            .iter(|| async { drop(pool.acquire().await) });
    });
}

/// The owned slot (`Pool::acquire_owned`): the same guard holding its own
/// reference to the pool, so one atomic increment and decrement more than the
/// borrowed one, measured beside it in the same run.
fn acquire_owned_and_release(group: &mut BenchmarkGroup<'_, WallTime>) {
    let runtime = support::one_thread();
    let pool = runtime.block_on(support::worker_pool(1, 16));
    group.bench_function("async-worker-pool (owned)", |b| {
        b.to_async(&runtime)
            .iter(|| async { drop(pool.acquire_owned().await) });
    });
}

fn acquire_release(c: &mut Criterion) {
    let mut group = c.benchmark_group("acquire_release");
    support::configure(&mut group);
    acquire_and_release::<WorkerPool>(&mut group);
    acquire_owned_and_release(&mut group);
    acquire_and_release::<BareSemaphore>(&mut group);
    acquire_and_release::<DeadPool>(&mut group);
    acquire_and_release::<Bb8Pool>(&mut group);
    group.finish();
}

criterion_group!(benches, acquire_release);
criterion_main!(benches);
